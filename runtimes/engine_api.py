"""What the Docker and Podman drivers share: both engines serve a Docker-compatible API.

:class:`EngineApiDriver` runs, inspects, lists and removes through the calls that docker-py and
podman-py name alike, and turns their exceptions into ours. A subclass
(:class:`rlmesh_runtimes.docker.DockerDriver`, :class:`rlmesh_runtimes.podman.PodmanDriver`)
makes the client, builds and imports images, stops containers, and says how its engine spells
what differs: errors, rootless detection, limit, GPU, network and port options, label filters.
"""

from __future__ import annotations

import abc
import contextlib
import io
import tarfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import PurePosixPath
from typing import Any, ClassVar, Generic, Protocol, TypeVar

import requests.exceptions
from rlmesh_runtimes.exit_race import settled

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
    ImageInfo,
    ImageRecipe,
    ProgressCallback,
    RunSpec,
    RuntimeDriver,
)
from rlmesh.runtime.labels import with_owner_labels
from rlmesh.runtime.secrets import SECRETS_DIR, secrets_archive

__all__ = ["BuildOutput", "EngineApiDriver", "EngineClient", "build_context"]

#: Log lines quoted in a failed build's error and in the error of a container that exited at once.
_LOG_TAIL = 40


class EngineClient(Protocol):
    """What the base class calls on an SDK client: docker-py's and podman-py's share these names."""

    @property
    def containers(self) -> Any: ...

    @property
    def images(self) -> Any: ...

    def info(self) -> Mapping[str, Any]: ...

    def close(self) -> None: ...


ClientT = TypeVar("ClientT", bound=EngineClient)


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


class BuildOutput:
    """A build's output so far: each line goes to the progress callback, the last ones into the error."""

    def __init__(self, engine: str, tag: str, progress: ProgressCallback | None) -> None:
        self.engine = engine
        self.tag = tag
        self.lines: list[str] = []
        self._progress = progress

    def add(self, text: str) -> None:
        for line in text.splitlines():
            self.lines.append(line)
            if self._progress is not None:
                self._progress(line)

    def failure(self, reason: str) -> ImageBuildError:
        tail = "\n".join(self.lines[-_LOG_TAIL:])
        return ImageBuildError(
            f"{self.engine}: building {self.tag} failed: {reason}\n--- last build output ---\n{tail}",
            log="\n".join(self.lines),
        )


class EngineApiDriver(RuntimeDriver, Generic[ClientT]):
    """A driver for an engine with a Docker-compatible API, reached through an SDK client."""

    #: Exceptions of the SDK that become a :class:`RuntimeDriverError` naming the action.
    _sdk_errors: ClassVar[tuple[type[Exception], ...]]
    #: Raised for a missing image: becomes the "build it first" error.
    _image_not_found: ClassVar[tuple[type[Exception], ...]]
    #: Raised when the image to remove is already gone.
    _image_gone: ClassVar[tuple[type[Exception], ...]]
    #: Raised for a missing container.
    _container_not_found: ClassVar[tuple[type[Exception], ...]]
    #: How the engine refuses a request; checked for refused GPU requests.
    _api_error: ClassVar[type[Exception]]
    #: Whether a GPU request can be refused at create time already, not only at start.
    _gpus_refused_at_create: ClassVar[bool]
    #: Extra arguments of ``containers.list``.
    _list_options: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, timeout: float) -> None:
        self._timeout = timeout
        self._client: ClientT | None = None
        self._info: dict[str, Any] | None = None

    # -- connection -------------------------------------------------------------------------

    @property
    def client(self) -> ClientT:
        """The SDK client, made on first use."""
        if self._client is None:
            self._client = self._connect()
        return self._client

    @abc.abstractmethod
    def _connect(self) -> ClientT:
        """Make the SDK client; raise :class:`RuntimeUnavailableError` if that needs a down engine."""

    @property
    def _label(self) -> str:
        """How errors name this engine."""
        return self.name

    @property
    def _bootstrap_command(self) -> str:
        """The command that makes the base image on this engine, for the "image not found" error."""
        return f"python -m rlmesh_images.bootstrap --runtime {self.name}"

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Translate SDK exceptions into ours, with the engine's message inside."""
        try:
            yield
        except RuntimeDriverError:
            raise
        except (requests.exceptions.ConnectionError, ConnectionError) as exc:
            raise self._unreachable(action, exc) from exc
        except self._image_not_found as exc:
            raise self._image_missing(action, exc) from exc
        except self._sdk_errors + (requests.exceptions.RequestException,) as exc:
            raise self._failed(action, exc) from exc

    @abc.abstractmethod
    def _unreachable(self, action: str, exc: BaseException) -> RuntimeUnavailableError:
        """The error for an engine that cannot be reached, saying how to start it."""

    def _failed(self, action: str, exc: Exception) -> RuntimeDriverError:
        """The error for any other SDK exception."""
        return RuntimeDriverError(f"{self._label}: {action} failed: {exc}")

    def _image_missing(self, action: str, exc: BaseException) -> RuntimeDriverError:
        return RuntimeDriverError(
            f"{self.name}: image not found while {action}: {self._explain(exc)}. Build it first, "
            f"or for the base image run: {self._bootstrap_command}"
        )

    def _explain(self, exc: BaseException) -> str:
        """The engine's own words for a failed request."""
        return str(exc)

    def _engine_info(self) -> dict[str, Any]:
        if self._info is None:
            with self._errors("reading engine info"):
                self._info = dict(self.client.info())
        return self._info

    @abc.abstractmethod
    def _version(self) -> str:
        """The engine's name and version, for :meth:`available`."""

    def available(self) -> Availability:
        try:
            version = self._version()
            info = self._engine_info()
        except RuntimeDriverError as exc:
            return Availability(False, reason=str(exc))
        return Availability(True, version=version, rootless=self._rootless(info))

    @staticmethod
    @abc.abstractmethod
    def _rootless(info: Mapping[str, Any]) -> bool:
        """Whether the engine whose ``info`` this is runs rootless."""

    @property
    def supports_gpus(self) -> bool:
        # Both engines take the request; one without the NVIDIA toolkit (docker) or CDI spec
        # (podman) refuses it at create or start, which run() turns into a RuntimeDriverError.
        return True

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    # -- images -----------------------------------------------------------------------------

    def remove_image(self, tag: str) -> None:
        with self._errors(f"removing image {tag}"):
            try:
                self.client.images.remove(tag, force=True)
            except self._image_gone:
                pass

    def image_info(self, tag: str) -> ImageInfo:
        with self._errors(f"inspecting image {tag}"):
            config = self.client.images.get(tag).attrs.get("Config") or {}
        return ImageInfo(labels=dict(config.get("Labels") or {}), user=str(config.get("User") or ""))

    def tag_image(self, tag: str, name: str) -> None:
        repository, _, version = name.rpartition(":") if ":" in name.rsplit("/", 1)[-1] else (name, "", "latest")
        with self._errors(f"naming image {tag} {name}"):
            if not self.client.images.get(tag).tag(repository, version):
                raise RuntimeDriverError(f"{self._label}: the engine refused to name image {tag} {name}")

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        with self._errors("listing images"):
            images = self.client.images.list(filters=self._label_filters(labels))
        return sorted(tag for image in images for tag in image.tags)

    @staticmethod
    @abc.abstractmethod
    def _label_filters(labels: Mapping[str, str]) -> Any:
        """The ``filters`` argument that selects images or containers carrying all ``labels``."""

    # -- containers -------------------------------------------------------------------------

    @property
    @abc.abstractmethod
    def _limits_unsupported(self) -> str:
        """Why memory/CPU limits cannot be enforced when :attr:`supports_limits` is false."""

    @abc.abstractmethod
    def _port_binding(self) -> Any:
        """Publishes a container port on a loopback host port that the engine picks."""

    @abc.abstractmethod
    def _limit_options(self, spec: RunSpec) -> dict[str, Any]:
        """Create options for ``spec.memory`` and ``spec.cpus`` (at least one is set)."""

    @abc.abstractmethod
    def _hardening_options(self, spec: RunSpec) -> dict[str, Any]:
        """Create options that drop all capabilities, forbid new privileges and cap the pids."""

    @abc.abstractmethod
    def _gpu_options(self, device_ids: list[str] | None) -> dict[str, Any]:
        """Create options that request the GPUs ``device_ids`` (``None``: all of them)."""

    @abc.abstractmethod
    def _offline_options(self) -> dict[str, Any]:
        """Create options for no outbound network that still let published ports through."""

    def _run_options(self, spec: RunSpec) -> dict[str, Any]:
        if (spec.memory is not None or spec.cpus is not None) and not self.supports_limits:
            spec = self.unenforced_limits(spec, self._limits_unsupported)
        options: dict[str, Any] = {
            "command": list(spec.command) or None,
            "environment": dict(spec.env),
            "labels": with_owner_labels(spec.labels),
            "ports": {f"{port}/tcp": self._port_binding() for port in spec.ports},
            "init": True,
            "name": spec.name,
            **self._hardening_options(spec),
        }
        if spec.memory is not None or spec.cpus is not None:
            options.update(self._limit_options(spec))
        if spec.shm_size is not None:
            options["shm_size"] = spec.shm_size
        if spec.gpus:
            options.update(self._gpu_options(None if spec.gpus is True else list(spec.gpus)))
        if not spec.network:
            options.update(self._offline_options())
        return options

    def run(self, spec: RunSpec) -> ContainerHandle:
        options = self._run_options(spec)
        at_create: contextlib.AbstractContextManager[None] = (
            self._gpu_refusal(spec) if self._gpus_refused_at_create else contextlib.nullcontext()
        )
        with self._errors(f"creating a container from {spec.image}"), at_create:
            container = self.client.containers.create(spec.image, **options)
        try:
            if spec.secret_files:
                with self._errors(f"copying secret files into container {container.short_id}"):
                    container.put_archive(str(PurePosixPath(SECRETS_DIR).parent),
                                          secrets_archive(spec.secret_files, spec.secret_owner))
            with self._errors(f"starting container {container.short_id} from {spec.image}"):
                with self._gpu_refusal(spec):
                    container.start()
                settled(container.reload, str(container.id))  # a container that exits at once
            addresses = self._addresses(container.attrs, spec.ports)
        except BaseException:
            self.stop(str(container.id), timeout=0)
            raise
        return ContainerHandle(id=str(container.id), addresses=addresses, driver=self.name)

    @contextlib.contextmanager
    def _gpu_refusal(self, spec: RunSpec) -> Iterator[None]:
        """Explain an engine's refusal of the GPU request."""
        try:
            yield
        except self._api_error as exc:
            refusal = self._gpus_refused(exc) if spec.gpus else None
            if refusal is None:
                raise
            raise refusal from exc

    @abc.abstractmethod
    def _gpus_refused(self, exc: Exception) -> RuntimeDriverError | None:
        """The error to raise if ``exc`` is the engine refusing GPUs, else ``None``."""

    def _addresses(self, attrs: Mapping[str, Any], ports: Sequence[int]) -> dict[int, str]:
        container_id = str(attrs.get("Id", ""))
        return container_addresses(attrs, ports, engine=self.name,
                                   logs=lambda: self.logs(container_id, tail=_LOG_TAIL),
                                   try_bridge=not self._rootless(self._engine_info()))

    def _container(self, container_id: str) -> Any:
        try:
            return settled(lambda: self.client.containers.get(container_id), container_id)
        except self._container_not_found as exc:
            raise ContainerError(
                f"{self.name}: no container {container_id[:12]}: {self._explain(exc)}"
            ) from exc

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        with self._errors(f"inspecting container {container_id[:12]}"):
            state = self._container(container_id).attrs.get("State") or {}
            if state.get("Running"):
                return Health(running=True)
            return Health(
                running=False,
                exit_code=int(state.get("ExitCode", -1)),
                logs_tail=self.logs(container_id, tail=log_lines),
                oom_killed=bool(state.get("OOMKilled")),
            )

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        with self._errors(f"reading logs of {container_id[:12]}"):
            data = self._container(container_id).logs(tail="all" if tail is None else tail)
            # docker-py returns the log as bytes, podman-py as an iterator of frames.
            raw = bytes(data) if isinstance(data, (bytes, bytearray)) else b"".join(data)
        return raw.decode(errors="replace")

    @staticmethod
    @abc.abstractmethod
    def _container_info(container: Any) -> ContainerInfo:
        """A listed container as :class:`ContainerInfo`."""

    # Last: a method named ``list`` would shadow the builtin in the annotations below it.
    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        with self._errors("listing containers"):
            found = self.client.containers.list(all=True, filters=self._label_filters(labels),
                                                **self._list_options)
        return [self._container_info(container) for container in found]
