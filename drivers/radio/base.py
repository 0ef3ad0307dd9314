"""The interface every LoRa radio driver offers to the gateway.

A driver owns one radio (an SX127x on SPI, a USB-serial modem, an in-process simulation).
It hands received packets to a callback on the gateway's event loop and transmits one
packet at a time. Everything above this interface is identical for every driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from gateway.protocol import airtime
from gateway.protocol.airtime import (
    BANDWIDTHS_HZ,
    CODING_RATES,
    MAX_PREAMBLE,
    MIN_PREAMBLE,
    SPREADING_FACTORS,
)

# The bounds every radio here accepts (the SX127x's, which the serial modems share); the config
# file's [radio] section is checked against the same numbers.
FREQUENCIES_HZ = range(137_000_000, 1_020_000_000 + 1)
TX_POWERS_DBM = range(2, 20 + 1)  # PA_BOOST output
SYNC_WORDS = range(0, 0xFF + 1)
PREAMBLE_LENGTHS = range(MIN_PREAMBLE, MAX_PREAMBLE + 1)


class RadioError(Exception):
    """Root of radio errors: a missing chip, a chip that stopped answering, a bad setting."""


class ChipNotFound(RadioError):
    """The chip did not identify itself (RegVersion is not 0x12, or the bus is silent)."""


@dataclass(frozen=True, slots=True)
class RadioSettings:
    frequency_hz: int = 868_100_000
    spreading_factor: int = 7
    bandwidth_hz: int = 125_000
    coding_rate: int = 5  # 4/5 .. 4/8 given as 5 .. 8
    tx_power_dbm: int = 14
    sync_word: int = 0x12
    preamble_length: int = 8
    crc: bool = True
    implicit_header: bool = False

    def problems(self) -> list[str]:
        """One line per setting out of bounds, e.g. ``coding_rate must be 5..8, got 9``."""
        found = []
        for name, allowed in (
            ("frequency_hz", FREQUENCIES_HZ),
            ("spreading_factor", SPREADING_FACTORS),
            ("bandwidth_hz", BANDWIDTHS_HZ),
            ("coding_rate", CODING_RATES),
            ("tx_power_dbm", TX_POWERS_DBM),
            ("sync_word", SYNC_WORDS),
            ("preamble_length", PREAMBLE_LENGTHS),
        ):
            value = getattr(self, name)
            if value in allowed:
                continue
            if isinstance(allowed, range):
                found.append(f"{name} must be {allowed.start}..{allowed.stop - 1}, got {value}")
            else:
                found.append(f"{name} must be one of {sorted(allowed)}, got {value}")
        return found

    def validate(self) -> None:
        """RadioError naming every setting out of bounds."""
        found = self.problems()
        if found:
            raise RadioError("; ".join(found))

    def describe(self) -> str:
        """One line for logs: ``868.1000 MHz SF7 BW125k CR4/5 14 dBm sync 0x12``."""
        return (
            f"{self.frequency_hz / 1e6:.4f} MHz SF{self.spreading_factor} "
            f"BW{self.bandwidth_hz / 1000:g}k CR4/{self.coding_rate} {self.tx_power_dbm} dBm "
            f"sync {self.sync_word:#04x}"
        )

    def time_on_air_s(self, payload_bytes: int) -> float:
        """Time on air of a packet of ``payload_bytes`` with these settings (ValueError if the
        settings or the length are out of bounds)."""
        return airtime.time_on_air_s(
            payload_bytes,
            self.spreading_factor,
            self.bandwidth_hz,
            self.coding_rate,
            self.preamble_length,
            explicit_header=not self.implicit_header,
            crc=self.crc,
        )


@dataclass(frozen=True, slots=True)
class Sx127xSettings:
    """``radio.driver = "sx127x"``: the chip's settings and how it is wired."""

    radio: RadioSettings
    spi_url: str = "spidev://0.0"  # or "sim://HOST:PORT" for a `duogate sim` world
    dio0_pin: int = 25
    reset_pin: int = 17


@dataclass(frozen=True, slots=True)
class SerialRadioSettings:
    """``radio.driver = "serial"``: a LoRa modem on a serial port."""

    radio: RadioSettings
    port: str
    baud: int = 115_200


@dataclass(frozen=True, slots=True)
class RxPacket:
    payload: bytes
    rssi: float
    snr: float
    t_mono: float  # time.monotonic() when RxDone was signalled


RxHandler = Callable[[RxPacket], None]


class Radio(Protocol):
    """What the gateway needs from a radio."""

    settings: RadioSettings

    async def open(self, on_receive: RxHandler) -> None:
        """Bring the radio up and start continuous receive; ``on_receive`` runs on the loop."""

    async def close(self) -> None: ...

    async def transmit(self, payload: bytes) -> float:
        """Send one packet; return after TxDone with the time on air in seconds.

        The radio returns to continuous receive afterwards.
        """

    async def reconfigure(self, settings: RadioSettings) -> None:
        """Apply new settings at runtime."""

    def healthy(self) -> bool:
        """True while the chip answers (used by the watchdog)."""
