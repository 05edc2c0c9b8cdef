"""rlmesh.sb3: Stable-Baselines3 over remote vector envs, against SB3's own DummyVecEnv.

Servers run in other processes (``tests/core/core_serve.py``); the reference is a
``DummyVecEnv`` of the same envs with the same seeds, which must agree step by step whatever
autoreset mode the served vector env uses.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3 import PPO
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import rlmesh.numpy as rnp
from rlmesh.errors import EnvironmentException
from rlmesh.sb3 import as_vec_env

LANES = 4


def _reference(max_episode_steps: int) -> DummyVecEnv:
    return DummyVecEnv([lambda: gym.make("CartPole-v1", max_episode_steps=max_episode_steps)] * LANES)


@pytest.mark.parametrize("autoreset", ["NextStep", "SameStep", "Disabled"])
@pytest.mark.parametrize("mode", ["sync", "async"])
def test_steps_equal_sb3s_own_vec_env_in_every_autoreset_mode(autoreset: str, mode: str,
                                                               spawn_server: Any) -> None:
    server = spawn_server("cartpole_vec", env_kwargs={"num_envs": LANES, "autoreset": autoreset,
                                                      "max_episode_steps": 15, "mode": mode})
    venv = as_vec_env(rnp.RemoteVectorEnv(server.address))
    reference = _reference(15)
    try:
        assert isinstance(venv, VecEnv) and venv.num_envs == LANES
        assert venv.observation_space == reference.observation_space
        venv.seed(7)
        reference.seed(7)
        np.testing.assert_array_equal(venv.reset(), reference.reset())
        rng = np.random.default_rng(0)
        ended = truncated = 0
        for _ in range(60):
            actions = rng.integers(0, 2, LANES)
            obs, rewards, dones, infos = venv.step(actions)
            want_obs, want_rewards, want_dones, want_infos = reference.step(actions)
            np.testing.assert_array_equal(obs, want_obs)
            np.testing.assert_array_equal(rewards, want_rewards)
            assert rewards.dtype == want_rewards.dtype and dones.dtype == want_dones.dtype
            np.testing.assert_array_equal(dones, want_dones)
            for got, want in zip(infos, want_infos):
                assert set(got) >= set(want), (got, want)
                if "terminal_observation" in want:
                    np.testing.assert_array_equal(got["terminal_observation"], want["terminal_observation"])
                    assert got["TimeLimit.truncated"] == want["TimeLimit.truncated"]
                    truncated += int(want["TimeLimit.truncated"])
            ended += int(want_dones.sum())
        assert ended > LANES and truncated > 0  # both real ends and time limits went through
    finally:
        venv.close()
        reference.close()


def test_calls_seeds_and_images(spawn_server: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 3, "render_mode": "rgb_array"})
    venv = as_vec_env(rnp.RemoteVectorEnv(server.address))
    try:
        assert venv.render_mode == "rgb_array"
        assert venv.get_attr("difficulty") == [0.0, 1.0, 2.0]
        assert venv.get_attr("difficulty", indices=[2]) == [2.0]
        venv.set_attr("difficulty", 5.0, indices=[1])  # only lane 1 changes
        assert venv.get_attr("difficulty") == [0.0, 5.0, 2.0]
        venv.set_attr("difficulty", 4.0)
        assert [r.tolist() for r in venv.env_method("scaled", [1, 2], factor=3)] == [[3, 6]] * 3
        assert venv.env_method("describe", indices=[2, 1, 0])[0] == {"difficulty": 4.0, "tag": "tunable"}
        with pytest.raises(EnvironmentException, match="boom on purpose"):  # lanes 0 and 1 only
            venv.env_method("boom", indices=[0, 1])
        assert venv.has_attr("difficulty") and not venv.has_attr("no_such_thing")
        assert venv.env_is_wrapped(Monitor) == [False] * 3
        assert venv.seed(3) == [3, 4, 5]
        venv.reset()
        venv.step(np.zeros(3, dtype=np.int64))
        images = venv.get_images()
        assert len(images) == 3 and all(image is not None and image.shape == (8, 10, 3) for image in images)
        assert venv.render().shape == (16, 20, 3)  # SB3 tiles the lanes' frames
    finally:
        venv.close()


def test_a_local_gymnasium_vector_env_works_too() -> None:
    local = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
                         wrappers=[lambda env: Monitor(env)])
    venv = as_vec_env(local)
    assert venv.env_is_wrapped(Monitor) == [True, True]
    venv.seed(0)
    venv.reset()
    assert venv.env_method("get_episode_rewards", indices=[1]) == [[]]  # one lane only: it has envs
    venv.step(np.zeros(2, dtype=np.int64))
    venv.close()


def test_non_numpy_envs_are_refused_with_the_fix(spawn_server: Any) -> None:
    import rlmesh

    server = spawn_server("cartpole_vec", env_kwargs={"num_envs": 2})
    plain = rlmesh.RemoteVectorEnv(server.address)
    try:
        with pytest.raises(TypeError, match="rlmesh.numpy.RemoteVectorEnv"):
            as_vec_env(plain)
    finally:
        plain.close()
    with pytest.raises(TypeError, match="needs a Gymnasium vector env"):
        as_vec_env(gym.make("CartPole-v1"))


def test_without_stable_baselines3_the_error_names_the_extra() -> None:
    code = "import sys; sys.modules['stable_baselines3'] = None; import rlmesh.sb3"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode != 0
    assert 'pip install "rlmesh[sb3]"' in done.stderr, done.stderr


def test_ppo_learns_cartpole_through_a_remote_vector_env(spawn_server: Any, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SB3_LOGDIR", str(tmp_path))  # SB3's logger makes a folder, by default in /tmp
    torch.set_num_threads(1)  # a small MLP: threads cost more than they bring on 2 cores
    server = spawn_server("cartpole_vec", env_kwargs={"num_envs": LANES})
    venv = as_vec_env(rnp.RemoteVectorEnv(server.address))
    started = time.monotonic()
    try:
        model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=10, gamma=0.98, gae_lambda=0.8,
                    learning_rate=1e-3, seed=0, device="cpu", policy_kwargs={"net_arch": [64, 64]})
        model.learn(20_000)
    finally:
        venv.close()
    evaluation = Monitor(gym.make("CartPole-v1"))
    mean_return, _ = evaluate_policy(model, evaluation, n_eval_episodes=10, deterministic=True)
    elapsed = time.monotonic() - started
    assert mean_return >= 150, f"PPO reached a mean return of {mean_return:.1f} after 20k steps"
    assert elapsed < 60, f"training and evaluation took {elapsed:.0f} s"
