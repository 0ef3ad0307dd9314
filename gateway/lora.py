"""The LoRa side of the bridge: radio frames in, reports and command results out.

This is the I/O shell around the pure ``NetworkCore``: it feeds received frames to the core,
carries out the actions it returns (store the report durably, then ack in the node's receive
window; answer joins; resolve commands), persists leases, and sends each device's queued
commands in the receive window that follows the device's uplink.

Timing: a node opens its receive window ``rx_delay_s`` after the end of its uplink, which is
when the gateway's chip raised RxDone. The downlink is started at ``RxDone + rx_delay_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import threading
import time
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers.radio.base import Radio, RadioError, RxPacket
from gateway.config import Config
from gateway.devices import DeviceInfo, DeviceSink
from gateway.model import Command, CommandResult, CommandStatus, EventKind
from gateway.protocol import expiry
from gateway.protocol.airtime import time_on_air_s
from gateway.protocol.dutycycle import DutyCycle
from gateway.protocol.frames import DownlinkCommand, FrameRejected
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    JoinRefused,
    LeaseReclaimed,
    NetworkCore,
    ReportReceived,
)
from gateway.registry import load_join
from gateway.state import Direction, FrameLogEntry, GatewayState
from gateway.store.db import StoreError, open_database
from gateway.store.leases import LeaseStore, open_core

log = logging.getLogger("duogate.lora")

LORA_ACTIONS = ("relay", "set_interval", "ping")
# Offered as controls in Home Assistant: ping (a button) and set_interval (a number, with no
# reading to show). The relay is switched through its field.
LORA_CONTROL_ACTIONS = ("ping", "set_interval")
LORA_FIELDS: dict[str, dict[str, Any]] = {
    "temperature_c": {"unit": "°C", "device_class": "temperature", "type": "float"},
    "relay": {"type": "bool", "writable": True, "action": "relay", "param": "on"},
    "counter": {"type": "int"},
}
# Start the downlink this much before the window is due: SPI and scheduling take a moment.
TX_LEAD_S = 0.005
REF_RESERVATION = 256
STORED_IDS_PER_DEVICE = 32

ProgressCallback = Callable[[Command, CommandStatus, str | None], None]


@dataclass(slots=True)
class PendingCommand:
    command: Command
    ref: int
    future: asyncio.Future[CommandResult]
    sent_at: float | None = None  # monotonic time of the last transmission
    transmissions: int = 0
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True)
class DeviceQueue:
    commands: deque[PendingCommand] = field(default_factory=deque)
    stored_report_ids: deque[str] = field(
        default_factory=lambda: deque(maxlen=STORED_IDS_PER_DEVICE)
    )


class CommandRefs:
    """Per-device 16-bit command references that never repeat, also across restarts.

    A node remembers recent references to answer repeats without executing twice, so a
    reference reused after a restart would make it skip a new command. Blocks of references
    are reserved on disk ahead of use, as with downlink counters.
    """

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        conn.execute(
            "CREATE TABLE IF NOT EXISTS lora_command_refs "
            "(device TEXT PRIMARY KEY, reserved INTEGER NOT NULL)"
        )
        self._next: dict[str, int] = {}
        self._limit: dict[str, int] = {}
        # take() runs in worker threads; two at once must not hand out the same reference.
        self._lock = threading.Lock()
        for device, reserved in conn.execute("SELECT device, reserved FROM lora_command_refs"):
            self._next[device] = self._limit[device] = int(reserved)

    def take(self, device: str) -> int:
        with self._lock:
            value = self._next.get(device, 0)
            if value >= self._limit.get(device, 0):
                limit = value + REF_RESERVATION
                self._conn.execute(
                    "INSERT INTO lora_command_refs (device, reserved) VALUES (?, ?) "
                    "ON CONFLICT(device) DO UPDATE SET reserved = excluded.reserved",
                    (device, limit),
                )
                self._limit[device] = limit
            self._next[device] = value + 1
            return value % 0x10000


class LoraNetwork:
    """A ``DeviceDriver`` for the LoRa nodes behind one radio."""

    kind = "lora"

    def __init__(
        self,
        config: Config,
        radio: Radio,
        state: GatewayState,
        *,
        progress: ProgressCallback | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.radio = radio
        self.state = state
        self.progress = progress
        self._mono = monotonic
        self._wall = wall
        self.duty = DutyCycle(config.radio.region)
        self.counters: Counter[str] = Counter()
        self.policy = expiry.ExpiryPolicy.from_config(config.commands)
        self._queues: dict[str, DeviceQueue] = {}
        self._sink: DeviceSink | None = None
        self._core: NetworkCore | None = None
        self._leases: LeaseStore | None = None
        self._refs: CommandRefs | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._flush_task: asyncio.Task[None] | None = None
        self._lease_lock = asyncio.Lock()
        self._registry: set[str] = set()
        self._last_heard: dict[str, float] = {}  # device -> monotonic time of its last uplink
        self._offline: set[str] = set()

    # ------------------------------------------------------------------ DeviceDriver

    @property
    def core(self) -> NetworkCore:
        if self._core is None:
            raise RuntimeError("LoRa network not started")
        return self._core

    async def start(self, sink: DeviceSink) -> None:
        self._sink = sink
        settings, registry = load_join(self.config)
        from gateway.model import lora_device_id

        self._registry = {lora_device_id(eui) for eui in registry}
        data_dir = self.config.gateway.data_dir
        self._leases = await asyncio.to_thread(LeaseStore.open, data_dir)
        self._core = await asyncio.to_thread(open_core, self._leases, settings, registry)
        self._refs = await asyncio.to_thread(_open_refs, data_dir)
        for info in self._core.leases():
            node = self.state.node(info.device_id, "lora")
            node.address = info.address
            node.last_seen = info.last_seen or None
            self._last_heard[info.device_id] = self._mono()
        await self.radio.open(self._on_receive)
        self._flush_task = asyncio.create_task(self._flush_leases_forever(), name="lease-flush")
        log.info(
            "LoRa network up: %d leases, %d free addresses",
            len(self._core.leases()),
            self._core.free_addresses,
        )

    async def stop(self) -> None:
        if self._flush_task is not None:
            self._flush_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flush_task
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for queue in self._queues.values():
            for pending in queue.commands:
                if not pending.future.done():
                    pending.future.set_exception(asyncio.CancelledError())
        with contextlib.suppress(RadioError):
            await self.radio.close()
        if self._leases is not None and self._core is not None:
            with contextlib.suppress(StoreError):
                await self._flush_leases()
            await asyncio.to_thread(self._leases.close)

    def devices(self) -> list[DeviceInfo]:
        ids = {info.device_id for info in self._core.leases()} if self._core else set()
        return [
            DeviceInfo(device, "lora", device, dict(LORA_FIELDS), LORA_CONTROL_ACTIONS)
            for device in sorted(ids | self._registry)
        ]

    def owns(self, device: str) -> bool:
        if not device.startswith("lora-"):
            return False
        return device in self._registry or (
            self._core is not None and self._core.lease(device) is not None
        )

    def refusal(self, command: Command) -> str | None:
        """Why the command cannot be taken at all (checked before it is accepted), else None."""
        if command.action not in LORA_ACTIONS:
            return "unknown_action"
        if self._core is None or self._core.lease(command.device) is None:
            return "device_not_joined"
        return None

    async def execute(self, command: Command) -> CommandResult:
        """Queue the command for the device's next receive window and wait for its outcome."""
        refused = self.refusal(command)
        if refused is not None:
            return self._result(command, CommandStatus.REJECTED, refused)
        queue = self._queues.setdefault(command.device, DeviceQueue())
        if len(queue.commands) >= self.config.commands.queue_per_device:
            return self._result(command, CommandStatus.REJECTED, "queue_full")
        assert self._refs is not None
        ref = await asyncio.to_thread(self._refs.take, command.device)
        loop = asyncio.get_running_loop()
        pending = PendingCommand(command, ref, loop.create_future())
        queue.commands.append(pending)
        self.state.node(command.device, "lora").pending_commands = len(queue.commands)
        self._arm_timer(pending, command.deadline, queue)
        try:
            return await pending.future
        finally:
            if pending.timer is not None:
                pending.timer.cancel()
            with contextlib.suppress(ValueError):
                queue.commands.remove(pending)
            self.state.node(command.device, "lora").pending_commands = len(queue.commands)

    # ------------------------------------------------------------------ command timing

    def _arm_timer(self, pending: PendingCommand, at_mono: float, queue: DeviceQueue) -> None:
        loop = asyncio.get_running_loop()
        delay = max(0.0, at_mono - self._mono())
        pending.timer = loop.call_later(delay, self._on_command_timer, pending)

    def _on_command_timer(self, pending: PendingCommand) -> None:
        if pending.future.done():
            return
        command = pending.command
        if pending.sent_at is None:
            pending.future.set_result(
                self._result(
                    command, CommandStatus.EXPIRED, expiry.EXPIRED_REASONS[expiry.Stage.QUEUE]
                )
            )
            return
        # Sent at least once: the node may still answer; wait a while past the deadline.
        answer_by = (
            max(command.deadline, pending.sent_at) + self.config.commands.node_answer_timeout_s
        )
        if self._mono() >= answer_by - 1e-3:
            pending.future.set_result(
                self._result(command, CommandStatus.TIMEOUT, "no_answer_from_node")
            )
            return
        loop = asyncio.get_running_loop()
        pending.timer = loop.call_later(answer_by - self._mono(), self._on_command_timer, pending)

    def _result(self, command: Command, status: CommandStatus, detail: str | None) -> CommandResult:
        return CommandResult(command.id, command.device, status, self._wall(), detail)

    # ------------------------------------------------------------------ receive path

    def _on_receive(self, packet: RxPacket) -> None:
        state = self.state
        state.count_received()
        try:
            actions = self.core.receive(packet.payload, self._wall())
        except FrameRejected as exc:
            state.count_rejected(exc.reason)
            state.log_frame(
                FrameLogEntry(
                    self._wall(),
                    Direction.UP,
                    "?",
                    f"rejected:{exc.reason}",
                    packet.rssi,
                    packet.snr,
                    len(packet.payload),
                )
            )
            log.debug("frame rejected (%s): %s", exc.reason, exc)
            return
        for action in actions:
            self._spawn(self._handle(action, packet))

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("LoRa frame handling failed: %r", task.exception())

    async def _handle(self, action: Any, packet: RxPacket) -> None:
        if isinstance(action, ReportReceived | CommandResultReceived):
            await self._heard(action.device_id, packet.t_mono)
        if isinstance(action, ReportReceived):
            await self._on_report(action, packet)
        elif isinstance(action, CommandResultReceived):
            await self._on_command_result(action, packet)
        elif isinstance(action, JoinAccepted):
            self._last_heard[action.lease.device_id] = packet.t_mono
            self._offline.discard(action.lease.device_id)
            await self._on_join_accepted(action, packet)
        elif isinstance(action, JoinRefused):
            await self._on_join_refused(action, packet)
        elif isinstance(action, LeaseReclaimed):
            log.info("address 0x%04x of inactive %s reclaimed", action.address, action.device_id)
            self.state.nodes.pop(action.device_id, None)

    async def _on_report(self, report: ReportReceived, packet: RxPacket) -> None:
        assert self._sink is not None
        # The node's address is already in the state (set at join and at start-up).
        self.state.note_uplink(
            report.device_id,
            "lora",
            rssi=packet.rssi,
            snr=packet.snr,
            data=report.body,
            duplicate=report.duplicate,
        )
        self._log_up(
            report.device_id, "report" + (" (dup)" if report.duplicate else ""), packet, report.body
        )
        queue = self._queues.setdefault(report.device_id, DeviceQueue())
        if report.report_id not in queue.stored_report_ids:
            try:
                await self._sink.report(
                    report.device_id,
                    "lora",
                    report.body,
                    rssi=packet.rssi,
                    snr=packet.snr,
                    seq=report.counter,
                    report_id=report.report_id,
                )
            except Exception as exc:  # the outbox refused: no ack, the node retransmits
                self.counters["report_not_stored"] += 1
                log.warning("report %s not stored, not acked: %s", report.report_id, exc)
                return
            queue.stored_report_ids.append(report.report_id)
        await self._answer_in_window(
            report.device_id,
            packet,
            report.rx_delay_s,
            ack_counter=report.counter if report.confirmed else None,
        )

    async def _on_command_result(self, result: CommandResultReceived, packet: RxPacket) -> None:
        self.state.note_uplink(
            result.device_id, "lora", rssi=packet.rssi, snr=packet.snr, duplicate=result.duplicate
        )
        self._log_up(
            result.device_id,
            "result",
            packet,
            {"ref": result.command_ref, "status": str(result.status)},
        )
        queue = self._queues.get(result.device_id)
        if queue is not None and not result.duplicate:
            for pending in queue.commands:
                if pending.ref == result.command_ref and not pending.future.done():
                    pending.future.set_result(
                        CommandResult(
                            pending.command.id,
                            pending.command.device,
                            result.status,
                            self._wall(),
                            result.detail,
                        )
                    )
                    break
        await self._answer_in_window(
            result.device_id,
            packet,
            result.rx_delay_s,
            ack_counter=result.counter if result.confirmed else None,
        )

    async def _on_join_accepted(self, join: JoinAccepted, packet: RxPacket) -> None:
        device = join.lease.device_id
        self._log_up(device, "join", packet, {"rejoin": join.rejoin, "repeated": join.repeated})
        try:
            await self._flush_leases()  # the lease is on disk before the node can use it
        except StoreError as exc:
            log.error("join of %s not answered: lease not stored: %s", device, exc)
            return
        node = self.state.node(device, "lora")
        node.address = join.lease.address
        sent = await self._transmit_at(
            packet.t_mono + join.send_after_s,
            join.frame,
            device,
            "join-accept",
            {"address": f"0x{join.lease.address:04x}"},
        )
        if not join.repeated:
            self.state.count_join(True)
            assert self._sink is not None
            event = EventKind.REJOINED if join.rejoin else EventKind.JOINED
            await self._sink.event(device, event, {"address": join.lease.address})
        if not sent:
            log.info("join accept for %s not sent; the node will retry", device)

    async def _on_join_refused(self, refused: JoinRefused, packet: RxPacket) -> None:
        self._log_up(refused.device_id, "join", packet, None)
        self.state.count_join(False)
        await self._transmit_at(
            packet.t_mono + refused.send_after_s,
            refused.frame,
            refused.device_id,
            "join-refused",
            {"reason": refused.reason},
        )
        assert self._sink is not None
        await self._sink.event(
            refused.device_id, EventKind.JOIN_REJECTED, {"reason": refused.reason}
        )

    # ------------------------------------------------------------------ downlink

    async def _answer_in_window(
        self, device: str, packet: RxPacket, rx_delay_s: float, *, ack_counter: int | None
    ) -> None:
        window = packet.t_mono + rx_delay_s
        pending = self._next_command(device, window)
        if ack_counter is None and pending is None:
            return
        downlink = None
        if pending is not None:
            airtime = self._airtime(64)
            left = pending.command.deadline - window - airtime
            downlink = DownlinkCommand.from_seconds(
                pending.ref, pending.command.action, pending.command.params, left
            )
        try:
            frame = self.core.build_downlink(device, ack_counter, downlink)
        except KeyError:
            return
        except ValueError as exc:  # command does not fit in a frame
            if pending is not None and not pending.future.done():
                pending.future.set_result(
                    self._result(pending.command, CommandStatus.REJECTED, f"too_large: {exc}")
                )
            frame = self.core.build_downlink(device, ack_counter, None)
            pending = None
        body: dict[str, Any] = {}
        if ack_counter is not None:
            body["ack"] = ack_counter
        if pending is not None:
            body["command"] = pending.command.action
            body["ttl_ds"] = downlink.ttl_ds if downlink else 0
        # Last check of the deadline, with the real airtime of this frame.
        if pending is not None:
            reason = expiry.check(
                pending.command, window, self._airtime(len(frame)), stage=expiry.Stage.TRANSMISSION
            )
            if reason is not None:
                if pending.sent_at is None and not pending.future.done():
                    pending.future.set_result(
                        self._result(pending.command, CommandStatus.EXPIRED, reason)
                    )
                if ack_counter is None:
                    return
                frame = self.core.build_downlink(device, ack_counter, None)
                body = {"ack": ack_counter}
                pending = None
        kind = "command" if pending is not None else "ack"
        sent = await self._transmit_at(window, frame, device, kind, body)
        if sent and pending is not None and not pending.future.done():
            first = pending.sent_at is None
            pending.sent_at = self._mono()
            pending.transmissions += 1
            if first:
                if pending.timer is not None:
                    pending.timer.cancel()
                queue = self._queues[device]
                self._arm_timer(pending, pending.command.deadline, queue)
                if self.progress is not None:
                    self.progress(pending.command, CommandStatus.SENT, None)

    def _next_command(self, device: str, window: float) -> PendingCommand | None:
        queue = self._queues.get(device)
        if queue is None:
            return None
        for pending in queue.commands:
            if pending.future.done():
                continue
            reason = expiry.check(
                pending.command, window, self._airtime(32), stage=expiry.Stage.QUEUE
            )
            if reason is None:
                return pending
            if pending.sent_at is None:
                pending.future.set_result(
                    self._result(pending.command, CommandStatus.EXPIRED, reason)
                )
            # A command already sent is not sent again once its time is up; its outcome is
            # the node's answer or, failing that, ``timeout``.
        return None

    def _airtime(self, size: int) -> float:
        s = self.radio.settings
        return time_on_air_s(
            size,
            s.spreading_factor,
            s.bandwidth_hz,
            s.coding_rate,
            s.preamble_length,
            not s.implicit_header,
            s.crc,
        )

    async def _transmit_at(
        self, at_mono: float, frame: bytes, device: str, kind: str, body: dict[str, Any] | None
    ) -> bool:
        delay = at_mono - TX_LEAD_S - self._mono()
        if delay < -0.05:
            self.counters["missed_window"] += 1
            log.warning(
                "%s for %s missed its receive window by %.0f ms", kind, device, -delay * 1000
            )
            return False
        if delay > 0:
            await asyncio.sleep(delay)
        freq = self.radio.settings.frequency_hz
        airtime = self._airtime(len(frame))
        now = self._mono()
        if not self.duty.can_transmit(freq, airtime, now):
            self.counters["duty_cycle_blocked"] += 1
            log.warning("%s for %s not sent: duty-cycle budget used up", kind, device)
            return False
        try:
            airtime = await self.radio.transmit(frame)
        except RadioError as exc:
            self.counters["tx_failed"] += 1
            log.error("%s for %s not sent: %s", kind, device, exc)
            return False
        self.duty.record(freq, airtime, now)
        self.state.count_sent()
        self.state.note_downlink(device, "lora")
        self.state.log_frame(
            FrameLogEntry(self._wall(), Direction.DOWN, device, kind, None, None, len(frame), body)
        )
        return True

    def duty_cycle_used(self) -> dict[str, float]:
        freq = self.radio.settings.frequency_hz
        band = self.duty.sub_band(freq)
        name = (
            f"{band.low_hz / 1e6:.1f}-{band.high_hz / 1e6:.2f}MHz" if band is not None else "none"
        )
        return {name: self.duty.used_fraction(freq, self._mono())}

    # ------------------------------------------------------------------ leases

    async def _flush_leases(self) -> None:
        assert self._leases is not None
        async with self._lease_lock:
            # The core is only touched on the loop (it changes with every uplink); only the
            # write runs in a thread.
            records = self.core.take_dirty()
            if not records:
                return
            try:
                await asyncio.to_thread(self._leases.save, records)
            except StoreError:
                self.core.mark_dirty(record.eui for record in records)
                raise

    async def _flush_leases_forever(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._flush_leases()
            except StoreError as exc:
                log.error("leases not saved (will retry): %s", exc)
            try:
                await self._mark_silent_offline()
            except Exception as exc:  # the event was not stored (disk full): next second
                log.error("offline event not stored (will retry): %s", exc)

    # ------------------------------------------------------------------ presence

    async def _heard(self, device: str, t_mono: float) -> None:
        self._last_heard[device] = t_mono
        if device in self._offline:
            self._offline.discard(device)
            assert self._sink is not None
            await self._sink.event(device, EventKind.ONLINE, {})

    async def _mark_silent_offline(self) -> None:
        """A node not heard for ``join.offline_after_s`` is reported ``offline`` once."""
        limit = self.config.join.offline_after_s
        if limit <= 0 or self._sink is None:
            return
        now = self._mono()
        for device, heard in list(self._last_heard.items()):
            if device not in self._offline and now - heard > limit:
                log.info("%s not heard for %.0f s: offline", device, now - heard)
                await self._sink.event(device, EventKind.OFFLINE, {"silent_s": round(now - heard)})
                self._offline.add(device)

    def _log_up(self, device: str, kind: str, packet: RxPacket, body: Any) -> None:
        self.state.log_frame(
            FrameLogEntry(
                self._wall(),
                Direction.UP,
                device,
                kind,
                packet.rssi,
                packet.snr,
                len(packet.payload),
                body,
            )
        )


def _open_refs(data_dir: Path) -> CommandRefs:
    return CommandRefs(open_database(data_dir))
