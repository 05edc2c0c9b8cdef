"""What ``serve`` and ``eval`` are pointed at, and the env each kind of target gives.

Targets are read as follows:

- ``tcp://H:P``, ``H:P``, a bare port, ``unix:///path`` (``eval`` only): a running server;
- ``module:factory`` or ``path/to/file.py:factory``: a callable returning an env (or a vector
  env, or a list of envs), run in this process;
- a Gymnasium id such as ``CartPole-v1``: ``gymnasium.make`` in this process;
- ``gym://ID``, ``hf://owner/repo@sha:suite/task``, a directory holding ``env.py`` or
  ``image://NAME``: a sandbox (container) of that source, configured by the options of
  :func:`sandbox_options`.

Env keyword arguments follow ``--`` as ``key=value`` (:func:`parse_make_kwargs`).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import click

from rlmesh.cli.drivers import open_driver, runtime_option
from rlmesh.cli.errors import CommandError
from rlmesh.cli.loading import FACTORY, load_callable

__all__ = [
    "SandboxArgs",
    "is_address",
    "is_sandbox_source",
    "local_env",
    "open_sandbox",
    "parse_make_kwargs",
    "sandbox_options",
]

F = TypeVar("F", bound=Callable[..., Any])

_ADDRESS = re.compile(r"^(?:(?:tcp|unix|ipc)://.+|\d{1,5}|\[?[\w.:-]*\]?:\d{1,5})$")
_SANDBOX_PREFIXES = ("gym://", "hf://", "image://")


# --- reading a target ---------------------------------------------------------------------------

def is_address(target: str) -> bool:
    """Whether ``target`` names a server address rather than an env."""
    return bool(_ADDRESS.match(target)) and not FACTORY.match(target)


def is_sandbox_source(target: str, force: bool) -> bool:
    """Whether ``target`` runs in a sandbox (``force`` is ``--sandbox``)."""
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


# --- sandbox options ----------------------------------------------------------------------------

def sandbox_options(func: F) -> F:
    """Add the options that configure a sandbox target (read them back with :meth:`SandboxArgs.pop`)."""
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
        click.option("--system-package", "system_packages", multiple=True, metavar="NAME",
                     help="Debian package installed into the sandbox image (repeatable)."),
        click.option("--cpus", type=float, help="CPU limit of the sandbox, in cores."),
        click.option("--memory", metavar="SIZE", help="Memory limit of the sandbox, e.g. 2g."),
        click.option("--gpus", metavar="all|IDS", help="GPUs for the sandbox: 'all' or ids such as 0,1."),
        click.option("--shm-size", metavar="SIZE", help="Size of the sandbox's /dev/shm, e.g. 1g."),
        click.option("--env", "container_env", multiple=True, metavar="NAME=VALUE",
                     help="Environment variable of the sandbox container (repeatable)."),
        click.option("--no-strict-limits", is_flag=True,
                     help="Where the engine cannot enforce --cpus/--memory, warn and run without them."),
        click.option("--entry", metavar="MODULE:FACTORY",
                     help="For image:// sources not built by rlmesh: the env factory inside."),
        runtime_option,
    ]
    for option in reversed(options):
        func = option(func)
    return func


@dataclass
class SandboxArgs:
    """The values of :func:`sandbox_options`."""

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
    system_packages: tuple[str, ...] = ()
    cpus: float | None = None
    memory: str | None = None
    gpus: str | None = None
    shm_size: str | None = None
    container_env: tuple[str, ...] = ()
    strict_limits: bool = True
    entry: str | None = None

    @classmethod
    def pop(cls, params: dict[str, Any]) -> SandboxArgs:
        """Take the sandbox options out of a command's keyword arguments."""
        return cls(
            force=params.pop("force_sandbox"), packages=params.pop("packages"),
            imports=params.pop("imports"), base_image=params.pop("base_image"),
            rlmesh_package=params.pop("rlmesh_package"),
            trust_remote_code=params.pop("trust_remote_code"),
            allow_unpinned_hf=params.pop("allow_unpinned_hf"),
            capabilities=params.pop("capabilities"), runtime=params.pop("runtime"),
            host=params.pop("host"), system_packages=params.pop("system_packages"),
            cpus=params.pop("cpus"), memory=params.pop("memory"), gpus=params.pop("gpus"),
            shm_size=params.pop("shm_size"), container_env=params.pop("container_env"),
            strict_limits=not params.pop("no_strict_limits"), entry=params.pop("entry"),
        )

    def session_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``SandboxEnv``/``SandboxVectorEnv``."""
        runtime: Any = self.runtime
        if self.host:
            runtime = open_driver(self.runtime, self.host)
        return {
            "packages": list(self.packages) or None, "imports": list(self.imports) or None,
            "base_image": self.base_image, "rlmesh_package": self.rlmesh_package,
            "trust_remote_code": self.trust_remote_code, "allow_unpinned_hf": self.allow_unpinned_hf,
            "capabilities": list(self.capabilities) or None, "runtime": runtime,
            "system_packages": list(self.system_packages) or None, "cpus": self.cpus,
            "memory": self.memory, "gpus": _gpus(self.gpus), "shm_size": self.shm_size,
            "env": _assignments(self.container_env) or None, "strict_limits": self.strict_limits,
            "entry": self.entry,
        }


def _gpus(text: str | None) -> str | list[str] | None:
    """``--gpus all`` or ``--gpus 0,1``."""
    if text is None or text == "all":
        return text
    return [part.strip() for part in text.split(",") if part.strip()]


def _assignments(items: tuple[str, ...]) -> dict[str, str]:
    """``NAME=VALUE`` items (values stay strings: they are environment variables)."""
    pairs: dict[str, str] = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep:
            raise click.BadParameter(f"{item!r} is not NAME=VALUE (e.g. MUJOCO_GL=osmesa)", param_hint="--env")
        pairs[name] = value
    return pairs


# --- the env a target gives ---------------------------------------------------------------------

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


def local_env(target: str, num_envs: int, mode: str | None, kwargs: dict[str, Any]) -> Any:
    """The env a non-sandbox, non-address target names, built in this process."""
    if FACTORY.match(target):  # never a Gymnasium id: those end in -vN, not an identifier
        if num_envs > 1 or mode is not None:
            raise click.UsageError("--num-envs/--vectorization-mode apply to Gymnasium ids and "
                                   "sandboxes; let the factory return a vector env (or a list of envs)")
        return load_callable(target, "factory")(**kwargs)
    from rlmesh.sandbox.sources import parse_source

    parse_source(target)  # the same id rules (and error message) as sandboxes
    return _gym_make(target, num_envs, mode, kwargs)


def open_sandbox(target: str, sandbox: SandboxArgs, num_envs: int, mode: str | None,
                 kwargs: dict[str, Any], *, vector: bool) -> Any:
    """A sandbox session (a context manager) for a sandbox source target."""
    try:
        from rlmesh.numpy import SandboxEnv, SandboxVectorEnv
    except ImportError as exc:
        raise CommandError("sandboxes from the command line need NumPy",
                           'pip install "rlmesh[numpy]"') from exc
    options = {**sandbox.session_kwargs(), **kwargs}
    if vector:
        return SandboxVectorEnv(target, num_envs=num_envs, vectorization_mode=mode or "sync", **options)
    return SandboxEnv(target, **options)
