"""ModelServer and its client over real sockets; SandboxModel source rules (nothing is built)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh import ModelError, ProtocolError, ServerBusyError
from rlmesh.errors import SourceError
from rlmesh.server.model import ModelServer, load_policy

POLICY = textwrap.dedent('''
    import numpy as np

    seen = []

    def predict(observation):
        seen.append(type(observation).__module__)
        observation = np.asarray(observation)
        if observation.ndim == 2:
            return (observation[:, 2] > 0).astype(np.int64)
        if observation[0] == 99.0:
            raise ValueError("policy refuses 99")
        return int(observation[2] > 0)

    class Agent:
        def predict(self, observation):
            return 1

    agent = Agent()
''')


@pytest.fixture
def policy_dir(tmp_path: Path) -> Path:
    (tmp_path / "policy.py").write_text(POLICY)
    return tmp_path


@pytest.fixture
def served(policy_dir: Path) -> Iterator[ModelServer]:
    with ModelServer(load_policy(policy_dir, "policy.py:predict")) as server:
        yield server


def by_hand(seeds: list[int]) -> list[float]:
    env = gym.make("CartPole-v1")
    returns = []
    for seed in seeds:
        observation, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            observation, reward, terminated, truncated, _ = env.step(int(observation[2] > 0))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return returns


def test_load_policy_accepts_functions_objects_and_classes(policy_dir: Path) -> None:
    assert load_policy(policy_dir, "policy.py:predict")(np.zeros(4)) == 0
    assert load_policy(policy_dir, "policy.py:agent")(None) == 1
    assert load_policy(policy_dir, "policy.py:Agent")(None) == 1
    with pytest.raises(SourceError, match="no callable 'missing'"):
        load_policy(policy_dir, "policy.py:missing")


def test_served_policy_gives_the_same_returns(served: ModelServer) -> None:
    client = rnp._PolicyClient(served.address)
    try:
        assert client.info["kind"] == "model"
        result = rnp.Model(client.predict).run(gym.make("CartPole-v1"), seeds=[0, 1, 2])
        assert result.returns == by_hand([0, 1, 2])
        batched = rnp.Model(client.predict, batched=True)
        vector = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync")
        assert batched.run(vector, seeds=[0, 1, 2]).returns == by_hand([0, 1, 2])
    finally:
        client.close()


def test_torch_observations_reach_the_server_as_numpy(served: ModelServer) -> None:
    client = rtorch._PolicyClient(served.address)
    try:
        result = rtorch.Model(client.predict).run(gym.make("CartPole-v1"), seeds=[3])
        assert result.returns == by_hand([3])
    finally:
        client.close()
    seen = served.predict.__globals__["seen"]  # recorded by the served policy module
    assert seen and set(seen) == {"numpy"}


def test_policy_error_names_the_step_and_the_server_keeps_serving(served: ModelServer) -> None:
    client = rnp._PolicyClient(served.address)
    try:
        with pytest.raises(ModelError, match=r"episode 0 \(seed None\) at step 0.*policy refuses 99") as info:
            rnp.Model(client.predict).run(_ConstantEnv(99.0), episodes=1)
        assert "Traceback" in str(info.value.__cause__)  # the policy's own traceback travels back
        assert client.predict(np.array([0.0, 0.0, 1.0, 0.0], np.float32)) == 1
    finally:
        client.close()


def test_one_client_at_a_time_and_kinds_do_not_mix(served: ModelServer, server_pool: Any) -> None:
    first = rnp._PolicyClient(served.address)
    try:
        with pytest.raises(ServerBusyError):
            rnp._PolicyClient(served.address, connect_timeout=2.0)
    finally:
        first.close()
    with pytest.raises(TypeError, match="serves an environment, not a model"):
        rnp._PolicyClient(server_pool("cartpole"))
    with pytest.raises(ProtocolError):
        rnp.RemoteEnv(served.address)


def test_model_server_in_its_own_process(policy_dir: Path) -> None:
    script = textwrap.dedent(f'''
        from rlmesh.server.model import ModelServer, load_policy
        server = ModelServer(load_policy({str(policy_dir)!r}, "policy.py:predict"), owner_timeout=5.0)
        print("READY", server.address, flush=True)
        server.serve()
    ''')
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("READY "), line
        client = rnp._PolicyClient(line.split()[1])
        result = rnp.Model(client.predict).run(gym.make("CartPole-v1"), seeds=[4, 5])
        assert result.returns == by_hand([4, 5])
        client.close()
        assert proc.wait(15) == 0  # owner_timeout: stops by itself once its client is gone
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


class _ConstantEnv(gym.Env[np.ndarray, int]):
    observation_space = gym.spaces.Box(-100, 100, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, value: float) -> None:
        self.value = value

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return np.full(4, self.value, np.float32), {}

    def step(self, action: int) -> Any:
        return np.full(4, self.value, np.float32), 1.0, False, False, {}


# --- SandboxModel sources: refused before anything is built --------------------------------------


def test_sandbox_model_source_rules(policy_dir: Path) -> None:
    with pytest.raises(SourceError, match="cannot find the policy"):
        rnp.SandboxModel(str(policy_dir / "nope.py"))
    with pytest.raises(SourceError, match="has no agent.py"):
        rnp.SandboxModel(str(policy_dir), entry="agent.py:act")
    with pytest.raises(SourceError, match="must name a .py file"):
        rnp.SandboxModel(str(policy_dir), entry="../policy.py:predict")
    with pytest.raises(SourceError, match="not a Python name"):
        rnp.SandboxModel(f"{policy_dir / 'policy.py'}:not-a-name")
    with pytest.raises(SourceError, match="entry= is for directory sources"):
        rnp.SandboxModel(str(policy_dir / "policy.py"), entry="policy.py:predict")
    with pytest.raises(TypeError, match="unknown SandboxModel options.*num_envs"):
        rnp.SandboxModel(str(policy_dir / "policy.py"), num_envs=2)
