"""Scale-out fixtures: env servers in subprocesses, and a real two-node Ray cluster on loopback.

The Ray cluster (a head on 127.0.0.3 and a second node on 127.0.0.2, started with ``ray start``)
lives for the session; every node address must be on 127.0.0.0/8, so no test traffic leaves the
machine. Without the ``ray`` package the Ray tests skip, except under ``CI`` where they fail.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

HERE = Path(__file__).parent
HEAD_IP, NODE_IP = "127.0.0.3", "127.0.0.2"


class Served:
    """One EnvServer in its own process."""

    def __init__(self, env: str, **kwargs: Any) -> None:
        config = json.dumps({"env": env, "kwargs": kwargs})
        self.proc = subprocess.Popen([sys.executable, str(HERE / "scale_serve.py"), config],
                                     stdout=subprocess.PIPE, text=True, cwd=HERE)
        self.address = ""

    def wait_ready(self, timeout: float = 30.0) -> None:
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline() if ready else ""
        if not line.startswith("READY "):
            self.kill()
            raise RuntimeError(f"test server did not start: {line!r} (exit {self.proc.poll()})")
        self.address = line.split(" ", 1)[1].strip()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> None:
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.kill()


@pytest.fixture
def serve() -> Iterator[Callable[..., list[Served]]]:
    """``serve(("vector", {"num_envs": 3}), ("single", {}))``: servers started in parallel."""
    started: list[Served] = []

    def start(*specs: tuple[str, dict[str, Any]]) -> list[Served]:
        servers = [Served(name, **kwargs) for name, kwargs in specs]
        started.extend(servers)
        for server in servers:
            server.wait_ready()
        return servers

    yield start
    for server in started:
        server.stop()
    assert not any(s.alive() for s in started)


# --- Ray -------------------------------------------------------------------------------------------

def _ray_or_skip() -> Any:
    try:
        import ray
    except ImportError:
        message = 'the Ray tests need ray: pip install "ray[default]>=2.9"'
        if os.environ.get("CI"):
            pytest.fail(message + " (CI must run them)")
        pytest.skip(message)
    return ray


def _free_port(host: str) -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


def _ray_cli(*args: str, env: dict[str, str], timeout: float = 120.0) -> str:
    ray_bin = shutil.which("ray") or str(Path(sys.executable).with_name("ray"))
    done = subprocess.run([ray_bin, *args], env=env, capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise RuntimeError(f"ray {' '.join(args)} failed ({done.returncode}):\n{done.stdout}\n{done.stderr}")
    return done.stdout


@dataclass(frozen=True)
class RayCluster:
    address: str
    head_ip: str
    node_ips: tuple[str, ...]
    temp_dir: str


@pytest.fixture(scope="session")
def ray_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RayCluster]:
    """A head and a second node via ``ray start`` on loopback, stopped after the session."""
    ray = _ray_or_skip()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    port = _free_port(HEAD_IP)
    address = f"{HEAD_IP}:{port}"
    # A private temp dir keeps this cluster apart from any other Ray on the machine; Unix socket
    # paths must stay short, hence not pytest's deep tmp_path.
    temp_dir = f"/tmp/rlray-{os.getpid()}"
    try:
        _ray_cli("start", "--head", f"--node-ip-address={HEAD_IP}", f"--port={port}", "--num-cpus=1",
                 "--include-dashboard=false", "--disable-usage-stats", f"--temp-dir={temp_dir}", env=env)
        _ray_cli("start", f"--address={address}", f"--node-ip-address={NODE_IP}", "--num-cpus=1",
                 env=env)
        ray.init(address=address, _node_ip_address=HEAD_IP, logging_level="WARNING")
        deadline = time.monotonic() + 30
        while len([n for n in ray.nodes() if n["Alive"]]) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        nodes = [n for n in ray.nodes() if n["Alive"]]
        ips = tuple(sorted(n["NodeManagerAddress"] for n in nodes))
        assert all(ip.startswith("127.") for ip in ips), f"a Ray node left loopback: {ips}"
        assert ips == (NODE_IP, HEAD_IP), f"expected nodes on {NODE_IP} and {HEAD_IP}, got {ips}"
        yield RayCluster(address, HEAD_IP, ips, temp_dir)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        stop_cluster(temp_dir, address)


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, command line) of every process we can see."""
    found: dict[int, tuple[int, str]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        found[int(entry.name)] = (int(stat[stat.rindex(")") + 2:].split()[1]), cmdline)
    return found


def cluster_pids(*markers: str) -> set[int]:
    """Processes of our cluster: those naming its temp dir or address, and all their children.

    ``ray stop`` would end every Ray process on the machine, including other people's.
    """
    processes = _processes()
    pids = {pid for pid, (_, cmd) in processes.items() if any(m in cmd for m in markers)}
    pids.discard(os.getpid())
    grew = True
    while grew:
        children = {pid for pid, (parent, _) in processes.items() if parent in pids} - pids
        grew = bool(children)
        pids |= children
    return pids


def stop_cluster(temp_dir: str, address: str) -> None:
    pids = cluster_pids(temp_dir, address)
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            pids = {pid for pid in pids if _running(pid)}
            if not pids:
                break
            time.sleep(0.2)
    shutil.rmtree(temp_dir, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return state[state.rindex(")") + 2] != "Z"  # a zombie has ended, only its entry remains
