"""Air frames: dataclasses per frame type, and their exact byte encoding.

Every frame starts with one byte holding the protocol version (high nibble) and the frame
type (low nibble), then a flags byte, and ends with a 4-byte AES-CMAC tag. Session frames
(report, command result, downlink) carry a 16-bit address and a 32-bit frame counter, so their
header plus tag is 12 bytes. Bodies are CBOR restricted to what maps to JSON.

Anything wrong with a frame raises ``FrameRejected`` with a short machine ``reason``; nothing
else escapes ``peek`` or the ``decode_*`` functions, whatever the input bytes. The byte layout
is specified in docs/protocol.md.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass, field
from enum import IntEnum, IntFlag
from typing import Any

import cbor2

from gateway.protocol import crypto
from gateway.protocol.crypto import AirDirection, SessionKeys

PROTOCOL_VERSION = 1
MAX_PHY_PAYLOAD = 255
TAG_LEN = crypto.TAG_LEN
SESSION_HEADER_LEN = 8
MAX_SESSION_BODY = MAX_PHY_PAYLOAD - SESSION_HEADER_LEN - TAG_LEN  # 243
MAX_COUNTER = 0xFFFF_FFFF
MAX_TTL_DS = 0xFFFF
CBOR_MAX_DEPTH = 16
JOIN_REQUEST_LEN = 2 + crypto.EUI_LEN + crypto.NONCE_LEN + TAG_LEN  # 22
JOIN_ACCEPT_LEN = 2 + 2 + crypto.NONCE_LEN + 1 + 1 + TAG_LEN  # 18
JOIN_REFUSED_LEN = 2 + 1 + 2 + TAG_LEN  # 9
SESSION_MIN_LEN = SESSION_HEADER_LEN + TAG_LEN  # 12

# Every reason FrameRejected can carry, for metrics labels (the core adds the last ones).
REASONS = (
    "truncated",
    "oversized",
    "bad_version",
    "bad_type",
    "bad_flags",
    "bad_length",
    "bad_tag",
    "bad_cbor",
    "bad_body",
    "wrong_direction",
    "unknown_address",
    "unknown_eui",
    "replayed_counter",
    "counter_reused",
    "unencrypted",
    "join_replay",
)


class FrameRejected(Exception):
    """A frame that is not accepted. ``reason`` is one of REASONS (a metrics label)."""

    def __init__(self, reason: str, detail: str = "", *, device_id: str | None = None) -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason
        self.detail = detail
        self.device_id = device_id


class FrameTooLarge(ValueError):
    """A frame to be encoded would not fit in one PHY payload (255 bytes)."""


class AirFrameType(IntEnum):
    JOIN_REQUEST = 1
    JOIN_ACCEPT = 2
    JOIN_REFUSED = 3
    REPORT = 4
    COMMAND_RESULT = 5
    DOWNLINK = 6


UPLINK_TYPES = frozenset(
    {AirFrameType.JOIN_REQUEST, AirFrameType.REPORT, AirFrameType.COMMAND_RESULT}
)
JOIN_ANSWER_TYPES = frozenset({AirFrameType.JOIN_ACCEPT, AirFrameType.JOIN_REFUSED})
SESSION_TYPES = frozenset({AirFrameType.REPORT, AirFrameType.COMMAND_RESULT, AirFrameType.DOWNLINK})


class Flag(IntFlag):
    ENCRYPTED = 0x01  # body is AES-CTR encrypted
    CONFIRMED = 0x02  # uplink: the node wants an ack
    ACK = 0x04  # downlink: carries the counter of the uplink it acknowledges
    COMMAND = 0x08  # downlink: carries a command


_ALLOWED_FLAGS = {
    AirFrameType.JOIN_REQUEST: Flag(0),
    AirFrameType.JOIN_ACCEPT: Flag(0),
    AirFrameType.JOIN_REFUSED: Flag(0),
    AirFrameType.REPORT: Flag.ENCRYPTED | Flag.CONFIRMED,
    AirFrameType.COMMAND_RESULT: Flag.ENCRYPTED | Flag.CONFIRMED,
    AirFrameType.DOWNLINK: Flag.ENCRYPTED | Flag.ACK | Flag.COMMAND,
}

_FIXED_LENGTHS = {
    AirFrameType.JOIN_REQUEST: JOIN_REQUEST_LEN,
    AirFrameType.JOIN_ACCEPT: JOIN_ACCEPT_LEN,
    AirFrameType.JOIN_REFUSED: JOIN_REFUSED_LEN,
}

# Join accept session options byte.
SESSION_OPTION_ENCRYPT = 0x01


class RefusalReason(IntEnum):
    POOL_EXHAUSTED = 1
    DEVICE_DISABLED = 2


class ResultCode(IntEnum):
    EXECUTED = 0
    FAILED = 1
    EXPIRED = 2


@dataclass(frozen=True, slots=True)
class Header:
    """What can be read from a frame before its tag is checked."""

    type: AirFrameType
    flags: Flag
    eui: int | None = None  # join request
    address: int | None = None  # session frames
    counter: int | None = None  # session frames
    tag: bytes = b""


@dataclass(frozen=True, slots=True)
class JoinRequest:
    eui: int
    dev_nonce: bytes


@dataclass(frozen=True, slots=True)
class JoinAccept:
    address: int
    gw_nonce: bytes
    rx_delay_ds: int  # receive window opens this many deciseconds after the uplink's TxDone
    encrypt: bool = False  # the session encrypts every body in both directions


@dataclass(frozen=True, slots=True)
class JoinRefusedFrame:
    reason: int  # a RefusalReason value; unknown codes are kept as numbers
    retry_after_s: int = 0

    @property
    def reason_name(self) -> str:
        try:
            return RefusalReason(self.reason).name.lower()
        except ValueError:
            return f"code_{self.reason}"


@dataclass(frozen=True, slots=True)
class ReportFrame:
    address: int
    counter: int
    body: dict[str, Any]
    confirmed: bool = True
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class CommandResultFrame:
    address: int
    counter: int
    command_ref: int
    status: ResultCode
    detail: str | None = None
    confirmed: bool = True
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class DownlinkCommand:
    """A command on air. ``ttl_ds``: deciseconds left to live when the frame ends on air."""

    ref: int
    action: str
    params: dict[str, Any] = field(default_factory=dict)
    ttl_ds: int = 0

    @classmethod
    def from_seconds(
        cls, ref: int, action: str, params: dict[str, Any], ttl_s: float
    ) -> DownlinkCommand:
        """Round the time left down (never grant extra time), capped at the field's maximum."""
        ttl_ds = max(0, min(MAX_TTL_DS, math.floor(ttl_s * 10)))
        return cls(ref=ref, action=action, params=params, ttl_ds=ttl_ds)

    @property
    def ttl_s(self) -> float:
        return self.ttl_ds / 10


@dataclass(frozen=True, slots=True)
class Downlink:
    address: int
    counter: int
    ack_counter: int | None = None
    command: DownlinkCommand | None = None
    encrypted: bool = False


@dataclass(frozen=True, slots=True)
class JoinAnswerKey:
    """Join key plus the request being answered: an answer's tag binds it to that request."""

    key: bytes
    eui: int
    dev_nonce: bytes

    def __repr__(self) -> str:
        return f"JoinAnswerKey(eui={self.eui:016x}, dev_nonce={self.dev_nonce.hex()})"


SessionFrame = ReportFrame | CommandResultFrame | Downlink
JoinAnswer = JoinAccept | JoinRefusedFrame
Frame = JoinRequest | JoinAnswer | SessionFrame


# ---------------------------------------------------------------------------- JSON-mappable CBOR


def _check_json_value(value: Any, depth: int = 0) -> None:
    """Raise ValueError unless ``value`` maps one-to-one onto JSON."""
    if depth > CBOR_MAX_DEPTH:
        raise ValueError("nested too deeply")
    if value is None or isinstance(value, (bool, str)):
        return
    if isinstance(value, int):
        if not -(2**63) <= value < 2**64:
            raise ValueError("integer out of 64-bit range")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("non-finite float")
        return
    if isinstance(value, list):
        for item in value:
            _check_json_value(item, depth + 1)
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise ValueError("map key is not a text string")
            _check_json_value(item, depth + 1)
        return
    raise ValueError(f"{type(value).__name__} has no JSON equivalent")


def encode_cbor(value: Any) -> bytes:
    """CBOR of a JSON-mappable value; ValueError for anything else."""
    _check_json_value(value)
    return cbor2.dumps(value, canonical=True)


def decode_cbor(data: bytes) -> Any:
    """Exactly one JSON-mappable CBOR item filling ``data``; FrameRejected otherwise."""
    stream = io.BytesIO(data)
    decoder = cbor2.CBORDecoder(
        stream,
        allow_indefinite=False,
        allow_duplicate_keys=False,
        max_depth=CBOR_MAX_DEPTH,
    )
    try:
        value = decoder.decode()
    except (cbor2.CBORError, ValueError, OverflowError, RecursionError) as exc:
        raise FrameRejected("bad_cbor", str(exc)[:80]) from None
    if stream.tell() != len(data):
        raise FrameRejected("bad_cbor", f"{len(data) - stream.tell()} bytes after the CBOR item")
    try:
        _check_json_value(value)
    except ValueError as exc:
        raise FrameRejected("bad_body", str(exc)) from None
    return value


# ---------------------------------------------------------------------------------- header


def _first_byte(frame_type: AirFrameType) -> int:
    return (PROTOCOL_VERSION << 4) | frame_type


def peek(phy: bytes) -> Header:
    """Check the structure that needs no key (length, version, type, flags); read the header."""
    size = len(phy)
    if size == 0:
        raise FrameRejected("truncated", "empty frame")
    if size > MAX_PHY_PAYLOAD:
        raise FrameRejected("oversized", f"{size} bytes")
    version = phy[0] >> 4
    if version != PROTOCOL_VERSION:
        raise FrameRejected("bad_version", f"version {version}")
    try:
        frame_type = AirFrameType(phy[0] & 0x0F)
    except ValueError:
        raise FrameRejected("bad_type", f"type {phy[0] & 0x0F}") from None
    fixed = _FIXED_LENGTHS.get(frame_type)
    minimum = fixed if fixed is not None else SESSION_MIN_LEN
    if size < minimum:
        raise FrameRejected("truncated", f"{frame_type.name.lower()} of {size} bytes")
    if fixed is not None and size != fixed:
        raise FrameRejected("bad_length", f"{frame_type.name.lower()} of {size} bytes")
    flags = Flag(phy[1])
    if phy[1] & ~int(_ALLOWED_FLAGS[frame_type]) & 0xFF:
        raise FrameRejected("bad_flags", f"flags 0x{phy[1]:02x} on {frame_type.name.lower()}")
    if frame_type is AirFrameType.DOWNLINK and not flags & (Flag.ACK | Flag.COMMAND):
        raise FrameRejected("bad_flags", "downlink with neither ack nor command")
    tag = bytes(phy[-TAG_LEN:])
    if frame_type is AirFrameType.JOIN_REQUEST:
        return Header(frame_type, flags, eui=int.from_bytes(phy[2:10], "big"), tag=tag)
    if frame_type in JOIN_ANSWER_TYPES:
        return Header(frame_type, flags, tag=tag)
    return Header(
        frame_type,
        flags,
        address=int.from_bytes(phy[2:4], "big"),
        counter=int.from_bytes(phy[4:8], "big"),
        tag=tag,
    )


def _expect(header: Header, allowed: frozenset[AirFrameType]) -> None:
    if header.type not in allowed:
        raise FrameRejected("bad_type", f"unexpected {header.type.name.lower()}")


# ------------------------------------------------------------------------------ join frames


def _check_range(name: str, value: int, high: int, low: int = 0) -> None:
    if not low <= value <= high:
        raise ValueError(f"{name} must be {low}..{high}, got {value}")


def _check_nonce(nonce: bytes) -> None:
    if len(nonce) != crypto.NONCE_LEN:
        raise ValueError(f"nonce must be {crypto.NONCE_LEN} bytes, got {len(nonce)}")


def encode_join_request(frame: JoinRequest, join_key: bytes) -> bytes:
    _check_range("eui", frame.eui, 2**64 - 1)
    _check_nonce(frame.dev_nonce)
    head = (
        bytes([_first_byte(AirFrameType.JOIN_REQUEST), 0])
        + crypto.eui_bytes(frame.eui)
        + frame.dev_nonce
    )
    return head + crypto.tag(join_key, head)


def decode_join_request(phy: bytes, join_key: bytes) -> JoinRequest:
    header = peek(phy)
    _expect(header, frozenset({AirFrameType.JOIN_REQUEST}))
    if not crypto.tag_matches(join_key, phy[:-TAG_LEN], header.tag):
        raise FrameRejected("bad_tag", "join request")
    assert header.eui is not None
    return JoinRequest(eui=header.eui, dev_nonce=bytes(phy[10:18]))


def _answer_tag_input(key: JoinAnswerKey, head: bytes) -> bytes:
    return crypto.eui_bytes(key.eui) + key.dev_nonce + head


def encode_join_answer(frame: JoinAnswer, key: JoinAnswerKey) -> bytes:
    if isinstance(frame, JoinAccept):
        _check_range("address", frame.address, 0xFFFF)
        _check_nonce(frame.gw_nonce)
        _check_range("rx_delay_ds", frame.rx_delay_ds, 255, low=1)
        options = SESSION_OPTION_ENCRYPT if frame.encrypt else 0
        head = (
            bytes([_first_byte(AirFrameType.JOIN_ACCEPT), 0])
            + frame.address.to_bytes(2, "big")
            + frame.gw_nonce
            + bytes([frame.rx_delay_ds, options])
        )
    else:
        _check_range("reason", frame.reason, 255)
        _check_range("retry_after_s", frame.retry_after_s, 0xFFFF)
        head = bytes(
            [_first_byte(AirFrameType.JOIN_REFUSED), 0, frame.reason]
        ) + frame.retry_after_s.to_bytes(2, "big")
    return head + crypto.tag(key.key, _answer_tag_input(key, head))


def decode_join_answer(phy: bytes, key: JoinAnswerKey) -> JoinAnswer:
    header = peek(phy)
    _expect(header, JOIN_ANSWER_TYPES)
    if not crypto.tag_matches(key.key, _answer_tag_input(key, phy[:-TAG_LEN]), header.tag):
        raise FrameRejected("bad_tag", header.type.name.lower())
    if header.type is AirFrameType.JOIN_REFUSED:
        return JoinRefusedFrame(reason=phy[2], retry_after_s=int.from_bytes(phy[3:5], "big"))
    rx_delay_ds, options = phy[12], phy[13]
    if rx_delay_ds == 0 or options & ~SESSION_OPTION_ENCRYPT:
        raise FrameRejected("bad_body", "join accept session parameters")
    return JoinAccept(
        address=int.from_bytes(phy[2:4], "big"),
        gw_nonce=bytes(phy[4:12]),
        rx_delay_ds=rx_delay_ds,
        encrypt=bool(options & SESSION_OPTION_ENCRYPT),
    )


# --------------------------------------------------------------------------- session frames


def _session_plain_body(frame: SessionFrame) -> tuple[AirFrameType, Flag, bytes]:
    if isinstance(frame, ReportFrame):
        if not isinstance(frame.body, dict):
            raise ValueError("report body must be a map")
        flags = Flag.CONFIRMED if frame.confirmed else Flag(0)
        return AirFrameType.REPORT, flags, encode_cbor(frame.body)
    if isinstance(frame, CommandResultFrame):
        _check_range("command_ref", frame.command_ref, 0xFFFF)
        body = frame.command_ref.to_bytes(2, "big") + bytes([ResultCode(frame.status)])
        if frame.detail is not None:
            body += encode_cbor(frame.detail)
        flags = Flag.CONFIRMED if frame.confirmed else Flag(0)
        return AirFrameType.COMMAND_RESULT, flags, body
    flags = Flag(0)
    body = b""
    if frame.ack_counter is not None:
        _check_range("ack_counter", frame.ack_counter, MAX_COUNTER)
        flags |= Flag.ACK
        body += frame.ack_counter.to_bytes(4, "big")
    if frame.command is not None:
        command = frame.command
        _check_range("command ref", command.ref, 0xFFFF)
        _check_range("ttl_ds", command.ttl_ds, MAX_TTL_DS)
        if not isinstance(command.action, str) or not command.action:
            raise ValueError("command action must be a non-empty string")
        if not isinstance(command.params, dict):
            raise ValueError("command params must be a map")
        flags |= Flag.COMMAND
        body += command.ref.to_bytes(2, "big") + command.ttl_ds.to_bytes(2, "big")
        body += encode_cbor([command.action, command.params])
    if not flags:
        raise ValueError("a downlink carries an ack, a command or both")
    return AirFrameType.DOWNLINK, flags, body


def downlink_length(with_ack: bool, command: DownlinkCommand | None) -> int:
    """PHY payload length of a downlink carrying an ack (or not) and ``command``; FrameTooLarge
    if it would not fit, ValueError for a command that cannot be encoded."""
    probe = Downlink(address=0, counter=0, ack_counter=0 if with_ack else None, command=command)
    _, _, body = _session_plain_body(probe)
    if len(body) > MAX_SESSION_BODY:
        raise FrameTooLarge(f"downlink body of {len(body)} bytes, at most {MAX_SESSION_BODY}")
    return SESSION_HEADER_LEN + len(body) + TAG_LEN


def encode_session(frame: SessionFrame, keys: SessionKeys) -> bytes:
    _check_range("address", frame.address, 0xFFFF)
    _check_range("counter", frame.counter, MAX_COUNTER)
    frame_type, flags, body = _session_plain_body(frame)
    if len(body) > MAX_SESSION_BODY:
        raise FrameTooLarge(
            f"{frame_type.name.lower()} body of {len(body)} bytes, at most {MAX_SESSION_BODY}"
        )
    if frame.encrypted:
        flags |= Flag.ENCRYPTED
        direction = AirDirection.UPLINK if frame_type in UPLINK_TYPES else AirDirection.DOWNLINK
        body = keys.crypt(direction, frame.address, frame.counter, body)
    head = (
        bytes([_first_byte(frame_type), flags])
        + frame.address.to_bytes(2, "big")
        + frame.counter.to_bytes(4, "big")
    )
    unsigned = head + body
    return unsigned + keys.tag(unsigned)


def decode_session(phy: bytes, keys: SessionKeys) -> SessionFrame:
    header = peek(phy)
    _expect(header, SESSION_TYPES)
    if not keys.tag_matches(phy[:-TAG_LEN], header.tag):
        raise FrameRejected("bad_tag", header.type.name.lower())
    return open_session_body(phy, header, keys)


def open_session_body(phy: bytes, header: Header, keys: SessionKeys) -> SessionFrame:
    """Decrypt and parse the body of a session frame whose tag was already checked."""
    assert header.address is not None and header.counter is not None
    address, counter = header.address, header.counter
    encrypted = bool(header.flags & Flag.ENCRYPTED)
    body = bytes(phy[SESSION_HEADER_LEN:-TAG_LEN])
    if encrypted:
        direction = AirDirection.UPLINK if header.type in UPLINK_TYPES else AirDirection.DOWNLINK
        body = keys.crypt(direction, address, counter, body)
    confirmed = bool(header.flags & Flag.CONFIRMED)
    if header.type is AirFrameType.REPORT:
        value = decode_cbor(body)
        if not isinstance(value, dict):
            raise FrameRejected("bad_body", "report body is not a map")
        return ReportFrame(address, counter, value, confirmed=confirmed, encrypted=encrypted)
    if header.type is AirFrameType.COMMAND_RESULT:
        return _parse_result(body, address, counter, confirmed, encrypted)
    return _parse_downlink(body, header.flags, address, counter, encrypted)


def _parse_result(
    body: bytes, address: int, counter: int, confirmed: bool, encrypted: bool
) -> CommandResultFrame:
    if len(body) < 3:
        raise FrameRejected("bad_body", "command result shorter than 3 bytes")
    try:
        status = ResultCode(body[2])
    except ValueError:
        raise FrameRejected("bad_body", f"result status {body[2]}") from None
    detail = None
    if len(body) > 3:
        detail = decode_cbor(body[3:])
        if not isinstance(detail, str):
            raise FrameRejected("bad_body", "result detail is not a text string")
    return CommandResultFrame(
        address,
        counter,
        command_ref=int.from_bytes(body[0:2], "big"),
        status=status,
        detail=detail,
        confirmed=confirmed,
        encrypted=encrypted,
    )


def _parse_downlink(
    body: bytes, flags: Flag, address: int, counter: int, encrypted: bool
) -> Downlink:
    ack_counter = None
    if flags & Flag.ACK:
        if len(body) < 4:
            raise FrameRejected("bad_body", "ack counter missing")
        ack_counter = int.from_bytes(body[0:4], "big")
        body = body[4:]
    command = None
    if flags & Flag.COMMAND:
        if len(body) < 5:
            raise FrameRejected("bad_body", "command shorter than 5 bytes")
        value = decode_cbor(body[4:])
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not value[0]
            or not isinstance(value[1], dict)
        ):
            raise FrameRejected("bad_body", "command is not [action, params]")
        command = DownlinkCommand(
            ref=int.from_bytes(body[0:2], "big"),
            action=value[0],
            params=value[1],
            ttl_ds=int.from_bytes(body[2:4], "big"),
        )
    elif body:
        raise FrameRejected("bad_body", f"{len(body)} bytes after the ack counter")
    return Downlink(address, counter, ack_counter, command, encrypted=encrypted)


# ------------------------------------------------------------------------------- dispatchers

FrameKey = bytes | JoinAnswerKey | SessionKeys


def encode(frame: Frame, key: FrameKey) -> bytes:
    """Encode any frame: a join request with the join key (bytes), a join answer with a
    JoinAnswerKey, a session frame with SessionKeys."""
    if isinstance(frame, JoinRequest) and isinstance(key, bytes):
        return encode_join_request(frame, key)
    if isinstance(frame, (JoinAccept, JoinRefusedFrame)) and isinstance(key, JoinAnswerKey):
        return encode_join_answer(frame, key)
    if isinstance(frame, (ReportFrame, CommandResultFrame, Downlink)) and isinstance(
        key, SessionKeys
    ):
        return encode_session(frame, key)
    raise TypeError(f"cannot encode {type(frame).__name__} with {type(key).__name__}")


def decode(phy: bytes, key: FrameKey) -> Frame:
    """Decode and authenticate a frame of the family the key belongs to (see ``encode``)."""
    if isinstance(key, SessionKeys):
        return decode_session(phy, key)
    if isinstance(key, JoinAnswerKey):
        return decode_join_answer(phy, key)
    if isinstance(key, bytes):
        return decode_join_request(phy, key)
    raise TypeError(f"no frame family has a {type(key).__name__} key")
