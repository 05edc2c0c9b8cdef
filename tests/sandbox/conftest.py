"""Fixtures for end-to-end sandbox tests: real containers on every engine configuration.

Engine configurations are shared with the runtime conformance suite. One image per engine
store serves most tests; its build is a cache hit after the first test.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import pytest
from runtime.conftest import EngineConfig, engine_configs

from rlmesh.errors import RuntimeDriverError
from rlmesh.runtime import RuntimeDriver, get_driver
from rlmesh.runtime.labels import MANAGED, OWNER_PID

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

#: The packages of the image most sandbox tests share (render needs pygame).
PACKAGES = ["gymnasium[classic-control]==1.3.0"]
IMPORTS = ["gymnasium", "pygame"]


def _unavailable(config: EngineConfig, reason: str) -> None:
    message = (f"[{config.id}] engine not available: {reason}\n"
               "Start the engines with `.ci/engines.sh` (as root) to run the sandbox tests.")
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message)


_drivers: dict[str, RuntimeDriver] = {}


#: Container engines only: the ray driver places servers on a cluster and has tests/scale.
CONTAINER_CONFIGS = [c for c in engine_configs() if c.driver in ("docker", "podman", "cli")]


@pytest.fixture(scope="session", params=CONTAINER_CONFIGS, ids=lambda c: c.id)
def sandbox_engine(request: pytest.FixtureRequest) -> EngineConfig:
    return request.param  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def sandbox_driver(sandbox_engine: EngineConfig, sandbox_leak_check: None) -> RuntimeDriver:
    return driver_for(sandbox_engine)


@pytest.fixture(scope="session")
def docker_driver(sandbox_leak_check: None) -> RuntimeDriver:
    """The docker engine alone, for tests whose images one engine is enough to prove."""
    return driver_for(next(config for config in CONTAINER_CONFIGS if config.id == "docker"))


def driver_for(config: EngineConfig) -> RuntimeDriver:
    """The driver of one engine configuration; skips (fails under CI) when the engine is down."""
    if config.missing:
        _unavailable(config, config.missing)
    if config.id not in _drivers:
        try:
            driver = get_driver(config.driver, **config.options)
        except RuntimeDriverError as exc:
            _unavailable(config, str(exc))
        availability = driver.available()
        if not availability:
            _unavailable(config, availability.reason)
        _drivers[config.id] = driver
    return _drivers[config.id]


def ours(driver: RuntimeDriver, owner_pid: int | None = None) -> list[str]:
    """Ids of rlmesh-managed containers (of one owner process when given), running or not."""
    labels = {MANAGED: "true"}
    if owner_pid is not None:
        labels[OWNER_PID] = str(owner_pid)
    return [c.id for c in driver.list(labels)]


@pytest.fixture(scope="session")
def sandbox_leak_check() -> Iterator[None]:
    """No container owned by this test process may survive the session."""
    yield
    leaked = {cid: ours(d, os.getpid()) for cid, d in _drivers.items()}
    for config_id, ids in leaked.items():
        for container_id in ids:
            _drivers[config_id].remove(container_id)
    _drivers.clear()
    assert not any(leaked.values()), f"sandbox containers left behind: {leaked}"


def runtime_argument(config: EngineConfig) -> str:
    """How a child process re-creates the same driver (see sandbox_child.py)."""
    return json.dumps({"driver": config.driver, "options": config.options})


def driver_from_argument(text: str) -> Any:
    data = json.loads(text)
    return get_driver(data["driver"], **data["options"])
