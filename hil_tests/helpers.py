"""The bench the HIL scenarios run on: a simulated RF world by default, real boards when asked.

Simulated bench: an ``RfMedium`` with the gateway's ``SimulatedSX127x`` at the origin and
nodes around it, each the node library on its own simulated chip (``SimNode.on_medium``); the
gateway runs the real ``Sx127xRadio`` (pyLoRa) on its chip through the in-process SPI/GPIO
backend. ``node_link`` gives plain ``MediumNodeLink`` radios for scenarios that play a talker.

Hardware bench (``DUOGATE_HIL_HARDWARE=1``): ``DUOGATE_HIL_CONFIG`` is a duogate config whose
``[radio]`` section (``driver = "sx127x"``) describes the gateway's module;
``DUOGATE_HIL_NODE_CONFIG`` (optional) is a config whose ``[radio]`` section describes a second
SX127x module. The node library (``SimNode`` on ``node/sx127x.py``) then runs on that real
module, one node per module. See docs/HIL.md.

Run as a module it offers two tools:

``python -m hil_tests.helpers probe CONFIG sim://HOST:PORT``
    a stand-alone gateway-side driver for the split-process scenario: opens the SX127x driver
    with the ``[radio]`` settings of CONFIG on that URL, prints ``up``, then one
    ``rx <hex payload>`` line per received packet;
``python -m hil_tests.helpers twin-bench GATEWAY_PORT NODE_PORT``
    two simulated chips on one medium served over ``sim://``, to rehearse the hardware mode
    without boards (configs with ``radio.driver = "sx127x"`` and those ``sim://`` addresses).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from drivers.radio.base import Radio, RadioSettings, RxPacket
from drivers.radio.spi import Backend, Pins
from drivers.radio.spi_backends import open_backend
from drivers.radio.spi_simulated import open_local_chip
from drivers.radio.sx127x import Sx127xRadio
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.chip_server import ChipServer
from drivers.sim.medium import RfMedium
from drivers.sim.node import NodeConfig, SimNode
from drivers.sim.node_link import MediumNodeLink, NodeAirLink
from gateway.config import Config, load_config, parse_config
from gateway.driver_settings import plan_nodes, radio_settings, sx127x_settings
from gateway.lora import LoraNetwork
from gateway.state import Direction, GatewayState
from node.sx127x import Sx127x
from tests.sink_fixtures import RecordingSink

HARDWARE_ENV = "DUOGATE_HIL_HARDWARE"
CONFIG_ENV = "DUOGATE_HIL_CONFIG"
NODE_CONFIG_ENV = "DUOGATE_HIL_NODE_CONFIG"
NODES_ENV = "DUOGATE_HIL_NODES"

SIM_PINS = Pins(dio0=25, reset=17)


def hardware_requested() -> bool:
    return os.environ.get(HARDWARE_ENV) == "1"


def hardware_skip_reason() -> str | None:
    """Why the hardware variant of a scenario cannot run here, or None when it can."""
    if not hardware_requested():
        return f"real board not requested: set {HARDWARE_ENV}=1 and {CONFIG_ENV}=path"
    if not os.environ.get(CONFIG_ENV):
        return f"{HARDWARE_ENV}=1 but {CONFIG_ENV} (gateway board config) is not set"
    return None


def node_board_skip_reason() -> str | None:
    """Why a scenario that needs a node board on the bench cannot run, or None."""
    if not os.environ.get(NODE_CONFIG_ENV):
        return f"no node board: set {NODE_CONFIG_ENV} to a config describing the second module"
    return None


# ------------------------------------------------------------------------------ configuration


def sim_config(data_dir: Path, **sections: dict[str, Any]) -> Config:
    """A gateway config for the simulated bench: open join, short receive delays, no servers.

    ``sections`` update the defaults per section (``radio={"bandwidth_hz": 500_000}``).
    869.525 MHz is the EU868 sub-band with a 10 % duty cycle for downlinks.
    """
    data: dict[str, Any] = {
        "gateway": {"id": "hil", "data_dir": str(data_dir)},
        "radio": {
            "driver": "sim",
            "frequency_hz": 869_525_000,
            "spreading_factor": 7,
            "bandwidth_hz": 125_000,
            "tx_power_dbm": 14,
            "rx_delay_s": 0.5,
        },
        "join": {"open_join": True, "join_rx_delay_s": 0.5},
        "mqtt": {"enabled": False},
        "console": {"enabled": False},
        "metrics": {"enabled": False},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return parse_config(data, check_files=False)


def hardware_config(data_dir: Path) -> Config:
    """The bench's gateway config, with its own data directory and open join for lab nodes."""
    return load_config(
        os.environ[CONFIG_ENV],
        overrides=[f"gateway.data_dir={str(data_dir)!r}", "join.open_join=true"],
    )


def fast_node_config(config: Config, *, report_interval_s: float) -> NodeConfig:
    """Node firmware timing scaled down from minutes to seconds."""
    return NodeConfig(
        report_interval_s=report_interval_s,
        join_rx_delay_s=config.join.join_rx_delay_s,
        join_backoff_min_s=1.0,
        join_backoff_max_s=8.0,
        retry_min_s=1.0,
        retry_max_s=8.0,
        next_uplink_gap_s=0.3,
    )


# ------------------------------------------------------------------------------------ waiting


async def wait_until(
    condition: Callable[[], bool],
    timeout_s: float,
    what: str,
    *,
    describe: Callable[[], str] | None = None,
) -> None:
    """Poll ``condition`` until it holds; AssertionError naming ``what`` after ``timeout_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() >= deadline:
            detail = f" ({describe()})" if describe is not None else ""
            raise AssertionError(f"{what}: not reached within {timeout_s:g} s{detail}")
        await asyncio.sleep(0.05)


# -------------------------------------------------------------------------------- the gateway


class GatewayUnderTest:
    """The real LoRa stack (``LoraNetwork``) on a radio, reporting into a ``RecordingSink``."""

    def __init__(self, config: Config, radio: Radio) -> None:
        self.config = config
        self.radio = radio
        self.state = GatewayState()
        self.sink = RecordingSink()
        self.lora = LoraNetwork(config, radio, self.state)

    async def start(self) -> None:
        await asyncio.wait_for(self.lora.start(self.sink), 10.0)

    async def stop(self) -> None:
        await self.lora.stop()

    def downlinks(self, device: str, kind: str) -> list[dict[str, Any] | str | None]:
        """Bodies of the downlinks of ``kind`` ("ack", "join-accept", ...) sent to ``device``."""
        return [
            entry.body
            for entry in self.state.frames
            if entry.direction is Direction.DOWN and entry.node == device and entry.type == kind
        ]


# ----------------------------------------------------------------------------- node radios


class DeafWindows:
    """A node radio (node/radio.py) that misses chosen receive windows, and records what it
    transmits.

    While ``deaf_windows`` is above zero and ``armed()`` says so, the receiver stays in standby
    for a window the node library opens: nothing is heard (on the medium the node counts as
    not listening).
    """

    def __init__(self, inner: Any, *, armed: Callable[[], bool] = lambda: True) -> None:
        self.inner = inner
        self.armed = armed
        self.deaf_windows = 0
        self.windows_missed = 0
        self.sent: list[bytes] = []  # every payload transmitted, in order
        self._deaf = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def start_transmit(self, frame: bytes) -> None:
        self.sent.append(bytes(frame))
        self.inner.start_transmit(frame)

    def start_receive(self) -> None:
        self._deaf = self.deaf_windows > 0 and self.armed()
        if self._deaf:
            self.deaf_windows -= 1
            self.windows_missed += 1
            self.inner.standby()
            return
        self.inner.start_receive()

    def received(self) -> tuple[bytes, float, float] | None:
        return None if self._deaf else self.inner.received()

    def receiving(self) -> bool:
        return False if self._deaf else self.inner.receiving()


class SharedRadioNodeLink:
    """One node's ``NodeAirLink`` on a real radio shared by several simulated nodes.

    The radio receives continuously; a node holds the radio from its transmission to the end of
    the receive window that follows it, so the nodes take turns instead of colliding. A packet
    counts for a window when its preamble started inside it (RxDone minus time on air).
    """

    def __init__(self, radio: Radio, turn: asyncio.Lock, inbox: asyncio.Queue[RxPacket]):
        self.radio = radio
        self._turn = turn
        self._inbox = inbox
        self._holding = False

    async def transmit(self, payload: bytes) -> float:
        if not self._holding:
            await self._turn.acquire()
            self._holding = True
        try:
            return await self.radio.transmit(payload)
        except BaseException:
            self._release()
            raise

    async def receive(self, timeout_s: float) -> tuple[bytes, float, float] | None:
        try:
            opens = time.monotonic()
            while not self._inbox.empty():
                self._inbox.get_nowait()  # heard before this window opened
            longest = self.radio.settings.time_on_air_s(255)
            deadline = opens + timeout_s + longest
            while (left := deadline - time.monotonic()) > 0:
                try:
                    packet = await asyncio.wait_for(self._inbox.get(), left)
                except TimeoutError:
                    break
                started = packet.t_mono - self.radio.settings.time_on_air_s(len(packet.payload))
                if opens - 0.01 <= started <= opens + timeout_s:
                    return packet.payload, packet.rssi, packet.snr
            return None
        finally:
            self._release()

    def _release(self) -> None:
        if self._holding:
            self._holding = False
            self._turn.release()


# -------------------------------------------------------------------------------- the benches


class Bench:
    """What a scenario needs: the gateway's radio and node radios, simulated or real."""

    hardware: bool
    config: Config
    medium: RfMedium | None = None
    chip: SimulatedSX127x | None = None

    @property
    def settings(self) -> RadioSettings:
        return radio_settings(self.config.radio)

    def gateway_radio(self, **options: Any) -> Sx127xRadio:
        raise NotImplementedError

    async def node_link(self, name: str, *, distance_m: float = 100.0) -> NodeAirLink:
        raise NotImplementedError

    def gateway(self) -> GatewayUnderTest:
        return GatewayUnderTest(self.config, self.gateway_radio())

    async def nodes(
        self,
        count: int,
        node_config: NodeConfig,
        *,
        wrap: Callable[[Any], Any] | None = None,
    ) -> list[SimNode]:
        """``count`` lab nodes (open join keys), spread from 50 m to 2 km around the gateway.

        ``wrap(radio)`` may put a wrapper around each node's radio (node/radio.py)."""
        nodes = []
        for plan in plan_nodes(self.config, count):
            node = await self.node(plan.eui, plan.root_key, node_config, plan.distance_m)
            if wrap is not None:
                node.radio = wrap(node.radio)
            nodes.append(node)
        return nodes

    async def node(
        self, eui: int, root_key: bytes, node_config: NodeConfig, distance_m: float
    ) -> SimNode:
        raise NotImplementedError

    async def close(self) -> None:
        pass


class SimBench(Bench):
    hardware = False

    def __init__(self, config: Config, *, seed: int = 1) -> None:
        self.config = config
        loop = asyncio.get_running_loop()
        self.medium = RfMedium(loop, seed=seed)
        self.chip = SimulatedSX127x(loop, self.medium, position=(0.0, 0.0), name="gateway")
        self._links: list[MediumNodeLink] = []
        self._nodes: list[SimNode] = []
        self._placed = 0

    def gateway_radio(self, **options: Any) -> Sx127xRadio:
        chip = self.chip
        assert chip is not None
        options.setdefault("probe_interval_s", 30.0)
        return Sx127xRadio.from_settings(
            sx127x_settings(self.config.radio),
            open_bus=lambda: open_local_chip(chip, SIM_PINS),
            **options,
        )

    async def node_link(self, name: str, *, distance_m: float = 100.0) -> MediumNodeLink:
        assert self.medium is not None
        position = self._next_position(distance_m)
        link = MediumNodeLink(self.medium, self.settings, position=position, name=name)
        self._links.append(link)
        return link

    async def node(
        self, eui: int, root_key: bytes, node_config: NodeConfig, distance_m: float
    ) -> SimNode:
        assert self.medium is not None
        node = SimNode.on_medium(
            eui,
            root_key,
            self.medium,
            self.settings,
            position=self._next_position(distance_m),
            config=node_config,
            rng=random.Random(eui),
        )
        self._nodes.append(node)
        return node

    def _next_position(self, distance_m: float) -> tuple[float, float]:
        angle = 2 * math.pi * (self._placed * 0.618_034 % 1.0)
        self._placed += 1
        return (distance_m * math.cos(angle), distance_m * math.sin(angle))

    async def close(self) -> None:
        for link in self._links:
            link.close()
        for node in self._nodes:
            node.close()


class HardwareBench(Bench):
    """Real modules: the gateway's from ``DUOGATE_HIL_CONFIG``, the node board's (if any) from
    ``DUOGATE_HIL_NODE_CONFIG`` with the gateway's RF settings so the two hear each other."""

    hardware = True

    def __init__(self, config: Config) -> None:
        self.config = config
        self._node_radio: Sx127xRadio | None = None
        self._turn = asyncio.Lock()
        self._inbox: asyncio.Queue[RxPacket] = asyncio.Queue()
        self._node_backend: Backend | None = None

    def gateway_radio(self, **options: Any) -> Sx127xRadio:
        return Sx127xRadio.from_settings(sx127x_settings(self.config.radio), **options)

    async def node_link(self, name: str, *, distance_m: float = 100.0) -> NodeAirLink:
        if self._node_radio is None:
            node_radio_section = load_config(os.environ[NODE_CONFIG_ENV]).radio
            radio = Sx127xRadio(
                self.settings,
                spi_url=node_radio_section.spi,
                dio0_pin=node_radio_section.pins.dio0,
                reset_pin=node_radio_section.pins.reset,
                iq_role="node",  # uplinks normal, downlinks received inverted
            )
            await asyncio.wait_for(radio.open(self._inbox.put_nowait), 10.0)
            self._node_radio = radio
        return SharedRadioNodeLink(self._node_radio, self._turn, self._inbox)

    async def node(
        self, eui: int, root_key: bytes, node_config: NodeConfig, distance_m: float
    ) -> SimNode:
        """The node library on the node board's module (node/sx127x.py), one node per board."""
        if self._node_backend is not None or self._node_radio is not None:
            pytest.skip("a node board runs one node; this scenario needs more")
        section = load_config(os.environ[NODE_CONFIG_ENV]).radio
        pins = Pins(dio0=section.pins.dio0, reset=section.pins.reset)
        backend = await asyncio.to_thread(open_backend, section.spi, pins)
        self._node_backend = backend
        spi = BackendSpi(backend)
        radio = Sx127x(spi, spi.cs, BackendPin(backend, pins.reset), sleep_ms=_sleep_ms)
        settings = self.settings
        radio.reset()
        radio.begin()
        radio.configure(
            settings.frequency_hz,
            settings.spreading_factor,
            settings.bandwidth_hz,
            settings.coding_rate,
            settings.tx_power_dbm,
            settings.preamble_length,
            settings.sync_word,
        )
        return SimNode(eui, root_key, radio, config=node_config, rng=random.Random(eui))

    async def close(self) -> None:
        if self._node_radio is not None:
            await self._node_radio.close()
        if self._node_backend is not None:
            self._node_backend.close()


class BackendPin:
    """A GPIO line of a backend as a ``machine.Pin`` output."""

    def __init__(self, backend: Backend, pin: int) -> None:
        self._gpio = backend.gpio
        self._pin = pin
        self._gpio.setup(pin, 0)  # OUT

    def value(self, level: int | None = None) -> int | None:
        if level is None:
            return self._gpio.input(self._pin)
        self._gpio.output(self._pin, 1 if level else 0)
        return None


class _NoChipSelect:
    """spidev and sim:// select the chip for each transfer themselves."""

    def value(self, level: int | None = None) -> int | None:
        return 1 if level is None else None


class BackendSpi:
    """A backend's SPI bus (``xfer``) as ``machine.SPI.write_readinto`` for node/sx127x.py."""

    def __init__(self, backend: Backend) -> None:
        self._bus = backend.spi
        self.cs = _NoChipSelect()

    def write_readinto(self, out: bytes | bytearray, into: bytearray) -> None:
        into[:] = bytes(self._bus.xfer(list(out)))


def _sleep_ms(ms: int) -> None:
    time.sleep(ms / 1000)


# Parametrise a bench fixture with these: the real-board variant is skipped unless asked for.
BENCH_KINDS = [
    "sim",
    pytest.param(
        "hardware",
        marks=[
            pytest.mark.hardware,
            pytest.mark.skipif(
                hardware_skip_reason() is not None, reason=hardware_skip_reason() or ""
            ),
        ],
    ),
]


@contextlib.asynccontextmanager
async def open_bench(
    kind: str, tmp_path: Path, **sim_sections: dict[str, Any]
) -> AsyncIterator[Bench]:
    """A simulated bench (``sim_config`` updated by ``sim_sections``) or the real one."""
    bench: Bench
    if kind == "sim":
        bench = SimBench(sim_config(tmp_path / "gateway", **sim_sections))
    else:
        bench = HardwareBench(hardware_config(tmp_path / "gateway"))
    try:
        yield bench
    finally:
        await bench.close()


class NodeFleet:
    """Runs simulated nodes, each powered up at a random moment within a spread."""

    def __init__(self, nodes: list[SimNode]) -> None:
        self.nodes = nodes
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, spread_s: float = 0.0, *, seed: int = 1) -> None:
        """Start every node within ``spread_s``. Random rather than evenly spaced starts: a
        fixed spacing that matches a receive delay would line every join request up with the
        previous node's join accept, which the half-duplex gateway cannot hear."""
        rng = random.Random(seed)
        loop = asyncio.get_running_loop()
        for node in self.nodes:
            delay = rng.uniform(0.0, spread_s)
            self._tasks.append(
                loop.create_task(_after(delay, node.run), name=f"hil-{node.device_id}")
            )

    async def stop(self) -> None:
        for node in self.nodes:
            node.stop()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    def failed(self) -> list[BaseException]:
        """Exceptions that ended a node's firmware (a firmware crash fails the scenario)."""
        return [
            task.exception()  # type: ignore[misc]
            for task in self._tasks
            if task.done() and not task.cancelled() and task.exception() is not None
        ]


async def _after(delay_s: float, run: Callable[[], Awaitable[None]]) -> None:
    await asyncio.sleep(delay_s)
    await run()


# ------------------------------------------------------------------------ command-line tools


async def _probe(config_path: str, url: str) -> None:
    config = load_config(config_path, for_sim=True)  # a bare radio probe relays nothing
    radio = Sx127xRadio(radio_settings(config.radio), spi_url=url)

    def show(packet: RxPacket) -> None:
        print(f"rx {packet.payload.hex()}", flush=True)

    await radio.open(show)
    print("up", flush=True)
    await asyncio.Event().wait()


async def _twin_bench(gateway_port: int, node_port: int) -> None:
    """Two simulated chips 50 m apart on one medium, served like two boards on a bench."""
    loop = asyncio.get_running_loop()
    medium = RfMedium(loop)
    gateway_chip = SimulatedSX127x(loop, medium, position=(0.0, 0.0), name="gateway board")
    node_chip = SimulatedSX127x(loop, medium, position=(50.0, 0.0), name="node board")
    servers = [ChipServer(gateway_chip, port=gateway_port), ChipServer(node_chip, port=node_port)]
    for server in servers:
        await server.start()
    print(f"gateway board: radio.spi = {servers[0].url!r}", flush=True)
    print(f"node board:    radio.spi = {servers[1].url!r}", flush=True)
    try:
        await asyncio.Event().wait()
    finally:
        for server in servers:
            await server.close()


USAGE = """usage:
  python -m hil_tests.helpers probe CONFIG sim://HOST:PORT
  python -m hil_tests.helpers twin-bench GATEWAY_PORT NODE_PORT"""


def main(argv: list[str]) -> int:
    if len(argv) == 3 and argv[0] == "probe":
        asyncio.run(_probe(argv[1], argv[2]))
        return 0
    if len(argv) == 3 and argv[0] == "twin-bench" and argv[1].isdigit() and argv[2].isdigit():
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_twin_bench(int(argv[1]), int(argv[2])))
        return 0
    print(USAGE, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
