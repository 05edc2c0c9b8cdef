"""The process a sandbox container runs: serve the env (or the policy) its config describes.

Started as ``python -m rlmesh.sandbox_server`` with the JSON config in the ``RLMESH_SANDBOX``
environment variable. It listens on all container interfaces (the engine publishes the port on
the host's loopback only) and stops by itself once its owner stops sending heartbeats.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Any

CONFIG_VARIABLE = "RLMESH_SANDBOX"
#: Exit code when the env cannot be built (shown by the host with the log tail).
EXIT_ENV_FAILED = 3


def main() -> int:
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("rlmesh.sandbox")
    config: dict[str, Any] = json.loads(os.environ[CONFIG_VARIABLE])
    if config.get("kind") == "model":
        return _serve_model(config, log)

    from rlmesh.server import EnvServer
    from rlmesh.sources import make_env

    try:
        env = make_env(
            config["source"],
            num_envs=int(config.get("num_envs", 1)),
            vector=bool(config.get("vector", False)),
            vectorization_mode=str(config.get("vectorization_mode") or "sync"),
            app_dir=config.get("app_dir", "."),
            make_kwargs=config.get("make_kwargs") or {},
        )
    except Exception:
        log.exception("could not create the environment")
        return EXIT_ENV_FAILED
    server = EnvServer(
        env,
        f"tcp://0.0.0.0:{int(config['port'])}",
        owner_timeout=float(config.get("owner_timeout", 15.0)),
        session_timeout=float(config.get("owner_timeout", 15.0)),
    )
    server.serve()
    return 0


def _serve_model(config: dict[str, Any], log: logging.Logger) -> int:
    from rlmesh.model_server import ModelServer, load_policy

    timeout = float(config.get("owner_timeout", 15.0))
    try:
        predict = load_policy(config.get("app_dir", "."), str(config["entry"]))
        server = ModelServer(predict, f"tcp://0.0.0.0:{int(config['port'])}",
                             backend=str(config.get("backend", "numpy")),
                             info={"batched": bool(config.get("batched", False))},
                             owner_timeout=timeout, session_timeout=timeout)
    except Exception:
        log.exception("could not load the policy")
        return EXIT_ENV_FAILED
    server.serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
