"""Home Assistant MQTT discovery messages checked against HA's discovery schema rules.

The schema facts used here (topic pattern, components, abbreviation table, device keys,
availability modes) are Home Assistant's MQTT discovery rules; templates are rendered with
jinja2 the way Home Assistant renders them (``value_json``, ``value``, ``now()``).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

import pytest
from jinja2.sandbox import ImmutableSandboxedEnvironment

from gateway.devices import DeviceInfo
from gateway.discovery import (
    DEVICE_CLASSES,
    DiscoveryMessage,
    DiscoveryPublisher,
    availability_for_event,
)
from gateway.model import DeviceEvent, EventKind, Report

# Home Assistant's discovery topic pattern, after its configured prefix.
TOPIC_AFTER_PREFIX = (
    r"/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)


def topic_match(topic: str, prefix: str = "homeassistant") -> re.Match[str]:
    match = re.match("^" + re.escape(prefix) + TOPIC_AFTER_PREFIX, topic)
    assert match, topic
    return match


COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "enabled_by_default", "encoding", "entity_category", "icon", "json_attributes_topic",
    "json_attributes_template", "name", "object_id", "default_entity_id", "origin", "qos",
    "unique_id", "payload_available", "payload_not_available",
}  # fmt: skip
COMPONENT_KEYS = {
    "sensor": {"state_topic", "value_template", "unit_of_measurement", "device_class",
               "state_class", "expire_after", "force_update", "suggested_display_precision",
               "last_reset_value_template", "options"},
    "binary_sensor": {"state_topic", "value_template", "device_class", "payload_on",
                      "payload_off", "expire_after", "force_update", "off_delay"},
    "switch": {"state_topic", "value_template", "command_topic", "command_template",
               "device_class", "payload_on", "payload_off", "state_on", "state_off",
               "optimistic", "retain"},
    "number": {"state_topic", "value_template", "command_topic", "command_template",
               "device_class", "unit_of_measurement", "min", "max", "step", "mode",
               "optimistic", "retain", "payload_reset"},
    "button": {"command_topic", "command_template", "device_class", "payload_press", "retain"},
}  # fmt: skip
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "button": {"command_topic"},
}
# Home Assistant's abbreviation table, for the keys a payload here may use.
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "cmd_t": "command_topic",
    "cmd_tpl": "command_template", "dev": "device", "dev_cla": "device_class",
    "ent_cat": "entity_category", "max": "max", "min": "min", "mode": "mode", "name": "name",
    "o": "origin", "pl_off": "payload_off", "pl_on": "payload_on", "stat_cla": "state_class",
    "stat_t": "state_topic", "step": "step", "t": "topic", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template",
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}

DEVICES = [
    DeviceInfo(
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
        },
        ("write",),
    ),
    DeviceInfo(
        "ble-a4c138000001", "ble", "Living room",
        {
            "temperature": {"type": "float", "unit": "°C", "device_class": "temperature"},
            "packet_id": {"type": "int", "device_class": "packet_id"},
            "uuid": {"type": "str"},
        },
    ),
    DeviceInfo(
        "lora-0011223344556677", "lora", "Field node 7",
        {"soil moisture": {"type": "float", "unit": "%", "device_class": "moisture"}},
        ("reboot", "write"),
    ),
]  # fmt: skip


def publisher(**settings: Any) -> DiscoveryPublisher:
    return DiscoveryPublisher(topic_prefix="duogate/gw1", gateway_id="gw1", **settings)


def render(template: str, **variables: Any) -> str:
    environment = ImmutableSandboxedEnvironment()
    environment.globals["now"] = lambda: dt.datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=dt.UTC)
    return environment.from_string(template).render(**variables)


def check_schema(message: DiscoveryMessage, discovery_prefix: str = "homeassistant") -> None:
    match = topic_match(message.topic, discovery_prefix)
    assert match["node_id"], "every entity is grouped under its device's node id"
    component = match["component"]
    assert component in COMPONENT_KEYS
    assert message.retain is True
    config = json.loads(message.payload)
    assert isinstance(config, dict)
    expanded = {ABBREVIATIONS.get(key, key) for key in config}
    assert len(expanded) == len(config), "a key given both abbreviated and in full"
    unknown = expanded - COMMON_KEYS - COMPONENT_KEYS[component]
    assert not unknown, f"{message.topic}: keys Home Assistant does not know: {unknown}"
    assert REQUIRED[component] <= expanded
    assert isinstance(config["unique_id"], str) and config["unique_id"]
    device = config["device"]
    assert set(device) <= DEVICE_KEYS
    assert device["identifiers"] and all(isinstance(i, str) for i in device["identifiers"])
    assert config["origin"]["name"] == "duogate"
    if "device_class" in config:
        assert config["device_class"] in DEVICE_CLASSES[component]
    if "state_class" in config:
        assert component == "sensor" and config["state_class"] in STATE_CLASSES
    if "availability" in config:
        assert all(set(item) == {"topic"} for item in config["availability"])
        assert config["availability_mode"] in {"all", "any", "latest"}
    if component == "number":
        assert config["min"] < config["max"] and config["step"] >= 0.001
        assert config["mode"] in {"auto", "box", "slider"}
    for key in ("state_topic", "command_topic"):
        if key in config:
            assert "+" not in config[key] and "#" not in config[key]


def by_object(
    messages: list[DiscoveryMessage], prefix: str = "homeassistant"
) -> dict[str, tuple[str, dict[str, Any]]]:
    found = {}
    for message in messages:
        match = topic_match(message.topic, prefix)
        found[match["object_id"]] = (match["component"], json.loads(message.payload))
    return found


def test_every_message_follows_the_schema() -> None:
    messages = publisher().messages(DEVICES)
    for message in messages:
        check_schema(message)
    unique_ids = [json.loads(m.payload)["unique_id"] for m in messages]
    assert len(unique_ids) == len(set(unique_ids))
    assert len({m.topic for m in messages}) == len(messages)


def test_components_chosen_per_field() -> None:
    entities = by_object(publisher().messages(DEVICES))
    assert {name: component for name, (component, _) in entities.items()} == {
        "connectivity": "binary_sensor",
        "flow_temp": "sensor",
        "energy": "sensor",
        "setpoint": "number",
        "limit": "number",
        "relay": "switch",
        "alarm": "binary_sensor",
        "temperature": "sensor",
        "packet_id": "sensor",
        "uuid": "sensor",
        "soil_moisture": "sensor",
        "action_reboot": "button",
    }


def test_sensor_config_in_detail() -> None:
    messages = publisher().messages(DEVICES)
    [flow] = [m for m in messages if m.topic.endswith("/flow_temp/config")]
    assert flow.topic == "homeassistant/sensor/gw1_modbus-plant-3/flow_temp/config"
    config = json.loads(flow.payload)
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


def test_state_classes_and_device_classes_fit_home_assistant() -> None:
    entities = by_object(publisher().messages(DEVICES))
    assert entities["energy"][1]["state_class"] == "total_increasing"
    assert "device_class" not in entities["packet_id"][1]  # not a Home Assistant class
    assert "state_class" not in entities["uuid"][1]  # text has no statistics
    assert entities["alarm"][1]["device_class"] == "problem"


def test_value_templates_read_the_report() -> None:
    wire = Report(
        "r1", "modbus-plant-3", "reading", 1.7e9, 4,
        {"flow_temp": 41.5, "relay": True, "alarm": False, "soil moisture": 33.0},
    ).to_wire()  # fmt: skip
    value_json = json.loads(json.dumps(wire))
    entities = by_object(publisher().messages(DEVICES))
    assert render(entities["flow_temp"][1]["value_template"], value_json=value_json) == "41.5"
    assert render(entities["relay"][1]["value_template"], value_json=value_json) == "ON"
    assert render(entities["alarm"][1]["value_template"], value_json=value_json) == "OFF"
    soil = entities["soil_moisture"][1]["value_template"]
    assert render(soil, value_json=value_json) == "33.0"


def test_command_templates_build_our_envelope() -> None:
    entities = by_object(publisher(command_ttl_s=45).messages(DEVICES))
    _, setpoint = entities["setpoint"]
    assert setpoint["command_topic"] == "duogate/gw1/devices/modbus-plant-3/command"
    assert (setpoint["min"], setpoint["max"], setpoint["step"]) == (5.0, 30.0, 0.1)
    envelope = json.loads(render(setpoint["command_template"], value=21.5))
    assert envelope == {
        "id": "ha-1714564800250",
        "action": "write",
        "params": {"register": "setpoint", "value": 21.5},
        "ttl_s": 45,
    }
    _, relay = entities["relay"]
    assert json.loads(render(relay["command_template"], value="ON"))["params"] == {
        "register": "relay", "value": True
    }  # fmt: skip
    assert json.loads(render(relay["command_template"], value="OFF"))["params"]["value"] is False
    _, limit = entities["limit"]
    assert (limit["min"], limit["max"], limit["step"]) == (-1e9, 1e9, 0.001)
    _, reboot = entities["action_reboot"]
    assert json.loads(render(reboot["command_template"]))["action"] == "reboot"


def test_gateway_entity_and_custom_prefix() -> None:
    custom = publisher(discovery_prefix="ha-test", sw_version="0.1.0")
    messages = custom.messages(DEVICES)
    for message in messages:
        check_schema(message, discovery_prefix="ha-test")
    assert custom.status_topic == "ha-test/status"
    entities = by_object(messages, "ha-test")
    component, gateway = entities["connectivity"]
    assert component == "binary_sensor"
    assert gateway["state_topic"] == "duogate/gw1/status"
    assert (gateway["payload_on"], gateway["payload_off"]) == ("online", "offline")
    assert gateway["device"]["identifiers"] == ["duogate_gw1"]
    assert entities["flow_temp"][1]["device"]["via_device"] == "duogate_gw1"
    assert gateway["origin"] == {"name": "duogate", "sw_version": "0.1.0"}


def test_republish_when_home_assistant_comes_online() -> None:
    discovery = publisher()
    first = discovery.messages(DEVICES)
    assert discovery.on_ha_status(b"online", DEVICES) == first
    assert discovery.on_ha_status("offline", DEVICES) == []
    assert discovery.on_ha_status(b"\xff", DEVICES) == []


def test_only_new_or_changed_configs_are_republished() -> None:
    discovery = publisher()
    discovery.messages(DEVICES[:1])
    assert discovery.changed(DEVICES[:1]) == []
    fresh = discovery.changed(DEVICES[:2])
    assert {topic_match(m.topic)["node_id"] for m in fresh} == {"gw1_ble-a4c138000001"}
    renamed = DeviceInfo("ble-a4c138000001", "ble", "Kitchen", DEVICES[1].fields)
    again = discovery.changed([DEVICES[0], renamed])
    assert len(again) == 3 and all('"Kitchen"' in m.payload for m in again)


def test_removed_devices_get_empty_retained_configs() -> None:
    discovery = publisher()
    discovery.messages(DEVICES)
    removals = discovery.removed(DEVICES[:2])
    assert [m.topic for m in removals] == [
        "homeassistant/button/gw1_lora-0011223344556677/action_reboot/config",
        "homeassistant/sensor/gw1_lora-0011223344556677/soil_moisture/config",
    ]
    assert all(m.payload == "" and m.retain for m in removals)
    assert discovery.removed(DEVICES[:2]) == []


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
