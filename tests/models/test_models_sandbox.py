"""Sandboxed models in real containers: against a local env and against a sandboxed env.

Needs the engines started by ``.ci/engines.sh`` (sockets in ``/run/rlmesh/engines.env``); a test
whose engine is down is skipped, except under ``CI`` where it fails.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest

import rlmesh.numpy as rnp
from rlmesh import ModelError
from rlmesh.errors import RuntimeUnavailableError
from rlmesh.runtime import RuntimeDriver, get_driver
from rlmesh.runtime.labels import MANAGED, OWNER_PID

pytestmark = [pytest.mark.engine, pytest.mark.timeout(600)]

POLICY = textwrap.dedent('''
    import numpy as np

    def predict(observation):
        observation = np.asarray(observation)
        if observation.ndim == 2:
            return (observation[:, 2] > 0).astype(np.int64)
        if abs(float(observation[0])) > 50:
            raise ValueError("observation out of range")
        return int(observation[2] > 0)
''')
SEEDS = list(range(8))


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


def driver_or_skip(name: str, **options: Any) -> RuntimeDriver:
    try:
        driver = get_driver(name, **options)
        available = driver.available()
    except RuntimeUnavailableError as exc:
        reason = str(exc)
    else:
        if available:
            return driver
        reason = available.reason
    if os.environ.get("CI"):
        pytest.fail(f"{name} engine needed under CI: {reason}")
    pytest.skip(f"{name} engine not available ({reason}); start it with .ci/engines.sh")


def our_containers(driver: RuntimeDriver) -> list[Any]:
    return driver.list({MANAGED: "true", OWNER_PID: str(os.getpid())})


@pytest.fixture(scope="module")
def policy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("agent")
    (directory / "policy.py").write_text(POLICY)
    (directory / "helpers.py").write_text("def act(observation):\n    return 1\n")
    return directory / "policy.py"


@pytest.fixture(scope="module")
def docker() -> Iterator[RuntimeDriver]:
    driver = driver_or_skip("docker")
    yield driver
    assert our_containers(driver) == []


def test_sandboxed_model_against_a_local_env(docker: RuntimeDriver, policy_file: Path) -> None:
    with rnp.SandboxModel(str(policy_file), runtime=docker) as model:
        assert len(our_containers(docker)) == 1
        assert model.client.transport == "shm"  # the container shares this kernel
        result = model.run(gym.make("CartPole-v1"), seeds=SEEDS)
        assert result.returns == by_hand(SEEDS)
        assert result.predict_latency.count == result.total_steps
        vector = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="sync")
        assert model.run(vector, seeds=SEEDS).returns == by_hand(SEEDS)  # per-lane remote calls
    assert our_containers(docker) == []


def test_sandboxed_model_against_a_sandboxed_env(docker: RuntimeDriver, policy_file: Path) -> None:
    with rnp.SandboxModel(str(policy_file), runtime=docker, batched=True) as model, \
            rnp.SandboxVectorEnv("CartPole-v1", num_envs=4, runtime=docker) as vector:
        assert len(our_containers(docker)) == 2
        assert model.run(vector, seeds=SEEDS).returns == by_hand(SEEDS)
    with rnp.SandboxModel(str(policy_file), runtime=docker) as model, \
            rnp.SandboxEnv("CartPole-v1", runtime=docker) as env:
        assert model.run(env, seeds=SEEDS).returns == by_hand(SEEDS)
    assert our_containers(docker) == []


def test_sandboxed_policy_error_and_directory_entry(docker: RuntimeDriver, policy_file: Path) -> None:
    with rnp.SandboxModel(str(policy_file.parent), entry="helpers.py:act", runtime=docker) as constant:
        assert constant.predict(np.zeros(4, np.float32)) == 1
    with rnp.SandboxModel(str(policy_file), runtime=docker) as model:
        env = _FarAwayEnv()
        with pytest.raises(ModelError, match=r"episode 0 \(seed 5\) at step 0.*out of range"):
            model.run(env, seeds=[5])
        assert model.run(gym.make("CartPole-v1"), seeds=[5]).returns == by_hand([5])  # still serving
    assert our_containers(docker) == []


def test_sandboxed_model_on_rootful_podman(policy_file: Path) -> None:
    podman = driver_or_skip("podman", host="unix:///run/podman/podman.sock")
    try:
        with rnp.SandboxModel(str(policy_file), runtime=podman) as model:
            assert len(our_containers(podman)) == 1
            assert model.run(gym.make("CartPole-v1"), seeds=SEEDS).returns == by_hand(SEEDS)
        assert our_containers(podman) == []
    finally:
        podman.close()


class _FarAwayEnv(gym.Env[np.ndarray, int]):
    observation_space = gym.spaces.Box(-100, 100, (4,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return np.full(4, 99.0, np.float32), {}

    def step(self, action: int) -> Any:
        return np.full(4, 99.0, np.float32), 0.0, False, False, {}
