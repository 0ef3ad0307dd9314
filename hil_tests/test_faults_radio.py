"""Fault scenarios: the gateway's SX127x stops answering.

The chip is the register-level simulated SX1276 driven by the real SX127x driver. Its
``fail_mode`` makes every SPI byte read 0x00 (``zeros``) or 0xFF (``ones``), or holds DIO0 low
(``stuck_dio0``). The driver must notice (a transmission without TxDone, a failed probe, an
RxDone flag without its interrupt), reset the chip through RST and set it up again. A chip
that stays dead through resets leaves ``healthy()`` false, and the systemd watchdog pings stop
so that systemd restarts the service.

Recovery time for a chip fault runs from the moment the fault begins: it ends only by the
driver's own reset, so detection is part of the recovery.
"""

from __future__ import annotations

import asyncio
import random
import socket
import time
from pathlib import Path

import pytest

from drivers.sim.chip import FAIL_MODES
from gateway.daemon import Gateway
from gateway.sdnotify import Notifier, Watchdog
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
NODES = 3
# A chip that answers nothing but 0x00 or 0xFF, even after a reset. (A DIO0 line stuck for
# good is not among them: the chip answers, every reset succeeds, and the driver resets it
# again at each probe that finds RxDone set with the line low.)
DEAD_MODES = ("zeros", "ones")


async def start_gateway(mosquitto: Mosquitto, tmp_path: Path, ledger: Ledger):
    subscriber = MqttSubscriber(mosquitto.port, PREFIX, ledger)
    await subscriber.wait_connected()
    config = base_config(tmp_path / "data", mqtt_port=mosquitto.port, nodes=NODES)
    radio = TunedSimRadio(config)
    gateway = Gateway.build(config, radio=radio)
    await gateway.start()
    heard = await wait_until(lambda: len(ledger.devices()) == NODES, 60.0)
    return subscriber, radio, gateway, heard


@pytest.mark.timeout(sized(120, 1800))
async def test_chip_faults_are_cleared_by_a_reset_through_rst(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repetitions = sized(3, 45)
    rng = random.Random(8)
    ledger = Ledger()
    subscriber, radio, gateway, heard = await start_gateway(mosquitto, tmp_path, ledger)
    recoveries = Stopwatch()
    try:
        assert heard, "not every node was heard"
        produced = produced_by(world_nodes(radio))
        chip, driver = radio.chip, radio.driver
        for repetition in range(repetitions):
            mode = FAIL_MODES[repetition % len(FAIL_MODES)]
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            resets = driver.counters["resets"]
            started = time.monotonic()
            chip.fail_mode = mode
            cleared = await wait_until(lambda: chip.fail_mode is None and radio.healthy(), 30.0)
            assert cleared, f"{mode}: the driver did not reset the chip"
            assert driver.counters["resets"] > resets
            recoveries.add(await recovery_time(ledger, produced, started, 30.0))
        final = await settle(ledger, produced, 30.0)
    finally:
        await gateway.stop()
        subscriber.close()

    sent, delivered, lost, duplicates = ledger.tally(final)
    fault = "chip fail_mode zeros/ones/stuck_dio0, reset by driver"
    row = FaultRow(fault, repetitions, sent, delivered, lost, duplicates, recoveries.worst)
    publish_row(request, row)
    assert sent > 0
    assert lost == 0, f"reports never delivered: {ledger.missing(final)}"
    assert recoveries.worst is not None


class NotifySocket:
    """The systemd side of sd_notify: a datagram socket that collects watchdog pings."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)

    def pings(self) -> int:
        """Watchdog pings received since the last call."""
        count = 0
        while True:
            try:
                message = self.sock.recv(4096)
            except BlockingIOError:
                return count
            count += b"WATCHDOG=1" in message.split(b"\n")

    def close(self) -> None:
        self.sock.close()


@pytest.mark.timeout(sized(120, 1800))
async def test_a_chip_dead_through_resets_stops_the_watchdog_pings(
    mosquitto: Mosquitto, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    repetitions = sized(1, 10)
    dead_s = sized(2.0, 12.0)
    rng = random.Random(9)
    ledger = Ledger()
    subscriber, radio, gateway, heard = await start_gateway(mosquitto, tmp_path, ledger)
    systemd = NotifySocket(tmp_path / "notify")
    notifier = Notifier(str(systemd.path))
    watchdog = Watchdog(notifier, 1.0, gateway.healthy)
    watchdog.start()
    recoveries = Stopwatch()
    try:
        assert heard, "not every node was heard"
        produced = produced_by(world_nodes(radio))
        chip = radio.chip
        assert await wait_until(lambda: systemd.pings() > 0, 5.0), "no watchdog ping at all"
        for repetition in range(repetitions):
            mode = DEAD_MODES[repetition % len(DEAD_MODES)]
            await asyncio.sleep(rng.uniform(0.5, 3.0))
            chip.persistent = mode
            chip.fail_mode = mode
            assert await wait_until(lambda: not gateway.healthy(), 15.0), f"{mode} not noticed"
            await asyncio.sleep(watchdog.period_s)  # a ping already on its way may still land
            systemd.pings()
            skipped = watchdog.skipped_unhealthy
            await asyncio.sleep(dead_s)
            assert systemd.pings() == 0, "the watchdog was pinged while the radio was dead"
            assert watchdog.skipped_unhealthy > skipped
            chip.persistent = None  # the next reset brings the chip back
            ended = time.monotonic()
            assert await wait_until(gateway.healthy, 15.0), "radio not recovered"
            assert await wait_until(lambda: systemd.pings() > 0, 5.0), "pings did not resume"
            recoveries.add(await recovery_time(ledger, produced, ended, 30.0))
        final = await settle(ledger, produced, 30.0)
    finally:
        await watchdog.stop()
        notifier.close()
        systemd.close()
        await gateway.stop()
        subscriber.close()

    sent, delivered, lost, duplicates = ledger.tally(final)
    fault = f"chip dead through resets {dead_s:g} s, watchdog withheld"
    row = FaultRow(fault, repetitions, sent, delivered, lost, duplicates, recoveries.worst)
    publish_row(request, row)
    assert sent > 0
    assert lost == 0, f"reports never delivered: {ledger.missing(final)}"
    assert recoveries.worst is not None
