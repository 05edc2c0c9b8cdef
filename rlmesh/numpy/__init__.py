"""NumPy flavour of rlmesh: tensor leaves decode to NumPy arrays, spaces are Gymnasium spaces.

Decoded observations are owned and writable (``obs /= 255.0`` works). For a zero-copy,
read-only view of an :class:`rlmesh.Tensor` use ``numpy.from_dlpack(tensor)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Union

from rlmesh._sandbox import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.backend import Backend
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.codec import ObjectArray
from rlmesh.model import ModelBase
from rlmesh._sandbox_model import SandboxModelBase
from rlmesh.model_server import PolicyClientBase
from rlmesh.multi import MultiEndpointVectorEnvBase
from rlmesh.spaces import BoxSpec, DictSpec, Space, SpaceSpec, TupleSpec, ValueAdapter
from rlmesh.tensor import Tensor

__all__ = [
    "NumpyValue",
    "ensure_available",
    "asarray",
    "from_array",
    "space_from_spec",
    "RemoteEnv",
    "RemoteVectorEnv",
    "SandboxEnv",
    "SandboxVectorEnv",
    "MultiEndpointVectorEnv",
    "spread_vector_env",
    "Model",
    "SandboxModel",
]

NumpyValue = Union[None, bool, int, float, str, bytes, object, list["NumpyValue"],
                   tuple["NumpyValue", ...], dict[str, "NumpyValue"]]


def ensure_available() -> None:
    """Raise ``ImportError`` naming the extra to install if NumPy is missing."""
    try:
        import numpy  # noqa: F401
    except ImportError:
        raise ImportError('the NumPy backend needs NumPy: pip install "rlmesh[numpy]"') from None


ensure_available()

import numpy as np  # noqa: E402  (after the friendly check above)

if TYPE_CHECKING:
    from numpy.typing import NDArray


_DTYPES: dict[str, Any] = {}


def _numpy_dtype(name: str) -> Any:
    dtype = _DTYPES.get(name)
    if dtype is None:
        dtype = _DTYPES[name] = _load_dtype(name)
    return dtype


def _load_dtype(name: str) -> Any:
    if name != "bfloat16":
        return np.dtype(name)
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            'bfloat16 tensors need the ml_dtypes package: pip install "rlmesh[bfloat16]"'
        ) from None
    return np.dtype(ml_dtypes.bfloat16)


def _array_from_wire(dtype: str, shape: tuple[int, ...], buffer: Any) -> Any:
    """Owned, writable array from decoded tensor bytes.

    A raw zmq frame belongs to this message alone, so a writable frame becomes the array's
    memory directly; read-only inline bytes are copied once.
    """
    array = np.frombuffer(buffer, dtype=_numpy_dtype(dtype)).reshape(shape)
    return array if array.flags.writeable else array.copy()


def asarray(tensor: Tensor) -> Any:
    """A writable NumPy array holding a copy of the tensor's data."""
    if not isinstance(tensor, Tensor):
        return np.asarray(tensor).copy()
    return np.frombuffer(tensor.raw, dtype=_numpy_dtype(tensor.dtype)).reshape(tensor.shape).copy()


def from_array(array: Any) -> Tensor | None | bool | int | float | str | bytes:
    """Encode a NumPy array (copied, C-contiguous, little-endian) or scalar as an rlmesh value."""
    array = np.asarray(array)
    if array.ndim == 0:
        value: Any = array.item() if array.dtype.name != "bfloat16" else float(array)
        return value  # type: ignore[no-any-return]
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    name = array.dtype.name
    return Tensor(np.ascontiguousarray(array).tobytes(), name, array.shape)


def _object_array(array: ObjectArray) -> Any:
    result = np.empty(len(array.items), dtype=object)
    result[:] = array.items
    return result.reshape(array.shape)


def _to_numpy(value: Any) -> Any:
    if isinstance(value, Tensor):
        return asarray(value)
    if isinstance(value, dict):
        return {k: _to_numpy(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_numpy(v) for v in value)
    return value


def _from_numpy(value: Any) -> Any:
    if isinstance(value, np.ndarray | np.generic):
        return from_array(value)
    if isinstance(value, dict):
        return {k: _from_numpy(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return tuple(_from_numpy(v) for v in value)
    return value


def space_from_spec(spec: SpaceSpec) -> Any:
    """The Gymnasium space a spec describes, or a NumPy-valued rlmesh :class:`~rlmesh.spaces.Space`.

    The rlmesh space stands in where Gymnasium is not installed, and where Gymnasium cannot
    hold the spec exactly: a ``Box`` of a dtype Gymnasium refuses (bfloat16, complex), anywhere
    in the space. Its ``sample()`` and ``contains()`` work in NumPy values of the served dtype.
    """
    if _gymnasium_holds(spec):
        try:
            from rlmesh.gym_spaces import gymnasium_from_spec

            return gymnasium_from_spec(spec)
        except ImportError:
            pass
    return Space(spec, ValueAdapter(_to_numpy, _from_numpy))


def _gymnasium_holds(spec: SpaceSpec) -> bool:
    """Whether a Gymnasium space can describe ``spec`` exactly (Box takes bool, int and float)."""
    if isinstance(spec, BoxSpec):
        dtype = _numpy_dtype(spec.dtype)
        return any(np.issubdtype(dtype, kind) for kind in (np.integer, np.floating, np.bool_))
    if isinstance(spec, DictSpec):
        return all(_gymnasium_holds(s) for s in spec.spaces.values())
    if isinstance(spec, TupleSpec):
        return all(_gymnasium_holds(s) for s in spec.spaces)
    return True


def _adapt_metadata(metadata: Mapping[str, Any]) -> dict[str, Any]:
    result = dict(metadata)
    mode = result.get("autoreset_mode")
    if isinstance(mode, str):
        try:
            from gymnasium.vector import AutoresetMode

            result["autoreset_mode"] = AutoresetMode(mode)
        except (ImportError, ValueError):
            pass
    return result


BACKEND = Backend("numpy", _array_from_wire, _object_array, space_from_spec, _adapt_metadata)

try:  # Real Gymnasium base classes make remote envs pass isinstance checks and check_env.
    import gymnasium as _gym
    from gymnasium.vector import VectorEnv as _GymVectorEnv

    _EnvBases: tuple[type, ...] = (_gym.Env,)
    _VectorBases: tuple[type, ...] = (_GymVectorEnv,)
except ImportError:  # pragma: no cover - exercised only without Gymnasium
    _EnvBases = _VectorBases = ()


class RemoteEnv(RemoteEnvBase[NumpyValue, NumpyValue], *_EnvBases):  # type: ignore[misc]
    """Remote env client whose observations, actions and frames are NumPy values.

    Example:
        >>> from rlmesh.numpy import RemoteEnv
        >>> env = RemoteEnv("127.0.0.1:5555")           # doctest: +SKIP
        >>> obs, info = env.reset(seed=42)              # doctest: +SKIP
    """

    _backend = BACKEND

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None
              ) -> tuple[NumpyValue, dict[str, Any]]:
        if _EnvBases:  # seed the local np_random the way Gymnasium envs (and check_env) expect
            _gym.Env.reset(self, seed=seed)
        return super().reset(seed=seed, options=options)


class RemoteVectorEnv(RemoteVectorEnvBase[NumpyValue, NumpyValue], *_VectorBases):  # type: ignore[misc]
    """Remote vector env client with batched NumPy values and Gymnasium vector semantics."""

    _backend = BACKEND


class MultiEndpointVectorEnv(MultiEndpointVectorEnvBase[NumpyValue, NumpyValue], *_VectorBases):  # type: ignore[misc]
    """One vector env over many endpoints' lanes, with NumPy values and Gymnasium vector semantics.

    Example:
        >>> env = MultiEndpointVectorEnv(["10.0.0.5:5555", "10.0.0.6:5555"])  # doctest: +SKIP
        >>> obs, info = env.reset(seed=0)  # lane i is seeded with 0 + i  # doctest: +SKIP
    """

    _backend = BACKEND


def spread_vector_env(source: str, num_envs: int, **kwargs: Any) -> MultiEndpointVectorEnv:
    """:func:`rlmesh.spread.spread_vector_env` with NumPy values: ``num_envs`` lanes in
    sandboxes of ``per_endpoint`` lanes (``runtime="ray"`` spreads them over a Ray cluster)."""
    from rlmesh.spread import spread_vector_env as spread

    env = spread(source, num_envs, backend="numpy", **kwargs)
    assert isinstance(env, MultiEndpointVectorEnv)
    return env


class SandboxEnv(SandboxEnvBase[NumpyValue, NumpyValue]):
    """Owned sandbox session for one environment; its client is :class:`RemoteEnv`.

    Example:
        >>> with SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:  # doctest: +SKIP
        ...     obs, info = env.reset(seed=42)
    """

    _client_class = RemoteEnv


class SandboxVectorEnv(SandboxVectorEnvBase[NumpyValue, NumpyValue]):
    """Owned sandbox session serving ``num_envs`` environments; its client is :class:`RemoteVectorEnv`."""

    _client_class = RemoteVectorEnv



class Model(ModelBase[NumpyValue, NumpyValue]):
    """Model whose policy receives NumPy observations (local NumPy envs are converted).

    Example:
        >>> from rlmesh.numpy import Model
        >>> Model(lambda observation: 0).run("127.0.0.1:5555", seeds=[0]).mean_reward  # doctest: +SKIP
    """

    _backend_name = "numpy"


class _PolicyClient(PolicyClientBase):
    _backend = BACKEND


class SandboxModel(SandboxModelBase[NumpyValue, NumpyValue]):
    """Experimental: a policy served from its own container, evaluated with ``run(env, seeds)``.

    Inside the sandbox the policy receives NumPy values.

    Example:
        >>> with SandboxModel("agents/policy.py", packages=["numpy"]) as model:  # doctest: +SKIP
        ...     print(model.run(gymnasium.make("CartPole-v1"), seeds=[0, 1]))
    """

    _client_class = _PolicyClient
    _model_class = Model
