"""One Gymnasium vector env whose lanes live on many endpoints (single or vector env servers).

Lanes are numbered endpoint by endpoint, in the order the endpoints are given. Every call is
sent to all endpoints first and the replies are gathered with one poll over all sockets, so N
endpoints cost one round trip, not N. The result is what one vector env with the same lanes
would return: seeds spread as ``seed + lane``, infos merged into Gymnasium's ``info[key]``
arrays with ``info["_key"]`` masks, and single-env endpoints autoreset exactly as
``gymnasium.vector.SyncVectorEnv`` resets its sub-envs.

The lanes are combined as NumPy arrays (Gymnasium's vector layout), so this needs the
``gymnasium`` extra whatever the backend; the backend only decides what the caller receives.

Why one module of this size: lane bookkeeping, the concurrent gather and autoreset in three
modes share per-lane state on every step; split, each part would reach into the others.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import zmq

from rlmesh.backends import PLAIN, Backend
from rlmesh.client.closing import Closeable
from rlmesh.client.surface import Surface, VectorEnvSurface
from rlmesh.errors import EnvironmentException
from rlmesh.protocol.address import to_zmq_endpoint
from rlmesh.protocol.connection import RECEIVE_SLICE_MS, Connection
from rlmesh.protocol.messages import EnvContract, Request
from rlmesh.wire.codec import ObjectArray
from rlmesh.wire.tensor import Tensor

__all__ = ["MultiEndpointVectorEnvBase", "MultiEndpointVectorEnv", "AUTORESET_MODES"]

log = logging.getLogger(__name__)

ValueT = TypeVar("ValueT")
ActionT = TypeVar("ActionT")

#: Gymnasium's autoreset modes, by their wire names.
AUTORESET_MODES = ("NextStep", "SameStep", "Disabled")


class _HasClose(Protocol):
    def close(self) -> None: ...


@dataclass
class _Endpoint:
    connection: Connection
    contract: EnvContract
    start: int
    size: int
    #: The endpoint's latest observations as a NumPy batch (a single env's as a batch of one).
    obs: Any = None

    @property
    def vector(self) -> bool:
        return self.contract.vector

    @property
    def address(self) -> str:
        return self.connection.address

    @property
    def name(self) -> str:
        last = self.start + self.size - 1
        lanes = f"lane {self.start}" if self.size == 1 else f"lanes {self.start}-{last}"
        return f"endpoint {self.address} ({lanes})"


def _numpy_backend() -> Backend:
    from rlmesh.backends.numpy import BACKEND

    return BACKEND


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
        connect_timeout, request_timeout, heartbeat_interval, server_key, client_key: As for
            :class:`~rlmesh.client.RemoteEnvBase`, per endpoint (one key pair for all of them).
        owned: Objects closed after the connections when this env closes (e.g. the sandbox
            sessions that run the endpoints).

    A failing endpoint (an error reply, a dead server, a timeout) raises the error with that
    endpoint's address and lanes in the message, without waiting for the others.
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
        server_key: str | os.PathLike[str] | None = None,
        client_key: str | os.PathLike[str] | None = None,
    ) -> None:
        self._endpoints: list[_Endpoint] = []
        self._owned = list(owned)
        self._closed = False
        self.request_timeout = request_timeout
        if isinstance(endpoints, (str, int)) or not endpoints:
            self.close()
            raise ValueError("give a non-empty list of endpoint addresses, e.g. "
                             "['tcp://10.0.0.5:5555', 'tcp://10.0.0.6:5555']")
        try:
            self._connect(endpoints, connect_timeout, request_timeout, heartbeat_interval,
                          server_key, client_key)
            self._configure(autoreset_mode)
        except BaseException:
            self.close()
            raise

    # --- setup ----------------------------------------------------------------------------------

    def _connect(self, endpoints: Sequence[str | int], connect_timeout: float,
                 request_timeout: float | None, heartbeat_interval: float | None,
                 server_key: str | os.PathLike[str] | None, client_key: str | os.PathLike[str] | None) -> None:
        decode = _numpy_backend()  # lanes are combined as NumPy arrays, whatever the backend
        start = 0
        for address in endpoints:
            connection = Connection(to_zmq_endpoint(address), connect_timeout=connect_timeout,
                                    request_timeout=request_timeout,
                                    heartbeat_interval=heartbeat_interval,
                                    tensor_factory=decode.tensor_factory,
                                    object_array=decode.object_array,
                                    server_key=server_key, client_key=client_key)
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
        self._poller = zmq.Poller()
        for endpoint in self._endpoints:
            self._poller.register(endpoint.connection.socket, zmq.POLLIN)

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
        return {e.address: range(e.start, e.start + e.size) for e in self._endpoints}

    @property
    def closed(self) -> bool:
        return self._closed

    # --- the vector env -------------------------------------------------------------------------

    def reset(self, *, seed: int | Sequence[int | None] | None = None,
              options: dict[str, object] | None = None) -> tuple[ValueT, dict[str, Any]]:
        """Reset every lane; ``seed`` is an int (lane ``i`` gets ``seed + i``) or one per lane.

        ``options={"reset_mask": mask}`` resets only the lanes where ``mask`` is true.
        """
        import numpy as np

        self._live()
        seeds = self._lane_seeds(seed)
        options = dict(options) if options is not None else None
        mask = None
        if options is not None and "reset_mask" in options:
            mask = np.asarray(_to_numpy(options.pop("reset_mask")))
            if mask.shape != (self._num_envs,) or mask.dtype != np.bool_ or not mask.any():
                raise ValueError(f"options['reset_mask'] must be a bool array of shape ({self._num_envs},) "
                                 f"with at least one True; got {mask!r}")
        requests: list[tuple[_Endpoint, str, Any]] = []
        for endpoint in self._endpoints:
            lanes = slice(endpoint.start, endpoint.start + endpoint.size)
            if mask is not None and not mask[lanes].any():
                continue  # as in SyncVectorEnv: unmasked lanes keep their observation
            if endpoint.vector:
                sent_options = options if mask is None else {**(options or {}), "reset_mask": mask[lanes]}
                # An int seed stays an int (the endpoint spreads it over its lanes the same way),
                # so vector envs that take no seed lists still get their usual seeding.
                lane_seeds: Any = seeds[lanes]
                if all(s is None for s in lane_seeds):
                    lane_seeds = None
                elif isinstance(seed, int) or _is_numpy_int(seed):
                    lane_seeds = lane_seeds[0]
                payload: dict[str, Any] = {"seed": lane_seeds, "options": sent_options}
            else:
                payload = {"seed": seeds[endpoint.start], "options": options}
            requests.append((endpoint, Request.RESET, payload))
        replies = self._gather(requests)
        infos: dict[str, Any] = {}
        for (endpoint, _, _), (obs, info) in zip(requests, replies):
            self._store(endpoint, obs)
            self._merge_info(infos, endpoint, info)
        if mask is None:
            self._autoreset[:] = False
        else:
            self._autoreset[mask] = False
        return self._convert(self._observations()), self._convert(infos)

    def step(self, actions: ActionT) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, Any]]:
        """Step every lane with a batch of actions (an array, or a list with one per lane)."""
        import numpy as np

        self._live()
        parts = self._split_actions(actions)
        requests: list[tuple[_Endpoint, str, Any]] = []
        for endpoint, action in zip(self._endpoints, parts):
            ended = not endpoint.vector and self._autoreset[endpoint.start]
            if ended and self.autoreset_mode == "NextStep":
                requests.append((endpoint, Request.RESET, {"seed": None, "options": None}))
            elif ended and self.autoreset_mode == "Disabled":
                raise ValueError(f"lane {endpoint.start} ({endpoint.address}) ended and autoreset is "
                                 "disabled; reset it with reset(options={'reset_mask': mask}) first")
            else:
                requests.append((endpoint, Request.STEP, action))
        replies = self._gather(requests)

        rewards: list[Any] = []
        terminations: list[Any] = []
        truncations: list[Any] = []
        lane_infos: list[tuple[_Endpoint, Any]] = []
        resets: list[tuple[_Endpoint, str, Any]] = []
        for (endpoint, kind, _), reply in zip(requests, replies):
            if kind == Request.RESET:  # NextStep autoreset of a single-env lane
                obs, info = reply
                reward, terminated, truncated = 0.0, False, False
            else:
                obs, reward, terminated, truncated, info = reply
            self._store(endpoint, obs)
            if endpoint.vector:
                rewards.append(reward)
                terminations.append(terminated)
                truncations.append(truncated)
                lane_infos.append((endpoint, info))
                continue
            rewards.append(np.array([reward], dtype=np.float64))
            terminations.append(np.array([terminated], dtype=np.bool_))
            truncations.append(np.array([truncated], dtype=np.bool_))
            if self.autoreset_mode == "SameStep" and (terminated or truncated):
                lane_infos.append((endpoint, {"final_obs": obs, "final_info": info}))
                resets.append((endpoint, Request.RESET, {"seed": None, "options": None}))
            else:
                lane_infos.append((endpoint, info))

        reset_infos: dict[int, Any] = {}
        for (endpoint, _, _), (obs, info) in zip(resets, self._gather(resets) if resets else ()):
            self._store(endpoint, obs)
            reset_infos[endpoint.start] = info
        infos: dict[str, Any] = {}
        for endpoint, info in lane_infos:
            self._merge_info(infos, endpoint, info)
            if endpoint.start in reset_infos and not endpoint.vector:
                self._merge_info(infos, endpoint, reset_infos.pop(endpoint.start))

        reward_batch = np.concatenate(rewards)
        terminated_batch = np.concatenate(terminations)
        truncated_batch = np.concatenate(truncations)
        self._autoreset = np.logical_or(terminated_batch, truncated_batch)
        return (self._convert(self._observations()), self._convert(reward_batch),
                self._convert(terminated_batch), self._convert(truncated_batch), self._convert(infos))

    def render(self, *, env_index: int = 0) -> Any:
        """Render the frame of lane ``env_index`` (on whichever endpoint serves it)."""
        self._live()
        if not 0 <= env_index < self._num_envs:
            raise ValueError(f"env_index {env_index} out of range for {self._num_envs} lanes")
        endpoint = next(e for e in self._endpoints if e.start <= env_index < e.start + e.size)
        local = env_index - endpoint.start if endpoint.vector else 0
        (frame,) = self._gather([(endpoint, Request.RENDER, {"env_index": local})])
        return self._convert(frame)

    def close(self, **kwargs: Any) -> None:
        """Detach from every endpoint, then close what this env owns. Idempotent."""
        self._closed = True
        endpoints, self._endpoints = getattr(self, "_endpoints", []), []
        owned, self._owned = getattr(self, "_owned", []), []
        errors: list[BaseException] = []
        for endpoint in endpoints:
            endpoint.connection.close()
        for item in owned:
            try:
                item.close()
            except Exception as exc:  # close the rest first, then report
                errors.append(exc)
        if errors:
            raise errors[0]

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{getattr(self, '_num_envs', 0)} lanes on {len(self._endpoints)} endpoints"
        return f"<{type(self).__name__} {state}>"

    # --- internals ------------------------------------------------------------------------------

    def _live(self) -> None:
        if self._closed:
            raise ConnectionError("this multi-endpoint vector env is closed; create a new one")

    def _lane_seeds(self, seed: int | Sequence[int | None] | None) -> list[int | None]:
        n = self._num_envs
        if seed is None:
            return [None] * n
        if isinstance(seed, int) or _is_numpy_int(seed):
            return [int(seed) + lane for lane in range(n)]  # type: ignore[arg-type]
        seeds = [None if s is None else int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"got {len(seeds)} seeds for {n} lanes; give one seed per lane, or one int")
        return seeds

    def _split_actions(self, actions: Any) -> list[Any]:
        n = self._num_envs
        actions = _to_numpy(actions)
        if isinstance(actions, list):  # one action per lane
            if len(actions) != n:
                raise ValueError(f"got {len(actions)} actions for {n} lanes")
            return [actions[e.start: e.start + e.size] if e.vector else actions[e.start]
                    for e in self._endpoints]
        space = self._gym_single_action
        leading = _leading(space, actions)
        if leading != n:
            raise ValueError(f"the action batch holds {leading} actions for {n} lanes; "
                             f"it must fit the action space {self.action_space}")
        return [_take(space, actions, e.start, e.start + e.size) if e.vector
                else _item(space, actions, e.start) for e in self._endpoints]

    def _store(self, endpoint: _Endpoint, obs: Any) -> None:
        if endpoint.vector:
            endpoint.obs = obs
            return
        from rlmesh.backends.gym_spaces import stack

        endpoint.obs = stack(self._gym_single_obs, [obs], 1)

    def _observations(self) -> Any:
        return _concat(self._gym_single_obs, [e.obs for e in self._endpoints])

    def _merge_info(self, infos: dict[str, Any], endpoint: _Endpoint, info: Any) -> None:
        if endpoint.vector:
            _add_batch_info(infos, info, endpoint.start, endpoint.size, self._num_envs)
        else:
            _add_lane_info(infos, info, endpoint.start, self._num_envs)

    def _gather(self, requests: Sequence[tuple[_Endpoint, str, Any]]) -> list[Any]:
        """Send every request, then wait for all replies together; raise the first failure."""
        ids: list[int] = []
        for endpoint, kind, payload in requests:
            try:
                ids.append(endpoint.connection.send(kind, payload))
            except Exception as exc:
                raise _named(endpoint, exc) from exc
        results: list[Any] = [None] * len(requests)
        waiting: list[int] = []
        timeout = self.request_timeout
        deadline = None if timeout is None else time.monotonic() + timeout
        # Replies usually come within one receive slice: take them in order, one blocking
        # receive each, with no poller. The first slice that passes quietly (or a deadline
        # closer than a slice) hands the rest to the poll loop below, which hears from every
        # endpoint at once, so a failing one is reported while the others are still busy.
        fast = timeout is None or timeout * 1000 > 2 * RECEIVE_SLICE_MS
        for index, (endpoint, _, _) in enumerate(requests):
            if fast:
                try:
                    done, value = endpoint.connection.poll_reply(ids[index], block=True)
                except Exception as exc:
                    raise _named(endpoint, exc) from exc
                if done:
                    results[index] = value
                    continue
                fast = False
            waiting.append(index)
        while waiting:
            slice_ms = RECEIVE_SLICE_MS
            if deadline is not None:
                slice_ms = max(0, min(slice_ms, int((deadline - time.monotonic()) * 1000)))
            ready = dict(self._poller.poll(slice_ms))
            still: list[int] = []
            for index in waiting:
                endpoint = requests[index][0]
                connection = endpoint.connection
                try:
                    if connection.socket in ready:
                        done, value = connection.poll_reply(ids[index])
                        if done:
                            results[index] = value
                            continue
                    elif not ready:  # a quiet slice: is anyone we wait for gone?
                        connection.check_alive()
                except Exception as exc:
                    raise _named(endpoint, exc) from exc
                still.append(index)
            waiting = still
            if waiting and deadline is not None and time.monotonic() >= deadline:
                endpoint = requests[waiting[0]][0]
                for index in waiting:
                    requests[index][0].connection.mark_timed_out(timeout or 0.0)
                raise TimeoutError(f"{endpoint.name}: no reply within {timeout:g} s; this env is "
                                   "unusable, create a new one")
        return results

    def _convert(self, value: Any) -> Any:
        """NumPy values as the backend's flavour."""
        return value if self._passthrough else _to_backend(self._backend, value)


class MultiEndpointVectorEnv(MultiEndpointVectorEnvBase[Any, Any]):
    """Dependency-light multi-endpoint vector env: array values arrive as :class:`rlmesh.Tensor`."""


# --- values ---------------------------------------------------------------------------------------

def _named(endpoint: _Endpoint, exc: BaseException) -> BaseException:
    """The same kind of error, saying which endpoint and lanes it came from."""
    if isinstance(exc, EnvironmentException):
        return EnvironmentException(f"{endpoint.name}: {exc.args[0] if exc.args else ''}",
                                    remote_type=exc.remote_type, remote_traceback=exc.remote_traceback)
    try:
        return type(exc)(f"{endpoint.name}: {exc}")
    except Exception:  # an exception type with another constructor: keep it, chained
        return ConnectionError(f"{endpoint.name}: {type(exc).__name__}: {exc}")


def _is_numpy_int(value: Any) -> bool:
    return type(value).__module__ == "numpy" and not hasattr(value, "__len__")


def _to_numpy(value: Any) -> Any:
    """Caller values (NumPy, Torch, rlmesh Tensors; lists of per-lane values) as NumPy."""
    return _numpy_backend().convert(value)


def _to_backend(backend: Backend, value: Any) -> Any:
    import numpy as np

    if isinstance(value, np.ndarray):
        if value.dtype == object:
            items = [_to_backend(backend, item) for item in value.ravel().tolist()]
            make = backend.object_array
            return make(ObjectArray(value.shape, items)) if make is not None else items
        array = np.ascontiguousarray(value)
        if backend.tensor_factory is None:
            from rlmesh.wire.arrays import from_array

            return from_array(array) if array.ndim else Tensor(array.tobytes(), array.dtype.name, ())
        return backend.tensor_factory(array.dtype.name, array.shape, array.reshape(-1).view(np.uint8).data)
    if isinstance(value, dict):
        return {k: _to_backend(backend, v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_backend(backend, v) for v in value)
    if isinstance(value, list):
        return [_to_backend(backend, v) for v in value]
    return value


def _leading(space: Any, batch: Any) -> int:
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return _leading(next(iter(space.spaces.values())), batch[next(iter(space.spaces))])
    if isinstance(space, spaces.Tuple):
        return _leading(space.spaces[0], batch[0])
    return len(batch)


def _take(space: Any, batch: Any, start: int, stop: int) -> Any:
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {k: _take(sub, batch[k], start, stop) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_take(sub, part, start, stop) for sub, part in zip(space.spaces, batch))
    return batch[start:stop]


def _item(space: Any, batch: Any, index: int) -> Any:
    from gymnasium import spaces

    if isinstance(space, spaces.Dict):
        return {k: _item(sub, batch[k], index) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_item(sub, part, index) for sub, part in zip(space.spaces, batch))
    return batch[index]


def _concat(space: Any, parts: list[Any]) -> Any:
    import numpy as np
    from gymnasium import spaces

    if len(parts) == 1:
        return parts[0]
    if isinstance(space, spaces.Dict):
        return {k: _concat(sub, [p[k] for p in parts]) for k, sub in space.spaces.items()}
    if isinstance(space, spaces.Tuple):
        return tuple(_concat(sub, [p[i] for p in parts]) for i, sub in enumerate(space.spaces))
    if isinstance(parts[0], np.ndarray):
        return np.concatenate(parts)
    return tuple(item for part in parts for item in part)  # e.g. Text batches are tuples


def _add_lane_info(infos: dict[str, Any], info: dict[str, Any], lane: int, n: int) -> None:
    """Gymnasium's ``VectorEnv._add_info``: one lane's info into the vector infos."""
    import numpy as np

    for key, value in info.items():
        if key == "final_obs":
            array = infos.get(key)
            if array is None:
                array = np.full(n, fill_value=None, dtype=object)
            array[lane] = value
        elif isinstance(value, dict):
            array = infos.get(key, {})
            _add_lane_info(array, value, lane, n)
        else:
            if key not in infos:
                if type(value) in (int, float, bool) or issubclass(type(value), np.number):
                    array = np.zeros(n, dtype=type(value))
                elif isinstance(value, np.ndarray):
                    array = np.zeros((n, *value.shape), dtype=value.dtype)
                else:
                    array = np.full(n, fill_value=None, dtype=object)
            else:
                array = infos[key]
            array[lane] = value
        mask = infos.get(f"_{key}")
        if mask is None:
            mask = np.zeros(n, dtype=np.bool_)
        mask[lane] = True
        infos[key], infos[f"_{key}"] = array, mask


def _add_batch_info(infos: dict[str, Any], info: dict[str, Any], start: int, size: int, n: int) -> None:
    """A vector endpoint's infos (``key`` arrays and ``_key`` masks over its lanes) at ``start``."""
    import numpy as np

    lanes = slice(start, start + size)
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue  # a mask: handled with its key
        if isinstance(value, dict):
            array = infos.get(key, {})
            _add_batch_info(array, value, start, size, n)
        else:
            value = np.asarray(value) if not isinstance(value, np.ndarray) else value
            array = infos.get(key)
            if array is None:
                fill: Any = None if value.dtype == object else 0
                array = np.full((n, *value.shape[1:]), fill_value=fill, dtype=value.dtype)
            array[lanes] = value
        mask = infos.get(f"_{key}")
        if mask is None:
            mask = np.zeros(n, dtype=np.bool_)
        given = info.get(f"_{key}")
        mask[lanes] = True if given is None else np.asarray(given, dtype=np.bool_)
        infos[key], infos[f"_{key}"] = array, mask
