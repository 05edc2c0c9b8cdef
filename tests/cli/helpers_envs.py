"""Factories and policies the CLI tests load by path (``helpers_envs.py:NAME``)."""

from __future__ import annotations

from typing import Any

import gymnasium


def make_cartpole(max_episode_steps: int = 500) -> Any:
    """A factory for ``rlmesh serve helpers_envs.py:make_cartpole -- max_episode_steps=N``."""
    return gymnasium.make("CartPole-v1", max_episode_steps=max_episode_steps)


def make_two_cartpoles() -> list[Any]:
    """A list of envs: served as one synchronous vector env."""
    return [gymnasium.make("CartPole-v1") for _ in range(2)]


def lean_policy(observation: Any) -> int:
    """Push the cart towards the side the pole leans to (deterministic, better than random)."""
    return int(observation[2] > 0)


class LeanModel:
    """A class with ``predict``: the CLI instantiates it and calls ``predict``."""

    def predict(self, observation: Any) -> int:
        return lean_policy(observation)


def broken_policy(observation: Any) -> int:
    raise RuntimeError("the policy broke on purpose")
