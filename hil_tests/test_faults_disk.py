"""Fault scenario: the gateway's data directory runs out of space, and space comes back.

The data directory is a 2 MB tmpfs (``mount -t tmpfs -o size=2m``; the test needs root and
is skipped with the reason when mounting is not permitted). A filler file takes every free
byte. A fill bites once SQLite needs a new block; a later fill may not, while the write-ahead
log still has room it reuses after a checkpoint (the gateway then simply keeps working; the
first fill always bites). While the disk is full the gateway must not acknowledge a report it
could not store
(the node keeps it and sends it again), must keep delivering what it had stored, and must
say so: an error in the log, ``duogate_degraded{problem="storage"} 1`` in the metrics and a
retained ``{"state": "degraded"}`` on ``<prefix>/status/health``. When the filler is removed
everything recovers and no report is lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import random
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client import generate_latest

from gateway.daemon import Gateway
from gateway.metrics import make_registry
from hil_tests.faults_fixtures import (
    FaultRow,
    Ledger,
    MqttSubscriber,
    Stopwatch,
    TunedSimRadio,
    base_config,
    produced_by,
    publish_row,
    recovery_time,
    settle,
    sized,
    wait_until,
    world_nodes,
)
from tests.servers import Mosquitto

PREFIX = "duogate/rel"
HEALTH = f"{PREFIX}/status/health"
NODES = 3
DEGRADED_METRIC = 'duogate_degraded{problem="storage"} 1.0'


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=2m,mode=0755", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.strip() or 'not permitted'}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], capture_output=True)


def fill(path: Path) -> None:
    """Write zeros to ``path`` until the file system has not one byte left."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for size in (64 * 1024, 4096, 512, 1):
            block = bytes(size)
            while True:
                try:
                    os.write(fd, block)
                except OSError as exc:
                    if exc.errno != errno.ENOSPC:
                        raise
                    break
    finally:
        os.close(fd)


def metrics_text(gateway: Gateway) -> str:
    return generate_latest(make_registry(gateway.state)).decode()


def health_messages(subscriber: MqttSubscriber) -> list[str]:
    return [
        json.loads(payload)["state"]
        for _at, topic, payload in list(subscriber.messages)
        if topic == HEALTH
    ]


@pytest.mark.timeout(sized(120, 1800))
async def test_disk_full_degrades_and_recovers_without_loss(
    small_disk: Path,
    mosquitto: Mosquitto,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    repetitions = sized(1, 12)
    full_s = sized(3.0, 10.0)
    rng = random.Random(10)
    ledger = Ledger()
    subscriber = MqttSubscriber(mosquitto.port, PREFIX, ledger, topics=[HEALTH])
    await subscriber.wait_connected()
    # The simulated nodes' own state lives elsewhere: only the gateway's disk fills up.
    config = base_config(
        small_disk / "data",
        mqtt_port=mosquitto.port,
        nodes=NODES,
        extra={"sim": {"state_dir": str(tmp_path / "world")}},
    )
    radio = TunedSimRadio(config)
    gateway = Gateway.build(config, radio=radio)
    await gateway.start()
    filler = small_disk / "filler"
    recoveries = Stopwatch()
    noticed = 0
    try:
        assert await wait_until(lambda: len(ledger.devices()) == NODES, 60.0)
        produced = produced_by(world_nodes(radio))
        for repetition in range(repetitions):
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            await asyncio.to_thread(fill, filler)
            full_at = time.monotonic()
            if not await wait_until(lambda: gateway.state.degraded, 10.0):
                # SQLite still had room in its write-ahead log from before (after a checkpoint
                # it reuses the file): the gateway needs no new space, so nothing is wrong.
                assert repetition > 0, "a full disk was not noticed"
                await asyncio.sleep(max(0.0, full_s - (time.monotonic() - full_at)))
                filler.unlink()
                continue
            noticed += 1
            assert DEGRADED_METRIC in metrics_text(gateway)
            shown = await wait_until(lambda: "degraded" in health_messages(subscriber), 10.0)
            assert shown, "the status topic did not say degraded"
            await asyncio.sleep(max(0.0, full_s - (time.monotonic() - full_at)))
            filler.unlink()
            ended = time.monotonic()
            assert await wait_until(lambda: not gateway.state.degraded, 20.0), "still degraded"
            assert health_messages(subscriber)[-1:] == ["ok"] or await wait_until(
                lambda: health_messages(subscriber)[-1:] == ["ok"], 10.0
            ), "the status topic did not say ok again"
            recoveries.add(await recovery_time(ledger, produced, ended, 30.0))
        final = await settle(ledger, produced, 30.0)
        assert 'duogate_degraded{problem="storage"} 0.0' in metrics_text(gateway)
    finally:
        with contextlib.suppress(FileNotFoundError):
            filler.unlink()
        await gateway.stop()
        subscriber.close()

    logged = [r.getMessage() for r in caplog.records if r.name == "duogate.bridge"]
    assert any("degraded: cannot store" in line for line in logged), logged
    assert any("storage works again" in line for line in logged), logged
    sent, delivered, lost, duplicates = ledger.tally(final)
    fault = f"disk full {full_s:g} s (2 MB tmpfs; {noticed} of {repetitions} fills bit)"
    row = FaultRow(fault, repetitions, sent, delivered, lost, duplicates, recoveries.worst)
    publish_row(request, row)
    assert sent > 0
    assert lost == 0, f"reports never delivered: {ledger.missing(final)}"
    assert recoveries.worst is not None
