"""A chip that never answers: a clear error, quickly, and never a hang.

The radio is built and opened as ``duogate run`` does it (``build_radio`` / ``Gateway.build``
from a config with ``radio.driver = "sx127x"``), against a ``sim://`` chip server whose chip
is absent: every SPI byte reads 0x00 (module not powered) or 0xFF (MISO floating), RST pulses
included. Then ``duogate run`` itself, against that server and against a port nobody listens
on: exit status 1 and one line on stderr, no traceback.
"""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from drivers.radio.base import ChipNotFound, RadioError, RxPacket
from drivers.sim.chip import FailMode, SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from gateway.config import Config, parse_config
from gateway.daemon import Gateway, build_radio

REPO = Path(__file__).resolve().parent.parent
OPEN_BOUND_S = 10.0  # "quickly": the driver itself gives up well within this
CLI_BOUND_S = 60.0


class AbsentChip(SimulatedSX127x):
    """No chip on the bus: the fault survives RST pulses (the simulated chip's own reset
    clears faults, as a latched-up chip would)."""

    def __init__(self, loop: asyncio.AbstractEventLoop, fault: FailMode) -> None:
        super().__init__(loop, name="absent chip")
        self.fail_mode = fault

    def reset(self) -> None:
        fault = self.fail_mode
        super().reset()
        self.fail_mode = fault


def free_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def daemon_config(tmp_path: Path, spi: str) -> dict[str, object]:
    return {
        "gateway": {"data_dir": str(tmp_path / "data")},
        "radio": {"driver": "sx127x", "spi": spi},
        "mqtt": {"host": "127.0.0.1", "port": free_port()},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
    }


def to_toml(data: dict[str, object]) -> str:
    lines = []
    for section, values in data.items():
        assert isinstance(values, dict)
        lines.append(f"[{section}]")
        for key, value in values.items():
            text = f'"{value}"' if isinstance(value, str) else str(value).lower()
            lines.append(f"{key} = {text}")
    return "\n".join(lines) + "\n"


@pytest.fixture(params=["zeros", "ones"])
async def absent_chip_server(request: pytest.FixtureRequest) -> AsyncIterator[ChipServer]:
    server = ChipServer(AbsentChip(asyncio.get_running_loop(), request.param))
    await server.start()
    try:
        yield server
    finally:
        await server.close()


def config_for(tmp_path: Path, spi: str) -> Config:
    return parse_config(daemon_config(tmp_path, spi), check_files=False)


async def test_radio_open_raises_chip_not_found_quickly(
    absent_chip_server: ChipServer, tmp_path: Path
) -> None:
    radio = build_radio(config_for(tmp_path, absent_chip_server.url))
    heard: list[RxPacket] = []
    started = time.monotonic()
    with pytest.raises(ChipNotFound) as raised:
        await asyncio.wait_for(radio.open(heard.append), OPEN_BOUND_S)
    assert time.monotonic() - started < OPEN_BOUND_S
    message = str(raised.value)
    assert "\n" not in message
    assert "no SX127x on sim chip at" in message
    assert "every register reads" in message
    assert not radio.healthy()
    await radio.close()  # nothing left open; closing again is harmless
    with pytest.raises(RadioError, match="not open"):
        await radio.transmit(b"x")


async def test_gateway_start_fails_with_chip_not_found(
    absent_chip_server: ChipServer, tmp_path: Path
) -> None:
    gateway = Gateway.build(config_for(tmp_path, absent_chip_server.url))
    try:
        with pytest.raises(ChipNotFound):
            await asyncio.wait_for(gateway.start(), OPEN_BOUND_S)
        assert not gateway.healthy()
    finally:
        await asyncio.wait_for(gateway.stop(), OPEN_BOUND_S)


async def test_chip_server_that_never_replies_is_an_error_not_a_hang(tmp_path: Path) -> None:
    """A socket that accepts and then stays silent: the link gives up after its reply timeout."""
    connections: list[asyncio.StreamWriter] = []

    async def swallow(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)
        while await reader.read(4096):
            pass

    server = await asyncio.start_server(swallow, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        radio = build_radio(config_for(tmp_path, f"sim://127.0.0.1:{port}"))
        with pytest.raises(RadioError, match="did not answer within"):
            await asyncio.wait_for(radio.open(lambda packet: None), OPEN_BOUND_S)
        assert not radio.healthy()
        assert connections
    finally:
        for writer in connections:
            writer.close()
        server.close()
        await server.wait_closed()


async def run_duogate(config_path: Path) -> tuple[int, list[str]]:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "gateway",
        "run",
        "--config",
        str(config_path),
        cwd=REPO,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        _, stderr = await asyncio.wait_for(process.communicate(), CLI_BOUND_S)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"duogate run still running after {CLI_BOUND_S} s") from None
    assert process.returncode is not None
    return process.returncode, stderr.decode().splitlines()


async def test_duogate_run_with_nothing_at_the_sim_address_exits_1_in_one_line(
    tmp_path: Path,
) -> None:
    port = free_port()
    config_path = tmp_path / "duogate.toml"
    config_path.write_text(to_toml(daemon_config(tmp_path, f"sim://127.0.0.1:{port}")))
    status, lines = await run_duogate(config_path)
    assert status == 1
    assert lines == [
        f"duogate: error: sim chip at 127.0.0.1:{port} unreachable: Connection refused"
    ]


async def test_duogate_run_with_an_absent_chip_exits_1_in_one_line(
    absent_chip_server: ChipServer, tmp_path: Path
) -> None:
    config_path = tmp_path / "duogate.toml"
    config_path.write_text(to_toml(daemon_config(tmp_path, absent_chip_server.url)))
    status, lines = await run_duogate(config_path)
    assert status == 1
    assert len(lines) == 1, lines
    assert lines[0].startswith("duogate: error: no SX127x on sim chip at 127.0.0.1:")
    assert "every register reads" in lines[0]
