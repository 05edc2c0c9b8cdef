"""Address forms, binding, server lifecycle, and the dependency-free client in a NumPy-free process."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest

from rlmesh import EnvServer
from rlmesh.numpy import RemoteEnv
from rlmesh.protocol.address import to_user_address, to_zmq_endpoint
from rlmesh.wire.tensor import DTYPES


@pytest.mark.parametrize(("address", "endpoint"), [
    ("tcp://127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("tcp://0.0.0.0:0", "tcp://0.0.0.0:0"),
    ("127.0.0.1:5555", "tcp://127.0.0.1:5555"),
    ("localhost:80", "tcp://localhost:80"),
    ("env-host.example:65535", "tcp://env-host.example:65535"),
    ("[::1]:5555", "tcp://[::1]:5555"),
    ("tcp://[::1]:0", "tcp://[::1]:0"),
    (5555, "tcp://127.0.0.1:5555"),
    ("5555", "tcp://127.0.0.1:5555"),
    (" 5555 ", "tcp://127.0.0.1:5555"),
    (0, "tcp://127.0.0.1:0"),
    ("unix:///tmp/env.sock", "ipc:///tmp/env.sock"),
    ("ipc:///tmp/env.sock", "ipc:///tmp/env.sock"),
    ("unix://relative.sock", "ipc://relative.sock"),
])
def test_address_forms(address: Any, endpoint: str) -> None:
    assert to_zmq_endpoint(address) == endpoint


@pytest.mark.parametrize(("kwargs", "endpoint"), [
    ({"port": 6000}, "tcp://127.0.0.1:6000"),
    ({"host": "10.0.0.2", "port": 6000}, "tcp://10.0.0.2:6000"),
    ({"host": "h", "port": 1, "transport": "tcp"}, "tcp://h:1"),
    ({"path": "/tmp/a.sock"}, "ipc:///tmp/a.sock"),
    ({"path": "/tmp/a.sock", "transport": "unix"}, "ipc:///tmp/a.sock"),
])
def test_keyword_address_forms(kwargs: dict[str, Any], endpoint: str) -> None:
    assert to_zmq_endpoint(None, **kwargs) == endpoint


@pytest.mark.parametrize(("address", "kwargs", "message"), [
    ("127.0.0.1:70000", {}, "between 0 and 65535"),
    (65536, {}, "between 0 and 65535"),
    (-1, {}, "between 0 and 65535"),
    ("http://host:80", {}, "unsupported address scheme"),
    ("unix://", {}, "has no path"),
    ("nonsense", {}, "cannot parse address 'nonsense'"),
    ("host:", {}, "cannot parse"),
    ("host:port", {}, "cannot parse"),
    ("tcp://", {}, "cannot parse"),
    ("", {}, "cannot parse"),
    (None, {}, "give an address"),
    (None, {"transport": "udp", "port": 1}, "unknown transport 'udp'"),
    (None, {"transport": "unix"}, "needs path="),
    (None, {"port": 99999}, "between 0 and 65535"),
])
def test_bad_addresses_say_what_is_expected(address: Any, kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        to_zmq_endpoint(address, **kwargs)


def test_user_form_of_endpoints() -> None:
    assert to_user_address("ipc:///tmp/x.sock") == "unix:///tmp/x.sock"
    assert to_user_address("tcp://127.0.0.1:1") == "tcp://127.0.0.1:1"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _drive(address: str, **kwargs: Any) -> None:
    with RemoteEnv(address, **kwargs) as env:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (4,)


def test_servers_bind_every_address_form(socket_dir: Path) -> None:
    port = _free_port()
    with EnvServer(gym.make("CartPole-v1"), port) as server:
        assert server.address == f"tcp://127.0.0.1:{port}"  # a bare port means loopback
        _drive(str(port))
        _drive(None, port=port)  # type: ignore[arg-type]
    with EnvServer(gym.make("CartPole-v1"), "127.0.0.1:0") as server:
        host, chosen = server.address.removeprefix("tcp://").rsplit(":", 1)
        assert host == "127.0.0.1" and int(chosen) > 0
        _drive(server.address.removeprefix("tcp://"))
        _drive(None, host="127.0.0.1", port=int(chosen))  # type: ignore[arg-type]
    with EnvServer(gym.make("CartPole-v1"), "[::1]:0") as server:
        assert server.address.startswith("tcp://[::1]:")
        _drive(server.address)
    path = socket_dir / "forms.sock"
    with EnvServer(gym.make("CartPole-v1"), f"unix://{path}") as server:
        assert server.address == f"unix://{path}" and path.exists()
        _drive(None, path=str(path))  # type: ignore[arg-type]
    assert not path.exists()  # the socket file is removed on shutdown


def test_default_address_is_loopback_with_a_free_port() -> None:
    with EnvServer(gym.make("CartPole-v1")) as server:
        assert server.address.startswith("tcp://127.0.0.1:")
        _drive(server.address)


def test_busy_port_is_reported() -> None:
    with EnvServer(gym.make("CartPole-v1")) as server:
        with pytest.raises(OSError, match=f"cannot listen on {server.address}"):
            EnvServer(gym.make("CartPole-v1"), server.address)


def test_shutdown_frees_the_address() -> None:
    server = EnvServer(gym.make("CartPole-v1")).start()
    address = server.address
    server.shutdown()
    with pytest.raises(ConnectionError):
        RemoteEnv(address, connect_timeout=0.3)
    EnvServer(gym.make("CartPole-v1"), address).shutdown()  # the port can be bound again


def test_shutdown_after_the_server_stopped_by_itself() -> None:
    server = EnvServer(gym.make("CartPole-v1"), owner_timeout=0.2).start()
    assert server.serving
    assert server.wait(10)  # the owner timeout ends the loop, which closes its sockets
    assert not server.serving
    server.shutdown()  # must not fail because nobody is left to wake


def test_wait_returns_when_shutdown_stops_the_server() -> None:
    server = EnvServer(gym.make("CartPole-v1")).start()
    assert not server.wait(0.2)  # still serving
    threading.Timer(0.2, server.shutdown).start()
    assert server.wait(10) and not server.serving


def test_sigterm_stops_serve_cleanly(spawn_server: Any) -> None:
    server = spawn_server("cartpole", "unix")
    path = Path(server.address.removeprefix("unix://"))
    assert path.exists()
    _drive(server.address)  # serve() is running (its SIGTERM handler installed) once it answers
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(5) == 0
    assert not path.exists()


def test_non_env_is_rejected() -> None:
    with pytest.raises(TypeError, match="needs a Gymnasium-like env with reset"):
        EnvServer(object())
    with pytest.raises(ValueError, match="at least one environment"):
        EnvServer([])


# --- the dependency-free client ----------------------------------------------------------------

_NUMPY_FREE_CLIENT = textwrap.dedent("""
    import json, sys
    sys.modules["numpy"] = None  # any import of NumPy or Torch now fails
    sys.modules["torch"] = None
    import rlmesh
    from rlmesh import RemoteEnv, RemoteVectorEnv, Space, Tensor

    report = {}
    try:
        import rlmesh.numpy
    except ImportError as exc:
        report["numpy_backend_error"] = str(exc)

    with RemoteEnv(sys.argv[1]) as env:
        obs, info = env.reset(seed=11)
        report["leaf_types"] = sorted({type(v).__name__ for v in obs.values()})
        report["dtypes"] = sorted(v.dtype for v in obs.values() if isinstance(v, Tensor))
        report["large"] = [obs["float64_large"].shape, obs["float64_large"].nbytes]
        report["int16_small"] = obs["int16_small"].tolist()
        report["bool_small"] = obs["bool_small"].tolist()
        report["info"] = [info["seed"], info["tuple"], info["objects"], info["array"].dtype]
        report["spaces"] = [type(env.observation_space).__name__, repr(env.action_space)]
        env.action_space.seed(0)
        action = env.action_space.sample()
        report["action_ok"] = env.action_space.contains(action)
        _, reward, terminated, truncated, _ = env.step(action)
        report["step"] = [reward == float(action), terminated, truncated]

    with RemoteEnv(sys.argv[2]) as env:
        obs, _ = env.reset(seed=1)
        sample = env.observation_space.sample()
        report["cartpole"] = [obs.dtype, list(obs.shape), isinstance(sample, Tensor),
                              env.observation_space.contains(obs)]
        report["cartpole_step"] = env.step(env.action_space.sample())[1]

    report["numpy_loaded"] = sys.modules.get("numpy") is not None
    report["gymnasium_loaded"] = "gymnasium" in sys.modules
    print(json.dumps(report))
""")


def test_plain_client_works_without_numpy_or_torch(server_pool: Any) -> None:
    zoo, cartpole = server_pool("dtype_zoo"), server_pool("cartpole")
    done = subprocess.run([sys.executable, "-c", _NUMPY_FREE_CLIENT, zoo, cartpole], capture_output=True,
                          text=True, timeout=60, env={**os.environ, "PYTHONWARNINGS": "error"})
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert 'pip install "rlmesh[numpy]"' in report["numpy_backend_error"]
    assert report["leaf_types"] == ["Tensor", "float", "int"]  # arrays, and 0-d arrays as primitives
    assert set(report["dtypes"]) == DTYPES
    assert report["large"] == [[64, 80, 2], 64 * 80 * 2 * 8]
    assert len(report["int16_small"]) == 2 and len(report["bool_small"][0]) == 3
    assert all(isinstance(v, bool) for row in report["bool_small"] for v in row)
    assert report["info"] == [11, [1, [2, "three"]], [None, {"k": 1}, "s"], "float64"]
    assert report["spaces"] == ["Space", "Discrete(3)"]
    assert report["action_ok"] is True and report["step"] == [True, False, False]
    assert report["cartpole"] == ["float32", [4], True, True]
    assert report["cartpole_step"] == 1.0
    assert report["numpy_loaded"] is False and report["gymnasium_loaded"] is False


def test_bfloat16_without_ml_dtypes_names_the_extra() -> None:
    script = textwrap.dedent("""
        import sys
        sys.modules["ml_dtypes"] = None
        from rlmesh import Tensor
        from rlmesh.numpy import asarray
        print(asarray(Tensor(b"\\x00\\x00" * 3, "int16", (3,))).tolist())
        try:
            asarray(Tensor(b"\\x80\\x3f", "bfloat16", (1,)))
        except ImportError as exc:
            print(exc)
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[0, 0, 0]"
    assert 'pip install "rlmesh[bfloat16]"' in lines[1]
