"""The frames on the serial line between the gateway and a LoRa modem: encoding and decoding.

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
value, over-long) decodes as a ``BadFrame`` naming the reason; the frames around it are
unaffected. A SETTINGS frame carries any values its fields can hold; whether a radio can take
them is ``RadioSettings.problems()``'s to say (``drivers.radio.base``).

Pure: no I/O (``drivers.radio.serial_port`` moves these frames over a file descriptor).
"""

from __future__ import annotations

import binascii
import struct
from dataclasses import dataclass
from enum import IntEnum

from cobs import cobs

from drivers.radio.base import RadioSettings

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
