"""Real research envs in sandboxes: MuJoCo with off-screen rendering, and Atari.

Each needs an image of its own (native libraries, ROMs), so these run on one engine, docker;
the options they use (system_packages, env, limits) are tested on every engine elsewhere.
"""

from __future__ import annotations

from importlib import metadata

import gymnasium as gym
import numpy as np

import rlmesh.numpy as rnp
from rlmesh.runtime import RuntimeDriver

GYMNASIUM = f"gymnasium=={metadata.version('gymnasium')}"
#: The host's MuJoCo, so both sides step the same physics build.
MUJOCO = f"mujoco=={metadata.version('mujoco')}"


def test_mujoco_half_cheetah_steps_like_the_host_and_renders_off_screen(docker_driver: RuntimeDriver) -> None:
    local = gym.make("HalfCheetah-v5")
    rng = np.random.default_rng(0)
    actions = [rng.uniform(-1, 1, 6).astype(np.float32) for _ in range(25)]
    with rnp.SandboxEnv("HalfCheetah-v5", packages=[f"gymnasium[mujoco]=={metadata.version('gymnasium')}", MUJOCO],
                        imports=["mujoco"], system_packages=["libosmesa6"], env={"MUJOCO_GL": "osmesa"},
                        render_mode="rgb_array", runtime=docker_driver) as env:
        assert env.observation_space.shape == (17,) and env.action_space.shape == (6,)
        obs, _ = env.reset(seed=7)
        np.testing.assert_array_equal(obs, local.reset(seed=7)[0])
        for action in actions:
            got, want = env.step(action), local.step(action)
            np.testing.assert_array_equal(got[0], want[0])
            assert got[1] == want[1] and got[2:4] == want[2:4]
        frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (480, 480, 3)
    assert frame.std() > 5, "the off-screen frame is blank"


def test_atari_pong_resets_and_steps(docker_driver: RuntimeDriver) -> None:
    # "module:id" imports ale_py first, which registers the ALE namespace (the ROMs ship in its wheel).
    with rnp.SandboxEnv("ale_py:ALE/Pong-v5", packages=[GYMNASIUM, "ale-py==0.12.1"], imports=["ale_py"],
                        runtime=docker_driver) as env:
        obs, _ = env.reset(seed=0)
        assert obs.shape == (210, 160, 3) and obs.dtype == np.uint8
        assert env.action_space == gym.spaces.Discrete(6)
        for _ in range(10):
            obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        assert obs.shape == (210, 160, 3) and obs.dtype == np.uint8 and obs.any()
