"""Async lanes (EnvPool style) of the multi-endpoint vector env, against servers in subprocesses.

Each lane's trajectory must be exactly what one local env of that lane produces from the same
seed and actions, in whatever order the lanes come back.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import scale_envs
from gymnasium.vector import AutoresetMode
from scale_compare import assert_equal

import rlmesh.numpy as rnp
from rlmesh.errors import EnvironmentException

# Vector and single-env endpoints, interleaved: lanes 0-1, 2, 3.
LAYOUT = [2, 1, 1]
LANES = sum(LAYOUT)


def _addresses(servers: list[Any]) -> list[str]:
    return [s.address for s in servers]


def _play_to_the_end(env: Any) -> None:
    """Reset the one lane, then send it the same action until its episode terminates."""
    env.async_reset(seed=0)
    env.recv()
    terminated = False
    while not terminated:
        env.send(np.ones(1, dtype=np.int64))
        terminated = bool(env.recv()[2][0])


def _specs(mode: str = "NextStep", slow: float = 0.0) -> list[tuple[str, dict[str, Any]]]:
    """The last single-env endpoint steps ``slow`` seconds at a time."""
    specs: list[tuple[str, dict[str, Any]]] = [("vector", {"num_envs": 2, "autoreset": mode}), ("single", {})]
    return [*specs, ("single", {"step_sleep": slow})]


@pytest.mark.parametrize("mode", [AutoresetMode.NEXT_STEP.value, AutoresetMode.SAME_STEP.value])
def test_recv_of_all_lanes_equals_a_synchronous_step(mode: str, serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(*_specs(mode))))
    local = scale_envs.vector(LANES, autoreset=mode)
    try:
        env.async_reset(seed=3)
        obs, rewards, terminated, truncated, info = env.recv(min_lanes=LANES)
        want_obs, want_info = local.reset(seed=3)
        assert_equal(obs, want_obs)
        np.testing.assert_array_equal(info.pop("env_id"), np.arange(LANES, dtype=np.int32))
        assert_equal(info, want_info)
        assert not rewards.any() and not terminated.any() and not truncated.any()
        rng = np.random.default_rng(0)
        endings = 0
        for _ in range(120):
            actions = rng.integers(0, 2, LANES)
            env.send(actions)
            got = env.recv(min_lanes=LANES)
            np.testing.assert_array_equal(got[4].pop("env_id"), np.arange(LANES))
            want = local.step(actions)
            assert_equal(got, want)
            endings += int((want[2] | want[3]).sum())
        assert endings >= 2
    finally:
        env.close()
        local.close()


def test_a_slow_endpoint_does_not_hold_up_the_others(serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(*_specs(slow=0.5))))
    try:
        env.async_reset(seed=10)
        first = env.recv(min_lanes=LANES)
        trajectories: dict[int, list[Any]] = {lane: [first[0][lane]] for lane in range(LANES)}
        sent: dict[int, list[int]] = {lane: [0] for lane in range(LANES)}
        env.send(np.zeros(LANES, dtype=np.int64))
        started = time.monotonic()
        fast_rounds = 0
        while time.monotonic() - started < 0.4:  # the slow lane's step is still running
            obs, _, _, _, info = env.recv(min_lanes=1)
            lanes = info["env_id"].tolist()
            assert 3 not in lanes, "the slow lane came back before its step could have finished"
            for row, lane in enumerate(lanes):
                trajectories[lane].append(obs[row])
            assert 3 in env.lanes_in_flight
            actions = [(lane + fast_rounds) % 2 for lane in lanes]
            env.send(np.array(actions), lane_ids=lanes)
            for lane, action in zip(lanes, actions):
                sent[lane].append(action)
            fast_rounds += 1
        assert fast_rounds >= 5, f"only {fast_rounds} rounds of the fast lanes while the slow one stepped"
        while env.lanes_in_flight:  # collect everything still in flight
            obs, _, _, _, info = env.recv(min_lanes=1)
            for row, lane in enumerate(info["env_id"].tolist()):
                trajectories[lane].append(obs[row])
        assert len(trajectories[3]) == 2 and len(trajectories[0]) > 5
        for lane in range(LANES):  # every lane is exactly its own local env, autoreset NextStep
            local = scale_envs.single()
            want = [local.reset(seed=10 + lane)[0]]
            ended = False
            for action in sent[lane]:
                if ended:
                    want.append(local.reset()[0])
                    ended = False
                else:
                    obs, _, terminated, truncated, _ = local.step(action)
                    want.append(obs)
                    ended = terminated or truncated
            assert len(want) == len(trajectories[lane])
            for got, expected in zip(trajectories[lane], want):
                np.testing.assert_array_equal(got, expected)
    finally:
        env.close()


def test_finished_lanes_autoreset_on_their_next_send_as_in_envpool(serve: Any) -> None:
    (server,) = serve(("single", {}))
    env = rnp.RemoteVectorEnv.from_endpoints([server.address])
    try:
        _play_to_the_end(env)
        env.send(np.ones(1, dtype=np.int64))  # the reset step: the action is ignored
        obs, rewards, done, cut, info = env.recv()
        assert rewards.tolist() == [0.0] and not done[0] and not cut[0]
        assert info["t"].tolist() == [0]  # a fresh episode's reset info
    finally:
        env.close()


def test_misuse_is_refused_with_the_fix(serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(*_specs(slow=0.5))))
    try:
        with pytest.raises(gym.error.NoAsyncCallError, match="send\\(\\) actions or async_reset\\(\\) first"):
            env.recv()
        env.async_reset(seed=0)
        with pytest.raises(gym.error.AlreadyPendingCallError, match="lanes 0-3 are in flight.*recv"):
            env.step(np.zeros(LANES, dtype=np.int64))
        with pytest.raises(ValueError, match="between 1 and the 4 lanes"):
            env.recv(min_lanes=5)
        env.recv(min_lanes=LANES)
        with pytest.raises(ValueError, match="steps its lanes together.*missing lane 1"):
            env.send(np.zeros(1, dtype=np.int64), lane_ids=[0])
        with pytest.raises(ValueError, match="lane id 7 out of range"):
            env.send(np.zeros(1, dtype=np.int64), lane_ids=[7])
        with pytest.raises(ValueError, match="1 actions for 2 lanes"):
            env.send(np.zeros(1, dtype=np.int64), lane_ids=[2, 3])
        env.send(np.zeros(1, dtype=np.int64), lane_ids=[3])
        with pytest.raises(gym.error.AlreadyPendingCallError, match="still in flight"):
            env.send(np.zeros(1, dtype=np.int64), lane_ids=[3])
        with pytest.raises(TimeoutError, match="lane 3 stay in flight"):
            env.recv(timeout=0.05)
        obs, *_, info = env.recv(timeout=5.0)
        assert info["env_id"].tolist() == [3] and obs.shape == (1, 4)
        env.step(np.zeros(LANES, dtype=np.int64))  # nothing in flight: synchronous calls work again
    finally:
        env.close()


def test_a_failing_endpoint_is_named_and_the_other_lanes_stay_usable(serve: Any) -> None:
    env = rnp.RemoteVectorEnv.from_endpoints(_addresses(serve(("single", {}), ("single", {"fail_at": 2}))))
    try:
        env.async_reset(seed=0)
        env.recv(min_lanes=2)
        env.send(np.zeros(2, dtype=np.int64))
        env.recv(min_lanes=2)
        env.send(np.zeros(2, dtype=np.int64))
        with pytest.raises(EnvironmentException, match="lane 1.*broke on purpose"):
            env.recv(min_lanes=2)
        assert env.lanes_in_flight in ([0], [])
        if env.lanes_in_flight:
            assert env.recv()[4]["env_id"].tolist() == [0]
        env.send(np.zeros(1, dtype=np.int64), lane_ids=[0])
        assert env.recv()[4]["env_id"].tolist() == [0]
    finally:
        env.close()


def test_disabled_autoreset_lanes_reset_with_async_reset(serve: Any) -> None:
    (server,) = serve(("single", {}))
    env = rnp.RemoteVectorEnv.from_endpoints([server.address], autoreset_mode="Disabled")
    try:
        _play_to_the_end(env)
        with pytest.raises(ValueError, match="autoreset is disabled"):
            env.send(np.ones(1, dtype=np.int64))
        env.async_reset(seed=[5], lane_ids=[0])
        obs, *_ = env.recv()
        np.testing.assert_array_equal(obs[0], scale_envs.single().reset(seed=5)[0])
    finally:
        env.close()
