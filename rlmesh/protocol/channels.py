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
        self._thread = threading.Thread(target=self._run, name=f"rlmesh-shm-{session[:8]}", daemon=True)

    def start(self) -> SessionChannel:
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """End the thread after the request it is answering, if any (waits up to ``timeout``)."""
        self._stopped = True
        if self.closing or threading.current_thread() is self._thread or not self._thread.is_alive():
            return
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("the shared-memory channel of client %s is still answering a request after "
                        "%.0f s; detaching it anyway", self.session[:8], timeout)

    def _running(self) -> None:
        """Called while a chunked message waits on the peer: give up once stopped."""
        if self._stopped:
            raise _Stopped

    def _run(self) -> None:
        channel = self.channel
        try:
            while not self._stopped:
                if not channel.wait(SLICE_S) or self._stopped:  # detached meanwhile: answer no more
                    continue
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
        except _Stopped:  # stopped while a chunked message was under way
            pass
        except ConnectionError:  # the client hung up
            pass
        except Exception:  # a bug of ours must cost this session, never the server
            log.exception("the shared-memory channel of client %s failed", self.session[:8])
        finally:
            channel.close()  # hangs up first: a client still waiting is told, not left waiting
