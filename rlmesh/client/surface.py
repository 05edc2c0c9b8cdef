"""The Gymnasium-shaped surface of every env-like client: spaces, their specs, metadata.

Remote clients, the multi-endpoint vector env and the sandbox sessions all show the same
properties; each builds one :class:`Surface` (or, for a sandbox, hands over its client's) and
these mixins turn it into ``observation_space``, ``single_action_space_spec`` and the rest.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from rlmesh.backends import Backend
from rlmesh.wire.spaces import SpaceSpec

__all__ = ["Surface", "EnvSurface", "VectorEnvSurface"]


@dataclass(frozen=True)
class Surface:
    """What an env shows of itself, in one backend's flavour."""

    observation_space_spec: SpaceSpec
    action_space_spec: SpaceSpec
    single_observation_space_spec: SpaceSpec
    single_action_space_spec: SpaceSpec
    observation_space: Any
    action_space: Any
    single_observation_space: Any
    single_action_space: Any
    metadata: dict[str, Any]
    render_mode: str | None
    num_envs: int

    @classmethod
    def build(cls, backend: Backend, *, observation: SpaceSpec, action: SpaceSpec,
              single_observation: SpaceSpec, single_action: SpaceSpec,
              metadata: Mapping[str, Any], render_mode: str | None, num_envs: int) -> Surface:
        """Spaces and metadata of the given specs as ``backend`` shows them."""
        make = backend.space_from_spec
        observation_space, action_space = make(observation), make(action)
        # A single env's single spaces are its spaces: one object each, as in Gymnasium.
        single_observation_space = observation_space if single_observation is observation \
            else make(single_observation)
        single_action_space = action_space if single_action is action else make(single_action)
        return cls(observation, action, single_observation, single_action, observation_space,
                   action_space, single_observation_space, single_action_space,
                   backend.adapt_metadata(metadata), render_mode, num_envs)


class EnvSurface:
    """Spaces, specs, metadata and render mode of what :meth:`_surface` returns."""

    def _surface(self) -> Surface:
        raise NotImplementedError

    @property
    def observation_space(self) -> Any:
        return self._surface().observation_space

    @property
    def action_space(self) -> Any:
        return self._surface().action_space

    @property
    def observation_space_spec(self) -> SpaceSpec:
        return self._surface().observation_space_spec

    @property
    def action_space_spec(self) -> SpaceSpec:
        return self._surface().action_space_spec

    @property
    def metadata(self) -> dict[str, Any]:
        return self._surface().metadata

    @property
    def render_mode(self) -> str | None:
        return self._surface().render_mode


class VectorEnvSurface(EnvSurface):
    """:class:`EnvSurface` plus the vector env's lane count and single-lane spaces."""

    @property
    def num_envs(self) -> int:
        return self._surface().num_envs

    @property
    def single_observation_space(self) -> Any:
        return self._surface().single_observation_space

    @property
    def single_action_space(self) -> Any:
        return self._surface().single_action_space

    @property
    def single_observation_space_spec(self) -> SpaceSpec:
        return self._surface().single_observation_space_spec

    @property
    def single_action_space_spec(self) -> SpaceSpec:
        return self._surface().single_action_space_spec
