"""One client's connection to an rlmesh endpoint: handshake, requests, heartbeats, failures.

A dead server never hangs a client: the socket monitor reports a dropped connection at once
(TCP reset, unix socket closed), zmq heartbeats notice a peer that went silent, and connect and
request timeouts bound everything else.

When the server runs on this host (in a process or a container of its own), requests and
replies switch to a shared-memory channel (:mod:`rlmesh.protocol.shm`) after the handshake;
the zmq socket stays connected, so heartbeats and the watch on the server's liveness are the
same either way.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Any

import zmq
from zmq.utils.monitor import parse_monitor_message

from rlmesh._version import __version__
from rlmesh.errors import (
    EnvironmentException,
    ProtocolError,
    ServerBusyError,
    VersionMismatchError,
)
from rlmesh.protocol import interrupts, shm
from rlmesh.protocol.address import channel_mode, to_user_address
from rlmesh.protocol.keys import ClientKeys, handshake_error
from rlmesh.protocol.messages import (
    PROTOCOL_GENERATION,
    ErrorKind,
    Request,
    frame_contents,
    recv_frames,
    send_frames,
)
from rlmesh.protocol.timeouts import check_timeout, deadline_in
from rlmesh.wire import codec

__all__ = ["Connection", "RECEIVE_SLICE_MS", "wait_any"]

log = logging.getLogger(__name__)

#: How often (ms) a waiting request, or a multi-endpoint gather, looks at monitors and deadlines.
RECEIVE_SLICE_MS = 100
_NOBLOCK = int(zmq.NOBLOCK)
_HANDSHAKE_FAILED = (zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL, zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL,
                     zmq.EVENT_HANDSHAKE_FAILED_AUTH)
_MONITORED = zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED
for _event in _HANDSHAKE_FAILED:
    _MONITORED |= _event
_ZMTP_HEARTBEAT_MS = 1000
_ZMTP_TIMEOUT_MS = 10000


class Connection:
    """A request/reply channel to one endpoint, attached as one session.

    Args:
        endpoint: zmq endpoint (``tcp://`` or ``ipc://``).
        connect_timeout: Seconds to wait for the handshake before ``ConnectionError``.
        request_timeout: Seconds to wait for any reply; ``None`` waits as long as the server
            is alive (slow envs are fine, dead servers are still detected).
        heartbeat_interval: Seconds between liveness messages sent from a background thread,
            so the server can tell an idle client from a dead one; ``None`` disables them.
        tensor_factory / object_array: How decoded tensors and object arrays are built.
        server_key / client_key: For a keyed server: its public certificate and this client's
            secret one (defaults ``$RLMESH_SERVER_KEY`` / ``$RLMESH_CLIENT_KEY``). A wrong,
            missing or unauthorized key raises :class:`~rlmesh.errors.AuthenticationError` at
            once, naming the key and the fix.
        transport: ``"auto"`` (default) switches to shared memory when the server shares this
            host, ``"zmq"`` never does, ``"shm"`` requires it (``ConnectionError`` otherwise).
            ``"tcp"``/``"unix"`` mean ``"auto"`` here (they pick the socket kind of an address).
            Unset, ``$RLMESH_TRANSPORT`` decides, so clients made for you (sandboxes,
            ``Model.run``) can be kept on zmq too.
    """

    def __init__(
        self,
        endpoint: str,
        *,
        connect_timeout: float = 10.0,
        request_timeout: float | None = None,
        heartbeat_interval: float | None = 2.0,
        tensor_factory: codec.TensorFactory | None = None,
        object_array: Callable[[codec.ObjectArray], Any] | None = None,
        server_key: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
        transport: str | None = None,
    ) -> None:
        mode = channel_mode(transport if transport not in (None, "tcp", "unix", "ipc")
                            else os.environ.get("RLMESH_TRANSPORT") or transport)
        connect_timeout = check_timeout("connect_timeout", connect_timeout)
        self.request_timeout = check_timeout("request_timeout", request_timeout)
        heartbeat_interval = check_timeout("heartbeat_interval", heartbeat_interval)
        self._keys = ClientKeys.resolve(server_key, client_key)
        self.endpoint = endpoint
        self.address = to_user_address(endpoint)
        # The handshake decodes to plain Tensors: space specs hold Tensor bounds whatever the backend.
        self._tensor_factory: codec.TensorFactory | None = None
        self._object_array = object_array
        self._session = uuid.uuid4().hex
        self._request_id = 0
        self._pending_kind = ""
        self._closed = False
        self._closed_message = "the client is closed"
        #: The thread in :meth:`close`: from then on the socket is its alone (see :meth:`_check_open`).
        self._closer: int | None = None
        #: One close at a time: a second caller (another thread) waits for the first, then returns.
        #: Reentrant: a signal handler may close the client in the middle of the main thread's close.
        self._closing = threading.RLock()
        self._broken: str | None = None
        self._lost_error: Exception | None = None
        self._channel: shm.Channel | None = None
        #: Requests (id, frames) waiting to go into the channel, behind a reply still owed (see
        #: :meth:`send`); the id of the first of them while it is being written (0: none); the
        #: id of the last request that went into the channel whole; and, once a message was cut
        #: off there, the last request whose reply went with it.
        self._queued: collections.deque[tuple[int, str, list[Any]]] = collections.deque()
        self._writing = 0
        self._last_in_channel = 0
        self._lost_up_to = 0
        #: A reply read from the channel whose hand-over to the next queued request Ctrl-C cut
        #: short: the next wait reads it first, as if it were still in the channel.
        self._kept: list[Any] | None = None
        #: Turns "lost the connection" into a truer error: a sandbox asks its engine what happened.
        self.explain_loss: Callable[[str], Exception] | None = None
        self._context: zmq.Context[Any] = zmq.Context.instance()
        #: Held by whoever uses the socket or its monitor; see :meth:`_check_open`.
        self._socket_lock = threading.Lock()
        self._socket = self._socket_for(endpoint)
        self._monitor = self._socket.get_monitor_socket(_MONITORED)
        self._connected = False
        self._socket.connect(endpoint)
        self._heartbeat_stop = threading.Event()
        self._heartbeat: threading.Thread | None = None
        try:
            self.contract_wire = self._hello(connect_timeout, mode)
        except BaseException:
            self.close(notify=False)
            raise
        self._tensor_factory = tensor_factory
        # Plain Tensors keep the buffer they are built on. A zmq frame belongs to its message
        # alone; the shared segment is overwritten by the next message, so take copies from it.
        self._copy_from_channel = tensor_factory is None
        if heartbeat_interval:
            self._heartbeat = threading.Thread(target=self._beat, args=(heartbeat_interval,),
                                               name="rlmesh-heartbeat", daemon=True)
            self._heartbeat.start()

    def _socket_for(self, endpoint: str) -> zmq.Socket[Any]:
        socket: zmq.Socket[Any] = self._context.socket(zmq.DEALER)
        socket.setsockopt(zmq.LINGER, 0)
        socket.setsockopt(zmq.HEARTBEAT_IVL, _ZMTP_HEARTBEAT_MS)
        socket.setsockopt(zmq.HEARTBEAT_TIMEOUT, _ZMTP_TIMEOUT_MS)
        socket.setsockopt(zmq.RCVTIMEO, RECEIVE_SLICE_MS)
        socket.setsockopt(zmq.SNDTIMEO, RECEIVE_SLICE_MS)  # see _send_frames
        if self._keys is not None:
            self._keys.apply(socket)
        if "[" in endpoint:
            socket.setsockopt(zmq.IPV6, 1)
        return socket

    # --- handshake ------------------------------------------------------------------------------

    def _hello(self, timeout: float, mode: str) -> dict[str, Any]:
        payload: dict[str, Any] = {"protocol": PROTOCOL_GENERATION, "version": __version__}
        if mode != "zmq" and shm.available() and shm.kernel_id():
            # The server offers shared memory only if it runs on this kernel (this host, or a
            # container of it); nothing is offered across a network.
            payload["transports"] = ["shm"]
            payload["kernel"] = shm.kernel_id()
        try:
            contract = self.request(Request.HELLO, payload, timeout=timeout, connecting=True)
        except TimeoutError:
            raise ConnectionError(
                f"no rlmesh server answered at {self.address} within {timeout:g} s; is it running "
                "and is the address right? (start one with `rlmesh serve ENV_ID --address ...`)"
            ) from None
        if not isinstance(contract, dict):
            raise ProtocolError(f"the peer at {self.address} is not an rlmesh server")
        protocol, version = contract.get("protocol"), contract.get("server_version")
        if protocol != PROTOCOL_GENERATION or version != __version__:
            self.close()  # the server attached us already: detach, or it stays busy for a fixed client
            raise VersionMismatchError(
                f"rlmesh version mismatch: this client runs rlmesh {__version__} (protocol "
                f"{PROTOCOL_GENERATION}), the server at {self.address} runs rlmesh {version} "
                f"(protocol {protocol}); install the same version on both sides, e.g. "
                f"`pip install rlmesh=={version}` here or rlmesh=={__version__} on the server"
            )
        offer = contract.pop("shm", None)
        if offer is not None:
            if "transports" in payload:  # a client kept on zmq stays there, offer or not
                self._channel = shm.open_segment(shm.SegmentOffer.from_wire(offer))
            if self._channel is None:  # the server need not keep a thread waiting on the segment
                try:
                    send_frames(self._socket, codec.encode([Request.DECLINE, 0, self._session, None]))
                except zmq.Again:  # the connection is gone: the server ends the session on its own
                    pass
        if mode == "shm" and self._channel is None:
            self.close()
            if not shm.available():
                why = "it needs x86-64 Linux with /dev/shm"
            elif offer is None:
                why = ("the server did not offer one (it runs on another host, or with "
                       "transport='zmq', or its /dev/shm is full)")
            else:
                why = ("this user may not open the server's memory (another user's container); "
                       "run the client as the server's user or root")
            raise ConnectionError(f"transport='shm': no shared-memory channel to {self.address}: {why}; "
                                  "use transport='auto' to fall back to zmq")
        if self._channel is not None:
            log.debug("requests to %s go through shared memory", self.address)
        return contract

    @property
    def transport(self) -> str:
        """``"shm"`` when requests go through shared memory, else ``"zmq"``."""
        return "shm" if self._channel is not None else "zmq"

    # --- requests -------------------------------------------------------------------------------

    def request(self, kind: str, payload: Any = None, *, timeout: float | None = None,
                connecting: bool = False) -> Any:
        """Send one request and return the decoded reply payload (or raise its error)."""
        request_id = self.send(kind, payload, timeout=timeout, connecting=connecting)
        return self.receive(request_id, timeout=timeout, connecting=connecting)

    @property
    def socket(self) -> zmq.Socket[Any]:
        """The request socket, for polling many connections together (read replies with :meth:`poll_reply`)."""
        return self._socket

    def send(self, kind: str, payload: Any = None, *, timeout: float | None = None,
             connecting: bool = False) -> int:
        """Send a request without waiting for its reply; return its id for :meth:`receive` or
        :meth:`poll_reply`. ``timeout`` bounds the rare wait to hand it over (as for :meth:`receive`)."""
        if self._closed:
            raise ConnectionError(f"the client for {self.address} is closed")
        if self._broken:
            raise self._lost_error or ConnectionError(self._broken)
        self._request_id += 1
        self._pending_kind = kind
        frames = codec.encode([kind, self._request_id, self._session, payload])
        channel = self._channel
        if self._queued or (channel is not None and channel.torn):
            self._settle()
            channel = self._channel
        if channel is not None:
            if channel.awaiting or self._queued:
                # Requests and replies alternate in the channel: this one goes in once the replies
                # owed before it are read (a request still under way, an interrupted wait's, or one
                # a multi-endpoint gather gave up). Over zmq it would queue in the socket alike.
                self._queued.append((self._request_id, kind, frames))
                return self._request_id
            self._last_in_channel = self._request_id
            wait = self.request_timeout if timeout is None else timeout
            channel.send(frames, alive=self._alive_until(deadline_in(wait), f"a {kind} request"))
            return self._request_id
        self._send_frames(frames, timeout, connecting)
        return self._request_id

    def _send_frames(self, frames: list[Any], timeout: float | None, connecting: bool, *,
                     dequeue: collections.deque[Any] | None = None) -> None:
        """Queue ``frames`` on the socket. zmq queues at once while it has a connection (or is
        still making one); it has none after a failed key handshake, and would block for good.
        So wait in slices, asking the monitor why, up to ``timeout`` (default request_timeout).

        ``dequeue``: ``frames`` are the first request of this queue (:meth:`_send_queued_over_zmq`),
        taken off it as they go out."""
        wait = self.request_timeout if timeout is None else timeout
        deadline = deadline_in(wait)
        while True:
            try:
                if dequeue is not None or len(frames) > 1:
                    # Ctrl-C held back: a message's frames go out together (zmq would join the
                    # rest of a cut-off one to the next), and a queued one leaves the queue with them.
                    with interrupts.held(), self._socket_lock:
                        self._check_open()
                        send_frames(self._socket, frames)
                        if dequeue is not None:
                            dequeue.popleft()
                else:
                    with self._socket_lock:
                        self._check_open()
                        send_frames(self._socket, frames)
                return
            except zmq.Again:
                self._check_monitor(connecting)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError(f"could not send to {self.address} within {wait:g} s: "
                                       "there is no connection to the server") from None

    def receive(self, request_id: int, *, timeout: float | None = None, connecting: bool = False) -> Any:
        """Wait for the reply to ``request_id`` and return its payload (or raise its error)."""
        wait = self.request_timeout if timeout is None else check_timeout("timeout", timeout)
        deadline = deadline_in(wait)
        done, result = self._catch_up(request_id)
        if done:
            return result
        channel = self._channel
        if channel is not None:
            done, result = self._channel_reply(channel, request_id, deadline, breaking=True)
            if done:
                return result
            self.mark_timed_out(wait or 0.0)
            raise TimeoutError(self._broken or f"no reply from {self.address}")
        socket = self._socket
        while True:
            # Blocking receives of at most RECEIVE_SLICE_MS each: between them, look at the monitor.
            try:
                with self._socket_lock:
                    self._check_open()
                    frames = recv_frames(socket)
            except zmq.Again:
                self._check_monitor(connecting)
                if deadline is not None and time.monotonic() >= deadline:
                    if not connecting:
                        self.mark_timed_out(wait or 0.0)
                    raise TimeoutError(self._broken or f"no reply from {self.address}") from None
                continue
            done, result = self._reply_to(request_id, frame_contents(frames))
            if done:
                return result

    def _channel_reply(self, channel: shm.Channel, request_id: int, deadline: float | None, *,
                       breaking: bool) -> tuple[bool, Any]:
        """Wait on the shared-memory channel: ``(True, payload)`` once the reply is in, or
        ``(False, None)`` when ``deadline`` passes.

        ``breaking``: ``deadline`` also bounds a reply that travels in pieces (past it the client
        is unusable, as for :meth:`receive`). Otherwise such a reply gets ``request_timeout`` from
        its first piece: a wait that may be repeated must not break the client mid-message.
        (The channel is passed, not read from the client: another thread may close it.)"""
        while self._channel_wait(channel, deadline):
            whole_by = deadline if breaking else deadline_in(self.request_timeout)
            done, value = self._take_reply(request_id, channel, whole_by)
            if done:
                return True, value
        return False, None

    def _take_reply(self, request_id: int, channel: shm.Channel, deadline: float | None) -> tuple[bool, Any]:
        """Read the message waiting in the channel as a reply (see :meth:`_reply_to`); then the
        next queued request goes in (not before: the reply is decoded straight from the segment)."""
        frames = channel.receive(alive=self._alive_until(deadline, "a reply"), copy=self._copy_from_channel)
        reply = self._decode_reply(frames)
        if self._queued:
            self._kept = reply  # until the hand-over is done: Ctrl-C in it must not lose the reply
            self._resume_queue(channel)
            self._kept = None
        return self._answer(request_id, reply)

    def _resume_queue(self, channel: shm.Channel) -> None:
        """Write the first queued request into the channel if no reply is owed there.

        Safe to repeat after an interrupt anywhere in it (Ctrl-C): the request being written is
        taken off the queue only once the channel holds it whole (the channel's ``awaiting`` is
        set with no call between it and the store that hands the message over). So it is either
        in the channel or still first in the queue: never lost, never written twice. One cut off
        midway (a torn channel) is still queued, and goes over zmq with the rest."""
        writing, queued = self._writing, self._queued
        if writing:
            if queued and queued[0][0] == writing and channel.awaiting:
                self._last_in_channel = writing
                queued.popleft()
            self._writing = 0
        if queued and not channel.awaiting and not channel.torn:
            self._writing, kind, frames = queued[0]
            channel.send(frames, alive=self._alive_until(deadline_in(self.request_timeout), f"a {kind} request"))
            self._last_in_channel = self._writing
            queued.popleft()
            self._writing = 0

    def _channel_wait(self, channel: shm.Channel, deadline: float | None) -> bool:
        """Wait until a message is in the channel (``True``) or ``deadline`` passes (``False``),
        looking at the monitor between slices."""
        while True:
            left = shm.SLICE_S if deadline is None else min(shm.SLICE_S, deadline - time.monotonic())
            if channel.wait(left) if left > 0 else channel.ready():  # a reply in already counts
                return True
            self._check_monitor(False)
            if deadline is not None and time.monotonic() >= deadline:
                return False

    def _catch_up(self, request_id: int) -> tuple[bool, Any]:
        """Before waiting for ``request_id``: :meth:`_settle`; then read a reply kept from a
        hand-over Ctrl-C cut short, as :meth:`_reply_to` would (``(True, payload)`` if it is this
        request's); and if this request's reply went with a message cut off in the channel, say so."""
        channel = self._channel
        if self._queued or self._closed or (channel is not None and channel.torn):
            self._settle()
        kept, self._kept = self._kept, None
        if kept is not None:
            done, value = self._answer(request_id, kept)
            if done:
                return True, value
        if request_id <= self._lost_up_to:
            raise ConnectionError(f"the exchange with {self.address} was cut off midway in shared memory (the "
                                  "wait for it was interrupted): this request's reply is lost, though the "
                                  "request may have run; the client goes on over zmq")
        return False, None

    def _settle(self) -> None:
        """Finish what an interrupt (Ctrl-C) cut short, before anything waits on this client.

        A queued request whose turn came goes into the channel. If a message was cut off in the
        channel midway, go over zmq from now on: that message's request, and any before it, have
        lost their replies (:meth:`_catch_up` says so); the requests queued behind it go on over
        zmq and are answered there. Requests still queued after leaving the channel go out."""
        if self._closed:
            raise ConnectionError(self._closed_message)
        channel = self._channel
        if channel is None:
            self._send_queued_over_zmq()
        elif channel.torn:
            self._leave_channel(channel)
        elif self._queued:
            self._resume_queue(channel)

    def _leave_channel(self, channel: shm.Channel) -> None:
        """Go over zmq from now on: the server's channel thread ends when this end hangs up.
        Requests queued for the channel go first, in order."""
        log.warning("a message to or from %s was cut off midway in shared memory (interrupted); "
                    "this client goes over zmq from now on", self.address)
        if self._queued:
            self._resume_queue(channel)  # only settles: nothing goes into a torn channel
        self._lost_up_to = self._last_in_channel
        with interrupts.held():  # a channel left but not closed would keep the server's thread waiting
            self._channel = None
            channel.close()
        self._send_queued_over_zmq()

    def _send_queued_over_zmq(self) -> None:
        """Send the requests queued for a channel this client left, in order. Each leaves the
        queue as it goes out, Ctrl-C held back between the two: none is lost or sent twice, and
        the rest of a drain cut short goes with the next request or wait."""
        queued = self._queued
        while queued:
            self._send_frames(queued[0][2], None, False, dequeue=queued)

    def _alive_until(self, deadline: float | None, message: str) -> Callable[[], None]:
        """What a ``message`` ("a step request", "a reply") that travels in chunks checks while it
        waits on the server: the connection, and ``deadline``, past which the channel holds half
        a message for good."""
        if deadline is None:
            return self.check_alive

        def alive() -> None:
            self.check_alive()
            if time.monotonic() >= deadline:
                self._broken = (f"the server at {self.address} stopped taking part in {message} sent in "
                                "pieces; the client is unusable, create a new one")
                raise TimeoutError(self._broken)
        return alive

    def wait_reply(self, request_id: int, timeout: float) -> tuple[bool, Any]:
        """Wait up to ``timeout`` seconds: ``(True, payload)`` once the reply is in, else
        ``(False, None)``. Unlike :meth:`receive`, running out of time leaves the connection
        usable and the request answerable: waiting again later still gets its reply."""
        deadline = time.monotonic() + check_timeout("timeout", timeout)
        done, value = self._catch_up(request_id)
        if done:
            return True, value
        channel = self._channel
        if channel is not None:
            return self._channel_reply(channel, request_id, deadline, breaking=False)
        socket = self._socket
        while True:
            slice_ms = max(0, min(RECEIVE_SLICE_MS, int((deadline - time.monotonic()) * 1000) + 1))
            with self._socket_lock:
                self._check_open()
                polled = socket.poll(slice_ms)
            if polled:
                done, value = self.poll_reply(request_id)
                if done:
                    return True, value
            else:
                self._check_monitor(False)
            if time.monotonic() >= deadline:
                return False, None

    def poll_reply(self, request_id: int, *, block: bool = False) -> tuple[bool, Any]:
        """Read what has arrived: ``(True, payload)`` once the reply to ``request_id`` is in,
        else ``(False, None)``; an error reply raises its exception. ``block`` waits up to one
        receive slice (:data:`RECEIVE_SLICE_MS`) for each message instead of returning at once."""
        done, value = self._catch_up(request_id)
        if done:
            return True, value
        channel = self._channel
        if channel is not None:
            while channel.wait(RECEIVE_SLICE_MS / 1000 if block else 0.0, sleep=block):
                done, result = self._take_reply(request_id, channel, deadline_in(self.request_timeout))
                if done:
                    return True, result
            return False, None
        flags = 0 if block else _NOBLOCK
        while True:
            try:
                with self._socket_lock:
                    self._check_open()
                    frames = recv_frames(self._socket, flags)
            except zmq.Again:
                return False, None
            done, result = self._reply_to(request_id, frame_contents(frames))
            if done:
                return True, result

    def ready(self) -> bool:
        """Whether a shared-memory reply, or one kept from a hand-over Ctrl-C cut short, is
        waiting (a zmq reply shows on :attr:`socket` instead). Closed: ``ConnectionError``."""
        channel = self._channel
        if channel is None:
            self._check_open()  # another thread's close() takes the channel away
            return self._kept is not None
        return self._kept is not None or channel.ready()

    def wait_channel(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s for a shared-memory reply; ``False`` on zmq connections.
        Closed: ``ConnectionError``."""
        channel = self._channel
        if channel is None:
            self._check_open()
            return False
        return channel.wait(timeout)

    def _reply_to(self, request_id: int, frames: list[Any]) -> tuple[bool, Any]:
        """Decode one reply (its frame contents): ``(True, payload)`` if it answers ``request_id``;
        errors raise."""
        return self._answer(request_id, self._decode_reply(frames))

    def _decode_reply(self, frames: list[Any]) -> list[Any]:
        """One reply's frame contents as ``[status, request id, result]``."""
        reply = codec.decode(frames, self._tensor_factory, self._object_array)
        if not isinstance(reply, list) or len(reply) != 3:
            raise ProtocolError(f"malformed reply from {self.address}")
        return reply

    def _answer(self, request_id: int, reply: list[Any]) -> tuple[bool, Any]:
        """``(True, payload)`` if the decoded ``reply`` answers ``request_id``; errors raise."""
        status, reply_id, result = reply
        if reply_id != request_id and reply_id != -1:
            return False, None  # a late reply to a request that timed out or was abandoned earlier
        if status == "ok":
            return True, result
        raise self._error(result)

    def check_alive(self) -> None:
        """Raise ``ConnectionError`` if the monitor saw the server drop the connection."""
        self._check_monitor(False)

    def _check_open(self) -> None:
        """Raise ``ConnectionError`` once the client is closed, or another thread is closing it.

        Call it first thing under ``_socket_lock``, which is held for each use of the socket or its
        monitor (of at most a receive slice): zmq sockets are not thread-safe, and libzmq aborts the
        process on a socket closed under a poll. :meth:`close` from another thread waits for such a
        use, and every use by another thread after it begins raises ``ConnectionError`` (the
        goodbye's reply is close's own).

        The lock is taken by ``with`` only, never by ``acquire()``: Ctrl-C lands after a call
        returns, and one landing right after ``acquire()`` would leave the socket locked for good."""
        if self._closed or (self._closer is not None and self._closer != threading.get_ident()):
            raise ConnectionError(self._closed_message)

    def mark_timed_out(self, waited: float) -> None:
        """Declare the connection unusable after a request went unanswered for ``waited`` s."""
        self._broken = (f"the server at {self.address} did not answer a {self._pending_kind} request "
                        f"within {waited:g} s; the client is unusable, create a new one")

    def _check_monitor(self, connecting: bool) -> None:
        while True:
            with self._socket_lock:
                self._check_open()
                if not self._monitor.poll(0):
                    return
                message = parse_monitor_message(self._monitor.recv_multipart())
            event = message["event"]
            if event in _HANDSHAKE_FAILED:  # a key is wrong or missing: retrying cannot help
                refused = handshake_error(event, int(message["value"]), self.endpoint, self.address, self._keys)
                self._broken = str(refused)
                raise refused
            if event == zmq.EVENT_CONNECTED:
                self._connected = True
            elif event == zmq.EVENT_DISCONNECTED and self._connected and not connecting:
                raise self._lost(f"lost the connection to the server at {self.address} (it stopped "
                                 "or crashed); start it again and create a new client")

    def _lost(self, message: str) -> Exception:
        """Mark the connection broken; the error says why, as well as :attr:`explain_loss` can."""
        self._broken = message
        error: Exception = ConnectionError(message)
        if self.explain_loss is not None:
            try:
                error = self.explain_loss(message)
            except Exception:  # the plain message is still true; never hide it behind a new failure
                log.warning("could not find out why the connection to %s was lost", self.address,
                            exc_info=True)
        self._lost_error = error
        return error

    def _error(self, payload: Any) -> Exception:
        if not isinstance(payload, dict):
            return ProtocolError(f"malformed error reply from {self.address}")
        kind, message = payload.get("kind"), str(payload.get("message", ""))
        if kind == ErrorKind.ENVIRONMENT:
            remote_type = str(payload.get("type", ""))
            return EnvironmentException(f"{remote_type}: {message}" if remote_type else message,
                                        remote_type=remote_type,
                                        remote_traceback=str(payload.get("traceback", "")))
        if kind == ErrorKind.INVALID_ACTION:
            return ValueError(message)
        if kind == ErrorKind.BUSY:
            return ServerBusyError(message)
        if kind == ErrorKind.VERSION:
            return VersionMismatchError(message)
        if kind == ErrorKind.NOT_ATTACHED:
            return ConnectionError(message)
        if kind == ErrorKind.REFUSED:
            return PermissionError(message)
        if kind == ErrorKind.NO_ATTRIBUTE:
            return AttributeError(message)
        return ProtocolError(message)

    # --- heartbeats and closing -----------------------------------------------------------------

    def _beat(self, interval: float) -> None:
        socket = self._socket_for(self.endpoint)
        socket.connect(self.endpoint)
        message = codec.encode([Request.HEARTBEAT, 0, self._session, None])
        try:
            while not self._heartbeat_stop.wait(interval):
                try:
                    socket.send_multipart(message, zmq.NOBLOCK)
                except zmq.Again:
                    pass  # not connected right now; the main socket will notice if it's for good
        finally:
            socket.close(linger=0)

    def close(self, *, notify: bool = True) -> None:
        """Detach from the server (best effort) and release the sockets. Idempotent, from any thread."""
        with self._closing:
            if not self._closed:
                self._close(notify)

    def _close(self, notify: bool) -> None:
        # What a request still waiting on the channel in another thread raises.
        closed_meanwhile = f"the client for {self.address} was closed while a request waited for its reply"
        with self._socket_lock:  # a wait in another thread stops now, not after taking the goodbye's reply
            self._closed_message = closed_meanwhile
            self._closer = threading.get_ident()
        # Requests still queued are dropped (they never reached the server). A new queue: a wait
        # in another thread may still be taking from the old one, and the goodbye must not.
        self._queued = collections.deque()
        # The channel goes first, and the goodbye over zmq, never through it: a reply may still
        # be owed there (an interrupted request; the server releases the session once it is
        # answered), or another thread may be using it (close from a watchdog): it gets
        # ChannelClosed at once.
        channel, self._channel = self._channel, None
        if channel is not None:
            channel.close(closed_meanwhile)
        if notify and not self._broken:
            try:
                self.request(Request.CLOSE, timeout=1.0)
            except Exception:  # the server may be gone already; closing must still succeed
                pass
        with self._socket_lock:
            if self._closed:
                return  # closed meanwhile, by a close nested in this one (a signal handler)
            self._closed = True
        self._heartbeat_stop.set()
        if self._heartbeat is not None:
            self._heartbeat.join(timeout=1.0)
        self._socket.disable_monitor()
        self._monitor.close(linger=0)
        self._socket.close(linger=0)


def wait_any(connections: Sequence[Connection], timeout_ms: int) -> set[Connection]:
    """Those of ``connections`` with something to read, waiting up to ``timeout_ms`` for one.

    zmq connections are polled together as usual. Shared-memory replies cannot wake a zmq
    poll, so with any such connection this looks at all of them in turns: spinning briefly,
    then sleeping on one channel at a time for a millisecond (a reply on that one wakes it at
    once, the others are seen within the millisecond). A negative ``timeout_ms`` waits without
    limit. A connection closed (by another thread) raises ``ConnectionError``.
    """
    for connection in connections:
        connection._settle()  # what an interrupt cut short; a connection may move to zmq here
    kept = {c for c in connections if c._kept is not None}
    if kept:
        return kept
    channels = [c for c in connections if c.transport == "shm"]
    sockets = {c.socket: c for c in connections if c.transport != "shm"}
    poller = zmq.Poller()
    for socket in sockets:
        poller.register(socket, zmq.POLLIN)
    # Every wait takes the sockets in one order (by id): two threads waiting on the same
    # clients, listed in other orders, would otherwise each hold a socket the other needs.
    in_order = sorted(sockets.values(), key=id)

    def poll(timeout: int) -> set[Connection]:
        return {sockets[socket] for socket, _ in _poll_holding(poller, list(in_order), timeout)}

    deadline = math.inf if timeout_ms < 0 else time.monotonic() + timeout_ms / 1000
    if not channels:
        while True:  # in slices: a close() from another thread waits for one at most
            left = deadline - time.monotonic()
            slice_ms = RECEIVE_SLICE_MS if left * 1000 > RECEIVE_SLICE_MS else max(0, math.ceil(left * 1000))
            ready = poll(slice_ms)
            if ready or slice_ms < RECEIVE_SLICE_MS:
                return ready
    turn = 0
    while True:
        ready = {c for c in channels if c.ready()}
        if sockets:
            ready |= poll(0)
        left = deadline - time.monotonic()
        if ready or left <= 0:
            return ready
        channels[turn % len(channels)].wait_channel(min(left, 0.001))
        turn += 1


def _poll_holding(poller: zmq.Poller, connections: list[Connection], timeout: int) -> list[Any]:
    """``poller.poll(timeout)`` while using each connection's socket (see
    :meth:`Connection._check_open`). One ``with`` per connection, nested by recursion: no
    window where Ctrl-C could leave a socket locked (as ``contextlib.ExitStack`` has). The depth
    stays below Python's recursion limit: a zmq context holds at most 1023 sockets by
    default, at least two per connection (its socket and its monitor's)."""
    if not connections:
        return poller.poll(timeout)
    connection = connections.pop()
    with connection._socket_lock:
        connection._check_open()
        return _poll_holding(poller, connections, timeout)
