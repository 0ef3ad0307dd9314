from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from drivers.radio.base import RadioSettings
from gateway.model import CommandStatus
from gateway.state import (
    RADIO_SETTING_NAMES,
    Direction,
    FrameLogEntry,
    GatewayState,
    LeaseRow,
    OutboxStats,
    radio_settings_with,
)


class FakeClock:
    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def entry(n: int) -> FrameLogEntry:
    return FrameLogEntry(
        ts=1_700_000_000.0 + n,
        direction=Direction.UP,
        node=f"0x{n:04x}",
        type="data",
        rssi=-90.0,
        snr=5.0,
        size=20,
        body={"n": n},
    )


def test_uptime_and_start_time_come_from_the_clocks() -> None:
    wall, mono = FakeClock(1000.0), FakeClock(50.0)
    state = GatewayState(clock=wall, monotonic=mono)
    mono.now = 80.5
    assert state.started_at == 1000.0
    assert state.uptime_s() == 30.5


def test_upstream_since_changes_only_when_the_connection_does() -> None:
    clock = FakeClock(100.0)
    state = GatewayState(clock=clock)
    state.set_upstream("mqtt", True)
    clock.now = 110.0
    state.set_upstream("mqtt", True)
    assert state.upstreams["mqtt"].since == 100.0
    clock.now = 120.0
    state.set_upstream("mqtt", False, "connection refused")
    upstream = state.upstreams["mqtt"]
    assert (upstream.connected, upstream.since, upstream.last_error) == (
        False,
        120.0,
        "connection refused",
    )
    clock.now = 130.0
    state.set_upstream("mqtt", True)
    assert state.upstreams["mqtt"].last_error == "connection refused"  # kept for people to see
    assert state.upstreams["mqtt"].since == 130.0


def test_uplinks_update_the_node_table() -> None:
    clock = FakeClock(500.0)
    state = GatewayState(clock=clock)
    device = "lora-0011223344556677"
    state.note_uplink(device, "lora", rssi=-80.0, snr=7.5, address=3, data={"t": 21.5})
    clock.now = 510.0
    state.note_uplink(device, "lora", rssi=-82.0, snr=6.0, data={"t": 21.5}, duplicate=True)
    state.note_uplink(device, "lora", data={"t": 22.0}, ts=512.0)
    state.note_downlink(device)
    node = state.nodes[device]
    assert (node.uplinks, node.reports, node.duplicates, node.downlinks) == (3, 2, 1, 1)
    assert node.last_data == {"t": 22.0}
    assert (node.rssi, node.snr, node.address, node.last_seen) == (-82.0, 6.0, 3, 512.0)
    assert node.kind == "lora"


def test_counters() -> None:
    state = GatewayState()
    for _ in range(3):
        state.count_received()
    state.count_sent()
    state.count_rejected("bad_tag")
    state.count_rejected("bad_tag")
    state.count_rejected("replay")
    state.count_join(accepted=True)
    state.count_join(accepted=False)
    state.count_join(accepted=False)
    state.count_command(CommandStatus.EXECUTED)
    state.count_command("expired")
    counters = state.counters
    assert (counters.frames_received, counters.frames_sent) == (3, 1)
    assert counters.frames_rejected == {"bad_tag": 2, "replay": 1}
    assert counters.joins == {"accepted": 1, "refused": 2}
    assert counters.commands == {"executed": 1, "expired": 1}


def test_bridge_callables_and_their_defaults() -> None:
    state = GatewayState()
    assert state.outbox() == OutboxStats(0, None)
    assert state.duty_cycle_used() == {}
    assert state.lease_rows() == []
    state.outbox_stats = lambda: OutboxStats(7, 12.5)
    state.duty_cycle = lambda: {"g1": 0.25}
    state.leases = lambda: (LeaseRow(1, "lora-0011223344556677", None),)
    assert state.outbox() == OutboxStats(7, 12.5)
    assert state.duty_cycle_used() == {"g1": 0.25}
    assert state.lease_rows() == [LeaseRow(1, "lora-0011223344556677", None)]


def test_frame_log_keeps_only_the_newest_entries() -> None:
    state = GatewayState(frame_log_size=3)
    for n in range(5):
        state.log_frame(entry(n))
    assert [e.body for e in state.frames] == [{"n": 2}, {"n": 3}, {"n": 4}]
    assert [e.body for e in state.frames.recent(2)] == [{"n": 3}, {"n": 4}]
    assert state.frames.recent(0) == []
    assert len(state.frames) == 3


async def test_subscriber_receives_new_entries_in_order() -> None:
    state = GatewayState()
    state.log_frame(entry(0))  # before subscribing: not delivered
    with state.frames.subscribe() as subscription:
        state.log_frame(entry(1))
        state.log_frame(entry(2))
        first = await asyncio.wait_for(subscription.get(), 5)
        second = await asyncio.wait_for(subscription.get(), 5)
    assert (first.body, second.body) == ({"n": 1}, {"n": 2})
    assert state.frames.subscriber_count == 0
    state.log_frame(entry(3))  # after closing: nothing queued anywhere
    assert subscription.queue.empty()


async def test_slow_subscriber_loses_the_oldest_and_counts_them() -> None:
    state = GatewayState()
    slow = state.frames.subscribe(maxsize=4)
    fast = state.frames.subscribe(maxsize=100)
    for n in range(10):
        state.log_frame(entry(n))  # never waits, whoever reads
    assert slow.dropped == 6
    assert state.frames.dropped == 6
    assert [(await slow.get()).body["n"] for _ in range(4)] == [6, 7, 8, 9]
    assert fast.dropped == 0
    assert fast.queue.qsize() == 10
    slow.close()
    fast.close()


def test_radio_changes_are_checked_against_the_config_bounds() -> None:
    current = RadioSettings()
    changed = radio_settings_with(current, {"spreading_factor": 9, "frequency_hz": 868_300_000})
    assert changed == dataclasses.replace(current, spreading_factor=9, frequency_hz=868_300_000)
    assert radio_settings_with(current, {"implicit_header": True}).implicit_header is True


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sf": 9}, "unknown radio setting 'sf'"),
        ({"spreading_factor": 13}, "spreading_factor:"),
        ({"bandwidth_hz": 100_000}, "bandwidth_hz:"),
        ({"crc": "yes"}, "crc:"),
        ({"tx_power_dbm": 30}, "tx_power_dbm:"),
        ({"frequency_hz": 868.1}, "frequency_hz:"),
        ({"spreading_factor": True}, "spreading_factor:"),
        ({"implicit_header": 1}, "implicit_header:"),
    ],
)
def test_bad_radio_changes_give_one_line(changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        radio_settings_with(RadioSettings(), changes)
    assert "\n" not in str(caught.value)


_values = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True),
    st.text(max_size=10),
    st.lists(st.integers(), max_size=3),
)


@given(st.dictionaries(st.sampled_from([*RADIO_SETTING_NAMES, "bogus", ""]), _values))
def test_radio_changes_never_raise_anything_but_value_error(changes: dict[str, Any]) -> None:
    try:
        result = radio_settings_with(RadioSettings(), changes)
    except ValueError as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        assert isinstance(result, RadioSettings)
        for key, value in changes.items():
            assert getattr(result, key) == value
