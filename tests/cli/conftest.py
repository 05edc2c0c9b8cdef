"""Run the real ``rlmesh`` console script in subprocesses, as a user would."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

CLI_DIR = Path(__file__).parent
RLMESH = shutil.which("rlmesh")

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


def rlmesh(*args: str, timeout: float = 120.0, env: dict[str, str] | None = None,
           cwd: Path = CLI_DIR) -> subprocess.CompletedProcess[str]:
    """``rlmesh ARGS`` through the installed entry point; never raises on a non-zero exit."""
    assert RLMESH is not None, "the rlmesh console script is not installed (pip install -e .)"
    return subprocess.run([RLMESH, *args], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, "COLUMNS": "200", **(env or {})}, cwd=cwd)


class Serving:
    """``rlmesh serve ...`` in the background; ``address`` is what it printed."""

    def __init__(self, args: Sequence[str], *, ready_timeout: float = 60.0) -> None:
        assert RLMESH is not None
        self.proc = subprocess.Popen([RLMESH, "serve", *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, cwd=CLI_DIR,
                                     env={**os.environ, "COLUMNS": "200"})
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ready_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if " at " not in line:
            self.stop(signal.SIGKILL)
            stderr = self.proc.stderr.read() if self.proc.stderr else ""
            raise AssertionError(f"rlmesh serve did not start: {line!r}\n{stderr}")
        self.banner = line.strip()
        self.address = line.rsplit(" at ", 1)[1].strip()

    def stop(self, sig: int = signal.SIGINT, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            raise AssertionError(f"rlmesh serve ignored signal {sig} for {timeout} s") from None


@pytest.fixture
def serving() -> Iterator[list[Serving]]:
    """Collects servers a test starts and makes sure none outlives it."""
    started: list[Serving] = []
    yield started
    for server in started:
        if server.proc.poll() is None:
            server.stop(signal.SIGKILL)
