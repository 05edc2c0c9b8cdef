"""The container watcher: a killed owner's containers go at once, a living owner's stay.

These run on FileDriver (no engine), in child processes that really get SIGKILLed; the same
path on every real engine is tested in tests/sandbox (test_sigkill_owner_leaves_no_container_behind).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from rlmesh.runtime import RunSpec
from rlmesh.runtime.labels import OWNER_PID
from rlmesh.runtime.watcher import POLL_SECONDS, _driver_line

from .file_driver import FileDriver

CHILD = Path(__file__).parent / "watcher_child.py"


class Child:
    def __init__(self, mode: str, *roots: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, str(CHILD), mode, *map(str, roots)],
                                     stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.startswith("READY "), f"child did not start: {line!r}, exit {self.proc.wait()}"
        self.watchers = [int(pid) for pid in line.split()[1:]]
        self.forked = 0
        if mode in ("fork", "leak"):
            self.forked = int(self.proc.stdout.readline().split()[1])

    def close(self) -> None:
        for pid in (self.forked, self.proc.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.proc.wait(10)


@pytest.fixture
def child() -> Iterator[Callable[..., Child]]:
    started: list[Child] = []

    def start(mode: str, *roots: Path) -> Child:
        started.append(Child(mode, *roots))
        return started[-1]

    yield start
    for each in started:
        each.close()


def owned(root: Path, pid: int) -> list[str]:
    return [c.id for c in FileDriver(str(root)).list({OWNER_PID: str(pid)})]


def running(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except FileNotFoundError:
        return False


def watchers_of(owner: int) -> list[int]:
    """Pids of watcher processes started by ``owner`` (their argv: ... FD OWNER_PID START)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"rlmesh.runtime.watcher" in argv and argv[-3:-2] == [str(owner).encode()]:
            found.append(int(entry.name))
    return found


def within(seconds: float, predicate: Callable[[], bool]) -> float:
    """Seconds until ``predicate`` holds; fails after ``seconds``."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < seconds, f"not within {seconds} s"
        time.sleep(0.02)
    return time.monotonic() - started


def test_sigkill_removes_the_owners_containers_and_no_others(
        tmp_path: Path, child: Callable[..., Child]) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    # A living owner's (this process's) containers, one of them crashed: its report must stay.
    bystander = FileDriver(str(first))
    alive = bystander.run(RunSpec(image="none")).id
    crashed = bystander.run(RunSpec(image="none")).id
    bystander.exit(crashed, 3)

    owner = child("wait", first, second)
    # One watcher for the process, whatever the number of containers and driver configurations.
    assert len(owner.watchers) == 1 and owner.watchers[0] > 0
    assert watchers_of(owner.proc.pid) == owner.watchers
    assert len(owned(first, owner.proc.pid)) == len(owned(second, owner.proc.pid)) == 2

    owner.proc.kill()  # and left unreaped: a zombie owner is gone too
    elapsed = within(10, lambda: not owned(first, owner.proc.pid) and not owned(second, owner.proc.pid))
    print(f"killed owner's containers removed {elapsed:.2f} s after SIGKILL")
    within(10, lambda: not running(owner.watchers[0]))
    assert {c.id for c in bystander.list({})} == {alive, crashed}
    health = bystander.health(crashed)
    assert (health.running, health.exit_code, health.logs_tail) == (False, 3, "crashed")


def test_normal_exit_leaves_nothing_and_ends_the_watcher(
        tmp_path: Path, child: Callable[..., Child]) -> None:
    owner = child("exit", tmp_path)
    assert owner.proc.wait(30) == 0
    assert owned(tmp_path, owner.proc.pid) == []
    within(10, lambda: not running(owner.watchers[0]))


def test_a_forked_child_does_not_keep_a_killed_owner_alive(
        tmp_path: Path, child: Callable[..., Child]) -> None:
    owner = child("fork", tmp_path)
    assert running(owner.forked)
    owner.proc.kill()
    # Well under the watcher's fallback poll of the owner's pid: the pipe told it.
    within(3, lambda: not owned(tmp_path, owner.proc.pid))
    assert running(owner.forked)


def test_a_leaked_pipe_delays_the_sweep_by_one_poll_at_most(
        tmp_path: Path, child: Callable[..., Child]) -> None:
    owner = child("leak", tmp_path)
    owner.proc.kill()
    owner.proc.wait(10)
    # No end-of-file while the other process holds the write end: the poll of the owner's pid.
    elapsed = within(POLL_SECONDS + 3, lambda: not owned(tmp_path, owner.proc.pid))
    assert running(owner.forked)
    print(f"swept {elapsed:.1f} s after SIGKILL despite the leaked pipe")


def test_which_drivers_can_be_recreated_in_the_watcher(tmp_path: Path) -> None:
    line = _driver_line(FileDriver(str(tmp_path)))
    assert line is not None and line.endswith(b"\n")
    assert json.loads(line)["driver"] == {
        "class": f"{FileDriver.__module__}:FileDriver", "args": [str(tmp_path)], "kwargs": {}}

    class Local(FileDriver):  # not importable from another process
        pass

    assert _driver_line(Local(str(tmp_path))) is None
    assert _driver_line(FileDriver(tmp_path)) is None  # type: ignore[arg-type]  # not JSON

    opted_out = FileDriver(str(tmp_path))
    opted_out.recreate_arguments = lambda: None  # type: ignore[method-assign]
    assert _driver_line(opted_out) is None
