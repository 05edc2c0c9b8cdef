"""``python scale_serve.py CONFIG_JSON``: serve one :mod:`scale_envs` env, print ``READY <address>``."""

from __future__ import annotations

import json
import logging
import sys

import scale_envs

from rlmesh import EnvServer


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    config = json.loads(sys.argv[1])
    server = EnvServer(scale_envs.make(config["env"], **config.get("kwargs", {})), "tcp://127.0.0.1:0")
    print("READY", server.address, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
