"""``duogate sim`` with ``[[sim.external_nodes]]``: each entry is its own simulated SX127x on
its own ``sim://`` port, reached with the gateway's ``sim://`` client; a ``--listen`` that
takes an external chip's port is refused in one line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from drivers.radio.spi_simlink import XFER, LinkError, SimChipLink
from tests.bridge_fixtures import ROOT, Process, wait_for_process_port
from tests.servers import free_port

REG_VERSION, REG_SYNC_WORD = 0x42, 0x39


def world_config(folder: Path, world_port: int, chip_ports: list[int]) -> Path:
    chips = "".join(
        f'\n[[sim.external_nodes]]\nlisten = "127.0.0.1:{port}"\nx_m = {10.0 * (i + 1)}\n'
        for i, port in enumerate(chip_ports)
    )
    path = folder / "world.toml"
    path.write_text(
        f'[gateway]\ndata_dir = "data"\n\n[sim]\nnodes = 0\nlisten = "127.0.0.1:{world_port}"\n'
        + chips
    )
    return path


def read_register(link: SimChipLink, address: int) -> int:
    return link.request(XFER, bytes((address & 0x7F, 0)))[1]


def write_register(link: SimChipLink, address: int, value: int) -> None:
    link.request(XFER, bytes((address | 0x80, value)))


def test_each_external_node_is_its_own_chip(tmp_path: Path) -> None:
    world_port, first, second = free_port(), free_port(), free_port()
    config = world_config(tmp_path, world_port, [first, second])
    world = Process("sim", ["sim", "--config", str(config)], tmp_path)
    world.start()
    try:
        wait_for_process_port(second, world)
        one, two = SimChipLink("127.0.0.1", first), SimChipLink("127.0.0.1", second)
        try:
            assert read_register(one, REG_VERSION) == read_register(two, REG_VERSION) == 0x12
            write_register(one, 0x01, 0x80)  # LoRa sleep, so the LoRa page is mapped
            write_register(two, 0x01, 0x80)
            write_register(one, REG_SYNC_WORD, 0x34)
            assert read_register(one, REG_SYNC_WORD) == 0x34
            assert read_register(two, REG_SYNC_WORD) == 0x12
            intruder = SimChipLink("127.0.0.1", first)
            try:
                intruder.connect()
                raise AssertionError("a second client took the chip")
            except LinkError as exc:
                assert "busy" in str(exc)
            finally:
                intruder.close()
        finally:
            one.close()
            two.close()
    finally:
        assert world.signal(signal.SIGTERM) == 0, world.output()
    assert f"external node chip 1 at (20 m, 0 m) served at sim://127.0.0.1:{second}" in (
        world.output()
    )


def test_listen_on_an_external_chips_port_is_refused(tmp_path: Path) -> None:
    world_port, chip_port = free_port(), free_port()
    config = world_config(tmp_path, world_port, [chip_port])
    listen = f"127.0.0.1:{chip_port}"
    ran = subprocess.run(
        [sys.executable, "-m", "gateway", "sim", "--config", str(config), "--listen", listen],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert ran.returncode == 2, ran
    assert ran.stderr.splitlines() == [
        f"--listen: port {chip_port} is also sim.external_nodes[0].listen"
    ]
