"""Evaluation throughput: ``Model.run`` over a 16-lane RemoteVectorEnv vs Gymnasium's AsyncVectorEnv.

The remote side is an EnvServer serving a synchronous vector env of 16 CartPole envs in another
process; ``rlmesh.numpy.Model`` runs a batched policy against it, once with a seed per episode
(each new episode is a seeded lane reset) and once unseeded (Gymnasium's autoreset). The
baseline is Gymnasium's ``AsyncVectorEnv`` with 16 CartPole workers driven by a plain loop in
one process with the same policy; a plain loop over the RemoteVectorEnv shows Model's own
overhead. Throughput is env steps per second (lanes x vector steps).
Target: Model.run at least as fast as the AsyncVectorEnv loop.

    python bench/bench_models.py [--episodes 2000] [--steps 2000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time
from typing import Any

import gymnasium as gym
import numpy as np

import rlmesh.numpy as rnp

LANES = 16
SERVER = f"""
import gymnasium as gym
from rlmesh import EnvServer
env = gym.make_vec("CartPole-v1", num_envs={LANES}, vectorization_mode="sync")
server = EnvServer(env, "tcp://127.0.0.1:0")
print("READY", server.address, flush=True)
server.serve()
"""


def policy(observations: Any) -> Any:
    return (np.asarray(observations)[:, 2] > 0).astype(np.int64)


def model_run(address: str, episodes: int, seeded: bool) -> tuple[float, int]:
    """(env steps per second, episodes) of one Model.run over the remote vector env."""
    with rnp.RemoteVectorEnv(address) as env:
        seeds = list(range(episodes)) if seeded else None
        result = rnp.Model(policy, batched=True).run(env, seeds, episodes=None if seeded else episodes)
    return result.steps_per_second, result.num_episodes


def remote_loop(address: str, steps: int) -> float:
    """Env steps per second of a plain loop over the same RemoteVectorEnv (no Model)."""
    with rnp.RemoteVectorEnv(address) as env:
        observations, _ = env.reset(seed=0)
        begin = time.perf_counter()
        for _ in range(steps):
            observations, _, _, _, _ = env.step(policy(observations))
        return steps * LANES / (time.perf_counter() - begin)


def async_loop(steps: int) -> float:
    """Env steps per second of a plain loop over Gymnasium's AsyncVectorEnv."""
    envs = gym.make_vec("CartPole-v1", num_envs=LANES, vectorization_mode="async")
    try:
        observations, _ = envs.reset(seed=0)
        begin = time.perf_counter()
        for _ in range(steps):
            observations, _, _, _, _ = envs.step(policy(observations))
        return steps * LANES / (time.perf_counter() - begin)
    finally:
        envs.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--episodes", type=int, default=2000, help="episodes per Model.run")
    parser.add_argument("--steps", type=int, default=2000, help="vector steps of the AsyncVectorEnv loop")
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration (best is kept)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    server = subprocess.Popen([sys.executable, "-c", SERVER], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None
        line = server.stdout.readline()
        if not line.startswith("READY "):
            raise SystemExit(f"the env server did not start: {line!r}")
        address = line.split()[1]
        model_run(address, 50, True)  # warm-up: imports, first connection
        seeded = max(model_run(address, args.episodes, True)[0] for _ in range(args.repeats))
        unseeded = max(model_run(address, args.episodes, False)[0] for _ in range(args.repeats))
        raw = max(remote_loop(address, args.steps) for _ in range(args.repeats))
    finally:
        server.terminate()
        server.wait(10)
    baseline = max(async_loop(args.steps) for _ in range(args.repeats))

    rows = [
        (f"Model.run, RemoteVectorEnv x{LANES}, seeded episodes", seeded),
        (f"Model.run, RemoteVectorEnv x{LANES}, autoreset", unseeded),
        (f"RemoteVectorEnv x{LANES}, plain loop (no Model)", raw),
        (f"gymnasium AsyncVectorEnv x{LANES}, plain loop", baseline),
    ]
    width = max(len(name) for name, _ in rows)
    print(f"{'configuration':<{width}}  {'env steps/s':>12}  {'vs async':>9}")
    for name, rate in rows:
        print(f"{name:<{width}}  {rate:>12,.0f}  {rate / baseline:>8.2f}x")
    verdict = "met" if min(seeded, unseeded) >= baseline else "NOT met"
    print(f"target (Model.run at least as fast as AsyncVectorEnv): {verdict}")


if __name__ == "__main__":
    main()
