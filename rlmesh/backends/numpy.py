"""The NumPy backend: tensor leaves decode to NumPy arrays, spaces are Gymnasium spaces."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from rlmesh.backends.base import Backend, leaf_kind, wire_values
from rlmesh.wire.arrays import array_from_wire, asarray, numpy_dtype
from rlmesh.wire.codec import ObjectArray
from rlmesh.wire.spaces import BoxSpec, DictSpec, Space, SpaceSpec, TupleSpec, ValueAdapter

__all__ = ["BACKEND", "space_from_spec"]


def _object_array(array: ObjectArray) -> Any:
    result = np.empty(len(array.items), dtype=object)
    result[:] = array.items
    return result.reshape(array.shape)


def _numpy_leaf(value: Any) -> Any:
    kind = leaf_kind(value)
    if kind == "tensor":
        return asarray(value)
    if kind == "torch":
        return value.detach().cpu().numpy()
    return value


def space_from_spec(spec: SpaceSpec) -> Any:
    """The Gymnasium space a spec describes, or a NumPy-valued rlmesh :class:`~rlmesh.wire.spaces.Space`.

    The rlmesh space stands in where Gymnasium is not installed, and where Gymnasium cannot
    hold the spec exactly: a ``Box`` of a dtype Gymnasium refuses (bfloat16, complex), anywhere
    in the space. Its ``sample()`` and ``contains()`` work in NumPy values of the served dtype.
    """
    if _gymnasium_holds(spec):
        try:
            from rlmesh.backends.gym_spaces import gymnasium_from_spec

            return gymnasium_from_spec(spec)
        except ImportError:
            pass
    return Space(spec, ValueAdapter(BACKEND.convert, wire_values))


def _gymnasium_holds(spec: SpaceSpec) -> bool:
    """Whether a Gymnasium space can describe ``spec`` exactly (Box takes bool, int and float)."""
    if isinstance(spec, BoxSpec):
        dtype = numpy_dtype(spec.dtype)
        return any(np.issubdtype(dtype, kind) for kind in (np.integer, np.floating, np.bool_))
    if isinstance(spec, DictSpec):
        return all(_gymnasium_holds(s) for s in spec.spaces.values())
    if isinstance(spec, TupleSpec):
        return all(_gymnasium_holds(s) for s in spec.spaces)
    return True


def _adapt_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(metadata)
    mode = result.get("autoreset_mode")
    if isinstance(mode, str):
        try:
            from gymnasium.vector import AutoresetMode

            result["autoreset_mode"] = AutoresetMode(mode)
        except (ImportError, ValueError):
            pass
    return result


BACKEND = Backend("numpy", array_from_wire, _object_array, space_from_spec, _numpy_leaf, _adapt_metadata)
