"""What every rlmesh server shares: the socket, the loop, sessions, the handshake, error replies.

:class:`~rlmesh.server.EnvServer` and :class:`~rlmesh.server.model.ModelServer` differ only in
what they answer (``reset``/``step``/``render`` or ``predict``) and what their handshake
describes; everything else lives here. One client is attached at a time; a request that fails
gets an error reply and the endpoint keeps serving.

Why one module of this size: the socket's lifecycle, its two loops (busy-polling single session,
workers for many) and the request handling share one socket that only the loop thread may use;
keys and session bookkeeping are modules of their own.
"""

from __future__ import annotations

import functools
import logging
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Callable
from types import TracebackType
from typing import Any, TypeVar

import zmq

from rlmesh._version import __version__
from rlmesh.errors import ProtocolError
from rlmesh.protocol import shm
from rlmesh.protocol.address import to_user_address, to_zmq_endpoint
from rlmesh.protocol.channels import SessionChannel
from rlmesh.protocol.keys import ServerKeys, is_private_endpoint
from rlmesh.protocol.messages import (
    PROTOCOL_GENERATION,
    REPLY_FIELDS,
    ErrorKind,
    Request,
    frame_contents,
    recv_frames,
    send_frames,
)
from rlmesh.protocol.sessions import Sessions, SessionWorkers
from rlmesh.protocol.timeouts import check_timeout
from rlmesh.wire import codec

__all__ = ["DEFAULT_BUSY_POLL", "Endpoint", "ErrorReply"]

log = logging.getLogger(__name__)

_POLL_MS = 250
#: How long a stopping server waits for its channel threads to finish the requests under way.
_CHANNEL_GRACE_S = 10.0
_NOBLOCK = int(zmq.NOBLOCK)
#: Default ``busy_poll`` window (seconds), long enough for a client that steps in a loop.
DEFAULT_BUSY_POLL = 0.0005
EndpointT = TypeVar("EndpointT", bound="Endpoint")


class ErrorReply(Exception):
    """Raised by a request handler to answer with an error of a given kind."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.payload = {"kind": kind, "type": "", "message": message, "traceback": ""}


def _error_payload(kind: str, exc: BaseException) -> dict[str, str]:
    return {
        "kind": kind,
        "type": type(exc).__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _refusal(exc: BaseException) -> list[Any]:
    """The frames of a protocol-error reply to a request whose id is unknown; they always encode."""
    return codec.encode(["error", -1, _error_payload(ErrorKind.PROTOCOL, exc)])


def _spin_recv(socket: zmq.Socket[Any], spin_ns: int) -> list[zmq.Frame] | None:
    """Poll ``socket`` without blocking for up to ``spin_ns``; ``None`` if nothing came.

    A thread that sleeps in a blocking receive is woken through the scheduler, which on
    virtual machines costs tens of microseconds per request; polling skips that wake-up.
    """
    end = time.perf_counter_ns() + spin_ns
    while time.perf_counter_ns() < end:
        try:
            return recv_frames(socket, _NOBLOCK)
        except zmq.Again:
            os.sched_yield()  # let a client sharing this CPU run
    return None


def _usable_cpus(cgroup_root: str = "/sys/fs/cgroup") -> float:
    """CPUs this process may use: its CPU affinity, capped by a cgroup quota (``docker --cpus``)."""
    if hasattr(os, "sched_getaffinity"):  # Linux: what this process may run on
        cpus = float(len(os.sched_getaffinity(0)))
    else:
        cpus = float(os.cpu_count() or 1)
    quota = _cgroup_cpu_quota(cgroup_root)
    return cpus if quota is None else min(cpus, quota)


def _cgroup_cpu_quota(root: str) -> float | None:
    """The CPU quota of this process's cgroup in CPUs (cgroup v2 or v1), ``None`` if unlimited."""
    try:
        with open(f"{root}/cpu.max") as file:  # v2: "QUOTA PERIOD", QUOTA may be "max"
            quota, period = file.read().split()[:2]
    except (OSError, ValueError):
        try:
            with open(f"{root}/cpu/cpu.cfs_quota_us") as file:  # v1: -1 when unlimited
                quota = file.read().strip()
            with open(f"{root}/cpu/cpu.cfs_period_us") as file:
                period = file.read().strip()
        except OSError:
            return None
    try:
        value = int(quota) / int(period)
    except (ValueError, ZeroDivisionError):  # "max", or something this code does not know
        return None
    return value if value > 0 else None


class Endpoint:
    """A bound ROUTER socket serving one attached client session at a time.

    Subclasses implement :meth:`_handshake` (what ``hello`` returns) and :meth:`_answer`
    (every other request kind), and may extend :meth:`_release`.
    """

    #: Used in log lines and messages, e.g. "model server".
    role = "server"

    def __init__(
        self,
        address: str | int,
        *,
        session_timeout: float,
        owner_timeout: float | None,
        busy_poll: float = DEFAULT_BUSY_POLL,
        tensor_factory: codec.TensorFactory | None = None,
        object_array: Any = None,
        server_key: str | os.PathLike[str] | None = None,
        authorized_keys: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        max_sessions: int = 1,
        transport: str = "auto",
    ) -> None:
        if transport not in ("auto", "zmq"):
            raise ValueError(f"a server's transport is 'auto' (shared memory for clients on this host) "
                             f"or 'zmq' (never shared memory), got {transport!r}")
        self.transport = transport
        if busy_poll < 0:
            raise ValueError(f"busy_poll must be >= 0 seconds (0 turns it off); got {busy_poll!r}")
        self.session_timeout = check_timeout("session_timeout", session_timeout)
        # With less than two CPUs a polling server would take turns away from its client, and
        # under a cgroup quota it would spend the quota and get throttled.
        self.busy_poll = busy_poll if _usable_cpus() >= 2 else 0.0
        self.owner_timeout = check_timeout("owner_timeout", owner_timeout)
        self._tensor_factory = tensor_factory
        self._object_array = object_array
        endpoint = to_zmq_endpoint(address)
        self._keys = ServerKeys.resolve(server_key, authorized_keys)
        if self._keys is None and not insecure and not is_private_endpoint(endpoint):
            raise ValueError(
                f"refusing to serve on {to_user_address(endpoint)} without keys: anyone who reaches "
                "that address could drive this server. Pass server_key= (a secret certificate) and "
                "authorized_keys= (a folder of client public certificates); make them with "
                "`rlmesh keys new NAME`. To serve unencrypted to everyone on purpose, pass insecure=True")
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        # A keyed endpoint has a context of its own: its authenticator answers for the whole context.
        self._context: zmq.Context[Any] = zmq.Context() if self._keys else zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        if self._keys is not None:
            self._keys.apply(self._context, self._socket)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # replies to vanished peers raise, not vanish
        if "[" in endpoint:
            self._socket.setsockopt(zmq.IPV6, 1)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._close_socket()
            raise OSError(f"cannot listen on {to_user_address(endpoint)}: {exc}") from exc
        self._endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        if self._endpoint.startswith("ipc://"):
            os.chmod(self._endpoint[len("ipc://"):], 0o600)  # this user's processes only
        # shutdown() wakes the blocked receive through a second, in-process address.
        self._wake_endpoint = f"inproc://rlmesh-wake-{uuid.uuid4().hex}"
        self._socket.bind(self._wake_endpoint)
        self._socket.setsockopt(zmq.RCVTIMEO, _POLL_MS)
        if max_sessions < 1:
            raise ValueError(f"max_sessions must be at least 1, got {max_sessions!r}")
        self._sessions = Sessions(max_sessions)
        # Several sessions are answered by a worker each, so one slow env stalls only its client.
        self._workers = SessionWorkers(self._context, self._answer_job, self._detached) \
            if max_sessions > 1 else None
        #: Sessions that were offered a shared-memory channel, and its serving thread.
        self._channels: dict[str, SessionChannel] = {}
        #: Channels of dropped sessions that may still be answering: a stopping server waits for them.
        self._finishing: list[SessionChannel] = []
        # With one session slot, the next client gets what the last one used (the env) while a
        # request of the last one may still be finishing on its channel thread: one at a time.
        self._one_at_a_time = threading.Lock() if max_sessions == 1 else None
        self._stop = threading.Event()
        self._signalled = False
        self._thread: threading.Thread | None = None
        self._loop_thread: threading.Thread | None = None
        self._stopped = threading.Event()
        self._closed = False

    # --- what subclasses provide ----------------------------------------------------------------

    def _handshake(self) -> dict[str, Any]:
        """The ``hello`` reply: at least ``protocol`` and ``server_version``."""
        raise NotImplementedError

    def _answer(self, session: str, kind: str, payload: Any) -> Any:
        """Answer one request of the attached ``session``; raise :class:`ErrorReply` to refuse."""
        raise NotImplementedError

    def _attached(self, session: str) -> None:
        """A client attached as ``session``; raising refuses it (the error goes to the client)."""

    def _detached(self, session: str) -> None:
        """``session`` closed or timed out (with several sessions: on its worker, after its last reply)."""

    def _release(self) -> None:
        """Free what the subclass holds, once, after the socket is closed."""

    def _channel_capacity(self) -> int:
        """Bytes per direction of a session's shared-memory segment; bigger messages go in chunks."""
        return 1 << 20

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The bound address in user form (with the real port when port 0 was asked for)."""
        return to_user_address(self._endpoint)

    @property
    def serving(self) -> bool:
        """Whether the serve loop runs (from :meth:`serve` or :meth:`start`) and has not stopped."""
        started = self._thread is not None or self._loop_thread is not None
        return started and not self._stopped.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until this server has stopped and cleaned up; ``False`` if ``timeout`` passed first.

        A server stops on :meth:`shutdown`, Ctrl-C, SIGTERM or its owner timeout.
        """
        return self._stopped.wait(timeout)

    def serve(self) -> None:
        """Serve until :meth:`shutdown`, Ctrl-C, SIGTERM or the owner timeout; then clean up."""
        previous: dict[signal.Signals, Any] = {}
        if threading.current_thread() is threading.main_thread():
            # Ctrl-C and SIGTERM set the stop flag rather than raise: pyzmq may run a signal
            # handler inside a frame's deallocation, where a KeyboardInterrupt would be swallowed.
            for stop_signal in (signal.SIGINT, signal.SIGTERM):
                previous[stop_signal] = signal.signal(stop_signal, self._on_signal)
        self._loop_thread = threading.current_thread()
        try:
            self._loop()
            if self._signalled:
                log.info("interrupted; shutting down")
        except KeyboardInterrupt:
            log.info("interrupted; shutting down")
        finally:
            for stop_signal, handler in previous.items():
                signal.signal(stop_signal, handler)
            self._cleanup()  # sets _stopped last: from then on shutdown() has nothing to do

    def _on_signal(self, signum: int, frame: Any) -> None:
        self._signalled = True  # no logging here: the handler may interrupt a logging call
        self._stop.set()

    def start(self: EndpointT) -> EndpointT:
        """Serve in a background thread and return self."""
        if self._thread is not None:
            raise RuntimeError(f"{self.role} already started")
        self._thread = threading.Thread(target=self.serve, name=f"rlmesh-{self.role}", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop serving and release the socket and what the subclass holds.

        Works from any thread: it wakes the serve loop (of :meth:`start` or :meth:`serve`)
        and waits up to ``timeout`` seconds for it to clean up.
        """
        self._stop.set()
        if not self.serving:  # never served, or finished already
            self._cleanup()
            return
        waker = self._context.socket(zmq.DEALER)
        waker.setsockopt(zmq.LINGER, 0)
        try:
            waker.connect(self._wake_endpoint)
            waker.send(b"", zmq.NOBLOCK)
        except zmq.ZMQError:  # the loop saw _stop on its own and closed the socket already
            pass
        waker.close()
        if threading.current_thread() is not self._loop_thread:
            self.wait(timeout)

    def __enter__(self: EndpointT) -> EndpointT:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        channels = [*self._channels.values(), *self._finishing]
        for channel in channels:  # all at once: each may be finishing a slow step
            channel.stop()
        deadline = time.monotonic() + _CHANNEL_GRACE_S
        for channel in channels:
            channel.join(deadline)
        if self._workers is not None:
            self._workers.close()
        self._close_socket()
        if self._endpoint.startswith("ipc://"):
            try:
                os.unlink(self._endpoint[len("ipc://"):])
            except OSError:
                pass
        try:
            self._release()
        finally:
            self._stopped.set()
        log.info("%s on %s stopped", self.role, self.address)

    def _close_socket(self) -> None:
        self._socket.close(linger=0)
        if self._keys is not None:
            self._keys.close()
            self._context.term()

    # --- loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        if self._workers is not None:
            self._loop_sessions()
            return
        socket = self._socket
        started = time.monotonic()
        # Only a server that owns its process polls: from a background thread it would hold
        # the GIL that the rest of the process (often the client itself) is waiting for.
        owns_process = threading.current_thread() is threading.main_thread()
        spin_ns = int(self.busy_poll * 1e9) if owns_process else 0
        spin = False
        replied_at = 0
        while not self._stop.is_set():
            frames = _spin_recv(socket, spin_ns) if spin else None
            if frames is None:
                # A blocking receive with a timeout: no poller, no extra system calls per request.
                try:
                    frames = recv_frames(socket)
                except zmq.Again:
                    frames = None
            if self._stop.is_set():
                return
            if frames is not None:
                arrived = time.perf_counter_ns()
                # Spin after this reply only if this request came within the spin window of
                # the previous reply: a client that steps in a tight loop gets its next reply
                # without a wake-up, one that thinks for longer costs no CPU.
                spin = spin_ns > 0 and arrived - replied_at < spin_ns
                try:
                    self._handle(frames)
                except Exception:  # a bug of ours must cost one request, never the server
                    log.exception("could not answer a request; serving on")
                replied_at = time.perf_counter_ns()
            if self._housekeeping(started):
                return

    def _loop_sessions(self) -> None:
        """The loop with session workers: requests in, finished replies out, no busy polling."""
        assert self._workers is not None
        socket, replies = self._socket, self._workers.replies
        poller = zmq.Poller()
        poller.register(socket, zmq.POLLIN)
        poller.register(replies, zmq.POLLIN)
        started = time.monotonic()
        while not self._stop.is_set():
            ready = dict(poller.poll(_POLL_MS))
            if self._stop.is_set():
                return
            if replies in ready:
                self._workers.forward(socket)
            if socket in ready:
                while True:
                    try:
                        frames = recv_frames(socket, _NOBLOCK)
                    except zmq.Again:
                        break
                    try:
                        self._handle(frames)
                    except Exception:  # a bug of ours must cost one request, never the server
                        log.exception("could not answer a request; serving on")
            if self._housekeeping(started):
                return

    def _housekeeping(self, started: float) -> bool:
        """Detach silent sessions; ``True`` when the owner timeout says to stop."""
        for session in self._sessions.silent_for(self.session_timeout):
            log.warning("client %s sent nothing for %.0f s; detaching it", session[:8], self.session_timeout)
            self._drop(session)
        if (self.owner_timeout is not None and not len(self._sessions)
                and time.monotonic() - max(self._sessions.last_activity, started) > self.owner_timeout):
            log.warning("no client for %.0f s; stopping (owner_timeout)", self.owner_timeout)
            return True
        return False

    def _drop(self, session: str) -> None:
        if not self._sessions.detach(session):
            return
        # A session's worker releases it after its last reply; without workers, that is done here.
        release = functools.partial(self._workers.stop if self._workers is not None else self._detached,
                                    session)
        channel = self._channels.pop(session, None)
        if channel is None:
            release()
        else:  # a request under way on its thread is answered first, and the session released after it
            channel.stop(then=release)
            self._finishing = [*(c for c in self._finishing if c.running), channel]

    def _handle(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return  # not even an identity and a header: nothing to answer
        identity = frames[0].bytes
        try:
            kind, request_id, session, payload = self._parse(frame_contents(frames[1:]))
        except ProtocolError as exc:
            self._send(identity, _refusal(exc))
            return
        if kind == Request.HEARTBEAT:
            if isinstance(session, str):
                self._sessions.touch(session)
            return
        if kind == Request.DECLINE:
            if isinstance(session, str) and session in self._channels:
                self._channels.pop(session).stop()  # the client stays on zmq
            return
        if kind not in (Request.HELLO, Request.CLOSE) and session in self._sessions:
            self._sessions.touch(session, completed=True)
            if self._workers is not None:
                self._workers.submit(session, (identity, request_id, kind, payload))
                return
        self._send(identity, self._reply_frames(request_id, kind, session, payload, self._dispatch))

    def _parse(self, contents: list[Any]) -> tuple[str, int, Any, Any]:
        """``[kind, request_id, session, payload]`` of one request, checked; else ProtocolError."""
        request = codec.decode(contents, self._tensor_factory, self._object_array)
        if not isinstance(request, list) or len(request) != 4 or not isinstance(request[0], str):
            raise ProtocolError("request must be [kind, request_id, session, payload]")
        kind, request_id, session, payload = request
        if not isinstance(request_id, int) or isinstance(request_id, bool):
            raise ProtocolError("request id must be an integer")
        return kind, request_id, session, payload

    def _answer_job(self, session: str, job: tuple[bytes, int, str, Any]) -> list[Any]:
        _, request_id, kind, payload = job
        return self._reply_frames(request_id, kind, session, payload, self._answer_one)

    def _reply_frames(self, request_id: int, kind: str, session: Any, payload: Any,
                      answer: Callable[[Any, str, Any], Any]) -> list[Any]:
        """The reply to one request: ``answer(session, kind, payload)``, or the error it raised."""
        try:
            result = answer(session, kind, payload)
        except ErrorReply as error:
            return codec.encode(["error", request_id, error.payload])
        except ProtocolError as exc:
            return codec.encode(["error", request_id, _error_payload(ErrorKind.PROTOCOL, exc)])
        except Exception as exc:  # the env or policy raised: report it and keep serving
            log.debug("request handler raised", exc_info=True)
            return codec.encode(["error", request_id, _error_payload(ErrorKind.ENVIRONMENT, exc)])
        try:
            return codec.encode(["ok", request_id, result])
        except codec.EncodeError as exc:  # the env returned something the wire cannot carry
            where = codec.EncodeError(exc.reason, exc.path[1:]).where(REPLY_FIELDS.get(kind, ()))
            message = f"the {kind} reply cannot be sent: {where}: {exc.reason}"
            log.warning("%s", message)
            return codec.encode(["error", request_id, {
                "kind": ErrorKind.ENVIRONMENT, "type": "EncodeError", "message": message, "traceback": ""}])

    def _send(self, identity: bytes, frames: list[Any]) -> None:
        try:
            send_frames(self._socket, [identity, *frames])
        except zmq.ZMQError as exc:  # the peer vanished between request and reply
            log.debug("could not reply to a vanished client: %s", exc)

    def _dispatch(self, session: Any, kind: str, payload: Any) -> Any:
        if kind == Request.HELLO:
            return self._hello(session, payload)
        if session not in self._sessions:
            raise ErrorReply(ErrorKind.NOT_ATTACHED, "this client is not attached (it closed or "
                             "timed out); reconnect with a new client")
        if kind == Request.CLOSE:
            self._drop(session)
            return None
        return self._answer_one(session, kind, payload)

    def _answer_one(self, session: str, kind: str, payload: Any) -> Any:
        """:meth:`_answer`, one request of a session at a time even if it also has a channel
        (and one at a time in all with a single session slot)."""
        lock = self._one_at_a_time
        if lock is None:
            channel = self._channels.get(session)
            if channel is None:
                return self._answer(session, kind, payload)
            lock = channel.lock
        with lock:
            return self._answer(session, kind, payload)

    def _hello(self, session: Any, payload: Any) -> Any:
        if not isinstance(session, str) or not isinstance(payload, dict):
            raise ProtocolError("hello needs a session token and a payload")
        if payload.get("protocol") != PROTOCOL_GENERATION:
            raise ErrorReply(ErrorKind.VERSION, (
                f"protocol generation mismatch: server rlmesh {__version__} speaks generation "
                f"{PROTOCOL_GENERATION}, client rlmesh {payload.get('version')} speaks "
                f"{payload.get('protocol')}; install the same rlmesh version on both sides"))
        if session in self._sessions:
            return self._handshake()
        if len(self._sessions) >= self._sessions.limit:
            # A peer that attached and never asked for anything gives way: one hello must not
            # be able to hold a server.
            idle = self._sessions.unproven()
            if idle is None:
                limit = self._sessions.limit
                held = "another client" if limit == 1 else f"{limit} clients (max_sessions={limit})"
                raise ErrorReply(ErrorKind.BUSY, (
                    f"the {self.role} at {self.address} already serves {held}; close one first, "
                    "or start another server for this one"))
            log.warning("client %s attached but never sent a request; detaching it for a new one", idle[:8])
            self._drop(idle)
        self._sessions.attach(session)
        try:
            self._attached(session)
        except BaseException:
            self._sessions.detach(session)
            raise
        if self._workers is not None:
            self._workers.start(session)
        handshake = self._handshake()
        wanted = payload.get("transports")
        same_kernel = bool(shm.kernel_id()) and payload.get("kernel") == shm.kernel_id()
        if self.transport == "auto" and isinstance(wanted, list) and "shm" in wanted and same_kernel:
            offer = self._offer_channel(session)
            if offer is not None:
                handshake = {**handshake, "shm": offer}
        return handshake

    # --- the shared-memory channel --------------------------------------------------------------

    def _offer_channel(self, session: str) -> dict[str, Any] | None:
        """Make ``session`` a shared-memory segment and serve it; the offer for the client."""
        try:
            # As for busy_poll: a server in a background thread must not spin on the GIL its
            # process (often the client itself) needs.
            owns_process = threading.current_thread() is threading.main_thread()
            channel, offer = shm.create_segment(self._channel_capacity(), spin=owns_process)
        except OSError as exc:  # a full or missing /dev/shm: this client stays on zmq
            log.info("no shared-memory channel for client %s: %s", session[:8], exc)
            return None
        self._channels[session] = SessionChannel(
            session, channel, functools.partial(self._channel_request, session),
            refuse=_refusal,
        ).start()
        return offer.to_wire()

    def _channel_request(self, session: str, frames: list[Any]) -> tuple[list[Any], bool]:
        """Answer one request that came through ``session``'s channel (on that channel's thread)."""
        try:
            kind, request_id, sender, payload = self._parse(frames)
            if sender != session:
                raise ProtocolError("a request through a session's channel must name that session")
            if kind in (Request.HELLO, Request.HEARTBEAT):
                raise ProtocolError(f"a {kind} cannot come through the shared-memory channel")
        except ProtocolError as exc:
            return _refusal(exc), False
        if kind == Request.CLOSE:
            self._close_on_loop(session)
            return codec.encode(["ok", request_id, None]), True
        self._sessions.touch(session, completed=True)
        return self._reply_frames(request_id, kind, session, payload, self._answer_one), False

    def _close_on_loop(self, session: str) -> None:
        """Detach ``session`` on the serving thread, which owns the session bookkeeping, and wait."""
        channel = self._channels.get(session)
        if channel is not None:
            channel.closing = True
        closer = self._context.socket(zmq.DEALER)
        closer.setsockopt(zmq.LINGER, 0)
        try:
            closer.connect(self._wake_endpoint)
            send_frames(closer, codec.encode([Request.CLOSE, 0, session, None]))
            if not closer.poll(5000):
                log.warning("the server did not detach client %s within 5 s", session[:8])
            else:
                closer.recv_multipart()
        except zmq.ZMQError:  # the server is stopping: its cleanup detaches everyone
            pass
        finally:
            closer.close()
