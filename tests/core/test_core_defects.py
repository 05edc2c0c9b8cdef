"""Defects found by trying rlmesh as a new user would; each test failed before its fix."""

from __future__ import annotations

import math
from typing import Any

import gymnasium as gym
import ml_dtypes
import numpy as np
import pytest
from core_envs import make, unsendable_values

import rlmesh
import rlmesh.client
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
import rlmesh.types
from rlmesh import EnvironmentException, EnvServer, Tensor
from rlmesh.wire import codec
from rlmesh.wire.spaces import BoxSpec, DictSpec, Space

# --- a value the wire cannot send never stops the server ---------------------------------------


def test_unsendable_info_gets_an_error_naming_the_key_and_the_server_serves_on(
        spawn_server: Any, clients: Any) -> None:
    server = spawn_server("unsendable_info")
    env = clients(rnp.RemoteEnv, server.address)
    env.reset(seed=0)
    for action, (_, words) in enumerate(unsendable_values(), start=1):
        with pytest.raises(EnvironmentException, match=r"step reply cannot be sent: info\['payload'\]") as caught:
            env.step(action)
        assert words in str(caught.value)
        obs, reward, *_ = env.step(0)  # the same client steps on: nothing was lost
        assert reward == 1.0 and obs.tolist() == [0.5, 0.5]
    assert server.alive()
    # Metadata is free-form and documented as lenient: unsendable parts arrive as text.
    assert "datetime64" in str(env.metadata["unsendable"])


def test_encode_error_names_the_path_and_type() -> None:
    cycle: list[Any] = []
    cycle.append(cycle)
    cases = [
        ({"a": [1, {"b": np.array(["x"])}]}, r"the value\['a'\]\[1\]\['b'\]: .*dtype <U1"),
        ((0, 2**70), r"the value\[1\]: the int 1180591620717411303424 is outside"),
        ({"loop": cycle}, r"the value\['loop'\]\[0\]: this container contains itself"),
        ({"f": object()}, r"the value\['f'\]: cannot send a value of type builtins.object"),
    ]
    for value, message in cases:
        with pytest.raises(codec.EncodeError, match=message):
            codec.encode(value)
        with pytest.raises(TypeError):  # still a TypeError, as documented before
            codec.encode(value)
        assert codec.decode(codec.encode(value, lenient=True)) is not None  # lenient never raises


# --- bfloat16 Box through the NumPy client ------------------------------------------------------


class _Bfloat16BoxEnv:
    def __init__(self) -> None:
        low, high = np.zeros(3, ml_dtypes.bfloat16), np.ones(3, ml_dtypes.bfloat16)
        box = BoxSpec(rnp.from_array(low), rnp.from_array(high), (3,), "bfloat16")  # type: ignore[arg-type]
        self.observation_space = Space(DictSpec({"x": box}))
        self.action_space = gym.spaces.Discrete(2)
        self.metadata: dict[str, Any] = {}
        self._obs = {"x": high * 0.5}

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        return self._obs, {}

    def step(self, action: int) -> Any:
        return self._obs, 0.0, False, False, {}

    def close(self) -> None:
        pass


def test_numpy_client_connects_to_a_bfloat16_box_and_keeps_its_dtype() -> None:
    with EnvServer(_Bfloat16BoxEnv()) as server:
        with rnp.RemoteEnv(server.address) as env:
            space = env.observation_space
            assert isinstance(space, Space)  # Gymnasium cannot hold bfloat16: an rlmesh space
            assert space["x"].dtype == "bfloat16"
            obs, _ = env.reset()
            assert obs["x"].dtype == ml_dtypes.bfloat16 and space.contains(obs)
            sample = space.sample()
            assert sample["x"].dtype == ml_dtypes.bfloat16 and space.contains(sample)
        with rtorch.RemoteEnv(server.address) as torch_env:  # the other flavours still connect
            assert torch_env.reset()[0]["x"].shape == (3,)


# --- a client that fails after the handshake frees the server -----------------------------------


def test_a_client_failing_in_its_constructor_detaches(monkeypatch: pytest.MonkeyPatch) -> None:
    with EnvServer(gym.make("CartPole-v1")) as server:
        def broken(spec: Any) -> Any:
            raise ValueError("space conversion failed on purpose")

        monkeypatch.setattr(rnp.RemoteEnv, "_backend",
                            rnp.BACKEND.__class__(**{**rnp.BACKEND.__dict__, "space_from_spec": broken}))
        # The errors stay referenced (as in a REPL's last traceback), so garbage collection
        # cannot be what frees the server.
        with pytest.raises(ValueError, match="on purpose") as first:
            rnp.RemoteEnv(server.address, heartbeat_interval=None)
        with pytest.raises(ValueError, match="on purpose") as second:
            rlmesh.connect(server.address, backend="numpy")
        monkeypatch.undo()
        with rnp.RemoteEnv(server.address, connect_timeout=2.0) as env:  # not ServerBusyError
            assert env.reset(seed=0)[0].shape == (4,)
        assert first.traceback and second.traceback


# --- the VectorEnvLike protocol is what EnvServer serves ----------------------------------------


def test_a_bare_vector_env_like_is_served_with_derived_batched_spaces() -> None:
    bare = make("bare_vector", num_envs=3)
    assert isinstance(bare, rlmesh.types.VectorEnvLike)
    with EnvServer(bare) as server, rnp.RemoteVectorEnv(server.address) as env:
        assert env.action_space == gym.spaces.MultiDiscrete([2, 2, 2])
        assert env.observation_space == gym.spaces.Box(-1.0, 1.0, (3, 2), np.float32)
        env.reset(seed=0)
        obs, reward, *_ = env.step(np.array([1, 0, 1]))
        assert obs.tolist() == [[1, 1], [0, 0], [1, 1]] and reward.tolist() == [1, 1, 1]
        with pytest.raises(ValueError, match="MultiDiscrete"):
            env.step(np.array([2, 0, 1]))  # checked against the derived batched space


# --- 0-d tensors --------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "int64", "uint8", "bool", "float64"])
def test_data_of_a_0d_tensor_is_0d(dtype: str) -> None:
    tensor = rnp.from_array(np.zeros((1,), dtype))
    scalar = Tensor(tensor.raw, dtype, ())
    assert scalar.data.shape == () and scalar.data.ndim == 0
    assert scalar.data[()] == 0


# --- timeouts -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["connect_timeout", "request_timeout"])
@pytest.mark.parametrize("value", [math.nan, -1.0, math.inf, "5"])
def test_bad_timeouts_are_refused_naming_the_argument(name: str, value: Any) -> None:
    with EnvServer(gym.make("CartPole-v1")) as server:
        with pytest.raises(ValueError, match=name):
            rnp.RemoteEnv(server.address, **{name: value})
        with rnp.RemoteEnv(server.address, request_timeout=None) as env:  # None: no limit
            assert env.reset(seed=0)[0].shape == (4,)


def test_bad_server_timeouts_are_refused() -> None:
    with pytest.raises(ValueError, match="session_timeout"):
        EnvServer(gym.make("CartPole-v1"), session_timeout=math.nan)
    with pytest.raises(ValueError, match="owner_timeout"):
        EnvServer(gym.make("CartPole-v1"), owner_timeout=-5)


# --- a send never hangs for good ---------------------------------------------------------------


def test_a_send_with_no_connection_to_queue_on_fails_instead_of_hanging(spawn_server: Any) -> None:
    # zmq queues a request while it has a connection or is making one. After a failed key
    # handshake it may have neither (seen once in CI: a keyless client's hello hung for 300 s);
    # dropping the connection by hand makes that state certain.
    import threading
    import time

    from rlmesh.protocol.address import to_zmq_endpoint
    from rlmesh.protocol.connection import Connection

    server = spawn_server("cartpole")
    connection = Connection(to_zmq_endpoint(server.address), transport="zmq", heartbeat_interval=None)
    outcome: list[BaseException] = []

    def reset() -> None:
        try:
            connection.request("reset", {"seed": 0}, timeout=2.0)
        except BaseException as exc:  # noqa: BLE001 - the test looks at what it was
            outcome.append(exc)

    try:
        connection.socket.disconnect(connection.endpoint)
        started = time.monotonic()
        thread = threading.Thread(target=reset, daemon=True)
        thread.start()
        thread.join(10.0)
        assert not thread.is_alive(), "the request hung in zmq's send"
        assert time.monotonic() - started < 5.0
        assert len(outcome) == 1 and isinstance(outcome[0], (ConnectionError, TimeoutError)), outcome
        assert connection.address in str(outcome[0])
    finally:
        connection.close(notify=False)
