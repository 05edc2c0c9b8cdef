"""The compute-bound env of ``bench_transport.py``'s ``busy32`` case, importable with Gymnasium alone
(so a PufferLib venv without rlmesh can step it too)."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym

BUSY_US = 200.0


class BusyEnv(gym.Env[Any, int]):
    """CartPole that also computes for ``BUSY_US`` per step (a physics step in pure Python)."""

    def __init__(self) -> None:
        self.env = gym.make("CartPole-v1")
        self.observation_space = self.env.observation_space
        self.action_space = self.env.action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return self.env.reset(seed=seed)

    def step(self, action: int) -> Any:
        end = time.perf_counter() + BUSY_US / 1e6
        while time.perf_counter() < end:
            pass
        return self.env.step(action)


class BusyBlock(gym.Env[Any, Any]):
    """16 ``BusyEnv`` lanes as one env, so Gymnasium's AsyncVectorEnv can run them in 2 workers."""

    LANES = 16

    def __init__(self) -> None:
        self.envs = gym.vector.SyncVectorEnv([BusyEnv for _ in range(self.LANES)])
        self.observation_space = self.envs.observation_space
        self.action_space = self.envs.action_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return self.envs.reset(seed=seed)[0], {}

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, _ = self.envs.step(action)
        return obs, float(reward.sum()), bool(terminated.all()), bool(truncated.all()), {}
