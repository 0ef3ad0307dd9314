"""Home Assistant's plain payloads on an entity's command topic -> our command envelope.

The payloads are those Home Assistant publishes without a ``command_template`` (switch
``payload_on``/``payload_off``, a number's value as text, button ``PRESS``, a select's option);
every envelope built is checked with the gateway's own envelope validation.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.devices import DeviceInfo
from gateway.discovery import DiscoveryPublisher
from gateway.ha_commands import HaCommands
from gateway.lora import LORA_CONTROL_ACTIONS, LORA_FIELDS
from gateway.model import Command, CommandResult, CommandStatus, IncomingCommand
from gateway.protocol import envelope
from gateway.protocol.expiry import ExpiryPolicy
from tests.ha_schema import check_schema

PREFIX = "duogate/gw1"
NODE = "lora-8899aabbccddeeff"
PUMP = "modbus-plant-3"
DEVICES = [
    DeviceInfo(NODE, "lora", NODE, dict(LORA_FIELDS), LORA_CONTROL_ACTIONS),
    DeviceInfo(
        PUMP, "modbus", "Heat pump",
        {
            "setpoint": {"type": "int16", "unit": "°C", "writable": True, "min": 5.0,
                         "max": 30.0, "step": 0.1},
            "mode": {"type": "uint16", "writable": True, "min": 0.0, "max": 65535.0, "step": 1},
            "limit": {"type": "float32", "writable": True},
            "coil": {"type": "bool", "writable": True},
            "program": {"type": "str", "writable": True, "options": ["eco", "comfort"]},
            "flow_temp": {"type": "int16", "writable": False},
        },
        ("write",),
    ),
]  # fmt: skip
NOW = 1_714_564_800.25
ENTITY_TOPICS = [
    f"{PREFIX}/devices/{NODE}/ha/relay/set",
    f"{PREFIX}/devices/{NODE}/ha/action_ping/set",
    f"{PREFIX}/devices/{NODE}/ha/action_set_interval/set",
    f"{PREFIX}/devices/{PUMP}/ha/setpoint/set",
    f"{PREFIX}/devices/{PUMP}/ha/mode/set",
    f"{PREFIX}/devices/{PUMP}/ha/limit/set",
    f"{PREFIX}/devices/{PUMP}/ha/coil/set",
    f"{PREFIX}/devices/{PUMP}/ha/program/set",
]


def mapper(ttl_s: float = 45.0) -> HaCommands:
    return HaCommands(
        topic_prefix=PREFIX, ttl_s=ttl_s, devices=lambda: DEVICES, new_id=lambda now: "ha-1"
    )


def send(device: str, entity: str, payload: bytes | str) -> IncomingCommand | CommandResult:
    data = payload.encode() if isinstance(payload, str) else payload
    topic = f"{PREFIX}/devices/{device}/ha/{entity}/set"
    outcome = mapper().incoming(topic, data, received_mono=100.0, now_wall=NOW)
    assert outcome is not None
    return outcome


def command(device: str, entity: str, payload: str) -> Command:
    """The payload as Home Assistant sends it, through the mapping and envelope validation."""
    incoming = send(device, entity, payload)
    assert isinstance(incoming, IncomingCommand), incoming
    assert (incoming.origin, incoming.device, incoming.received_mono) == ("mqtt", device, 100.0)
    validated = envelope.validate(
        incoming,
        {NODE, PUMP},
        ExpiryPolicy(default_ttl_s=60.0, max_ttl_s=3600.0),
        now_mono=100.0,
        now_wall=NOW,
    )
    assert isinstance(validated, Command), validated
    return validated


def test_every_discovered_control_has_a_command_topic_this_mapping_takes() -> None:
    discovery = DiscoveryPublisher(topic_prefix=PREFIX, gateway_id="gw1")
    topics = {}
    for message in discovery.messages(DEVICES):
        platform, config = check_schema(message)
        if "command_topic" in config:
            topics[config["unique_id"]] = (platform, config["command_topic"])
    assert sorted(topic for _, topic in topics.values()) == sorted(ENTITY_TOPICS)
    for _, topic in topics.values():
        assert mapper().parse_topic(topic) is not None, topic


@pytest.mark.parametrize(
    ("device", "entity", "payload", "action", "params"),
    [
        (NODE, "relay", "ON", "relay", {"on": True}),
        (NODE, "relay", "OFF", "relay", {"on": False}),
        (NODE, "action_ping", "PRESS", "ping", {}),
        (NODE, "action_set_interval", "300", "set_interval", {"seconds": 300}),
        (NODE, "action_set_interval", "3.0", "set_interval", {"seconds": 3}),
        (PUMP, "setpoint", "21.5", "write", {"register": "setpoint", "value": 21.5}),
        (PUMP, "setpoint", "21", "write", {"register": "setpoint", "value": 21}),
        (PUMP, "mode", "3", "write", {"register": "mode", "value": 3}),
        (PUMP, "mode", "3.0", "write", {"register": "mode", "value": 3}),
        (PUMP, "limit", "-1e-05", "write", {"register": "limit", "value": -1e-05}),
        (PUMP, "coil", "ON", "write", {"register": "coil", "value": True}),
        (PUMP, "program", "comfort", "write", {"register": "program", "value": "comfort"}),
    ],
)
def test_plain_payloads_become_commands(
    device: str, entity: str, payload: str, action: str, params: dict[str, Any]
) -> None:
    validated = command(device, entity, payload)
    assert (validated.id, validated.device, validated.action) == ("ha-1", device, action)
    assert validated.params == params
    assert type(validated.params.get("value", validated.params.get("seconds"))) is type(
        params.get("value", params.get("seconds"))
    )
    assert validated.origin == "mqtt"
    assert validated.deadline == pytest.approx(100.0 + 45.0)  # the configured ttl


def test_the_envelope_has_a_generated_id_and_the_configured_ttl() -> None:
    commands = HaCommands(topic_prefix=PREFIX, ttl_s=12.5, devices=lambda: DEVICES)
    topic = f"{PREFIX}/devices/{NODE}/ha/relay/set"
    first = commands.incoming(topic, b"ON", received_mono=1.0, now_wall=NOW)
    second = commands.incoming(topic, b"ON", received_mono=1.0, now_wall=NOW)
    assert isinstance(first, IncomingCommand) and isinstance(second, IncomingCommand)
    assert isinstance(first.body, dict) and isinstance(second.body, dict)
    assert first.body == {
        "id": first.body["id"], "action": "relay", "params": {"on": True}, "ttl_s": 12.5
    }  # fmt: skip
    assert first.body["id"].startswith("ha-1714564800250-")
    assert first.body["id"] != second.body["id"]  # the same millisecond, still two commands


@pytest.mark.parametrize(
    ("device", "entity", "payload", "detail"),
    [
        (NODE, "relay", "MAYBE", "invalid_payload: relay takes ON or OFF, got 'MAYBE'"),
        (NODE, "relay", "on", "invalid_payload: relay takes ON or OFF, got 'on'"),
        (NODE, "relay", "", "invalid_payload: relay takes ON or OFF, got ''"),
        (NODE, "relay", '{"id": "x", "action": "relay"}',
         "invalid_payload: relay takes ON or OFF, got '{\"id\": \"x\", \"action\": \"relay\"}'"),
        (NODE, "action_ping", "ON", "invalid_payload: action_ping takes PRESS, got 'ON'"),
        (NODE, "action_set_interval", "0",
         "invalid_payload: action_set_interval takes 1..86400, got '0'"),
        (NODE, "action_set_interval", "1.5e9",
         "invalid_payload: action_set_interval takes 1..86400, got '1.5e9'"),
        (PUMP, "setpoint", "warm", "invalid_payload: setpoint takes a number, got 'warm'"),
        (PUMP, "setpoint", "nan", "invalid_payload: setpoint takes a number, got 'nan'"),
        (PUMP, "setpoint", "31", "invalid_payload: setpoint takes 5..30, got '31'"),
        (PUMP, "mode", "2.5", "invalid_payload: mode takes a whole number, got '2.5'"),
        (PUMP, "limit", "1e999", "invalid_payload: limit takes a finite number, got '1e999'"),
        (PUMP, "program", "turbo",
         "invalid_payload: program takes one of eco, comfort, got 'turbo'"),
        (PUMP, "flow_temp", "20", f"unknown_entity: {PUMP} has no control 'flow_temp'"),
        (PUMP, "action_write", "PRESS", f"unknown_entity: {PUMP} has no control 'action_write'"),
        ("lora-unknown", "relay", "ON", "unknown_device"),
    ],
)  # fmt: skip
def test_payloads_the_entity_does_not_take_are_rejected_with_what_it_takes(
    device: str, entity: str, payload: str, detail: str
) -> None:
    result = send(device, entity, payload)
    assert isinstance(result, CommandResult)
    assert (result.id, result.device, result.status) == ("ha-1", device, CommandStatus.REJECTED)
    assert result.detail == detail
    assert result.ts == NOW


def test_bytes_that_are_not_text_and_oversized_payloads_are_rejected() -> None:
    not_text = send(NODE, "relay", b"\xff\xfeON")
    assert isinstance(not_text, CommandResult)
    assert not_text.detail == "invalid_payload: relay takes text, got bytes that are not UTF-8"
    huge = send(PUMP, "setpoint", b"2" * 10_000)
    assert isinstance(huge, CommandResult)
    assert huge.detail == "invalid_payload: 10000 bytes, at most 256"


def test_surrounding_whitespace_is_not_part_of_the_payload() -> None:
    assert command(NODE, "relay", "ON\n").params == {"on": True}
    assert command(PUMP, "setpoint", " 21.5 ").params == {"register": "setpoint", "value": 21.5}


@pytest.mark.parametrize(
    "topic",
    [
        f"{PREFIX}/devices/{NODE}/command",
        f"{PREFIX}/devices/{NODE}/ha/relay",
        f"{PREFIX}/devices/{NODE}/ha/relay/extra/set",
        f"{PREFIX}/devices//ha/relay/set",
        f"other/devices/{NODE}/ha/relay/set",
    ],
)
def test_other_topics_are_not_entity_commands(topic: str) -> None:
    assert mapper().incoming(topic, b"ON", received_mono=1.0, now_wall=NOW) is None


def test_the_subscription_covers_every_entity_topic() -> None:
    assert mapper().topic_filter == f"{PREFIX}/devices/+/ha/+/set"
