"""Home Assistant's MQTT discovery schema, as a test fixture: ``check_schema(message)``.

Written from Home Assistant's documentation and the schemas of its MQTT platforms
(``homeassistant/components/mqtt/{sensor,binary_sensor,switch,number,select,button}.py``,
``components/sensor/const.py``, ``components/number/const.py``, ``homeassistant/const.py``):
the discovery topic, the keys each platform takes and requires, the device classes and, per
device class, the units Home Assistant accepts (a unit outside them makes it refuse the whole
entity) and the state classes it allows. Kept apart from ``gateway/ha_catalogue.py`` on purpose:
this is the reference the gateway's output is checked against.
"""

from __future__ import annotations

import json
import re
from typing import Any

from gateway.discovery import DiscoveryMessage

# Home Assistant's discovery topic pattern, after its configured prefix.
TOPIC_AFTER_PREFIX = (
    r"/(?P<component>\w+)/(?:(?P<node_id>[a-zA-Z0-9_-]+)/)?(?P<object_id>[a-zA-Z0-9_-]+)/config$"
)

COMMON_KEYS = {
    "availability", "availability_mode", "availability_template", "availability_topic",
    "device", "enabled_by_default", "encoding", "entity_category", "entity_picture", "icon",
    "json_attributes_topic", "json_attributes_template", "name", "object_id",
    "default_entity_id", "origin", "qos", "unique_id", "payload_available",
    "payload_not_available",
}  # fmt: skip
# Keys per platform (besides COMMON_KEYS), and the ones it requires.
PLATFORM_KEYS = {
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
    "select": {"state_topic", "value_template", "command_topic", "command_template",
               "options", "optimistic", "retain"},
    "button": {"command_topic", "command_template", "device_class", "payload_press", "retain"},
}  # fmt: skip
REQUIRED = {
    "sensor": {"state_topic"},
    "binary_sensor": {"state_topic"},
    "switch": {"command_topic"},
    "number": {"command_topic"},
    "select": {"command_topic", "options"},
    "button": {"command_topic"},
}
# Home Assistant's abbreviation table, for the keys a payload here may use.
ABBREVIATIONS = {
    "avty": "availability", "avty_mode": "availability_mode", "cmd_t": "command_topic",
    "cmd_tpl": "command_template", "dev": "device", "dev_cla": "device_class",
    "ent_cat": "entity_category", "name": "name", "o": "origin", "ops": "options",
    "pl_off": "payload_off", "pl_on": "payload_on", "pl_prs": "payload_press",
    "stat_cla": "state_class", "stat_t": "state_topic", "uniq_id": "unique_id",
    "unit_of_meas": "unit_of_measurement", "val_tpl": "value_template",
}  # fmt: skip
DEVICE_KEYS = {
    "configuration_url", "connections", "hw_version", "identifiers", "manufacturer", "model",
    "model_id", "name", "serial_number", "suggested_area", "sw_version", "via_device",
}  # fmt: skip
ENTITY_CATEGORIES = {
    # Home Assistant refuses sensors and binary sensors in the "config" category.
    "sensor": {"diagnostic"},
    "binary_sensor": {"diagnostic"},
    "switch": {"config", "diagnostic"},
    "number": {"config", "diagnostic"},
    "select": {"config", "diagnostic"},
    "button": {"config", "diagnostic"},
}

# -- units (homeassistant/const.py) ------------------------------------------------------------

PERCENTAGE = "%"
TEMPERATURE = {"°C", "°F", "K"}
PRESSURE = {"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"}
ENERGY = {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal",
          "Mcal", "Gcal"}  # fmt: skip
VOLUME = {"ft³", "CCF", "m³", "L", "mL", "gal", "fl. oz."}
LENGTH = {"mm", "cm", "m", "km", "in", "ft", "yd", "mi", "nmi"}
SPEED = {"Beaufort", "ft/s", "in/s", "m/s", "km/h", "kn", "mph", "mm/s"}
VOLUMETRIC_FLUX = {"in/d", "in/h", "mm/d", "mm/h"}
INFORMATION = {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB",
               "YB", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"}  # fmt: skip
DATA_RATE = {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s", "KiB/s",
             "MiB/s", "GiB/s"}  # fmt: skip
UG_M3 = {"µg/m³"}

# DEVICE_CLASS_UNITS of components/sensor/const.py (number's is the same for its classes).
DEVICE_CLASS_UNITS: dict[str, set[str | None]] = {
    "apparent_power": {"VA"},
    "aqi": {None},
    "area": {"m²", "cm²", "km²", "mm²", "in²", "ft²", "yd²", "mi²", "ac", "ha"},
    "atmospheric_pressure": PRESSURE,
    "battery": {PERCENTAGE},
    "blood_glucose_concentration": {"mg/dL", "mmol/L"},
    "carbon_dioxide": {"ppm"},
    "carbon_monoxide": {"ppm"},
    "conductivity": {"S/cm", "µS/cm", "mS/cm"},
    "current": {"mA", "A"},
    "data_rate": DATA_RATE,
    "data_size": INFORMATION,
    "distance": LENGTH,
    "duration": {"d", "h", "min", "s", "ms", "μs"},
    "energy": ENERGY,
    "energy_distance": {"kWh/100km", "mi/kWh", "km/kWh"},
    "energy_storage": ENERGY,
    "frequency": {"Hz", "kHz", "MHz", "GHz"},
    "gas": {"CCF", "ft³", "m³", "L"},
    "humidity": {PERCENTAGE},
    "illuminance": {"lx"},
    "irradiance": {"W/m²", "BTU/(h⋅ft²)"},
    "moisture": {PERCENTAGE},
    "nitrogen_dioxide": UG_M3,
    "nitrogen_monoxide": UG_M3,
    "nitrous_oxide": UG_M3,
    "ozone": UG_M3,
    "ph": {None},
    "pm1": UG_M3,
    "pm10": UG_M3,
    "pm25": UG_M3,
    "power_factor": {PERCENTAGE, None},
    "power": {"mW", "W", "kW", "MW", "GW", "TW"},
    "precipitation": {"in", "mm", "cm"},
    "precipitation_intensity": VOLUMETRIC_FLUX,
    "pressure": PRESSURE,
    "reactive_power": {"var", "kvar"},
    "signal_strength": {"dB", "dBm"},
    "sound_pressure": {"dB", "dBA"},
    "speed": SPEED | VOLUMETRIC_FLUX,
    "sulphur_dioxide": UG_M3,
    "temperature": TEMPERATURE,
    "volatile_organic_compounds": UG_M3,
    "volatile_organic_compounds_parts": {"ppb", "ppm"},
    "voltage": {"µV", "mV", "V", "kV", "MV"},
    "volume": VOLUME,
    "volume_flow_rate": {"m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s", "gal/min", "mL/s"},
    "volume_storage": VOLUME,
    "water": {"CCF", "ft³", "m³", "gal", "L"},
    "weight": {"g", "kg", "mg", "µg", "oz", "lb", "st"},
    "wind_direction": {"°"},
    "wind_speed": SPEED,
}
NON_NUMERIC_SENSOR_CLASSES = {"date", "enum", "timestamp"}
SENSOR_DEVICE_CLASSES = set(DEVICE_CLASS_UNITS) | NON_NUMERIC_SENSOR_CLASSES | {"monetary"}

ALL_STATE_CLASSES = {"measurement", "measurement_angle", "total", "total_increasing"}
ANY = {"measurement", "total", "total_increasing"}
# DEVICE_CLASS_STATE_CLASSES of components/sensor/const.py; classes not listed: measurement.
STATE_CLASSES_FOR: dict[str, set[str]] = {
    "area": ANY, "data_size": ANY, "distance": ANY, "duration": ANY, "precipitation": ANY,
    "weight": ANY,
    "energy": {"total", "total_increasing"}, "gas": {"total", "total_increasing"},
    "volume": {"total", "total_increasing"}, "water": {"total", "total_increasing"},
    "monetary": {"total"},
    "date": set(), "enum": set(), "timestamp": set(),
    "wind_direction": {"measurement_angle"},
}  # fmt: skip

DEVICE_CLASSES: dict[str, set[str]] = {
    "sensor": SENSOR_DEVICE_CLASSES,
    "number": SENSOR_DEVICE_CLASSES - NON_NUMERIC_SENSOR_CLASSES,
    "binary_sensor": {
        "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
        "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
        "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
        "smoke", "sound", "tamper", "update", "vibration", "window",
    },
    "switch": {"outlet", "switch"},
    "button": {"identify", "restart", "update"},
    "select": set(),
}  # fmt: skip


def topic_match(topic: str, prefix: str = "homeassistant") -> re.Match[str]:
    match = re.match("^" + re.escape(prefix) + TOPIC_AFTER_PREFIX, topic)
    assert match, topic
    return match


def state_classes_for(device_class: str | None) -> set[str]:
    if device_class is None:
        return ALL_STATE_CLASSES
    return STATE_CLASSES_FOR.get(device_class, {"measurement"})


def check_schema(
    message: DiscoveryMessage, discovery_prefix: str = "homeassistant"
) -> tuple[str, dict[str, Any]]:
    """Assert that Home Assistant takes ``message``; return its platform and config."""
    match = topic_match(message.topic, discovery_prefix)
    assert match["node_id"], "every entity is grouped under its device's node id"
    platform = match["component"]
    assert platform in PLATFORM_KEYS, platform
    assert message.retain is True
    config = json.loads(message.payload)
    assert isinstance(config, dict)
    where = message.topic
    expanded = {ABBREVIATIONS.get(key, key): value for key, value in config.items()}
    assert len(expanded) == len(config), f"{where}: a key given both abbreviated and in full"
    unknown = set(expanded) - COMMON_KEYS - PLATFORM_KEYS[platform]
    assert not unknown, f"{where}: keys Home Assistant does not know: {unknown}"
    missing = REQUIRED[platform] - set(expanded)
    assert not missing, f"{where}: required keys missing: {missing}"
    assert isinstance(expanded["unique_id"], str) and expanded["unique_id"]
    assert isinstance(expanded.get("name"), str) and expanded["name"]
    device = expanded["device"]
    assert set(device) <= DEVICE_KEYS
    assert device["identifiers"] and all(isinstance(i, str) for i in device["identifiers"])
    assert expanded["origin"]["name"] == "duogate"
    if "entity_category" in expanded:
        assert expanded["entity_category"] in ENTITY_CATEGORIES[platform], where
    if "availability" in expanded:
        assert all(set(item) == {"topic"} for item in expanded["availability"])
        assert expanded["availability_mode"] in {"all", "any", "latest"}
    for key in ("state_topic", "command_topic"):
        if key in expanded:
            assert isinstance(expanded[key], str) and expanded[key]
            assert "+" not in expanded[key] and "#" not in expanded[key], where

    device_class = expanded.get("device_class")
    unit = expanded.get("unit_of_measurement")
    if device_class is not None:
        assert device_class in DEVICE_CLASSES[platform], f"{where}: device class {device_class}"
    if platform in ("sensor", "number") and device_class in DEVICE_CLASS_UNITS:
        # Home Assistant refuses an entity whose unit its device class does not allow.
        assert unit is None or unit in DEVICE_CLASS_UNITS[device_class], f"{where}: {unit}"
    if platform == "sensor":
        state_class = expanded.get("state_class")
        if state_class is not None:
            assert state_class in state_classes_for(device_class), f"{where}: {state_class}"
        if device_class in NON_NUMERIC_SENSOR_CLASSES:
            assert unit is None and state_class is None, where
        if "options" in expanded:
            assert device_class == "enum" and expanded["options"], where
        if "last_reset_value_template" in expanded:
            assert state_class == "total", where
    if platform == "number":
        assert expanded["min"] < expanded["max"], where
        assert expanded["step"] >= 0.001, where
        assert expanded.get("mode", "auto") in {"auto", "box", "slider"}, where
    if platform == "select":
        options = expanded["options"]
        assert options and all(isinstance(o, str) for o in options), where
    for key in ("payload_on", "payload_off", "payload_press", "state_on", "state_off"):
        if key in expanded:
            assert isinstance(expanded[key], str) and expanded[key], where
    return platform, config
