"""Exact conversion between Gymnasium spaces and native space specs (needs NumPy and Gymnasium)."""

from __future__ import annotations

import functools
from typing import Any

from rlmesh.wire.spaces import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    MultiBinarySpec,
    MultiDiscreteSpec,
    SpaceSpec,
    TextSpec,
    TupleSpec,
)
from rlmesh.wire.tensor import Tensor

__all__ = ["spec_from_gymnasium", "gymnasium_from_spec", "stack"]


def _tensor(array: Any) -> Tensor:
    import numpy as np

    array = np.asarray(array)  # not ascontiguousarray: that turns 0-d bounds into shape (1,)
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return Tensor(array.tobytes(), array.dtype.name, array.shape)


def _array(tensor: Tensor) -> Any:
    from rlmesh.wire.arrays import asarray

    return asarray(tensor)


def _dtype_name(space: Any) -> str:
    return str(space.dtype.name)


def spec_from_gymnasium(space: Any) -> SpaceSpec:
    """Describe a Gymnasium space exactly; raises ``TypeError`` for unsupported kinds."""
    from gymnasium import spaces

    if isinstance(space, spaces.Box):
        return BoxSpec(_tensor(space.low), _tensor(space.high), tuple(space.shape), _dtype_name(space))
    if isinstance(space, spaces.Discrete):
        return DiscreteSpec(int(space.n), int(space.start), _dtype_name(space))
    if isinstance(space, spaces.MultiBinary):
        return MultiBinarySpec(tuple(space.shape), _dtype_name(space))
    if isinstance(space, spaces.MultiDiscrete):
        return MultiDiscreteSpec(_tensor(space.nvec), _tensor(space.start), _dtype_name(space))
    if isinstance(space, spaces.Text):
        charset = "".join(sorted(space.character_set))
        return TextSpec(space.max_length, space.min_length, charset)
    if isinstance(space, spaces.Dict):
        return DictSpec({str(k): spec_from_gymnasium(v) for k, v in space.spaces.items()})
    if isinstance(space, spaces.Tuple):
        return TupleSpec(tuple(spec_from_gymnasium(s) for s in space.spaces))
    raise TypeError(
        f"{type(space).__name__} spaces cannot be served yet; supported: Box, Discrete, "
        "MultiBinary, MultiDiscrete, Text, Dict, Tuple"
    )


def gymnasium_from_spec(spec: SpaceSpec, seed: int | None = None) -> Any:
    """Build the Gymnasium space a spec describes, with identical dtype, shape and bounds."""
    from gymnasium import spaces

    if isinstance(spec, BoxSpec):
        low = _array(spec.low)
        return spaces.Box(low, _array(spec.high), spec.shape, low.dtype, seed=seed)
    if isinstance(spec, DiscreteSpec):
        return spaces.Discrete(spec.n, seed=seed, start=spec.start, dtype=spec.dtype)
    if isinstance(spec, MultiBinarySpec):
        return spaces.MultiBinary(list(spec.shape) if len(spec.shape) != 1 else spec.shape[0], seed=seed)
    if isinstance(spec, MultiDiscreteSpec):
        return spaces.MultiDiscrete(_array(spec.nvec), spec.dtype, seed=seed, start=_array(spec.start))
    if isinstance(spec, TextSpec):
        kwargs: dict[str, Any] = {"charset": spec.charset} if spec.charset else {}
        return spaces.Text(spec.max_length, min_length=spec.min_length, seed=seed, **kwargs)
    if isinstance(spec, DictSpec):
        return spaces.Dict({k: gymnasium_from_spec(v) for k, v in spec.spaces.items()}, seed=seed)
    if isinstance(spec, TupleSpec):
        return spaces.Tuple(tuple(gymnasium_from_spec(s) for s in spec.spaces), seed=seed)
    raise TypeError(f"not a space spec: {spec!r}")


@functools.cache
def _array_spaces() -> tuple[type, ...]:
    from gymnasium import spaces

    return (spaces.Box, spaces.Discrete, spaces.MultiDiscrete, spaces.MultiBinary)


def stack(space: Any, items: list[Any], n: int) -> Any:
    """Batch ``n`` per-env values of ``space`` the way Gymnasium vector envs expect them."""
    if type(space) in _array_spaces():
        import numpy as np

        # Gymnasium's np.stack into a zeroed batch, minus np.stack's own Python-level checks:
        # the same shape checks and same-kind casting, a few microseconds less per call.
        batch = np.zeros((n, *space.shape), dtype=space.dtype)
        return np.concatenate([np.asarray(item)[np.newaxis] for item in items], axis=0, out=batch)
    from gymnasium.vector.utils import concatenate, create_empty_array

    out: Any = create_empty_array(space, n=n)
    return concatenate(space, items, out)
