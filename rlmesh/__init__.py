"""rlmesh: connect reinforcement-learning models to Gymnasium-style environments anywhere.

Serve an env with :class:`EnvServer`, drive it from another process or machine with
:class:`RemoteEnv` / :class:`RemoteVectorEnv` (plain values here; ``rlmesh.numpy`` and
``rlmesh.torch`` decode arrays for you). The core package needs neither NumPy nor Torch.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

from rlmesh._version import __version__
from rlmesh.client.remote import RemoteEnv, RemoteEnvBase, RemoteVectorEnv, RemoteVectorEnvBase
from rlmesh.errors import (
    EnvironmentException,
    ModelError,
    ProtocolError,
    RLMeshError,
    ServerBusyError,
    SpecMismatchError,
    VersionMismatchError,
)
from rlmesh.protocol.messages import PROTOCOL_GENERATION, EnvContract
from rlmesh.server.env import EnvServer
from rlmesh.wire.spaces import Space, SpaceSpec, space_from_spec
from rlmesh.wire.tensor import Tensor

if TYPE_CHECKING:
    from rlmesh.model.results import EpisodeResult, RunResult
    from rlmesh.model.runner import Model, ModelBase, ModelSpec

__all__ = [
    "__version__",
    "connect",
    "PROTOCOL_GENERATION",
    "EnvContract",
    "EnvServer",
    "EnvironmentException",
    "EpisodeResult",
    "Model",
    "ModelBase",
    "ModelSpec",
    "ModelError",
    "ProtocolError",
    "RLMeshError",
    "RemoteEnv",
    "RemoteEnvBase",
    "RemoteVectorEnv",
    "RemoteVectorEnvBase",
    "RunResult",
    "ServerBusyError",
    "SpecMismatchError",
    "Space",
    "SpaceSpec",
    "Tensor",
    "VersionMismatchError",
    "space_from_spec",
]

logging.getLogger(__name__).addHandler(logging.NullHandler())

# Models load on first use: serving or driving an env never imports them.
_LAZY = {"Model": "rlmesh.model", "ModelBase": "rlmesh.model", "ModelSpec": "rlmesh.model",
         "EpisodeResult": "rlmesh.model.results", "RunResult": "rlmesh.model.results"}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'rlmesh' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def connect(address: str | int | None = None, *, backend: str = "plain",
            **kwargs: Any) -> RemoteEnvBase[Any, Any] | RemoteVectorEnvBase[Any, Any]:
    """Connect to whatever the endpoint serves: a ``RemoteEnv`` or a ``RemoteVectorEnv``.

    One handshake decides the client type. ``backend`` names the flavour: ``"plain"``
    (this module's clients), ``"numpy"`` or ``"torch"``; other keyword arguments are those
    of :class:`RemoteEnvBase`.
    """
    from rlmesh.client.remote import connect as connect_with

    if backend == "plain":
        return connect_with(address, **kwargs)
    if backend not in ("numpy", "torch"):
        raise ValueError(f"unknown backend {backend!r}; use 'plain', 'numpy' or 'torch'")
    face = importlib.import_module(f"rlmesh.{backend}")
    return connect_with(address, clients=(face.RemoteEnv, face.RemoteVectorEnv), **kwargs)
