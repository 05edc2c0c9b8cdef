"""Evaluate a policy with Model.run: the same seeds give the same returns on one env or many lanes.

    python examples/model_eval.py
"""

from __future__ import annotations

import multiprocessing as mp

import gymnasium

from rlmesh import EnvServer
from rlmesh.numpy import Model


def lean(observation) -> int:
    """Push the cart towards the side the pole leans to."""
    return int(observation[2] > 0)


def serve(addresses: mp.Queue, num_envs: int) -> None:
    # "sync": per-lane reset seeds need a Sync/Async vector env (not CartPole's native one).
    env = (gymnasium.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync") if num_envs > 1
           else gymnasium.make("CartPole-v1"))
    server = EnvServer(env, "tcp://127.0.0.1:0")
    addresses.put(server.address)
    server.serve()


def main() -> None:
    context = mp.get_context("spawn")
    seeds = list(range(8))
    results = {}
    for num_envs in (1, 4):
        addresses = context.Queue()
        server = context.Process(target=serve, args=(addresses, num_envs))
        server.start()
        try:
            results[num_envs] = Model(lean).run(addresses.get(timeout=60), seeds=seeds)
        finally:
            server.terminate()
            server.join(10)
        print(f"--- {num_envs} lane(s)")
        print(results[num_envs])

    local = Model(lean).run(gymnasium.make("CartPole-v1"), seeds=seeds, close_env=True)
    assert results[1].returns == results[4].returns == local.returns
    print("returns per seed:", local.returns)
    print("identical on a remote env, a remote 4-lane vector env and a local env")


if __name__ == "__main__":
    main()
