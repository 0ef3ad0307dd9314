"""``radio.driver = "serial"``: the ``Radio`` interface on a LoRa modem at the end of a USB
serial line.

The modem owns the radio; the gateway sends it settings and packets to transmit (the frames of
``drivers.radio.serial_frames``, over ``drivers.radio.serial_port``) and it reports received
packets. Every request is answered by one reply with its ``seq``. Received packets decoded from
one read of the port reach ``on_receive`` in one loop callback, once each and in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import Counter

import serial

from drivers.radio.base import (
    RadioError,
    RadioSettings,
    RxHandler,
    RxPacket,
    SerialRadioSettings,
)
from drivers.radio.serial_frames import (
    MAX_PAYLOAD,
    ErrorFrame,
    Frame,
    RxPacketFrame,
    SettingsFrame,
    TxDone,
    TxRequest,
)
from drivers.radio.serial_port import SerialPortLink

log = logging.getLogger(__name__)


class SerialRadio:
    """The ``Radio`` interface over a serial line to a LoRa modem (frames above).

    Requests are answered within ``reply_timeout_s`` (TX: time on air plus that). A request
    that goes unanswered or a lost port (modem unplugged) makes ``healthy()`` false; from then
    on, every ``reopen_interval_s``, the port is reopened if needed and the settings are sent
    until the modem answers again.
    """

    def __init__(
        self,
        settings: RadioSettings,
        port: str,
        baud: int = 115_200,
        *,
        reply_timeout_s: float = 1.0,
        reopen_interval_s: float = 1.0,
    ) -> None:
        settings.validate()
        self.settings = settings
        self.port = port
        self.baud = baud
        self.counters: Counter[str] = Counter()
        self._reply_timeout_s = reply_timeout_s
        self._reopen_interval_s = reopen_interval_s
        self._serial: serial.Serial | None = None
        self._link: SerialPortLink | None = None
        self._on_receive: RxHandler | None = None
        self._pending: dict[int, asyncio.Future[Frame]] = {}
        self._received: list[RxPacket] = []
        self._seq = 0
        self._request_lock = asyncio.Lock()
        self._healthy = False
        self._restore_task: asyncio.Task[None] | None = None
        self._closing = True

    @classmethod
    def from_settings(cls, settings: SerialRadioSettings) -> SerialRadio:
        """Build for ``radio.driver = "serial"``."""
        return cls(settings.radio, settings.port, settings.baud)

    def healthy(self) -> bool:
        return self._healthy and self._link is not None

    async def open(self, on_receive: RxHandler) -> None:
        self._on_receive = on_receive
        self._closing = False
        self._open_port()
        try:
            await self._apply(self.settings)
        except RadioError:
            await self.close()
            raise
        log.info("serial modem on %s up: %s", self.port, self.settings.describe())

    async def close(self) -> None:
        self._closing = True
        if self._restore_task is not None:
            self._restore_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._restore_task
            self._restore_task = None
        self._close_port()
        self._fail_pending("radio closed")

    async def transmit(self, payload: bytes) -> float:
        if not 1 <= len(payload) <= MAX_PAYLOAD:
            raise RadioError(f"payload must be 1..{MAX_PAYLOAD} bytes, got {len(payload)}")
        airtime = self.settings.time_on_air_s(len(payload))
        async with self._request_lock:
            seq = self._next_seq()
            reply = await self._request(
                TxRequest(seq, bytes(payload)), airtime + self._reply_timeout_s
            )
        if isinstance(reply, ErrorFrame):
            raise RadioError(f"modem on {self.port} refused to transmit: {reply.reason}")
        if not isinstance(reply, TxDone):
            raise RadioError(f"modem on {self.port} answered a TX request with {reply!r}")
        return reply.airtime_us / 1_000_000

    async def reconfigure(self, settings: RadioSettings) -> None:
        settings.validate()
        await self._apply(settings)
        self.settings = settings

    # --- internals ---

    async def _apply(self, settings: RadioSettings) -> None:
        async with self._request_lock:
            reply = await self._request(
                SettingsFrame(self._next_seq(), settings), self._reply_timeout_s
            )
        if isinstance(reply, ErrorFrame):
            raise RadioError(f"modem on {self.port} rejected settings: {reply.reason}")
        if not isinstance(reply, SettingsFrame):
            raise RadioError(f"modem on {self.port} answered settings with {reply!r}")
        if reply.settings != settings:
            raise RadioError(
                f"modem on {self.port} applied {reply.settings.describe()}, "
                f"not {settings.describe()}"
            )

    def _next_seq(self) -> int:
        self._seq = self._seq % 255 + 1
        return self._seq

    async def _request(self, frame: TxRequest | SettingsFrame, timeout_s: float) -> Frame:
        link = self._link
        if link is None:
            raise RadioError(f"modem on {self.port} is not connected")
        future: asyncio.Future[Frame] = asyncio.get_running_loop().create_future()
        self._pending[frame.seq] = future
        try:
            link.send(frame)
            reply = await asyncio.wait_for(future, timeout_s)
        except TimeoutError:
            self._healthy = False
            self.counters["timeouts"] += 1
            self._start_restoring()
            raise RadioError(
                f"modem on {self.port} did not answer within {timeout_s:.3f} s"
            ) from None
        finally:
            self._pending.pop(frame.seq, None)
        self._healthy = True
        return reply

    def _on_frame(self, frame: Frame) -> None:
        if isinstance(frame, RxPacketFrame):
            self.counters["rx_packets"] += 1
            packet = RxPacket(
                payload=frame.payload,
                rssi=float(frame.rssi),
                snr=frame.snr_quarter_db / 4,
                t_mono=time.monotonic(),
            )
            if self._on_receive is not None:
                if not self._received:
                    asyncio.get_running_loop().call_soon(self._deliver_received)
                self._received.append(packet)
            return
        if isinstance(frame, TxRequest):
            self.counters["unexpected_type"] += 1
            log.warning("%s: dropped a TX_REQUEST sent by the modem", self.port)
            return
        future = self._pending.get(frame.seq)
        if future is None or future.done():
            if isinstance(frame, ErrorFrame):
                self.counters["modem_errors"] += 1
                log.warning("%s: modem error %d: %s", self.port, frame.code, frame.reason)
            else:
                self.counters["unexpected_reply"] += 1
                log.warning("%s: dropped reply for no request (seq %d)", self.port, frame.seq)
            return
        future.set_result(frame)

    def _deliver_received(self) -> None:
        packets, self._received = self._received, []
        on_receive = self._on_receive
        if on_receive is None:
            return
        for packet in packets:
            try:
                on_receive(packet)
            except Exception as exc:  # as if each packet had its own loop callback
                asyncio.get_running_loop().call_exception_handler(
                    {"message": "serial radio on_receive failed", "exception": exc}
                )

    def _open_port(self) -> None:
        try:
            port = serial.Serial(self.port, self.baud, timeout=0, write_timeout=0, exclusive=True)
        except (serial.SerialException, OSError, ValueError) as exc:
            raise RadioError(f"cannot open serial port {self.port}: {exc}") from None
        self._serial = port
        self._link = SerialPortLink(
            port.fileno(), self.port, self._on_frame, self._on_lost, self.counters
        )

    def _close_port(self) -> None:
        self._healthy = False
        link, self._link = self._link, None
        if link is not None:
            link.close()
        port, self._serial = self._serial, None
        if port is not None:
            with contextlib.suppress(Exception):
                port.close()

    def _fail_pending(self, reason: str) -> None:
        for future in self._pending.values():
            if not future.done():
                future.set_exception(RadioError(f"modem on {self.port}: {reason}"))
        self._pending.clear()

    def _on_lost(self, reason: str) -> None:
        log.error("serial modem on %s lost: %s", self.port, reason)
        self.counters["port_lost"] += 1
        self._close_port()
        self._fail_pending(f"port lost ({reason})")
        self._start_restoring()

    def _start_restoring(self) -> None:
        if not self._closing and self._restore_task is None:
            self._restore_task = asyncio.get_running_loop().create_task(
                self._restore(), name=f"serial-restore {self.port}"
            )

    async def _restore(self) -> None:
        """Reopen the port if it went away and send the settings until the modem answers."""
        try:
            while not self._closing:
                await asyncio.sleep(self._reopen_interval_s)
                try:
                    if self._link is None:
                        self._open_port()
                    await self._apply(self.settings)
                except RadioError as exc:
                    log.debug("serial modem on %s still down: %s", self.port, exc)
                    continue
                log.info("serial modem on %s answers again", self.port)
                return
        finally:
            self._restore_task = None
