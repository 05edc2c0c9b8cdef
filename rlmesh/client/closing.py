"""Closing what a client owns: ``with`` blocks, and close on garbage collection as a fallback."""

from __future__ import annotations

from types import TracebackType
from typing import Any, TypeVar

__all__ = ["Closeable"]

CloseableT = TypeVar("CloseableT", bound="Closeable")


class Closeable:
    """Closes itself when a ``with`` block ends, or when it is collected unclosed.

    Subclasses implement :attr:`closed` and an idempotent :meth:`close`.
    """

    @property
    def closed(self) -> bool:
        raise NotImplementedError

    def close(self, **kwargs: Any) -> None:
        raise NotImplementedError

    def __enter__(self: CloseableT) -> CloseableT:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def __del__(self) -> None:
        try:
            if not self.closed:
                self.close()
        except Exception:  # a half-built object, or interpreter shutdown: nothing left to do
            pass
