"""The runtime drivers a command talks to: ``--runtime``/``--host``, opening one, probing all."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import click

__all__ = ["DriverStatus", "driver_statuses", "open_driver", "runtime_option"]

F = TypeVar("F", bound=Callable[..., Any])


def runtime_option(func: F) -> F:
    """Add ``--runtime/-r NAME`` and ``--host URL`` (passed as ``runtime`` and ``host``)."""
    func = click.option("--host", metavar="URL",
                        help="Engine socket, e.g. unix:///run/podman/podman.sock.")(func)
    return click.option("--runtime", "-r", metavar="NAME", envvar="RLMESH_RUNTIME",
                        help="Runtime driver (docker, podman, cli, a plugin). "
                             "Default: $RLMESH_RUNTIME or the first available.")(func)


def open_driver(runtime: str | None, host: str | None) -> Any:
    """The driver ``--runtime``/``--host`` name; the caller closes it."""
    from rlmesh.runtime import get_driver

    return get_driver(runtime, **({"host": host} if host else {}))


@dataclass
class DriverStatus:
    """Whether one installed driver works here; ``driver`` is open (close it) when it was made."""

    name: str
    provider: str
    ok: bool
    version: str = ""
    rootless: bool = False
    reason: str = ""
    driver: Any = None


def driver_statuses(host: str | None = None) -> list[DriverStatus]:
    """Every installed driver (entry-point group ``rlmesh.runtimes``), by name, and its availability."""
    from rlmesh.runtime import get_driver, installed_drivers

    statuses = []
    for name, point in sorted(installed_drivers().items()):
        provider = f"{point.value} ({point.dist.name if point.dist else '?'})"
        try:
            driver = get_driver(name, **({"host": host} if host else {}))
        except Exception as exc:  # a plugin's constructor may raise anything; keep diagnosing
            statuses.append(DriverStatus(name, provider, False, reason=str(exc) or type(exc).__name__))
            continue
        availability = driver.available()
        statuses.append(DriverStatus(name, provider, availability.ok, availability.version,
                                     availability.rootless, availability.reason, driver))
    return statuses
