"""What a sandbox container gets to use: CPUs, memory, GPUs, shared memory and its environment.

The values are checked on the host, before anything is built, so a typo costs nothing; the
drivers then pass them to the engine through :class:`rlmesh.runtime.driver.RunSpec`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rlmesh.errors import SandboxError

__all__ = ["Resources"]

_SIZE = re.compile(r"[0-9]+(\.[0-9]+)?[bkmgBKMG]?")
_DEVICE = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*")
_VARIABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
#: Variables the sandbox itself sets in the container.
_RESERVED = frozenset({"RLMESH_SANDBOX", "PATH", "VIRTUAL_ENV", "PYTHONPATH"})


def _size(name: str, value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not _SIZE.fullmatch(value.strip()):
        raise SandboxError(f"{name}={value!r} is not a size: give a number of bytes with an optional "
                           "unit b, k, m or g, e.g. '2g' or '512m'")
    return value.strip().lower()


def _cpus(value: object) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise SandboxError(f"cpus={value!r} must be a positive number of cores, e.g. 1.5")
    return float(value)


def _gpus(value: object, capabilities: frozenset[str]) -> bool | tuple[str, ...]:
    if value is None or value is False:
        return "gpu" in capabilities
    if value is True or value == "all":
        return True
    devices = [value] if isinstance(value, (str, int)) else value
    if isinstance(devices, Sequence) and devices and all(
            isinstance(d, (str, int)) and not isinstance(d, bool) and _DEVICE.fullmatch(str(d)) for d in devices):
        return tuple(str(d) for d in devices)
    raise SandboxError(f"gpus={value!r}: give 'all', or a list of device ids or UUIDs, e.g. [0, 1]")


def _environment(value: object) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise SandboxError(f"env= must be a mapping of variable names to strings, got {type(value).__name__}")
    for name, text in value.items():
        if not isinstance(name, str) or not _VARIABLE.fullmatch(name):
            raise SandboxError(f"env: {name!r} is not a variable name (letters, digits and '_')")
        if name in _RESERVED:
            raise SandboxError(f"env: {name} is set by the sandbox itself; choose another variable")
        if not isinstance(text, str) or "\0" in text:
            raise SandboxError(f"env: the value of {name} must be a string without NUL bytes, got {text!r}")
    return dict(value)


@dataclass(frozen=True)
class Resources:
    """A sandbox's resource options, checked."""

    cpus: float | None = None
    memory: str | None = None
    gpus: bool | tuple[str, ...] = False
    shm_size: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    strict_limits: bool = True

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], capabilities: frozenset[str]) -> Resources:
        """The options in ``settings`` (a session's keyword arguments and config), or a
        :class:`SandboxError` naming the bad one and what it should look like."""
        strict = settings.get("strict_limits", True)
        if not isinstance(strict, bool):
            raise SandboxError(f"strict_limits={strict!r} must be True or False")
        return cls(cpus=_cpus(settings.get("cpus")), memory=_size("memory", settings.get("memory")),
                   gpus=_gpus(settings.get("gpus"), capabilities),
                   shm_size=_size("shm_size", settings.get("shm_size")),
                   env=_environment(settings.get("env")), strict_limits=strict)

    def run_options(self) -> dict[str, Any]:
        """The :class:`~rlmesh.runtime.driver.RunSpec` fields these options set."""
        return {"cpus": self.cpus, "memory": self.memory, "gpus": self.gpus, "shm_size": self.shm_size,
                "strict_limits": self.strict_limits}
