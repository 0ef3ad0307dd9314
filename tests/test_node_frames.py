"""The node library's frames: the protocol document's vectors, and round trips with the
gateway's own code both ways (node-built uplinks verified by the gateway's NetworkCore,
gateway-built downlinks opened by the node)."""

from __future__ import annotations

import json
import random

import pytest

from gateway.model import CommandStatus
from gateway.protocol import crypto
from gateway.protocol import frames as gateway_frames
from gateway.protocol.frames import DownlinkCommand
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    JoinRefused,
    NetworkCore,
    ReportReceived,
)
from node import cbor, frames, keys
from node.cmac import Cmac
from tests.node_fixtures import h, load_vectors

VECTORS = load_vectors()
KEYS = VECTORS["keys"]
EUI = h(KEYS["eui"])
ROOT = h(KEYS["root_key"])
DEV_NONCE = h(KEYS["dev_nonce"])
GW_NONCE = h(KEYS["gw_nonce"])


def flag(text: str) -> bool:
    assert text in ("true", "false"), text
    return text == "true"


def vector_keys(v: dict[str, str]) -> keys.SessionKeys:
    return keys.SessionKeys(h(v["integrity_key"]), h(v["encryption_key"]))


def join_mac() -> Cmac:
    return Cmac(keys.join_key(ROOT, EUI))


# ------------------------------------------------------------------------------- vectors


def test_join_request_vector() -> None:
    v = VECTORS["join_request"]
    frame = frames.join_request(Cmac(h(v["join_key"])), h(v["eui"]), h(v["dev_nonce"]))
    assert frame == h(v["frame"])


@pytest.mark.parametrize("name", ["join_accept", "join_accept_encrypted"])
def test_join_accept_vectors(name: str) -> None:
    v = VECTORS[name]
    answer = frames.open_join_answer(
        h(v["frame"]), Cmac(h(v["join_key"])), h(v["eui"]), h(v["dev_nonce"])
    )
    assert isinstance(answer, frames.JoinAccept)
    assert answer.address == int(v["address"], 16)
    assert answer.gw_nonce == h(v["gw_nonce"])
    assert answer.rx_delay_ds == int(v["rx_delay_ds"])
    assert answer.encrypt is flag(v["encrypt"])


def test_join_refused_vector() -> None:
    v = VECTORS["join_refused"]
    answer = frames.open_join_answer(
        h(v["frame"]), Cmac(h(v["join_key"])), h(v["eui"]), h(v["dev_nonce"])
    )
    assert isinstance(answer, frames.JoinRefused)
    assert (answer.reason, answer.retry_after_s) == (int(v["reason"]), int(v["retry_after_s"]))


def test_a_join_answer_to_another_nonce_fails_its_tag() -> None:
    v = VECTORS["join_accept"]
    with pytest.raises(frames.FrameError) as caught:
        frames.open_join_answer(h(v["frame"]), join_mac(), EUI, bytes(8))
    assert caught.value.reason == "bad_tag"


@pytest.mark.parametrize("name", ["report_confirmed", "report_unconfirmed_encrypted"])
def test_report_vectors(name: str) -> None:
    v = VECTORS[name]
    frame = frames.report(
        vector_keys(v),
        int(v["address"], 16),
        int(v["counter"]),
        json.loads(v["body"]),
        confirmed=flag(v["confirmed"]),
        encrypted=flag(v["encrypted"]),
    )
    assert frame == h(v["frame"])


@pytest.mark.parametrize("name", ["command_result_executed", "command_result_expired_encrypted"])
def test_command_result_vectors(name: str) -> None:
    v = VECTORS[name]
    frame = frames.command_result(
        vector_keys(v),
        int(v["address"], 16),
        int(v["counter"]),
        int(v["command_ref"]),
        int(v["status"]),
        None if v["detail"] == "null" else v["detail"],
        confirmed=flag(v["confirmed"]),
        encrypted=flag(v["encrypted"]),
    )
    assert frame == h(v["frame"])


@pytest.mark.parametrize(
    "name", ["downlink_ack", "downlink_ack_and_command", "downlink_command_encrypted"]
)
def test_downlink_vectors(name: str) -> None:
    v = VECTORS[name]
    downlink = frames.open_downlink(h(v["frame"]), vector_keys(v), int(v["address"], 16))
    assert downlink.counter == int(v["counter"])
    assert downlink.encrypted is flag(v["encrypted"])
    expected_ack = None if v["ack_counter"] == "null" else int(v["ack_counter"])
    assert downlink.ack_counter == expected_ack
    if "command_ref" in v:
        command = downlink.command
        assert command is not None
        assert (command.ref, command.ttl_ds) == (int(v["command_ref"]), int(v["ttl_ds"]))
        assert (command.action, command.params) == (v["action"], json.loads(v["params"]))
    else:
        assert downlink.command is None


# ------------------------------------------------------------------ against the gateway


class Joined:
    """A NetworkCore with the node joined through node-built frames."""

    def __init__(self, encrypt: bool = False) -> None:
        self.core = NetworkCore(
            JoinSettings(),
            {int.from_bytes(EUI, "big"): DeviceCredentials(ROOT, encrypt=encrypt)},
            random_bytes=lambda size: GW_NONCE[:size],
        )
        (accepted,) = self.core.receive(frames.join_request(join_mac(), EUI, DEV_NONCE), 10.0)
        assert isinstance(accepted, JoinAccepted)
        self.device_id = accepted.lease.device_id
        answer = frames.open_join_answer(accepted.frame, join_mac(), EUI, DEV_NONCE)
        assert isinstance(answer, frames.JoinAccept)
        assert answer.encrypt is encrypt
        self.address = answer.address
        self.keys = keys.session_keys(ROOT, EUI, DEV_NONCE, answer.gw_nonce)


@pytest.mark.parametrize("encrypt", [False, True])
def test_node_uplinks_are_accepted_by_the_gateway(encrypt: bool) -> None:
    joined = Joined(encrypt)
    body = {"counter": 7, "temperature_c": 21.5, "relay": True, "note": "é", "list": [1, -2]}
    report = frames.report(joined.keys, joined.address, 0, body, encrypted=encrypt)
    (received,) = joined.core.receive(report, 11.0)
    assert isinstance(received, ReportReceived)
    assert (received.body, received.counter, received.confirmed) == (body, 0, True)
    assert received.encrypted is encrypt
    (again,) = joined.core.receive(report, 12.0)
    assert isinstance(again, ReportReceived) and again.duplicate
    unconfirmed = frames.report(
        joined.keys, joined.address, 5, {"counter": 8}, confirmed=False, encrypted=encrypt
    )
    (received,) = joined.core.receive(unconfirmed, 13.0)
    assert isinstance(received, ReportReceived) and not received.confirmed
    for counter, status, detail, expected in (
        (6, frames.EXECUTED, "pong", CommandStatus.EXECUTED),
        (7, frames.FAILED, "no such action", CommandStatus.FAILED),
        (8, frames.EXPIRED, None, CommandStatus.EXPIRED),
    ):
        result = frames.command_result(
            joined.keys, joined.address, counter, 300 + counter, status, detail, encrypted=encrypt
        )
        (answer,) = joined.core.receive(result, 14.0)
        assert isinstance(answer, CommandResultReceived)
        assert (answer.command_ref, answer.status, answer.detail) == (
            300 + counter,
            expected,
            detail,
        )


def test_a_join_refusal_from_the_gateway_is_understood() -> None:
    eui_int = int.from_bytes(EUI, "big")
    core = NetworkCore(JoinSettings(), {eui_int: DeviceCredentials(ROOT, enabled=False)})
    (refused,) = core.receive(frames.join_request(join_mac(), EUI, DEV_NONCE), 1.0)
    assert isinstance(refused, JoinRefused)
    answer = frames.open_join_answer(refused.frame, join_mac(), EUI, DEV_NONCE)
    assert isinstance(answer, frames.JoinRefused)
    assert answer.reason == frames.REFUSED_DEVICE_DISABLED


@pytest.mark.parametrize("encrypt", [False, True])
def test_gateway_downlinks_are_opened_by_the_node(encrypt: bool) -> None:
    joined = Joined(encrypt)
    command = DownlinkCommand(
        ref=65535, action="set_interval", params={"seconds": 1.5, "why": ["a", None]}, ttl_ds=65535
    )
    cases = [(0, None), (None, command), (2**32 - 1, command)]
    for counter, (ack, cmd) in enumerate(cases):
        phy = joined.core.build_downlink(joined.device_id, ack, cmd)
        downlink = frames.open_downlink(phy, joined.keys, joined.address)
        assert downlink.counter == counter
        assert downlink.encrypted is encrypt
        assert downlink.ack_counter == ack
        if cmd is None:
            assert downlink.command is None
        else:
            assert downlink.command is not None
            got = downlink.command
            assert (got.ref, got.ttl_ds, got.action, got.params) == (
                cmd.ref,
                cmd.ttl_ds,
                cmd.action,
                cmd.params,
            )


def test_every_bit_flip_and_truncation_of_a_downlink_is_rejected() -> None:
    joined = Joined()
    command = DownlinkCommand(ref=3, action="relay", params={"on": True}, ttl_ds=50)
    phy = joined.core.build_downlink(joined.device_id, 4, command)
    for bit in range(len(phy) * 8):
        damaged = bytearray(phy)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(frames.FrameError):
            frames.open_downlink(bytes(damaged), joined.keys, joined.address)
    for size in range(len(phy)):
        with pytest.raises(frames.FrameError):
            frames.open_downlink(phy[:size], joined.keys, joined.address)


def test_random_bytes_raise_nothing_but_frame_errors() -> None:
    joined = Joined()
    source = random.Random(6)
    for _ in range(3000):
        phy = source.randbytes(source.randrange(0, 300))
        if phy and source.random() < 0.5:  # a plausible header, so the tag check is reached
            phy = bytes((0x16, source.choice((4, 8, 12, 13)))) + phy[2:]
        try:
            frames.open_downlink(phy, joined.keys, joined.address)
        except frames.FrameError as exc:
            assert exc.reason in gateway_frames.REASONS
        try:
            frames.open_join_answer(phy, join_mac(), EUI, DEV_NONCE)
        except frames.FrameError as exc:
            assert exc.reason in gateway_frames.REASONS
    # Correctly tagged junk bodies, opened after the tag check.
    for _ in range(500):
        body = source.randbytes(source.randrange(0, 40))
        flags = source.choice((frames.ACK, frames.COMMAND, frames.ACK | frames.COMMAND))
        unsigned = bytes((0x16, flags)) + joined.address.to_bytes(2, "big") + bytes(4) + body
        phy = unsigned + joined.keys.tag(unsigned)
        try:
            frames.open_downlink(phy, joined.keys, joined.address)
        except frames.FrameError as exc:
            assert exc.reason in ("bad_body", "bad_cbor")


@pytest.mark.parametrize(
    ("phy", "reason"),
    [
        (b"", "truncated"),
        (bytes(256), "oversized"),
        (b"\x26\x04" + bytes(14), "bad_version"),
        (b"\x17\x04" + bytes(14), "bad_type"),
        (b"\x16\x00" + bytes(14), "bad_flags"),
        (b"\x16\x14" + bytes(14), "bad_flags"),
        (b"\x16\x04" + bytes(9), "truncated"),
        (b"\x12\x00" + bytes(17), "bad_length"),
        (b"\x14\x02" + bytes(14), "bad_type"),
    ],
)
def test_structural_rejections(phy: bytes, reason: str) -> None:
    joined = Joined()
    with pytest.raises(frames.FrameError) as caught:
        frames.open_downlink(phy, joined.keys, 0)
    assert caught.value.reason == reason


def test_another_nodes_downlink_is_not_ours() -> None:
    joined = Joined()
    phy = joined.core.build_downlink(joined.device_id, 0, None)
    with pytest.raises(frames.FrameError) as caught:
        frames.open_downlink(phy, joined.keys, joined.address + 1)
    assert caught.value.reason == "unknown_address"


def test_bodies_that_json_cannot_hold_are_refused_before_encoding() -> None:
    joined = Joined()
    for body in ({"x": b"bytes"}, {1: 2}, {"x": float("nan")}, {"x": 2**64}, [1]):
        with pytest.raises(ValueError):
            frames.report(joined.keys, joined.address, 0, body)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        frames.report(joined.keys, joined.address, 0, {"x": "y" * 300})


def test_cbor_adapter_refuses_what_the_protocol_excludes() -> None:
    for data, reason in (
        (h("5f41614162ff"), "bad_cbor"),  # indefinite byte string
        (h("a1616101616102"), "bad_cbor"),  # trailing item
        (h("c074323031332d30332d32315432303a30343a30305a"), "bad_body"),  # tag 0
        (h("a2616101616102"), "bad_cbor"),  # duplicate key
        (h("4161"), "bad_body"),  # byte string
        (h("f97e00"), "bad_body"),  # NaN
        (h("a10102"), "bad_body"),  # integer key
        (b"", "bad_cbor"),
    ):
        with pytest.raises(cbor.CborError) as caught:
            cbor.decode(data)
        assert caught.value.reason == reason, data.hex()


def test_half_float_conversion_matches_cbor2() -> None:
    import struct

    for bits in [*range(0, 0x10000, 97), 0x0000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0x8001]:
        expected = struct.unpack(">e", bits.to_bytes(2, "big"))[0]
        got = cbor._half_float(bits)
        assert got == expected or (got != got and expected != expected), hex(bits)


def test_constants_agree_with_the_gateway() -> None:
    assert frames.MAX_SESSION_BODY == gateway_frames.MAX_SESSION_BODY
    assert frames.JOIN_REQUEST_LEN == gateway_frames.JOIN_REQUEST_LEN
    assert frames.JOIN_ACCEPT_LEN == gateway_frames.JOIN_ACCEPT_LEN
    assert frames.JOIN_REFUSED_LEN == gateway_frames.JOIN_REFUSED_LEN
    assert keys.NONCE_LEN == crypto.NONCE_LEN
    assert frames.REPORT == gateway_frames.AirFrameType.REPORT
    assert frames.COMMAND == gateway_frames.Flag.COMMAND
