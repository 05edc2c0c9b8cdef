"""Remove containers whose owning process is gone (leaks from crashes or ``kill -9``)."""

from __future__ import annotations

import logging
from collections.abc import Mapping

from rlmesh.errors import RuntimeDriverError
from rlmesh.runtime.driver import RuntimeDriver
from rlmesh.runtime.labels import MANAGED, owner_is_gone

__all__ = ["reap_orphans"]

log = logging.getLogger(__name__)


def reap_orphans(driver: RuntimeDriver, labels: Mapping[str, str] | None = None) -> list[str]:
    """Remove our containers whose owner process on this host has exited; return their ids.

    ``labels`` restricts the sweep to containers that carry them too (the container watcher
    of a killed process passes that process's owner labels). Containers of live owners, of
    other hosts and not started by rlmesh are left alone. Running ones are removed by force.
    """
    reaped: list[str] = []
    for info in driver.list({**(labels or {}), MANAGED: "true"}):
        if not owner_is_gone(info.labels):
            continue
        try:
            driver.remove(info.id)
        except RuntimeDriverError as exc:
            # Another reaper may have raced us; one failure must not stop the sweep.
            log.warning("could not remove orphaned container %s: %s", info.id[:12], exc)
            continue
        log.info("removed orphaned container %s (%s)", info.id[:12], info.name)
        reaped.append(info.id)
    return reaped
