"""The process a sandbox container runs: build the env its config describes and serve it.

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


if __name__ == "__main__":
    sys.exit(main())
