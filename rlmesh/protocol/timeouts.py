"""Checks for the timeouts users pass: a NaN or negative wait must fail at once, not hang."""

from __future__ import annotations

import math
from typing import Any, overload

__all__ = ["check_timeout"]


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
