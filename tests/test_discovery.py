"""Home Assistant MQTT discovery messages checked against Home Assistant's schema.

Every config is checked with ``tests/ha_schema.check_schema`` (keys, required keys, device
classes, units and state classes per platform, written from Home Assistant's docs and
platform schemas); templates are rendered with jinja2 the way Home Assistant renders them.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from drivers.ble.advert import BleAdvert
from drivers.ble.bthome import decode_bthome
from drivers.ble.driver import IBEACON_FIELDS
from drivers.ble.sim import BTHOME_UUID16, encode_bthome_v2, sig_uuid
from gateway.devices import DeviceInfo
from gateway.discovery import (
    HA_COMMAND_QOS,
    HA_STATUS_QOS,
    DiscoveryMessage,
    DiscoveryPublisher,
    availability_for_event,
)
from gateway.lora import LORA_CONTROL_ACTIONS, LORA_FIELDS
from gateway.model import DeviceEvent, EventKind, Report
from tests.ha_schema import check_schema, topic_match

ROOT = Path(__file__).resolve().parents[1]

HEAT_PUMP = DeviceInfo(
    "modbus-plant-3", "modbus", "Heat pump",
    {
        "flow_temp": {"type": "int16", "unit": "°C", "device_class": "temperature",
                      "writable": False, "state_class": None},
        "energy": {"type": "uint32", "unit": "kWh", "device_class": "energy",
                   "writable": False, "state_class": "total_increasing"},
        "setpoint": {"type": "int16", "unit": "°C", "device_class": "temperature",
                     "writable": True, "min": 5.0, "max": 30.0, "step": 0.1},
        "limit": {"type": "float32", "writable": True},
        "relay": {"type": "bool", "writable": True},
        "alarm": {"type": "bool", "writable": False, "device_class": "problem"},
        "return_temp_c": {"type": "int16", "writable": False, "unit": None,
                          "device_class": None, "state_class": None},
        "line_pressure": {"type": "uint16", "unit": "bar", "device_class": "temperature",
                          "writable": False},
        "mode": {"type": "str", "writable": True, "options": ["eco", "comfort", "off"]},
        "serial_number": {"type": "uint32", "writable": False},
        "starts_total": {"type": "uint32", "writable": False},
    },
    ("write",),
)  # fmt: skip
ROOM = DeviceInfo(
    "ble-a4c138000001", "ble", "Living room",
    {
        "temperature": {"type": "float", "unit": "°C", "device_class": "temperature"},
        "humidity": {"type": "float", "unit": "%", "device_class": "humidity"},
        "battery": {"type": "int", "unit": "%", "device_class": "battery"},
        "pressure": {"type": "float", "unit": "mbar", "device_class": "pressure"},
        "count": {"type": "int", "device_class": "count"},
        "dew_point": {"type": "float", "unit": "°C", "device_class": "dew_point"},
        "window": {"type": "bool", "device_class": "window"},
        "packet_id": {"type": "int", "device_class": "packet_id"},
    },
)  # fmt: skip
BEACON = DeviceInfo("ble-f0000000beac", "ble", "Beacon", dict(IBEACON_FIELDS))
FIELD_NODE = DeviceInfo(
    "lora-0011223344556677", "lora", "Field node 7",
    {"soil moisture": {"type": "float", "unit": "%", "device_class": "moisture"}},
    ("reboot", "write"),
)  # fmt: skip
LORA_NODE = DeviceInfo(
    "lora-8899aabbccddeeff", "lora", "lora-8899aabbccddeeff",
    dict(LORA_FIELDS), LORA_CONTROL_ACTIONS,
)  # fmt: skip
DEVICES = [HEAT_PUMP, ROOM, BEACON, FIELD_NODE, LORA_NODE]


def publisher(**settings: Any) -> DiscoveryPublisher:
    return DiscoveryPublisher(topic_prefix="duogate/gw1", gateway_id="gw1", **settings)


def render(template: str, **variables: Any) -> str:
    return ImmutableSandboxedEnvironment().from_string(template).render(**variables)


def entities(
    devices: list[DeviceInfo], prefix: str = "homeassistant", **settings: Any
) -> dict[tuple[str, str], tuple[str, dict[str, Any]]]:
    """(node id, object id) -> (platform, config), every message checked on the way."""
    found = {}
    for message in publisher(**settings).messages(devices):
        platform, config = check_schema(message, prefix)
        match = topic_match(message.topic, prefix)
        found[(match["node_id"], match["object_id"])] = (platform, config)
    return found


def entity(device: DeviceInfo, object_id: str) -> tuple[str, dict[str, Any]]:
    return entities([device])[(f"gw1_{device.device}", object_id)]


def test_every_message_follows_the_schema() -> None:
    messages = publisher().messages(DEVICES)
    for message in messages:
        check_schema(message)
    unique_ids = [json.loads(m.payload)["unique_id"] for m in messages]
    assert len(unique_ids) == len(set(unique_ids))
    assert len({m.topic for m in messages}) == len(messages)
    used = {topic_match(m.topic)["component"] for m in messages}
    assert used == {"sensor", "binary_sensor", "switch", "number", "select", "button"}


def test_platforms_chosen_per_reading_and_action() -> None:
    platforms = {
        (node.removeprefix("gw1_"), object_id): platform
        for (node, object_id), (platform, _) in entities(DEVICES).items()
        if node != "duogate_gw1"
    }
    pump, node = HEAT_PUMP.device, LORA_NODE.device
    assert {k[1]: v for k, v in platforms.items() if k[0] == pump} == {
        "flow_temp": "sensor", "energy": "sensor", "setpoint": "number", "limit": "number",
        "relay": "switch", "alarm": "binary_sensor", "return_temp_c": "sensor",
        "line_pressure": "sensor", "mode": "select", "serial_number": "sensor",
        "starts_total": "sensor",
    }  # fmt: skip
    assert {k[1]: v for k, v in platforms.items() if k[0] == node} == {
        "temperature_c": "sensor",
        "relay": "switch",
        "counter": "sensor",
        "action_ping": "button",
        "action_set_interval": "number",
    }
    assert platforms[(FIELD_NODE.device, "action_reboot")] == "button"
    assert (FIELD_NODE.device, "action_write") not in platforms


def test_sensor_config_in_detail() -> None:
    platform, config = entity(HEAT_PUMP, "flow_temp")
    assert platform == "sensor"
    assert config == {
        "name": "Flow temp",
        "unique_id": "duogate_gw1_modbus-plant-3_flow_temp",
        "state_topic": "duogate/gw1/devices/modbus-plant-3/report",
        "value_template": "{{ value_json.data.flow_temp }}",
        "unit_of_measurement": "°C",
        "device_class": "temperature",
        "state_class": "measurement",
        "availability": [
            {"topic": "duogate/gw1/status"},
            {"topic": "duogate/gw1/devices/modbus-plant-3/availability"},
        ],
        "availability_mode": "all",
        "device": {
            "identifiers": ["duogate_gw1_modbus-plant-3"],
            "name": "Heat pump",
            "manufacturer": "duogate",
            "model": "Modbus device",
            "via_device": "duogate_gw1",
        },
        "origin": {"name": "duogate"},
    }


def shown(device: DeviceInfo, object_id: str) -> tuple[Any, ...]:
    _, config = entity(device, object_id)
    keys = ("name", "unit_of_measurement", "device_class", "state_class", "entity_category")
    return tuple(config.get(key) for key in keys)


@pytest.mark.parametrize(
    ("device", "object_id", "expected"),
    [
        # LoRa readings named as they come off the air
        (LORA_NODE, "temperature_c", ("Temperature", "°C", "temperature", "measurement", None)),
        (LORA_NODE, "counter", ("Report counter", None, None, "total_increasing", "diagnostic")),
        # BTHome: the driver's units and classes, names from the catalogue
        (ROOM, "humidity", ("Humidity", "%", "humidity", "measurement", None)),
        (ROOM, "battery", ("Battery", "%", "battery", "measurement", "diagnostic")),
        (ROOM, "pressure", ("Pressure", "mbar", "pressure", "measurement", None)),
        (ROOM, "dew_point", ("Dew point", "°C", "temperature", "measurement", None)),
        (ROOM, "count", ("Count", None, None, "measurement", None)),
        (ROOM, "packet_id", ("Packet id", None, None, None, "diagnostic")),
        # iBeacon identifiers are never statistics
        (BEACON, "major", ("Major", None, None, None, "diagnostic")),
        (BEACON, "minor", ("Minor", None, None, None, "diagnostic")),
        (BEACON, "uuid", ("UUID", None, None, None, "diagnostic")),
        (BEACON, "tx_power", ("Transmit power", "dBm", "signal_strength", "measurement",
                              "diagnostic")),
        # Modbus: the register map's word wins; the name's unit suffix fills a gap
        (HEAT_PUMP, "energy", ("Energy", "kWh", "energy", "total_increasing", None)),
        (HEAT_PUMP, "return_temp_c", ("Return temp", "°C", "temperature", "measurement", None)),
        (HEAT_PUMP, "serial_number", ("Serial number", None, None, None, "diagnostic")),
        (HEAT_PUMP, "starts_total", ("Starts total", None, None, "total_increasing", None)),
        # a unit the device class does not allow: Home Assistant would refuse the entity
        (HEAT_PUMP, "line_pressure", ("Line pressure", "bar", None, "measurement", None)),
        (FIELD_NODE, "soil_moisture", ("Soil moisture", "%", "moisture", "measurement", None)),
    ],
)  # fmt: skip
def test_names_units_and_classes_from_the_catalogue(
    device: DeviceInfo, object_id: str, expected: tuple[Any, ...]
) -> None:
    assert shown(device, object_id) == expected


def test_bthome_readings_as_the_decoder_describes_them_fit_home_assistant() -> None:
    measurements = [(0x01, 88), (0x02, 23.45), (0x03, 51.5), (0x04, 1013.25), (0x05, 300.5),
                    (0x0C, 3.1), (0x12, 600), (0x2D, 1)]  # fmt: skip
    advert = BleAdvert(
        "A4:C1:38:00:00:09", -60, None,
        {sig_uuid(BTHOME_UUID16): encode_bthome_v2(measurements)}, {}, 1.0,
    )  # fmt: skip
    reading = decode_bthome(advert)
    assert reading is not None
    sensor = DeviceInfo("ble-a4c138000009", "ble", "Sensor", reading.fields)
    found = {object_id: config for (_, object_id), (_, config) in entities([sensor]).items()}
    assert {name: found[name].get("device_class") for name in reading.fields} == {
        "battery": "battery", "temperature": "temperature", "humidity": "humidity",
        "pressure": "pressure", "illuminance": "illuminance", "voltage": "voltage",
        "carbon_dioxide": "carbon_dioxide", "window": "window",
    }  # fmt: skip
    assert found["carbon_dioxide"]["name"] == "CO₂"
    assert found["pressure"]["unit_of_measurement"] == "mbar"


def test_no_device_class_home_assistant_does_not_know() -> None:
    _, packet = entity(ROOM, "packet_id")
    _, count = entity(ROOM, "count")
    assert "device_class" not in packet and "device_class" not in count
    _, alarm = entity(HEAT_PUMP, "alarm")
    assert alarm["device_class"] == "problem"
    _, uuid = entity(BEACON, "uuid")
    assert "state_class" not in uuid and "unit_of_measurement" not in uuid


def test_value_templates_read_the_report() -> None:
    wire = Report(
        "r1", "modbus-plant-3", "reading", 1.7e9, 4,
        {"flow_temp": 41.5, "relay": True, "alarm": False, "soil moisture": 33.0,
         "mode": "eco"},
    ).to_wire()  # fmt: skip
    value_json = json.loads(json.dumps(wire))
    pump = {
        object_id: config
        for (node, object_id), (_, config) in entities([HEAT_PUMP, FIELD_NODE]).items()
    }
    assert render(pump["flow_temp"]["value_template"], value_json=value_json) == "41.5"
    assert render(pump["relay"]["value_template"], value_json=value_json) == "ON"
    assert render(pump["alarm"]["value_template"], value_json=value_json) == "OFF"
    assert render(pump["mode"]["value_template"], value_json=value_json) == "eco"
    assert render(pump["soil_moisture"]["value_template"], value_json=value_json) == "33.0"
    # A report without the reading (a BTHome advert carries only some) changes nothing:
    # Home Assistant ignores a switch or binary sensor state that is neither ON nor OFF.
    partial = {"data": {"flow_temp": 40.0}}
    assert render(pump["relay"]["value_template"], value_json=partial) == ""
    assert render(pump["alarm"]["value_template"], value_json=partial) == ""


def test_controls_take_plain_payloads_on_their_own_topics() -> None:
    found = entities(DEVICES)
    configs = [config for _, config in found.values()]
    assert not any("command_template" in config for config in configs)
    pump = f"gw1_{HEAT_PUMP.device}"
    _, relay = found[(pump, "relay")]
    assert relay["command_topic"] == "duogate/gw1/devices/modbus-plant-3/ha/relay/set"
    assert (relay["payload_on"], relay["payload_off"]) == ("ON", "OFF")
    _, setpoint = found[(pump, "setpoint")]
    assert setpoint["command_topic"] == "duogate/gw1/devices/modbus-plant-3/ha/setpoint/set"
    assert (setpoint["min"], setpoint["max"], setpoint["step"]) == (5.0, 30.0, 0.1)
    _, limit = found[(pump, "limit")]
    assert (limit["min"], limit["max"], limit["step"]) == (-1e9, 1e9, 0.001)
    _, mode = found[(pump, "mode")]
    assert mode["options"] == ["eco", "comfort", "off"]
    _, reboot = found[(f"gw1_{FIELD_NODE.device}", "action_reboot")]
    assert reboot["payload_press"] == "PRESS"
    assert reboot["device_class"] == "restart"
    node = f"gw1_{LORA_NODE.device}"
    _, interval = found[(node, "action_set_interval")]
    assert "state_topic" not in interval  # no reading: Home Assistant shows the value it set
    assert (interval["min"], interval["max"], interval["unit_of_measurement"]) == (1, 86400, "s")
    assert interval["entity_category"] == "config"
    _, ping = found[(node, "action_ping")]
    assert ping["command_topic"] == f"duogate/gw1/devices/{LORA_NODE.device}/ha/action_ping/set"


def test_gateway_entity_and_custom_prefix() -> None:
    custom = publisher(discovery_prefix="ha-test", sw_version="0.1.0")
    assert custom.status_topic == "ha-test/status"
    found = entities(DEVICES, "ha-test", discovery_prefix="ha-test", sw_version="0.1.0")
    component, gateway = found[("duogate_gw1", "connectivity")]
    assert component == "binary_sensor"
    assert gateway["state_topic"] == "duogate/gw1/status"
    assert (gateway["payload_on"], gateway["payload_off"]) == ("online", "offline")
    assert gateway["device"]["identifiers"] == ["duogate_gw1"]
    assert gateway["origin"] == {"name": "duogate", "sw_version": "0.1.0"}
    _, flow = found[(f"gw1_{HEAT_PUMP.device}", "flow_temp")]
    assert flow["device"]["via_device"] == "duogate_gw1"


def test_republish_when_home_assistant_comes_online() -> None:
    discovery = publisher()
    first = discovery.messages(DEVICES)
    assert discovery.on_ha_status(b"online", DEVICES) == first
    assert discovery.on_ha_status("offline", DEVICES) == []
    assert discovery.on_ha_status(b"\xff", DEVICES) == []


def test_only_new_or_changed_configs_are_republished() -> None:
    discovery = publisher()
    discovery.messages([ROOM])
    assert discovery.changed([ROOM]) == []
    fresh = discovery.changed([ROOM, BEACON])
    assert {topic_match(m.topic)["node_id"] for m in fresh} == {f"gw1_{BEACON.device}"}
    renamed = DeviceInfo(BEACON.device, "ble", "Hallway", BEACON.fields)
    again = discovery.changed([ROOM, renamed])
    assert len(again) == len(BEACON.fields) and all('"Hallway"' in m.payload for m in again)


def test_removed_devices_get_empty_retained_configs() -> None:
    discovery = publisher()
    discovery.messages([ROOM, FIELD_NODE])
    removals = discovery.removed([ROOM])
    assert [m.topic for m in removals] == [
        "homeassistant/button/gw1_lora-0011223344556677/action_reboot/config",
        "homeassistant/sensor/gw1_lora-0011223344556677/soil_moisture/config",
    ]
    assert all(m.payload == "" and m.retain for m in removals)
    assert discovery.removed([ROOM]) == []


@pytest.mark.parametrize(
    ("event", "published"),
    [
        (EventKind.ONLINE, "online"),
        (EventKind.JOINED, "online"),
        (EventKind.REJOINED, "online"),
        (EventKind.OFFLINE, "offline"),
        (EventKind.JOIN_REJECTED, None),
    ],
)
def test_availability_follows_device_events(event: EventKind, published: str | None) -> None:
    assert availability_for_event(DeviceEvent("modbus-plant-3", event, 1.0)) == published


def test_the_guide_gives_the_subscription_qos_the_code_uses() -> None:
    guide = (ROOT / "docs" / "HOME_ASSISTANT.md").read_text()
    call = r"subscribe_extra\(\s*{},(?:(?!subscribe_extra).)*?qos=(\d)"
    status = re.search(call.format(r"discovery\.status_topic"), guide, re.S)
    commands = re.search(call.format(r"commands\.topic_filter"), guide, re.S)
    assert status is not None and commands is not None
    assert (int(status[1]), int(commands[1])) == (HA_STATUS_QOS, HA_COMMAND_QOS)
    assert f"QoS {HA_STATUS_QOS}" in guide


def test_schema_check_refuses_what_home_assistant_refuses() -> None:
    """The fixture itself: a config Home Assistant would refuse fails the check."""
    [good] = [m for m in publisher().messages([HEAT_PUMP]) if m.topic.endswith("/flow_temp/config")]
    config = json.loads(good.payload)
    refused = [
        {**config, "unit_of_measurement": "bar"},  # not a temperature unit
        {**config, "state_class": "total_increasing"},  # temperature: measurement only
        {**config, "entity_category": "config"},  # no configuration sensors
        {**config, "command_topic": "x"},  # not a sensor key
        {key: value for key, value in config.items() if key != "state_topic"},
    ]
    for bad in refused:
        with pytest.raises(AssertionError):
            check_schema(DiscoveryMessage(good.topic, json.dumps(bad), True))
