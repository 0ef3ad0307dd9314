from __future__ import annotations

import asyncio
import logging
import math
import sqlite3
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from gateway.model import DeviceEvent, EventKind, Report
from gateway.store.db import DATABASE_NAME
from gateway.store.outbox import (
    CommitFailed,
    Outbox,
    OutboxClosed,
    OutboxEntry,
    UnstorableItem,
    droppable_kinds_for_mqtt,
)

DEV_A = "lora-00000000000000aa"
DEV_B = "lora-00000000000000bb"
REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 30.0


def report(n: int, device: str = DEV_A) -> Report:
    return Report(
        id=f"{device}-{n}",
        device=device,
        kind="telemetry",
        ts=1_780_000_000.0 + n,
        seq=n,
        data={"temperature": 21.5, "n": n},
        rssi=-80.5,
        snr=7.25,
    )


def event(n: int, device: str = DEV_A) -> DeviceEvent:
    return DeviceEvent(
        device=device, event=EventKind.ONLINE, ts=1_780_000_000.0 + n, detail={"n": n}
    )


async def all_pending(outbox: Outbox, upstream: str) -> list[OutboxEntry]:
    return [entry async for entry in outbox.iter_pending(upstream, page_size=7)]


async def test_add_durable_round_trip(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    try:
        first = await outbox.add_durable(report(1))
        second = await outbox.add_durable(event(2))
        assert second > first > 0
        entries = await outbox.pending("mqtt")
        assert entries == [OutboxEntry(first, report(1)), OutboxEntry(second, event(2))]
        assert outbox.size == 2
    finally:
        await outbox.close()


async def test_entries_survive_reopen_and_replay(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    ids = [await outbox.add_durable(report(n)) for n in range(5)]
    outbox.mark_delivered("mqtt", ids[:2])
    await outbox.close()

    reopened = await Outbox.open(tmp_path, ["mqtt"])
    try:
        assert reopened.size == 3
        assert [e.item for e in await all_pending(reopened, "mqtt")] == [
            report(n) for n in (2, 3, 4)
        ]
        newer = await reopened.add_durable(report(5))
        assert newer > ids[-1]
    finally:
        await reopened.close()


async def test_plain_add_is_committed_by_the_group_commit(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=0.01)
    try:
        outbox.add(report(1))
        await asyncio.wait_for(outbox.wait_for_entries_after(0), timeout=5)
        assert [e.item for e in await outbox.pending("mqtt")] == [report(1)]
    finally:
        await outbox.close()
    # Committed to the file, not only visible to this connection.
    with sqlite3.connect(tmp_path / DATABASE_NAME) as conn:
        assert conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0] == 1


async def test_many_reports_share_one_commit(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=0.05, commit_rows=1000)
    try:
        ids = await asyncio.gather(*(outbox.add_durable(report(n)) for n in range(300)))
        assert sorted(ids) == list(ids)
        assert len(set(ids)) == 300
        assert outbox.commits <= 2
        for n in range(300, 900):
            outbox.add(report(n))
        await outbox.flush()
        assert outbox.commits <= 4
        assert outbox.size == 900
    finally:
        await outbox.close()


async def test_batch_size_triggers_a_commit_before_the_interval(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=5.0, commit_rows=10)
    try:
        waiters = [asyncio.ensure_future(outbox.add_durable(report(n))) for n in range(10)]
        done = await asyncio.wait_for(asyncio.gather(*waiters), timeout=4.0)
        assert len(done) == 10
    finally:
        await outbox.close()


async def test_each_upstream_acknowledges_separately(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt", "xmpp"])
    try:
        ids = [await outbox.add_durable(report(n)) for n in range(3)]
        outbox.mark_delivered("mqtt", ids)
        await outbox.flush()
        assert await outbox.pending("mqtt") == []
        assert [e.entry_id for e in await outbox.pending("xmpp")] == ids
        assert outbox.size == 3
        outbox.mark_delivered("xmpp", ids[:2])
        await outbox.flush()
        assert outbox.size == 1
        assert [e.entry_id for e in await outbox.pending("xmpp")] == ids[2:]
        assert await outbox.pending_count("xmpp") == 1
        assert await outbox.pending_count("mqtt") == 0
    finally:
        await outbox.close()


async def test_queued_marks_hide_entries_before_the_commit(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=5.0)
    try:
        for n in range(3):
            outbox.add(report(n))
        await outbox.flush()  # commits at once, without waiting for the interval
        ids = [e.entry_id for e in await outbox.pending("mqtt")]
        outbox.mark_delivered("mqtt", ids[:1])
        assert [e.entry_id for e in await outbox.pending("mqtt")] == ids[1:]
    finally:
        await outbox.close()


async def test_a_page_of_delivered_entries_does_not_hide_the_rest(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=5.0)
    try:
        for n in range(12):
            outbox.add(report(n))
        await outbox.flush()
        ids = [e.entry_id for e in await outbox.pending("mqtt", limit=100)]
        outbox.mark_delivered("mqtt", ids[:10])  # not committed yet
        assert [e.entry_id for e in await outbox.pending("mqtt", limit=4)] == ids[10:]
    finally:
        await outbox.close()


async def test_unknown_upstream_is_an_error(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    try:
        with pytest.raises(ValueError, match="not enabled"):
            outbox.mark_delivered("xmpp", [1])
        with pytest.raises(ValueError):
            await outbox.pending("web")
    finally:
        await outbox.close()


async def test_order_is_kept_per_device(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    try:
        for n in range(40):
            outbox.add(report(n, DEV_A if n % 3 else DEV_B))
        await outbox.flush()
        entries = await all_pending(outbox, "mqtt")
        for device in (DEV_A, DEV_B):
            seqs = [e.item.seq for e in entries if e.item.device == device]
            assert seqs == sorted(seqs)
        assert [e.entry_id for e in entries] == sorted(e.entry_id for e in entries)
    finally:
        await outbox.close()


async def test_disabled_upstream_releases_its_entries(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt", "xmpp"])
    ids = [await outbox.add_durable(report(n)) for n in range(4)]
    outbox.mark_delivered("mqtt", ids[:3])
    await outbox.close()
    with caplog.at_level(logging.WARNING):
        reopened = await Outbox.open(tmp_path, ["mqtt"])
    try:
        assert "3 entries only it still needed removed" in caplog.text
        assert [e.entry_id for e in await reopened.pending("mqtt")] == ids[3:]
        assert reopened.size == 1
    finally:
        await reopened.close()


async def test_full_drops_qos0_class_first_then_oldest_reports(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    outbox = await Outbox.open(
        tmp_path, ["mqtt"], max_entries=100, droppable_kinds=droppable_kinds_for_mqtt(1, 0)
    )
    try:
        for n in range(60):
            outbox.add(event(n))
        for n in range(80):
            outbox.add(report(n))
        with caplog.at_level(logging.WARNING):
            await outbox.flush()
        assert outbox.size == 100
        assert outbox.dropped["qos0"] == 40
        assert outbox.dropped["report"] == 0
        assert "dropped 40 oldest qos0 entries" in caplog.text
        kept = await all_pending(outbox, "mqtt")
        assert [e.item for e in kept[:20]] == [event(n) for n in range(40, 60)]

        for n in range(80, 130):
            outbox.add(report(n))
        await outbox.flush()
        assert outbox.size == 100
        assert outbox.dropped["qos0"] == 60
        assert outbox.dropped["report"] == 30
        kept = await all_pending(outbox, "mqtt")
        assert [e.item for e in kept] == [report(n) for n in range(30, 130)]
    finally:
        await outbox.close()


async def test_full_of_events_drops_oldest_events_last(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], max_entries=100)
    try:
        for n in range(105):
            outbox.add(event(n))
        await outbox.flush()
        assert outbox.dropped == {"qos0": 0, "report": 0, "event": 5, "corrupt": 0}
        assert (await all_pending(outbox, "mqtt"))[0].item == event(5)
    finally:
        await outbox.close()


async def test_unstorable_item_is_refused_and_nothing_else_lost(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    try:
        outbox.add(report(1))
        bad = Report("x", DEV_A, "telemetry", 1.0, 1, {"t": math.nan})
        with pytest.raises(UnstorableItem, match="not plain JSON"):
            await outbox.add_durable(bad)
        with pytest.raises(UnstorableItem):
            outbox.add(Report("y", DEV_A, "telemetry", 1.0, 2, {"raw": b"\x00"}))
        outbox.add(report(2))
        await outbox.flush()
        assert [e.item for e in await outbox.pending("mqtt")] == [report(1), report(2)]
    finally:
        await outbox.close()


async def test_corrupt_row_is_counted_and_removed(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    ids = [await outbox.add_durable(report(n)) for n in range(3)]
    await outbox.close()
    with sqlite3.connect(tmp_path / DATABASE_NAME) as conn:
        conn.execute("UPDATE outbox SET body = '{broken' WHERE id = ?", (ids[1],))
    reopened = await Outbox.open(tmp_path, ["mqtt"])
    try:
        assert [e.entry_id for e in await reopened.pending("mqtt")] == [ids[0], ids[2]]
        assert reopened.dropped["corrupt"] == 1
        await reopened.flush()
        assert reopened.size == 2
    finally:
        await reopened.close()


async def test_failed_commit_refuses_durable_rows_and_keeps_the_rest(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    await outbox.add_durable(report(0))
    # Another writer holds the database longer than the busy timeout: the commit fails.
    blocker = sqlite3.connect(tmp_path / DATABASE_NAME, timeout=0, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        outbox.add(report(1))
        with pytest.raises(CommitFailed):
            await outbox.add_durable(report(2))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        await asyncio.wait_for(outbox.flush(), TIMEOUT_S)
        assert [e.item for e in await outbox.pending("mqtt")] == [report(0), report(1)]
    finally:
        await outbox.close()


async def test_wait_for_entries_after(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    try:
        first = await outbox.add_durable(report(1))
        waiter = asyncio.ensure_future(outbox.wait_for_entries_after(first))
        await asyncio.sleep(0.05)
        assert not waiter.done()
        await outbox.add_durable(report(2))
        await asyncio.wait_for(waiter, timeout=5)
    finally:
        await outbox.close()


async def test_closed_outbox_refuses_work(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"])
    outbox.add(report(1))
    await outbox.close()
    with pytest.raises(OutboxClosed):
        outbox.add(report(2))
    reopened = await Outbox.open(tmp_path, ["mqtt"])
    try:
        assert reopened.size == 1  # close() committed what was queued
    finally:
        await reopened.close()


def test_droppable_kinds_for_mqtt() -> None:
    assert droppable_kinds_for_mqtt(1, 1) == frozenset()
    assert droppable_kinds_for_mqtt(0, 2) == {"report"}
    assert droppable_kinds_for_mqtt(0, 0) == {"report", "event"}


def test_hundred_thousand_reports_stay_on_disk_not_in_memory(tmp_path: Path) -> None:
    # The budget for the whole gateway is 40 MB RSS; the interpreter with the gateway's
    # imports (ssl, pydantic, paho) takes its own share, measured here as the baseline. The
    # outbox's share for 100,000 buffered reports must stay small on top of it.
    script = textwrap.dedent(
        """
        import asyncio, sys
        from pathlib import Path

        import paho.mqtt.client  # imported by the gateway process as well
        import gateway.config
        from gateway.model import Report
        from gateway.store.outbox import Outbox

        def rss_kib():
            with open("/proc/self/status") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1])

        async def main(data_dir):
            baseline = rss_kib()
            peak = baseline
            outbox = await Outbox.open(Path(data_dir), ["mqtt", "xmpp"], max_entries=200_000)
            for n in range(100_000):
                outbox.add(Report(
                    id=f"lora-0011223344556677-{n}", device="lora-0011223344556677",
                    kind="telemetry", ts=1.78e9 + n, seq=n,
                    data={"temperature": 21.5, "humidity": 40, "battery_v": 3.01},
                    rssi=-97.0, snr=5.5,
                ))
                if n % 2000 == 1999:
                    await outbox.flush()
                    peak = max(peak, rss_kib())
            await outbox.flush()
            seen = 0
            last = 0
            async for entry in outbox.iter_pending("mqtt", page_size=500):
                assert entry.entry_id > last
                last = entry.entry_id
                seen += 1
                if seen % 5000 == 0:
                    peak = max(peak, rss_kib())
            print(seen, outbox.size, baseline, peak)
            await outbox.close()

        asyncio.run(main(sys.argv[1]))
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=100,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen, size, baseline_kib, peak_kib = (int(v) for v in done.stdout.split())
    assert (seen, size) == (100_000, 100_000)
    growth_kib = peak_kib - baseline_kib
    assert growth_kib < 8 * 1024, f"outbox grew RSS by {growth_kib} KiB over {baseline_kib} KiB"


def rows_on_disk(path: Path) -> int:
    with sqlite3.connect(path / DATABASE_NAME) as conn:
        return int(conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


async def test_a_row_every_upstream_took_before_it_was_due_is_never_written(
    tmp_path: Path,
) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt", "xmpp"], commit_interval_s=30.0)
    try:
        waiting = asyncio.ensure_future(outbox.add_durable(report(1), within_s=30.0))
        await asyncio.sleep(0)  # taken
        outbox.add(report(2))
        ids = [e.entry_id for e in await outbox.pending("mqtt")]
        assert [e.entry_id for e in await outbox.pending("xmpp")] == ids
        outbox.mark_delivered("mqtt", ids)
        await asyncio.sleep(0)
        assert not waiting.done()  # one upstream is not enough
        outbox.mark_delivered("xmpp", ids)
        assert await asyncio.wait_for(waiting, TIMEOUT_S) == ids[0]
        assert outbox.never_written == 2 and outbox.size == 0
        await outbox.flush()
        assert outbox.commits == 0
    finally:
        await outbox.close()
    assert rows_on_disk(tmp_path) == 0


async def test_a_row_nobody_took_is_written_by_its_due_time_with_everything_before_it(
    tmp_path: Path,
) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=30.0)
    try:
        for n in range(20):
            outbox.add(report(n))  # due in 30 s
        safe = asyncio.ensure_future(outbox.add_durable(report(20), within_s=0.3))
        await asyncio.sleep(0.05)
        assert not safe.done() and rows_on_disk(tmp_path) == 0
        await asyncio.wait_for(safe, TIMEOUT_S)
        assert rows_on_disk(tmp_path) == 21  # one commit served every row taken before
        assert outbox.commits == 1
    finally:
        await outbox.close()


async def test_delivery_marks_of_written_rows_ride_a_later_commit(tmp_path: Path) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=30.0)
    try:
        ids = [await outbox.add_durable(report(n)) for n in range(3)]
        assert rows_on_disk(tmp_path) == 3
        outbox.mark_delivered("mqtt", ids[:2])
        assert [e.entry_id for e in await outbox.pending("mqtt")] == ids[2:]
        assert rows_on_disk(tmp_path) == 3  # not worth a sync of its own
        await outbox.flush()
        assert rows_on_disk(tmp_path) == 1
    finally:
        await outbox.close()


async def test_a_backlog_beyond_the_memory_cache_is_read_from_disk_in_order(
    tmp_path: Path,
) -> None:
    outbox = await Outbox.open(tmp_path, ["mqtt"], commit_interval_s=30.0)
    try:
        for n in range(3000):
            outbox.add(report(n))
        await outbox.flush()
        outbox.add(report(3000))  # in memory only
        entries = await all_pending(outbox, "mqtt")
        assert [e.item for e in entries] == [report(n) for n in range(3001)]
        outbox.mark_delivered("mqtt", [e.entry_id for e in entries[:2999]])
        assert [e.item for e in await all_pending(outbox, "mqtt")] == [report(2999), report(3000)]
    finally:
        await outbox.close()
