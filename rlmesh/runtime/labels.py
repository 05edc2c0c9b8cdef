"""Labels that mark a container as ours and name the process that owns it.

Every container rlmesh starts carries these labels, so leaked containers can be found by label
and removed once their owner is gone (:mod:`rlmesh.runtime.reaper`). The owner is identified by
pid *and* process start time, because pids are reused; and by a host identity, because an
engine may be shared by several machines (or several pid namespaces on one machine) and a pid
means nothing outside its own namespace.
"""

from __future__ import annotations

import functools
import os
import socket
import uuid
from collections.abc import Mapping

from rlmesh._version import __version__

__all__ = [
    "BOOT",
    "HOST",
    "MANAGED",
    "OWNER_PID",
    "OWNER_START",
    "SESSION",
    "VERSION",
    "owner_is_gone",
    "owner_labels",
    "process_session_id",
    "with_owner_labels",
]

MANAGED = "io.rlmesh.managed"
OWNER_PID = "io.rlmesh.owner.pid"
OWNER_START = "io.rlmesh.owner.start"
#: Hostname of the owner, for humans reading ``docker ps``.
HOST = "io.rlmesh.owner.host"
#: Boot id plus pid namespace: two owners share a pid space exactly when these are equal.
BOOT = "io.rlmesh.owner.boot"
SESSION = "io.rlmesh.session"
VERSION = "io.rlmesh.version"


def _read(path: str) -> str:
    with open(path, encoding="ascii") as handle:
        return handle.read().strip()


def _stat(pid: int) -> list[str] | None:
    """Fields 3 (state) onwards of ``/proc/PID/stat``, or ``None`` if no such process."""
    try:
        stat = _read(f"/proc/{pid}/stat")
    except (FileNotFoundError, ProcessLookupError):
        return None
    # The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    return stat[stat.rindex(")") + 2 :].split()


def process_start_time(pid: int) -> str | None:
    """Start time of ``pid`` in clock ticks since boot, or ``None`` if no such process."""
    fields = _stat(pid)
    return None if fields is None else fields[19]  # field 22 of the whole line


@functools.cache
def host_identity() -> str:
    """Identity of this machine's current boot and pid namespace."""
    try:
        boot = _read("/proc/sys/kernel/random/boot_id")
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        # Without /proc we cannot tell live owners from dead ones; the hostname keeps the
        # labels meaningful while owner_is_gone() then never claims an owner is gone.
        return "nohost-proc:" + socket.gethostname()
    return f"{boot}/{pid_ns}"


@functools.cache
def process_session_id() -> str:
    """A random id shared by all containers this process starts without an explicit session."""
    return uuid.uuid4().hex


def owner_labels(session_id: str) -> dict[str, str]:
    """Labels naming the current process as owner of a container in session ``session_id``."""
    pid = os.getpid()
    return {
        MANAGED: "true",
        OWNER_PID: str(pid),
        OWNER_START: process_start_time(pid) or "",
        HOST: socket.gethostname(),
        BOOT: host_identity(),
        SESSION: session_id,
        VERSION: __version__,
    }


def with_owner_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """``labels`` plus our owner labels; labels given explicitly win (tests fake owners)."""
    return {**owner_labels(labels.get(SESSION, process_session_id())), **labels}


def owner_is_gone(labels: Mapping[str, str]) -> bool:
    """Whether the owner named by ``labels`` certainly no longer runs.

    Only answers ``True`` for our own containers whose owner lived in this host's pid space:
    a container of another host, of a live owner, or without complete labels is never gone.
    """
    if labels.get(MANAGED) != "true" or labels.get(BOOT) != host_identity():
        return False
    if host_identity().startswith("nohost-proc:"):
        return False
    try:
        pid = int(labels[OWNER_PID])
        start = labels[OWNER_START]
    except (KeyError, ValueError):
        return False
    fields = _stat(pid)
    # A zombie has exited; only its parent has not collected its exit status yet.
    if fields is None or fields[0] in ("Z", "X", "x"):
        return True
    # A different start time means the pid was reused by an unrelated process.
    return bool(start) and fields[19] != start
