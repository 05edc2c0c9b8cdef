"""Train Stable-Baselines3's PPO on a sandboxed vector env, then record the trained policy.

``rlmesh.sb3.as_vec_env`` turns the rlmesh vector client into an SB3 ``VecEnv`` (SB3's
autoreset, ``terminal_observation`` infos, ``step_async`` on the wire). The env is built in one
line (``make_envs``): a ``SandboxVectorEnv`` in a container here, or ``RemoteVectorEnv(address)``
for a served one. Afterwards ``Model.run(..., record_video=DIR)`` plays three seeded episodes and
writes one video each.

    pip install "rlmesh[sb3,video]" && python examples/sb3_train.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import gymnasium
import torch
from stable_baselines3 import PPO

from rlmesh.numpy import Model, SandboxVectorEnv
from rlmesh.sb3 import as_vec_env

# rlmesh-example: needs-engine


def make_envs() -> SandboxVectorEnv:
    return SandboxVectorEnv("CartPole-v1", num_envs=4)  # or: RemoteVectorEnv(address)


def main() -> None:
    torch.set_num_threads(1)  # a small MLP: more threads only contend with the env's container
    venv = as_vec_env(make_envs())
    try:
        model = PPO("MlpPolicy", venv, n_steps=64, batch_size=64, n_epochs=10, gamma=0.98, gae_lambda=0.8,
                    learning_rate=1e-3, seed=0, device="cpu", policy_kwargs={"net_arch": [64, 64]})
        model.learn(20_000)
    finally:
        venv.close()  # closes the sandbox and removes its container

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
