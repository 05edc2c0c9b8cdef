"""The runtime-driver interface: everything a sandbox needs from a container engine.

Sandboxes only ever talk to :class:`RuntimeDriver`; concrete engines (Docker SDK, Podman,
a CLI shell-out, a Ray cluster, or a third-party plugin) implement it and register under the
``rlmesh.runtimes`` entry-point group. Nothing here imports an engine package.
"""

from __future__ import annotations

import abc
import dataclasses
import hashlib
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any, ClassVar, TypeVar

from rlmesh.errors import RuntimeDriverError

__all__ = [
    "DEFAULT_PIDS_LIMIT",
    "Availability",
    "ContainerHandle",
    "ContainerInfo",
    "Health",
    "ImageInfo",
    "ImageRecipe",
    "ProgressCallback",
    "RunSpec",
    "RuntimeDriver",
]

#: Called with one line of build output at a time (for progress displays and logs).
ProgressCallback = Callable[[str], None]

_DriverT = TypeVar("_DriverT", bound="RuntimeDriver")

log = logging.getLogger(__name__)

#: Default :attr:`RunSpec.pids_limit`: far above what an env with worker processes uses.
DEFAULT_PIDS_LIMIT = 4096


@dataclass(frozen=True)
class ImageRecipe:
    """A Dockerfile plus the files its build context needs.

    ``tag`` is derived from the content, so the same inputs always name the same image and a
    driver can skip the build when that image already exists.
    """

    dockerfile: str
    context_files: Mapping[str, bytes] = field(default_factory=dict)
    repository: str = "rlmesh-sandbox"
    labels: Mapping[str, str] = field(default_factory=dict)
    #: What the Dockerfile installs, for runtimes that build no image (Ray installs these with
    #: its runtime environments): pip requirements, or ``None`` when the recipe is only a
    #: hand-written Dockerfile that such runtimes cannot follow.
    packages: tuple[str, ...] | None = None
    #: Modules the image checks at build time.
    imports: tuple[str, ...] = ()
    #: App files (relative path -> contents) the image places in its app directory.
    app_files: Mapping[str, bytes] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in self.context_files:
            parts = PurePosixPath(name).parts
            # The context is unpacked into a build directory: nothing may land outside it.
            if not parts or name.startswith("/") or ".." in parts or name == "Dockerfile":
                raise RuntimeDriverError(
                    f"invalid build-context file name {name!r}: use a relative path inside the "
                    "context, without '..', and not 'Dockerfile' (that is the recipe's dockerfile)"
                )

    @property
    def content_hash(self) -> str:
        digest = hashlib.sha256()
        digest.update(self.dockerfile.encode())
        for name in sorted(self.context_files):
            digest.update(b"\0" + name.encode() + b"\0")
            digest.update(hashlib.sha256(self.context_files[name]).digest())
        return digest.hexdigest()

    @property
    def tag(self) -> str:
        return f"{self.repository}:{self.content_hash[:20]}"


@dataclass(frozen=True)
class RunSpec:
    """What to run: image, command, environment, labels, published ports, limits and secrets.

    Every driver runs containers hardened, whatever the spec: all capabilities dropped,
    ``no-new-privileges``, the ``pids_limit``, ports published on loopback only.
    """

    image: str
    command: Sequence[str] = ()
    env: Mapping[str, str] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    #: Container TCP ports to publish on the host (loopback, host port chosen by the engine).
    ports: Sequence[int] = ()
    #: Memory limit in engine syntax, e.g. ``"512m"``; ``None`` for no limit.
    memory: str | None = None
    #: CPU limit in cores, e.g. ``1.5``; ``None`` for no limit.
    cpus: float | None = None
    #: GPUs: ``True`` for all, or device ids (``["0", "2"]``); drivers that cannot provide
    #: them raise :class:`RuntimeDriverError`.
    gpus: bool | Sequence[str] = False
    #: Size of ``/dev/shm`` in engine syntax, e.g. ``"1g"``; ``None`` for the engine's default.
    shm_size: str | None = None
    #: A limit the engine cannot enforce raises (``True``), or is dropped with a warning.
    strict_limits: bool = True
    #: Give the container outbound network access (published ports work either way).
    network: bool = True
    name: str | None = None
    #: Most processes (and threads) the container may run: a fork bomb stops there.
    pids_limit: int | None = DEFAULT_PIDS_LIMIT
    #: Files (relative name -> contents) placed under :data:`rlmesh.runtime.secrets.SECRETS_DIR`
    #: before the container starts, readable only by ``secret_owner``; never in the image,
    #: the environment, the command line or ``inspect`` output.
    secret_files: Mapping[str, bytes] = field(default_factory=dict)
    #: The uid that owns the secret files: the user the image runs as.
    secret_owner: int = 0


@dataclass(frozen=True)
class ContainerHandle:
    """A started container and where its published ports can be reached."""

    id: str
    #: Container port -> ``"tcp://HOST:PORT"`` reachable from the caller.
    addresses: Mapping[int, str]
    driver: str = ""


@dataclass(frozen=True)
class Health:
    """A container's state: running, or exited with a code and the tail of its log."""

    running: bool
    exit_code: int | None = None
    logs_tail: str = ""
    #: The engine reports that the kernel's OOM killer ended the container.
    oom_killed: bool = False


@dataclass(frozen=True)
class ImageInfo:
    """A local image as an engine describes it: its labels and the user it runs as."""

    labels: Mapping[str, str]
    #: The image's ``USER`` (``""`` when it runs as root).
    user: str = ""


@dataclass(frozen=True)
class ContainerInfo:
    """One container found by label, for listing and orphan reaping."""

    id: str
    labels: Mapping[str, str]
    running: bool
    name: str = ""


@dataclass(frozen=True)
class Availability:
    """Whether a driver can work here, and why not when it cannot."""

    ok: bool
    reason: str = ""
    version: str = ""
    rootless: bool = False

    def __bool__(self) -> bool:
        return self.ok


class RuntimeDriver(abc.ABC):
    """Build images, run and health-check containers, stop and list them.

    Implementations raise :class:`rlmesh.errors.RuntimeDriverError` (or a subclass) with the
    engine's own message inside; they never let an engine-specific exception escape.
    """

    #: Registered entry-point name, e.g. ``"docker"``.
    name: ClassVar[str] = ""

    _constructor_arguments: tuple[tuple[Any, ...], dict[str, Any]] = ((), {})

    def __new__(cls: type[_DriverT], *args: Any, **kwargs: Any) -> _DriverT:
        if (args or kwargs) and cls.__init__ is object.__init__:
            # What object.__new__ says, which our accepting arguments here would silence.
            raise TypeError(f"{cls.__name__}() takes no arguments")
        driver = super().__new__(cls)
        # Kept for recreate_arguments(), so that every driver, a plugin's too, gets a default.
        driver._constructor_arguments = (args, dict(kwargs))
        return driver

    def recreate_arguments(self) -> tuple[Sequence[Any], Mapping[str, Any]] | None:
        """Positional and keyword arguments that make an equivalent driver in another process.

        When a process that owns containers is killed, its container watcher
        (:mod:`rlmesh.runtime.watcher`) imports this driver's class and calls it with these
        arguments (JSON values; passed through a pipe, never on a command line) to remove the
        process's containers. The default is the arguments this driver was constructed with.
        Override it when those do not name the engine on their own, or return ``None`` when the
        engine ends a process's containers with the process anyway (nothing to watch).
        """
        return self._constructor_arguments

    @property
    def supports_gpus(self) -> bool:
        """Whether :meth:`run` can pass ``RunSpec.gpus`` to the engine."""
        return False

    @property
    def supports_limits(self) -> bool:
        """Whether memory/CPU limits are enforced; probed from the engine, which must be up.

        Rootless podman on cgroup v1, for one, cannot; :meth:`run` then raises rather than
        silently ignoring ``RunSpec.memory``/``cpus``.
        """
        return True

    @abc.abstractmethod
    def available(self) -> Availability:
        """Probe the engine; never raises."""

    @abc.abstractmethod
    def image_exists(self, tag: str) -> bool:
        """Whether an image with this tag is present locally."""

    @abc.abstractmethod
    def _build(
        self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None
    ) -> None:
        """Build ``recipe`` as ``recipe.tag``; raise ``ImageBuildError`` with the log on failure."""

    def build(
        self,
        recipe: ImageRecipe,
        *,
        memory: str | None = None,
        progress: ProgressCallback | None = None,
    ) -> str:
        """Build ``recipe`` unless its content-hash tag exists already; return the tag.

        ``memory`` limits the build's containers (engine syntax, e.g. ``"2g"``); an engine that
        cannot enforce limits (see :attr:`supports_limits`) raises instead of building unbounded.
        """
        if self.image_exists(recipe.tag):
            return recipe.tag
        if memory is not None and not self.supports_limits:
            raise RuntimeDriverError(
                f"{self.name}: this engine cannot enforce a build memory limit (no memory cgroup "
                "controller, e.g. rootless on cgroup v1); build without memory=... or use a "
                "rootful engine."
            )
        self._build(recipe, memory=memory, progress=progress)
        return recipe.tag

    @abc.abstractmethod
    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        """Import a root-filesystem tarball as image ``tag`` (registry-free base images)."""

    def image_info(self, tag: str) -> ImageInfo:
        """Labels and user of the local image ``tag``; :class:`RuntimeDriverError` if it is missing."""
        raise RuntimeDriverError(f"{self.name}: this runtime cannot inspect images; image:// sources "
                                 "need a container engine (docker, podman)")

    def tag_image(self, tag: str, name: str) -> None:
        """Give the local image ``tag`` the additional name ``name`` (``repository[:tag]``)."""
        raise RuntimeDriverError(f"{self.name}: this runtime cannot name images; build with a "
                                 "container engine (docker, podman)")

    @abc.abstractmethod
    def remove_image(self, tag: str) -> None:
        """Remove an image; missing images are not an error."""

    @abc.abstractmethod
    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        """Tags of images carrying all of ``labels``."""

    @abc.abstractmethod
    def run(self, spec: RunSpec) -> ContainerHandle:
        """Start a detached container (with an init process) and return its addresses.

        The container carries ``spec.labels`` plus :func:`rlmesh.runtime.labels.with_owner_labels`
        so the reaper can find it if its owner dies. Addresses are whatever the engine bound
        (``tcp://127.0.0.1:PORT`` for local engines); callers never assume loopback.
        """

    @abc.abstractmethod
    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        """Report whether the container runs, or its exit code and last log lines."""

    @abc.abstractmethod
    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        """The container's combined stdout/stderr."""

    @abc.abstractmethod
    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        """Stop and remove the container; a container already gone is not an error."""

    @abc.abstractmethod
    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        """Containers (running or not) carrying all of ``labels``."""

    def unenforced_limits(self, spec: RunSpec, reason: str) -> RunSpec:
        """``spec`` without memory/CPU limits this engine cannot enforce, or an error naming them.

        Raises unless the caller opted out with ``strict_limits=False``; then logs a warning: a
        limit is never dropped in silence.
        """
        asked = ", ".join(f"{name}={value!r}" for name, value in (("memory", spec.memory), ("cpus", spec.cpus))
                          if value is not None)
        if spec.strict_limits:
            raise RuntimeDriverError(f"{self.name}: cannot enforce {asked}: {reason}. Run without them, "
                                     "or pass strict_limits=False to run unlimited with a warning")
        log.warning("%s: running without %s: %s (strict_limits=False)", self.name, asked, reason)
        return dataclasses.replace(spec, memory=None, cpus=None)

    def remove(self, container_id: str) -> None:
        """Remove a container by id (stopping it first if needed)."""
        self.stop(container_id, timeout=0)

    def close(self) -> None:
        """Release client connections held by the driver."""

