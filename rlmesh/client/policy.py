"""The client of a model endpoint (:class:`~rlmesh.server.ModelServer`): ``predict`` over the wire."""

from __future__ import annotations

from typing import Any, ClassVar

from rlmesh.backends import PLAIN, Backend
from rlmesh.client.remote import AttachedClient, KeyPath, open_connection
from rlmesh.protocol.messages import MODEL_KIND, Request

__all__ = ["PolicyClientBase"]


class PolicyClientBase(AttachedClient):
    """Client of a :class:`ModelServer`: ``predict(observation)`` calls the served policy.

    Arguments as for :class:`~rlmesh.client.RemoteEnvBase`; the backend decides how actions
    decode.
    """

    _backend: ClassVar[Backend] = PLAIN

    def __init__(self, address: str | int, *, connect_timeout: float = 10.0,
                 request_timeout: float | None = None, heartbeat_interval: float | None = 2.0,
                 server_key: KeyPath | None = None, client_key: KeyPath | None = None,
                 transport: str | None = None) -> None:
        connection = open_connection(self._backend, address, connect_timeout=connect_timeout,
                                     request_timeout=request_timeout,
                                     heartbeat_interval=heartbeat_interval,
                                     server_key=server_key, client_key=client_key, transport=transport)
        if connection.contract_wire.get("kind") != MODEL_KIND:
            connection.close()
            raise TypeError(f"the endpoint {connection.address} serves an environment, not a model; "
                            "use RemoteEnv or RemoteVectorEnv")
        self._connection = connection
        self.info: dict[str, Any] = dict(connection.contract_wire)

    def predict(self, observation: Any) -> Any:
        """The served policy's action for ``observation``."""
        return self._live().request(Request.PREDICT, observation)
