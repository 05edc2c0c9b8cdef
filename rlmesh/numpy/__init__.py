"""NumPy flavour of rlmesh: tensor leaves decode to NumPy arrays, spaces are Gymnasium spaces.

Decoded observations are owned and writable (``obs /= 255.0`` works). For a zero-copy,
read-only view of an :class:`rlmesh.Tensor` use ``numpy.from_dlpack(tensor)``.
"""

from __future__ import annotations

from typing import Any, Union

from rlmesh.client.multi import MultiEndpointVectorEnvBase
from rlmesh.client.policy import PolicyClientBase
from rlmesh.client.remote import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.model.runner import ModelBase
from rlmesh.sandbox.model import SandboxModelBase
from rlmesh.sandbox.session import SandboxEnvBase, SandboxVectorEnvBase

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

from rlmesh.backends.numpy import BACKEND, space_from_spec  # noqa: E402
from rlmesh.wire.arrays import asarray, from_array  # noqa: E402  (after the friendly check above)

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


class MultiEndpointVectorEnv(MultiEndpointVectorEnvBase[NumpyValue, NumpyValue], *_VectorBases):  # type: ignore[misc]
    """One vector env over many endpoints' lanes, with NumPy values and Gymnasium vector semantics.

    Example:
        >>> env = MultiEndpointVectorEnv(["10.0.0.5:5555", "10.0.0.6:5555"])  # doctest: +SKIP
        >>> obs, info = env.reset(seed=0)  # lane i is seeded with 0 + i  # doctest: +SKIP
    """

    _backend = BACKEND


class RemoteVectorEnv(RemoteVectorEnvBase[NumpyValue, NumpyValue], *_VectorBases):  # type: ignore[misc]
    """Remote vector env client with batched NumPy values and Gymnasium vector semantics."""

    _backend = BACKEND
    _multi_endpoint_class = MultiEndpointVectorEnv


def spread_vector_env(source: str, num_envs: int, **kwargs: Any) -> MultiEndpointVectorEnv:
    """:func:`rlmesh.spread.spread_vector_env` with NumPy values: ``num_envs`` lanes in
    sandboxes of ``per_endpoint`` lanes (``runtime="ray"`` spreads them over a Ray cluster)."""
    from rlmesh.spread import spread_vector_env as spread

    env = spread(source, num_envs, session_class=SandboxVectorEnv, env_class=MultiEndpointVectorEnv, **kwargs)
    assert isinstance(env, MultiEndpointVectorEnv)
    return env


class SandboxEnv(SandboxEnvBase[NumpyValue, NumpyValue], *_EnvBases):  # type: ignore[misc]
    """Owned sandbox session for one environment; its client is :class:`RemoteEnv`.

    Example:
        >>> with SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:  # doctest: +SKIP
        ...     obs, info = env.reset(seed=42)
    """

    _client_class = RemoteEnv

    def reset(self, *, seed: int | None = None, options: dict[str, object] | None = None
              ) -> tuple[NumpyValue, dict[str, object]]:
        if _EnvBases:  # seed the local np_random, as RemoteEnv does
            _gym.Env.reset(self, seed=seed)
        return super().reset(seed=seed, options=options)


class SandboxVectorEnv(SandboxVectorEnvBase[NumpyValue, NumpyValue], *_VectorBases):  # type: ignore[misc]
    """Owned sandbox session serving ``num_envs`` environments; its client is :class:`RemoteVectorEnv`."""

    _client_class = RemoteVectorEnv


class Model(ModelBase[NumpyValue, NumpyValue]):
    """Model whose policy receives NumPy observations (local NumPy envs are converted).

    Example:
        >>> from rlmesh.numpy import Model
        >>> Model(lambda observation: 0).run("127.0.0.1:5555", seeds=[0]).mean_reward  # doctest: +SKIP
    """

    _backend = BACKEND
    _clients = (RemoteEnv, RemoteVectorEnv)


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
