"""BLE advertisements -> reports: a ``DeviceDriver`` for sensors that only advertise.

Order of work for each advertisement: MAC filter (deny wins; a non-empty allow list admits
only its MACs) -> decode (BTHome v2 via bthome-ble, else iBeacon, else raw hex for MACs named
in the allow list) -> repeat of the last BTHome packet id dropped -> at most one report per
device per ``min_interval_s`` (the rest counted as suppressed) -> report with the RSSI.
A device is ONLINE from its first report and OFFLINE after ``offline_after_s`` unheard.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from drivers.ble.advert import AdvertRejected, BleAdvert, normalize_mac
from drivers.ble.filters import MacFilter, Presence, RateLimiter
from drivers.ble.ibeacon import parse_ibeacon
from drivers.ble.scanner import BackendFactory, BleScanner, backend_for
from drivers.ble.settings import BleSettings
from gateway.devices import DeviceInfo, DeviceSink
from gateway.model import (
    BLE_ID,
    Command,
    CommandResult,
    CommandStatus,
    EventKind,
    ble_device_id,
)

log = logging.getLogger(__name__)

QUEUE_SIZE = 1024
IBEACON_FIELDS: dict[str, dict[str, Any]] = {
    "uuid": {"type": "str", "writable": False},
    "major": {"type": "int", "writable": False},
    "minor": {"type": "int", "writable": False},
    "tx_power": {
        "type": "int",
        "unit": "dBm",
        "device_class": "signal_strength",
        "writable": False,
    },
}


class BleDriver:
    """Scans, filters, decodes and rate-limits BLE advertisements into reports."""

    kind = "ble"

    def __init__(
        self,
        settings: BleSettings,
        *,
        backend: BackendFactory | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        # bthome-ble (and through it bleak) loads here, only when BLE is in use.
        from drivers.ble.bthome import decode_bthome

        self.settings = settings
        self._decode_bthome = decode_bthome
        self._backend = backend if backend is not None else backend_for(settings)
        self._clock = clock
        self._wall = wall_clock
        self.filter = MacFilter(settings.allow, settings.deny)
        self.limiter = RateLimiter(settings.min_interval_s)
        self.presence = Presence(settings.offline_after_s)
        self.stats: Counter[str] = Counter()
        self.rejections: Counter[str] = Counter()
        self._infos: dict[str, DeviceInfo] = {}
        self._last_packet: dict[str, tuple[int, bytes]] = {}
        self._queue: asyncio.Queue[BleAdvert] | None = None
        self._scanner: BleScanner | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._sink: DeviceSink | None = None

    # -- DeviceDriver -----------------------------------------------------------------------

    def devices(self) -> list[DeviceInfo]:
        return list(self._infos.values())

    def owns(self, device: str) -> bool:
        if device in self._infos:
            return True
        return bool(BLE_ID.match(device)) and any(
            ble_device_id(mac) == device for mac in self.filter.allow
        )

    async def start(self, sink: DeviceSink) -> None:
        if self._scanner is not None:
            raise RuntimeError("BLE driver already started")
        self._sink = sink
        self._queue = asyncio.Queue(QUEUE_SIZE)
        self._scanner = BleScanner(self._on_advert, backend=self._backend)
        self._tasks.append(asyncio.create_task(self._consume(), name="ble-adverts"))
        if self.settings.offline_after_s > 0:
            self._tasks.append(asyncio.create_task(self._watch_presence(), name="ble-presence"))
        try:
            await self._scanner.start()
        except BaseException:
            await self.stop()
            raise

    async def stop(self) -> None:
        if self._scanner is not None:
            await self._scanner.stop()
            self._scanner = None
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def execute(self, command: Command) -> CommandResult:
        return CommandResult(
            command.id,
            command.device,
            CommandStatus.REJECTED,
            self._wall(),
            "BLE devices only advertise; they take no commands",
        )

    # -- extras -----------------------------------------------------------------------------

    @property
    def scanner(self) -> BleScanner | None:
        return self._scanner

    async def drain(self) -> None:
        """Wait until every advertisement received so far has been handled."""
        if self._queue is not None:
            await self._queue.join()

    # -- internals --------------------------------------------------------------------------

    def _on_advert(self, advert: BleAdvert) -> None:
        assert self._queue is not None
        try:
            self._queue.put_nowait(advert)
        except asyncio.QueueFull:
            self.stats["dropped_queue_full"] += 1
            if self.stats["dropped_queue_full"] == 1:
                log.warning("ble: advertisement queue full (%d); dropping", QUEUE_SIZE)

    async def _consume(self) -> None:
        assert self._queue is not None
        while True:
            advert = await self._queue.get()
            try:
                await self.handle(advert)
            except Exception:  # a failing sink must not end the scanning
                self.stats["errors"] += 1
                log.exception("ble: handling an advertisement from %s failed", advert.mac)
            finally:
                self._queue.task_done()

    async def handle(self, advert: BleAdvert) -> None:
        """Filter, decode, rate-limit and report one advertisement."""
        self.stats["adverts"] += 1
        try:
            mac = normalize_mac(advert.mac)
        except ValueError as exc:
            self._reject(advert, str(exc))
            return
        verdict = self.filter.check(mac)
        if verdict != "pass":
            self.stats[verdict] += 1
            return
        try:
            decoded = self._decode(advert, mac)
        except AdvertRejected as exc:
            self._reject(advert, str(exc))
            return
        if decoded is None:
            self.stats["ignored"] += 1
            return
        kind, data, fields, packet = decoded
        device = ble_device_id(mac)
        if packet is not None:
            if self._last_packet.get(device) == packet:
                self.stats["duplicates"] += 1
                return
            self._last_packet[device] = packet
        if not self.limiter.allow(device, advert.ts):
            self.stats["suppressed"] += 1
            return
        self._remember(device, mac, advert.name, fields)
        assert self._sink is not None
        if self.presence.seen(device, advert.ts) is EventKind.ONLINE:
            await self._sink.event(device, EventKind.ONLINE, {"mac": mac})
        await self._sink.report(device, kind, data, rssi=advert.rssi)
        self.stats["reports"] += 1

    def _decode(
        self, advert: BleAdvert, mac: str
    ) -> tuple[str, dict[str, Any], dict[str, dict[str, Any]], tuple[int, bytes] | None] | None:
        reading = self._decode_bthome(advert)
        if reading is not None:
            payload = b"".join(advert.service_data.values())
            packet = (reading.packet_id, payload) if reading.packet_id is not None else None
            return "bthome", reading.values, reading.fields, packet
        beacon = parse_ibeacon(advert.manufacturer_data)
        if beacon is not None:
            return "ibeacon", beacon.as_data(), IBEACON_FIELDS, None
        if not self.filter.listed(mac):
            return None  # raw data only for devices someone asked for by MAC
        if not advert.service_data and not advert.manufacturer_data:
            return None
        data = {
            "manufacturer_data": {
                f"0x{cid:04x}": value.hex() for cid, value in advert.manufacturer_data.items()
            },
            "service_data": {uuid: value.hex() for uuid, value in advert.service_data.items()},
        }
        return "advert", data, {}, None

    def _reject(self, advert: BleAdvert, reason: str) -> None:
        self.stats["rejected"] += 1
        self.rejections[reason] += 1
        log.debug("ble: %s rejected: %s", advert.mac, reason)

    def _remember(
        self, device: str, mac: str, name: str | None, fields: dict[str, dict[str, Any]]
    ) -> None:
        known = self._infos.get(device)
        merged = {**(known.fields if known else {}), **fields}
        label = name or (known.name if known else f"BLE {mac}")
        if known is None or known.fields != merged or known.name != label:
            self._infos[device] = DeviceInfo(device, "ble", label, merged)

    async def _watch_presence(self) -> None:
        period = min(max(self.settings.offline_after_s / 4, 0.05), 30.0)
        while True:
            await asyncio.sleep(period)
            for device, silent_for in self.presence.expired(self._clock()):
                assert self._sink is not None
                log.info("ble: %s offline, unheard for %.0f s", device, silent_for)
                try:
                    detail = {"unheard_s": round(silent_for, 1)}
                    await self._sink.event(device, EventKind.OFFLINE, detail)
                except Exception:
                    self.stats["errors"] += 1
                    log.exception("ble: storing the offline event of %s failed", device)
