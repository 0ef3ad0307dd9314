"""The SPI/GPIO backend ``radio.spi`` names: ``spidev://BUS.CS`` or ``sim://HOST:PORT``."""

from __future__ import annotations

import re

from drivers.radio.base import RadioError
from drivers.radio.spi import Backend, Gpio, Pins
from drivers.radio.spi_hardware import RpiGpio, SpidevBus
from drivers.radio.spi_simlink import SimChipLink, SimGpio, SimSpiBus

_SPIDEV_URL = re.compile(r"^spidev://(\d+)\.(\d+)$")
_SIM_URL = re.compile(r"^sim://([^:]+):(\d+)$")


def parse_spi_url(url: str) -> tuple[str, str | int, int]:
    """``spidev://0.1`` -> ("spidev", 0, 1); ``sim://h:7000`` -> ("sim", "h", 7000)."""
    if match := _SPIDEV_URL.match(url):
        return "spidev", int(match[1]), int(match[2])
    if match := _SIM_URL.match(url):
        port = int(match[2])
        if not 1 <= port <= 65535:
            raise RadioError(f"radio.spi: port must be 1..65535, got {url!r}")
        return "sim", match[1], port
    raise RadioError(f"radio.spi: expected spidev://BUS.CS or sim://HOST:PORT, got {url!r}")


def open_backend(url: str, pins: Pins, *, reply_timeout_s: float = 1.0) -> Backend:
    """Build the backend ``url`` names; hardware libraries are imported only here."""
    kind, first, second = parse_spi_url(url)
    if kind == "spidev":
        assert isinstance(first, int)
        spi = SpidevBus(first, second)
        try:
            gpio: Gpio = RpiGpio()
        except BaseException:
            spi.close()
            raise
        return Backend(spi, gpio, f"spidev {first}.{second}")
    assert isinstance(first, str)
    link = SimChipLink(first, second, reply_timeout_s=reply_timeout_s)
    link.connect()
    return Backend(SimSpiBus(link), SimGpio(link, pins), f"sim chip at {first}:{second}")
