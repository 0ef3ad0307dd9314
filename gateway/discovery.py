"""Home Assistant MQTT discovery for LoRa, Modbus and BLE devices (pure: no I/O, no clock).

Each reading of a device (``DeviceInfo.fields``) becomes one entity, configured by a
retained message on ``<discovery_prefix>/<component>/<node_id>/<object_id>/config``:

* ``sensor`` for readings, ``binary_sensor`` for read-only booleans,
* ``switch`` for writable booleans, ``number`` for writable numbers,
* ``button`` for each parameterless device action other than ``write``.

State comes from the device's report topic (``value_json.data.<field>``); commands go to the
device's command topic as our command envelope with a ``ttl_s``. Availability needs both the
gateway (``<prefix>/status``) and the device (``<prefix>/devices/<device>/availability``,
retained ``online``/``offline``, published by the bridge on device events).

``DiscoveryPublisher`` says what to publish and when; the MQTT upstream does the publishing.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any, Final, NamedTuple

from gateway.devices import DeviceInfo
from gateway.model import DeviceEvent, EventKind

MANUFACTURER: Final = "duogate"
MODELS: Final = {"lora": "LoRa node", "modbus": "Modbus device", "ble": "BLE sensor"}
AVAILABLE, NOT_AVAILABLE = "online", "offline"

# Device classes Home Assistant accepts per component; anything else is left out.
SENSOR_DEVICE_CLASSES: Final = frozenset(
    [
        "absolute_humidity",
        "apparent_power",
        "aqi",
        "area",
        "atmospheric_pressure",
        "battery",
        "blood_glucose_concentration",
        "carbon_dioxide",
        "carbon_monoxide",
        "conductivity",
        "current",
        "data_rate",
        "data_size",
        "date",
        "distance",
        "duration",
        "energy",
        "energy_distance",
        "energy_storage",
        "enum",
        "frequency",
        "gas",
        "humidity",
        "illuminance",
        "irradiance",
        "moisture",
        "monetary",
        "nitrogen_dioxide",
        "nitrogen_monoxide",
        "nitrous_oxide",
        "ozone",
        "ph",
        "pm1",
        "pm10",
        "pm25",
        "power",
        "power_factor",
        "precipitation",
        "precipitation_intensity",
        "pressure",
        "reactive_energy",
        "reactive_power",
        "signal_strength",
        "sound_pressure",
        "speed",
        "sulphur_dioxide",
        "temperature",
        "timestamp",
        "volatile_organic_compounds",
        "volatile_organic_compounds_parts",
        "voltage",
        "volume",
        "volume_flow_rate",
        "volume_storage",
        "water",
        "weight",
        "wind_direction",
        "wind_speed",
    ]
)
BINARY_SENSOR_DEVICE_CLASSES: Final = frozenset(
    [
        "battery",
        "battery_charging",
        "carbon_monoxide",
        "cold",
        "connectivity",
        "door",
        "garage_door",
        "gas",
        "heat",
        "light",
        "lock",
        "moisture",
        "motion",
        "moving",
        "occupancy",
        "opening",
        "plug",
        "power",
        "presence",
        "problem",
        "running",
        "safety",
        "smoke",
        "sound",
        "tamper",
        "update",
        "vibration",
        "window",
    ]
)
NUMBER_DEVICE_CLASSES: Final = SENSOR_DEVICE_CLASSES - {"date", "enum", "timestamp"}
SWITCH_DEVICE_CLASSES: Final = frozenset({"outlet", "switch"})
DEVICE_CLASSES: Final = {
    "sensor": SENSOR_DEVICE_CLASSES,
    "binary_sensor": BINARY_SENSOR_DEVICE_CLASSES,
    "number": NUMBER_DEVICE_CLASSES,
    "switch": SWITCH_DEVICE_CLASSES,
    "button": frozenset({"identify", "restart", "update"}),
}
# Sensor device classes that must not carry state_class "measurement".
_NOT_MEASUREMENT: Final = frozenset(
    {"date", "enum", "timestamp", "energy", "gas", "monetary", "volume", "water"}
)
_TEXT_TYPES: Final = frozenset({"str", "string", "text"})
_UNSAFE = re.compile(r"[^A-Za-z0-9_-]")


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


def _safe(text: str) -> str:
    return _UNSAFE.sub("_", text)


def _title(name: str) -> str:
    words = name.replace("_", " ").strip()
    return words[:1].upper() + words[1:]


def _json_key(name: str) -> str:
    """``value_json.data.x`` when ``x`` is a plain identifier, else ``value_json.data['x']``."""
    return f".{name}" if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) else f"[{json.dumps(name)}]"


def _is_bool(meta: dict[str, Any]) -> bool:
    return meta.get("type") == "bool"


def component_for(meta: dict[str, Any]) -> str:
    writable = bool(meta.get("writable"))
    if _is_bool(meta):
        return "switch" if writable else "binary_sensor"
    if writable and meta.get("type") not in _TEXT_TYPES:
        return "number"
    return "sensor"


def _number_limits(meta: dict[str, Any]) -> dict[str, float]:
    """min/max/step for a number entity (Home Assistant's own defaults are 1, 100 and 1)."""
    floating = "float" in str(meta.get("type", ""))
    step = meta.get("step") or (0.001 if floating else 1)
    low = meta.get("min")
    high = meta.get("max")
    return {
        "min": float(low) if low is not None else -1e9,
        "max": float(high) if high is not None else 1e9,
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
        command_ttl_s: float = 30.0,
        sw_version: str | None = None,
    ) -> None:
        self.topic_prefix = topic_prefix.rstrip("/")
        self.discovery_prefix = discovery_prefix.rstrip("/")
        self.gateway_id = gateway_id
        self.command_ttl_s = command_ttl_s
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
        return f"duogate_{_safe(self.gateway_id)}"

    def state_topic(self, device: str) -> str:
        return f"{self.topic_prefix}/devices/{device}/report"

    def command_topic(self, device: str) -> str:
        return f"{self.topic_prefix}/devices/{device}/command"

    def node_id(self, device: str) -> str:
        return _safe(f"{self.gateway_id}_{device}")

    def config_topic(self, component: str, device: str, object_id: str) -> str:
        node = self.node_id(device)
        return f"{self.discovery_prefix}/{component}/{node}/{_safe(object_id)}/config"

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
            for name, meta in sorted(info.fields.items()):
                messages.append(self._field_message(info, name, meta or {}))
            for action in info.actions:
                if action != "write":
                    messages.append(self._button_message(info, action))
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
            "identifiers": [f"{self.gateway_identifier}_{_safe(info.device)}"],
            "name": info.name,
            "manufacturer": MANUFACTURER,
            "model": MODELS.get(info.kind, info.kind),
            "via_device": self.gateway_identifier,
        }

    def _common(self, info: DeviceInfo, object_id: str, name: str) -> dict[str, Any]:
        return {
            "name": name,
            "unique_id": f"{self.gateway_identifier}_{_safe(info.device)}_{_safe(object_id)}",
            "availability": [
                {"topic": self.gateway_status_topic},
                {"topic": availability_topic(self.topic_prefix, info.device)},
            ],
            "availability_mode": "all",
            "device": self._device_block(info),
            "origin": self._origin(),
        }

    def _envelope_template(self, action: str, params_json: str) -> str:
        """A Jinja template rendering our command envelope; ids are milliseconds since 1970."""
        ttl = f"{self.command_ttl_s:g}"
        return (
            '{"id": "ha-{{ (now().timestamp() * 1000) | int }}", '
            f'"action": {json.dumps(action)}, "params": {params_json}, "ttl_s": {ttl}}}'
        )

    def _field_message(
        self, info: DeviceInfo, field: str, meta: dict[str, Any]
    ) -> DiscoveryMessage:
        component = component_for(meta)
        config = self._common(info, field, str(meta.get("name") or _title(field)))
        value = f"value_json.data{_json_key(field)}"
        config["state_topic"] = self.state_topic(info.device)
        if component in ("binary_sensor", "switch"):
            config["value_template"] = f"{{{{ 'ON' if {value} else 'OFF' }}}}"
        else:
            config["value_template"] = f"{{{{ {value} }}}}"
        device_class = meta.get("device_class")
        if device_class in DEVICE_CLASSES[component]:
            config["device_class"] = device_class
        if component in ("sensor", "number") and meta.get("unit"):
            config["unit_of_measurement"] = meta["unit"]
        if component == "sensor" and meta.get("type") not in _TEXT_TYPES:
            state_class = meta.get("state_class")
            if state_class is None and device_class not in _NOT_MEASUREMENT:
                state_class = "measurement"
            if state_class:
                config["state_class"] = state_class
        if component in ("switch", "number"):
            action = str(meta.get("action") or "write")
            config["command_topic"] = self.command_topic(info.device)
            if component == "switch":
                written = "{{ 'true' if value == 'ON' else 'false' }}"
            else:
                written = "{{ value }}"
            param = meta.get("param")  # the action's own parameter name, e.g. relay's "on"
            if isinstance(param, str):
                params = f"{{{json.dumps(param)}: {written}}}"
            else:
                params = f'{{"register": {json.dumps(field)}, "value": {written}}}'
            config["command_template"] = self._envelope_template(action, params)
        if component == "number":
            config.update(_number_limits(meta))
            config["mode"] = "box"
        topic = self.config_topic(component, info.device, field)
        return DiscoveryMessage(topic, json.dumps(config, sort_keys=True), True)

    def _button_message(self, info: DeviceInfo, action: str) -> DiscoveryMessage:
        object_id = f"action_{action}"
        config = self._common(info, object_id, _title(action))
        config["command_topic"] = self.command_topic(info.device)
        config["command_template"] = self._envelope_template(_safe(action), "{}")
        topic = self.config_topic("button", info.device, object_id)
        return DiscoveryMessage(topic, json.dumps(config, sort_keys=True), True)
