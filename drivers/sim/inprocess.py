"""``radio.driver = "sim"``: a simulated world inside the gateway process, for convenience.

The gateway still runs its real SX127x driver: the world's chip is reached through an
in-process SPI/GPIO backend instead of a socket. ``duogate sim`` plus ``radio.spi =
"sim://HOST:PORT"`` is the same thing split across two processes.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from drivers.radio.base import RadioSettings, RxHandler
from drivers.radio.spi import Backend, Pins
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.settings import SimRadioSettings
from drivers.sim.world import SimWorld


class InProcessSimRadio:
    """The ``Radio`` interface: an ``Sx127xRadio`` on the chip of a world it owns."""

    def __init__(self, settings: SimRadioSettings, **radio_options: Any) -> None:
        """``radio_options``: ``Sx127xRadio`` tuning (``probe_interval_s``, ...)."""
        self.sim_settings = settings
        self.world: SimWorld | None = None
        self._radio = Sx127xRadio(
            settings.world.radio,
            dio0_pin=settings.dio0_pin,
            reset_pin=settings.reset_pin,
            open_bus=self._open_bus,
            **radio_options,
        )

    @property
    def settings(self) -> RadioSettings:
        return self._radio.settings

    @property
    def counters(self) -> Counter[str]:
        """The SX127x driver's counters (packets, CRC errors, resets, ...)."""
        return self._radio.counters

    def _open_bus(self) -> Backend:
        if self.world is None:
            raise RuntimeError("the simulated world is not running")
        pins = self._radio.pins
        return open_local_chip(self.world.chip, Pins(pins.dio0, pins.reset))

    async def open(self, on_receive: RxHandler) -> None:
        self.world = SimWorld(self.sim_settings.world)
        await self._radio.open(on_receive)
        self.world.start()

    async def close(self) -> None:
        if self.world is not None:
            await self.world.stop()
        await self._radio.close()

    async def transmit(self, payload: bytes) -> float:
        return await self._radio.transmit(payload)

    async def reconfigure(self, settings: RadioSettings) -> None:
        await self._radio.reconfigure(settings)

    def healthy(self) -> bool:
        return self._radio.healthy()
