"""Gymnasium's own wrappers on rlmesh clients: episode statistics and video recording.

The NumPy clients are real ``gymnasium.Env`` / ``gymnasium.vector.VectorEnv`` instances, so the
wrappers apply unchanged; videos are decoded and their frames counted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import imageio_ffmpeg
import numpy as np
from gymnasium.wrappers import RecordEpisodeStatistics, RecordVideo
from gymnasium.wrappers.vector import RecordEpisodeStatistics as VectorRecordEpisodeStatistics
from gymnasium.wrappers.vector import RecordVideo as VectorRecordVideo

import rlmesh.numpy as rnp


def frame_count(path: Path) -> int:
    return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])


def test_single_env_statistics_and_video(spawn_server: Any, clients: Any, tmp_path: Path) -> None:
    server = spawn_server("tunable", env_kwargs={"difficulty": 2.0, "episode_steps": 6, "render_mode": "rgb_array"})
    client = clients(rnp.RemoteEnv, server.address)
    folder = tmp_path / "videos"  # a new folder: Gymnasium warns about one that exists
    env = RecordEpisodeStatistics(RecordVideo(client, str(folder), episode_trigger=lambda episode: True))
    for seed in (0, 1):
        env.reset(seed=seed)
        terminated = False
        while not terminated:
            _, _, terminated, _, info = env.step(0)
        assert info["episode"]["r"] == 12.0 and info["episode"]["l"] == 6
    env.close()
    names = sorted(path.name for path in folder.glob("*.mp4"))
    assert names == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"]
    assert [frame_count(folder / name) for name in names] == [7, 7]  # the reset frame and 6 steps


def test_vector_statistics_and_video_on_remote_and_multi_endpoint_envs(spawn_server: Any, tmp_path: Path) -> None:
    vector = spawn_server("tunable_vec", env_kwargs={"num_envs": 2, "episode_steps": 4, "render_mode": "rgb_array"})
    single = spawn_server("tunable", env_kwargs={"difficulty": 2.0, "episode_steps": 4, "render_mode": "rgb_array"})
    connect = {"remote": lambda: rnp.RemoteVectorEnv(vector.address),
               "multi": lambda: rnp.RemoteVectorEnv.from_endpoints([vector.address, single.address])}
    for name, make in connect.items():
        client = make()
        folder = tmp_path / name
        env = VectorRecordEpisodeStatistics(VectorRecordVideo(client, str(folder), episode_trigger=lambda e: True))
        env.reset(seed=0)
        finished = []
        for _ in range(9):  # two episodes of 4 steps per lane, with a NextStep reset step between
            _, _, _, _, info = env.step(np.zeros(env.num_envs, dtype=np.int64))
            if "episode" in info:
                finished += info["episode"]["r"][info["_episode"]].tolist()
        env.close()
        lanes = client.num_envs
        assert sorted(finished) == sorted([0.0, 4.0, 8.0][:lanes] * 2), name
        videos = sorted(folder.glob("*.mp4"))
        assert [v.name for v in videos] == ["rl-video-episode-0.mp4", "rl-video-episode-1.mp4"], name
        # Lane 0 drives the episode count: a reset frame and 4 steps, then a reset step and 4 steps.
        assert [frame_count(v) for v in videos] == [5, 5], name
