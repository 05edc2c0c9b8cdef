"""``call`` and ``set_attr`` requests: methods and attributes of a served env, by name.

A vector env answers with one result per lane, as Gymnasium's ``VectorEnv.call`` does; a single
env with its one result. Names are checked before anything runs: private names (a leading
``_``), the requests that have their own message (``reset``, ``step``, ``close``) and, for
``set_attr``, the attributes the client fixed at connect time (spaces, metadata) are refused.
Values travel through the codec like every other payload, so only plain data crosses.

An optional ``lanes`` field (distinct lane ids of a vector env, in the caller's order) limits a
request to those lanes: the call runs on ``env.envs[i]`` of each, never on the others, and the
result holds one entry per requested lane. Without it (or ``None``) every lane is concerned.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from rlmesh.protocol.endpoint import ErrorReply
from rlmesh.protocol.messages import ErrorKind

__all__ = ["run_call", "run_set_attr", "check_name"]

#: Requests of their own: a call by name would bypass their checks and bookkeeping.
_OWN_REQUESTS = frozenset({"reset", "step", "close"})
#: What the client read once at connect time; changing it under a client would break it.
_CONTRACT = frozenset({"observation_space", "action_space", "single_observation_space",
                       "single_action_space", "metadata", "render_mode", "num_envs", "spec"})


def check_name(name: Any, *, setting: bool = False) -> str:
    """``name`` if a client may use it, else an :class:`ErrorReply` saying why not."""
    if not isinstance(name, str) or not name:
        raise ErrorReply(ErrorKind.PROTOCOL, f"an attribute name must be a non-empty string, got {name!r}")
    if name.startswith("_"):
        raise ErrorReply(ErrorKind.REFUSED, f"{name!r} is private: names starting with '_' cannot be "
                         "called or set remotely; expose what you need under a public name")
    if name in _OWN_REQUESTS:
        raise ErrorReply(ErrorKind.REFUSED, f"{name!r} cannot be called by name; use {name}() directly")
    if setting and name in _CONTRACT:
        raise ErrorReply(ErrorKind.REFUSED, f"{name!r} is part of what clients read at connect time "
                         "and cannot be changed while serving; serve an env built with the value you want")
    return name


def _attribute(env: Any, name: str) -> Any:
    getter = getattr(env, "get_wrapper_attr", None)  # through Gymnasium wrappers, as Gymnasium does
    try:
        return getter(name) if callable(getter) else getattr(env, name)
    except AttributeError as exc:
        raise ErrorReply(ErrorKind.NO_ATTRIBUTE, f"{type(env).__name__} has no attribute {name!r} ({exc})") from exc


def _call_one(env: Any, name: str, args: Sequence[Any], kwargs: dict[str, Any]) -> Any:
    value = _attribute(env, name)
    return value(*args, **kwargs) if callable(value) else value


def _sub_envs(env: Any, what: str, lanes: list[int] | None = None) -> list[Any]:
    """The sub-envs of a vector env (those of ``lanes``, if given); refused if it keeps no list."""
    envs = getattr(env, "envs", None)
    if envs is None:
        if lanes is None:
            raise ErrorReply(ErrorKind.NO_ATTRIBUTE, (
                f"the served vector env ({type(env).__name__}) has no {what}() and no sub-env list (envs); "
                "serve a gymnasium.vector env (e.g. from gymnasium.make_vec) to use it"))
        # Running it on every lane instead would touch lanes the caller meant to leave alone.
        raise ErrorReply(ErrorKind.NO_ATTRIBUTE, (
            f"{what} on some lanes only needs a vector env with a sub-env list (envs); the served "
            f"{type(env).__name__} has none. Serve a SyncVectorEnv (or a list of envs), or {what} "
            "on every lane"))
    envs = list(envs)
    return envs if lanes is None else [envs[lane] for lane in lanes]


def _lane_ids(payload: dict[str, Any], num_envs: int) -> list[int] | None:
    """The request's ``lanes`` (``None``: every lane), checked against ``num_envs``."""
    lanes = payload.get("lanes")
    if lanes is None:
        return None
    # bool is an int subclass, but True as a lane id is a client bug, not lane 1.
    if not isinstance(lanes, (list, tuple)) or not all(type(lane) is int for lane in lanes):
        raise ErrorReply(ErrorKind.PROTOCOL, f"lanes must be a list of int lane ids, got {lanes!r}")
    wrong = [lane for lane in lanes if not 0 <= lane < num_envs]
    if wrong:
        raise ErrorReply(ErrorKind.PROTOCOL, f"lane ids {wrong} out of range for {num_envs} lanes "
                         f"(valid: 0 to {num_envs - 1})")
    if len(set(lanes)) != len(lanes):
        twice = sorted({lane for lane in lanes if lanes.count(lane) > 1})
        raise ErrorReply(ErrorKind.PROTOCOL, f"lane ids {twice} appear more than once in lanes")
    return list(lanes)


def run_call(env: Any, vector: bool, payload: Any) -> Any:
    """The result of ``env.<name>(*args, **kwargs)`` (or the attribute, if it is not callable)."""
    if not isinstance(payload, dict):
        raise ErrorReply(ErrorKind.PROTOCOL, "a call request needs {name, args, kwargs}")
    name = check_name(payload.get("name"))
    args, kwargs = list(payload.get("args") or ()), dict(payload.get("kwargs") or {})
    lanes = _lane_ids(payload, int(env.num_envs) if vector else 1)
    if not vector:  # its one lane (0) is the env itself
        if lanes is None:
            return _call_one(env, name, args, kwargs)
        return tuple(_call_one(env, name, args, kwargs) for _ in lanes)
    if lanes is not None:
        return tuple(_call_one(sub, name, args, kwargs) for sub in _sub_envs(env, f"call({name!r})", lanes))
    if callable(getattr(env, "call", None)):
        try:
            return tuple(env.call(name, *args, **kwargs))
        except AttributeError as exc:  # Gymnasium's vector envs look the name up per sub-env
            raise ErrorReply(ErrorKind.NO_ATTRIBUTE, f"{type(env).__name__}: {exc}") from exc
    return tuple(_call_one(sub, name, args, kwargs) for sub in _sub_envs(env, "call"))


def run_set_attr(env: Any, vector: bool, num_envs: int, payload: Any) -> None:
    """Set attribute ``name``: to ``value`` on a single env, to ``values[i]`` on lane ``i``."""
    if not isinstance(payload, dict):
        raise ErrorReply(ErrorKind.PROTOCOL, "a set_attr request needs {name, values}")
    name = check_name(payload.get("name"), setting=True)
    values = payload.get("values")
    lanes = _lane_ids(payload, num_envs if vector else 1)
    if lanes is not None:
        if not isinstance(values, (list, tuple)) or len(values) != len(lanes):
            raise ErrorReply(ErrorKind.PROTOCOL, f"set_attr needs one value per requested lane ({len(lanes)})")
        if not vector:  # its one lane (0) is the env itself
            for value in values:
                _set_one(env, name, value)
            return
        for sub, value in zip(_sub_envs(env, f"set_attr({name!r})", lanes), values):
            _set_one(sub, name, value)
        return
    if not vector:
        _set_one(env, name, values)
        return
    if not isinstance(values, (list, tuple)) or len(values) != num_envs:
        raise ErrorReply(ErrorKind.PROTOCOL, f"set_attr needs one value per lane ({num_envs})")
    if callable(getattr(env, "set_attr", None)):
        env.set_attr(name, list(values))
        return
    for sub, value in zip(_sub_envs(env, "set_attr"), values):
        _set_one(sub, name, value)


def _set_one(env: Any, name: str, value: Any) -> None:
    setter = getattr(env, "set_wrapper_attr", None)  # through Gymnasium wrappers, as Gymnasium does
    setter(name, value) if callable(setter) else setattr(env, name, value)
