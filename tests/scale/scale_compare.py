"""Exact comparison of nested values (arrays by dtype, shape and bytes), for NumPy clients."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_equal(got: Any, want: Any, path: str = "value") -> None:
    """Exact equality of nested values; arrays must match in dtype, shape and bytes."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and sorted(got) == sorted(want), f"{path}: {sorted(got)} != {sorted(want)}"
        for key in want:
            assert_equal(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want), path
        for i, (g, w) in enumerate(zip(got, want)):
            assert_equal(g, w, f"{path}[{i}]")
    elif isinstance(want, np.ndarray) and want.dtype == object:
        assert isinstance(got, np.ndarray) and got.dtype == object and got.shape == want.shape, path
        for i, (g, w) in enumerate(zip(got.reshape(-1), want.reshape(-1))):
            assert_equal(g, w, f"{path}.flat[{i}]")
    elif isinstance(want, np.ndarray):
        assert isinstance(got, np.ndarray), f"{path}: {type(got)}"
        assert got.dtype == want.dtype, f"{path}: {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, f"{path}: {got.shape} != {want.shape}"
        assert got.tobytes() == want.tobytes(), f"{path}: {got} != {want}"
    elif isinstance(want, np.generic):  # scalars travel as Python primitives
        assert got == want.item(), f"{path}: {got!r} != {want!r}"
    else:
        assert type(got) is type(want) and got == want, f"{path}: {got!r} != {want!r}"
