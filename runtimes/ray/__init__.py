"""Runtime driver that places env servers on a Ray cluster, each in its own actor (worker process).

Ray runs no container images, so the image-centric interface maps onto it like this:

* ``build(recipe)`` builds nothing. It keeps the recipe's structured inputs (``packages``,
  ``imports``, ``app_files``, filled by :func:`rlmesh_images.recipe.sandbox_recipe`) in this
  process under the recipe's tag, which then "exists". A recipe that is only a hand-written
  Dockerfile (a sandbox ``override``) is refused: Ray cannot follow a Dockerfile.
* ``run(spec)`` starts one actor for the sandbox server ``spec`` describes. Requirements the
  driver's own Python environment already satisfies (the host pins a sandbox adds: rlmesh's
  dependencies, Gymnasium) are taken from the cluster's environment, which Ray expects to match
  the driver's; any other package is installed by a Ray runtime environment (``pip``), isolated
  from other actors. ``spec.env`` becomes the runtime environment's variables. The actor writes
  the app files and keys to a private folder (removed when it stops; a killed actor's, by the
  next actor on its node), imports ``imports`` (the build-time check), builds the
  env and serves it on a free port of its node's IP; the returned address is that node IP as Ray
  reports it, so endpoints on other machines are reachable and loopback is never assumed.
* Actors are placed round-robin over the cluster's alive nodes (node affinity). They are
  named ``rlmesh-<hex>`` in the ``rlmesh`` namespace and keep the owner labels, which is how
  ``list`` and the orphan reaper find them. They are not detached: Ray removes them when the
  owning driver process exits, and the server inside stops itself (and its actor) when its
  client's heartbeats stop.
* Ray reserves but never enforces memory and CPU: :attr:`supports_limits` is false and ``run``
  refuses ``RunSpec.memory``/``cpus`` unless ``strict_limits=False`` (then it warns and runs
  without them; reserve CPUs per endpoint with ``num_cpus=``). Actors
  share their node's network, so ``RunSpec(network=False)`` cannot be honoured and is logged.

The cluster is ``address=`` (``"HEAD_IP:6379"`` or ``"ray://HEAD_IP:10001"``), else
``$RLMESH_RAY_ADDRESS``, else a Ray connection this process made already (``ray.init``).

Why one module of this size: a plugin driver ships as one package, and its actor class must be
importable by Ray workers from the same module.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib
import itertools
import json
import logging
import os
import shutil
import tempfile
import threading
import time
import uuid
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import ray
import ray.exceptions
import ray.util
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from rlmesh.errors import ContainerError, RuntimeDriverError, RuntimeUnavailableError
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
from rlmesh.runtime.secrets import write_secrets
from rlmesh.sandbox.entry import COMMAND, CONFIG_VARIABLE, build_server

__all__ = ["RayDriver", "ADDRESS_VARIABLE", "NAMESPACE", "SERVER_COMMAND"]

log = logging.getLogger(__name__)

ADDRESS_VARIABLE = "RLMESH_RAY_ADDRESS"
#: Ray namespace of every actor this driver starts.
NAMESPACE = "rlmesh"
#: The one command a Ray endpoint runs: the sandbox server, inside the actor.
SERVER_COMMAND = COMMAND
_NAME_PREFIX = "rlmesh-"
#: Each actor's private folder (app files, keys) in its node's temporary directory.
_FOLDER_PREFIX = "rlmesh-actor-"
_OWNER_FILE = "owner"
_LOG_LINES = 500
_CALL_TIMEOUT = 30.0

# Recipes "built" in this process, by tag: Ray has no image store to keep them in.
_recipes: dict[str, ImageRecipe] = {}
_recipes_lock = threading.Lock()
# Parts of Ray's API are untyped or typed narrower than they accept: call those through Any.
_ray: Any = ray


def _satisfied_here(requirement: str) -> bool:
    """Whether this Python environment already satisfies ``requirement`` exactly as written."""
    from packaging.requirements import InvalidRequirement, Requirement

    try:
        parsed = Requirement(requirement)
    except InvalidRequirement:
        return False
    if parsed.url or parsed.extras:
        return False  # a URL or extras may bring more than what is installed: let pip decide
    if parsed.marker is not None and not parsed.marker.evaluate():
        return True  # not meant for this platform at all
    try:
        installed = metadata.version(parsed.name)
    except metadata.PackageNotFoundError:
        return False
    return parsed.specifier.contains(installed, prereleases=True)


class _LogBuffer(logging.Handler):
    """The last log lines of an actor, for ``Health.logs_tail`` and ``logs``."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: deque[str] = deque(maxlen=_LOG_LINES)
        self.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


def _claim_folder() -> Path:
    """A new private folder (0700) of this worker for one actor's files, first removing those
    of actors whose worker died without removing its own (killed outright: SIGKILL, the OOM
    killer, a kill after a failed stop).

    Each folder holds an ``owner`` file its worker keeps locked (``flock``) while it lives: the
    kernel drops the lock with the process, whatever killed it, and in any pid namespace. The
    file appears under that name only once locked, so a folder being made is never taken for
    an abandoned one."""
    root = Path(tempfile.gettempdir())
    for old in root.glob(f"{_FOLDER_PREFIX}*"):
        try:
            owner = os.open(old / _OWNER_FILE, os.O_RDONLY)
        except OSError:  # being made, or another user's
            continue
        try:
            fcntl.flock(owner, fcntl.LOCK_EX | fcntl.LOCK_NB)
            shutil.rmtree(old, ignore_errors=True)  # under the lock: no other sweep races us
        except OSError:  # its worker lives
            pass
        finally:
            os.close(owner)
    folder = Path(tempfile.mkdtemp(prefix=_FOLDER_PREFIX))
    locking = folder / f".{_OWNER_FILE}"
    owner = os.open(locking, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    fcntl.flock(owner, fcntl.LOCK_EX)  # kept open, and locked, for the worker's life
    locking.rename(folder / _OWNER_FILE)
    return folder


class ServerActor:
    """Runs one rlmesh sandbox server (env or policy) inside a Ray actor's worker process."""

    def __init__(self, labels: Mapping[str, str]) -> None:
        self._labels = dict(labels)
        self._server: Any = None
        self._folder: Path | None = None
        self._stopping = False
        self._buffer = _LogBuffer()
        root = logging.getLogger()
        root.addHandler(self._buffer)
        root.setLevel(min(root.level or logging.INFO, logging.INFO))

    def start(self, imports: Sequence[str], app_files: Mapping[str, bytes],
              secret_files: Mapping[str, bytes]) -> str:
        """Build the server ``$RLMESH_SANDBOX`` describes, serve it, return its address."""
        config: dict[str, Any] = json.loads(os.environ[CONFIG_VARIABLE])
        # The keys travel as a task argument (Ray's own channel), land in a private folder of
        # the worker and leave with the actor, as do the app files.
        self._folder = _claim_folder()
        try:
            secrets = write_secrets(secret_files, self._folder / "secrets")
            app_dir = self._folder / "app"
            for name, data in app_files.items():
                target = app_dir / name
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
            app_dir.mkdir(exist_ok=True)
            os.chdir(app_dir)  # the actor owns its worker process, as a container owns its cwd
            for module in imports:
                importlib.import_module(module)
            host = str(_ray.util.get_node_ip_address())
            self._server = build_server(config, f"tcp://{host}:0", app_dir, secrets)
            # start() (not serve() in a thread of ours) so that shutdown() can wake and join the loop.
            self._server.start()
        except BaseException:
            self._remove_folder()  # the driver kills a failed actor without asking it to stop
            raise
        threading.Thread(target=self._exit_when_stopped, name="rlmesh-ray-watch", daemon=True).start()
        return str(self._server.address)

    def _exit_when_stopped(self) -> None:
        self._server.wait()
        if self._stopping:
            return  # the driver kills the actor right after stop()
        # The owner went away (no heartbeats): the actor has nothing left to do, and a
        # lingering worker process would be a leak.
        logging.getLogger(__name__).info("server stopped: no client; ending the actor")
        self._remove_folder()
        os._exit(0)

    def _remove_folder(self) -> None:
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None

    def labels(self) -> dict[str, str]:
        return self._labels

    def health(self) -> tuple[bool, int]:
        """Whether the server thread serves, and the worker's pid."""
        return self._server is not None and self._server.serving, os.getpid()

    def logs(self, tail: int | None) -> str:
        lines = list(self._buffer.lines)
        return "\n".join(lines if tail is None else lines[-tail:])

    def stop(self) -> None:
        self._stopping = True
        if self._server is not None:
            self._server.shutdown(timeout=2.0)
        self._remove_folder()


# Threaded, so health and log calls are answered while start() builds the env.
_RemoteServerActor: Any = _ray.remote(max_restarts=0, max_concurrency=4)(ServerActor)


class RayDriver(RuntimeDriver):
    """Run sandbox servers as Ray actors on a Ray cluster.

    Args:
        address: The cluster (``"HEAD_IP:6379"``, ``"ray://HEAD_IP:10001"``); default
            ``$RLMESH_RAY_ADDRESS``, or the cluster this process is connected to already.
        node_ip_address: This process's address as the cluster should see it (Ray's
            ``_node_ip_address``), for machines with several interfaces.
        num_cpus: CPUs each endpoint reserves on its node (Ray schedules with it, never enforces).
        start_timeout: Seconds allowed for an actor to start serving, including the runtime
            environment's pip installs on first use.
    """

    name = "ray"

    def __init__(self, address: str | None = None, *, node_ip_address: str | None = None,
                 num_cpus: float = 0.0, start_timeout: float = 600.0) -> None:
        self._address = address or os.environ.get(ADDRESS_VARIABLE, "").strip() or None
        self._node_ip_address = node_ip_address
        self._num_cpus = num_cpus
        self._start_timeout = start_timeout
        self._placement = itertools.count()
        self._handles: dict[str, Any] = {}
        self._warned_network = False

    # -- connection -------------------------------------------------------------------------

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        if self._address is None:
            raise RuntimeUnavailableError(
                f"ray: no Ray cluster to use. Pass RayDriver(address='HEAD_IP:6379') or set "
                f"{ADDRESS_VARIABLE}; start a cluster with `ray start --head` (see the scale-out docs)."
            )
        options: dict[str, Any] = {"address": self._address, "logging_level": logging.WARNING}
        if self._node_ip_address:
            options["_node_ip_address"] = self._node_ip_address
        try:
            ray.init(**options)
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError...
            raise RuntimeUnavailableError(f"ray: cannot connect to the cluster at {self._address}: {exc}") from exc

    @contextlib.contextmanager
    def _errors(self, action: str) -> Iterator[None]:
        """Ray's exceptions as ours, with Ray's message inside."""
        try:
            yield
        except RuntimeDriverError:
            raise
        except ray.exceptions.GetTimeoutError as exc:
            raise RuntimeDriverError(f"ray: {action} timed out: {exc}") from exc
        except (ray.exceptions.RayError, ConnectionError, ValueError, RuntimeError) as exc:
            raise RuntimeDriverError(f"ray: {action} failed: {exc}") from exc

    def available(self) -> Availability:
        try:
            self._connect()
            with self._errors("listing the cluster's nodes"):
                nodes = [n for n in _ray.nodes() if n.get("Alive")]
        except RuntimeDriverError as exc:
            return Availability(False, reason=str(exc))
        if not nodes:
            return Availability(False, reason="ray: the cluster has no alive nodes")
        return Availability(True, version=f"ray {ray.__version__} ({len(nodes)} nodes)")

    @property
    def supports_limits(self) -> bool:
        return False  # Ray schedules with resources but never enforces memory or CPU limits

    def recreate_arguments(self) -> None:
        # No container watcher: Ray removes an owner's (non-detached) actors when the owner's
        # process exits, SIGKILL included; a watcher would only have to join the cluster.
        return None

    def nodes(self) -> list[tuple[str, str]]:
        """``(node id, node IP)`` of every alive node, sorted by IP (the placement order)."""
        self._connect()
        with self._errors("listing the cluster's nodes"):
            alive = [(str(n["NodeID"]), str(n["NodeManagerAddress"])) for n in _ray.nodes() if n.get("Alive")]
        return sorted(alive, key=lambda node: (node[1], node[0]))

    # -- "images": recipes kept in this process ----------------------------------------------

    def image_exists(self, tag: str) -> bool:
        with _recipes_lock:
            return tag in _recipes

    def _build(self, recipe: ImageRecipe, *, memory: str | None, progress: ProgressCallback | None) -> None:
        if recipe.packages is None:
            raise RuntimeDriverError(
                "ray: this recipe is only a Dockerfile (a sandbox override?), which Ray cannot "
                "follow: Ray runs no images. Describe the sandbox with packages= and imports= "
                "instead, or use a container runtime (docker, podman, cli)."
            )
        if progress is not None:
            progress("ray: no image to build; packages are installed by Ray runtime environments at start")
        with _recipes_lock:
            _recipes[recipe.tag] = recipe

    def import_image(self, tarball: str, tag: str, *, cmd: Sequence[str] = ("/bin/bash",)) -> None:
        raise RuntimeDriverError(
            f"ray: cannot import {tarball} as {tag}: Ray runs no container images; its "
            "endpoints use the cluster's Python environment plus Ray runtime environments."
        )

    def remove_image(self, tag: str) -> None:
        with _recipes_lock:
            _recipes.pop(tag, None)

    def list_images(self, labels: Mapping[str, str]) -> list[str]:
        with _recipes_lock:
            return sorted(tag for tag, recipe in _recipes.items()
                          if all(recipe.labels.get(k) == v for k, v in labels.items()))

    # -- endpoints ---------------------------------------------------------------------------

    def _recipe(self, tag: str) -> ImageRecipe:
        with _recipes_lock:
            recipe = _recipes.get(tag)
        if recipe is None:
            raise RuntimeDriverError(f"ray: no recipe {tag!r} was built in this process; call build() first")
        return recipe

    def _runtime_env(self, recipe: ImageRecipe, spec: RunSpec) -> dict[str, Any]:
        runtime_env: dict[str, Any] = {"env_vars": dict(spec.env)}
        missing = [r for r in recipe.packages or () if not _satisfied_here(r)]
        if missing:
            runtime_env["pip"] = missing
        return runtime_env

    def _check(self, spec: RunSpec) -> RunSpec:
        """``spec`` as Ray can run it, or an error naming what it cannot do."""
        if tuple(spec.command) != SERVER_COMMAND:
            raise RuntimeDriverError(f"ray: can only run the sandbox server {' '.join(SERVER_COMMAND)!r}, "
                                     f"not {' '.join(spec.command)!r}")
        if CONFIG_VARIABLE not in spec.env:
            raise RuntimeDriverError(f"ray: the run spec has no {CONFIG_VARIABLE} server config")
        if len(spec.ports) != 1:
            raise RuntimeDriverError(f"ray: an actor serves exactly one port, {len(spec.ports)} were asked for")
        if spec.gpus:
            raise RuntimeDriverError("ray: gpus= is not supported by the ray runtime yet; run without GPUs")
        if spec.shm_size is not None:
            raise RuntimeDriverError("ray: actors share their node's /dev/shm; run without shm_size=")
        if spec.memory is not None or spec.cpus is not None:
            spec = self.unenforced_limits(spec, "Ray reserves resources for an actor but never enforces "
                                                "them (reserve CPUs per endpoint with RayDriver(num_cpus=...))")
        if not spec.network and not self._warned_network:
            self._warned_network = True
            log.warning("ray: actors share their node's network; outbound network cannot be turned off")
        return spec

    def run(self, spec: RunSpec) -> ContainerHandle:
        spec = self._check(spec)
        recipe = self._recipe(spec.image)
        nodes = self.nodes()
        if not nodes:
            raise RuntimeUnavailableError("ray: the cluster has no alive nodes")
        node_id, node_ip = nodes[next(self._placement) % len(nodes)]
        name = spec.name or f"{_NAME_PREFIX}{uuid.uuid4().hex[:16]}"
        with self._errors(f"creating actor {name} on node {node_ip}"):
            actor = _RemoteServerActor.options(
                name=name, namespace=NAMESPACE, num_cpus=self._num_cpus,
                runtime_env=self._runtime_env(recipe, spec),
                scheduling_strategy=NodeAffinitySchedulingStrategy(node_id=node_id, soft=False),
            ).remote(with_owner_labels(spec.labels))
        self._handles[name] = actor
        try:
            address = ray.get(actor.start.remote(list(recipe.imports), dict(recipe.app_files),
                                                 dict(spec.secret_files)),
                              timeout=self._start_timeout)
        except BaseException as exc:
            logs = self._tail(actor)
            self.stop(name, timeout=0)
            if isinstance(exc, (ray.exceptions.RayError, OSError)):
                raise ContainerError(f"ray: the server actor {name} on {node_ip} failed to start: {exc}",
                                     logs=logs) from exc
            raise
        log.info("ray: actor %s serves at %s", name, address)
        return ContainerHandle(id=name, addresses={int(spec.ports[0]): str(address)}, driver=self.name)

    def _handle(self, actor_id: str) -> Any:
        handle = self._handles.get(actor_id)
        if handle is not None:
            return handle
        self._connect()
        try:
            return ray.get_actor(actor_id, namespace=NAMESPACE)
        except ValueError as exc:
            raise ContainerError(f"ray: no actor {actor_id} in namespace {NAMESPACE!r}: {exc}") from exc

    def _tail(self, actor: Any, lines: int = 40) -> str:
        try:
            return str(ray.get(actor.logs.remote(lines), timeout=5.0))
        except Exception:  # a dead actor has no logs to give; the error says why it died
            return ""

    def health(self, container_id: str, *, log_lines: int = 50) -> Health:
        actor = self._handle(container_id)
        try:
            serving, _ = ray.get(actor.health.remote(), timeout=_CALL_TIMEOUT)
        except ray.exceptions.RayActorError as exc:
            return Health(running=False, exit_code=None, logs_tail=f"the actor died: {exc}")
        except ray.exceptions.GetTimeoutError as exc:
            raise RuntimeDriverError(f"ray: actor {container_id} did not answer a health check: {exc}") from exc
        if serving:
            return Health(running=True)
        return Health(running=False, exit_code=None, logs_tail=self._tail(actor, log_lines))

    def pid(self, container_id: str) -> int:
        """The worker process id of an actor (on its node)."""
        with self._errors(f"asking actor {container_id} for its pid"):
            _, pid = ray.get(self._handle(container_id).health.remote(), timeout=_CALL_TIMEOUT)
        return int(pid)

    def logs(self, container_id: str, *, tail: int | None = None) -> str:
        with self._errors(f"reading the logs of actor {container_id}"):
            return str(ray.get(self._handle(container_id).logs.remote(tail), timeout=_CALL_TIMEOUT))

    def stop(self, container_id: str, *, timeout: float = 5.0) -> None:
        try:
            actor = self._handle(container_id)
        except ContainerError:
            return  # gone already
        self._handles.pop(container_id, None)
        if timeout > 0:
            try:  # a clean shutdown closes the env; the kill below is the guarantee
                ray.get(actor.stop.remote(), timeout=timeout)
            except Exception as exc:
                log.debug("ray: actor %s did not stop cleanly: %s", container_id, exc)
        with self._errors(f"killing actor {container_id}"):
            ray.kill(actor, no_restart=True)
        self._wait_gone(container_id, timeout=max(timeout, 5.0))

    def _wait_gone(self, name: str, *, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not any(a["name"] == name for a in self._named()):
                return
            time.sleep(0.1)
        log.warning("ray: actor %s is still listed %.0f s after being killed", name, timeout)

    def _named(self) -> list[dict[str, str]]:
        self._connect()
        with self._errors("listing named actors"):
            found = ray.util.list_named_actors(all_namespaces=True)
        return [a for a in found if a.get("namespace") == NAMESPACE and a.get("name", "").startswith(_NAME_PREFIX)]

    def list(self, labels: Mapping[str, str]) -> list[ContainerInfo]:
        infos: list[ContainerInfo] = []
        for entry in self._named():
            name = entry["name"]
            try:
                actor = ray.get_actor(name, namespace=NAMESPACE)
                actor_labels: dict[str, str] = _ray.get(actor.labels.remote(), timeout=_CALL_TIMEOUT)
                running, _ = ray.get(actor.health.remote(), timeout=_CALL_TIMEOUT)
            except (ValueError, ray.exceptions.RayError):
                continue  # it ended while we looked
            if all(actor_labels.get(k) == v for k, v in labels.items()):
                infos.append(ContainerInfo(id=name, labels=actor_labels, running=bool(running), name=name))
        return infos
