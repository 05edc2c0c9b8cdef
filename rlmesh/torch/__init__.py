"""Torch flavour of rlmesh (experimental): tensor leaves decode to Torch tensors.

Decoded observations are owned and writable (``img.div_(255)`` is safe). ``as_tensor`` is the
zero-copy opt-in: it shares memory with the rlmesh tensor over DLPack, so treat its result as
read-only or pass ``copy=True``.
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
    "TorchValue",
    "ensure_available",
    "as_tensor",
    "from_tensor",
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

TorchValue = Union[None, bool, int, float, str, bytes, object, list["TorchValue"],
                   tuple["TorchValue", ...], dict[str, "TorchValue"]]


def ensure_available() -> None:
    """Raise ``ImportError`` naming the extra to install if Torch is missing."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise ImportError('the Torch backend needs PyTorch: pip install "rlmesh[torch]"') from None


ensure_available()

from rlmesh.backends.torch import BACKEND, as_tensor, from_tensor, space_from_spec  # noqa: E402


class RemoteEnv(RemoteEnvBase[TorchValue, TorchValue]):
    """Experimental remote env client whose observations, actions and frames are Torch tensors."""

    _backend = BACKEND


class MultiEndpointVectorEnv(MultiEndpointVectorEnvBase[TorchValue, TorchValue]):
    """Experimental: one vector env over many endpoints' lanes, with Torch values.

    Example:
        >>> env = MultiEndpointVectorEnv(["10.0.0.5:5555", "10.0.0.6:5555"])  # doctest: +SKIP
        >>> obs, info = env.reset(seed=0)  # lane i is seeded with 0 + i  # doctest: +SKIP
    """

    _backend = BACKEND


class RemoteVectorEnv(RemoteVectorEnvBase[TorchValue, TorchValue]):
    """Experimental remote vector env client with batched Torch values."""

    _backend = BACKEND
    _multi_endpoint_class = MultiEndpointVectorEnv


def spread_vector_env(source: str, num_envs: int, **kwargs: Any) -> MultiEndpointVectorEnv:
    """:func:`rlmesh.spread.spread_vector_env` with Torch values: ``num_envs`` lanes in
    sandboxes of ``per_endpoint`` lanes (``runtime="ray"`` spreads them over a Ray cluster)."""
    from rlmesh.spread import spread_vector_env as spread

    env = spread(source, num_envs, session_class=SandboxVectorEnv, env_class=MultiEndpointVectorEnv, **kwargs)
    assert isinstance(env, MultiEndpointVectorEnv)
    return env


class SandboxEnv(SandboxEnvBase[TorchValue, TorchValue]):
    """Owned sandbox session for one environment; its client is :class:`RemoteEnv`.

    Example:
        >>> with SandboxEnv("CartPole-v1", packages=["gymnasium==1.3.0"]) as env:  # doctest: +SKIP
        ...     obs, info = env.reset(seed=42)
    """

    _client_class = RemoteEnv


class SandboxVectorEnv(SandboxVectorEnvBase[TorchValue, TorchValue]):
    """Owned sandbox session serving ``num_envs`` environments; its client is :class:`RemoteVectorEnv`."""

    _client_class = RemoteVectorEnv


class Model(ModelBase[TorchValue, TorchValue]):
    """Experimental Model whose policy receives Torch observations (local NumPy envs are converted).

    Example:
        >>> from rlmesh.torch import Model
        >>> Model(lambda observation: 0).run("127.0.0.1:5555", seeds=[0]).mean_reward  # doctest: +SKIP
    """

    _backend = BACKEND
    _clients = (RemoteEnv, RemoteVectorEnv)


class _PolicyClient(PolicyClientBase):
    _backend = BACKEND


class SandboxModel(SandboxModelBase[TorchValue, TorchValue]):
    """Experimental: a policy served from its own container, evaluated with ``run(env, seeds)``.

    Inside the sandbox the policy receives Torch values, so the sandbox needs Torch: pass
    ``packages=["torch==..."]``.

    Example:
        >>> with SandboxModel("agents/policy.py", packages=["torch"]) as model:  # doctest: +SKIP
        ...     print(model.run(gymnasium.make("CartPole-v1"), seeds=[0, 1]))
    """

    _client_class = _PolicyClient
    _model_class = Model
