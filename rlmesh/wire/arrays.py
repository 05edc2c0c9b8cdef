"""NumPy arrays from and to wire tensors: the one place that knows how the two map.

Imported only where NumPy is wanted (the NumPy backend, Gymnasium space conversion, lane
batching); the wire itself never needs NumPy.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from rlmesh.wire.codec import wire_leaf
from rlmesh.wire.tensor import Tensor

__all__ = ["numpy_dtype", "array_from_wire", "asarray", "from_array"]

_DTYPES: dict[str, Any] = {}


def numpy_dtype(name: str) -> Any:
    """The NumPy dtype of a wire dtype name (bfloat16 through ``ml_dtypes``)."""
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = _DTYPES[name] = _load_dtype(name)
    return dtype


def _load_dtype(name: str) -> Any:
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            'bfloat16 tensors need the ml_dtypes package: pip install "rlmesh[bfloat16]"'
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def array_from_wire(dtype: str, shape: tuple[int, ...], buffer: Any) -> Any:
    """Owned, writable array from decoded tensor bytes.

    A raw zmq frame belongs to this message alone, so a writable frame becomes the array's
    memory directly; read-only inline bytes are copied once.
    """
    # Runs for every array of every step: the dtype comes from a dict, and a 1-D array skips
    # reshape() and the flags object, which cost more than the copy of a small observation.
    numpy_type = _DTYPES.get(dtype)
    array = np.frombuffer(buffer, numpy_type if numpy_type is not None else numpy_dtype(dtype))
    if len(shape) != 1:
        array = array.reshape(shape)
    elif len(array) != shape[0]:
        raise ValueError(f"a tensor of shape {shape} came with {len(array)} items")
    if type(buffer) is memoryview and not buffer.readonly:
        return array
    return array.copy()


def asarray(tensor: Tensor) -> Any:
    """A writable NumPy array holding a copy of the tensor's data."""
    if not isinstance(tensor, Tensor):
        return np.asarray(tensor).copy()
    return np.frombuffer(tensor.raw, dtype=numpy_dtype(tensor.dtype)).reshape(tensor.shape).copy()


def from_array(array: Any) -> Tensor | None | bool | int | float | str | bytes:
    """Encode a NumPy array (copied, C-contiguous, little-endian) or scalar as an rlmesh value."""
    value: Tensor | None | bool | int | float | str | bytes = wire_leaf(np.asarray(array))
    return value
