"""Find runtime drivers through the ``rlmesh.runtimes`` entry-point group.

Our own drivers (``docker``, ``podman``, ``cli``) register exactly like third-party plugins, so
nothing here imports an engine package until a driver is actually chosen.

Selection, in :func:`get_driver`:

1. a :class:`RuntimeDriver` instance is used as is;
2. a name loads that entry point (``"auto"`` means step 4);
3. otherwise the ``RLMESH_RUNTIME`` environment variable names one;
4. otherwise the first driver whose engine is available, in the order of :data:`AUTO_ORDER`
   followed by any third-party drivers alphabetically.
"""

from __future__ import annotations

import logging
import os
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from rlmesh.errors import RuntimeUnavailableError
from rlmesh.runtime.driver import RuntimeDriver

__all__ = ["AUTO_ORDER", "ENTRY_POINT_GROUP", "ENV_VAR", "get_driver", "installed_drivers"]

log = logging.getLogger(__name__)

ENTRY_POINT_GROUP = "rlmesh.runtimes"
ENV_VAR = "RLMESH_RUNTIME"
#: Built-in drivers tried first by automatic selection, most direct engine API first.
AUTO_ORDER = ("docker", "podman", "cli")
#: The rlmesh extra that installs each built-in driver's engine client.
_EXTRAS = {"docker": "docker", "podman": "podman", "cli": "cli", "ray": "ray"}


def installed_drivers() -> dict[str, EntryPoint]:
    """Registered drivers by name; nothing is imported."""
    found: dict[str, EntryPoint] = {}
    for point in entry_points(group=ENTRY_POINT_GROUP):
        # The same distribution seen twice on sys.path: the first one is what imports would use.
        found.setdefault(point.name, point)
    return found


def _names_text(installed: dict[str, EntryPoint]) -> str:
    return ", ".join(sorted(installed)) or "none"


def _install_hint(point: EntryPoint) -> str:
    dist = point.dist.name if point.dist is not None else None
    if point.name in _EXTRAS and (dist is None or dist == "rlmesh"):
        return f'pip install "rlmesh[{_EXTRAS[point.name]}]"'
    if dist is not None:
        return f'reinstall the distribution that provides it: pip install --force-reinstall "{dist}"'
    return "install the package that provides it"


def _load(point: EntryPoint) -> type[RuntimeDriver]:
    try:
        loaded = point.load()
    except ImportError as exc:
        raise RuntimeUnavailableError(
            f"Runtime driver {point.name!r} is registered but its package cannot be imported "
            f"({exc}). Fix: {_install_hint(point)}"
        ) from exc
    if not (isinstance(loaded, type) and issubclass(loaded, RuntimeDriver)):
        raise RuntimeUnavailableError(
            f"Entry point {point.name!r} = {point.value!r} in group {ENTRY_POINT_GROUP!r} is not "
            "a RuntimeDriver subclass; fix the plugin's entry point."
        )
    return loaded


def _create(point: EntryPoint, options: dict[str, Any]) -> RuntimeDriver:
    cls = _load(point)
    try:
        return cls(**options)
    except TypeError as exc:
        raise RuntimeUnavailableError(
            f"Runtime driver {point.name!r} does not accept the options {sorted(options)}: {exc}"
        ) from exc


def _auto_order(installed: dict[str, EntryPoint]) -> list[str]:
    builtin = [name for name in AUTO_ORDER if name in installed]
    return builtin + sorted(name for name in installed if name not in AUTO_ORDER)


def _automatic(installed: dict[str, EntryPoint], options: dict[str, Any]) -> RuntimeDriver:
    reasons: list[str] = []
    for name in _auto_order(installed):
        try:
            driver = _create(installed[name], options)
        except RuntimeUnavailableError as exc:
            reasons.append(f"  {name}: {exc}")
            continue
        availability = driver.available()
        if availability:
            log.debug("automatic runtime selection chose %r (%s)", name, availability.version)
            return driver
        driver.close()
        reasons.append(f"  {name}: {availability.reason}")
    detail = "\n".join(reasons) or "  (no drivers are installed)"
    raise RuntimeUnavailableError(
        "No container runtime is available. Tried, in order:\n"
        f"{detail}\n"
        f'Start an engine (dockerd or podman), install a driver (pip install "rlmesh[docker]"), '
        f"or choose one with runtime=... or {ENV_VAR}=..."
    )


def get_driver(runtime: str | RuntimeDriver | None = None, **options: Any) -> RuntimeDriver:
    """Return a runtime driver instance; ``options`` go to the driver's constructor.

    Raises :class:`RuntimeUnavailableError` for an unknown name (listing installed drivers), a
    driver whose package is missing (naming the extra to install), or, in automatic mode, when
    no engine is available (listing each driver's reason).
    """
    if isinstance(runtime, RuntimeDriver):
        if options:
            raise TypeError("options cannot be combined with a driver instance")
        return runtime
    installed = installed_drivers()
    name = runtime if runtime is not None else os.environ.get(ENV_VAR, "").strip()
    if not name or name == "auto":
        return _automatic(installed, options)
    if name not in installed:
        source = f" (from {ENV_VAR})" if runtime is None else ""
        raise RuntimeUnavailableError(
            f"Unknown runtime driver {name!r}{source}. Installed drivers: "
            f"{_names_text(installed)}. Install one with an extra such as "
            f'pip install "rlmesh[docker]", or a plugin registering under {ENTRY_POINT_GROUP!r}.'
        )
    return _create(installed[name], options)
