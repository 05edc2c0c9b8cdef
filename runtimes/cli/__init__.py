"""Runtime driver that shells out to the ``docker`` or ``podman`` binary via python-on-whales.

Useful where no API socket is exposed but a CLI works (remote contexts, wrappers, CI images).
The engine is the ``engine`` argument, else ``RLMESH_CLI_ENGINE``, else ``docker`` when that
binary is on PATH, else ``podman``.

Builds run the classic ``build`` subcommand rather than python-on-whales' ``build()``, which
always goes through buildx (absent on many hosts) and, like ``legacy_build()``, offers neither a
memory limit nor a line-by-line progress hook.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import python_on_whales
import python_on_whales.exceptions as whales_errors
import python_on_whales.utils as whales_utils
from python_on_whales.client_config import ClientNotFoundError
from rlmesh_runtimes.exit_race import settled

from rlmesh.errors import (
    ContainerError,
    ImageBuildError,
    RuntimeDriverError,
    RuntimeUnavailableError,
)
from rlmesh.runtime.driver import (
    Availability,
    ContainerHandle,
    ContainerInfo,
    Health,
    ImageInfo,
    ImageRecipe,
    ProgressCallback,
    RunSpec,
    RuntimeDriver,
)
from rlmesh.runtime.labels import MANAGED, with_owner_labels
from rlmesh.runtime.secrets import SECRETS_DIR, secrets_archive

__all__ = ["CliDriver", "ENGINE_ENV"]

log = logging.getLogger(__name__)

ENGINE_ENV = "RLMESH_CLI_ENGINE"
ENGINES = ("docker", "podman")
#: Docker network without NAT, for ``RunSpec(network=False)``.
OFFLINE_NETWORK = "rlmesh-offline"
_LOG_TAIL = 40


def _engine_from_env() -> str:
    chosen = os.environ.get(ENGINE_ENV, "").strip()
    if chosen:
        return chosen
    return "docker" if shutil.which("docker") else "podman"


def _stderr(exc: whales_errors.DockerException) -> str:
    return (exc.stderr or exc.stdout or str(exc)).strip()


class CliDriver(RuntimeDriver):
    """Build and run containers with the docker or podman command-line client."""

    name = "cli"

    def __init__(
        self, engine: str | None = None, *, host: str | None = None, binary: str | None = None
    ) -> None:
        self.engine = engine or _engine_from_env()
        if self.engine not in ENGINES:
            raise RuntimeUnavailableError(
                f"cli runtime: unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)} "
                f"(argument engine=... or {ENGINE_ENV})."
            )
        self.binary = binary or self.engine
        call = [self.binary]
        client_type: Literal["docker", "podman"] = "docker" if self.engine == "docker" else "podman"
        if host and self.engine == "podman":
            # podman's spelling of docker's --host.
            call += ["--remote", "--url", host]
            host = None
        self._whales = python_on_whales.DockerClient(client_call=call, client_type=client_type, host=host)
        self._info: dict[str, Any] | None = None

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate python-on-whales exceptions into ours, with the engine's stderr inside."""
        try:
            yield
        except RuntimeDriverError:
            raise
        except (FileNotFoundError, ClientNotFoundError) as exc:  # the latter: binary not on PATH
            raise RuntimeUnavailableError(
                f"cli runtime: the {self.binary!r} binary is not on PATH ({exc}); install it or "
                f"choose the other engine with {ENGINE_ENV}."
            ) from exc
        except whales_errors.DockerException as exc:
            raise RuntimeDriverError(f"{self.engine} CLI: {action} failed: {_stderr(exc)}") from exc

    def _command(self, *args: str) -> list[str]:
        return [*self._whales.client_config.docker_cmd, *args]

    def _engine_info(self) -> dict[str, Any]:
        if self._info is None:
            args = ("info", "--format", "json") if self.engine == "podman" else ("info", "--format", "{{json .}}")
            with self._errors("reading engine info"):
                try:
                    text = str(whales_utils.run(self._command(*args)))
                except whales_errors.DockerException as exc:
                    raise RuntimeUnavailableError(
                        f"{self.engine} CLI cannot reach its engine: {_stderr(exc)}. Start the "
                        "engine (for CI and tests: .ci/engines.sh)."
                    ) from exc
                self._info = dict(json.loads(text))
        return self._info

    def available(self) -> Availability:
        try:
            info = self._engine_info()
        except RuntimeDriverError as exc:
            return Availability(False, reason=str(exc))
        if self.engine == "podman":
            host = info.get("host") or {}
            version = (info.get("version") or {}).get("Version", "?")
            rootless = bool((host.get("security") or {}).get("rootless"))
        else:
            version = str(info.get("ServerVersion", "?"))
            rootless = any("rootless" in opt for opt in info.get("SecurityOptions") or ())
        return Availability(True, version=f"{self.engine} CLI, engine {version}", rootless=rootless)

    @property
    def supports_gpus(self) -> bool:
        # docker --gpus / podman CDI devices; the engine's refusal becomes a RuntimeDriverError.
        return True

    @property
    def supports_limits(self) -> bool:
        info = self._engine_info()
        if self.engine == "podman":
            controllers = (info.get("host") or {}).get("cgroupControllers") or []
            return "memory" in controllers and "cpu" in controllers
        return bool(info.get("MemoryLimit")) and bool(info.get("CpuCfsQuota"))

    # -- images -----------------------------------------------------------------------------

    def image_exists(self, tag: str) -> bool:
        with self._errors(f"looking up image {tag}"):
            return bool(self._whales.image.exists(tag))

    def _build(
        self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None
    ) -> None:
        lines: list[str] = []
        started = time.monotonic()
        with tempfile.TemporaryDirectory(prefix="rlmesh-build-") as context:
            root = Path(context)
            (root / "Dockerfile").write_text(recipe.dockerfile)
            for name, data in recipe.context_files.items():
                target = root / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            command = self._command("build", "--tag", recipe.tag, "--file", str(root / "Dockerfile"))
            command += ["--rm", "--force-rm"]
            for key, value in recipe.labels.items():
                command += ["--label", f"{key}={value}"]
            if memory:
                command += ["--memory", memory]
            command.append(context)
            # The classic builder: no buildx here, and BuildKit would also need it.
            env = {"DOCKER_BUILDKIT": "0"} if self.engine == "docker" else {}
            try:
                for _source, raw in whales_utils.stream_stdout_and_stderr(command, env=env):
                    line = raw.decode(errors="replace").rstrip("\n")
                    lines.append(line)
                    if progress is not None:
                        progress(line)
            except FileNotFoundError as exc:
                raise RuntimeUnavailableError(f"cli runtime: {self.binary!r} is not on PATH: {exc}") from exc
            except whales_errors.DockerException as exc:
                tail = "\n".join(lines[-_LOG_TAIL:])
                raise ImageBuildError(
                    f"{self.engine} CLI: building {recipe.tag} failed (exit code {exc.return_code})\n"
                    f"--- last build output ---\n{tail}",
                    log="\n".join(lines),
                ) from exc
        log.info("built %s in %.1f s", recipe.tag, time.monotonic() - started)

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        with self._errors(f"importing {tarball} as {tag}"):
            self._whales.image.import_(tarball, tag, changes=[f"CMD {json.dumps(list(cmd))}"])

    def remove_image(self, tag: str) -> None:
        with self._errors(f"removing image {tag}"):
            try:
                self._whales.image.remove(tag, force=True, prune=True)
            except whales_errors.NoSuchImage:
                pass

    def image_info(self, tag: str) -> ImageInfo:
        with self._errors(f"inspecting image {tag}"):
            config = self._whales.image.inspect(tag).config
        return ImageInfo(labels=dict(config.labels or {}), user=str(config.user or ""))

    def tag_image(self, tag: str, name: str) -> None:
        with self._errors(f"naming image {tag} {name}"):
            self._whales.image.tag(tag, name)

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        with self._errors("listing images"):
            images = self._whales.image.list(filters=[("label", f"{k}={v}") for k, v in labels.items()])
            return sorted(tag for image in images for tag in image.repo_tags or ())

    # -- containers -------------------------------------------------------------------------

    def _offline_network(self) -> str:
        """A network with no route out that still lets the host reach published ports.

        An ``--internal`` network would drop the published port too. docker: a bridge without
        IP masquerading; podman: slirp4netns sending outbound traffic from 127.0.0.1.
        """
        if self.engine == "podman":
            return "slirp4netns:outbound_addr=127.0.0.1"
        with self._errors(f"preparing network {OFFLINE_NETWORK}"):
            if self._whales.network.exists(OFFLINE_NETWORK):
                return OFFLINE_NETWORK
            try:
                self._whales.network.create(
                    OFFLINE_NETWORK,
                    driver="bridge",
                    options=["com.docker.network.bridge.enable_ip_masquerade=false"],
                    labels={MANAGED: "true"},
                )
            except whales_errors.DockerException:
                # A concurrent run created it first.
                if not self._whales.network.exists(OFFLINE_NETWORK):
                    raise
        return OFFLINE_NETWORK

    def _run_options(self, spec: RunSpec) -> dict[str, Any]:
        options: dict[str, Any] = {
            "envs": dict(spec.env),
            "labels": with_owner_labels(spec.labels),
            # "127.0.0.1::PORT": loopback, host port chosen by the engine.
            "publish": [("127.0.0.1:", port) for port in spec.ports],
            "init": True,
            "pull": "never",
            "name": spec.name,
            "cap_drop": ["ALL"],
            "security_options": ["no-new-privileges"],
            "pids_limit": spec.pids_limit,
        }
        if (spec.memory is not None or spec.cpus is not None) and not self.supports_limits:
            spec = self.unenforced_limits(spec, "the engine has no memory/cpu cgroup controllers "
                                          "(rootless on cgroup v1)")
        options["memory"] = spec.memory
        options["cpus"] = spec.cpus
        options["shm_size"] = spec.shm_size
        if spec.gpus:
            ids = None if spec.gpus is True else list(spec.gpus)
            if self.engine == "docker":
                options["gpus"] = "all" if ids is None else f"device={','.join(ids)}"
            else:
                options["devices"] = [f"nvidia.com/gpu={device}" for device in ids or ["all"]]
        if not spec.network:
            options["networks"] = [self._offline_network()]
        return options

    def run(self, spec: RunSpec) -> ContainerHandle:
        options = self._run_options(spec)
        with tempfile.TemporaryDirectory(prefix="rlmesh-run-") as scratch:
            # The cid file names a container that was created but failed to start, so we can remove it.
            cidfile = Path(scratch) / "cid"
            try:
                with self._errors(f"running {spec.image}"):
                    try:
                        container = self._whales.container.create(
                            spec.image, list(spec.command), cidfile=cidfile, **options)
                        if spec.secret_files:
                            self._copy_secrets(container.id, spec)
                        container.start()
                    except whales_errors.DockerException as exc:
                        if spec.gpus and ("gpu" in _stderr(exc).lower()):
                            raise RuntimeDriverError(
                                f"{self.engine} CLI: GPUs were requested but the engine cannot "
                                f"provide them ({_stderr(exc)}). Install the NVIDIA Container "
                                "Toolkit (docker) or its CDI spec (podman), or run without gpus=True."
                            ) from exc
                        raise
                addresses = self._addresses(container, spec.ports)
            except BaseException:
                if cidfile.exists() and cidfile.read_text().strip():
                    self.stop(cidfile.read_text().strip(), timeout=0)
                raise
        return ContainerHandle(id=container.id, addresses=addresses, driver=self.name)

    def _copy_secrets(self, container_id: str, spec: RunSpec) -> None:
        # A tar on stdin keeps its owners (docker) or gets the container's user (podman). Not
        # --archive: docker then looks the image's user name up in the *host's* passwd.
        archive = secrets_archive(spec.secret_files, spec.secret_owner)
        target = f"{container_id}:{PurePosixPath(SECRETS_DIR).parent}"
        whales_utils.run(self._command("cp", "-", target), input=archive)

    def _addresses(self, container: python_on_whales.Container, ports: Sequence[int]) -> dict[int, str]:
        with self._errors(f"inspecting container {container.id[:12]}"):
            settled(container.reload, container.id)
            bound = container.network_settings.ports or {}
            state = container.state
        addresses: dict[int, str] = {}
        for port in ports:
            # python-on-whales leaves the bindings as inspect's raw {"HostIp", "HostPort"} dicts.
            bindings: list[dict[str, str]] = list(bound.get(f"{port}/tcp") or [])
            if not bindings or not bindings[0].get("HostPort"):
                raise ContainerError(
                    f"{self.engine} CLI: container {container.id[:12]} has no host port for "
                    f"{port}/tcp (state {state.status!r}, exit code {state.exit_code}); it "
                    "probably exited at once, see its logs.",
                    exit_code=state.exit_code,
                    logs=self.logs(container.id, tail=_LOG_TAIL),
                )
            host_ip = bindings[0].get("HostIp") or "127.0.0.1"
            addresses[port] = f"tcp://{host_ip}:{bindings[0]['HostPort']}"
        return addresses

    def _inspect(self, container_id: str) -> python_on_whales.Container:
        try:
            return settled(lambda: self._whales.container.inspect(container_id), container_id)
        except whales_errors.NoSuchContainer as exc:
            raise ContainerError(f"{self.engine} CLI: no container {container_id[:12]}: {_stderr(exc)}") from exc

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        with self._errors(f"inspecting container {container_id[:12]}"):
            state = self._inspect(container_id).state
        if state.running:
            return Health(running=True)
        return Health(
            running=False,
            exit_code=-1 if state.exit_code is None else state.exit_code,
            logs_tail=self.logs(container_id, tail=log_lines),
            oom_killed=bool(state.oom_killed),
        )

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        with self._errors(f"reading logs of {container_id[:12]}"):
            try:
                return str(self._whales.container.logs(container_id, tail=tail))
            except whales_errors.NoSuchContainer as exc:
                raise ContainerError(f"{self.engine} CLI: no container {container_id[:12]}: {_stderr(exc)}") from exc

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        seconds = math.ceil(timeout)
        with self._errors(f"stopping container {container_id[:12]}"):
            try:
                if self.engine == "podman":
                    # One invocation (each podman start costs ~0.2 s): SIGTERM, wait, kill, remove.
                    whales_utils.run(self._command("rm", "--force", "--time", str(seconds), container_id))
                    return
                if seconds > 0:
                    self._whales.container.stop(container_id, time=seconds)
                self._whales.container.remove(container_id, force=True)
            except whales_errors.NoSuchContainer:
                return

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        with self._errors("listing containers"):
            found = self._whales.container.list(
                all=True, filters=[("label", f"{k}={v}") for k, v in labels.items()]
            )
            infos = []
            for container in found:
                try:
                    settled(container.reload, container.id)
                except whales_errors.NoSuchContainer:
                    continue  # removed since the listing
                infos.append(
                    ContainerInfo(
                        id=container.id,
                        labels=dict(container.config.labels or {}),
                        running=bool(container.state.running),
                        name=container.name.lstrip("/"),
                    )
                )
        return infos
