"""A runtime driver whose "containers" are JSON files of labels in a directory (no engine).

It stands for a third-party driver in the watcher tests: registered under no entry point, it is
re-created in the watcher's process from its class and constructor arguments alone.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

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


class FileDriver(RuntimeDriver):
    name = "file"

    def __init__(self, root: str) -> None:
        self.root = Path(root)

    def _path(self, container_id: str) -> Path:
        return self.root / f"{container_id}.json"

    def available(self) -> Availability:
        return Availability(True, version="files")

    def image_exists(self, tag: str) -> bool:
        return True

    def _build(self, recipe: ImageRecipe, *, memory: str | None,
               progress: ProgressCallback | None) -> None:
        pass

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        pass

    def remove_image(self, tag: str) -> None:
        pass

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        return []

    def run(self, spec: RunSpec) -> ContainerHandle:
        container_id = uuid.uuid4().hex
        self.root.mkdir(parents=True, exist_ok=True)
        record = {"labels": with_owner_labels(spec.labels), "running": True}
        self._path(container_id).write_text(json.dumps(record))
        return ContainerHandle(id=container_id, addresses={}, driver=self.name)

    def exit(self, container_id: str, code: int) -> None:
        """Make the container exit on its own, as a crashing sandbox does."""
        record = json.loads(self._path(container_id).read_text())
        self._path(container_id).write_text(json.dumps({**record, "running": False, "exit_code": code}))

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        try:
            record = json.loads(self._path(container_id).read_text())
        except FileNotFoundError:
            raise ContainerError(f"file: no container {container_id}") from None
        if record["running"]:
            return Health(running=True)
        return Health(running=False, exit_code=record["exit_code"], logs_tail="crashed")

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        return ""

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        self._path(container_id).unlink(missing_ok=True)

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        found = []
        for path in sorted(self.root.glob("*.json")):
            try:
                record = json.loads(path.read_text())
            except (FileNotFoundError, ValueError):
                continue
            if all(record["labels"].get(k) == v for k, v in labels.items()):
                found.append(ContainerInfo(id=path.stem, labels=record["labels"],
                                           running=record["running"]))
        return found
