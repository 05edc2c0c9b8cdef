"""A minimal in-memory runtime driver: "containers" are records, images are a set of tags."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from rlmesh.errors import ContainerError
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
from rlmesh.runtime.labels import with_owner_labels

__all__ = ["FakeEchoDriver"]


class FakeEchoDriver(RuntimeDriver):
    """Pretends to run containers; each published port gets a made-up loopback address."""

    name = "fake-echo"

    def __init__(self, **options: str) -> None:
        self.options = options
        self._images: set[str] = set()
        self._containers: dict[str, ContainerInfo] = {}
        self._ids = itertools.count(1)

    def available(self) -> Availability:
        return Availability(True, version="fake-echo 0.1.0")

    def image_exists(self, tag: str) -> bool:
        return tag in self._images

    def _build(
        self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None
    ) -> None:
        if progress is not None:
            progress(f"pretend-building {recipe.tag}")
        self._images.add(recipe.tag)

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        self._images.add(tag)

    def remove_image(self, tag: str) -> None:
        self._images.discard(tag)

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        return sorted(self._images)

    def run(self, spec: RunSpec) -> ContainerHandle:
        container_id = f"fake{next(self._ids)}"
        self._containers[container_id] = ContainerInfo(
            container_id, with_owner_labels(spec.labels), running=True, name=spec.name or container_id
        )
        addresses = {port: f"tcp://127.0.0.1:{40000 + port}" for port in spec.ports}
        return ContainerHandle(container_id, addresses, driver=self.name)

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        if container_id not in self._containers:
            raise ContainerError(f"fake-echo: no container {container_id}")
        return Health(running=True)

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        return ""

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        self._containers.pop(container_id, None)

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        return [
            info
            for info in self._containers.values()
            if all(info.labels.get(key) == value for key, value in labels.items())
        ]
