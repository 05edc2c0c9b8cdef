"""Values in process: Tensor, DLPack views, the codec, and the NumPy and Torch conversions."""

from __future__ import annotations

import enum
import random
import sys
from typing import Any

import core_envs
import ml_dtypes
import numpy as np
import pytest
import torch

import rlmesh.numpy as rnp
import rlmesh.torch as rtorch
from rlmesh import ProtocolError, Tensor
from rlmesh.backends.torch import _tensor_from_wire
from rlmesh.wire import codec
from rlmesh.wire.arrays import array_from_wire as _array_from_wire
from rlmesh.wire.tensor import DTYPES

ALL_DTYPES = sorted(DTYPES)


def test_the_zoo_covers_every_wire_dtype() -> None:
    assert set(core_envs.NUMPY_DTYPES) == DTYPES


def _filled(dtype: str, shape: tuple[int, ...], seed: int) -> Any:
    rng = np.random.default_rng(seed)
    values = rng.integers(0, 100, size=shape)
    return values.astype(core_envs.NUMPY_DTYPES[dtype]) if dtype != "bool" else values % 2 == 0


def address_of(view: Any) -> int:
    return int(np.frombuffer(view, np.uint8).ctypes.data)


# --- codec -------------------------------------------------------------------------------------


@pytest.mark.parametrize("factory", ["tensor", "numpy", "torch"])
def test_every_dtype_round_trips_through_the_codec(factory: str) -> None:
    zoo = core_envs.dtype_zoo(3)
    frames = codec.encode(zoo)
    decoded = codec.decode(frames, {"tensor": None, "numpy": _array_from_wire, "torch": _tensor_from_wire}[factory])
    assert list(decoded) == list(zoo)
    for key, want in zoo.items():
        got = decoded[key]
        if want.ndim == 0:  # scalar arrays travel as primitives
            assert type(got) is type(want.item()) and got == want.item()
            continue
        if factory == "tensor":
            assert isinstance(got, Tensor) and got.shape == want.shape
            assert got.dtype == want.dtype.name
            got = rnp.asarray(got)
        elif factory == "torch":
            assert isinstance(got, torch.Tensor) and tuple(got.shape) == want.shape
            assert got.dtype == getattr(torch, want.dtype.name)
            got = torch_to_numpy(got, want.dtype)
        assert got.dtype == want.dtype.newbyteorder("=")
        assert got.tobytes() == np.ascontiguousarray(want).astype(got.dtype).tobytes(), key


def torch_to_numpy(value: Any, dtype: Any) -> Any:
    raw = value.contiguous().view(torch.uint8).numpy().tobytes() if value.numel() else b""
    return np.frombuffer(raw, dtype.newbyteorder("=")).reshape(tuple(value.shape))


def test_large_arrays_travel_as_their_own_frames_and_small_ones_inline() -> None:
    big = np.arange(codec.INLINE_LIMIT // 4, dtype=np.float32)
    small = np.arange(codec.INLINE_LIMIT // 4 - 1, dtype=np.float32)
    frames = codec.encode({"big": big, "small": small})
    assert len(frames) == 2
    assert memoryview(frames[1]).nbytes == big.nbytes
    assert len(frames[0]) < small.nbytes + 200  # the big one is not in the header
    # Zero-copy on the way out: the frame is the array's own memory.
    assert address_of(frames[1]) == big.ctypes.data


def test_containers_and_primitives_round_trip() -> None:
    value: dict[Any, Any] = {"none": None, "t": True, "i": -(2**63), "u": 2**64 - 1, "f": 1.5, "s": "é", "b": b"\x00",
             "list": [1, [2, (3, {"x": ()})]], "tuple": (1, 2), 7: "int key", "enum": _Color.RED}
    decoded = codec.decode(codec.encode(value))
    expected = {**value, "enum": "red"}
    assert decoded == expected
    assert isinstance(decoded["tuple"], tuple) and isinstance(decoded["list"][1][1], tuple)


class _Color(enum.Enum):
    RED = "red"


def test_nothing_is_pickled() -> None:
    class Custom:
        pass

    with pytest.raises(TypeError, match="Custom"):
        codec.encode({"x": Custom()})
    header = codec.encode({"x": Custom()}, lenient=True)
    assert "Custom object" in codec.decode(header)["x"]
    with pytest.raises(TypeError, match="dtype"):
        codec.encode(np.array(["a", "b"]))


def test_object_arrays_decode_per_backend() -> None:
    array = np.array([None, {"k": np.arange(2)}, "s"], dtype=object)
    frames = codec.encode(array)
    plain = codec.decode(frames)
    assert isinstance(plain, codec.ObjectArray) and plain.shape == (3,)
    as_numpy = codec.decode(frames, _array_from_wire, rnp.BACKEND.object_array)
    assert as_numpy.dtype == object and as_numpy.shape == (3,)
    assert as_numpy[0] is None and as_numpy[2] == "s"
    np.testing.assert_array_equal(as_numpy[1]["k"], np.arange(2))


def test_garbage_decodes_to_protocol_errors_only() -> None:
    rng = random.Random(0)
    good = codec.encode({"obs": np.arange(10000, dtype=np.float64), "x": (1, np.arange(3))})
    samples = [b"", b"\xc1", b"\xd4\x01", b"\xc7\x03\x01\x00\x00\x00", b"\xd6\x09abcd",
               b"\xc7\x0a\x02" + b"\x05\x02" + b"\x00" * 8]
    for _ in range(300):
        header: bytearray = bytearray(good[0])
        for _ in range(rng.randint(1, 4)):
            header[rng.randrange(len(header))] = rng.randrange(256)
        samples.append(bytes(header[: rng.randint(0, len(header))]) if rng.random() < 0.3 else bytes(header))
    for sample in samples:
        for factory in (None, _array_from_wire, _tensor_from_wire):
            try:
                codec.decode([sample, *good[1:]], factory)
            except ProtocolError:
                pass
    with pytest.raises(ProtocolError):
        codec.decode([])


# --- Tensor and DLPack -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_tensor_exposes_its_bytes_without_copying(dtype: str) -> None:
    array = _filled(dtype, (3, 4), 1)
    tensor = Tensor(array.tobytes(), dtype, (3, 4))
    assert (tensor.dtype, tensor.shape, tensor.ndim, tensor.size) == (dtype, (3, 4), 2, 12)
    assert tensor.nbytes == array.nbytes and tensor.raw.readonly
    assert tensor == Tensor(bytearray(array.tobytes()), dtype, (3, 4))
    if dtype not in ("bfloat16", "complex64", "complex128"):
        assert tensor.tolist() == array.tolist()
        if dtype != "float16" or sys.version_info >= (3, 12):  # memoryview has no "e" before 3.12
            assert tensor.data.shape == (3, 4) and tensor.data.tolist() == array.tolist()
    else:
        with pytest.raises(TypeError, match=dtype):
            tensor.tolist()


def test_tensor_rejects_inconsistent_sizes_and_unknown_dtypes() -> None:
    with pytest.raises(ValueError, match="needs 16 bytes"):
        Tensor(b"\x00" * 15, "float32", (2, 2))
    with pytest.raises(TypeError, match="unsupported tensor dtype 'float8'"):
        Tensor(b"", "float8", (0,))
    with pytest.raises(ValueError, match="non-negative"):
        Tensor(b"", "int8", (-1,))


@pytest.mark.parametrize("dtype", [d for d in ALL_DTYPES if d != "bfloat16"])
def test_numpy_dlpack_view_is_zero_copy_and_read_only(dtype: str) -> None:
    array = _filled(dtype, (5, 3), 2)
    tensor = Tensor(bytearray(array.tobytes()), dtype, (5, 3))
    view = np.from_dlpack(tensor)
    np.testing.assert_array_equal(view, array, strict=True)
    assert view.ctypes.data == address_of(tensor.raw)
    assert not view.flags.writeable
    with pytest.raises(ValueError, match="read-only"):
        view[0, 0] = 1


def test_numpy_dlpack_copy_is_writable_and_separate() -> None:
    tensor = Tensor(np.arange(4, dtype=np.float32).tobytes(), "float32", (4,))
    copied: Any = np.from_dlpack(tensor, copy=True)
    assert copied.flags.writeable and copied.ctypes.data != address_of(tensor.raw)
    copied += 1
    assert tensor.tolist() == [0.0, 1.0, 2.0, 3.0]


@pytest.mark.parametrize("shape", [(0,), (0, 3), (), (1, 1, 1)])
def test_dlpack_of_empty_and_scalar_tensors(shape: tuple[int, ...]) -> None:
    array = np.arange(int(np.prod(shape)), dtype=np.int32).reshape(shape)
    tensor = Tensor(array.tobytes(), "int32", shape)
    np.testing.assert_array_equal(np.from_dlpack(tensor), array, strict=True)
    assert rtorch.as_tensor(tensor).tolist() == array.tolist()
    assert rnp.asarray(tensor).shape == shape


def test_dlpack_view_keeps_the_tensor_alive() -> None:
    view = np.from_dlpack(Tensor(np.arange(10000, dtype=np.int64).tobytes(), "int64", (10000,)))
    _churn = [bytearray(80000) for _ in range(20)]
    np.testing.assert_array_equal(view, np.arange(10000))


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_torch_dlpack_view_shares_memory(dtype: str) -> None:
    array = _filled(dtype, (4, 2), 3)
    tensor = Tensor(bytearray(array.tobytes()), dtype, (4, 2))
    shared = rtorch.as_tensor(tensor)
    copied = rtorch.as_tensor(tensor, copy=True)
    assert shared.dtype == getattr(torch, dtype) and tuple(shared.shape) == (4, 2)
    assert shared.data_ptr() == address_of(tensor.raw)
    assert copied.data_ptr() != address_of(tensor.raw)
    assert torch.equal(shared, copied)
    assert torch_to_numpy(copied, array.dtype).tobytes() == array.tobytes()


def test_torch_as_tensor_copy_semantics_by_mutation() -> None:
    tensor = Tensor(bytearray(np.zeros(4, np.float32).tobytes()), "float32", (4,))
    rtorch.as_tensor(tensor, copy=True).add_(5)
    assert tensor.tolist() == [0.0] * 4
    rtorch.as_tensor(tensor, copy=False).add_(5)  # documented: writes show through the shared view
    assert tensor.tolist() == [5.0] * 4
    assert rtorch.as_tensor(3.5).item() == 3.5


def test_bfloat16_through_ml_dtypes() -> None:
    values = np.array([[1.5, -2.25], [3.0e38, 0.0078125]], dtype=ml_dtypes.bfloat16)
    tensor = rnp.from_array(values)
    assert isinstance(tensor, Tensor) and tensor.dtype == "bfloat16" and tensor.shape == (2, 2)
    back = rnp.asarray(tensor)
    assert back.dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(back.astype(np.float32), values.astype(np.float32))
    as_torch = rtorch.as_tensor(tensor)
    assert as_torch.dtype == torch.bfloat16
    assert as_torch.float().tolist() == values.astype(np.float32).tolist()
    assert rtorch.from_tensor(as_torch) == tensor


# --- NumPy conversions -------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", ALL_DTYPES)
def test_asarray_is_a_writable_copy(dtype: str) -> None:
    array = _filled(dtype, (2, 5), 4)
    tensor = Tensor(array.tobytes(), dtype, (2, 5))
    out = rnp.asarray(tensor)
    assert out.flags.writeable and out.flags.owndata
    assert out.ctypes.data != address_of(tensor.raw)
    assert out.tobytes() == array.tobytes() and out.shape == (2, 5)
    out[...] = out[::-1, ::-1]
    assert tensor.raw.tobytes() == array.tobytes()


def test_from_array_copies_and_normalises_layout() -> None:
    source = np.arange(12, dtype=np.float32).reshape(3, 4)
    tensor = rnp.from_array(source)
    assert isinstance(tensor, Tensor)
    source += 100
    assert tensor.tolist() == np.arange(12, dtype=np.float32).reshape(3, 4).tolist()
    fortran = np.asfortranarray(np.arange(6, dtype=np.int16).reshape(2, 3))
    assert rnp.from_array(fortran).tolist() == [[0, 1, 2], [3, 4, 5]]  # type: ignore[union-attr]
    big_endian = np.arange(4, dtype=">u4")
    assert rnp.from_array(big_endian).tolist() == [0, 1, 2, 3]  # type: ignore[union-attr]
    strided = np.arange(20, dtype=np.int64)[::4]
    assert rnp.from_array(strided).tolist() == [0, 4, 8, 12, 16]  # type: ignore[union-attr]
    assert rnp.from_array(np.float32(2.5)) == 2.5 and type(rnp.from_array(np.int8(3))) is int
    assert rnp.from_array(np.array(True)) is True


def test_torch_from_tensor_detaches_and_copies() -> None:
    source = torch.arange(6, dtype=torch.float32, requires_grad=True).reshape(2, 3)
    tensor = rtorch.from_tensor(source.t())  # non-contiguous, requires grad
    assert isinstance(tensor, Tensor) and tensor.shape == (3, 2)
    assert tensor.tolist() == [[0.0, 3.0], [1.0, 4.0], [2.0, 5.0]]
    assert rtorch.from_tensor(torch.tensor(7)) == 7


def test_decoded_frames_are_owned_and_writable() -> None:
    message = {"big": np.arange(codec.INLINE_LIMIT, dtype=np.float32),  # own frame
               "small": np.arange(8, dtype=np.float32)}  # inline in the header

    def received() -> list[Any]:  # what a socket hands over: fresh buffers per message
        return [bytearray(memoryview(f)) for f in codec.encode(message)]

    as_numpy = codec.decode(received(), _array_from_wire)
    for value in as_numpy.values():
        value /= 255.0
    assert as_numpy["small"][1] == np.float32(1 / 255.0) and as_numpy["big"][255] == 1.0
    as_torch = codec.decode(received(), _tensor_from_wire)
    for value in as_torch.values():
        value.div_(255)
    assert as_torch["big"][255].item() == 1.0 and as_torch["small"][255 % 8].item() == np.float32(7 / 255.0)
