"""The interface every LoRa radio driver offers to the gateway.

A driver owns one radio (an SX127x on SPI, a USB-serial modem, an in-process simulation).
It hands received packets to a callback on the gateway's event loop and transmits one
packet at a time. Everything above this interface is identical for every driver.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol


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
