"""Environments the core tests serve from a separate process (and build locally to compare).

``make(name, **kwargs)`` is the single entry point, so the serving script and the tests build
exactly the same env from a name and JSON-able keyword arguments.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import ml_dtypes
import numpy as np
from gymnasium import spaces

# Every wire dtype as the NumPy dtype a server would hold it in.
NUMPY_DTYPES: dict[str, Any] = {
    "bool": np.bool_, "int8": np.int8, "int16": np.int16, "int32": np.int32, "int64": np.int64,
    "uint8": np.uint8, "uint16": np.uint16, "uint32": np.uint32, "uint64": np.uint64,
    "float16": np.float16, "float32": np.float32, "float64": np.float64,
    "complex64": np.complex64, "complex128": np.complex128, "bfloat16": ml_dtypes.bfloat16,
}


def dtype_zoo(seed: int) -> dict[str, Any]:
    """Arrays of every dtype: small (inline in the header), large (own frame), empty, 0-d."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    for name, dtype in NUMPY_DTYPES.items():
        for tag, shape in (("small", (2, 3)), ("large", (64, 80, 2)), ("empty", (0, 4))):
            if name == "bool":
                values = rng.integers(0, 2, size=shape).astype(bool)
            elif name.startswith(("int", "uint")):
                info = np.iinfo(dtype)
                values = rng.integers(info.min, info.max, size=shape, dtype=dtype, endpoint=True)
            elif name.startswith("complex"):
                values = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dtype)
            else:
                values = (rng.standard_normal(shape) * 1000).astype(dtype)
            out[f"{name}_{tag}"] = values
    out["float32_fortran"] = np.asfortranarray(rng.standard_normal((5, 7)).astype(np.float32))
    out["int16_bigendian"] = np.arange(12, dtype=">i2").reshape(3, 4)
    out["scalar_float32"] = np.float32(1.5)
    out["scalar_int64_0d"] = np.array(7, dtype=np.int64)
    return out


class DtypeZooEnv(gym.Env[Any, int]):
    """Observations hold every dtype; infos hold nested containers and arrays too."""

    def __init__(self) -> None:
        self.observation_space = spaces.Dict(
            {"float32_small": spaces.Box(-np.inf, np.inf, (2, 3), np.float32)})
        self.action_space = spaces.Discrete(3)
        self._t = 0

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._t = 0 if seed is None else seed
        return dtype_zoo(self._t), info_zoo(self._t)

    def step(self, action: int) -> Any:
        self._t += 1
        return dtype_zoo(self._t), float(action), False, False, info_zoo(self._t)


def info_zoo(seed: int) -> dict[str, Any]:
    return {
        "seed": seed,
        "nested": {"a": [1, 2.5, "x", None, True], "b": {"c": np.arange(3, dtype=np.int32)}},
        "tuple": (1, (2, "three")),
        "bytes": b"\x00\xff",
        "array": np.linspace(0, 1, 5),
        "big": np.full(20000, seed, dtype=np.float32),
        "np_scalar": np.float64(0.25),
        "np_bool": np.bool_(True),
        "objects": np.array([None, {"k": 1}, "s"], dtype=object),
    }


def nested_space() -> spaces.Space[Any]:
    return spaces.Dict({
        "pos": spaces.Box(-1.0, 1.0, (3,), np.float32),
        "inner": spaces.Tuple((
            spaces.Discrete(4, start=-2),
            spaces.Dict({"bits": spaces.MultiBinary([2, 2]),
                         "md": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[1, 1], [0, -3]]))}),
        )),
        "name": spaces.Text(6, min_length=2, charset="abcXYZ"),
    })


def space_zoo() -> dict[str, spaces.Space[Any]]:
    """One Gymnasium space of every kind and interesting variant, by name."""
    inf = np.inf
    zoo: dict[str, spaces.Space[Any]] = {
        "box_f32": spaces.Box(-1.0, 2.0, (3, 2), np.float32),
        "box_f64_inf": spaces.Box(np.array([-inf, 0.0, -inf]), np.array([inf, inf, 1.0]), (3,), np.float64),
        "box_f16": spaces.Box(-4.0, 4.0, (2,), np.float16),
        "box_bool": spaces.Box(0, 1, (2, 2), np.bool_),  # type: ignore[arg-type]  # stubs omit bool
        "box_scalar": spaces.Box(-3.0, 3.0, (), np.float32),
        "box_varied": spaces.Box(np.array([[-1.0, -2.0], [0.0, 5.0]], np.float32),
                                 np.array([[1.0, 2.0], [0.5, 6.0]], np.float32)),
    }
    for name in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"):
        info = np.iinfo(name)
        # Full integer range for 8/16 bit; a sampler-friendly range for the wide ones.
        low, high = (info.min, info.max) if info.bits <= 16 else (max(info.min, -1000), 1000)
        zoo[f"box_{name}"] = spaces.Box(low, high, (4,), np.dtype(name).type)
    zoo.update({
        "discrete": spaces.Discrete(5),
        "discrete_start": spaces.Discrete(3, start=-7),
        "discrete_int32": spaces.Discrete(4, start=2, dtype=np.int32),
        "multibinary_1d": spaces.MultiBinary(5),
        "multibinary_nd": spaces.MultiBinary([2, 3, 2]),
        "multidiscrete": spaces.MultiDiscrete([3, 4, 5]),
        "multidiscrete_start": spaces.MultiDiscrete(np.array([[2, 3], [4, 5]]), start=np.array([[-1, 0], [10, -5]])),
        "multidiscrete_int32": spaces.MultiDiscrete([6, 7], dtype=np.int32, start=[1, 2]),
        "text": spaces.Text(8),
        "text_charset": spaces.Text(5, min_length=0, charset="01ab"),
        "dict": spaces.Dict({"a": spaces.Discrete(2), "b": spaces.Box(0.0, 1.0, (2,), np.float32)}),
        "tuple": spaces.Tuple((spaces.Discrete(3), spaces.MultiBinary(2))),
        "nested": nested_space(),
    })
    zoo["everything"] = spaces.Dict(dict(zoo))
    return zoo


class SpaceEnv(gym.Env[Any, Any]):
    """Observation and action space are both the named space; step echoes the action back."""

    def __init__(self, space: str) -> None:
        self.observation_space = space_zoo()[space]
        self.action_space = space_zoo()[space]

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.observation_space.seed(seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> Any:
        return action, 0.0, False, False, {}


class FaultyEnv(gym.Env[Any, int]):
    """Action 2 raises inside the env; action 3 sleeps 4 s (a slow step); reset(options=) can raise."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(4)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        if options and options.get("fail"):
            raise KeyError("reset asked to fail")
        return np.zeros(2, np.float32), {}

    def step(self, action: int) -> Any:
        if action == 2:
            _explode_deep_inside()
        if action == 3:
            time.sleep(4)
        return np.full(2, 0.5, np.float32), 1.0, False, False, {}


def _explode_deep_inside() -> None:
    raise RuntimeError("the env blew up on purpose")


class RecorderEnv(gym.Env[Any, int]):
    """Says which actions it ran (``info["executed"]``): action 1 takes ``slow`` s, action 9 adds
    ``big`` bytes to the info; ``load(data)`` is a call that takes any payload. Two steps at
    once raise."""

    def __init__(self, slow: float = 1.0, big: int = 3 << 20) -> None:
        self.observation_space = spaces.Box(0, 1e9, (1,), np.float64)
        self.action_space = spaces.Discrete(10)
        self.slow, self.big = slow, big
        self.executed: list[Any] = []
        self.stepping = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        self.executed = []
        return np.zeros(1), {}

    def step(self, action: int) -> Any:
        if self.stepping:
            raise RuntimeError("step() called while another step() was running")
        self.stepping = True
        try:
            if int(action) == 1:
                time.sleep(self.slow)
            self.executed.append(int(action))
        finally:
            self.stepping = False
        info: dict[str, Any] = {"executed": list(self.executed)}
        if int(action) == 9:
            info["big"] = b"x" * self.big
        return np.array([len(self.executed)], np.float64), 0.0, False, False, info

    def load(self, data: bytes) -> int:
        self.executed.append(f"load {len(data)}")
        return len(data)


class BigObsEnv(gym.Env[Any, int]):
    """A float32 observation of ``nbytes`` bytes (1 MiB by default)."""

    def __init__(self, nbytes: int = 1 << 20) -> None:
        n = nbytes // 4
        self.observation_space = spaces.Box(-np.inf, np.inf, (n,), np.float32)
        self.action_space = spaces.Discrete(2)
        self._obs = np.arange(n, dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return self._obs.copy(), {}

    def step(self, action: int) -> Any:
        self._obs[action] += 1.0
        return self._obs.copy(), 0.0, False, False, {}


class ImageEnv(gym.Env[Any, int]):
    """An Atari-like env: uint8 frames of ``shape`` that change every step."""

    def __init__(self, shape: tuple[int, ...] = (84, 84, 3)) -> None:
        self.observation_space = spaces.Box(0, 255, tuple(shape), np.uint8)
        self.action_space = spaces.Discrete(4)
        self._frame = np.zeros(tuple(shape), np.uint8)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self._frame = self.np_random.integers(0, 256, self._frame.shape, dtype=np.uint8)
        return self._frame.copy(), {}

    def step(self, action: int) -> Any:
        self._frame += np.uint8(action + 1)
        return self._frame.copy(), 1.0, False, False, {}


def unsendable_values() -> list[tuple[str, Any]]:
    """Values no wire can carry, with the words the error about each must contain."""
    cycle: dict[str, Any] = {}
    cycle["self"] = cycle
    return [
        (np.array(["left", "right"]), "dtype <U5"),
        (np.array(["2020-01-01"], dtype="datetime64[s]"), "dtype datetime64[s]"),
        (2**64, "outside the 64-bit range"),
        (cycle, "contains itself"),
    ]


class UnsendableInfoEnv(gym.Env[Any, int]):
    """Action ``i`` > 0 puts unsendable value ``i - 1`` into ``info["payload"]``; 0 steps cleanly."""

    def __init__(self) -> None:
        self.observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.action_space = spaces.Discrete(len(unsendable_values()) + 1)
        self.metadata = {"unsendable": unsendable_values()}  # lenient: sent as text

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action: int) -> Any:
        info = {"payload": unsendable_values()[action - 1][0]} if action else {}
        return np.full(2, 0.5, np.float32), 1.0, False, False, info


class BareVectorEnv:
    """Just what ``rlmesh.types.VectorEnvLike`` promises: no batched spaces, no metadata."""

    def __init__(self, num_envs: int = 3) -> None:
        self.num_envs = num_envs
        self.single_observation_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.single_action_space = spaces.Discrete(2)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        return np.zeros((self.num_envs, 2), np.float32), {}

    def step(self, actions: Any) -> Any:
        obs = np.repeat(np.asarray(actions, np.float32)[:, None], 2, axis=1)
        zeros = np.zeros(self.num_envs, bool)
        return obs, np.ones(self.num_envs), zeros, zeros, {}

    def close(self) -> None:
        pass


class TunableEnv(gym.Env[Any, int]):
    """Public knobs for call/get_attr/set_attr: the reward is ``difficulty``, a step sleeps
    ``delay`` seconds, ``scaled`` echoes arrays; ``_secret`` must stay out of reach."""

    # 32 fps: moviepy (behind Gymnasium's RecordVideo) sums 1/fps per frame in floats and can
    # drop the last frame; with a power of two the sum is exact and frame counts can be checked.
    metadata = {"render_modes": ["rgb_array"], "render_fps": 32}

    def __init__(self, difficulty: float = 1.0, delay: float = 0.0, episode_steps: int = 0,
                 render_mode: str | None = None) -> None:
        self.observation_space = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.action_space = spaces.Discrete(3)
        self.render_mode = render_mode
        self.difficulty = difficulty
        self.delay = delay
        self.episode_steps = episode_steps  # > 0: the episode ends (terminated) after that many steps
        self.steps = 0
        self.bumps = 0  # counts bump() calls: shows which lanes a call reached
        self._secret = "hidden"

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> Any:
        super().reset(seed=seed)
        self.steps = 0
        return np.array([self.difficulty, 0.0], np.float32), {"difficulty": self.difficulty}

    def step(self, action: int) -> Any:
        if self.delay:
            time.sleep(self.delay)
        self.steps += 1
        terminated = 0 < self.episode_steps <= self.steps
        return (np.array([self.difficulty, self.steps], np.float32), float(self.difficulty), terminated,
                False, {"action": int(action)})

    def render(self) -> Any:
        frame = np.zeros((8, 10, 3), np.uint8)
        frame[..., 0] = min(self.steps, 255)
        frame[..., 1] = int(self.difficulty) % 256
        return frame

    def scaled(self, values: Any, factor: float = 2.0) -> Any:
        return np.asarray(values) * factor

    def bump(self, by: int = 1) -> int:
        self.bumps += by
        return self.bumps

    def describe(self) -> dict[str, Any]:
        return {"difficulty": self.difficulty, "tag": "tunable"}

    def unsendable(self) -> Any:
        return object()

    def boom(self) -> None:
        raise RuntimeError("boom on purpose")


def tunable_vec(num_envs: int = 3, mode: str = "sync", autoreset: str = "NextStep", **kwargs: Any) -> Any:
    """Lane ``i`` has difficulty ``i``."""
    makers = [lambda i=i: TunableEnv(difficulty=float(i), **kwargs) for i in range(num_envs)]
    vector = gym.vector.AsyncVectorEnv if mode == "async" else gym.vector.SyncVectorEnv
    return vector(makers, autoreset_mode=gym.vector.AutoresetMode(autoreset))


def cartpole_vec(num_envs: int = 3, mode: str = "sync", autoreset: str = "NextStep",
                 render_mode: str | None = None, max_episode_steps: int | None = None) -> Any:
    kwargs: dict[str, Any] = {"render_mode": render_mode} if render_mode else {}
    if max_episode_steps is not None:
        kwargs["max_episode_steps"] = max_episode_steps
    return gym.make_vec("CartPole-v1", num_envs=num_envs, vectorization_mode=mode,
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode(autoreset)}, **kwargs)


def make(name: str, **kwargs: Any) -> Any:
    """Build the env (or list of envs) called ``name``."""
    if name == "cartpole":
        return gym.make("CartPole-v1", **kwargs)
    if name == "pendulum":
        return gym.make("Pendulum-v1", **kwargs)
    if name == "cartpole_vec":
        return cartpole_vec(**kwargs)
    if name == "cartpole_list":
        return [gym.make("CartPole-v1", **kwargs) for _ in range(2)]
    if name == "dtype_zoo":
        return DtypeZooEnv()
    if name == "space":
        return SpaceEnv(**kwargs)
    if name == "faulty":
        return FaultyEnv()
    if name == "big_obs":
        return BigObsEnv(**kwargs)
    if name == "recorder":
        return RecorderEnv(**kwargs)
    if name == "image":
        return ImageEnv(**kwargs)
    if name == "unsendable_info":
        return UnsendableInfoEnv()
    if name == "tunable":
        return TunableEnv(**kwargs)
    if name == "tunable_vec":
        return tunable_vec(**kwargs)
    if name == "bare_vector":
        return BareVectorEnv(**kwargs)
    raise KeyError(f"no test env called {name!r}")
