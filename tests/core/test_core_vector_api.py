"""Gymnasium's vector API over the wire: async step/reset, call/get_attr/set_attr, per-lane render.

Servers run in other processes; the reference is the same Gymnasium env built locally.
"""

from __future__ import annotations

import time
from typing import Any

import core_envs
import gymnasium as gym
import numpy as np
import pytest
import torch
from core_compare import assert_equal as assert_same

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh.errors import AlreadyPendingCallError, EnvironmentException, NoAsyncCallError


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_step_async_and_wait_equal_step_of_the_local_env(mode: str, server_pool: Any, clients: Any) -> None:
    kwargs: dict[str, Any] = {"num_envs": 3, "mode": mode}
    env = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", **kwargs))
    local = core_envs.cartpole_vec(**kwargs)
    try:
        env.reset_async(seed=11)
        assert_same(env.reset_wait(), local.reset(seed=11))
        for step in range(40):
            actions = np.array([(step + lane) % 2 for lane in range(3)])
            env.step_async(actions)
            assert_same(env.step_wait(), local.step(actions))
    finally:
        local.close()


def test_misuse_raises_gymnasiums_errors(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", num_envs=2))
    env.reset(seed=0)
    with pytest.raises(gym.error.NoAsyncCallError, match="step_async"):
        env.step_wait()
    env.step_async(np.zeros(2, dtype=np.int64))
    for call in (lambda: env.step_async(np.zeros(2, dtype=np.int64)), lambda: env.reset(),
                 lambda: env.step(np.zeros(2, dtype=np.int64)), lambda: env.render(), lambda: env.get_attr("x"),
                 lambda: env.reset_async()):
        with pytest.raises(gym.error.AlreadyPendingCallError, match="step_wait") as raised:
            call()
        assert isinstance(raised.value, AlreadyPendingCallError) and raised.value.name == "step"
    with pytest.raises(NoAsyncCallError, match="reset_wait.*step call is under way"):
        env.reset_wait()
    obs, *_ = env.step_wait()  # the pending step survived every refused call
    assert obs.shape == (2, 4)
    env.reset_async(seed=1)
    with pytest.raises(gym.error.NoAsyncCallError):
        env.step_wait()
    env.reset_wait()


def test_step_wait_timeout_leaves_the_step_pending(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2, "delay": 0.2})
    env = clients(rnp.RemoteVectorEnv, server.address)
    env.reset(seed=0)
    env.step_async(np.ones(2, dtype=np.int64))
    with pytest.raises(TimeoutError, match="still under way.*step_wait"):
        env.step_wait(timeout=0.05)
    _, rewards, *_ = env.step_wait(timeout=5.0)
    np.testing.assert_array_equal(rewards, [0.0, 1.0])
    # The client is still usable: the timeout did not break the connection.
    np.testing.assert_array_equal(env.step(np.zeros(2, dtype=np.int64))[1], [0.0, 1.0])


def test_work_between_step_async_and_step_wait_overlaps_the_step(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2, "delay": 0.15})  # 0.3 s a step
    env = clients(rnp.RemoteVectorEnv, server.address)
    env.reset(seed=0)
    env.step_async(np.zeros(2, dtype=np.int64))
    time.sleep(0.5)  # "the policy's forward pass", longer than the step
    started = time.monotonic()
    env.step_wait()
    waited = time.monotonic() - started
    assert waited < 0.15, f"step_wait waited {waited:.2f} s: the step did not run during the caller's work"


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_call_get_attr_and_set_attr_run_on_every_lane(mode: str, spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 3, "mode": mode})
    env = clients(rnp.RemoteVectorEnv, server.address)
    assert env.get_attr("difficulty") == (0.0, 1.0, 2.0)
    scaled = env.call("scaled", np.arange(3, dtype=np.int32), factor=3)
    assert isinstance(scaled, tuple) and len(scaled) == 3
    for result in scaled:
        np.testing.assert_array_equal(result, [0, 3, 6])
        assert result.dtype == np.int32
    assert env.call("describe") == tuple({"difficulty": float(i), "tag": "tunable"} for i in range(3))
    env.set_attr("difficulty", [5.0, 6.0, 7.0])
    env.reset(seed=0)
    np.testing.assert_array_equal(env.step(np.zeros(3, dtype=np.int64))[1], [5.0, 6.0, 7.0])
    env.set_attr("difficulty", 9.0)  # one value for every lane
    assert env.get_attr("difficulty") == (9.0, 9.0, 9.0)
    with pytest.raises(ValueError, match="got 2 values for 3 lanes"):
        env.set_attr("difficulty", [1.0, 2.0])


def test_refused_names_missing_attributes_and_unsendable_values(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2})
    env = clients(rnp.RemoteVectorEnv, server.address)
    with pytest.raises(PermissionError, match="'_secret' is private"):
        env.get_attr("_secret")
    with pytest.raises(PermissionError, match="'__class__' is private"):
        env.call("__class__")
    with pytest.raises(PermissionError, match="use step\\(\\) directly"):
        env.call("step", [0, 0])
    with pytest.raises(PermissionError, match="observation_space.*connect time"):
        env.set_attr("observation_space", 1)
    with pytest.raises(AttributeError, match="no_such_thing"):
        env.get_attr("no_such_thing")
    with pytest.raises(EnvironmentException, match="boom on purpose"):
        env.call("boom")
    with pytest.raises(EnvironmentException, match="call reply cannot be sent"):
        env.call("unsendable")
    with pytest.raises(TypeError, match="arguments cannot be sent"):
        env.call("scaled", object())
    assert env.get_attr("difficulty") == (0.0, 1.0)  # the server serves on after every refusal


def test_allow_calls_false_refuses_every_call(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable", allow_calls=False)
    env = clients(rnp.RemoteEnv, server.address)
    for attempt in (lambda: env.get_attr("difficulty"), lambda: env.call("describe"),
                    lambda: env.set_attr("difficulty", 2.0)):
        with pytest.raises(PermissionError, match="allow_calls=False"):
            attempt()
    env.reset(seed=0)
    assert env.step(0)[1] == 1.0  # everything else is served as usual


def test_single_env_call_get_attr_set_attr_and_get_wrapper_attr(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable", env_kwargs={"difficulty": 2.5})
    env = clients(rnp.RemoteEnv, server.address)
    assert env.get_attr("difficulty") == 2.5
    np.testing.assert_array_equal(env.call("scaled", [1.0, 2.0]), [2.0, 4.0])
    env.set_attr("difficulty", 4.0)
    env.reset(seed=0)
    assert env.step(1)[1] == 4.0
    assert env.get_wrapper_attr("difficulty") == 4.0  # not a client attribute: asked of the server
    assert env.get_wrapper_attr("observation_space") is env.observation_space  # the client's own
    wrapped = gym.wrappers.RecordEpisodeStatistics(env)
    assert wrapped.get_wrapper_attr("difficulty") == 4.0  # through Gymnasium's wrapper chain


def test_render_returns_one_frame_per_lane(server_pool: Any, clients: Any) -> None:
    kwargs: dict[str, Any] = {"num_envs": 2, "render_mode": "rgb_array"}
    env = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", **kwargs))
    local = core_envs.cartpole_vec(**kwargs)
    try:
        env.reset(seed=[3, 30])
        local.reset(seed=[3, 30])
        frames, want = env.render(), local.render()
        assert isinstance(frames, tuple) and len(frames) == 2
        for got, expected in zip(frames, want):
            np.testing.assert_array_equal(got, expected)
        np.testing.assert_array_equal(env.render(env_index=1), want[1])
    finally:
        local.close()


def test_plain_and_torch_flavours(spawn_server: Any, clients: Any) -> None:
    server = spawn_server("tunable_vec", env_kwargs={"num_envs": 2})
    plain = clients(rlmesh.RemoteVectorEnv, server.address)
    plain.reset(seed=0)
    plain.step_async([1, 1])
    obs, rewards, *_ = plain.step_wait()
    assert isinstance(obs, rlmesh.Tensor) and rnp.asarray(rewards).tolist() == [0.0, 1.0]
    scaled = plain.call("scaled", rnp.from_array(np.ones(2, np.float32)))
    assert all(isinstance(part, rlmesh.Tensor) for part in scaled)
    plain.step_async([0, 0])
    with pytest.raises(AlreadyPendingCallError):
        plain.step_async([0, 0])
    plain.step_wait()
    plain.close()

    flavoured = clients(rtorch.RemoteVectorEnv, server.address)
    flavoured.reset_async(seed=0)
    obs, _ = flavoured.reset_wait()
    assert isinstance(obs, torch.Tensor)
    scaled = flavoured.call("scaled", torch.ones(2), factor=4.0)
    assert all(isinstance(part, torch.Tensor) and part.tolist() == [4.0, 4.0] for part in scaled)
    flavoured.set_attr("difficulty", 3.0)
    flavoured.step_async(torch.zeros(2, dtype=torch.int64))
    assert flavoured.step_wait()[1].tolist() == [3.0, 3.0]
