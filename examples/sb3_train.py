"""Train Stable-Baselines3's PPO on a remote vector env, then record the trained policy.

``rlmesh.sb3.as_vec_env`` turns the rlmesh vector client into an SB3 ``VecEnv`` (SB3's
autoreset, ``terminal_observation`` infos, ``step_async`` on the wire). The env is built in one
line (``make_envs``); swap it for ``SandboxVectorEnv("CartPole-v1", num_envs=4)`` to train on a
sandboxed env. Afterwards ``Model.run(..., record_video=DIR)`` plays three seeded episodes and
writes one video each.

    pip install "rlmesh[sb3,video]" && python examples/sb3_train.py
"""

from __future__ import annotations

import multiprocessing as mp
import tempfile
from pathlib import Path

import gymnasium
import torch
from stable_baselines3 import PPO

from rlmesh import EnvServer
from rlmesh.numpy import Model, RemoteVectorEnv
from rlmesh.sb3 import as_vec_env


def serve(addresses: mp.Queue) -> None:
    env = gymnasium.make_vec("CartPole-v1", num_envs=4, vectorization_mode="sync")
    server = EnvServer(env, "tcp://127.0.0.1:0")
    addresses.put(server.address)
    server.serve()


def make_envs(address: str) -> RemoteVectorEnv:
    return RemoteVectorEnv(address)  # or: SandboxVectorEnv("CartPole-v1", num_envs=4)


def main() -> None:
    torch.set_num_threads(1)  # a small MLP: more threads only contend with the env server
    context = mp.get_context("spawn")
    addresses = context.Queue()
    server = context.Process(target=serve, args=(addresses,))
    server.start()
    try:
        venv = as_vec_env(make_envs(addresses.get(timeout=60)))
        model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=10, gamma=0.98, gae_lambda=0.8,
                    learning_rate=1e-3, seed=0, device="cpu", policy_kwargs={"net_arch": [64, 64]})
        model.learn(20_000)
        venv.close()
    finally:
        server.terminate()
        server.join(10)

    policy = Model(lambda observation: int(model.predict(observation, deterministic=True)[0]))
    with tempfile.TemporaryDirectory() as folder:
        env = gymnasium.make("CartPole-v1", render_mode="rgb_array")
        result = policy.run(env, seeds=[0, 1, 2], record_video=folder, close_env=True)
        print(f"trained PPO: mean return {result.mean_reward:.1f} over {len(result.episodes)} episodes")
        for episode in result.episodes:
            video = Path(folder, f"episode-{episode.index}.mp4")
            print(f"  seed {episode.seed}: return {episode.episode_return:.0f}, video {video.name} "
                  f"({video.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main()
