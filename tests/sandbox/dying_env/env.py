"""A local source whose env dies on its first step the way real envs do, or reports its limits.

``fate``: ``"segfault"`` (a crash in native code), ``"exit"`` (``os._exit(7)``), ``"oom"``
(allocates until the kernel's OOM killer ends it) or ``"report"`` (lives; ``reset`` tells the
cgroup limits and environment it sees from inside).
"""

import ctypes
import os
from pathlib import Path

import gymnasium as gym
import numpy as np


def _first(*paths):
    for path in paths:
        try:
            return Path(path).read_text().strip()
        except OSError:
            pass
    return ""


class DyingEnv(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def __init__(self, fate="report"):
        self.fate = fate

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        info = {
            "memory_limit": _first("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"),
            "cpu_max": _first("/sys/fs/cgroup/cpu.max"),
            "cfs_quota": _first("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
            "cfs_period": _first("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
            "shm_bytes": os.statvfs("/dev/shm").f_blocks * os.statvfs("/dev/shm").f_frsize,
            "env": {k: v for k, v in os.environ.items() if k.startswith("DYING_")},
        }
        return np.zeros(1, np.float32), info

    def step(self, action):
        if self.fate == "segfault":
            ctypes.string_at(0)
        elif self.fate == "exit":
            os._exit(7)
        elif self.fate == "oom":
            hoard = []
            while True:
                hoard.append(np.ones(32 * 2**20, np.uint8))  # touched pages, not just reserved
        return np.zeros(1, np.float32), 0.0, False, False, {}


def make_env(fate="report", **kwargs):
    return DyingEnv(fate)
