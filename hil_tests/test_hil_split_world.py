"""The split set-up: ``duogate sim`` in its own process serves the gateway chip over ``sim://``.

A gateway-side driver in another process connects, hears the world's nodes, and is killed with
SIGKILL; the world keeps running. The real SX127x driver then connects again (here, in the test
process, under the real LoRa stack): the chip is set up afresh, the nodes join and their
reports, queued while nobody answered, arrive complete and in order.
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest

from drivers.radio.sx127x import Sx127xRadio
from gateway.config import load_config
from gateway.driver_settings import radio_settings
from hil_tests.helpers import GatewayUnderTest, wait_until

REPO = Path(__file__).resolve().parent.parent
NODES = 3
OUTAGE_S = 3.0
REPORTS = 3  # the first ones made during the outage, then at least one made afterwards
SERVED_AT = re.compile(r"served at (sim://127\.0\.0\.1:\d+)")

WORLD_CONFIG = """
[gateway]
id = "split"
data_dir = "world-data"

[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:1"  # the gateway side is given the world's address
frequency_hz = 869525000
rx_delay_s = 0.5

[join]
open_join = true
join_rx_delay_s = 0.5

[mqtt]
enabled = false

[console]
enabled = false

[metrics]
enabled = false

[sim]
nodes = {nodes}
report_interval_s = 3.0
start_spread_s = 0.5
join_backoff_min_s = 0.5
join_backoff_max_s = 2.0
retry_min_s = 1.0
retry_max_s = 4.0
next_uplink_gap_s = 0.2
listen = "127.0.0.1:0"
"""


class Child:
    """A child process whose output lines are collected by a reader thread."""

    def __init__(self, args: list[str], *, stream: str) -> None:
        self.process = subprocess.Popen(
            args,
            cwd=REPO,
            stdout=subprocess.PIPE if stream == "stdout" else subprocess.DEVNULL,
            stderr=subprocess.PIPE if stream == "stderr" else subprocess.DEVNULL,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        pipe = self.process.stdout if stream == "stdout" else self.process.stderr
        assert pipe is not None
        self.lines: queue.SimpleQueue[str] = queue.SimpleQueue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, args=(pipe,), daemon=True).start()

    def _read(self, pipe: IO[str]) -> None:
        for line in pipe:
            self.lines.put(line.rstrip("\n"))

    def wait_for_line(self, pattern: re.Pattern[str], timeout_s: float) -> re.Match[str]:
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=left)
            except queue.Empty:
                break
            self.seen.append(line)
            if match := pattern.search(line):
                return match
        raise AssertionError(
            f"no line matching {pattern.pattern!r} within {timeout_s} s; got: {self.seen[-10:]}"
        )

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "duogate.toml"
    path.write_text(WORLD_CONFIG.format(nodes=NODES))
    return path


@pytest.fixture
def world(config_file: Path) -> Iterator[tuple[Child, str]]:
    child = Child(
        [sys.executable, "-m", "gateway", "sim", "--config", str(config_file)], stream="stderr"
    )
    try:
        url = child.wait_for_line(SERVED_AT, 20.0)[1]
        yield child, url
    finally:
        if child.process.poll() is None:
            child.process.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.process.wait(timeout=10)
        child.stop()


async def test_world_outlives_a_killed_gateway_and_the_driver_comes_back(
    world: tuple[Child, str], config_file: Path, tmp_path: Path
) -> None:
    world_process, url = world

    # A gateway-side driver in its own process hears the nodes' join requests ...
    probe = Child(
        [sys.executable, "-m", "hil_tests.helpers", "probe", str(config_file), url],
        stream="stdout",
    )
    try:
        probe.wait_for_line(re.compile(r"^up$"), 20.0)
        probe.wait_for_line(re.compile(r"^rx [0-9a-f]+$"), 20.0)
        # ... and dies without a word.
        probe.process.send_signal(signal.SIGKILL)
        assert probe.process.wait(timeout=10) == -signal.SIGKILL
    finally:
        probe.stop()
    # Nobody answers the nodes for a while; the world goes on.
    time.sleep(OUTAGE_S)
    assert world_process.process.poll() is None, "the world died with the gateway"

    # The real driver connects again, under the real LoRa stack.
    config = load_config(
        config_file, overrides=[f"gateway.data_dir={str(tmp_path / 'gw')!r}"], for_sim=True
    )
    radio = Sx127xRadio(radio_settings(config.radio), spi_url=url)
    gateway = GatewayUnderTest(config, radio)
    await gateway.start()
    sink = gateway.sink

    def a_node_caught_up() -> bool:
        return any(len(sink.of(device)) >= REPORTS for device, _, _ in sink.events)

    try:
        await wait_until(
            a_node_caught_up,
            40.0,
            f"a node of the world joined and delivered {REPORTS} reports",
            describe=lambda: f"events {sink.events}, reports {sink.reports}",
        )
        assert radio.healthy()
    finally:
        await gateway.stop()
    assert world_process.process.poll() is None
    assert radio.counters["rx_packets"] > 0

    for device in {report.device for report in sink.reports}:
        stored = sink.of(device)
        bodies = [report.data["counter"] for report in stored]
        # Reports made while no gateway answered were queued, not lost.
        assert bodies == list(range(1, len(bodies) + 1)), f"{device}: {bodies}"
        assert [report.seq for report in stored] == list(range(len(stored)))

    # The world shuts down cleanly when asked.
    world_process.process.send_signal(signal.SIGTERM)
    assert world_process.process.wait(timeout=15) == 0
