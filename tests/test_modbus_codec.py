"""Register words <-> values, read planning and per-device state, without a bus."""

from __future__ import annotations

import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.modbus.codec import (
    CodecError,
    WriteRejected,
    decode,
    encode,
    engineering_range,
    validate_write,
)
from drivers.modbus.health import Availability, ChangeFilter
from drivers.modbus.plan import plan_reads
from drivers.modbus.settings import RegisterSettings
from gateway.config import ConfigError, ModbusRegister, parse_config
from gateway.driver_settings import register_settings
from gateway.model import EventKind


def reg(**fields: Any) -> RegisterSettings:
    """A register as a config file would give it."""
    table = {"name": "x", "table": "holding", "address": 0, **fields}
    return register_settings(ModbusRegister.from_table(table))


def float_words(value: float) -> list[int]:
    high, low = struct.unpack(">HH", struct.pack(">f", value))
    return [high, low]


@pytest.mark.parametrize(
    ("fields", "words", "expected"),
    [
        ({"type": "int16"}, [0xFF83], -125),
        ({"type": "int16", "scale": 0.1}, [0xFF83], -12.5),
        ({"type": "uint16", "scale": 0.1}, [2305], 230.5),
        ({"type": "uint16", "offset": -40}, [65], 25),
        ({"type": "uint16", "byte_order": "little"}, [0x3412], 0x1234),
        ({"type": "int32"}, [0xFFFE, 0x7960], -100_000),
        ({"type": "int32", "word_order": "little"}, [0x7960, 0xFFFE], -100_000),
        ({"type": "uint32"}, [0xB2D0, 0x5E00], 3_000_000_000),
        ({"type": "uint32", "scale": 0.001}, [0x0001, 0x0000], 65.536),
        ({"type": "float32"}, [0x449A, 0x5000], 1234.5),
        ({"type": "float32", "word_order": "little"}, [0x5000, 0x449A], 1234.5),
        ({"type": "float32", "byte_order": "little"}, [0x9A44, 0x0050], 1234.5),
        (
            {"type": "float32", "word_order": "little", "byte_order": "little"},
            [0x0050, 0x9A44],
            1234.5,
        ),
        ({"type": "float32"}, float_words(3.14), 3.14),
        ({"type": "bool"}, [2], True),
        ({"table": "coil"}, [True], True),
        ({"table": "discrete", "type": "bool"}, [False], False),
    ],
)
def test_decode_known_words(fields: dict[str, Any], words: list[int], expected: Any) -> None:
    value = decode(reg(**fields), words)
    assert value == expected
    assert type(value) is type(expected)


def test_decode_refuses_nan_and_wrong_length() -> None:
    with pytest.raises(CodecError, match="nan"):
        decode(reg(type="float32"), [0x7FC0, 0x0000])
    with pytest.raises(CodecError, match="expected 2 values, got 1"):
        decode(reg(type="uint32"), [1])


@pytest.mark.parametrize("kind", ["int16", "uint16", "int32", "uint32", "float32"])
@pytest.mark.parametrize("word_order", ["big", "little"])
@pytest.mark.parametrize("byte_order", ["big", "little"])
@given(data=st.data())
def test_words_round_trip(kind: str, word_order: str, byte_order: str, data: st.DataObject) -> None:
    register = reg(type=kind, word_order=word_order, byte_order=byte_order, writable=True)
    count = 1 if kind.endswith("16") else 2
    words = data.draw(st.lists(st.integers(0, 0xFFFF), min_size=count, max_size=count))
    try:
        value = decode(register, words)
    except CodecError:
        return  # NaN and infinities are refused, not round-tripped
    assert encode(register, value) == words


@given(raw=st.integers(-(2**31), 2**31 - 1))
def test_scaled_int32_round_trip(raw: int) -> None:
    register = reg(type="int32", scale=0.1, offset=-5, writable=True)
    words = list(struct.unpack(">HH", struct.pack(">i", raw)))
    assert encode(register, decode(register, words)) == words


def test_encode_examples() -> None:
    assert encode(reg(type="int16", scale=0.1), 21.5) == [215]
    assert encode(reg(type="int16", scale=0.1), -0.3) == [0xFFFD]
    assert encode(reg(type="float32", word_order="little"), 1234.5) == [0x5000, 0x449A]
    assert encode(reg(table="coil"), True) is True
    assert encode(reg(type="bool"), True) == [1]


@pytest.mark.parametrize(
    ("fields", "value", "reason"),
    [
        ({}, 1, "read-only"),
        ({"writable": True, "min": 5, "max": 30}, 4.9, "below the minimum 5"),
        ({"writable": True, "min": 5, "max": 30}, 31, "above the maximum 30"),
        ({"writable": True, "type": "int16"}, 40_000, r"out of range for int16 \(-32768..32767\)"),
        ({"writable": True, "type": "uint16", "scale": 0.1}, -1, r"out of range .*0..6553.5"),
        (
            {"writable": True, "type": "int16", "scale": 0.5},
            1.2,
            "not a step of the register's scale",
        ),
        ({"writable": True}, True, "expects a number"),
        ({"writable": True}, "12", "expects a number"),
        ({"writable": True}, float("nan"), "expects a finite number"),
        ({"writable": True, "type": "float32"}, 1e39, "does not fit a float32"),
        ({"writable": True, "table": "coil"}, 2, "expects true or false"),
        ({"writable": True, "table": "coil"}, "on", "expects true or false"),
    ],
)
def test_validate_write_rejects(fields: dict[str, Any], value: Any, reason: str) -> None:
    with pytest.raises(WriteRejected, match=reason):
        validate_write(reg(**fields), value)


def test_validate_write_accepts() -> None:
    assert validate_write(reg(writable=True, table="coil"), 1) is True
    assert validate_write(reg(writable=True, type="int16", scale=0.1, min=5, max=30), 30) == [300]


def test_engineering_range() -> None:
    assert engineering_range(reg(type="int16", scale=0.1)) == (-3276.8, 3276.7)
    assert engineering_range(reg(type="uint16", scale=-1)) == (-65535, 0)
    assert engineering_range(reg(type="float32")) is None
    assert engineering_range(reg(table="coil")) is None


def test_plan_merges_touching_registers_only() -> None:
    registers = [
        reg(name="a", address=0, type="uint16"),
        reg(name="b", address=1, type="float32"),
        reg(name="c", address=10, type="int16"),
        reg(name="d", table="input", address=3),
        reg(name="e", table="coil", address=0),
        reg(name="f", table="coil", address=1),
        reg(name="g", address=10, type="uint16"),  # same word as c, another reading of it
    ]
    blocks = [
        (b.table, b.address, b.count, [r.name for r in b.registers]) for b in plan_reads(registers)
    ]
    assert blocks == [
        ("coil", 0, 2, ["e", "f"]),
        ("holding", 0, 3, ["a", "b"]),
        ("holding", 10, 1, ["c", "g"]),
        ("input", 3, 1, ["d"]),
    ]


def test_plan_respects_request_size_limit() -> None:
    registers = [reg(name=f"r{i}", address=i * 2, type="uint32") for i in range(100)]
    blocks = plan_reads(registers)
    assert [b.count for b in blocks] == [124, 76]
    assert sum(len(b.registers) for b in blocks) == 100


def test_availability_transitions() -> None:
    health = Availability(offline_after=2)
    assert health.failure() is None
    assert health.failure() is EventKind.OFFLINE
    assert health.failure() is None
    assert health.success() is EventKind.ONLINE
    assert health.success() is None
    assert health.failure() is None
    assert health.state == "online"


def test_change_filter_deadband() -> None:
    changes = ChangeFilter("on_change", deadband=1.0, per_field={"energy": 0.0})
    first = {"t": 20.0, "energy": 5, "relay": False}
    assert changes.should_publish(first)
    changes.commit(first)
    assert not changes.should_publish({"t": 20.9, "energy": 5, "relay": False})
    assert changes.should_publish({"t": 21.1, "energy": 5, "relay": False})
    assert changes.should_publish({"t": 20.0, "energy": 6, "relay": False})
    assert changes.should_publish({"t": 20.0, "energy": 5, "relay": True})
    assert changes.should_publish({"t": 20.0, "energy": 5})
    assert changes.should_publish({"t": None, "energy": 5, "relay": False})
    changes.reset()
    assert changes.should_publish(first)
    assert ChangeFilter("every_poll").should_publish({})


@pytest.mark.parametrize(
    ("register", "problem"),
    [
        ({"table": "coil", "type": "int16"}, "coil registers are bool, got type 'int16'"),
        ({"table": "input", "writable": True}, "input registers cannot be writable"),
        ({"scale": 0}, "scale must not be 0"),
        ({"min": 5, "max": 1}, "max must not be below min"),
    ],
)
def test_config_register_problems(register: dict[str, Any], problem: str) -> None:
    entry = {"name": "x", "table": "holding", "address": 0, **register}
    data = {"modbus": {"buses": [{"name": "b", "port": "/dev/null", "devices": [
        {"unit": 1, "registers": [entry]}]}]}}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.problems == [f"modbus.buses[0].devices[0].registers[0]: {problem}"]


def test_config_duplicates() -> None:
    registers = [{"name": "x", "table": "holding", "address": 0}] * 2
    data = {"modbus": {"buses": [
        {"name": "b", "port": "/dev/null", "devices": [{"unit": 1, "registers": registers}]},
        {"name": "b", "port": "/dev/null", "devices": [{"unit": 2}, {"unit": 2}]},
    ]}}  # fmt: skip
    with pytest.raises(ConfigError) as caught:
        parse_config(data)
    assert caught.value.problems == [
        "modbus.buses[0].devices[0]: register names must be unique, repeated: x",
        "modbus.buses[1]: device units must be unique on a bus, repeated: [2]",
    ]
