"""``duogate sim`` as a site: gateway chips at positions, nodes placed and moved, a chip powered
off and on, and the ledger of what the nodes did.

The end-to-end test runs what a user runs: ``duogate sim`` with a site config, one ``duogate
run`` per gateway chip (``radio.spi = "sim://..."``) and mosquitto, and reads MQTT and the
ledger. The others check the parts: coverage from the medium's numbers, placement, the power
switch and the ledger (config mistakes: tests/test_sim_site_config.py).
"""

from __future__ import annotations

import asyncio
import json
import math
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.radio.base import RadioSettings
from drivers.sim.medium import SNR_FLOOR_DB, RfMedium, sensitivity_dbm
from drivers.sim.node import SimNode
from drivers.sim.settings import GatewayChipPlan, NodeMove, PathLoss, WorldSettings
from drivers.sim.world import SimWorld, coverage_m
from gateway.config import parse_config
from gateway.driver_settings import plan_nodes, world_settings
from gateway.protocol.frames import DownlinkCommand
from tests.bridge_fixtures import MqttWatcher, Process, wait_for_process_port
from tests.servers import Mosquitto, free_port
from tests.sim_node_fixtures import FAST, gateways, root_key_of
from tests.sim_node_fixtures import RADIO as FAST_RADIO

RADIO = RadioSettings(frequency_hz=869_525_000, spreading_factor=7, bandwidth_hz=500_000)

# --- coverage and placement ----------------------------------------------------------------


def test_coverage_is_where_the_mean_path_loss_meets_the_receivers_limit() -> None:
    loop = asyncio.new_event_loop()
    try:
        for exponent in (2.7, 4.0):
            medium = RfMedium(loop, path_loss_exponent=exponent)
            reach = coverage_m(medium, RADIO)
            limit = max(
                sensitivity_dbm(7, 500_000), medium.noise_floor_dbm(500_000) + SNR_FLOOR_DB[7]
            )

            def power_at(distance: float, medium: RfMedium = medium) -> float:
                return RADIO.tx_power_dbm - medium.path_loss_db(distance, RADIO.frequency_hz)

            assert power_at(reach) == pytest.approx(limit, abs=1e-6)
            assert power_at(reach * 0.99) > limit > power_at(reach * 1.01)
        # A few hundred metres at exponent 4, several kilometres at the default 2.7.
        assert 250 < coverage_m(RfMedium(loop, path_loss_exponent=4.0), RADIO) < 400
        assert coverage_m(RfMedium(loop), RADIO) > 2000
    finally:
        loop.close()


def site_table(**sim: Any) -> dict[str, Any]:
    return {
        "gateway": {"data_dir": "/nonexistent/data"},
        "join": {"open_join": True},
        "radio": {"driver": "sx127x", "spi": "sim://127.0.0.1:1"},
        "sim": {"nodes": 6, "seed": 5, **sim},
    }


def test_nodes_are_placed_in_the_area_or_where_pinned_reproducibly() -> None:
    table = site_table(
        node_area=[[100, -50], [300, 50]], node_positions=[{"node": 4, "position": [-7, 8]}]
    )
    places = [plan.position for plan in plan_nodes(parse_config(table))]
    assert places[4] == (-7.0, 8.0)
    for index, place in enumerate(places):
        assert place is not None
        if index != 4:
            assert 100 <= place[0] <= 300 and -50 <= place[1] <= 50, place
    assert places == [plan.position for plan in plan_nodes(parse_config(table))]
    other_seed = site_table(node_area=[[100, -50], [300, 50]])
    other_seed["sim"]["seed"] = 6
    assert places[0] != plan_nodes(parse_config(other_seed))[0].position
    # Without an area the nodes stay on the circle around the origin, except those pinned.
    table = site_table(node_positions=[{"node": 0, "position": [1, 2]}])
    plans = plan_nodes(parse_config(table))
    assert plans[0].position == (1.0, 2.0)
    assert all(plan.position is None for plan in plans[1:])


def test_site_settings_from_the_config() -> None:
    table = site_table(
        gateways=[
            {"name": "A", "listen": "127.0.0.1:7101", "position": [0, 0], "off": [[5, 9], [20]]},
            {"name": "B", "listen": "127.0.0.1:7102", "position": [600, 0]},
        ],
        moves=[{"node": 2, "at_s": 3.5, "to": [500, 10]}],
        path_loss_exponent=3.5,
        reference_loss_db=40.0,
        schedule_from="gateways",
        ledger="/tmp/ledger.jsonl",
    )
    settings = world_settings(parse_config(table))
    assert settings.gateways == (
        GatewayChipPlan("A", "127.0.0.1", 7101, (0.0, 0.0), ((5.0, 9.0), (20.0, math.inf))),
        GatewayChipPlan("B", "127.0.0.1", 7102, (600.0, 0.0)),
    )
    assert settings.moves == (NodeMove(2, 3.5, (500.0, 10.0)),)
    assert settings.path_loss == PathLoss(3.5, 40.0, 0.0)
    assert settings.schedule_from == "gateways"
    assert settings.ledger == Path("/tmp/ledger.jsonl")
    a = settings.gateways[0]
    assert [a.powered_at(t) for t in (0, 5, 8.9, 9, 19.9, 20, 1e9)] == [
        True,
        False,
        False,
        True,
        True,
        False,
        False,
    ]


async def test_the_schedule_powers_chips_and_moves_nodes_and_the_ledger_says_so(
    tmp_path: Path,
) -> None:
    settings = world_settings(
        parse_config(
            site_table(
                nodes=2,
                node_positions=[
                    {"node": 0, "position": [10, 0]},
                    {"node": 1, "position": [590, 0]},
                ],
                gateways=[
                    {"name": "A", "listen": ":0", "position": [0, 0], "off": [[0.2, 0.4]]},
                    {"name": "B", "listen": ":0", "position": [600, 0], "off": [[0.3]]},
                ],
                moves=[{"node": 0, "at_s": 0.1, "to": [300, 5]}],
                schedule_from="gateways",
                ledger=str(tmp_path / "ledger.jsonl"),
                state_dir=str(tmp_path / "state"),
            )
        )
    )
    world = SimWorld(settings)
    a, b = world.gateways["A"], world.gateways["B"]
    assert world.chip is a
    assert world.medium.position(world.nodes[1].chip) == (590.0, 0.0)  # type: ignore[arg-type]
    world.start()  # the schedule waits for start_schedule
    try:
        await asyncio.sleep(0.5)
        assert world.schedule_started_at is None
        assert world.medium.position(a) == (0.0, 0.0)  # nothing happens before second 0
        world.start_schedule()
        await asyncio.sleep(0.25)
        assert not world.powered["A"]
        with pytest.raises(ValueError, match="not attached"):
            world.medium.position(a)  # off the medium: it neither hears nor is heard
        assert world.medium.position(world.nodes[0].chip) == (300.0, 5.0)  # type: ignore[arg-type]
        await asyncio.sleep(0.3)
        assert world.powered == {"A": True, "B": False}
        assert world.medium.position(a) == (0.0, 0.0)
        assert "gateways: A on (rx 0, tx 0), B off (rx 0, tx 0)" in world.summary()
        world.start_schedule()  # once only
    finally:
        await world.stop()
    lines = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [{k: v for k, v in line.items() if k != "t"} for line in lines] == [
        {"event": "schedule", "from": "gateways"},
        {"event": "moved", "node": 0, "device": world.nodes[0].device_id, "to": [300.0, 5.0]},
        {"event": "power", "gateway": "A", "on": False},
        {"event": "power", "gateway": "B", "on": False},
        {"event": "power", "gateway": "A", "on": True},
    ]
    assert all(isinstance(line["t"], float) for line in lines)
    with pytest.raises(ValueError, match="not attached"):
        world.medium.position(b)  # off for good


async def test_a_world_without_a_site_is_one_chip_at_the_origin(tmp_path: Path) -> None:
    world = SimWorld(WorldSettings(radio=RADIO, nodes=(), state_dir=tmp_path / "state"))
    try:
        assert list(world.gateways) == ["gateway"]
        assert world.medium.position(world.chip) == (0.0, 0.0)
        assert "gateways" not in world.summary()
    finally:
        await world.stop()


async def test_a_nodes_ledger_lines_name_what_the_gateway_names() -> None:
    """Joins, reports, acks and commands of one node against the real network core: its
    session and report ids are the gateway's; a repeated command is answered from memory."""
    lines: list[tuple[str, dict[str, Any]]] = []

    def note(event: str, /, **fields: Any) -> None:
        lines.append((event, fields))

    async with gateways() as build:
        gateway = await build([21])
        node = SimNode.on_medium(
            21,
            root_key_of(21),
            gateway.medium,
            FAST_RADIO,
            position=(60.0, 0.0),
            config=FAST,
            ledger=note,
        )
        task = asyncio.create_task(node.run())
        try:
            await wait_for(lambda: node.stats.acks_received >= 3)
            device = node.device_id
            gateway.send_command(device, DownlinkCommand(7, "ping", {}, ttl_ds=100))
            gateway.send_command(device, DownlinkCommand(8, "launch", {}, ttl_ds=100))
            await wait_for(lambda: len(gateway.results) == 2)
            gateway.send_command(device, DownlinkCommand(7, "ping", {}, ttl_ds=100))
            await wait_for(lambda: len(gateway.results) == 3)
        finally:
            node.stop()
            await asyncio.wait_for(task, 5)
            node.close()
    lease = gateway.core.lease(device)
    assert lease is not None
    assert lines[0] == ("joined", {"session_id": lease.session_id, "address": lease.address})
    on_air = [fields for event, fields in lines if event == "report"]
    acked = [fields for event, fields in lines if event == "acked"]
    # Each report once, under the id the gateway gave it, numbered as the node numbers them
    # (the last one may still have been on its way when the node stopped).
    ids = [fields["report_id"] for fields in on_air]
    assert ids[: len(gateway.reports)] == list(gateway.reports)
    assert len(ids) - len(gateway.reports) in (0, 1)
    assert [fields["counter"] for fields in on_air] == list(range(1, len(on_air) + 1))
    assert all(fields["confirmed"] for fields in on_air)
    assert len(acked) >= 3 and {fields["report_id"] for fields in acked} <= set(gateway.reports)
    assert [fields for event, fields in lines if event == "command"] == [
        {"ref": 7, "action": "ping", "status": "executed", "repeated": False},
        {"ref": 8, "action": "launch", "status": "failed", "repeated": False},
        {"ref": 7, "action": "ping", "status": "executed", "repeated": True},
    ]
    assert node.stats.commands_executed == 1


async def wait_for(condition: Callable[[], bool], timeout_s: float = 45.0) -> None:
    deadline = time.monotonic() + timeout_s  # a liveness bound
    while not condition():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


# --- end to end: duogate sim, two duogate run, mosquitto ---------------------------------------

MOVE_S = 10.0  # node 3 walks from gateway A's side to B's
OFF_S, ON_S = 15.0, 22.0  # A's chip is off in between
A_SIDE, B_SIDE = (0, 1, 3), (2,)

WORLD = """
[gateway]
data_dir = "world-data"

[radio]
frequency_hz = 869525000
bandwidth_hz = 500000

[join]
open_join = true
join_rx_delay_s = 0.5

[sim]
nodes = 4
seed = 11
report_interval_s = 1.5
start_spread_s = 0.5
join_backoff_min_s = 0.3
join_backoff_max_s = 1.0
retry_min_s = 0.3
retry_max_s = 1.0
next_uplink_gap_s = 0.2
rejoin_after_unacked = 4
path_loss_exponent = 4.0
schedule_from = "gateways"
ledger = "ledger.jsonl"
node_positions = [
  {{node = 0, position = [-40, 30]}},
  {{node = 1, position = [30, -50]}},
  {{node = 2, position = [560, -30]}},
  {{node = 3, position = [60, 20]}},
]
moves = [{{node = 3, at_s = {move_s}, to = [520, 20]}}]

[[sim.gateways]]
name = "A"
listen = "127.0.0.1:{a_port}"
position = [0, 0]
off = [[{off_s}, {on_s}]]

[[sim.gateways]]
name = "B"
listen = "127.0.0.1:{b_port}"
position = [600, 0]
"""

GATEWAY = """
[gateway]
id = "site-{name}"
data_dir = "gw-{name}"

[radio]
driver = "sx127x"
spi = "sim://127.0.0.1:{port}"
frequency_hz = 869525000
bandwidth_hz = 500000
rx_delay_s = 0.5

[join]
open_join = true
join_rx_delay_s = 0.5
address_pool_start = {pool}
address_pool_end = {pool_end}

[mqtt]
port = {broker}
discovery = false
reconnect_min_s = 0.2
reconnect_max_s = 1.0

[console]
enabled = false

[metrics]
enabled = false
"""


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The whole lines written so far."""
    if not path.exists():
        return []
    text = path.read_text()
    return [json.loads(line) for line in text[: text.rfind("\n") + 1].splitlines()]


def index_of(lines: list[dict[str, Any]], **match: Any) -> int | None:
    for index, line in enumerate(lines):
        if all(line.get(key) == value for key, value in match.items()):
            return index
    return None


def mqtt_reports(watcher: MqttWatcher) -> list[tuple[str, str, str]]:
    """(gateway, device, report id) of every report published, in arrival order."""
    found = []
    for message in watcher.snapshot():
        _, gateway, _, device, _ = message.topic.split("/")
        found.append((gateway.removeprefix("site-"), device, message.json()["id"]))
    return found


def test_a_site_two_gateways_a_node_walking_over_and_a_chip_powered_off(
    mosquitto: Mosquitto, tmp_path: Path
) -> None:
    a_port, b_port = free_port(), free_port()
    world_path = tmp_path / "world.toml"
    world_path.write_text(
        WORLD.format(move_s=MOVE_S, off_s=OFF_S, on_s=ON_S, a_port=a_port, b_port=b_port)
    )
    gateway_paths = {}
    for name, port, pool in (("a", a_port, 0x100), ("b", b_port, 0x200)):
        path = gateway_paths[name] = tmp_path / f"gateway-{name}.toml"
        path.write_text(
            GATEWAY.format(
                name=name, port=port, pool=pool, pool_end=pool + 0xFF, broker=mosquitto.port
            )
        )
    watcher = MqttWatcher(mosquitto, ("duogate/+/devices/+/report",))
    watcher.connect()
    world = Process("sim", ["sim", "--config", str(world_path)], tmp_path)
    gateways = [
        Process(f"gateway-{name}", ["run", "--config", str(path)], tmp_path)
        for name, path in gateway_paths.items()
    ]
    ledger_path = tmp_path / "ledger.jsonl"
    devices: dict[int, str] = {}

    def finished() -> bool:
        """A is back on and has published a report of each of its nodes made since; B has
        published one of the node that walked over."""
        lines = read_ledger(ledger_path)
        devices.update((line["node"], line["device"]) for line in lines if "node" in line)
        back_on = index_of(lines, event="power", gateway="A", on=True)
        if back_on is None or not {0, 1, 3} <= set(devices):
            return False
        since = {line["report_id"] for line in lines[back_on:] if line["event"] == "report"}
        published = mqtt_reports(watcher)
        served_again = {d for g, d, r in published if g == "a" and r in since}
        walked = any(g == "b" and d == devices[3] for g, d, _ in published)
        return {devices[0], devices[1]} <= served_again and walked

    world.start()
    try:
        wait_for_process_port(b_port, world)
        for gateway in gateways:
            gateway.start()
        deadline = time.monotonic() + 120.0  # a liveness bound: the schedule ends at 22 s
        while not finished():
            for process in (world, *gateways):
                assert process.alive(), f"{process.name} exited:\n{process.output()}"
            assert time.monotonic() < deadline, (
                f"the site did not play out: {read_ledger(ledger_path)[-20:]}\n"
                f"{mqtt_reports(watcher)[-20:]}\n{world.output()[-3000:]}"
            )
            time.sleep(0.2)
    finally:
        for process in (*gateways, world):
            if process.proc is not None:
                process.signal(signal.SIGTERM)
        watcher.drop()
    assert world.proc is not None and world.proc.returncode == 0, world.output()

    lines = read_ledger(ledger_path)
    reports = mqtt_reports(watcher)
    on_air = {line["report_id"]: i for i, line in enumerate(lines) if line["event"] == "report"}
    # The ledger names every report as the gateways do: each one published is in it.
    assert reports and {rid for _, _, rid in reports} <= set(on_air), (reports, on_air)

    def via(gateway: str, node: int) -> list[int]:
        """Ledger positions of the node's reports published by the gateway."""
        return sorted(on_air[r] for g, d, r in reports if g == gateway and d == devices[node])

    moved = index_of(lines, event="moved", node=3)
    off = index_of(lines, event="power", gateway="A", on=False)
    on = index_of(lines, event="power", gateway="A", on=True)
    assert moved is not None and off is not None and on is not None and moved < off < on
    started = index_of(lines, event="schedule")
    assert started is not None and lines[started]["from"] == "gateways" and started < moved
    assert lines[moved]["to"] == [520.0, 20.0]

    # Nodes near A are served by A alone, the node near B by B alone (600 m apart: out of
    # each other's range at path loss exponent 4).
    for node in (0, 1):
        assert via("a", node) and not via("b", node), node
        assert any(i < off for i in via("a", node)) and any(i > on for i in via("a", node))
    assert via("b", 2) and not via("a", 2)

    # The walking node: served by A until it moved, then it joined B and B serves it.
    assert via("a", 3) and all(i < moved for i in via("a", 3))
    assert via("b", 3) and all(i > moved for i in via("b", 3))
    joins = [(i, line) for i, line in enumerate(lines) if line["event"] == "joined"]
    sessions = [(i, line["session_id"]) for i, line in joins if line["node"] == 3]
    before = [session for i, session in sessions if i < moved]
    after = [session for i, session in sessions if i > moved]
    assert before and after, sessions
    a_ids = {r for g, d, r in reports if g == "a" and d == devices[3]}
    b_ids = {r for g, d, r in reports if g == "b" and d == devices[3]}
    assert {rid.split(":")[1] for rid in a_ids} <= set(before)
    assert {rid.split(":")[1] for rid in b_ids} <= set(after)

    # While A's chip was off nothing of its nodes was acked, though each had a report on air
    # (sent before, or during the outage) that A had not acked; B went on acking its node.
    near_a = {0, 1}
    for node in near_a:
        sent = {line["report_id"] for line in lines[:on] if is_report_of(line, node)}
        acked = {line["report_id"] for line in lines[:off] if is_ack_of(line, node)}
        assert sent - acked, f"node {node} had no report waiting for an ack while A was off"
    outage = lines[off + 1 : on]
    assert not [line for line in outage if line["event"] == "acked" and line["node"] in near_a]
    assert any(is_ack_of(line, 2) for line in outage)


def is_report_of(line: dict[str, Any], node: int) -> bool:
    return line["event"] == "report" and line["node"] == node


def is_ack_of(line: dict[str, Any], node: int) -> bool:
    return line["event"] == "acked" and line["node"] == node
