"""Serve a policy over the rlmesh wire protocol, and the client that calls it.

A model endpoint speaks the same protocol as :class:`~rlmesh.server.EnvServer`: the same
frames and codec, the same ``hello`` with its version check, sessions and heartbeats; instead
of ``reset``/``step`` it answers ``predict`` (payload: an observation, reply: an action). A
policy that raises is reported to the client with its traceback, and the server keeps serving.
"""

from __future__ import annotations

import importlib.util
import logging
import signal
import sys
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar

import zmq

from rlmesh import codec
from rlmesh._version import __version__
from rlmesh.address import to_user_address, to_zmq_endpoint
from rlmesh.backend import PLAIN, Backend
from rlmesh.connection import Connection
from rlmesh.errors import ProtocolError, SourceError
from rlmesh.protocol import PROTOCOL_GENERATION, ErrorKind, Request
from rlmesh.server import _error_payload, _ErrorReply, _raise_keyboard_interrupt

__all__ = ["ModelServer", "PolicyClientBase", "load_policy", "MODEL_KIND"]

log = logging.getLogger(__name__)

#: ``kind`` in a model endpoint's handshake (env endpoints send an env contract instead).
MODEL_KIND = "model"
_POLL_MS = 250


def _backend(name: str) -> Backend:
    if name == "numpy":
        from rlmesh.numpy import BACKEND as numpy_backend

        return numpy_backend
    if name == "torch":
        from rlmesh.torch import BACKEND as torch_backend

        return torch_backend
    if name == "plain":
        return PLAIN
    raise ValueError(f"unknown backend {name!r}; use 'plain', 'numpy' or 'torch'")


def load_policy(app_dir: str | Path, entry: str) -> Callable[[Any], Any]:
    """The predict callable ``entry`` (``"file.py:name"``) names inside ``app_dir``.

    ``name`` may be a function, an object with ``predict``, or a class whose instances have
    ``predict`` (created without arguments).
    """
    filename, _, name = entry.partition(":")
    path = Path(app_dir, filename)
    spec = importlib.util.spec_from_file_location("rlmesh_user_policy", path)
    if spec is None or spec.loader is None:
        raise SourceError(f"cannot load the policy module {path}")
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, str(path.parent))  # the policy may import its sibling modules
    spec.loader.exec_module(module)
    target = getattr(module, name or "predict", None)
    if isinstance(target, type):
        target = target()
    predict = getattr(target, "predict", target)
    if not callable(predict):
        raise SourceError(f"{path} has no callable {name or 'predict'!r} (nor an object with predict())")
    return predict  # type: ignore[no-any-return]


class ModelServer:
    """Serve ``predict`` to one client at a time.

    Args:
        predict: The policy callable.
        address: Where to listen (as for :class:`~rlmesh.server.EnvServer`; port 0 picks one).
        backend: How observations decode before ``predict`` sees them: ``"numpy"``,
            ``"torch"`` or ``"plain"`` (rlmesh Tensors).
        info: Extra handshake fields the client may read (e.g. ``{"batched": True}``).
        session_timeout / owner_timeout: As for :class:`~rlmesh.server.EnvServer`.
    """

    def __init__(self, predict: Callable[[Any], Any], address: str | int = "tcp://127.0.0.1:0", *,
                 backend: str = "numpy", info: Mapping[str, Any] | None = None,
                 session_timeout: float = 30.0, owner_timeout: float | None = None) -> None:
        self.predict = predict
        self.backend = _backend(backend)
        self.info = dict(info or {})
        self.session_timeout = session_timeout
        self.owner_timeout = owner_timeout
        endpoint = to_zmq_endpoint(address)
        if endpoint.startswith("tcp://") and endpoint.endswith(":0"):
            endpoint = endpoint[:-2] + ":*"
        self._context: zmq.Context[Any] = zmq.Context.instance()
        self._socket = self._context.socket(zmq.ROUTER)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            self._socket.bind(endpoint)
        except zmq.ZMQError as exc:
            self._socket.close()
            raise OSError(f"cannot listen on {to_user_address(endpoint)}: {exc}") from exc
        self._endpoint = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self._session: str | None = None
        self._last_seen = time.monotonic()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        log.info("serving a model on %s", self.address)

    @property
    def address(self) -> str:
        return to_user_address(self._endpoint)

    # --- lifecycle ------------------------------------------------------------------------------

    def serve(self) -> None:
        """Serve until :meth:`shutdown`, Ctrl-C, SIGTERM or the owner timeout."""
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
            self._socket.close(linger=0)

    def start(self) -> ModelServer:
        """Serve in a background thread and return self."""
        self._thread = threading.Thread(target=self.serve, name="rlmesh-model-server", daemon=True)
        self._thread.start()
        return self

    def shutdown(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def __enter__(self) -> ModelServer:
        if self._thread is None:
            self.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.shutdown()

    # --- loop -----------------------------------------------------------------------------------

    def _loop(self) -> None:
        started = time.monotonic()
        while not self._stop.is_set():
            if self._socket.poll(_POLL_MS, zmq.POLLIN):
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
            return
        identity = frames[0].bytes
        request_id = -1
        try:
            request = codec.decode([f.bytes if i == 0 else f.buffer for i, f in enumerate(frames[1:])],
                                   self.backend.tensor_factory, self.backend.object_array)
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
        except Exception as exc:  # the policy raised: report it and keep serving
            log.debug("policy raised", exc_info=True)
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
        except zmq.ZMQError as exc:
            log.debug("could not reply to a vanished client: %s", exc)

    def _dispatch(self, kind: str, session: Any, payload: Any) -> Any:
        if kind == Request.HELLO:
            return self._hello(session, payload)
        if session is None or session != self._session:
            raise _ErrorReply(ErrorKind.NOT_ATTACHED, "this client is not attached (it closed or "
                              "timed out); reconnect with a new client")
        if kind == Request.PREDICT:
            return self.predict(payload)
        if kind == Request.CLOSE:
            self._session = None
            return None
        raise ProtocolError(f"unknown request kind {kind!r} for a model endpoint (it answers predict)")

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
                f"the model server at {self.address} already serves another client; close that "
                "client first, or start another server for this one"))
        self._session = session
        self._last_seen = time.monotonic()
        return {**self.info, "kind": MODEL_KIND, "protocol": PROTOCOL_GENERATION,
                "server_version": __version__}


class PolicyClientBase:
    """Client of a :class:`ModelServer`: ``predict(observation)`` calls the served policy.

    Arguments as for :class:`~rlmesh.client.RemoteEnvBase`; the backend decides how actions
    decode.
    """

    _backend: ClassVar[Backend] = PLAIN

    def __init__(self, address: str | int, *, connect_timeout: float = 10.0,
                 request_timeout: float | None = None, heartbeat_interval: float | None = 2.0) -> None:
        self._connection: Connection | None = None
        connection = Connection(to_zmq_endpoint(address), connect_timeout=connect_timeout,
                                request_timeout=request_timeout, heartbeat_interval=heartbeat_interval,
                                tensor_factory=self._backend.tensor_factory,
                                object_array=self._backend.object_array)
        if connection.contract_wire.get("kind") != MODEL_KIND:
            connection.close()
            raise TypeError(f"the endpoint {connection.address} serves an environment, not a model; "
                            "use RemoteEnv or RemoteVectorEnv")
        self._connection = connection
        self.info: dict[str, Any] = dict(connection.contract_wire)

    @property
    def address(self) -> str:
        return self._live().address

    def _live(self) -> Connection:
        if self._connection is None:
            raise ConnectionError("this policy client is closed; create a new one")
        return self._connection

    def predict(self, observation: Any) -> Any:
        """The served policy's action for ``observation``."""
        return self._live().request(Request.PREDICT, observation)

    def close(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def __enter__(self) -> PolicyClientBase:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if getattr(self, "_connection", None) is not None:
                self.close()
        except Exception:  # interpreter shutdown
            pass
