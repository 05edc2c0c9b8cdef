"""The env factory of a bring-your-own image: a module on the image's PYTHONPATH."""

import os

import gymnasium as gym


def make_env(**kwargs):
    env = gym.make("CartPole-v1", **kwargs)
    env.unwrapped.byo_uid = os.getuid()  # the user the image runs as, for the test to check
    return env
