"""Many clients, one server: aggregate steps/s of 4 sessions on one factory server, against
4 separate servers, for an env with 1 ms of work per step.

The work is either a sleep (I/O, or native code that releases the GIL) or a busy loop in pure
Python (which holds the GIL: sessions of one server then take turns). Each client runs in its
own process; the two layouts are timed one after the other in alternating rounds.
Run: ``python bench/bench_sessions.py [--steps N] [--rounds N]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import time
from typing import Any

CLIENTS = 4


class WorkEnv:
    """A tiny env whose step costs ``work_ms`` of sleeping or of busy Python."""

    def __init__(self, work_ms: float, busy: bool) -> None:
        import gymnasium

        self.observation_space = gymnasium.spaces.Box(-1.0, 1.0, (4,))
        self.action_space = gymnasium.spaces.Discrete(2)
        self.metadata: dict[str, Any] = {}
        self._work, self._busy = work_ms / 1000, busy

    def reset(self, *, seed: int | None = None, options: Any = None) -> Any:
        import numpy as np

        return np.zeros(4, np.float32), {}

    def step(self, action: int) -> Any:
        import numpy as np

        if self._busy:
            end = time.perf_counter() + self._work
            while time.perf_counter() < end:
                pass
        else:
            time.sleep(self._work)
        return np.zeros(4, np.float32), 1.0, False, False, {}

    def close(self) -> None:
        pass


def serve(pipe: Any, busy: bool, sessions: int) -> None:
    from rlmesh import EnvServer

    factory = lambda: WorkEnv(1.0, busy)  # noqa: E731
    server = EnvServer(factory, max_sessions=sessions) if sessions > 1 else EnvServer(factory())
    pipe.send(server.address)
    server.serve()


def client(address: str, steps: int, start: Any, done: Any) -> None:
    from rlmesh.numpy import RemoteEnv

    with RemoteEnv(address) as env:
        env.reset(seed=0)
        start.wait()
        for _ in range(steps):
            env.step(0)
    done.put(time.perf_counter())


def run(addresses: list[str], steps: int) -> float:
    """Aggregate steps/s of CLIENTS client processes on ``addresses`` (round-robin)."""
    ctx = mp.get_context("spawn")
    start, done = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=client, args=(addresses[i % len(addresses)], steps, start, done))
             for i in range(CLIENTS)]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # let every client connect
    began = time.perf_counter()
    start.set()
    ended = max(done.get(timeout=120) for _ in procs)
    for proc in procs:
        proc.join(10)
    return CLIENTS * steps / (ended - began)


def start_servers(busy: bool, count: int, sessions: int) -> tuple[list[Any], list[str]]:
    ctx = mp.get_context("spawn")
    procs, addresses = [], []
    for _ in range(count):
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(child, busy, sessions), daemon=True)
        proc.start()
        procs.append(proc)
        addresses.append(parent.recv())
    return procs, addresses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="steps per client per round")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(f"{'work':6} {'one server, 4 sessions':>24} {'4 servers':>11} {'ratio':>7}")
    for busy in (False, True):
        shared_procs, shared = start_servers(busy, 1, CLIENTS)
        own_procs, own = start_servers(busy, CLIENTS, 1)
        one, four = [], []
        for _ in range(args.rounds):
            one.append(run(shared, args.steps))
            four.append(run(own, args.steps))
        for proc in shared_procs + own_procs:
            proc.terminate()
        a, b = statistics.median(one), statistics.median(four)
        print(f"{'busy' if busy else 'sleep':6} {a:20.0f} /s {b:9.0f} /s {a / b:7.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
