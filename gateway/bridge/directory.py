"""Which device driver owns which device: the one list the bridge, Home Assistant discovery
and the XMPP device list read.

Drivers are registered once while the gateway is built (the LoRa driver needs the bridge's
progress callback, so it is made after the bridge and added then), before anything starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

from gateway.devices import DeviceDriver, DeviceInfo


class DriverDirectory:
    def __init__(self, drivers: Iterable[DeviceDriver] = ()) -> None:
        self._drivers: list[DeviceDriver] = list(drivers)

    def add(self, *drivers: DeviceDriver) -> None:
        self._drivers.extend(drivers)

    def __iter__(self) -> Iterator[DeviceDriver]:
        return iter(self._drivers)

    def __len__(self) -> int:
        return len(self._drivers)

    def owner(self, device: str) -> DeviceDriver | None:
        return next((driver for driver in self._drivers if driver.owns(device)), None)

    def knows(self, device: str) -> bool:
        return self.owner(device) is not None

    def devices(self) -> list[DeviceInfo]:
        return [info for driver in self._drivers for info in driver.devices()]

    def rows(self) -> list[dict[str, Any]]:
        """Every device as ``{"device", "kind", "name"}`` (the XMPP ad-hoc device list)."""
        return [
            {"device": info.device, "kind": info.kind, "name": info.name} for info in self.devices()
        ]
