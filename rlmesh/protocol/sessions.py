"""Who is attached to an endpoint, and the workers that answer each session on its own.

:class:`Sessions` keeps the attached clients' tokens, when each was last heard from, and
whether it ever completed a request: a peer that said ``hello`` and nothing else is the first
to make room for a real client. :class:`SessionWorkers` gives each session a thread of its own,
so a slow env stalls only its own client; replies travel back to the serving thread over an
in-process socket, since a zmq socket belongs to one thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import zmq

from rlmesh.protocol.messages import recv_frames, send_frames

__all__ = ["Sessions", "SessionWorkers", "UNPROVEN_GRACE"]

log = logging.getLogger(__name__)

#: Seconds after which a session that never completed a request gives way to a new client.
UNPROVEN_GRACE = 2.0


class Sessions:
    """The attached sessions of one endpoint, up to ``limit`` of them."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._seen: dict[str, float] = {}
        self._attached_at: dict[str, float] = {}
        self._proven: set[str] = set()
        self.last_activity = time.monotonic()
        # Channel threads touch their sessions while the serving thread detaches them: a touch
        # that checked before a detach and wrote after it would bring the session back.
        self._lock = threading.Lock()

    def __contains__(self, token: object) -> bool:
        return token in self._seen

    def __len__(self) -> int:
        return len(self._seen)

    def attach(self, token: str) -> None:
        now = time.monotonic()
        self._seen[token] = self._attached_at[token] = self.last_activity = now

    def touch(self, token: str, *, completed: bool = False) -> None:
        """Note that ``token`` was heard from (``completed``: a request of it was answered)."""
        with self._lock:
            if token in self._seen:
                self._seen[token] = self.last_activity = time.monotonic()
                if completed:
                    self._proven.add(token)

    def detach(self, token: str) -> bool:
        """Forget ``token``; ``False`` if it was not attached."""
        with self._lock:
            if self._seen.pop(token, None) is None:
                return False
            self._attached_at.pop(token, None)
            self._proven.discard(token)
            self.last_activity = time.monotonic()
        return True

    def silent_for(self, seconds: float) -> list[str]:
        """Sessions not heard from for more than ``seconds``."""
        now = time.monotonic()
        return [token for token, seen in list(self._seen.items()) if now - seen > seconds]

    def unproven(self) -> str | None:
        """The oldest session that never completed a request and had :data:`UNPROVEN_GRACE` s to."""
        now = time.monotonic()
        waiting = [(at, token) for token, at in list(self._attached_at.items())
                   if token not in self._proven and now - at > UNPROVEN_GRACE]
        return min(waiting)[1] if waiting else None


#: What a worker is given per request: the client's identity, request id, kind and payload.
Job = tuple[bytes, int, str, Any]


class SessionWorkers:
    """One thread per session running ``answer(session, job) -> reply frames`` in order."""

    def __init__(self, context: zmq.Context[Any], answer: Callable[[str, Job], list[Any]],
                 release: Callable[[str], None]) -> None:
        self._context = context
        self._answer = answer
        self._release = release
        self._address = f"inproc://rlmesh-replies-{uuid.uuid4().hex}"
        self.replies: zmq.Socket[Any] = context.socket(zmq.PULL)
        self.replies.setsockopt(zmq.LINGER, 0)
        self.replies.bind(self._address)
        self._queues: dict[str, queue.SimpleQueue[Job | None]] = {}
        self._threads: list[threading.Thread] = []

    def start(self, token: str) -> None:
        jobs: queue.SimpleQueue[Job | None] = queue.SimpleQueue()
        self._queues[token] = jobs
        thread = threading.Thread(target=self._work, args=(token, jobs), daemon=True,
                                  name=f"rlmesh-session-{token[:8]}")
        self._threads = [t for t in self._threads if t.is_alive()] + [thread]
        thread.start()

    def submit(self, token: str, job: Job) -> None:
        self._queues[token].put(job)

    def stop(self, token: str) -> None:
        """Let the session's worker finish what it was given, release the session, then end."""
        jobs = self._queues.pop(token, None)
        if jobs is not None:
            jobs.put(None)

    def forward(self, socket: zmq.Socket[Any]) -> None:
        """Send the replies that workers have finished on ``socket`` (the serving thread's)."""
        while True:
            try:
                frames = recv_frames(self.replies, zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                send_frames(socket, frames)
            except zmq.ZMQError as exc:  # the client vanished meanwhile
                log.debug("could not reply to a vanished client: %s", exc)

    def close(self, timeout: float = 5.0) -> None:
        for token in list(self._queues):
            self.stop(token)
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        self.replies.close(linger=0)

    def _work(self, token: str, jobs: queue.SimpleQueue[Job | None]) -> None:
        sender = self._context.socket(zmq.PUSH)
        sender.setsockopt(zmq.LINGER, 1000)
        sender.connect(self._address)
        try:
            while (job := jobs.get()) is not None:
                try:
                    send_frames(sender, [job[0], *self._answer(token, job)])
                except Exception:  # a bug of ours costs one reply, never the worker
                    log.exception("session %s: could not answer a request", token[:8])
        finally:
            sender.close()
            try:
                self._release(token)
            except Exception:
                log.exception("session %s: releasing it failed", token[:8])
