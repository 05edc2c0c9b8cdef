"""CartPole that reports the contents of /opt/rlmesh/marker (written by an override fragment)."""

import os

import gymnasium as gym


def make_env(**kwargs):
    env = gym.make("CartPole-v1", **kwargs)
    path = "/opt/rlmesh/marker"
    env.metadata = {**env.metadata, "marker": open(path).read().strip() if os.path.exists(path) else None}
    return env
