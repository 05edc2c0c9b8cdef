"""A local source in the EnvHub layout: make_env returns {suite: {task: env}}."""

import gymnasium as gym


def make_env(n_envs: int = 1, use_async_envs: bool = False, **kwargs):
    return {
        "classic": {
            "cartpole": gym.make("CartPole-v1", **kwargs),
            "pendulum": gym.make("Pendulum-v1", **kwargs),
        }
    }
