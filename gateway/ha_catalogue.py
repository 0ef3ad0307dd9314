"""How readings and actions look in Home Assistant: names, units, classes (pure data).

Drivers name readings as they come off the wire (``temperature_c``, ``counter``, ``major``);
this catalogue turns a name plus the driver's own metadata into what Home Assistant shows:
a name ("Temperature"), a unit (°C), a device class, a state class and an entity category.

What the driver says wins (a Modbus register map is the user's own word); the catalogue fills
the gaps. Whatever the result, it is made acceptable to Home Assistant: a device class it does
not know, or one whose allowed units exclude the unit given, is left out (Home Assistant
refuses the whole entity otherwise), and a state class is given only where Home Assistant
allows it for the device class:

* ``measurement`` for readings that are measurements now (temperature, power, RSSI);
* ``total_increasing`` for counters and meter totals (``counter``, energy, gas, water);
* none for identifiers (iBeacon ``major``/``minor``, ``uuid``, ids) and text.

Link and health readings (RSSI, SNR, battery, uptime, counters) are ``diagnostic`` entities.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

# -- Home Assistant's vocabulary ----------------------------------------------------------------

_TEMPERATURE = frozenset({"°C", "°F", "K"})
_PRESSURE = frozenset({"Pa", "hPa", "kPa", "bar", "cbar", "mbar", "mmHg", "inHg", "psi"})
_ENERGY = frozenset(
    {"J", "kJ", "MJ", "GJ", "mWh", "Wh", "kWh", "MWh", "GWh", "TWh", "cal", "kcal", "Mcal", "Gcal"}
)
_VOLUME = frozenset({"ft³", "CCF", "m³", "L", "mL", "gal", "fl. oz."})
_LENGTH = frozenset({"mm", "cm", "m", "km", "in", "ft", "yd", "mi", "nmi"})
_SPEED = frozenset({"Beaufort", "ft/s", "in/s", "m/s", "km/h", "kn", "mph", "mm/s"})
_FLUX = frozenset({"in/d", "in/h", "mm/d", "mm/h"})
_MICROGRAMS_PER_M3 = frozenset({"µg/m³"})
_INFORMATION = frozenset(
    {"bit", "kbit", "Mbit", "Gbit", "B", "kB", "MB", "GB", "TB", "PB", "EB", "ZB", "YB"}
    | {"KiB", "MiB", "GiB", "TiB", "PiB", "EiB", "ZiB", "YiB"}
)
_DATA_RATE = frozenset(
    {"bit/s", "kbit/s", "Mbit/s", "Gbit/s", "B/s", "kB/s", "MB/s", "GB/s", "KiB/s", "MiB/s"}
    | {"GiB/s"}
)

# Units Home Assistant accepts per sensor/number device class (a unit outside the set makes it
# refuse the entity); ``None`` in a set: no unit is right.
DEVICE_CLASS_UNITS: Final[dict[str, frozenset[str | None]]] = {
    "apparent_power": frozenset({"VA"}),
    "aqi": frozenset({None}),
    "area": frozenset({"m²", "cm²", "km²", "mm²", "in²", "ft²", "yd²", "mi²", "ac", "ha"}),
    "atmospheric_pressure": _PRESSURE,
    "battery": frozenset({"%"}),
    "blood_glucose_concentration": frozenset({"mg/dL", "mmol/L"}),
    "carbon_dioxide": frozenset({"ppm"}),
    "carbon_monoxide": frozenset({"ppm"}),
    "conductivity": frozenset({"S/cm", "mS/cm", "µS/cm"}),
    "current": frozenset({"A", "mA"}),
    "data_rate": _DATA_RATE,
    "data_size": _INFORMATION,
    "distance": _LENGTH,
    "duration": frozenset({"d", "h", "min", "s", "ms", "μs"}),
    "energy": _ENERGY,
    "energy_distance": frozenset({"kWh/100km", "mi/kWh", "km/kWh"}),
    "energy_storage": _ENERGY,
    "frequency": frozenset({"Hz", "kHz", "MHz", "GHz"}),
    "gas": frozenset({"CCF", "ft³", "m³", "L"}),
    "humidity": frozenset({"%"}),
    "illuminance": frozenset({"lx"}),
    "irradiance": frozenset({"W/m²", "BTU/(h⋅ft²)"}),
    "moisture": frozenset({"%"}),
    "nitrogen_dioxide": _MICROGRAMS_PER_M3,
    "nitrogen_monoxide": _MICROGRAMS_PER_M3,
    "nitrous_oxide": _MICROGRAMS_PER_M3,
    "ozone": _MICROGRAMS_PER_M3,
    "ph": frozenset({None}),
    "pm1": _MICROGRAMS_PER_M3,
    "pm10": _MICROGRAMS_PER_M3,
    "pm25": _MICROGRAMS_PER_M3,
    "power_factor": frozenset({"%", None}),
    "power": frozenset({"mW", "W", "kW", "MW", "GW", "TW"}),
    "precipitation": frozenset({"in", "mm", "cm"}),
    "precipitation_intensity": _FLUX,
    "pressure": _PRESSURE,
    "reactive_power": frozenset({"var", "kvar"}),
    "signal_strength": frozenset({"dB", "dBm"}),
    "sound_pressure": frozenset({"dB", "dBA"}),
    "speed": _SPEED | _FLUX,
    "sulphur_dioxide": _MICROGRAMS_PER_M3,
    "temperature": _TEMPERATURE,
    "volatile_organic_compounds": _MICROGRAMS_PER_M3,
    "volatile_organic_compounds_parts": frozenset({"ppm", "ppb"}),
    "voltage": frozenset({"µV", "mV", "V", "kV", "MV"}),
    "volume": _VOLUME,
    "volume_flow_rate": frozenset(
        {"m³/h", "m³/s", "ft³/min", "L/h", "L/min", "L/s", "gal/min", "mL/s"}
    ),
    "volume_storage": _VOLUME,
    "water": frozenset({"CCF", "ft³", "m³", "gal", "L"}),
    "weight": frozenset({"g", "kg", "mg", "µg", "oz", "lb", "st"}),
    "wind_direction": frozenset({"°"}),
    "wind_speed": _SPEED,
}
# Sensor device classes whose state is not a number: no unit, no state class.
NON_NUMERIC_SENSOR_CLASSES: Final = frozenset({"date", "enum", "timestamp"})
SENSOR_DEVICE_CLASSES: Final = (
    frozenset(DEVICE_CLASS_UNITS) | NON_NUMERIC_SENSOR_CLASSES | {"monetary"}
)
NUMBER_DEVICE_CLASSES: Final = SENSOR_DEVICE_CLASSES - NON_NUMERIC_SENSOR_CLASSES
BINARY_SENSOR_DEVICE_CLASSES: Final = frozenset(
    {
        "battery", "battery_charging", "carbon_monoxide", "cold", "connectivity", "door",
        "garage_door", "gas", "heat", "light", "lock", "moisture", "motion", "moving",
        "occupancy", "opening", "plug", "power", "presence", "problem", "running", "safety",
        "smoke", "sound", "tamper", "update", "vibration", "window",
    }
)  # fmt: skip
DEVICE_CLASSES: Final[dict[str, frozenset[str]]] = {
    "sensor": SENSOR_DEVICE_CLASSES,
    "binary_sensor": BINARY_SENSOR_DEVICE_CLASSES,
    "number": NUMBER_DEVICE_CLASSES,
    "switch": frozenset({"outlet", "switch"}),
    "button": frozenset({"identify", "restart", "update"}),
    "select": frozenset(),
}
_ANY_STATE_CLASS = frozenset({"measurement", "total", "total_increasing"})
_TOTALS = frozenset({"total", "total_increasing"})
# State classes Home Assistant allows per sensor device class; not listed: measurement only.
_STATE_CLASSES_BY_DEVICE_CLASS: Final[dict[str, frozenset[str]]] = {
    "area": _ANY_STATE_CLASS,
    "data_size": _ANY_STATE_CLASS,
    "distance": _ANY_STATE_CLASS,
    "duration": _ANY_STATE_CLASS,
    "precipitation": _ANY_STATE_CLASS,
    "weight": _ANY_STATE_CLASS,
    "energy": _TOTALS,
    "gas": _TOTALS,
    "volume": _TOTALS,
    "water": _TOTALS,
    "monetary": frozenset({"total"}),
    "date": frozenset(),
    "enum": frozenset(),
    "timestamp": frozenset(),
    "wind_direction": frozenset({"measurement_angle"}),
}


def allowed_state_classes(device_class: str | None) -> frozenset[str]:
    """The state classes Home Assistant accepts for a sensor of ``device_class``."""
    if device_class is None:
        return _ANY_STATE_CLASS
    return _STATE_CLASSES_BY_DEVICE_CLASS.get(device_class, frozenset({"measurement"}))


# Device classes from decoders (BTHome's sensor_state_data) that Home Assistant calls otherwise.
_DEVICE_CLASS_ALIASES: Final = {
    "dew_point": "temperature",
    "mass": "weight",
    "mass_non_stabilized": "weight",
}

# -- the catalogue ------------------------------------------------------------------------------

MEASUREMENT, TOTAL_INCREASING = "measurement", "total_increasing"
TEXT_TYPES: Final = frozenset({"str", "string", "text"})
DIAGNOSTIC, CONFIG = "diagnostic", "config"
_NO_STATE_CLASS = ""  # an entry that rules out a state class (identifiers, uptime)


@dataclass(frozen=True, slots=True)
class FieldEntry:
    """What the catalogue knows of a reading; ``None``: no opinion, the driver's word holds."""

    name: str
    unit: str | None = None
    device_class: str | None = None
    state_class: str | None = None  # _NO_STATE_CLASS: never one
    category: str | None = None


FIELDS: Final[dict[str, FieldEntry]] = {
    # measurements
    "temperature": FieldEntry("Temperature", "°C", "temperature"),
    "temperature_c": FieldEntry("Temperature", "°C", "temperature"),
    "temperature_f": FieldEntry("Temperature", "°F", "temperature"),
    "dew_point": FieldEntry("Dew point", "°C", "temperature"),
    "humidity": FieldEntry("Humidity", "%", "humidity"),
    "moisture": FieldEntry("Moisture", "%", "moisture"),
    "pressure": FieldEntry("Pressure", "hPa", "pressure"),
    "illuminance": FieldEntry("Illuminance", "lx", "illuminance"),
    "carbon_dioxide": FieldEntry("CO₂", "ppm", "carbon_dioxide"),
    "co2": FieldEntry("CO₂", "ppm", "carbon_dioxide"),
    "pm25": FieldEntry("PM2.5", "µg/m³", "pm25"),
    "pm10": FieldEntry("PM10", "µg/m³", "pm10"),
    "voltage": FieldEntry("Voltage", "V", "voltage"),
    "current": FieldEntry("Current", "A", "current"),
    "power": FieldEntry("Power", "W", "power"),
    "energy": FieldEntry("Energy", "kWh", "energy", TOTAL_INCREASING),
    "gas": FieldEntry("Gas", "m³", "gas", TOTAL_INCREASING),
    "water": FieldEntry("Water", "L", "water", TOTAL_INCREASING),
    "count": FieldEntry("Count", state_class=MEASUREMENT),  # BTHome's count goes up and down
    # device health and the radio link
    "battery": FieldEntry("Battery", "%", "battery", MEASUREMENT, DIAGNOSTIC),
    "battery_v": FieldEntry("Battery voltage", "V", "voltage", MEASUREMENT, DIAGNOSTIC),
    "rssi": FieldEntry("Signal strength", "dBm", "signal_strength", MEASUREMENT, DIAGNOSTIC),
    "snr": FieldEntry("Signal-to-noise ratio", "dB", None, MEASUREMENT, DIAGNOSTIC),
    "tx_power": FieldEntry("Transmit power", "dBm", "signal_strength", MEASUREMENT, DIAGNOSTIC),
    "uptime": FieldEntry("Uptime", "s", "duration", _NO_STATE_CLASS, DIAGNOSTIC),
    "uptime_s": FieldEntry("Uptime", "s", "duration", _NO_STATE_CLASS, DIAGNOSTIC),
    "counter": FieldEntry("Report counter", None, None, TOTAL_INCREASING, DIAGNOSTIC),
    # identifiers: shown, never graphed
    "uuid": FieldEntry("UUID", None, None, _NO_STATE_CLASS, DIAGNOSTIC),
    "major": FieldEntry("Major", None, None, _NO_STATE_CLASS, DIAGNOSTIC),
    "minor": FieldEntry("Minor", None, None, _NO_STATE_CLASS, DIAGNOSTIC),
    "packet_id": FieldEntry("Packet id", None, None, _NO_STATE_CLASS, DIAGNOSTIC),
    # controls
    "relay": FieldEntry("Relay", device_class="switch"),
}

# A unit written as the name's last word: ``flow_temp_c`` is a temperature in °C.
_SUFFIXES: Final[dict[str, tuple[str, str | None]]] = {
    "c": ("°C", "temperature"),
    "f": ("°F", "temperature"),
    "pct": ("%", None),
    "percent": ("%", None),
    "v": ("V", "voltage"),
    "mv": ("mV", "voltage"),
    "a": ("A", "current"),
    "ma": ("mA", "current"),
    "w": ("W", "power"),
    "kw": ("kW", "power"),
    "kwh": ("kWh", "energy"),
    "wh": ("Wh", "energy"),
    "hpa": ("hPa", "pressure"),
    "pa": ("Pa", "pressure"),
    "bar": ("bar", "pressure"),
    "s": ("s", "duration"),
    "ms": ("ms", "duration"),
    "dbm": ("dBm", "signal_strength"),
    "hz": ("Hz", "frequency"),
    "lx": ("lx", "illuminance"),
    "ppm": ("ppm", None),
}
_IDENTIFIER = re.compile(r"(^|_)(id|uuid|mac|address|serial|serial_number)$")
_COUNTER = re.compile(r"(^|_)(counter|total)$")
_ABBREVIATIONS: Final = {"id": "id", "rssi": "RSSI", "snr": "SNR", "uuid": "UUID", "co2": "CO₂"}


@dataclass(frozen=True, slots=True)
class ActionEntry:
    """An action offered as a control: a button, or a number when it takes one parameter."""

    name: str
    param: str | None = None  # the action's one numeric parameter
    unit: str | None = None
    device_class: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float = 1.0
    category: str | None = None


ACTIONS: Final[dict[str, ActionEntry]] = {
    "ping": ActionEntry("Ping", category=DIAGNOSTIC),
    "reboot": ActionEntry("Restart", device_class="restart", category=CONFIG),
    "restart": ActionEntry("Restart", device_class="restart", category=CONFIG),
    "identify": ActionEntry("Identify", device_class="identify", category=DIAGNOSTIC),
    "set_interval": ActionEntry(
        "Report interval", "seconds", "s", "duration", 1, 86_400, 1, CONFIG
    ),
}


@dataclass(frozen=True, slots=True)
class Presentation:
    """How one entity is shown; ``None`` fields are left out of its discovery config."""

    name: str
    unit: str | None
    device_class: str | None
    state_class: str | None
    category: str | None


def title(name: str) -> str:
    """``soil_moisture`` -> "Soil moisture"; known abbreviations keep their case."""
    words = [w for w in re.split(r"[_\s]+", name.strip()) if w]
    if not words:
        return name
    shown = [_ABBREVIATIONS.get(word.lower(), word) for word in words]
    first = shown[0]
    if first == words[0]:
        first = first[:1].upper() + first[1:]
    return " ".join([first, *shown[1:]])


def _given(meta: Mapping[str, Any], key: str) -> Any:
    value = meta.get(key)
    return None if value in (None, "") else value


def _from_name(field: str) -> FieldEntry:
    """What the name alone says: a catalogue entry, a unit suffix, an identifier, a counter."""
    key = field.lower().replace(" ", "_")
    entry = FIELDS.get(key)
    if entry is not None:
        return entry
    if _IDENTIFIER.search(key):
        return FieldEntry(title(field), state_class=_NO_STATE_CLASS, category=DIAGNOSTIC)
    if _COUNTER.search(key):
        return FieldEntry(title(field), state_class=TOTAL_INCREASING)
    stem, _, suffix = key.rpartition("_")
    if stem and suffix in _SUFFIXES:
        unit, device_class = _SUFFIXES[suffix]
        base = FIELDS.get(stem)
        name = base.name if base is not None else title(stem)
        return FieldEntry(name, unit, device_class)
    return FieldEntry(title(field))


def _unit_fits(device_class: str | None, unit: str | None) -> bool:
    if device_class is None or unit is None:
        return True
    return unit in DEVICE_CLASS_UNITS.get(device_class, frozenset({unit}))


def _fitting_device_class(platform: str, device_class: str | None, unit: str | None) -> bool:
    if device_class is None or device_class not in DEVICE_CLASSES.get(platform, frozenset()):
        return False
    if platform in ("sensor", "number") and device_class in DEVICE_CLASS_UNITS:
        return unit in DEVICE_CLASS_UNITS[device_class]
    return True


def describe_reading(field: str, meta: Mapping[str, Any], platform: str) -> Presentation:
    """Name, unit, device class, state class and category for reading ``field``.

    ``meta`` is the driver's description (``unit``, ``device_class``, ``state_class``,
    ``name``, ``type``); ``platform`` the Home Assistant platform chosen for it.
    """
    entry = _from_name(field)
    name = str(_given(meta, "name") or entry.name)
    numeric = platform in ("sensor", "number") and meta.get("type") not in TEXT_TYPES

    unit = _given(meta, "unit") if numeric else None
    device_class = _given(meta, "device_class")
    device_class = _DEVICE_CLASS_ALIASES.get(device_class, device_class)
    if device_class is None and _unit_fits(entry.device_class, unit):
        device_class = entry.device_class  # the catalogue's class, if the unit given fits it
    if unit is None and numeric and device_class in (entry.device_class, None):
        unit = entry.unit
    if unit is None and numeric and device_class in DEVICE_CLASS_UNITS:
        only = DEVICE_CLASS_UNITS[device_class]
        if len(only) == 1:
            unit = next(iter(only))  # battery, humidity: there is only one right unit
    if not _fitting_device_class(platform, device_class, unit):
        device_class = None
    if platform == "sensor" and device_class in NON_NUMERIC_SENSOR_CLASSES:
        unit, numeric = None, False

    state_class: str | None = None
    if platform == "sensor" and numeric:
        wanted = _given(meta, "state_class")
        if wanted is None:
            wanted = entry.state_class
        if wanted is None:
            wanted = _default_state_class(device_class)
        if wanted and wanted in allowed_state_classes(device_class):
            state_class = wanted
    category = entry.category if platform in ("sensor", "binary_sensor") else None
    if _given(meta, "entity_category") in (DIAGNOSTIC, CONFIG):
        category = meta["entity_category"]
    if platform in ("sensor", "binary_sensor") and category == CONFIG:
        category = DIAGNOSTIC  # Home Assistant refuses configuration sensors
    return Presentation(name, unit, device_class, state_class, category)


def _default_state_class(device_class: str | None) -> str:
    allowed = allowed_state_classes(device_class)
    if MEASUREMENT in allowed:
        return MEASUREMENT
    if TOTAL_INCREASING in allowed:
        return TOTAL_INCREASING  # meters: energy, gas, water, volume
    return _NO_STATE_CLASS


def platform_for(meta: Mapping[str, Any]) -> str:
    """The Home Assistant platform for a reading described by ``meta``."""
    writable = bool(meta.get("writable"))
    if meta.get("type") == "bool":
        return "switch" if writable else "binary_sensor"
    if writable and meta.get("options"):
        return "select"
    if writable and meta.get("type") not in TEXT_TYPES:
        return "number"
    return "sensor"


def describe_action(action: str) -> ActionEntry:
    """How a device action is offered; unknown actions become a button named after them."""
    return ACTIONS.get(action) or ActionEntry(title(action))
