"""EnvServer: serve one Gymnasium-like env (or a vector env) to one remote client at a time."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
import uuid
from collections.abc import Sequence
from types import TracebackType
from typing import Any

import zmq

from rlmesh import codec
from rlmesh._version import __version__
from rlmesh.address import to_user_address, to_zmq_endpoint
from rlmesh.errors import ProtocolError
from rlmesh.protocol import PROTOCOL_GENERATION, EnvContract, ErrorKind, Request
from rlmesh.spaces import SpaceSpec

__all__ = ["EnvServer"]

log = logging.getLogger(__name__)

_POLL_MS = 250


def _space_spec(space: Any) -> SpaceSpec:
    from rlmesh.gym_spaces import spec_from_gymnasium

    spec = getattr(space, "spec", None)  # an rlmesh Space carries its spec already
    return spec if spec is not None and type(space).__module__.startswith("rlmesh") else spec_from_gymnasium(space)


def _is_vector(env: Any) -> bool:
    return hasattr(env, "num_envs") and hasattr(env, "single_action_space")


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
        from rlmesh.numpy import _array_from_wire
    except ImportError:  # a NumPy-free env gets plain Tensors
        return None
    return _array_from_wire


class EnvServer:
    """Serve an environment over zmq.

    Args:
        env: A Gymnasium-like env, a Gymnasium vector env, or a list of envs (served as a
            synchronous vector env).
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

    One client is attached at a time; a second client gets a
    :class:`~rlmesh.errors.ServerBusyError` until the first closes or times out.
    """

    def __init__(
        self,
        env: Any,
        address: str | int = "tcp://127.0.0.1:0",
        *,
        check_actions: bool = True,
        session_timeout: float = 30.0,
        owner_timeout: float | None = None,
        close_env: bool = True,
    ) -> None:
        self.env = _as_env(env)
        self.check_actions = check_actions
        self.session_timeout = session_timeout
        self.owner_timeout = owner_timeout
        self.close_env = close_env
        self.contract = self._make_contract()
        self._vector = self.contract.vector
        self._decode_tensor = _decode_tensor_factory()

        endpoint = to_zmq_endpoint(address)
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        self._context: zmq.Context[Any] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)  # replies to vanished peers raise, not vanish
        if "[" in endpoint:
            self._socket.setsockopt(zmq.IPV6, 1)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise OSError(f"cannot listen on {to_user_address(endpoint)}: {exc}") from exc
        self._endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._wake_endpoint = f"inproc://rlmesh-wake-{uuid.uuid4().hex}"
        self._wake = self._context.socket(zmq.PAIR)
        self._wake.bind(self._wake_endpoint)

        self._session: str | None = None
        self._last_seen = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._closed = False
        log.info("serving %s on %s", self.contract.env_id or type(self.env).__name__, self.address)

    # --- lifecycle ------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        """The bound address in user form (with the real port when port 0 was asked for)."""
        return to_user_address(self._endpoint)

    def serve(self) -> None:
        """Serve until :meth:`shutdown`, Ctrl-C, SIGTERM or the owner timeout; then clean up."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
        try:
            self._loop()
        except KeyboardInterrupt:
            log.info("interrupted; shutting down")
        finally:
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)
            self._cleanup()

    def start(self) -> EnvServer:
        """Serve in a background thread and return self."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self.serve, name="rlmesh-env-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop serving and release the socket (and the env, when ``close_env``)."""
        self._stop.set()
        if self._thread is not None:
            waker = self._context.socket(zmq.PAIR)
            waker.setsockopt(zmq.LINGER, 0)
            waker.connect(self._wake_endpoint)
            waker.send(b"", zmq.NOBLOCK)
            waker.close()
            if self._thread is not threading.current_thread():
                self._thread.join(timeout)
        else:
            self._cleanup()

    def __enter__(self) -> EnvServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    def _cleanup(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._socket.close(linger=0)
        self._wake.close(linger=0)
        if self._endpoint.startswith("ipc://"):
            try:
                os.unlink(self._endpoint[len("ipc://"):])
            except OSError:
                pass
        if self.close_env:
            try:
                self.env.close()
            except Exception:  # closing must not mask the reason we stopped
                log.exception("error while closing the environment")
        log.info("server on %s stopped", self.address)

    # --- loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        poller = zmq.Poller()
        poller.register(self._socket, zmq.POLLIN)
        poller.register(self._wake, zmq.POLLIN)
        started = time.monotonic()
        while not self._stop.is_set():
            ready = dict(poller.poll(_POLL_MS))
            if self._socket in ready:
                while True:
                    try:
                        frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
                    except zmq.Again:
                        break
                    self._handle(frames)
            now = time.monotonic()
            if self._session is not None and now - self._last_seen > self.session_timeout:
                log.warning("client %s sent nothing for %.0f s; detaching it", self._session[:8],
                            self.session_timeout)
                self._session = None
                self._last_seen = now
            if (self.owner_timeout is not None and self._session is None
                    and now - max(self._last_seen, started) > self.owner_timeout):
                log.warning("no client for %.0f s; stopping (owner_timeout)", self.owner_timeout)
                return

    def _handle(self, frames: list[zmq.Frame]) -> None:
        if len(frames) < 2:
            return  # not even an identity and a header: nothing to answer
        identity = frames[0].bytes
        request_id = -1
        try:
            request = codec.decode([f.bytes if i == 0 else f.buffer for i, f in enumerate(frames[1:])],
                                   self._decode_tensor)
            if not isinstance(request, list) or len(request) != 4 or not isinstance(request[0], str):
                raise ProtocolError("request must be [kind, request_id, session, payload]")
            kind, request_id, session, payload = request
            if not isinstance(request_id, int):
                request_id = -1
                raise ProtocolError("request id must be an integer")
            if kind == Request.HEARTBEAT:
                if session is not None and session == self._session:
                    self._last_seen = time.monotonic()
                return
            result = self._dispatch(kind, session, payload)
        except _ErrorReply as error:
            self._reply(identity, ["error", request_id, error.payload])
            return
        except ProtocolError as exc:
            self._reply(identity, ["error", request_id, _error_payload(ErrorKind.PROTOCOL, exc)])
            return
        except Exception as exc:  # the env raised: report it and keep serving
            log.debug("environment raised", exc_info=True)
            self._reply(identity, ["error", request_id, _error_payload(ErrorKind.ENVIRONMENT, exc)])
            return
        self._last_seen = time.monotonic()
        self._reply(identity, ["ok", request_id, result])

    def _reply(self, identity: bytes, message: list[Any]) -> None:
        try:
            frames = codec.encode(message)
        except TypeError as exc:
            log.warning("reply not encodable (%s); sending unencodable values as their repr", exc)
            frames = codec.encode(message, lenient=True)
        try:
            self._socket.send_multipart([identity, *frames], copy=False)
        except zmq.ZMQError as exc:  # the peer vanished between request and reply
            log.debug("could not reply to a vanished client: %s", exc)

    # --- requests -------------------------------------------------------------------------------

    def _dispatch(self, kind: str, session: Any, payload: Any) -> Any:
        if kind == Request.HELLO:
            return self._hello(session, payload)
        if session is None or session != self._session:
            raise _ErrorReply(ErrorKind.NOT_ATTACHED, "this client is not attached (it closed or "
                              "timed out); reconnect with a new client")
        if kind == Request.STEP:
            return self._step(payload)
        if kind == Request.RESET:
            seed, options = (payload or {}).get("seed"), (payload or {}).get("options")
            obs, info = self.env.reset(seed=seed, options=options)
            return [obs, info]
        if kind == Request.RENDER:
            return self._render(int((payload or {}).get("env_index", 0)))
        if kind == Request.CLOSE:
            self._session = None
            return None
        raise ProtocolError(f"unknown request kind {kind!r}")

    def _hello(self, session: Any, payload: Any) -> Any:
        if not isinstance(session, str) or not isinstance(payload, dict):
            raise ProtocolError("hello needs a session token and a payload")
        if payload.get("protocol") != PROTOCOL_GENERATION:
            raise _ErrorReply(ErrorKind.VERSION, (
                f"protocol generation mismatch: server rlmesh {__version__} speaks generation "
                f"{PROTOCOL_GENERATION}, client rlmesh {payload.get('version')} speaks "
                f"{payload.get('protocol')}; install the same rlmesh version on both sides"))
        if self._session is not None and self._session != session:
            raise _ErrorReply(ErrorKind.BUSY, (
                f"the server at {self.address} already serves another client; close that client "
                "first, or start another server for this one"))
        self._session = session
        self._last_seen = time.monotonic()
        return self.contract.to_wire()

    def _step(self, action: Any) -> Any:
        env = self.env
        if self._vector and isinstance(action, (list, tuple)):
            action = _batch_actions(env, action)
        if self.check_actions and not _contains(env.action_space, action):
            raise _ErrorReply(ErrorKind.INVALID_ACTION,
                              f"action {_short_repr(action)} is not in the action space {env.action_space}")
        obs, reward, terminated, truncated, info = env.step(action)
        return [obs, reward, terminated, truncated, info]

    def _render(self, env_index: int) -> Any:
        env = self.env
        if not self._vector:
            return env.render()
        if not 0 <= env_index < self.contract.num_envs:
            raise _ErrorReply(ErrorKind.INVALID_ACTION,
                              f"env_index {env_index} out of range for {self.contract.num_envs} envs")
        sub_envs = getattr(env, "envs", None)
        if sub_envs is not None:
            return sub_envs[env_index].render()
        frames = env.render()
        return None if frames is None else frames[env_index]

    def _make_contract(self) -> EnvContract:
        env = self.env
        vector = _is_vector(env)
        spec = getattr(env, "spec", None)
        return EnvContract(
            vector=vector,
            num_envs=int(env.num_envs) if vector else 1,
            observation_space=_space_spec(env.observation_space),
            action_space=_space_spec(env.action_space),
            single_observation_space=_space_spec(env.single_observation_space if vector else env.observation_space),
            single_action_space=_space_spec(env.single_action_space if vector else env.action_space),
            metadata=codec.decode(codec.encode(dict(getattr(env, "metadata", {}) or {}), lenient=True)),
            render_mode=getattr(env, "render_mode", None),
            env_id=getattr(spec, "id", None),
            autoreset_mode=_autoreset_mode(env),
            server_version=__version__,
        )


class _ErrorReply(Exception):
    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.payload = {"kind": kind, "type": "", "message": message, "traceback": ""}


def _error_payload(kind: str, exc: BaseException) -> dict[str, str]:
    return {
        "kind": kind,
        "type": type(exc).__qualname__,
        "message": str(exc),
        "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def _raise_keyboard_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def _contains(space: Any, action: Any) -> bool:
    try:
        return bool(space.contains(action))
    except Exception:  # a malformed action can make contains() itself raise
        return False


def _batch_actions(env: Any, actions: Sequence[Any]) -> Any:
    """Stack a list of per-env actions into the batched form the vector env expects."""
    if len(actions) != env.num_envs:
        raise _ErrorReply(ErrorKind.INVALID_ACTION,
                          f"got {len(actions)} actions for {env.num_envs} environments")
    from rlmesh.gym_spaces import stack

    space = env.single_action_space
    try:
        return stack(space, list(actions), env.num_envs)
    except Exception as exc:
        raise _ErrorReply(ErrorKind.INVALID_ACTION,
                          f"actions {_short_repr(actions)} do not fit the action space {space}: {exc}") from exc


def _short_repr(value: Any, limit: int = 120) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
