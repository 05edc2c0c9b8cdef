"""Native space specs (what travels in the handshake) and dependency-free space wrappers.

A *spec* is an exact, immutable description of a Gymnasium space: kind, dtype, shape and
bounds. :class:`Space` wraps a spec with ``sample()``, ``contains()`` and ``seed()`` working in
plain values (:class:`~rlmesh.wire.tensor.Tensor` leaves); backends convert those values to NumPy
arrays or Torch tensors through a :class:`ValueAdapter`.
"""

from __future__ import annotations

import math
import random
import struct
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar, Union

from rlmesh.errors import ProtocolError
from rlmesh.wire.tensor import Tensor, dtype_itemsize

__all__ = [
    "BoxSpec",
    "DiscreteSpec",
    "MultiBinarySpec",
    "MultiDiscreteSpec",
    "TextSpec",
    "DictSpec",
    "TupleSpec",
    "SpaceSpec",
    "Space",
    "ValueAdapter",
    "space_from_spec",
    "spec_to_wire",
    "spec_from_wire",
]

T = TypeVar("T")


@dataclass(frozen=True)
class BoxSpec:
    """Continuous or integer box; ``low``/``high`` are full-shape tensors of ``dtype``."""

    low: Tensor
    high: Tensor
    shape: tuple[int, ...]
    dtype: str


@dataclass(frozen=True)
class DiscreteSpec:
    n: int
    start: int = 0
    dtype: str = "int64"


@dataclass(frozen=True)
class MultiBinarySpec:
    shape: tuple[int, ...]
    dtype: str = "int8"


@dataclass(frozen=True)
class MultiDiscreteSpec:
    nvec: Tensor
    start: Tensor
    dtype: str = "int64"

    @property
    def shape(self) -> tuple[int, ...]:
        return self.nvec.shape


@dataclass(frozen=True)
class TextSpec:
    max_length: int
    min_length: int = 1
    charset: str = ""


@dataclass(frozen=True)
class DictSpec:
    spaces: Mapping[str, SpaceSpec] = field(default_factory=dict)


@dataclass(frozen=True)
class TupleSpec:
    spaces: tuple[SpaceSpec, ...] = ()


SpaceSpec = Union[BoxSpec, DiscreteSpec, MultiBinarySpec, MultiDiscreteSpec, TextSpec, DictSpec, TupleSpec]


def spec_to_wire(spec: SpaceSpec) -> dict[str, Any]:
    """A codec-friendly dict form of ``spec``."""
    if isinstance(spec, BoxSpec):
        return {"type": "box", "low": spec.low, "high": spec.high, "shape": list(spec.shape), "dtype": spec.dtype}
    if isinstance(spec, DiscreteSpec):
        return {"type": "discrete", "n": spec.n, "start": spec.start, "dtype": spec.dtype}
    if isinstance(spec, MultiBinarySpec):
        return {"type": "multi_binary", "shape": list(spec.shape), "dtype": spec.dtype}
    if isinstance(spec, MultiDiscreteSpec):
        return {"type": "multi_discrete", "nvec": spec.nvec, "start": spec.start, "dtype": spec.dtype}
    if isinstance(spec, TextSpec):
        return {"type": "text", "max_length": spec.max_length, "min_length": spec.min_length, "charset": spec.charset}
    if isinstance(spec, DictSpec):
        return {"type": "dict", "spaces": {k: spec_to_wire(v) for k, v in spec.spaces.items()}}
    if isinstance(spec, TupleSpec):
        return {"type": "tuple", "spaces": [spec_to_wire(s) for s in spec.spaces]}
    raise TypeError(f"not a space spec: {spec!r}")


def spec_from_wire(data: Any) -> SpaceSpec:
    """Inverse of :func:`spec_to_wire`; raises :class:`ProtocolError` on malformed input."""
    try:
        kind = data["type"]
        if kind == "box":
            return BoxSpec(data["low"], data["high"], tuple(data["shape"]), data["dtype"])
        if kind == "discrete":
            return DiscreteSpec(int(data["n"]), int(data["start"]), data["dtype"])
        if kind == "multi_binary":
            return MultiBinarySpec(tuple(data["shape"]), data["dtype"])
        if kind == "multi_discrete":
            return MultiDiscreteSpec(data["nvec"], data["start"], data["dtype"])
        if kind == "text":
            return TextSpec(int(data["max_length"]), int(data["min_length"]), data["charset"])
        if kind == "dict":
            return DictSpec({k: spec_from_wire(v) for k, v in data["spaces"].items()})
        if kind == "tuple":
            return TupleSpec(tuple(spec_from_wire(s) for s in data["spaces"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed space spec: {exc}") from exc
    raise ProtocolError(f"unknown space type {kind!r}")


# --- plain-value sampling and membership --------------------------------------------------------

_FORMATS = {
    "bool": "?", "int8": "b", "int16": "h", "int32": "i", "int64": "q",
    "uint8": "B", "uint16": "H", "uint32": "I", "uint64": "Q",
    "float16": "e", "float32": "f", "float64": "d",
}


def _unpack(tensor: Tensor) -> list[Any]:
    if tensor.dtype == "bfloat16":
        halves = struct.unpack(f"<{tensor.size}H", tensor.raw)
        return [struct.unpack("<f", struct.pack("<I", h << 16))[0] for h in halves]
    return list(struct.unpack(f"<{tensor.size}{_FORMATS[tensor.dtype]}", tensor.raw))


def _pack(values: Sequence[Any], dtype: str, shape: tuple[int, ...]) -> Tensor:
    if dtype == "bfloat16":
        words = [struct.unpack("<I", struct.pack("<f", v))[0] >> 16 for v in values]
        return Tensor(struct.pack(f"<{len(words)}H", *words), dtype, shape)
    return Tensor(struct.pack(f"<{len(values)}{_FORMATS[dtype]}", *values), dtype, shape)


def _is_float(dtype: str) -> bool:
    return dtype.startswith(("float", "bfloat"))


def _integer_range(dtype: str) -> tuple[int, int]:
    bits = dtype_itemsize(dtype) * 8
    return (0, 2**bits - 1) if dtype.startswith("uint") else (-(2 ** (bits - 1)), 2 ** (bits - 1) - 1)


def _sample_box(spec: BoxSpec, rng: random.Random) -> Tensor:
    values: list[Any] = []
    for low, high in zip(_unpack(spec.low), _unpack(spec.high)):
        if spec.dtype == "bool":
            values.append(bool(rng.getrandbits(1)) if low != high else bool(low))
        elif _is_float(spec.dtype):
            lo_ok, hi_ok = math.isfinite(low), math.isfinite(high)
            if lo_ok and hi_ok:
                values.append(rng.uniform(low, high))
            elif lo_ok:
                values.append(low + rng.expovariate(1.0))
            elif hi_ok:
                values.append(high - rng.expovariate(1.0))
            else:
                values.append(rng.gauss(0.0, 1.0))
        else:
            values.append(rng.randint(int(low), int(high)))
    return _pack(values, spec.dtype, spec.shape)


def _box_contains(spec: BoxSpec, value: Any) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool) and spec.shape in ((), (1,)):
        value = _pack([value], spec.dtype, spec.shape)
    if not isinstance(value, Tensor) or value.shape != spec.shape:
        return False
    if _is_float(value.dtype) and not _is_float(spec.dtype):
        return False
    items = _unpack(value)
    return all(lo <= v <= hi for v, lo, hi in zip(items, _unpack(spec.low), _unpack(spec.high)))


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, Tensor) and value.size == 1 and not _is_float(value.dtype):
        return int(_unpack(value)[0])
    return None


class _PlainSampler:
    """Samples and checks plain values for one spec with its own RNG."""

    def __init__(self, spec: SpaceSpec) -> None:
        self.spec = spec
        self.rng = random.Random()
        self.children: dict[Any, _PlainSampler] = {}
        if isinstance(spec, DictSpec):
            self.children = {k: _PlainSampler(v) for k, v in spec.spaces.items()}
        elif isinstance(spec, TupleSpec):
            self.children = {i: _PlainSampler(s) for i, s in enumerate(spec.spaces)}

    def seed(self, seed: int | None) -> Any:
        if seed is None:
            seed = random.SystemRandom().getrandbits(63)
        self.rng.seed(seed)
        if not self.children:
            return [seed]
        # Children get seeds drawn from the parent so one seed reproduces the whole tree.
        seeds = [seed]
        for child in self.children.values():
            seeds.extend(child.seed(self.rng.getrandbits(63)))
        return seeds

    def sample(self) -> Any:
        spec, rng = self.spec, self.rng
        if isinstance(spec, BoxSpec):
            return _sample_box(spec, rng)
        if isinstance(spec, DiscreteSpec):
            return spec.start + rng.randrange(spec.n)
        if isinstance(spec, MultiBinarySpec):
            size = math.prod(spec.shape)
            return _pack([rng.getrandbits(1) for _ in range(size)], spec.dtype, spec.shape)
        if isinstance(spec, MultiDiscreteSpec):
            values = [s + rng.randrange(n) for n, s in zip(_unpack(spec.nvec), _unpack(spec.start))]
            return _pack(values, spec.dtype, spec.shape)
        if isinstance(spec, TextSpec):
            length = rng.randint(spec.min_length, spec.max_length)
            return "".join(rng.choice(spec.charset) for _ in range(length)) if spec.charset else ""
        if isinstance(spec, DictSpec):
            return {k: child.sample() for k, child in self.children.items()}
        return tuple(child.sample() for child in self.children.values())

    def contains(self, value: Any) -> bool:
        spec = self.spec
        if isinstance(spec, BoxSpec):
            return _box_contains(spec, value)
        if isinstance(spec, DiscreteSpec):
            number = _as_int(value)
            return number is not None and spec.start <= number < spec.start + spec.n
        if isinstance(spec, MultiBinarySpec):
            return isinstance(value, Tensor) and value.shape == spec.shape and all(
                v in (0, 1) for v in _unpack(value))
        if isinstance(spec, MultiDiscreteSpec):
            if not isinstance(value, Tensor) or value.shape != spec.shape or _is_float(value.dtype):
                return False
            bounds = zip(_unpack(value), _unpack(spec.nvec), _unpack(spec.start))
            return all(s <= v < s + n for v, n, s in bounds)
        if isinstance(spec, TextSpec):
            return (isinstance(value, str) and spec.min_length <= len(value) <= spec.max_length
                    and (not spec.charset or all(c in spec.charset for c in value)))
        if isinstance(spec, DictSpec):
            return isinstance(value, Mapping) and value.keys() == self.children.keys() and all(
                child.contains(value[k]) for k, child in self.children.items())
        return (isinstance(value, (tuple, list)) and len(value) == len(self.children)
                and all(child.contains(v) for child, v in zip(self.children.values(), value)))


@dataclass(frozen=True)
class ValueAdapter:
    """How a backend turns plain values into its own values and back."""

    to_backend: Callable[[Any], Any]
    from_backend: Callable[[Any], Any]


_IDENTITY = ValueAdapter(lambda v: v, lambda v: v)


class Space(Generic[T]):
    """A space described by a native spec, sampling and checking backend values.

    ``shape`` and ``dtype`` mirror Gymnasium's attributes; ``spec`` is the exact native spec.
    """

    def __init__(self, spec: SpaceSpec, adapter: ValueAdapter = _IDENTITY) -> None:
        self.spec = spec
        self._adapter = adapter
        self._sampler = _PlainSampler(spec)

    @property
    def shape(self) -> tuple[int, ...] | None:
        spec = self.spec
        if isinstance(spec, (BoxSpec, MultiBinarySpec, MultiDiscreteSpec)):
            return spec.shape
        if isinstance(spec, DiscreteSpec):
            return ()
        return None

    @property
    def dtype(self) -> str | None:
        spec = self.spec
        return getattr(spec, "dtype", None) if not isinstance(spec, (DictSpec, TupleSpec)) else None

    @property
    def n(self) -> int:
        if not isinstance(self.spec, DiscreteSpec):
            raise AttributeError("only discrete spaces have n")
        return self.spec.n

    def __getitem__(self, key: Any) -> Space[Any]:
        spec = self.spec
        if isinstance(spec, DictSpec):
            return Space(spec.spaces[key], self._adapter)
        if isinstance(spec, TupleSpec):
            return Space(spec.spaces[key], self._adapter)
        raise TypeError(f"{type(spec).__name__} spaces are not subscriptable")

    def sample(self) -> T:
        """One random element of the space, as a backend value."""
        result: T = self._adapter.to_backend(self._sampler.sample())
        return result

    def contains(self, value: Any, /) -> bool:
        """Whether ``value`` (a backend value) belongs to the space."""
        try:
            return self._sampler.contains(self._adapter.from_backend(value))
        except (TypeError, ValueError):
            return False

    __contains__ = contains

    def seed(self, seed: int | None = None) -> list[int]:
        """Seed the sampler (and nested samplers); returns the seeds used."""
        seeds: list[int] = self._sampler.seed(seed)
        return seeds

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Space) and other.spec == self.spec

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return _describe(self.spec)


def _describe(spec: SpaceSpec) -> str:
    """A Gymnasium-style one-line description, e.g. ``Box(-1.0, 1.0, (3,), float32)``."""
    if isinstance(spec, BoxSpec):
        low, high = _unpack(spec.low), _unpack(spec.high)
        lo = low[0] if len(set(low)) == 1 else low
        hi = high[0] if len(set(high)) == 1 else high
        return f"Box({lo}, {hi}, {spec.shape}, {spec.dtype})"
    if isinstance(spec, DiscreteSpec):
        return f"Discrete({spec.n})" if spec.start == 0 else f"Discrete({spec.n}, start={spec.start})"
    if isinstance(spec, MultiBinarySpec):
        return f"MultiBinary({spec.shape})"
    if isinstance(spec, MultiDiscreteSpec):
        return f"MultiDiscrete({_unpack(spec.nvec)})"
    if isinstance(spec, TextSpec):
        return f"Text({spec.min_length}, {spec.max_length})"
    if isinstance(spec, DictSpec):
        return "Dict(" + ", ".join(f"{k!r}: {_describe(v)}" for k, v in spec.spaces.items()) + ")"
    return "Tuple(" + ", ".join(_describe(s) for s in spec.spaces) + ")"


def space_from_spec(spec: SpaceSpec) -> Space[Any]:
    """A space over plain values (Tensor leaves) for ``spec``."""
    return Space(spec)
