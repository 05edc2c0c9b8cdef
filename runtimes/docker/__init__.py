"""Runtime driver for the Docker Engine API through the Docker SDK for Python (``docker``).

The daemon is found from the ``host`` argument, else ``DOCKER_HOST``, else the default socket.
Images are built with the classic builder (the Engine API's ``/build``), which needs no buildx.
What this shares with the Podman driver lives in :mod:`rlmesh_runtimes.engine_api`.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import docker
import docker.errors
import docker.types
import docker.utils
from rlmesh_runtimes.engine_api import BuildOutput, EngineApiDriver, build_context

from rlmesh.errors import RuntimeDriverError, RuntimeUnavailableError
from rlmesh.runtime.driver import ContainerInfo, ImageRecipe, ProgressCallback, RunSpec
from rlmesh.runtime.labels import MANAGED

__all__ = ["DockerDriver"]

log = logging.getLogger(__name__)

#: Bridge network without NAT, for ``RunSpec(network=False)``: see :meth:`DockerDriver._offline_network`.
OFFLINE_NETWORK = "rlmesh-offline"


def _split_tag(tag: str) -> tuple[str, str]:
    repository, sep, version = tag.rpartition(":")
    # "registry:5000/name" has its colon before the last slash: that is no tag.
    if not sep or "/" in version:
        return tag, "latest"
    return repository, version


class DockerDriver(EngineApiDriver[docker.DockerClient]):
    """Build and run containers on a Docker daemon."""

    name = "docker"

    _sdk_errors = (docker.errors.DockerException,)
    _image_not_found = (docker.errors.ImageNotFound,)
    _image_gone = (docker.errors.ImageNotFound,)
    _container_not_found = (docker.errors.NotFound,)
    _api_error = docker.errors.APIError
    # dockerd takes device requests at create and refuses them only at start.
    _gpus_refused_at_create = False
    # docker-py inspects each listed container in turn: one removed meanwhile (by a watcher, a
    # reaper, another session) must not fail the whole listing.
    _list_options: ClassVar[dict[str, Any]] = {"ignore_removed": True}

    def __init__(self, host: str | None = None, *, timeout: float = 120.0) -> None:
        self._host = host
        super().__init__(timeout=timeout)

    # -- connection -------------------------------------------------------------------------

    @property
    def _where(self) -> str:
        return self._host or "DOCKER_HOST or the default socket"

    def _connect(self) -> docker.DockerClient:
        # The SDK probes the API version here, so an absent daemon fails now.
        try:
            if self._host:
                return docker.DockerClient(base_url=self._host, timeout=int(self._timeout))
            return docker.from_env(timeout=int(self._timeout))
        except docker.errors.DockerException as exc:
            raise RuntimeUnavailableError(
                f"Cannot reach dockerd at {self._where}: {exc}. Start dockerd "
                "(for CI and tests: .ci/engines.sh) or point DOCKER_HOST at it."
            ) from exc

    def _unreachable(self, action: str, exc: BaseException) -> RuntimeUnavailableError:
        return RuntimeUnavailableError(f"dockerd at {self._where} went away while {action}: {exc}")

    def _explain(self, exc: BaseException) -> str:
        return str(exc.explanation) if isinstance(exc, docker.errors.APIError) else str(exc)

    def _version(self) -> str:
        version = self.client.version()
        return f"docker {version.get('Version', '?')} (API {version.get('ApiVersion', '?')})"

    @staticmethod
    def _rootless(info: Mapping[str, Any]) -> bool:
        return any("rootless" in opt for opt in info.get("SecurityOptions") or ())

    @property
    def supports_limits(self) -> bool:
        info = self._engine_info()
        return bool(info.get("MemoryLimit")) and bool(info.get("CpuCfsQuota"))

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
        output = BuildOutput(self.name, recipe.tag, progress)
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
                output.add(chunk.get("stream") or chunk.get("status") or "")
                if "error" in chunk:
                    output.lines.append(str(chunk["error"]))
                    raise output.failure(chunk["error"])
        log.info("built %s in %.1f s", recipe.tag, time.monotonic() - started)

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        repository, version = _split_tag(tag)
        with self._errors(f"importing {tarball} as {tag}"):
            result = self.client.api.import_image_from_file(
                tarball, repository=repository, tag=version, changes=[f"CMD {json.dumps(list(cmd))}"]
            )
        if "error" in str(result).lower() and not self.image_exists(tag):
            raise RuntimeDriverError(f"docker: importing {tarball} as {tag} failed: {result}")

    @staticmethod
    def _label_filters(labels: Mapping[str, str]) -> dict[str, list[str]]:
        return {"label": [f"{key}={value}" for key, value in labels.items()]}

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
        # Without detach, the SDK's create() sets the container up for attaching stdout/stderr.
        return {**super()._run_options(spec), "detach": True}

    @property
    def _limits_unsupported(self) -> str:
        return "MemoryLimit or CpuCfsQuota is off in `docker info` (a rootless daemon without cgroup delegation)"

    def _port_binding(self) -> tuple[str, None]:
        return ("127.0.0.1", None)

    def _limit_options(self, spec: RunSpec) -> dict[str, Any]:
        options: dict[str, Any] = {"mem_limit": spec.memory}
        if spec.cpus is not None:
            options["nano_cpus"] = int(spec.cpus * 1e9)
        return options

    def _hardening_options(self, spec: RunSpec) -> dict[str, Any]:
        return {"cap_drop": ["ALL"], "security_opt": ["no-new-privileges"], "pids_limit": spec.pids_limit}

    def _gpu_options(self, device_ids: list[str] | None) -> dict[str, Any]:
        request = (docker.types.DeviceRequest(count=-1, capabilities=[["gpu"]]) if device_ids is None
                   else docker.types.DeviceRequest(device_ids=device_ids, capabilities=[["gpu"]]))
        return {"device_requests": [request]}

    def _offline_options(self) -> dict[str, Any]:
        return {"network": self._offline_network()}

    def _gpus_refused(self, exc: Exception) -> RuntimeDriverError | None:
        if "gpu" not in str(exc).lower():
            return None
        return RuntimeDriverError(
            f"docker: GPUs were requested but the daemon cannot provide them "
            f"({self._explain(exc)}). Install the NVIDIA Container Toolkit and restart "
            "dockerd, or run without gpus=True."
        )

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

    @staticmethod
    def _container_info(container: Any) -> ContainerInfo:
        return ContainerInfo(
            id=str(container.id),
            labels=dict(container.labels),
            running=container.status == "running",
            name=str(container.name),
        )
