"""Runtime driver for the Podman API service through podman-py, rootful or rootless.

The service socket is, in order: the ``host`` argument, ``CONTAINER_HOST``,
``$XDG_RUNTIME_DIR/podman/podman.sock`` (a rootless user's service), ``/run/podman/podman.sock``.
Start the service with ``podman system service --time=0 unix://SOCKET``.
What this shares with the Docker driver lives in :mod:`rlmesh_runtimes.engine_api`.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import podman
import podman.errors
import requests.exceptions
from rlmesh_runtimes.engine_api import BuildOutput, EngineApiDriver, build_context

from rlmesh.errors import RuntimeDriverError, RuntimeUnavailableError
from rlmesh.runtime.driver import ContainerInfo, ImageRecipe, ProgressCallback, RunSpec

__all__ = ["PodmanDriver", "default_socket"]

log = logging.getLogger(__name__)

ROOTFUL_SOCKET = "/run/podman/podman.sock"
#: For ``RunSpec(network=False)``: outbound connections leave from 127.0.0.1 and go nowhere.
OFFLINE_SLIRP_OPTION = "outbound_addr=127.0.0.1"
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


class PodmanDriver(EngineApiDriver[podman.PodmanClient]):
    """Build and run containers through a Podman API service (rootful or rootless)."""

    name = "podman"

    # podman-py's APIError derives from requests' HTTPError, not from PodmanError.
    _sdk_errors = (podman.errors.APIError, podman.errors.PodmanError)
    _image_not_found = (podman.errors.ImageNotFound,)
    # ImageNotFound is no NotFound in podman-py; removal can raise either.
    _image_gone = (podman.errors.ImageNotFound, podman.errors.NotFound)
    _container_not_found = (podman.errors.NotFound,)
    _api_error = podman.errors.APIError
    _gpus_refused_at_create = True

    def __init__(self, host: str | None = None, *, timeout: float = 120.0) -> None:
        self._url = _as_url(host or default_socket())
        self._warned_pids = False
        super().__init__(timeout=timeout)

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> podman.PodmanClient:
        # podman-py connects lazily, on the first request.
        return podman.PodmanClient(base_url=self._url, timeout=self._timeout)

    @property
    def _label(self) -> str:
        return f"podman ({self._url})"

    @property
    def _bootstrap_command(self) -> str:
        return f"{super()._bootstrap_command} --host {self._url}"

    def _failed(self, action: str, exc: Exception) -> RuntimeDriverError:
        if isinstance(exc, podman.errors.APIError):
            # podman-py reports a refused or missing socket as an APIError without a response.
            if isinstance(exc.__cause__, requests.exceptions.ConnectionError):
                return self._unreachable(action, exc.__cause__)
            if "image not known" in str(exc):
                return self._image_missing(action, exc)
        return super()._failed(action, exc)

    def _unreachable(self, action: str, exc: BaseException) -> RuntimeUnavailableError:
        return RuntimeUnavailableError(
            f"Cannot reach the podman service at {self._url} while {action}: {exc}. Start it "
            "with `podman system service --time=0 unix://SOCKET` (for CI and tests: "
            ".ci/engines.sh) or set CONTAINER_HOST."
        )

    def _version(self) -> str:
        return f"podman {(self._engine_info().get('version') or {}).get('Version', '?')}"

    @staticmethod
    def _rootless(info: Mapping[str, Any]) -> bool:
        return bool(((info.get("host") or {}).get("security") or {}).get("rootless"))

    @property
    def supports_limits(self) -> bool:
        # Rootless podman on cgroup v1 has no delegated controllers and silently drops limits.
        return "memory" in self._cgroup_controllers and "cpu" in self._cgroup_controllers

    @property
    def _cgroup_controllers(self) -> list[str]:
        return list((self._engine_info().get("host") or {}).get("cgroupControllers") or [])

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
        output = BuildOutput(self.name, recipe.tag, progress)
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
                output.add(str(chunk.get("stream", "")))
                if chunk.get("error"):
                    error = str(chunk["error"])
                    output.lines.append(error)
        if error or not self.image_exists(recipe.tag):
            raise output.failure(error or "no image was produced")
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

    @staticmethod
    def _label_filters(labels: Mapping[str, str]) -> list[str]:
        return [f"label={key}={value}" for key, value in labels.items()]

    # -- containers -------------------------------------------------------------------------

    @property
    def _limits_unsupported(self) -> str:
        return (f"podman at {self._url} has no memory/cpu cgroup controllers (rootless podman on "
                "cgroup v1); rootful podman, or a host on cgroup v2, can enforce them")

    def _port_binding(self) -> dict[str, str]:
        return {"ip": "127.0.0.1"}

    def _limit_options(self, spec: RunSpec) -> dict[str, Any]:
        options: dict[str, Any] = {}
        if spec.memory is not None:
            options["mem_limit"] = _memory_bytes(spec.memory)
        if spec.cpus is not None:
            # podman-py drops nano_cpus; a CFS quota is the same limit.
            options["cpu_period"] = _CPU_PERIOD
            options["cpu_quota"] = math.ceil(spec.cpus * _CPU_PERIOD)
        return options

    def _hardening_options(self, spec: RunSpec) -> dict[str, Any]:
        # podman-py passes security_opt on as SELinux options: no-new-privileges is its own flag.
        options: dict[str, Any] = {"cap_drop": ["ALL"], "no_new_privileges": True}
        if spec.pids_limit is not None:
            if "pids" in self._cgroup_controllers:
                options["pids_limit"] = spec.pids_limit
            elif not self._warned_pids:
                self._warned_pids = True
                log.warning("podman: no pids cgroup controller here (rootless on cgroup v1), so "
                            "containers run without a pids limit")
        return options

    def _gpu_options(self, device_ids: list[str] | None) -> dict[str, Any]:
        return {"devices": [f"nvidia.com/gpu={device}" for device in device_ids or ["all"]]}

    def _offline_options(self) -> dict[str, Any]:
        # An --internal network would also cut the host off from the published port;
        # slirp4netns bound to loopback for outbound traffic keeps the port and drops the rest.
        return {"network_mode": "slirp4netns", "network_options": {"slirp4netns": [OFFLINE_SLIRP_OPTION]}}

    def _gpus_refused(self, exc: Exception) -> RuntimeDriverError | None:
        if "nvidia.com/gpu" not in str(exc):
            return None
        return RuntimeDriverError(
            f"podman: GPUs were requested but the engine cannot provide them ({exc}). "
            "Generate the NVIDIA CDI spec (nvidia-ctk cdi generate) or run without gpus=True."
        )

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        with self._errors(f"stopping container {container_id[:12]}"):
            # One request: SIGTERM, SIGKILL after ``timeout``, then removal (stop + remove is slower).
            response = self.client.api.delete(
                f"/containers/{container_id}", params={"force": True, "timeout": math.ceil(timeout)}
            )
            if response.status_code != 404:
                response.raise_for_status()

    @staticmethod
    def _container_info(container: Any) -> ContainerInfo:
        # The libpod list reports State as a plain string ("running", "exited", ...).
        state = container.attrs.get("State")
        running = state == "running" if isinstance(state, str) else bool((state or {}).get("Running"))
        return ContainerInfo(
            id=str(container.id),
            labels=dict(container.attrs.get("Labels") or {}),
            running=running,
            name=str(container.name or ""),
        )
