"""The multi-endpoint vector env against EnvServers in subprocesses (no Ray needed).

The reference is always one local Gymnasium ``SyncVectorEnv`` with the same lanes, seeds and
autoreset mode: results must match it exactly, step by step.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pytest
import scale_envs
import torch
from gymnasium.vector import AutoresetMode
from scale_compare import assert_equal

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh.client.multi import MultiEndpointVectorEnv
from rlmesh.errors import EnvironmentException

# Vector and single-env endpoints, interleaved: lanes 0-2, 3, 4-5, 6.
LAYOUT = [3, 1, 2, 1]
LANES = sum(LAYOUT)


def _specs(mode: str = "NextStep", **kwargs: Any) -> list[tuple[str, dict[str, Any]]]:
    return [("vector", {"num_envs": n, "autoreset": mode, **kwargs}) if n > 1 else ("single", kwargs)
            for n in LAYOUT]


def _addresses(servers: list[Any]) -> list[str]:
    return [s.address for s in servers]


@pytest.mark.parametrize("mode", [m.value for m in AutoresetMode])
def test_equals_one_vector_env_step_by_step(mode: str, serve: Any) -> None:
    servers = serve(*_specs(mode))
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(servers))
    local = scale_envs.vector(LANES, autoreset=mode)
    try:
        assert isinstance(env, rnp.MultiEndpointVectorEnv)
        assert env.num_envs == LANES
        assert env.metadata["autoreset_mode"] is AutoresetMode(mode)
        assert env.single_observation_space == local.single_observation_space
        assert env.single_action_space == local.single_action_space
        assert env.observation_space == local.observation_space
        assert env.action_space == local.action_space
        assert_equal(env.reset(seed=5), local.reset(seed=5))
        rng = np.random.default_rng(3)
        endings = 0
        saw_final = False
        for _ in range(150):
            actions = rng.integers(0, 2, LANES)
            got, want = env.step(actions), local.step(actions)
            assert_equal(got, want)
            done = want[2] | want[3]
            endings += int(done.sum())
            saw_final |= "final_obs" in want[4]
            if mode == AutoresetMode.DISABLED.value and done.any():
                options = {"reset_mask": done}
                assert_equal(env.reset(options=dict(options)), local.reset(options=dict(options)))
        assert endings >= LANES  # every kind of lane went through its autoreset
        assert saw_final == (mode == AutoresetMode.SAME_STEP.value)
    finally:
        env.close()
        local.close()


def test_seed_lists_and_reset_masks(serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(*_specs())))
    local = scale_envs.vector(LANES)
    try:
        seeds = [100 + 7 * i for i in range(LANES)]
        assert_equal(env.reset(seed=seeds), local.reset(seed=seeds))
        assert_equal(env.reset(seed=np.int64(9)), local.reset(seed=9))
        mask = np.array([False, True, False, True, False, False, True])
        assert_equal(env.reset(seed=1, options={"reset_mask": mask}),
                     local.reset(seed=1, options={"reset_mask": mask.copy()}))
        with pytest.raises(ValueError, match=f"got 3 seeds for {LANES} lanes"):
            env.reset(seed=[1, 2, 3])
        with pytest.raises(ValueError, match="reset_mask"):
            env.reset(options={"reset_mask": np.zeros(LANES, dtype=bool)})
    finally:
        env.close()
        local.close()


def test_actions_as_a_list_per_lane_and_wrong_batches(serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(*_specs())))
    local = scale_envs.vector(LANES)
    try:
        assert_equal(env.reset(seed=0), local.reset(seed=0))
        actions = [i % 2 for i in range(LANES)]
        assert_equal(env.step(actions), local.step(np.array(actions)))
        with pytest.raises(ValueError, match=f"3 actions for {LANES} lanes"):
            env.step(np.zeros(3, dtype=np.int64))
        with pytest.raises(ValueError, match=f"got 2 actions for {LANES} lanes"):
            env.step([0, 1])
    finally:
        env.close()
        local.close()


def test_plain_and_torch_flavours_carry_the_same_values(serve: Any) -> None:
    servers = serve(*_specs())
    reference = rnp.RemoteVectorEnv.from_endpoints(_addresses(servers))
    obs, info = reference.reset(seed=2)
    stepped = reference.step(np.ones(LANES, dtype=np.int64))
    reference.close()

    plain = rlmesh.RemoteVectorEnv.from_endpoints(_addresses(servers))
    try:
        assert isinstance(plain, MultiEndpointVectorEnv)
        got_obs, got_info = plain.reset(seed=2)
        assert isinstance(got_obs, rlmesh.Tensor)
        assert_equal(rnp.asarray(got_obs), obs)
        assert_equal(rnp.asarray(got_info["vec"]), info["vec"])
        assert got_info["tag"] == list(info["tag"])  # object arrays arrive as lists
        rewards = plain.step([1] * LANES)[1]
        assert_equal(rnp.asarray(rewards), stepped[1])
    finally:
        plain.close()

    flavoured = rtorch.RemoteVectorEnv.from_endpoints(_addresses(servers))
    try:
        got_obs, _ = flavoured.reset(seed=2)
        assert isinstance(got_obs, torch.Tensor)
        np.testing.assert_array_equal(got_obs.numpy(), obs)
        got_obs, rewards, terminated, _, _ = flavoured.step(torch.ones(LANES, dtype=torch.int64))
        np.testing.assert_array_equal(got_obs.numpy(), stepped[0])
        assert terminated.dtype == torch.bool and rewards.dtype == torch.float64
    finally:
        flavoured.close()


def test_steps_go_to_every_endpoint_at_once(serve: Any) -> None:
    servers = serve(*[("single", {"step_sleep": 0.3})] * 4)
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(servers))
    try:
        env.reset(seed=0)
        started = time.monotonic()
        env.step(np.zeros(4, dtype=np.int64))
        elapsed = time.monotonic() - started
        assert elapsed < 0.9, f"4 endpoints of 0.3 s steps took {elapsed:.2f} s: round trips were serial"
    finally:
        env.close()


def test_render_routes_to_the_lane(serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(*_specs(render_mode="rgb_array"))))
    local = scale_envs.vector(LANES, render_mode="rgb_array")
    try:
        env.reset(seed=4)
        local.reset(seed=4)
        for _ in range(3):
            env.step(np.ones(LANES, dtype=np.int64))
            local.step(np.ones(LANES, dtype=np.int64))
        for lane in range(LANES):
            np.testing.assert_array_equal(env.render(env_index=lane), local.envs[lane].render())
        with pytest.raises(ValueError, match="out of range"):
            env.render(env_index=LANES)
    finally:
        env.close()
        local.close()


def test_endpoints_must_serve_the_same_spaces_and_mode(serve: Any) -> None:
    cart, pendulum, same_step = serve(("single", {}), ("pendulum", {}),
                                      ("vector", {"num_envs": 2, "autoreset": "SameStep"}))
    next_step, = serve(("vector", {"num_envs": 2}))
    with pytest.raises(ValueError, match=f"{pendulum.address}.*single_observation_space.*{cart.address}"):
        rnp.RemoteVectorEnv.from_endpoints([cart.address, pendulum.address])
    with pytest.raises(ValueError, match="different autoreset modes"):
        rnp.RemoteVectorEnv.from_endpoints([same_step.address, next_step.address])
    with pytest.raises(ValueError, match="autoreset in mode 'SameStep'"):
        rnp.RemoteVectorEnv.from_endpoints([same_step.address], autoreset_mode="NextStep")
    with pytest.raises(ValueError, match="non-empty list"):
        rnp.RemoteVectorEnv.from_endpoints([])
    # Failed constructions detached from every server: a new client can attach to each at once.
    env = rnp.RemoteVectorEnv.from_endpoints([cart.address, same_step.address], connect_timeout=2.0)
    assert env.autoreset_mode == "SameStep" and env.num_envs == 3
    env.close()


@pytest.mark.parametrize("stuck_first", [False, True], ids=["stuck-last", "stuck-first"])
def test_a_failing_endpoint_is_named_without_waiting_for_a_stuck_one(serve: Any, stuck_first: bool) -> None:
    healthy, failing, stuck = serve(("vector", {"num_envs": 2}), ("single", {"fail_at": 3}),
                                    ("single", {"sleep_at": 3}))
    order = [stuck, healthy, failing] if stuck_first else [healthy, failing, stuck]
    env = rnp.RemoteVectorEnv.from_endpoints([server.address for server in order])
    lane = 3 if stuck_first else 2
    try:
        env.reset(seed=0)
        for _ in range(2):
            env.step(np.zeros(4, dtype=np.int64))
        started = time.monotonic()
        with pytest.raises(EnvironmentException) as caught:
            env.step(np.zeros(4, dtype=np.int64))
        assert time.monotonic() - started < 5, "the error waited for the stuck endpoint"
        assert f"endpoint {failing.address} (lane {lane})" in str(caught.value)
        assert "env broke on purpose at step 3" in str(caught.value)
        assert caught.value.remote_type == "RuntimeError"
    finally:
        env.close()


def test_a_dead_server_is_named_at_once(serve: Any) -> None:
    servers = serve(*_specs())
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(servers))
    try:
        env.reset(seed=0)
        env.step(np.zeros(LANES, dtype=np.int64))
        servers[2].kill()
        started = time.monotonic()
        with pytest.raises(ConnectionError) as caught:
            for _ in range(50):
                env.step(np.zeros(LANES, dtype=np.int64))
        assert time.monotonic() - started < 5
        assert f"endpoint {servers[2].address} (lanes 4-5)" in str(caught.value)
        with pytest.raises(ConnectionError, match=servers[2].address):
            env.step(np.zeros(LANES, dtype=np.int64))  # stays broken, says so again
    finally:
        env.close()
    assert all(s.alive() for i, s in enumerate(servers) if i != 2)


def test_close_closes_what_the_env_owns(serve: Any) -> None:
    closed: list[str] = []

    class Owned:
        def close(self) -> None:
            closed.append("x")

    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(("single", {}))), owned=[Owned()])
    env.close()
    env.close()
    assert closed == ["x"] and env.closed
    with pytest.raises(ConnectionError, match="closed"):
        env.reset()


def test_dict_spaces_batch_and_split_like_one_vector_env(serve: Any) -> None:
    servers = serve(("dict_vec", {"num_envs": 2}), ("dict", {}), ("dict_vec", {"num_envs": 3}))
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(servers))
    local = scale_envs.make("dict_vec", num_envs=6)
    try:
        assert env.observation_space == local.observation_space
        assert env.action_space == local.action_space
        assert_equal(env.reset(seed=21), local.reset(seed=21))
        env.action_space.seed(0)
        endings = 0
        for _ in range(40):
            actions = env.action_space.sample()
            got, want = env.step(actions), local.step(actions)
            assert_equal(got, want)
            endings += int(want[2].sum())
        assert endings > 6
    finally:
        env.close()
        local.close()


def test_a_request_timeout_names_the_slow_endpoint(serve: Any) -> None:
    fast, slow = serve(("single", {}), ("single", {"sleep_at": 2}))
    env = rnp.RemoteVectorEnv.from_endpoints([fast.address, slow.address], request_timeout=1.0)
    try:
        env.reset(seed=0)
        env.step(np.zeros(2, dtype=np.int64))
        started = time.monotonic()
        with pytest.raises(TimeoutError, match=f"endpoint {slow.address} \\(lane 1\\): no reply within 1 s"):
            env.step(np.zeros(2, dtype=np.int64))
        assert time.monotonic() - started < 3
        with pytest.raises(ConnectionError, match="unusable"):
            env.step(np.zeros(2, dtype=np.int64))
    finally:
        env.close()


def test_a_stale_reply_on_another_endpoint_does_not_hide_a_dead_one(serve: Any) -> None:
    """A failed step leaves lane 1's reply unread; lane 0's server then dies. A request to lane 0
    alone must notice at once, not spin on the other endpoint's waiting reply."""
    failing, slow = serve(("single", {"fail_at": 3}), ("single", {"step_sleep": 0.3}))
    env = MultiEndpointVectorEnv([failing.address, slow.address], request_timeout=10)
    try:
        env.reset(seed=0)
        for _ in range(2):
            env.step(np.zeros(2, dtype=np.int64))
        with pytest.raises(EnvironmentException):
            env.step(np.zeros(2, dtype=np.int64))  # lane 0 fails at once; lane 1's reply comes later
        time.sleep(0.8)  # lane 1's reply is in, unread
        failing.kill()
        started = time.monotonic()
        with pytest.raises(ConnectionError, match=failing.address):
            env.call_lanes([0], "reset")
        assert time.monotonic() - started < 5
    finally:
        env.close()


@pytest.mark.parametrize("flavour", [rnp, rtorch], ids=["numpy", "torch"])
def test_observations_handed_out_are_the_callers_own(serve: Any, flavour: Any) -> None:
    """Writing into what recv() or reset() returned (obs /= 255) never changes the env's stored
    observations: a masked reset gives back the untouched lanes as they were. Each result here
    comes from one endpoint, whose stored batch it once was."""
    servers = serve(("single", {}), ("single", {}), ("vector", {"num_envs": 2}))
    lanes = flavour.MultiEndpointVectorEnv(_addresses(servers[:2]))
    one = flavour.MultiEndpointVectorEnv(_addresses(servers[2:]))
    try:
        lanes.reset(seed=0)
        lanes.send(np.zeros(1, dtype=np.int64), lane_ids=[0])
        obs = lanes.recv()[0]
        kept = np.asarray(obs).copy()
        obs += 1000
        again, _ = lanes.reset(options={"reset_mask": np.array([False, True])})
        np.testing.assert_array_equal(np.asarray(again[0]), kept[0])
        whole, _ = one.reset(seed=1)
        kept = np.asarray(whole).copy()
        whole += 1000
        again, _ = one.reset(options={"reset_mask": np.array([False, True])})
        np.testing.assert_array_equal(np.asarray(again[0]), kept[0])
    finally:
        lanes.close()
        one.close()
