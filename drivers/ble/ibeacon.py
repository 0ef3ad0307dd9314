"""Apple iBeacon manufacturer data: company 0x004C, type 0x02, length 0x15 (pure).

Layout after the company id: ``02 15`` + 16-byte proximity UUID + major (u16 BE) + minor
(u16 BE) + measured power at 1 m (s8, dBm).
"""

from __future__ import annotations

import struct
import uuid
from collections.abc import Mapping
from dataclasses import dataclass

from drivers.ble.advert import AdvertRejected

APPLE_COMPANY_ID = 0x004C
_PREFIX = b"\x02\x15"
_BODY = struct.Struct(">16sHHb")


@dataclass(frozen=True, slots=True)
class IBeacon:
    uuid: str
    major: int
    minor: int
    tx_power: int

    def as_data(self) -> dict[str, str | int]:
        return {
            "uuid": self.uuid,
            "major": self.major,
            "minor": self.minor,
            "tx_power": self.tx_power,
        }


def parse_ibeacon(manufacturer_data: Mapping[int, bytes]) -> IBeacon | None:
    """The iBeacon in the manufacturer data, None if there is none, AdvertRejected if broken."""
    data = manufacturer_data.get(APPLE_COMPANY_ID)
    if data is None or not data.startswith(_PREFIX):
        return None
    if len(data) != len(_PREFIX) + _BODY.size:
        raise AdvertRejected(f"iBeacon data is {len(data)} bytes, expected 23")
    raw_uuid, major, minor, tx_power = _BODY.unpack_from(data, len(_PREFIX))
    return IBeacon(str(uuid.UUID(bytes=raw_uuid)), major, minor, tx_power)


def encode_ibeacon(beacon: IBeacon) -> bytes:
    """Manufacturer data (without the company id) for ``beacon``."""
    raw_uuid = uuid.UUID(beacon.uuid).bytes
    return _PREFIX + _BODY.pack(raw_uuid, beacon.major, beacon.minor, beacon.tx_power)
