"""Simulated nodes: the node library (node/session.py, node/runner.py, node/sx127x.py) on a
register-level simulated SX127x of the medium, as a board runs it.

``SimNode`` is the firmware's application around the library: a periodic report
(``temperature_c``, ``relay``; the library adds ``counter``), the commands ``relay``,
``set_interval`` and ``ping``, and an asyncio task standing in for the board's main loop
(``runner.step``, then sleep until the wake time or DIO0). Its radio is any ``node.radio``
implementation; ``SimNode.on_medium`` puts a ``node.sx127x.Sx127x`` on a fresh
``SimulatedSX127x`` at a position of the medium, wired as a board's SPI and pins
(``drivers.sim.node_bus``).

Flash: the library's record goes to two slot files (``node.storage.NodeStore``) next to
``state_path``; ``state_path`` itself (JSON) holds the application's state (relay, interval)
and a view of the node for observers (report counter, queue, recent commands), written before
every transmission and after every change.

``ledger``: told of joins, reports going on air, acks and commands (``drivers.sim.ledger``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.radio.base import RadioSettings
from drivers.sim.chip import SimulatedSX127x
from drivers.sim.ledger import NodeLedger, NodeNotes, TellingNode
from drivers.sim.medium import Position, RfMedium
from drivers.sim.node_bus import wire
from gateway.model import lora_device_id
from gateway.protocol.frames import ResultCode
from gateway.protocol.join import JOIN_RX_DELAY_S
from node import session as ns
from node.runner import Runner
from node.storage import NodeStore
from node.sx127x import Sx127x


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """Firmware constants (node.session.NodeConfig's, plus the report interval). The defaults
    are for real time; tests scale them down."""

    report_interval_s: float = 60.0  # until a set_interval command changes it
    join_rx_delay_s: float = JOIN_RX_DELAY_S  # must match the gateway's join.join_rx_delay_s
    rx_early_s: float = 0.02  # open the receiver this much before the window is due
    rx_window_s: float = 0.25  # a preamble must start within this long after opening
    join_backoff_min_s: float = 2.0
    join_backoff_max_s: float = 60.0
    join_jitter: float = 1.0  # share of a join wait taken off at random (1: 0..ceiling)
    # The world powers its nodes up at random moments itself (WorldSettings.start_spread_s).
    join_start_spread_s: float = 0.0
    retry_min_s: float = 2.0  # first retransmission of an unacked uplink
    retry_max_s: float = 60.0
    next_uplink_gap_s: float = 1.0  # after an ack, before the next queued uplink
    jitter: float = 0.5  # every uplink wait is shortened by up to this fraction, at random
    queue_size: int = 16  # unacked uplinks kept; the oldest report is dropped beyond it
    max_attempts: int = 30  # transmissions of one uplink before it is given up
    rejoin_after_unacked: int = 12  # consecutive unacked transmissions that end the session
    remembered_commands: int = 16  # command refs whose result is kept to answer repeats
    counter_block: int = 64  # frame and report counters reserved per flash write
    # Share of time on air: after a frame of t seconds the node keeps quiet t * (1/d - 1).
    # 1.0 (no limit) because tests compress minutes into seconds; a field node uses its
    # sub-band's (0.01 in most of EU868).
    duty_cycle: float = 1.0

    def __post_init__(self) -> None:
        if self.queue_size < 16:
            raise ValueError("queue_size must be at least 16")
        self.session_config()  # the library's own checks

    def session_config(self) -> ns.NodeConfig:
        return ns.NodeConfig(
            join_rx_delay_s=self.join_rx_delay_s,
            rx_early_s=self.rx_early_s,
            rx_window_s=self.rx_window_s,
            join_backoff_min_s=self.join_backoff_min_s,
            join_backoff_max_s=self.join_backoff_max_s,
            join_jitter=self.join_jitter,
            join_start_spread_s=self.join_start_spread_s,
            retry_min_s=self.retry_min_s,
            retry_max_s=self.retry_max_s,
            next_uplink_gap_s=self.next_uplink_gap_s,
            jitter=self.jitter,
            queue_size=self.queue_size,
            max_attempts=self.max_attempts,
            rejoin_after_unacked=self.rejoin_after_unacked,
            remembered_commands=self.remembered_commands,
            counter_block=self.counter_block,
            duty_cycle=self.duty_cycle,
        )


@dataclass(frozen=True, slots=True)
class PendingUplink:
    """A view of one queued uplink of the library (``node.session``)."""

    kind: str  # "report" or "result"
    body: dict[str, Any]  # the report body ({} for a result)
    command_ref: int
    counter: int | None  # frame counter, once framed
    frame: bytes | None
    attempts: int

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "body": self.body,
            "command_ref": self.command_ref,
            "counter": self.counter,
            "frame": self.frame.hex() if self.frame is not None else None,
            "attempts": self.attempts,
        }


@dataclass(frozen=True, slots=True)
class ExecutedCommand:
    ref: int
    action: str
    params: dict[str, Any]
    arrival_ttl_s: float  # time left to live as received
    status: ResultCode


@dataclass(slots=True)
class NodeStats:
    join_attempts: int = 0
    joins: int = 0
    join_refusals: int = 0
    transmissions: int = 0
    reports_sent: int = 0  # distinct reports transmitted at least once
    retransmissions: int = 0
    acks_received: int = 0
    reports_dropped: int = 0  # dropped from a full queue
    uplinks_given_up: int = 0  # max_attempts reached
    results_sent: int = 0
    commands_executed: int = 0
    commands_failed: int = 0
    commands_expired: int = 0
    commands_repeated: int = 0  # a ref seen before: result sent again, not executed again
    downlinks_rejected: int = 0
    foreign_frames: int = 0  # heard in a receive window but meant for someone else
    sessions_lost: int = 0  # rejoin_after_unacked reached
    crc_errors: int = 0  # packets the radio dropped with a payload CRC error
    extra: dict[str, int] = field(default_factory=dict, repr=False)


class NodeStateError(ValueError):
    """A node state file that cannot be used (corrupt, or another node's)."""


# How often the main loop polls the radio while it transmits or listens when DIO0 is wired
# (a safety net: DIO0 wakes it at TxDone and RxDone), and when it is not.
POLL_WITH_DIO0_S = 0.5
POLL_WITHOUT_DIO0_S = 0.005


class SimNode:
    """Simulated node firmware on the node library: joins, periodic confirmed reports,
    commands. ``radio``: a ``node.radio`` radio, configured; ``dio0``: a pin with ``irq``
    (``machine.Pin``-like) that rises on TxDone and RxDone, or None to poll."""

    def __init__(
        self,
        eui: int,
        root_key: bytes,
        radio: Any,
        *,
        config: NodeConfig | None = None,
        state_path: Path | None = None,
        rng: random.Random | None = None,
        random_bytes: Callable[[int], bytes] = secrets.token_bytes,
        dio0: Any = None,
        chip: SimulatedSX127x | None = None,
        ledger: NodeLedger | None = None,
    ) -> None:
        self.eui = eui
        self.root_key = root_key
        self._radio = radio
        self.chip = chip
        self.config = config or NodeConfig()
        self.state_path = state_path
        self._rng = rng or random.Random(eui)
        self.relay = False
        self.interval_s = self.config.report_interval_s
        self.executed: list[ExecutedCommand] = []
        self._stats = NodeStats()
        self._flash = (
            NodeStore.at(str(state_path.with_suffix(".flash"))) if state_path is not None else None
        )
        record = None
        if state_path is not None and state_path.exists():
            record = self._load(state_path)
        self.node = TellingNode(
            eui.to_bytes(8, "big"),
            root_key,
            random_bytes,
            config=self.config.session_config(),
            record=record,
        )
        self._notes = NodeNotes(ledger, self.device_id, self.node) if ledger else None
        self.runner = Runner(
            self.node,
            radio,
            store=self._flash,
            execute=self._run_command,
            on_event=self._on_event,
            before_transmit=self._before_transmit,
            poll_s=POLL_WITH_DIO0_S if dio0 is not None else POLL_WITHOUT_DIO0_S,
        )
        self._dio0 = dio0
        self._woken: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._stopping = False
        self._next_report_at = 0.0
        self._dirty = False

    @classmethod
    def on_medium(
        cls,
        eui: int,
        root_key: bytes,
        medium: RfMedium,
        settings: RadioSettings,
        *,
        position: Position,
        name: str | None = None,
        **options: Any,
    ) -> SimNode:
        """A node on its own simulated SX127x at ``position``, driven by node/sx127x.py."""
        chip = SimulatedSX127x(
            medium.loop, medium, position=position, name=name or f"node-{eui:016x}"
        )
        spi, cs, reset, dio0 = wire(chip)
        radio = Sx127x(spi, cs, reset, dio0)
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
        radio.sleep()
        return cls(eui, root_key, radio, dio0=dio0, chip=chip, **options)

    def close(self) -> None:
        """Take the node's chip off the medium."""
        if self.chip is not None:
            self.chip.detach()

    # ---------------------------------------------------------------------------- views

    @property
    def radio(self) -> Any:
        return self._radio

    @radio.setter
    def radio(self, radio: Any) -> None:
        """Put a wrapper around the radio (a fault at the radio, for tests)."""
        self._radio = radio
        self.runner.radio = radio

    @property
    def device_id(self) -> str:
        return lora_device_id(self.eui)

    @property
    def joined(self) -> bool:
        return self.node.joined

    @property
    def address(self) -> int | None:
        return self.node.address

    @property
    def report_counter(self) -> int:
        """The number of the last report made (reports count 1, 2, ... across sessions; after
        a power cycle they continue above the block reserved in flash)."""
        return self.node.report_next - 1

    @property
    def last_rssi(self) -> float | None:
        return self.node.last_rssi

    @property
    def pending(self) -> list[PendingUplink]:
        return [
            PendingUplink(
                uplink.kind,
                dict(uplink.body) if uplink.body is not None else {},
                uplink.number if uplink.kind == "result" else 0,
                uplink.counter if uplink.counter >= 0 else None,
                uplink.frame,
                uplink.attempts,
            )
            for uplink in self.node.queue
        ]

    @property
    def stats(self) -> NodeStats:
        own = self._stats
        library = self.node.stats
        own.join_attempts = library["join_attempts"]
        own.joins = library["joins"]
        own.join_refusals = library["join_refusals"]
        own.transmissions = library["transmissions"]
        own.retransmissions = library["retransmissions"]
        own.acks_received = library["acks"]
        own.commands_expired = library["commands_expired"]
        own.commands_repeated = library["commands_repeated"]
        own.downlinks_rejected = library["downlinks_rejected"]
        own.foreign_frames = library["foreign_frames"]
        own.sessions_lost = library["sessions_lost"]
        own.crc_errors = getattr(self.radio, "crc_errors", 0)
        return own

    # ------------------------------------------------------------------------- main loop

    async def run(self) -> None:
        """Power on and run until ``stop()`` (or cancellation; the state is always whole).

        A stop requested before ``run`` starts ends it at once; a node that stopped can be
        run again (powered on), continuing from its state.
        """
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._woken = asyncio.Event()
        if self._dio0 is not None:
            self._dio0.irq(handler=self._on_dio0, trigger=self._dio0.IRQ_RISING)
        self._next_report_at = loop.time()
        try:
            while not self._stopping:
                now = loop.time()
                if now >= self._next_report_at:
                    self._make_report(now)
                    self._next_report_at = now + self.interval_s
                wake = self.runner.step(now)
                self._save_if_dirty()
                until = self._next_report_at if wake is None else min(wake, self._next_report_at)
                await self._sleep(until - loop.time())
        finally:
            if self._dio0 is not None:
                self._dio0.irq(handler=None)
            self._stopping = False  # used up: a later run() powers the node on again

    def stop(self) -> None:
        self._stopping = True
        if self._woken is not None:
            self._wake()

    def _on_dio0(self, pin: Any) -> None:
        self.runner.interrupt()
        loop = self._loop
        if loop is None:
            return
        if threading.get_ident() == self._loop_thread:
            self._wake()
        else:
            loop.call_soon_threadsafe(self._wake)

    def _wake(self) -> None:
        if self._woken is not None:
            self._woken.set()

    async def _sleep(self, seconds: float) -> None:
        woken = self._woken
        assert woken is not None
        if seconds <= 0 or not math.isfinite(seconds):
            await asyncio.sleep(0)
            return
        if woken.is_set():
            woken.clear()
            return
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await woken.wait()
        woken.clear()

    # ------------------------------------------------------------------- application

    def _temperature(self) -> float:
        return round(20.0 + self._rng.gauss(0.0, 1.5), 1)

    def _make_report(self, now: float) -> None:
        self.runner.report({"temperature_c": self._temperature(), "relay": self.relay}, now)
        self._dirty = True

    def _run_command(self, command: Any) -> tuple[int, str | None]:
        status, detail = self._execute(command.action, command.params)
        if status is ResultCode.EXECUTED:
            self._stats.commands_executed += 1
        else:
            self._stats.commands_failed += 1
        self.executed.append(
            ExecutedCommand(
                command.ref, command.action, dict(command.params), command.ttl_ds / 10, status
            )
        )
        self._dirty = True
        return int(status), detail

    def _execute(self, action: str, params: dict[str, Any]) -> tuple[ResultCode, str | None]:
        if action == "relay":
            on = params.get("on")
            if not isinstance(on, bool) or set(params) != {"on"}:
                return ResultCode.FAILED, 'params must be {"on": true|false}'
            self.relay = on
            return ResultCode.EXECUTED, None
        if action == "set_interval":
            seconds = params.get("seconds")
            if (
                isinstance(seconds, bool)
                or not isinstance(seconds, (int, float))
                or not 0 < seconds <= 86_400
                or set(params) != {"seconds"}
            ):
                return ResultCode.FAILED, 'params must be {"seconds": 0 < n <= 86400}'
            self.interval_s = float(seconds)
            self._next_report_at = asyncio.get_running_loop().time() + self.interval_s
            return ResultCode.EXECUTED, None
        if action == "ping":
            return ResultCode.EXECUTED, "pong"
        return ResultCode.FAILED, f"unknown action {action[:32]!r}"

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ns.Dropped):
            if event.kind == "report" and event.reason == "full":
                self._stats.reports_dropped += 1
            else:
                self._stats.uplinks_given_up += 1
        if self._notes is not None:
            self._notes.event(event)
        self._dirty = True

    def _before_transmit(self, kind: str, frame: bytes) -> None:
        queue = self.node.queue
        if kind != "join" and queue and queue[0].frame == frame and queue[0].attempts == 1:
            if kind == "report":
                self._stats.reports_sent += 1
                if self._notes is not None:
                    self._notes.report(queue[0])
            else:
                self._stats.results_sent += 1
        self._save()  # what is about to go on air is on record first

    # ----------------------------------------------------------------------------- state

    def _state(self) -> dict[str, Any]:
        return {
            "eui": f"{self.eui:016x}",
            "root_key": self.root_key.hex(),
            "address": self.address,
            "report_counter": self.report_counter,
            "pending": [uplink.to_json() for uplink in self.pending],
            "recent_commands": [list(entry) for entry in self.node.commands],
            "relay": self.relay,
            "interval_s": self.interval_s,
        }

    def _save_if_dirty(self) -> None:
        if self._dirty:
            self._save()

    def _save(self) -> None:
        self._dirty = False
        if self.state_path is None:
            return
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(self._state(), indent=1))
        os.replace(temporary, self.state_path)

    def _load(self, path: Path) -> Any:
        """The library's record from flash, after restoring the application's state."""
        try:
            data = json.loads(path.read_text())
            if int(data["eui"], 16) != self.eui or bytes.fromhex(data["root_key"]) != self.root_key:
                raise NodeStateError(f"{path}: holds the state of another node")
            self.relay = bool(data["relay"])
            self.interval_s = float(data["interval_s"])
        except NodeStateError:
            raise
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            raise NodeStateError(f"{path}: unreadable node state: {exc!r}") from None
        assert self._flash is not None
        return self._flash.load()
