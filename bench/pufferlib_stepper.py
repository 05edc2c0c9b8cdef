"""PufferLib's multiprocessing vectorizer stepping ``BusyEnv`` x32, driven by ``bench_transport.py``.

PufferLib pins its own Gymnasium and builds C extensions, so it lives in a venv of its own
(PufferLib 1.0.1, the newest release that builds without downloading from GitHub)::

    python -m venv /opt/pufferlib && /opt/pufferlib/bin/pip install pufferlib==1.0.1 psutil filelock

``bench_transport.py --pufferlib-python /opt/pufferlib/bin/python`` starts this script and
sends it one line per round, the number of steps to take; it answers ``done`` after each, so
its rounds alternate with the other contenders'. Arguments: envs and workers.
"""

from __future__ import annotations

import os
import sys

import numpy as np
import pufferlib.emulation
import pufferlib.vector

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from busy_env import BusyEnv  # noqa: E402


def make_env() -> pufferlib.emulation.GymnasiumPufferEnv:
    return pufferlib.emulation.GymnasiumPufferEnv(env_creator=BusyEnv)


def main() -> None:
    envs, workers = int(sys.argv[1]), int(sys.argv[2])
    vecenv = pufferlib.vector.make(make_env, backend=pufferlib.vector.Multiprocessing, num_envs=envs,
                                   num_workers=workers)
    vecenv.reset(seed=0)
    actions = np.zeros(envs, dtype=np.int64)
    print("READY", flush=True)
    try:
        for line in sys.stdin:
            for i in range(int(line)):
                actions[:] = i % 2
                vecenv.step(actions)
            print("done", flush=True)
    finally:
        vecenv.close()


if __name__ == "__main__":
    main()
