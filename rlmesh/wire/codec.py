"""Values on the wire: a msgpack header plus raw frames for large arrays.

Supported values: ``None``, bool, int, float, complex, str, bytes, lists, tuples, dicts, :class:`Tensor`,
NumPy arrays and scalars (encoded without importing NumPy here), Torch tensors, and enums (sent
as their value). Scalar arrays become Python primitives. Nothing is pickled: decoding can only
ever produce these plain types, so a peer cannot make us execute anything.

Arrays of at least :data:`INLINE_LIMIT` bytes travel as separate zero-copy frames; smaller ones
are inlined in the header, where one small copy is cheaper than another frame.

Why one module of this size: encoder, decoder and their extension types are one wire format;
keeping them together keeps every extension code next to both of its halves.
"""

from __future__ import annotations

import enum
import functools
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, Final

import msgpack  # type: ignore[import-untyped]

from rlmesh.errors import ProtocolError
from rlmesh.wire.tensor import DTYPES, Tensor

__all__ = ["encode", "decode", "wire_leaf", "EncodeError", "TensorFactory", "INLINE_LIMIT", "ObjectArray"]

INLINE_LIMIT: Final = 32 * 1024

_EXT_TENSOR_INLINE: Final = 1
_EXT_TENSOR_FRAME: Final = 2
_EXT_TUPLE: Final = 3
_EXT_OBJECT_ARRAY: Final = 4
_EXT_COMPLEX: Final = 5
_COMPLEX: Final = struct.Struct("<dd")
#: How deeply tuples and object arrays may nest. Each level is a nested msgpack call that uses
#: tens of KiB of C stack on decoding, so a deep one would crash the process, not raise.
MAX_EXTENSION_DEPTH: Final = 64

# Tensor ext payload: dtype index, ndim, dims (u64 LE), then inline bytes or a u32 frame index.
_DTYPE_NAMES: Final = tuple(sorted(DTYPES))
_DTYPE_CODES: Final = {name: i for i, name in enumerate(_DTYPE_NAMES)}
_TENSOR_HEAD: Final = struct.Struct("<BB")
_FRAME_INDEX: Final = struct.Struct("<I")
_DIMS: Final = tuple(struct.Struct(f"<{ndim}Q") for ndim in range(65))  # NumPy allows 64 dims
_MAX_DIMS: Final = len(_DIMS)
_DTYPE_COUNT: Final = len(_DTYPE_NAMES)
# Every step sends the same few (dtype, shape) pairs: keep their packed heads.
_HEADS: dict[tuple[str, tuple[int, ...]], bytes] = {}
_HEADS_LIMIT: Final = 4096

#: Builds a backend value from (dtype, shape, bytes-like) of one decoded tensor.
TensorFactory = Callable[[str, tuple[int, ...], Any], Any]


class EncodeError(TypeError):
    """A value cannot travel on the wire; ``path`` leads from the encoded value to the culprit.

    ``path`` holds dict keys and list or tuple indices, outermost first.
    """

    def __init__(self, reason: str, path: tuple[Any, ...] = ()) -> None:
        super().__init__(reason)
        self.reason = reason
        self.path = path

    def where(self, names: Sequence[str] = ()) -> str:
        """The path as Python subscripts; ``names`` name the items of a top-level list."""
        steps = list(self.path)
        head = "the value"
        if steps and names and isinstance(steps[0], int) and steps[0] < len(names):
            head = names[steps.pop(0)]
        return head + "".join(f"[{step!r}]" for step in steps)

    def __str__(self) -> str:
        return f"{self.where()}: {self.reason}"


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
        # (dtype.kind first: dtype.name is computed in Python on every call)
        return float(value) if value.dtype.kind == "V" and value.dtype.name == "bfloat16" else value.item()
    name = _NATIVE_NUMPY_DTYPES.get(value.dtype)
    if name is None:
        name = value.dtype.name
        if name == "object":
            return ObjectArray(tuple(value.shape), value.reshape(-1).tolist())
        if name not in DTYPES:
            raise TypeError(
                f"cannot send a NumPy array of dtype {value.dtype}; convert it first (e.g. "
                f".tolist() or .astype(...)); supported dtypes: {', '.join(sorted(DTYPES))}"
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


def wire_leaf(value: Any) -> Any:
    """A NumPy or Torch array or scalar as a wire value, as the encoder sends it.

    Arrays become an owned :class:`Tensor` (C order, little-endian), 0-d arrays and scalars a
    Python primitive, object arrays an :class:`ObjectArray`; anything else comes back as is.
    """
    leaf = _array_leaf(value)
    if leaf is None:
        return value
    if type(leaf) is tuple:
        dtype, shape, raw = leaf
        return Tensor(bytes(raw), dtype, shape)
    return leaf


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


def _ext(code: int, data: bytes) -> msgpack.ExtType:
    """``msgpack.ExtType(code, data)`` without its checks, which run in Python on every array
    sent; ours are valid by construction."""
    return tuple.__new__(msgpack.ExtType, (code, data))


def _copying_factory(dtype: str, shape: tuple[int, ...], buffer: Any) -> Tensor:
    # Tensors from inline bytes already own their data; frame buffers stay zero-copy views.
    return Tensor(buffer, dtype, shape)


def _complex_ext(value: complex) -> msgpack.ExtType:
    return msgpack.ExtType(_EXT_COMPLEX, _COMPLEX.pack(value.real, value.imag))


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
        except (TypeError, ValueError, OverflowError) as exc:  # msgpack's three ways to refuse
            if not lenient:
                raise _locate(value, ()) or EncodeError(str(exc)) from exc
            frames[:] = [b""]
            frames[0] = self.pack(_printable(value, set()))
        finally:
            self.frames = []  # don't keep the caller's arrays alive until the next message
        return frames

    def pack(self, obj: Any) -> bytes:
        depth = self.depth
        if depth > MAX_EXTENSION_DEPTH:
            raise TypeError(f"cannot send tuples or object arrays nested more than "
                            f"{MAX_EXTENSION_DEPTH} deep; use lists for deeper structures")
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
            return _ext(_EXT_TENSOR_FRAME, head + _FRAME_INDEX.pack(len(frames) - 1))
        return _ext(_EXT_TENSOR_INLINE, head + buffer)

    def leaf_value(self, leaf: Any) -> Any:
        if type(leaf) is tuple:
            return self.tensor_ext(*leaf)
        if type(leaf) is ObjectArray:
            return msgpack.ExtType(_EXT_OBJECT_ARRAY, self.pack([leaf.shape, leaf.items]))
        if type(leaf) is complex:  # msgpack packs what default() returns as it is
            return _complex_ext(leaf)
        return leaf  # a scalar array as a primitive

    def default(self, obj: Any) -> Any:
        split = _LEAF_SPLITTERS.get(type(obj))
        if split is not None:  # the common case: an array type seen before
            return self.leaf_value(split(obj))
        if isinstance(obj, Tensor):
            return self.tensor_ext(obj.dtype, obj.shape, obj.raw)
        if isinstance(obj, tuple):
            return msgpack.ExtType(_EXT_TUPLE, self.pack(list(obj)))
        if isinstance(obj, complex):
            return _complex_ext(obj)
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


_MAX_DEPTH: Final = 400  # below msgpack's nesting limit (511) and Python's recursion limit


def _encodes(value: Any) -> EncodeError | None:
    """Why ``value`` alone cannot be encoded, or ``None`` if it can."""
    encoder = _Encoder()
    encoder.frames = [b""]
    try:
        encoder.pack(value)  # not encode(): that would locate the failure, which called us
    except (TypeError, ValueError, OverflowError) as exc:
        return EncodeError(_reason(value, exc))
    return None


def _reason(value: Any, exc: Exception) -> str:
    if type(value) is int:
        return f"the int {value} is outside the 64-bit range the wire carries; send it as a str or float"
    text = str(exc)
    if text.startswith("cannot send"):  # our own message names the type already
        return text
    return f"cannot send a {type(value).__module__}.{type(value).__qualname__}: {text}"


def _children(value: Any) -> list[tuple[Any, Any]] | None:
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)):
        return list(enumerate(value))
    return None


def _locate(value: Any, path: tuple[Any, ...], seen: frozenset[int] = frozenset()) -> EncodeError | None:
    """The first part of ``value`` that cannot be encoded, with its path; ``None`` if all can.

    Runs only after an encoding failed, so it may afford to encode parts again.
    """
    children = _children(value)
    if children is None:
        error = _encodes(value)
        return None if error is None else EncodeError(error.reason, path)
    if len(path) >= _MAX_DEPTH:
        return EncodeError(f"nested more than {_MAX_DEPTH} levels deep; flatten it", path)
    if id(value) in seen:
        return EncodeError("this container contains itself (a reference cycle); send a copy without the cycle",
                           path)
    seen = seen | {id(value)}
    for key, child in children:
        if isinstance(value, dict) and _encodes(key) is not None:
            return EncodeError(f"the dict key {key!r} of type {type(key).__qualname__} cannot be sent", path)
        found = _locate(child, (*path, key), seen)
        if found is not None:
            return found
    return None


def _printable(value: Any, seen: set[int]) -> Any:
    """A copy of ``value`` where whatever cannot be encoded is its ``repr`` (lenient encoding)."""
    children = _children(value)
    if children is None:
        return value if _encodes(value) is None else repr(value)
    if id(value) in seen:
        return "<cycle>"
    seen.add(id(value))
    try:
        if isinstance(value, dict):
            return {k if _encodes(k) is None else repr(k): _printable(v, seen) for k, v in children}
        items = [_printable(v, seen) for _, v in children]
        return tuple(items) if isinstance(value, tuple) else items
    finally:
        seen.discard(id(value))


class _Decoder:
    """One thread's decoding state; the extension hook is bound once, not per message."""

    __slots__ = ("frames", "make_tensor", "object_array", "unpack", "busy", "depth")

    def __init__(self) -> None:
        self.frames: Sequence[Any] = ()
        self.make_tensor: TensorFactory = _copying_factory
        self.object_array: Callable[[ObjectArray], Any] | None = None
        # One partial, not a method: unpacking runs for every message. timestamp=2: msgpack's own
        # timestamp extension decodes to a plain int, never an object.
        self.unpack: Callable[[bytes], Any] = functools.partial(
            msgpack.unpackb, ext_hook=self.extension, strict_map_key=False, raw=False, use_list=True, timestamp=2)
        self.busy = False
        self.depth = 0

    def decode(self, frames: Sequence[Any], make_tensor: TensorFactory,
               object_array: Callable[[ObjectArray], Any] | None) -> Any:
        self.frames, self.make_tensor, self.object_array = frames, make_tensor, object_array
        self.busy = True
        self.depth = 0
        try:
            return self.unpack(frames[0])
        finally:
            self.frames, self.object_array, self.busy = (), None, False

    def nested(self, data: bytes) -> Any:
        """Unpack the payload of a tuple or object-array extension, refusing deep nesting."""
        if self.depth >= MAX_EXTENSION_DEPTH:
            raise ProtocolError(f"tuples or object arrays nested more than {MAX_EXTENSION_DEPTH} deep")
        self.depth += 1
        try:
            return self.unpack(data)
        finally:
            self.depth -= 1

    def extension(self, code: int, data: bytes) -> Any:
        if code == _EXT_TENSOR_INLINE or code == _EXT_TENSOR_FRAME:
            dtype_code, ndim = data[0], data[1]
            if dtype_code >= _DTYPE_COUNT:
                raise ProtocolError(f"unknown tensor dtype code {dtype_code}")
            if ndim >= _MAX_DIMS:
                raise ProtocolError(f"tensor with {ndim} dimensions")
            shape = _DIMS[ndim].unpack_from(data, 2)
            start = 2 + 8 * ndim  # after the dtype code, ndim and the dims
            if code == _EXT_TENSOR_INLINE:
                return self.make_tensor(_DTYPE_NAMES[dtype_code], shape, memoryview(data)[start:])
            (index,) = _FRAME_INDEX.unpack_from(data, start)
            frames = self.frames
            if not 0 < index < len(frames):
                raise ProtocolError("tensor refers to a missing frame")
            return self.make_tensor(_DTYPE_NAMES[dtype_code], shape, frames[index])
        if code == _EXT_TUPLE:
            return tuple(self.nested(data))
        if code == _EXT_COMPLEX:
            real, imag = _COMPLEX.unpack(data)
            return complex(real, imag)
        if code == _EXT_OBJECT_ARRAY:
            shape, items = self.nested(data)
            array = ObjectArray(tuple(shape), items)
            return self.object_array(array) if self.object_array else array
        raise ProtocolError(f"unknown extension type {code}")


_per_thread = threading.local()


def encode(value: Any, *, lenient: bool = False) -> list[Any]:
    """Encode ``value`` into frames: ``[header, *raw_frames]``.

    With ``lenient=True`` values that cannot be encoded become their ``repr`` and reference
    cycles the string ``"<cycle>"`` (used for free-form metadata); otherwise they raise
    :class:`EncodeError` (a ``TypeError``) naming where the value sits and its type.
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
