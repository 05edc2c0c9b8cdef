"""Unit tests of owner labels: who owns a container, and when is that owner certainly gone."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from rlmesh._version import __version__
from rlmesh.runtime import labels
from rlmesh.runtime.labels import owner_is_gone, owner_labels, with_owner_labels


def dead_process() -> tuple[int, str]:
    """Pid and start time of a process that has exited."""
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    start = labels.process_start_time(child.pid)
    assert start is not None
    child.kill()
    child.wait()
    return child.pid, start


def test_owner_labels_name_this_process() -> None:
    mine = owner_labels("session-1")
    assert mine[labels.MANAGED] == "true"
    assert mine[labels.OWNER_PID] == str(os.getpid())
    assert mine[labels.OWNER_START] == labels.process_start_time(os.getpid())
    assert mine[labels.SESSION] == "session-1"
    assert mine[labels.VERSION] == __version__
    assert mine[labels.BOOT] == labels.host_identity()
    assert not owner_is_gone(mine)


def test_explicit_labels_win_and_session_defaults_per_process() -> None:
    merged = with_owner_labels({"app": "x", labels.OWNER_PID: "1"})
    assert merged["app"] == "x"
    assert merged[labels.OWNER_PID] == "1"
    assert merged[labels.SESSION] == labels.process_session_id()
    assert with_owner_labels({labels.SESSION: "s"})[labels.SESSION] == "s"


def test_dead_owner_is_gone() -> None:
    pid, start = dead_process()
    assert owner_is_gone({**owner_labels("s"), labels.OWNER_PID: str(pid), labels.OWNER_START: start})


def test_zombie_owner_is_gone() -> None:
    # Killed but not yet waited for by its parent: /proc still lists it, with its start time.
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    mine = {**owner_labels("s"), labels.OWNER_PID: str(child.pid),
            labels.OWNER_START: labels.process_start_time(child.pid) or ""}
    assert not owner_is_gone(mine)
    child.kill()
    try:
        os.waitid(os.P_PID, child.pid, os.WEXITED | os.WNOWAIT)  # exited, left a zombie
        assert labels.process_start_time(child.pid) == mine[labels.OWNER_START]
        assert owner_is_gone(mine)
    finally:
        child.wait()


def test_reused_pid_is_detected_by_start_time() -> None:
    # Our own pid with another start time: the pid now belongs to a different process.
    stale = {**owner_labels("s"), labels.OWNER_START: "1"}
    assert owner_is_gone(stale)


def test_other_host_or_pid_namespace_is_never_gone() -> None:
    pid, start = dead_process()
    foreign = {
        **owner_labels("s"),
        labels.OWNER_PID: str(pid),
        labels.OWNER_START: start,
        labels.BOOT: "another-boot-id/pid:[1]",
    }
    assert not owner_is_gone(foreign)


def test_incomplete_or_foreign_labels_are_never_gone() -> None:
    pid, start = dead_process()
    complete = {**owner_labels("s"), labels.OWNER_PID: str(pid), labels.OWNER_START: start}
    assert not owner_is_gone({})
    assert not owner_is_gone({k: v for k, v in complete.items() if k != labels.MANAGED})
    assert not owner_is_gone({k: v for k, v in complete.items() if k != labels.OWNER_PID})
    assert not owner_is_gone({**complete, labels.OWNER_PID: "not-a-pid"})


def test_start_time_parses_command_names_with_spaces_and_parens(tmp_path: Path) -> None:
    # The command name in /proc/PID/stat comes from the executable's file name.
    odd = tmp_path / "a b) (c"
    odd.symlink_to(shutil.which("sleep") or "/bin/sleep")
    child = subprocess.Popen([str(odd), "30"])
    try:
        with open(f"/proc/{child.pid}/stat") as stat:
            assert "(a b) (c)" in stat.read()
        start = labels.process_start_time(child.pid)
        assert start is not None and start.isdigit()
        assert int(start) >= int(labels.process_start_time(os.getpid()) or 0)
    finally:
        child.kill()
        child.wait()
