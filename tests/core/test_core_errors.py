"""Failure paths: bad actions, raising envs, busy servers, dead peers, versions, hostile frames."""

from __future__ import annotations

import socket
import struct
import threading
import time
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest
import zmq

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.protocol.connection
from rlmesh import EnvironmentException, ServerBusyError, VersionMismatchError
from rlmesh.protocol.address import to_zmq_endpoint
from rlmesh.protocol.messages import PROTOCOL_GENERATION
from rlmesh.wire import codec


def test_action_outside_the_space_names_the_space(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("cartpole"))
    env.reset(seed=0)
    for bad in (2, -1, 0.5, "left", [0, 1]):
        with pytest.raises(ValueError, match=r"not in the action space Discrete\(2\)"):
            env.step(bad)
    obs, *_ = env.step(1)  # the server keeps serving this client
    assert obs.shape == (4,)


def test_action_of_the_wrong_shape_names_the_box(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("pendulum"))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"Box\(-2.0, 2.0, \(1,\), float32\)"):
        env.step(np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="Box"):
        env.step(np.full(1, 5.0, np.float32))  # out of bounds
    obs, reward, *_ = env.step(np.zeros(1, np.float32))
    assert obs.shape == (3,) and isinstance(reward, float)


def test_vector_actions_of_the_wrong_count_are_rejected(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", num_envs=3))
    env.reset(seed=0)
    with pytest.raises(ValueError, match="got 2 actions for 3 environments"):
        env.step([0, 1])
    for bad in (np.array([0, 1, 5]), np.array([0, -1, 1]), np.array([[0, 1, 1]]),
                np.array([0.0, 1.0, 1.0]), np.array([0, 1], np.uint8)):
        with pytest.raises(ValueError, match="MultiDiscrete"):
            env.step(bad)
    assert env.step(np.array([1, 0, 1], np.uint8))[0].shape == (3, 4)
    assert env.step(np.array([0, 1, 1]))[0].shape == (3, 4)


def test_env_exception_carries_the_remote_traceback(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("faulty"))
    env.reset()
    with pytest.raises(EnvironmentException) as caught:
        env.step(2)
    error = caught.value
    assert error.remote_type == "RuntimeError"
    assert "the env blew up on purpose" in str(error)
    assert "_explode_deep_inside" in error.remote_traceback and "core_envs.py" in error.remote_traceback
    assert "Remote traceback" in str(error)
    with pytest.raises(EnvironmentException, match="reset asked to fail") as caught:
        env.reset(options={"fail": True})
    assert caught.value.remote_type == "KeyError"
    obs, reward, *_ = env.step(0)  # still serving
    assert reward == 1.0 and obs.tolist() == [0.5, 0.5]


def test_second_client_is_refused_until_the_first_closes(server_pool: Any, clients: Any, transport: str) -> None:
    address = server_pool("cartpole", transport)
    first = clients(rnp.RemoteEnv, address)
    first.reset(seed=1)
    with pytest.raises(ServerBusyError, match="already serves another client") as caught:
        rnp.RemoteEnv(address)
    assert isinstance(caught.value, ConnectionError)
    first.close()
    second = clients(rnp.RemoteEnv, address)
    assert second.reset(seed=1)[0].shape == (4,)
    with pytest.raises(ConnectionError, match="closed"):
        first.step(0)


def test_wrong_client_kind_is_refused_and_frees_the_server(server_pool: Any, clients: Any) -> None:
    address = server_pool("cartpole")
    with pytest.raises(TypeError, match="use RemoteEnv"):
        rnp.RemoteVectorEnv(address)
    env = clients(rnp.RemoteEnv, address)
    assert env.reset(seed=0)[0].shape == (4,)


# --- dead and absent servers -------------------------------------------------------------------


def test_killed_server_gives_connection_error_quickly(spawn_server: Any, transport: str) -> None:
    server = spawn_server("cartpole", transport)
    env = rnp.RemoteEnv(server.address)
    try:
        env.reset(seed=0)
        env.step(0)
        server.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match="lost the connection"):
            env.step(1)
        assert time.monotonic() - started < 3.0
        with pytest.raises(ConnectionError):  # and it stays broken, at once
            env.step(1)
    finally:
        env.close()


def test_server_killed_during_a_request(spawn_server: Any, transport: str) -> None:
    server = spawn_server("faulty", transport)
    env = rnp.RemoteEnv(server.address)
    killed_at: list[float] = []

    def kill_soon() -> None:
        time.sleep(0.5)
        killed_at.append(time.monotonic())
        server.kill()

    killer = threading.Thread(target=kill_soon)
    try:
        env.reset()
        killer.start()
        with pytest.raises(ConnectionError):
            env.step(3)  # the env sleeps 4 s in this step
        assert time.monotonic() - killed_at[0] < 3.0
    finally:
        killer.join()
        env.close()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("kind", ["tcp", "unix"])
def test_connecting_to_nothing_fails_within_the_connect_timeout(kind: str, socket_dir: Any) -> None:
    address = f"127.0.0.1:{_free_port()}" if kind == "tcp" else f"unix://{socket_dir}/nobody.sock"
    started = time.monotonic()
    with pytest.raises(ConnectionError, match="no rlmesh server answered") as caught:
        rnp.RemoteEnv(address, connect_timeout=0.5)
    elapsed = time.monotonic() - started
    assert 0.5 <= elapsed < 1.5
    assert "nobody.sock" in str(caught.value) or "127.0.0.1" in str(caught.value)


def test_request_timeout_breaks_the_client(server_pool: Any, clients: Any) -> None:
    address = server_pool("faulty")
    env = rnp.RemoteEnv(address, request_timeout=0.5)
    env.reset()
    started = time.monotonic()
    with pytest.raises(TimeoutError, match="did not answer a step request within 0.5 s"):
        env.step(3)
    assert time.monotonic() - started < 1.5
    with pytest.raises(ConnectionError, match="unusable"):
        env.step(0)
    env.close()


# --- versions ----------------------------------------------------------------------------------


def test_package_version_mismatch_names_both_versions(server_pool: Any, clients: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    address = server_pool("cartpole")
    monkeypatch.setattr(rlmesh.protocol.connection, "__version__", "0.0.1.other")
    with pytest.raises(VersionMismatchError) as caught:
        rnp.RemoteEnv(address)
    message = str(caught.value)
    assert "0.0.1.other" in message and rlmesh.__version__ in message and "pip install" in message
    monkeypatch.undo()
    # The refused client must not keep the server busy: the fixed client attaches at once.
    env = clients(rnp.RemoteEnv, address)
    assert env.reset(seed=0)[0].shape == (4,)


def test_protocol_generation_mismatch_names_both_sides(server_pool: Any, clients: Any,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    address = server_pool("cartpole")
    monkeypatch.setattr(rlmesh.protocol.connection, "PROTOCOL_GENERATION", PROTOCOL_GENERATION + 41)
    with pytest.raises(VersionMismatchError) as caught:
        rnp.RemoteEnv(address)
    message = str(caught.value)
    assert f"generation {PROTOCOL_GENERATION}" in message and str(PROTOCOL_GENERATION + 41) in message
    assert rlmesh.__version__ in message
    monkeypatch.undo()
    env = clients(rnp.RemoteEnv, address)
    assert env.reset(seed=0)[0].shape == (4,)


# --- hostile peers -----------------------------------------------------------------------------


def _ext_tensor(code: int, dtype_code: int, shape: tuple[int, ...], tail: bytes) -> msgpack.ExtType:
    return msgpack.ExtType(code, struct.pack("<BB", dtype_code, len(shape)) + struct.pack(f"<{len(shape)}Q", *shape) + tail)


def _request(kind: Any, request_id: Any, session: Any, payload: Any) -> bytes:
    packed: bytes = msgpack.packb([kind, request_id, session, payload], use_bin_type=True)
    return packed


FLOAT32 = sorted(rlmesh.wire.tensor.DTYPES).index("float32")
HOSTILE: list[tuple[str, list[bytes]]] = [
    ("garbage", [b"garbage bytes \x00\xff"]),
    ("empty header", [b""]),
    ("reserved byte", [b"\xc1"]),
    ("not a list", [msgpack.packb(42)]),
    ("short list", [msgpack.packb(["step", 1])]),
    ("kind not a string", [_request(1, 2, "s", None)]),
    ("request id not an int", [_request("step", "one", "s", None)]),
    ("not attached", [_request("step", 3, "stranger", 0)]),
    ("unknown kind, not attached", [_request("launch_missiles", 4, "stranger", None)]),
    ("hello without session", [_request("hello", 5, 17, {"protocol": PROTOCOL_GENERATION})]),
    ("hello from the future", [_request("hello", 6, "s", {"protocol": 999, "version": "9"})]),
    ("unknown dtype code", [_request("step", 7, "s", _ext_tensor(1, 200, (2,), b"\x00" * 8))]),
    ("truncated tensor ext", [_request("step", 8, "s", msgpack.ExtType(1, b"\x05"))]),
    ("ndim without dims", [_request("step", 9, "s", msgpack.ExtType(1, b"\x05\xff"))]),
    ("missing frame", [_request("step", 10, "s", _ext_tensor(2, FLOAT32, (2,), struct.pack("<I", 5)))]),
    ("frame index zero", [_request("step", 11, "s", _ext_tensor(2, FLOAT32, (2,), struct.pack("<I", 0)))]),
    ("huge inline shape", [_request("step", 12, "s", _ext_tensor(1, FLOAT32, (2**40, 2**40), b"\x00" * 16))]),
    ("huge framed shape", [_request("step", 13, "s", _ext_tensor(2, FLOAT32, (2**62,), struct.pack("<I", 1))),
                           b"\x00" * 8]),
    ("max dims", [_request("step", 14, "s", _ext_tensor(1, FLOAT32, (2**64 - 1, 0), b""))]),
    ("unknown ext", [_request("step", 15, "s", msgpack.ExtType(42, b"boo"))]),
    ("array32 of 4G items", [b"\x94\xa4step\x10\xa1s\xdd\xff\xff\xff\xff"]),
    ("bin32 of 4 GiB", [b"\x94\xa4step\x11\xa1s\xc6\xff\xff\xff\xff"]),
    ("deep nesting", [b"\x91" * 100_000]),
    ("many frames", [_request("step", 18, "s", None)] + [b"x" * 10] * 64),
]


def _exchange(dealer: zmq.Socket[Any], frames: list[bytes], timeout_ms: int = 2000) -> Any:
    dealer.send_multipart(frames)
    if not dealer.poll(timeout_ms):
        return None
    return codec.decode(dealer.recv_multipart())


def test_hostile_frames_get_error_replies_and_the_server_survives(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole")
    context: zmq.Context[Any] = zmq.Context.instance()
    dealer = context.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(to_zmq_endpoint(server.address))
    try:
        for name, frames in HOSTILE:
            reply = _exchange(dealer, frames)
            assert reply is not None, f"{name}: no reply"
            status, _, payload = reply
            assert status == "error" and payload["kind"] in ("protocol", "not_attached", "version"), (name, reply)
            assert server.alive(), name
        # Attached, a raw peer can still send nonsense: unknown kinds and ill-formed payloads.
        hello = {"protocol": PROTOCOL_GENERATION, "version": rlmesh.__version__}
        assert _exchange(dealer, [_request("hello", 1, "raw", hello)])[0] == "ok"
        for kind, payload, expected in [("launch_missiles", None, "protocol"),
                                        ("step", {"evil": b"\x00"}, "invalid_action"),
                                        ("step", None, "invalid_action"),
                                        ("reset", [1, 2], "environment"),
                                        ("render", {"env_index": "abc"}, "environment")]:
            status, request_id, error = _exchange(dealer, [_request(kind, 2, "raw", payload)])
            assert (status, request_id, error["kind"]) == ("error", 2, expected), (kind, error)
        # Heartbeats are never answered, whoever sends them.
        assert _exchange(dealer, [_request("heartbeat", 0, "stranger", None)], timeout_ms=300) is None
        assert _exchange(dealer, [_request("close", 3, "raw", None)])[0] == "ok"
    finally:
        dealer.close(linger=0)
    assert server.alive()
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    assert env.step(0)[0].shape == (4,)


# --- sessions and owners -----------------------------------------------------------------------


def test_silent_client_times_out_and_frees_the_server(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("cartpole", session_timeout=0.5)
    silent = clients(rnp.RemoteEnv, server.address, heartbeat_interval=None)
    silent.reset(seed=0)
    with pytest.raises(ServerBusyError):
        rnp.RemoteEnv(server.address)
    time.sleep(1.0)
    newcomer = clients(rnp.RemoteEnv, server.address)
    assert newcomer.reset(seed=0)[0].shape == (4,)
    with pytest.raises(ConnectionError, match="not attached"):
        silent.step(0)
    # A client that sends heartbeats keeps its session while idle.
    newcomer.close()
    beating = clients(rnp.RemoteEnv, server.address, heartbeat_interval=0.1)
    time.sleep(1.0)
    with pytest.raises(ServerBusyError):
        rnp.RemoteEnv(server.address)
    assert beating.step(0)[0].shape == (4,)


def test_owner_timeout_stops_a_server_without_clients(spawn_server: Any, clients: Any) -> None:
    lonely = spawn_server("cartpole", owner_timeout=0.5)
    owned = spawn_server("cartpole", owner_timeout=0.5)
    env = clients(rnp.RemoteEnv, owned.address, heartbeat_interval=0.1)
    env.reset(seed=0)
    lonely.proc.wait(3.0)  # nobody attached: it stops by itself, cleanly
    assert lonely.proc.returncode == 0
    time.sleep(0.5)
    assert owned.alive()  # an attached (heartbeating) client keeps it up
    env.close()
    owned.proc.wait(3.0)
    assert owned.proc.returncode == 0
