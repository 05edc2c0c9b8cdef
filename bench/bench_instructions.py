"""Instructions per step: a remote step over shared memory against the same step in process.

Wall-clock figures on a shared 2-CPU VM move by 30% from one run to the next; instruction
counts do not. This script runs a stepping loop under valgrind (cachegrind, no cache
simulation) twice, with N and N + 50,000 steps, so start-up cancels out, and prints the
instructions of one step:

- ``inproc``: ``gymnasium.make("CartPole-v1")`` (or ``SyncVectorEnv`` x32) stepped in process;
- ``remote``: a ``RemoteEnv`` (or ``RemoteVectorEnv``) over a shared-memory channel to an
  ``EnvServer`` in this same process. The server's channel thread is not started; the client's
  wait runs the server's side of one request instead (wait, receive, answer, send), so client,
  server, codec and channel are all counted, in one thread, with no spinning.

It counts work, not waiting: wake-ups, cache misses and the cost of two processes taking
turns are not in it (``bench_transport.py`` measures those). Needs ``valgrind``
(``apt install valgrind``). Run: ``python bench/bench_instructions.py [--steps N] [--vector]``
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import subprocess
import sys
from typing import Any

log = logging.getLogger("bench_instructions")

LANES = 32


def make_env(vector: bool) -> Any:
    import gymnasium as gym

    if vector:
        return gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(LANES)])
    return gym.make("CartPole-v1")


def step_loop(env: Any, steps: int, vector: bool) -> None:
    import numpy as np

    env.reset(seed=0)
    action: Any = np.ones(LANES, np.int64) if vector else 1
    for _ in range(steps):
        _, _, terminated, truncated, _ = env.step(action)
        if not vector and (terminated or truncated):
            env.reset()


def remote_env(vector: bool) -> Any:
    """A shared-memory client of a server in this process whose channel is served on demand."""
    from rlmesh.protocol import channels

    started: list[Any] = []
    channels.SessionChannel.start = lambda self: started.append(self) or self  # type: ignore[method-assign]
    import rlmesh.numpy as rnp
    from rlmesh import EnvServer

    server = EnvServer(make_env(vector), "tcp://127.0.0.1:0").start()
    client_class = rnp.RemoteVectorEnv if vector else rnp.RemoteEnv
    client = client_class(server.address, transport="shm", heartbeat_interval=None)
    served = started[0]
    server_end = served.channel
    client_end = client._connection._channel
    wait = client_end.wait

    def serve_then_wait(timeout: float, *, sleep: bool = True) -> bool:
        if not client_end.ready():  # what the server's channel thread would do, here and now
            server_end.wait(1.0)
            server_end.unlink()
            reply, _ = served._handle(server_end.receive(copy=True))
            server_end.send(reply)
        return bool(wait(timeout, sleep=sleep))

    client_end.wait = serve_then_wait
    return client


def instructions(case: str, steps: int, vector: bool) -> int:
    command = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
               sys.executable, os.path.abspath(__file__), "--inner", case, "--steps", str(steps)]
    if vector:
        command.append("--vector")
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONHASHSEED": "0"})
    found = re.search(r"I\s+refs:\s+([\d,]+)", result.stderr)
    if result.returncode != 0 or found is None:
        raise RuntimeError(f"valgrind run of {case} failed:\n{result.stderr[-2000:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=50_000, help="steps of the longer run")
    parser.add_argument("--vector", action="store_true", help=f"CartPole x{LANES} instead of one CartPole")
    parser.add_argument("--inner", choices=["inproc", "remote"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        env = make_env(args.vector) if args.inner == "inproc" else remote_env(args.vector)
        step_loop(env, args.steps, args.vector)
        os._exit(0)  # the in-process server's threads need not be wound down for a count
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if shutil.which("valgrind") is None:
        raise SystemExit("bench_instructions.py needs valgrind: apt install valgrind")
    short = 1000
    per_step = {}
    for case in ("inproc", "remote"):
        log.info("counting %s (%d and %d steps under valgrind) ...", case, short, short + args.steps)
        per_step[case] = (instructions(case, short + args.steps, args.vector)
                          - instructions(case, short, args.vector)) / args.steps
    what = f"CartPole x{LANES}" if args.vector else "one CartPole"
    print(f"\ninstructions per step, {what}:")
    for case, count in per_step.items():
        print(f"  {case:8s} {count:12,.0f}   {count / per_step['inproc']:.2f}x in-process")
    print(f"  rlmesh's own work per step (client, server, codec, channel): {per_step['remote'] - per_step['inproc']:,.0f}")


if __name__ == "__main__":
    main()
