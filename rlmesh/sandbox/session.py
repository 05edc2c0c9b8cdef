"""Sandbox sessions: build an isolated image for a source, run it, and drive it remotely.

A session owns one container and one remote client. It depends only on the runtime-driver
interface (:mod:`rlmesh.runtime`), never on a concrete engine. The container is stopped on
``close()``, on context exit, on garbage collection, at interpreter exit, on SIGTERM and on any
error during startup. If the host process is killed outright, a watcher process started with
the first container (:mod:`rlmesh.runtime.watcher`) removes it within a second; should that
fail too, the server inside stops itself when heartbeats stop and a later reap removes it.

Why one module of this size: the session's steps (settings, image, start, connect, close) share
its state and its cleanup guarantees; options and config live here because they are its
keyword arguments. Sources, the rlmesh package and the entry are modules of their own.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import inspect
import json
import logging
import os
import re
import signal
import tempfile
import time
import uuid
import weakref
from collections.abc import Callable, Collection, Iterable, Mapping, Sequence
from importlib import metadata
from pathlib import Path
from types import TracebackType
from typing import Any, ClassVar, Generic, TypeVar

import tomllib

from rlmesh._version import __version__
from rlmesh.client.surface import EnvSurface, Surface, VectorEnvSurface
from rlmesh.errors import ContainerError, SandboxCrashed, SandboxError, VersionMismatchError
from rlmesh.protocol.keys import ClientKeys, SessionKeys
from rlmesh.protocol.messages import EnvContract
from rlmesh.runtime.driver import ImageRecipe
from rlmesh.sandbox.entry import COMMAND, CONFIG_VARIABLE
from rlmesh.sandbox.package import resolve_rlmesh_package
from rlmesh.sandbox.resources import Resources
from rlmesh.runtime.labels import VERSION as VERSION_LABEL
from rlmesh.sandbox.sources import Source, check_entry, parse_source

__all__ = ["SandboxSessionBase", "SandboxEnvBase", "SandboxVectorEnvBase", "CAPABILITIES"]

log = logging.getLogger(__name__)

RemoteT = TypeVar("RemoteT")
ValueT = TypeVar("ValueT")
ActionT = TypeVar("ActionT")

#: Runtime features a session may request through ``capabilities``.
CAPABILITIES = frozenset({"gpu", "network"})
_CONTAINER_PORT = 5555
_VECTORIZATION_MODES = ("sync", "async")
_MAX_APP_BYTES = 64 * 1024 * 1024
#: Image labels of `rlmesh images build`: the source config, the settings, and their digest.
SOURCE_LABEL = "io.rlmesh.source"
SETTINGS_LABEL = "io.rlmesh.settings"
DIGEST_LABEL = "io.rlmesh.digest"
#: Options that shape an image, meaningless for image:// sources.
_BUILD_OPTIONS = ("packages", "imports", "system_packages", "base_image", "rlmesh_package", "override",
                  "build_memory")
#: Seconds to wait for the engine to report a container exited once its connection dropped.
_EXIT_GRACE = 5.0
_SKIPPED_DIRS = {".git", "__pycache__", ".venv", "node_modules", ".mypy_cache", ".pytest_cache"}


def _uid_of(user: str, image: str) -> int:
    """The uid an image's ``USER`` runs as, so its secret files can be handed to it."""
    from rlmesh_images.recipe import SANDBOX_UID, SANDBOX_USER

    name = user.partition(":")[0]
    if name in ("", "root"):
        return 0
    if name == SANDBOX_USER:
        return SANDBOX_UID
    if name.isdigit():
        return int(name)
    raise SandboxError(f"image {image} runs as user {name!r}; rlmesh hands a container its keys as files "
                       "owned by the image's user, so give the image a numeric USER (e.g. USER 1000)")


def _signal_name(exit_code: int | None) -> str:
    """``SIGSEGV`` for exit code 139: a process killed by a signal exits with 128 + its number."""
    if exit_code is None or not 128 < exit_code < 128 + 65:
        return ""
    try:
        return signal.Signals(exit_code - 128).name
    except ValueError:
        return ""


def _keyword_names(function: Callable[..., object]) -> frozenset[str]:
    """The names a caller may pass to ``function`` as keywords (``self`` and ``source`` aside)."""
    named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return frozenset(name for name, parameter in inspect.signature(function).parameters.items()
                     if parameter.kind in named and name not in ("self", "source"))


def _near_misses(keyword: str, options: Iterable[str]) -> list[str]:
    """The options ``keyword`` was probably meant to be.

    That is an option whose name is spelt closely (a difflib ratio of at least 0.8: typos and
    singular or plural, ``package``, ``import``, ``capability``), or whose last word is, when
    that word is long enough to be distinctive (``memory`` of ``build_memory``). Short last
    words (``mode``, ``image``) are left alone: envs take arguments of such names themselves.
    """
    tails: dict[str, list[str]] = {}
    for option in sorted(options):
        head, _, tail = option.rpartition("_")
        if head and len(tail) >= 6:
            tails.setdefault(tail, []).append(option)
    meant = difflib.get_close_matches(keyword, options, n=3, cutoff=0.8)
    meant += [option for tail in difflib.get_close_matches(keyword, tails, n=3, cutoff=0.8)
              for option in tails[tail]]
    return list(dict.fromkeys(meant))


def _check_keywords(owner: str, keywords: Iterable[str], options: Collection[str], *,
                    forwarded: bool) -> None:
    """Refuse, on the host and before anything is built, keywords that are not ``options``.

    With ``forwarded`` (they go on to the env's constructor in the container), only those that
    look like a misspelt option are refused; without it, all of them. The ``TypeError`` names
    each one, the option it probably meant, and the known options.
    """
    refused = {k: _near_misses(k, options) for k in sorted(set(keywords) - set(options))}
    if forwarded:
        refused = {k: meant for k, meant in refused.items() if meant}
    if not refused:
        return
    described = ", ".join(
        f"{k}=" + (f" (did you mean {' or '.join(f'{m}=' for m in meant)}?)" if meant else "")
        for k, meant in refused.items())
    message = f"unknown {owner} options: {described}\n{owner} options: {', '.join(sorted(options))}"
    if forwarded:
        example = ", ".join(f"{k!r}: ..." for k in refused)
        message += ("\nOther keywords go to the env's constructor inside the container; to pass "
                    f"one of these names there on purpose, use config={{'make_kwargs': {{{example}}}}}")
    raise TypeError(message)


def _load_config(config: Mapping[str, object] | str | os.PathLike[str] | None,
                 cwd: Path) -> dict[str, Any]:
    if config is None:
        return {}
    if isinstance(config, Mapping):
        data: Any = dict(config)
    else:
        path = Path(cwd, config)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SandboxError(f"cannot read sandbox config {str(path)!r}: {exc}") from exc
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as exc:
            raise SandboxError(f"sandbox config {str(path)!r} is not valid "
                               f"{'TOML' if path.suffix == '.toml' else 'JSON'}: {exc}") from exc
        data = data.get("sandbox", data) if isinstance(data, dict) else data
    if not isinstance(data, dict):
        raise SandboxError("a sandbox config must be a mapping of settings")
    unknown = set(data) - _SETTING_KEYS
    if unknown:
        raise SandboxError(f"unknown sandbox config keys {sorted(unknown)}; known: {sorted(_SETTING_KEYS)}")
    return data


def _app_files(directory: Path) -> dict[str, bytes]:
    files: dict[str, bytes] = {}
    total = 0
    for path in sorted(directory.rglob("*")):
        relative = path.relative_to(directory)
        if any(part in _SKIPPED_DIRS for part in relative.parts) or not path.is_file():
            continue
        data = path.read_bytes()
        total += len(data)
        if total > _MAX_APP_BYTES:
            raise SandboxError(f"source directory {directory} holds more than "
                               f"{_MAX_APP_BYTES >> 20} MiB; keep large assets out of it")
        files[relative.as_posix()] = data
    return files


def _fetch_hf(source: Source) -> Path:
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise SandboxError('hf:// sources need huggingface_hub: pip install "rlmesh[hf]"') from None
    try:
        return Path(snapshot_download(repo_id=source.repo_id or "", revision=source.revision))
    except Exception as exc:
        raise SandboxError(f"could not fetch {source.text}: {exc}") from exc


def _project_name(requirement: str) -> str:
    return re.split(r"[\s\[;=<>~!]", requirement.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _host_pin(name: str) -> str:
    try:
        return f"{name}=={metadata.version(name)}"
    except metadata.PackageNotFoundError:
        return name


def _default_packages(packages: Sequence[str]) -> list[str]:
    """The user's packages, plus what the sandbox server needs and the user did not name.

    rlmesh's own dependencies and Gymnasium are pinned to the host's versions and installed in
    the packages layer, so a changed rlmesh wheel rebuilds only its own thin layer.
    """
    named = {_project_name(p) for p in packages}
    needed = [_project_name(r) for r in metadata.requires("rlmesh") or [] if "extra ==" not in r]
    extra = [_host_pin(name) for name in [*needed, "gymnasium"] if name not in named]
    return [*extra, *packages]


class SandboxSessionBase(Generic[RemoteT]):
    """An owned container serving one source, and the remote client connected to it.

    Args:
        source: Gymnasium id, ``gym://ID``, ``hf://owner/repo@sha:suite/task``, or a local
            directory with an ``env.py`` defining ``make_env``.
        base_image: Image to build on (default: ``rlmesh-base:bookworm`` or ``$RLMESH_BASE_IMAGE``).
        rlmesh_package: rlmesh to install inside: pip requirement, wheel path, or ``"local"``.
            Default: the host's exact version (a wheel of the host's checkout when unreleased).
        packages: pip requirements installed in the sandbox (Gymnasium is added, pinned to the
            host's version, unless named).
        imports: Module names imported at build time; a failing import fails the build.
        trust_remote_code: Allow an ``hf://`` source's repository code to run.
        allow_unpinned_hf: Allow an ``hf://`` source without a 40-hex commit revision.
        num_envs: Environments served (vector sessions).
        vectorization_mode: ``"sync"`` or ``"async"`` (vector sessions).
        build_memory: Memory limit for the image build, e.g. ``"2g"``.
        task: Task to select in a multi-task source (overrides the selector's task).
        config: A mapping, or a ``.toml``/``.json`` file (top-level or under ``[sandbox]``), with
            any of these keyword arguments; explicit arguments win.
        capabilities: Runtime features: ``"gpu"`` (all GPUs; refused clearly where the
            engine has none) and ``"network"`` (outbound network; off by default).
        override: A Dockerfile to build instead of the generated recipe (its directory is the
            build context), or a fragment (no ``FROM``) appended to the generated recipe as root.
        cwd: Directory that relative paths (local sources, config, override) start from.
        repo_root: rlmesh checkout used for ``rlmesh_package="local"`` and unreleased hosts.
        runtime: Driver name (``"docker"``, ``"podman"``, ``"cli"``, a plugin) or instance;
            default ``$RLMESH_RUNTIME`` or the first available.
        cpus: CPU limit in cores (``1.5``).
        memory: Memory limit in engine syntax (``"2g"``); past it the kernel's OOM killer ends
            the container and the pending call raises :class:`~rlmesh.errors.SandboxCrashed`.
        gpus: ``"all"`` or a list of device ids/UUIDs; the host needs the NVIDIA toolkit
            (docker) or CDI spec (podman).
        shm_size: Size of the container's ``/dev/shm`` (``"1g"``), for envs that share memory
            between worker processes.
        env: Environment variables of the container (``{"MUJOCO_GL": "osmesa"}``).
        system_packages: Debian packages installed into the image (``["libosmesa6"]``).
        strict_limits: A limit the engine cannot enforce (rootless podman on cgroup v1, Ray)
            raises; with ``False`` it is dropped with a warning instead.
        entry: For an ``image://`` source not built by ``rlmesh images build``: its env
            factory as ``"package.module:function"`` (the image must have rlmesh installed).
        startup_timeout: Seconds allowed from container start to a ready server.
        owner_timeout: Seconds without heartbeats after which the server inside stops itself.
        **gym_make_kwargs: Passed to ``gymnasium.make`` / ``make_vec`` / ``make_env``. A keyword
            that looks like a misspelt option (``memroy=``, ``package=``) raises ``TypeError``
            at once; pass an env argument of such a name as ``config={"make_kwargs": {...}}``.
    """

    _client_class: ClassVar[type[Any]]
    _vector: ClassVar[bool] = False
    #: Set by :meth:`build_image`: build, name the image this, and start nothing.
    _build_only: str | None = None
    #: For ``image://`` sources, learnt from the image: what it serves and the user it runs as.
    _image_source: dict[str, Any] | None = None
    _secret_owner: int | None = None

    def __init__(
        self,
        source: str,
        *,
        base_image: str | None = None,
        rlmesh_package: str | os.PathLike[str] | None = None,
        packages: Sequence[str] | None = None,
        imports: Sequence[str] | None = None,
        trust_remote_code: bool = False,
        allow_unpinned_hf: bool = False,
        num_envs: int = 1,
        vectorization_mode: str | None = None,
        build_memory: str | None = None,
        task: str | None = None,
        config: Mapping[str, object] | str | os.PathLike[str] | None = None,
        capabilities: Sequence[str] | None = None,
        override: str | os.PathLike[str] | None = None,
        cwd: str | os.PathLike[str] | None = None,
        repo_root: str | os.PathLike[str] | None = None,
        runtime: Any = None,
        startup_timeout: float = 120.0,
        owner_timeout: float = 15.0,
        cpus: float | None = None,
        memory: str | None = None,
        gpus: str | Sequence[str | int] | None = None,
        shm_size: str | None = None,
        env: Mapping[str, str] | None = None,
        system_packages: Sequence[str] | None = None,
        strict_limits: bool = True,
        entry: str | None = None,
        **gym_make_kwargs: object,
    ) -> None:
        self._client: Any = None
        self._finalizer: Any = None
        self.container_id: str | None = None
        _check_keywords(type(self).__name__, gym_make_kwargs, _SESSION_OPTIONS, forwarded=True)
        base_dir = Path(cwd) if cwd is not None else Path.cwd()
        given = {
            "base_image": base_image, "rlmesh_package": rlmesh_package, "packages": packages,
            "imports": imports, "build_memory": build_memory, "task": task,
            "capabilities": capabilities, "override": override, "repo_root": repo_root,
            "runtime": runtime, "vectorization_mode": vectorization_mode, "cpus": cpus,
            "memory": memory, "gpus": gpus, "shm_size": shm_size, "env": env,
            "system_packages": system_packages, "entry": entry,
        }
        settings = _load_config(config, base_dir)
        settings.update({k: v for k, v in given.items() if v is not None})
        settings.setdefault("make_kwargs", {})
        settings["make_kwargs"] = {**settings["make_kwargs"], **gym_make_kwargs}
        if trust_remote_code:
            settings["trust_remote_code"] = True
        if allow_unpinned_hf:
            settings["allow_unpinned_hf"] = True
        if strict_limits is not True:
            settings["strict_limits"] = strict_limits
        if num_envs != 1 or "num_envs" not in settings:
            settings["num_envs"] = num_envs
        if startup_timeout != 120.0 or "startup_timeout" not in settings:
            settings["startup_timeout"] = startup_timeout
        if owner_timeout != 15.0 or "owner_timeout" not in settings:
            settings["owner_timeout"] = owner_timeout
        self.settings = settings

        # Every refusal happens here, before anything is built or started.
        self.source = self._parse_source(source, base_dir)
        self._num_envs = int(settings["num_envs"])
        if self._num_envs < 1:
            raise SandboxError(f"num_envs must be at least 1, got {self._num_envs}")
        mode = settings.get("vectorization_mode") or "sync"
        if mode not in _VECTORIZATION_MODES:
            raise SandboxError(f"vectorization_mode must be one of {_VECTORIZATION_MODES}, got {mode!r}")
        self.vectorization_mode = mode
        requested = set(settings.get("capabilities") or ())
        unknown = requested - CAPABILITIES
        if unknown:
            raise SandboxError(f"unknown capabilities {sorted(unknown)}; supported: {sorted(CAPABILITIES)}")
        self.capabilities = frozenset(requested)
        self.resources = Resources.from_settings(settings, self.capabilities)
        from rlmesh_images.recipe import validate_system_package

        system_packages = settings.get("system_packages") or ()
        if isinstance(system_packages, str):
            raise SandboxError(f"system_packages must be a list of names, e.g. [{system_packages!r}]")
        self.system_packages = [validate_system_package(name) for name in system_packages]
        try:
            json.dumps(settings["make_kwargs"])
        except TypeError as exc:
            raise SandboxError(f"environment keyword arguments must be JSON values: {exc}") from exc

        # The recipe validates packages, imports and the override before any engine is touched.
        prebuilt = self.source.kind == "image"
        if prebuilt:
            self._refuse_build_options()
        elif settings.get("entry") is not None:
            raise SandboxError("entry= names the env factory of an image:// source; other sources bring "
                               "their own (a Gymnasium id, or make_env in env.py)")
        self.recipe = None if prebuilt else self._recipe(base_dir)

        from rlmesh.runtime import get_driver, reap_orphans

        self.driver = get_driver(settings.get("runtime"))
        try:
            reaped = reap_orphans(self.driver)
            if reaped:
                log.info("removed %d orphaned sandbox container(s)", len(reaped))
        except Exception as exc:  # reaping is housekeeping; never block a session on it
            log.warning("could not reap orphaned containers: %s", exc)
        self.session_id = uuid.uuid4().hex
        if self._build_only is not None:
            self.image = self._build_named(self._build_only)
            return
        self.image = self._build(self.recipe) if self.recipe is not None else self._prebuilt()
        self._start()

    @classmethod
    def build_image(cls, source: str, name: str, **options: Any) -> str:
        """Build the image of ``source`` ahead of time, name it ``name``, and start nothing.

        ``options`` are the session's (``packages``, ``system_packages``, ``runtime``, ...).
        The image records its source and settings in labels, so ``image://NAME`` runs it later
        without building. Returns ``name``.
        """
        from rlmesh_images.recipe import is_image_name

        if not is_image_name(name):
            raise SandboxError(f"invalid image name {name!r}; e.g. 'my-envs:halfcheetah'")
        session = cls.__new__(cls)
        session._build_only = name
        session.__init__(source, **options)  # type: ignore[misc]
        return name

    # --- build ----------------------------------------------------------------------------------

    def _parse_source(self, source: str, base_dir: Path) -> Source:
        """Parse and check the source (subclasses serving other kinds of sources override it)."""
        settings = self.settings
        return parse_source(
            source,
            trust_remote_code=bool(settings.get("trust_remote_code", False)),
            allow_unpinned_hf=bool(settings.get("allow_unpinned_hf", False)),
            task=settings.get("task"),
            cwd=base_dir,
        )

    def _source_files(self) -> dict[str, bytes]:
        """The files copied into the image's app directory."""
        if self.source.kind == "local" and self.source.path is not None:
            return _app_files(self.source.path)
        if self.source.kind == "hf":
            return _app_files(_fetch_hf(self.source))
        return {}

    def _recipe(self, base_dir: Path) -> ImageRecipe:
        from rlmesh_images.recipe import (
            sandbox_recipe,
            validate_import_name,
            validate_package_spec,
        )

        settings = self.settings
        packages = _default_packages([validate_package_spec(p) for p in settings.get("packages") or ()])
        imports = [validate_import_name(name) for name in settings.get("imports") or ()]
        override = settings.get("override")
        labels = {"io.rlmesh.managed": "true", "io.rlmesh.version": __version__}
        app_files = self._source_files()
        if override is not None:
            path = Path(base_dir, override)
            try:
                text = path.read_text()
            except OSError as exc:
                raise SandboxError(f"cannot read override {str(path)!r}: {exc}") from exc
            if any(line.strip().upper().startswith("FROM ") for line in text.splitlines()):
                # A complete Dockerfile: the user owns the recipe; its directory is the context.
                if settings.get("system_packages"):
                    raise SandboxError(f"system_packages apply to the generated recipe, not to the full "
                                       f"Dockerfile {str(path)!r}: install them there (apt-get install)")
                context = {k: v for k, v in _app_files(path.parent).items() if k != path.name}
                return ImageRecipe(dockerfile=text, context_files=context, labels=labels)
        package = resolve_rlmesh_package(settings.get("rlmesh_package"), repo_root=settings.get("repo_root"))
        recipe = sandbox_recipe(
            base_image=settings.get("base_image"),
            packages=packages,
            imports=imports,
            rlmesh_requirement=package.requirement,
            rlmesh_wheel=package.wheel,
            app_files=app_files,
            labels=labels,
            system_packages=self.system_packages,
        )
        if override is not None:  # a fragment: runs as root after everything else is installed
            marker = "\nUSER "
            head, _, tail = recipe.dockerfile.rpartition(marker)
            dockerfile = f"{head}\nUSER root\n{text.rstrip()}\n{marker.lstrip()}{tail}"
            recipe = ImageRecipe(dockerfile=dockerfile, context_files=recipe.context_files,
                                 repository=recipe.repository, labels=recipe.labels)
        return recipe

    def _refuse_build_options(self) -> None:
        built_in = [f"{key}=" for key in _BUILD_OPTIONS if self.settings.get(key)]
        if built_in:
            raise SandboxError(f"{', '.join(built_in)} shape an image at build time; {self.source.text} "
                               "runs an image built already (give them to `rlmesh images build`)")

    def _build_named(self, name: str) -> str:
        """Build the recipe with labels that describe it, and give the image ``name``."""
        assert self.recipe is not None, "image:// sources are built already"
        described = {
            SOURCE_LABEL: json.dumps(self.source.to_config(), sort_keys=True),
            SETTINGS_LABEL: json.dumps({"source": self.source.text, "packages": self.settings.get("packages") or [],
                                        "imports": self.settings.get("imports") or [],
                                        "system_packages": self.system_packages}, sort_keys=True),
        }
        # Labels are not part of the content hash: a LABEL line of their digest keeps two sources
        # whose Dockerfiles match (two Gymnasium ids, say) two images.
        digest = hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:20]
        recipe = dataclasses.replace(self.recipe, dockerfile=f"{self.recipe.dockerfile}LABEL {DIGEST_LABEL}={digest}\n",
                                     labels={**self.recipe.labels, **described})
        self.driver.tag_image(self._build(recipe), name)
        log.info("built %s for %s on %s", name, self.source.text, self.driver.name)
        return name

    def _prebuilt(self) -> str:
        """Check an ``image://`` image and learn from its labels what it serves."""
        from rlmesh.errors import RuntimeDriverError

        name = self.source.image
        assert name is not None
        if not self.driver.image_exists(name):
            raise SandboxError(f"no image {name!r} on {self.driver.name}: build it with `rlmesh images build "
                               f"SOURCE --tag {name}` (with --runtime {self.driver.name}), or load it there")
        try:
            info = self.driver.image_info(name)
        except RuntimeDriverError as exc:
            raise SandboxError(f"cannot read image {name!r}: {exc}") from exc
        entry = self.settings.get("entry")
        if entry is not None:
            self._image_source = {"kind": "entry", "entry": check_entry(entry)}
        elif SOURCE_LABEL in info.labels:
            built_with = info.labels.get(VERSION_LABEL, "unknown")
            if built_with != __version__:
                raise VersionMismatchError(
                    f"image {name} was built with rlmesh {built_with}, this host runs {__version__}; "
                    f"rebuild it here (`rlmesh images build ... --tag {name}`) or run rlmesh=={built_with}")
            self._image_source = json.loads(info.labels[SOURCE_LABEL])
        else:
            raise SandboxError(f"image {name} was not built by `rlmesh images build`; to run it, name its "
                               "env factory with entry='package.module:function' (the image needs rlmesh)")
        if self.settings.get("task"):
            self._image_source = {**self._image_source, "task": self.settings["task"]}
        self._secret_owner = _uid_of(info.user, name)
        return name

    def _build(self, recipe: ImageRecipe) -> str:
        from rlmesh.progress import progress_lines

        if self.driver.image_exists(recipe.tag):
            log.debug("image %s is cached", recipe.tag)
            return str(recipe.tag)
        with progress_lines(f"Building sandbox image for {self.source.text} ({self.driver.name})") as line:
            tag: str = self.driver.build(recipe, memory=self.settings.get("build_memory"), progress=line)
        return tag

    # --- start ----------------------------------------------------------------------------------

    def _server_config(self) -> dict[str, Any]:
        from rlmesh_images.recipe import APP_DIR

        return {
            "source": self._image_source or self.source.to_config(),
            "vector": self._vector,
            "num_envs": self.num_envs,
            "vectorization_mode": self.vectorization_mode,
            "make_kwargs": self.settings["make_kwargs"],
            "port": _CONTAINER_PORT,
            "owner_timeout": float(self.settings["owner_timeout"]),
            "app_dir": APP_DIR,
        }

    def _start(self) -> None:
        from rlmesh_images.recipe import SANDBOX_UID

        from rlmesh.runtime import RunSpec, owner_labels
        from rlmesh.runtime.cleanup import own_container, watch

        # Fresh keys per container: the server's secret goes in as a secret file, the host keeps
        # the client's pair only until the client has read it.
        with tempfile.TemporaryDirectory(prefix="rlmesh-keys-") as scratch:
            keys = SessionKeys.new(scratch)
            spec = RunSpec(
                image=self.image,
                command=list(COMMAND),
                env={**self.resources.env, CONFIG_VARIABLE: json.dumps(self._server_config())},
                labels=owner_labels(self.session_id),
                ports=[_CONTAINER_PORT],
                network="network" in self.capabilities,
                **self.resources.run_options(),
                secret_files=keys.server_files,
                secret_owner=SANDBOX_UID if self._secret_owner is None else self._secret_owner,
            )
            watch(self.driver)  # before run(): a kill during the start leaves no container either
            handle = self.driver.run(spec)
            self.container_id = handle.id
            self._finalizer = own_container(self, self.driver, handle.id)
            self.address = handle.addresses[_CONTAINER_PORT]
            try:
                self._client = self._connect(float(self.settings["startup_timeout"]), keys)
                #: The keys this session's client presents, in memory: more clients can attach
                #: with them (``spread_vector_env``'s multi-endpoint env does).
                self.client_keys = ClientKeys.resolve(keys.server_key, keys.client_key)
            except BaseException:
                self._finalizer()
                raise
        self._client._connection.explain_loss = self.loss_explainer
        log.info("sandbox %s ready at %s (container %s)", self.source.text, self.address, handle.id[:12])

    @property
    def loss_explainer(self) -> Callable[[str], Exception]:
        """Turns a lost connection to this sandbox into :class:`SandboxCrashed` (for
        ``Connection.explain_loss``; more clients of the sandbox, as ``spread_vector_env``'s,
        use it too). It holds the session weakly: a connection's heartbeat thread must not
        keep the session from being collected."""
        crashed = weakref.WeakMethod(self._crashed)
        return lambda message: method(message) if (method := crashed()) is not None else ConnectionError(message)

    def _connect(self, timeout: float, keys: SessionKeys) -> Any:
        deadline = time.monotonic() + timeout
        assert self.container_id is not None
        while True:
            health = self.driver.health(self.container_id, log_lines=40)
            if not health.running:
                raise ContainerError(
                    f"the sandbox container for {self.source.text} exited with code "
                    f"{health.exit_code} during startup; last log lines:\n{health.logs_tail}",
                    exit_code=health.exit_code, logs=health.logs_tail)
            try:
                return self._client_class(self.address, connect_timeout=0.5,
                                          server_key=keys.server_key, client_key=keys.client_key)
            except VersionMismatchError as exc:
                fix = (f"install rlmesh=={__version__} in the image {self.source.image}, or rebuild it "
                       "with `rlmesh images build`" if self.source.kind == "image" else
                       "pass rlmesh_package='local' (from a checkout) or a wheel of the host's version")
                raise SandboxError(f"{exc}\nThe sandbox runs a different rlmesh than this host: {fix}") from exc
            except ConnectionError:
                if time.monotonic() >= deadline:
                    logs = self.driver.logs(self.container_id, tail=40)
                    raise ContainerError(
                        f"the sandbox server for {self.source.text} did not become ready within "
                        f"{timeout:g} s; last log lines:\n{logs}", logs=logs) from None

    def _crashed(self, message: str) -> Exception:
        """Why the connection to the container was lost, asked of the engine; then remove it."""
        assert self.container_id is not None
        deadline = time.monotonic() + _EXIT_GRACE
        health = self.driver.health(self.container_id, log_lines=40)
        while health.running and time.monotonic() < deadline:  # the engine may not know yet
            time.sleep(0.05)
            health = self.driver.health(self.container_id, log_lines=40)
        if health.running:
            return ConnectionError(f"{message}; its container {self.container_id[:12]} still runs")
        code, limit = health.exit_code, self.resources.memory
        signal_name = _signal_name(code)
        what = f"exited with code {code}" + (f" ({signal_name})" if signal_name else "")
        if health.oom_killed:
            what = "was killed by the kernel's OOM killer: out of memory" + (
                f" under memory={limit!r}; raise memory=" if limit else "")
        elif signal_name == "SIGKILL" and limit:
            # Some engines (podman on cgroup v1) do not report OOM kills; say what is likely.
            what += (f" under memory={limit!r}: most likely the kernel's OOM killer, though the engine "
                     "did not report one; raise memory=")
        error = SandboxCrashed(f"the sandbox container for {self.source.text} {what}; last log lines:\n"
                               f"{health.logs_tail}", exit_code=code, oom_killed=health.oom_killed,
                               logs=health.logs_tail)
        if self._finalizer is not None:
            self._finalizer()
        return error

    # --- use and close --------------------------------------------------------------------------

    @property
    def client(self) -> RemoteT:
        """The owned remote client."""
        if self._client is None:
            raise SandboxError("this sandbox session is closed")
        result: RemoteT = self._client
        return result

    @property
    def closed(self) -> bool:
        return self._client is None

    def close(self) -> None:
        """Close the client and stop and remove the container. Idempotent."""
        client, self._client = self._client, None
        try:
            if client is not None:
                client.close()
        finally:
            if self._finalizer is not None:
                self._finalizer()

    def __enter__(self) -> Any:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._client is None else getattr(self, "address", "starting")
        return f"<{type(self).__name__} {getattr(self, 'source', None) and self.source.text} {state}>"

    # --- the env surface, shared by single and vector sessions ---------------------------------

    @property
    def env_contract(self) -> EnvContract:
        contract: EnvContract = self.client.env_contract  # type: ignore[attr-defined]
        return contract

    @property
    def num_envs(self) -> int:
        """Environments served (1 for a single-env session)."""
        return self._num_envs

    def _surface(self) -> Surface:
        surface: Surface = self.client._surface()  # type: ignore[attr-defined]
        return surface

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        """Call the env's method ``name`` in the container (for vector sessions: on every lane,
        a tuple of results); arguments and results go through the codec."""
        return self.client.call(name, *args, **kwargs)  # type: ignore[attr-defined]

    def get_attr(self, name: str) -> Any:
        """The env's attribute ``name`` (for vector sessions: a tuple, one per lane)."""
        return self.client.get_attr(name)  # type: ignore[attr-defined]


#: The sandbox options: keyword arguments of a session. Any other keyword goes to the env.
_SESSION_OPTIONS = _keyword_names(SandboxSessionBase.__init__)
#: Settings a config file or mapping may carry: the session's options, and the env's keywords.
_SETTING_KEYS = (_SESSION_OPTIONS - {"config"}) | {"make_kwargs"}


class SandboxEnvBase(SandboxSessionBase[Any], EnvSurface, Generic[ValueT, ActionT]):
    """A sandbox session serving one environment; use it like a Gymnasium env."""

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None
              ) -> tuple[ValueT, dict[str, object]]:
        result: tuple[ValueT, dict[str, object]] = self.client.reset(seed=seed, options=options)
        return result

    def step(self, action: ActionT) -> tuple[ValueT, float, bool, bool, dict[str, object]]:
        result: tuple[ValueT, float, bool, bool, dict[str, object]] = self.client.step(action)
        return result

    def render(self, *, env_index: int = 0) -> Any:
        """Render a frame of the env (in the mode it was made with)."""
        return self.client.render(env_index=env_index)

    def set_attr(self, name: str, value: Any) -> None:
        """Set the env's attribute ``name`` in the container."""
        self.client.set_attr(name, value)

    def get_wrapper_attr(self, name: str) -> Any:
        """The attribute ``name`` of the env or the first of its wrappers that has it."""
        return self.client.get_wrapper_attr(name)


# EnvSurface is named again so that it stays ahead of Generic in the MRO: a flavour that adds
# gymnasium.vector.VectorEnv then keeps the surface's metadata and spaces, not VectorEnv's
# class attributes of the same names.
class SandboxVectorEnvBase(SandboxSessionBase[Any], VectorEnvSurface, EnvSurface, Generic[ValueT, ActionT]):
    """A sandbox session serving ``num_envs`` environments as one vector env."""

    _vector = True

    def __init__(self, source: str, num_envs: int = 1, *, vectorization_mode: str = "sync",
                 **kwargs: Any) -> None:
        super().__init__(source, num_envs=num_envs, vectorization_mode=vectorization_mode, **kwargs)

    def reset(self, *, seed: int | list[int] | None = None, options: dict[str, object] | None = None
              ) -> tuple[ValueT, dict[str, object]]:
        result: tuple[ValueT, dict[str, object]] = self.client.reset(seed=seed, options=options)
        return result

    def step(self, actions: ActionT) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, object]]:
        result: tuple[ValueT, ValueT, ValueT, ValueT, dict[str, object]] = self.client.step(actions)
        return result

    def step_async(self, actions: ActionT) -> None:
        """Send a step and return at once; collect it with :meth:`step_wait`."""
        self.client.step_async(actions)

    def step_wait(self, timeout: float | None = None) -> tuple[ValueT, ValueT, ValueT, ValueT, dict[str, object]]:
        result: tuple[ValueT, ValueT, ValueT, ValueT, dict[str, object]] = self.client.step_wait(timeout)
        return result

    def reset_async(self, seed: int | list[int] | None = None, options: dict[str, object] | None = None) -> None:
        """Send a reset and return at once; collect it with :meth:`reset_wait`."""
        self.client.reset_async(seed=seed, options=options)

    def reset_wait(self, timeout: float | None = None) -> tuple[ValueT, dict[str, object]]:
        result: tuple[ValueT, dict[str, object]] = self.client.reset_wait(timeout)
        return result

    def render(self, *, env_index: int | None = None) -> Any:
        """One frame per lane (a tuple), as Gymnasium's vector envs; ``env_index`` picks one."""
        return self.client.render(env_index=env_index)

    def set_attr(self, name: str, values: Any) -> None:
        """Set attribute ``name`` on every lane: one value for all, or a list with one per lane."""
        self.client.set_attr(name, values)

    def call_lanes(self, lane_ids: Sequence[int], name: str, /, *args: Any, **kwargs: Any) -> tuple[Any, ...]:
        """Call the env's method ``name`` on the lanes ``lane_ids`` only: one result per lane id."""
        result: tuple[Any, ...] = self.client.call_lanes(lane_ids, name, *args, **kwargs)
        return result

    def get_attr_lanes(self, lane_ids: Sequence[int], name: str) -> tuple[Any, ...]:
        """The attribute ``name`` of the lanes ``lane_ids`` only: one value per lane id."""
        result: tuple[Any, ...] = self.client.get_attr_lanes(lane_ids, name)
        return result

    def set_attr_lanes(self, lane_ids: Sequence[int], name: str, values: Any) -> None:
        """Set attribute ``name`` on the lanes ``lane_ids`` only: one value for all, or one per lane id."""
        self.client.set_attr_lanes(lane_ids, name, values)
