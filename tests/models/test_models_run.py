"""Model.run against local, remote (another process) and vector envs: reproducibility and options."""

from __future__ import annotations

import json
import time
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium import spaces

import rlmesh
import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh import EpisodeResult, ModelError, ModelSpec, RunResult, SpecMismatchError, connect
from rlmesh.wire.spaces import DiscreteSpec

SEEDS = list(range(12))
AUTORESET_MODES = ["NextStep", "SameStep", "Disabled"]


def policy(observation: Any) -> int:
    """Deterministic and mediocre, so CartPole returns differ from seed to seed."""
    return int(observation[2] > 0)


def batched_policy(observations: Any) -> Any:
    return (np.asarray(observations)[:, 2] > 0).astype(np.int64)


def by_hand(seeds: list[int], max_steps: int | None = None) -> list[float]:
    """The reference: plain Gymnasium, reset(seed=s) and a loop."""
    env = gym.make("CartPole-v1")
    returns = []
    for seed in seeds:
        observation, _ = env.reset(seed=seed)
        total, steps = 0.0, 0
        while max_steps is None or steps < max_steps:
            observation, reward, terminated, truncated, _ = env.step(policy(observation))
            total += float(reward)
            steps += 1
            if terminated or truncated:
                break
        returns.append(total)
    env.close()
    return returns


@pytest.fixture(scope="module")
def expected() -> list[float]:
    returns = by_hand(SEEDS)
    assert len(set(returns)) > 3, "the reference policy must give seed-dependent returns"
    return returns


def cartpole_vec(num_envs: int = 4, autoreset: str = "NextStep") -> Any:
    return gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode(autoreset)})


# --- reproducibility -----------------------------------------------------------------------------


def test_local_env_matches_gymnasium_by_hand(expected: list[float]) -> None:
    result = rnp.Model(policy).run(gym.make("CartPole-v1"), seeds=SEEDS)
    assert result.returns == expected
    assert [e.seed for e in result.episodes] == SEEDS
    assert [e.index for e in result.episodes] == list(range(len(SEEDS)))
    assert all(e.steps == e.episode_return for e in result.episodes)  # CartPole pays 1 per step
    assert result.total_steps == sum(expected)
    assert result.mean_reward == pytest.approx(sum(expected) / len(SEEDS))


def test_remote_env_in_another_process_matches_by_hand(server_pool: Any, expected: list[float],
                                                       transport: str) -> None:
    address = server_pool("cartpole", transport)
    assert rnp.Model(policy).run(address, seeds=SEEDS).returns == expected
    again = rnp.Model(policy).run(address, seeds=SEEDS)  # the address's client was closed: reattach works
    assert again.returns == expected


def test_same_seeds_same_returns_with_a_remote_client(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("cartpole"))
    first = rnp.Model(policy).run(env, seeds=[3, 4, 5])
    second = rnp.Model(policy).run(env, seeds=[3, 4, 5])
    assert first.returns == second.returns == by_hand([3, 4, 5])
    assert not env.closed  # not opened by run(), so not closed by it


def test_plain_model_gets_rlmesh_tensors(server_pool: Any, expected: list[float]) -> None:
    seen: list[Any] = []

    def plain_policy(observation: Any) -> int:
        seen.append(observation)
        return int(observation.tolist()[2] > 0)

    assert rlmesh.Model(plain_policy).run(server_pool("cartpole"), seeds=SEEDS).returns == expected
    assert isinstance(seen[0], rlmesh.Tensor) and seen[0].shape == (4,)
    seen.clear()
    assert rlmesh.Model(plain_policy).run(gym.make("CartPole-v1"), seeds=SEEDS[:3]).returns == expected[:3]
    assert isinstance(seen[0], rlmesh.Tensor)  # local NumPy observations are converted too


def test_torch_model_gets_torch_tensors(server_pool: Any, expected: list[float]) -> None:
    seen: list[Any] = []

    def torch_policy(observation: Any) -> Any:
        seen.append(observation)
        return (observation[2] > 0).long()  # a 0-d torch tensor as the action

    local = rtorch.Model(torch_policy).run(gym.make("CartPole-v1"), seeds=SEEDS)
    assert local.returns == expected
    assert all(isinstance(o, torch.Tensor) and o.dtype == torch.float32 for o in seen)
    seen.clear()
    remote = rtorch.Model(torch_policy).run(server_pool("cartpole"), seeds=SEEDS)
    assert remote.returns == expected
    assert all(isinstance(o, torch.Tensor) for o in seen)


def test_numpy_model_on_a_torch_client_gets_numpy(server_pool: Any, clients: Any) -> None:
    env = clients(rtorch.RemoteEnv, server_pool("cartpole"))
    seen: list[Any] = []

    def numpy_policy(observation: Any) -> int:
        seen.append(observation)
        return policy(observation)

    assert rnp.Model(numpy_policy).run(env, seeds=[1, 2]).returns == by_hand([1, 2])
    assert all(isinstance(o, np.ndarray) for o in seen)


# --- vector envs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("autoreset", AUTORESET_MODES)
def test_remote_vector_lanes_equal_single_runs(server_pool: Any, expected: list[float], autoreset: str) -> None:
    address = server_pool("cartpole_vec", num_envs=4, autoreset=autoreset)
    batched = rnp.Model(batched_policy, batched=True).run(address, seeds=SEEDS)
    assert batched.returns == expected
    assert [e.seed for e in batched.episodes] == SEEDS
    assert sum(batched.returns) == sum(expected)
    per_lane = rnp.Model(policy).run(address, seeds=SEEDS)
    assert per_lane.returns == expected


@pytest.mark.parametrize("autoreset", AUTORESET_MODES)
def test_local_vector_lanes_equal_single_runs(expected: list[float], autoreset: str) -> None:
    env = cartpole_vec(4, autoreset)
    assert rnp.Model(batched_policy, batched=True).run(env, seeds=SEEDS).returns == expected
    assert rnp.Model(policy).run(env, seeds=SEEDS).returns == expected
    env.close()


def test_async_vector_env_lanes_equal_single_runs(expected: list[float]) -> None:
    env = gym.make_vec("CartPole-v1", num_envs=3, vectorization_mode="async")
    try:
        assert rnp.Model(batched_policy, batched=True).run(env, seeds=SEEDS).returns == expected
    finally:
        env.close()


def test_plain_and_torch_models_on_remote_vector_envs(server_pool: Any, expected: list[float]) -> None:
    address = server_pool("cartpole_vec", num_envs=4, autoreset="NextStep")

    def plain_policy(observation: Any) -> int:
        assert isinstance(observation, rlmesh.Tensor) and observation.shape == (4,)
        return int(observation.tolist()[2] > 0)

    assert rlmesh.Model(plain_policy).run(address, seeds=SEEDS).returns == expected
    torch_batched = rtorch.Model(lambda obs: (obs[:, 2] > 0).long(), batched=True)
    assert torch_batched.run(address, seeds=SEEDS).returns == expected


@pytest.mark.parametrize("autoreset", AUTORESET_MODES)
def test_unseeded_vector_episodes_never_count_reset_steps(server_pool: Any, autoreset: str) -> None:
    address = server_pool("cartpole_vec", num_envs=4, autoreset=autoreset)
    result = rnp.Model(batched_policy, batched=True).run(address, episodes=10)
    assert result.num_episodes == 10 and [e.seed for e in result.episodes] == [None] * 10
    # CartPole pays 1 per step: a counted reset step (reward 0) would break this equality.
    assert all(e.steps == e.episode_return and e.steps > 0 for e in result.episodes)
    assert all(e.terminated or e.truncated for e in result.episodes)


def test_fewer_episodes_than_lanes(expected: list[float]) -> None:
    result = rnp.Model(batched_policy, batched=True).run(cartpole_vec(4), seeds=SEEDS[:2])
    assert result.returns == expected[:2]


def test_batched_policy_called_once_per_step_per_lane_otherwise(server_pool: Any) -> None:
    address = server_pool("cartpole_vec", num_envs=4, autoreset="NextStep")
    calls = {"batched": 0, "lane": 0}

    def counting_batched(observations: Any) -> Any:
        calls["batched"] += 1
        assert observations.shape == (4, 4)
        return batched_policy(observations)

    def counting_lane(observation: Any) -> int:
        calls["lane"] += 1
        assert observation.shape == (4,)
        return policy(observation)

    batched = rnp.Model(counting_batched, batched=True).run(address, seeds=SEEDS)
    assert calls["batched"] == batched.step_latency.count == batched.predict_latency.count
    per_lane = rnp.Model(counting_lane).run(address, seeds=SEEDS)
    assert calls["lane"] == 4 * per_lane.step_latency.count == per_lane.predict_latency.count
    assert batched.returns == per_lane.returns


def test_batched_flag_can_come_from_the_source() -> None:
    class Agent:
        batched = True

        def predict(self, observations: Any) -> Any:
            return batched_policy(observations)

    model = rnp.Model(Agent())
    assert model.batched
    assert model.run(cartpole_vec(2), seeds=[0, 1]).returns == by_hand([0, 1])


# --- spec checks ---------------------------------------------------------------------------------


def test_spec_mismatch_is_reported_before_the_first_step(server_pool: Any) -> None:
    calls: list[Any] = []
    spec = ModelSpec(observation_space=spaces.Box(-1, 1, (3,), np.float32),
                     action_space=DiscreteSpec(3))
    model = rnp.Model(lambda o: calls.append(o) or 0, spec=spec)
    with pytest.raises(SpecMismatchError) as info:
        model.run(server_pool("cartpole"), seeds=[0])
    message = str(info.value)
    assert "Box(float32, shape=(3,))" in message and "Box(float32, shape=(4,))" in message
    assert "Discrete(3)" in message and "Discrete(2)" in message
    assert "CartPole-v1" in message
    assert calls == []


def test_matching_spec_runs_and_vector_specs_are_per_lane() -> None:
    env = gym.make("CartPole-v1")
    spec = ModelSpec(observation_space=env.observation_space, action_space=env.action_space)
    assert rnp.Model(policy, spec=spec).run(env, seeds=[0]).returns == by_hand([0])
    assert rnp.Model(batched_policy, spec=spec, batched=True).run(cartpole_vec(2), seeds=[0]).returns == by_hand([0])
    with pytest.raises(SpecMismatchError, match="action space"):
        rnp.Model(policy, spec=ModelSpec(action_space=spaces.Box(0, 1, (1,)))).run(env, seeds=[0])


def test_spec_accepts_only_spaces() -> None:
    with pytest.raises(TypeError):
        ModelSpec(observation_space="Box(4)")
    with pytest.raises(TypeError, match="ModelSpec"):
        rnp.Model(policy, spec={"observation_space": None})  # type: ignore[arg-type]


# --- failures ------------------------------------------------------------------------------------


def test_model_error_names_episode_and_step_and_env_stays_usable(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteEnv, server_pool("cartpole"))
    lengths = [int(r) for r in rnp.Model(lambda o: 1).run(env, seeds=[0, 1]).returns]
    calls = {"n": 0}

    def predict(observation: Any) -> int:
        calls["n"] += 1
        if calls["n"] == lengths[0] + 5 + 1:  # the 6th call of episode 1
            raise RuntimeError("policy exploded")
        return 1

    with pytest.raises(ModelError) as info:
        rnp.Model(predict).run(env, seeds=[0, 1])
    assert "episode 1 (seed 1) at step 5" in str(info.value) and "policy exploded" in str(info.value)
    assert (info.value.episode, info.value.step) == (1, 5)
    assert isinstance(info.value.__cause__, RuntimeError)
    # No request was half sent: the same client keeps working.
    observation, _ = env.reset(seed=7)
    assert env.step(0)[0].shape == (4,)
    assert rnp.Model(policy).run(env, seeds=[7]).returns == by_hand([7])


def test_model_error_on_a_vector_lane_names_lane_and_episode(server_pool: Any, clients: Any) -> None:
    env = clients(rnp.RemoteVectorEnv, server_pool("cartpole_vec", num_envs=4, autoreset="NextStep"))

    def predict(observation: Any) -> int:
        if observation[0] == -999:  # never
            return 0
        raise ValueError("bad lane")

    with pytest.raises(ModelError, match=r"episode 0 \(seed 10\) at step 0 \(lane 0\)"):
        rnp.Model(predict).run(env, seeds=[10, 11])
    with pytest.raises(ModelError, match=r"batch of episodes 0 \(seed 10\) at step 0, 1 \(seed 11\)"):
        rnp.Model(predict, batched=True).run(env, seeds=[10, 11])
    assert rnp.Model(batched_policy, batched=True).run(env, seeds=[10, 11]).returns == by_hand([10, 11])


def test_bad_arguments_are_refused_clearly() -> None:
    env = gym.make("CartPole-v1")
    with pytest.raises(ValueError, match="3 seeds for 2 episodes"):
        rnp.Model(policy).run(env, seeds=[1, 2, 3], episodes=2)
    with pytest.raises(ValueError, match="max_steps"):
        rnp.Model(policy).run(env, max_steps=0)
    with pytest.raises(TypeError, match="predict"):
        rnp.Model(42)
    with pytest.raises(TypeError, match="cannot run a model on int"):
        rnp.Model(policy).run(5)
    with pytest.raises(RuntimeError, match="own seeds"):  # native vector envs cannot seed lanes
        rnp.Model(batched_policy, batched=True).run(gym.make_vec("CartPole-v1", 2), seeds=[0, 1])


# --- options -------------------------------------------------------------------------------------


def test_max_steps_truncates_every_episode(expected: list[float], server_pool: Any) -> None:
    for env in (gym.make("CartPole-v1"), cartpole_vec(4), server_pool("cartpole_vec", num_envs=4,
                                                                      autoreset="SameStep")):
        model = rnp.Model(batched_policy, batched=True) if not isinstance(env, gym.Env) else rnp.Model(policy)
        result = model.run(env, seeds=SEEDS, max_steps=20)
        assert result.returns == by_hand(SEEDS, max_steps=20)
        capped = [e for e in result.episodes if e.steps == 20]
        assert capped and all(e.truncated and not e.terminated for e in capped)
        assert all(e.steps <= 20 for e in result.episodes)


def test_episodes_and_base_seed() -> None:
    env = gym.make("CartPole-v1")
    result = rnp.Model(policy).run(env, seeds=5, episodes=3)
    assert [e.seed for e in result.episodes] == [5, 6, 7]
    assert result.returns == by_hand([5, 6, 7])
    assert rnp.Model(policy).run(env, seeds=np.arange(5, 8)).returns == by_hand([5, 6, 7])
    assert rnp.Model(policy).run(env, seeds=np.int64(5), episodes=3).returns == by_hand([5, 6, 7])
    assert rnp.Model(policy).run(env).num_episodes == 1
    assert rnp.Model(policy).run(env, episodes=0).num_episodes == 0


def test_max_seconds_stops_the_run() -> None:
    def slow(observation: Any) -> int:
        time.sleep(0.005)
        return int(observation[2] + observation[3] > 0)  # balances: episodes last long

    begin = time.perf_counter()
    result = rnp.Model(slow).run(gym.make("CartPole-v1"), seeds=list(range(50)), max_seconds=0.5)
    assert time.perf_counter() - begin < 2.0
    assert 0 < result.num_episodes < 50
    assert result.episodes[-1].truncated
    vector = rnp.Model(slow).run(cartpole_vec(2), seeds=list(range(50)), max_seconds=0.5)
    assert 0 < vector.num_episodes < 50 and vector.duration < 2.0


def test_close_env_only_when_we_opened_it(server_pool: Any, clients: Any) -> None:
    address = server_pool("cartpole")
    rnp.Model(policy).run(address, seeds=[0])
    env = clients(rnp.RemoteEnv, address)  # would be refused if run() had not closed its client
    rnp.Model(policy).run(env, seeds=[0])
    assert not env.closed
    rnp.Model(policy).run(env, seeds=[0], close_env=True)
    assert env.closed


def test_connect_returns_the_served_kind(server_pool: Any) -> None:
    single = connect(server_pool("cartpole"), backend="numpy")
    vector = connect(server_pool("cartpole_vec", num_envs=4, autoreset="NextStep"), backend="torch")
    try:
        assert isinstance(single, rnp.RemoteEnv)
        assert isinstance(vector, rtorch.RemoteVectorEnv) and vector.num_envs == 4
    finally:
        single.close()
        vector.close()
    plain = connect(server_pool("cartpole"))
    assert type(plain) is rlmesh.RemoteEnv
    plain.close()
    with pytest.raises(ValueError, match="unknown backend"):
        connect("127.0.0.1:1", backend="jax")


# --- results -------------------------------------------------------------------------------------


class SuccessEnv(gym.Env[np.ndarray, int]):
    """Three-step episodes that succeed on even seeds (reported as info["is_success"])."""

    observation_space = spaces.Box(-1, 1, (1,), np.float32)
    action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._success, self._t = (seed or 0) % 2 == 0, 0
        return np.zeros(1, np.float32), {}

    def step(self, action: int) -> Any:
        self._t += 1
        done = self._t == 3
        info = {"is_success": self._success} if done else {}
        return np.zeros(1, np.float32), 1.0, done, False, info


def test_success_rate_from_info_single_and_vector() -> None:
    result = rnp.Model(lambda o: 0).run(SuccessEnv(), seeds=[0, 1, 2, 3])
    assert [e.success for e in result.episodes] == [True, False, True, False]
    assert result.success_rate == 0.5
    for mode in AUTORESET_MODES:
        vector = gym.vector.SyncVectorEnv([SuccessEnv, SuccessEnv],
                                          autoreset_mode=gym.vector.AutoresetMode(mode))
        lanes = rnp.Model(lambda o: 0).run(vector, seeds=[0, 1, 2, 4, 6])
        assert [e.success for e in lanes.episodes] == [True, False, True, True, True], mode
        assert lanes.success_rate == 0.8
    assert rnp.Model(policy).run(gym.make("CartPole-v1"), seeds=[0]).success_rate is None


def test_run_result_dict_json_and_repr(server_pool: Any) -> None:
    result = rnp.Model(policy).run(server_pool("cartpole"), seeds=[0, 1])
    data = json.loads(result.to_json())
    assert data == result.to_dict()
    assert data["num_episodes"] == 2 and data["total_steps"] == result.total_steps
    assert [e["return"] for e in data["episodes"]] == result.returns
    assert set(data["episodes"][0]) == {"index", "seed", "steps", "return", "terminated", "truncated",
                                        "success", "duration"}
    for key in ("predict_latency_ms", "step_latency_ms"):
        stats = data[key]
        assert stats["count"] == result.total_steps
        assert 0 < stats["p50"] <= stats["p95"] <= stats["p99"]
    assert result.steps_per_second > 0
    text = repr(result)
    assert "episodes=2" in text and "mean_reward=" in text and "p95" in text
    empty = RunResult(())
    assert (empty.mean_reward, empty.success_rate, empty.total_steps) == (0.0, None, 0)
    assert EpisodeResult(0, None, 3, 3.0, True, False).to_dict()["return"] == 3.0
