"""Scanner backend on bleak's ``BleakScanner`` (BlueZ on the Pi). Needs the ``ble`` extra.

Passive scanning (the gateway never sends scan requests) is asked for first. On BlueZ it
works through advertisement monitor or-patterns, so it sees only advertisements matching
them: BTHome service data (UUID 0xFCD2) and Apple manufacturer data (iBeacon). Devices that
advertise anything else need ``scanning_mode = "active"``. When the adapter or BlueZ cannot
scan passively, the backend logs it once and scans actively.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, Literal

from bleak import BleakScanner
from bleak.args.bluez import BlueZScannerArgs, OrPattern
from bleak.assigned_numbers import AdvertisementDataType
from bleak.backends.device import BLEDevice
from bleak.backends.scanner import AdvertisementData, BaseBleakScanner
from bleak.exc import BleakError

from drivers.ble.advert import BleAdvert, normalize_mac
from drivers.ble.scanner import AdvertCallback, BleUnavailable, ScannerBackend

log = logging.getLogger(__name__)

PASSIVE_PATTERNS = [
    OrPattern(0, AdvertisementDataType.SERVICE_DATA_UUID16, b"\xd2\xfc"),  # BTHome v2
    OrPattern(0, AdvertisementDataType.MANUFACTURER_SPECIFIC_DATA, b"\x4c\x00"),  # Apple
]


def advert_from_bleak(device: BLEDevice, data: AdvertisementData, ts: float) -> BleAdvert:
    """bleak's records -> our neutral one (MAC upper-case with colons, copies of the maps)."""
    try:
        mac = normalize_mac(device.address)
    except ValueError:
        mac = device.address  # not a MAC (macOS gives UUIDs); the driver rejects it
    return BleAdvert(
        mac=mac,
        rssi=data.rssi,
        name=data.local_name or device.name,
        service_data={uuid.lower(): bytes(value) for uuid, value in data.service_data.items()},
        manufacturer_data={int(cid): bytes(value) for cid, value in data.manufacturer_data.items()},
        ts=ts,
    )


class BleakBackend(ScannerBackend):
    def __init__(
        self,
        callback: AdvertCallback,
        *,
        adapter: str | None = None,
        scanning_mode: Literal["passive", "active"] = "passive",
        bleak_backend: type[BaseBleakScanner] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(callback)
        self.adapter = adapter
        self.requested_mode = scanning_mode
        self.scanning_mode: Literal["passive", "active"] | None = None  # what actually runs
        self._bleak_backend = bleak_backend  # bleak's own injection point (tests, platforms)
        self._clock = clock
        self._scanner: BleakScanner | None = None

    def _make_scanner(self, mode: Literal["passive", "active"]) -> BleakScanner:
        bluez: BlueZScannerArgs = {}
        if self.adapter:
            bluez["adapter"] = self.adapter
        if mode == "passive":
            bluez["or_patterns"] = list(PASSIVE_PATTERNS)
        extra: dict[str, Any] = {}
        if self._bleak_backend is not None:
            extra["backend"] = self._bleak_backend
        return BleakScanner(self._detected, scanning_mode=mode, bluez=bluez, **extra)

    async def start(self) -> None:
        mode = self.requested_mode
        try:
            self._scanner = self._make_scanner(mode)
            await self._scanner.start()
        except BleakError as exc:
            if mode != "passive":
                raise BleUnavailable(f"BLE scan cannot start: {exc}") from None
            log.warning("ble: passive scanning unavailable (%s); scanning actively", exc)
            mode = "active"
            try:
                self._scanner = self._make_scanner(mode)
                await self._scanner.start()
            except BleakError as retry_exc:
                raise BleUnavailable(f"BLE scan cannot start: {retry_exc}") from None
        except (OSError, EOFError) as exc:  # no D-Bus socket, BlueZ gone
            raise BleUnavailable(f"BLE scan cannot start: {exc}") from None
        self.scanning_mode = mode
        log.info("ble: scanning (%s) on %s", mode, self.adapter or "the default adapter")

    async def stop(self) -> None:
        if self._scanner is not None:
            scanner, self._scanner = self._scanner, None
            try:
                await scanner.stop()
            except (BleakError, OSError, EOFError) as exc:
                log.warning("ble: stopping the scan failed: %s", exc)

    def _detected(self, device: BLEDevice, data: AdvertisementData) -> None:
        self.emit(advert_from_bleak(device, data, self._clock()))
