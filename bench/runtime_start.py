"""Container start-to-ready and stop time per runtime driver and engine.

For each configuration (docker, podman rootful/rootless, cli -> docker/podman) the echo-server
image is built once (outside the timing), then N times: ``run()`` until the first successful
TCP echo through the published port ("ready"), and ``stop()`` ("stop"). Medians are reported
against the targets: ready < 1 s, stop < 0.5 s.

    python bench/runtime_start.py [--runs 10] [--only docker,podman-rootless]

Engine sockets are read from /run/rlmesh/engines.env (written by .ci/engines.sh).
"""

from __future__ import annotations

import argparse
import logging
import socket
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from rlmesh.errors import RuntimeDriverError
from rlmesh.runtime import ImageRecipe, RunSpec, RuntimeDriver, get_driver

log = logging.getLogger("bench.runtime_start")

ENGINES_ENV = Path("/run/rlmesh/engines.env")
READY_TARGET = 1.0
STOP_TARGET = 0.5
PORT = 7000
ECHO_SERVER = b"""import socket
server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", 7000))
server.listen()
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(4096))
"""


def configurations() -> dict[str, tuple[str, dict[str, Any]]]:
    env: dict[str, str] = {}
    if ENGINES_ENV.exists():
        for line in ENGINES_ENV.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                env[key.strip()] = value.strip()
    docker_host = env.get("DOCKER_HOST", "unix:///var/run/docker.sock")
    configs: dict[str, tuple[str, dict[str, Any]]] = {
        "docker": ("docker", {"host": docker_host}),
        "podman-rootful": ("podman", {"host": env.get("RLMESH_PODMAN_ROOTFUL_SOCKET", "unix:///run/podman/podman.sock")}),
        "cli-docker": ("cli", {"engine": "docker", "host": docker_host}),
        "cli-podman": ("cli", {"engine": "podman"}),
    }
    if "RLMESH_PODMAN_ROOTLESS_SOCKET" in env:
        configs["podman-rootless"] = ("podman", {"host": env["RLMESH_PODMAN_ROOTLESS_SOCKET"]})
    return configs


def wait_for_echo(address: str, timeout: float = 10.0) -> None:
    host, port = address.removeprefix("tcp://").rsplit(":", 1)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, int(port)), timeout=1) as conn:
                conn.sendall(b"ping")
                if conn.recv(16) == b"ping":
                    return
        except OSError:
            pass
        time.sleep(0.005)
    raise TimeoutError(f"no echo from {address} within {timeout} s")


def measure(driver: RuntimeDriver, runs: int) -> tuple[list[float], list[float]]:
    recipe = ImageRecipe(
        'FROM rlmesh-base:bookworm\nCOPY echo.py /echo.py\nCMD ["python3", "/echo.py"]\n',
        {"echo.py": ECHO_SERVER},
        repository="rlmesh-bench",
        labels={"io.rlmesh.bench": "runtime_start"},
    )
    image = driver.build(recipe)
    ready: list[float] = []
    stop: list[float] = []
    for _ in range(runs):
        started = time.perf_counter()
        handle = driver.run(RunSpec(image, ports=[PORT], labels={"io.rlmesh.bench": "runtime_start"}))
        try:
            wait_for_echo(handle.addresses[PORT])
            ready.append(time.perf_counter() - started)
        finally:
            started = time.perf_counter()
            driver.stop(handle.id)
            stop.append(time.perf_counter() - started)
    return ready, stop


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10, help="containers started per configuration")
    parser.add_argument("--only", default="", help="comma-separated configuration names")
    parser.add_argument("--keep-image", action="store_true", help="keep the bench image afterwards")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    configs = configurations()
    wanted = [name for name in args.only.split(",") if name] or list(configs)
    rows: list[tuple[str, str, str, str, str]] = []
    for name in wanted:
        driver_name, options = configs[name]
        driver = get_driver(driver_name, **options)
        availability = driver.available()
        if not availability:
            rows.append((name, "-", "-", "-", f"unavailable: {availability.reason.splitlines()[0]}"))
            continue
        try:
            ready, stop = measure(driver, args.runs)
        except (RuntimeDriverError, TimeoutError) as exc:
            rows.append((name, "-", "-", "-", f"failed: {exc}"))
            continue
        finally:
            if not args.keep_image:
                for tag in driver.list_images({"io.rlmesh.bench": "runtime_start"}):
                    driver.remove_image(tag)
            driver.close()
        ready_med, stop_med = statistics.median(ready), statistics.median(stop)
        verdict = "ok" if ready_med < READY_TARGET and stop_med < STOP_TARGET else "MISSES TARGET"
        rows.append((name, f"{ready_med:.3f}", f"{max(ready):.3f}", f"{stop_med:.3f}", verdict))

    header = ("configuration", "ready median s", "ready max s", "stop median s", f"(targets <{READY_TARGET} / <{STOP_TARGET})")
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(5)]
    print(f"runs per configuration: {args.runs}")
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))
    return 0 if all(row[4] == "ok" for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
