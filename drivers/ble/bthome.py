"""BTHome advertisements decoded by the ``bthome-ble`` package (the ``ble`` extra).

Each advertisement is decoded on its own by a fresh ``BTHomeBluetoothDeviceData`` so a report
holds exactly what that advertisement carried; repeats of one packet are recognised by the
driver from the packet id. Encrypted advertisements are refused: no keys are configured.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from bleak.backends.device import BLEDevice
from bthome_ble import BTHomeBluetoothDeviceData
from bthome_ble.parser import EncryptionScheme, UuidType
from habluetooth import BluetoothServiceInfoBleak

from drivers.ble.advert import AdvertRejected, BleAdvert

BTHOME_UUIDS = frozenset(kind.value for kind in UuidType)
# Readings that are not the sensor's: the RSSI travels in the report itself.
_SKIPPED_KEYS = frozenset({"signal_strength", "packet_id"})


@dataclass(frozen=True, slots=True)
class BthomeReading:
    values: dict[str, Any]
    fields: dict[str, dict[str, Any]]  # reading -> unit / device_class / type
    packet_id: int | None
    model: str | None


def has_bthome(advert: BleAdvert) -> bool:
    return any(uuid in BTHOME_UUIDS for uuid in advert.service_data)


def _service_info(advert: BleAdvert) -> BluetoothServiceInfoBleak:
    return BluetoothServiceInfoBleak(
        name=advert.name or advert.mac,
        address=advert.mac,
        rssi=advert.rssi if advert.rssi is not None else -127,
        manufacturer_data=dict(advert.manufacturer_data),
        service_data=dict(advert.service_data),
        service_uuids=list(advert.service_data),
        source="duogate",
        device=BLEDevice(advert.mac, advert.name, None),
        advertisement=None,
        connectable=False,
        time=advert.ts,
        tx_power=None,
    )


def _plain(value: Any) -> Any:
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Decimal):
        return float(value)
    return value


def _name(key: Any) -> str:
    return f"{key.key}_{key.device_id}" if key.device_id else str(key.key)


def _value_type(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    return "str"


def decode_bthome(advert: BleAdvert) -> BthomeReading | None:
    """The readings in a BTHome advertisement; None when it carries no BTHome service data."""
    if not has_bthome(advert):
        return None
    parser = BTHomeBluetoothDeviceData()
    info = _service_info(advert)
    try:
        update = parser.update(info)
    except Exception as exc:  # the parser's own failures become one rejection reason
        raise AdvertRejected(f"BTHome decoder failed: {type(exc).__name__}: {exc}") from None
    if parser.encryption_scheme is not EncryptionScheme.NONE:
        raise AdvertRejected("encrypted BTHome advertisement and no key configured")
    if parser.last_service_info is not info:
        raise AdvertRejected("BTHome service data holds no readable measurement")
    values: dict[str, Any] = {}
    fields: dict[str, dict[str, Any]] = {}
    packet_id: int | None = None
    for key, sensor in update.entity_values.items():
        if key.key == "packet_id" and sensor.native_value is not None:
            packet_id = int(sensor.native_value)
        if key.key in _SKIPPED_KEYS:
            continue
        name = _name(key)
        values[name] = _plain(sensor.native_value)
        description = update.entity_descriptions.get(key)
        unit = getattr(description, "native_unit_of_measurement", None)
        device_class = getattr(description, "device_class", None)
        fields[name] = {
            "type": _value_type(values[name]),
            "unit": getattr(unit, "value", unit),
            "device_class": getattr(device_class, "value", device_class),
            "writable": False,
        }
    for key, binary in update.binary_entity_values.items():
        name = _name(key)
        values[name] = bool(binary.native_value) if binary.native_value is not None else None
        description = update.binary_entity_descriptions.get(key)
        device_class = getattr(description, "device_class", None)
        fields[name] = {
            "type": "bool",
            "device_class": getattr(device_class, "value", device_class),
            "writable": False,
        }
    for key, event in update.events.items():
        values[_name(key)] = event.event_type
    if not values:
        raise AdvertRejected("BTHome service data holds no readable measurement")
    device_info = update.devices.get(None)
    return BthomeReading(values, fields, packet_id, getattr(device_info, "model", None))
