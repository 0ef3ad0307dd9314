"""Uplink verification, duplicates and replays, downlinks and counter continuity."""

from __future__ import annotations

import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.model import CommandStatus, lora_device_id
from gateway.protocol import frames
from gateway.protocol.crypto import SessionKeys
from gateway.protocol.frames import (
    Downlink,
    DownlinkCommand,
    FrameRejected,
    FrameTooLarge,
    JoinAccept,
    ResultCode,
)
from gateway.protocol.join import DOWNLINK_RESERVATION, DeviceCredentials, JoinSettings, LeaseRecord
from gateway.protocol.session import (
    CommandResultReceived,
    NetworkCore,
    ReportReceived,
    report_id,
)

EXAMPLES = int(os.environ.get("DUOGATE_FUZZ_EXAMPLES", "300"))
EUI = 0x0011223344556677
ROOT = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
DEVICE = lora_device_id(EUI)


def make_core(encrypt: bool = False, records: list[LeaseRecord] | None = None) -> NetworkCore:
    registry = {EUI: DeviceCredentials(ROOT, encrypt=encrypt)}
    return NetworkCore(JoinSettings(), registry, records=records or [])


def join(core: NetworkCore, dev_nonce: bytes = b"\x01" * 8) -> NodeSession:
    actions = core.receive(join_request(EUI, ROOT, dev_nonce), 100.0)
    answer = open_join_answer(actions[-1].frame, EUI, ROOT, dev_nonce)  # type: ignore[union-attr]
    assert isinstance(answer, JoinAccept)
    return NodeSession.from_accept(EUI, ROOT, dev_nonce, answer)


def rejected(core: NetworkCore, phy: bytes, now: float = 200.0) -> str:
    with pytest.raises(FrameRejected) as caught:
        core.receive(phy, now)
    return caught.value.reason


def report(core: NetworkCore, phy: bytes, now: float = 200.0) -> ReportReceived:
    (action,) = core.receive(phy, now)
    assert isinstance(action, ReportReceived)
    return action


def test_new_duplicate_and_replayed_uplinks() -> None:
    core = make_core()
    node = join(core)
    _, first = node.report({"counter": 1, "temperature_c": 20.5, "relay": False})
    _, second = node.report({"counter": 2, "temperature_c": 20.7, "relay": False})
    got = report(core, first)
    assert not got.duplicate and got.confirmed and got.counter == 0
    assert got.body == {"counter": 1, "temperature_c": 20.5, "relay": False}
    assert got.report_id == report_id(DEVICE, node.gw_nonce.hex(), 0)
    again = report(core, first)
    assert again.duplicate and again.report_id == got.report_id and again.body == got.body
    assert not report(core, second).duplicate
    assert report(core, first).duplicate  # still among the recent counters
    assert report(core, second).duplicate


def test_an_old_counter_outside_the_recent_window_is_a_replay() -> None:
    core = make_core()
    node = join(core)
    frames_sent = [node.report({"n": n})[1] for n in range(20)]
    for phy in frames_sent:
        report(core, phy)
    assert rejected(core, frames_sent[0]) == "replayed_counter"
    assert rejected(core, frames_sent[3]) == "replayed_counter"
    assert report(core, frames_sent[19]).duplicate


def test_a_counter_reused_for_different_content_is_rejected() -> None:
    core = make_core()
    node = join(core)
    report(core, node.report({"n": 1})[1])
    node.up_next = 0
    assert rejected(core, node.report({"n": 2})[1]) == "counter_reused"


def test_counter_gaps_are_allowed_but_never_backwards() -> None:
    core = make_core()
    node = join(core)
    node.up_next = 1000
    assert report(core, node.report({})[1]).counter == 1000
    node.up_next = 500
    assert rejected(core, node.report({})[1]) == "replayed_counter"


def test_unknown_address_bad_tag_and_wrong_direction() -> None:
    core = make_core()
    node = join(core)
    node.address ^= 0x0100
    assert rejected(core, node.report({})[1]) == "unknown_address"
    node.address ^= 0x0100
    _, phy = node.report({})
    assert rejected(core, phy[:-1] + bytes([phy[-1] ^ 1])) == "bad_tag"
    gateway_keys = SessionKeys(node.keys.integrity, node.keys.encryption)
    downlink = frames.encode(Downlink(node.address, 0, ack_counter=1), gateway_keys)
    assert rejected(core, downlink) == "wrong_direction"
    assert report(core, phy).counter == phy[7]  # the rejections changed nothing


def test_every_bit_flip_of_an_uplink_is_rejected_by_the_core() -> None:
    core = make_core()
    node = join(core)
    _, phy = node.report({"counter": 1, "temperature_c": 21.0, "relay": True})
    for bit in range(len(phy) * 8):
        damaged = bytearray(phy)
        damaged[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(FrameRejected):
            core.receive(bytes(damaged), 200.0)
    assert not report(core, phy).duplicate


def test_random_bytes_raise_only_frame_rejected() -> None:
    core = make_core()
    join(core)
    before = core.records()

    @settings(max_examples=EXAMPLES, deadline=None)
    @given(data=st.binary(max_size=300) | st.binary(min_size=12, max_size=40).map(with_header))
    def check(data: bytes) -> None:
        try:
            core.receive(data, 1.0)
        except FrameRejected as exc:
            assert exc.reason in frames.REASONS

    check()
    assert core.records() == before  # rejected frames changed nothing


def with_header(data: bytes) -> bytes:
    """Random bytes behind a plausible first byte and the address of the joined device."""
    return bytes([0x11 + data[0] % 6, data[1] % 16, 0, 1]) + data[4:]


def test_encrypted_sessions_refuse_plaintext() -> None:
    core = make_core(encrypt=True)
    node = join(core)
    assert node.encrypt
    node.encrypt = False
    assert rejected(core, node.report({"x": 1})[1]) == "unencrypted"
    node.encrypt = True
    got = report(core, node.report({"x": 2})[1])
    assert got.encrypted and got.body == {"x": 2}
    downlink = core.build_downlink(DEVICE, got.counter, None)
    assert node.open_downlink(downlink).encrypted


def test_command_results_map_to_command_statuses() -> None:
    core = make_core()
    node = join(core)
    cases = [
        (ResultCode.EXECUTED, None, CommandStatus.EXECUTED),
        (ResultCode.FAILED, "unknown action", CommandStatus.FAILED),
        (ResultCode.EXPIRED, None, CommandStatus.EXPIRED),
    ]
    for ref, (code, detail, status) in enumerate(cases):
        _, phy = node.result(ref, code, detail)
        (action,) = core.receive(phy, 300.0)
        assert isinstance(action, CommandResultReceived)
        assert (action.command_ref, action.status, action.detail) == (ref, status, detail)
        assert action.confirmed and not action.duplicate
        (again,) = core.receive(phy, 301.0)
        assert isinstance(again, CommandResultReceived) and again.duplicate


def test_downlink_carries_ack_and_command_together() -> None:
    core = make_core()
    node = join(core)
    got = report(core, node.report({"n": 1})[1])
    command = DownlinkCommand.from_seconds(42, "relay", {"on": True}, 29.97)
    frame = node.open_downlink(core.build_downlink(DEVICE, got.counter, command))
    assert frame.ack_counter == got.counter
    assert frame.command == DownlinkCommand(42, "relay", {"on": True}, 299)
    only_ack = node.open_downlink(core.build_downlink(DEVICE, 5, None))
    assert (only_ack.ack_counter, only_ack.command) == (5, None)
    assert only_ack.counter == frame.counter + 1


def test_downlinks_for_unknown_devices_and_oversized_commands() -> None:
    core = make_core()
    join(core)
    with pytest.raises(KeyError):
        core.build_downlink("lora-ffffffffffffffff", 1, None)
    with pytest.raises(KeyError):
        core.build_downlink("not-a-device", 1, None)
    with pytest.raises(FrameTooLarge):
        core.build_downlink(DEVICE, 1, DownlinkCommand(1, "x", {"p": "y" * 300}, 10))


def test_a_replayed_downlink_is_ignored_by_the_node() -> None:
    core = make_core()
    node = join(core)
    first = core.build_downlink(DEVICE, 1, None)
    node.open_downlink(first)
    with pytest.raises(FrameRejected) as caught:
        node.open_downlink(first)
    assert caught.value.reason == "replayed_counter"


def test_restart_keeps_report_ids_duplicates_and_counters() -> None:
    core = make_core()
    node = join(core)
    _, phy = node.report({"n": 1})
    before = report(core, phy)
    used = {node.open_downlink(core.build_downlink(DEVICE, 0, None)).counter for _ in range(3)}
    records = core.take_dirty()
    restarted = make_core(records=records)
    after = report(restarted, phy, 400.0)
    assert after.duplicate and after.report_id == before.report_id
    next_counter = node.open_downlink(restarted.build_downlink(DEVICE, 0, None)).counter
    assert next_counter > max(used)
    assert restarted.lease(DEVICE).last_seen == 400.0  # type: ignore[union-attr]


@settings(max_examples=max(30, EXAMPLES // 10), deadline=None)
@given(
    plan=st.lists(
        st.tuples(st.integers(0, DOWNLINK_RESERVATION // 2 - 1), st.booleans()),
        min_size=1,
        max_size=12,
    )
)
def test_downlink_counters_never_repeat_across_crashes(plan: list[tuple[int, bool]]) -> None:
    """Builds between flushes stay under half a reservation block, as the bridge's commit
    cadence guarantees; a crash loses whatever was not flushed."""
    core = make_core()
    join(core)
    stored = core.take_dirty()
    used: set[int] = set()
    for builds, crash in plan:
        for _ in range(builds):
            counter = frames.peek(core.build_downlink(DEVICE, 0, None)).counter
            assert counter not in used
            used.add(counter)
        if crash:
            core = make_core(records=stored)
        records = core.take_dirty()
        if records:
            stored = records


def test_reregistration_drops_removed_devices() -> None:
    core = make_core()
    node = join(core)
    assert core.set_registry({}) == [DEVICE]
    assert rejected(core, node.report({})[1]) == "unknown_address"
    assert core.lease(DEVICE) is None
    (record,) = core.take_dirty()
    assert record.address is None and record.generation == 1
