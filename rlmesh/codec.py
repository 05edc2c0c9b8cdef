"""Values on the wire: a msgpack header plus raw frames for large arrays.

Supported values: ``None``, bool, int, float, str, bytes, lists, tuples, dicts, :class:`Tensor`,
NumPy arrays and scalars (encoded without importing NumPy here), Torch tensors, and enums (sent
as their value). Scalar arrays become Python primitives. Nothing is pickled: decoding can only
ever produce these plain types, so a peer cannot make us execute anything.

Arrays of at least :data:`INLINE_LIMIT` bytes travel as separate zero-copy frames; smaller ones
are inlined in the header, where one small copy is cheaper than another frame.
"""

from __future__ import annotations

import enum
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from rlmesh.errors import ProtocolError
from rlmesh.tensor import DTYPES, Tensor

__all__ = ["encode", "decode", "TensorFactory", "INLINE_LIMIT", "ObjectArray"]

INLINE_LIMIT: Final = 32 * 1024

_EXT_TENSOR_INLINE: Final = 1
_EXT_TENSOR_FRAME: Final = 2
_EXT_TUPLE: Final = 3
_EXT_OBJECT_ARRAY: Final = 4

# Tensor ext payload: dtype index, ndim, dims (u64 LE), then inline bytes or a u32 frame index.
_DTYPE_NAMES: Final = tuple(sorted(DTYPES))
_DTYPE_CODES: Final = {name: i for i, name in enumerate(_DTYPE_NAMES)}
_TENSOR_HEAD: Final = struct.Struct("<BB")
_FRAME_INDEX: Final = struct.Struct("<I")
_DIMS: Final = tuple(struct.Struct(f"<{ndim}Q") for ndim in range(65))  # NumPy allows 64 dims
# Every step sends the same few (dtype, shape) pairs: keep their packed heads.
_HEADS: dict[tuple[str, tuple[int, ...]], bytes] = {}
_HEADS_LIMIT: Final = 4096

#: Builds a backend value from (dtype, shape, bytes-like) of one decoded tensor.
TensorFactory = Callable[[str, tuple[int, ...], Any], Any]


class ObjectArray:
    """A NumPy object-dtype array in transit (e.g. vector-env infos holding non-numeric values)."""

    __slots__ = ("shape", "items")

    def __init__(self, shape: tuple[int, ...], items: list[Any]) -> None:
        self.shape = shape
        self.items = items

    def __repr__(self) -> str:
        return f"ObjectArray(shape={self.shape}, items={self.items!r})"


# NumPy dtype -> wire name, for dtypes whose arrays can go out as their own memory.
_NATIVE_NUMPY_DTYPES: dict[Any, str] = {}


def _numpy_leaf(value: Any) -> tuple[str, tuple[int, ...], Any] | Any:
    """Split a NumPy array or scalar into (dtype, shape, C-contiguous LE bytes) or a primitive."""
    if value.ndim == 0:  # NumPy scalars and 0-d arrays travel as primitives
        return float(value) if value.dtype.name == "bfloat16" else value.item()
    name = _NATIVE_NUMPY_DTYPES.get(value.dtype)
    if name is None:
        name = value.dtype.name
        if name == "object":
            return ObjectArray(tuple(value.shape), value.reshape(-1).tolist())
        if name not in DTYPES:
            raise TypeError(
                f"cannot send a NumPy array of dtype {name}; "
                f"supported dtypes: {', '.join(sorted(DTYPES))}"
            )
        if value.dtype.byteorder == ">":
            value = value.astype(value.dtype.newbyteorder("<"))
        if name == "bfloat16":  # no buffer format: send the same memory as bytes
            raw = value.tobytes()  # C order copy; bfloat16 arrays are rarely large on the wire
            return name, value.shape, raw
        _NATIVE_NUMPY_DTYPES[value.dtype] = name
    if value.nbytes < INLINE_LIMIT:  # inlined in the header, so copied anyway: copy in C order now
        return name, value.shape, value.tobytes()
    try:
        raw = memoryview(value).cast("B")
    except TypeError:  # not C-contiguous
        raw = memoryview(value.copy(order="C")).cast("B")
    return name, value.shape, raw


def _torch_leaf(value: Any) -> tuple[str, tuple[int, ...], Any] | Any:
    import ctypes

    value = value.detach()
    if value.device.type != "cpu":
        value = value.cpu()
    if value.ndim == 0:
        return value.item()
    name = str(value.dtype).removeprefix("torch.")
    if name not in DTYPES:
        raise TypeError(f"cannot send a Torch tensor of dtype {name}")
    value = value.contiguous()
    nbytes = value.numel() * value.element_size()
    return name, tuple(value.shape), ctypes.string_at(value.data_ptr(), nbytes) if nbytes else b""


# Array and scalar types already recognised, so later values of that type skip the search.
_LEAF_SPLITTERS: dict[type, Callable[[Any], Any]] = {}


def _array_leaf(value: Any) -> tuple[str, tuple[int, ...], Any] | Any | None:
    """Recognise NumPy and Torch values without importing either; None when neither."""
    module = type(value).__module__
    if module == "numpy" or module.startswith("ml_dtypes"):
        split: Callable[[Any], Any] = _numpy_leaf
    elif module.startswith("torch") and hasattr(value, "data_ptr"):
        split = _torch_leaf
    else:
        return None
    _LEAF_SPLITTERS[type(value)] = split
    return split(value)


def _tensor_head(dtype: str, shape: tuple[int, ...]) -> bytes:
    key = (dtype, shape)
    head = _HEADS.get(key)
    if head is None:
        if len(shape) >= len(_DIMS):
            raise TypeError(f"cannot send an array with {len(shape)} dimensions")
        head = _TENSOR_HEAD.pack(_DTYPE_CODES[dtype], len(shape)) + _DIMS[len(shape)].pack(*shape)
        if len(_HEADS) >= _HEADS_LIMIT:
            _HEADS.clear()
        _HEADS[key] = head
    return head


def _copying_factory(dtype: str, shape: tuple[int, ...], buffer: Any) -> Tensor:
    # Tensors from inline bytes already own their data; frame buffers stay zero-copy views.
    return Tensor(buffer, dtype, shape)


class _Encoder:
    """One thread's msgpack packers, kept between messages.

    A packer per message, and closures per message, cost more than packing a small step reply;
    reusing them also keeps the garbage collector out of the hot path. Packers are not
    re-entrant and tuples nest, so there is one packer per nesting depth.
    """

    __slots__ = ("frames", "lenient", "depth", "packers")

    def __init__(self) -> None:
        self.frames: list[Any] = []
        self.lenient = False
        self.depth = 0
        self.packers: list[Any] = []

    def encode(self, value: Any, lenient: bool) -> list[Any]:
        self.frames = frames = [b""]
        self.lenient = lenient
        try:
            frames[0] = self.pack(value)
        finally:
            self.frames = []  # don't keep the caller's arrays alive until the next message
        return frames

    def pack(self, obj: Any) -> bytes:
        depth = self.depth
        if depth == len(self.packers):
            self.packers.append(msgpack.Packer(default=self.default, strict_types=True, use_bin_type=True))
        packer = self.packers[depth]
        self.depth = depth + 1
        try:
            packed: bytes = packer.pack(obj)
            return packed
        except BaseException:
            packer.reset()  # drop what a failed message left in the buffer
            raise
        finally:
            self.depth = depth

    def tensor_ext(self, dtype: str, shape: tuple[int, ...], buffer: Any) -> msgpack.ExtType:
        head = _tensor_head(dtype, shape)
        if len(buffer) >= INLINE_LIMIT:
            frames = self.frames
            frames.append(buffer)
            return msgpack.ExtType(_EXT_TENSOR_FRAME, head + _FRAME_INDEX.pack(len(frames) - 1))
        return msgpack.ExtType(_EXT_TENSOR_INLINE, head + bytes(buffer))

    def leaf_value(self, leaf: Any) -> Any:
        if type(leaf) is tuple:
            return self.tensor_ext(*leaf)
        if type(leaf) is ObjectArray:
            return msgpack.ExtType(_EXT_OBJECT_ARRAY, self.pack([leaf.shape, leaf.items]))
        return leaf  # a scalar array as a primitive

    def default(self, obj: Any) -> Any:
        split = _LEAF_SPLITTERS.get(type(obj))
        if split is not None:  # the common case: an array type seen before
            return self.leaf_value(split(obj))
        if isinstance(obj, Tensor):
            return self.tensor_ext(obj.dtype, obj.shape, obj.raw)
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, self.pack(list(obj)))
        if isinstance(obj, enum.Enum):
            return obj.value
        if isinstance(obj, dict):
            return dict(obj)
        if isinstance(obj, list):
            return list(obj)
        for base in (bool, int, float, str, bytes):  # subclasses of primitives go out as the base
            if isinstance(obj, base):
                return base(obj)  # type: ignore[arg-type]
        if isinstance(obj, (bytearray, memoryview)):
            return bytes(obj)
        leaf = _array_leaf(obj)
        if leaf is not None:
            return self.leaf_value(leaf)
        if self.lenient:
            return repr(obj)
        raise TypeError(
            f"cannot send a value of type {type(obj).__module__}.{type(obj).__qualname__}; "
            "rlmesh sends None, bool, int, float, str, bytes, lists, tuples, dicts and arrays"
        )


class _Decoder:
    """One thread's decoding state; the extension hook is bound once, not per message."""

    __slots__ = ("frames", "make_tensor", "object_array", "ext_hook", "busy")

    def __init__(self) -> None:
        self.frames: Sequence[Any] = ()
        self.make_tensor: TensorFactory = _copying_factory
        self.object_array: Callable[[ObjectArray], Any] | None = None
        self.ext_hook = self.extension
        self.busy = False

    def decode(self, frames: Sequence[Any], make_tensor: TensorFactory,
               object_array: Callable[[ObjectArray], Any] | None) -> Any:
        self.frames, self.make_tensor, self.object_array = frames, make_tensor, object_array
        self.busy = True
        try:
            return self.unpack(frames[0])
        finally:
            self.frames, self.object_array, self.busy = (), None, False

    def unpack(self, data: bytes) -> Any:
        return msgpack.unpackb(data, ext_hook=self.ext_hook, strict_map_key=False, raw=False,
                               use_list=True)

    def extension(self, code: int, data: bytes) -> Any:
        if code in (_EXT_TENSOR_INLINE, _EXT_TENSOR_FRAME):
            dtype_code, ndim = _TENSOR_HEAD.unpack_from(data)
            if dtype_code >= len(_DTYPE_NAMES):
                raise ProtocolError(f"unknown tensor dtype code {dtype_code}")
            if ndim >= len(_DIMS):
                raise ProtocolError(f"tensor with {ndim} dimensions")
            start = _TENSOR_HEAD.size + 8 * ndim
            shape = _DIMS[ndim].unpack_from(data, _TENSOR_HEAD.size)
            payload: Any = memoryview(data)[start:]
            if code == _EXT_TENSOR_FRAME:
                (index,) = _FRAME_INDEX.unpack_from(data, start)
                frames = self.frames
                if not 0 < index < len(frames):
                    raise ProtocolError("tensor refers to a missing frame")
                payload = frames[index]
            return self.make_tensor(_DTYPE_NAMES[dtype_code], shape, payload)
        if code == _EXT_TUPLE:
            return tuple(self.unpack(data))
        if code == _EXT_OBJECT_ARRAY:
            shape, items = self.unpack(data)
            array = ObjectArray(tuple(shape), items)
            return self.object_array(array) if self.object_array else array
        raise ProtocolError(f"unknown extension type {code}")


_per_thread = threading.local()


def encode(value: Any, *, lenient: bool = False) -> list[Any]:
    """Encode ``value`` into frames: ``[header, *raw_frames]``.

    With ``lenient=True`` values that cannot be encoded become their ``repr`` (used for
    free-form metadata); otherwise they raise ``TypeError`` naming the type.
    """
    try:
        encoder: _Encoder = _per_thread.encoder
    except AttributeError:
        encoder = _per_thread.encoder = _Encoder()
    if encoder.depth:  # called again while encoding (from a value's own hook): start afresh
        encoder = _Encoder()
    return encoder.encode(value, lenient)


def decode(frames: Sequence[Any], tensor_factory: TensorFactory | None = None,
           object_array: Callable[[ObjectArray], Any] | None = None) -> Any:
    """Decode ``[header, *raw_frames]``; tensors are built by ``tensor_factory``.

    Raises :class:`ProtocolError` on anything malformed, never another exception type.
    """
    if not frames:
        raise ProtocolError("empty message")
    try:
        decoder: _Decoder = _per_thread.decoder
    except AttributeError:
        decoder = _per_thread.decoder = _Decoder()
    if decoder.busy:  # a tensor factory decoding in turn: use a fresh decoder
        decoder = _Decoder()
    try:
        return decoder.decode(frames, tensor_factory or _copying_factory, object_array)
    except ProtocolError:
        raise
    except Exception as exc:  # msgpack raises many types for garbage input
        raise ProtocolError(f"malformed message: {exc}") from exc
