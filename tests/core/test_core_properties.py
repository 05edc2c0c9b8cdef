"""Property tests: every documented value survives the codec, and no frames can break a server.

Hypothesis draws what ``rlmesh/codec.py`` documents as sendable (None, bool, int, float, str,
bytes, lists, tuples, dicts, Tensors, NumPy arrays and scalars of every wire dtype in any layout
and byte order, Torch tensors, enums) and checks that each decodes, after a trip through bytes
as on the wire, to an equal value with every tensor factory. Then it throws arbitrary bytes and
frame lists at a real server and checks that each gets an error reply or none, and that a real
client is served right after.
"""

from __future__ import annotations

import enum
import itertools
import json
import select
import struct
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import ml_dtypes
import msgpack  # type: ignore[import-untyped]
import numpy as np
import pytest
import torch
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rlmesh
import rlmesh.numpy as rnp
from rlmesh import ProtocolError, Tensor
from rlmesh.backends.torch import _tensor_from_wire
from rlmesh.protocol.address import to_zmq_endpoint
from rlmesh.protocol.messages import PROTOCOL_GENERATION, ErrorKind
from rlmesh.wire import codec
from rlmesh.wire.arrays import array_from_wire as _array_from_wire
from rlmesh.wire.tensor import DTYPES

CORE_DIR = Path(__file__).parent
ALL_DTYPES = sorted(DTYPES)
FACTORIES: dict[str, Any] = {"tensor": None, "numpy": _array_from_wire, "torch": _tensor_from_wire}
INT_MIN, UINT_MAX = -(2**63), 2**64 - 1  # what msgpack carries



def fast(max_examples: int) -> settings:
    """Few examples, no deadline (the machine may be busy), no example database in the repo."""
    return settings(max_examples=max_examples, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])


# --- expectations -------------------------------------------------------------------------------


def numpy_dtype(name: str) -> Any:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def wire_bytes(array: Any) -> bytes:
    """What the wire must carry for ``array``: its elements in C order, little-endian."""
    dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
    return np.ascontiguousarray(array).astype(dtype).tobytes()


def torch_bytes(tensor: Any) -> bytes:
    if not tensor.numel():
        return b""
    # A fresh copy: .contiguous() may keep an odd stride on a dimension of size 1, which .view refuses.
    packed = torch.empty(tensor.shape, dtype=tensor.dtype).copy_(tensor)
    raw: bytes = packed.reshape(-1).view(torch.uint8).numpy().tobytes()
    return raw


def to_torch(array: Any) -> Any:
    """A Torch tensor with the same dtype, shape and elements as a NumPy array."""
    dtype = getattr(torch, array.dtype.name)
    raw = wire_bytes(array)
    if not raw:
        return torch.empty(array.shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=dtype).reshape(array.shape)


def over_the_wire(value: Any, factory: str) -> Any:
    """Encode, copy the frames the way zmq delivers them (header bytes, writable raw frames), decode."""
    frames = codec.encode(value)
    received = [bytes(frames[0]), *(bytearray(frame) for frame in frames[1:])]
    return codec.decode(received, FACTORIES[factory])


def assert_same_primitive(got: Any, want: Any) -> None:
    assert type(got) is type(want), (got, want)
    if isinstance(want, (float, complex)):  # repr tells -0.0 from 0.0 and finds nan equal to nan
        assert repr(got) == repr(want)
    else:
        assert got == want


def assert_tensor(got: Any, dtype: str, shape: tuple[int, ...], raw: bytes, factory: str) -> None:
    """``got`` is the factory's tensor type holding exactly ``raw`` (bytes, so NaNs compare too)."""
    if factory == "tensor":
        assert isinstance(got, Tensor)
        assert (got.dtype, got.shape, got.tobytes()) == (dtype, shape, raw)
    elif factory == "numpy":
        assert isinstance(got, np.ndarray)
        assert (got.dtype, got.shape, got.tobytes()) == (numpy_dtype(dtype), shape, raw)
        assert got.flags.writeable  # documented: decoded arrays are owned and writable
    else:
        assert isinstance(got, torch.Tensor)
        assert (got.dtype, tuple(got.shape), torch_bytes(got)) == (getattr(torch, dtype), shape, raw)


def scalar_item(value: Any) -> Any:
    """The Python primitive a scalar array is documented to become."""
    if isinstance(value, torch.Tensor):
        return value.item()
    return float(value) if value.dtype.name == "bfloat16" else value.item()


def assert_decodes_to(got: Any, sent: Any, factory: str) -> None:
    """``got`` is what the codec documents ``sent`` to decode to."""
    if isinstance(sent, enum.Enum):  # enums are sent as their value
        assert_decodes_to(got, sent.value, factory)
    elif isinstance(sent, Tensor):  # a Tensor stays a tensor, 0-d ones too
        assert_tensor(got, sent.dtype, sent.shape, sent.tobytes(), factory)
    elif isinstance(sent, torch.Tensor):
        if sent.ndim == 0:
            assert_same_primitive(got, scalar_item(sent))
        else:
            name = str(sent.dtype).removeprefix("torch.")
            assert_tensor(got, name, tuple(sent.shape), torch_bytes(sent), factory)
    elif isinstance(sent, (np.ndarray, np.generic)):
        if sent.ndim == 0:
            assert_same_primitive(got, scalar_item(sent))
        else:
            assert_tensor(got, sent.dtype.name, sent.shape, wire_bytes(sent), factory)
    elif isinstance(sent, dict):
        assert type(got) is dict
        assert [(type(k), k) for k in got] == [(type(k), k) for k in sent]  # same keys, same order
        for key, item in sent.items():
            assert_decodes_to(got[key], item, factory)
    elif isinstance(sent, (list, tuple)):
        assert type(got) is type(sent) and len(got) == len(sent)  # a tuple comes back a tuple
        for got_item, sent_item in zip(got, sent):
            assert_decodes_to(got_item, sent_item, factory)
    else:
        assert_same_primitive(got, sent)


# --- sendable values ----------------------------------------------------------------------------


@st.composite
def filled(draw: Any, name: str, shape: tuple[int, ...]) -> Any:
    """An array of wire dtype ``name`` and ``shape``, C-contiguous and native-endian."""
    if name == "bool":
        return draw(hnp.arrays(np.bool_, shape))
    dtype = numpy_dtype(name)
    if name != "bfloat16" and draw(st.booleans()):
        return draw(hnp.arrays(dtype, shape))  # Hypothesis' own values: bounds, inf, nan, ...
    # Raw bit patterns reach every value of every dtype: NaN payloads, subnormals, -0.0.
    bits = draw(hnp.arrays(np.uint8, (*shape, dtype.itemsize)))
    return bits.view(dtype).reshape(shape)


SHAPES = hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=4)


@st.composite
def sendable_arrays(draw: Any, names: list[str] = ALL_DTYPES) -> Any:
    """Arrays of at least one dimension in any layout and byte order, inline or framed."""
    name = draw(st.sampled_from(names))
    array = draw(filled(name, draw(SHAPES)))
    if array.size and draw(st.booleans()):
        # Big enough to travel as its own frame: repeat it with a zero stride, maybe made contiguous.
        copies = -(-codec.INLINE_LIMIT // array.nbytes)
        array = np.broadcast_to(array, (copies, *array.shape))
        if draw(st.booleans()):
            array = np.ascontiguousarray(array)
    # Non-contiguous views: steps (negative ones too) along every axis, transposes, Fortran order.
    steps = draw(st.lists(st.sampled_from([1, 1, 2, 3, -1, -2]), min_size=array.ndim, max_size=array.ndim))
    array = array[tuple(slice(None, None, step) for step in steps)]
    if draw(st.booleans()):
        array = array.transpose(draw(st.permutations(range(array.ndim))))
    if draw(st.booleans()):
        array = np.asfortranarray(array)
    if array.dtype.byteorder == "=" and name != "bfloat16" and draw(st.booleans()):
        array = array.astype(array.dtype.newbyteorder(">"))  # big-endian input
    return array


@st.composite
def scalars(draw: Any, names: list[str] = ALL_DTYPES) -> Any:
    """A 0-d array, a NumPy scalar or a 0-d Torch tensor (all documented to become primitives)."""
    array = draw(filled(draw(st.sampled_from(names)), ()))
    return draw(st.sampled_from([array, array[()], to_torch(array)]))


@st.composite
def tensors(draw: Any) -> Tensor:
    """A wire Tensor of any dtype, 0-d and empty ones included, inline or framed."""
    name = draw(st.sampled_from(ALL_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4))
    array = draw(filled(name, shape))
    if array.ndim and array.size and draw(st.booleans()):
        array = np.ascontiguousarray(np.broadcast_to(array, (-(-codec.INLINE_LIMIT // array.nbytes), *shape)))
    return Tensor(wire_bytes(array), name, array.shape)


@st.composite
def torch_tensors(draw: Any) -> Any:
    """A Torch tensor of at least one dimension, maybe a non-contiguous view."""
    tensor = to_torch(draw(sendable_arrays()))
    if tensor.ndim >= 2 and draw(st.booleans()):
        tensor = tensor.transpose(0, -1)
    if draw(st.booleans()):
        tensor = tensor[::2]
    return tensor


class Color(enum.Enum):
    RED = "red"


class Level(enum.IntEnum):
    HIGH = 3


PRIMITIVES = (st.none() | st.booleans() | st.integers(INT_MIN, UINT_MAX) | st.floats()
              | st.text(max_size=8) | st.binary(max_size=16))
SENDABLE = st.recursive(
    PRIMITIVES | st.sampled_from([Color.RED, Level.HIGH]) | sendable_arrays() | scalars() | tensors()
    | torch_tensors(),
    lambda children: (st.lists(children, max_size=4) | st.lists(children, max_size=4).map(tuple)
                      | st.dictionaries(st.text(max_size=6) | st.integers(INT_MIN, UINT_MAX), children, max_size=4)),
    max_leaves=12,
)


# --- codec properties ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL_DTYPES)
@fast(40)
@given(data=st.data())
def test_arrays_of_every_dtype_and_layout_round_trip(name: str, data: Any) -> None:
    array = data.draw(sendable_arrays([name]))
    for factory in FACTORIES:
        assert_tensor(over_the_wire(array, factory), name, array.shape, wire_bytes(array), factory)
    tensor = to_torch(array)  # the same values sent from Torch
    for factory in FACTORIES:
        assert_tensor(over_the_wire(tensor, factory), name, array.shape, wire_bytes(array), factory)


@pytest.mark.parametrize("name", ALL_DTYPES)
@fast(25)
@given(data=st.data())
def test_scalar_arrays_become_python_primitives(name: str, data: Any) -> None:
    array = data.draw(filled(name, ()))
    sent_values = [array, array[()], to_torch(array)]  # 0-d array, NumPy scalar, 0-d Torch tensor
    if array.dtype.byteorder == "=" and name != "bfloat16":
        sent_values.append(array.astype(array.dtype.newbyteorder(">")))
    for sent in sent_values:
        for factory in FACTORIES:
            assert_same_primitive(over_the_wire(sent, factory), scalar_item(sent))


@fast(150)
@given(tensors())
def test_tensors_round_trip_with_every_factory(tensor: Tensor) -> None:
    for factory in FACTORIES:
        assert_tensor(over_the_wire(tensor, factory), tensor.dtype, tensor.shape, tensor.tobytes(), factory)


_FORMATS = {"bool": "?", "int8": "b", "int16": "h", "int32": "i", "int64": "q", "uint8": "B", "uint16": "H",
            "uint32": "I", "uint64": "Q", "float16": "e", "float32": "f", "float64": "d"}


@fast(100)
@given(tensors())
def test_tensor_data_is_a_typed_view_of_the_tensor_shape(tensor: Tensor) -> None:
    view = tensor.data
    assert view.readonly and view.tobytes() == tensor.tobytes()
    fmt = _FORMATS.get(tensor.dtype)
    # Documented flat bytes: bfloat16, complex, float16 before Python 3.12; and empty tensors,
    # which memoryview cannot cast ("cannot cast view with zeros in shape").
    flat = fmt is None or (fmt == "e" and sys.version_info < (3, 12)) or tensor.size == 0
    if flat:
        assert (view.format, view.shape) == ("B", (tensor.nbytes,))
    else:
        assert (view.format, view.shape) == (fmt, tensor.shape)


@fast(120)
@given(SENDABLE)
def test_nested_values_round_trip(value: Any) -> None:
    for factory in FACTORIES:
        assert_decodes_to(over_the_wire(value, factory), value, factory)


# --- garbage ------------------------------------------------------------------------------------


def packb(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


@st.composite
def tensor_extensions(draw: Any) -> msgpack.ExtType:
    """Tensor extensions with a plausible head and anything else wrong: dtype, ndim, dims, payload."""
    dims = draw(st.lists(st.integers(0, 3) | st.integers(0, UINT_MAX), max_size=4))
    head = struct.pack("<BB", draw(st.integers(0, len(ALL_DTYPES) - 1) | st.integers(0, 255)),
                       draw(st.just(len(dims)) | st.integers(0, 255)))
    tail = draw(st.binary(max_size=32) | st.integers(0, 6).map(struct.Struct("<I").pack))
    return msgpack.ExtType(draw(st.sampled_from([1, 2])), head + struct.pack(f"<{len(dims)}Q", *dims) + tail)


MSGPACK_VALUES = st.recursive(
    PRIMITIVES | tensor_extensions() | st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=24))
    # msgpack's own timestamp extension (type -1), which the codec does not use
    | st.builds(msgpack.Timestamp, st.integers(INT_MIN, 2**63 - 1), st.integers(0, 999_999_999)),
    lambda children: (st.lists(children, max_size=4)
                      | st.dictionaries(st.text(max_size=4) | st.integers(-3, 3), children, max_size=4)
                      # well-formed tuple and object-array extensions around anything
                      | st.lists(children, max_size=4).map(lambda items: msgpack.ExtType(3, packb(items)))
                      | st.tuples(st.lists(st.integers(-2, 4), max_size=3), st.lists(children, max_size=4))
                      .map(lambda shape_items: msgpack.ExtType(4, packb(list(shape_items))))),
    max_leaves=10,
)
KINDS = st.sampled_from(["hello", "reset", "step", "render", "close", "heartbeat", "predict"]) | st.text(max_size=8)
HELLO_PAYLOADS = st.fixed_dictionaries(
    {"protocol": st.sampled_from([PROTOCOL_GENERATION, 0, PROTOCOL_GENERATION + 1]) | MSGPACK_VALUES},
    optional={"version": st.just(rlmesh.__version__) | MSGPACK_VALUES})
# [kind, request_id, session, payload] with every part possibly of the wrong type.
REQUESTS = st.tuples(KINDS | MSGPACK_VALUES, st.integers(INT_MIN, UINT_MAX) | MSGPACK_VALUES,
                     st.none() | st.text(max_size=8) | MSGPACK_VALUES, HELLO_PAYLOADS | MSGPACK_VALUES).map(list)


@st.composite
def damaged_requests(draw: Any) -> list[bytes]:
    """A real request (an inline array, maybe a framed one) cut short, overwritten, or re-framed."""
    size = draw(st.sampled_from([3, codec.INLINE_LIMIT // 8]))
    payload = {"a": np.arange(size, dtype=np.float64), "t": (1, np.ones(2, np.int8))}
    frames = [bytes(frame) for frame in codec.encode(["step", 7, "fuzz", payload])]
    header = frames[0]
    if draw(st.booleans()):
        header = header[:draw(st.integers(0, len(header) - 1))]
    else:
        for _ in range(draw(st.integers(1, 4))):
            at = draw(st.integers(0, len(header) - 1))
            header = header[:at] + bytes([draw(st.integers(0, 255))]) + header[at + 1:]
    rest = frames[1:]
    if rest and draw(st.booleans()):
        rest = [rest[0][:draw(st.integers(0, len(rest[0])))]]
    return [header, *rest, *draw(st.lists(st.binary(max_size=32), max_size=2))]


HEADERS = (st.binary(max_size=64) | MSGPACK_VALUES.map(packb) | REQUESTS.map(packb)
           | st.lists(MSGPACK_VALUES, max_size=6).map(packb))
GARBAGE = (st.tuples(HEADERS, st.lists(st.binary(max_size=48), max_size=4)).map(lambda h: [h[0], *h[1]])
           | damaged_requests() | st.lists(st.binary(max_size=64), min_size=1, max_size=8))


@fast(200)
@given(GARBAGE)
def test_decoding_garbage_raises_protocol_errors_only(frames: list[bytes]) -> None:
    for factory in FACTORIES.values():
        try:
            codec.decode(frames, factory)
        except ProtocolError:
            pass


PLAIN_TYPES = (type(None), bool, int, float, str, bytes, list, tuple, dict, codec.ObjectArray)
FACTORY_TYPES = {"tensor": Tensor, "numpy": np.ndarray, "torch": torch.Tensor}


def assert_plain(value: Any, factory: str) -> None:
    assert isinstance(value, (*PLAIN_TYPES, FACTORY_TYPES[factory])), f"decoded a {type(value)}: {value!r}"
    if isinstance(value, dict):
        for key, item in value.items():
            assert_plain(key, factory)
            assert_plain(item, factory)
    elif isinstance(value, (list, tuple)):
        for item in value:
            assert_plain(item, factory)
    elif isinstance(value, codec.ObjectArray):
        assert_plain(value.items, factory)


@settings(fast(200))
@given(GARBAGE)
def test_decoded_garbage_holds_only_plain_types(frames: list[bytes]) -> None:
    for factory, make_tensor in FACTORIES.items():
        try:
            value = codec.decode(frames, make_tensor)
        except ProtocolError:
            continue
        assert_plain(value, factory)


# --- a server under fire ------------------------------------------------------------------------


def start_server() -> tuple[subprocess.Popen[str], str]:
    """A CartPole EnvServer in its own process (a crash must not take the tests down with it)."""
    config = json.dumps({"env": "cartpole", "address": "tcp://127.0.0.1:0"})
    proc = subprocess.Popen([sys.executable, str(CORE_DIR / "core_serve.py"), config],
                            stdout=subprocess.PIPE, text=True, cwd=CORE_DIR)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], 60.0)
    line = proc.stdout.readline() if ready else ""
    if not line.startswith("READY "):
        proc.kill()
        proc.wait()
        raise RuntimeError(f"the fuzzed server did not start: {line!r}")
    return proc, line.split(" ", 1)[1].strip()


def stop_server(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def await_reply(dealer: zmq.Socket[Any], proc: subprocess.Popen[str], timeout: float = 10.0) -> Any:
    """The next decoded reply; fails as soon as the server process is gone."""
    deadline = time.monotonic() + timeout
    while not dealer.poll(100):
        assert proc.poll() is None, f"the server died with exit code {proc.returncode}"
        assert time.monotonic() < deadline, f"no reply within {timeout} s"
    return codec.decode(dealer.recv_multipart())


def error_kinds() -> set[str]:
    return {value for key, value in vars(ErrorKind).items() if key.isupper()}


def assert_error_reply(reply: Any) -> None:
    assert isinstance(reply, list) and len(reply) == 3, reply
    status, request_id, payload = reply
    assert status == "error" and type(request_id) is int, reply
    assert isinstance(payload, dict) and set(payload) == {"kind", "type", "message", "traceback"}, reply
    assert all(type(field) is str for field in payload.values()), reply
    assert payload["kind"] in error_kinds(), reply


class Target:
    """A served CartPole with a real client attached, and a raw DEALER socket to fuzz it with.

    The real client stays attached throughout, so no garbage can attach instead of it: every
    request from the raw socket is either a stranger's or carries the client's session on purpose.
    """

    def __init__(self) -> None:
        self.probe_ids = itertools.count(2**62)
        self.steps = 0
        self.start()

    def start(self) -> None:
        self.proc, address = start_server()
        self.client = rnp.RemoteEnv(address)
        self.client.reset(seed=0)
        self.dealer = zmq.Context.instance().socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self.dealer.connect(to_zmq_endpoint(address))

    @property
    def session(self) -> str:
        session: str = self.client._connection._session  # the attached client's token
        return session

    def close(self) -> None:
        self.dealer.close(linger=0)
        self.client.close()
        stop_server(self.proc)

    def exchange(self, frames: list[bytes]) -> list[Any]:
        """Send ``frames``, then a probe; the decoded replies that came before the probe's.

        A server answers one peer's messages in order, so the probe's reply marks the end of
        whatever the garbage got, without waiting for a timeout when it got nothing.
        """
        if self.proc.poll() is not None:  # an earlier example killed it: each example stands alone
            self.close()                    # (so Hypothesis can shrink to the one that kills it)
            self.start()
        probe_id = next(self.probe_ids)
        self.dealer.send_multipart(frames)
        self.dealer.send_multipart(codec.encode(["step", probe_id, "not-a-session", None]))
        replies = []
        while True:
            reply = await_reply(self.dealer, self.proc)
            if isinstance(reply, list) and len(reply) == 3 and reply[1] == probe_id:
                assert reply[0] == "error" and reply[2]["kind"] == ErrorKind.NOT_ATTACHED, reply
                return replies
            replies.append(reply)

    def assert_serves_the_client(self) -> None:
        assert self.proc.poll() is None, f"server died with exit code {self.proc.returncode}"
        _, _, terminated, truncated, _ = self.client.step(self.steps % 2)
        self.steps += 1
        if terminated or truncated:
            self.client.reset()


@pytest.fixture(scope="module")
def target() -> Iterator[Target]:
    fuzzed = Target()
    yield fuzzed
    fuzzed.close()


@fast(200)
@given(frames=GARBAGE)
def test_garbage_gets_an_error_reply_or_none_and_the_server_serves_on(target: Target, frames: list[bytes]) -> None:
    replies = target.exchange(frames)
    assert len(replies) <= 1, replies
    for reply in replies:
        assert_error_reply(reply)
    target.assert_serves_the_client()


@fast(120)
@given(kind=st.sampled_from(["reset", "step", "render", "hello", "heartbeat", "predict"]) | st.text(max_size=8),
       request_id=st.integers(INT_MIN, UINT_MAX),
       payload=MSGPACK_VALUES | st.fixed_dictionaries({}, optional={"seed": MSGPACK_VALUES, "options": MSGPACK_VALUES,
                                                                      "env_index": MSGPACK_VALUES}))
def test_nonsense_in_the_attached_session_gets_one_reply(target: Target, kind: str, request_id: int,
                                                          payload: Any) -> None:
    if kind == "close":  # a well-formed close detaches the client: not nonsense
        kind = "closed"
    request = packb([kind, request_id, target.session, payload])
    try:
        codec.decode([request], _array_from_wire)  # as the server decodes it
        decodes = True
    except ProtocolError:  # e.g. a bogus extension in the payload: the request id is unknown
        decodes = False
    replies = target.exchange([request])
    if kind == "heartbeat" and decodes:  # never answered
        assert replies == []
    else:
        assert len(replies) == 1, replies
        status, got_id, error = replies[0]
        if status != "ok":  # a valid action or reset succeeds
            assert_error_reply(replies[0])
        if decodes:
            assert got_id == request_id
        else:
            assert (got_id, error["kind"]) == (-1, ErrorKind.PROTOCOL)
    target.assert_serves_the_client()


def _nested_tuple_extensions(depth: int) -> msgpack.ExtType:
    value = packb([])
    for _ in range(depth - 1):
        value = packb(msgpack.ExtType(3, value))
    return msgpack.ExtType(3, value)


def test_a_deeply_nested_request_cannot_crash_a_server() -> None:
    proc, address = start_server()  # its own server: this one may die
    dealer = zmq.Context.instance().socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect(to_zmq_endpoint(address))
    try:
        request = packb(["step", 1, "s", _nested_tuple_extensions(300)])  # 1127 bytes
        dealer.send(request)
        assert_error_reply(await_reply(dealer, proc))
    finally:
        dealer.close(linger=0)
        alive = proc.poll() is None
        stop_server(proc)
    assert alive


def test_a_deeply_nested_tuple_decodes_or_is_refused() -> None:
    # Nested tuples are sendable; one the encoder accepts must decode or raise ProtocolError.
    # In a child process, since the failure mode is a crash.
    script = textwrap.dedent("""
        from rlmesh import ProtocolError
        from rlmesh.wire import codec
        value = ()
        for _ in range(300):
            value = (value,)
        try:
            frames = codec.encode(value)
        except TypeError:
            raise SystemExit(0)  # refusing to encode it is fine too
        try:
            assert codec.decode(frames) == value
        except ProtocolError:
            pass
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, (result.returncode, result.stderr[-2000:])
