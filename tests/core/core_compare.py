"""Exact comparison of nested values as rlmesh delivers them to NumPy clients."""

from __future__ import annotations

from typing import Any

import numpy as np


def assert_equal(got: Any, want: Any, path: str = "value") -> None:
    """Exact equality of nested values; arrays must match in dtype, shape and bytes."""
    if isinstance(want, dict):
        assert isinstance(got, dict) and list(got) == list(want), path
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
    elif isinstance(want, np.ndarray) and want.ndim > 0:
        assert isinstance(got, np.ndarray), f"{path}: {type(got)}"
        assert got.dtype == want.dtype.newbyteorder("="), f"{path}: {got.dtype} != {want.dtype}"
        assert got.shape == want.shape, path
        assert got.tobytes() == want.astype(got.dtype).tobytes(), path
    elif isinstance(want, (np.ndarray, np.generic)):  # scalars travel as Python primitives
        assert type(got) is type(want.item()) and got == want.item(), path
    else:
        assert type(got) is type(want) and got == want, f"{path}: {got!r} != {want!r}"
