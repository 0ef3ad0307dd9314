"""Modbus and BLE through the running bridge to a real mosquitto.

The gateway is built from its config by ``Gateway.build`` (``[modbus]`` pointing at pymodbus's
own server on a loopback TCP port, ``[ble]`` on the simulated advertisement source, an empty
simulated radio world). A paho client on its own thread watches the broker and sends commands.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

from drivers.ble.driver import BleDriver
from drivers.ble.sim import SimAdvertSource
from drivers.modbus.sim import SimModbusServer
from gateway.config import Config, ModbusRegister, parse_config
from gateway.daemon import Gateway
from gateway.discovery import DiscoveryMessage
from gateway.timefmt import rfc3339
from tests.bridge_fixtures import GATEWAY_ID, PREFIX, MqttWatcher, fast_settings, running_gateway
from tests.ha_schema import check_schema
from tests.servers import Mosquitto

BUS = "plant"
METER = f"modbus-{BUS}-1"
SILENT_UNIT = 2
REGISTERS: list[dict[str, Any]] = [
    {"name": "voltage", "table": "input", "address": 0, "type": "uint16", "scale": 0.1,
     "unit": "V", "device_class": "voltage"},
    {"name": "current", "table": "input", "address": 1, "type": "int16", "scale": 0.01,
     "unit": "A", "device_class": "current"},
    {"name": "power", "table": "input", "address": 2, "type": "float32", "unit": "W",
     "device_class": "power"},
    {"name": "energy", "table": "input", "address": 4, "type": "uint32", "scale": 0.001,
     "unit": "kWh", "device_class": "energy", "state_class": "total_increasing"},
    {"name": "mode", "table": "holding", "address": 1, "type": "uint16", "writable": True},
    {"name": "setpoint", "table": "holding", "address": 0, "type": "int16", "scale": 0.1,
     "unit": "°C", "device_class": "temperature", "writable": True, "min": 5, "max": 30},
    {"name": "relay", "table": "coil", "address": 0, "writable": True},
    {"name": "alarm", "table": "discrete", "address": 0, "device_class": "problem"},
]  # fmt: skip
READINGS: dict[str, Any] = {
    "voltage": 230.4,
    "current": -1.25,
    "power": 1234.5,
    "energy": 12.345,
    "mode": 3,
    "setpoint": 21.5,
    "relay": True,
    "alarm": False,
}
ROOM_MAC, DOOR_MAC, BEACON_MAC = "A4:C1:38:00:00:01", "A4:C1:38:00:00:03", "F0:00:00:00:BE:AC"
ROOM, DOOR, BEACON = "ble-a4c138000001", "ble-a4c138000003", "ble-f0000000beac"


def register(name: str) -> ModbusRegister:
    return ModbusRegister.from_table(next(r for r in REGISTERS if r["name"] == name))


def bus_config(tmp_path: Path, broker: Mosquitto, server: SimModbusServer) -> Config:
    settings = fast_settings(tmp_path / "data", broker.port, nodes=0)
    settings["modbus"] = {
        "enabled": True,
        "buses": [
            {
                "name": BUS,
                "transport": "tcp",
                "host": server.host,
                "tcp_port": server.port,
                "timeout_s": 1.5,
                "retries": 0,
                "devices": [
                    {"unit": 1, "name": "Meter", "poll_interval_s": 0.3, "registers": REGISTERS},
                    {
                        "unit": SILENT_UNIT,
                        "poll_interval_s": 0.1,
                        "registers": [{"name": "x", "table": "holding", "address": 0}],
                    },
                ],
            }
        ],
    }
    settings["ble"] = {"enabled": True, "backend": "sim", "min_interval_s": 0}
    return parse_config(settings)


def ble_source(gateway: Gateway) -> SimAdvertSource:
    assert gateway.bridge is not None
    driver = next(d for d in gateway.bridge.drivers if isinstance(d, BleDriver))
    assert driver.scanner is not None
    source = driver.scanner.backend
    assert isinstance(source, SimAdvertSource)
    return source


def node(device: str) -> str:
    """The node id discovery groups a device's entities under."""
    return f"{GATEWAY_ID}_{device}"


def report_topic(device: str) -> str:
    return f"{PREFIX}/devices/{device}/report"


async def test_modbus_and_ble_readings_reach_mqtt_with_their_types(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with SimModbusServer(units=[1, SILENT_UNIT]) as server:
        for name, value in READINGS.items():
            await server.set_value(1, register(name), value)
        async with running_gateway(bus_config(tmp_path, mosquitto, server)) as gateway:
            source = ble_source(gateway)
            await watcher.wait_until(lambda: watcher.on(report_topic(METER)), "a meter report")
            source.advertise(ROOM_MAC, temperature=23.45, humidity=51.5, battery=88)
            source.advertise(DOOR_MAC, window=True)

            def room_report() -> dict[str, Any] | None:
                reports = [m.json() for m in watcher.on(report_topic(ROOM))]
                return next((r for r in reports if r["data"]["temperature"] == 23.45), None)

            await watcher.wait_until(lambda: room_report() is not None, "the room sensor")
            await watcher.wait_until(
                lambda: any(m.json()["data"].get("window") for m in watcher.on(report_topic(DOOR))),
                "the door sensor",
            )
            await watcher.wait_until(lambda: watcher.on(report_topic(BEACON)), "the beacon")
            # Availability is brought up to date after the discovery configs, once the gateway
            # is connected: wait for it before the gateway stops.
            await watcher.wait_until(
                lambda: all(
                    watcher.on(f"{PREFIX}/devices/{d}/availability")
                    for d in (METER, ROOM, DOOR, BEACON)
                ),
                "every device's availability",
            )
    watcher.drop()

    meter = watcher.on(report_topic(METER))[0].json()
    assert (meter["device"], meter["kind"]) == (METER, "reading")
    assert meter["data"] == READINGS
    for name, value in READINGS.items():  # JSON keeps the type: 3 stays 3, True stays true
        assert type(meter["data"][name]) is type(value), name
    assert meter["rssi"] is None and meter["snr"] is None

    room = room_report()
    assert room is not None
    assert (room["device"], room["kind"], room["rssi"]) == (ROOM, "bthome", -60)
    assert room["data"] == {"temperature": 23.45, "humidity": 51.5, "battery": 88}
    assert isinstance(room["data"]["battery"], int)
    beacon = watcher.on(report_topic(BEACON))[0].json()
    assert beacon["kind"] == "ibeacon"
    assert beacon["data"]["uuid"] == "e2c56db5-dffb-48d2-b060-d0f5a71096e0"
    assert (beacon["data"]["major"], beacon["data"]["minor"], beacon["rssi"]) == (1, 1, -72)
    # Each device said it was online (retained, for Home Assistant's availability).
    for device in (METER, ROOM, DOOR, BEACON):
        availability = watcher.on(f"{PREFIX}/devices/{device}/availability")
        assert [m.payload for m in availability][:1] == [b"online"], device


async def test_modbus_writes_over_mqtt_and_expired_ones_never_reach_the_bus(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with SimModbusServer(units=[1, SILENT_UNIT]) as server:
        for name, value in READINGS.items():
            await server.set_value(1, register(name), value)
        async with running_gateway(bus_config(tmp_path, mosquitto, server)):
            await watcher.wait_until(lambda: watcher.on(report_topic(METER)), "a meter report")
            watcher.command(
                METER,
                {"id": "w-set", "action": "write",
                 "params": {"register": "setpoint", "value": 22.5}, "ttl_s": 10},
                response_topic=f"{PREFIX}/responses/app",
            )  # fmt: skip
            watcher.command(
                METER,
                {"id": "w-relay", "action": "write",
                 "params": {"register": "relay", "value": False}, "ttl_s": 10},
            )  # fmt: skip
            for command_id in ("w-set", "w-relay"):
                assert await watcher.wait_for_final(METER, command_id) == "executed"
            assert await server.get_value(1, register("setpoint")) == 22.5
            assert await server.read_words(1, "holding", 0) == [225]
            assert await server.read_words(1, "coil", 0) == [False]
            await watcher.wait_until(
                lambda: any(
                    m.json()["data"]["setpoint"] == 22.5 and m.json()["data"]["relay"] is False
                    for m in watcher.on(report_topic(METER))
                ),
                "a report with the written values",
            )

            # Expired on arrival: its deadline had passed when it was sent.
            watcher.command(
                METER,
                {"id": "w-late", "action": "write",
                 "params": {"register": "setpoint", "value": 5.0},
                 "expires_at": rfc3339(time.time() - 5)},
            )  # fmt: skip
            # Expired while waiting for the bus: a poll of a silent slave holds it for 1.5 s.
            server.set_silent(SILENT_UNIT)
            before = server.requests[SILENT_UNIT]
            async with asyncio.timeout(10):
                while server.requests[SILENT_UNIT] == before:
                    await asyncio.sleep(0.005)
            watcher.command(
                METER,
                {"id": "w-busy", "action": "write",
                 "params": {"register": "setpoint", "value": 6.0}, "ttl_s": 0.4},
            )  # fmt: skip
            for command_id in ("w-late", "w-busy"):
                assert await watcher.wait_for_final(METER, command_id) == "expired"
            server.set_silent(SILENT_UNIT, silent=False)
            await asyncio.sleep(0.5)  # a write that slipped through would have landed by now
            assert await server.get_value(1, register("setpoint")) == 22.5
            # A bad write is refused by the driver with the reason, and writes nothing.
            watcher.command(
                METER,
                {"id": "w-range", "action": "write",
                 "params": {"register": "setpoint", "value": 99}, "ttl_s": 10},
            )  # fmt: skip
            assert await watcher.wait_for_final(METER, "w-range") == "rejected"
            assert await server.get_value(1, register("setpoint")) == 22.5
    watcher.drop()
    assert watcher.statuses(METER, "w-set") == ["accepted", "executed"]
    assert [m.json()["status"] for m in watcher.on(f"{PREFIX}/responses/app")] == [
        "accepted",
        "executed",
    ]
    assert watcher.results(METER, "w-set")[-1]["detail"] == "setpoint=22.5"
    assert watcher.statuses(METER, "w-late") == ["expired"]
    assert watcher.statuses(METER, "w-busy") == ["accepted", "expired"]
    assert watcher.results(METER, "w-busy")[-1]["detail"] == "expired before the bus write"
    assert "setpoint" in (watcher.results(METER, "w-range")[-1].get("detail") or "")


async def test_home_assistant_discovery_for_modbus_and_ble_devices(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with (
        SimModbusServer(units=[1, SILENT_UNIT]) as server,
        running_gateway(bus_config(tmp_path, mosquitto, server)),
    ):
        await watcher.wait_until(
            lambda: all(watcher.on(report_topic(d)) for d in (METER, ROOM, DOOR, BEACON)),
            "reports from the meter and the BLE sensors",
        )
        expected = {
            f"homeassistant/sensor/{node(METER)}/voltage/config",
            f"homeassistant/sensor/{node(METER)}/energy/config",
            f"homeassistant/number/{node(METER)}/setpoint/config",
            f"homeassistant/number/{node(METER)}/mode/config",
            f"homeassistant/switch/{node(METER)}/relay/config",
            f"homeassistant/binary_sensor/{node(METER)}/alarm/config",
            f"homeassistant/sensor/{node(ROOM)}/temperature/config",
            f"homeassistant/sensor/{node(ROOM)}/humidity/config",
            f"homeassistant/sensor/{node(ROOM)}/battery/config",
            f"homeassistant/binary_sensor/{node(DOOR)}/window/config",
            f"homeassistant/sensor/{node(BEACON)}/major/config",
        }
        # Seen live first: a subscriber arriving before the broker had them would get them
        # live too, without the retain flag.
        await watcher.wait_until(
            lambda: expected <= {m.topic for m in watcher.snapshot()}, "discovery configs"
        )
        # A subscriber arriving later gets every config, retained.
        late = MqttWatcher(mosquitto, ("homeassistant/#",))
        late.connect()
        await late.wait_until(
            lambda: expected <= {m.topic for m in late.snapshot() if m.retain},
            "retained discovery configs for modbus and ble devices",
        )
        late.drop()
    watcher.drop()

    configs = {m.topic: m for m in late.snapshot() if m.retain and m.payload}
    for message in configs.values():
        check_schema(DiscoveryMessage(message.topic, message.payload.decode(), message.retain))
    setpoint = json.loads(configs[f"homeassistant/number/{node(METER)}/setpoint/config"].payload)
    assert setpoint["command_topic"] == f"{PREFIX}/devices/{METER}/ha/setpoint/set"
    assert setpoint["state_topic"] == report_topic(METER)
    assert (setpoint["min"], setpoint["max"], setpoint["unit_of_measurement"]) == (5.0, 30.0, "°C")
    temperature = json.loads(
        configs[f"homeassistant/sensor/{node(ROOM)}/temperature/config"].payload
    )
    assert temperature["state_topic"] == report_topic(ROOM)
    assert temperature["device_class"] == "temperature"
    assert {a["topic"] for a in temperature["availability"]} == {
        f"{PREFIX}/status",
        f"{PREFIX}/devices/{ROOM}/availability",
    }
