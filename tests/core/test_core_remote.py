"""Single remote envs across a process boundary: values, CartPole parity, render, check_env."""

from __future__ import annotations

import warnings
from typing import Any

import core_envs
import gymnasium as gym
import numpy as np
import pytest
import torch
from core_compare import assert_equal
from gymnasium.utils.env_checker import check_env

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh import Tensor

# --- values through a real env -----------------------------------------------------------------


def test_every_dtype_arrives_exactly_with_numpy(server_pool: Any, clients: Any, transport: str) -> None:
    env = clients(rnp.RemoteEnv, server_pool("dtype_zoo", transport))
    obs, info = env.reset(seed=11)
    assert_equal(obs, core_envs.dtype_zoo(11))
    assert_equal(info, core_envs.info_zoo(11))
    obs, reward, terminated, truncated, info = env.step(2)
    assert_equal(obs, core_envs.dtype_zoo(12))
    assert_equal(info, core_envs.info_zoo(12))
    assert (reward, terminated, truncated) == (2.0, False, False)
    assert type(reward) is float and type(terminated) is bool


def test_every_dtype_arrives_as_tensors_on_the_plain_client(server_pool: Any, clients: Any) -> None:
    env = clients(rlmesh.RemoteEnv, server_pool("dtype_zoo"))
    obs, info = env.reset(seed=4)
    want = core_envs.dtype_zoo(4)
    for key, array in want.items():
        got = obs[key]
        if array.ndim == 0:
            assert got == array.item() and not isinstance(got, Tensor)
            continue
        assert isinstance(got, Tensor), key
        assert (got.dtype, got.shape) == (array.dtype.name, array.shape), key
        assert got.tobytes() == array.astype(array.dtype.newbyteorder("=")).tobytes(), key
    assert isinstance(info["objects"], list) and info["objects"][1] == {"k": 1}
    assert info["tuple"] == (1, (2, "three"))


def test_every_dtype_arrives_with_torch(server_pool: Any, clients: Any) -> None:
    env = clients(rtorch.RemoteEnv, server_pool("dtype_zoo"))
    obs, _ = env.reset(seed=6)
    for key, array in core_envs.dtype_zoo(6).items():
        got = obs[key]
        if array.ndim == 0:
            assert got == array.item()
            continue
        assert isinstance(got, torch.Tensor) and got.dtype == getattr(torch, array.dtype.name), key
        assert tuple(got.shape) == array.shape
        raw = got.contiguous().view(torch.uint8).numpy().tobytes() if got.numel() else b""
        assert raw == array.astype(array.dtype.newbyteorder("=")).tobytes(), key


def test_observations_are_owned_and_writable(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("dtype_zoo"))
    obs, info = env.reset(seed=1)
    for key in ("float32_small", "float32_large", "float64_large"):
        before = obs[key].copy()
        obs[key] /= 255.0  # in place, both for inline (small) and framed (large) arrays
        np.testing.assert_allclose(obs[key], before / 255.0, rtol=1e-6)
    info["big"] += 1
    env.close()
    tenv = clients(rtorch.RemoteEnv, server_pool("dtype_zoo"))
    tobs, _ = tenv.reset(seed=1)
    for key in ("float32_small", "float32_large"):
        expected = tobs[key] / 255
        tobs[key].div_(255)
        assert torch.equal(tobs[key], expected)


def test_large_image_frames_are_writable(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("image", shape=[210, 160, 3]))
    img, _ = env.reset(seed=0)
    assert img.dtype == np.uint8 and img.shape == (210, 160, 3) and img.flags.writeable
    img[:] = 0
    env.close()
    tenv = clients(rtorch.RemoteEnv, server_pool("image", shape=[210, 160, 3]))
    timg, _ = tenv.reset(seed=0)
    frame = timg.float()
    frame.div_(255)
    assert torch.allclose(frame * 255, timg.float())
    timg.zero_()  # an owned tensor: writing it is safe


# --- CartPole parity ---------------------------------------------------------------------------


def test_cartpole_matches_local_gymnasium_step_by_step(server_pool: Any, clients: Any, transport: str) -> None:
    remote = clients(rnp.RemoteEnv, server_pool("cartpole", transport))
    local = gym.make("CartPole-v1")
    assert remote.observation_space == local.observation_space
    assert remote.action_space == local.action_space
    assert remote.env_contract.env_id == "CartPole-v1"
    assert remote.metadata["render_fps"] == local.metadata["render_fps"]
    rng = np.random.default_rng(0)
    episodes = 0
    seed: int | None = 123
    while episodes < 4:
        want, want_info = local.reset(seed=seed)
        got, got_info = remote.reset(seed=seed)
        assert_equal(got, want)
        assert_equal(got_info, want_info)
        seed = None  # later episodes continue the seeded RNG on both sides
        done = False
        while not done:
            action = int(rng.integers(2))
            want_step = local.step(action)
            got_step = remote.step(action)
            assert_equal(list(got_step), [want_step[0], float(want_step[1]), *want_step[2:]])
            done = want_step[2] or want_step[3]
        episodes += 1


def test_torch_client_drives_cartpole(server_pool: Any, clients: Any) -> None:
    env = clients(rtorch.RemoteEnv, server_pool("cartpole"))
    local = gym.make("CartPole-v1")
    obs, _ = env.reset(seed=3)
    want, _ = local.reset(seed=3)
    assert obs.dtype == torch.float32 and obs.tolist() == want.tolist()
    env.action_space.seed(9)
    for _ in range(5):
        action = env.action_space.sample()
        assert env.action_space.contains(action)
        obs, reward, terminated, *_ = env.step(action)
        want, *_ = local.step(int(action))
        assert obs.tolist() == want.tolist()
        if terminated:
            break
    sample = env.observation_space.sample()
    assert isinstance(sample, torch.Tensor) and sample.shape == (4,) and env.observation_space.contains(sample)


def test_list_of_envs_is_served_as_a_sync_vector_env(server_pool: Any, clients: Any, transport: str) -> None:
    remote = clients(rnp.RemoteVectorEnv, server_pool("cartpole_list", transport))
    local = gym.vector.SyncVectorEnv([lambda: gym.make("CartPole-v1") for _ in range(2)])
    assert remote.num_envs == 2
    assert remote.single_action_space == local.single_action_space
    assert remote.observation_space == local.observation_space
    assert_equal(remote.reset(seed=[1, 2]), local.reset(seed=[1, 2]))
    for step in range(30):
        actions = np.array([step % 2, (step // 3) % 2])
        assert_equal(remote.step(actions), local.step(actions))
    # A list of per-env actions works too.
    assert_equal(remote.step([0, 1]), local.step(np.array([0, 1])))


# --- render and check_env ----------------------------------------------------------------------


def test_render_single(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("cartpole", render_mode="rgb_array"))
    local = gym.make("CartPole-v1", render_mode="rgb_array")
    assert env.render_mode == "rgb_array"
    env.reset(seed=2)
    local.reset(seed=2)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.shape == (400, 600, 3)
    np.testing.assert_array_equal(frame, local.render())


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_render_vector_by_env_index(mode: str, server_pool: Any, clients: Any) -> None:
    kwargs: dict[str, Any] = {"num_envs": 2, "mode": mode, "render_mode": "rgb_array"}
    env = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", **kwargs))
    local = core_envs.cartpole_vec(**kwargs)
    try:
        env.reset(seed=[5, 50])
        local.reset(seed=[5, 50])
        want = local.render()
        first, second = env.render(env_index=0), env.render(env_index=1)
        np.testing.assert_array_equal(first, want[0])
        np.testing.assert_array_equal(second, want[1])
        assert not np.array_equal(first, second)
        with pytest.raises(ValueError, match="env_index 2 out of range"):
            env.render(env_index=2)
    finally:
        local.close()


def test_gymnasium_check_env_passes(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("cartpole", render_mode="rgb_array"))
    assert isinstance(env, gym.Env)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    # check_env reports most problems (dtypes, bounds, determinism) as warnings: only these two
    # are expected, both true of CartPole itself or of any env not built by gymnasium.make.
    expected = ("Box observation space m", "not having a spec")
    unexpected = [str(w.message) for w in caught if not any(e in str(w.message) for e in expected)]
    assert not unexpected
