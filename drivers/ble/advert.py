"""The neutral advertisement record every scanner backend produces (pure)."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

_MAC = re.compile(r"^[0-9A-Fa-f]{2}([:-]?)[0-9A-Fa-f]{2}(\1[0-9A-Fa-f]{2}){4}$")
SIG_BASE_UUID = "0000{:04x}-0000-1000-8000-00805f9b34fb"


class AdvertRejected(ValueError):
    """An advertisement that claims a format but does not decode; the message says why."""


def normalize_mac(text: str) -> str:
    """``aa-bb-cc-dd-ee-ff`` / ``AABBCCDDEEFF`` / ``aa:bb:..`` -> ``AA:BB:CC:DD:EE:FF``."""
    if not isinstance(text, str) or not _MAC.match(text.strip()):
        raise ValueError(f"not a MAC address: {text!r}")
    digits = re.sub(r"[:-]", "", text.strip()).upper()
    return ":".join(digits[i : i + 2] for i in range(0, 12, 2))


def sig_uuid(short: int) -> str:
    """The 128-bit form of a 16-bit Bluetooth SIG UUID, as bleak spells service-data keys."""
    return SIG_BASE_UUID.format(short)


@dataclass(frozen=True, slots=True)
class BleAdvert:
    mac: str  # AA:BB:CC:DD:EE:FF
    rssi: int | None
    name: str | None
    service_data: Mapping[str, bytes] = field(default_factory=dict)  # 128-bit uuid -> bytes
    manufacturer_data: Mapping[int, bytes] = field(default_factory=dict)  # company id -> bytes
    ts: float = 0.0  # time.monotonic() when it was received
