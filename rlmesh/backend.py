"""What distinguishes the plain, NumPy and Torch flavours of every client: how values decode."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from rlmesh import codec
from rlmesh.spaces import SpaceSpec, space_from_spec

__all__ = ["Backend", "PLAIN"]


def _identity_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    return dict(metadata)


@dataclass(frozen=True)
class Backend:
    """Decoding rules of one value flavour.

    ``tensor_factory`` builds an owned, writable backend array from decoded tensor bytes
    (``None`` keeps :class:`~rlmesh.tensor.Tensor` leaves); ``space_from_spec`` builds the
    space wrappers clients expose; ``adapt_metadata`` turns wire metadata into what users of
    that flavour expect (e.g. Gymnasium's ``AutoresetMode`` enum).
    """

    name: str
    tensor_factory: codec.TensorFactory | None
    object_array: Callable[[codec.ObjectArray], Any] | None
    space_from_spec: Callable[[SpaceSpec], Any]
    adapt_metadata: Callable[[Mapping[str, Any]], dict[str, Any]] = _identity_metadata


def _object_array_items(array: codec.ObjectArray) -> list[Any]:
    return array.items


PLAIN = Backend("plain", None, _object_array_items, space_from_spec)
