"""Scale-out throughput: one vector env over 1, 2 and 4 endpoints of 8 CartPole lanes each.

Every endpoint is an EnvServer serving ``gymnasium.make_vec("CartPole-v1", 8, "sync")`` in its
own process; ``rlmesh.numpy.MultiEndpointVectorEnv`` drives them all as one vector env. For each
endpoint count it reports aggregate env steps per second (lanes x vector steps / s) and the
per-batch time against the baseline: one ``RemoteVectorEnv`` whose single server runs the same
total number of lanes. The same two layouts are also timed without rlmesh: endpoints that step
the same vector env behind a plain pyzmq ROUTER with raw frames (``bare``), so the table shows
what the machine charges for more processes apart from what rlmesh adds. All four are timed in
alternating blocks, so machine load hits them alike.
Target: multi-endpoint per-batch time <= 1.3x the single endpoint's at equal lanes.

``--ray-address HEAD:PORT`` adds the same table with the endpoints placed on that Ray cluster
through the ``ray`` runtime (``rlmesh.spread.spread_vector_env``).

``--busy-poll S`` sets the servers' ``busy_poll`` (seconds; 0 turns it off).

``--work-us N`` makes every lane step N microseconds of busy CPU work, to see where splitting
lanes over processes starts to pay on this machine.

    python bench/bench_scale.py [--steps 2000] [--blocks 10] [--work-us 0] [--busy-poll 0.0005]
                                [--ray-address 127.0.0.3:6379]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import subprocess
import sys
import time
from typing import Any

import numpy as np

import rlmesh
import rlmesh.numpy as rnp
from rlmesh.protocol.endpoint import DEFAULT_BUSY_POLL

PER_ENDPOINT = 8
ENDPOINT_COUNTS = (1, 2, 4)
TARGET = 1.3
SERVER = """
import sys
import time
import gymnasium as gym
import numpy as np
import zmq
from rlmesh import EnvServer

WORK = float(sys.argv[2]) / 1e6
BUSY_POLL = float(sys.argv[3])
BARE = sys.argv[4] == "bare"

class Busy(gym.Wrapper):
    # Spins for WORK seconds per step: a stand-in for envs heavier than CartPole.
    def step(self, action):
        end = time.perf_counter() + WORK
        while time.perf_counter() < end:
            pass
        return self.env.step(action)

wrappers = [Busy] if WORK else None
env = gym.make_vec("CartPole-v1", num_envs=int(sys.argv[1]), vectorization_mode="sync", wrappers=wrappers)
if BARE:  # the floor: raw frames over a plain ROUTER, no codec, checks or sessions
    env.reset(seed=0)
    router = zmq.Context.instance().socket(zmq.ROUTER)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    print("READY", f"tcp://127.0.0.1:{port}", flush=True)
    while True:
        peer, action = router.recv_multipart()
        obs, reward, terminated, truncated, _ = env.step(np.frombuffer(action, np.int64))
        router.send_multipart([peer, obs, reward, terminated, truncated], copy=False)
server = EnvServer(env, "tcp://127.0.0.1:0", busy_poll=BUSY_POLL)
print("READY", server.address, flush=True)
server.serve()
"""


def start_server(lanes: int, work_us: float = 0.0, busy_poll: float = DEFAULT_BUSY_POLL,
                 bare: bool = False) -> tuple[subprocess.Popen[str], str]:
    proc = subprocess.Popen([sys.executable, "-c", SERVER, str(lanes), str(work_us), str(busy_poll),
                             "bare" if bare else "rlmesh"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("READY "):
        proc.kill()
        raise RuntimeError(f"benchmark server did not start: {line!r}")
    return proc, line.split(" ", 1)[1].strip()


class BareVectorEnv:
    """The floor of a multi-endpoint step: one raw pyzmq round trip per endpoint, all sent at
    once, replies concatenated; what rlmesh's client and server add is measured against it."""

    def __init__(self, addresses: list[str]) -> None:
        import zmq

        self._sockets = []
        for address in addresses:
            socket = zmq.Context.instance().socket(zmq.DEALER)
            socket.setsockopt(zmq.LINGER, 0)
            socket.connect(address)
            self._sockets.append(socket)

    def reset(self, seed: int | None = None) -> None:
        pass  # the bare servers reset once at start; CartPole's vector env autoresets

    def step(self, actions: Any) -> Any:
        for socket, part in zip(self._sockets, np.split(np.asarray(actions, np.int64), len(self._sockets))):
            socket.send(part)
        replies = [socket.recv_multipart() for socket in self._sockets]
        obs = np.concatenate([np.frombuffer(r[0], np.float32).reshape(-1, 4) for r in replies])
        batches = [np.concatenate([np.frombuffer(r[i], dtype) for r in replies])
                   for i, dtype in ((1, np.float64), (2, np.bool_), (3, np.bool_))]
        return obs, *batches, {}

    def close(self) -> None:
        for socket in self._sockets:
            socket.close()


def time_steps(env: Any, lanes: int, steps: int, rng: np.random.Generator) -> float:
    """Median seconds per vector step over ``steps`` random steps."""
    actions = rng.integers(0, 2, (steps, lanes))
    durations = []
    for row in actions:
        begin = time.perf_counter()
        env.step(row)
        durations.append(time.perf_counter() - begin)
    return statistics.median(durations)


def compare(envs: list[Any], lanes: int, steps: int, blocks: int) -> list[float]:
    """Median per-batch seconds of each env, timed in alternating blocks."""
    rng = np.random.default_rng(0)
    for env in envs:
        env.reset(seed=0)
    per_block = max(1, steps // blocks)
    times: list[list[float]] = [[] for _ in envs]
    for _ in range(blocks):
        for env, into in zip(envs, times):
            into.append(time_steps(env, lanes, per_block, rng))
    return [statistics.median(t) for t in times]


def local_rows(steps: int, blocks: int, work_us: float, busy_poll: float) -> list[tuple[Any, ...]]:
    """Per endpoint count: lanes, then multi, single, bare multi, bare single seconds per batch."""
    rows = []
    for count in ENDPOINT_COUNTS:
        lanes = count * PER_ENDPOINT
        procs: list[subprocess.Popen[str]] = []

        def start(lanes: int, bare: bool) -> str:
            proc, address = start_server(lanes, work_us, busy_poll, bare)
            procs.append(proc)
            return address

        try:
            endpoints = [start(PER_ENDPOINT, False) for _ in range(count)]
            single_address = start(lanes, False)
            bare_multi = BareVectorEnv([start(PER_ENDPOINT, True) for _ in range(count)])
            bare_single = BareVectorEnv([start(lanes, True)])
            with rnp.RemoteVectorEnv.from_endpoints(endpoints) as multi, \
                    rnp.RemoteVectorEnv(single_address) as single:
                rows.append((count, lanes, *compare([multi, single, bare_multi, bare_single],
                                                    lanes, steps, blocks)))
            bare_multi.close()
            bare_single.close()
        finally:
            for proc in procs:
                proc.terminate()
                proc.wait(10)
    return rows


def ray_rows(address: str, steps: int) -> list[tuple[int, int, float]]:
    from rlmesh_runtimes.ray import RayDriver

    from rlmesh.spread import spread_vector_env

    driver = RayDriver(address=address)
    rows = []
    for count in ENDPOINT_COUNTS:
        lanes = count * PER_ENDPOINT
        with spread_vector_env("CartPole-v1", lanes, per_endpoint=PER_ENDPOINT, runtime=driver,
                               rlmesh_package=f"rlmesh=={rlmesh.__version__}") as env:
            env.reset(seed=0)
            rows.append((count, lanes, time_steps(env, lanes, steps, np.random.default_rng(0))))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=2000, help="timed vector steps per configuration")
    parser.add_argument("--blocks", type=int, default=10, help="alternating blocks (multi, single)")
    parser.add_argument("--ray-address", help="also place the endpoints on this Ray cluster")
    parser.add_argument("--work-us", type=float, default=0.0,
                        help="extra busy work per lane step in the servers (a heavier env than CartPole)")
    parser.add_argument("--busy-poll", type=float, default=DEFAULT_BUSY_POLL,
                        help="the servers' busy_poll in seconds (0: off)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    print(f"load average {os.getloadavg()[0]:.1f}, {os.cpu_count()} CPUs; {PER_ENDPOINT} CartPole lanes per "
          f"endpoint, {args.work_us:g} us extra work per lane step, busy_poll {args.busy_poll * 1e6:g} us")
    print(f"{'endpoints':>9} {'lanes':>5} {'multi steps/s':>14} {'multi us/batch':>15} "
          f"{'single us/batch':>16} {'ratio':>6}   {'bare multi us':>13} {'bare single us':>14} {'ratio':>6}")
    worst = bare_worst = 0.0
    for count, lanes, multi, single, bare_multi, bare_single in local_rows(
            args.steps, args.blocks, args.work_us, args.busy_poll):
        ratio = multi / single
        worst = max(worst, ratio)
        bare_worst = max(bare_worst, bare_multi / bare_single)
        print(f"{count:>9} {lanes:>5} {lanes / multi:>14,.0f} {multi * 1e6:>15.0f} {single * 1e6:>16.0f} "
              f"{ratio:>6.2f}   {bare_multi * 1e6:>13.0f} {bare_single * 1e6:>14.0f} {bare_multi / bare_single:>6.2f}")
    if args.ray_address:
        print(f"\nvia Ray at {args.ray_address} (endpoints placed round-robin over its nodes)")
        print(f"{'endpoints':>9} {'lanes':>5} {'steps/s':>14} {'us/batch':>15}")
        for count, lanes, seconds in ray_rows(args.ray_address, args.steps):
            print(f"{count:>9} {lanes:>5} {lanes / seconds:>14,.0f} {seconds * 1e6:>15.0f}")
    verdict = "meets" if worst <= TARGET else "MISSES"
    print(f"\nworst ratio {worst:.2f}: {verdict} the target of <= {TARGET} x a single endpoint's per-batch time"
          f"\n(the same layouts over bare pyzmq, without rlmesh: worst ratio {bare_worst:.2f})")
    return 0 if worst <= TARGET else 1


if __name__ == "__main__":
    sys.exit(main())
