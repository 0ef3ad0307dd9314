"""Config sections -> the plain settings records the drivers take: every value carried over."""

from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path

import msgspec
import pytest

from drivers.ble.settings import BleSettings
from drivers.modbus.settings import BusSettings, DeviceSettings, RegisterSettings
from drivers.radio.base import RadioSettings, SerialRadioSettings, Sx127xSettings
from drivers.sim.settings import SimRadioSettings
from gateway.config import (
    BleSection,
    Config,
    ConfigError,
    ModbusBus,
    ModbusDevice,
    ModbusRegister,
    RadioSection,
    Section,
    parse_config,
)
from gateway.driver_settings import (
    ble_settings,
    modbus_settings,
    plan_nodes,
    radio_driver_settings,
)

# Keys of a config section that concern the gateway, not the driver's record.
CONFIG_ONLY = {
    RadioSection: {
        "driver", "spi", "pins", "serial_port", "serial_baud", "region", "rx_delay_s",
    },
    ModbusBus: set(),
    ModbusDevice: set(),
    ModbusRegister: set(),
    BleSection: {"enabled"},
}  # fmt: skip
RECORDS: list[tuple[type[Section], type]] = [
    (RadioSection, RadioSettings),
    (ModbusBus, BusSettings),
    (ModbusDevice, DeviceSettings),
    (ModbusRegister, RegisterSettings),
    (BleSection, BleSettings),
]


@pytest.mark.parametrize(("section", "record"), RECORDS, ids=lambda item: item.__name__)
def test_every_section_key_reaches_the_record_or_is_the_gateways(
    section: type[Section], record: type
) -> None:
    record_fields = {field.name for field in dataclasses.fields(record)}
    section_fields = {field.name for field in msgspec.structs.fields(section)}
    assert section_fields - record_fields == CONFIG_ONLY[section]
    assert record_fields - section_fields <= {"implicit_header"}  # a runtime-only radio setting


@pytest.mark.parametrize(("section", "record"), RECORDS, ids=lambda item: item.__name__)
def test_records_default_as_the_config_file_does(section: type[Section], record: type) -> None:
    section_fields = {field.name: field for field in msgspec.structs.fields(section)}
    for field in dataclasses.fields(record):
        section_field = section_fields.get(field.name)
        if section_field is None or section_field.required:
            assert field.default is dataclasses.MISSING or field.name == "implicit_header"
            continue
        default = section_field.default
        if default is msgspec.NODEFAULT:
            default = section_field.default_factory()
        expected = tuple(default) if isinstance(default, list) else default
        assert field.default == expected, field.name


def config(tmp_path: Path, text: str) -> Config:
    """A config file with ``text`` after a [gateway] table of its own."""
    return parse_config(tomllib.loads(f'[gateway]\ndata_dir = "{tmp_path}"\n{text}'))


RADIO = """
frequency_hz = 869525000
spreading_factor = 9
bandwidth_hz = 250000
coding_rate = 7
tx_power_dbm = 17
sync_word = 0x34
preamble_length = 12
crc = false
"""
RADIO_SETTINGS = RadioSettings(869_525_000, 9, 250_000, 7, 17, 0x34, 12, False, False)


def test_sx127x_settings(tmp_path: Path) -> None:
    text = f'[radio]\ndriver = "sx127x"\nspi = "sim://127.0.0.1:7000"\n{RADIO}'
    text += "[radio.pins]\ndio0 = 4\nreset = 22\n"
    assert radio_driver_settings(config(tmp_path, text)) == Sx127xSettings(
        RADIO_SETTINGS, "sim://127.0.0.1:7000", dio0_pin=4, reset_pin=22
    )


def test_serial_settings(tmp_path: Path) -> None:
    text = f'[radio]\ndriver = "serial"\nserial_port = "/dev/ttyACM0"\nserial_baud = 57600\n{RADIO}'
    assert radio_driver_settings(config(tmp_path, text)) == SerialRadioSettings(
        RADIO_SETTINGS, "/dev/ttyACM0", 57_600
    )


def test_sim_settings_carry_the_world(tmp_path: Path) -> None:
    text = f'[radio]\ndriver = "sim"\n{RADIO}[radio.pins]\ndio0 = 4\n'
    text += "[join]\nopen_join = true\njoin_rx_delay_s = 0.5\n"
    text += "[sim]\nnodes = 3\nseed = 7\nloss = 0.25\nstart_spread_s = 0\nretry_min_s = 0.5\n"
    settings = radio_driver_settings(config(tmp_path, text))
    assert isinstance(settings, SimRadioSettings)
    assert (settings.dio0_pin, settings.reset_pin) == (4, 17)
    world = settings.world
    assert world.radio == RADIO_SETTINGS
    assert (world.seed, world.loss, world.start_spread_s) == (7, 0.25, 0.0)
    assert world.state_dir == tmp_path / "sim"
    assert (world.node.join_rx_delay_s, world.node.retry_min_s) == (0.5, 0.5)
    assert [plan.eui for plan in world.nodes] == [0x0016_C001_0000_0001 + n for n in range(3)]
    assert len({plan.root_key for plan in world.nodes}) == 3
    assert all(50 <= plan.distance_m <= 2000 for plan in world.nodes)
    assert plan_nodes(config(tmp_path, text)) == list(world.nodes)  # reproducible from the seed


def test_a_world_without_keys_for_its_nodes_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"sim\.nodes: 2 nodes but the registry has 0 devices"):
        plan_nodes(config(tmp_path, "[sim]\nnodes = 2\n"))


def test_modbus_settings_keep_every_bus_device_and_register(tmp_path: Path) -> None:
    text = """
[modbus]
enabled = true
[[modbus.buses]]
name = "plant"
transport = "tcp"
host = "10.0.0.5"
retries = 0
[[modbus.buses.devices]]
unit = 3
publish = "every_poll"
registers = [
  { name = "temp", table = "input", address = 4, type = "int16", scale = 0.1, unit = "°C" },
  { name = "relay", table = "coil", address = 0, writable = true },
]
"""
    [bus] = modbus_settings(config(tmp_path, text).modbus).buses
    assert (bus.name, bus.transport, bus.host, bus.tcp_port, bus.retries) == (
        "plant", "tcp", "10.0.0.5", 502, 0,
    )  # fmt: skip
    [device] = bus.devices
    assert (device.unit, device.publish, device.poll_interval_s) == (3, "every_poll", 10.0)
    assert device.registers == (
        RegisterSettings("temp", "input", 4, type="int16", scale=0.1, unit="°C"),
        RegisterSettings("relay", "coil", 0, writable=True),
    )
    hash(bus)  # frozen all the way down: lists became tuples


def test_ble_settings(tmp_path: Path) -> None:
    text = '[ble]\nenabled = true\nbackend = "sim"\nallow = ["A4:C1:38:00:00:01"]\n'
    text += 'min_interval_s = 5\nscanning_mode = "active"\n'
    assert ble_settings(config(tmp_path, text).ble) == BleSettings(
        backend="sim",
        allow=("A4:C1:38:00:00:01",),
        min_interval_s=5.0,
        scanning_mode="active",
    )
