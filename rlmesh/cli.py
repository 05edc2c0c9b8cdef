"""The ``rlmesh`` command: serve and evaluate envs, inspect runtimes, manage images and sandboxes.

Exit codes: 0 success, 1 failure (one readable line plus a hint; ``--verbose`` adds the
traceback), 2 usage error, 130 interrupted.

Targets (``serve`` and ``eval``) are read as follows:

- ``tcp://H:P``, ``H:P``, a bare port, ``unix:///path`` (``eval`` only): a running server;
- ``module:factory`` or ``path/to/file.py:factory``: a callable returning an env (or a vector
  env, or a list of envs), run in this process;
- a Gymnasium id such as ``CartPole-v1``: ``gymnasium.make`` in this process;
- ``gym://ID``, ``hf://owner/repo@sha:suite/task`` or a directory holding ``env.py``: a sandbox
  (container) built from that source.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import logging
import os
import platform
import re
import shutil
import signal
import statistics
import sys
import threading
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.table import Table

from rlmesh._version import __version__
from rlmesh.endpoint import DEFAULT_BUSY_POLL
from rlmesh.errors import (
    ContainerError,
    ImageBuildError,
    PackageSpecError,
    RLMeshError,
    RuntimeUnavailableError,
    SourceError,
    VersionMismatchError,
)

__all__ = ["main", "cli"]

log = logging.getLogger(__name__)

F = TypeVar("F", bound=Callable[..., Any])

#: Exit code of an interrupted command (the shell convention for SIGINT).
EXIT_INTERRUPTED = 130
_ADDRESS = re.compile(r"^(?:(?:tcp|unix|ipc)://.+|\d{1,5}|\[?[\w.:-]*\]?:\d{1,5})$")
_FACTORY = re.compile(r"^(?P<module>[^:]+\.py|[A-Za-z_][\w.]*):(?P<attr>[A-Za-z_][\w.]*)$")
_SANDBOX_PREFIXES = ("gym://", "hf://")


# --- errors -------------------------------------------------------------------------------------

class CommandError(click.ClickException):
    """A failure shown as one line plus a hint (exit code 1)."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint

    def show(self, file: Any = None) -> None:
        click.secho(f"Error: {self.format_message()}", err=True, fg="red")
        if self.hint:
            click.echo(f"Hint: {self.hint}", err=True)


def _hint_for(exc: BaseException) -> str:
    if isinstance(exc, RuntimeUnavailableError):
        return "run `rlmesh runtimes` to see which engines work here, or `rlmesh doctor`"
    if isinstance(exc, VersionMismatchError):
        return "install the same rlmesh version on both sides"
    if isinstance(exc, PackageSpecError):
        return "pass plain pip requirements such as --package gymnasium==1.3.0 (no pip options or shell syntax)"
    if isinstance(exc, SourceError):
        return ("on the command line use --trust-remote-code / --allow-unpinned-hf; "
                "`rlmesh serve --help` lists the accepted source forms")
    if isinstance(exc, ImageBuildError):
        return "rerun with --verbose to see the build log"
    if isinstance(exc, ContainerError):
        return "rerun with --verbose to see the container's last log lines"
    if isinstance(exc, (ConnectionError, TimeoutError)):
        return "is a server running there? Start one with `rlmesh serve ENV_ID --address ADDRESS`"
    if isinstance(exc, ImportError):
        return "install the missing package (pip install \"rlmesh[all]\" brings every extra)"
    return "rerun with --verbose for the traceback"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    lines = text.splitlines()
    more = " (more with --verbose)" if len(lines) > 1 else ""
    return lines[0] + more


class _Group(click.Group):
    """Turns every unexpected exception into a :class:`CommandError` (and a traceback with -v)."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("Interrupted.", err=True)
            raise click.exceptions.Exit(EXIT_INTERRUPTED) from None
        except Exception as exc:
            if _verbose(ctx):
                traceback.print_exc()
                if isinstance(exc, RLMeshError) and "\n" in str(exc):
                    click.echo(str(exc), err=True)
            raise CommandError(_first_line(exc), _hint_for(exc)) from exc


def _verbose(ctx: click.Context) -> bool:
    root = ctx.find_root()
    return bool(root.params.get("verbose"))


def _console() -> Console:
    return Console(highlight=False, soft_wrap=True)


# --- the group ----------------------------------------------------------------------------------

@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "-V", "--version", prog_name="rlmesh")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
def cli(verbose: bool) -> None:
    """Connect RL models to Gymnasium environments across processes, containers and machines."""
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s" if verbose else "%(message)s",
        stream=sys.stderr,
    )
    if not verbose:  # engine clients are chatty at INFO
        for noisy in ("urllib3", "docker", "podman", "python_on_whales", "httpx", "filelock"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``rlmesh`` console script; returns the exit code."""
    args = list(sys.argv[1:] if argv is None else argv)
    # "rlmesh eval ADDR --verbose" works too: the flag belongs to the group, so move it there.
    end = args.index("--") if "--" in args else len(args)
    flags = [a for a in args[:end] if a in ("-v", "--verbose")]
    args = flags + [a for a in args[:end] if a not in flags] + args[end:]
    try:
        cli.main(args=args, prog_name="rlmesh", standalone_mode=False)
    except click.exceptions.Exit as exc:
        return int(exc.exit_code)
    except click.Abort:  # a declined confirmation (or Ctrl-C at a prompt): nothing was done
        click.echo("Aborted.", err=True)
        return 1
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    return 0


# --- shared options and target resolution -------------------------------------------------------

def _runtime_option(func: F) -> F:
    func = click.option("--host", metavar="URL",
                        help="Engine socket, e.g. unix:///run/podman/podman.sock.")(func)
    return click.option("--runtime", "-r", metavar="NAME", envvar="RLMESH_RUNTIME",
                        help="Runtime driver (docker, podman, cli, a plugin). "
                             "Default: $RLMESH_RUNTIME or the first available.")(func)


def _sandbox_options(func: F) -> F:
    options = [
        click.option("--sandbox", "force_sandbox", is_flag=True,
                     help="Run a plain Gymnasium id in a sandbox (same as gym://ID)."),
        click.option("--package", "-p", "packages", multiple=True, metavar="SPEC",
                     help="pip requirement to install in the sandbox (repeatable)."),
        click.option("--import", "imports", multiple=True, metavar="MODULE",
                     help="Module imported at build time to check the sandbox (repeatable)."),
        click.option("--base-image", metavar="IMAGE", help="Sandbox base image."),
        click.option("--rlmesh-package", metavar="SPEC",
                     help="rlmesh inside the sandbox: pip spec, wheel path or 'local'."),
        click.option("--trust-remote-code", is_flag=True, help="Allow a source's repository code to run."),
        click.option("--allow-unpinned-hf", is_flag=True, help="Allow an hf:// source without a commit sha."),
        click.option("--capability", "capabilities", multiple=True, type=click.Choice(["gpu", "network"]),
                     help="Runtime feature for the sandbox (repeatable)."),
        _runtime_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass
class _SandboxArgs:
    force: bool
    packages: tuple[str, ...]
    imports: tuple[str, ...]
    base_image: str | None
    rlmesh_package: str | None
    trust_remote_code: bool
    allow_unpinned_hf: bool
    capabilities: tuple[str, ...]
    runtime: str | None
    host: str | None

    @classmethod
    def pop(cls, params: dict[str, Any]) -> _SandboxArgs:
        return cls(
            force=params.pop("force_sandbox"), packages=params.pop("packages"),
            imports=params.pop("imports"), base_image=params.pop("base_image"),
            rlmesh_package=params.pop("rlmesh_package"),
            trust_remote_code=params.pop("trust_remote_code"),
            allow_unpinned_hf=params.pop("allow_unpinned_hf"),
            capabilities=params.pop("capabilities"), runtime=params.pop("runtime"),
            host=params.pop("host"),
        )

    def session_kwargs(self) -> dict[str, Any]:
        runtime: Any = self.runtime
        if self.host:
            from rlmesh.runtime import get_driver

            runtime = get_driver(self.runtime, host=self.host)
        return {
            "packages": list(self.packages) or None, "imports": list(self.imports) or None,
            "base_image": self.base_image, "rlmesh_package": self.rlmesh_package,
            "trust_remote_code": self.trust_remote_code, "allow_unpinned_hf": self.allow_unpinned_hf,
            "capabilities": list(self.capabilities) or None, "runtime": runtime,
        }


def is_address(target: str) -> bool:
    """Whether ``target`` names a server address rather than an env."""
    return bool(_ADDRESS.match(target)) and not _FACTORY.match(target)


def _is_sandbox_source(target: str, force: bool) -> bool:
    return force or target.startswith(_SANDBOX_PREFIXES) or Path(target.partition(":")[0]).is_dir()


def parse_make_kwargs(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values are JSON when they parse as JSON, strings otherwise."""
    kwargs: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.isidentifier():
            raise click.BadParameter(f"{item!r} is not key=value (e.g. max_episode_steps=200)",
                                     param_hint="MAKE_KWARGS")
        try:
            kwargs[key] = json.loads(raw)
        except ValueError:
            kwargs[key] = raw
    return kwargs


def load_callable(path: str, what: str) -> Callable[..., Any]:
    """Load ``module:attr`` or ``file.py:attr``; raises :class:`CommandError` with the fix."""
    match = _FACTORY.match(path)
    if not match:
        raise click.BadParameter(f"{path!r} is not 'module:name' or 'file.py:name'", param_hint=what)
    module_name, attr = match["module"], match["attr"]
    try:
        if module_name.endswith(".py"):
            file = Path(module_name).resolve()
            spec = importlib.util.spec_from_file_location(file.stem, file)
            if spec is None or spec.loader is None or not file.is_file():
                raise CommandError(f"cannot load {what} {path!r}: no file {file}",
                                   "give a path to an existing .py file")
            module = importlib.util.module_from_spec(spec)
            sys.path.insert(0, str(file.parent))  # the file may import its siblings
            spec.loader.exec_module(module)
        else:
            sys.path.insert(0, os.getcwd())  # like `python -m`, find modules in the cwd
            module = importlib.import_module(module_name)
    except ImportError as exc:
        raise CommandError(f"cannot import {module_name!r} for {what} {path!r}: {exc}",
                           "check the module name and that its package is installed") from exc
    target: Any = module
    for part in attr.split("."):
        if not hasattr(target, part):
            raise CommandError(f"{module_name!r} has no attribute {attr!r} ({what} {path!r})",
                               "check the name after the ':'")
        target = getattr(target, part)
    if not callable(target):
        raise CommandError(f"{what} {path!r} is not callable", "point at a function or class")
    result: Callable[..., Any] = target
    return result


def _gym_make(env_id: str, num_envs: int, mode: str | None, kwargs: dict[str, Any]) -> Any:
    try:
        import gymnasium
    except ImportError as exc:
        raise CommandError("serving a Gymnasium id needs gymnasium",
                           'pip install "rlmesh[gymnasium]"') from exc
    try:
        if num_envs > 1 or mode is not None:
            return gymnasium.make_vec(env_id, num_envs=num_envs, vectorization_mode=mode or "sync", **kwargs)
        return gymnasium.make(env_id, **kwargs)
    except gymnasium.error.Error as exc:
        raise CommandError(f"cannot make {env_id!r}: {exc}",
                           "check the id (e.g. CartPole-v1) and that its package is installed") from exc


def _local_env(target: str, num_envs: int, mode: str | None, kwargs: dict[str, Any]) -> Any:
    """The env a non-sandbox, non-address target names, built in this process."""
    if _FACTORY.match(target):  # never a Gymnasium id: those end in -vN, not an identifier
        if num_envs > 1 or mode is not None:
            raise click.UsageError("--num-envs/--vectorization-mode apply to Gymnasium ids and "
                                   "sandboxes; let the factory return a vector env (or a list of envs)")
        return load_callable(target, "factory")(**kwargs)
    from rlmesh.sources import parse_source

    parse_source(target)  # the same id rules (and error message) as sandboxes
    return _gym_make(target, num_envs, mode, kwargs)


def _open_sandbox(target: str, sandbox: _SandboxArgs, num_envs: int, mode: str | None,
                  kwargs: dict[str, Any], *, vector: bool) -> Any:
    try:
        from rlmesh.numpy import SandboxEnv, SandboxVectorEnv
    except ImportError as exc:
        raise CommandError("sandboxes from the command line need NumPy",
                           'pip install "rlmesh[numpy]"') from exc
    options = {**sandbox.session_kwargs(), **kwargs}
    if vector:
        return SandboxVectorEnv(target, num_envs=num_envs, vectorization_mode=mode or "sync", **options)
    return SandboxEnv(target, **options)


# --- serve --------------------------------------------------------------------------------------

@cli.command()
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
@_sandbox_options
def serve(target: str, make_kwargs: tuple[str, ...], address: str, num_envs: int,
          vectorization_mode: str | None, busy_poll: float, **params: Any) -> None:
    """Serve an environment until Ctrl-C.

    ENV_ID_OR_SOURCE is a Gymnasium id (CartPole-v1), a factory (my_pkg.envs:make or
    envs.py:make) returning an env, a vector env or a list of envs, or a sandbox source
    (gym://ID, hf://owner/repo@sha:suite/task, or a directory with env.py). Keyword
    arguments for the env go after `--` as key=value (JSON values, else strings):

    \b
        rlmesh serve CartPole-v1 --address 127.0.0.1:5555 -- max_episode_steps=200

    A sandbox is served through this process: clients connect to --address, and the
    container stops when this command stops.
    """
    sandbox = _SandboxArgs.pop(params)
    kwargs = parse_make_kwargs(make_kwargs)
    vector = num_envs > 1 or vectorization_mode is not None
    if is_address(target) and not Path(target).is_dir():
        raise click.BadParameter(f"{target!r} is an address; serve needs an env id or source",
                                 param_hint="ENV_ID_OR_SOURCE")
    from rlmesh.server import EnvServer

    console = _console()
    if _is_sandbox_source(target, sandbox.force):
        with _open_sandbox(target, sandbox, num_envs, vectorization_mode, kwargs, vector=vector) as session:
            # Relaying through a local server keeps the session's heartbeats (so the container
            # dies with this process) and lets clients use --address like any other server.
            server = EnvServer(session.client, address, close_env=False, busy_poll=busy_poll)
            console.print(f"Serving sandbox {target} (container {session.container_id[:12]} on "
                          f"{session.driver.name}) at [bold]{server.address}[/bold]")
            _serve_until_stopped(server, watch=lambda: _container_alive(session))
        return
    env = _local_env(target, num_envs, vectorization_mode, kwargs)
    server = EnvServer(env, address, busy_poll=busy_poll)
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


# --- eval ---------------------------------------------------------------------------------------

def _policy_from(path: str | None, action_space: Any, seed: int | None) -> Callable[[Any], Any]:
    """The loaded policy, or a random one sampling ``action_space`` seeded with ``seed``."""
    if path is None:
        action_space.seed(seed)
        return lambda observation: action_space.sample()
    loaded: Any = load_callable(path, "policy")
    if isinstance(loaded, type):  # a class: instantiate it; Model then uses its predict
        instance: Callable[[Any], Any] = loaded()
        return instance
    policy: Callable[[Any], Any] = loaded
    return policy


@contextmanager
def _eval_env(target: str, sandbox: _SandboxArgs, kwargs: dict[str, Any],
              connect_timeout: float) -> Iterator[Any]:
    if is_address(target) and not Path(target).is_dir():
        if kwargs:
            raise click.BadParameter("env keyword arguments cannot be sent to a running server",
                                     param_hint="MAKE_KWARGS")
        from rlmesh.numpy import RemoteEnv, RemoteVectorEnv

        try:
            env: Any = RemoteEnv(target, connect_timeout=connect_timeout)
        except TypeError:  # the endpoint serves a vector env: its lanes run episodes in parallel
            env = RemoteVectorEnv(target, connect_timeout=connect_timeout)
    elif _is_sandbox_source(target, sandbox.force):
        env = _open_sandbox(target, sandbox, 1, None, kwargs, vector=False)
    else:
        env = _local_env(target, 1, None, kwargs)
    try:
        yield env
    finally:
        env.close()


@cli.command(name="eval")
@click.argument("target", metavar="ADDRESS_OR_SOURCE")
@click.argument("make_kwargs", nargs=-1, metavar="[-- KEY=VALUE...]")
@click.option("--episodes", "-e", type=click.IntRange(min=1), default=10, show_default=True)
@click.option("--seed", "-s", type=int, default=0, show_default=True,
              help="Episode i resets with seed+i; the random policy is seeded with it too.")
@click.option("--policy", metavar="MODULE:CALLABLE",
              help="policy(observation) -> action, or an object/class with predict(). Default: random.")
@click.option("--max-steps", type=click.IntRange(min=1), help="Cut episodes after this many steps.")
@click.option("--max-seconds", type=click.FloatRange(min=0, min_open=True),
              help="Stop the whole run after this much wall time.")
@click.option("--connect-timeout", type=click.FloatRange(min=0.1), default=10.0, show_default=True,
              help="Seconds to wait for a server.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@_sandbox_options
def evaluate(target: str, make_kwargs: tuple[str, ...], episodes: int, seed: int,
             policy: str | None, max_steps: int | None, max_seconds: float | None,
             connect_timeout: float, as_json: bool, **params: Any) -> None:
    """Evaluate a policy (random by default) with Model.run and print a results table.

    ADDRESS_OR_SOURCE is a server address (tcp://127.0.0.1:5555, 127.0.0.1:5555, 5555,
    unix:///path; single or vector endpoint) or anything `rlmesh serve` accepts, which is
    then run for the evaluation. The policy receives NumPy observations.
    """
    from rlmesh.numpy import Model

    sandbox = _SandboxArgs.pop(params)
    kwargs = parse_make_kwargs(make_kwargs)
    with _eval_env(target, sandbox, kwargs, connect_timeout) as env:
        space = getattr(env, "single_action_space", None) or env.action_space
        model = Model(_policy_from(policy, space, seed))
        result = model.run(env, seeds=seed, episodes=episodes, max_steps=max_steps,
                           max_seconds=max_seconds, close_env=False)
    if as_json:
        click.echo(json.dumps({"target": target, **result.to_dict()}, indent=2))
        return
    _print_results(result, target)


def _print_results(result: Any, target: str) -> None:
    table = Table(title=f"Evaluation of {target}")
    for column in ("episode", "seed", "steps", "return", "terminated", "truncated", "success", "seconds"):
        table.add_column(column, justify="right")
    for e in result.episodes:
        success = "" if e.success is None else ("yes" if e.success else "no")
        table.add_row(str(e.index), str(e.seed), str(e.steps), f"{e.episode_return:.3f}",
                      "yes" if e.terminated else "no", "yes" if e.truncated else "no", success,
                      f"{e.duration:.3f}")
    console = _console()
    console.print(table)
    returns = result.returns
    spread = statistics.pstdev(returns) if returns else 0.0
    success = "" if result.success_rate is None else f", success rate {result.success_rate:.1%}"
    console.print(f"mean return {result.mean_reward:.3f} ± {spread:.3f} over {result.num_episodes} "
                  f"episodes, {result.total_steps} steps ({result.steps_per_second:.0f} steps/s){success}")
    console.print(f"latency: predict {result.predict_latency}, step {result.step_latency}")


# --- runtimes -----------------------------------------------------------------------------------

@dataclass
class _DriverStatus:
    name: str
    provider: str
    ok: bool
    version: str = ""
    rootless: bool = False
    reason: str = ""
    driver: Any = None


def _driver_statuses(host: str | None = None) -> list[_DriverStatus]:
    from rlmesh.runtime import get_driver, installed_drivers

    statuses = []
    for name, point in sorted(installed_drivers().items()):
        provider = f"{point.value} ({point.dist.name if point.dist else '?'})"
        try:
            driver = get_driver(name, **({"host": host} if host else {}))
        except Exception as exc:  # a plugin's constructor may raise anything; keep diagnosing
            statuses.append(_DriverStatus(name, provider, False, reason=str(exc) or type(exc).__name__))
            continue
        availability = driver.available()
        statuses.append(_DriverStatus(name, provider, availability.ok, availability.version,
                                      availability.rootless, availability.reason, driver))
    return statuses


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def runtimes(as_json: bool) -> None:
    """List installed runtime drivers and whether each works here."""
    statuses = _driver_statuses()
    try:
        if as_json:
            click.echo(json.dumps([{k: v for k, v in vars(s).items() if k != "driver"}
                                   for s in statuses], indent=2))
            return
        table = Table(title="Runtime drivers (entry-point group rlmesh.runtimes)")
        for column in ("driver", "available", "engine", "rootless", "provided by", "why not"):
            table.add_column(column)
        for s in statuses:
            table.add_row(s.name, "[green]yes[/green]" if s.ok else "[red]no[/red]", s.version,
                          ("yes" if s.rootless else "no") if s.ok else "", s.provider,
                          s.reason.splitlines()[0] if s.reason else "")
        console = _console()
        console.print(table)
        if not statuses:
            console.print('No drivers installed: pip install "rlmesh[docker]" (or podman, cli).')
    finally:
        for s in statuses:
            if s.driver is not None:
                s.driver.close()


# --- doctor -------------------------------------------------------------------------------------

#: Optional imports and the extra that installs each.
OPTIONAL = {
    "numpy": "numpy", "torch": "torch", "gymnasium": "gymnasium", "ml_dtypes": "bfloat16",
    "huggingface_hub": "hf", "docker": "docker", "podman": "podman", "python_on_whales": "cli",
}
_REQUIRED = ("zmq", "msgpack", "click", "rich")


@dataclass
class Check:
    """One doctor finding: ``level`` is ``ok``, ``warn`` (optional) or ``fail`` (required)."""

    name: str
    level: str
    detail: str
    fix: str = ""


_DISTRIBUTIONS = {"zmq": "pyzmq", "python_on_whales": "python-on-whales", "huggingface_hub": "huggingface-hub"}


def _module_version(module: str) -> str:
    """Import ``module`` (raising ImportError when absent) and return its distribution's version."""
    found = importlib.import_module(module)
    try:
        return metadata.version(_DISTRIBUTIONS.get(module, module))
    except metadata.PackageNotFoundError:
        return str(getattr(found, "__version__", "") or "installed")


def _python_checks() -> list[Check]:
    ok = sys.version_info >= (3, 10)
    checks = [Check("python", "ok" if ok else "fail", f"{platform.python_version()} ({sys.executable})",
                    "" if ok else "use Python 3.10 or newer")]
    for module in _REQUIRED:
        try:
            checks.append(Check(module, "ok", _module_version(module)))
        except ImportError as exc:
            checks.append(Check(module, "fail", f"missing: {exc}", "pip install --force-reinstall rlmesh"))
    for module, extra in OPTIONAL.items():
        try:
            checks.append(Check(module, "ok", _module_version(module)))
        except ImportError:
            checks.append(Check(module, "warn", "not installed", f'pip install "rlmesh[{extra}]"'))
        except Exception as exc:  # installed but broken: worse than missing
            checks.append(Check(module, "fail", f"import fails: {exc}", f'pip install --force-reinstall "rlmesh[{extra}]"'))
    return checks


def _socket_check(name: str, url: str) -> Check:
    path = url[len("unix://"):] if url.startswith("unix://") else None
    if path is None:
        return Check(name, "ok", f"{url} (not a unix socket; not checked)")
    if not os.path.exists(path):
        return Check(name, "warn", f"{path} does not exist", "start the engine (see CONTRIBUTING.md: .ci/engines.sh)")
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(name, "warn", f"{path} is not accessible to this user",
                     "use your own rootless socket or join the engine's group")
    return Check(name, "ok", path)


def _engine_checks() -> list[Check]:
    checks = []
    for binary in ("dockerd", "docker", "podman", "mmdebstrap"):
        where = shutil.which(binary)
        checks.append(Check(f"{binary} binary", "ok" if where else "warn", where or "not on PATH",
                            "" if where else f"apt-get install {'docker.io' if binary == 'dockerd' else binary}"))
    checks.append(_socket_check("docker socket", os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"))
    try:
        from rlmesh_runtimes.podman import default_socket
    except ImportError:
        pass
    else:
        checks.append(_socket_check("podman socket", default_socket()))
    return checks


def _runtime_checks() -> list[Check]:
    from rlmesh_images.bootstrap import default_base_image

    checks = []
    base = default_base_image()
    statuses = _driver_statuses()
    try:
        for s in statuses:
            if not s.ok:
                checks.append(Check(f"runtime {s.name}", "warn", s.reason.splitlines()[0] if s.reason else "unavailable",
                                    "start its engine, or ignore if you use another runtime"))
                continue
            checks.append(Check(f"runtime {s.name}", "ok", s.version + (" (rootless)" if s.rootless else "")))
            try:
                present = s.driver.image_exists(base)
            except RLMeshError as exc:
                checks.append(Check(f"base image on {s.name}", "fail", str(exc).splitlines()[0],
                                    f"check the engine behind {s.name}"))
                continue
            checks.append(Check(f"base image on {s.name}", "ok" if present else "fail",
                                base if present else f"{base} is missing (sandboxes cannot build)",
                                "" if present else f"rlmesh images bootstrap --runtime {s.name}"))
    finally:
        for s in statuses:
            if s.driver is not None:
                s.driver.close()
    if not any(s.ok for s in statuses):
        checks.append(Check("sandboxes", "warn", "no runtime is available; serving and remote clients still work",
                            "start dockerd or podman (see the runtimes page of the docs)"))
    return checks


@cli.command()
def doctor() -> None:
    """Check this machine for rlmesh and print what to fix (exit 1 if something required is missing)."""
    checks = [*_python_checks(), *_engine_checks(), *_runtime_checks()]
    marks = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
    table = Table(title=f"rlmesh {__version__} doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.name, marks[c.level], c.detail, c.fix)
    console = _console()
    console.print(table)
    failed = [c for c in checks if c.level == "fail"]
    if failed:
        raise CommandError(f"{len(failed)} required check(s) failed: {', '.join(c.name for c in failed)}",
                           "; ".join(dict.fromkeys(c.fix for c in failed if c.fix)))
    console.print("Everything required is in place.")


# --- images -------------------------------------------------------------------------------------

def _driver(runtime: str | None, host: str | None) -> Any:
    from rlmesh.runtime import get_driver

    return get_driver(runtime, **({"host": host} if host else {}))


@cli.group()
def images() -> None:
    """Base image bootstrap and rlmesh's sandbox images."""


class _LineForwarder(logging.Handler):
    def __init__(self, callback: Callable[[str], None]) -> None:
        super().__init__(logging.INFO)
        self.callback = callback

    def emit(self, record: logging.LogRecord) -> None:
        self.callback(record.getMessage())


@images.command()
@_runtime_option
@click.option("--tag", metavar="IMAGE", help="Image tag (default: $RLMESH_BASE_IMAGE or rlmesh-base:bookworm).")
@click.option("--mirror", metavar="URL", help="Debian mirror (default: the host's apt source).")
@click.option("--tarball", type=click.Path(dir_okay=False, path_type=Path),
              help="Root filesystem tarball: reused when it exists (carry one to air-gapped hosts).")
@click.option("--force", is_flag=True, help="Rebuild the root filesystem and import again.")
def bootstrap(runtime: str | None, host: str | None, tag: str | None, mirror: str | None,
              tarball: Path | None, force: bool) -> None:
    """Build the Debian + Python base image locally (no registry) and import it."""
    from rlmesh.progress import progress_lines
    from rlmesh_images.bootstrap import bootstrap as run_bootstrap
    from rlmesh_images.bootstrap import default_base_image

    driver = _driver(runtime, host)
    target = tag or default_base_image()
    bootstrap_log = logging.getLogger("rlmesh_images.bootstrap")
    try:
        with progress_lines(f"Bootstrapping {target} on {driver.name}") as line:
            forwarder = _LineForwarder(line)
            bootstrap_log.addHandler(forwarder)
            try:
                result = run_bootstrap(driver, target, tarball=tarball, mirror=mirror, force=force)
            finally:
                bootstrap_log.removeHandler(forwarder)
    finally:
        driver.close()
    _console().print(f"{driver.name} has [bold]{result}[/bold]")


@images.command(name="list")
@_runtime_option
def list_images(runtime: str | None, host: str | None) -> None:
    """List sandbox images built by rlmesh (and whether the base image is present)."""
    from rlmesh.runtime.labels import MANAGED
    from rlmesh_images.bootstrap import default_base_image

    driver = _driver(runtime, host)
    try:
        tags = driver.list_images({MANAGED: "true"})
        base = default_base_image()
        has_base = driver.image_exists(base)
    finally:
        driver.close()
    table = Table(title=f"rlmesh images on {driver.name}")
    table.add_column("image")
    table.add_column("kind")
    table.add_row(base, "base" if has_base else "[red]base (missing: rlmesh images bootstrap)[/red]")
    for tag in tags:
        table.add_row(tag, "sandbox")
    _console().print(table)


@images.command()
@_runtime_option
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
def prune(runtime: str | None, host: str | None, yes: bool) -> None:
    """Remove every sandbox image rlmesh built (the base image is kept)."""
    from rlmesh.runtime.labels import MANAGED

    driver = _driver(runtime, host)
    try:
        tags = driver.list_images({MANAGED: "true"})
        if not tags:
            click.echo(f"No rlmesh sandbox images on {driver.name}.")
            return
        if not yes:
            click.confirm(f"Remove {len(tags)} sandbox image(s) from {driver.name}?", abort=True)
        failed = []
        for tag in tags:
            try:
                driver.remove_image(tag)
                click.echo(f"removed {tag}")
            except RLMeshError as exc:
                failed.append(tag)
                click.echo(f"could not remove {tag}: {_first_line(exc)}", err=True)
    finally:
        driver.close()
    if failed:
        raise CommandError(f"{len(failed)} image(s) could not be removed",
                           "stop the containers using them (rlmesh sandbox ls) and retry")


# --- sandbox ------------------------------------------------------------------------------------

@cli.group()
def sandbox() -> None:
    """rlmesh's sandbox containers."""


@sandbox.command(name="ls")
@_runtime_option
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_sandboxes(runtime: str | None, host: str | None, as_json: bool) -> None:
    """List containers started by rlmesh, with their owner and whether it still runs."""
    from rlmesh.runtime import labels

    driver = _driver(runtime, host)
    try:
        found = driver.list({labels.MANAGED: "true"})
    finally:
        driver.close()
    rows = [{
        "id": info.id[:12], "name": info.name, "running": info.running,
        "session": info.labels.get(labels.SESSION, "")[:12],
        "owner": f"{info.labels.get(labels.OWNER_PID, '?')}@{info.labels.get(labels.HOST, '?')}",
        "orphan": labels.owner_is_gone(info.labels), "version": info.labels.get(labels.VERSION, ""),
    } for info in found]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = Table(title=f"rlmesh containers on {driver.name}")
    for column in rows[0] if rows else ("id",):
        table.add_column(column)
    for row in rows:
        table.add_row(*(("yes" if v else "no") if isinstance(v, bool) else str(v) for v in row.values()))
    _console().print(table if rows else f"No rlmesh containers on {driver.name}.")


@sandbox.command()
@_runtime_option
def reap(runtime: str | None, host: str | None) -> None:
    """Remove rlmesh containers whose owning process is gone."""
    from rlmesh.runtime import reap_orphans

    driver = _driver(runtime, host)
    try:
        reaped = reap_orphans(driver)
    finally:
        driver.close()
    for container_id in reaped:
        click.echo(f"removed {container_id[:12]}")
    click.echo(f"Reaped {len(reaped)} orphaned container(s) on {driver.name}.")


if __name__ == "__main__":
    sys.exit(main())
