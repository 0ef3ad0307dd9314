"""The serial line's frames alone: round trips, refusals, garbage around them."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.radio.base import RadioSettings
from drivers.radio.serial_frames import (
    BadFrame,
    ErrorFrame,
    FrameDecoder,
    RxPacketFrame,
    SettingsFrame,
    TxDone,
    TxRequest,
    encode_frame,
)

FRAMES = [
    RxPacketFrame(-120, -30, b"\x00\x00payload with zeros\x00"),
    TxRequest(7, bytes(range(255))),
    TxDone(255, 123_456),
    SettingsFrame(1, RadioSettings(implicit_header=True, crc=False, tx_power_dbm=-4)),
    ErrorFrame(0, 3, "busy ✓"),
]


@pytest.mark.parametrize("frame", FRAMES, ids=lambda frame: type(frame).__name__)
def test_every_frame_type_round_trips_even_byte_by_byte(frame) -> None:
    wire = encode_frame(frame)
    assert FrameDecoder().feed(wire) == [frame]
    decoder = FrameDecoder()
    out = []
    for byte in wire:
        out += decoder.feed(bytes([byte]))
    assert out == [frame]


def test_frames_that_may_not_be_sent_are_refused() -> None:
    with pytest.raises(ValueError):
        encode_frame(TxRequest(0, b"x"))
    with pytest.raises(ValueError):
        encode_frame(TxRequest(1, b""))
    with pytest.raises(ValueError):
        encode_frame(RxPacketFrame(0, 0, bytes(256)))


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000))
def test_any_bytes_decode_to_frames_or_bad_chunks(data: bytes) -> None:
    items = FrameDecoder().feed(data)
    assert all(isinstance(item, (BadFrame, *map(type, FRAMES))) for item in items)


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300), st.sampled_from(FRAMES), st.binary(max_size=300))
def test_a_frame_survives_garbage_around_it(before: bytes, frame, after: bytes) -> None:
    items = FrameDecoder().feed(before + encode_frame(frame) + after)
    assert frame in items
