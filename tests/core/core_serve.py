"""Serve test envs from this process.

``python core_serve.py CONFIG_JSON`` serves one env; ``python core_serve.py --host`` reads one
CONFIG_JSON per line from stdin and serves each from its own thread (one import of the test
stack for many servers), until stdin closes. Either way each server answers ``READY <address>``.
Config keys: ``env`` (name in :mod:`core_envs`), ``env_kwargs``, ``address``, ``server_kwargs``
(``"factory": true`` there serves a factory of the env: one env per session).
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any

import core_envs

from rlmesh import EnvServer


def make_server(config: dict[str, Any]) -> EnvServer:
    server_kwargs = dict(config.get("server_kwargs", {}))
    name, env_kwargs = config["env"], config.get("env_kwargs", {})
    if server_kwargs.pop("factory", False):  # an env of its own for every session
        env: Any = lambda: core_envs.make(name, **env_kwargs)  # noqa: E731
    else:
        env = core_envs.make(name, **env_kwargs)
    return EnvServer(env, config.get("address", "tcp://127.0.0.1:0"), **server_kwargs)


def host() -> None:
    servers = []
    for line in sys.stdin:
        try:
            server = make_server(json.loads(line)).start()
        except Exception as exc:  # report it to the test that asked, keep hosting the others
            print("ERROR", repr(exc).replace("\n", " "), flush=True)
            continue
        servers.append(server)
        print("READY", server.address, flush=True)
    for server in servers:
        server.shutdown()


def main() -> None:
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr)
    if sys.argv[1] == "--host":
        host()
        return
    server = make_server(json.loads(sys.argv[1]))
    print("READY", server.address, flush=True)
    server.serve()


if __name__ == "__main__":
    main()
