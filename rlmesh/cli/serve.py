"""``rlmesh serve``: serve an env (local, a factory's or a sandbox's) until stopped."""

from __future__ import annotations

import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rlmesh.cli.output import make_console
from rlmesh.cli.targets import (
    SandboxArgs,
    is_address,
    is_sandbox_source,
    local_env,
    open_sandbox,
    parse_make_kwargs,
    sandbox_options,
)
from rlmesh.errors import ContainerError
from rlmesh.protocol.endpoint import DEFAULT_BUSY_POLL

__all__ = ["serve"]


@click.command()
@click.argument("target", metavar="ENV_ID_OR_SOURCE")
@click.argument("make_kwargs", nargs=-1, metavar="[-- KEY=VALUE...]")
@click.option("--address", "-a", default="tcp://127.0.0.1:5555", show_default=True,
              help="Where to listen: tcp://HOST:PORT, HOST:PORT, PORT or unix:///path (port 0: any free).")
@click.option("--num-envs", "-n", type=click.IntRange(min=1), default=1, show_default=True,
              help="Serve a vector env of this many copies.")
@click.option("--vectorization-mode", type=click.Choice(["sync", "async"]),
              help="Vector env mode (implies a vector env, even with --num-envs 1).")
@click.option("--busy-poll", type=click.FloatRange(min=0), default=DEFAULT_BUSY_POLL, show_default=True,
              help="Seconds to poll for the next request after a reply when the client steps "
                   "that fast (0: always sleep between requests).")
@click.option("--server-key", type=click.Path(dir_okay=False), envvar="RLMESH_SERVER_KEY",
              help="This server's secret certificate: encrypt, and admit only authorized clients.")
@click.option("--authorized-keys", type=click.Path(file_okay=False), envvar="RLMESH_AUTHORIZED_KEYS",
              help="Folder of the client public certificates that may attach.")
@click.option("--insecure", is_flag=True,
              help="Serve without keys on an address other hosts can reach.")
@click.option("--allow-calls/--no-allow-calls", default=True, show_default=True,
              help="Answer clients' call/get_attr/set_attr requests (public env methods and "
                   "attributes by name).")
@click.option("--transport", type=click.Choice(["auto", "zmq"]), default="auto", show_default=True,
              help="auto: clients on this host (or in its containers) switch to shared memory; "
                   "zmq: never.")
@sandbox_options
def serve(target: str, make_kwargs: tuple[str, ...], address: str, num_envs: int,
          vectorization_mode: str | None, busy_poll: float, server_key: str | None,
          authorized_keys: str | None, insecure: bool, allow_calls: bool, transport: str,
          **params: Any) -> None:
    """Serve an environment until Ctrl-C.

    ENV_ID_OR_SOURCE is a Gymnasium id (CartPole-v1), a factory (my_pkg.envs:make or
    envs.py:make) returning an env, a vector env or a list of envs, or a sandbox source
    (gym://ID, hf://owner/repo@sha:suite/task, or a directory with env.py). Keyword
    arguments for the env go after `--` as key=value (JSON values, else strings):

    \b
        rlmesh serve CartPole-v1 --address 127.0.0.1:5555 -- max_episode_steps=200

    A sandbox is served through this process: clients connect to --address, and the
    container stops when this command stops. An address other hosts can reach needs
    --server-key and --authorized-keys (see `rlmesh keys new`), or --insecure.
    """
    sandbox = SandboxArgs.pop(params)
    kwargs = parse_make_kwargs(make_kwargs)
    vector = num_envs > 1 or vectorization_mode is not None
    if is_address(target) and not Path(target).is_dir():
        raise click.BadParameter(f"{target!r} is an address; serve needs an env id or source",
                                 param_hint="ENV_ID_OR_SOURCE")
    from rlmesh.server.env import EnvServer

    console = make_console()
    options: dict[str, Any] = {"server_key": server_key, "authorized_keys": authorized_keys, "insecure": insecure,
                               "allow_calls": allow_calls, "transport": transport}
    if is_sandbox_source(target, sandbox.force):
        with open_sandbox(target, sandbox, num_envs, vectorization_mode, kwargs, vector=vector) as session:
            # Relaying through a local server keeps the session's heartbeats (so the container
            # dies with this process) and lets clients use --address like any other server.
            server = EnvServer(session.client, address, close_env=False, busy_poll=busy_poll, **options)
            console.print(f"Serving sandbox {target} (container {session.container_id[:12]} on "
                          f"{session.driver.name}) at [bold]{server.address}[/bold]")
            _serve_until_stopped(server, watch=lambda: _container_alive(session))
        return
    env = local_env(target, num_envs, vectorization_mode, kwargs)
    server = EnvServer(env, address, busy_poll=busy_poll, **options)
    console.print(f"Serving {target} at [bold]{server.address}[/bold]")
    _serve_until_stopped(server)


def _container_alive(session: Any) -> str | None:
    try:
        health = session.driver.health(session.container_id, log_lines=20)
    except ContainerError as exc:  # removed from outside (`docker rm -f`, a reaper)
        return f"the sandbox container is gone: {exc}"
    if health.running:
        return None
    return f"the sandbox container exited with code {health.exit_code}:\n{health.logs_tail}"


def _serve_until_stopped(server: Any, watch: Callable[[], str | None] | None = None) -> None:
    """Serve until SIGINT/SIGTERM (exit 0) or until ``watch`` reports a problem (exit 1).

    The server loop runs on this, the main thread, where it may busy-poll; ``watch`` runs
    every second in a thread of its own and stops the server when it reports a problem.
    """
    problems: list[str] = []

    def keep_watching() -> None:
        assert watch is not None
        while not server.wait(1.0):
            try:
                problem = watch()
            except Exception as exc:  # a watcher that cannot look must not die silently
                problem = f"cannot check on the sandbox: {type(exc).__name__}: {exc}"
            if problem:
                problems.append(problem)
                server.shutdown()
                return

    if watch is not None:
        threading.Thread(target=keep_watching, name="rlmesh-serve-watch", daemon=True).start()
    sys.stdout.flush()
    # SIGINT stops it even where it was inherited ignored (a background job of a script).
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        server.serve()  # Ctrl-C and SIGTERM end it cleanly
    finally:
        signal.signal(signal.SIGINT, previous)
    if problems:
        raise ContainerError(problems[0])
    click.echo("Stopped.", err=True)
