"""Home Assistant MQTT discovery for LoRa, Modbus and BLE devices (pure: no I/O, no clock).

Each reading of a device (``DeviceInfo.fields``) becomes one entity, configured by a
retained message on ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``:

* ``sensor`` for readings, ``binary_sensor`` for read-only booleans,
* ``switch`` for writable booleans, ``number`` for writable numbers, ``select`` for writable
  readings with a list of options,
* ``button`` for each parameterless device action other than ``write``, ``number`` for an
  action that takes one number (LoRa ``set_interval``).

Names, units, device classes, state classes and entity categories come from
``gateway.ha_catalogue``. State comes from the device's report topic
(``value_json.data.<field>``). Each control has its own command topic
(``<prefix>/devices/<device>/ha/<entity>/set``) taking Home Assistant's plain payloads
(``ON``/``OFF``, ``21.5``, ``PRESS``, an option), which ``gateway.ha_commands`` turns into a
command envelope: no ``command_template``, so every Home Assistant release with MQTT
discovery sends the same thing. Availability needs both the gateway (``<prefix>/status``)
and the device (``<prefix>/devices/<device>/availability``, retained ``online``/``offline``,
published by the bridge on device events).

``DiscoveryPublisher`` says what to publish and when; the MQTT upstream does the publishing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from gateway.devices import DeviceInfo
from gateway.ha_catalogue import (
    DEVICE_CLASSES,
    describe_action,
    describe_reading,
    platform_for,
)
from gateway.ha_commands import (
    PAYLOAD_OFF,
    PAYLOAD_ON,
    PAYLOAD_PRESS,
    Control,
    command_topic,
    controls_for,
    safe_id,
)
from gateway.model import DeviceEvent, EventKind

MANUFACTURER: Final = "duogate"
MODELS: Final = {"lora": "LoRa node", "modbus": "Modbus device", "ble": "BLE sensor"}
AVAILABLE, NOT_AVAILABLE = "online", "offline"
# Subscription QoS for Home Assistant's birth message on ``<discovery>/status``: a birth Home
# Assistant sends at QoS 1 (a setting of its MQTT integration) then arrives at least once; a
# repeat only republishes the retained configs. Its default birth is QoS 0 and arrives as such.
HA_STATUS_QOS: Final = 1
# Subscription QoS for the entities' command topics: 0, as for ``<prefix>/devices/+/command``,
# so the broker does not queue commands for a gateway that is offline (see upstreams/mqtt.py).
HA_COMMAND_QOS: Final = 0
NUMBER_LIMIT: Final = 1e9  # min/max of a number whose range is not known


class DiscoveryMessage(NamedTuple):
    topic: str
    payload: str  # JSON; "" removes the entity
    retain: bool


def availability_topic(topic_prefix: str, device: str) -> str:
    return f"{topic_prefix}/devices/{device}/availability"


def availability_for_event(event: DeviceEvent) -> str | None:
    """What to publish (retained) on a device's availability topic after ``event``."""
    if event.event in (EventKind.ONLINE, EventKind.JOINED, EventKind.REJOINED):
        return AVAILABLE
    if event.event is EventKind.OFFLINE:
        return NOT_AVAILABLE
    return None


def _json_key(name: str) -> str:
    """``value_json.data.x`` when ``x`` is a plain identifier, else ``value_json.data['x']``."""
    return f".{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"[{json.dumps(name)}]"


def _number_limits(meta: dict[str, Any]) -> dict[str, float]:
    """min/max/step for a number entity (Home Assistant's own defaults are 1, 100 and 1)."""
    floating = "float" in str(meta.get("type", ""))
    step = meta.get("step") or (0.001 if floating else 1)
    low = meta.get("min")
    high = meta.get("max")
    return {
        "min": float(low) if low is not None else -NUMBER_LIMIT,
        "max": float(high) if high is not None else NUMBER_LIMIT,
        "step": max(float(step), 0.001),  # the smallest step Home Assistant accepts
    }


class DiscoveryPublisher:
    """Builds discovery configs and decides when to (re)publish them.

    * ``messages(devices)``: every config now (at connect, and whenever asked);
    * ``changed(devices)``: only configs that are new or differ from the last ones given out
      (call after devices appear, e.g. a BLE sensor heard for the first time);
    * ``removed(devices)``: empty retained payloads for entities no longer present;
    * ``on_ha_status(payload, devices)``: everything again when Home Assistant announces
      ``online`` on ``status_topic`` (it restarted and lost non-retained state).
    """

    def __init__(
        self,
        *,
        topic_prefix: str,
        gateway_id: str,
        discovery_prefix: str = "homeassistant",
        sw_version: str | None = None,
    ) -> None:
        self.topic_prefix = topic_prefix.rstrip("/")
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self.gateway_id = gateway_id
        self.sw_version = sw_version
        self._published: dict[str, str] = {}

    # -- topics -----------------------------------------------------------------------------

    @property
    def status_topic(self) -> str:
        """Home Assistant's birth/last-will topic: subscribe to it."""
        return f"{self.discovery_prefix}/status"

    @property
    def gateway_status_topic(self) -> str:
        return f"{self.topic_prefix}/status"

    @property
    def gateway_identifier(self) -> str:
        return f"duogate_{safe_id(self.gateway_id)}"

    def state_topic(self, device: str) -> str:
        return f"{self.topic_prefix}/devices/{device}/report"

    def command_topic(self, device: str, object_id: str) -> str:
        """The command topic of one control (``object_id`` as in its config topic)."""
        return command_topic(self.topic_prefix, device, object_id)

    def node_id(self, device: str) -> str:
        return safe_id(f"{self.gateway_id}_{device}")

    def config_topic(self, component: str, device: str, object_id: str) -> str:
        node = self.node_id(device)
        return f"{self.discovery_prefix}/{component}/{node}/{safe_id(object_id)}/config"

    # -- when -------------------------------------------------------------------------------

    def messages(self, devices: Iterable[DeviceInfo]) -> list[DiscoveryMessage]:
        built = self._build(devices)
        self._published = {topic: payload for topic, payload, _ in built}
        return built

    def changed(self, devices: Iterable[DeviceInfo]) -> list[DiscoveryMessage]:
        fresh = [m for m in self._build(devices) if self._published.get(m.topic) != m.payload]
        self._published.update({topic: payload for topic, payload, _ in fresh})
        return fresh

    def removed(self, devices: Iterable[DeviceInfo]) -> list[DiscoveryMessage]:
        current = {message.topic for message in self._build(devices)}
        gone = sorted(topic for topic in self._published if topic not in current)
        for topic in gone:
            del self._published[topic]
        return [DiscoveryMessage(topic, "", True) for topic in gone]

    def on_ha_status(
        self, payload: bytes | str, devices: Iterable[DeviceInfo]
    ) -> list[DiscoveryMessage]:
        text = payload.decode("utf-8", "replace") if isinstance(payload, bytes) else payload
        if text.strip() != "online":
            return []
        return self.messages(devices)

    # -- what -------------------------------------------------------------------------------

    def _build(self, devices: Iterable[DeviceInfo]) -> list[DiscoveryMessage]:
        messages = [self._gateway_message()]
        for info in sorted(devices, key=lambda item: item.device):
            controls = controls_for(info)
            for name, meta in sorted(info.fields.items()):
                control = controls.get(safe_id(name))
                messages.append(self._field_message(info, name, meta or {}, control))
            for action in info.actions:
                control = controls.get(f"action_{safe_id(action)}")
                if control is not None:
                    messages.append(self._action_message(info, control))
        return messages

    def _gateway_message(self) -> DiscoveryMessage:
        config: dict[str, Any] = {
            "name": "Connectivity",
            "unique_id": f"{self.gateway_identifier}_connectivity",
            "state_topic": self.gateway_status_topic,
            "payload_on": AVAILABLE,
            "payload_off": NOT_AVAILABLE,
            "device_class": "connectivity",
            "entity_category": "diagnostic",
            "device": self._gateway_device(),
            "origin": self._origin(),
        }
        topic = (
            f"{self.discovery_prefix}/binary_sensor/{self.gateway_identifier}/connectivity/config"
        )
        return DiscoveryMessage(topic, json.dumps(config, sort_keys=True), True)

    def _gateway_device(self) -> dict[str, Any]:
        device: dict[str, Any] = {
            "identifiers": [self.gateway_identifier],
            "name": f"duogate {self.gateway_id}",
            "manufacturer": MANUFACTURER,
            "model": "Gateway",
        }
        if self.sw_version:
            device["sw_version"] = self.sw_version
        return device

    def _origin(self) -> dict[str, Any]:
        origin: dict[str, Any] = {"name": "duogate"}
        if self.sw_version:
            origin["sw_version"] = self.sw_version
        return origin

    def _device_block(self, info: DeviceInfo) -> dict[str, Any]:
        return {
            "identifiers": [f"{self.gateway_identifier}_{safe_id(info.device)}"],
            "name": info.name,
            "manufacturer": MANUFACTURER,
            "model": MODELS.get(info.kind, info.kind),
            "via_device": self.gateway_identifier,
        }

    def _common(self, info: DeviceInfo, object_id: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.gateway_identifier}_{safe_id(info.device)}_{safe_id(object_id)}",
            "availability": [
                {"topic": self.gateway_status_topic},
                {"topic": availability_topic(self.topic_prefix, info.device)},
            ],
            "availability_mode": "all",
            "device": self._device_block(info),
            "origin": self._origin(),
        }

    def _field_message(
        self, info: DeviceInfo, field: str, meta: dict[str, Any], control: Control | None
    ) -> DiscoveryMessage:
        platform = platform_for(meta)
        shown = describe_reading(field, meta, platform)
        config = self._common(info, field, shown.name)
        value = f"value_json.data{_json_key(field)}"
        config["state_topic"] = self.state_topic(info.device)
        if platform in ("binary_sensor", "switch"):
            # Nothing (no state change) when a report lacks the reading, never a false OFF.
            config["value_template"] = (
                f"{{% if {value} is defined %}}{{{{ 'ON' if {value} else 'OFF' }}}}{{% endif %}}"
            )
        else:
            config["value_template"] = f"{{{{ {value} }}}}"
        for key, given in (
            ("device_class", shown.device_class),
            ("unit_of_measurement", shown.unit),
            ("state_class", shown.state_class),
            ("entity_category", shown.category),
        ):
            if given is not None:
                config[key] = given
        if control is not None:
            config["command_topic"] = self.command_topic(info.device, control.object_id)
        if platform == "switch":
            config["payload_on"], config["payload_off"] = PAYLOAD_ON, PAYLOAD_OFF
        elif platform == "number":
            config.update(_number_limits(meta))
            config["mode"] = "box"
        elif platform == "select" and control is not None:
            config["options"] = list(control.options)
        topic = self.config_topic(platform, info.device, field)
        return DiscoveryMessage(topic, json.dumps(config, sort_keys=True), True)

    def _action_message(self, info: DeviceInfo, control: Control) -> DiscoveryMessage:
        """A button for an action, or a number for an action taking one number (no state:
        Home Assistant shows the value last set)."""
        entry = describe_action(control.action)
        config = self._common(info, control.object_id, entry.name)
        config["command_topic"] = self.command_topic(info.device, control.object_id)
        if control.platform == "button":
            config["payload_press"] = PAYLOAD_PRESS
        else:
            low = entry.minimum if entry.minimum is not None else -NUMBER_LIMIT
            high = entry.maximum if entry.maximum is not None else NUMBER_LIMIT
            config.update({"min": float(low), "max": float(high), "step": entry.step})
            config["mode"] = "box"
            if entry.unit is not None:
                config["unit_of_measurement"] = entry.unit
        if entry.device_class in DEVICE_CLASSES[control.platform]:
            config["device_class"] = entry.device_class
        if entry.category is not None:
            config["entity_category"] = entry.category
        topic = self.config_topic(control.platform, info.device, control.object_id)
        return DiscoveryMessage(topic, json.dumps(config, sort_keys=True), True)
