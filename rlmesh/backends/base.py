"""What distinguishes the plain, NumPy and Torch flavours: how values decode and convert."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlmesh.wire import codec
from rlmesh.wire.spaces import SpaceSpec, space_from_spec
from rlmesh.wire.tensor import Tensor

__all__ = ["Backend", "PLAIN", "leaf_kind", "wire_values"]


def _identity_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return dict(metadata)


def leaf_kind(value: Any) -> str:
    """``"tensor"``, ``"numpy"``, ``"torch"`` or ``"other"``, without importing NumPy or Torch."""
    if isinstance(value, Tensor):
        return "tensor"
    module = type(value).__module__
    if module == "numpy" or module.startswith("ml_dtypes"):
        return "numpy"
    if module.startswith("torch"):
        return "torch"
    return "other"


@dataclass(frozen=True)
class Backend:
    """Decoding and conversion rules of one value flavour.

    ``tensor_factory`` builds an owned, writable backend array from decoded tensor bytes
    (``None`` keeps :class:`~rlmesh.wire.tensor.Tensor` leaves); ``space_from_spec`` builds the
    space wrappers clients expose; ``adapt_metadata`` turns wire metadata into what users of
    that flavour expect (e.g. Gymnasium's ``AutoresetMode`` enum); ``to_leaf`` turns one leaf
    of any flavour (a Tensor, a NumPy array, a Torch tensor) into this flavour's.
    """

    name: str
    tensor_factory: codec.TensorFactory | None
    object_array: Callable[[codec.ObjectArray], Any] | None
    space_from_spec: Callable[[SpaceSpec], Any]
    to_leaf: Callable[[Any], Any]
    adapt_metadata: Callable[[Mapping[str, Any]], dict[str, Any]] = _identity_metadata

    def convert(self, value: Any) -> Any:
        """``value`` with every array leaf in this flavour; dicts, tuples and lists are kept."""
        if isinstance(value, dict):
            return {k: self.convert(v) for k, v in value.items()}
        if isinstance(value, tuple):
            return tuple(self.convert(v) for v in value)
        if isinstance(value, list):
            return [self.convert(v) for v in value]
        return self.to_leaf(value)


def wire_values(value: Any) -> Any:
    """``value`` with NumPy and Torch leaves as wire values (Tensors, primitives).

    What a flavoured rlmesh space hands its spec for ``contains()``: lists become tuples, as
    space specs hold them.
    """
    if isinstance(value, dict):
        return {k: wire_values(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return tuple(wire_values(v) for v in value)
    return codec.wire_leaf(value)


def _object_array_items(array: codec.ObjectArray) -> list[Any]:
    return array.items


PLAIN = Backend("plain", None, _object_array_items, space_from_spec, codec.wire_leaf)
