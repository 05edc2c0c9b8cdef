"""Base image bootstrap: mirror discovery, tarball caching, clear errors, a real import per engine."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from rlmesh_images.bootstrap import bootstrap, build_rootfs, debian_mirror

from rlmesh.errors import ImageBuildError, RuntimeUnavailableError
from rlmesh.runtime.driver import (
    Availability,
    ContainerHandle,
    ContainerInfo,
    Health,
    ImageRecipe,
    RunSpec,
    RuntimeDriver,
)

from .conftest import TEST_LABELS


class ImportRecorder(RuntimeDriver):
    """Records imports; everything else is out of scope for the bootstrap's own logic."""

    name = "recorder"

    def __init__(self, images: Sequence[str] = (), up: bool = True) -> None:
        self.images = set(images)
        self.up = up
        self.imported: list[tuple[str, str]] = []

    def available(self) -> Availability:
        return Availability(self.up, reason="" if self.up else "socket refused", version="rec 1")

    def image_exists(self, tag: str) -> bool:
        return tag in self.images

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        self.imported.append((tarball, tag))
        self.images.add(tag)

    def _build(self, recipe: ImageRecipe, *, memory: str | None, progress: object) -> None:
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


DEB822 = """\
Types: deb
# http://snapshot.debian.org/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main

Types: deb
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
"""


def test_mirror_from_deb822_sources(tmp_path: Path) -> None:
    sources = tmp_path / "debian.sources"
    sources.write_text(DEB822)
    assert debian_mirror([sources]) == "http://mirror.example/debian"
    assert debian_mirror([sources], suite="bookworm-security") == "http://mirror.example/debian-security"


def test_mirror_from_one_line_sources(tmp_path: Path) -> None:
    sources = tmp_path / "sources.list"
    sources.write_text("# comment\ndeb [arch=amd64] http://old.example/debian bookworm main\n")
    assert debian_mirror([tmp_path / "missing", sources]) == "http://old.example/debian"


def test_mirror_falls_back_to_deb_debian_org(tmp_path: Path) -> None:
    assert debian_mirror([tmp_path / "missing"]) == "http://deb.debian.org/debian"


def test_missing_tools_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))  # neither mmdebstrap nor debootstrap on PATH
    with pytest.raises(ImageBuildError, match="apt-get install mmdebstrap"):
        build_rootfs(tmp_path / "base.tar")
    assert not (tmp_path / "base.tar").exists()


def test_cached_tarball_is_reused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tarball = tmp_path / "base.tar"
    tarball.write_bytes(b"cached")
    monkeypatch.setenv("PATH", str(tmp_path))  # a build attempt would fail: no tools
    assert build_rootfs(tarball) == tarball
    driver = ImportRecorder()
    assert bootstrap(driver, "base:test", tarball=tarball) == "base:test"
    assert driver.imported == [(str(tarball), "base:test")]


def test_existing_image_is_left_alone(tmp_path: Path) -> None:
    driver = ImportRecorder(images=["base:test"])
    assert bootstrap(driver, "base:test", tarball=tmp_path / "never-built.tar") == "base:test"
    assert driver.imported == []


def test_engine_down_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(RuntimeUnavailableError, match="not available: socket refused"):
        bootstrap(ImportRecorder(up=False), "base:test", tarball=tmp_path / "x.tar")


def test_failing_mmdebstrap_shows_its_output(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "bin" / "mmdebstrap"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'E: cannot reach mirror'\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:/usr/bin:/bin")
    with pytest.raises(ImageBuildError, match="(?s)exit code 3.*E: cannot reach mirror"):
        build_rootfs(tmp_path / "base.tar", mirror="http://mirror.example/debian")
    assert not (tmp_path / "base.tar").exists()


@pytest.mark.engine
def test_imported_base_image_runs_python(engine: RuntimeDriver) -> None:
    tag = "rlmesh-base:bootstrap-test"
    container_id = None
    engine.remove_image(tag)
    try:
        # Builds the tarball only when the cache is empty (about 30 s); usually just imports.
        assert bootstrap(engine, tag) == tag
        assert engine.image_exists(tag)
        container_id = engine.run(RunSpec(image=tag, command=["python3", "-c", "import venv, ssl"],
                                          labels=TEST_LABELS)).id
        deadline = time.monotonic() + 30
        while (health := engine.health(container_id)).running and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (health.running, health.exit_code) == (False, 0), health.logs_tail
    finally:
        if container_id is not None:
            engine.stop(container_id, timeout=0)
        engine.remove_image(tag)
