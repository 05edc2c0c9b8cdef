"""The process a sandbox container runs: serve the env (or the policy) its config describes.

Started as ``python -m rlmesh.sandbox.entry`` with the JSON config in the ``RLMESH_SANDBOX``
environment variable and its keys in the secrets folder (:data:`rlmesh.runtime.secrets.SECRETS_DIR`).
It listens on all container interfaces (the engine publishes the port on the host's loopback
only), lets in only the client whose key its owner handed over, and stops by itself once its
owner stops sending heartbeats.
:func:`build_server` is shared with runtimes that run no container (the Ray driver).
"""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

from rlmesh.protocol.endpoint import Endpoint
from rlmesh.protocol.keys import AUTHORIZED_FOLDER, SERVER_SECRET_FILE
from rlmesh.runtime.secrets import SECRETS_DIR
from rlmesh.sandbox.sources import make_env
from rlmesh.server.env import EnvServer
from rlmesh.server.model import ModelServer, load_policy

__all__ = ["COMMAND", "CONFIG_VARIABLE", "EXIT_ENV_FAILED", "build_server", "main"]

CONFIG_VARIABLE = "RLMESH_SANDBOX"
#: The command a sandbox runs: this module.
COMMAND = ("python", "-m", __name__)
#: Exit code when the env cannot be built (shown by the host with the log tail).
EXIT_ENV_FAILED = 3


def build_server(config: dict[str, Any], address: str, app_dir: str | Path,
                 keys: str | Path) -> Endpoint:
    """The env or model server ``config`` describes, bound to ``address`` (not serving yet).

    ``keys`` is the server's keys folder (:meth:`ServerKeys.from_folder`): its secret
    certificate and its owner's public one. Every sandbox session is keyed, so nobody else who
    reaches the port (another user of the host, a neighbour on the bridge or the cluster) can
    attach or read the traffic.
    """
    timeout = float(config.get("owner_timeout", 15.0))
    server_key, authorized_keys = Path(keys, SERVER_SECRET_FILE), Path(keys, AUTHORIZED_FOLDER)
    if config.get("kind") == "model":
        predict = load_policy(str(app_dir), str(config["entry"]))
        return ModelServer(predict, address, backend=str(config.get("backend", "numpy")),
                           info={"batched": bool(config.get("batched", False))},
                           owner_timeout=timeout, session_timeout=timeout,
                           server_key=server_key, authorized_keys=authorized_keys)
    env = make_env(
        config["source"],
        num_envs=int(config.get("num_envs", 1)),
        vector=bool(config.get("vector", False)),
        vectorization_mode=str(config.get("vectorization_mode") or "sync"),
        app_dir=app_dir,
        make_kwargs=config.get("make_kwargs") or {},
    )
    return EnvServer(env, address, owner_timeout=timeout, session_timeout=timeout,
                           server_key=server_key, authorized_keys=authorized_keys)


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("rlmesh.sandbox")
    config: dict[str, Any] = json.loads(os.environ[CONFIG_VARIABLE])
    try:
        server = build_server(config, f"tcp://0.0.0.0:{int(config['port'])}", config.get("app_dir", "."),
                              SECRETS_DIR)
    except Exception:
        what = "the policy" if config.get("kind") == "model" else "the environment"
        log.exception("could not create %s", what)
        return EXIT_ENV_FAILED
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
