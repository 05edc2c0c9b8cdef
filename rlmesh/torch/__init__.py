"""Torch flavour of rlmesh (experimental): tensor leaves decode to Torch tensors.

Decoded observations are owned and writable (``img.div_(255)`` is safe). ``as_tensor`` is the
zero-copy opt-in: it shares memory with the rlmesh tensor over DLPack, so treat its result as
read-only or pass ``copy=True``.
"""

from __future__ import annotations

from typing import Any, Union

from rlmesh._sandbox import SandboxEnvBase, SandboxVectorEnvBase
from rlmesh.backend import Backend
from rlmesh.client import RemoteEnvBase, RemoteVectorEnvBase
from rlmesh.codec import ObjectArray
from rlmesh.model import ModelBase
from rlmesh._sandbox_model import SandboxModelBase
from rlmesh.model_server import PolicyClientBase
from rlmesh.multi import MultiEndpointVectorEnvBase
from rlmesh.spaces import Space, SpaceSpec, ValueAdapter
from rlmesh.tensor import Tensor

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

import torch  # noqa: E402

_TORCH_VERSION = tuple(int(p) for p in torch.__version__.split("+")[0].split(".")[:2])
_WIDE_UNSIGNED = {"uint16", "uint32", "uint64"}


def _torch_dtype(name: str) -> Any:
    if name in _WIDE_UNSIGNED and _TORCH_VERSION < (2, 3):
        raise TypeError(f"{name} tensors need Torch 2.3 or newer (installed: {torch.__version__})")
    return getattr(torch, name)


def _tensor_from_wire(dtype: str, shape: tuple[int, ...], buffer: Any) -> Any:
    """Owned, writable Torch tensor from decoded bytes (zero-copy for a private zmq frame)."""
    torch_dtype = _torch_dtype(dtype)
    view = memoryview(buffer)
    if view.readonly:
        view = memoryview(bytearray(view))
    if not view.nbytes:
        return torch.empty(shape, dtype=torch_dtype)
    return torch.frombuffer(view, dtype=torch_dtype).reshape(shape)


def as_tensor(tensor: Tensor | bool | int | float, *, copy: bool = False) -> Any:
    """A Torch tensor sharing memory with ``tensor`` over DLPack, or a copy with ``copy=True``.

    The shared view is flagged read-only by the export but Torch does not enforce the flag:
    writing through it corrupts every other view of the same bytes.
    """
    if not isinstance(tensor, Tensor):
        return torch.tensor(tensor)
    _torch_dtype(tensor.dtype)
    if tensor.dtype == "bool" and _TORCH_VERSION < (2, 2):  # no bool over DLPack before 2.2
        return torch.frombuffer(bytearray(tensor.raw), dtype=torch.bool).reshape(tensor.shape)
    shared = torch.utils.dlpack.from_dlpack(tensor)
    return shared.clone() if copy else shared


def from_tensor(tensor: Any) -> Tensor | bool | int | float:
    """Encode a Torch tensor (detached, moved to the CPU, copied) as an rlmesh value."""
    import ctypes

    value = tensor.detach().cpu().contiguous()
    if value.ndim == 0:
        item: Any = value.item()
        return item  # type: ignore[no-any-return]
    name = str(value.dtype).removeprefix("torch.")
    nbytes = value.numel() * value.element_size()
    data = ctypes.string_at(value.data_ptr(), nbytes) if nbytes else b""
    return Tensor(data, name, tuple(value.shape))


def _object_array(array: ObjectArray) -> Any:
    return array.items


def _to_torch(value: Any) -> Any:
    if isinstance(value, Tensor):
        return as_tensor(value, copy=True)
    if isinstance(value, dict):
        return {k: _to_torch(v) for k, v in value.items()}
    if isinstance(value, tuple):
        return tuple(_to_torch(v) for v in value)
    return value


def _from_torch(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return from_tensor(value)
    if isinstance(value, dict):
        return {k: _from_torch(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return tuple(_from_torch(v) for v in value)
    return value


def space_from_spec(spec: SpaceSpec) -> Space[TorchValue]:
    """A space whose ``sample()`` returns Torch values and ``contains()`` accepts them."""
    return Space(spec, ValueAdapter(_to_torch, _from_torch))


BACKEND = Backend("torch", _tensor_from_wire, _object_array, space_from_spec)


class RemoteEnv(RemoteEnvBase[TorchValue, TorchValue]):
    """Experimental remote env client whose observations, actions and frames are Torch tensors."""

    _backend = BACKEND


class RemoteVectorEnv(RemoteVectorEnvBase[TorchValue, TorchValue]):
    """Experimental remote vector env client with batched Torch values."""

    _backend = BACKEND


class MultiEndpointVectorEnv(MultiEndpointVectorEnvBase[TorchValue, TorchValue]):
    """Experimental: one vector env over many endpoints' lanes, with Torch values.

    Example:
        >>> env = MultiEndpointVectorEnv(["10.0.0.5:5555", "10.0.0.6:5555"])  # doctest: +SKIP
        >>> obs, info = env.reset(seed=0)  # lane i is seeded with 0 + i  # doctest: +SKIP
    """

    _backend = BACKEND


def spread_vector_env(source: str, num_envs: int, **kwargs: Any) -> MultiEndpointVectorEnv:
    """:func:`rlmesh.spread.spread_vector_env` with Torch values: ``num_envs`` lanes in
    sandboxes of ``per_endpoint`` lanes (``runtime="ray"`` spreads them over a Ray cluster)."""
    from rlmesh.spread import spread_vector_env as spread

    env = spread(source, num_envs, backend="torch", **kwargs)
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

    _backend_name = "torch"


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
