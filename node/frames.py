"""The node's frames of the air protocol (docs/protocol.md, Frame layout).

Uplinks are encoded (join request, report, command result); downlinks are decoded and
authenticated (join accept, join refused, downlink with an ack and/or a command). Anything
wrong with a received frame raises ``FrameError`` with the reason names of the protocol
document; nothing else escapes the ``open_*`` functions, whatever the bytes.
"""

from node import cbor
from node.cmac import TAG_LEN, Cmac
from node.keys import DOWNLINK, EUI_LEN, NONCE_LEN, UPLINK, SessionKeys

PROTOCOL_VERSION = 1
MAX_PHY_PAYLOAD = 255
SESSION_HEADER_LEN = 8
MAX_SESSION_BODY = MAX_PHY_PAYLOAD - SESSION_HEADER_LEN - TAG_LEN  # 243
MAX_COUNTER = 0xFFFFFFFF

JOIN_REQUEST = 1
JOIN_ACCEPT = 2
JOIN_REFUSED = 3
REPORT = 4
COMMAND_RESULT = 5
DOWNLINK_FRAME = 6

ENCRYPTED = 0x01
CONFIRMED = 0x02
ACK = 0x04
COMMAND = 0x08

JOIN_REQUEST_LEN = 22
JOIN_ACCEPT_LEN = 18
JOIN_REFUSED_LEN = 9
SESSION_MIN_LEN = SESSION_HEADER_LEN + TAG_LEN  # 12
_FIXED_LENGTHS = {
    JOIN_REQUEST: JOIN_REQUEST_LEN,
    JOIN_ACCEPT: JOIN_ACCEPT_LEN,
    JOIN_REFUSED: JOIN_REFUSED_LEN,
}

SESSION_OPTION_ENCRYPT = 0x01

EXECUTED = 0
FAILED = 1
EXPIRED = 2
STATUS_NAMES = ("executed", "failed", "expired")

REFUSED_POOL_EXHAUSTED = 1
REFUSED_DEVICE_DISABLED = 2


class FrameError(Exception):
    """A received frame that is not accepted; ``reason`` names why (docs/protocol.md)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason + (": " + detail if detail else ""))
        self.reason = reason
        self.detail = detail


class JoinAccept:
    """The gateway's accept: our address, its nonce and the session's parameters."""

    def __init__(self, address: int, gw_nonce: bytes, rx_delay_ds: int, encrypt: bool) -> None:
        self.address = address
        self.gw_nonce = gw_nonce
        self.rx_delay_ds = rx_delay_ds  # the receive window opens this long after TxDone
        self.encrypt = encrypt


class JoinRefused:
    """The gateway's refusal: reason 1 pool exhausted, 2 device disabled."""

    def __init__(self, reason: int, retry_after_s: int) -> None:
        self.reason = reason
        self.retry_after_s = retry_after_s


class Command:
    """A command from a downlink. ``ttl_ds``: deciseconds left when the frame ended on air."""

    def __init__(self, ref: int, ttl_ds: int, action: str, params: dict) -> None:
        self.ref = ref
        self.ttl_ds = ttl_ds
        self.action = action
        self.params = params


class Downlink:
    """An authenticated downlink: an ack (the uplink counter acknowledged) and/or a command."""

    def __init__(self, address: int, counter: int, ack_counter, command, encrypted: bool) -> None:
        self.address = address
        self.counter = counter
        self.ack_counter = ack_counter  # int or None
        self.command = command  # Command or None
        self.encrypted = encrypted


# --------------------------------------------------------------------------------- uplinks


def _first_byte(frame_type: int) -> int:
    return (PROTOCOL_VERSION << 4) | frame_type


def _check_range(name: str, value: int, high: int) -> None:
    if not 0 <= value <= high:
        raise ValueError(name + " out of range")


def join_request(join_mac: Cmac, eui: bytes, dev_nonce: bytes) -> bytes:
    """A join request; ``join_mac`` is ``Cmac(join_key(root_key, eui))``."""
    if len(eui) != EUI_LEN or len(dev_nonce) != NONCE_LEN:
        raise ValueError("EUI and dev_nonce must be 8 bytes each")
    head = bytes((_first_byte(JOIN_REQUEST), 0)) + bytes(eui) + bytes(dev_nonce)
    return head + join_mac.tag(head)


def _session_frame(
    keys: SessionKeys,
    frame_type: int,
    flags: int,
    address: int,
    counter: int,
    body: bytes,
    encrypted: bool,
) -> bytes:
    _check_range("address", address, 0xFFFF)
    _check_range("counter", counter, MAX_COUNTER)
    if len(body) > MAX_SESSION_BODY:
        raise ValueError("body of " + str(len(body)) + " bytes, at most 243")
    if encrypted:
        flags |= ENCRYPTED
        body = keys.crypt(UPLINK, address, counter, body)
    unsigned = (
        bytes((_first_byte(frame_type), flags))
        + address.to_bytes(2, "big")
        + counter.to_bytes(4, "big")
        + body
    )
    return unsigned + keys.tag(unsigned)


def report(
    keys: SessionKeys,
    address: int,
    counter: int,
    body: dict,
    confirmed: bool = True,
    encrypted: bool = False,
) -> bytes:
    """A report frame; ``body`` is a JSON-mappable map (CborError otherwise)."""
    if not isinstance(body, dict):
        raise ValueError("a report body is a map")
    flags = CONFIRMED if confirmed else 0
    return _session_frame(keys, REPORT, flags, address, counter, cbor.encode(body), encrypted)


def command_result(
    keys: SessionKeys,
    address: int,
    counter: int,
    command_ref: int,
    status: int,
    detail=None,
    confirmed: bool = True,
    encrypted: bool = False,
) -> bytes:
    """A command result frame: status EXECUTED, FAILED or EXPIRED, an optional text detail."""
    _check_range("command_ref", command_ref, 0xFFFF)
    if status not in (EXECUTED, FAILED, EXPIRED):
        raise ValueError("unknown result status")
    body = command_ref.to_bytes(2, "big") + bytes((status,))
    if detail is not None:
        if not isinstance(detail, str):
            raise ValueError("a result detail is a text string")
        body += cbor.encode(detail)
    flags = CONFIRMED if confirmed else 0
    return _session_frame(keys, COMMAND_RESULT, flags, address, counter, body, encrypted)


# ------------------------------------------------------------------------------- downlinks


def frame_type(phy: bytes) -> int:
    """The type of a frame whose version, length and flags are sound; FrameError otherwise."""
    size = len(phy)
    if size == 0:
        raise FrameError("truncated", "empty frame")
    if size > MAX_PHY_PAYLOAD:
        raise FrameError("oversized", str(size) + " bytes")
    if phy[0] >> 4 != PROTOCOL_VERSION:
        raise FrameError("bad_version", "version " + str(phy[0] >> 4))
    kind = phy[0] & 0x0F
    if kind < JOIN_REQUEST or kind > DOWNLINK_FRAME:
        raise FrameError("bad_type", "type " + str(kind))
    fixed = _FIXED_LENGTHS.get(kind)
    if size < (fixed if fixed is not None else SESSION_MIN_LEN):
        raise FrameError("truncated", str(size) + " bytes")
    if fixed is not None and size != fixed:
        raise FrameError("bad_length", str(size) + " bytes")
    flags = phy[1]
    if kind == DOWNLINK_FRAME:
        allowed = ENCRYPTED | ACK | COMMAND
    elif kind in (REPORT, COMMAND_RESULT):
        allowed = ENCRYPTED | CONFIRMED
    else:
        allowed = 0
    if flags & ~allowed & 0xFF:
        raise FrameError("bad_flags", "flags " + str(flags))
    if kind == DOWNLINK_FRAME and not flags & (ACK | COMMAND):
        raise FrameError("bad_flags", "downlink with neither ack nor command")
    return kind


def session_address(phy: bytes) -> int:
    """The address field of a session frame (read before anything is verified)."""
    return int.from_bytes(phy[2:4], "big")


def open_join_answer(phy: bytes, join_mac: Cmac, eui: bytes, dev_nonce: bytes):
    """The gateway's answer to our join request with ``dev_nonce``: JoinAccept or
    JoinRefused; FrameError for anything else (another node's answer fails the tag)."""
    kind = frame_type(phy)
    if kind not in (JOIN_ACCEPT, JOIN_REFUSED):
        raise FrameError("bad_type", "not a join answer")
    head = bytes(phy[:-TAG_LEN])
    if not join_mac.tag_matches(bytes(eui) + bytes(dev_nonce) + head, bytes(phy[-TAG_LEN:])):
        raise FrameError("bad_tag", "join answer")
    if kind == JOIN_REFUSED:
        return JoinRefused(phy[2], int.from_bytes(phy[3:5], "big"))
    rx_delay_ds = phy[12]
    options = phy[13]
    if rx_delay_ds == 0 or options & ~SESSION_OPTION_ENCRYPT:
        raise FrameError("bad_body", "join accept session parameters")
    return JoinAccept(
        int.from_bytes(phy[2:4], "big"),
        bytes(phy[4:12]),
        rx_delay_ds,
        bool(options & SESSION_OPTION_ENCRYPT),
    )


def open_downlink(phy: bytes, keys: SessionKeys, address: int) -> Downlink:
    """Authenticate and parse a downlink meant for ``address``; FrameError otherwise.

    The counter is not checked here: the session knows the last one it accepted.
    """
    kind = frame_type(phy)
    if kind != DOWNLINK_FRAME:
        raise FrameError("bad_type", "not a downlink")
    if session_address(phy) != address:
        raise FrameError("unknown_address", "another node's downlink")
    if not keys.tag_matches(bytes(phy[:-TAG_LEN]), bytes(phy[-TAG_LEN:])):
        raise FrameError("bad_tag", "downlink")
    flags = phy[1]
    counter = int.from_bytes(phy[4:8], "big")
    body = bytes(phy[SESSION_HEADER_LEN:-TAG_LEN])
    encrypted = bool(flags & ENCRYPTED)
    if encrypted:
        body = keys.crypt(DOWNLINK, address, counter, body)
    ack_counter = None
    if flags & ACK:
        if len(body) < 4:
            raise FrameError("bad_body", "ack counter missing")
        ack_counter = int.from_bytes(body[0:4], "big")
        body = body[4:]
    command = None
    if flags & COMMAND:
        if len(body) < 5:
            raise FrameError("bad_body", "command shorter than 5 bytes")
        try:
            value = cbor.decode(body[4:])
        except cbor.CborError as exc:
            raise FrameError(exc.reason, str(exc)) from None
        if (
            not isinstance(value, list)
            or len(value) != 2
            or not isinstance(value[0], str)
            or not value[0]
            or not isinstance(value[1], dict)
        ):
            raise FrameError("bad_body", "command is not [action, params]")
        command = Command(
            int.from_bytes(body[0:2], "big"),
            int.from_bytes(body[2:4], "big"),
            value[0],
            value[1],
        )
    elif body:
        raise FrameError("bad_body", "bytes after the ack counter")
    return Downlink(address, counter, ack_counter, command, encrypted)
