"""One Gymnasium vector env whose lanes live on many endpoints (single or vector env servers).

Lanes are numbered endpoint by endpoint, in the order the endpoints are given. Every call is
sent to all endpoints first and the replies are gathered with one poll over all sockets, so N
endpoints cost one round trip, not N. The result is what one vector env with the same lanes
would return: seeds spread as ``seed + lane``, infos merged into Gymnasium's ``info[key]``
arrays with ``info["_key"]`` masks, and single-env endpoints autoreset exactly as
``gymnasium.vector.SyncVectorEnv`` resets its sub-envs.

Besides Gymnasium's synchronous and async calls (``step_async`` / ``step_wait``), lanes can
run on their own, EnvPool style: :meth:`~MultiEndpointVectorEnvBase.send` actions to some lanes,
:meth:`~MultiEndpointVectorEnvBase.recv` whichever lanes are done, so a slow endpoint does not
hold up the others.

The lanes are combined as NumPy arrays (Gymnasium's vector layout), so this needs the
``gymnasium`` extra whatever the backend; the backend only decides what the caller receives.

Why one module of this size: lane bookkeeping, the concurrent gather, the lanes in flight and
autoreset in three modes share per-lane state on every step; split, each part would reach into
the others. Batch and info layout lives in :mod:`rlmesh.client.batches`.
"""

from __future__ import annotations

import logging
import operator
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, Protocol, TypeVar, Union


from rlmesh.backends import PLAIN, Backend
from rlmesh.client.batches import (
    add_batch_info,
    add_lane_info,
    concat,
    is_numpy_int,
    item,
    leading,
    numpy_backend,
    rows,
    take,
    to_backend,
    to_numpy,
)
from rlmesh.client.closing import Closeable
from rlmesh.client.pending import PendingCall, already_pending, no_async_call
from rlmesh.client.surface import Surface, VectorEnvSurface
from rlmesh.errors import EnvironmentException
from rlmesh.protocol.address import to_zmq_endpoint
from rlmesh.protocol.connection import RECEIVE_SLICE_MS, Connection, wait_any
from rlmesh.protocol.keys import ClientKeys
from rlmesh.protocol.messages import EnvContract, Request
from rlmesh.protocol.timeouts import check_timeout, deadline_in

__all__ = ["MultiEndpointVectorEnvBase", "MultiEndpointVectorEnv", "AUTORESET_MODES"]

log = logging.getLogger(__name__)

ValueT = TypeVar("ValueT")
ActionT = TypeVar("ActionT")

#: Gymnasium's autoreset modes, by their wire names.
AUTORESET_MODES = ("NextStep", "SameStep", "Disabled")
_FRESH_RESET: dict[str, Any] = {"seed": None, "options": None}


class _HasClose(Protocol):
    def close(self) -> None: ...


@dataclass
class _Flight:
    """A request sent to an endpoint by :meth:`send` or :meth:`async_reset`, not received yet."""

    kind: str
    request_id: int
    reply: Any = None
    done: bool = False
    #: SameStep autoreset of a single-env lane: its final step's reply while its reset runs.
    final_step: Any = None


@dataclass
class _Endpoint:
    connection: Connection
    contract: EnvContract
    start: int
    size: int
    #: The endpoint's latest observations as a NumPy batch (a single env's as a batch of one).
    obs: Any = None
    flight: _Flight | None = None

    @property
    def vector(self) -> bool:
        return self.contract.vector

    @property
    def address(self) -> str:
        return self.connection.address

    @property
    def lanes(self) -> range:
        return range(self.start, self.start + self.size)

    @property
    def name(self) -> str:
        return f"endpoint {self.address} ({_describe_lanes(self.lanes)})"


@dataclass
class _Round:
    """Requests sent together (at most one per endpoint) and the replies gathered so far."""

    requests: list[tuple[_Endpoint, str, Any]]
    ids: list[int] = field(default_factory=list)
    results: list[Any] = field(default_factory=list)
    waiting: list[int] = field(default_factory=list)
    state: Any = None  # what the caller needs to finish the call (e.g. a reset mask)


@dataclass
class _Outcome:
    """What one endpoint's lanes returned for a step (or an autoreset in its place)."""

    endpoint: _Endpoint
    rewards: Any  # arrays over a vector endpoint's lanes, a single env's own values
    terminations: Any
    truncations: Any
    infos: list[Any]  # merged in order: a SameStep lane's final step first, then its reset


#: A server's public certificate, or keys loaded already (:class:`~rlmesh.protocol.keys.ClientKeys`).
EndpointKey = Union[str, "os.PathLike[str]", ClientKeys, None]


def _per_endpoint(value: Any, count: int, name: str) -> list[Any]:
    """One key for every endpoint, or a list of one per endpoint."""
    if value is None or isinstance(value, (str, os.PathLike, ClientKeys)):
        return [value] * count
    values = list(value)
    if len(values) != count:
        raise ValueError(f"{name}: give one key for all endpoints or one per endpoint ({count}), "
                         f"got {len(values)}")
    return values


def _mode_name(mode: Any) -> str:
    name = str(getattr(mode, "value", mode))
    if name not in AUTORESET_MODES:
        raise ValueError(f"unknown autoreset mode {mode!r}; use one of {AUTORESET_MODES} "
                         "(or gymnasium.vector.AutoresetMode)")
    return name


class MultiEndpointVectorEnvBase(Closeable, VectorEnvSurface, Generic[ValueT, ActionT]):
    """A vector env over the lanes of several endpoints, with Gymnasium 1.x vector semantics.

    Args:
        endpoints: Addresses of running servers (anything :class:`~rlmesh.RemoteEnv` accepts);
            each serves a single env (one lane) or a vector env (its ``num_envs`` lanes). All
            must serve the same single observation and action spaces.
        autoreset_mode: Wanted mode (name or ``gymnasium.vector.AutoresetMode``). Vector
            endpoints must all report this mode; single-env endpoints are autoreset in it.
            Default: the vector endpoints' common mode, else ``"NextStep"``.
        connect_timeout, request_timeout, heartbeat_interval: As for
            :class:`~rlmesh.client.RemoteEnvBase`, per endpoint.
        server_key, client_key: As for :class:`~rlmesh.client.RemoteEnvBase`: one pair for all
            endpoints, or a list of one per endpoint (servers with keys of their own).
        owned: Objects closed after the connections when this env closes (e.g. the sandbox
            sessions that run the endpoints).
        transport: As for :class:`~rlmesh.client.RemoteEnvBase`: each endpoint on this host
            gets a shared-memory channel of its own (``"auto"``), or none (``"zmq"``).

    A failing endpoint (an error reply, a dead server, a timeout) raises the error with that
    endpoint's address and lanes in the message, without waiting for the others.

    Async lanes (opt-in, EnvPool style): :meth:`send` actions to some lanes and :meth:`recv`
    whichever are done, their lane ids in ``info["env_id"]``. While lanes are in flight, the
    synchronous calls (``step``, ``reset``, ``call``, ...) are refused; receive them first.
    """

    _backend: ClassVar[Backend] = PLAIN

    def __init__(
        self,
        endpoints: Sequence[str | int],
        *,
        autoreset_mode: Any = None,
        connect_timeout: float = 10.0,
        request_timeout: float | None = None,
        heartbeat_interval: float | None = 2.0,
        owned: Sequence[_HasClose] = (),
        server_key: EndpointKey | Sequence[EndpointKey] = None,
        client_key: str | os.PathLike[str] | None | Sequence[str | os.PathLike[str] | None] = None,
        transport: str | None = None,
    ) -> None:
        self._endpoints: list[_Endpoint] = []
        self._owned = list(owned)
        self._closed = False
        self._pending = PendingCall()
        self.request_timeout = request_timeout
        if isinstance(endpoints, (str, int)) or not endpoints:
            self.close()
            raise ValueError("give a non-empty list of endpoint addresses, e.g. "
                             "['tcp://10.0.0.5:5555', 'tcp://10.0.0.6:5555']")
        try:
            self._connect(endpoints, connect_timeout, request_timeout, heartbeat_interval,
                          server_key, client_key, transport)
            self._configure(autoreset_mode)
        except BaseException:
            self.close()
            raise

    # --- setup ----------------------------------------------------------------------------------

    def _connect(self, endpoints: Sequence[str | int], connect_timeout: float,
                 request_timeout: float | None, heartbeat_interval: float | None,
                 server_key: Any, client_key: Any, transport: str | None) -> None:
        decode = numpy_backend()  # lanes are combined as NumPy arrays, whatever the backend
        start = 0
        server_keys = _per_endpoint(server_key, len(endpoints), "server_key")
        client_keys = _per_endpoint(client_key, len(endpoints), "client_key")
        for address, server_key, client_key in zip(endpoints, server_keys, client_keys):
            connection = Connection(to_zmq_endpoint(address), connect_timeout=connect_timeout,
                                    request_timeout=request_timeout,
                                    heartbeat_interval=heartbeat_interval,
                                    tensor_factory=decode.tensor_factory,
                                    object_array=decode.object_array,
                                    server_key=server_key, client_key=client_key, transport=transport)
            try:
                contract = EnvContract.from_wire(connection.contract_wire)
            except BaseException:
                connection.close()
                raise
            size = contract.num_envs if contract.vector else 1
            self._endpoints.append(_Endpoint(connection, contract, start, size))
            start += size
        backend = self._backend
        # Lanes arrive as NumPy already: a NumPy-flavoured env hands them over as they are.
        self._passthrough = (backend.tensor_factory is decode.tensor_factory
                             and backend.object_array is decode.object_array)

    def _configure(self, autoreset_mode: Any) -> None:
        import numpy as np

        from rlmesh.backends.gym_spaces import gymnasium_from_spec, spec_from_gymnasium

        first = self._endpoints[0]
        for endpoint in self._endpoints[1:]:
            for what in ("single_observation_space", "single_action_space"):
                mine, theirs = getattr(endpoint.contract, what), getattr(first.contract, what)
                if mine != theirs:
                    raise ValueError(
                        f"{endpoint.name} serves {what} {mine}, but {first.name} serves {theirs}; "
                        "all endpoints of one vector env must serve the same single spaces")
        modes = {e.contract.autoreset_mode for e in self._endpoints if e.vector}
        if len(modes) > 1:
            detail = ", ".join(f"{e.address}: {e.contract.autoreset_mode}" for e in self._endpoints if e.vector)
            raise ValueError(f"the vector endpoints use different autoreset modes ({detail}); "
                             "serve them all with the same autoreset_mode")
        served = str(modes.pop()) if modes else None
        mode = _mode_name(autoreset_mode) if autoreset_mode is not None else served or "NextStep"
        if served is not None and mode != served:
            raise ValueError(f"autoreset_mode={mode!r} was asked for, but the vector endpoints "
                             f"autoreset in mode {served!r}; serve them with {mode!r} or ask for {served!r}")
        self.autoreset_mode = mode
        self._num_envs = sum(e.size for e in self._endpoints)
        self._autoreset = np.zeros(self._num_envs, dtype=np.bool_)

        from gymnasium.vector.utils import batch_space

        self._gym_single_obs = gymnasium_from_spec(first.contract.single_observation_space)
        self._gym_single_action = gymnasium_from_spec(first.contract.single_action_space)
        single_observation = first.contract.single_observation_space
        single_action = first.contract.single_action_space
        self._served = Surface.build(
            self._backend,
            observation=spec_from_gymnasium(batch_space(self._gym_single_obs, self._num_envs)),
            action=spec_from_gymnasium(batch_space(self._gym_single_action, self._num_envs)),
            single_observation=single_observation, single_action=single_action,
            metadata={**first.contract.metadata, "autoreset_mode": mode},
            render_mode=first.contract.render_mode, num_envs=self._num_envs)

    # --- what is served -------------------------------------------------------------------------

    def _surface(self) -> Surface:
        return self._served

    @property
    def endpoints(self) -> list[str]:
        """Endpoint addresses in lane order."""
        return [e.address for e in self._endpoints]

    @property
    def endpoint_lanes(self) -> dict[str, range]:
        """Which lanes each endpoint serves."""
        return {e.address: e.lanes for e in self._endpoints}

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the vector env -------------------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, object] | None = None) -> tuple[ValueT, dict[str, Any]]:
        """Reset every lane; ``seed`` is an int (lane ``i`` gets ``seed + i``) or one per lane.

        ``options={"reset_mask": mask}`` resets only the lanes where ``mask`` is true.
        """
        self.reset_async(seed=seed, options=options)
        return self.reset_wait()

    def reset_async(self, seed: int | Sequence[int | None] | None = None,
                    options: dict[str, object] | None = None) -> None:
        """Send :meth:`reset` to every endpoint without waiting; :meth:`reset_wait` collects it."""
        import numpy as np

        self._check_idle("reset_async()")
        seeds = self._lane_seeds(seed)
        options = dict(options) if options is not None else None
        mask = None
        if options is not None and "reset_mask" in options:
            mask = np.asarray(to_numpy(options.pop("reset_mask")))
            if mask.shape != (self._num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self._num_envs},) "
                                 f"with at least one True; got {mask!r}")
        requests: list[tuple[_Endpoint, str, Any]] = []
        for endpoint in self._endpoints:
            lanes = slice(endpoint.start, endpoint.start + endpoint.size)
            if mask is not None and not mask[lanes].any():
                continue  # as in SyncVectorEnv: unmasked lanes keep their observation
            sent_options = options
            if endpoint.vector and mask is not None:
                sent_options = {**(options or {}), "reset_mask": mask[lanes]}
            requests.append((endpoint, Request.RESET, self._reset_payload(endpoint, seeds, seed, sent_options)))
        self._pending.start("reset", self._send(requests, state=mask))

    def reset_wait(self, timeout: float | None = None) -> tuple[ValueT, dict[str, Any]]:
        """Collect the :meth:`reset_async` call; see :meth:`step_wait` for ``timeout``."""
        sent: _Round = self._pending.expect("reset")
        self._wait_pending(sent, timeout, "reset")
        mask = sent.state
        infos: dict[str, Any] = {}
        for (endpoint, _, _), (obs, info) in zip(sent.requests, sent.results):
            self._store(endpoint, obs)
            self._merge_info(infos, endpoint, info, endpoint.start, self._num_envs)
        if mask is None:
            self._autoreset[:] = False
        else:
            self._autoreset[mask] = False
        return self._convert(self._observations()), self._convert(infos)

    def step(self, actions: ActionT) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, Any]]:
        """Step every lane with a batch of actions (an array, or a list with one per lane)."""
        self.step_async(actions)
        return self.step_wait()

    def step_async(self, actions: ActionT) -> None:
        """Send the actions to every endpoint without waiting; :meth:`step_wait` collects them.

        Between the two, the caller computes (e.g. the policy's next forward pass) while the
        endpoints step. Any other call before :meth:`step_wait` raises ``AlreadyPendingCallError``.
        """
        self._check_idle("step_async()")
        parts = self._split_actions(actions)
        requests = [(endpoint, *self._step_request(endpoint, action))
                    for endpoint, action in zip(self._endpoints, parts)]
        self._pending.start("step", self._send(requests))

    def step_wait(self, timeout: float | None = None) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, Any]]:
        """Collect the :meth:`step_async` call: Gymnasium's step tuple over all lanes.

        ``timeout`` (seconds) bounds this wait only: when it passes, ``TimeoutError`` is raised
        and the step stays under way, so a later ``step_wait()`` still collects it. ``None``
        waits as :meth:`step` does (up to ``request_timeout``, if one was set).
        """
        sent: _Round = self._pending.expect("step")
        self._wait_pending(sent, timeout, "step")
        outcomes: list[_Outcome] = []
        resets: list[tuple[_Endpoint, str, Any]] = []
        finals: dict[int, tuple[_Outcome, Any, Any]] = {}
        for (endpoint, kind, _), reply in zip(sent.requests, sent.results):
            if self._needs_same_step_reset(endpoint, kind, reply):
                outcome = _Outcome(endpoint, reply[1], reply[2], reply[3], [])
                finals[endpoint.start] = (outcome, reply[0], reply[4])
                resets.append((endpoint, Request.RESET, _FRESH_RESET))
            else:
                outcome = self._outcome(endpoint, kind, reply)
            outcomes.append(outcome)
        if resets:
            for (endpoint, _, _), reset_reply in zip(resets, self._gather(resets)):
                outcome, final_obs, final_info = finals[endpoint.start]
                self._finish_same_step(outcome, final_obs, final_info, reset_reply)
        obs, rewards, terminations, truncations, infos = self._assemble(outcomes)
        return obs, rewards, terminations, truncations, infos

    def render(self, *, env_index: int | None = None) -> Any:
        """Every lane's frame as a tuple (as Gymnasium's ``VectorEnv.render()``), or lane ``env_index``'s."""
        self._check_idle("render()")
        if env_index is None:
            requests = [(e, Request.RENDER, {"env_index": None} if e.vector else {}) for e in self._endpoints]
            frames = self._per_lane(requests, self._gather(requests))
            return self._convert(frames)
        if not 0 <= env_index < self._num_envs:
            raise ValueError(f"env_index {env_index} out of range for {self._num_envs} lanes")
        endpoint = self._endpoint_of(env_index)
        local = env_index - endpoint.start if endpoint.vector else 0
        (frame,) = self._gather([(endpoint, Request.RENDER, {"env_index": local})])
        return self._convert(frame)

    # --- calls by name --------------------------------------------------------------------------

    def call(self, name: str, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call method ``name`` of every lane's env (or read the attribute): one result per lane.

        Runs on the servers, against each sub-env, as Gymnasium's ``VectorEnv.call`` does.
        Arguments and results travel through the codec (plain data only; nothing is pickled).
        """
        self._check_idle(f"call({name!r})")
        payload = {"name": name, "args": list(args), "kwargs": kwargs}
        requests = [(e, Request.CALL, payload) for e in self._endpoints]
        return self._convert(self._per_lane(requests, self._gather(requests)))  # type: ignore[no-any-return]

    def get_attr(self, name: str) -> tuple[Any, ...]:
        """Attribute ``name`` of every lane's env (``call(name)``, as in Gymnasium)."""
        return self.call(name)

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` on every lane: ``values[i]`` on lane ``i`` (a list or tuple with
        one value per lane), or the same value everywhere."""
        self._check_idle(f"set_attr({name!r})")
        values = per_lane_values(values, self._num_envs)
        requests = [(e, Request.SET_ATTR, {"name": name, "values": list(values[e.start:e.start + e.size])
                                           if e.vector else values[e.start]}) for e in self._endpoints]
        self._gather(requests)

    def call_lanes(self, lane_ids: Sequence[int], name: str, /, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """:meth:`call` on the lanes ``lane_ids`` only: one result per lane id, in their order.

        Only the endpoints that serve those lanes are asked, and a vector endpoint runs ``name``
        on the requested lanes' sub-envs alone (it needs a sub-env list, as ``SyncVectorEnv``
        has; a served ``AsyncVectorEnv`` refuses with ``AttributeError``). ``lane_ids`` and
        ``name`` are positional-only, so every keyword goes to the method.
        """
        self._check_idle(f"call({name!r})")
        lanes = check_lane_ids(lane_ids, self._num_envs)
        payload = {"name": name, "args": list(args), "kwargs": kwargs}
        requests, order = self._lane_requests(lanes, Request.CALL, lambda local, wanted: (
            {**payload, "lanes": local} if local is not None else payload))
        results = self._gather(requests)
        by_lane: dict[int, Any] = {}
        for (endpoint, _, _), result, wanted in zip(requests, results, order):
            # A vector endpoint answers one value per requested lane, a single env its one value.
            for lane, value in zip(wanted, result if endpoint.vector else (result,)):
                by_lane[lane] = value
        return self._convert(tuple(by_lane[lane] for lane in lanes))  # type: ignore[no-any-return]

    def get_attr_lanes(self, lane_ids: Sequence[int], name: str) -> tuple[Any, ...]:
        """:meth:`get_attr` of the lanes ``lane_ids`` only (``call_lanes(lane_ids, name)``)."""
        return self.call_lanes(lane_ids, name)

    def set_attr_lanes(self, lane_ids: Sequence[int], name: str, values: Any) -> None:
        """:meth:`set_attr` on the lanes ``lane_ids`` only: ``values[k]`` on lane ``lane_ids[k]``
        (a list or tuple with one value per lane id), or the same value on each. Other lanes
        and the endpoints that serve none of them are not touched."""
        self._check_idle(f"set_attr({name!r})")
        lanes = check_lane_ids(lane_ids, self._num_envs)
        value_of = dict(zip(lanes, per_lane_values(values, len(lanes), "lane ids")))

        def payload(local: list[int] | None, wanted: list[int]) -> dict[str, Any]:
            if local is None:
                return {"name": name, "values": value_of[wanted[0]]}
            return {"name": name, "values": [value_of[lane] for lane in wanted], "lanes": local}

        requests, _ = self._lane_requests(lanes, Request.SET_ATTR, payload)
        self._gather(requests)

    def _lane_requests(self, lanes: list[int], kind: str,
                       payload: Callable[[list[int] | None, list[int]], Any],
                       ) -> tuple[list[tuple[_Endpoint, str, Any]], list[list[int]]]:
        """One request per endpoint serving some of ``lanes``, and the global lanes of each.

        ``payload(local, wanted)`` makes a request's payload from the endpoint's own lane ids
        (``None`` for a single-env endpoint) and the global lane ids they stand for.
        """
        wanted_of: dict[int, list[int]] = {}
        for lane in lanes:
            wanted_of.setdefault(self._endpoint_of(lane).start, []).append(lane)
        requests: list[tuple[_Endpoint, str, Any]] = []
        order: list[list[int]] = []
        for endpoint in self._endpoints:
            wanted = wanted_of.get(endpoint.start)
            if wanted is None:
                continue  # none of its lanes: this endpoint is not asked at all
            local = [lane - endpoint.start for lane in wanted] if endpoint.vector else None
            requests.append((endpoint, kind, payload(local, wanted)))
            order.append(wanted)
        return requests, order

    # --- async lanes (EnvPool style) ------------------------------------------------------------

    def send(self, actions: ActionT, lane_ids: Sequence[int] | None = None) -> None:
        """Step the lanes ``lane_ids`` (default: all) without waiting; :meth:`recv` collects them.

        ``actions`` holds one action per lane id, in the order of ``lane_ids``. The lanes of one
        vector endpoint step together, so ``lane_ids`` must name all of them or none. A lane
        that finished is autoreset as the env's autoreset mode says: in ``NextStep`` its next
        send resets it (the action is ignored and ``recv`` reports reward 0), as EnvPool does.
        """
        self._check_no_call("send()")
        endpoints, row_of = self._select(lane_ids, "send()")
        actions = to_numpy(actions)
        count = len(row_of)
        if isinstance(actions, list):
            if len(actions) != count:
                raise ValueError(f"got {len(actions)} actions for {count} lanes; give one per lane id")
        elif leading(self._gym_single_action, actions) != count:
            raise ValueError(f"the action batch holds {leading(self._gym_single_action, actions)} actions "
                             f"for {count} lanes; give one per lane id")
        requests = []
        for endpoint in endpoints:
            indices = [row_of[lane] for lane in endpoint.lanes]
            if isinstance(actions, list):
                action: Any = [actions[i] for i in indices] if endpoint.vector else actions[indices[0]]
            elif endpoint.vector:
                action = rows(self._gym_single_action, actions, indices)
            else:
                action = item(self._gym_single_action, actions, indices[0])
            requests.append((endpoint, *self._step_request(endpoint, action)))
        self._fly(requests)

    def async_reset(self, *, seed: int | Sequence[int | None] | None = None,
                    options: dict[str, object] | None = None, lane_ids: Sequence[int] | None = None) -> None:
        """Reset the lanes ``lane_ids`` (default: all) without waiting; :meth:`recv` collects them.

        ``seed`` is an int (lane ``i`` gets ``seed + i``, as in :meth:`reset`) or one seed per
        lane id. Lanes of one vector endpoint reset together.
        """
        self._check_no_call("async_reset()")
        if options is not None and "reset_mask" in options:
            raise ValueError("async_reset() picks lanes with lane_ids, not options['reset_mask']")
        endpoints, row_of = self._select(lane_ids, "async_reset()")
        if seed is None or isinstance(seed, int) or is_numpy_int(seed):
            seeds = self._lane_seeds(seed)
        else:
            given = list(seed)
            if len(given) != len(row_of):
                raise ValueError(f"got {len(given)} seeds for {len(row_of)} lanes; give one per lane id, or one int")
            seeds = [None] * self._num_envs
            for lane, row in row_of.items():
                seeds[lane] = None if given[row] is None else int(given[row])  # type: ignore[arg-type]
        self._fly([(e, Request.RESET, self._reset_payload(e, seeds, seed, options)) for e in endpoints])

    def recv(self, min_lanes: int = 1, timeout: float | None = None) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, Any]]:
        """Results of lanes sent with :meth:`send` / :meth:`async_reset`: at least ``min_lanes``.

        Returns Gymnasium's step tuple over the lanes that are done (all that are, once
        ``min_lanes`` are), in lane order, with their lane ids in ``info["env_id"]``. A reset
        lane reports reward 0 and neither terminated nor truncated. ``timeout`` (seconds) bounds
        the wait: when it passes, ``TimeoutError`` is raised and every lane stays in flight.
        ``None`` waits as long as the servers live (up to ``request_timeout``, if one was set).
        """
        import numpy as np

        self._check_no_call("recv()")
        flying = [e for e in self._endpoints if e.flight is not None]
        if not flying:
            raise no_async_call("recv() without lanes in flight; send() actions or async_reset() first", "recv")
        in_flight = sum(e.size for e in flying)
        if isinstance(min_lanes, bool) or not isinstance(min_lanes, int) or not 1 <= min_lanes <= in_flight:
            raise ValueError(f"min_lanes must be between 1 and the {in_flight} lanes in flight, got {min_lanes!r}")
        self._wait_lanes(flying, min_lanes, timeout)
        outcomes: list[_Outcome] = []
        for endpoint in flying:
            flight = endpoint.flight
            if flight is None or not flight.done:
                continue
            endpoint.flight = None
            if flight.final_step is not None:
                obs, reward, terminated, truncated, info = flight.final_step
                outcome = _Outcome(endpoint, reward, terminated, truncated, [])
                self._finish_same_step(outcome, obs, info, flight.reply)
            else:
                outcome = self._outcome(endpoint, flight.kind, flight.reply)
            outcomes.append(outcome)
        observations, rewards, terminations, truncations, infos = self._assemble(outcomes, convert=False)
        infos["env_id"] = np.array([lane for o in outcomes for lane in o.endpoint.lanes], dtype=np.int32)
        return (self._convert(observations), self._convert(rewards), self._convert(terminations),
                self._convert(truncations), self._convert(infos))

    @property
    def lanes_in_flight(self) -> list[int]:
        """Lanes sent with :meth:`send` or :meth:`async_reset` and not received yet."""
        return [lane for e in self._endpoints if e.flight is not None for lane in e.lanes]

    def close(self, **kwargs: Any) -> None:
        """Detach from every endpoint, then close what this env owns. Idempotent."""
        self._closed = True
        endpoints, self._endpoints = getattr(self, "_endpoints", []), []
        owned, self._owned = getattr(self, "_owned", []), []
        errors: list[BaseException] = []
        for endpoint in endpoints:
            endpoint.connection.close()
        for thing in owned:
            try:
                thing.close()
            except Exception as exc:  # close the rest first, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{getattr(self, '_num_envs', 0)} lanes on {len(self._endpoints)} endpoints"
        return f"<{type(self).__name__} {state}>"

    # --- internals: state checks ----------------------------------------------------------------

    def _live(self) -> None:
        if self._closed:
            raise ConnectionError("this multi-endpoint vector env is closed; create a new one")

    def _check_no_call(self, doing: str) -> None:
        """Refuse while a Gymnasium async call (step_async, reset_async) is under way."""
        self._live()
        self._pending.check_idle(doing)

    def _check_idle(self, doing: str) -> None:
        """Refuse while any call is under way, or lanes are in flight."""
        self._check_no_call(doing)
        flying = self.lanes_in_flight
        if flying:
            raise already_pending(f"cannot {doing} while {_describe_lanes(flying)} are in flight (sent with "
                                  "send() or async_reset()); collect them with recv() first", "recv")

    # --- internals: requests --------------------------------------------------------------------

    def _lane_seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        n = self._num_envs
        if seed is None:
            return [None] * n
        if isinstance(seed, int) or is_numpy_int(seed):
            return [int(seed) + lane for lane in range(n)]  # type: ignore[arg-type]
        seeds = [None if s is None else int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} lanes; give one seed per lane, or one int")
        return seeds

    def _reset_payload(self, endpoint: _Endpoint, seeds: list[int | None], seed: Any,
                       options: dict[str, object] | None) -> dict[str, Any]:
        if not endpoint.vector:
            return {"seed": seeds[endpoint.start], "options": options}
        # An int seed stays an int (the endpoint spreads it over its lanes the same way), so
        # vector envs that take no seed lists still get their usual seeding.
        lane_seeds: Any = seeds[endpoint.start:endpoint.start + endpoint.size]
        if all(s is None for s in lane_seeds):
            lane_seeds = None
        elif isinstance(seed, int) or is_numpy_int(seed):
            lane_seeds = lane_seeds[0]
        return {"seed": lane_seeds, "options": options}

    def _step_request(self, endpoint: _Endpoint, action: Any) -> tuple[str, Any]:
        """A step, or the reset that autoresets a finished single-env lane in its place."""
        ended = not endpoint.vector and self._autoreset[endpoint.start]
        if ended and self.autoreset_mode == "NextStep":
            return Request.RESET, _FRESH_RESET
        if ended and self.autoreset_mode == "Disabled":
            raise ValueError(f"lane {endpoint.start} ({endpoint.address}) ended and autoreset is "
                             "disabled; reset it with reset(options={'reset_mask': mask}) first")
        return Request.STEP, action

    def _split_actions(self, actions: Any) -> list[Any]:
        n = self._num_envs
        actions = to_numpy(actions)
        if isinstance(actions, list):  # one action per lane
            if len(actions) != n:
                raise ValueError(f"got {len(actions)} actions for {n} lanes")
            return [actions[e.start: e.start + e.size] if e.vector else actions[e.start]
                    for e in self._endpoints]
        space = self._gym_single_action
        count = leading(space, actions)
        if count != n:
            raise ValueError(f"the action batch holds {count} actions for {n} lanes; "
                             f"it must fit the action space {self.action_space}")
        return [take(space, actions, e.start, e.start + e.size) if e.vector
                else item(space, actions, e.start) for e in self._endpoints]

    def _endpoint_of(self, lane: int) -> _Endpoint:
        return next(e for e in self._endpoints if e.start <= lane < e.start + e.size)

    def _select(self, lane_ids: Sequence[int] | None, doing: str) -> tuple[list[_Endpoint], dict[int, int]]:
        """The endpoints ``lane_ids`` cover (all of each), and each lane's row in the caller's batch."""
        lanes = list(range(self._num_envs)) if lane_ids is None else [int(lane) for lane in to_numpy(lane_ids)]
        row_of: dict[int, int] = {}
        for row, lane in enumerate(lanes):
            if not 0 <= lane < self._num_envs:
                raise ValueError(f"lane id {lane} out of range for {self._num_envs} lanes")
            if lane in row_of:
                raise ValueError(f"lane id {lane} appears twice in lane_ids")
            row_of[lane] = row
        endpoints = [e for e in self._endpoints if any(lane in row_of for lane in e.lanes)]
        for endpoint in endpoints:
            missing = [lane for lane in endpoint.lanes if lane not in row_of]
            if missing:
                raise ValueError(f"{endpoint.name} steps its lanes together; {doing} must include "
                                 f"all of them or none (missing {_describe_lanes(missing)})")
            if endpoint.flight is not None:
                raise already_pending(f"cannot {doing} to {endpoint.name}: its lanes are still in flight; "
                                      "recv() them first", "recv")
        return endpoints, row_of

    def _needs_same_step_reset(self, endpoint: _Endpoint, kind: str, reply: Any) -> bool:
        """A single-env lane that just finished, in SameStep mode: it resets within this step."""
        return (not endpoint.vector and kind == Request.STEP and self.autoreset_mode == "SameStep"
                and bool(reply[2] or reply[3]))

    # --- internals: results ---------------------------------------------------------------------

    def _outcome(self, endpoint: _Endpoint, kind: str, reply: Any) -> _Outcome:
        import numpy as np

        if kind == Request.RESET:  # an autoreset (or async_reset) in place of a step
            obs, info = reply
            self._store(endpoint, obs)
            if not endpoint.vector:
                return _Outcome(endpoint, 0.0, False, False, [info])
            return _Outcome(endpoint, np.zeros(endpoint.size, dtype=np.float64),
                            np.zeros(endpoint.size, dtype=np.bool_), np.zeros(endpoint.size, dtype=np.bool_), [info])
        obs, reward, terminated, truncated, info = reply
        self._store(endpoint, obs)
        return _Outcome(endpoint, reward, terminated, truncated, [info])

    def _finish_same_step(self, outcome: _Outcome, final_obs: Any, final_info: Any, reset_reply: Any) -> None:
        obs, info = reset_reply
        self._store(outcome.endpoint, obs)
        outcome.infos = [{"final_obs": final_obs, "final_info": final_info}, info]

    def _assemble(self, outcomes: list[_Outcome], *, convert: bool = True) -> Any:
        """Gymnasium's step tuple over the outcomes' lanes, in their order."""
        import numpy as np

        n = sum(o.endpoint.size for o in outcomes)
        rewards = _lane_values(np, outcomes, "rewards", None, np.float64)
        terminations = _lane_values(np, outcomes, "terminations", np.bool_, np.bool_)
        truncations = _lane_values(np, outcomes, "truncations", np.bool_, np.bool_)
        ended = terminations | truncations
        infos: dict[str, Any] = {}
        position = 0
        for outcome in outcomes:
            endpoint = outcome.endpoint
            for info in outcome.infos:
                if info:
                    self._merge_info(infos, endpoint, info, position, n)
            self._autoreset[endpoint.start:endpoint.start + endpoint.size] = ended[position:position + endpoint.size]
            position += endpoint.size
        observations = concat(self._gym_single_obs, [o.endpoint.obs for o in outcomes])
        result = (observations, rewards, terminations, truncations, infos)
        if not convert:
            return result
        return tuple(self._convert(value) for value in result)

    def _per_lane(self, requests: list[tuple[_Endpoint, str, Any]], results: list[Any]) -> tuple[Any, ...]:
        """One value per lane from per-endpoint replies (a vector endpoint's are one per lane)."""
        out: list[Any] = []
        for (endpoint, _, _), result in zip(requests, results):
            if endpoint.vector:
                out.extend(result if result is not None else [None] * endpoint.size)
            else:
                out.append(result)
        return tuple(out)

    def _store(self, endpoint: _Endpoint, obs: Any) -> None:
        if endpoint.vector:
            endpoint.obs = obs
            return
        import numpy as np

        space = self._gym_single_obs
        if type(obs) is np.ndarray and obs.dtype == getattr(space, "dtype", None) and obs.shape == space.shape:
            endpoint.obs = obs[np.newaxis]  # a decoded array is this client's own: a view batches it
            return
        from rlmesh.backends.gym_spaces import stack

        endpoint.obs = stack(space, [obs], 1)

    def _observations(self) -> Any:
        return concat(self._gym_single_obs, [e.obs for e in self._endpoints])

    def _merge_info(self, infos: dict[str, Any], endpoint: _Endpoint, info: Any, position: int, n: int) -> None:
        if endpoint.vector:
            add_batch_info(infos, info, position, endpoint.size, n)
        else:
            add_lane_info(infos, info, position, n)

    def _convert(self, value: Any) -> Any:
        """NumPy values as the backend's flavour."""
        return value if self._passthrough else to_backend(self._backend, value)

    # --- internals: the wire --------------------------------------------------------------------

    def _send(self, requests: Sequence[tuple[_Endpoint, str, Any]], state: Any = None) -> _Round:
        sent = _Round(list(requests), state=state)
        for endpoint, kind, payload in sent.requests:
            try:
                sent.ids.append(endpoint.connection.send(kind, payload))
            except Exception as exc:
                raise _named(endpoint, exc) from exc
        sent.results = [None] * len(sent.requests)
        sent.waiting = list(range(len(sent.requests)))
        return sent

    def _gather(self, requests: Sequence[tuple[_Endpoint, str, Any]]) -> list[Any]:
        """Send every request, then wait for all replies together; raise the first failure."""
        sent = self._send(requests)
        self._collect(sent, None)
        return sent.results

    def _wait_pending(self, sent: _Round, timeout: float | None, name: str) -> None:
        """Collect the replies of the pending ``name`` call; it stays pending only on ``timeout``."""
        try:
            complete = self._collect(sent, check_timeout("timeout", timeout))
        except BaseException:
            self._pending.finish()
            raise
        if not complete:
            missing = ", ".join(sent.requests[i][0].name for i in sent.waiting)
            raise TimeoutError(f"{name}_wait(): no reply within {timeout:g} s from {missing}; the {name} "
                               f"is still under way: call {name}_wait() again to keep waiting")
        self._pending.finish()

    def _collect(self, sent: _Round, timeout: float | None) -> bool:
        """Wait for the replies still missing from ``sent``.

        With ``timeout``, return ``False`` when it passes (the requests stay answerable);
        without, wait up to ``request_timeout`` and declare the silent endpoints broken after it.
        """
        keep = timeout is not None
        limit = timeout if keep else self.request_timeout
        deadline = deadline_in(limit)
        # Replies usually come within one receive slice: take them in order, one blocking
        # receive each, with no poller. The first slice that passes quietly (or a deadline
        # closer than a slice) hands the rest to the poll loop below, which hears from every
        # endpoint at once, so a failing one is reported while the others are still busy.
        fast = limit is None or limit * 1000 > 2 * RECEIVE_SLICE_MS
        waiting: list[int] = []
        for index in sent.waiting:
            endpoint = sent.requests[index][0]
            if fast:
                try:
                    done, value = endpoint.connection.poll_reply(sent.ids[index], block=True)
                except Exception as exc:
                    raise _named(endpoint, exc) from exc
                if done:
                    sent.results[index] = value
                    continue
                fast = False
            waiting.append(index)
        sent.waiting = waiting
        while sent.waiting:
            slice_ms = RECEIVE_SLICE_MS
            if deadline is not None:
                slice_ms = max(0, min(slice_ms, int((deadline - time.monotonic()) * 1000)))
            # Only the connections waited for: a stale reply elsewhere must not wake us.
            ready = wait_any([sent.requests[index][0].connection for index in sent.waiting], slice_ms)
            still: list[int] = []
            for index in sent.waiting:
                connection = sent.requests[index][0].connection
                try:
                    if connection in ready:
                        done, value = connection.poll_reply(sent.ids[index])
                        if done:
                            sent.results[index] = value
                            continue
                    elif not ready:  # a quiet slice: is anyone we wait for gone?
                        connection.check_alive()
                except Exception as exc:
                    raise _named(sent.requests[index][0], exc) from exc
                still.append(index)
            sent.waiting = still
            if sent.waiting and deadline is not None and time.monotonic() >= deadline:
                if keep:
                    return False
                endpoint = sent.requests[sent.waiting[0]][0]
                for index in sent.waiting:
                    sent.requests[index][0].connection.mark_timed_out(limit or 0.0)
                raise TimeoutError(f"{endpoint.name}: no reply within {limit:g} s; this env is "
                                   "unusable, create a new one")
        return True

    def _fly(self, requests: list[tuple[_Endpoint, str, Any]]) -> None:
        """Send async-lane requests; each endpoint's flight is recorded as soon as it is sent."""
        for endpoint, kind, payload in requests:
            try:
                endpoint.flight = _Flight(kind, endpoint.connection.send(kind, payload))
            except Exception as exc:
                raise _named(endpoint, exc) from exc

    def _land(self, endpoint: _Endpoint) -> None:
        """Take the endpoint's reply if it is in; a finished SameStep lane sends its reset first."""
        flight = endpoint.flight
        assert flight is not None
        try:
            done, reply = endpoint.connection.poll_reply(flight.request_id)
            if not done:
                return
            if self._needs_same_step_reset(endpoint, flight.kind, reply):
                endpoint.flight = _Flight(Request.RESET, endpoint.connection.send(Request.RESET, _FRESH_RESET),
                                          final_step=reply)
                return
        except Exception as exc:
            endpoint.flight = None  # answered (with an error) or unreachable: no longer in flight
            raise _named(endpoint, exc) from exc
        flight.reply, flight.done = reply, True

    def _wait_lanes(self, flying: list[_Endpoint], min_lanes: int, timeout: float | None) -> None:
        """Wait until at least ``min_lanes`` of the ``flying`` endpoints' lanes have their replies."""
        keep = timeout is not None
        limit = check_timeout("timeout", timeout) if keep else self.request_timeout
        deadline = deadline_in(limit)
        # Only the connections waited for: a stale reply elsewhere must not wake us.
        connections = [endpoint.connection for endpoint in flying]
        while True:
            for endpoint in flying:
                if endpoint.flight is not None and not endpoint.flight.done:
                    self._land(endpoint)
            waiting = [e for e in flying if e.flight is not None and not e.flight.done]
            if sum(e.size for e in flying if e.flight is not None and e.flight.done) >= min_lanes:
                return
            now = time.monotonic()
            if deadline is not None and now >= deadline:
                if keep:
                    raise TimeoutError(f"recv(): fewer than {min_lanes} lanes done within {timeout:g} s; "
                                       f"{_describe_lanes(self.lanes_in_flight)} stay in flight: call recv() again")
                for endpoint in waiting:
                    endpoint.connection.mark_timed_out(limit or 0.0)
                raise TimeoutError(f"{waiting[0].name}: no reply within {limit:g} s; this env is "
                                   "unusable, create a new one")
            slice_ms = RECEIVE_SLICE_MS
            if deadline is not None:
                slice_ms = max(0, min(slice_ms, int((deadline - now) * 1000) + 1))
            if not wait_any(connections, slice_ms):  # a quiet slice: is anyone we wait for gone?
                for endpoint in waiting:
                    try:
                        endpoint.connection.check_alive()
                    except Exception as exc:
                        endpoint.flight = None
                        raise _named(endpoint, exc) from exc


class MultiEndpointVectorEnv(MultiEndpointVectorEnvBase[Any, Any]):
    """Dependency-light multi-endpoint vector env: array values arrive as :class:`rlmesh.Tensor`."""


# --- helpers --------------------------------------------------------------------------------------

def _named(endpoint: _Endpoint, exc: BaseException) -> BaseException:
    """The same kind of error, saying which endpoint and lanes it came from."""
    if isinstance(exc, EnvironmentException):
        return EnvironmentException(f"{endpoint.name}: {exc.args[0] if exc.args else ''}",
                                    remote_type=exc.remote_type, remote_traceback=exc.remote_traceback)
    try:
        named = type(exc)(f"{endpoint.name}: {exc}")
    except Exception:  # an exception type with another constructor: keep it, chained
        return ConnectionError(f"{endpoint.name}: {type(exc).__name__}: {exc}")
    named.__dict__.update(exc.__dict__)  # what it carries (a crashed sandbox's exit code, ...)
    return named


def _describe_lanes(lanes: Sequence[int]) -> str:
    """``"lane 3"``, ``"lanes 0-3"`` or ``"lanes 0-1, 5"``."""
    spans: list[str] = []
    ordered = sorted(lanes)
    start = previous = ordered[0]
    for lane in [*ordered[1:], None]:
        if lane is not None and lane == previous + 1:
            previous = lane
            continue
        spans.append(str(start) if start == previous else f"{start}-{previous}")
        if lane is not None:
            start = previous = lane
    return f"lane {spans[0]}" if len(ordered) == 1 else "lanes " + ", ".join(spans)


def _lane_values(np: Any, outcomes: list[_Outcome], field: str, dtype: Any, single_dtype: Any) -> Any:
    """``field`` of the outcomes as one array over their lanes: a vector endpoint gave an array
    (cast to ``dtype`` unless ``None``), a single env one value (of ``single_dtype``)."""
    values = [getattr(outcome, field) for outcome in outcomes]
    if not any(outcome.endpoint.vector for outcome in outcomes):  # the usual case: one call
        return np.array(values, dtype=single_dtype)
    return np.concatenate([np.asarray(value, dtype=dtype) if outcome.endpoint.vector
                           else np.array([value], dtype=single_dtype) for outcome, value in zip(outcomes, values)])


def per_lane_values(values: Any, n: int, what: str = "lanes") -> list[Any]:
    """Gymnasium's ``set_attr`` rule: a list or tuple holds one value per lane, anything else is for all."""
    if not isinstance(values, (list, tuple)):
        return [values] * n
    if len(values) != n:
        raise ValueError(f"got {len(values)} values for {n} {what}; give one per lane, or one value "
                         "that is not a list or tuple for all of them")
    return list(values)


def check_lane_ids(lane_ids: Iterable[Any], num_envs: int) -> list[int]:
    """``lane_ids`` as a list of distinct ints in ``range(num_envs)``, in the caller's order.

    NumPy or Torch integers (and arrays of them) are accepted; a bool is not a lane id.
    """
    try:
        given = list(lane_ids)
    except TypeError:
        raise TypeError(f"lane_ids must be a list of lane numbers, got {lane_ids!r}") from None
    lanes: list[int] = []
    seen: set[int] = set()
    for lane_id in given:
        if isinstance(lane_id, bool):
            raise TypeError(f"lane ids must be ints, got {lane_id!r}")
        try:
            lane = operator.index(lane_id)
        except TypeError:
            raise TypeError(f"lane ids must be ints, got {lane_id!r}") from None
        if not 0 <= lane < num_envs:
            raise ValueError(f"lane id {lane} out of range for {num_envs} lanes")
        if lane in seen:
            raise ValueError(f"lane id {lane} appears twice in lane_ids")
        seen.add(lane)
        lanes.append(lane)
    return lanes
