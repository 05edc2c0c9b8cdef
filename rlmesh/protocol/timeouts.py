"""Timeouts: checks for the ones users pass (a NaN or negative wait must fail at once, not
hang), and the deadline a wait ends at."""

from __future__ import annotations

import math
import time
from typing import Any, overload

__all__ = ["check_timeout", "deadline_in"]


@overload
def check_timeout(name: str, value: float) -> float: ...
@overload
def check_timeout(name: str, value: float | None) -> float | None: ...


def check_timeout(name: str, value: Any) -> float | None:
    """``value`` as seconds, or ``None`` (no limit); raise ``ValueError`` naming ``name`` otherwise.

    Any finite number of seconds >= 0 is accepted; NaN, infinities, negatives and non-numbers
    are refused. Callers whose argument may not be ``None`` type it so.
    """
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value < 0:
        hint = "; use None for no limit" if math.isinf(value) else ""
        raise ValueError(f"{name} must be a finite number of seconds >= 0, got {value!r}{hint}")
    return float(value)


def deadline_in(seconds: float | None) -> float | None:
    """The ``time.monotonic()`` reading ``seconds`` from now; ``None`` (no limit) for ``None``."""
    return None if seconds is None else time.monotonic() + seconds
