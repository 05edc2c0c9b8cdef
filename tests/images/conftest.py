"""Engines for the image tests: the sockets `.ci/engines.sh` wrote to /run/rlmesh/engines.env."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest

from rlmesh.errors import RuntimeUnavailableError
from rlmesh.runtime.discovery import get_driver
from rlmesh.runtime.driver import RuntimeDriver

ENGINES_ENV = Path("/run/rlmesh/engines.env")
TEST_LABELS = {"io.rlmesh.test": "images"}


def _engine_settings() -> dict[str, str]:
    if not ENGINES_ENV.exists():
        return {}
    pairs = (line.split("=", 1) for line in ENGINES_ENV.read_text().splitlines() if "=" in line)
    return {key: value for key, value in pairs}


ENGINES = {
    "docker": ("docker", "DOCKER_HOST"),
    "podman-rootful": ("podman", "RLMESH_PODMAN_ROOTFUL_SOCKET"),
    "podman-rootless": ("podman", "RLMESH_PODMAN_ROOTLESS_SOCKET"),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> Iterator[RuntimeDriver]:
    yield from _driver(request.param)


@pytest.fixture
def dockerd() -> Iterator[RuntimeDriver]:
    yield from _driver("docker")


def _driver(engine_name: str) -> Iterator[RuntimeDriver]:
    runtime, variable = ENGINES[engine_name]
    host = _engine_settings().get(variable)
    try:
        driver = get_driver(runtime, host=host) if host else None
    except RuntimeUnavailableError as exc:
        _not_up(engine_name, str(exc))
    if driver is None:
        _not_up(engine_name, f"{variable} not in {ENGINES_ENV}")
    availability = driver.available()
    if not availability:
        _not_up(engine_name, availability.reason)
    try:
        yield driver
        leftovers = driver.list(TEST_LABELS)
        assert not leftovers, f"test containers left behind on {engine_name}: {leftovers}"
    finally:
        driver.close()


def _not_up(engine_name: str, reason: str) -> NoReturn:
    message = f"ENGINE {engine_name} NOT UP ({reason}); start the engines with .ci/engines.sh"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)
