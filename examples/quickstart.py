"""Quickstart: serve CartPole in another process and play one episode through RemoteEnv.

    python examples/quickstart.py
"""

from __future__ import annotations

import multiprocessing as mp

import gymnasium

from rlmesh import EnvServer
from rlmesh.numpy import RemoteEnv


def serve(addresses: mp.Queue) -> None:
    """The server process: port 0 picks a free port; report the real address, then serve."""
    server = EnvServer(gymnasium.make("CartPole-v1"), "tcp://127.0.0.1:0")
    addresses.put(server.address)
    server.serve()  # until SIGTERM (Process.terminate) or Ctrl-C


def main() -> None:
    context = mp.get_context("spawn")
    addresses = context.Queue()
    server = context.Process(target=serve, args=(addresses,))
    server.start()
    try:
        address = addresses.get(timeout=60)
        print(f"server listening at {address}")
        with RemoteEnv(address) as env:
            print("observation space:", env.observation_space)
            print("action space:", env.action_space)
            env.action_space.seed(0)
            obs, info = env.reset(seed=42)
            episode_return, steps, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, info = env.step(env.action_space.sample())
                episode_return += float(reward)
                steps += 1
                done = terminated or truncated
        print(f"episode finished after {steps} steps, return {episode_return}")
    finally:
        server.terminate()
        server.join(10)
    assert server.exitcode == 0, f"server exited with {server.exitcode}"


if __name__ == "__main__":
    main()
