"""The same-host shared-memory channel: chosen when it should be, equal to zmq, safe, and clean.

Every other core test runs over it too (``transport="auto"`` is the default and the test servers
share this host); here are the properties of its own: the choice, equality with the zmq path
for every space kind and backend, segment hygiene on every kill path, and hostile peers.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import core_envs
import numpy as np
import pytest
import torch
import zmq

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh import EnvServer
from rlmesh.client import multi
from rlmesh.errors import ProtocolError, ServerBusyError
from rlmesh.protocol import shm
from rlmesh.protocol.connection import Connection, wait_any
from rlmesh.protocol.messages import PROTOCOL_GENERATION, Request
from rlmesh.wire import codec
from rlmesh.wire.arrays import array_from_wire

pytestmark = pytest.mark.skipif(not shm.available(), reason="shared memory needs x86-64 Linux with /dev/shm")

ZOO = core_envs.space_zoo()


def our_segments(pid: int | None = None) -> list[str]:
    """Names in /dev/shm that rlmesh made (of process ``pid`` of this pid namespace, if given)."""
    if pid is None:
        return [name for name in os.listdir("/dev/shm") if name.startswith("rlmesh-")]
    namespace = os.readlink("/proc/self/ns/pid")
    prefix = f"rlmesh-{namespace[namespace.find('[') + 1:-1]}-{pid}-"
    return [name for name in os.listdir("/dev/shm") if name.startswith(prefix)]


def hello_socket(address: str, session: str, kernel: str | None = None) -> tuple[zmq.Socket[Any], dict[str, Any]]:
    """A raw peer attached as ``session`` that asked for shared memory from kernel ``kernel``
    (this one by default), and the handshake it got."""
    socket = zmq.Context.instance().socket(zmq.DEALER)
    socket.setsockopt(zmq.LINGER, 0)
    socket.connect(address if "://" in address else f"tcp://{address}")
    payload = {"protocol": PROTOCOL_GENERATION, "version": rlmesh.__version__,
               "transports": ["shm"], "kernel": shm.kernel_id() if kernel is None else kernel}
    socket.send_multipart(codec.encode(["hello", 1, session, payload]))
    assert socket.poll(10_000), "no handshake reply"
    status, _, contract = codec.decode(socket.recv_multipart())
    assert status == "ok", contract
    return socket, dict(contract)


def raw_hello(address: str, kernel: str) -> dict[str, Any]:
    """The handshake reply to a hello that asks for shared memory from kernel ``kernel``."""
    socket, contract = hello_socket(address, "raw-hello", kernel)
    socket.send_multipart(codec.encode(["close", 2, "raw-hello", None]))
    socket.poll(2000)
    socket.close()
    return contract


# --- the choice ---------------------------------------------------------------------------------

def test_same_host_clients_take_shared_memory_and_zmq_forces_the_socket(server_pool: Any, clients: Any) -> None:
    address = server_pool("cartpole")
    fast = clients(rnp.RemoteEnv, address)
    assert fast.transport == "shm"
    fast.reset(seed=3)
    fast_steps = [fast.step(i % 2)[0] for i in range(20)]
    fast.close()
    plain = clients(rnp.RemoteEnv, address, transport="zmq")
    assert plain.transport == "zmq"
    plain.reset(seed=3)
    for i, want in enumerate(fast_steps):
        np.testing.assert_array_equal(plain.step(i % 2)[0], want, strict=True)
    plain.close()
    required = clients(rnp.RemoteEnv, address, transport="shm")
    assert required.transport == "shm"


def test_a_server_on_another_kernel_never_offers_shared_memory(server_pool: Any) -> None:
    address = server_pool("cartpole")
    assert "shm" in raw_hello(address, shm.kernel_id())
    # Another host has another boot id: what a client there asks for is never offered.
    assert "shm" not in raw_hello(address, "00000000-0000-0000-0000-000000000000")
    assert not our_segments(), "a segment was made for a client that could not use it"


def test_a_client_on_another_host_stays_on_zmq_and_shm_required_says_why(
        server_pool: Any, clients: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    address = server_pool("cartpole")
    monkeypatch.setattr(shm, "kernel_id", lambda: "11111111-2222-3333-4444-555555555555")
    env = clients(rnp.RemoteEnv, address)
    assert env.transport == "zmq"
    assert env.reset(seed=0)[0].shape == (4,)
    env.close()
    with pytest.raises(ConnectionError, match="transport='shm'.*another host"):
        rnp.RemoteEnv(address, transport="shm")


def test_a_client_kept_on_zmq_declines_a_segment_it_did_not_ask_for(clients: Any) -> None:
    """A server that offers shared memory to everyone (an old or broken one): a client with
    transport="zmq" neither maps the segment nor leaves the server a thread waiting on it."""
    server = EnvServer(core_envs.make("cartpole"), "tcp://127.0.0.1:0")
    honest_hello = server._hello

    def offering_to_all(session: Any, payload: Any) -> Any:
        return honest_hello(session, {**payload, "transports": ["shm"], "kernel": shm.kernel_id()})

    server._hello = offering_to_all  # type: ignore[method-assign]
    server.start()
    try:
        env = clients(rnp.RemoteEnv, server.address, transport="zmq")
        assert env.transport == "zmq"
        assert env.reset(seed=0)[0].shape == (4,)
        # The decline went ahead of reset on the same socket, so the server has taken it.
        assert not server._channels, "the server still serves a segment nobody mapped"
        assert env.step(1)[0].shape == (4,)
        env.close()
    finally:
        server.shutdown()
    assert not our_segments()


def test_a_zmq_only_server_offers_nothing(clients: Any) -> None:
    server = EnvServer(core_envs.make("cartpole"), "tcp://127.0.0.1:0", transport="zmq").start()
    try:
        env = clients(rnp.RemoteEnv, server.address)
        assert env.transport == "zmq"
        assert env.reset(seed=0)[0].shape == (4,)
        env.close()
        with pytest.raises(ConnectionError, match="did not offer one"):
            rnp.RemoteEnv(server.address, transport="shm")
        with pytest.raises(ValueError, match="unknown transport 'udp'"):
            rnp.RemoteEnv(server.address, transport="udp")
    finally:
        server.shutdown()
    with pytest.raises(ValueError, match="'auto'.*'zmq'"):
        EnvServer(core_envs.make("cartpole"), transport="shm")


# --- equality with the zmq path -----------------------------------------------------------------

BACKENDS = {"numpy": rnp.RemoteEnv, "torch": rtorch.RemoteEnv, "plain": rlmesh.RemoteEnv}


def _comparable(value: Any) -> Any:
    """Values of any backend as nested plain containers of NumPy arrays (dtype kept)."""
    if isinstance(value, dict):
        return {key: _comparable(item) for key, item in value.items()}
    if isinstance(value, (tuple, list)):
        return type(value)(_comparable(item) for item in value)
    if isinstance(value, torch.Tensor):
        return ("torch", str(value.dtype), value.numpy().copy())
    if isinstance(value, rlmesh.Tensor):
        return ("tensor", value.dtype, rnp.asarray(value).copy())
    if isinstance(value, np.ndarray):
        return ("numpy", value.dtype.str, value.copy())
    return value


def _assert_same(a: Any, b: Any) -> None:
    if isinstance(a, dict):
        assert list(a) == list(b)
        for key in a:
            _assert_same(a[key], b[key])
    elif isinstance(a, (tuple, list)) and len(a) == 3 and isinstance(a[2], np.ndarray):
        assert a[:2] == b[:2]
        np.testing.assert_array_equal(a[2], b[2], strict=True)
        assert a[2].flags.writeable and b[2].flags.writeable
    elif isinstance(a, (tuple, list)):
        assert type(a) is type(b) and len(a) == len(b)
        for x, y in zip(a, b):
            _assert_same(x, y)
    else:
        assert type(a) is type(b) and (a == b or (a != a and b != b)), (a, b)


@pytest.mark.parametrize("backend", sorted(BACKENDS))
@pytest.mark.parametrize("name", sorted(ZOO))
def test_every_space_kind_and_backend_decodes_the_same_over_both_paths(
        name: str, backend: str, server_pool: Any, clients: Any) -> None:
    address = server_pool("space", space=name)
    runs = []
    for transport in ("shm", "zmq"):
        env = clients(BACKENDS[backend], address, transport=transport)
        assert env.transport == transport
        seen = [_comparable(env.reset(seed=7))]
        ZOO[name].seed(11)
        for _ in range(3):
            action = ZOO[name].sample()
            seen.append(_comparable(env.step(action)))
        env.close()
        runs.append(seen)
    _assert_same(runs[0], runs[1])


def test_dtypes_infos_and_big_frames_are_equal_over_both_paths(spawn_server: Any, clients: Any) -> None:
    """Every dtype (inline and in frames of their own), nested infos, and messages bigger
    than a segment, which travel in chunks. A fresh server per path: these envs keep state."""
    for env_name, kwargs, steps in [("dtype_zoo", {}, 3), ("big_obs", {"nbytes": 6 << 20}, 2)]:
        runs = []
        for transport in ("shm", "zmq"):
            address = spawn_server(env_name, env_kwargs=kwargs).address
            env = clients(rnp.RemoteEnv, address, transport=transport)
            seen = [_comparable(env.reset(seed=1))] + [_comparable(env.step(1)) for _ in range(steps)]
            env.close()
            runs.append(seen)
        _assert_same(runs[0], runs[1])


@pytest.mark.parametrize("shape", [[64, 64, 3], [128, 128, 3]], ids=["inline", "own-frame"])
@pytest.mark.parametrize("client_class", [rlmesh.RemoteEnv, rnp.RemoteEnv, rtorch.RemoteEnv],
                         ids=["plain", "numpy", "torch"])
def test_decoded_values_are_owned_copies_not_views_of_the_segment(
        client_class: Any, shape: list[int], server_pool: Any, clients: Any) -> None:
    # 128x128x3 is over the codec's inline limit: the frame travels beside the header, the case
    # where a decoder could be handed a view of the segment itself.
    assert (np.prod(shape) >= codec.INLINE_LIMIT) == (shape[0] == 128)
    env = clients(client_class, server_pool("image", shape=shape))
    assert env.transport == "shm"
    first, _ = env.reset(seed=0)
    step_one, *_ = env.step(1)
    kept = [np.array(np.from_dlpack(value), copy=True) for value in (first, step_one)]
    env.step(2)  # the segment now holds later frames
    env.step(3)
    for value, copy in zip((first, step_one), kept):
        assert np.array_equal(np.from_dlpack(value), copy), "an earlier observation changed with the segment"
    if client_class is not rlmesh.RemoteEnv:  # plain Tensors are read-only by design
        step_one += 1  # writable
        assert np.array_equal(np.from_dlpack(step_one), kept[1] + 1)


# --- segment hygiene --------------------------------------------------------------------------------

def test_the_segment_is_private_unguessable_and_gone_once_mapped(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole")
    pid = server.proc.pid
    socket, contract = hello_socket(server.address, "peek")
    name = contract["shm"]["name"]
    info = os.stat(f"/dev/shm/{name}")
    assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == os.getuid()
    assert len(name.rsplit("-", 1)[1]) == 32  # 128 random bits
    assert our_segments(pid) == [name]
    socket.send_multipart(codec.encode(["decline", 0, "peek", None]))  # stays on zmq
    socket.send_multipart(codec.encode(["close", 2, "peek", None]))
    socket.poll(2000)
    socket.close()
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)  # the first request through the segment: the server removes its name
    assert env.transport == "shm"
    assert our_segments(pid) == []


def _as_another_user(uid: int, address: str, segment: str) -> dict[str, Any]:
    """What a process run as ``uid`` (a forked child: no interpreter files to read) gets: opening
    ``/dev/shm/<segment>`` directly, and from a client of ``address``, its transport with "auto",
    an observation, and the error of ``transport="shm"``."""
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        seen: dict[str, Any] = {}
        signal.alarm(60)  # a hung child dies, and the test fails rather than hangs
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            try:
                os.close(os.open(f"/dev/shm/{segment}", os.O_RDONLY))
                seen["open"] = "opened"
            except OSError as exc:
                seen["open"] = type(exc).__name__
            env = rnp.RemoteEnv(address)
            seen["transport"], seen["obs_shape"] = env.transport, list(env.reset(seed=0)[0].shape)
            env.close()
            try:
                rnp.RemoteEnv(address, transport="shm").close()
                seen["shm"] = "connected"
            except ConnectionError as exc:
                seen["shm"] = str(exc)
        except Exception as exc:  # reported to the test, which fails on it
            seen["failed"] = repr(exc)
        os.write(write, json.dumps(seen).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as pipe:
        seen = json.loads(pipe.read() or "{}")
    os.waitpid(child, 0)
    return seen


@pytest.mark.skipif(os.geteuid() != 0, reason="running a client as another user needs root (CI runs as root)")
def test_a_client_of_another_user_cannot_open_the_segment_and_falls_back_to_zmq(spawn_server: Any) -> None:
    server = spawn_server("cartpole", factory=True, max_sessions=2)
    socket, contract = hello_socket(server.address, "peek")  # a segment that stays named meanwhile
    seen = _as_another_user(65534, server.address, contract["shm"]["name"])  # nobody
    socket.send_multipart(codec.encode(["close", 2, "peek", None]))
    socket.poll(2000)
    socket.close()
    assert seen, "the child process died without a report"
    assert "failed" not in seen, seen["failed"]
    assert seen["open"] == "PermissionError"  # the segment is the server user's alone (0600)
    assert seen["transport"] == "zmq" and seen["obs_shape"] == [4]
    assert "another user" in seen["shm"] and "transport='auto'" in seen["shm"], seen["shm"]
    # Every declined segment is gone with its session.
    deadline = time.monotonic() + 5
    while our_segments(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert our_segments(server.proc.pid) == []


def _client_script(address: str) -> str:
    return (f"import rlmesh.numpy as rnp, sys\n"
            f"env = rnp.RemoteEnv({address!r})\n"
            f"assert env.transport == 'shm'\n"
            f"env.reset(seed=0)\nenv.step(0)\n"
            f"print('STEPPED', flush=True)\nsys.stdin.read()\n")


@pytest.mark.parametrize("victim", ["client", "server", "server_before_first_request"])
def test_a_killed_end_leaves_nothing_in_dev_shm(victim: str, spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole", session_timeout=1.0)
    pid = server.proc.pid
    if victim == "client":
        child = subprocess.Popen([sys.executable, "-c", _client_script(server.address)],
                                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stdout.readline().strip() == "STEPPED"
        child.kill()
        child.wait(10)
        time.sleep(2.5)  # the session times out; its channel thread ends and unmaps
        newcomer = clients(rnp.RemoteEnv, server.address)
        assert newcomer.transport == "shm" and newcomer.reset(seed=0)[0].shape == (4,)
        newcomer.close()
    elif victim == "server":
        env = clients(rnp.RemoteEnv, server.address)
        env.reset(seed=0)
        server.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="lost the connection"):
            env.step(0)
        assert time.monotonic() - started < 5.0
    else:
        assert our_segments(pid) == []
        socket, _ = hello_socket(server.address, "orphan")
        socket.close()
        assert len(our_segments(pid)) == 1
        server.kill()  # before any client mapped it: the name is still there ...
        assert len(our_segments(pid)) == 1
        fresh = EnvServer(core_envs.make("cartpole"), "tcp://127.0.0.1:0")  # ... until a server makes one
        try:
            env = clients(rnp.RemoteEnv, fresh.start().address)
            env.reset(seed=0)
        finally:
            fresh.shutdown()
    assert our_segments(pid) == []


def test_a_server_stopped_mid_session_tells_the_shm_client(clients: Any) -> None:
    server = EnvServer(core_envs.make("cartpole"), "tcp://127.0.0.1:0", session_timeout=0.3).start()
    try:
        env = clients(rnp.RemoteEnv, server.address, heartbeat_interval=None)
        assert env.transport == "shm"
        env.reset(seed=0)
        time.sleep(1.0)  # silent past session_timeout: detached, the channel says goodbye
        with pytest.raises(ConnectionError, match="not attached"):
            env.step(0)
    finally:
        server.shutdown()
    assert our_segments(os.getpid()) == []


def test_an_end_that_hangs_up_never_overwrites_a_message_still_being_read() -> None:
    """The server's end hangs up right after a reply (its session was dropped): the client reads
    that reply whole, and its next wait is told the server is gone instead of waiting on."""
    server_end, offer = shm.create_segment(1 << 20)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    frame = np.full((128, 128, 3), 7, np.uint8)  # a frame of its own: a view into the segment
    try:
        client_end.send(codec.encode(["step", 1, "s", 0]))
        assert server_end.wait(5.0)
        server_end.receive(copy=True)
        server_end.send(codec.encode(["ok", 1, [frame, 0.0, False, False, {}]]))
        assert client_end.wait(5.0)
        frames = client_end.receive()  # views of the segment, decoded below
        server_end.close()  # hangs up
        reply = codec.decode(frames, array_from_wire)
        assert reply[0] == "ok" and np.array_equal(reply[2][0], frame), "the reply was overwritten"
        client_end.send(codec.encode(["step", 2, "s", 0]))
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="not attached"):
            client_end.wait(10.0)
        assert time.monotonic() - started < 1.0
    finally:
        client_end.close()
        server_end.close()


def test_a_chunked_request_to_a_dropped_session_fails_at_once(clients: Any) -> None:
    """A request bigger than the segment waits for the server to take each piece: once the
    session is gone, that wait ends with the reason, not never."""
    server = EnvServer(core_envs.make("cartpole"), "tcp://127.0.0.1:0", session_timeout=0.3).start()
    try:
        env = clients(rlmesh.RemoteEnv, server.address, heartbeat_interval=None, request_timeout=5.0)
        assert env.transport == "shm"
        env.reset(seed=0)
        time.sleep(1.0)  # silent past session_timeout: detached
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="not attached"):
            env.call("seed", b"x" * (4 << 20))  # 4 MiB: more than the 1 MiB segment
        assert time.monotonic() - started < 1.0
    finally:
        server.shutdown()


def test_a_chunked_request_to_a_frozen_server_keeps_the_request_timeout(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole")
    env = clients(rlmesh.RemoteEnv, server.address, request_timeout=1.0)
    assert env.transport == "shm"
    env.reset(seed=0)
    os.kill(server.proc.pid, signal.SIGSTOP)
    try:
        started = time.monotonic()
        with pytest.raises(TimeoutError, match="stopped taking part in a call request sent in pieces.*unusable"):
            env.call("seed", b"x" * (4 << 20))
        assert time.monotonic() - started < 3.0
        with pytest.raises(ConnectionError, match="unusable"):  # half a message sits in the segment
            env.step(0)
    finally:
        os.kill(server.proc.pid, signal.SIGCONT)


# --- waits that may be repeated (step_wait(timeout=), recv(timeout=), wait_reply) -------------------

def _connection(address: str, transport: str, **kwargs: Any) -> Connection:
    connection = Connection(address, transport=transport, **kwargs)
    assert connection.transport == transport
    connection.request(Request.RESET, {"seed": 0, "options": None})
    return connection


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_a_zero_timeout_wait_takes_a_reply_that_is_in(transport: str, spawn_server: Any) -> None:
    """A polling loop (step_wait(timeout=0)) gets a reply that arrived while it looked away."""
    server = spawn_server("recorder")
    connection = _connection(server.address, transport)
    try:
        request = connection.send(Request.STEP, 0)
        time.sleep(1.0)  # answered long since
        done, reply = connection.wait_reply(request, 0)
        assert done and reply[4]["executed"] == [0]
    finally:
        connection.close()


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_a_request_sent_while_a_reply_is_owed_goes_in_after_it(transport: str, spawn_server: Any) -> None:
    """A wait that gave up leaves its reply owed: the next send returns at once (as over zmq, not
    after that reply), and each reply still reaches the wait for its own request."""
    server = spawn_server("recorder", env_kwargs={"slow": 1.0})
    connection = _connection(server.address, transport)
    try:
        first = connection.send(Request.STEP, 1)  # takes 1 s
        assert connection.wait_reply(first, 0.2) == (False, None)
        started = time.monotonic()
        second = connection.send(Request.STEP, 2)
        assert time.monotonic() - started < 0.5
        done, reply = connection.wait_reply(first, 5)
        assert done and reply[4]["executed"] == [1]
        done, reply = connection.wait_reply(second, 5)
        assert done and reply[4]["executed"] == [1, 2]
        assert connection.request(Request.STEP, 3)[4]["executed"] == [1, 2, 3]
    finally:
        connection.close()


def _tear_the_next_queued_write(channel: shm.Channel) -> None:
    """Ctrl-C while the next request (in pieces) goes into the channel: as its first piece is
    announced. (Not in the wait for the second piece's turn: a server quick to take the first
    piece leaves no wait to interrupt.)"""
    real_send, real_wake = channel.send, channel._wake

    def wake(*args: Any) -> None:
        channel._wake = real_wake  # type: ignore[method-assign]
        real_wake(*args)
        raise KeyboardInterrupt

    def send(frames: Any, **kwargs: Any) -> None:
        channel.send = real_send  # type: ignore[method-assign]
        channel._wake = wake  # type: ignore[method-assign]
        real_send(frames, **kwargs)

    channel.send = send  # type: ignore[method-assign]


def _interrupt_the_next_write(channel: shm.Channel, *, written: bool) -> None:
    """Ctrl-C at the entry of the channel's next write, or (``written``) right after it."""
    real_send = channel.send

    def send(frames: Any, **kwargs: Any) -> None:
        channel.send = real_send  # type: ignore[method-assign]
        if written:
            real_send(frames, **kwargs)
        raise KeyboardInterrupt

    channel.send = send  # type: ignore[method-assign]


def _queue_behind_a_slow_step(connection: Connection, *payloads: tuple[str, Any]) -> list[int]:
    """Send a 0.5 s step, give up waiting, and queue ``payloads`` behind it; return all ids."""
    first = connection.send(Request.STEP, 1)
    assert connection.wait_reply(first, 0.1) == (False, None)
    return [first, *(connection.send(kind, payload) for kind, payload in payloads)]


_LOAD = (Request.CALL, {"name": "load", "args": [b"x" * (2 << 20)], "kwargs": {}})  # pieces


def _torn_behind_a_slow_step(connection: Connection, *payloads: tuple[str, Any]) -> list[int]:
    """A slow step, then a 2 MiB call queued behind it that Ctrl-C cuts off as it goes into the
    channel (torn), and ``payloads`` queued behind that; return all ids."""
    channel = connection._channel
    assert channel is not None
    ids = _queue_behind_a_slow_step(connection, _LOAD, *payloads)
    _tear_the_next_queued_write(channel)
    with pytest.raises(KeyboardInterrupt):
        connection.wait_reply(ids[0], 5)
    assert channel.torn
    return ids


_READERS = ["wait_reply", "a gather (wait_any, poll_reply)"]


def _read(connection: Connection, request: int, reader: str) -> tuple[bool, Any]:
    """Wait for ``request``'s reply the way a single env does, or the way the multi-endpoint
    gather does (wait for something to read, read it; a late reply is passed over)."""
    if reader == "wait_reply":
        return connection.wait_reply(request, 5)
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        if wait_any([connection], 100) == {connection}:
            done, value = connection.poll_reply(request)
            if done:
                return done, value
    return False, None


@pytest.mark.parametrize("reader", _READERS)
@pytest.mark.parametrize("where", ["before it is written", "after it is written"])
def test_ctrl_c_while_a_queued_request_goes_in_neither_loses_nor_repeats_it(
        where: str, reader: str, spawn_server: Any) -> None:
    """The reply owed before a queued request is read; then Ctrl-C lands as that request is handed
    to the channel (at the entry of the write, or right after it, before it leaves the queue).
    The reply already read is kept for the next wait; waiting for the queued request gets its
    reply, and it ran once."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    try:
        channel = connection._channel
        assert channel is not None
        first, queued = _queue_behind_a_slow_step(connection, (Request.STEP, 2))
        _interrupt_the_next_write(channel, written=where == "after it is written")
        with pytest.raises(KeyboardInterrupt):
            connection.wait_reply(first, 5)
        done, reply = _read(connection, first, reader)
        assert done and reply[4]["executed"] == [1]
        done, reply = _read(connection, queued, reader)
        assert done and reply[4]["executed"] == [1, 2]
        assert connection.request(Request.STEP, 3)[4]["executed"] == [1, 2, 3]
        assert connection.transport == "shm"
    finally:
        connection.close()


@pytest.mark.parametrize("reader", _READERS)
@pytest.mark.parametrize("first_read", [True, False])
def test_a_queued_request_cut_off_in_pieces_by_ctrl_c_goes_over_zmq(
        first_read: bool, reader: str, spawn_server: Any) -> None:
    """Ctrl-C lands while a queued request in pieces is written: the server never got it whole
    (so never ran it), and it goes over zmq with the client; its wait gets the reply. The
    multi-endpoint gather's wait (wait_any) makes the move too, and reports the reply. The
    reply read before the write is kept for a wait on its request; a wait that skips it drops it
    (as a late reply over zmq)."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    try:
        first, queued = _torn_behind_a_slow_step(connection)
        if first_read:
            done, reply = _read(connection, first, reader)
            assert done and reply[4]["executed"] == [1]
        assert _read(connection, queued, reader) == (True, 2 << 20)
        assert connection.transport == "zmq"
        assert connection.request(Request.STEP, 3)[4]["executed"] == [1, f"load {2 << 20}", 3]
    finally:
        connection.close()


def _interrupt_the_next_head_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ctrl-C at the read of the next message's head, in this process's channels."""
    real = shm._SINGLE

    class InterruptedOnce:
        size = real.size
        pack_into = real.pack_into

        def unpack_from(self, *args: Any) -> Any:
            monkeypatch.setattr(shm, "_SINGLE", real)
            raise KeyboardInterrupt

    monkeypatch.setattr(shm, "_SINGLE", InterruptedOnce())


def _interrupted_at_call(k: int, run: Callable[[], Any], *, after_c_calls: bool = False) -> bool:
    """Run ``run`` with KeyboardInterrupt raised at the ``k``-th call of a Python or C function
    in rlmesh's code; return whether it got that far. (Not in other code: a garbage collector's
    callback, say, would swallow it.) Python delivers a Ctrl-C as a function starts, during a C
    function that waits (its call fails), or right after one returns (``after_c_calls``: the call
    took effect)."""
    count = 0
    ours = os.path.dirname(rlmesh.__file__)
    events = ("call", "c_return") if after_c_calls else ("call", "c_call")

    def profile(frame: Any, event: str, arg: Any) -> None:
        nonlocal count
        if event in events and frame.f_code.co_filename.startswith(ours):
            count += 1
            if count == k:
                sys.setprofile(None)
                raise KeyboardInterrupt

    sys.setprofile(profile)
    try:
        run()
    except KeyboardInterrupt:
        if count != k:
            raise
    finally:
        sys.setprofile(None)
    return count >= k


@pytest.mark.parametrize("frames", ["one", "several"])
def test_ctrl_c_at_any_call_while_a_reply_in_one_piece_is_read_keeps_the_channel(
        frames: str, spawn_server: Any) -> None:
    """Wherever Ctrl-C lands while a reply in one piece is read, at each call in turn: the
    reply is either left whole for the next wait or taken (and lost to the interrupt, as over
    zmq); the channel is never taken for torn, so the client stays on shared memory. Several
    frames: a 64 KiB observation travels beside the header, in the same piece."""
    server = spawn_server("recorder") if frames == "one" else spawn_server("big_obs", env_kwargs={"nbytes": 1 << 16})
    connection = _connection(server.address, "shm")
    channel = connection._channel
    assert channel is not None
    try:
        for k in itertools.count(1):
            request = connection.send(Request.STEP, 0)
            while not channel.ready():  # the reply is in: the wait below takes the same steps each time
                time.sleep(0.001)
            if not _interrupted_at_call(k, functools.partial(connection.wait_reply, request, 5)):
                break  # the wait ran whole: every call in it was tried
            assert not channel.torn, f"interrupted at call {k}"
            if channel.awaiting:  # not taken: the next wait gets it
                assert connection.wait_reply(request, 5)[0], f"interrupted at call {k}"
        assert k > 10  # the profile saw the wait's calls
        assert connection.transport == "shm"
    finally:
        connection.close()


@pytest.mark.parametrize("reader", _READERS)
@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_ctrl_c_right_after_any_call_of_a_request_leaves_no_lock_held(
        transport: str, reader: str, spawn_server: Any) -> None:
    """Ctrl-C right after each C call of a request and the wait for its reply in turn (a lock
    just taken, say), and at each function's start: no lock stays held (a socket's, or the
    channels' memory fence, which every channel in the process shares), and the client still
    answers."""
    server = spawn_server("recorder")
    connection = _connection(server.address, transport)
    try:
        for k in itertools.count(1):
            def request() -> None:
                _read(connection, connection.send(Request.STEP, 0), reader)

            if not _interrupted_at_call(k, request, after_c_calls=True):
                break  # the request ran whole: every call in it was tried
            assert not shm._FENCE_LOCK.locked(), f"interrupted after call {k}"
            assert not connection._socket_lock.locked(), f"interrupted after call {k}"
        assert k > 10
        assert connection.request(Request.STEP, 1)[4]["executed"][-1] == 1
    finally:
        connection.close()


def test_ctrl_c_again_while_the_queue_moves_to_zmq_loses_nothing(spawn_server: Any) -> None:
    """A second Ctrl-C lands as the queued requests are handed to zmq (leaving a torn channel):
    the rest are sent by the next wait, each once, in order."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    try:
        _, big, third = _torn_behind_a_slow_step(connection, (Request.STEP, 2))
        real = connection._send_frames

        def interrupted(*args: Any, **kwargs: Any) -> None:
            connection._send_frames = real  # type: ignore[method-assign]
            raise KeyboardInterrupt

        connection._send_frames = interrupted  # type: ignore[method-assign]
        with pytest.raises(KeyboardInterrupt):
            connection.wait_reply(big, 5)
        assert connection.transport == "zmq"
        assert connection.wait_reply(big, 5) == (True, 2 << 20)
        done, reply = connection.wait_reply(third, 5)
        assert done and reply[4]["executed"] == [1, f"load {2 << 20}", 2]
        assert connection.request(Request.STEP, 3)[4]["executed"] == [1, f"load {2 << 20}", 2, 3]
    finally:
        connection.close()


def test_closing_after_ctrl_c_with_a_request_queued_frees_the_server_at_once(spawn_server: Any) -> None:
    """Ctrl-C lands before a queued request goes in; close() (a finally block) says goodbye over
    zmq at once instead of queuing it behind that request, so the next client gets the server."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    channel = connection._channel
    assert channel is not None
    first, _ = _queue_behind_a_slow_step(connection, (Request.STEP, 1))
    _interrupt_the_next_write(channel, written=False)
    with pytest.raises(KeyboardInterrupt):
        connection.wait_reply(first, 5)
    started = time.monotonic()
    connection.close()
    assert time.monotonic() - started < 0.5
    Connection(server.address, connect_timeout=2.0).close()  # a single-client server: free again


def test_closing_from_another_thread_between_two_replies_is_a_connection_error(spawn_server: Any) -> None:
    """A wait that just read a stale reply (and handed the queued request over) when another
    thread closes the client ends with the documented ConnectionError."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    _, queued = _queue_behind_a_slow_step(connection, (Request.STEP, 2))
    real = connection._take_reply

    def take(*args: Any) -> tuple[bool, Any]:
        connection._take_reply = real  # type: ignore[method-assign]
        result = real(*args)
        closer = threading.Thread(target=connection.close)
        closer.start()
        closer.join()
        return result

    connection._take_reply = take  # type: ignore[method-assign, assignment]
    with pytest.raises(ConnectionError, match="was closed while a request waited"):
        connection.wait_reply(queued, 5)


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_a_short_wait_during_a_reply_in_pieces_takes_it_whole(transport: str, spawn_server: Any) -> None:
    """The server pauses between two pieces of a reply (here: stopped for a second) while a
    wait_reply(0.05) reads it: once begun, the reply is taken whole within request_timeout;
    the wait's own bound must not declare the client unusable."""
    server = spawn_server("recorder")
    connection = _connection(server.address, transport, request_timeout=10.0)
    try:
        request = connection.send(Request.STEP, 9)  # a 3 MiB info: pieces through a 1 MiB segment
        time.sleep(0.5)  # the first piece is in; the server waits for it to be taken
        os.kill(server.proc.pid, signal.SIGSTOP)
        waking = threading.Timer(1.0, os.kill, args=(server.proc.pid, signal.SIGCONT))
        waking.start()
        try:
            done, reply = connection.wait_reply(request, 0.05)
        finally:
            waking.join()
        assert done and len(reply[4]["big"]) == 3 << 20
        assert connection.request(Request.STEP, 0)[4]["executed"] == [9, 0]
    finally:
        connection.close()


def test_the_sweep_of_dead_servers_segments_keeps_other_pid_namespaces(tmp_path: Path) -> None:
    """A pid is only a process within its own pid namespace: a name from another container
    sharing /dev/shm is not ours to judge, even if that pid is free here."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    namespace = os.readlink("/proc/self/ns/pid")
    ours = f"rlmesh-{namespace[namespace.find('[') + 1:-1]}-{dead.pid}-{'a' * 32}"
    theirs = f"rlmesh-1-{dead.pid}-{'b' * 32}"
    for name in (ours, theirs):
        Path("/dev/shm", name).write_bytes(b"")
    try:
        channel, _ = shm.create_segment(4096)  # sweeps first
        channel.close()
        assert not Path("/dev/shm", ours).exists(), "a dead server's segment of this namespace was kept"
        assert Path("/dev/shm", theirs).exists(), "another namespace's segment was removed"
    finally:
        for name in (ours, theirs):
            Path("/dev/shm", name).unlink(missing_ok=True)


# --- hostile peers ---------------------------------------------------------------------------------

def _poke(channel: shm.Channel, data: bytes, *, total: int | None = None, length: int | None = None) -> None:
    """Write ``data`` as this end's next message, with a chunk header that may lie."""
    view = channel._view
    start = channel._out_data
    struct.pack_into("<QQ", view, start, len(data) if total is None else total,
                     len(data) if length is None else length)
    view[start + 16:start + 16 + len(data)] = data
    channel._sent = (channel._sent + 1) & 0xFFFFFFFF
    channel._post(channel._out_word, 0, channel._sent)


GARBAGE = [
    (b"\x00" * 12, None, None),                                  # no frames
    (struct.pack("<I", 1 << 20), None, None),                     # more frames than bytes
    (struct.pack("<IQ", 1, 1 << 40) + b"x", None, None),          # a frame longer than the message
    (struct.pack("<IQ", 1, 3) + b"\xc1\xc1\xc1", None, None),     # not msgpack
    (b"abcd", None, 1 << 40),                                      # a chunk longer than the segment
    (b"ab", 1, None),                                              # a chunk longer than its message
]


def test_garbage_in_the_segment_gets_an_error_and_the_server_serves_on(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole")
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    connection: Connection = env._connection
    channel = connection._channel
    assert channel is not None
    for data, total, length in GARBAGE:
        _poke(channel, data, total=total, length=length)
        assert channel.wait(10.0), f"the server did not answer {data!r} ({total}, {length})"
        status, request_id, error = codec.decode(channel.receive())
        assert (status, request_id, error["kind"]) == ("error", -1, "protocol"), error
        assert server.alive()
    # A message announced as 1 TiB: the server takes the chunk, acknowledges it and waits for
    # the next (allocating nothing ahead); a chunk of another message is an error.
    _poke(channel, b"0123456789", total=1 << 40)
    assert not channel.wait(0.5) and channel._words[channel._out_word + 1] == channel._sent
    _poke(channel, b"abc")
    assert channel.wait(10.0), "the server did not answer an inconsistent chunk"
    status, _, error = codec.decode(channel.receive())
    assert (status, error["kind"]) == ("error", "protocol") and "inconsistent chunk" in error["message"]
    assert env.step(0)[0].shape == (4,)


_GOOD_OFFER = {"name": "rlmesh-1-2-ab", "nonce": b"n" * 16, "size": 3 * 4096, "pid": 2, "pidns": "pid:[1]"}


@pytest.mark.parametrize("field, value", [
    ("nonce", 2**62), ("nonce", "0" * 16), ("size", float("inf")), ("size", "12288"), ("size", 16),
    ("pid", float("inf")), ("pid", 0), ("pidns", None), ("name", "rlmesh-../x"), ("name", "other"),
    ("nonce", b"short"), ("size", True)])
def test_a_malformed_offer_is_a_protocol_error(field: str, value: Any) -> None:
    """Whatever a hostile server puts in its offer: a ProtocolError, never a MemoryError from
    ``bytes(2**62)``, an OverflowError, or a struct.error reading a segment too small."""
    assert shm.SegmentOffer.from_wire(_GOOD_OFFER).size == 3 * 4096
    with pytest.raises(ProtocolError, match="malformed shared-memory offer"):
        shm.SegmentOffer.from_wire({**_GOOD_OFFER, field: value})
    with pytest.raises(ProtocolError, match="malformed shared-memory offer"):
        shm.SegmentOffer.from_wire({key: v for key, v in _GOOD_OFFER.items() if key != field})


@pytest.mark.parametrize("capacity", [0, 8, 16, 4096 + 8])
def test_a_segment_with_a_capacity_no_server_makes_is_refused(capacity: int) -> None:
    """A hostile server's segment that declares a tiny or ragged data area: a clear
    ProtocolError at once, not a struct.error or a request silently dropped later."""
    server_end, offer = shm.create_segment(4096)
    server_end.close()  # only its name and nonce are wanted
    path = f"/dev/shm/{offer.name}"
    size = 4096 + 2 * capacity
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.ftruncate(fd, size)
        os.pwrite(fd, b"RLMSHM01" + offer.nonce + struct.pack("<Q", capacity), 0)
        lying = shm.SegmentOffer(offer.name, offer.nonce, size, offer.pid, offer.pidns)
        with pytest.raises(ProtocolError, match=f"declares {capacity} bytes"):
            shm.open_segment(lying)
    finally:
        os.close(fd)
        os.unlink(path)


def test_a_channel_closed_under_a_call_says_so_with_the_closers_reason() -> None:
    """A wait in one thread while another closes the end: ChannelClosed with the reason given
    to close(), and every later call the same, never a ValueError from released memory."""
    server_end, offer = shm.create_segment(1 << 14)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    try:
        closer = threading.Timer(0.2, client_end.close, args=("closed by the test",))
        closer.start()
        with pytest.raises(shm.ChannelClosed, match="closed by the test"):
            client_end.wait(5.0)
        closer.join()
        for call in (client_end.ready, client_end.receive, lambda: client_end.send([b"x"])):
            with pytest.raises(shm.ChannelClosed, match="closed by the test"):
                call()
    finally:
        client_end.close()
        server_end.close()


@pytest.mark.parametrize("lie", ["chunk_too_long", "frame_count", "frame_lengths"])
def test_a_server_writing_garbage_gets_a_protocol_error_not_a_crash(lie: str) -> None:
    """The client's side: a hostile server's reply is bounds-checked before anything is read."""
    server_end, offer = shm.create_segment(1 << 16)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    try:
        if lie == "chunk_too_long":
            _poke(server_end, b"abcd", length=1 << 20)
        elif lie == "frame_count":
            _poke(server_end, struct.pack("<I", 70000) + b"\x00" * 8)
        else:
            _poke(server_end, struct.pack("<IQQ", 2, 5, 1 << 62) + b"hello")
        assert client_end.wait(5.0)
        with pytest.raises(ProtocolError, match="shared-memory peer"):
            client_end.receive()
    finally:
        client_end.close()
        server_end.close()
    assert our_segments(os.getpid()) == []


def test_messages_bigger_than_the_segment_travel_in_chunks_both_ways() -> None:
    server_end, offer = shm.create_segment(1 << 14)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    payload = np.random.default_rng(0).integers(0, 256, 200_000, dtype=np.uint8).tobytes()

    def echo() -> None:
        assert server_end.wait(10.0)
        server_end.send(server_end.receive(copy=True))

    thread = threading.Thread(target=echo)
    thread.start()
    try:
        client_end.send([b"head", payload])
        assert client_end.wait(10.0)
        head, body = client_end.receive()
        assert head == b"head" and bytes(body) == payload
    finally:
        thread.join(10)
        client_end.close()
        server_end.close()


class FakeClock:
    """The clock of shm's waits, moving 100 ns per reading and by whatever a yield is made to
    cost: the waiting rules are judged on the yields a test scripts, never on what this
    (possibly busy) machine's scheduler does meanwhile."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.now = 0
        self.monotonic = time.monotonic
        monkeypatch.setattr(shm, "time", self)

    def perf_counter_ns(self) -> int:
        self.now += 100
        return self.now


@pytest.mark.parametrize("slow_yields, crowded", [(1, False), (2, False), (1000, True)])
def test_a_waiter_stops_spinning_only_when_yields_keep_giving_the_cpu_away(
        slow_yields: int, crowded: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    """A yield that takes long once (the host paused this vCPU) is no reason to sleep; one that
    keeps doing so means more runnable processes than CPUs, and then the spin window shrinks."""
    server_end, offer = shm.create_segment(1 << 14)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    yields = 0
    clock = FakeClock(monkeypatch)

    def slow_then_quick_yield() -> None:
        nonlocal yields
        yields += 1
        clock.now += 200_000 if yields <= slow_yields else 1_000  # slow: another process ran here

    monkeypatch.setattr(os, "sched_yield", slow_then_quick_yield)
    try:
        client_end._spin_ns = window = shm.MAX_SPIN_NS
        assert not client_end.wait(0.05, sleep=False)  # nobody answers: the whole window passes
        assert (client_end._spin_ns < window) is crowded
        assert yields >= (3 if crowded else slow_yields + 1)
    finally:
        client_end.close()
        server_end.close()


def test_after_yields_that_gave_the_cpu_away_a_wait_yields_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """With more waiters than CPUs the peer may be queued on this very CPU: spinning plainly
    before the first yield would only keep it waiting."""
    server_end, offer = shm.create_segment(1 << 14)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    yields = 0
    slow = True
    clock = FakeClock(monkeypatch)

    def counted_yield() -> None:
        nonlocal yields
        yields += 1
        clock.now += 200_000 if slow else 1_000  # slow: another process ran on this CPU meanwhile

    def yields_in_a_short_wait() -> int:
        nonlocal yields
        yields = 0
        client_end._spin_ns = shm._EAGER_NS // 3  # a window shorter than the plain spin
        assert not client_end.wait(0.05, sleep=False)
        return yields

    def a_long_wait() -> None:
        client_end._spin_ns = shm.MAX_SPIN_NS
        assert not client_end.wait(0.05, sleep=False)

    monkeypatch.setattr(os, "sched_yield", counted_yield)
    try:
        assert yields_in_a_short_wait() == 0  # a fresh end spins plainly first
        a_long_wait()  # ...whose yields come back late
        assert yields_in_a_short_wait() >= 1
        slow = False  # the CPU is this end's own again
        assert yields_in_a_short_wait() >= 1  # the last wait's yields came back late
        assert yields_in_a_short_wait() == 0  # this one's came back at once
    finally:
        client_end.close()
        server_end.close()


def test_waits_that_time_out_narrow_the_spin_window() -> None:
    """Each slice an idle end waits through would otherwise start with a full spin window."""
    server_end, offer = shm.create_segment(1 << 14)
    client_end = shm.open_segment(offer)
    assert client_end is not None
    try:
        server_end._spin_ns = shm.MAX_SPIN_NS
        for _ in range(3):
            assert not server_end.wait(0.01)  # no request comes
        assert server_end._spin_ns <= shm.MAX_SPIN_NS // 8
    finally:
        client_end.close()
        server_end.close()


def test_a_slow_step_costs_no_cpu_while_waiting(spawn_server: Any, clients: Any) -> None:
    """The client sleeps on the futex during a slow step instead of spinning through it."""
    server = spawn_server("faulty")
    env = clients(rnp.RemoteEnv, server.address)
    assert env.transport == "shm"
    env.reset(seed=0)
    started, cpu = time.monotonic(), time.process_time()
    env.step(3)  # sleeps 4 s on the server
    waited, spent = time.monotonic() - started, time.process_time() - cpu
    assert waited >= 3.5
    assert spent < 0.2, f"the client spent {spent:.2f} s of CPU waiting {waited:.1f} s"


def test_a_server_that_has_gone_idle_uses_no_cpu(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole")
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    for i in range(2000):
        if any(env.step(i % 2)[2:4]):
            env.reset()
    time.sleep(0.1)

    def cpu_seconds() -> float:
        # The scheduler's own run time of every thread, in ns: /proc/PID/stat counts 10 ms ticks,
        # charged whole to whoever runs when one fires, so a few wake-ups could read as 1%.
        tasks = Path(f"/proc/{server.proc.pid}/task").glob("*/schedstat")
        return sum(int(task.read_text().split()[0]) for task in tasks) / 1e9

    before = cpu_seconds()
    time.sleep(2.0)
    # The bound: under 1% of a CPU (a spinning server takes about 100%).
    assert cpu_seconds() - before < 0.01 * 2.0, "an idle server kept spinning"


def test_sigint_during_a_wait_interrupts_the_client(spawn_server: Any) -> None:
    """A futex sleep is a system call Python can interrupt: Ctrl-C during a slow step works."""
    server = spawn_server("faulty")
    script = (f"import rlmesh.numpy as rnp\nenv = rnp.RemoteEnv({server.address!r})\n"
              f"assert env.transport == 'shm'\nenv.reset()\nprint('GO', flush=True)\n"
              f"try:\n    env.step(3)\nexcept KeyboardInterrupt:\n    print('INTERRUPTED', flush=True)\n")
    child = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "GO"
    time.sleep(0.5)
    started = time.monotonic()
    child.send_signal(signal.SIGINT)
    assert child.stdout.readline().strip() == "INTERRUPTED"
    assert time.monotonic() - started < 1.0
    child.wait(10)


_INTERRUPTED_TWICE = """
import json, os, signal, sys, threading
import rlmesh.numpy as rnp
env = rnp.RemoteEnv(sys.argv[1], transport=sys.argv[2])
env.reset(seed=0)
for action in (1, 2):  # step(1) takes 1 s; each wait is interrupted after 0.3 s, as by Ctrl-C
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    try:
        env.step(action)
    except KeyboardInterrupt:
        pass
seen = {"3": env.step(3)[4]["executed"], "4": env.step(4)[4]["executed"], "transport": env.transport}
env.close()
print(json.dumps(seen))
"""


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_interrupted_requests_run_at_most_once_and_later_replies_are_their_own(
        transport: str, spawn_server: Any) -> None:
    """Ctrl-C while a step is slow, and again while the next request waits its turn: each request
    runs once or not at all (it was interrupted), and each reply answers its own request."""
    server = spawn_server("recorder", env_kwargs={"slow": 1.0})
    out = subprocess.run([sys.executable, "-c", _INTERRUPTED_TWICE, server.address, transport],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    # Over zmq the second request was queued before its interrupt; through the segment it waits
    # for the first reply and is interrupted before it is sent. Never may 3 run twice.
    assert seen["3"] in ([1, 3], [1, 2, 3]), seen
    assert seen["4"] == [*seen["3"], 4]
    assert seen["transport"] == transport  # an interrupted wait does not cost the fast path


_INTERRUPTED_THEN_CLOSED = """
import json, os, signal, sys, threading, time
import rlmesh.numpy as rnp
env = rnp.RemoteEnv(sys.argv[1], transport=sys.argv[2])
env.reset(seed=0)
threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
try:
    env.step(1)  # 1.5 s
except KeyboardInterrupt:
    pass
started = time.monotonic()
env.close()
closed = time.monotonic() - started
nxt = rnp.RemoteEnv(sys.argv[1], transport=sys.argv[2])  # the one slot is free again
nxt.reset(seed=0)
print(json.dumps({"close_s": closed, "executed": nxt.step(0)[4]["executed"]}))
nxt.close()
"""


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_closing_after_an_interrupted_step_frees_the_server_and_the_env_steps_one_at_a_time(
        transport: str, spawn_server: Any) -> None:
    """Ctrl-C during a slow step, then close(): the server takes the next client while that step
    may still run; the next client's requests wait for it (the env never steps twice at once)."""
    server = spawn_server("recorder", env_kwargs={"slow": 1.5})
    out = subprocess.run([sys.executable, "-c", _INTERRUPTED_THEN_CLOSED, server.address, transport],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    seen = json.loads(out.stdout)
    assert seen["executed"] == [0], seen
    if transport == "shm":  # no reply to wait for: the goodbye goes over zmq at once
        assert seen["close_s"] < 0.5, seen


def test_closing_a_client_from_another_thread_ends_its_waiting_request_with_a_connection_error(
        spawn_server: Any, clients: Any) -> None:
    server = spawn_server("recorder", env_kwargs={"slow": 1.5})
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    assert env.transport == "shm"
    closer = threading.Timer(0.3, env.close)
    closer.start()
    with pytest.raises(ConnectionError, match="was closed while a request waited"):
        env.step(1)
    closer.join()


@pytest.mark.parametrize("when", ["during the wait", "as the wait begins"])
@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_closing_a_multi_endpoint_env_from_another_thread_ends_its_gather_with_a_connection_error(
        transport: str, when: str, spawn_server: Any, clients: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """The gather reads replies with poll_reply and wait_any, not receive: they too say why,
    also when its sockets were closed just before it polls them."""
    servers = [spawn_server("recorder", env_kwargs={"slow": 1.5}) for _ in range(2)]
    envs = clients(rnp.MultiEndpointVectorEnv, [s.address for s in servers], transport=transport)
    envs.reset(seed=0)
    assert all(e.connection.transport == transport for e in envs._endpoints)
    if when == "as the wait begins":
        def closing_wait_any(connections: Any, timeout_ms: int) -> set[Any]:
            monkeypatch.setattr(multi, "wait_any", wait_any)
            closer = threading.Thread(target=envs.close)
            closer.start()
            closer.join()
            return wait_any(connections, timeout_ms)

        monkeypatch.setattr(multi, "wait_any", closing_wait_any)
    else:
        threading.Timer(0.3, envs.close).start()
    with pytest.raises(ConnectionError, match="was closed while a request waited"):
        envs.step(np.array([1, 1]))


_CLOSED_UNDER_WAITS = r"""
import collections, sys, threading
import numpy as np
import rlmesh.numpy as rnp
from rlmesh.protocol.connection import Connection
from rlmesh.protocol.messages import Request
addresses, transport, notify = sys.argv[1].split(","), sys.argv[2], sys.argv[3] == "notify"
outcomes = collections.Counter()
for round in range(8):
    if len(addresses) == 1:
        client = Connection(addresses[0], transport=transport)
        client.request(Request.RESET, {"seed": 0, "options": None})
        wait = lambda: client.receive(client.send(Request.STEP, 1))
        close = lambda: client.close(notify=notify)
    else:
        client = rnp.MultiEndpointVectorEnv(addresses, transport=transport)
        client.reset(seed=0)
        wait, close = (lambda: client.step(np.array([1, 1]))), client.close
    closer = threading.Timer(0.05 * (round % 4), close)  # within the 0.5 s step, or before it
    closer.start()
    try:
        wait()
        outcomes["answered"] += 1
    except ConnectionError:
        outcomes["ConnectionError"] += 1
    except BaseException as error:
        outcomes[type(error).__name__] += 1
    try:
        close()  # the waiting thread's own finally, maybe while the other close still runs
    except BaseException as error:
        outcomes["its own close: " + type(error).__name__] += 1
    closer.join()
print(dict(outcomes))
"""


@pytest.mark.parametrize("client", ["one connection", "one connection, close(notify=False)",
                                    "a multi-endpoint env"])
@pytest.mark.parametrize("transport", ["zmq", "shm"])
def test_closing_from_another_thread_again_and_again_never_breaks_the_process(
        transport: str, client: str, spawn_server: Any) -> None:
    """zmq sockets are not thread-safe: closing one under another thread's receive or poll made
    libzmq abort the process. Each round ends in the reply or ConnectionError, nothing else, and
    the waiting thread's own close() afterwards returns quietly."""
    servers = [spawn_server("recorder", env_kwargs={"slow": 0.5}, max_sessions=30, factory=True)
               for _ in range(2 if client == "a multi-endpoint env" else 1)]
    notify = "nonotify" if "notify=False" in client else "notify"
    out = subprocess.run([sys.executable, "-c", _CLOSED_UNDER_WAITS, ",".join(s.address for s in servers),
                          transport, notify], capture_output=True, text=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    outcomes = json.loads(out.stdout.strip().splitlines()[-1].replace("'", '"'))
    assert set(outcomes) <= {"answered", "ConnectionError"} and sum(outcomes.values()) == 8, outcomes
    assert outcomes.get("ConnectionError", 0) >= 4, outcomes  # the closes land before the reply


@pytest.mark.parametrize("transport", ["shm", "zmq"])
def test_two_threads_closing_a_client_at_once_both_return_quietly(transport: str, spawn_server: Any) -> None:
    """close() is idempotent from any thread: a second close while the first runs waits for it
    (it used to run the teardown again, and raise ZMQError or AttributeError)."""
    server = spawn_server("recorder", max_sessions=30, factory=True)
    errors: list[str] = []
    for _ in range(10):
        connection = _connection(server.address, transport)
        both = threading.Barrier(2)

        def close(connection: Connection = connection, both: threading.Barrier = both) -> None:
            both.wait()
            try:
                connection.close()
            except BaseException as error:  # noqa: BLE001 - any of them is the defect
                errors.append(repr(error))

        other = threading.Thread(target=close)
        other.start()
        close()
        other.join()
    assert errors == []


@pytest.mark.parametrize("timeout_ms", [3000, -1])
def test_closing_from_another_thread_ends_a_long_wait_any_within_a_slice(timeout_ms: int, spawn_server: Any) -> None:
    """A long (or unbounded) wait on zmq sockets holds them a receive slice at a time: a close()
    from another thread goes through at once, and the wait ends with ConnectionError."""
    server = spawn_server("recorder")
    connection = _connection(server.address, "zmq")
    took: list[float] = []

    def close() -> None:
        started = time.monotonic()
        connection.close()
        took.append(time.monotonic() - started)

    closer = threading.Timer(0.3, close)
    started = time.monotonic()
    closer.start()
    with pytest.raises(ConnectionError, match="closed"):
        wait_any([connection], timeout_ms)
    closer.join()
    assert time.monotonic() - started < 1.0
    assert took[0] < 0.5


def test_two_threads_waiting_on_the_same_zmq_clients_in_either_order_never_deadlock(spawn_server: Any) -> None:
    """wait_any holds each zmq socket while it polls: two threads listing the same clients in
    opposite orders must still take the sockets in one order, or each could hold the one the
    other waits for, for good."""
    a, b = (_connection(spawn_server("recorder").address, "zmq") for _ in range(2))
    stuck: list[str] = []

    def wait_many(order: list[Connection]) -> None:
        for _ in range(3000):
            wait_any(order, 0)

    try:
        threads = [threading.Thread(target=wait_many, args=(order,), daemon=True) for order in ([a, b], [b, a])]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30.0)
            if thread.is_alive():
                stuck.append(thread.name)
        assert stuck == []
    finally:
        if not stuck:  # a deadlocked thread holds the sockets: closing would wait on it for good
            a.close()
            b.close()


def test_closing_from_another_thread_during_a_gathers_wait_on_the_channel_is_a_connection_error(
        spawn_server: Any) -> None:
    """close() lands between the gather's looks at the channel (which it takes away): the wait
    says so at once, rather than spin to its deadline and report nothing to read."""
    server = spawn_server("recorder", env_kwargs={"slow": 1.0})
    connection = _connection(server.address, "shm")
    channel = connection._channel
    assert channel is not None
    connection.send(Request.STEP, 1)

    def closed_while_looking() -> bool:
        closer = threading.Thread(target=connection.close)
        closer.start()
        closer.join()
        return False

    channel.ready = closed_while_looking  # type: ignore[method-assign]
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="closed"):
        wait_any([connection], 3000)
    assert time.monotonic() - started < 2.0


def test_closing_from_another_thread_as_a_queued_request_goes_in(spawn_server: Any) -> None:
    """close() in another thread while the waiting thread hands the queued request to the
    channel: the wait gets its reply (read already) or ConnectionError, not IndexError."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    channel = connection._channel
    assert channel is not None
    first, _ = _queue_behind_a_slow_step(connection, (Request.STEP, 2))
    real_send = channel.send

    def send(frames: Any, **kwargs: Any) -> None:
        channel.send = real_send  # type: ignore[method-assign]
        real_send(frames, **kwargs)
        closer = threading.Thread(target=connection.close)  # runs while this thread is here
        closer.start()
        closer.join()

    channel.send = send  # type: ignore[method-assign]
    try:
        done, reply = connection.wait_reply(first, 5)
        assert done and reply[4]["executed"] == [1]
    except ConnectionError as error:
        assert "was closed while a request waited" in str(error)


def test_closing_from_another_thread_while_the_queue_moves_to_zmq_runs_nothing_twice(
        spawn_server: Any) -> None:
    """close() in another thread while the waiting thread sends the queued requests over zmq
    (after a torn channel): the goodbye does not send them too."""
    server = spawn_server("recorder", env_kwargs={"slow": 0.5})
    connection = _connection(server.address, "shm")
    _, big, _ = _torn_behind_a_slow_step(connection, (Request.STEP, 2))
    real = connection._send_frames
    closers: list[threading.Thread] = []

    def send_frames(*args: Any, **kwargs: Any) -> None:
        connection._send_frames = real  # type: ignore[method-assign]
        closers.append(threading.Thread(target=connection.close))
        closers[0].start()
        time.sleep(0.2)  # the closer runs meanwhile
        real(*args, **kwargs)

    connection._send_frames = send_frames  # type: ignore[method-assign]
    try:
        connection.wait_reply(big, 5)
    except ConnectionError as error:
        assert "was closed while a request waited" in str(error)
    closers[0].join()
    deadline = time.monotonic() + 10
    while True:  # the server takes the next client once the last request ran
        try:
            after = Connection(server.address, transport="zmq", connect_timeout=2.0)
            break
        except ServerBusyError:
            assert time.monotonic() < deadline
            time.sleep(0.2)
    try:
        executed = after.request(Request.STEP, 3)[4]["executed"]
    finally:
        after.close()
    # Each ran once at most, in order (the queued ones may or may not have gone before the close).
    queued_ran = executed[1:-1]
    assert executed[0] == 1 and executed[-1] == 3 and queued_ran == [f"load {2 << 20}", 2][:len(queued_ran)], executed


def _interrupt_next_wait(channel: shm.Channel) -> None:
    """Raise KeyboardInterrupt from the channel's next wait, where a real Ctrl-C lands."""
    real = channel._wait

    def interrupted(*args: Any, **kwargs: Any) -> bool:
        channel._wait = real  # type: ignore[method-assign]
        raise KeyboardInterrupt

    channel._wait = interrupted  # type: ignore[method-assign]


def _interrupt_after_first_piece(channel: shm.Channel) -> None:
    """Raise KeyboardInterrupt from the wait for the second piece of the next reply read."""
    real_receive = channel.receive

    def receive(**kwargs: Any) -> list[Any]:
        channel.receive = real_receive  # type: ignore[method-assign]
        _interrupt_next_wait(channel)
        return real_receive(**kwargs)

    channel.receive = receive  # type: ignore[method-assign]


@pytest.mark.parametrize("where", ["reading its head", "taking the first piece", "waiting for the next piece"])
def test_a_reply_cut_off_in_pieces_by_ctrl_c_leaves_the_client_working_over_zmq(
        where: str, spawn_server: Any, clients: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    server = spawn_server("recorder")
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    channel = env._connection._channel
    if where == "waiting for the next piece":
        _interrupt_after_first_piece(channel)
    elif where == "reading its head":  # of the 3 MiB reply: nothing is taken yet
        _interrupt_the_next_head_read(monkeypatch)
    else:  # its first piece is taken, not yet acknowledged
        real_post = channel._post

        def post(*args: Any) -> None:
            channel._post = real_post  # type: ignore[method-assign]
            raise KeyboardInterrupt

        channel._post = post  # type: ignore[method-assign]
    with pytest.raises(KeyboardInterrupt):
        env.step(9)
    assert channel.torn == (where != "reading its head")
    assert env.step(3)[4]["executed"] == [9, 3]  # its own reply, not the rest of the cut-off one
    if where == "reading its head":  # the reply was left whole in the channel, and read (and dropped) there
        assert env.transport == "shm"
        return
    assert env.transport == "zmq"
    assert env.step(4)[4]["executed"] == [9, 3, 4]
    deadline = time.monotonic() + 5  # the server's channel thread ended with the hang-up
    while our_segments(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert our_segments(server.proc.pid) == []


def test_a_request_queued_behind_a_reply_cut_off_by_ctrl_c_is_answered_over_zmq(spawn_server: Any) -> None:
    """Ctrl-C while a reply in pieces is read, with another request queued behind it: that one
    went on over zmq, so waiting for it gets its reply (not "send it again", which would run it
    twice); the cut-off reply's own request gets the error."""
    server = spawn_server("recorder")
    connection = _connection(server.address, "shm")
    try:
        channel = connection._channel
        assert channel is not None
        _interrupt_after_first_piece(channel)
        cut_off = connection.send(Request.STEP, 9)  # a 3 MiB reply: pieces through a 1 MiB segment
        queued = connection.send(Request.STEP, 2)
        with pytest.raises(KeyboardInterrupt):
            connection.wait_reply(queued, 5)
        assert channel.torn
        done, reply = connection.wait_reply(queued, 5)
        assert done and reply[4]["executed"] == [9, 2]
        assert connection.transport == "zmq"
        assert connection.request(Request.STEP, 3)[4]["executed"] == [9, 2, 3]
        with pytest.raises(ConnectionError, match="reply is lost"):  # its reply is gone for good
            connection.wait_reply(cut_off, 0.5)
    finally:
        connection.close()


def test_the_request_whose_reply_was_cut_off_is_told_so(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("recorder")
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    connection = env._connection
    _interrupt_after_first_piece(connection._channel)
    request = connection.send(Request.STEP, 9)
    with pytest.raises(KeyboardInterrupt):
        connection.receive(request)
    with pytest.raises(ConnectionError, match="reply is lost, though the request may have run"):
        connection.receive(request)
    assert env.step(3)[4]["executed"] == [9, 3]


def test_a_request_cut_off_in_pieces_by_ctrl_c_never_runs_and_the_next_one_does(
        spawn_server: Any, clients: Any) -> None:
    server = spawn_server("recorder")
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    channel = env._connection._channel
    _interrupt_next_wait(channel)  # the wait for the server to take the first of 3 pieces
    with pytest.raises(KeyboardInterrupt):
        env.call("load", b"y" * (2 << 20))
    assert channel.torn
    assert env.step(3)[4]["executed"] == [3]
    assert env.call("load", b"z" * (2 << 20)) == 2 << 20  # big requests still travel, over zmq
    assert env.step(4)[4]["executed"] == [3, f"load {2 << 20}", 4]
    assert env.transport == "zmq"


def _slow_step_of_a_silent_client(address: str, clients: Any) -> tuple[Any, threading.Thread, dict[str, Any]]:
    """A client without heartbeats, a thread (not started) stepping the recorder's slow action
    with it, and what that step gives: ``{"executed": ...}`` or ``{"error": ...}``."""
    silent = clients(rnp.RemoteEnv, address, heartbeat_interval=None)
    silent.reset(seed=0)
    result: dict[str, Any] = {}

    def slow_step() -> None:
        try:
            result["executed"] = silent.step(1)[4]["executed"]
        except Exception as exc:
            result["error"] = exc

    return silent, threading.Thread(target=slow_step), result


def test_a_session_dropped_mid_step_keeps_the_server_serving_and_its_env_until_the_step_ends(
        spawn_server: Any, clients: Any) -> None:
    """A client silent past session_timeout while its step runs on the channel thread: the
    server detaches it at once and serves others meanwhile; the step ends and is answered, and
    only then is its env released (not closed under the running step)."""
    server = spawn_server("recorder", factory=True, max_sessions=2, session_timeout=0.5,
                          env_kwargs={"slow": 3.0})
    silent, stepping, result = _slow_step_of_a_silent_client(server.address, clients)
    stepping.start()
    time.sleep(1.2)  # the session is dropped by now (0.5 s silent, housekeeping every 0.25 s)
    started = time.monotonic()
    other = clients(rnp.RemoteEnv, server.address)
    other.reset(seed=0)
    assert time.monotonic() - started < 1.0, "the server stopped serving while a dropped session's step ran"
    assert other.step(0)[4]["executed"] == [0]
    stepping.join(10)
    assert result == {"executed": [1]}  # answered whole, by an env that was still open
    with pytest.raises(ConnectionError, match="not attached"):
        silent.step(0)


def test_a_stopping_server_waits_for_a_dropped_sessions_step_before_closing_its_env(
        spawn_server: Any, clients: Any) -> None:
    server = spawn_server("recorder", session_timeout=0.5, env_kwargs={"slow": 2.5})
    _, stepping, result = _slow_step_of_a_silent_client(server.address, clients)
    started = time.monotonic()
    stepping.start()
    time.sleep(1.2)  # dropped by now; its step runs on to 2.5 s
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(20)
    stepping.join(10)
    assert result == {"executed": [1]}, result  # answered, not cut off by the server's exit
    assert time.monotonic() - started >= 2.4


# --- every client ------------------------------------------------------------------------------------

def test_each_endpoint_of_a_multi_endpoint_env_has_a_channel_and_matches_zmq(
        spawn_server: Any, clients: Any) -> None:
    servers = [spawn_server("cartpole"), spawn_server("cartpole")]
    addresses = [server.address for server in servers]
    runs = []
    for transport in ("shm", "zmq"):
        envs = clients(rnp.MultiEndpointVectorEnv, addresses, transport=transport)
        assert [e.connection.transport for e in envs._endpoints] == [transport, transport]
        seen = [_comparable(envs.reset(seed=[1, 2]))]
        for i in range(30):
            seen.append(_comparable(envs.step(np.array([i % 2, (i // 2) % 2]))))
        envs.close()
        runs.append(seen)
    _assert_same(runs[0], runs[1])


def test_async_lanes_over_shared_memory_return_the_fast_lane_first(spawn_server: Any, clients: Any) -> None:
    """recv() waits on several channels at once: a reply on one is seen while another is busy."""
    servers = [spawn_server("faulty"), spawn_server("faulty")]
    envs = clients(rnp.MultiEndpointVectorEnv, [s.address for s in servers])
    assert all(e.connection.transport == "shm" for e in envs._endpoints)
    envs.reset(seed=0)
    started = time.monotonic()
    envs.send(np.array([3, 0]))  # lane 0 sleeps 4 s, lane 1 answers at once
    *_, info = envs.recv(min_lanes=1)
    assert list(info["env_id"]) == [1]
    assert time.monotonic() - started < 1.0
    *_, info = envs.recv(min_lanes=1)
    assert list(info["env_id"]) == [0]


def test_model_clients_use_shared_memory_too(clients: Any) -> None:
    from rlmesh.server.model import ModelServer

    server = ModelServer(lambda observation: np.asarray(observation).sum(), "tcp://127.0.0.1:0").start()
    try:
        policy = clients(rnp._PolicyClient, server.address)
        assert policy.transport == "shm"
        assert float(policy.predict(np.arange(4.0))) == 6.0
    finally:
        server.shutdown()


def test_rlmesh_transport_keeps_clients_made_for_you_on_zmq(server_pool: Any, clients: Any,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RLMESH_TRANSPORT", "zmq")
    env = clients(rnp.RemoteEnv, server_pool("cartpole"))
    assert env.transport == "zmq"
    env.close()
    assert clients(rnp.RemoteEnv, server_pool("cartpole"), transport="shm").transport == "shm"
