"""Core test fixtures: env servers in their own processes, and clients closed after each test.

Servers run ``tests/core/core_serve.py`` in a subprocess, so every client/server test crosses a
real process boundary over a real socket (tcp loopback or a unix socket).
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest

CORE_DIR = Path(__file__).parent / "core"
SERVE_SCRIPT = CORE_DIR / "core_serve.py"

# pygame (CartPole rendering) must not look for a display, here or in server processes.
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class ServerProcess:
    """An EnvServer running ``core_envs.make(env, **env_kwargs)`` in a child process."""

    def __init__(self, env: str, address: str = "tcp://127.0.0.1:0", *,
                 env_kwargs: dict[str, Any] | None = None,
                 server_kwargs: dict[str, Any] | None = None, ready_timeout: float = 30.0) -> None:
        config = {"env": env, "address": address, "env_kwargs": env_kwargs or {},
                  "server_kwargs": server_kwargs or {}}
        self.proc = subprocess.Popen([sys.executable, str(SERVE_SCRIPT), json.dumps(config)],
                                     stdout=subprocess.PIPE, text=True, cwd=CORE_DIR)
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], ready_timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"server for {env!r} did not start (got {line!r}, exit {self.proc.poll()})")
        self.address = line.split(" ", 1)[1].strip()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the server gets no chance to say goodbye."""
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        stop_all([self])


def stop_all(servers: Iterable[ServerProcess]) -> None:
    """SIGTERM every server at once (a clean EnvServer shutdown), then reap them."""
    servers = [s for s in servers if s.alive()]
    for server in servers:
        server.proc.send_signal(signal.SIGTERM)
    for server in servers:
        try:
            server.proc.wait(5)
        except subprocess.TimeoutExpired:
            server.proc.kill()
            server.proc.wait(5)


class ServerHost:
    """One child process hosting many EnvServers, each in its own thread (``core_serve.py --host``).

    Shared servers live here: importing the test stack once instead of once per server keeps
    the suite fast, and the servers still run in another process than the clients.
    """

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, str(SERVE_SCRIPT), "--host"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, text=True, cwd=CORE_DIR)

    def start(self, env: str, address: str, env_kwargs: dict[str, Any]) -> str:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"env": env, "address": address, "env_kwargs": env_kwargs}) + "\n")
        self.proc.stdin.flush()
        ready, _, _ = select.select([self.proc.stdout], [], [], 30.0)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            raise RuntimeError(f"server host could not serve {env!r}: {line!r}")
        return line.split(" ", 1)[1].strip()

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()  # the host shuts its servers down when its stdin closes
        try:
            self.proc.wait(3)  # a server stuck in a slow env step does not get to delay us longer
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)


@pytest.fixture(scope="session")
def socket_dir() -> Iterator[Path]:
    # unix socket paths must stay short (about 107 bytes), so not pytest's deep tmp_path.
    path = Path(tempfile.mkdtemp(prefix="rlm-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="session")
def make_address(socket_dir: Path) -> Callable[[str], str]:
    """``make_address("tcp")`` or ``make_address("unix")``: a fresh address a server can bind."""
    counter = iter(range(1_000_000))

    def make(transport: str) -> str:
        if transport == "tcp":
            return "tcp://127.0.0.1:0"
        if transport == "unix":
            return f"unix://{socket_dir}/s{next(counter)}.sock"
        raise ValueError(transport)

    return make


@pytest.fixture(scope="session")
def server_pool(make_address: Callable[[str], str]) -> Iterator[Callable[..., str]]:
    """Long-lived servers shared by tests: ``server_pool(env, transport="tcp", **env_kwargs)``.

    Tests must close their clients (use the ``clients`` fixture) so the next test can attach.
    """
    host: ServerHost | None = None
    addresses: dict[str, str] = {}
    own_processes: list[ServerProcess] = []

    def get(env: str, transport: str = "tcp", **env_kwargs: Any) -> str:
        nonlocal host
        key = json.dumps([env, transport, env_kwargs], sort_keys=True)
        if key not in addresses:
            if env_kwargs.get("mode") == "async":
                # AsyncVectorEnv forks workers: do that in a process without zmq threads running.
                server = ServerProcess(env, make_address(transport), env_kwargs=env_kwargs)
                own_processes.append(server)
                addresses[key] = server.address
            else:
                host = host or ServerHost()
                addresses[key] = host.start(env, make_address(transport), env_kwargs)
        return addresses[key]

    yield get
    stop_all(own_processes)
    if host is not None:
        host.stop()


@pytest.fixture
def spawn_server(make_address: Callable[[str], str]) -> Iterator[Callable[..., ServerProcess]]:
    """A private server for one test (for killing it, or special server options)."""
    started: list[ServerProcess] = []

    def spawn(env: str, transport: str = "tcp", *, env_kwargs: dict[str, Any] | None = None,
              **server_kwargs: Any) -> ServerProcess:
        server = ServerProcess(env, make_address(transport), env_kwargs=env_kwargs,
                               server_kwargs=server_kwargs)
        started.append(server)
        return server

    yield spawn
    stop_all(started)


@pytest.fixture
def clients() -> Iterator[Callable[..., Any]]:
    """``clients(RemoteEnvClass, address, **kwargs)``: a client closed when the test ends."""
    opened: list[Any] = []

    def connect(cls: type, address: str, **kwargs: Any) -> Any:
        client = cls(address, **kwargs)
        opened.append(client)
        return client

    yield connect
    for client in opened:
        client.close()


@pytest.fixture(params=["tcp", "unix"])
def transport(request: pytest.FixtureRequest) -> str:
    return str(request.param)
