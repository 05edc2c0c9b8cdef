"""Sandboxed models: a policy served from its own container, evaluated like any model.

The session reuses the sandbox machinery of environments (image recipe, runtime driver,
container ownership and cleanup, startup wait); only the source (a policy file or directory)
and the in-container server (:class:`~rlmesh.server.model.ModelServer`) differ.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, Generic, TypeVar

from rlmesh.errors import SourceError
from rlmesh.model.results import RunResult
from rlmesh.model.runner import ModelBase, ModelSpec
from rlmesh.sandbox.session import _CONTAINER_PORT, SandboxSessionBase, _app_files, _check_keywords, _keyword_names
from rlmesh.sandbox.sources import Source

__all__ = ["SandboxModelBase", "DEFAULT_ENTRY"]

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")

#: Where a directory source's policy lives unless ``entry`` says otherwise.
DEFAULT_ENTRY = "policy.py:predict"
# Session options that make sense for a model (the rest configure environments).
_OPTIONS = frozenset({
    "base_image", "rlmesh_package", "packages", "imports", "build_memory", "config",
    "capabilities", "override", "cwd", "repo_root", "runtime", "startup_timeout", "owner_timeout",
    "cpus", "memory", "gpus", "shm_size", "env", "system_packages", "strict_limits",
})


def _split_entry(entry: str, source: str) -> tuple[str, str]:
    module, _, name = entry.partition(":")
    name = name or "predict"
    if not module.endswith(".py") or Path(module).is_absolute() or ".." in Path(module).parts:
        raise SourceError(f"entry {entry!r} for {source!r} must name a .py file inside the source "
                          f"directory, like {DEFAULT_ENTRY!r}")
    if not name.isidentifier():
        raise SourceError(f"entry {entry!r} for {source!r}: {name!r} is not a Python name")
    return module, name


class SandboxModelBase(SandboxSessionBase[Any], Generic[ObsT, ActT]):
    """An owned container serving a policy; ``run(env, seeds)`` evaluates it like a ``Model``.

    Args:
        source: A policy file (``agents/policy.py``, optionally ``agents/policy.py:act``) or a
            directory holding the policy and its modules.
        entry: For directory sources, ``"file.py:name"`` (default ``"policy.py:predict"``).
            ``name`` is a function, an object with ``predict``, or a class instantiated
            without arguments.
        spec: What the model expects (:class:`~rlmesh.model.ModelSpec`), checked before a run.
        batched: The policy takes whole batches on vector envs (see ``ModelBase``).
        **options: Sandbox options: ``packages``, ``imports``, ``runtime``, ``base_image``,
            ``rlmesh_package``, ``capabilities``, ``startup_timeout``, ``owner_timeout``,
            ``cpus``, ``memory``, ``gpus``, ``shm_size``, ``env``, ``system_packages``, ... (as
            for sandboxed environments).
    """

    _model_class: ClassVar[type[ModelBase[Any, Any]]]

    def __init__(self, source: str | os.PathLike[str], *, entry: str | None = None,
                 spec: ModelSpec | None = None, batched: bool = False, **options: Any) -> None:
        known = _OPTIONS | _keyword_names(SandboxModelBase.__init__)
        _check_keywords(type(self).__name__, options, known, forwarded=False)
        self._entry_option = entry
        self.entry = ""
        self.batched = batched
        super().__init__(os.fspath(source), **options)
        self.model = self._model_class(self.client.predict, spec=spec, batched=batched)

    def _parse_source(self, source: str, base_dir: Path) -> Source:
        text = source.strip()
        path, name = Path(base_dir, text).expanduser(), None
        if not path.exists() and ":" in text:
            head, _, name = text.rpartition(":")
            path = Path(base_dir, head).expanduser()
        if path.is_file():
            if self._entry_option is not None:
                raise SourceError(f"entry= is for directory sources; for a file write '{text}:NAME'")
            _, name = _split_entry(f"{path.name}:{name or 'predict'}", source)
            self.entry = f"{path.name}:{name}"
            return Source("model", source, path=path.resolve())
        if path.is_dir() and name is None:
            module, name = _split_entry(self._entry_option or DEFAULT_ENTRY, source)
            if not (path / module).is_file():
                raise SourceError(f"the policy source {str(path)!r} has no {module}; pass "
                                  "entry='FILE.py:NAME' naming the file that defines the policy")
            self.entry = f"{module}:{name}"
            return Source("model", source, path=path.resolve())
        raise SourceError(f"cannot find the policy {source!r}: give a Python file "
                          "('agents/policy.py' or 'agents/policy.py:act') or a directory")

    def _source_files(self) -> dict[str, bytes]:
        path = self.source.path
        assert path is not None
        return {path.name: path.read_bytes()} if path.is_file() else _app_files(path)

    def _server_config(self) -> dict[str, Any]:
        from rlmesh_images.recipe import APP_DIR

        return {
            "kind": "model",
            "entry": self.entry,
            "backend": self._model_class._backend.name,
            "batched": self.batched,
            "port": _CONTAINER_PORT,
            "owner_timeout": float(self.settings["owner_timeout"]),
            "app_dir": APP_DIR,
        }

    def predict(self, observation: ObsT) -> ActT:
        """Call the sandboxed policy once."""
        action: ActT = self.model.predict(observation)
        return action

    def run(self, env: Any, seeds: int | Sequence[int | None] | None = None, **kwargs: Any) -> RunResult:
        """Evaluate the sandboxed policy on ``env``; arguments as for ``ModelBase.run``."""
        return self.model.run(env, seeds, **kwargs)
