"""Remove a process's containers as soon as that process is gone, ``kill -9`` included.

Exit handlers (:mod:`rlmesh.runtime.cleanup`) stop a process's containers on every exit path a
process can observe; SIGKILL (the OOM killer, a crash in native code) is not one of them. So
the first time a process is about to own a container, :func:`watch` starts one watcher for it:
``python -m rlmesh.runtime.watcher``, in a session of its own, so that signals sent to the owner
or to its process group do not reach it. The owner keeps the only write end of a pipe whose
read end the watcher holds, and writes one line to it per driver configuration it uses.
However the owner ends, the kernel then closes the write end: the watcher reads end-of-file,
re-creates each driver in its own process (:meth:`RuntimeDriver.recreate_arguments
<rlmesh.runtime.driver.RuntimeDriver.recreate_arguments>`), removes, forcibly, every
container labelled with the owner's pid, start time and host identity
(:func:`~rlmesh.runtime.reaper.reap_orphans`), and exits. After a normal exit the exit
handlers have stopped everything already and the sweep finds nothing.

Nothing is touched while the owner lives (the sweep checks
:func:`~rlmesh.runtime.labels.owner_is_gone` itself), so a sandbox that crashes under a living
owner keeps its exit code and logs for the session's crash report. Should the write end leak
into a process that outlives the owner (a child forked behind Python's back), a check of the
owner's pid and start time every few seconds still ends the wait.

The watcher logs to the owner's stderr, at the level the owner's ``rlmesh`` logger had.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import select
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rlmesh.runtime.driver import RuntimeDriver
from rlmesh.runtime.labels import (
    BOOT,
    MANAGED,
    OWNER_PID,
    OWNER_START,
    host_identity,
    owner_is_gone,
    process_start_time,
)
from rlmesh.runtime.reaper import reap_orphans

__all__ = ["main", "watch", "watcher_pid"]

# Named explicitly: run with -m, this module is __main__.
log = logging.getLogger("rlmesh.runtime.watcher")

#: Seconds between checks of the owner's pid while its pipe stays open (a leaked write end).
POLL_SECONDS = 5.0
#: Sweeps tried, a second apart, while the engine does not answer.
SWEEP_ATTEMPTS = 5

# --- in the owner ----------------------------------------------------------------------------


class _Detached(subprocess.Popen[bytes]):
    """The watcher's process: it outlives its owner by design, so no "still running" warning."""

    def __del__(self) -> None:
        pass


class _Watcher:
    """This process's watcher: its process, our end of its pipe, the driver lines it has."""

    def __init__(self) -> None:
        self.process: _Detached | None = None
        self.pipe: int | None = None
        self.owner = 0
        self.lines: list[bytes] = []

    def running(self) -> bool:
        return self.process is not None and self.owner == os.getpid() and self.process.poll() is None


_lock = threading.Lock()
_watcher = _Watcher()


def _forget_after_fork() -> None:
    """In a forked child: drop the parent's watcher, and our copy of its pipe's write end.

    Were the child to keep that copy, the parent's watcher would not see the parent die while
    the child lives. A child that owns containers itself starts its own watcher.
    """
    global _lock, _watcher
    if _watcher.pipe is not None:
        try:
            os.close(_watcher.pipe)
        except OSError:
            pass
    _lock = threading.Lock()
    _watcher = _Watcher()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def _driver_line(driver: RuntimeDriver) -> bytes | None:
    """The line that tells the watcher how to re-create ``driver``, or ``None`` if it cannot."""
    arguments = driver.recreate_arguments()
    cls = type(driver)
    if arguments is None:
        return None
    if cls.__module__ == "__main__" or "<locals>" in cls.__qualname__:
        log.debug("driver class %s cannot be imported by another process: not watched", cls.__qualname__)
        return None
    args, kwargs = arguments
    spec = {"class": f"{cls.__module__}:{cls.__qualname__}", "args": list(args), "kwargs": dict(kwargs)}
    try:
        return json.dumps({"driver": spec}, sort_keys=True).encode() + b"\n"
    except (TypeError, ValueError) as exc:
        log.debug("arguments of driver %s are not JSON values (%s): not watched", driver.name, exc)
        return None


def _header() -> bytes:
    # The owner's import path (its working directory in place of ''), so that the watcher
    # imports the same driver modules; and its log level.
    try:
        cwd = os.getcwd()
    except OSError:  # removed since
        cwd = ""
    path = [entry or cwd for entry in sys.path if entry or cwd]
    level = logging.getLogger("rlmesh").getEffectiveLevel()
    return json.dumps({"path": path, "log_level": level}).encode() + b"\n"


def _send(state: _Watcher, data: bytes) -> None:
    # Non-blocking: a watcher stopped with a full pipe must not stall the owner (it raises).
    assert state.pipe is not None
    view = memoryview(data)
    while view:
        view = view[os.write(state.pipe, view):]


def _spawn(state: _Watcher) -> None:
    if state.pipe is not None:  # a watcher that died: start afresh
        os.close(state.pipe)
        state.pipe = None
    pid = os.getpid()
    # Run the rlmesh this process runs, whatever put it on sys.path here.
    package_root = str(Path(__file__).resolve().parents[2])
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    read_end, write_end = os.pipe()  # neither end is inherited by other children
    os.set_blocking(write_end, False)
    try:
        process = _Detached(
            [sys.executable, "-m", "rlmesh.runtime.watcher", str(read_end), str(pid),
             process_start_time(pid) or ""],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, pass_fds=(read_end,),
            start_new_session=True, cwd="/", env=env,
        )
    except BaseException:
        os.close(write_end)
        raise
    finally:
        os.close(read_end)
    state.process, state.pipe, state.owner = process, write_end, pid
    # Small writes into an empty pipe: they never block, whether or not the watcher runs yet.
    _send(state, _header() + b"".join(state.lines))
    log.debug("started container watcher %d for this process (%d)", process.pid, pid)


def watch(driver: RuntimeDriver) -> None:
    """Have this process's containers on ``driver``'s engine removed once this process is gone.

    Starts this process's watcher on first use (a fork and exec of a few milliseconds; nothing
    waits for the watcher to start) and tells it about each new driver configuration. Never
    raises: without a watcher, the containers of a killed process stay until a reaper
    (:func:`~rlmesh.runtime.reaper.reap_orphans`) removes them.
    """
    try:
        line = _driver_line(driver)
        if line is None or host_identity().startswith("nohost-proc:"):
            return  # (without /proc, no owner can be told gone: a watcher could do nothing)
        with _lock:
            state = _watcher
            if state.running():
                if line in state.lines:
                    return
                state.lines.append(line)
                try:
                    _send(state, line)
                    return
                except BrokenPipeError:  # the watcher died since: start another
                    pass
            elif line not in state.lines:
                state.lines.append(line)
            _spawn(state)
    except Exception as exc:
        log.warning("could not start the container watcher (%s); if this process is killed, its "
                    "containers stay until reaped (rlmesh sandbox reap)", exc)


def watcher_pid() -> int | None:
    """Pid of this process's running watcher, if it has one."""
    with _lock:
        return _watcher.process.pid if _watcher.running() and _watcher.process else None


# --- in the watcher --------------------------------------------------------------------------


def _wait_for_owner(fd: int, owner: Mapping[str, str]) -> list[dict[str, Any]]:
    """Read the owner's lines until it is gone; return the drivers it named."""
    drivers: list[dict[str, Any]] = []
    pending = b""
    while True:
        ready, _, _ = select.select([fd], [], [], POLL_SECONDS)
        if not ready:
            if owner_is_gone(owner):  # the write end leaked into a process that lives on
                break
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        for line in lines:
            try:
                message = json.loads(line)
            except ValueError:
                log.warning("ignored a garbled line from the owner: %r", line[:200])
                continue
            if "path" in message:
                sys.path[:] = message["path"] + [p for p in sys.path if p not in message["path"]]
                for name in ("rlmesh", "rlmesh_runtimes"):
                    logging.getLogger(name).setLevel(int(message.get("log_level", logging.WARNING)))
            if "driver" in message and message["driver"] not in drivers:
                drivers.append(message["driver"])
    os.close(fd)
    # End of file: the owner is exiting (a zombie counts as gone). One that closed the pipe
    # itself and lives on is waited for.
    delay = 0.01
    while not owner_is_gone(owner):
        time.sleep(delay)
        delay = min(delay * 2, POLL_SECONDS)
    return drivers


def _create(spec: Mapping[str, Any]) -> RuntimeDriver:
    module, _, qualname = str(spec["class"]).partition(":")
    target: Any = importlib.import_module(module)
    for part in qualname.split("."):
        target = getattr(target, part)
    if not (isinstance(target, type) and issubclass(target, RuntimeDriver)):
        raise TypeError(f"{spec['class']} is not a RuntimeDriver")
    driver: RuntimeDriver = target(*spec.get("args", ()), **spec.get("kwargs", {}))
    return driver


def _sweep(spec: Mapping[str, Any], owner: Mapping[str, str]) -> None:
    """Remove the owner's containers on the engine of the driver ``spec`` describes."""
    mine = {key: owner[key] for key in (OWNER_PID, OWNER_START, BOOT)}
    try:
        driver = _create(spec)
    except Exception as exc:
        log.warning("cannot re-create driver %s (%s); containers of pid %s on its engine stay "
                    "until reaped", spec.get("class"), exc, owner[OWNER_PID])
        return
    failure: Exception | None = None
    try:
        for _ in range(SWEEP_ATTEMPTS):
            try:
                removed = reap_orphans(driver, mine)
            except Exception as exc:  # the engine may be restarting: try again shortly
                failure = exc
                time.sleep(1.0)
                continue
            if removed:
                log.info("removed %d container(s) of exited process %s from %s", len(removed),
                         owner[OWNER_PID], driver.name)
            return
        log.warning("could not remove containers of exited process %s from %s (%d attempts): %s",
                    owner[OWNER_PID], driver.name, SWEEP_ATTEMPTS, failure)
    finally:
        try:
            driver.close()
        except Exception:
            pass


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m rlmesh.runtime.watcher FD OWNER_PID OWNER_START``: see the module docstring."""
    args = list(sys.argv[1:] if argv is None else argv)
    logging.raiseExceptions = False  # the owner's stderr may be a pipe nobody reads any more
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("rlmesh watcher [%(process)d]: %(levelname)s %(message)s"))
    logging.getLogger().addHandler(handler)
    try:
        fd, pid, start = int(args[0]), args[1], args[2]
        owner = {MANAGED: "true", OWNER_PID: pid, OWNER_START: start, BOOT: host_identity()}
        for spec in _wait_for_owner(fd, owner):
            _sweep(spec, owner)
    except KeyboardInterrupt:
        return 1
    except Exception as exc:
        log.error("stopped: %s", exc, exc_info=log.isEnabledFor(logging.DEBUG))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
