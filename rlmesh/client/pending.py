"""Gymnasium's async call protocol for vector clients: one call under way, and its misuse errors.

``step_async`` / ``reset_async`` start a call, ``step_wait`` / ``reset_wait`` collect it; any
other request in between is refused, as Gymnasium's ``AsyncVectorEnv`` refuses it. The errors
raised are rlmesh's :class:`~rlmesh.errors.AlreadyPendingCallError` and
:class:`~rlmesh.errors.NoAsyncCallError`, and also Gymnasium's classes of the same name when
Gymnasium is installed, so either ``except`` clause catches them.
"""

from __future__ import annotations

import functools
from typing import Any

from rlmesh.errors import AlreadyPendingCallError, NoAsyncCallError

__all__ = ["PendingCall", "already_pending", "no_async_call"]


@functools.cache
def _with_gymnasium_twin(cls: type[Exception]) -> type[Exception]:
    """``cls``, also deriving from ``gymnasium.error.<same name>`` where Gymnasium is installed."""
    try:
        from gymnasium import error
    except ImportError:
        return cls
    twin = getattr(error, cls.__name__, None)
    if twin is None:
        return cls
    return type(cls.__name__, (cls, twin), {"__module__": cls.__module__, "__doc__": cls.__doc__})


def already_pending(message: str, name: str) -> AlreadyPendingCallError:
    error = _with_gymnasium_twin(AlreadyPendingCallError)(message, name)
    assert isinstance(error, AlreadyPendingCallError)
    return error


def no_async_call(message: str, name: str) -> NoAsyncCallError:
    error = _with_gymnasium_twin(NoAsyncCallError)(message, name)
    assert isinstance(error, NoAsyncCallError)
    return error


class PendingCall:
    """The async call a client has under way (``"step"`` or ``"reset"``), with what it needs to finish."""

    def __init__(self) -> None:
        self.name: str | None = None
        self.state: Any = None

    def check_idle(self, starting: str) -> None:
        """Raise if a call is under way: nothing else may go out before it is collected."""
        if self.name is not None:
            raise already_pending(
                f"cannot {starting} while a {self.name} call is under way; "
                f"collect it with {self.name}_wait() first", self.name)

    def start(self, name: str, state: Any = None) -> None:
        self.check_idle(f"{name}_async()")
        self.name, self.state = name, state

    def expect(self, name: str) -> Any:
        """The state of the ``name`` call under way; raise if there is none."""
        if self.name != name:
            under_way = f" (a {self.name} call is under way)" if self.name else ""
            raise no_async_call(f"{name}_wait() without a {name}_async() call before it{under_way}; "
                                f"call {name}_async() first", name)
        return self.state

    def finish(self) -> None:
        self.name, self.state = None, None
