"""Remote vector envs follow Gymnasium's autoreset modes exactly, compared step by step."""

from __future__ import annotations

from typing import Any

import core_envs
import numpy as np
import pytest
import torch
from core_compare import assert_equal
from gymnasium.vector import AutoresetMode

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch

NUM_ENVS = 3
STEPS = 90  # random CartPole episodes last ~20 steps: every env ends several times


@pytest.mark.parametrize("mode", ["sync", "async"])
@pytest.mark.parametrize("autoreset", [m.value for m in AutoresetMode])
def test_vector_env_matches_local_step_by_step(mode: str, autoreset: str, server_pool: Any,
                                               clients: Any) -> None:
    kwargs: dict[str, Any] = {"num_envs": NUM_ENVS, "mode": mode, "autoreset": autoreset}
    remote = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", **kwargs))
    local = core_envs.cartpole_vec(**kwargs)
    try:
        assert remote.num_envs == NUM_ENVS
        assert remote.metadata["autoreset_mode"] is AutoresetMode(autoreset)
        assert remote.env_contract.autoreset_mode == autoreset
        assert remote.single_observation_space == local.single_observation_space
        assert remote.single_action_space == local.single_action_space
        assert remote.observation_space == local.observation_space
        assert remote.action_space == local.action_space

        assert_equal(remote.reset(seed=7), local.reset(seed=7))
        rng = np.random.default_rng(1)
        endings = 0
        saw_final_obs = False
        for _ in range(STEPS):
            actions = rng.integers(0, 2, NUM_ENVS)
            got, want = remote.step(actions), local.step(actions)
            assert_equal(got, want)
            saw_final_obs |= "final_obs" in want[4]
            done = want[2] | want[3]
            endings += int(done.sum())
            if autoreset == AutoresetMode.DISABLED.value and done.any():
                options = {"reset_mask": done}
                assert_equal(remote.reset(options=options), local.reset(options=options))
        assert endings >= NUM_ENVS  # the comparison went through autoresets
        assert saw_final_obs == (autoreset == AutoresetMode.SAME_STEP.value)
    finally:
        local.close()


def test_same_step_final_observations_on_the_plain_client(server_pool: Any, clients: Any) -> None:
    kwargs: dict[str, Any] = {"num_envs": 2, "autoreset": AutoresetMode.SAME_STEP.value}
    env = clients(rlmesh.RemoteVectorEnv, server_pool("cartpole_vec", **kwargs))
    local = core_envs.cartpole_vec(**kwargs)
    env.reset(seed=0)
    local.reset(seed=0)
    for _ in range(200):
        _, _, terminated, truncated, info = env.step([1, 1])
        _, _, _, _, want = local.step(np.array([1, 1]))
        if "final_obs" in want:
            break
    else:
        pytest.fail("no episode ended")
    assert isinstance(terminated, rlmesh.Tensor) and terminated.dtype == "bool"
    finals = info["final_obs"]  # an object array arrives as a plain list
    assert isinstance(finals, list) and len(finals) == 2
    for got, expected in zip(finals, want["final_obs"]):
        if expected is None:
            assert got is None
        else:
            assert isinstance(got, rlmesh.Tensor) and rnp.asarray(got).tolist() == expected.tolist()


def test_torch_vector_client_matches_local(server_pool: Any, clients: Any) -> None:
    kwargs: dict[str, Any] = {"num_envs": NUM_ENVS}
    env = clients(rtorch.RemoteVectorEnv, server_pool("cartpole_vec", **kwargs))
    local = core_envs.cartpole_vec(**kwargs)
    obs, _ = env.reset(seed=3)
    want, _ = local.reset(seed=3)
    assert isinstance(obs, torch.Tensor) and obs.dtype == torch.float32 and obs.tolist() == want.tolist()
    for step in range(40):
        actions = torch.tensor([step % 2, 1, 0])
        obs, reward, terminated, truncated, _ = env.step(actions)
        want, want_reward, want_terminated, want_truncated, _ = local.step(actions.numpy())
        assert obs.tolist() == want.tolist() and reward.tolist() == want_reward.tolist()
        assert terminated.dtype == torch.bool and terminated.tolist() == want_terminated.tolist()
        assert truncated.tolist() == want_truncated.tolist()
    sample = env.action_space.sample()
    assert isinstance(sample, torch.Tensor) and tuple(sample.shape) == (NUM_ENVS,)
    assert env.action_space.contains(sample)
