"""Simulated BLE advertisements behind the same backend interface as bleak.

The sensors send real BTHome v2 service data (UUID 0xFCD2, device-info byte 0x40, then
objects in ascending id order, little-endian, scaled per the BTHome v2 object table) and
real iBeacon manufacturer data, so the driver decodes them with bthome-ble exactly as it
would decode a radio's. Test hooks: ``advertise(mac, **changes)`` sends one advertisement
now, ``inject(advert)`` sends any ``BleAdvert``.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Final, Literal

from drivers.ble.advert import BleAdvert, normalize_mac, sig_uuid
from drivers.ble.ibeacon import APPLE_COMPANY_ID, IBeacon, encode_ibeacon
from drivers.ble.scanner import AdvertCallback, ScannerBackend

BTHOME_UUID16: Final = 0xFCD2
BTHOME_V2_INFO: Final = 0x40  # version 2, not encrypted, regular advertising interval

# object id -> (bytes, signed, factor) from the BTHome v2 object table
BTHOME_OBJECTS: Final[dict[int, tuple[int, bool, float]]] = {
    0x00: (1, False, 1),  # packet id
    0x01: (1, False, 1),  # battery, %
    0x02: (2, True, 0.01),  # temperature, °C
    0x03: (2, False, 0.01),  # humidity, %
    0x04: (3, False, 0.01),  # pressure, hPa
    0x05: (3, False, 0.01),  # illuminance, lux
    0x0C: (2, False, 0.001),  # voltage, V
    0x12: (2, False, 1),  # CO2, ppm
    0x2D: (1, False, 1),  # window, open = 1
}
PACKET_ID, BATTERY, TEMPERATURE, HUMIDITY, WINDOW = 0x00, 0x01, 0x02, 0x03, 0x2D


def encode_bthome_v2(measurements: Sequence[tuple[int, float | int | bool]]) -> bytes:
    """BTHome v2 service data for (object id, value) pairs (unencrypted, no MAC)."""
    out = bytearray([BTHOME_V2_INFO])
    for object_id, value in sorted(measurements, key=lambda item: item[0]):
        size, signed, factor = BTHOME_OBJECTS[object_id]
        raw = round(float(value) / factor)
        out.append(object_id)
        out += raw.to_bytes(size, "little", signed=signed)
    return bytes(out)


@dataclass(frozen=True, slots=True)
class SimBleSensor:
    mac: str
    name: str = "sim-sensor"
    kind: Literal["bthome", "ibeacon"] = "bthome"
    rssi: int = -60
    battery: int = 90
    temperature: float = 21.0
    humidity: float = 45.0
    window: bool | None = None
    packet_id: int = 0
    beacon: IBeacon | None = None

    def advert(self, ts: float) -> BleAdvert:
        mac = normalize_mac(self.mac)
        if self.kind == "ibeacon":
            beacon = self.beacon or IBeacon("e2c56db5-dffb-48d2-b060-d0f5a71096e0", 1, 1, -59)
            data = {APPLE_COMPANY_ID: encode_ibeacon(beacon)}
            return BleAdvert(mac, self.rssi, self.name, {}, data, ts)
        objects: list[tuple[int, float | int | bool]] = [
            (PACKET_ID, self.packet_id % 256),
            (BATTERY, self.battery),
            (TEMPERATURE, self.temperature),
            (HUMIDITY, self.humidity),
        ]
        if self.window is not None:
            objects.append((WINDOW, self.window))
        service_data = {sig_uuid(BTHOME_UUID16): encode_bthome_v2(objects)}
        return BleAdvert(mac, self.rssi, self.name, service_data, {}, ts)


def default_sensors() -> list[SimBleSensor]:
    return [
        SimBleSensor("A4:C1:38:00:00:01", name="Living room", temperature=21.5, humidity=48.0),
        SimBleSensor("A4:C1:38:00:00:02", name="Cellar", temperature=14.2, humidity=71.0),
        SimBleSensor("A4:C1:38:00:00:03", name="Front door", window=False, battery=77),
        SimBleSensor("F0:00:00:00:BE:AC", name="Beacon", kind="ibeacon", rssi=-72),
    ]


class SimAdvertSource(ScannerBackend):
    """Sensors advertising every ``interval_s`` (None: only when a test asks)."""

    def __init__(
        self,
        callback: AdvertCallback,
        *,
        sensors: Sequence[SimBleSensor] | None = None,
        interval_s: float | None = 2.0,
        seed: int = 1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        super().__init__(callback)
        chosen = default_sensors() if sensors is None else list(sensors)
        self.sensors = {normalize_mac(sensor.mac): sensor for sensor in chosen}
        self.interval_s = interval_s
        self._random = random.Random(seed)
        self._clock = clock
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self.interval_s is not None and self._task is None:
            self._task = asyncio.create_task(self._run(self.interval_s), name="ble-sim-adverts")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def advertise(self, mac: str, **changes: object) -> BleAdvert:
        """Send one advertisement from sensor ``mac`` now, after applying ``changes``."""
        key = normalize_mac(mac)
        sensor = replace(self.sensors[key], **changes)  # type: ignore[arg-type]
        sensor = replace(sensor, packet_id=(sensor.packet_id + 1) % 256)
        self.sensors[key] = sensor
        advert = sensor.advert(self._clock())
        self.emit(advert)
        return advert

    def inject(self, advert: BleAdvert) -> None:
        self.emit(advert)

    async def _run(self, interval_s: float) -> None:
        while True:
            for mac, sensor in list(self.sensors.items()):
                temperature = round(sensor.temperature + self._random.uniform(-0.3, 0.3), 2)
                humidity = round(
                    min(100.0, max(0.0, sensor.humidity + self._random.uniform(-1, 1))), 2
                )
                self.advertise(mac, temperature=temperature, humidity=humidity)
            await asyncio.sleep(interval_s)
