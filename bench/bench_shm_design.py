"""Design measurement for issue 18 (same-host shared-memory transport): is spin-then-block on a
shared segment fast enough, idle enough, and safe with more spinners than cores?

Not rlmesh's transport (that is still to be built): a minimal request/reply channel over one
shared segment, run against the floors it must beat, in one interleaved run:

- ``local``: ``gymnasium.make("CartPole-v1")`` stepped in this process;
- ``rlmesh``: today's ``RemoteEnv`` over zmq (tcp loopback) to an ``EnvServer`` process;
- ``zmq``: a bare zmq PAIR round trip to a process that steps the env (the wake-up floor);
- ``shm``: the same process answering through a shared segment: each side spins on a sequence
  number for up to ``--spin-us`` and then sleeps on a zmq doorbell, rung only when the other
  side says it sleeps (a 1 ms poll bounds a lost wake-up).

It reports steps/s of each (and the ratio to ``local``), the server's CPU share over the second
that starts 100 ms after the client stops (idle target < 1%), and ``shm`` with two servers and one client on the
machine's cores. Run: ``python bench/bench_shm_design.py [--steps N] [--spin-us US]``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import struct
import time
from multiprocessing import shared_memory
from typing import Any

import zmq

HEADER = struct.Struct("<QQII")  # request seq, reply seq, client sleeps, server sleeps
REPLY = struct.Struct("<4fd??")  # CartPole: observation, reward, terminated, truncated
REQUEST = struct.Struct("<q")  # action (-1: reset)
DATA = 64


def _wait(buffer: memoryview, offset: int, seen: int, sleep_flag: int, bell: zmq.Socket[Any],
          spin_ns: int, poll_ms: int) -> int:
    """Spin on the sequence at ``offset`` until it passes ``seen``, then sleep on the doorbell.

    The sleep looks at the sequence again every ``poll_ms``: that bounds a lost wake-up (the
    flag and the sequence are read without a fence), and each look costs a wake-up, so it sets
    the idle CPU cost.
    """
    deadline = time.perf_counter_ns() + spin_ns
    while True:
        (value,) = struct.unpack_from("<Q", buffer, offset)
        if value != seen:
            return int(value)
        if time.perf_counter_ns() >= deadline:
            break
    struct.pack_into("<I", buffer, sleep_flag, 1)
    try:
        while True:
            (value,) = struct.unpack_from("<Q", buffer, offset)  # re-check: the ring may have gone by
            if value != seen:
                return int(value)
            if bell.poll(poll_ms):
                bell.recv()
    finally:
        struct.pack_into("<I", buffer, sleep_flag, 0)


def _post(buffer: memoryview, offset: int, value: int, peer_sleeps: int, bell: zmq.Socket[Any]) -> None:
    struct.pack_into("<Q", buffer, offset, value)
    (sleeping,) = struct.unpack_from("<I", buffer, peer_sleeps)
    if sleeping:
        try:
            bell.send(b"", zmq.NOBLOCK)
        except zmq.Again:  # rings are queued already: the sleeper wakes anyway
            pass


def shm_server(name: str, bell_address: str, spin_ns: int, poll_ms: int, ready: Any) -> None:
    import gymnasium

    env = gymnasium.make("CartPole-v1")
    segment = shared_memory.SharedMemory(name=name)
    buffer = segment.buf
    bell = zmq.Context.instance().socket(zmq.PAIR)
    bell.connect(bell_address)
    ready.put(os.getpid())
    seen = 0
    try:
        while True:
            seen = _wait(buffer, 0, seen, 20, bell, spin_ns, poll_ms)
            (action,) = REQUEST.unpack_from(buffer, DATA)
            if action == -2:
                break
            if action == -1:
                obs, _ = env.reset(seed=0)
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, _ = env.step(action)
                if terminated or truncated:
                    obs, _ = env.reset()
            REPLY.pack_into(buffer, DATA + 64, *obs.tolist(), float(reward), terminated, truncated)
            _post(buffer, 8, seen, 16, bell)
    finally:
        del buffer
        segment.close()


class ShmClient:
    def __init__(self, spin_ns: int, poll_ms: int) -> None:
        self.segment = shared_memory.SharedMemory(create=True, size=4096)
        self.buffer = self.segment.buf
        self.bell = zmq.Context.instance().socket(zmq.PAIR)
        port = self.bell.bind_to_random_port("tcp://127.0.0.1")
        self.spin_ns, self.poll_ms = spin_ns, poll_ms
        ready: Any = mp.get_context("spawn").Queue()
        self.proc = mp.get_context("spawn").Process(
            target=shm_server, args=(self.segment.name, f"tcp://127.0.0.1:{port}", spin_ns, poll_ms, ready),
            daemon=True)
        self.proc.start()
        self.pid = ready.get(timeout=60)
        self.seq = 0

    def request(self, action: int) -> tuple[Any, ...]:
        REQUEST.pack_into(self.buffer, DATA, action)
        self.seq += 1
        _post(self.buffer, 0, self.seq, 20, self.bell)
        _wait(self.buffer, 8, self.seq - 1, 16, self.bell, self.spin_ns, self.poll_ms)
        return REPLY.unpack_from(self.buffer, DATA + 64)

    def close(self) -> None:
        REQUEST.pack_into(self.buffer, DATA, -2)
        self.seq += 1
        _post(self.buffer, 0, self.seq, 20, self.bell)
        self.proc.join(5)
        del self.buffer
        self.segment.close()
        self.segment.unlink()


def zmq_server(address: str) -> None:
    import gymnasium

    env = gymnasium.make("CartPole-v1")
    env.reset(seed=0)
    socket = zmq.Context.instance().socket(zmq.PAIR)
    socket.connect(address)
    while True:
        (action,) = REQUEST.unpack(socket.recv())
        if action == -2:
            return
        obs, reward, terminated, truncated, _ = env.step(action)
        if terminated or truncated:
            obs, _ = env.reset()
        socket.send(REPLY.pack(*obs.tolist(), float(reward), terminated, truncated))


def rlmesh_server(queue: Any) -> None:
    import gymnasium

    from rlmesh import EnvServer

    server = EnvServer(gymnasium.make("CartPole-v1"), "tcp://127.0.0.1:0")
    queue.put(server.address)
    server.serve()


def rate(step: Any, steps: int) -> float:
    started = time.perf_counter()
    for i in range(steps):
        step(i % 2)
    return steps / (time.perf_counter() - started)


def _cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def idle_share(pid: int) -> float:
    """CPU share of ``pid`` over one second, starting 100 ms after the last step (the spin must
    have ended by then); a second, because the kernel counts CPU time in 10 ms ticks."""
    time.sleep(0.1)
    before = _cpu_seconds(pid)
    time.sleep(1.0)
    return _cpu_seconds(pid) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--steps", type=int, default=20_000)
    parser.add_argument("--spin-us", type=float, default=50.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--poll-ms", type=int, default=1)
    args = parser.parse_args()
    spin_ns = int(args.spin_us * 1000)
    import gymnasium

    import rlmesh.numpy as rnp

    local = gymnasium.make("CartPole-v1")
    local.reset(seed=0)

    def local_step(action: int) -> None:
        if any(local.step(action)[2:4]):
            local.reset()

    spawn = mp.get_context("spawn")
    queue: Any = spawn.Queue()
    server = spawn.Process(target=rlmesh_server, args=(queue,), daemon=True)
    server.start()
    remote = rnp.RemoteEnv(queue.get(timeout=60))
    remote.reset(seed=0)

    def remote_step(action: int) -> None:
        if any(remote.step(action)[2:4]):
            remote.reset()

    pair = zmq.Context.instance().socket(zmq.PAIR)
    port = pair.bind_to_random_port("tcp://127.0.0.1")
    zmq_proc = spawn.Process(target=zmq_server, args=(f"tcp://127.0.0.1:{port}",), daemon=True)
    zmq_proc.start()

    def zmq_step(action: int) -> None:
        pair.send(REQUEST.pack(action))
        pair.recv()

    shm = ShmClient(spin_ns, args.poll_ms)
    shm.request(-1)
    results: dict[str, list[float]] = {"local": [], "rlmesh": [], "zmq": [], "shm": []}
    steps = {"local": local_step, "rlmesh": remote_step, "zmq": zmq_step, "shm": shm.request}
    for _ in range(args.rounds):  # interleaved: load changes hit every case alike
        for name, step in steps.items():
            results[name].append(rate(step, args.steps))
    best = {name: max(values) for name, values in results.items()}
    print(f"CartPole-v1, {args.steps} steps x {args.rounds} interleaved rounds, spin {args.spin_us:g} us, "
          f"poll {args.poll_ms} ms "
          f"({os.cpu_count()} CPUs); best round:")
    for name, value in best.items():
        print(f"  {name:7s} {value:10,.0f} steps/s   {value / best['local']:.3f}x local")
    print(f"  shm server CPU share, 0.1-1.1 s after the last step: {idle_share(shm.pid):.1%}")

    second = ShmClient(spin_ns, args.poll_ms)  # two servers, one client: three spinners on the machine's cores
    second.request(-1)
    started = time.perf_counter()
    for i in range(args.steps // 2):
        shm.request(i % 2)
        second.request(i % 2)
    both = args.steps / (time.perf_counter() - started)
    print(f"  shm, 2 servers + 1 client alternating: {both:,.0f} steps/s ({both / best['shm']:.2f}x one server)")
    second.close()
    shm.close()
    pair.send(REQUEST.pack(-2))
    remote.close()
    server.terminate()


if __name__ == "__main__":
    main()
