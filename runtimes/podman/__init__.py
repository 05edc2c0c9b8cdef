"""Runtime driver for the Podman API service through podman-py, rootful or rootless.

The service socket is, in order: the ``host`` argument, ``CONTAINER_HOST``,
``$XDG_RUNTIME_DIR/podman/podman.sock`` (a rootless user's service), ``/run/podman/podman.sock``.
Start the service with ``podman system service --time=0 unix://SOCKET``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import tarfile
import time
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import podman
import podman.errors
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
from rlmesh.runtime.labels import with_owner_labels

__all__ = ["PodmanDriver", "default_socket"]

log = logging.getLogger(__name__)

ROOTFUL_SOCKET = "/run/podman/podman.sock"
#: For ``RunSpec(network=False)``: outbound connections leave from 127.0.0.1 and go nowhere.
OFFLINE_SLIRP_OPTION = "outbound_addr=127.0.0.1"
_LOG_TAIL = 40
_CPU_PERIOD = 100_000


def default_socket() -> str:
    """The service URL to use when none is given (see the module docstring)."""
    if os.environ.get("CONTAINER_HOST"):
        return os.environ["CONTAINER_HOST"]
    runtime_dir = os.environ.get("XDG_RUNTIME_DIR")
    if runtime_dir and os.path.exists(os.path.join(runtime_dir, "podman", "podman.sock")):
        return "unix://" + os.path.join(runtime_dir, "podman", "podman.sock")
    return "unix://" + ROOTFUL_SOCKET


def _as_url(host: str) -> str:
    return host if "://" in host else "unix://" + host


def _label_filter(labels: Mapping[str, str]) -> list[str]:
    return [f"label={key}={value}" for key, value in labels.items()]


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


def _memory_bytes(text: str) -> int:
    units = {"b": 1, "k": 1024, "m": 1024**2, "g": 1024**3}
    text = text.strip().lower()
    try:
        if text[-1:] in units:
            return int(float(text[:-1]) * units[text[-1]])
        return int(text)
    except ValueError:
        raise RuntimeDriverError(
            f"invalid memory size {text!r}: use a number of bytes or a suffix k/m/g, e.g. '512m'"
        ) from None


class PodmanDriver(RuntimeDriver):
    """Build and run containers through a Podman API service (rootful or rootless)."""

    name = "podman"

    def __init__(self, host: str | None = None, *, timeout: float = 120.0) -> None:
        self._url = _as_url(host or default_socket())
        self._timeout = timeout
        self._client: podman.PodmanClient | None = None
        self._info: dict[str, Any] | None = None

    @property
    def client(self) -> podman.PodmanClient:
        """The podman-py client; it connects lazily, on the first request."""
        if self._client is None:
            self._client = podman.PodmanClient(base_url=self._url, timeout=self._timeout)
        return self._client

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate podman-py exceptions into ours, with the engine's message inside."""
        try:
            yield
        except RuntimeDriverError:
            raise
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise self._unreachable(action, exc) from exc
        except podman.errors.ImageNotFound as exc:
            raise self._image_missing(action, exc) from exc
        except podman.errors.APIError as exc:
            # podman-py reports a refused or missing socket as an APIError without a response.
            if isinstance(exc.__cause__, requests.exceptions.ConnectionError):
                raise self._unreachable(action, exc.__cause__) from exc
            if "image not known" in str(exc):
                raise self._image_missing(action, exc) from exc
            raise RuntimeDriverError(f"podman ({self._url}): {action} failed: {exc}") from exc
        except (podman.errors.PodmanError, requests.exceptions.RequestException) as exc:
            raise RuntimeDriverError(f"podman ({self._url}): {action} failed: {exc}") from exc

    def _image_missing(self, action: str, exc: BaseException) -> RuntimeDriverError:
        return RuntimeDriverError(
            f"podman: image not found while {action}: {exc}. Build it first, or for the base "
            f"image run: python -m rlmesh_images.bootstrap --runtime podman --host {self._url}"
        )

    def _unreachable(self, action: str, exc: BaseException) -> RuntimeUnavailableError:
        return RuntimeUnavailableError(
            f"Cannot reach the podman service at {self._url} while {action}: {exc}. Start it "
            "with `podman system service --time=0 unix://SOCKET` (for CI and tests: "
            ".ci/engines.sh) or set CONTAINER_HOST."
        )

    def _engine_info(self) -> dict[str, Any]:
        if self._info is None:
            with self._errors("reading engine info"):
                self._info = dict(self.client.info())  # type: ignore[no-untyped-call]
        return self._info

    def available(self) -> Availability:
        try:
            info = self._engine_info()
        except RuntimeDriverError as exc:
            return Availability(False, reason=str(exc))
        version = (info.get("version") or {}).get("Version", "?")
        return Availability(True, version=f"podman {version}", rootless=self._rootless(info))

    @staticmethod
    def _rootless(info: Mapping[str, Any]) -> bool:
        return bool(((info.get("host") or {}).get("security") or {}).get("rootless"))

    @property
    def supports_gpus(self) -> bool:
        # GPUs are requested as CDI devices; an engine without the NVIDIA CDI spec refuses
        # them at create time, which run() turns into a RuntimeDriverError.
        return True

    @property
    def supports_limits(self) -> bool:
        # Rootless podman on cgroup v1 has no delegated controllers and silently drops limits.
        controllers = (self._engine_info().get("host") or {}).get("cgroupControllers") or []
        return "memory" in controllers and "cpu" in controllers

    def close(self) -> None:
        if self._client is not None:
            self._client.close()  # type: ignore[no-untyped-call]
            self._client = None

    # -- images -----------------------------------------------------------------------------

    def image_exists(self, tag: str) -> bool:
        with self._errors(f"looking up image {tag}"):
            return bool(self.client.images.exists(tag))

    def _build(
        self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None
    ) -> None:
        params: dict[str, Any] = {
            "t": recipe.tag,
            "dockerfile": "Dockerfile",
            "rm": True,
            "forcerm": True,
            "layers": True,
            "labels": json.dumps(dict(recipe.labels)),
        }
        if memory:
            params["memory"] = _memory_bytes(memory)
        lines: list[str] = []
        error = ""
        started = time.monotonic()
        with self._errors(f"building {recipe.tag}"):
            # podman-py's images.build() only returns once the build is over: stream it ourselves.
            response = self.client.api.post(
                "/build",
                params=params,
                data=build_context(recipe),
                headers={"Content-Type": "application/x-tar"},
                stream=True,
            )
            response.raise_for_status()
            for raw in response.iter_lines():
                if not raw:
                    continue
                chunk = json.loads(raw)
                for line in str(chunk.get("stream", "")).splitlines():
                    lines.append(line)
                    if progress is not None:
                        progress(line)
                if chunk.get("error"):
                    error = str(chunk["error"])
                    lines.append(error)
        if error or not self.image_exists(recipe.tag):
            tail = "\n".join(lines[-_LOG_TAIL:])
            raise ImageBuildError(
                f"podman: building {recipe.tag} failed: {error or 'no image was produced'}\n"
                f"--- last build output ---\n{tail}",
                log="\n".join(lines),
            )
        log.info("built %s in %.1f s", recipe.tag, time.monotonic() - started)

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        with self._errors(f"importing {tarball} as {tag}"), open(tarball, "rb") as data:
            response = self.client.api.post(
                "/images/import",
                params={"reference": tag, "changes": [f"CMD {json.dumps(list(cmd))}"]},
                data=data,
                headers={"Content-Type": "application/x-tar"},
            )
            response.raise_for_status()
        if not self.image_exists(tag):
            raise RuntimeDriverError(f"podman: importing {tarball} as {tag} produced no image: {response.text}")

    def remove_image(self, tag: str) -> None:
        with self._errors(f"removing image {tag}"):
            try:
                self.client.images.remove(tag, force=True)
            except (podman.errors.ImageNotFound, podman.errors.NotFound):
                pass

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        with self._errors("listing images"):
            images = self.client.images.list(filters=_label_filter(labels))
        return sorted(tag for image in images for tag in image.tags)

    # -- containers -------------------------------------------------------------------------

    def _run_options(self, spec: RunSpec) -> dict[str, Any]:
        options: dict[str, Any] = {
            "environment": dict(spec.env),
            "labels": with_owner_labels(spec.labels),
            "ports": {f"{port}/tcp": {"ip": "127.0.0.1"} for port in spec.ports},
            "init": True,
            "name": spec.name,
        }
        if spec.memory is not None or spec.cpus is not None:
            if not self.supports_limits:
                raise RuntimeDriverError(
                    f"podman ({self._url}): this engine cannot enforce memory/CPU limits (no "
                    "memory/cpu cgroup controllers, e.g. rootless podman on cgroup v1); run "
                    "without limits, use rootful podman, or move the host to cgroup v2."
                )
            if spec.memory is not None:
                options["mem_limit"] = _memory_bytes(spec.memory)
            if spec.cpus is not None:
                # podman-py drops nano_cpus; a CFS quota is the same limit.
                options["cpu_period"] = _CPU_PERIOD
                options["cpu_quota"] = math.ceil(spec.cpus * _CPU_PERIOD)
        if spec.gpus:
            options["devices"] = ["nvidia.com/gpu=all"]
        if not spec.network:
            # An --internal network would also cut the host off from the published port;
            # slirp4netns bound to loopback for outbound traffic keeps the port and drops the rest.
            options["network_mode"] = "slirp4netns"
            options["network_options"] = {"slirp4netns": [OFFLINE_SLIRP_OPTION]}
        return options

    def run(self, spec: RunSpec) -> ContainerHandle:
        options = self._run_options(spec)
        with self._errors(f"creating a container from {spec.image}"), self._gpu_refusal(spec):
            container = self.client.containers.create(
                spec.image, command=list(spec.command) or None, **options
            )
        try:
            with self._errors(f"starting container {container.short_id} from {spec.image}"):
                with self._gpu_refusal(spec):
                    container.start()
                container.reload()
            addresses = self._addresses(container.attrs, spec.ports)
        except BaseException:
            self.stop(str(container.id), timeout=0)
            raise
        return ContainerHandle(id=str(container.id), addresses=addresses, driver=self.name)

    @contextlib.contextmanager
    def _gpu_refusal(self, spec: RunSpec) -> Iterator[None]:
        """Explain an engine's refusal of the CDI GPU device (at create or start time)."""
        try:
            yield
        except podman.errors.APIError as exc:
            if spec.gpus and "nvidia.com/gpu" in str(exc):
                raise RuntimeDriverError(
                    f"podman: GPUs were requested but the engine cannot provide them ({exc}). "
                    "Generate the NVIDIA CDI spec (nvidia-ctk cdi generate) or run without gpus=True."
                ) from exc
            raise

    def _addresses(self, attrs: Mapping[str, Any], ports: Sequence[int]) -> dict[int, str]:
        container_id = str(attrs.get("Id", ""))
        return container_addresses(attrs, ports, engine="podman",
                                   logs=lambda: self.logs(container_id, tail=_LOG_TAIL),
                                   try_bridge=not self._rootless(self._engine_info()))

    def _container(self, container_id: str) -> Any:
        try:
            return self.client.containers.get(container_id)
        except podman.errors.NotFound as exc:
            raise ContainerError(f"podman: no container {container_id[:12]}: {exc}") from exc

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        with self._errors(f"inspecting container {container_id[:12]}"):
            state = self._container(container_id).attrs.get("State") or {}
            if state.get("Running"):
                return Health(running=True)
            return Health(
                running=False,
                exit_code=int(state.get("ExitCode", -1)),
                logs_tail=self.logs(container_id, tail=log_lines),
            )

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        with self._errors(f"reading logs of {container_id[:12]}"):
            frames = self._container(container_id).logs(tail="all" if tail is None else tail)
            return b"".join(frames).decode(errors="replace")

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        with self._errors(f"stopping container {container_id[:12]}"):
            # One request: SIGTERM, SIGKILL after ``timeout``, then removal (stop + remove is slower).
            response = self.client.api.delete(
                f"/containers/{container_id}", params={"force": True, "timeout": math.ceil(timeout)}
            )
            if response.status_code != 404:
                response.raise_for_status()

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        with self._errors("listing containers"):
            found = self.client.containers.list(all=True, filters=_label_filter(labels))
        infos = []
        for container in found:
            # The libpod list reports State as a plain string ("running", "exited", ...).
            state = container.attrs.get("State")
            running = state == "running" if isinstance(state, str) else bool((state or {}).get("Running"))
            infos.append(
                ContainerInfo(
                    id=str(container.id),
                    labels=dict(container.attrs.get("Labels") or {}),
                    running=running,
                    name=str(container.name or ""),
                )
            )
        return infos
