"""Serve one test env in this process: ``python core_serve.py '{"env": NAME, ...}'``.

Prints ``READY <address>`` once listening, then serves until SIGTERM or the owner timeout.
Keys: ``env`` (name in :mod:`core_envs`), ``env_kwargs``, ``address``, ``server_kwargs``.
"""

from __future__ import annotations

import json
import logging
import sys

import core_envs

from rlmesh import EnvServer


def main() -> None:
    config = json.loads(sys.argv[1])
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    env = core_envs.make(config["env"], **config.get("env_kwargs", {}))
    server = EnvServer(env, config.get("address", "tcp://127.0.0.1:0"), **config.get("server_kwargs", {}))
    print("READY", server.address, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
