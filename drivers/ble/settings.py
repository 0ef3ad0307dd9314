"""What the BLE driver is told: the advert source, which MACs to take, how often, when offline.

A plain frozen record; the gateway builds it from its checked ``[ble]`` config section
(``gateway.driver_settings``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal


@dataclass(frozen=True, slots=True)
class BleSettings:
    backend: Literal["bleak", "sim"] = "bleak"
    adapter: str | None = None
    allow: tuple[str, ...] = ()  # MACs, ':' or '-' or none
    deny: tuple[str, ...] = ()
    min_interval_s: float = 30.0
    scanning_mode: Literal["passive", "active"] = "passive"
    offline_after_s: float = 900.0  # 0: never offline
