"""The wire tensor: an n-dimensional block of bytes with a dtype and a shape.

A :class:`Tensor` needs neither NumPy nor Torch. It exposes its bytes as a read-only
``memoryview`` (``tensor.data``, and the buffer protocol itself on Python 3.12+) and exports
itself over DLPack flagged read-only, so ``numpy.from_dlpack(t)`` and
``torch.from_dlpack(t)`` give zero-copy views. Data on the wire is always little-endian and
C-contiguous.
"""

from __future__ import annotations

import math
import struct
import sys
from collections.abc import Sequence
from typing import Any, Final

__all__ = ["Tensor", "DTYPES", "dtype_itemsize"]

# name -> (struct/buffer format, itemsize, DLPack type code)
_DL_INT, _DL_UINT, _DL_FLOAT, _DL_BFLOAT, _DL_COMPLEX, _DL_BOOL = 0, 1, 2, 4, 5, 6
_DTYPE_TABLE: Final[dict[str, tuple[str | None, int, int]]] = {
    "bool": ("?", 1, _DL_BOOL),
    "int8": ("b", 1, _DL_INT),
    "int16": ("h", 2, _DL_INT),
    "int32": ("i", 4, _DL_INT),
    "int64": ("q", 8, _DL_INT),
    "uint8": ("B", 1, _DL_UINT),
    "uint16": ("H", 2, _DL_UINT),
    "uint32": ("I", 4, _DL_UINT),
    "uint64": ("Q", 8, _DL_UINT),
    "float16": ("e", 2, _DL_FLOAT),
    "float32": ("f", 4, _DL_FLOAT),
    "float64": ("d", 8, _DL_FLOAT),
    "complex64": ("Zf", 8, _DL_COMPLEX),
    "complex128": ("Zd", 16, _DL_COMPLEX),
    # bfloat16 has no buffer-protocol format; consumers go through raw bytes or DLPack.
    "bfloat16": (None, 2, _DL_BFLOAT),
}

#: Every dtype name a Tensor can carry.
DTYPES: Final[frozenset[str]] = frozenset(_DTYPE_TABLE)


def dtype_itemsize(dtype: str) -> int:
    """Bytes per element of a wire dtype name."""
    try:
        return _DTYPE_TABLE[dtype][1]
    except KeyError:
        raise TypeError(
            f"unsupported tensor dtype {dtype!r}; supported: {', '.join(sorted(DTYPES))}"
        ) from None


def _nested(items: list[Any], shape: tuple[int, ...]) -> Any:
    """Fold a flat C-order list into nested lists of ``shape``."""
    if len(shape) <= 1:
        return items if shape else items[0]
    step = len(items) // shape[0] if shape[0] else 0
    return [_nested(items[i * step:(i + 1) * step], shape[1:]) for i in range(shape[0])]


class Tensor:
    """Immutable n-dimensional array of a numeric dtype, carried as raw bytes.

    Args:
        data: Any object supporting the buffer protocol holding exactly
            ``prod(shape) * itemsize`` bytes, C-contiguous, little-endian. It is not copied.
        dtype: One of :data:`DTYPES` (``"float32"``, ``"uint8"``, ``"bfloat16"``, ...).
        shape: Dimensions; ``()`` for a 0-d tensor.
    """

    __slots__ = ("_bytes", "_dtype", "_shape", "__weakref__")

    def __init__(self, data: Any, dtype: str, shape: Sequence[int]) -> None:
        itemsize = dtype_itemsize(dtype)
        shape = tuple(int(d) for d in shape)
        if any(d < 0 for d in shape):
            raise ValueError(f"tensor shape must be non-negative, got {shape}")
        view = memoryview(data).cast("B")
        expected = math.prod(shape) * itemsize
        if view.nbytes != expected:
            raise ValueError(
                f"tensor of dtype {dtype} and shape {shape} needs {expected} bytes, got {view.nbytes}"
            )
        self._bytes = view.toreadonly()
        self._dtype = dtype
        self._shape = shape

    @classmethod
    def from_bytes(cls, data: bytes, dtype: str, shape: Sequence[int]) -> Tensor:
        """Alias of the constructor for readability at call sites holding raw bytes."""
        return cls(data, dtype, shape)

    @property
    def dtype(self) -> str:
        return self._dtype

    @property
    def shape(self) -> tuple[int, ...]:
        return self._shape

    @property
    def ndim(self) -> int:
        return len(self._shape)

    @property
    def size(self) -> int:
        return math.prod(self._shape)

    @property
    def itemsize(self) -> int:
        return _DTYPE_TABLE[self._dtype][1]

    @property
    def nbytes(self) -> int:
        return self._bytes.nbytes

    @property
    def raw(self) -> memoryview:
        """The bytes as a flat read-only ``memoryview`` of unsigned bytes (no copy)."""
        return self._bytes

    @property
    def data(self) -> memoryview:
        """A read-only, typed, shaped ``memoryview`` over the bytes (no copy).

        bfloat16 and complex have no memoryview format, nor float16 before Python 3.12: their
        view is flat unsigned bytes.
        """
        fmt = _DTYPE_TABLE[self._dtype][0]
        if fmt is None or fmt.startswith("Z") or 0 in self._shape:
            return self._bytes
        try:
            view: memoryview = self._bytes.cast(fmt, self._shape)  # type: ignore[call-overload]
        except ValueError:  # "e" (float16) casts only on Python 3.12+
            return self._bytes
        return view

    def tobytes(self) -> bytes:
        return self._bytes.tobytes()

    def tolist(self) -> Any:
        """Nested Python lists of the elements (not for bfloat16 or complex)."""
        fmt = _DTYPE_TABLE[self._dtype][0]
        if fmt is None or fmt.startswith("Z"):
            raise TypeError(f"tolist() does not support {self._dtype}; convert with a backend")
        # struct rather than memoryview.tolist(): memoryview cannot cast float16 before 3.12.
        return _nested(list(struct.unpack(f"<{self.size}{fmt}", self._bytes)), self._shape)

    if sys.version_info >= (3, 12):

        def __buffer__(self, flags: int, /) -> memoryview:
            return self.data

    def __dlpack_device__(self) -> tuple[int, int]:
        return (1, 0)  # kDLCPU, device 0

    def __dlpack__(
        self,
        *,
        stream: Any = None,
        max_version: tuple[int, int] | None = None,
        dl_device: tuple[int, int] | None = None,
        copy: bool | None = None,
    ) -> Any:
        """Export a read-only DLPack capsule sharing this tensor's memory."""
        if dl_device is not None and tuple(dl_device) != (1, 0):
            raise BufferError("rlmesh tensors live on the CPU; cannot export to another device")
        from rlmesh.wire import _dlpack

        source = Tensor(bytearray(self._bytes), self._dtype, self._shape) if copy else self
        # A copy belongs to the consumer alone, so only shared memory is flagged read-only.
        return _dlpack.export(source, versioned=max_version is not None and max_version[0] >= 1,
                              read_only=not copy)

    def _dlpack_dtype(self) -> tuple[int, int]:
        _, itemsize, code = _DTYPE_TABLE[self._dtype]
        return code, itemsize * 8

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Tensor):
            return NotImplemented
        return (
            self._dtype == other._dtype
            and self._shape == other._shape
            and self._bytes == other._bytes
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Tensor(dtype={self._dtype}, shape={self._shape})"

    def __reduce__(self) -> Any:
        return (Tensor, (self.tobytes(), self._dtype, self._shape))

