"""The same-host fast path (issue 18): rlmesh over shared memory against in-process stepping,
rlmesh over zmq, and the Python vectorizers people use, in one interleaved run.

Cases (each prints steps/s per contender and the ratio to the case's reference):

- ``cartpole``: one CartPole env. Reference: ``gymnasium.make`` stepped in this process.
  Contenders: ``RemoteEnv`` with ``transport="shm"`` and ``"zmq"`` (an ``EnvServer`` process),
  and, with ``--sandbox docker`` (or podman), a ``SandboxEnv`` both ways. Target: shm >= 0.25x.
- ``cartpole32``: CartPole x32 served by one server. Reference: ``SyncVectorEnv`` in process.
  Target: shm >= 0.8x.
- ``busy32``: an env that computes for 200 us per step, x32, through two servers of 16 lanes
  each (``MultiEndpointVectorEnv``). Reference: the best of Gymnasium ``AsyncVectorEnv``
  (``shared_memory=True``: a process per env, and 2 worker processes of 16 lanes each), SB3
  ``SubprocVecEnv`` (if installed) and, with ``--pufferlib-python``, PufferLib's
  ``Multiprocessing`` with 2 workers of 16 lanes (run in its own venv).
  Target: shm >= 1.1x the best.
- ``crowded``: one client stepping two single-env servers (three spinners on two CPUs) against
  the same client on one server. Target: >= 0.8x the env steps/s (no collapse).
- ``idle``: CPU share of a server and a client 100 ms after the client stops stepping, over
  three seconds. Target: < 1% each.
- ``frames``: Atari-sized observations (84x84x4 uint8, what the usual Atari wrappers give) from
  a cheap env, x8 through one server: the cost of moving big observations. Reference:
  ``SyncVectorEnv`` in process; also Gymnasium ``AsyncVectorEnv`` x8 (shared memory). No target.
- ``channel``: the floor of each transport, with no env and no codec work: round trips of one
  CartPole x32 step reply (already encoded) between this process and an echo process, over
  rlmesh's shared-memory channel and over a pyzmq PAIR socket on tcp loopback. No target.

Contenders of a case run in alternating rounds (``--rounds``), so a change of machine load
hits them alike; the figure of each is its best round. Run:
``python bench/bench_transport.py [--case NAME ...] [--seconds S] [--rounds N] [--sandbox ENGINE]
[--pufferlib-python PYTHON]``
"""

from __future__ import annotations

import argparse
import glob
import logging
import os
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np

import rlmesh.numpy as rnp
from busy_env import BUSY_US, BusyBlock, BusyEnv

log = logging.getLogger("bench_transport")

SERVER = """
import sys, time, json
import gymnasium as gym
sys.path.insert(0, {bench!r})
from bench_transport import make_vector
from rlmesh import EnvServer
case, lanes = sys.argv[1], int(sys.argv[2])
env = make_vector(case, lanes) if lanes else gym.make("CartPole-v1")
server = EnvServer(env, "tcp://127.0.0.1:0")
print("READY", server.address, flush=True)
server.serve()
"""


class FrameEnv(gym.Env[Any, Any]):
    """An env that only hands out Atari-sized frames (84x84 greyscale, 4 stacked), a fresh copy a step."""

    def __init__(self) -> None:
        self.observation_space = gym.spaces.Box(0, 255, (84, 84, 4), np.uint8)
        self.action_space = gym.spaces.Discrete(4)
        self.frame = np.random.default_rng(0).integers(0, 256, (84, 84, 4), dtype=np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return self.frame.copy(), {}

    def step(self, action: int) -> Any:
        return self.frame.copy(), 0.0, False, False, {}


def make_vector(case: str, lanes: int) -> Any:
    factories: dict[str, Callable[[], Any]] = {"busy32": BusyEnv, "frames": FrameEnv}
    factory = factories.get(case, lambda: gym.make("CartPole-v1"))
    return gym.vector.SyncVectorEnv([factory for _ in range(lanes)])


class Servers:
    """``EnvServer`` processes serving ``lanes`` lanes each (0: one plain CartPole)."""

    def __init__(self, case: str, lanes: list[int]) -> None:
        code = SERVER.format(bench=os.path.dirname(os.path.abspath(__file__)))
        self.procs = [subprocess.Popen([sys.executable, "-c", code, case, str(n)], stdout=subprocess.PIPE,
                                       text=True) for n in lanes]
        self.addresses = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            if not line.startswith("READY "):
                raise RuntimeError(f"a benchmark server did not start: {line!r}")
            self.addresses.append(line.split()[1])

    def close(self) -> None:
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.wait(10)


ECHO = """
import json, sys, zmq
from rlmesh.protocol import shm
if sys.argv[1] == "shm":
    channel, offer = shm.create_segment(1 << 20)
    wire = offer.to_wire()
    print("READY", json.dumps({**wire, "nonce": wire["nonce"].hex()}), flush=True)
    try:
        while True:
            if channel.wait(shm.SLICE_S):
                channel.unlink()  # mapped by both ends: nothing to leave behind in /dev/shm
                channel.send(channel.receive(copy=True))
    except ConnectionError:  # the benchmark closed its end
        pass
else:
    socket = zmq.Context().socket(zmq.PAIR)
    print("READY", socket.bind_to_random_port("tcp://127.0.0.1"), flush=True)
    while True:
        socket.send_multipart(socket.recv_multipart(copy=False), copy=False)
"""


class Echo:
    """A process sending back every message it gets, over ``transport`` ("shm" or "zmq")."""

    def __init__(self, transport: str) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", ECHO, transport], stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line.startswith("READY "):
            raise RuntimeError(f"the echo process did not start: {line!r}")
        self.ready = line.split(" ", 1)[1]

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


class PufferLib:
    """``pufferlib_stepper.py`` in PufferLib's own venv, stepping when told (one round at a time)."""

    def __init__(self, python: str, envs: int, workers: int) -> None:
        script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "pufferlib_stepper.py")
        self.envs = envs
        self.proc = subprocess.Popen([python, script, str(envs), str(workers)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.stdin, self.stdout = self.proc.stdin, self.proc.stdout
        if self.stdout.readline().strip() != "READY":
            raise RuntimeError(f"the PufferLib stepper did not start (with {python})")

    def run(self, steps: int) -> int:
        self.stdin.write(f"{steps}\n")
        self.stdin.flush()
        if self.stdout.readline().strip() != "done":
            raise RuntimeError("the PufferLib stepper stopped")
        return steps * self.envs

    def close(self) -> None:
        self.stdin.close()
        self.proc.wait(30)


def single_stepper(env: Any) -> Callable[[int], int]:
    env.reset(seed=0)

    def run(steps: int) -> int:
        for i in range(steps):
            if any(env.step(i % 2)[2:4]):
                env.reset()
        return steps
    return run


def vector_stepper(envs: Any, lanes: int) -> Callable[[int], int]:
    envs.reset(seed=0)
    actions = np.zeros(lanes, dtype=np.int64)

    def run(steps: int) -> int:
        for i in range(steps):
            actions[:] = i % 2
            envs.step(actions)
        return steps * lanes
    return run


def rates(contenders: dict[str, Callable[[int], int]], seconds: float, rounds: int) -> dict[str, float]:
    """Best steps/s of each contender over ``rounds`` alternating rounds of about ``seconds``."""
    best = dict.fromkeys(contenders, 0.0)
    batch = dict.fromkeys(contenders, 10)
    for name, run in contenders.items():  # warm-up, and a batch size that takes ~0.1 s
        started = time.perf_counter()
        run(batch[name])
        per = (time.perf_counter() - started) / batch[name]
        batch[name] = max(1, int(0.1 / max(per, 1e-7)))
    for _ in range(rounds):
        for name, run in contenders.items():
            done, started = 0, time.perf_counter()
            while time.perf_counter() - started < seconds:
                done += run(batch[name])
            best[name] = max(best[name], done / (time.perf_counter() - started))
            time.sleep(0.6)  # PufferLib's workers spin for 0.5 s after a last step: not on the next round
    return best


def report(case: str, reference: str, figures: dict[str, float], target: tuple[str, float] | None,
           unit: str = "steps/s") -> bool:
    base = figures[reference]
    width = max(map(len, figures))
    print(f"\n{case}: {unit} (ratio to {reference})")
    for name, value in figures.items():
        print(f"  {name:<{width}} {value:>10,.0f}   {value / base:5.2f}x")
    if target is None:
        return True
    name, ratio = target
    met = figures[name] / base >= ratio
    print(f"  target: {name} >= {ratio}x {reference}: {'met' if met else 'MISSED'}")
    return met


def case_cartpole(args: argparse.Namespace) -> bool:
    servers = Servers("cartpole", [0])
    sandboxes: list[Any] = []
    try:
        local = gym.make("CartPole-v1")
        shm_env = rnp.RemoteEnv(servers.addresses[0], transport="shm")
        contenders = {"in-process gymnasium.make": single_stepper(local),
                      "RemoteEnv, shared memory": single_stepper(shm_env)}
        shm_env_closer = shm_env.close
        zmq_env = None
        if args.sandbox:
            for transport in ("shm", "zmq"):
                os.environ["RLMESH_TRANSPORT"] = transport
                sandbox = rnp.SandboxEnv("CartPole-v1", runtime=args.sandbox)
                os.environ.pop("RLMESH_TRANSPORT")
                assert sandbox.client.transport == transport
                sandboxes.append(sandbox)
                contenders[f"SandboxEnv ({args.sandbox}), {'shared memory' if transport == 'shm' else 'zmq'}"] = \
                    single_stepper(sandbox)
        figures = rates(contenders, args.seconds, args.rounds)
        shm_env_closer()
        zmq_env = rnp.RemoteEnv(servers.addresses[0], transport="zmq")
        # zmq after shm on the same server (one client at a time), against a fresh reference.
        again = rates({"in-process gymnasium.make": single_stepper(local),
                       "RemoteEnv, zmq": single_stepper(zmq_env)}, args.seconds, args.rounds)
        figures["RemoteEnv, zmq"] = again["RemoteEnv, zmq"] * figures["in-process gymnasium.make"] \
            / again["in-process gymnasium.make"]
        zmq_env.close()
        met = report("one CartPole env", "in-process gymnasium.make", figures,
                     ("RemoteEnv, shared memory", 0.25))
        for name in figures:
            if name.startswith("SandboxEnv") and "shared" in name:
                met &= figures[name] / figures["in-process gymnasium.make"] >= 0.25
        return met
    finally:
        for sandbox in sandboxes:
            sandbox.close()
        servers.close()


def one_server(args: argparse.Namespace, case: str, lanes: int,
               others: dict[str, Callable[[int], int]] | None = None) -> dict[str, float]:
    """Steps/s of ``RemoteVectorEnv`` on one server of ``lanes`` lanes, over shm and over zmq, and
    of ``others``, as the same ``in-process SyncVectorEnv`` would have seen them (each client in
    rounds of its own with the reference: a server serves one client at a time)."""
    reference = "in-process SyncVectorEnv"
    servers = Servers(case, [lanes])
    try:
        local = make_vector(case, lanes)
        figures: dict[str, float] = {}
        for transport in ("shm", "zmq"):
            remote = rnp.RemoteVectorEnv(servers.addresses[0], transport=transport)
            name = f"RemoteVectorEnv, {'shared memory' if transport == 'shm' else 'zmq'}"
            contenders = {reference: vector_stepper(local, lanes), name: vector_stepper(remote, lanes)}
            if transport == "shm":
                contenders.update(others or {})
            got = rates(contenders, args.seconds, args.rounds)
            figures.setdefault(reference, got[reference])
            for contender, value in got.items():
                figures.setdefault(contender, value * figures[reference] / got[reference])
            remote.close()
        return figures
    finally:
        servers.close()


def case_cartpole32(args: argparse.Namespace) -> bool:
    figures = one_server(args, "cartpole32", 32)
    return report("CartPole x32, one server", "in-process SyncVectorEnv", figures,
                  ("RemoteVectorEnv, shared memory", 0.8))


def case_frames(args: argparse.Namespace) -> bool | None:
    lanes = 8
    asynchronous = gym.vector.AsyncVectorEnv([FrameEnv for _ in range(lanes)], shared_memory=True)
    try:
        figures = one_server(args, "frames", lanes, {
            f"gymnasium AsyncVectorEnv x{lanes} (shared memory)": vector_stepper(asynchronous, lanes)})
    finally:
        asynchronous.close()
    megabytes = lanes * FrameEnv().frame.nbytes / 1e6
    report(f"84x84x4 frames x{lanes}, one server ({megabytes:.2f} MB of observations a step)",
           "in-process SyncVectorEnv", figures, None)
    return None  # no target: it shows what moving big observations costs


def case_busy32(args: argparse.Namespace) -> bool:
    contenders: dict[str, Callable[[int], int]] = {}
    closers: list[Callable[[], None]] = []
    servers = Servers("busy32", [16, 16])
    try:
        for transport in ("shm", "zmq"):
            multi = rnp.MultiEndpointVectorEnv(servers.addresses, transport=transport)
            closers.append(multi.close)
            contenders[f"rlmesh 2 servers x16, {'shared memory' if transport == 'shm' else 'zmq'}"] = \
                vector_stepper(multi, 32)
            break  # one client per server: zmq is measured below against its own reference
        asynchronous = gym.vector.AsyncVectorEnv([BusyEnv for _ in range(32)], shared_memory=True)
        closers.append(asynchronous.close)
        contenders["gymnasium AsyncVectorEnv x32 (shared memory)"] = vector_stepper(asynchronous, 32)
        blocks = gym.vector.AsyncVectorEnv([BusyBlock, BusyBlock], shared_memory=True)
        closers.append(blocks.close)
        blocks.reset(seed=0)

        def blocks_run(steps: int) -> int:
            actions = np.zeros((2, BusyBlock.LANES), dtype=np.int64)
            for i in range(steps):
                actions[:] = i % 2
                blocks.step(actions)
            return steps * 2 * BusyBlock.LANES
        contenders["gymnasium AsyncVectorEnv 2 workers x16 (shared memory)"] = blocks_run
        try:
            from stable_baselines3.common.vec_env import SubprocVecEnv
        except ImportError:
            log.warning("stable-baselines3 is not installed: SubprocVecEnv is left out")
        else:
            subproc = SubprocVecEnv([BusyEnv for _ in range(32)])
            closers.append(subproc.close)
            subproc.reset()

            def sb3_run(steps: int) -> int:
                actions = np.zeros(32, dtype=np.int64)
                for i in range(steps):
                    actions[:] = i % 2
                    subproc.step(actions)
                return steps * 32
            contenders["SB3 SubprocVecEnv x32"] = sb3_run
        if args.pufferlib_python:
            puffer = PufferLib(args.pufferlib_python, envs=32, workers=2)
            closers.append(puffer.close)
            contenders["PufferLib Multiprocessing 2 workers x16"] = puffer.run
        figures = rates(contenders, args.seconds, args.rounds)
        closers.pop(0)()
        multi = rnp.MultiEndpointVectorEnv(servers.addresses, transport="zmq")
        closers.insert(0, multi.close)
        best_other = max((v, k) for k, v in figures.items() if not k.startswith("rlmesh"))[1]
        again = rates({best_other: contenders[best_other], "zmq": vector_stepper(multi, 32)},
                      args.seconds, args.rounds)
        figures["rlmesh 2 servers x16, zmq"] = again["zmq"] * figures[best_other] / again[best_other]
        met = report(f"{BUSY_US:g} us env x32", best_other, figures, ("rlmesh 2 servers x16, shared memory", 1.1))
        # The most any vectorizer can do here: every CPU stepping BusyEnv, nothing else.
        one = BusyEnv()
        ceiling = len(os.sched_getaffinity(0)) * rates({"one": single_stepper(one)}, 0.5, 1)["one"]
        print(f"  ceiling ({len(os.sched_getaffinity(0))} CPUs stepping, no overhead): {ceiling:,.0f} steps/s = "
              f"{ceiling / figures[best_other]:.2f}x {best_other}")
        return met
    finally:
        for close in closers:
            close()
        servers.close()


def case_crowded(args: argparse.Namespace) -> bool:
    """More spinners than CPUs: one client stepping two single-env servers on this machine's CPUs.

    The same client (``MultiEndpointVectorEnv``) steps one server and two, in alternating rounds:
    with two, three processes wait by spinning on two CPUs. Not collapsing means the two lanes step at least
    0.8x as many env steps/s as the one; ``RemoteEnv`` on one server is shown for scale.
    """
    servers = Servers("cartpole", [0, 0, 0, 0])  # a server serves one client at a time; idle ones sleep
    try:
        one = rnp.MultiEndpointVectorEnv(servers.addresses[:1], transport="shm")
        single = rnp.RemoteEnv(servers.addresses[1], transport="shm")
        both = rnp.MultiEndpointVectorEnv(servers.addresses[2:], transport="shm")
        figures = rates({"one server, MultiEndpointVectorEnv": vector_stepper(one, 1),
                         "one server, RemoteEnv": single_stepper(single),
                         "two servers, MultiEndpointVectorEnv": vector_stepper(both, 2)}, args.seconds, args.rounds)
        for env in (one, single, both):
            env.close()
        return report("2 servers + 1 client, shared memory (env steps/s)", "one server, MultiEndpointVectorEnv",
                      figures, ("two servers, MultiEndpointVectorEnv", 0.8))
    finally:
        servers.close()


def _cpu_seconds(pid: int) -> float:
    """The scheduler's run time of all of ``pid``'s threads, in ns: exact, where /proc/PID/stat
    counts 10 ms ticks, each charged whole to whatever runs when it fires."""
    tasks = glob.glob(f"/proc/{pid}/task/*/schedstat")
    return sum(int(open(task).read().split()[0]) for task in tasks) / 1e9


def case_idle(args: argparse.Namespace) -> bool:
    servers = Servers("cartpole", [0])
    try:
        env = rnp.RemoteEnv(servers.addresses[0], transport="shm")
        single_stepper(env)(20_000)
        time.sleep(0.1)
        pid = servers.procs[0].pid
        server_before, client_before = _cpu_seconds(pid), _cpu_seconds(os.getpid())
        time.sleep(3.0)
        server_share = (_cpu_seconds(pid) - server_before) / 3
        client_share = (_cpu_seconds(os.getpid()) - client_before) / 3
        env.close()
        print(f"\nidle, 100 ms after the last step, over 3 s: server {server_share:.1%} CPU, "
              f"client {client_share:.1%} CPU (target < 1% each)")
        return server_share < 0.01 and client_share < 0.01
    finally:
        servers.close()


def case_channel(args: argparse.Namespace) -> bool | None:
    import json

    import zmq

    from rlmesh.protocol import shm
    from rlmesh.wire import codec

    vector = make_vector("cartpole32", 32)
    vector.reset(seed=0)
    message = codec.encode(["ok", 1, list(vector.step(np.zeros(32, dtype=np.int64)))])
    echoes = [Echo("shm"), Echo("zmq")]
    try:
        offer = json.loads(echoes[0].ready)
        channel = shm.open_segment(shm.SegmentOffer.from_wire({**offer, "nonce": bytes.fromhex(offer["nonce"])}))
        if channel is None:
            raise RuntimeError("could not map the echo process's segment")
        socket: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.PAIR)
        socket.connect(f"tcp://127.0.0.1:{int(echoes[1].ready)}")

        def over_channel(trips: int) -> int:
            for _ in range(trips):
                channel.send(message)
                channel.wait(10.0)
                channel.receive()
            return trips

        def over_socket(trips: int) -> int:
            for _ in range(trips):
                socket.send_multipart(message, copy=False)
                socket.recv_multipart(copy=False)
            return trips

        figures = rates({"zmq PAIR, tcp loopback": over_socket, "rlmesh shared-memory channel": over_channel},
                        args.seconds, args.rounds)
        channel.close()
        socket.close(linger=0)
        size = sum(len(frame) for frame in message)
        report(f"bare round trips of a {size}-byte CartPole x32 step reply", "zmq PAIR, tcp loopback", figures,
               None, unit="round trips/s")
        for name, value in figures.items():
            print(f"  {name}: {1e6 / value:.1f} us per round trip")
        return None  # no target: it shows where the step time is not
    finally:
        for echo in echoes:
            echo.close()


CASES = {"cartpole": case_cartpole, "cartpole32": case_cartpole32, "busy32": case_busy32,
         "crowded": case_crowded, "idle": case_idle, "frames": case_frames, "channel": case_channel}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--case", action="append", choices=sorted(CASES), help="default: all")
    parser.add_argument("--seconds", type=float, default=1.0, help="length of one round of one contender")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--sandbox", help="also a SandboxEnv on this runtime (docker, podman, ...)")
    parser.add_argument("--pufferlib-python", metavar="PYTHON",
                        help="a venv's python with PufferLib: adds it to busy32 (see pufferlib_stepper.py)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    judged = [met for met in (CASES[name](args) for name in (args.case or list(CASES))) if met is not None]
    print(f"\nCPUs: {os.cpu_count()}; targets met: {sum(judged)} of {len(judged)}")
    return 0 if all(judged) else 1


if __name__ == "__main__":
    sys.exit(main())
