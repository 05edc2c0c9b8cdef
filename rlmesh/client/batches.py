"""Lanes as batches: Gymnasium's vector layout for values that come from many endpoints.

Splitting a batch of actions into the parts each endpoint takes, concatenating the endpoints'
observations, and merging their infos into ``info[key]`` arrays with ``info["_key"]`` masks,
exactly as Gymnasium's ``VectorEnv._add_info`` builds them. Everything here works on NumPy
values; :func:`to_backend` hands the result over in another flavour.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from rlmesh.backends import Backend
from rlmesh.wire.codec import ObjectArray
from rlmesh.wire.tensor import Tensor

__all__ = ["numpy_backend", "is_numpy_int", "to_numpy", "to_backend", "leading", "take", "rows", "item",
           "concat", "add_lane_info", "add_batch_info"]


@functools.cache
def _spaces() -> Any:
    """``gymnasium.spaces``, imported once (an import statement on every lane costs microseconds)."""
    from gymnasium import spaces

    return spaces


@functools.cache
def numpy_backend() -> Backend:
    from rlmesh.backends.numpy import BACKEND

    return BACKEND


def is_numpy_int(value: Any) -> bool:
    return type(value).__module__ == "numpy" and not hasattr(value, "__len__")


def to_numpy(value: Any) -> Any:
    """Caller values (NumPy, Torch, rlmesh Tensors; lists of per-lane values) as NumPy."""
    return numpy_backend().convert(value)


def to_backend(backend: Backend, value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            items = [to_backend(backend, item) for item in value.ravel().tolist()]
            make = backend.object_array
            return make(ObjectArray(value.shape, items)) if make is not None else items
        array = np.ascontiguousarray(value)
        if backend.tensor_factory is None:
            from rlmesh.wire.arrays import from_array

            return from_array(array) if array.ndim else Tensor(array.tobytes(), array.dtype.name, ())
        return backend.tensor_factory(array.dtype.name, array.shape, array.reshape(-1).view(np.uint8).data)
    if isinstance(value, dict):
        return {k: to_backend(backend, v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(to_backend(backend, v) for v in value)
    if isinstance(value, list):
        return [to_backend(backend, v) for v in value]
    return value


def leading(space: Any, batch: Any) -> int:
    spaces = _spaces()
    if isinstance(space, spaces.Dict):
        return leading(next(iter(space.spaces.values())), batch[next(iter(space.spaces))])
    if isinstance(space, spaces.Tuple):
        return leading(space.spaces[0], batch[0])
    return len(batch)


def take(space: Any, batch: Any, start: int, stop: int) -> Any:
    spaces = _spaces()
    if isinstance(space, spaces.Dict):
        return {k: take(sub, batch[k], start, stop) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(take(sub, part, start, stop) for sub, part in zip(space.spaces, batch))
    return batch[start:stop]


def rows(space: Any, batch: Any, indices: Sequence[int]) -> Any:
    """The rows ``indices`` of a batch, in that order, as a batch of their own."""
    import numpy as np

    spaces = _spaces()
    if isinstance(space, spaces.Dict):
        return {k: rows(sub, batch[k], indices) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(rows(sub, part, indices) for sub, part in zip(space.spaces, batch))
    if isinstance(batch, np.ndarray):
        return batch[list(indices)]
    return tuple(batch[i] for i in indices)  # e.g. Text batches are tuples


def item(space: Any, batch: Any, index: int) -> Any:
    spaces = _spaces()
    if isinstance(space, spaces.Dict):
        return {k: item(sub, batch[k], index) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(item(sub, part, index) for sub, part in zip(space.spaces, batch))
    return batch[index]


def concat(space: Any, parts: list[Any]) -> Any:
    """One batch of ``parts``, in new arrays even of a single part: the parts are the env's
    stored observations, and the caller may write into what it gets (``obs /= 255``)."""
    import numpy as np

    spaces = _spaces()
    if isinstance(space, spaces.Dict):
        return {k: concat(sub, [p[k] for p in parts]) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(concat(sub, [p[i] for p in parts]) for i, sub in enumerate(space.spaces))
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return tuple(value for part in parts for value in part)  # e.g. Text batches are tuples


def add_lane_info(infos: dict[str, Any], info: dict[str, Any], lane: int, n: int) -> None:
    """Gymnasium's ``VectorEnv._add_info``: one lane's info into the vector infos."""
    import numpy as np

    for key, value in info.items():
        if key == "final_obs":
            array = infos.get(key)
            if array is None:
                array = np.full(n, fill_value=None, dtype=object)
            array[lane] = value
        elif isinstance(value, dict):
            array = infos.get(key, {})
            add_lane_info(array, value, lane, n)
        else:
            if key not in infos:
                if type(value) in (int, float, bool) or issubclass(type(value), np.number):
                    array = np.zeros(n, dtype=type(value))
                elif isinstance(value, np.ndarray):
                    array = np.zeros((n, *value.shape), dtype=value.dtype)
                else:
                    array = np.full(n, fill_value=None, dtype=object)
            else:
                array = infos[key]
            array[lane] = value
        mask = infos.get(f"_{key}")
        if mask is None:
            mask = np.zeros(n, dtype=np.bool_)
        mask[lane] = True
        infos[key], infos[f"_{key}"] = array, mask


def add_batch_info(infos: dict[str, Any], info: dict[str, Any], start: int, size: int, n: int) -> None:
    """A vector endpoint's infos (``key`` arrays and ``_key`` masks over its lanes) at ``start``."""
    import numpy as np

    lanes = slice(start, start + size)
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue  # a mask: handled with its key
        if isinstance(value, dict):
            array = infos.get(key, {})
            add_batch_info(array, value, start, size, n)
        else:
            value = np.asarray(value) if not isinstance(value, np.ndarray) else value
            array = infos.get(key)
            if array is None:
                fill: Any = None if value.dtype == object else 0
                array = np.full((n, *value.shape[1:]), fill_value=fill, dtype=value.dtype)
            array[lanes] = value
        mask = infos.get(f"_{key}")
        if mask is None:
            mask = np.zeros(n, dtype=np.bool_)
        given = info.get(f"_{key}")
        mask[lanes] = True if given is None else np.asarray(given, dtype=np.bool_)
        infos[key], infos[f"_{key}"] = array, mask

