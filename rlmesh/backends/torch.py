"""The Torch backend: tensor leaves decode to Torch tensors, spaces are rlmesh spaces of Torch values."""

from __future__ import annotations

from typing import Any

import torch

from rlmesh.backends.base import Backend, leaf_kind, wire_values
from rlmesh.wire.codec import ObjectArray, wire_leaf
from rlmesh.wire.spaces import Space, SpaceSpec, ValueAdapter
from rlmesh.wire.tensor import Tensor

__all__ = ["BACKEND", "as_tensor", "from_tensor", "space_from_spec"]

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_WIDE_UNSIGNED = {"uint16", "uint32", "uint64"}


def _torch_dtype(name: str) -> Any:
    if name in _WIDE_UNSIGNED and _TORCH_VERSION < (2, 3):
        raise TypeError(f"{name} tensors need Torch 2.3 or newer (installed: {torch.__version__})")
    return getattr(torch, name)


def _tensor_from_wire(dtype: str, shape: tuple[int, ...], buffer: Any) -> Any:
    """Owned, writable Torch tensor from decoded bytes (zero-copy for a private zmq frame)."""
    torch_dtype = _torch_dtype(dtype)
    view = memoryview(buffer)
    if view.readonly:
        view = memoryview(bytearray(view))
    if not view.nbytes:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(view, dtype=torch_dtype).reshape(shape)


def as_tensor(tensor: Tensor | bool | int | float, *, copy: bool = False) -> Any:
    """A Torch tensor sharing memory with ``tensor`` over DLPack, or a copy with ``copy=True``.

    The shared view is flagged read-only by the export but Torch does not enforce the flag:
    writing through it corrupts every other view of the same bytes.
    """
    if not isinstance(tensor, Tensor):
        return torch.tensor(tensor)
    _torch_dtype(tensor.dtype)
    if tensor.dtype == "bool" and _TORCH_VERSION < (2, 2):  # no bool over DLPack before 2.2
        return torch.frombuffer(bytearray(tensor.raw), dtype=torch.bool).reshape(tensor.shape)
    shared = torch.utils.dlpack.from_dlpack(tensor)
    return shared.clone() if copy else shared


def from_tensor(tensor: Any) -> Tensor | bool | int | float:
    """Encode a Torch tensor (detached, moved to the CPU, copied) as an rlmesh value."""
    value: Tensor | bool | int | float = wire_leaf(tensor)
    return value


def _object_array(array: ObjectArray) -> Any:
    return array.items


def _torch_leaf(value: Any) -> Any:
    kind = leaf_kind(value)
    if kind == "tensor":
        return as_tensor(value, copy=True)
    if kind == "numpy":
        import numpy as np

        array = np.asarray(value)
        return torch.from_numpy(array if array.flags.writeable else array.copy())
    return value


def space_from_spec(spec: SpaceSpec) -> Space[Any]:
    """A space whose ``sample()`` returns Torch values and ``contains()`` accepts them."""
    return Space(spec, ValueAdapter(BACKEND.convert, wire_values))


BACKEND = Backend("torch", _tensor_from_wire, _object_array, space_from_spec, _torch_leaf)
