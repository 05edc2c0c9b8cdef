"""Envs the scale-out tests serve (and build locally to compare), by name and JSON-able kwargs."""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np


class InfoCartPole(gym.Wrapper[Any, Any, Any, Any]):
    """CartPole whose infos vary by lane and step: ints, floats, arrays, strings, nested dicts,
    and keys only some lanes report, so merged vector infos are exercised."""

    def __init__(self, fail_at: int | None = None, sleep_at: int | None = None,
                 step_sleep: float = 0.0, render_mode: str | None = None) -> None:
        super().__init__(gym.make("CartPole-v1", render_mode=render_mode))
        self._seed: int | None = None
        self._t = 0
        self._fail_at = fail_at
        self._sleep_at = sleep_at
        self._step_sleep = step_sleep

    def _info(self) -> dict[str, Any]:
        info: dict[str, Any] = {"t": self._t, "half": self._t / 2, "tag": f"s{self._seed}-{self._t}",
                                "vec": np.full(2, self._t, dtype=np.int16),
                                "nested": {"seed": -1 if self._seed is None else self._seed}}
        if self._t % 3 == 0:
            info["every_third"] = True
        return info

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        obs, _ = self.env.reset(seed=seed, options=options)
        self._seed = seed if seed is not None else self._seed
        self._t = 0
        return obs, self._info()

    def step(self, action: Any) -> Any:
        self._t += 1
        if self._fail_at is not None and self._t >= self._fail_at:
            raise RuntimeError(f"env broke on purpose at step {self._t}")
        if self._sleep_at is not None and self._t >= self._sleep_at:
            time.sleep(60)
        time.sleep(self._step_sleep)
        obs, reward, terminated, truncated, _ = self.env.step(action)
        return obs, reward, terminated, truncated, self._info()


class DictEnv(gym.Env[Any, Any]):
    """Dict observations and Dict/Tuple actions, ending every few steps: batching by space."""

    observation_space = gym.spaces.Dict({
        "pos": gym.spaces.Box(-10.0, 10.0, (2,), np.float32),
        "id": gym.spaces.Discrete(50),
        "pair": gym.spaces.Tuple((gym.spaces.Discrete(3), gym.spaces.Box(0, 255, (2, 2), np.uint8))),
    })
    action_space = gym.spaces.Dict({"move": gym.spaces.Discrete(3),
                                    "push": gym.spaces.Box(-1.0, 1.0, (2,), np.float32)})

    def _obs(self) -> dict[str, Any]:
        return {"pos": self._pos.copy(), "id": int(self._id),
                "pair": (self._t % 3, np.full((2, 2), self._t * 7 % 256, dtype=np.uint8))}

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._pos = self.np_random.uniform(-1, 1, 2).astype(np.float32)
        self._id = self.np_random.integers(0, 50)
        self._t = 0
        return self._obs(), {"id": int(self._id)}

    def step(self, action: Any) -> Any:
        self._t += 1
        self._pos = np.clip(self._pos + action["push"] * (int(action["move"]) - 1), -10, 10).astype(np.float32)
        ended = self._t >= 4 + self._id % 5
        return self._obs(), float(self._pos.sum()), ended, False, {"t": self._t}


def single(**kwargs: Any) -> gym.Env[Any, Any]:
    return InfoCartPole(**kwargs)


def vector(num_envs: int, autoreset: str = "NextStep", **kwargs: Any) -> gym.vector.VectorEnv[Any, Any, Any]:
    return gym.vector.SyncVectorEnv([lambda: InfoCartPole(**kwargs)] * num_envs,
                                    autoreset_mode=gym.vector.AutoresetMode(autoreset))


def make(name: str, **kwargs: Any) -> Any:
    if name == "single":
        return single(**kwargs)
    if name == "vector":
        return vector(**kwargs)
    if name == "cartpole_vec":  # plain CartPole lanes, for the benchmark-like checks
        return gym.make_vec("CartPole-v1", num_envs=kwargs["num_envs"], vectorization_mode="sync")
    if name == "dict":
        return DictEnv()
    if name == "dict_vec":
        return gym.vector.SyncVectorEnv([DictEnv] * kwargs["num_envs"])
    if name == "pendulum":
        return gym.make("Pendulum-v1")
    raise KeyError(f"no scale test env called {name!r}")
