"""Servers: an env (:class:`EnvServer`) or a policy (:class:`ModelServer`) behind an endpoint."""

from rlmesh.server.env import EnvServer
from rlmesh.server.model import ModelServer, load_policy

__all__ = ["EnvServer", "ModelServer", "load_policy"]
