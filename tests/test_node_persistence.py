"""The node's pending uplinks and command results across power cycles (docs/protocol.md, Node
rules: Storage): node/session.py's record in node/storage.py's journal on real files, against
the real gateway core (NetworkCore + DownlinkScheduler in-process, tests/node_fixtures.py).
A power cut is a new Node from what the files hold; the gateway core goes on."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from gateway.model import CommandStatus
from gateway.protocol.frames import DownlinkCommand
from gateway.protocol.session import CommandResultReceived, ReportReceived
from node import cbor, frames
from node import session as ns
from node.cmac import Cmac
from node.storage import FlashFile, NodeStore
from tests.node_fixtures import (
    DEVICE,
    EUI,
    ROOT,
    Air,
    Relay,
    fast_config,
    gateway,
    queue_command,
    seeded_bytes,
)


class PowerCut(Exception):
    pass


def reports(airs: list[Air]) -> list[ReportReceived]:
    return [a for air in airs for a in air.gateway_actions if isinstance(a, ReportReceived)]


def results(airs: list[Air]) -> list[CommandResultReceived]:
    return [a for air in airs for a in air.gateway_actions if isinstance(a, CommandResultReceived)]


def power_cycle(
    tmp_path: Path, air: Air, seed: int, config: ns.NodeConfig, execute=None, after_s=5.0
) -> tuple[ns.Node, Air, NodeStore]:
    """The power goes: a new node from the files, on the same gateway core, ``after_s`` later."""
    store = NodeStore.at(str(tmp_path / "state"))
    node = ns.Node(EUI, ROOT, seeded_bytes(seed), config, record=store.load())
    again = Air(node, air.core, air.scheduler, store=store, execute=execute, now=air.now + after_s)
    return node, again, store


def joined(tmp_path: Path, config: ns.NodeConfig, execute=None) -> tuple[ns.Node, Air, NodeStore]:
    core, scheduler = gateway()
    tmp_path.mkdir(exist_ok=True)
    store = NodeStore.at(str(tmp_path / "state"))
    node = ns.Node(EUI, ROOT, seeded_bytes(1), config, record=store.load())
    air = Air(node, core, scheduler, store=store, execute=execute)
    air.run(30.0, stop=lambda: node.joined)
    assert node.joined
    return node, air, store


def test_pending_reports_survive_a_power_cycle_and_arrive_once_each(tmp_path: Path) -> None:
    config = fast_config(rejoin_after_unacked=100)
    node, air, _store = joined(tmp_path, config)
    air.report({"n": 0})
    air.run(air.now + 10, stop=lambda: bool(air.events(ns.Acked)))
    # The gateway hears the head but its acks are lost; then it hears nothing at all.
    air.lose_downlinks = 3
    for n in range(1, 4):
        air.report({"n": n})
    air.run(air.now + 15, stop=lambda: node.stats["transmissions"] >= 5)
    air.lose_uplinks = 1000
    for n in range(4, 7):
        air.report({"n": n})
    air.run(air.now + 20)
    head = node.queue[0]
    assert head.frame is not None and len(node.queue) == 6
    last_on_air = air.uplinks[-1]
    assert last_on_air == head.frame

    reborn, again, _ = power_cycle(tmp_path, air, 2, config)
    assert [u.body["n"] for u in reborn.queue] == [1, 2, 3, 4, 5, 6]
    assert reborn.queue[0].frame == head.frame and reborn.queue[0].counter == head.counter
    again.run(again.now + 120, stop=lambda: len(again.events(ns.Acked)) == 6)
    assert [e.number for e in again.events(ns.Acked)] == [2, 3, 4, 5, 6, 7]
    assert again.uplinks[0] == last_on_air  # the same bytes: the gateway's duplicate
    received = reports([air, again])
    assert received[-6].duplicate and received[-6].report_id == received[1].report_id
    forwarded = [r for r in received if not r.duplicate]
    by_id = Counter(r.report_id for r in forwarded)
    assert set(by_id.values()) == {1}  # each report id forwarded once
    assert sorted(r.body["n"] for r in forwarded) == list(range(7))  # each report under one id
    assert not air.rejected and not again.rejected


def test_a_command_run_before_a_power_cycle_is_answered_from_flash_after_it(
    tmp_path: Path,
) -> None:
    config = fast_config(rejoin_after_unacked=100)
    relay = Relay()
    _node, air, _store = joined(tmp_path, config, execute=relay)
    command = queue_command(air.scheduler, "relay", {"on": True}, air.now + 120, "open-door")
    air.lose_downlinks = 0
    air.report({"n": 0})
    air.run(air.now + 10, stop=lambda: bool(air.executed))
    assert relay.on and len(air.executed) == 1
    ref = air.executed[0].command.ref
    # The result goes out, its ack is lost: the power goes before the gateway hears it again.
    air.lose_downlinks = 1000
    air.run(air.now + 10, stop=lambda: bool(results([air])))
    assert not air.resolved or air.resolved[0].command is command

    after = Relay()
    reborn, again, _ = power_cycle(tmp_path, air, 3, config, execute=after)
    assert [(u.kind, u.number) for u in reborn.queue] == [("result", ref)]

    def same_command(received: list) -> bytes:
        (uplink,) = received
        repeat = DownlinkCommand(ref=ref, action="relay", params={"on": True}, ttl_ds=300)
        return air.core.build_downlink(DEVICE, uplink.counter, repeat)

    again.downlink_override = same_command  # the gateway sends the same reference again
    again.run(again.now + 60, stop=lambda: not reborn.queue)
    assert again.executed == [] and not after.on  # not run a second time
    assert reborn.stats["commands_repeated"] == 1
    answered = results([air, again])
    assert {(r.command_ref, r.status) for r in answered} == {(ref, CommandStatus.EXECUTED)}
    assert not again.rejected


def test_a_command_cut_off_by_the_power_is_answered_failed_and_never_run_again(
    tmp_path: Path,
) -> None:
    config = fast_config(rejoin_after_unacked=100)
    node, air, store = joined(tmp_path, config, execute=Relay())
    queue_command(air.scheduler, "relay", {"on": True}, air.now + 120, "close-valve")
    started: list[int] = []

    def power_goes(command: frames.Command) -> tuple[int, str | None]:
        started.append(command.ref)
        raise PowerCut  # while the command runs: command_done never comes

    air.execute = power_goes
    with pytest.raises(PowerCut):
        air.report({"n": 0})
        air.run(air.now + 10)
    (ref,) = started

    after = Relay()
    reborn, again, _ = power_cycle(tmp_path, air, 4, config, execute=after)
    again.run(again.now + 60, stop=lambda: not reborn.queue)
    (answer,) = results([again])
    assert (answer.command_ref, answer.status) == (ref, CommandStatus.FAILED)
    assert answer.detail == "interrupted by a restart"
    assert again.executed == [] and not after.on
    assert node.stats["commands_executed"] == 0 and store.writes > 0


def test_writes_per_report(tmp_path: Path) -> None:
    """docs/NODE.md's figures: a report that goes on air at once costs two writes (queued with
    its frame, acked); one queued behind another three (queued, framed, acked); without the
    queue kept, one in 32 reports or fewer. The counter reservations ride along."""
    spaced = fast_config()
    node, air, store = joined(tmp_path / "spaced", spaced)
    before = store.writes
    for n in range(100):
        air.now += 60.0  # a report a minute: the queue is empty when the next one comes
        air.report({"n": n})
        air.run(air.now + 30, stop=lambda n=n: len(air.events(ns.Acked)) == n + 1)
    assert store.writes - before == 2 * 100
    assert node.report_next > 64 and node.up_next > 64  # reservations were renewed meanwhile
    assert 1 <= store.snapshots <= 100 // 8  # the journal is appended to, compacted seldom

    node, air, store = joined(tmp_path / "backlog", spaced)
    before = store.writes
    air.now += 5.0  # past the gap after the join: the first report goes out at once
    for n in range(10):
        air.report({"n": n})  # all at once: nine wait behind the first
    air.run(air.now + 120, stop=lambda: len(air.events(ns.Acked)) == 10)
    assert store.writes - before == 2 + 3 * 9

    node, air, store = joined(tmp_path / "off", fast_config(persist_queue=False))
    before = store.writes
    for n in range(100):
        air.now += 60.0
        air.report({"n": n})
        air.run(air.now + 30, stop=lambda n=n: len(air.events(ns.Acked)) == n + 1)
    assert store.writes - before <= 100 // 32 + 1


def test_a_torn_last_entry_loses_nothing_older(tmp_path: Path) -> None:
    config = fast_config(rejoin_after_unacked=100)
    node, air, store = joined(tmp_path, config)
    air.lose_uplinks = 1000  # nothing is acked: every report stays pending
    for n in range(5):
        air.report({"n": n})
        air.run(air.now + 3)
    path = tmp_path / "state.0" if (tmp_path / "state.0").exists() else tmp_path / "state.1"
    files = [FlashFile(str(tmp_path / name)) for name in ("state.0", "state.1")]
    current = max(files, key=lambda file: len(file.read() or b""))
    whole = current.read()
    assert whole is not None and path.exists()
    before_last = NodeStore.at(str(tmp_path / "state"))
    air.report({"n": 5})  # appended: the entry a power cut tears
    grown = current.read()
    assert grown is not None and len(grown) > len(whole)
    for cut in (1, 3, len(grown) - len(whole) - 1):
        current.write(grown[: len(grown) - cut])
        record = NodeStore.at(str(tmp_path / "state")).load()
        reborn = ns.Node(EUI, ROOT, seeded_bytes(5), config, record=record)
        assert [u.body["n"] for u in reborn.queue] == [0, 1, 2, 3, 4]
        assert reborn.queue[0].frame == node.queue[0].frame
    assert before_last.load() is not None
    # A flipped bit in the last entry: the checksum leaves it out, the rest stands.
    flipped = bytearray(grown)
    flipped[-6] ^= 0x01
    current.write(bytes(flipped))
    record = NodeStore.at(str(tmp_path / "state")).load()
    assert record is not None and len(record["queue"]) == 5

    # The node goes on after the torn write: the next write is a snapshot into the other file.
    current.write(grown[:-2])
    reborn, again, store = power_cycle(tmp_path, air, 6, config)
    snapshots = store.snapshots
    again.report({"n": 6})
    assert store.snapshots == snapshots + 1
    again.run(again.now + 120, stop=lambda: len(again.events(ns.Acked)) == 6)
    got = sorted(r.body["n"] for r in reports([air, again]) if not r.duplicate)
    assert got == [0, 1, 2, 3, 4, 6]  # 5 was in the torn write, nothing older is lost


def test_a_torn_compaction_leaves_the_other_file_whole(tmp_path: Path) -> None:
    store = NodeStore.at(str(tmp_path / "s"), compact_bytes=256)
    saved = []
    for n in range(40):
        record = {"n": n, "queue": [["report", k, {"x": "y" * 20}] for k in range(n % 5)]}
        store.save(record)
        saved.append(record)
        if store.snapshots >= 3:
            break
    assert store.snapshots == 3
    newest = FlashFile(str(tmp_path / ("s.0" if store.snapshots % 2 == 1 else "s.1")))
    data = newest.read()
    assert data is not None
    newest.write(data[: len(data) // 2])  # cut while the snapshot was written
    assert NodeStore.at(str(tmp_path / "s"), compact_bytes=256).load() == saved[-2]


def test_a_record_of_the_earlier_two_slot_store_loads(tmp_path: Path) -> None:
    record = {"version": 1, "n": 7}
    body = cbor.encode_record([12, record])
    FlashFile(str(tmp_path / "s.1")).write(body + Cmac(b"duogate node rec").tag(body))
    store = NodeStore.at(str(tmp_path / "s"))
    assert store.load() == record
    store.save({"version": 1, "n": 8})
    assert NodeStore.at(str(tmp_path / "s")).load() == {"version": 1, "n": 8}


def test_a_persist_that_changes_nothing_writes_nothing(tmp_path: Path) -> None:
    store = NodeStore.at(str(tmp_path / "s"))
    store.save({"a": [1, 2], "q": [["x", 1]]})
    store.save({"a": [1, 2], "q": [["x", 1]]})
    assert store.writes == 1
