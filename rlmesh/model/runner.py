"""Model: evaluate a policy against any env (remote, vector, sandboxed or local Gymnasium).

``Model(predict).run(env, seeds=[...])`` plays one episode per seed and returns a
:class:`~rlmesh.model.results.RunResult`. The same seed always starts the same episode, whether the
env is local, remote, or a lane of a vector env, so runs are reproducible and comparable.

Why one module of this size: the single-env and the vector-lane episode loops share the spec
checks, the policy call and the telemetry; results are in :mod:`rlmesh.model.results`.
"""

from __future__ import annotations

import numbers
import operator
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

from rlmesh.backends import PLAIN, Backend
from rlmesh.client.remote import (
    AttachedClient,
    KeyPath,
    RemoteEnv,
    RemoteEnvBase,
    RemoteVectorEnv,
    RemoteVectorEnvBase,
    _RemoteClient,
    connect,
)
from rlmesh.errors import ModelError, SpecMismatchError
from rlmesh.model.recording import NoRecorder, recorder_for
from rlmesh.model.results import EpisodeResult, LatencyStats, RunResult
from rlmesh.wire.spaces import (
    BoxSpec,
    DictSpec,
    DiscreteSpec,
    MultiBinarySpec,
    MultiDiscreteSpec,
    SpaceSpec,
    TextSpec,
    TupleSpec,
)
from rlmesh.wire.tensor import Tensor

__all__ = ["ModelBase", "ModelSpec", "Model"]

ObsT = TypeVar("ObsT")
ActT = TypeVar("ActT")

_Clients = tuple[type[RemoteEnvBase[Any, Any]], type[RemoteVectorEnvBase[Any, Any]]]
_SPEC_TYPES = (BoxSpec, DiscreteSpec, MultiBinarySpec, MultiDiscreteSpec, TextSpec, DictSpec, TupleSpec)
_NEXT_STEP, _SAME_STEP, _DISABLED = "NextStep", "SameStep", "Disabled"


# --- specs -----------------------------------------------------------------------------------------

def as_space_spec(space: Any) -> SpaceSpec:
    """A :data:`SpaceSpec` from a spec, an rlmesh space or a Gymnasium space."""
    if isinstance(space, _SPEC_TYPES):
        return space
    spec = getattr(space, "spec", None)
    if isinstance(spec, _SPEC_TYPES) and type(space).__module__.startswith("rlmesh"):
        return spec
    try:
        from rlmesh.backends.gym_spaces import spec_from_gymnasium
    except ImportError:  # pragma: no cover - only without NumPy/Gymnasium
        raise TypeError(f"cannot describe {space!r}: give an rlmesh SpaceSpec or install gymnasium") from None
    return spec_from_gymnasium(space)


@dataclass(frozen=True)
class ModelSpec:
    """What a model expects of an env; either space may be left out (``None``: not checked).

    Spaces are rlmesh :data:`SpaceSpec` values or Gymnasium spaces (converted on creation).
    For vector envs they describe one lane (``single_observation_space``). Boxes must agree
    in shape and dtype (bounds are not compared), discrete spaces in size and start.
    """

    observation_space: Any = None
    action_space: Any = None

    def __post_init__(self) -> None:
        for name in ("observation_space", "action_space"):
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, as_space_spec(value))


def describe_spec(spec: SpaceSpec) -> str:
    """A short readable form of a spec, e.g. ``Box(float32, shape=(4,))`` or ``Discrete(2)``."""
    if isinstance(spec, BoxSpec):
        return f"Box({spec.dtype}, shape={spec.shape})"
    if isinstance(spec, DiscreteSpec):
        return f"Discrete({spec.n})" if spec.start == 0 else f"Discrete({spec.n}, start={spec.start})"
    if isinstance(spec, MultiBinarySpec):
        return f"MultiBinary({spec.shape})"
    if isinstance(spec, MultiDiscreteSpec):
        return f"MultiDiscrete({spec.nvec.tolist()})"
    if isinstance(spec, TextSpec):
        return f"Text(min_length={spec.min_length}, max_length={spec.max_length})"
    if isinstance(spec, DictSpec):
        return "Dict(" + ", ".join(f"{k}: {describe_spec(v)}" for k, v in spec.spaces.items()) + ")"
    return "Tuple(" + ", ".join(describe_spec(s) for s in spec.spaces) + ")"


def _fits(expected: SpaceSpec, served: SpaceSpec) -> bool:
    if type(expected) is not type(served):
        return False
    if isinstance(expected, BoxSpec) and isinstance(served, BoxSpec):
        return expected.shape == served.shape and expected.dtype == served.dtype
    if isinstance(expected, DiscreteSpec) and isinstance(served, DiscreteSpec):
        return (expected.n, expected.start) == (served.n, served.start)
    if isinstance(expected, DictSpec) and isinstance(served, DictSpec):
        return (set(expected.spaces) == set(served.spaces)
                and all(_fits(v, served.spaces[k]) for k, v in expected.spaces.items()))
    if isinstance(expected, TupleSpec) and isinstance(served, TupleSpec):
        return (len(expected.spaces) == len(served.spaces)
                and all(_fits(a, b) for a, b in zip(expected.spaces, served.spaces)))
    return expected == served


# --- values ----------------------------------------------------------------------------------------

def _numpy_values(value: Any) -> Any:
    """``value`` with NumPy array leaves: what local Gymnasium envs take as actions."""
    from rlmesh.backends.numpy import BACKEND

    return BACKEND.convert(value)


def _lane(batch: Any, index: int) -> Any:
    """Lane ``index`` of a batched value (NumPy, Torch, rlmesh Tensor, list, or containers)."""
    if isinstance(batch, dict):
        return {k: _lane(v, index) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_lane(v, index) for v in batch)
    if isinstance(batch, Tensor):
        if batch.ndim == 1:
            return batch.tolist()[index]
        row = batch.nbytes // batch.shape[0]
        return Tensor(batch.raw[index * row:(index + 1) * row].tobytes(), batch.dtype, batch.shape[1:])
    return batch[index]


def _as_list(value: Any) -> list[Any]:
    tolist = getattr(value, "tolist", None)
    result = tolist() if tolist is not None else list(value)
    return result if isinstance(result, list) else [result]


def _success(info: Any) -> bool | None:
    if isinstance(info, dict):
        for key in ("is_success", "success"):
            if key in info and info[key] is not None:
                return bool(info[key])
    return None


def _lane_success(info: Any, index: int) -> bool | None:
    """Success of one lane from Gymnasium's vector info layout (values plus ``_key`` masks)."""
    if not isinstance(info, dict):
        return None
    for key in ("is_success", "success"):
        if key not in info:
            continue
        mask = info.get("_" + key)
        if mask is not None and not _as_list(mask)[index]:
            continue
        return bool(_as_list(info[key])[index])
    return None


# --- envs ------------------------------------------------------------------------------------------

@dataclass
class _Env:
    """An env as a run sees it, whatever was passed in."""

    env: Any
    name: str
    vector: bool
    num_envs: int
    remote: bool
    observation_spec: SpaceSpec | None
    action_spec: SpaceSpec | None
    autoreset: str = _NEXT_STEP
    single_action_space: Any = None
    owner: Any = None  # what close_env closes: a sandbox session, a client, or the env


def _resolve(env: Any, clients: _Clients, keys: dict[str, KeyPath | None]) -> tuple[_Env, bool]:
    """Wrap ``env``; the flag says whether we opened it (an address)."""
    opened = False
    owner = env
    if isinstance(env, str):
        env = connect(env, clients=clients, **keys)
        owner, opened = env, True
    elif any(key is not None for key in keys.values()):
        raise ValueError("server_key/client_key apply when env is an address; a client or sandbox "
                         f"passed in ({type(env).__name__}) is connected already, with its own keys")
    elif isinstance(getattr(env, "client", None), AttachedClient):  # a sandbox session
        env = env.client
        if not isinstance(env, _RemoteClient):
            raise TypeError(f"{type(owner).__name__} does not serve an environment")
    if isinstance(env, _RemoteClient):
        contract = env.env_contract
        vector = isinstance(env, RemoteVectorEnvBase)
        return _Env(env, f"{contract.env_id or 'remote env'} at {env.address}", vector, contract.num_envs,
                    True, contract.single_observation_space, contract.single_action_space,
                    contract.autoreset_mode or _NEXT_STEP, None, owner), opened
    if not (callable(getattr(env, "reset", None)) and callable(getattr(env, "step", None))):
        raise TypeError(f"cannot run a model on {type(env).__name__}: pass an address, a RemoteEnv, a "
                        "RemoteVectorEnv, a sandbox session or a Gymnasium env")
    vector = hasattr(env, "num_envs") and hasattr(env, "single_action_space")
    observation_space = env.single_observation_space if vector else env.observation_space
    action_space = env.single_action_space if vector else env.action_space
    mode = (getattr(env, "metadata", None) or {}).get("autoreset_mode", _NEXT_STEP)
    spec = getattr(env, "spec", None)
    return _Env(env, getattr(spec, "id", None) or type(env).__name__, vector,
                int(env.num_envs) if vector else 1, False, _try_spec(observation_space),
                _try_spec(action_space), str(getattr(mode, "value", mode)), action_space, owner), opened


def _try_spec(space: Any) -> SpaceSpec | None:
    try:
        return as_space_spec(space)
    except (TypeError, ImportError):
        return None


# --- running ---------------------------------------------------------------------------------------

def _plan(seeds: int | Sequence[int | None] | None, episodes: int | None) -> list[int | None]:
    if episodes is not None and episodes < 0:
        raise ValueError(f"episodes must be at least 0, got {episodes}")
    if seeds is None:
        return [None] * (1 if episodes is None else episodes)
    if isinstance(seeds, (int, numbers.Integral)):  # a base seed: one consecutive seed per episode
        return [int(seeds) + i for i in range(1 if episodes is None else episodes)]
    # Gymnasium wants Python ints: NumPy integers (e.g. from np.arange) are converted.
    plan = [None if seed is None else operator.index(seed) for seed in seeds]
    if episodes is not None and episodes != len(plan):
        raise ValueError(f"got {len(plan)} seeds for {episodes} episodes; give one seed per "
                         "episode, a single base seed, or leave episodes out")
    return plan


@dataclass
class _Episode:
    index: int
    seed: int | None
    start: float
    steps: int = 0
    total: float = 0.0

    def result(self, terminated: bool, truncated: bool, success: bool | None, now: float) -> EpisodeResult:
        return EpisodeResult(self.index, self.seed, self.steps, self.total, terminated, truncated,
                             success, now - self.start)


@dataclass
class _Run:
    """Limits and telemetry of one run."""

    max_steps: int | None
    deadline: float | None
    predict_times: list[float] = field(default_factory=list)
    step_times: list[float] = field(default_factory=list)
    env_steps: int = 0
    recorder: NoRecorder = field(default_factory=NoRecorder)  # record_video's per-episode videos

    def out_of_time(self, now: float) -> bool:
        return self.deadline is not None and now >= self.deadline


class ModelBase(Generic[ObsT, ActT]):
    """A policy to evaluate, with a value flavour given by the subclass.

    Args:
        source: The policy: a callable ``predict(observation) -> action`` or an object with a
            ``predict`` method.
        spec: What the model expects (:class:`ModelSpec`); checked against the env before the
            first step.
        batched: The policy takes a whole batch of observations (one row per vector lane) and
            returns a batch of actions. Default: the source's ``batched`` attribute, else False
            (a vector env then calls the policy once per lane).

    Use :class:`rlmesh.Model` (plain values), :class:`rlmesh.numpy.Model` or
    :class:`rlmesh.torch.Model`.
    """

    _backend: ClassVar[Backend] = PLAIN
    #: The client classes of the same flavour, for envs given as an address.
    _clients: ClassVar[_Clients] = (RemoteEnv, RemoteVectorEnv)

    def __init__(self, source: Callable[[ObsT], ActT] | Any, spec: ModelSpec | None = None, *,
                 batched: bool | None = None) -> None:
        predict = source if callable(source) and not callable(getattr(source, "predict", None)) \
            else getattr(source, "predict", None)
        if not callable(predict):
            raise TypeError(f"a model needs a predict callable or an object with predict(); "
                            f"got {type(source).__name__}")
        if spec is not None and not isinstance(spec, ModelSpec):
            raise TypeError(f"spec must be a ModelSpec, got {type(spec).__name__}")
        self.source = source
        self.spec = spec
        self.batched = bool(getattr(source, "batched", False) if batched is None else batched)
        self._predict: Callable[[Any], Any] = predict
        self._convert = self._backend.convert

    def predict(self, observation: ObsT) -> ActT:
        """Call the policy on one observation (or one batch, for batched models)."""
        action: ActT = self._predict(observation)
        return action

    def __repr__(self) -> str:
        name = getattr(self.source, "__qualname__", type(self.source).__name__)
        return f"<{type(self).__name__} {name}{' batched' if self.batched else ''}>"

    # --- run ------------------------------------------------------------------------------------

    def run(
        self,
        env: Any,
        seeds: int | Sequence[int | None] | None = None,
        *,
        episodes: int | None = None,
        max_steps: int | None = None,
        max_seconds: float | None = None,
        close_env: bool | None = None,
        server_key: KeyPath | None = None,
        client_key: KeyPath | None = None,
        record_video: str | os.PathLike[str] | None = None,
    ) -> RunResult:
        """Play episodes on ``env`` and report them.

        Args:
            env: An address (``"127.0.0.1:5555"``; single or vector endpoint), a remote client,
                a sandbox session, or a Gymnasium env or vector env.
            seeds: One reset seed per episode, or a base seed (``seed + i`` for episode ``i``).
                Same seeds, same episodes: on a vector env each episode still starts from
                ``reset(seed=...)`` of its lane.
            episodes: Number of episodes (default: one per seed, or 1).
            max_steps: Cut each episode after this many steps (reported as truncated).
            max_seconds: Stop the run after this much wall time; running episodes end
                truncated, episodes not started yet are skipped.
            close_env: Close the env afterwards. Default: only if ``env`` was an address.
            server_key, client_key: For an address of a keyed server: its public certificate
                and this client's secret one (default ``$RLMESH_SERVER_KEY`` /
                ``$RLMESH_CLIENT_KEY``); see :doc:`/security`.
            record_video: A folder to write one video per episode into, ``episode-<index>.mp4``
                (``index`` as in the results). The env must render ``rgb_array`` frames; needs
                ``pip install "rlmesh[video]"``.
        """
        plan = _plan(seeds, episodes)
        if max_steps is not None and max_steps < 1:
            raise ValueError(f"max_steps must be at least 1, got {max_steps}")
        handle, opened = _resolve(env, self._clients, {"server_key": server_key, "client_key": client_key})
        try:
            self._check_spec(handle)
            recorder = recorder_for(record_video, handle.env, vector=handle.vector)
            start = time.perf_counter()
            run = _Run(max_steps, None if max_seconds is None else start + max_seconds, recorder=recorder)
            try:
                if handle.vector:
                    results = self._run_vector(handle, plan, run)
                else:
                    results = self._run_single(handle, plan, run)
            finally:
                recorder.close()
            duration = time.perf_counter() - start
        finally:
            if close_env or (close_env is None and opened):
                handle.owner.close()
        results.sort(key=lambda e: e.index)
        return RunResult(tuple(results), LatencyStats.from_seconds(run.predict_times),
                         LatencyStats.from_seconds(run.step_times), duration, run.env_steps)

    def _check_spec(self, handle: _Env) -> None:
        spec = self.spec
        if spec is None:
            return
        problems = []
        for what, expected, served in (("observation", spec.observation_space, handle.observation_spec),
                                       ("action", spec.action_space, handle.action_spec)):
            if expected is None:
                continue
            if served is None:
                problems.append(f"the env's {what} space cannot be described, so it cannot be checked")
            elif not _fits(expected, served):
                problems.append(f"{what} space: the model expects {describe_spec(expected)}, "
                                f"the env serves {describe_spec(served)}")
        if problems:
            raise SpecMismatchError(
                f"{self!r} does not fit {handle.name}: " + "; ".join(problems)
                + ". Run it on an env with matching spaces, or fix the model's ModelSpec")

    def _call(self, observation: Any, run: _Run, where: Callable[[], str],
              episode: int | None, step: int | None) -> Any:
        begin = time.perf_counter()
        try:
            action = self._predict(observation)
        except Exception as exc:
            raise ModelError(f"the model raised {type(exc).__name__} {where()}: {exc}",
                             episode=episode, step=step) from exc
        run.predict_times.append(time.perf_counter() - begin)
        return action

    def _env_action(self, action: Any, handle: _Env) -> Any:
        # Remote envs take any encodable value; local Gymnasium envs want NumPy.
        return action if handle.remote else _numpy_values(action)

    def _run_single(self, handle: _Env, plan: list[int | None], run: _Run) -> list[EpisodeResult]:
        env, convert, results = handle.env, self._convert, []
        for index, seed in enumerate(plan):
            if run.out_of_time(time.perf_counter()):
                break
            observation, _ = env.reset(seed=seed)
            episode = _Episode(index, seed, time.perf_counter())
            run.recorder.begin(0, index, run.recorder.frames())
            terminated = truncated = False
            success: bool | None = None
            while True:
                now = time.perf_counter()
                if (run.max_steps is not None and episode.steps >= run.max_steps) or run.out_of_time(now):
                    truncated = True
                    break
                action = self._call(
                    convert(observation), run,
                    lambda: f"in episode {index} (seed {seed}) at step {episode.steps}", index, episode.steps)
                begin = time.perf_counter()
                observation, reward, terminated, truncated, info = env.step(self._env_action(action, handle))
                run.step_times.append(time.perf_counter() - begin)
                run.recorder.add(0, run.recorder.frames())
                run.env_steps += 1
                episode.steps += 1
                episode.total += float(reward)
                if terminated or truncated:
                    success = _success(info)
                    break
            results.append(episode.result(bool(terminated), bool(truncated), success, time.perf_counter()))
            run.recorder.end(0)
        return results

    def _batch_actions(self, actions: list[Any], handle: _Env) -> Any:
        if handle.remote:
            return actions  # the server stacks per-lane actions into the vector env's batch
        from rlmesh.backends.gym_spaces import stack

        return stack(handle.single_action_space, [_numpy_values(a) for a in actions], handle.num_envs)

    def _predict_lanes(self, observation: Any, lanes: list[_Episode | None], run: _Run,
                       handle: _Env) -> Any:
        converted = self._convert(observation)
        if self.batched:
            active = [lane for lane in lanes if lane is not None]
            first = min(active, key=lambda lane: lane.index) if active else None

            def batch_where() -> str:
                running = ", ".join(f"{lane.index} (seed {lane.seed}) at step {lane.steps}" for lane in active)
                return f"on a batch of episodes {running}"

            action = self._call(converted, run, batch_where, first.index if first else None,
                                first.steps if first else None)
            return self._env_action(action, handle)
        actions = []
        for i, lane in enumerate(lanes):
            def lane_where(i: int = i, lane: _Episode | None = lane) -> str:
                if lane is None:
                    return f"on idle lane {i}"
                return f"in episode {lane.index} (seed {lane.seed}) at step {lane.steps} (lane {i})"

            actions.append(self._call(_lane(converted, i), run, lane_where, lane.index if lane else None,
                                      lane.steps if lane else None))
        return self._batch_actions(actions, handle)

    def _reset_mask(self, mask: list[bool], handle: _Env) -> Any:
        if handle.remote and self._backend is PLAIN:
            return Tensor(bytes(mask), "bool", (len(mask),))
        import numpy as np

        return np.array(mask, dtype=np.bool_)

    def _reset_lanes(self, handle: _Env, seeds: list[int | None], mask: list[bool] | None) -> Any:
        """Reset all lanes (or those in ``mask``), each with its own seed."""
        options = None if mask is None else {"reset_mask": self._reset_mask(mask, handle)}
        try:
            observation, _ = handle.env.reset(seed=None if mask is None and not any(
                s is not None for s in seeds) else seeds, options=options)
        except (ConnectionError, TimeoutError):
            raise
        except Exception as exc:
            raise RuntimeError(
                f"{handle.name} could not reset its lanes one by one with their own seeds "
                f"({type(exc).__name__}: {exc}); a vector env made with vectorization_mode='sync' "
                "or 'async' can (Gymnasium's native vector envs cannot), or run without seeds"
            ) from exc
        return observation

    def _run_vector(self, handle: _Env, plan: list[int | None], run: _Run) -> list[EpisodeResult]:
        env, n, mode = handle.env, handle.num_envs, handle.autoreset
        results: list[EpisodeResult] = []
        upcoming = iter(enumerate(plan))

        def next_episode(now: float) -> _Episode | None:
            item = next(upcoming, None)
            return None if item is None else _Episode(item[0], item[1], now)

        now = time.perf_counter()
        lanes = [next_episode(now) for _ in range(n)]
        observation = self._reset_lanes(handle, [lane.seed if lane else None for lane in lanes], None)
        now = time.perf_counter()
        frames = run.recorder.frames()
        for i, lane in enumerate(lanes):
            if lane is not None:
                lane.start = now
                run.recorder.begin(i, lane.index, frames)
        autoresetting = [False] * n  # NextStep: the lane's next step is Gymnasium's reset step
        while any(lane is not None for lane in lanes):
            if run.out_of_time(time.perf_counter()):
                now = time.perf_counter()
                results += [lane.result(False, True, None, now) for lane in lanes if lane and lane.steps]
                break
            actions = self._predict_lanes(observation, lanes, run, handle)
            begin = time.perf_counter()
            observation, rewards, terminations, truncations, info = env.step(actions)
            now = time.perf_counter()
            run.step_times.append(now - begin)
            run.env_steps += n
            rewards, terminations, truncations = _as_list(rewards), _as_list(terminations), _as_list(truncations)
            frames = run.recorder.frames()
            to_reset: list[int] = []
            for i, lane in enumerate(lanes):
                if autoresetting[i]:
                    autoresetting[i] = False
                    if lane is not None:
                        lane.start = now
                        run.recorder.begin(i, lane.index, frames)
                    continue
                done = bool(terminations[i] or truncations[i])
                if lane is None:
                    if done and mode == _DISABLED:
                        to_reset.append(i)
                    elif done and mode == _NEXT_STEP:
                        autoresetting[i] = True
                    continue
                lane.steps += 1
                lane.total += float(rewards[i])
                if not (done and mode == _SAME_STEP):  # a SameStep lane shows its next episode already
                    run.recorder.add(i, frames)
                capped = run.max_steps is not None and lane.steps >= run.max_steps and not done
                if not (done or capped):
                    continue
                final_info = info.get("final_info") if mode == _SAME_STEP and isinstance(info, dict) else info
                results.append(lane.result(bool(terminations[i]), bool(truncations[i]) or capped,
                                           _lane_success(final_info, i), now))
                run.recorder.end(i)
                lanes[i] = new = next_episode(now)
                # Seeded episodes start from reset(seed=...) of their lane, like a single env;
                # unseeded ones may use the env's own autoreset.
                if (new is not None and (capped or new.seed is not None)) or (done and mode == _DISABLED):
                    to_reset.append(i)
                elif done and mode == _NEXT_STEP:
                    autoresetting[i] = True
                elif new is not None:  # reset within this step (SameStep): the frame is its first
                    run.recorder.begin(i, new.index, frames)
            if to_reset:
                mask = [i in to_reset for i in range(n)]
                seeds = [lane.seed if lane is not None and mask[i] else None for i, lane in enumerate(lanes)]
                observation = self._reset_lanes(handle, seeds, mask)
                now = time.perf_counter()
                frames = run.recorder.frames()
                for i in to_reset:
                    lane = lanes[i]
                    if lane is not None:
                        lane.start = now
                        run.recorder.begin(i, lane.index, frames)
        return results


class Model(ModelBase[Any, Any]):
    """Model whose policy works in plain values (primitives and :class:`rlmesh.Tensor` leaves).

    Example:
        >>> from rlmesh import Model
        >>> result = Model(lambda observation: 0).run("127.0.0.1:5555", seeds=[0, 1])  # doctest: +SKIP
    """
