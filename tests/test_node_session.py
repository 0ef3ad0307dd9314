"""The node's state machine (node/session.py) against the real gateway core: NetworkCore and
DownlinkScheduler in-process, every frame handed over by hand on a virtual clock."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from gateway.model import CommandStatus
from gateway.protocol.frames import DownlinkCommand
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    ReportReceived,
)
from node import frames
from node import session as ns
from node.storage import FlashFile, NodeStore
from tests.node_fixtures import (
    DEVICE,
    EUI,
    ROOT,
    Air,
    Relay,
    airtime,
    fast_config,
    gateway,
    queue_command,
    seeded_bytes,
)


def reports(air: Air) -> list[ReportReceived]:
    return [a for a in air.gateway_actions if isinstance(a, ReportReceived)]


def results(air: Air) -> list[CommandResultReceived]:
    return [a for a in air.gateway_actions if isinstance(a, CommandResultReceived)]


@pytest.mark.parametrize("encrypt", [False, True])
def test_join_report_command_result_expired_repeat_and_rejoin(
    tmp_path: Path, encrypt: bool
) -> None:
    core, scheduler = gateway(encrypt)
    relay = Relay()
    store = NodeStore.at(str(tmp_path / "node"))
    node = ns.Node(EUI, ROOT, seeded_bytes(1), fast_config())
    air = Air(node, core, scheduler, store=store, execute=relay)

    # Join.
    air.run(30.0, stop=lambda: node.joined)
    assert node.joined and air.events(ns.Joined)[0].address == node.address == 1
    (accepted,) = [a for a in air.gateway_actions if isinstance(a, JoinAccepted)]
    assert accepted.lease.encrypt is encrypt

    # A confirmed report, acked.
    air.report({"temperature_c": 21.5})
    air.run(air.now + 10, stop=lambda: bool(air.events(ns.Acked)))
    (first,) = reports(air)
    assert first.body == {"temperature_c": 21.5, "counter": 1}
    assert first.confirmed and first.encrypted is encrypt and not first.duplicate
    assert [(e.kind, e.number) for e in air.events(ns.Acked)] == [("report", 1)]
    assert (node.last_rssi, node.last_snr) == (-60.0, 7.5)

    # A command rides the ack of the next report; its result goes in the next uplink.
    command = queue_command(scheduler, "relay", {"on": True}, air.now + 60, "c1")
    air.report({"temperature_c": 21.7})
    air.run(air.now + 20, stop=lambda: bool(air.resolved))
    assert relay.on
    (executed,) = air.executed
    assert executed.command.action == "relay"
    assert executed.deadline > air.now - 60
    (resolved,) = air.resolved
    assert (resolved.command, resolved.status) == (command, CommandStatus.EXECUTED)
    ref = executed.command.ref
    assert [(r.command_ref, r.status) for r in results(air)] == [(ref, CommandStatus.EXECUTED)]

    # A command whose time ran out on arrival (ttl_ds 0) is answered expired, not executed.
    def expired_command(received: list) -> bytes:
        (report,) = received
        return core.build_downlink(
            DEVICE, report.counter, DownlinkCommand(ref=900, action="relay", params={"on": False})
        )

    air.downlink_override = expired_command
    air.report({"temperature_c": 21.9})
    air.run(air.now + 20, stop=lambda: len(results(air)) == 2)
    assert results(air)[-1].command_ref == 900
    assert results(air)[-1].status is CommandStatus.EXPIRED
    assert relay.on and len(air.executed) == 1
    assert node.stats["commands_expired"] == 1

    # The same reference again: answered from memory, never executed twice.
    def repeated_command(received: list) -> bytes:
        (report,) = received
        again = DownlinkCommand(ref=ref, action="relay", params={"on": False}, ttl_ds=300)
        return core.build_downlink(DEVICE, report.counter, again)

    air.downlink_override = repeated_command
    air.report({"temperature_c": 22.1})
    air.run(air.now + 20, stop=lambda: len(results(air)) == 3)
    assert results(air)[-1].command_ref == ref
    assert results(air)[-1].status is CommandStatus.EXECUTED
    assert relay.on and len(air.executed) == 1
    assert node.stats["commands_repeated"] == 1

    # The gateway forgets the lease: uplinks go unacked, the node joins again and the
    # waiting report goes out in the new session with its CBOR counter unchanged.
    assert core.release(DEVICE)
    air.report({"temperature_c": 22.3})
    air.run(air.now + 120, stop=lambda: len(air.events(ns.Joined)) == 2)
    assert air.events(ns.SessionLost)
    assert air.rejected.count("unknown_address") == 3
    air.run(air.now + 20, stop=lambda: reports(air)[-1].body["temperature_c"] == 22.3)
    last = reports(air)[-1]
    assert last.body["counter"] == 5 and last.counter == 0  # a new session's first frame
    assert air.rejected.count("unknown_address") == 3
    assert not [r for r in air.rejected if r != "unknown_address"]


def test_an_unacked_report_is_sent_again_byte_for_byte() -> None:
    core, scheduler = gateway()
    node = ns.Node(EUI, ROOT, seeded_bytes(2), fast_config())
    air = Air(node, core, scheduler)
    air.run(30.0, stop=lambda: node.joined)
    air.lose_downlinks = 2
    air.report({"n": 1})
    air.run(air.now + 60, stop=lambda: bool(air.events(ns.Acked)))
    sent = air.uplinks[-3:]
    assert sent[0] == sent[1] == sent[2]
    assert [r.duplicate for r in reports(air)] == [False, True, True]
    assert node.stats["retransmissions"] == 2


def test_retransmissions_back_off_with_jitter() -> None:
    core, scheduler = gateway()
    config = fast_config(rejoin_after_unacked=100, max_attempts=8)
    node = ns.Node(EUI, ROOT, seeded_bytes(3), config)
    air = Air(node, core, scheduler)
    air.run(30.0, stop=lambda: node.joined)
    air.lose_downlinks = 1000
    starts: list[float] = []
    original = air._transmit

    def timed(frame: bytes) -> list:
        starts.append(air.now)
        return original(frame)

    air._transmit = timed  # type: ignore[method-assign]
    air.report({"n": 1})
    air.run(air.now + 600, stop=lambda: bool(air.events(ns.Dropped)))
    assert len(starts) == 8
    (dropped,) = air.events(ns.Dropped)
    assert (dropped.kind, dropped.reason) == ("report", "max_attempts")
    window_end = 1.0 + config.rx_window_s  # rx delay from the accept, then the window
    for attempt, (before, after) in enumerate(itertools.pairwise(starts), start=1):
        ceiling = min(config.retry_max_s, config.retry_min_s * 2 ** (attempt - 1))
        wait = after - before - window_end - airtime(len(air.uplinks[-1]))
        assert ceiling * (1 - config.jitter) - 1e-6 <= wait <= ceiling + 1e-6, attempt


def test_unconfirmed_reports_are_sent_once() -> None:
    core, scheduler = gateway()
    node = ns.Node(EUI, ROOT, seeded_bytes(4), fast_config())
    air = Air(node, core, scheduler)
    air.run(30.0, stop=lambda: node.joined)
    air.lose_uplinks = 1
    air.report({"n": 1}, confirmed=False)
    air.report({"n": 2}, confirmed=False)
    air.run(air.now + 30)
    assert [(r.body["n"], r.confirmed) for r in reports(air)] == [(2, False)]
    assert node.stats["retransmissions"] == 0 and not node.queue


def join_attempt_times(node: ns.Node, until: float) -> list[float]:
    """Start times of a node's join requests when nothing ever answers."""
    times = []
    now = 0.0
    actions = node.tick(now)
    while now < until:
        if any(isinstance(action, ns.Transmit) for action in actions):
            times.append(now)
            now += airtime(frames.JOIN_REQUEST_LEN)
            (listen,) = node.tx_done(now, airtime(frames.JOIN_REQUEST_LEN))
            now = listen.at + listen.duration
            actions = node.rx_timeout(now)
        (wake,) = actions
        now = wake.at
        actions = node.tick(now)
    return times


def test_join_backoff_doubles_to_its_cap_with_jitter() -> None:
    config = ns.NodeConfig(join_backoff_min_s=2.0, join_backoff_max_s=40.0, duty_cycle=1.0)
    times = join_attempt_times(ns.Node(EUI, ROOT, seeded_bytes(5), config), 600.0)
    assert 0.0 <= times[0] <= config.join_start_spread_s
    per_attempt = airtime(frames.JOIN_REQUEST_LEN) + config.join_rx_delay_s + config.rx_window_s
    waits = []
    for attempt, (before, after) in enumerate(itertools.pairwise(times), start=1):
        ceiling = min(40.0, 2.0 * 2 ** (attempt - 1))
        waits.append(after - before - per_attempt)
        assert ceiling * (1 - config.join_jitter) - 1e-6 <= waits[-1] <= ceiling + 1e-6
    assert max(waits) > 20.0  # the cap was reached
    assert len({round(wait, 6) for wait in waits}) == len(waits)  # jittered


def test_a_join_nobody_answers_is_tried_again_on_air() -> None:
    core, scheduler = gateway(registered=False)
    node = ns.Node(EUI, ROOT, seeded_bytes(5), fast_config())
    air = Air(node, core, scheduler)
    air.run(100.0)
    assert set(air.rejected) == {"unknown_eui"}
    assert node.stats["join_attempts"] == len(air.uplinks) >= 4
    assert len(set(air.uplinks)) == len(air.uplinks)  # a fresh nonce every time


def test_nodes_powered_on_together_spread_their_joins() -> None:
    firsts = []
    for seed in range(20):
        config = ns.NodeConfig(duty_cycle=1.0)
        firsts.append(join_attempt_times(ns.Node(EUI, ROOT, seeded_bytes(seed), config), 1.0))
    starts = [times[0] for times in firsts if times]
    assert len(starts) == len(set(starts))
    assert all(0.0 <= start <= 2.0 for start in starts)


def test_a_refused_join_waits_as_long_as_the_gateway_asks() -> None:
    core, scheduler = gateway(enabled=False)
    node = ns.Node(EUI, ROOT, seeded_bytes(6), fast_config())
    air = Air(node, core, scheduler)
    air.run(599.0)
    (refused,) = air.events(ns.JoinRefused)
    assert (refused.reason, refused.retry_after_s) == (frames.REFUSED_DEVICE_DISABLED, 600)
    assert node.stats["join_attempts"] == 1
    air.run(700.0)
    assert node.stats["join_attempts"] == 2


def test_the_duty_cycle_spaces_transmissions() -> None:
    core, scheduler = gateway()
    node = ns.Node(EUI, ROOT, seeded_bytes(7), ns.NodeConfig(duty_cycle=0.01))
    air = Air(node, core, scheduler)
    air.run(60.0, stop=lambda: node.joined)
    joined_at = air.now
    for n in range(3):
        air.report({"n": n})
    air.run(air.now + 600, stop=lambda: len(air.events(ns.Acked)) == 3)
    # Three report frames of about 70 ms each: at 1 % each is followed by ~7 s off air.
    assert air.now - joined_at > 2 * 99 * airtime(len(air.uplinks[-1])) - 1


def test_counters_survive_a_power_cycle_with_few_writes(tmp_path: Path) -> None:
    core, scheduler = gateway()
    store = NodeStore.at(str(tmp_path / "state"))
    # Counters alone (tests/test_node_persistence.py: the queue kept too, two writes a report).
    config = fast_config(counter_block=64, persist_queue=False)
    node = ns.Node(EUI, ROOT, seeded_bytes(8), config, record=store.load())
    air = Air(node, core, scheduler, store=store)
    air.run(30.0, stop=lambda: node.joined)
    writes_at_join = store.writes
    assert writes_at_join == 2  # the join nonce, then the session
    for n in range(150):
        air.report({"n": n})
        air.run(air.now + 30, stop=lambda n=n: len(air.events(ns.Acked)) == n + 1)
    assert len(reports(air)) == 150
    frame_writes = store.writes - writes_at_join
    assert frame_writes <= 150 // 32 + 1  # one write per half block, not one per frame
    last_counter = reports(air)[-1].counter

    # Power cut: a new node object from the stored record, same gateway.
    reborn = ns.Node(
        EUI, ROOT, seeded_bytes(9), config, record=NodeStore.at(str(tmp_path / "state")).load()
    )
    assert reborn.joined and reborn.address == node.address
    air2 = Air(reborn, core, scheduler, store=store, now=air.now + 5)
    for n in range(3):
        air2.report({"n": 1000 + n})
        air2.run(air2.now + 30, stop=lambda n=n: len(air2.events(ns.Acked)) == n + 1)
    after = reports(air2)
    assert not air2.rejected
    assert [r.duplicate for r in after] == [False] * 3
    assert after[0].counter > last_counter and after[0].counter <= last_counter + 64 + 1
    assert after[0].body["counter"] > 150
    assert air2.events(ns.Joined) == []  # the session went on, no join


def test_a_torn_write_leaves_the_previous_record(tmp_path: Path) -> None:
    store = NodeStore.at(str(tmp_path / "s"))
    store.save({"n": 1})
    store.save({"n": 2})
    current = FlashFile(str(tmp_path / "s.0"))  # a snapshot, then one change appended
    data = current.read()
    assert data is not None
    current.write(data[:-3])
    assert NodeStore.at(str(tmp_path / "s")).load() == {"n": 1}
    again = NodeStore.at(str(tmp_path / "s"))
    assert again.load() == {"n": 1}
    again.save({"n": 3})  # a snapshot into the other file, not behind the torn bytes
    assert NodeStore.at(str(tmp_path / "s")).load() == {"n": 3}
    assert NodeStore.at(str(tmp_path / "missing")).load() is None


def test_a_record_of_another_node_is_refused(tmp_path: Path) -> None:
    node = ns.Node(EUI, ROOT, seeded_bytes(10))
    actions = node.tick(0.0) + node.tick(5.0)
    (persist,) = [a for a in actions if isinstance(a, ns.Persist)]
    with pytest.raises(ValueError):
        ns.Node(bytes(8), ROOT, seeded_bytes(10), record=persist.record)


def test_a_full_queue_drops_the_oldest_report_not_on_air() -> None:
    node = ns.Node(EUI, ROOT, seeded_bytes(11), ns.NodeConfig(queue_size=3))
    events = []
    for n in range(5):
        events += node.report({"n": n}, 0.0)
    dropped = [e for e in events if isinstance(e, ns.Dropped)]
    assert [(d.number, d.reason) for d in dropped] == [(1, "full"), (2, "full")]
    assert [u.body["n"] for u in node.queue] == [2, 3, 4]


def test_bodies_that_cannot_go_on_air_are_refused_at_once() -> None:
    node = ns.Node(EUI, ROOT, seeded_bytes(12))
    with pytest.raises(ValueError):
        node.report({"blob": "x" * 300}, 0.0)
    with pytest.raises(ValueError):
        node.report({"raw": b"bytes"}, 0.0)
    assert node.queue == [] and node.report_next == 1
