"""Serving one session's shared-memory channel (:mod:`rlmesh.protocol.shm`) on a thread of its own.

The serving loop keeps the zmq socket (handshakes, heartbeats, other clients); a session that
took the same-host fast path gets its requests answered here, by the same handler the loop
would use. A session that declines the channel, or ends, stops its thread; the thread hangs up
the channel as it ends (a client waiting on it gets a ``ConnectionError``), the segment is
unmapped, and its name was removed once the first request came through.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from rlmesh.errors import ProtocolError
from rlmesh.protocol.shm import SLICE_S, Channel

__all__ = ["SessionChannel"]

log = logging.getLogger(__name__)

#: ``handle(frames) -> (reply frames, last)``: ``last`` ends the session's channel after the reply.
Handler = Callable[[list[Any]], tuple[list[Any], bool]]


class _Stopped(Exception):
    pass


class SessionChannel:
    """A thread answering the requests of one session that arrive through ``channel``."""

    def __init__(self, session: str, channel: Channel, handle: Handler,
                 refuse: Callable[[Exception], list[Any]]) -> None:
        self.session = session
        self.channel = channel
        #: Set while the session's own CLOSE is being carried out, which must not wait for this thread.
        self.closing = False
        #: Held while answering: a request of the same session that comes over zmq waits its turn.
        self.lock = threading.Lock()
        self._handle, self._refuse = handle, refuse
        self._stopped = False  # a plain flag: the loop reads it on every request
        self._guard = threading.Lock()  # orders stop() against the start and end of an answer
        self._answering = False
        self._then: Callable[[], None] | None = None
        self._thread = threading.Thread(target=self._run, name=f"rlmesh-shm-{session[:8]}", daemon=True)

    def start(self) -> SessionChannel:
        self._thread.start()
        return self

    def stop(self, then: Callable[[], None] | None = None) -> None:
        """Answer no more requests. ``then`` (releasing the session) runs once no request is under
        way: at once when the thread is idle (which then ends within a slice of its wait), else on
        the thread after the answer it is giving, without waiting for it here."""
        with self._guard:
            self._stopped = True
            answering = self._answering
            if answering and then is not None:
                self._then, then = then, None
        if not answering and threading.current_thread() is not self._thread:
            # Idle, it ends within a slice of its wait, and its segment with it; it answers nothing more.
            self._thread.join(2 * SLICE_S)
        if then is not None:
            then()

    @property
    def running(self) -> bool:
        """Whether the thread has not ended yet."""
        return self._thread.is_alive()

    def join(self, deadline: float) -> None:
        """Wait until the thread has ended (after :meth:`stop`), up to ``time.monotonic()`` ``deadline``."""
        if self.closing or threading.current_thread() is self._thread:
            return
        self._thread.join(max(0.0, deadline - time.monotonic()))
        if self._thread.is_alive():
            log.warning("the shared-memory channel of client %s is still answering a request; "
                        "going on without it", self.session[:8])

    def _running(self) -> None:
        """Called while a chunked message waits on the peer: give up once stopped."""
        if self._stopped:
            raise _Stopped

    def _run(self) -> None:
        channel = self.channel
        try:
            while not self._stopped:
                if not channel.wait(SLICE_S):
                    continue
                with self._guard:
                    if self._stopped:  # detached meanwhile: answer no more
                        return
                    self._answering = True
                try:
                    if channel.path is not None:
                        channel.unlink()  # both ends have mapped it: nothing is left to find in /dev/shm
                    try:
                        frames = channel.receive(copy=True, alive=self._running)
                    except ProtocolError as exc:  # garbage in the segment: answer it, as for a bad frame
                        channel.send(self._refuse(exc), alive=self._running)
                        continue
                    reply, last = self._handle(frames)
                    channel.send(reply, alive=self._running)
                    if last:
                        return
                finally:
                    self._answered()
        except _Stopped:  # stopped while a chunked message was under way
            pass
        except ConnectionError:  # the client hung up
            pass
        except Exception:  # a bug of ours must cost this session, never the server
            log.exception("the shared-memory channel of client %s failed", self.session[:8])
        finally:
            channel.close()  # hangs up first: a client still waiting is told, not left waiting

    def _answered(self) -> None:
        """After an answer: release the session if it was detached meanwhile (see :meth:`stop`)."""
        with self._guard:
            self._answering = False
            then, self._then = self._then, None
        if then is not None:
            try:
                then()
            except Exception:
                log.exception("releasing client %s failed", self.session[:8])
