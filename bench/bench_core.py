"""Per-step cost of rlmesh's remote path against its floor: the env itself plus a bare zmq round trip.

For each case this measures, in one run:

* in-process: ``env.step`` called directly;
* bare zmq: a pyzmq DEALER/ROUTER round trip (tcp loopback, echo peer in another process)
  carrying exactly the frames rlmesh would send for that step (request) and get back (reply);
* remote: ``rlmesh.numpy.RemoteEnv.step`` (or ``RemoteVectorEnv``) against an ``EnvServer`` in
  another process, over tcp loopback, with the server's default ``busy_poll``;
* no poll: the same against a server with ``busy_poll=0`` (it sleeps in a blocking receive
  between requests, as the bare zmq peer does).

The three are timed in alternating blocks of 100 steps, so a change in machine load hits all
of them alike. It prints medians over many steps after a warm-up, and
``remote / (in-process + bare zmq)``; the target is at most 1.5 for every case. The exit status
is 1 when a case misses it. Run: ``python bench/bench_core.py [--steps N] [--case NAME]``.
"""

from __future__ import annotations

import argparse
import gc
import logging
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
import zmq
from gymnasium import spaces

from rlmesh import EnvServer
from rlmesh.numpy import RemoteEnv, RemoteVectorEnv
from rlmesh.protocol.endpoint import DEFAULT_BUSY_POLL
from rlmesh.wire import codec

log = logging.getLogger("bench_core")


class ImageEnv(gym.Env[Any, int]):
    """Atari-sized frames: 84x84x3 uint8 observations that change every step."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(0, 255, (84, 84, 3), np.uint8)
        self.action_space = spaces.Discrete(4)
        self._frame = np.zeros((84, 84, 3), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._frame = self.np_random.integers(0, 256, (84, 84, 3), dtype=np.uint8)
        return self._frame.copy(), {}

    def step(self, action: int) -> Any:
        self._frame += np.uint8(action + 1)
        return self._frame.copy(), 1.0, False, False, {}


class MegabyteEnv(gym.Env[Any, int]):
    """A 1 MiB float32 observation per step."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (1 << 18,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._obs = np.zeros(1 << 18, np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._obs[:] = 0.0
        return self._obs.copy(), {}

    def step(self, action: int) -> Any:
        self._obs[action] += 1.0
        return self._obs.copy(), 0.0, False, False, {}


def make_env(case: str) -> Any:
    if case == "CartPole-v1":
        return gym.make("CartPole-v1")
    if case == "image 84x84x3 uint8":
        return ImageEnv()
    if case == "1 MiB float32":
        return MegabyteEnv()
    if case == "vector CartPole x16":
        return gym.make_vec("CartPole-v1", num_envs=16, vectorization_mode="sync")
    raise KeyError(case)


CASES = ["CartPole-v1", "image 84x84x3 uint8", "1 MiB float32", "vector CartPole x16"]


def action_for(case: str) -> Any:
    return np.ones(16, np.int64) if case.startswith("vector") else 1


# --- peers in other processes ------------------------------------------------------------------


def serve_env(case: str, busy_poll: float, ready: Any) -> None:
    server = EnvServer(make_env(case), "tcp://127.0.0.1:0", busy_poll=busy_poll)
    ready.send(server.address)
    server.serve()


def serve_echo(reply: list[bytes], ready: Any) -> None:
    """A ROUTER answering every request with the same pre-encoded reply frames."""
    context: zmq.Context[Any] = zmq.Context.instance()
    router = context.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind("tcp://127.0.0.1:*")
    ready.send(router.getsockopt_string(zmq.LAST_ENDPOINT))
    while True:
        frames = router.recv_multipart(copy=False)
        if len(frames) == 2 and frames[1].bytes == b"stop":
            return
        router.send_multipart([frames[0], *reply], copy=False)


def start_peer(target: Callable[..., None], *args: Any) -> tuple[Any, str]:
    parent, child = mp.get_context("spawn").Pipe()
    process = mp.get_context("spawn").Process(target=target, args=(*args, child), daemon=True)
    process.start()
    deadline = time.monotonic() + 60
    while not parent.poll(0.1):
        if not process.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"{target.__name__} did not start (exit code {process.exitcode})")
    return process, parent.recv()


# --- measurements ------------------------------------------------------------------------------


def median_us(samples: list[int]) -> float:
    return statistics.median(samples) / 1000.0


def time_block(step: Callable[[], Any], steps: int, samples: list[int]) -> None:
    for _ in range(steps):
        start = time.perf_counter_ns()
        step()
        samples.append(time.perf_counter_ns() - start)


def interleaved(steppers: list[Callable[[], Any]], steps: int, warmup: int, block: int = 100
                ) -> list[list[int]]:
    """Time each stepper ``steps`` times, alternating blocks so load changes hit all alike."""
    for step in steppers:
        for _ in range(warmup):
            step()
    samples: list[list[int]] = [[] for _ in steppers]
    gc.disable()  # collections would land on random steps; the median ignores them anyway
    try:
        for _ in range(max(1, steps // block)):
            for step, into in zip(steppers, samples):
                time_block(step, block, into)
    finally:
        gc.enable()
    return samples


def stepper(env: Any, case: str) -> Callable[[], Any]:
    """One step of ``env``; single envs that end are reset (vector envs reset themselves)."""
    action = action_for(case)
    vector = case.startswith("vector")
    env.reset(seed=0)

    def step() -> Any:
        result = env.step(action)
        if not vector and (result[2] or result[3]):
            env.reset()
        return result

    return step


def message_sizes(case: str) -> tuple[list[Any], list[Any]]:
    """The frames rlmesh sends and receives for one step of ``case``."""
    env = make_env(case)
    env.reset(seed=0)
    action = action_for(case)
    reply = codec.encode(["ok", 1, list(env.step(action))])
    request = codec.encode(["step", 1, "0" * 32, action])
    env.close()
    return request, [bytes(memoryview(f)) for f in reply]


@dataclass
class Row:
    case: str
    local_us: float
    zmq_us: float
    remote_us: float
    no_poll_us: float
    request_bytes: int
    reply_bytes: int

    @property
    def ratio(self) -> float:
        return self.remote_us / (self.local_us + self.zmq_us)

    @property
    def no_poll_ratio(self) -> float:
        return self.no_poll_us / (self.local_us + self.zmq_us)


def bench_case(case: str, steps: int, warmup: int) -> Row:
    request, reply = message_sizes(case)
    echo, endpoint = start_peer(serve_echo, reply)
    server, address = start_peer(serve_env, case, DEFAULT_BUSY_POLL)
    quiet_server, quiet_address = start_peer(serve_env, case, 0.0)
    env = make_env(case)
    dealer: zmq.Socket[Any] = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(endpoint)

    def round_trip() -> Any:
        dealer.send_multipart(request, copy=False)
        return dealer.recv_multipart(copy=False)

    client_class = RemoteVectorEnv if case.startswith("vector") else RemoteEnv
    try:
        with client_class(address) as remote, client_class(quiet_address) as quiet:
            local_samples, zmq_samples, remote_samples, quiet_samples = interleaved(
                [stepper(env, case), round_trip, stepper(remote, case), stepper(quiet, case)],
                steps, warmup)
    finally:
        dealer.send(b"stop")
        dealer.close()
        env.close()
        server.terminate()
        quiet_server.terminate()
        for process in (echo, server, quiet_server):
            process.join(10)
    return Row(case, median_us(local_samples), median_us(zmq_samples), median_us(remote_samples),
               median_us(quiet_samples),
               sum(memoryview(f).nbytes for f in request), sum(len(f) for f in reply))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=3000, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=300, help="untimed steps first")
    parser.add_argument("--case", action="append", choices=CASES, help="only these cases")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    rows = []
    for case in args.case or CASES:
        log.info("measuring %s ...", case)
        rows.append(bench_case(case, args.steps, args.warmup))

    header = (f"{'case':<22} {'in-process us':>14} {'bare zmq us':>12} {'remote us':>10} "
              f"{'ratio':>6} {'no poll us':>11} {'ratio':>6}  {'request/reply bytes':>20}")
    lines = [header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.case:<22} {row.local_us:>14.1f} {row.zmq_us:>12.1f} {row.remote_us:>10.1f} "
                     f"{row.ratio:>6.2f} {row.no_poll_us:>11.1f} {row.no_poll_ratio:>6.2f}  "
                     f"{row.request_bytes:>9}/{row.reply_bytes:<10}")
    lines.append("ratio = remote / (in-process + bare zmq); target <= 1.5 with the default busy_poll "
                 f"({DEFAULT_BUSY_POLL * 1e6:.0f} us); 'no poll' is a server with busy_poll=0")
    one, five, _ = os.getloadavg()
    lines.append(f"load average during the run: {one:.1f} (1 min), {five:.1f} (5 min) on {os.cpu_count()} CPUs")
    print("\n".join(lines))
    return 0 if all(row.ratio <= 1.5 for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
