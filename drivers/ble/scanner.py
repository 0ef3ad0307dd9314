"""``BleScanner``: one facade over interchangeable advertisement sources.

The facade holds a backend and forwards ``start``/``stop`` to it; a backend only translates
its source's events into ``BleAdvert`` records and hands them to ``emit``. Backends:
``bleak`` (BlueZ on the Pi, ``drivers.ble.bleak_backend``) and ``sim``
(``drivers.ble.sim.SimAdvertSource``). Each is imported only when chosen, so bleak is never
loaded unless BLE is enabled with the bleak backend.
"""

from __future__ import annotations

import abc
import logging
from collections.abc import Callable
from functools import partial

from drivers.ble.advert import BleAdvert
from drivers.ble.settings import BleSettings

log = logging.getLogger(__name__)

AdvertCallback = Callable[[BleAdvert], None]


class BleUnavailable(RuntimeError):
    """The BLE adapter or stack cannot be used (no adapter, BlueZ not running, no bleak)."""


class ScannerBackend(abc.ABC):
    """A source of advertisements. Subclasses implement ``start`` and ``stop`` and call
    ``emit`` (on the event loop) for each advertisement they receive."""

    def __init__(self, callback: AdvertCallback) -> None:
        self._callback = callback
        self.emitted = 0

    def emit(self, advert: BleAdvert) -> None:
        self.emitted += 1
        self._callback(advert)

    @abc.abstractmethod
    async def start(self) -> None: ...

    @abc.abstractmethod
    async def stop(self) -> None: ...


BackendFactory = Callable[[AdvertCallback], ScannerBackend]


class BleScanner:
    """Scans with the given backend and hands every advertisement to ``callback``."""

    def __init__(self, callback: AdvertCallback, *, backend: BackendFactory) -> None:
        self._backend = backend(callback)
        self.running = False

    @property
    def backend(self) -> ScannerBackend:
        return self._backend

    async def start(self) -> None:
        await self._backend.start()
        self.running = True

    async def stop(self) -> None:
        if self.running:
            self.running = False
            await self._backend.stop()

    async def __aenter__(self) -> BleScanner:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.stop()


def backend_for(settings: BleSettings) -> BackendFactory:
    """The backend ``settings.backend`` names, imported only now."""
    match settings.backend:
        case "sim":
            from drivers.ble.sim import SimAdvertSource

            return SimAdvertSource
        case "bleak":
            try:
                from drivers.ble.bleak_backend import BleakBackend
            except ImportError as exc:
                raise BleUnavailable(
                    f"BLE needs the 'ble' extra (pip install 'duogate[ble]'): {exc}"
                ) from None
            return partial(
                BleakBackend, adapter=settings.adapter, scanning_mode=settings.scanning_mode
            )
    raise BleUnavailable(f"unknown BLE backend {settings.backend!r}")
