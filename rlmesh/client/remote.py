"""Remote clients: drive an env served by :class:`~rlmesh.server.EnvServer` like a local one."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from typing import Any, ClassVar, Generic, TypeVar, Union

from rlmesh.backends import PLAIN, Backend
from rlmesh.client.closing import Closeable
from rlmesh.client.multi import (
    MultiEndpointVectorEnv,
    MultiEndpointVectorEnvBase,
    check_lane_ids,
    per_lane_values,
)
from rlmesh.client.pending import PendingCall
from rlmesh.client.surface import EnvSurface, Surface, VectorEnvSurface
from rlmesh.protocol.address import to_zmq_endpoint
from rlmesh.protocol.connection import Connection
from rlmesh.protocol.messages import EnvContract, Request
from rlmesh.protocol.timeouts import check_timeout
from rlmesh.wire.codec import EncodeError

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
        transport=transport,
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

    @property
    def transport(self) -> str:
        """How requests travel: ``"shm"`` (shared memory, the server shares this host) or ``"zmq"``."""
        return self._live().transport

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
        self._pending = PendingCall()
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

    def _request(self, kind: str, payload: Any, doing: str) -> Any:
        """One request and its reply; refused while an async call is under way."""
        if self._pending.name is not None:
            self._pending.check_idle(doing)
        connection = self._connection
        return (connection if connection is not None else self._live()).request(kind, payload)

    def _reset(self, seed: Any, options: dict[str, object] | None) -> tuple[Any, dict[str, Any]]:
        obs, info = self._request(Request.RESET, {"seed": seed, "options": options}, "reset()")
        return obs, info

    def _step(self, action: Any) -> tuple[Any, Any, Any, Any, dict[str, Any]]:
        obs, reward, terminated, truncated, info = self._request(Request.STEP, action, "step()")
        return obs, reward, terminated, truncated, info

    def _call(self, name: str, args: tuple[Any, ...], kwargs: dict[str, Any],
              lanes: list[int] | None = None) -> Any:
        if not isinstance(name, str):
            raise TypeError(f"the name to call must be a string, got {name!r}")
        payload: dict[str, Any] = {"name": name, "args": list(args), "kwargs": kwargs}
        if lanes is not None:
            payload["lanes"] = lanes
        try:
            return self._request(Request.CALL, payload, f"call({name!r})")
        except EncodeError as exc:
            raise TypeError(f"call({name!r}): the arguments cannot be sent: {exc.where(('args', 'kwargs'))}: "
                            f"{exc.reason}; pass plain data (numbers, strings, arrays, lists, dicts)") from exc

    def _set_attr(self, name: str, values: Any, lanes: list[int] | None = None) -> None:
        payload: dict[str, Any] = {"name": name, "values": values}
        if lanes is not None:
            payload["lanes"] = lanes
        try:
            self._request(Request.SET_ATTR, payload, f"set_attr({name!r})")
        except EncodeError as exc:
            raise TypeError(f"set_attr({name!r}): the value cannot be sent: {exc.reason}; "
                            "pass plain data (numbers, strings, arrays, lists, dicts)") from exc

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
        host, port, path: Keyword helpers used when ``address`` is omitted.
        transport: How requests travel. ``"auto"`` (default): over zmq, switched to a
            shared-memory channel when the server runs on this host (also in a container);
            ``"zmq"``: never shared memory; ``"shm"``: shared memory or a ``ConnectionError``.
            ``"tcp"`` / ``"unix"`` pick the socket kind when ``address`` is omitted.
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

    def render(self, *, env_index: int = 0) -> Any:
        """Render a frame (``env_index`` is accepted for symmetry with vector clients and ignored)."""
        return self._request(Request.RENDER, {"env_index": env_index}, "render()")

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call method ``name`` of the served env on the server (or read the attribute).

        Arguments and the result travel through the codec: plain data only, nothing is pickled.
        Names starting with ``_`` are refused, and a server started with ``allow_calls=False``
        refuses every call (``PermissionError``); a missing attribute raises ``AttributeError``.
        """
        return self._call(name, args, kwargs)

    def get_attr(self, name: str) -> Any:
        """Attribute ``name`` of the served env (``call(name)``: a method is called, as in Gymnasium)."""
        return self._call(name, (), {})

    def set_attr(self, name: str, value: Any) -> None:
        """Set attribute ``name`` of the served env (through its wrappers, as ``set_wrapper_attr``)."""
        self._set_attr(name, value)

    def get_wrapper_attr(self, name: str) -> Any:
        """Gymnasium's ``Env.get_wrapper_attr``: this client's attribute if it has one (spaces,
        metadata, ...), else the served env's (:meth:`get_attr`)."""
        try:
            return getattr(self, name)
        except AttributeError:
            return self.get_attr(name)


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

    def step_async(self, actions: ActionT) -> None:
        """Send the actions without waiting; :meth:`step_wait` collects the step.

        Between the two the caller computes (e.g. the policy's next forward pass) while the
        server steps. Any other call before :meth:`step_wait` raises ``AlreadyPendingCallError``.
        """
        self._start("step", Request.STEP, actions)

    def step_wait(self, timeout: float | None = None) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, Any]]:
        """Collect the :meth:`step_async` call: Gymnasium's step tuple.

        ``timeout`` (seconds) bounds this wait only: when it passes, ``TimeoutError`` is raised
        and the step stays under way, so a later ``step_wait()`` still collects it. ``None``
        waits as :meth:`step` does (up to ``request_timeout``, if one was set).
        """
        obs, reward, terminated, truncated, info = self._collect("step", timeout)
        return obs, reward, terminated, truncated, info

    def reset_async(self, seed: int | list[int] | None = None, options: dict[str, object] | None = None) -> None:
        """Send :meth:`reset` without waiting; :meth:`reset_wait` collects it."""
        self._start("reset", Request.RESET, {"seed": seed, "options": options})

    def reset_wait(self, timeout: float | None = None) -> tuple[ValueT, dict[str, Any]]:
        """Collect the :meth:`reset_async` call; ``timeout`` as for :meth:`step_wait`."""
        obs, info = self._collect("reset", timeout)
        return obs, info

    def render(self, *, env_index: int | None = None) -> Any:
        """Every lane's frame as a tuple, as Gymnasium's ``VectorEnv.render()``; with
        ``env_index``, that lane's frame only."""
        return self._request(Request.RENDER, {"env_index": env_index}, "render()")

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every lane's env on the server (or read the attribute):
        a tuple with one result per lane, as Gymnasium's ``VectorEnv.call``.

        Arguments and results travel through the codec: plain data only, nothing is pickled.
        Names starting with ``_`` are refused, and a server started with ``allow_calls=False``
        refuses every call (``PermissionError``); a missing attribute raises ``AttributeError``.
        """
        return tuple(self._call(name, args, kwargs))

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every lane's env (``call(name)``, as in Gymnasium)."""
        return tuple(self._call(name, (), {}))

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` on every lane: ``values[i]`` on lane ``i`` (a list or tuple with
        one value per lane), or the same value everywhere."""
        n = self.num_envs
        if not isinstance(values, (list, tuple)):
            values = [values] * n
        elif len(values) != n:
            raise ValueError(f"got {len(values)} values for {n} lanes; give one per lane, or one value "
                             "that is not a list or tuple for all of them")
        self._set_attr(name, list(values))

    def call_lanes(self, lane_ids: Sequence[int], name: str, /, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """:meth:`call` on the lanes ``lane_ids`` only: one result per lane id, in their order.

        The others are not touched: the server runs ``name`` on those lanes' sub-envs alone (so
        it needs a vector env with a sub-env list, such as ``SyncVectorEnv``; a served
        ``AsyncVectorEnv`` refuses with ``AttributeError``). ``lane_ids`` are distinct lane
        numbers; ``lane_ids`` and ``name`` are positional-only, so every keyword goes to the method.
        """
        lanes = check_lane_ids(lane_ids, self.num_envs)
        return tuple(self._call(name, args, kwargs, lanes))

    def get_attr_lanes(self, lane_ids: Sequence[int], name: str) -> tuple[Any, ...]:
        """:meth:`get_attr` of the lanes ``lane_ids`` only (``call_lanes(lane_ids, name)``)."""
        return self.call_lanes(lane_ids, name)

    def set_attr_lanes(self, lane_ids: Sequence[int], name: str, values: Any) -> None:
        """:meth:`set_attr` on the lanes ``lane_ids`` only: ``values[k]`` on lane ``lane_ids[k]``
        (a list or tuple with one value per lane id), or the same value on each; the other
        lanes keep theirs untouched."""
        lanes = check_lane_ids(lane_ids, self.num_envs)
        self._set_attr(name, per_lane_values(values, len(lanes), "lane ids"), lanes)

    def _start(self, name: str, kind: str, payload: Any) -> None:
        self._pending.check_idle(f"{name}_async()")
        self._pending.start(name, self._live().send(kind, payload))

    def _collect(self, name: str, timeout: float | None) -> Any:
        request_id = self._pending.expect(name)
        connection = self._live()
        try:
            if timeout is None:
                result = connection.receive(request_id)
            else:
                done, result = connection.wait_reply(request_id, check_timeout("timeout", timeout))
                if not done:
                    raise _StillWaiting(f"{name}_wait(): no reply from {connection.address} within "
                                        f"{timeout:g} s; the {name} is still under way: call "
                                        f"{name}_wait() again to keep waiting")
        except _StillWaiting:
            raise
        except BaseException:
            self._pending.finish()
            raise
        self._pending.finish()
        return result

    @classmethod
    def from_endpoints(cls, endpoints: Sequence[str | int], **kwargs: Any) -> Any:
        """One vector env over the lanes of many endpoints (single or vector env servers).

        Returns this flavour's :class:`~rlmesh.client.multi.MultiEndpointVectorEnvBase`; keyword
        arguments are its own (``autoreset_mode``, timeouts, ``owned``).
        """
        return cls._multi_endpoint_class(endpoints, **kwargs)


class _StillWaiting(TimeoutError):
    """A ``*_wait(timeout)`` ran out of time; the call stays under way."""


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
