"""What CurveZMQ keys cost: handshake time and CartPole step time, keyed against keyless.

Two servers of the same env run in their own processes, one keyless and one keyed; the client
times them in alternating blocks (handshakes: a new client each; steps: blocks of 200), so a
change in machine load hits both alike. Target: the keyed step within 10% of the keyless one.
Run: ``python bench/bench_keys.py [--steps N] [--handshakes N]``.
"""

from __future__ import annotations

import argparse
import logging
import multiprocessing as mp
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

BLOCK = 200


def serve(address_out: Any, keys: dict[str, str]) -> None:
    import gymnasium

    from rlmesh import EnvServer

    server = EnvServer(gymnasium.make("CartPole-v1"), "tcp://127.0.0.1:0", **keys)
    address_out.send(server.address)
    server.serve()


def start(keys: dict[str, str]) -> tuple[Any, str]:
    parent, child = mp.Pipe()
    proc = mp.get_context("spawn").Process(target=serve, args=(child, keys), daemon=True)
    proc.start()
    return proc, parent.recv()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=6000, help="timed steps per server")
    parser.add_argument("--handshakes", type=int, default=60, help="timed connects per server")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    from rlmesh.numpy import RemoteEnv
    from rlmesh.protocol.keys import new_keypair

    folder = Path(tempfile.mkdtemp(prefix="rlmesh-bench-keys-"))
    authorized = folder / "authorized"
    authorized.mkdir()
    server_public, server_secret = new_keypair("server", folder)
    client_public, client_secret = new_keypair("client", folder)
    shutil.copy(client_public, authorized)
    plain_proc, plain_address = start({})
    keyed_proc, keyed_address = start({"server_key": str(server_secret), "authorized_keys": str(authorized)})
    clients = {
        "keyless": (plain_address, {}),
        "keyed": (keyed_address, {"server_key": server_public, "client_key": client_secret}),
    }
    handshakes: dict[str, list[float]] = {name: [] for name in clients}
    steps: dict[str, list[float]] = {name: [] for name in clients}
    try:
        for _ in range(args.handshakes):
            for name, (address, keys) in clients.items():
                began = time.perf_counter()
                env = RemoteEnv(address, **keys)
                handshakes[name].append(time.perf_counter() - began)
                env.close()
        envs = {name: RemoteEnv(address, **keys) for name, (address, keys) in clients.items()}
        for env in envs.values():
            env.reset(seed=0)
            for _ in range(300):  # warm-up
                if any(env.step(0)[2:4]):
                    env.reset()
        for _ in range(max(1, args.steps // BLOCK)):
            for name, env in envs.items():
                began = time.perf_counter()
                for i in range(BLOCK):
                    if any(env.step(i % 2)[2:4]):
                        env.reset()
                steps[name].append((time.perf_counter() - began) / BLOCK)
        for env in envs.values():
            env.close()
    finally:
        for proc in (plain_proc, keyed_proc):
            proc.terminate()
            proc.join(5)
        shutil.rmtree(folder, ignore_errors=True)
    us = {name: statistics.median(values) * 1e6 for name, values in steps.items()}
    ms = {name: statistics.median(values) * 1e3 for name, values in handshakes.items()}
    print(f"{'':10} {'handshake ms':>13} {'step us':>9}")
    for name in clients:
        print(f"{name:10} {ms[name]:13.2f} {us[name]:9.1f}")
    ratio = us["keyed"] / us["keyless"]
    print(f"keyed / keyless step: {ratio:.3f} (target <= 1.10); handshake: {ms['keyed'] / ms['keyless']:.2f}x")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    sys.exit(main())
