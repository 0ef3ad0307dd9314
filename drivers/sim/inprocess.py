"""``radio.driver = "sim"``: a simulated world inside the gateway process, for convenience.

The gateway still runs its real SX127x driver: the world's chip is reached through an
in-process SPI/GPIO backend instead of a socket. ``duogate sim`` plus ``radio.spi =
"sim://HOST:PORT"`` is the same thing split across two processes.
"""

from __future__ import annotations

from drivers.radio.base import RadioSettings, RxHandler
from drivers.radio.spi import Backend, Pins, open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.world import SimWorld
from gateway.config import Config


class InProcessSimRadio:
    """The ``Radio`` interface: an ``Sx127xRadio`` on the chip of a world it owns."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.world: SimWorld | None = None
        self._radio = Sx127xRadio.from_config(config.radio, open_bus=self._open_bus)

    @classmethod
    def from_config(cls, config: Config) -> InProcessSimRadio:
        return cls(config)

    @property
    def settings(self) -> RadioSettings:
        return self._radio.settings

    def _open_bus(self) -> Backend:
        if self.world is None:
            raise RuntimeError("the simulated world is not running")
        pins = self.config.radio.pins
        return open_local_chip(self.world.chip, Pins(pins.dio0, pins.reset))

    async def open(self, on_receive: RxHandler) -> None:
        self.world = SimWorld(self.config)
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
