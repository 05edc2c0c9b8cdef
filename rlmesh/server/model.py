"""Serve a policy over the rlmesh wire protocol (its client is :mod:`rlmesh.client.policy`).

A model endpoint speaks the same protocol as :class:`~rlmesh.server.EnvServer`: the same
frames and codec, the same ``hello`` with its version check, sessions and heartbeats; instead
of ``reset``/``step`` it answers ``predict`` (payload: an observation, reply: an action). A
policy that raises is reported to the client with its traceback, and the server keeps serving.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rlmesh._version import __version__
from rlmesh.backends import backend_named
from rlmesh.errors import ProtocolError, SourceError
from rlmesh.protocol.endpoint import DEFAULT_BUSY_POLL, Endpoint
from rlmesh.protocol.messages import MODEL_KIND, PROTOCOL_GENERATION, Request
from rlmesh.usercode import load_module_file

__all__ = ["ModelServer", "load_policy"]

log = logging.getLogger(__name__)


def load_policy(app_dir: str | Path, entry: str) -> Callable[[Any], Any]:
    """The predict callable ``entry`` (``"file.py:name"``) names inside ``app_dir``.

    ``name`` may be a function, an object with ``predict``, or a class whose instances have
    ``predict`` (created without arguments).
    """
    filename, _, name = entry.partition(":")
    path = Path(app_dir, filename)
    try:
        module = load_module_file(path, "rlmesh_user_policy")
    except ImportError as exc:
        raise SourceError(f"cannot load the policy module {path}: {exc}") from exc
    target = getattr(module, name or "predict", None)
    if isinstance(target, type):
        target = target()
    predict = getattr(target, "predict", target)
    if not callable(predict):
        raise SourceError(f"{path} has no callable {name or 'predict'!r} (nor an object with predict())")
    return predict  # type: ignore[no-any-return]


class ModelServer(Endpoint):
    """Serve ``predict`` to one client at a time.

    Args:
        predict: The policy callable.
        address: Where to listen (as for :class:`~rlmesh.server.EnvServer`; port 0 picks one).
        backend: How observations decode before ``predict`` sees them: ``"numpy"``,
            ``"torch"`` or ``"plain"`` (rlmesh Tensors).
        info: Extra handshake fields the client may read (e.g. ``{"batched": True}``).
        session_timeout / owner_timeout / busy_poll / server_key / authorized_keys / insecure /
            transport: As for :class:`~rlmesh.server.EnvServer`.
    """

    role = "model server"

    def __init__(self, predict: Callable[[Any], Any], address: str | int = "tcp://127.0.0.1:0", *,
                 backend: str = "numpy", info: Mapping[str, Any] | None = None,
                 session_timeout: float = 30.0, owner_timeout: float | None = None,
                 busy_poll: float = DEFAULT_BUSY_POLL,
                 server_key: str | os.PathLike[str] | None = None,
                 authorized_keys: str | os.PathLike[str] | None = None, insecure: bool = False,
                 transport: str = "auto") -> None:
        self.predict = predict
        self.backend = backend_named(backend)
        self.info = dict(info or {})
        super().__init__(address, session_timeout=session_timeout, owner_timeout=owner_timeout,
                         busy_poll=busy_poll, tensor_factory=self.backend.tensor_factory,
                         object_array=self.backend.object_array, server_key=server_key,
                         authorized_keys=authorized_keys, insecure=insecure, transport=transport)
        log.info("serving a model on %s", self.address)

    def _handshake(self) -> dict[str, Any]:
        return {**self.info, "kind": MODEL_KIND, "protocol": PROTOCOL_GENERATION,
                "server_version": __version__}

    def _answer(self, session: str, kind: str, payload: Any) -> Any:
        if kind == Request.PREDICT:
            return self.predict(payload)
        raise ProtocolError(f"unknown request kind {kind!r} for a model endpoint (it answers predict)")
