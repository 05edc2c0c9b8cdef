"""Fixtures for the runtime-driver conformance suite: one real engine per configuration.

Configurations come from every installed driver (entry points) times the engines it can talk to:
docker (dockerd), podman rootful socket, podman rootless socket, cli -> docker, cli -> podman.
Sockets are read from ``/run/rlmesh/engines.env``, written by ``.ci/engines.sh``. A test whose
engine is not up is skipped with a reason naming that script, except under ``CI``, where it
fails: CI must run the engine tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from rlmesh_runtimes.exit_race import settled

from rlmesh.errors import RuntimeDriverError
from rlmesh.runtime import (
    ContainerHandle,
    ImageRecipe,
    RunSpec,
    RuntimeDriver,
    get_driver,
)
from rlmesh.runtime.discovery import installed_drivers

ENGINES_ENV = Path(os.environ.get("RLMESH_ENGINES_ENV", "/run/rlmesh/engines.env"))
#: Every test container and image carries this label, unique to the pytest session.
RUN_LABEL = "io.rlmesh.test.run"
RUN_ID = uuid.uuid4().hex[:12]

ECHO_SERVER = b'''"""Tiny TCP echo server for the runtime conformance tests (stdlib only)."""
import os
import socket

server = socket.socket()
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("0.0.0.0", int(os.environ.get("ECHO_PORT", "7000"))))
server.listen()
print("echo server listening", flush=True)
while True:
    conn, _ = server.accept()
    with conn:
        conn.sendall(conn.recv(4096))
'''


def engines_env() -> dict[str, str]:
    """``KEY=VALUE`` lines of the engines file written by ``.ci/engines.sh``; empty if absent."""
    if not ENGINES_ENV.exists():
        return {}
    values = {}
    for line in ENGINES_ENV.read_text().splitlines():
        key, sep, value = line.strip().partition("=")
        if sep and not key.startswith("#"):
            values[key] = value
    return values


@dataclass(frozen=True)
class EngineConfig:
    """One driver talking to one engine."""

    id: str
    driver: str
    options: dict[str, Any] = field(default_factory=dict)
    #: Why this configuration cannot run at all (e.g. no rootless socket known), or "".
    missing: str = ""


def engine_configs() -> list[EngineConfig]:
    env = engines_env()
    docker_host = env.get("DOCKER_HOST") or os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    rootful = env.get("RLMESH_PODMAN_ROOTFUL_SOCKET", "unix:///run/podman/podman.sock")
    rootless = env.get("RLMESH_PODMAN_ROOTLESS_SOCKET", "")
    known = {
        "docker": [EngineConfig("docker", "docker", {"host": docker_host})],
        "podman": [
            EngineConfig("podman-rootful", "podman", {"host": rootful}),
            EngineConfig(
                "podman-rootless",
                "podman",
                {"host": rootless},
                missing="" if rootless else f"no RLMESH_PODMAN_ROOTLESS_SOCKET in {ENGINES_ENV}",
            ),
        ],
        "cli": [
            EngineConfig("cli-docker", "cli", {"engine": "docker", "host": docker_host}),
            EngineConfig("cli-podman", "cli", {"engine": "podman"}),
        ],
        # The ray driver builds no images; a real Ray cluster tests it in tests/scale.
        "ray": [],
    }
    configs: list[EngineConfig] = []
    for name in sorted(installed_drivers()):
        configs += known.get(
            name,
            # A third-party driver needs its own engine set-up; list it so its absence is visible.
            [EngineConfig(name, name, missing=f"no conformance engine configuration for driver {name!r}")],
        )
    return configs


def _unavailable(config: EngineConfig, reason: str) -> None:
    message = (
        f"[{config.id}] engine not available: {reason}\n"
        "Start the engines with `.ci/engines.sh` (as root) to run the runtime conformance tests."
    )
    if os.environ.get("CI") and config.driver in ("docker", "podman", "cli"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_drivers: dict[str, RuntimeDriver] = {}


@pytest.fixture(scope="session", params=engine_configs(), ids=lambda c: c.id)
def engine(request: pytest.FixtureRequest) -> EngineConfig:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def driver(engine: EngineConfig, leak_check: None) -> RuntimeDriver:
    """The driver for ``engine``; skips (fails under CI) when the engine is not up."""
    if engine.missing:
        _unavailable(engine, engine.missing)
    if engine.id not in _drivers:
        try:
            candidate = get_driver(engine.driver, **engine.options)
        except RuntimeDriverError as exc:
            _unavailable(engine, str(exc))
        availability = candidate.available()
        if not availability:
            _unavailable(engine, availability.reason)
        _drivers[engine.id] = candidate
    return _drivers[engine.id]


@pytest.fixture(scope="session")
def leak_check() -> Iterator[None]:
    """At the end of the session: no test container may remain; test images are removed."""
    yield
    leaked: dict[str, list[str]] = {}
    for config_id, drv in _drivers.items():
        remaining = drv.list({RUN_LABEL: RUN_ID})
        if remaining:
            leaked[config_id] = [f"{c.name} ({c.id[:12]})" for c in remaining]
            for container in remaining:
                drv.remove(container.id)
        for tag in drv.list_images({RUN_LABEL: RUN_ID}):
            drv.remove_image(tag)
        drv.close()
    _drivers.clear()
    assert not leaked, f"test containers left behind: {leaked}"


def base_image() -> str:
    return engines_env().get("RLMESH_BASE_IMAGE") or os.environ.get("RLMESH_BASE_IMAGE", "rlmesh-base:bookworm")


class Recipes:
    """Makes recipes unique to this session and engine, so a first build is never a cache hit."""

    def __init__(self, engine_id: str) -> None:
        self.engine_id = engine_id
        self.labels = {RUN_LABEL: RUN_ID}

    def make(self, body: str = "", files: dict[str, bytes] | None = None) -> ImageRecipe:
        dockerfile = (
            f"FROM {base_image()}\n"
            f'LABEL {RUN_LABEL}="{RUN_ID}" io.rlmesh.test.engine="{self.engine_id}"\n'
            f"{body}"
        )
        return ImageRecipe(
            dockerfile=dockerfile,
            context_files=files or {},
            repository="rlmesh-test",
            labels=self.labels,
        )


@pytest.fixture(scope="session")
def recipes(engine: EngineConfig) -> Recipes:
    return Recipes(engine.id)


@pytest.fixture(scope="session")
def echo_image(driver: RuntimeDriver, engine: EngineConfig, recipes: Recipes) -> str:
    """Tag of an image whose default command is the echo server on port 7000."""
    if not driver.image_exists(base_image()):
        _unavailable(engine, f"base image {base_image()} is missing (bootstrap it with .ci/engines.sh)")
    recipe = recipes.make(
        'COPY echo_server.py /srv/echo_server.py\nCMD ["python3", "/srv/echo_server.py"]\n',
        {"echo_server.py": ECHO_SERVER},
    )
    return driver.build(recipe)


class Containers:
    """Starts test containers with the session label and stops every one at teardown."""

    def __init__(self, driver: RuntimeDriver) -> None:
        self.driver = driver
        self.labels = {RUN_LABEL: RUN_ID}
        self.started: list[str] = []

    def run(self, spec: RunSpec) -> ContainerHandle:
        labeled = dataclasses.replace(spec, labels={**spec.labels, RUN_LABEL: RUN_ID})
        handle = self.driver.run(labeled)
        self.started.append(handle.id)
        return handle

    def cleanup(self) -> None:
        for container_id in self.started:
            self.driver.stop(container_id, timeout=0)


def engine_inspect(driver: RuntimeDriver, container_id: str) -> dict[str, Any]:
    """The engine's own ``inspect`` of a container: its API's answer, or its CLI's JSON (asked
    again while it races the container's exit, as the drivers do)."""

    def inspect() -> dict[str, Any]:
        if driver.name == "cli":
            command = driver._command("inspect", container_id)  # type: ignore[attr-defined]
            done = subprocess.run(command, check=False, capture_output=True, text=True)
            if done.returncode:
                raise RuntimeError(f"{' '.join(command)}: {done.stderr.strip()}")
            return json.loads(done.stdout)[0]  # type: ignore[no-any-return]
        return dict(driver.client.containers.get(container_id).attrs)  # type: ignore[attr-defined]

    return settled(inspect, container_id)


@pytest.fixture
def containers(driver: RuntimeDriver) -> Iterator[Containers]:
    tracker = Containers(driver)
    yield tracker
    tracker.cleanup()
