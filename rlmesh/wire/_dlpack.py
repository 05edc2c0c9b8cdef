"""DLPack export of :class:`rlmesh.Tensor` in pure Python (ctypes), flagged read-only.

Consumers (NumPy, Torch, JAX) receive a capsule pointing at the tensor's own bytes. The
producer side keeps the tensor alive in ``_LIVE`` until the consumer calls the deleter, or
until an unconsumed capsule is garbage-collected.
"""

from __future__ import annotations

import ctypes
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rlmesh.wire.tensor import Tensor

_READ_ONLY = 1  # DLPACK_FLAG_BITMASK_READ_ONLY
_VERSION = (1, 0)


class _Device(ctypes.Structure):
    _fields_ = [("device_type", ctypes.c_int32), ("device_id", ctypes.c_int32)]


class _DataType(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint8), ("bits", ctypes.c_uint8), ("lanes", ctypes.c_uint16)]


class _DLTensor(ctypes.Structure):
    _fields_ = [
        ("data", ctypes.c_void_p),
        ("device", _Device),
        ("ndim", ctypes.c_int32),
        ("dtype", _DataType),
        ("shape", ctypes.POINTER(ctypes.c_int64)),
        ("strides", ctypes.POINTER(ctypes.c_int64)),
        ("byte_offset", ctypes.c_uint64),
    ]


_Deleter = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


class _Managed(ctypes.Structure):
    _fields_ = [
        ("dl_tensor", _DLTensor),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _Deleter),
    ]


class _Version(ctypes.Structure):
    _fields_ = [("major", ctypes.c_uint32), ("minor", ctypes.c_uint32)]


class _ManagedVersioned(ctypes.Structure):
    _fields_ = [
        ("version", _Version),
        ("manager_ctx", ctypes.c_void_p),
        ("deleter", _Deleter),
        ("flags", ctypes.c_uint64),
        ("dl_tensor", _DLTensor),
    ]


class _PyBuffer(ctypes.Structure):
    _fields_ = [
        ("buf", ctypes.c_void_p),
        ("obj", ctypes.c_void_p),
        ("len", ctypes.c_ssize_t),
        ("itemsize", ctypes.c_ssize_t),
        ("readonly", ctypes.c_int),
        ("ndim", ctypes.c_int),
        ("format", ctypes.c_char_p),
        ("shape", ctypes.c_void_p),
        ("strides", ctypes.c_void_p),
        ("suboffsets", ctypes.c_void_p),
        ("internal", ctypes.c_void_p),
    ]


def _api(name: str, restype: Any, *argtypes: Any) -> Any:
    # Indexing (not attribute access) gives a private function object, so our argtypes never
    # clash with other users of ctypes.pythonapi.
    func = ctypes.pythonapi[name]
    func.restype = restype
    func.argtypes = argtypes
    return func


_get_buffer = _api("PyObject_GetBuffer", ctypes.c_int, ctypes.py_object, ctypes.POINTER(_PyBuffer), ctypes.c_int)
_release_buffer = _api("PyBuffer_Release", None, ctypes.POINTER(_PyBuffer))
_capsule_new = _api("PyCapsule_New", ctypes.py_object, ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p)
# The destructor runs while the capsule is being freed: touch it only through raw pointers.
_capsule_name = _api("PyCapsule_GetName", ctypes.c_char_p, ctypes.c_void_p)
_capsule_pointer = _api("PyCapsule_GetPointer", ctypes.c_void_p, ctypes.c_void_p, ctypes.c_char_p)

# address of the managed struct -> objects that must outlive the consumer's use
_LIVE: dict[int, tuple[Any, ...]] = {}


@_Deleter  # type: ignore[untyped-decorator]
def _delete(address: int | None) -> None:
    if address is not None:
        _LIVE.pop(address, None)


_CapsuleDestructor = ctypes.CFUNCTYPE(None, ctypes.c_void_p)


@_CapsuleDestructor  # type: ignore[untyped-decorator]
def _destroy_capsule(capsule: int | None) -> None:
    name = _capsule_name(capsule)
    if name in (b"dltensor", b"dltensor_versioned"):  # never consumed
        _LIVE.pop(_capsule_pointer(capsule, name) or 0, None)


def _data_pointer(view: memoryview) -> int:
    buffer = _PyBuffer()
    if _get_buffer(view, ctypes.byref(buffer), 0) != 0:  # pragma: no cover - CPython raises
        raise BufferError("cannot read tensor buffer address")
    try:
        return int(buffer.buf or 0)
    finally:
        _release_buffer(ctypes.byref(buffer))


def export(tensor: Tensor, *, versioned: bool, read_only: bool = True) -> Any:
    """Return a DLPack capsule (versioned, and flagged read-only, when the consumer supports it)."""
    code, bits = tensor._dlpack_dtype()
    ndim = tensor.ndim
    shape = (ctypes.c_int64 * max(ndim, 1))(*tensor.shape)
    dl = _DLTensor(
        data=_data_pointer(tensor.raw),
        device=_Device(1, 0),
        ndim=ndim,
        dtype=_DataType(code, bits, 1),
        shape=ctypes.cast(shape, ctypes.POINTER(ctypes.c_int64)),
        strides=None,  # C-contiguous
        byte_offset=0,
    )
    managed: _Managed | _ManagedVersioned
    if versioned:
        managed = _ManagedVersioned(
            version=_Version(*_VERSION), manager_ctx=None, deleter=_delete,
            flags=_READ_ONLY if read_only else 0, dl_tensor=dl
        )
        name = b"dltensor_versioned"
    else:
        managed = _Managed(dl_tensor=dl, manager_ctx=None, deleter=_delete)
        name = b"dltensor"
    address = ctypes.addressof(managed)
    _LIVE[address] = (tensor, shape, managed)
    return _capsule_new(address, name, ctypes.cast(_destroy_capsule, ctypes.c_void_p))
