"""Clients: drive a served env (:class:`RemoteEnv`, :class:`RemoteVectorEnv`), the lanes of many
endpoints as one vector env (:class:`MultiEndpointVectorEnv`), or a served policy.

These are the plain flavour (Tensor values); :mod:`rlmesh.numpy` and :mod:`rlmesh.torch`
declare the flavoured classes.
"""

from rlmesh.client.multi import MultiEndpointVectorEnv, MultiEndpointVectorEnvBase
from rlmesh.client.policy import PolicyClientBase
from rlmesh.client.remote import (
    AttachedClient,
    RemoteEnv,
    RemoteEnvBase,
    RemoteVectorEnv,
    RemoteVectorEnvBase,
    connect,
)

__all__ = ["AttachedClient", "RemoteEnvBase", "RemoteVectorEnvBase", "RemoteEnv", "RemoteVectorEnv",
           "MultiEndpointVectorEnvBase", "MultiEndpointVectorEnv", "PolicyClientBase", "connect"]
