"""Register words and bits <-> engineering values for one configured Modbus register.

Pure: no I/O. pymodbus's own ``convert_from_registers``/``convert_to_registers`` handle the
data types and the word order; the byte order inside each 16-bit word is a byte swap done
here. Engineering value = raw * scale + offset.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence
from typing import Final

from pymodbus.client.mixin import ModbusClientMixin

from drivers.modbus.settings import RegisterSettings

RegisterValue = int | float | bool
WritePayload = list[int] | bool  # words for holding registers, one bit for a coil

_DATATYPE = ModbusClientMixin.DATATYPE
_DATATYPES: Final = {
    "int16": _DATATYPE.INT16,
    "uint16": _DATATYPE.UINT16,
    "int32": _DATATYPE.INT32,
    "uint32": _DATATYPE.UINT32,
    "float32": _DATATYPE.FLOAT32,
}
_WORDS: Final = {"int16": 1, "uint16": 1, "int32": 2, "uint32": 2, "float32": 2, "bool": 1}
RAW_RANGE: Final = {
    "int16": (-(2**15), 2**15 - 1),
    "uint16": (0, 2**16 - 1),
    "int32": (-(2**31), 2**31 - 1),
    "uint32": (0, 2**32 - 1),
}
BIT_TABLES: Final = frozenset({"coil", "discrete"})


class CodecError(ValueError):
    """Words that do not make a value for this register (wrong length, NaN, infinity)."""


class WriteRejected(ValueError):
    """A write that does not fit the register map; the message is the one-line reason."""


def is_bit(register: RegisterSettings) -> bool:
    """True for coils and discrete inputs, which carry one bit each."""
    return register.table in BIT_TABLES


def value_type(register: RegisterSettings) -> str:
    """The register's effective type: coils and discrete inputs are always ``bool``."""
    return "bool" if is_bit(register) else register.type


def width(register: RegisterSettings) -> int:
    """How many words (or bits, for coils and discrete inputs) the register occupies."""
    return 1 if is_bit(register) else _WORDS[register.type]


def _swap_bytes(words: Sequence[int]) -> list[int]:
    return [int.from_bytes(word.to_bytes(2, "big"), "little") for word in words]


def _wire_words(register: RegisterSettings, words: Sequence[int]) -> list[int]:
    """Undo (or apply: the swap is its own inverse) a little-endian byte order in each word."""
    return _swap_bytes(words) if register.byte_order == "little" else list(words)


def _fits_float32(value: float) -> bool:
    """True when ``value`` rounds to a finite float32 (the shortest decimal of the largest
    float32 lies a hair above it and must still fit)."""
    try:
        packed = struct.pack(">f", value)
    except OverflowError:
        return False
    return math.isfinite(struct.unpack(">f", packed)[0])


def _float32_shortest(value: float) -> float:
    """The shortest decimal that is the same float32, so 3.14 reads back as 3.14."""
    packed = struct.pack(">f", value)
    for digits in range(6, 10):
        candidate = float(f"{value:.{digits}g}")
        if struct.pack(">f", candidate) == packed:
            return candidate
    return value


def _scaled(register: RegisterSettings, raw: int | float) -> int | float:
    if register.scale == 1 and register.offset == 0:
        return raw
    value = raw * register.scale + register.offset
    # Twelve significant digits drop binary noise such as 230.50000000000003.
    value = float(f"{value:.12g}")
    exact = float(register.scale).is_integer() and float(register.offset).is_integer()
    if exact and isinstance(raw, int) and value.is_integer():
        return int(value)
    return value


def decode(register: RegisterSettings, raw: Sequence[int] | Sequence[bool]) -> RegisterValue:
    """Turn the words (or the bit) read for ``register`` into its engineering value."""
    if len(raw) != width(register):
        raise CodecError(f"{register.name}: expected {width(register)} values, got {len(raw)}")
    if is_bit(register):
        return bool(raw[0])
    if register.type == "bool":
        return int(raw[0]) != 0
    words = _wire_words(register, [int(word) for word in raw])
    value = ModbusClientMixin.convert_from_registers(
        words, _DATATYPES[register.type], word_order=register.word_order
    )
    assert isinstance(value, int | float)
    if register.type == "float32":
        if not math.isfinite(value):
            raise CodecError(f"{register.name}: float32 is {value}")
        value = _float32_shortest(value)
    return _scaled(register, value)


def engineering_range(register: RegisterSettings) -> tuple[float, float] | None:
    """The engineering values the register's integer type can hold, or None for bool/float."""
    bounds = RAW_RANGE.get(value_type(register))
    if bounds is None:
        return None
    ends = sorted(_scaled(register, end) for end in bounds)
    return float(ends[0]), float(ends[1])


def encode(register: RegisterSettings, value: RegisterValue) -> WritePayload:
    """Words (or the bit) to write for an engineering value; WriteRejected if it cannot fit."""
    kind = value_type(register)
    if kind == "bool":
        bit = _as_bool(register, value)
        return bit if is_bit(register) else [int(bit)]
    number = _as_number(register, value)
    raw = (number - register.offset) / register.scale
    if kind == "float32":
        if not _fits_float32(raw):
            raise WriteRejected(f"{register.name}: {value} does not fit a float32")
        words = ModbusClientMixin.convert_to_registers(
            raw, _DATATYPES[kind], word_order=register.word_order
        )
        return _wire_words(register, words)
    nearest = round(raw)
    if abs(raw - nearest) > 1e-6 * max(1.0, abs(raw)):
        raise WriteRejected(
            f"{register.name}: {value} is not a step of the register's scale {register.scale}"
        )
    low, high = RAW_RANGE[kind]
    if not low <= nearest <= high:
        span = engineering_range(register)
        assert span is not None
        raise WriteRejected(
            f"{register.name}: {value} is out of range for {kind} ({span[0]:g}..{span[1]:g})"
        )
    words = ModbusClientMixin.convert_to_registers(
        int(nearest), _DATATYPES[kind], word_order=register.word_order
    )
    return _wire_words(register, words)


def _as_bool(register: RegisterSettings, value: object) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise WriteRejected(f"{register.name}: expects true or false, got {value!r}")


def _as_number(register: RegisterSettings, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WriteRejected(f"{register.name}: expects a number, got {value!r}")
    if not math.isfinite(value):
        raise WriteRejected(f"{register.name}: expects a finite number, got {value!r}")
    return float(value)


def validate_write(register: RegisterSettings, value: object) -> WritePayload:
    """Check a requested write against the map and return what to put on the bus."""
    if not register.writable:
        raise WriteRejected(f"{register.name}: register is read-only")
    if value_type(register) != "bool":
        number = _as_number(register, value)
        if register.min is not None and number < register.min:
            raise WriteRejected(f"{register.name}: {value} is below the minimum {register.min:g}")
        if register.max is not None and number > register.max:
            raise WriteRejected(f"{register.name}: {value} is above the maximum {register.max:g}")
    return encode(register, value)  # type: ignore[arg-type]
