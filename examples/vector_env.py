"""Serve a Gymnasium vector env and count finished episodes under its autoreset mode.

In Gymnasium's default NEXT_STEP mode, the step after a lane finishes is that lane's reset
step: its reward belongs to no episode. The remote client behaves exactly like the local env.

    python examples/vector_env.py
"""

from __future__ import annotations

import multiprocessing as mp

import gymnasium
import numpy as np

from rlmesh import EnvServer
from rlmesh.numpy import RemoteVectorEnv

NUM_ENVS = 4


def serve(addresses: mp.Queue) -> None:
    env = gymnasium.make_vec("CartPole-v1", num_envs=NUM_ENVS, vectorization_mode="sync")
    server = EnvServer(env, "tcp://127.0.0.1:0")
    addresses.put(server.address)
    server.serve()


def main() -> None:
    context = mp.get_context("spawn")
    addresses = context.Queue()
    server = context.Process(target=serve, args=(addresses,))
    server.start()
    try:
        with RemoteVectorEnv(addresses.get(timeout=60)) as env:
            print(f"{env.num_envs} lanes, autoreset mode {env.env_contract.autoreset_mode}")
            env.action_space.seed(0)
            obs, info = env.reset(seed=0)
            returns = np.zeros(env.num_envs)
            resetting = np.zeros(env.num_envs, dtype=bool)
            finished: list[float] = []
            while len(finished) < 10:
                obs, rewards, terminations, truncations, info = env.step(env.action_space.sample())
                returns += np.where(resetting, 0.0, rewards)  # reset steps earn nothing
                done = (terminations | truncations) & ~resetting
                finished += returns[done].tolist()
                returns[done] = 0.0
                resetting = done
            print(f"{len(finished)} episodes, mean return {np.mean(finished):.1f}")
    finally:
        server.terminate()
        server.join(10)


if __name__ == "__main__":
    main()
