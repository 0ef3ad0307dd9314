"""The simulated LoRa modem at the far end of a serial line (the twin of ``SerialRadio``).

It speaks the frames of ``drivers.radio.serial_frames`` on a file descriptor, normally the master
side of a pty whose slave path the gateway opens with pyserial (``SerialModemTwin.on_pty()``).
It applies SETTINGS (refusing any out of bounds), answers TX_REQUEST with TX_DONE after the
packet's time on air, and lets tests inject received packets, raw bytes, refusals and silence.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tty
from collections import Counter
from dataclasses import dataclass, field

from drivers.radio.base import RadioSettings
from drivers.radio.serial_frames import (
    ErrorCode,
    ErrorFrame,
    Frame,
    RxPacketFrame,
    SettingsFrame,
    TxDone,
    TxRequest,
)
from drivers.radio.serial_port import SerialPortLink

log = logging.getLogger(__name__)


@dataclass(slots=True)
class ModemBehaviour:
    """Knobs tests turn: stay silent, refuse the next transmissions, stretch time on air."""

    silent: bool = False
    refuse_tx: list[str] = field(default_factory=list)  # reasons, used up one per TX request
    airtime_scale: float = 1.0


class SerialModemTwin:
    """A modem on ``fd``; ``start()`` on the loop that should run it."""

    def __init__(self, fd: int, *, name: str = "modem twin") -> None:
        self.name = name
        self.fd = fd
        self.port: str | None = None
        self.settings: RadioSettings | None = None
        self.transmitted: list[bytes] = []
        self.counters: Counter[str] = Counter()
        self.behaviour = ModemBehaviour()
        self._link: SerialPortLink | None = None
        self._keep_fds: list[int] = []
        self._busy = False
        self._tasks: set[asyncio.Task[None]] = set()

    @classmethod
    def on_pty(cls) -> SerialModemTwin:
        """A twin on a new pty; the gateway opens ``twin.port`` (the slave path).

        The twin holds the slave open too, so the master never sees a hang-up while the gateway
        closes and reopens the port, and puts it in raw mode so nothing is echoed before the
        gateway configures it.
        """
        master, slave = os.openpty()
        tty.setraw(slave)
        os.set_blocking(master, False)
        twin = cls(master, name=f"modem twin on {os.ttyname(slave)}")
        twin.port = os.ttyname(slave)
        twin._keep_fds = [master, slave]
        return twin

    async def start(self) -> None:
        self._link = SerialPortLink(
            self.fd, self.name, self._on_frame, self._on_lost, self.counters
        )

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task
        if self._link is not None:
            self._link.close()
            self._link = None
        for fd in self._keep_fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._keep_fds = []

    def inject_rx(self, payload: bytes, rssi: int = -60, snr: float = 7.5) -> None:
        """Report a received packet to the gateway."""
        self._send(RxPacketFrame(rssi, round(snr * 4), bytes(payload)))

    def send_raw(self, data: bytes) -> None:
        """Put arbitrary bytes on the line (garbage, truncated frames)."""
        os.write(self.fd, data)

    def send_frame(self, frame: Frame) -> None:
        self._send(frame)

    def _send(self, frame: Frame) -> None:
        if self._link is None:
            raise RuntimeError(f"{self.name} is not started")
        self._link.send(frame)

    def _on_lost(self, reason: str) -> None:
        log.info("%s: line lost: %s", self.name, reason)
        self._link = None

    def _on_frame(self, frame: Frame) -> None:
        self.counters[type(frame).__name__] += 1
        if self.behaviour.silent:
            return
        if isinstance(frame, SettingsFrame):
            problems = frame.settings.problems()
            if problems:
                self._send(ErrorFrame(frame.seq, ErrorCode.BAD_SETTINGS, "; ".join(problems)))
                return
            self.settings = frame.settings
            self._send(SettingsFrame(frame.seq, frame.settings))
        elif isinstance(frame, TxRequest):
            self._on_tx_request(frame)
        else:
            self.counters["unexpected_type"] += 1
            self._send(ErrorFrame(0, ErrorCode.BAD_REQUEST, f"unexpected {type(frame).__name__}"))

    def _on_tx_request(self, request: TxRequest) -> None:
        if self.behaviour.refuse_tx:
            reason = self.behaviour.refuse_tx.pop(0)
            self._send(ErrorFrame(request.seq, ErrorCode.TX_FAILED, reason))
            return
        if self.settings is None:
            self._send(ErrorFrame(request.seq, ErrorCode.BAD_SETTINGS, "no settings yet"))
            return
        if self._busy:
            self._send(ErrorFrame(request.seq, ErrorCode.BUSY, "transmitting"))
            return
        airtime = self.settings.time_on_air_s(len(request.payload))
        self._busy = True
        task = asyncio.get_running_loop().create_task(self._finish_tx(request, airtime))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _finish_tx(self, request: TxRequest, airtime: float) -> None:
        try:
            await asyncio.sleep(airtime * self.behaviour.airtime_scale)
            self.transmitted.append(request.payload)
            if self._link is not None:
                self._send(TxDone(request.seq, round(airtime * 1_000_000)))
        finally:
            self._busy = False
