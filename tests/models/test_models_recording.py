"""``Model.run(..., record_video=DIR)``: one video per episode, with the frames the episode showed.

Envs are served from another process; each video is decoded and its frames counted: the
episode's first frame plus one per step (``SameStep`` lanes lose their final frame).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import imageio_ffmpeg
import pytest

import rlmesh
import rlmesh.numpy as rnp


def frame_count(path: Path) -> int:
    frames, _ = imageio_ffmpeg.count_frames_and_secs(str(path))
    return int(frames)


def videos(folder: Path) -> dict[str, int]:
    return {path.name: frame_count(path) for path in sorted(folder.glob("*.mp4"))}


def test_single_env_one_video_per_episode(spawn_server: Any, clients: Any, tmp_path: Path) -> None:
    server = spawn_server("tunable", env_kwargs={"episode_steps": 5, "render_mode": "rgb_array"})
    env = clients(rnp.RemoteEnv, server.address)
    result = rnp.Model(lambda observation: 0).run(env, seeds=[0, 1, 2], record_video=tmp_path)
    assert [episode.steps for episode in result.episodes] == [5, 5, 5]
    assert videos(tmp_path) == {f"episode-{i}.mp4": 6 for i in range(3)}


@pytest.mark.parametrize("seeded", [True, False], ids=["seeded", "autoreset"])
def test_vector_lanes_each_episode_gets_its_own_video(seeded: bool, spawn_server: Any, tmp_path: Path) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2, "episode_steps": 4, "render_mode": "rgb_array"})
    seeds = list(range(5)) if seeded else None
    result = rnp.Model(lambda observation: 0).run(server.address, seeds=seeds, episodes=5, record_video=tmp_path)
    assert [episode.steps for episode in result.episodes] == [4] * 5
    assert videos(tmp_path) == {f"episode-{i}.mp4": 5 for i in range(5)}


def test_same_step_lanes_lose_the_final_frame(spawn_server: Any, tmp_path: Path) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2, "episode_steps": 3, "autoreset": "SameStep",
                                                     "render_mode": "rgb_array"})
    rnp.Model(lambda observation: 0).run(server.address, episodes=4, record_video=tmp_path)
    assert videos(tmp_path) == {f"episode-{i}.mp4": 3 for i in range(4)}


def test_capped_episodes_and_the_plain_flavour(spawn_server: Any, clients: Any, tmp_path: Path) -> None:
    server = spawn_server("tunable", env_kwargs={"render_mode": "rgb_array"})  # never ends by itself
    env = clients(rlmesh.RemoteEnv, server.address)
    rlmesh.Model(lambda observation: 1).run(env, seeds=[0, 1], max_steps=7, record_video=tmp_path / "new")
    assert videos(tmp_path / "new") == {"episode-0.mp4": 8, "episode-1.mp4": 8}


def test_a_local_cartpole(tmp_path: Path) -> None:
    env = gym.make("CartPole-v1", render_mode="rgb_array")
    result = rnp.Model(lambda observation: int(observation[2] > 0)).run(env, seeds=[4], record_video=tmp_path)
    assert videos(tmp_path) == {"episode-0.mp4": result.episodes[0].steps + 1}


def test_an_env_without_rgb_array_frames_is_refused(server_pool: Any, clients: Any, tmp_path: Path) -> None:
    env = clients(rnp.RemoteEnv, server_pool("cartpole"))
    with pytest.raises(ValueError, match="render_mode='rgb_array'"):
        rnp.Model(lambda observation: 0).run(env, seeds=[0], record_video=tmp_path)
    assert not list(tmp_path.glob("*.mp4"))
