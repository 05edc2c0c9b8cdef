"""Value flavours: how tensor leaves decode and convert (plain Tensors, NumPy, Torch).

Classes pick their flavour through a ``_backend`` class attribute holding a :class:`Backend`.
Only where a flavour crosses a process boundary as a word (a model server's config) is it
looked up by name, with :func:`backend_named`.
"""

from __future__ import annotations

from rlmesh.backends.base import PLAIN, Backend, leaf_kind

__all__ = ["Backend", "PLAIN", "backend_named", "leaf_kind"]


def backend_named(name: str) -> Backend:
    """The backend called ``name``: ``"plain"``, ``"numpy"`` or ``"torch"``."""
    if name == "plain":
        return PLAIN
    if name == "numpy":
        from rlmesh.backends.numpy import BACKEND
    elif name == "torch":
        from rlmesh.backends.torch import BACKEND
    else:
        raise ValueError(f"unknown backend {name!r}; use 'plain', 'numpy' or 'torch'")
    return BACKEND
