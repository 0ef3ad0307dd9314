"""``radio.driver = "serial"``: air frames carried over a USB serial line to a LoRa modem.

The modem (a bench node or a USB LoRa stick) owns the radio; the gateway sends it settings and
packets to transmit, and it reports received packets. The line carries frames:

    0x00  COBS( TYPE | BODY | CRC )  0x00

``CRC`` is CRC-16/CCITT-FALSE (``binascii.crc_hqx`` with initial value 0xFFFF) over
``TYPE | BODY``, big-endian. A frame is COBS-encoded (no zero bytes inside) and delimited by
zero bytes; the sender puts a delimiter before and after each frame, so any garbage before it
ends as a separate bad chunk. Empty chunks are ignored. Integers are big-endian.

====  ===========  ===========  =================================================================
type  name         direction    body
====  ===========  ===========  =================================================================
0x01  RX_PACKET    modem->host  rssi i16 (dBm), snr i8 (quarter dB), payload (1..255 bytes)
0x02  TX_REQUEST   host->modem  seq u8 (1..255), payload (1..255 bytes)
0x03  TX_DONE      modem->host  seq u8, time on air u32 (microseconds)
0x04  SETTINGS     both         seq u8, frequency u32 (Hz), sf u8, bandwidth u32 (Hz), cr u8
                                (5..8 for 4/5..4/8), power i8 (dBm), sync word u8, preamble
                                u16, flags u8 (bit 0 CRC on, bit 1 implicit header); the modem
                                answers with the same seq and the settings it applied, or
                                with ERROR BAD_SETTINGS
0x05  ERROR        modem->host  seq u8 (0: not about a request), code u8, reason (UTF-8)
====  ===========  ===========  =================================================================

Every request (TX_REQUEST, SETTINGS) is answered by one reply with its ``seq``: TX_DONE or
SETTINGS, or ERROR. A bad chunk (bad COBS, bad CRC, unknown type, wrong length, out-of-range
value, over-long) is logged in one line, counted in ``counters`` and dropped; the frames around
it are unaffected.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import errno
import logging
import os
import struct
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum

import serial
from cobs import cobs

from drivers.radio.base import (
    RadioError,
    RadioSettings,
    RxHandler,
    RxPacket,
    SerialRadioSettings,
)

log = logging.getLogger(__name__)

DELIMITER = b"\x00"
MAX_PAYLOAD = 255
MAX_CHUNK = 600  # longest encoded frame is ~265 bytes; anything far longer is garbage


class FrameType(IntEnum):
    RX_PACKET = 0x01
    TX_REQUEST = 0x02
    TX_DONE = 0x03
    SETTINGS = 0x04
    ERROR = 0x05


class ErrorCode(IntEnum):
    TX_FAILED = 1
    BAD_SETTINGS = 2
    BUSY = 3
    BAD_REQUEST = 4


@dataclass(frozen=True, slots=True)
class RxPacketFrame:
    rssi: int
    snr_quarter_db: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TxRequest:
    seq: int
    payload: bytes


@dataclass(frozen=True, slots=True)
class TxDone:
    seq: int
    airtime_us: int


@dataclass(frozen=True, slots=True)
class SettingsFrame:
    seq: int
    settings: RadioSettings


@dataclass(frozen=True, slots=True)
class ErrorFrame:
    seq: int
    code: int
    reason: str


Frame = RxPacketFrame | TxRequest | TxDone | SettingsFrame | ErrorFrame


@dataclass(frozen=True, slots=True)
class BadFrame:
    """A chunk of the line that is not a valid frame; ``reason`` is a counter name."""

    reason: str
    size: int
    detail: str = ""


class FrameError(ValueError):
    """A frame body that does not decode; its ``reason`` is a counter name."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


_RX_HEAD = struct.Struct(">hb")
_TX_DONE = struct.Struct(">BI")
_SETTINGS = struct.Struct(">BIBIBbBHB")
_ERROR_HEAD = struct.Struct(">BB")


def _crc(data: bytes) -> bytes:
    return binascii.crc_hqx(data, 0xFFFF).to_bytes(2, "big")


def _check_payload(payload: bytes) -> None:
    if not 1 <= len(payload) <= MAX_PAYLOAD:
        raise FrameError("bad_length", f"payload of {len(payload)} bytes (1..{MAX_PAYLOAD})")


def _check_seq(seq: int, *, allow_zero: bool = False) -> None:
    if not (0 if allow_zero else 1) <= seq <= 255:
        raise FrameError("bad_value", f"seq {seq} out of range")


def _encode_body(frame: Frame) -> bytes:
    match frame:
        case RxPacketFrame(rssi, snr, payload):
            _check_payload(payload)
            if not (-32768 <= rssi <= 32767 and -128 <= snr <= 127):
                raise FrameError("bad_value", f"rssi {rssi} or snr {snr} out of range")
            return bytes([FrameType.RX_PACKET]) + _RX_HEAD.pack(rssi, snr) + payload
        case TxRequest(seq, payload):
            _check_seq(seq)
            _check_payload(payload)
            return bytes([FrameType.TX_REQUEST, seq]) + payload
        case TxDone(seq, airtime_us):
            _check_seq(seq)
            return bytes([FrameType.TX_DONE]) + _TX_DONE.pack(seq, airtime_us)
        case SettingsFrame(seq, s):
            _check_seq(seq)
            flags = (1 if s.crc else 0) | (2 if s.implicit_header else 0)
            try:
                body = _SETTINGS.pack(
                    seq,
                    s.frequency_hz,
                    s.spreading_factor,
                    s.bandwidth_hz,
                    s.coding_rate,
                    s.tx_power_dbm,
                    s.sync_word,
                    s.preamble_length,
                    flags,
                )
            except struct.error as exc:
                raise FrameError(
                    "bad_value", f"settings do not fit a SETTINGS frame: {exc}"
                ) from None
            return bytes([FrameType.SETTINGS]) + body
        case ErrorFrame(seq, code, reason):
            _check_seq(seq, allow_zero=True)
            text = reason.encode("utf-8")[:200]
            return bytes([FrameType.ERROR]) + _ERROR_HEAD.pack(seq, code) + text
    raise TypeError(f"not a frame: {frame!r}")


def encode_frame(frame: Frame) -> bytes:
    """The bytes to put on the line for ``frame`` (delimiters included)."""
    body = _encode_body(frame)
    return DELIMITER + cobs.encode(body + _crc(body)) + DELIMITER


def decode_body(body: bytes) -> Frame:
    """Decode ``TYPE | BODY`` (CRC already checked and removed); FrameError when invalid."""
    kind, rest = body[0], body[1:]
    if kind == FrameType.RX_PACKET:
        if len(rest) < _RX_HEAD.size + 1:
            raise FrameError("bad_length", "RX_PACKET too short")
        rssi, snr = _RX_HEAD.unpack_from(rest)
        payload = rest[_RX_HEAD.size :]
        _check_payload(payload)
        return RxPacketFrame(rssi, snr, payload)
    if kind == FrameType.TX_REQUEST:
        if len(rest) < 2:
            raise FrameError("bad_length", "TX_REQUEST too short")
        _check_seq(rest[0])
        _check_payload(rest[1:])
        return TxRequest(rest[0], rest[1:])
    if kind == FrameType.TX_DONE:
        if len(rest) != _TX_DONE.size:
            raise FrameError("bad_length", f"TX_DONE of {len(rest)} bytes")
        seq, airtime_us = _TX_DONE.unpack(rest)
        _check_seq(seq)
        return TxDone(seq, airtime_us)
    if kind == FrameType.SETTINGS:
        if len(rest) != _SETTINGS.size:
            raise FrameError("bad_length", f"SETTINGS of {len(rest)} bytes")
        seq, freq, sf, bw, cr, power, sync, preamble, flags = _SETTINGS.unpack(rest)
        _check_seq(seq)
        settings = RadioSettings(
            frequency_hz=freq,
            spreading_factor=sf,
            bandwidth_hz=bw,
            coding_rate=cr,
            tx_power_dbm=power,
            sync_word=sync,
            preamble_length=preamble,
            crc=bool(flags & 1),
            implicit_header=bool(flags & 2),
        )
        return SettingsFrame(seq, settings)
    if kind == FrameType.ERROR:
        if len(rest) < _ERROR_HEAD.size:
            raise FrameError("bad_length", "ERROR too short")
        seq, code = _ERROR_HEAD.unpack_from(rest)
        reason = rest[_ERROR_HEAD.size :].decode("utf-8", "replace")
        return ErrorFrame(seq, code, reason)
    raise FrameError("unknown_type", f"unknown frame type {kind:#04x}")


class FrameDecoder:
    """Bytes from the line in, frames (and bad chunks) out; keeps partial frames between calls."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._discarding = False

    def feed(self, data: bytes) -> list[Frame | BadFrame]:
        out: list[Frame | BadFrame] = []
        self._buffer += data
        while True:
            end = self._buffer.find(DELIMITER)
            if end < 0:
                if len(self._buffer) > MAX_CHUNK:
                    if not self._discarding:
                        out.append(BadFrame("oversize", len(self._buffer), "no delimiter"))
                    self._discarding = True
                    self._buffer.clear()
                return out
            chunk = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if self._discarding:
                self._discarding = False
                continue
            if chunk:
                out.append(self._decode_chunk(chunk))

    @staticmethod
    def _decode_chunk(chunk: bytes) -> Frame | BadFrame:
        if len(chunk) > MAX_CHUNK:
            return BadFrame("oversize", len(chunk))
        try:
            raw = cobs.decode(chunk)
        except cobs.DecodeError as exc:
            return BadFrame("bad_cobs", len(chunk), str(exc))
        if len(raw) < 3:
            return BadFrame("short", len(chunk))
        body, crc = raw[:-2], raw[-2:]
        if _crc(body) != crc:
            return BadFrame("bad_crc", len(chunk))
        try:
            return decode_body(body)
        except FrameError as exc:
            return BadFrame(exc.reason, len(chunk), str(exc))


class SerialPortLink:
    """A serial port driven from the asyncio loop: ``add_reader`` in, buffered nonblocking out.

    ``on_frame`` gets each good frame and ``on_lost`` the reason the port went away; both run
    on the loop. Bad chunks are logged in one line and counted in ``counters``.
    """

    def __init__(
        self,
        fd: int,
        name: str,
        on_frame: Callable[[Frame], None],
        on_lost: Callable[[str], None],
        counters: Counter[str],
    ) -> None:
        self.name = name
        self._fd = fd
        self._on_frame = on_frame
        self._on_lost = on_lost
        self._counters = counters
        self._decoder = FrameDecoder()
        self._out = bytearray()
        self._loop = asyncio.get_running_loop()
        self._closed = False
        self._loop.add_reader(fd, self._readable)

    def send(self, frame: Frame) -> None:
        if self._closed:
            raise RadioError(f"{self.name}: port is closed")
        pending = bool(self._out)
        self._out += encode_frame(frame)
        if not pending:
            self._writable()

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        self._loop.remove_reader(self._fd)
        self._loop.remove_writer(self._fd)

    def _readable(self) -> None:
        try:
            data = os.read(self._fd, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            self._lose(f"read failed: {os.strerror(exc.errno or errno.EIO)}")
            return
        if not data:
            self._lose("end of file")
            return
        for item in self._decoder.feed(data):
            if isinstance(item, BadFrame):
                self._counters[item.reason] += 1
                log.warning(
                    "%s: dropped %d-byte chunk: %s%s",
                    self.name,
                    item.size,
                    item.reason,
                    f" ({item.detail})" if item.detail else "",
                )
            else:
                self._on_frame(item)

    def _writable(self) -> None:
        try:
            written = os.write(self._fd, self._out)
        except BlockingIOError:
            written = 0
        except OSError as exc:
            self._lose(f"write failed: {os.strerror(exc.errno or errno.EIO)}")
            return
        del self._out[:written]
        if self._out:
            self._loop.add_writer(self._fd, self._writable)
        else:
            self._loop.remove_writer(self._fd)

    def _lose(self, reason: str) -> None:
        if self._closed:
            return
        self.close()
        self._out.clear()
        self._on_lost(reason)


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
                asyncio.get_running_loop().call_soon(self._on_receive, packet)
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
