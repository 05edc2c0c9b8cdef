"""Remote clients: drive an env served by :class:`~rlmesh.server.EnvServer` like a local one."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar, Union

from rlmesh.backends import PLAIN, Backend
from rlmesh.client.closing import Closeable
from rlmesh.client.multi import MultiEndpointVectorEnv, MultiEndpointVectorEnvBase
from rlmesh.client.surface import EnvSurface, Surface, VectorEnvSurface
from rlmesh.protocol.address import to_zmq_endpoint
from rlmesh.protocol.connection import Connection
from rlmesh.protocol.messages import EnvContract, Request

__all__ = ["AttachedClient", "RemoteEnvBase", "RemoteVectorEnvBase", "RemoteEnv", "RemoteVectorEnv", "connect"]

log = logging.getLogger(__name__)

#: A certificate file (``rlmesh keys new`` writes them).
KeyPath = Union[str, "os.PathLike[str]"]
ValueT = TypeVar("ValueT")
ActionT = TypeVar("ActionT")


def open_connection(backend: Backend, address: str | int | None, *, host: str | None = None,
          port: int | None = None, path: str | None = None, transport: str | None = None,
          connect_timeout: float = 10.0, request_timeout: float | None = None,
          heartbeat_interval: float | None = 2.0, server_key: KeyPath | None = None,
          client_key: KeyPath | None = None) -> Connection:
    endpoint = to_zmq_endpoint(address, host=host, port=port, path=path, transport=transport)
    return Connection(
        endpoint,
        connect_timeout=connect_timeout,
        request_timeout=request_timeout,
        heartbeat_interval=heartbeat_interval,
        tensor_factory=backend.tensor_factory,
        object_array=backend.object_array,
        server_key=server_key,
        client_key=client_key,
    )


class AttachedClient(Closeable):
    """Owns one :class:`Connection`: address, closing, context manager, close on collection."""

    _connection: Connection | None = None

    @property
    def address(self) -> str:
        return self._live().address

    @property
    def closed(self) -> bool:
        return self._connection is None

    def _live(self) -> Connection:
        if self._connection is None:
            raise ConnectionError(f"this {type(self).__name__} is closed; create a new one")
        return self._connection

    def close(self, **kwargs: Any) -> None:
        """Detach from the server; the served env or model keeps running for the next client."""
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()


class _RemoteClient(AttachedClient, EnvSurface, Generic[ValueT, ActionT]):
    """Shared connect logic and env surface of single and vector clients."""

    _backend: ClassVar[Backend] = PLAIN
    _expects_vector: ClassVar[bool] = False

    def __init__(
        self,
        address: str | int | None = None,
        *,
        host: str | None = None,
        port: int | None = None,
        path: str | None = None,
        transport: str | None = None,
        connect_timeout: float = 10.0,
        request_timeout: float | None = None,
        heartbeat_interval: float | None = 2.0,
        server_key: KeyPath | None = None,
        client_key: KeyPath | None = None,
    ) -> None:
        self._connection: Connection | None = None
        connection = open_connection(self._backend, address, host=host, port=port, path=path,
                           transport=transport, connect_timeout=connect_timeout,
                           request_timeout=request_timeout, heartbeat_interval=heartbeat_interval,
                           server_key=server_key, client_key=client_key)
        self._adopt(connection, expect_vector=self._expects_vector)

    def _adopt(self, connection: Connection, contract: EnvContract | None = None, *,
               expect_vector: bool | None = None) -> None:
        """Attach ``connection``; if anything fails, detach it so the server is free again."""
        try:
            if contract is None:
                contract = EnvContract.from_wire(connection.contract_wire)
            if expect_vector is not None and contract.vector != expect_vector:
                served = f"a vector env with {contract.num_envs} envs" if contract.vector else "a single env"
                wanted = "RemoteVectorEnv" if contract.vector else "RemoteEnv"
                raise TypeError(f"the endpoint {connection.address} serves {served}; use {wanted}")
            self._attach(connection, contract)
        except BaseException:
            self._connection = None
            connection.close()
            raise

    def _attach(self, connection: Connection, contract: EnvContract) -> None:
        self._connection = connection
        self._contract = contract
        self._served = Surface.build(
            self._backend, observation=contract.observation_space, action=contract.action_space,
            single_observation=contract.single_observation_space if contract.vector else contract.observation_space,
            single_action=contract.single_action_space if contract.vector else contract.action_space,
            metadata=contract.metadata, render_mode=contract.render_mode, num_envs=contract.num_envs)

    def _surface(self) -> Surface:
        return self._served

    @property
    def env_contract(self) -> EnvContract:
        """Spaces, metadata and identity the server reported at connect time."""
        return self._contract

    # --- requests -------------------------------------------------------------------------------

    def _reset(self, seed: Any, options: dict[str, object] | None) -> tuple[Any, dict[str, Any]]:
        obs, info = self._live().request(Request.RESET, {"seed": seed, "options": options})
        return obs, info

    def _step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._live().request(Request.STEP, action)
        return obs, reward, terminated, truncated, info

    def render(self, *, env_index: int = 0) -> Any:
        """Render a frame (for vector endpoints, of the env at ``env_index``)."""
        return self._live().request(Request.RENDER, {"env_index": env_index})

    def __repr__(self) -> str:
        state = "closed" if self._connection is None else self._connection.address
        env_id = self._contract.env_id if hasattr(self, "_contract") else None
        return f"<{type(self).__name__} {env_id or ''} {state}>"

    __str__ = __repr__


class RemoteEnvBase(_RemoteClient[ValueT, ActionT]):
    """Client for one remote environment; the backend decides the value flavour.

    Args:
        address: ``"tcp://HOST:PORT"``, ``"HOST:PORT"``, a port on loopback, or
            ``"unix:///path.sock"``.
        host, port, path, transport: Keyword helpers used when ``address`` is omitted.
        connect_timeout: Seconds to wait for the server's handshake.
        request_timeout: Seconds to wait for a reply (``None``: as long as the server lives).
        heartbeat_interval: Seconds between liveness messages (``None`` to disable).
        server_key, client_key: For a keyed server, its public certificate and this client's
            secret one (defaults ``$RLMESH_SERVER_KEY`` / ``$RLMESH_CLIENT_KEY``).
    """

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None
              ) -> tuple[ValueT, dict[str, Any]]:
        """Reset the remote env; same semantics as ``gymnasium.Env.reset``."""
        return self._reset(seed, options)

    def step(self, action: ActionT) -> tuple[ValueT, float, bool, bool, dict[str, Any]]:
        """Step the remote env; an action outside the action space raises ``ValueError``."""
        return self._step(action)


class RemoteVectorEnvBase(_RemoteClient[ValueT, ActionT], VectorEnvSurface):
    """Client for a remote vector environment, with Gymnasium 1.x vector semantics.

    Autoreset follows the served env's mode (``metadata["autoreset_mode"]``): results are
    exactly what the vector env returned on the server. Arguments as for
    :class:`RemoteEnvBase`.
    """

    _expects_vector = True
    #: The multi-endpoint env of the same flavour, for :meth:`from_endpoints`.
    _multi_endpoint_class: ClassVar[type[MultiEndpointVectorEnvBase[Any, Any]]] = MultiEndpointVectorEnv

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, object] | None = None
              ) -> tuple[ValueT, dict[str, Any]]:
        """Reset every env; ``seed`` is an int (``seed + i`` per env) or one seed per env."""
        return self._reset(seed, options)

    def step(self, actions: ActionT) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, Any]]:
        """Step every env with a batch of actions (an array or a list with one per env)."""
        return self._step(actions)

    @classmethod
    def from_endpoints(cls, endpoints: Sequence[str | int], **kwargs: Any) -> Any:
        """One vector env over the lanes of many endpoints (single or vector env servers).

        Returns this flavour's :class:`~rlmesh.client.multi.MultiEndpointVectorEnvBase`; keyword
        arguments are its own (``autoreset_mode``, timeouts, ``owned``).
        """
        return cls._multi_endpoint_class(endpoints, **kwargs)


class RemoteEnv(RemoteEnvBase[Any, Any]):
    """Dependency-free client: array values arrive as :class:`rlmesh.Tensor`."""


class RemoteVectorEnv(RemoteVectorEnvBase[Any, Any]):
    """Dependency-free vector client: array values arrive as :class:`rlmesh.Tensor`."""


def connect(address: str | int | None = None, *,
            clients: tuple[type[RemoteEnvBase[Any, Any]], type[RemoteVectorEnvBase[Any, Any]]] = (
                RemoteEnv, RemoteVectorEnv),
            **kwargs: Any) -> RemoteEnvBase[Any, Any] | RemoteVectorEnvBase[Any, Any]:
    """Connect to whatever the endpoint serves: a ``RemoteEnv`` or a ``RemoteVectorEnv``.

    One handshake decides which of ``clients`` (a single and a vector client class of one
    flavour) is made; other keyword arguments are those of :class:`RemoteEnvBase`.
    :func:`rlmesh.connect` picks the flavour by name.
    """
    single, vector = clients
    connection = open_connection(single._backend, address, **kwargs)
    try:
        contract = EnvContract.from_wire(connection.contract_wire)
    except BaseException:
        connection.close()
        raise
    cls: type[_RemoteClient[Any, Any]] = vector if contract.vector else single
    client = cls.__new__(cls)
    client._adopt(connection, contract)
    return client  # type: ignore[return-value]
