"""Space specs round-trip exactly against Gymnasium's own spaces, locally and over the wire."""

from __future__ import annotations

from typing import Any

import core_envs
import numpy as np
import pytest
from gymnasium import spaces

import rlmesh
from rlmesh import Tensor
from rlmesh.backends.gym_spaces import gymnasium_from_spec, spec_from_gymnasium
from rlmesh.numpy import RemoteEnv, asarray
from rlmesh.wire import codec
from rlmesh.wire.spaces import Space, TextSpec, space_from_spec, spec_from_wire, spec_to_wire

ZOO = core_envs.space_zoo()


def assert_same_space(got: Any, want: Any) -> None:
    """Structural equality stricter than Gymnasium's ``==`` (which uses allclose for bounds)."""
    assert type(got) is type(want), (got, want)
    assert got == want
    if isinstance(want, spaces.Box):
        assert got.dtype == want.dtype and got.shape == want.shape
        assert got.low.dtype == want.low.dtype and got.high.dtype == want.high.dtype
        np.testing.assert_array_equal(got.low, want.low, strict=True)
        np.testing.assert_array_equal(got.high, want.high, strict=True)
        assert got.bounded_below.tolist() == want.bounded_below.tolist()
        assert got.bounded_above.tolist() == want.bounded_above.tolist()
    elif isinstance(want, spaces.Discrete):
        assert (got.n, got.start, got.dtype) == (want.n, want.start, want.dtype)
    elif isinstance(want, spaces.MultiBinary):
        assert (got.n, got.shape, got.dtype) == (want.n, want.shape, want.dtype)
    elif isinstance(want, spaces.MultiDiscrete):
        assert got.dtype == want.dtype and got.shape == want.shape
        np.testing.assert_array_equal(got.nvec, want.nvec, strict=True)
        np.testing.assert_array_equal(got.start, want.start, strict=True)
    elif isinstance(want, spaces.Text):
        assert (got.min_length, got.max_length) == (want.min_length, want.max_length)
        assert got.character_set == want.character_set
    elif isinstance(want, spaces.Dict):
        assert list(got.spaces) == list(want.spaces)
        for key in want.spaces:
            assert_same_space(got[key], want[key])
    elif isinstance(want, spaces.Tuple):
        assert len(got) == len(want)
        for g, w in zip(got, want):
            assert_same_space(g, w)


def to_numpy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return asarray(value)
    if isinstance(value, dict):
        return {k: to_numpy(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(to_numpy(v) for v in value)
    return value


@pytest.mark.parametrize("name", sorted(ZOO))
def test_spec_round_trips_to_an_identical_gymnasium_space(name: str) -> None:
    space = ZOO[name]
    spec = spec_from_gymnasium(space)
    wire_spec = spec_from_wire(codec.decode(codec.encode(spec_to_wire(spec))))
    assert wire_spec == spec
    assert_same_space(gymnasium_from_spec(wire_spec), space)


@pytest.mark.parametrize("name", sorted(ZOO))
def test_plain_space_samples_belong_to_both_spaces_and_seeding_reproduces(name: str) -> None:
    gym_space = ZOO[name]
    plain = space_from_spec(spec_from_gymnasium(gym_space))
    assert isinstance(plain, Space)
    plain.seed(123)
    first = [plain.sample() for _ in range(20)]
    for value in first:
        assert plain.contains(value), value
        assert gym_space.contains(to_numpy(value)), (value, gym_space)
    plain.seed(123)
    assert [plain.sample() for _ in range(20)] == first
    plain.seed(124)
    assert [plain.sample() for _ in range(20)] != first


@pytest.mark.parametrize("name", sorted(ZOO))
def test_plain_space_rejects_values_from_outside(name: str) -> None:
    plain = space_from_spec(spec_from_gymnasium(ZOO[name]))
    outsiders: list[Any] = [None, "not in any space" * 3, {"x": 1}, (1, 2, 3, 4)]
    for value in outsiders:
        assert not plain.contains(value), value


def test_plain_space_bounds_are_enforced() -> None:
    box = space_from_spec(spec_from_gymnasium(spaces.Box(-1.0, 1.0, (2,), np.float32)))
    assert Tensor(np.array([0.5, -1.0], np.float32).tobytes(), "float32", (2,)) in box
    assert Tensor(np.array([0.5, 1.5], np.float32).tobytes(), "float32", (2,)) not in box
    assert Tensor(np.zeros(3, np.float32).tobytes(), "float32", (3,)) not in box
    discrete = space_from_spec(spec_from_gymnasium(spaces.Discrete(3, start=-7)))
    assert [v in discrete for v in (-8, -7, -5, -4, True)] == [False, True, True, False, False]
    md = space_from_spec(spec_from_gymnasium(spaces.MultiDiscrete([2, 3], start=[5, -1])))
    assert Tensor(np.array([6, 1], np.int64).tobytes(), "int64", (2,)) in md
    assert Tensor(np.array([7, 1], np.int64).tobytes(), "int64", (2,)) not in md
    text = space_from_spec(TextSpec(max_length=3, min_length=2, charset="ab"))
    assert [v in text for v in ("ab", "abab", "a", "ac")] == [True, False, False, False]


def test_unsupported_space_is_rejected_with_its_name() -> None:
    graph = spaces.Graph(node_space=spaces.Discrete(3), edge_space=None)
    with pytest.raises(TypeError, match="Graph"):
        spec_from_gymnasium(graph)


def test_nested_plain_seed_reproduces_every_child() -> None:
    plain = space_from_spec(spec_from_gymnasium(core_envs.nested_space()))
    seeds = plain.seed(7)
    assert seeds[0] == 7 and len(seeds) > 1
    a = plain.sample()
    plain.seed(7)
    assert plain.sample() == a
    assert plain.sample() != a  # the stream moves on


@pytest.mark.parametrize("name", ["everything", "tuple"])
def test_spaces_over_the_wire(name: str, server_pool: Any, clients: Any) -> None:
    """A remote client sees the server's spaces exactly, and their samples are valid actions."""
    space = ZOO[name]
    address = server_pool("space", space=name)
    env = clients(RemoteEnv, address)
    assert_same_space(env.observation_space, space)
    assert_same_space(env.action_space, space)
    assert env.observation_space_spec == spec_from_gymnasium(space)
    obs, _ = env.reset(seed=5)
    assert space.contains(as_space_value(space, obs))
    env.action_space.seed(0)
    for _ in range(3):
        action = env.action_space.sample()
        echoed, *_ = env.step(action)
        assert space.contains(as_space_value(space, echoed))
        assert_values_equal(echoed, action)
    # The same space through the dependency-free client: Tensor leaves, sampled actions accepted.
    env.close()
    plain = clients(rlmesh.RemoteEnv, address)
    assert isinstance(plain.action_space, Space)
    plain.action_space.seed(1)
    action = plain.action_space.sample()
    echoed, *_ = plain.step(action)
    assert _plain_equal(echoed, action), (echoed, action)


def as_space_value(space: Any, value: Any) -> Any:
    """A 0-d Box value arrives as a Python number; Gymnasium wants an array of its dtype."""
    if isinstance(space, spaces.Box) and space.shape == ():
        assert isinstance(value, float)
        return np.asarray(value, space.dtype)
    if isinstance(space, spaces.Dict):
        return {k: as_space_value(space[k], v) for k, v in value.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(as_space_value(s, v) for s, v in zip(space, value))
    return value


def _plain_equal(a: Any, b: Any) -> bool:
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_plain_equal(a[k], b[k]) for k in a)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(_plain_equal(x, y) for x, y in zip(a, b))
    if isinstance(b, Tensor) and b.shape == () and not isinstance(a, Tensor):
        return type(a) is float and a == asarray(b).item()  # 0-d tensors travel as primitives
    if isinstance(a, Tensor) and isinstance(b, Tensor):
        return a.shape == b.shape and np.array_equal(asarray(a), asarray(b))
    return bool(a == b)


def assert_values_equal(got: Any, want: Any) -> None:
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want)
        for key in want:
            assert_values_equal(got[key], want[key])
    elif isinstance(want, tuple):
        assert isinstance(got, tuple) and len(got) == len(want)
        for g, w in zip(got, want):
            assert_values_equal(g, w)
    elif isinstance(want, np.ndarray) and want.ndim == 0:  # scalar arrays travel as primitives
        assert type(got) is type(want.item()) and got == want.item()
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, want, strict=True)
    else:
        assert got == want and type(got) in (type(want), int, float, str)


def test_gymnasium_space_equality_is_not_fooled_by_near_bounds() -> None:
    """Guard for assert_same_space: a bound that differs slightly must fail it."""
    a = spaces.Box(0.0, 1.0, (2,), np.float64)
    b = spaces.Box(0.0, 1.0 + 1e-12, (2,), np.float64)
    with pytest.raises(AssertionError):
        assert_same_space(gymnasium_from_spec(spec_from_gymnasium(b)), a)


_STACK_CASES = {
    "box, cast to its dtype": (spaces.Box(0, 1, (3,), np.float32), [np.ones(3), np.zeros(3, np.float32)]),
    "discrete ints": (spaces.Discrete(3), [1, 2, np.int64(0)]),
    "discrete floats refused": (spaces.Discrete(3), [1.5, 2]),
    "box of the wrong shape refused": (spaces.Box(0, 1, (3,), np.float32), [np.ones(4), np.ones(4)]),
    "multi-discrete": (spaces.MultiDiscrete([2, 3]), [np.array([1, 2]), [0, 1]]),
    "multi-binary": (spaces.MultiBinary(2), [np.array([1, 0], np.int8), np.array([1, 1], np.int8)]),
    "dict (Gymnasium's own path)": (spaces.Dict({"a": spaces.Discrete(2)}), [{"a": 1}, {"a": 0}]),
}


@pytest.mark.parametrize("name", sorted(_STACK_CASES))
def test_stack_batches_exactly_as_gymnasium_does(name: str) -> None:
    from gymnasium.vector.utils import concatenate, create_empty_array

    from rlmesh.backends.gym_spaces import stack

    space, items = _STACK_CASES[name]

    def outcome(make: Any) -> Any:
        try:
            batch = make()
        except Exception as exc:  # the same refusal, whatever its wording
            return type(exc)
        return batch if isinstance(batch, dict) else (batch.dtype, batch.shape, batch.tolist())

    want = outcome(lambda: concatenate(space, items, create_empty_array(space, n=len(items))))
    got = outcome(lambda: stack(space, items, len(items)))
    if isinstance(want, dict):
        assert got.keys() == want.keys() and all(np.array_equal(got[k], want[k]) for k in want)
    else:
        assert got == want
