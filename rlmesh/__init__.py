"""rlmesh: connect reinforcement-learning models to Gymnasium-style environments anywhere.

Serve an env with :class:`EnvServer`, drive it from another process or machine with
:class:`RemoteEnv` / :class:`RemoteVectorEnv` (plain values here; ``rlmesh.numpy`` and
``rlmesh.torch`` decode arrays for you). The core package needs neither NumPy nor Torch.
"""

from __future__ import annotations

import logging

from rlmesh._version import __version__
from rlmesh.client import RemoteEnv, RemoteEnvBase, RemoteVectorEnv, RemoteVectorEnvBase
from rlmesh.errors import (
    EnvironmentException,
    ModelError,
    ProtocolError,
    RLMeshError,
    ServerBusyError,
    SpecMismatchError,
    VersionMismatchError,
)
from rlmesh.model import Model, ModelBase, ModelSpec
from rlmesh.protocol import PROTOCOL_GENERATION, EnvContract
from rlmesh.results import EpisodeResult, RunResult
from rlmesh.server import EnvServer
from rlmesh.spaces import Space, SpaceSpec, space_from_spec
from rlmesh.tensor import Tensor

__all__ = [
    "__version__",
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
