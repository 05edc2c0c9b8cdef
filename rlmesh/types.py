"""Structural protocols accepted by :class:`~rlmesh.server.EnvServer`, and shared value aliases.

Any object with the right methods qualifies; nothing needs to inherit from these classes.
"""

from __future__ import annotations

from typing import Any, Protocol, SupportsFloat, TypeVar, Union, runtime_checkable

from rlmesh.wire.tensor import Tensor

__all__ = [
    "EnvLike",
    "SpaceLike",
    "VectorEnvLike",
    "Primitive",
    "Value",
]

#: Leaves that travel as themselves.
Primitive = Union[None, bool, int, float, str, bytes]
#: A wire value as a dependency-free client sees it: primitives, Tensors and containers of them.
Value = Union[Primitive, Tensor, list["Value"], tuple["Value", ...], dict[str, "Value"]]

SpaceT = TypeVar("SpaceT", covariant=True)
EnvObsT = TypeVar("EnvObsT", covariant=True)
EnvActT = TypeVar("EnvActT", contravariant=True)
VectorObsT = TypeVar("VectorObsT", covariant=True)
VectorActT = TypeVar("VectorActT", covariant=True)
BatchActionT = TypeVar("BatchActionT", contravariant=True)


@runtime_checkable
class SpaceLike(Protocol[SpaceT]):
    """A space that can sample, test membership, and be seeded."""

    def sample(self) -> SpaceT: ...

    def contains(self, value: Any, /) -> bool: ...

    def seed(self, seed: int | None = None) -> int | list[int] | dict[str, int] | None: ...


@runtime_checkable
class EnvLike(Protocol[EnvObsT, EnvActT]):
    """A single environment with the Gymnasium 1.x API."""

    @property
    def observation_space(self) -> SpaceLike[EnvObsT]: ...

    @property
    def action_space(self) -> SpaceLike[Any]: ...

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None
              ) -> tuple[EnvObsT, dict[str, object]]: ...

    def step(self, action: EnvActT) -> tuple[EnvObsT, SupportsFloat, bool, bool, dict[str, object]]: ...

    def close(self) -> None: ...


@runtime_checkable
class VectorEnvLike(Protocol[BatchActionT, VectorObsT, VectorActT]):
    """A vector environment with the Gymnasium 1.x vector API."""

    @property
    def num_envs(self) -> int: ...

    @property
    def single_observation_space(self) -> SpaceLike[VectorObsT]: ...

    @property
    def single_action_space(self) -> SpaceLike[VectorActT]: ...

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None
              ) -> tuple[object, dict[str, object]]: ...

    def step(self, actions: BatchActionT) -> tuple[object, object, object, object, dict[str, object]]: ...

    def close(self) -> None: ...
