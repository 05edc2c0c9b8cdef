"""``rlmesh doctor``: check Python, the packages, the engines and the runtimes; say what to fix."""

from __future__ import annotations

import importlib
import os
import platform
import shutil
import sys
from dataclasses import dataclass
from importlib import metadata

import click
from rich.table import Table

from rlmesh._version import __version__
from rlmesh.cli.drivers import driver_statuses
from rlmesh.cli.errors import CommandError
from rlmesh.cli.output import make_console
from rlmesh.errors import RLMeshError

__all__ = ["OPTIONAL", "Check", "doctor"]

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


@click.command()
def doctor() -> None:
    """Check this machine for rlmesh and print what to fix (exit 1 if something required is missing)."""
    checks = [*_python_checks(), *_engine_checks(), *_runtime_checks()]
    marks = {"ok": "[green]ok[/green]", "warn": "[yellow]warn[/yellow]", "fail": "[red]FAIL[/red]"}
    table = Table(title=f"rlmesh {__version__} doctor")
    for column in ("check", "status", "detail", "fix"):
        table.add_column(column)
    for c in checks:
        table.add_row(c.name, marks[c.level], c.detail, c.fix)
    console = make_console()
    console.print(table)
    failed = [c for c in checks if c.level == "fail"]
    if failed:
        raise CommandError(f"{len(failed)} required check(s) failed: {', '.join(c.name for c in failed)}",
                           "; ".join(dict.fromkeys(c.fix for c in failed if c.fix)))
    console.print("Everything required is in place.")


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
    statuses = driver_statuses()
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
