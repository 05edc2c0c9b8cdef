"""Inspecting a container while it exits.

Podman before 4.4 (Debian 12 ships 4.3) may fail an inspect of a container whose process is
exiting at that moment: reading ``/proc/<pid>/cgroup`` gives "no such process" (ESRCH,
containers/podman#16504), over its API and its CLI alike. Asked again a moment later, it
reports the exit. Every inspect of a container by the drivers that can talk to podman (the
Engine-API base and the CLI driver) goes through :func:`settled`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import TypeVar

__all__ = ["settled"]

log = logging.getLogger(__name__)

T = TypeVar("T")

_RACE = "no such process"
#: Pauses between asks: the exit settles in milliseconds, a busy engine may take longer.
_PAUSES = (0.02, 0.05, 0.1, 0.2, 0.5)


def settled(inspect: Callable[[], T], container_id: str) -> T:
    """``inspect()``, asked again while it fails only because the container is mid-exit."""
    for pause in _PAUSES:
        try:
            return inspect()
        except Exception as exc:
            if _RACE not in str(exc):
                raise
            log.debug("inspecting container %s raced its exit (%s); asking again", container_id[:12], exc)
            time.sleep(pause)
    return inspect()
