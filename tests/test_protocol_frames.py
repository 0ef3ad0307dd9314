"""Air frames: round trips, and every kind of damage rejected with a specific reason."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.protocol import crypto, frames
from gateway.protocol.crypto import SessionKeys
from gateway.protocol.frames import (
    CommandResultFrame,
    Downlink,
    DownlinkCommand,
    FrameRejected,
    FrameTooLarge,
    JoinAccept,
    JoinAnswerKey,
    JoinRefusedFrame,
    JoinRequest,
    ReportFrame,
    ResultCode,
)

EXAMPLES = int(os.environ.get("DUOGATE_FUZZ_EXAMPLES", "300"))
FEW = max(20, EXAMPLES // 10)

keys16 = st.binary(min_size=16, max_size=16)
nonces = st.binary(min_size=8, max_size=8)
euis = st.integers(0, 2**64 - 1)
addresses = st.integers(0, 0xFFFF)
counters = st.integers(0, 0xFFFF_FFFF)
session_keys = st.builds(SessionKeys, keys16, keys16)

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
json_maps = st.dictionaries(st.text(max_size=10), json_values, max_size=5)


def _fits(body: dict[str, Any], room: int = frames.MAX_SESSION_BODY) -> bool:
    return len(frames.encode_cbor(body)) <= room


reports = st.builds(
    ReportFrame,
    address=addresses,
    counter=counters,
    body=json_maps.filter(_fits),
    confirmed=st.booleans(),
    encrypted=st.booleans(),
)
results = st.builds(
    CommandResultFrame,
    address=addresses,
    counter=counters,
    command_ref=st.integers(0, 0xFFFF),
    status=st.sampled_from(ResultCode),
    detail=st.none() | st.text(max_size=60),
    confirmed=st.booleans(),
    encrypted=st.booleans(),
)
commands = st.builds(
    DownlinkCommand,
    ref=st.integers(0, 0xFFFF),
    action=st.text(min_size=1, max_size=16),
    params=json_maps.filter(lambda params: _fits(params, 150)),  # room for ack and action
    ttl_ds=st.integers(0, frames.MAX_TTL_DS),
)
downlinks = st.builds(
    Downlink,
    address=addresses,
    counter=counters,
    ack_counter=st.none() | counters,
    command=st.none() | commands,
    encrypted=st.booleans(),
).filter(lambda d: d.ack_counter is not None or d.command is not None)
session_frames = reports | results | downlinks
join_requests = st.builds(JoinRequest, euis, nonces)
join_answers = st.builds(
    JoinAccept, addresses, nonces, st.integers(1, 255), st.booleans()
) | st.builds(JoinRefusedFrame, st.integers(0, 255), st.integers(0, 0xFFFF))
answer_keys = st.builds(JoinAnswerKey, keys16, euis, nonces)


@st.composite
def encoded_frames(draw: st.DrawFn) -> tuple[bytes, frames.FrameKey]:
    """Any valid frame with the key that opens it."""
    kind = draw(st.sampled_from(["request", "answer", "session"]))
    if kind == "request":
        key: frames.FrameKey = draw(keys16)
        return frames.encode(draw(join_requests), key), key
    if kind == "answer":
        key = draw(answer_keys)
        return frames.encode(draw(join_answers), key), key
    key = draw(session_keys)
    return frames.encode(draw(session_frames), key), key


def reason(phy: bytes, key: frames.FrameKey) -> str:
    with pytest.raises(FrameRejected) as caught:
        frames.decode(phy, key)
    return caught.value.reason


@settings(max_examples=EXAMPLES, deadline=None)
@given(frame=join_requests, key=keys16)
def test_join_request_round_trip(frame: JoinRequest, key: bytes) -> None:
    phy = frames.encode(frame, key)
    assert len(phy) == frames.JOIN_REQUEST_LEN
    assert frames.decode(phy, key) == frame
    assert frames.peek(phy).eui == frame.eui


@settings(max_examples=EXAMPLES, deadline=None)
@given(frame=join_answers, key=answer_keys)
def test_join_answer_round_trip(frame: JoinAccept | JoinRefusedFrame, key: JoinAnswerKey) -> None:
    assert frames.decode(frames.encode(frame, key), key) == frame


@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(frame=session_frames, keys=session_keys)
def test_session_frame_round_trip(frame: frames.SessionFrame, keys: SessionKeys) -> None:
    phy = frames.encode(frame, keys)
    assert len(phy) <= frames.MAX_PHY_PAYLOAD
    assert frames.decode(phy, keys) == frame
    header = frames.peek(phy)
    assert (header.address, header.counter) == (frame.address, frame.counter)


def test_header_and_tag_take_twelve_bytes() -> None:
    keys = SessionKeys(bytes(16), bytes(range(16)))
    ack = frames.encode(Downlink(address=1, counter=0, ack_counter=7), keys)
    assert len(ack) == 12 + 4  # header + ack counter + tag
    report = frames.encode(ReportFrame(address=1, counter=0, body={}), keys)
    assert len(report) == 12 + 1  # header + empty CBOR map + tag


def test_answer_is_bound_to_its_request() -> None:
    key = JoinAnswerKey(bytes(16), 0x0102030405060708, b"\x01" * 8)
    phy = frames.encode(JoinAccept(5, b"\x02" * 8, 10), key)
    other_nonce = JoinAnswerKey(key.key, key.eui, b"\x03" * 8)
    other_eui = JoinAnswerKey(key.key, key.eui + 1, key.dev_nonce)
    assert reason(phy, other_nonce) == "bad_tag"
    assert reason(phy, other_eui) == "bad_tag"


@settings(max_examples=FEW, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoded=encoded_frames())
def test_every_single_bit_flip_is_rejected(encoded: tuple[bytes, frames.FrameKey]) -> None:
    phy, key = encoded
    for bit in range(len(phy) * 8):
        damaged = bytearray(phy)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameRejected):
            frames.decode(bytes(damaged), key)


@settings(max_examples=FEW, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(encoded=encoded_frames())
def test_every_truncation_is_rejected(encoded: tuple[bytes, frames.FrameKey]) -> None:
    phy, key = encoded
    minimum = frames.JOIN_ANSWER_TYPES | {frames.AirFrameType.JOIN_REQUEST}
    header = frames.peek(phy)
    shortest = len(phy) if header.type in minimum else frames.SESSION_MIN_LEN
    for size in range(len(phy)):
        got = reason(phy[:size], key)
        if size < shortest:
            assert got == "truncated", (size, got)
        else:
            assert got in {"bad_tag", "bad_body"}, (size, got)


@settings(max_examples=FEW, deadline=None)
@given(encoded=encoded_frames(), extra=st.binary(min_size=1, max_size=300))
def test_oversized_and_padded_frames_are_rejected(
    encoded: tuple[bytes, frames.FrameKey], extra: bytes
) -> None:
    phy, key = encoded
    padded = phy + extra
    got = reason(padded, key)
    if len(padded) > frames.MAX_PHY_PAYLOAD:
        assert got == "oversized"
    else:
        assert got in {"bad_length", "bad_tag"}


@settings(max_examples=EXAMPLES, deadline=None)
@given(
    data=st.binary(max_size=300),
    key=keys16 | answer_keys | session_keys,
)
def test_random_bytes_raise_only_frame_rejected(data: bytes, key: frames.FrameKey) -> None:
    for attempt in (lambda: frames.peek(data), lambda: frames.decode(data, key)):
        try:
            attempt()
        except FrameRejected as exc:
            assert exc.reason in frames.REASONS


@settings(max_examples=EXAMPLES, deadline=None)
@given(keys=session_keys, address=addresses, counter=counters, body=st.binary(max_size=243))
def test_authentic_garbage_bodies_raise_only_frame_rejected(
    keys: SessionKeys, address: int, counter: int, body: bytes
) -> None:
    """Even a correctly tagged frame with a random body fails cleanly."""
    for first in (0x14, 0x15, 0x16):
        for flags in (0x00, 0x01, 0x02, 0x04, 0x08, 0x0C, 0x0D):
            unsigned = bytes([first, flags]) + address.to_bytes(2, "big")
            unsigned += counter.to_bytes(4, "big") + body
            phy = unsigned + crypto.tag(keys.integrity, unsigned)
            try:
                frames.decode(phy, keys)
            except FrameRejected as exc:
                assert exc.reason in frames.REASONS


def _signed(keys: SessionKeys, first: int, flags: int, body: bytes) -> bytes:
    unsigned = bytes([first, flags, 0, 1, 0, 0, 0, 9]) + body
    return unsigned + crypto.tag(keys.integrity, unsigned)


@pytest.mark.parametrize(
    ("first", "flags", "body", "expected"),
    [
        (0x14, 0x02, b"\xa0\x00", "bad_cbor"),  # trailing byte after the map
        (0x14, 0x02, b"\xbf\xff", "bad_cbor"),  # indefinite length
        (0x14, 0x02, b"\x62\xff\xfe", "bad_cbor"),  # invalid UTF-8
        (0x14, 0x02, b"\xa1\x61a\x41\x00", "bad_body"),  # byte string value
        (0x14, 0x02, b"\xa1\x01\x02", "bad_body"),  # integer key
        (0x14, 0x02, b"\xa1\x61a\xf9\x7e\x00", "bad_body"),  # NaN
        (0x14, 0x02, b"\x80", "bad_body"),  # array, not a map
        (0x14, 0x02, b"", "bad_cbor"),  # no body
        (0x15, 0x02, b"\x00\x01", "bad_body"),  # result without status
        (0x15, 0x02, b"\x00\x01\x07", "bad_body"),  # unknown status code
        (0x15, 0x02, b"\x00\x01\x00\x01", "bad_body"),  # detail not a string
        (0x16, 0x04, b"\x00\x00\x01", "bad_body"),  # short ack counter
        (0x16, 0x04, b"\x00\x00\x00\x01\x00", "bad_body"),  # bytes after the ack counter
        (0x16, 0x08, b"\x00\x01\x00\x10", "bad_body"),  # command without CBOR
        (0x16, 0x08, b"\x00\x01\x00\x10\x82\x60\xa0", "bad_body"),  # empty action
        (0x16, 0x08, b"\x00\x01\x00\x10\x81\x61a", "bad_body"),  # no params
        (0x16, 0x00, b"\x00\x00\x00\x01", "bad_flags"),  # neither ack nor command
        (0x16, 0x02, b"\x00\x00\x00\x01", "bad_flags"),  # confirmed on a downlink
        (0x14, 0x04, b"\xa0", "bad_flags"),  # ack on an uplink
        (0x14, 0x40, b"\xa0", "bad_flags"),  # reserved bit
        (0x24, 0x02, b"\xa0", "bad_version"),
        (0x04, 0x02, b"\xa0", "bad_version"),
        (0x17, 0x02, b"\xa0", "bad_type"),
        (0x10, 0x02, b"\xa0", "bad_type"),
    ],
)
def test_specific_reasons(first: int, flags: int, body: bytes, expected: str) -> None:
    keys = SessionKeys(bytes(range(16)), bytes(range(16, 32)))
    assert reason(_signed(keys, first, flags, body), keys) == expected


def test_join_frames_of_the_wrong_length_are_rejected() -> None:
    key = bytes(16)
    phy = frames.encode(JoinRequest(1, bytes(8)), key)
    assert reason(phy[:-1], key) == "truncated"
    assert reason(phy + b"\x00", key) == "bad_length"
    assert reason(b"", key) == "truncated"


def test_a_frame_of_another_family_is_a_bad_type() -> None:
    keys = SessionKeys(bytes(16), bytes(16))
    request = frames.encode(JoinRequest(1, bytes(8)), bytes(16))
    assert reason(request, keys) == "bad_type"
    report = frames.encode(ReportFrame(1, 1, {}), keys)
    assert reason(report, bytes(16)) == "bad_type"
    assert reason(report, JoinAnswerKey(bytes(16), 1, bytes(8))) == "bad_type"


def test_encrypted_body_hides_the_plaintext_and_depends_on_direction() -> None:
    keys = SessionKeys(bytes(range(16)), bytes(range(16, 32)))
    body = {"secret": "temperature-value-xyz"}
    plain = frames.encode(ReportFrame(7, 3, body), keys)
    hidden = frames.encode(ReportFrame(7, 3, body, encrypted=True), keys)
    assert b"temperature-value-xyz" in plain
    assert b"temperature-value-xyz" not in hidden
    assert frames.decode(hidden, keys) == ReportFrame(7, 3, body, encrypted=True)
    up = crypto.ctr_crypt(keys.encryption, crypto.AirDirection.UPLINK, 7, 3, bytes(32))
    down = crypto.ctr_crypt(keys.encryption, crypto.AirDirection.DOWNLINK, 7, 3, bytes(32))
    assert up != down


def test_too_large_frames_are_refused_on_encode() -> None:
    keys = SessionKeys(bytes(16), bytes(16))
    with pytest.raises(FrameTooLarge):
        frames.encode(ReportFrame(1, 1, {"x": "a" * 250}), keys)
    command = DownlinkCommand(1, "set", {"blob": "b" * 240}, 10)
    with pytest.raises(FrameTooLarge):
        frames.encode(Downlink(1, 1, ack_counter=1, command=command), keys)
    with pytest.raises(ValueError):
        frames.encode(ReportFrame(1, 1, {"bytes": b"\x00"}), keys)
    with pytest.raises(ValueError):
        frames.encode(Downlink(1, 1), keys)


def test_ttl_is_rounded_down_and_capped() -> None:
    assert DownlinkCommand.from_seconds(1, "ping", {}, 12.39).ttl_ds == 123
    assert DownlinkCommand.from_seconds(1, "ping", {}, 0.09).ttl_ds == 0
    assert DownlinkCommand.from_seconds(1, "ping", {}, -3).ttl_ds == 0
    assert DownlinkCommand.from_seconds(1, "ping", {}, 1e9).ttl_ds == frames.MAX_TTL_DS


def test_refusal_reason_names() -> None:
    assert JoinRefusedFrame(1).reason_name == "pool_exhausted"
    assert JoinRefusedFrame(2).reason_name == "device_disabled"
    assert JoinRefusedFrame(99).reason_name == "code_99"
