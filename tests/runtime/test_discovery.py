"""Unit tests of driver discovery, with fake entry points (no engine needed)."""

from __future__ import annotations

import sys
import types
from collections.abc import Mapping, Sequence
from importlib.metadata import EntryPoint

import pytest

from rlmesh.errors import RuntimeUnavailableError
from rlmesh.runtime import discovery
from rlmesh.runtime.driver import (
    Availability,
    ContainerHandle,
    ContainerInfo,
    Health,
    ImageRecipe,
    ProgressCallback,
    RunSpec,
    RuntimeDriver,
)

FAKE_MODULE = "_rlmesh_test_fake_drivers"


class FakeDriver(RuntimeDriver):
    """A driver whose availability is set per subclass; every engine operation is unused here."""

    up = True

    def __init__(self, **options: object) -> None:
        self.options = options

    def available(self) -> Availability:
        return Availability(self.up, reason="" if self.up else f"{type(self).__name__} engine is down")

    def image_exists(self, tag: str) -> bool:
        raise NotImplementedError

    def _build(
        self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None
    ) -> None:
        raise NotImplementedError

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        raise NotImplementedError

    def remove_image(self, tag: str) -> None:
        raise NotImplementedError

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        raise NotImplementedError

    def run(self, spec: RunSpec) -> ContainerHandle:
        raise NotImplementedError

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        raise NotImplementedError

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        raise NotImplementedError

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        raise NotImplementedError

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        raise NotImplementedError


def _driver_class(name: str, up: bool) -> type[FakeDriver]:
    return type(f"{name.title()}Driver", (FakeDriver,), {"name": name, "up": up})


@pytest.fixture
def fake_entry_points(monkeypatch: pytest.MonkeyPatch) -> dict[str, bool]:
    """Name -> availability of the fake drivers; edit it, then call discovery functions."""
    registry: dict[str, bool] = {}
    module = types.ModuleType(FAKE_MODULE)
    monkeypatch.setitem(sys.modules, FAKE_MODULE, module)

    def entry_points(*, group: str) -> list[EntryPoint]:
        assert group == "rlmesh.runtimes"
        points = []
        for name, up in registry.items():
            attr = name.replace("-", "_")
            setattr(module, attr, _driver_class(name, up))
            points.append(EntryPoint(name, f"{FAKE_MODULE}:{attr}", group))
        return points

    monkeypatch.setattr(discovery, "entry_points", entry_points)
    monkeypatch.delenv("RLMESH_RUNTIME", raising=False)
    return registry


def test_real_entry_points_list_builtin_drivers_without_importing_them() -> None:
    installed = discovery.installed_drivers()
    assert {"docker", "podman", "cli"} <= set(installed)
    assert installed["podman"].value == "rlmesh_runtimes.podman:PodmanDriver"


def test_name_selects_driver_and_passes_options(fake_entry_points: dict[str, bool]) -> None:
    fake_entry_points.update(docker=True, podman=True)
    driver = discovery.get_driver("podman", host="unix:///x.sock")
    assert driver.name == "podman"
    assert isinstance(driver, FakeDriver)
    assert driver.options == {"host": "unix:///x.sock"}


def test_instance_passes_through(fake_entry_points: dict[str, bool]) -> None:
    instance = _driver_class("mine", True)()
    assert discovery.get_driver(instance) is instance


def test_unknown_name_lists_installed_drivers(fake_entry_points: dict[str, bool]) -> None:
    fake_entry_points.update(docker=True, cli=True)
    with pytest.raises(RuntimeUnavailableError) as failure:
        discovery.get_driver("dokker")
    message = str(failure.value)
    assert "'dokker'" in message
    assert "Installed drivers: cli, docker" in message


def test_missing_package_names_the_extra(
    fake_entry_points: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    broken = EntryPoint("podman", "rlmesh_test_module_that_does_not_exist:PodmanDriver", "rlmesh.runtimes")
    monkeypatch.setattr(discovery, "entry_points", lambda *, group: [broken])
    with pytest.raises(RuntimeUnavailableError) as failure:
        discovery.get_driver("podman")
    message = str(failure.value)
    assert 'pip install "rlmesh[podman]"' in message
    assert "rlmesh_test_module_that_does_not_exist" in message


def test_env_var_selects_driver(
    fake_entry_points: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points.update(docker=True, zeta=False)
    monkeypatch.setenv("RLMESH_RUNTIME", "zeta")
    # An explicit choice is honoured even when its engine is down: the caller asked for it.
    assert discovery.get_driver().name == "zeta"
    monkeypatch.setenv("RLMESH_RUNTIME", "nope")
    with pytest.raises(RuntimeUnavailableError, match="RLMESH_RUNTIME"):
        discovery.get_driver()


def test_argument_beats_env_var(
    fake_entry_points: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points.update(docker=True, podman=True)
    monkeypatch.setenv("RLMESH_RUNTIME", "docker")
    assert discovery.get_driver("podman").name == "podman"


def test_auto_order_builtin_first_then_third_party_alphabetically(
    fake_entry_points: dict[str, bool],
) -> None:
    fake_entry_points.update(zeta=True, alpha=True, cli=True, podman=True, docker=False)
    assert discovery.get_driver().name == "podman"
    fake_entry_points.update(podman=False)
    assert discovery.get_driver().name == "cli"
    fake_entry_points.update(cli=False)
    assert discovery.get_driver("auto").name == "alpha"


def test_auto_skips_drivers_whose_package_is_missing(
    fake_entry_points: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_entry_points.update(cli=True)
    real = vars(discovery)["entry_points"]  # the fake installed by the fixture
    broken = EntryPoint("docker", "rlmesh_test_module_that_does_not_exist:DockerDriver", "rlmesh.runtimes")
    monkeypatch.setattr(discovery, "entry_points", lambda *, group: [broken, *real(group=group)])
    assert discovery.get_driver().name == "cli"


def test_nothing_available_lists_each_reason(fake_entry_points: dict[str, bool]) -> None:
    fake_entry_points.update(docker=False, podman=False, extra=False)
    with pytest.raises(RuntimeUnavailableError) as failure:
        discovery.get_driver()
    message = str(failure.value)
    for name in ("docker", "podman", "extra"):
        assert f"{name}: {name.title()}Driver engine is down" in message
    assert message.index("docker:") < message.index("podman:") < message.index("extra:")


def test_entry_point_that_is_not_a_driver(
    fake_entry_points: dict[str, bool], monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = EntryPoint("odd", "os:getcwd", "rlmesh.runtimes")
    monkeypatch.setattr(discovery, "entry_points", lambda *, group: [wrong])
    with pytest.raises(RuntimeUnavailableError, match="not a RuntimeDriver subclass"):
        discovery.get_driver("odd")
