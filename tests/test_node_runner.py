"""node/runner.py as a board runs it: ``while True: wake = runner.step(now); sleep``, polling the
radio (no DIO0), node/sx127x.py on a simulated chip, the record in two flash slot files, against
the gateway's driver and network core on the same medium (tests/sim_node_fixtures.py)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any

from drivers.sim.chip import SimulatedSX127x
from drivers.sim.node_bus import wire
from gateway.model import CommandStatus, lora_device_id
from gateway.protocol.frames import DownlinkCommand
from node import frames
from node import session as ns
from node.runner import Runner
from node.storage import NodeStore
from node.sx127x import Sx127x
from tests.sim_node_fixtures import FAST, RADIO, Gateway, gateways, root_key_of

EUI = 0x70B3D57ED0005678
DEVICE = lora_device_id(EUI)


class Board:
    """A board: a chip, the driver on it, a flash with two slot files, and the main loop."""

    def __init__(self, gateway: Gateway, flash: Path, chip: SimulatedSX127x | None = None):
        self.chip = chip or SimulatedSX127x(
            gateway.loop, gateway.medium, position=(120.0, 40.0), name="board"
        )
        spi, cs, _reset, _dio0 = wire(self.chip)
        self.radio = Sx127x(spi, cs)
        self.radio.begin()
        self.radio.configure(
            RADIO.frequency_hz, RADIO.spreading_factor, RADIO.bandwidth_hz, 5, 14, 8, 0x12
        )
        self.store = NodeStore.at(str(flash))
        self.events: list[Any] = []
        self.commands: list[tuple[str, dict[str, Any]]] = []
        node = ns.Node(
            EUI.to_bytes(8, "big"),
            root_key_of(EUI),
            secrets.token_bytes,
            config=FAST.session_config(),
            record=self.store.load(),
        )
        self.runner = Runner(
            node, self.radio, store=self.store, execute=self.execute, on_event=self.events.append
        )
        self.steps = 0

    def execute(self, command: Any) -> tuple[int, str | None]:
        self.commands.append((command.action, command.params))
        return frames.EXECUTED, "done"

    async def run_until(self, condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        next_report = loop.time()
        while not condition():
            now = loop.time()
            assert now < deadline, f"not reached; events {self.events}"
            if now >= next_report:
                self.runner.report({"temperature_c": 21.5}, now)
                next_report = now + 0.3
            wake = self.runner.step(now)
            self.steps += 1
            until = next_report if wake is None else min(wake, next_report)
            await asyncio.sleep(max(0.0, until - loop.time()))

    def acked(self) -> list[int]:
        return [e.number for e in self.events if isinstance(e, ns.Acked) and e.kind == "report"]


async def test_a_polling_board_joins_reports_and_runs_a_command(tmp_path: Path) -> None:
    async with gateways() as build:
        gateway = await build([EUI])
        board = Board(gateway, tmp_path / "flash")
        await board.run_until(lambda: len(board.acked()) >= 3)
        assert any(isinstance(e, ns.Joined) for e in board.events)
        gateway.send_command(DEVICE, DownlinkCommand(5, "relay", {"on": True}, ttl_ds=300))
        await board.run_until(lambda: bool(gateway.results))
    assert board.commands == [("relay", {"on": True})]
    [result] = gateway.results
    assert (result.command_ref, result.status, result.detail) == (
        5,
        CommandStatus.EXECUTED,
        "done",
    )
    bodies = gateway.reports_of(DEVICE)
    assert [b["counter"] for b in bodies] == sorted(b["counter"] for b in bodies)
    assert all(b["temperature_c"] == 21.5 for b in bodies)
    assert board.radio.crc_errors == 0 and board.radio.packets >= 4
    # Flash: the join nonce, the session, the command's arrival and its result, and per report
    # at most three appends (queued, framed, acked; one write when it goes out at once and
    # one at its ack), the counters reserved in blocks riding along.
    node = board.runner.node
    reports_made = node.report_next - 1
    assert board.store.writes <= 4 + 3 * reports_made
    assert board.store.snapshots <= 1 + board.store.writes // 8


async def test_after_a_power_cycle_the_board_continues_its_session(tmp_path: Path) -> None:
    async with gateways() as build:
        gateway = await build([EUI])
        board = Board(gateway, tmp_path / "flash")
        await board.run_until(lambda: len(board.acked()) >= 2)
        last = max(board.acked())
        board.radio.sleep()  # power off: the chip keeps nothing of the session

        again = Board(gateway, tmp_path / "flash", chip=board.chip)
        assert again.runner.node.joined
        await again.run_until(lambda: len(again.acked()) >= 2)
    assert not any(isinstance(e, ns.Joined) for e in again.events)
    assert min(again.acked()) > last
    assert "replayed_counter" not in gateway.rejected
