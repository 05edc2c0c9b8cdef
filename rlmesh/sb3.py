"""Stable-Baselines3: any Gymnasium vector env as an SB3 ``VecEnv`` (:func:`as_vec_env`).

Works with rlmesh's vector clients (remote, multi-endpoint, sandboxed) of the NumPy flavour and
with local Gymnasium vector envs. SB3 wants its own semantics, which the adapter provides
whatever autoreset mode the vector env uses:

- a finished lane is reset at once: ``step_wait`` returns the new episode's first observation,
  the final one is in ``infos[i]["terminal_observation"]`` and ``infos[i]["TimeLimit.truncated"]``
  tells a time limit from a real end (``NextStep`` and ``Disabled`` envs get a
  ``reset(options={"reset_mask": done})`` of the finished lanes for it, ``SameStep`` envs carry
  it in their infos already);
- ``step_async`` / ``step_wait`` use the vector env's own ``step_async`` / ``step_wait`` where
  it has them (rlmesh's clients, ``AsyncVectorEnv``), so the request is out while SB3 computes;
- ``env_method`` / ``get_attr`` / ``set_attr`` go through the vector env's ``call`` /
  ``get_attr`` / ``set_attr`` (for remote envs: on the server, through the codec); with
  ``indices`` for some lanes only, through its ``call_lanes`` / ``get_attr_lanes`` /
  ``set_attr_lanes`` where it has them (rlmesh's vector clients), so the other lanes are not
  touched.

Needs ``stable_baselines3``: ``pip install "rlmesh[sb3]"``.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence
from copy import deepcopy
from typing import Any

try:
    import numpy as np
    from gymnasium import spaces
    from stable_baselines3.common.vec_env import VecEnv
    from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvObs, VecEnvStepReturn
except ImportError as exc:  # the one place that says which extra brings it
    raise ImportError(f'rlmesh.sb3 needs Stable-Baselines3 ({exc.name} is missing): '
                      'pip install "rlmesh[sb3]"') from exc

__all__ = ["as_vec_env", "VecEnvAdapter"]

log = logging.getLogger(__name__)

_MODES = ("NextStep", "SameStep", "Disabled")


def as_vec_env(vector_env: Any) -> VecEnvAdapter:
    """``vector_env`` (a Gymnasium vector env with NumPy values) as an SB3 ``VecEnv``.

    Closing the returned env closes ``vector_env``.

    Example:
        >>> from stable_baselines3 import PPO
        >>> from rlmesh.numpy import RemoteVectorEnv
        >>> from rlmesh.sb3 import as_vec_env
        >>> venv = as_vec_env(RemoteVectorEnv("127.0.0.1:5555"))  # doctest: +SKIP
        >>> PPO("MlpPolicy", venv).learn(10_000)  # doctest: +SKIP
    """
    return VecEnvAdapter(vector_env)


class VecEnvAdapter(VecEnv):
    """The SB3 ``VecEnv`` over a Gymnasium vector env that :func:`as_vec_env` returns."""

    def __init__(self, vector_env: Any) -> None:
        for name in ("num_envs", "single_observation_space", "single_action_space", "reset", "step"):
            if not hasattr(vector_env, name):
                raise TypeError(f"as_vec_env needs a Gymnasium vector env; {type(vector_env).__name__} "
                                f"has no {name}")
        observation_space, action_space = vector_env.single_observation_space, vector_env.single_action_space
        if not isinstance(observation_space, spaces.Space) or not isinstance(action_space, spaces.Space):
            raise TypeError(f"as_vec_env needs NumPy values and Gymnasium spaces; {type(vector_env).__name__} "
                            f"has {type(observation_space).__name__} spaces. Use the NumPy flavour: "
                            "rlmesh.numpy.RemoteVectorEnv / MultiEndpointVectorEnv / SandboxVectorEnv")
        self.venv = vector_env
        mode = (getattr(vector_env, "metadata", None) or {}).get("autoreset_mode", "NextStep")
        self.autoreset_mode = str(getattr(mode, "value", mode))
        if self.autoreset_mode not in _MODES:
            raise ValueError(f"unknown autoreset mode {mode!r} of {type(vector_env).__name__}; "
                             f"expected one of {_MODES}")
        self._async = callable(getattr(vector_env, "step_async", None)) and callable(
            getattr(vector_env, "step_wait", None))
        self._actions: Any = None
        self._waiting = False
        super().__init__(int(vector_env.num_envs), observation_space, action_space)

    # --- stepping -------------------------------------------------------------------------------

    def reset(self) -> VecEnvObs:
        self._drop_pending_step()
        seeds = None if all(seed is None for seed in self._seeds) else list(self._seeds)
        obs, info = self.venv.reset(seed=seeds, options=self._shared_options())
        self.reset_infos = _info_list(info, self.num_envs)
        self._reset_seeds()
        self._reset_options()
        return obs  # type: ignore[no-any-return]

    def step_async(self, actions: np.ndarray) -> None:
        if self._async:
            self.venv.step_async(actions)
        else:
            self._actions = actions
        self._waiting = True

    def step_wait(self) -> VecEnvStepReturn:
        self._waiting = False
        if self._async:
            obs, rewards, terminated, truncated, info = self.venv.step_wait()
        else:
            obs, rewards, terminated, truncated, info = self.venv.step(self._actions)
        terminated = np.asarray(terminated, dtype=bool)
        truncated = np.asarray(truncated, dtype=bool)
        dones = terminated | truncated
        if self.autoreset_mode == "SameStep":
            infos = self._same_step_infos(info, dones)
        else:
            infos = _info_list(info, self.num_envs)
            if dones.any():
                obs = self._reset_finished(obs, dones, infos)
        for lane, info_of_lane in enumerate(infos):  # in every lane's info, as SB3's own VecEnvs do
            info_of_lane["TimeLimit.truncated"] = bool(truncated[lane] and not terminated[lane])
        return obs, np.asarray(rewards, dtype=np.float32), dones, infos

    def _reset_finished(self, obs: Any, dones: np.ndarray, infos: list[dict[str, Any]]) -> Any:
        """SB3's immediate autoreset for envs that reset on the next step, or never."""
        finished = np.flatnonzero(dones).tolist()
        for lane in finished:
            infos[lane]["terminal_observation"] = _lane(obs, lane)
        new_obs, reset_info = self.venv.reset(options={"reset_mask": dones.copy()})
        reset_infos = _info_list(reset_info, self.num_envs)
        for lane in finished:
            self.reset_infos[lane] = reset_infos[lane]
        return new_obs

    def _same_step_infos(self, info: dict[str, Any], dones: np.ndarray) -> list[dict[str, Any]]:
        """A finished lane's info is its final step's; what came with its reset goes to reset_infos."""
        infos = _info_list(info, self.num_envs)
        if not dones.any():
            return infos
        final_obs = info.get("final_obs")
        final_infos = _info_list(info.get("final_info") or {}, self.num_envs)
        for lane in np.flatnonzero(dones).tolist():
            reset_info = {k: v for k, v in infos[lane].items() if k not in ("final_obs", "final_info")}
            self.reset_infos[lane] = reset_info
            infos[lane] = final_infos[lane]
            if final_obs is not None:
                infos[lane]["terminal_observation"] = final_obs[lane]
        return infos

    def _drop_pending_step(self) -> None:
        # SB3: a reset cancels a step that was started; the vector env still wants it collected.
        if self._waiting and self._async:
            self.venv.step_wait()
        self._waiting = False

    def _shared_options(self) -> dict[str, Any] | None:
        options = [dict(o) for o in self._options]
        if not any(options):
            return None
        if any(o != options[0] for o in options[1:]):
            raise ValueError("a Gymnasium vector env takes one options dict for all lanes; "
                             "set_options() with a single dict")
        return options[0]

    # --- by name --------------------------------------------------------------------------------

    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        lanes = self._lanes(indices)
        if attr_name == "render_mode":  # the same for every lane, and known without a request
            return [self.venv.render_mode for _ in lanes]
        if self._some(lanes) and self._targets_lanes():
            unique = list(dict.fromkeys(lanes))  # SB3 allows a lane twice; a lane request does not
            try:
                value_of = dict(zip(unique, self.venv.get_attr_lanes(unique, attr_name)))
                return [value_of[lane] for lane in lanes]
            except AttributeError:
                # A served vector env without a sub-env list cannot target lanes: read every lane,
                # as for a local env (a name that is really missing raises again there).
                log.debug("get_attr(%r) of lanes %s: reading every lane instead", attr_name, lanes,
                          exc_info=True)
        values = self._by_name("get_attr", attr_name)
        return [values[i] for i in lanes]

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        lanes = self._lanes(indices)
        if not self._some(lanes):
            self._by_name("set_attr", attr_name, [value] * self.num_envs)
            return
        if self._targets_lanes():
            unique = list(dict.fromkeys(lanes))
            try:
                self.venv.set_attr_lanes(unique, attr_name, [value] * len(unique))
                return
            except AttributeError:  # no sub-env list on the server: write every lane, as below
                log.debug("set_attr(%r) on lanes %s: writing every lane instead", attr_name, lanes,
                          exc_info=True)
        # The vector env sets every lane: the others get their current value back.
        values = list(self._by_name("get_attr", attr_name))
        for lane in lanes:
            values[lane] = value
        self._by_name("set_attr", attr_name, values)

    def env_method(self, method_name: str, *method_args: Any, indices: VecEnvIndices = None,
                   **method_kwargs: Any) -> list[Any]:
        lanes = self._lanes(indices)
        if not self._some(lanes):
            results = self._by_name("call", method_name, *method_args, **method_kwargs)
            return [results[i] for i in lanes]
        if self._targets_lanes():  # runs on those lanes' sub-envs only, wherever they are
            return list(self.venv.call_lanes(lanes, method_name, *method_args, **method_kwargs))
        sub_envs = getattr(self.venv, "envs", None)
        if sub_envs is None:
            raise NotImplementedError(
                f"env_method({method_name!r}) on some lanes only: {type(self.venv).__name__} has neither "
                "call_lanes() nor a sub-env list (envs), and its call() runs on every lane; call it "
                "without indices, or use a vector env with sub-envs (e.g. SyncVectorEnv)")
        return [sub_envs[i].get_wrapper_attr(method_name)(*method_args, **method_kwargs) for i in lanes]

    def _lanes(self, indices: VecEnvIndices) -> list[int]:
        return [int(i) for i in self._get_indices(indices)]

    def _some(self, lanes: list[int]) -> bool:
        """Whether ``lanes`` leaves out a lane (so a call on every lane would touch others)."""
        return sorted(lanes) != list(range(self.num_envs))

    def _targets_lanes(self) -> bool:
        return all(callable(getattr(self.venv, name, None))
                   for name in ("call_lanes", "get_attr_lanes", "set_attr_lanes"))

    def env_is_wrapped(self, wrapper_class: type[Any], indices: VecEnvIndices = None) -> list[bool]:
        lanes = self._get_indices(indices)
        sub_envs = getattr(self.venv, "envs", None)
        if sub_envs is None:  # a remote env's wrappers live on the server: a class cannot cross
            return [False for _ in lanes]
        from stable_baselines3.common.env_util import is_wrapped

        return [is_wrapped(sub_envs[i], wrapper_class) for i in lanes]

    def _by_name(self, method: str, *args: Any, **kwargs: Any) -> Any:
        function = getattr(self.venv, method, None)
        if not callable(function):
            raise AttributeError(f"{type(self.venv).__name__} has no {method}(); SB3's {method} needs a "
                                 "vector env that has it (Gymnasium's and rlmesh's vector envs do)")
        return function(*args, **kwargs)

    # --- the rest -------------------------------------------------------------------------------

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            warnings.warn(f"the render mode is {self.render_mode}, but get_images() needs 'rgb_array' frames",
                          stacklevel=2)
            return [None] * self.num_envs
        return list(self.venv.render())

    def close(self) -> None:
        self._drop_pending_step()
        self.venv.close()


# --- Gymnasium's vector infos as SB3's list of dicts ------------------------------------------------

def _info_list(info: dict[str, Any], n: int) -> list[dict[str, Any]]:
    """One dict per lane from Gymnasium's ``info[key]`` arrays and ``info["_key"]`` masks."""
    lanes: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, value in info.items():
        if key.startswith("_") and key[1:] in info:
            continue
        mask = info.get(f"_{key}")
        if isinstance(value, dict):
            for lane, sub in enumerate(_info_list(value, n)):
                if (mask is None and sub) or (mask is not None and mask[lane]):
                    lanes[lane][key] = sub
            continue
        for lane in range(n):
            if mask is None or mask[lane]:
                lanes[lane][key] = value[lane] if _indexable(value, n) else value
    return lanes


def _indexable(value: Any, n: int) -> bool:
    return hasattr(value, "__getitem__") and hasattr(value, "__len__") and not isinstance(
        value, (str, bytes, dict)) and len(value) == n


def _lane(batch: Any, lane: int) -> Any:
    """Lane ``lane`` of a batched observation, as a copy the next step cannot overwrite."""
    if isinstance(batch, dict):
        return {k: _lane(v, lane) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_lane(v, lane) for v in batch)
    return deepcopy(batch[lane])
