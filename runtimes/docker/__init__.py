"""Runtime driver for the Docker Engine API through the Docker SDK for Python (``docker``).

The daemon is found from the ``host`` argument, else ``DOCKER_HOST``, else the default socket.
Images are built with the classic builder (the Engine API's ``/build``), which needs no buildx.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import docker
import docker.errors
import docker.types
import docker.utils
import requests.exceptions

from rlmesh.errors import (
    ContainerError,
    ImageBuildError,
    RuntimeDriverError,
    RuntimeUnavailableError,
)
from rlmesh.runtime.addresses import container_addresses
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
from rlmesh.runtime.labels import MANAGED, with_owner_labels

__all__ = ["DockerDriver"]

log = logging.getLogger(__name__)

#: Bridge network without NAT, for ``RunSpec(network=False)``: see :meth:`DockerDriver._offline_network`.
OFFLINE_NETWORK = "rlmesh-offline"
_LOG_TAIL = 40


def _label_filter(labels: Mapping[str, str]) -> list[str]:
    return [f"{key}={value}" for key, value in labels.items()]


def _split_tag(tag: str) -> tuple[str, str]:
    repository, sep, version = tag.rpartition(":")
    # "registry:5000/name" has its colon before the last slash: that is no tag.
    if not sep or "/" in version:
        return tag, "latest"
    return repository, version


def build_context(recipe: ImageRecipe) -> io.BytesIO:
    """An in-memory tar of the Dockerfile and the recipe's context files."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        files = {"Dockerfile": recipe.dockerfile.encode(), **recipe.context_files}
        for name in sorted(files):
            info = tarfile.TarInfo(name)
            info.size = len(files[name])
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(files[name]))
    buffer.seek(0)
    return buffer


class DockerDriver(RuntimeDriver):
    """Build and run containers on a Docker daemon."""

    name = "docker"

    def __init__(self, host: str | None = None, *, timeout: float = 120.0) -> None:
        self._host = host
        self._timeout = timeout
        self._client: docker.DockerClient | None = None
        self._info: dict[str, Any] | None = None

    # -- connection -------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return self._host or "DOCKER_HOST or the default socket"

    @property
    def client(self) -> docker.DockerClient:
        """The SDK client, connected on first use (the SDK probes the API version eagerly)."""
        if self._client is None:
            try:
                if self._host:
                    self._client = docker.DockerClient(base_url=self._host, timeout=int(self._timeout))
                else:
                    self._client = docker.from_env(timeout=int(self._timeout))
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailableError(
                    f"Cannot reach dockerd at {self._where}: {exc}. Start dockerd "
                    "(for CI and tests: .ci/engines.sh) or point DOCKER_HOST at it."
                ) from exc
        return self._client

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate SDK exceptions into ours, with the engine's message inside."""
        try:
            yield
        except RuntimeDriverError:
            raise
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise RuntimeUnavailableError(f"dockerd at {self._where} went away while {action}: {exc}") from exc
        except docker.errors.ImageNotFound as exc:
            raise RuntimeDriverError(
                f"docker: image not found while {action}: {exc.explanation}. Build it first, or "
                "for the base image run: python -m rlmesh_images.bootstrap --runtime docker"
            ) from exc
        except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
            raise RuntimeDriverError(f"docker: {action} failed: {exc}") from exc

    def _engine_info(self) -> dict[str, Any]:
        if self._info is None:
            with self._errors("reading engine info"):
                self._info = dict(self.client.info())
        return self._info

    def available(self) -> Availability:
        try:
            version = self.client.version()
            info = self._engine_info()
        except RuntimeDriverError as exc:
            return Availability(False, reason=str(exc))
        return Availability(
            True,
            version=f"docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})",
            rootless=self._rootless(info),
        )

    @staticmethod
    def _rootless(info: Mapping[str, Any]) -> bool:
        return any("rootless" in opt for opt in info.get("SecurityOptions") or ())

    @property
    def supports_gpus(self) -> bool:
        # Device requests exist in every API version we talk to; a daemon without the NVIDIA
        # toolkit rejects them at start, which run() turns into a RuntimeDriverError.
        return True

    @property
    def supports_limits(self) -> bool:
        info = self._engine_info()
        return bool(info.get("MemoryLimit")) and bool(info.get("CpuCfsQuota"))

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- images -----------------------------------------------------------------------------

    def image_exists(self, tag: str) -> bool:
        with self._errors(f"looking up image {tag}"):
            try:
                self.client.images.get(tag)
            except docker.errors.ImageNotFound:
                return False
        return True

    def _build(
        self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None
    ) -> None:
        limits: Any = {"memory": int(docker.utils.parse_bytes(memory))} if memory else {}
        lines: list[str] = []
        started = time.monotonic()
        with self._errors(f"building {recipe.tag}"):
            stream = self.client.api.build(
                fileobj=build_context(recipe),
                custom_context=True,
                tag=recipe.tag,
                labels=dict(recipe.labels),
                rm=True,
                forcerm=True,
                decode=True,
                container_limits=limits,
            )
            for chunk in stream:
                text = chunk.get("stream") or chunk.get("status") or ""
                for line in text.splitlines():
                    lines.append(line)
                    if progress is not None:
                        progress(line)
                if "error" in chunk:
                    lines.append(str(chunk["error"]))
                    tail = "\n".join(lines[-_LOG_TAIL:])
                    raise ImageBuildError(
                        f"docker: building {recipe.tag} failed: {chunk['error']}\n"
                        f"--- last build output ---\n{tail}",
                        log="\n".join(lines),
                    )
        log.info("built %s in %.1f s", recipe.tag, time.monotonic() - started)

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        repository, version = _split_tag(tag)
        with self._errors(f"importing {tarball} as {tag}"):
            result = self.client.api.import_image_from_file(
                tarball, repository=repository, tag=version, changes=[f"CMD {json.dumps(list(cmd))}"]
            )
        if "error" in str(result).lower() and not self.image_exists(tag):
            raise RuntimeDriverError(f"docker: importing {tarball} as {tag} failed: {result}")

    def remove_image(self, tag: str) -> None:
        with self._errors(f"removing image {tag}"):
            try:
                self.client.images.remove(tag, force=True)
            except docker.errors.ImageNotFound:
                pass

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        with self._errors("listing images"):
            images = self.client.images.list(filters={"label": _label_filter(labels)})
        return sorted(tag for image in images for tag in image.tags)

    # -- containers -------------------------------------------------------------------------

    def _offline_network(self) -> str:
        """A bridge without IP masquerading: no route out, while published ports still work.

        ``network_mode="none"`` or an ``--internal`` network would also drop the published port,
        which the sandbox needs.
        """
        with self._errors(f"preparing network {OFFLINE_NETWORK}"):
            if not self.client.networks.list(names=[OFFLINE_NETWORK]):
                try:
                    self.client.networks.create(
                        OFFLINE_NETWORK,
                        driver="bridge",
                        options={"com.docker.network.bridge.enable_ip_masquerade": "false"},
                        labels={MANAGED: "true"},
                    )
                except docker.errors.APIError as exc:
                    # A concurrent run created it first.
                    if exc.status_code != 409:
                        raise
        return OFFLINE_NETWORK

    def _run_options(self, spec: RunSpec) -> dict[str, Any]:
        options: dict[str, Any] = {
            "command": list(spec.command) or None,
            "environment": dict(spec.env),
            "labels": with_owner_labels(spec.labels),
            "ports": {f"{port}/tcp": ("127.0.0.1", None) for port in spec.ports},
            "init": True,
            "detach": True,
            "name": spec.name,
        }
        if spec.memory is not None or spec.cpus is not None:
            if not self.supports_limits:
                raise RuntimeDriverError(
                    "docker: this daemon cannot enforce memory/CPU limits (MemoryLimit or "
                    "CpuCfsQuota is off in `docker info`); run without limits or use a rootful engine."
                )
            options["mem_limit"] = spec.memory
            if spec.cpus is not None:
                options["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.gpus:
            options["device_requests"] = [docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if not spec.network:
            options["network"] = self._offline_network()
        return options

    def run(self, spec: RunSpec) -> ContainerHandle:
        options = self._run_options(spec)
        with self._errors(f"creating a container from {spec.image}"):
            container = self.client.containers.create(spec.image, **options)
        try:
            with self._errors(f"starting container {container.short_id} from {spec.image}"):
                try:
                    container.start()
                except docker.errors.APIError as exc:
                    if spec.gpus and "gpu" in str(exc).lower():
                        raise RuntimeDriverError(
                            f"docker: GPUs were requested but the daemon cannot provide them "
                            f"({exc.explanation}). Install the NVIDIA Container Toolkit and restart "
                            "dockerd, or run without gpus=True."
                        ) from exc
                    raise
                container.reload()
            addresses = self._addresses(container.attrs, spec.ports)
        except BaseException:
            self.stop(str(container.id), timeout=0)
            raise
        return ContainerHandle(id=str(container.id), addresses=addresses, driver=self.name)

    def _addresses(self, attrs: Mapping[str, Any], ports: Sequence[int]) -> dict[int, str]:
        container_id = str(attrs.get("Id", ""))
        return container_addresses(attrs, ports, engine="docker",
                                   logs=lambda: self.logs(container_id, tail=_LOG_TAIL),
                                   try_bridge=not self._rootless(self._engine_info()))

    def _container(self, container_id: str) -> Any:
        try:
            return self.client.containers.get(container_id)
        except docker.errors.NotFound as exc:
            raise ContainerError(f"docker: no container {container_id[:12]}: {exc.explanation}") from exc

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        with self._errors(f"inspecting container {container_id[:12]}"):
            container = self._container(container_id)
            state = container.attrs.get("State") or {}
            if state.get("Running"):
                return Health(running=True)
            return Health(
                running=False,
                exit_code=int(state.get("ExitCode", -1)),
                logs_tail=self.logs(container_id, tail=log_lines),
            )

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        with self._errors(f"reading logs of {container_id[:12]}"):
            data = self._container(container_id).logs(tail="all" if tail is None else tail)
        return bytes(data).decode(errors="replace")

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        with self._errors(f"stopping container {container_id[:12]}"):
            try:
                container = self.client.containers.get(container_id)
                if timeout > 0:
                    container.stop(timeout=math.ceil(timeout))
                container.remove(force=True)
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                # 409: another caller is already removing it, which is what we want.
                if exc.status_code != 409:
                    raise

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        with self._errors("listing containers"):
            found = self.client.containers.list(all=True, filters={"label": _label_filter(labels)})
        return [
            ContainerInfo(
                id=str(c.id), labels=dict(c.labels), running=c.status == "running", name=str(c.name)
            )
            for c in found
        ]
