"""EnvServer: serve one Gymnasium-like env (or a vector env) to one remote client at a time."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

from rlmesh._version import __version__
from rlmesh.errors import ProtocolError
from rlmesh.protocol.endpoint import DEFAULT_BUSY_POLL, Endpoint, ErrorReply
from rlmesh.protocol.messages import EnvContract, ErrorKind, Request
from rlmesh.server.calls import run_call, run_set_attr
from rlmesh.wire import codec
from rlmesh.wire.spaces import SpaceSpec

__all__ = ["EnvServer", "DEFAULT_MAX_SESSIONS"]

#: Sessions an env factory serves at once unless ``max_sessions`` says otherwise.
DEFAULT_MAX_SESSIONS = 8

log = logging.getLogger(__name__)


def _space_spec(space: Any) -> SpaceSpec:
    from rlmesh.backends.gym_spaces import spec_from_gymnasium

    spec = getattr(space, "spec", None)  # an rlmesh Space carries its spec already
    return spec if spec is not None and type(space).__module__.startswith("rlmesh") else spec_from_gymnasium(space)


def _is_vector(env: Any) -> bool:
    return hasattr(env, "num_envs") and hasattr(env, "single_action_space")


def _batched_space(env: Any, name: str, vector: bool) -> Any:
    """``env.<name>``; for a vector env without it, the batch of ``env.single_<name>``."""
    space = getattr(env, name, None)
    if space is not None:
        return space
    if not vector:
        raise TypeError(f"EnvServer needs an env with an {name}; {type(env).__name__} has none")
    from gymnasium.vector.utils import batch_space

    from rlmesh.backends.gym_spaces import gymnasium_from_spec

    single = getattr(env, f"single_{name}")
    if type(single).__module__.startswith("rlmesh"):  # an rlmesh Space: batch its Gymnasium twin
        single = gymnasium_from_spec(single.spec)
    return batch_space(single, int(env.num_envs))


def _is_factory(env: Any) -> bool:
    """A callable that makes an env, rather than an env (or a list of envs) itself."""
    return callable(env) and not isinstance(env, (list, tuple)) and not callable(getattr(env, "step", None))


def _as_env(env: Any) -> Any:
    if isinstance(env, (list, tuple)):
        from gymnasium.vector import SyncVectorEnv

        if not env:
            raise ValueError("EnvServer needs at least one environment")
        return SyncVectorEnv([_constant(e) for e in env])
    for method in ("reset", "step"):
        if not callable(getattr(env, method, None)):
            raise TypeError(f"EnvServer needs a Gymnasium-like env with {method}(); got {type(env).__name__}")
    return env


def _constant(env: Any) -> Any:
    return lambda: env


def _autoreset_mode(env: Any) -> str | None:
    if not _is_vector(env):
        return None
    mode = getattr(env, "metadata", {}).get("autoreset_mode")
    if mode is None:
        return "NextStep"  # Gymnasium 1.x default for vector envs
    return str(getattr(mode, "value", mode))


def _decode_tensor_factory() -> codec.TensorFactory | None:
    try:
        from rlmesh.wire.arrays import array_from_wire
    except ImportError:  # a NumPy-free env gets plain Tensors
        return None
    return array_from_wire


class EnvServer(Endpoint):
    """Serve an environment over zmq.

    Args:
        env: A Gymnasium-like env, a Gymnasium vector env, or a list of envs (served as a
            synchronous vector env); or a factory, a callable that makes one of these: then each
            attached client gets an env of its own, closed when that client closes or times out.
        address: Where to listen: ``"tcp://127.0.0.1:5555"``, ``"127.0.0.1:5555"``, a port
            (loopback), or ``"unix:///tmp/env.sock"``. Port 0 picks a free port; read
            :attr:`address` afterwards. Binds loopback unless a host is given explicitly.
        check_actions: Reject actions outside the action space with a ``ValueError`` on the
            client instead of passing them to the env.
        session_timeout: Seconds without any message (clients send heartbeats) after which
            the attached client is considered gone and another client may attach.
        owner_timeout: If set, stop serving when no client has been attached for this many
            seconds (a sandboxed server uses it to stop itself when its owner dies).
        close_env: Close the env when the server shuts down.
        busy_poll: Seconds to keep polling for the next request after a reply, when the
            client's previous request also came that quickly. A client stepping in a loop
            then skips a thread wake-up per step; a slower client costs no CPU. ``0`` turns
            it off. It applies only to :meth:`serve` on the main thread (a server in a
            background thread would hold the GIL its process needs), and only with at least
            two usable CPUs (affinity and cgroup quota).
        server_key: This server's secret certificate (``rlmesh keys new``). With it, all traffic
            is encrypted and only clients whose public certificate is in ``authorized_keys`` get a
            session. Default: ``$RLMESH_SERVER_KEY``.
        authorized_keys: A folder of client public certificates, read again when an unknown key
            knocks (add or remove files to rotate keys). Default: ``$RLMESH_AUTHORIZED_KEYS``.
        insecure: Serve without keys on an address other hosts can reach. Without it, such an
            address (anything but loopback or a unix socket) needs ``server_key``.
        max_sessions: How many clients may attach at once (needs a factory above 1; default 1
            for an env, :data:`DEFAULT_MAX_SESSIONS` for a factory). With more than one, each
            session's requests run on a thread of its own, so a slow env (or one that waits on
            I/O, or on native code that releases the GIL) stalls only its own client; pure
            Python env code still takes turns on the GIL.
        allow_calls: Answer clients' ``call`` / ``get_attr`` / ``set_attr`` requests, which run
            public methods of the env and set its attributes by name (names starting with
            ``_`` are always refused). ``False`` refuses them all with a ``PermissionError``.
        transport: ``"auto"`` (default) offers clients on this host, including this server's
            own container host, a shared-memory channel after the handshake; ``"zmq"`` never does.

    A client past ``max_sessions`` gets a :class:`~rlmesh.errors.ServerBusyError` naming the
    limit until another closes or times out. A client that attached but never sent a request
    makes way for a new one after a couple of seconds, so a stray ``hello`` cannot hold a server.
    """

    role = "env server"

    def __init__(
        self,
        env: Any,
        address: str | int = "tcp://127.0.0.1:0",
        *,
        check_actions: bool = True,
        session_timeout: float = 30.0,
        owner_timeout: float | None = None,
        close_env: bool = True,
        busy_poll: float = DEFAULT_BUSY_POLL,
        server_key: str | os.PathLike[str] | None = None,
        authorized_keys: str | os.PathLike[str] | None = None,
        insecure: bool = False,
        max_sessions: int | None = None,
        allow_calls: bool = True,
        transport: str = "auto",
    ) -> None:
        self.allow_calls = allow_calls
        self._factory: Callable[[], Any] | None = env if _is_factory(env) else None
        if max_sessions is None:
            max_sessions = 1 if self._factory is None else DEFAULT_MAX_SESSIONS
        if max_sessions > 1 and self._factory is None:
            raise ValueError(f"max_sessions={max_sessions} needs an env factory, so that every client "
                             "gets an env of its own: pass a callable that makes the env, e.g. "
                             "lambda: gymnasium.make('CartPole-v1')")
        self.env = _as_env(env() if self._factory is not None else env)
        # Envs made by the factory and not handed to a session yet; the first one set the contract.
        self._spare: list[Any] = [self.env] if self._factory is not None else []
        self._envs: dict[str, Any] = {}
        self.check_actions = check_actions
        self._vector = _is_vector(self.env)
        # VectorEnvLike promises only the single spaces: derive the batched ones when missing.
        self._observation_space = _batched_space(self.env, "observation_space", self._vector)
        self._action_space = _batched_space(self.env, "action_space", self._vector)
        self._action_ok = _action_checker(self._action_space)
        self.close_env = close_env
        self.contract = self._make_contract()
        super().__init__(address, session_timeout=session_timeout, owner_timeout=owner_timeout,
                         busy_poll=busy_poll, tensor_factory=_decode_tensor_factory(),
                         server_key=server_key, authorized_keys=authorized_keys, insecure=insecure,
                         max_sessions=max_sessions, transport=transport)
        log.info("serving %s on %s", self.contract.env_id or type(self.env).__name__, self.address)

    def _handshake(self) -> dict[str, Any]:
        return self.contract.to_wire()

    def _channel_capacity(self) -> int:
        # Room for a reset or step reply in one piece: observations twice over (a vector env's
        # final observations), plus the small fields; renders and bigger infos go in chunks.
        observation = _space_bytes(self._observation_space)
        return min(16 << 20, max(1 << 20, 2 * observation + (256 << 10)))

    def _release(self) -> None:
        envs = [*self._envs.values(), *self._spare] if self._factory is not None else [self.env]
        self._envs.clear()
        self._spare.clear()
        for env in envs:
            self._close(env)

    def _close(self, env: Any) -> None:
        if self.close_env:
            try:
                env.close()
            except Exception:  # closing must not mask the reason we stopped
                log.exception("error while closing the environment")

    def _attached(self, session: str) -> None:
        if self._factory is not None:
            self._envs[session] = self._spare.pop() if self._spare else _as_env(self._factory())

    def _detached(self, session: str) -> None:
        env = self._envs.pop(session, None)
        if env is not None:
            self._close(env)

    def _answer(self, session: str, kind: str, payload: Any) -> Any:
        env = self._envs[session] if self._factory is not None else self.env
        if kind == Request.STEP:
            return self._step(env, payload)
        if kind == Request.RESET:
            seed, options = (payload or {}).get("seed"), (payload or {}).get("options")
            obs, info = env.reset(seed=seed, options=options)
            return [obs, info]
        if kind == Request.RENDER:
            index = (payload or {}).get("env_index", 0)
            return self._render(env, None if index is None else int(index))
        if kind in (Request.CALL, Request.SET_ATTR):
            if not self.allow_calls:
                raise ErrorReply(ErrorKind.REFUSED, f"the env server at {self.address} does not allow "
                                 "call/get_attr/set_attr (allow_calls=False); serve it with allow_calls=True")
            if kind == Request.CALL:
                return run_call(env, self._vector, payload)
            return run_set_attr(env, self._vector, self.contract.num_envs, payload)
        raise ProtocolError(f"unknown request kind {kind!r} for an env endpoint")

    def _step(self, env: Any, action: Any) -> Any:
        if self._vector and isinstance(action, (list, tuple)):
            action = _batch_actions(env, action)
        if self.check_actions and not self._action_ok(action):
            raise ErrorReply(ErrorKind.INVALID_ACTION,
                              f"action {_short_repr(action)} is not in the action space {self._action_space}")
        obs, reward, terminated, truncated, info = env.step(action)
        return [obs, reward, terminated, truncated, info]

    def _render(self, env: Any, env_index: int | None) -> Any:
        if not self._vector:
            return env.render()
        sub_envs = getattr(env, "envs", None)
        if env_index is None:  # every lane's frame, as Gymnasium's VectorEnv.render() returns them
            if sub_envs is not None:
                return tuple(sub.render() for sub in sub_envs)
            frames = env.render()
            return None if frames is None else tuple(frames)
        if not 0 <= env_index < self.contract.num_envs:
            raise ErrorReply(ErrorKind.INVALID_ACTION,
                              f"env_index {env_index} out of range for {self.contract.num_envs} envs")
        if sub_envs is not None:
            return sub_envs[env_index].render()
        frames = env.render()
        return None if frames is None else frames[env_index]

    def _make_contract(self) -> EnvContract:
        env, vector = self.env, self._vector
        spec = getattr(env, "spec", None)
        observation, action = _space_spec(self._observation_space), _space_spec(self._action_space)
        return EnvContract(
            vector=vector,
            num_envs=int(env.num_envs) if vector else 1,
            observation_space=observation,
            action_space=action,
            single_observation_space=_space_spec(env.single_observation_space) if vector else observation,
            single_action_space=_space_spec(env.single_action_space) if vector else action,
            metadata=codec.decode(codec.encode(dict(getattr(env, "metadata", {}) or {}), lenient=True)),
            render_mode=getattr(env, "render_mode", None),
            env_id=getattr(spec, "id", None),
            autoreset_mode=_autoreset_mode(env),
            server_version=__version__,
        )


def _action_checker(space: Any) -> Callable[[Any], bool]:
    """A membership test for actions, run on every step.

    Discrete, MultiDiscrete and MultiBinary actions in their usual form (an int, an integer
    array of the right shape) take a short path; anything else gets Gymnasium's ``contains``.
    """
    kind = type(space).__name__
    if kind == "Discrete" and hasattr(space, "start"):
        low, high = int(space.start), int(space.start + space.n)

        def discrete(action: Any) -> bool:
            if type(action) is int:  # what clients send for a Discrete action
                return low <= action < high
            return _contains(space, action)

        return discrete
    if kind in ("MultiDiscrete", "MultiBinary") and hasattr(space, "shape"):
        import numpy as np

        first: Any = space.start if kind == "MultiDiscrete" else 0
        stop: Any = space.start + space.nvec if kind == "MultiDiscrete" else 2
        shape = tuple(space.shape)

        def integer_array(action: Any) -> bool:
            if type(action) is np.ndarray and action.shape == shape and action.dtype.kind in "iu":
                return bool(((action >= first) & (action < stop)).all())
            return _contains(space, action)

        return integer_array
    return lambda action: _contains(space, action)


def _contains(space: Any, action: Any) -> bool:
    try:
        return bool(space.contains(action))
    except Exception:  # a malformed action can make contains() itself raise
        return False


def _batch_actions(env: Any, actions: Sequence[Any]) -> Any:
    """Stack a list of per-env actions into the batched form the vector env expects."""
    if len(actions) != env.num_envs:
        raise ErrorReply(ErrorKind.INVALID_ACTION,
                          f"got {len(actions)} actions for {env.num_envs} environments")
    from rlmesh.backends.gym_spaces import stack

    space = env.single_action_space
    try:
        return stack(space, list(actions), env.num_envs)
    except Exception as exc:
        raise ErrorReply(ErrorKind.INVALID_ACTION,
                          f"actions {_short_repr(actions)} do not fit the action space {space}: {exc}") from exc


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _space_bytes(space: Any) -> int:
    """Bytes of one value of ``space``'s arrays (0 for what it cannot tell)."""
    spaces = getattr(space, "spaces", None)
    if isinstance(spaces, dict):
        return sum(_space_bytes(sub) for sub in spaces.values())
    if isinstance(spaces, (list, tuple)):
        return sum(_space_bytes(sub) for sub in spaces)
    shape, dtype = getattr(space, "shape", None), getattr(space, "dtype", None)
    itemsize = getattr(dtype, "itemsize", 0)
    if not isinstance(shape, tuple) or not isinstance(itemsize, int):
        return 0
    count = 1
    for size in shape:
        count *= int(size)
    return count * itemsize
