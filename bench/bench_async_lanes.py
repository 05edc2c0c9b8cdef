"""Async lanes against a synchronous gather when one endpoint is slow.

Four single-env endpoints, each an EnvServer in its own process; one of them takes 5x as long
per step as the others (the steps sleep, so the 2 CPUs are not what is measured). One
``rlmesh.numpy.MultiEndpointVectorEnv`` drives them two ways for the same wall time:

- sync: ``step()`` of all four lanes, which waits for the slow one every time;
- async: ``send()`` to the lanes just received, ``recv(min_lanes=2)`` (half the lanes), so
  the fast lanes keep stepping while the slow one runs.

It reports env steps per second (lane steps, resets included) of each and their ratio.
Target: async >= 1.5x sync.

    python bench/bench_async_lanes.py [--fast-ms 2] [--seconds 5]
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import time

import numpy as np

import rlmesh.numpy as rnp

ENDPOINTS = 4
SLOWDOWN = 5
TARGET = 1.5
SERVER = """
import sys
import time
import gymnasium as gym
from rlmesh import EnvServer

DELAY = float(sys.argv[1])

class Sleepy(gym.Wrapper):
    # Sleeps DELAY seconds per step: an env waiting on a simulator or I/O.
    def step(self, action):
        time.sleep(DELAY)
        return self.env.step(action)

server = EnvServer(Sleepy(gym.make("CartPole-v1")), "tcp://127.0.0.1:0")
print("READY", server.address, flush=True)
server.serve()
"""


def start_servers(delays: list[float]) -> tuple[list[subprocess.Popen[str]], list[str]]:
    procs = [subprocess.Popen([sys.executable, "-c", SERVER, str(delay)], stdout=subprocess.PIPE, text=True)
             for delay in delays]
    addresses = []
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"a benchmark server did not start: {line!r}")
        addresses.append(line.split(" ", 1)[1].strip())
    return procs, addresses


def run_sync(env: rnp.MultiEndpointVectorEnv, seconds: float) -> float:
    env.reset(seed=0)
    actions = np.zeros(ENDPOINTS, dtype=np.int64)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        env.step(actions)
        steps += ENDPOINTS
    return steps / (time.perf_counter() - start)


def run_async(env: rnp.MultiEndpointVectorEnv, seconds: float) -> float:
    env.async_reset(seed=0)
    steps = 0
    start = time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, _, _, info = env.recv(min_lanes=ENDPOINTS // 2)
        lanes = info["env_id"]
        steps += len(lanes)
        env.send(np.zeros(len(lanes), dtype=np.int64), lane_ids=lanes)
    elapsed = time.perf_counter() - start
    while env.lanes_in_flight:  # leave the env idle for whoever uses it next
        env.recv()
    return steps / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fast-ms", type=float, default=2.0, help="step time of the fast endpoints (ms)")
    parser.add_argument("--seconds", type=float, default=5.0, help="wall time of each mode")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    fast = args.fast_ms / 1000
    procs, addresses = start_servers([fast] * (ENDPOINTS - 1) + [fast * SLOWDOWN])
    try:
        env = rnp.MultiEndpointVectorEnv(addresses)
        try:
            sync = run_sync(env, args.seconds)
            asynchronous = run_async(env, args.seconds)
        finally:
            env.close()
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    ratio = asynchronous / sync
    print(f"{ENDPOINTS} endpoints, steps of {args.fast_ms:g} ms and one of {args.fast_ms * SLOWDOWN:g} ms")
    print(f"{'mode':<28}{'env steps/s':>12}")
    print(f"{'sync step() of all lanes':<28}{sync:>12,.0f}")
    print(f"{'async recv(min_lanes=2)':<28}{asynchronous:>12,.0f}")
    print(f"ratio async/sync {ratio:.2f} (target >= {TARGET}): {'ok' if ratio >= TARGET else 'MISSED'}")


if __name__ == "__main__":
    main()
