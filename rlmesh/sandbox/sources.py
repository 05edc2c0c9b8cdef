"""Sandbox sources: what a source string means, the rules it must pass, and how it makes an env.

Forms:

- ``CartPole-v1`` or ``gym://CartPole-v1``: a Gymnasium id (``module:Env-v0`` ids work too).
- ``hf://owner/repo@<40-hex sha>:suite/task``: an EnvHub repository on the Hugging Face Hub
  whose ``env.py`` defines ``make_env(...)``; the revision must be pinned unless
  ``allow_unpinned_hf=True``, and running its code needs ``trust_remote_code=True``.
- a local directory with the same layout (``./my_env``, ``/abs/path``, optionally
  ``PATH:suite/task``): for offline use and tests.
- ``image://NAME``: an image built ahead of time (``rlmesh images build``), or any image with
  rlmesh installed whose env factory the session names (``entry="module:factory"``).

Parsing and rule checks run on the host before anything is built; :func:`make_env` runs inside
the sandbox (or anywhere else) to build the env a source describes.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlmesh.errors import SourceError
from rlmesh.usercode import load_module_file

__all__ = ["Source", "parse_source", "make_env", "check_entry", "ENV_FILE"]

log = logging.getLogger(__name__)

#: The file an EnvHub-layout source must contain, defining ``make_env``.
ENV_FILE = "env.py"

_GYM_ID = re.compile(r"^(?:[A-Za-z_][\w.]*:)?(?:[\w.-]+/)?[\w.-]+-v\d+$")
_HF_NAME = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_HF = re.compile(
    rf"^hf://(?P<owner>{_HF_NAME})/(?P<repo>{_HF_NAME})"
    r"(?:@(?P<revision>[A-Za-z0-9._/-]{1,128}))?"
    r"(?::(?P<selector>[^\s]+))?$"
)
_SHA = re.compile(r"^[0-9a-f]{40}$")
_ENTRY = re.compile(r"^[A-Za-z_][\w]*(?:\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*$")
_SELECTOR_PART = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")


@dataclass(frozen=True)
class Source:
    """A parsed source. ``kind`` is ``"gym"``, ``"hf"``, ``"local"`` or ``"image"``."""

    kind: str
    text: str
    env_id: str | None = None
    repo_id: str | None = None
    revision: str | None = None
    path: Path | None = None
    suite: str | None = None
    task: str | None = None
    #: For ``image://NAME``: the image.
    image: str | None = None

    @property
    def runs_repository_code(self) -> bool:
        return self.kind in ("hf", "local")

    def to_config(self) -> dict[str, Any]:
        """What the sandboxed server needs to rebuild the env (repository code lives in the app dir)."""
        return {"kind": self.kind, "env_id": self.env_id, "suite": self.suite, "task": self.task}


def _selector(text: str | None, source: str) -> tuple[str | None, str | None]:
    if not text:
        return None, None
    parts = text.split("/")
    if len(parts) > 2 or not all(_SELECTOR_PART.match(p) for p in parts):
        raise SourceError(
            f"invalid selector {text!r} in source {source!r}; expected 'suite' or 'suite/task' "
            "made of letters, digits, '_', '-' and '.'"
        )
    return parts[0], parts[1] if len(parts) == 2 else None


def parse_source(
    source: str,
    *,
    trust_remote_code: bool = False,
    allow_unpinned_hf: bool = False,
    task: str | None = None,
    cwd: str | Path | None = None,
) -> Source:
    """Parse ``source`` and enforce the safety rules; raises :class:`SourceError` with the fix."""
    if not isinstance(source, str) or not source.strip() or any(ord(c) < 32 for c in source):
        raise SourceError(f"source must be a non-empty single-line string, got {source!r}")
    text = source.strip()
    if task is not None and not _SELECTOR_PART.match(task):
        raise SourceError(f"invalid task {task!r}; use letters, digits, '_', '-' and '.'")

    if text.startswith("hf://"):
        match = _HF.match(text)
        if not match:
            raise SourceError(
                f"invalid Hugging Face source {text!r}; expected "
                "'hf://owner/repo@<40-hex commit sha>:suite/task'"
            )
        revision = match["revision"]
        if not (revision and _SHA.match(revision)) and not allow_unpinned_hf:
            pinned = f"hf://{match['owner']}/{match['repo']}@<full 40-hex commit sha>"
            raise SourceError(
                f"source {text!r} is not pinned to a commit, so its code could change under you; "
                f"pin it as '{pinned}' or pass allow_unpinned_hf=True"
            )
        if not trust_remote_code:
            raise SourceError(
                f"source {text!r} runs Python code from its repository; review it and pass "
                "trust_remote_code=True to allow that"
            )
        suite, selected_task = _selector(match["selector"], text)
        return Source("hf", text, repo_id=f"{match['owner']}/{match['repo']}", revision=revision,
                      suite=suite, task=task or selected_task)

    if text.startswith("image://"):
        from rlmesh_images.recipe import is_image_name

        name = text[len("image://"):]
        if not is_image_name(name):
            raise SourceError(f"invalid image name {name!r} in {source!r}; e.g. 'image://my-envs:halfcheetah'")
        return Source("image", source, image=name, task=task)

    if text.startswith("gym://"):
        text = text[len("gym://"):]
        if not _GYM_ID.match(text):
            raise SourceError(f"invalid Gymnasium id {text!r} in {source!r}; e.g. 'gym://CartPole-v1'")
        return Source("gym", source, env_id=text)

    base = Path(cwd) if cwd is not None else Path.cwd()
    path_text, _, selector = text.partition(":") if not Path(base, text).is_dir() else (text, "", "")
    directory = Path(base, path_text).expanduser()
    if directory.is_dir():
        if not (directory / ENV_FILE).is_file():
            raise SourceError(f"local source {str(directory)!r} has no {ENV_FILE} defining make_env()")
        suite, selected_task = _selector(selector, text)
        return Source("local", source, path=directory.resolve(), suite=suite, task=task or selected_task)

    if _GYM_ID.match(text):
        return Source("gym", source, env_id=text)
    raise SourceError(
        f"cannot understand source {source!r}: not a Gymnasium id like 'CartPole-v1', not "
        "'gym://ID', not 'hf://owner/repo@sha:suite/task', and not an existing directory"
    )


# --- inside the sandbox --------------------------------------------------------------------------

def _load_make_env(app_dir: Path) -> Any:
    try:
        module = load_module_file(app_dir / ENV_FILE, "rlmesh_user_env")
    except ImportError as exc:
        raise SourceError(str(exc)) from exc
    make = getattr(module, "make_env", None)
    if not callable(make):
        raise SourceError(f"{app_dir / ENV_FILE} does not define make_env()")
    return make


def check_entry(entry: str) -> str:
    """Return ``entry`` if it names a factory as ``package.module:function``."""
    if not isinstance(entry, str) or not _ENTRY.match(entry):
        raise SourceError(f"entry={entry!r} must name an env factory as 'package.module:function', "
                          "e.g. 'my_envs.factory:make_env'")
    return entry


def _import_factory(entry: str) -> Any:
    module_name, _, name = check_entry(entry).partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SourceError(f"entry {entry!r}: cannot import {module_name}: {exc}") from exc
    factory = getattr(module, name, None)
    if not callable(factory):
        raise SourceError(f"entry {entry!r}: {module_name} has no callable {name}")
    return factory


def _call_make_env(make: Any, num_envs: int, mode: str, kwargs: Mapping[str, Any]) -> Any:
    # EnvHub factories conventionally take n_envs / use_async_envs; pass them only when named,
    # since a catch-all **kwargs usually forwards to the env constructor.
    parameters = inspect.signature(make).parameters
    call = dict(kwargs)
    if "n_envs" in parameters:
        call.setdefault("n_envs", num_envs)
    if "use_async_envs" in parameters:
        call.setdefault("use_async_envs", mode == "async")
    return make(**call)


def _select(result: Any, suite: str | None, task: str | None) -> Any:
    if not isinstance(result, Mapping):
        return result
    if suite is None:
        if len(result) != 1:
            raise SourceError(f"make_env() returned suites {sorted(map(str, result))}; select one "
                              "with ':suite/task' in the source")
        suite = next(iter(result))
    if suite not in result:
        raise SourceError(f"suite {suite!r} not found; available: {sorted(map(str, result))}")
    tasks = result[suite]
    if not isinstance(tasks, Mapping):
        return tasks
    keys = {str(k): k for k in tasks}
    if task is None:
        if len(tasks) != 1:
            raise SourceError(f"suite {suite!r} has tasks {sorted(keys)}; select one with "
                              "':suite/task' or task=")
        return next(iter(tasks.values()))
    if task not in keys:
        raise SourceError(f"task {task!r} not found in suite {suite!r}; available: {sorted(keys)}")
    return tasks[keys[task]]


def _constant(env: Any) -> Any:
    return lambda: env


def _is_vector(env: Any) -> bool:
    return hasattr(env, "num_envs") and hasattr(env, "single_action_space")


def make_env(
    config: Mapping[str, Any],
    *,
    num_envs: int = 1,
    vector: bool = False,
    vectorization_mode: str = "sync",
    app_dir: str | Path = ".",
    make_kwargs: Mapping[str, Any] | None = None,
) -> Any:
    """Build the env a source config describes (``vector`` asks for a vector env)."""
    kwargs = dict(make_kwargs or {})
    kind = config["kind"]
    if kind == "gym":
        import gymnasium

        if vector:
            return gymnasium.make_vec(config["env_id"], num_envs=num_envs,
                                      vectorization_mode=vectorization_mode, **kwargs)
        return gymnasium.make(config["env_id"], **kwargs)

    make = _import_factory(config["entry"]) if kind == "entry" else _load_make_env(Path(app_dir))
    env = _select(_call_make_env(make, num_envs if vector else 1, vectorization_mode, kwargs),
                  config.get("suite"), config.get("task"))
    if vector and not _is_vector(env):
        from gymnasium.vector import AsyncVectorEnv, SyncVectorEnv

        def one() -> Any:
            return _select(_call_make_env(make, 1, "sync", kwargs), config.get("suite"), config.get("task"))

        if vectorization_mode == "async":  # each worker process makes its own env
            env.close()
            return AsyncVectorEnv([one] * num_envs)
        envs = [env] + [one() for _ in range(num_envs - 1)]
        return SyncVectorEnv([_constant(e) for e in envs])
    if not vector and _is_vector(env):
        if env.num_envs == 1 and hasattr(env, "envs"):
            return env.envs[0]
        raise SourceError(f"the source serves a vector env of {env.num_envs} envs; use SandboxVectorEnv")
    return env
