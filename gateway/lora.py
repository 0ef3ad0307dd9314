"""The LoRa side of the bridge: radio frames in, reports and command results out.

The I/O shell around two pure parts: ``NetworkCore`` (joins, sessions, uplink verification)
and ``DownlinkScheduler`` (what goes on air in each receive window, command queues, expiry,
duty cycle). Received frames go to the core; reports go to the sink (a confirmed one must be
safe, on disk or taken by every upstream, by the time the scheduler's ``store_by`` gives, just
before its ack goes on air); the scheduler's actions are carried out in order: transmit at a
given time, write leases or command reference reservations, answer the waiting ``execute``
calls, arm its one timer. Leases and reservations live in the journal's database; changed
leases ride its next commit, due within ``LEASE_SYNC_S`` of an uplink.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable
from typing import Any

from drivers.radio.base import Radio, RadioError, RxPacket
from gateway.config import Config
from gateway.devices import DeviceInfo, DeviceSink
from gateway.fleet.role import SERVED_ELSEWHERE, FleetRole, Uplink
from gateway.model import Command, CommandResult, CommandStatus, EventKind, lora_device_id
from gateway.protocol import frames
from gateway.protocol.downlink import TX_LEAD_S as TX_LEAD_S
from gateway.protocol.downlink import (
    Action,
    CommandQueued,
    CommandSent,
    DownlinkScheduler,
    DownlinkSettings,
    PersistLeases,
    ReserveCommandRefs,
    ResolveCommand,
    Transmit,
    WakeAt,
)
from gateway.protocol.dutycycle import DutyCycle
from gateway.protocol.frames import AirFrameType, FrameRejected
from gateway.protocol.join import LeaseRecord
from gateway.protocol.presence import Presence
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    JoinRefused,
    LeaseInfo,
    LeaseReclaimed,
    NetworkCore,
    ReportReceived,
)
from gateway.registry import load_join
from gateway.state import Direction, FrameLogEntry, GatewayState
from gateway.store.command_refs import CommandRefStore
from gateway.store.db import StoreError
from gateway.store.journal import Journal
from gateway.store.leases import LEASE_SYNC_S, LeaseStore, LeaseWriter, open_core
from gateway.tasks import TaskSet, cancel_and_wait

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
STORED_IDS_PER_DEVICE = 32

ProgressCallback = Callable[[Command, CommandStatus, str | None], None]


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
        journal: Journal | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``journal``: the database shared with the bridge's outbox (default: its own)."""
        self.config = config
        self.radio = radio
        self.state = state
        self.progress = progress
        self._mono = monotonic
        self._wall = wall
        self.duty = DutyCycle(config.radio.region)  # handed to the scheduler at start
        self.counters: Counter[str] = Counter()
        self._sink: DeviceSink | None = None
        self._core: NetworkCore | None = None
        self._scheduler: DownlinkScheduler | None = None
        self._journal = journal if journal is not None else Journal(config.gateway.data_dir)
        self._lease_writer: LeaseWriter | None = None
        self._refs: CommandRefStore | None = None
        self._waiting: dict[int, asyncio.Future[CommandResult]] = {}  # id(command) -> outcome
        self._timer: asyncio.TimerHandle | None = None
        self._stopping = False
        self._stored_report_ids: dict[str, deque[str]] = {}
        self._tasks = TaskSet(log, "LoRa frame handling failed")
        self._presence_task: asyncio.Task[None] | None = None
        self._registry: set[str] = set()
        self.presence = Presence(config.join.offline_after_s)
        self.fleet: FleetRole | None = None  # set before start(), when in a fleet
        self._fleet_refs: Callable[[str, str, set[int]], int] | None = None

    # ------------------------------------------------------------------ DeviceDriver

    @property
    def core(self) -> NetworkCore:
        if self._core is None:
            raise RuntimeError("LoRa network not started")
        return self._core

    @property
    def scheduler(self) -> DownlinkScheduler:
        if self._scheduler is None:
            raise RuntimeError("LoRa network not started")
        return self._scheduler

    async def start(self, sink: DeviceSink) -> None:
        self._sink = sink
        settings, registry = load_join(self.config)
        self._registry = {lora_device_id(eui) for eui in registry}
        journal = self._journal
        await journal.open()
        leases = await journal.run(lambda: LeaseStore(journal.conn))
        self._core = await journal.run(open_core, leases, settings, registry)
        self._refs = await journal.run(lambda: CommandRefStore(journal.conn))
        reservations = await journal.run(self._refs.load)
        self._lease_writer = LeaseWriter(self._core, journal)
        journal.register(self._lease_writer)
        commands = self.config.commands
        self._scheduler = DownlinkScheduler(
            self._core,
            DownlinkSettings(commands.queue_per_device, commands.node_answer_timeout_s),
            time_on_air=lambda size: self.radio.settings.time_on_air_s(size),
            frequency_hz=lambda: self.radio.settings.frequency_hz,
            duty=self.duty,
            ref_reservations=reservations,
            ref_of=self._fleet_refs,
        )
        for info in self._core.leases():
            node = self.state.node(info.device_id, "lora")
            node.address = info.address
            node.last_seen = info.last_seen or None
            self.presence.heard(info.device_id, self._mono())
        await self.radio.open(self._on_receive)
        self._presence_task = asyncio.create_task(self._watch_presence(), name="lora-presence")
        log.info(
            "LoRa network up: %d leases, %d free addresses",
            len(self._core.leases()),
            self._core.free_addresses,
        )

    async def stop(self) -> None:
        await cancel_and_wait(self._presence_task)
        self._stopping = True
        if self._timer is not None:
            self._timer.cancel()
        await self._tasks.cancel_all()
        for future in self._waiting.values():
            if not future.done():
                future.set_exception(asyncio.CancelledError())
        with contextlib.suppress(RadioError):
            await self.radio.close()
        if self._lease_writer is not None:
            with contextlib.suppress(StoreError):
                await self._journal.commit()
            self._journal.unregister(self._lease_writer)
            self._lease_writer = None
            with contextlib.suppress(StoreError):
                await self._journal.close()

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
        scheduler = self.scheduler
        actions = scheduler.command_queued(command)
        while isinstance(actions[0], ReserveCommandRefs):
            reserve = actions[0]
            assert self._refs is not None
            await self._journal.run(self._refs.reserve, reserve.device, reserve.up_to)
            scheduler.refs_reserved(reserve.device, reserve.up_to)
            actions = scheduler.command_queued(command)
        if isinstance(actions[0], ResolveCommand):
            return self._result(command, actions[0].status, actions[0].detail)
        # Commands hold a dict (params), so they are not hashable: waiting calls are keyed by
        # identity; the scheduler hands back the same object.
        future = self._waiting[id(command)] = asyncio.get_running_loop().create_future()
        try:
            self._apply(actions)
            return await future
        finally:
            del self._waiting[id(command)]
            self._apply(scheduler.command_withdrawn(command))  # nothing if it had an outcome
            self._note_queue(command.device)

    def _result(self, command: Command, status: CommandStatus, detail: str | None) -> CommandResult:
        return CommandResult(command.id, command.device, status, self._wall(), detail)

    # ------------------------------------------------------------------ scheduler actions

    def _apply(self, actions: Iterable[Action]) -> None:
        """Carry out actions that need no waiting (all but Transmit and PersistLeases)."""
        for action in actions:
            if isinstance(action, ResolveCommand):
                future = self._waiting.get(id(action.command))
                if future is not None and not future.done():
                    future.set_result(self._result(action.command, action.status, action.detail))
            elif isinstance(action, CommandSent):
                if self.progress is not None:
                    self.progress(action.command, CommandStatus.SENT, None)
            elif isinstance(action, CommandQueued):
                self._note_queue(action.command.device)
            elif isinstance(action, WakeAt):
                self._arm_timer(action.at)
            else:
                raise TypeError(f"{type(action).__name__} needs waiting for")

    async def _carry_out(self, actions: Iterable[Action]) -> bool:
        """Carry out actions in order; False if a transmission was not sent. StoreError from
        a PersistLeases: the actions after it are not carried out."""
        all_sent = True
        for action in actions:
            if isinstance(action, PersistLeases):
                await self._journal.commit()  # the lease writer's changes ride it
            elif isinstance(action, Transmit):
                all_sent = await self._transmit(action) and all_sent
            else:
                self._apply([action])
        return all_sent

    def _arm_timer(self, at: float | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if at is not None and not self._stopping:
            delay = max(0.0, at - self._mono())
            self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._apply(self.scheduler.timer_due(self._mono()))

    def _note_queue(self, device: str) -> None:
        self.state.node(device, "lora").pending_commands = self.scheduler.queued(device)

    # ------------------------------------------------------------------ receive path

    def _on_receive(self, packet: RxPacket) -> None:
        self.state.count_received()
        if self.fleet is not None:
            try:
                header = frames.peek(packet.payload)
            except FrameRejected as exc:
                self._rejected(exc, packet)
                return
            if header.type is AirFrameType.JOIN_REQUEST and header.eui is not None:
                self._tasks.spawn(self._fleet_join(lora_device_id(header.eui), packet))
                return
        self._take(packet)

    async def _fleet_join(self, device: str, packet: RxPacket) -> None:
        assert self.fleet is not None
        request = hashlib.sha256(packet.payload).hexdigest()[:16]
        if await self.fleet.join_heard(device, request, packet):
            self._take(packet)
        else:
            self.counters["joins_left_to_fleet"] += 1

    def _take(self, packet: RxPacket) -> None:
        try:
            actions = self.core.receive(packet.payload, self._wall())
        except FrameRejected as exc:
            self._rejected(exc, packet)
            return
        self._journal.due_in(LEASE_SYNC_S)  # the lease's counters changed
        for action in actions:
            self._tasks.spawn(self._handle(action, packet))

    def _rejected(self, exc: FrameRejected, packet: RxPacket) -> None:
        self.state.count_rejected(exc.reason)
        self._log_up("?", f"rejected:{exc.reason}", packet, None)
        log.debug("frame rejected (%s): %s", exc.reason, exc)

    async def _handle(self, action: Any, packet: RxPacket) -> None:
        uplink = isinstance(action, ReportReceived | CommandResultReceived)
        if uplink and self.fleet is not None and not self._served_here(action, packet):
            return
        if uplink and self.presence.heard(action.device_id, packet.t_mono):
            assert self._sink is not None
            await self._sink.event(action.device_id, EventKind.ONLINE, {})
        if isinstance(action, ReportReceived):
            await self._on_report(action, packet)
        elif isinstance(action, CommandResultReceived):
            await self._on_command_result(action, packet)
        elif isinstance(action, JoinAccepted):
            self.presence.heard(action.lease.device_id, packet.t_mono)
            await self._on_join_accepted(action, packet)
        elif isinstance(action, JoinRefused):
            await self._on_join_refused(action, packet)
        elif isinstance(action, LeaseReclaimed):
            log.info("address 0x%04x of inactive %s reclaimed", action.address, action.device_id)
            self.state.nodes.pop(action.device_id, None)

    def _served_here(self, uplink: Uplink, packet: RxPacket) -> bool:
        """In a fleet: True if this gateway serves the device; else the uplink is only noted
        (the fleet tells the owner it was heard here)."""
        assert self.fleet is not None
        lease = self.core.lease(uplink.device_id)
        session = lease.session_id if lease is not None else ""
        if self.fleet.uplink_heard(uplink, session, packet):
            return True
        self.counters["uplinks_served_elsewhere"] += 1
        self.state.note_uplink(
            uplink.device_id, "lora", rssi=packet.rssi, snr=packet.snr, duplicate=uplink.duplicate
        )
        self._log_up(uplink.device_id, "heard (served elsewhere)", packet, None)
        return False

    async def _on_report(self, report: ReportReceived, packet: RxPacket) -> None:
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
        store_by = self.scheduler.store_by(report, packet.t_mono)
        if not await self.store_report(report, packet, store_by):
            return  # no ack: the node retransmits
        await self._carry_out(self.scheduler.uplink_received(report, packet.t_mono))

    async def store_report(
        self, report: ReportReceived, packet: RxPacket, store_by: float | None = None
    ) -> bool:
        """Hand a report to the sink once (retransmissions are not stored again); False if the
        outbox refused it. ``store_by``: when it must be safe (its ack goes on air after)."""
        assert self._sink is not None
        stored = self._stored_report_ids.setdefault(
            report.device_id, deque(maxlen=STORED_IDS_PER_DEVICE)
        )
        if report.report_id in stored:
            return True
        gateways = None
        if self.fleet is not None:
            lease = self.core.lease(report.device_id)
            session = lease.session_id if lease is not None else ""
            if self.fleet.published_before(report.device_id, session, report.counter):
                stored.append(report.report_id)
                log.debug("report %s already published by the fleet", report.report_id)
                return True
            gateways = await self.fleet.receptions(report, session, packet, store_by)
        safe_within_s = None if store_by is None else max(0.0, store_by - self._mono())
        try:
            await self._sink.report(
                report.device_id,
                "lora",
                report.body,
                rssi=packet.rssi,
                snr=packet.snr,
                seq=report.counter,
                report_id=report.report_id,
                safe_within_s=safe_within_s,
                gateways=gateways,
            )
        except Exception as exc:  # the outbox refused: no ack, the node retransmits
            self.counters["report_not_stored"] += 1
            log.warning("report %s not stored, not acked: %s", report.report_id, exc)
            return False
        stored.append(report.report_id)
        log.debug("report %s stored", report.report_id)
        return True

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
        await self._carry_out(self.scheduler.uplink_received(result, packet.t_mono))

    async def _on_join_accepted(self, join: JoinAccepted, packet: RxPacket) -> None:
        device = join.lease.device_id
        self._log_up(device, "join", packet, {"rejoin": join.rejoin, "repeated": join.repeated})
        self.state.node(device, "lora").address = join.lease.address
        try:
            sent = await self._carry_out(self.scheduler.join_answered(join, packet.t_mono))
        except StoreError as exc:
            log.error("join of %s not answered: lease not stored: %s", device, exc)
            return
        if not join.repeated:
            if self.fleet is not None:
                self.fleet.joined(device)
            self.state.count_join(True)
            assert self._sink is not None
            event = EventKind.REJOINED if join.rejoin else EventKind.JOINED
            await self._sink.event(device, event, {"address": join.lease.address})
        if not sent:
            log.info("join accept for %s not sent; the node will retry", device)

    async def _on_join_refused(self, refused: JoinRefused, packet: RxPacket) -> None:
        self._log_up(refused.device_id, "join", packet, None)
        self.state.count_join(False)
        await self._carry_out(self.scheduler.join_answered(refused, packet.t_mono))
        assert self._sink is not None
        await self._sink.event(
            refused.device_id, EventKind.JOIN_REJECTED, {"reason": refused.reason}
        )

    # ------------------------------------------------------------------ transmission

    async def _transmit(self, tx: Transmit) -> bool:
        now = self._mono()
        if now > tx.not_after:
            self.counters["missed_window"] += 1
            log.warning(
                "%s for %s missed its receive window by %.0f ms",
                tx.kind,
                tx.device,
                (now - tx.at) * 1000,
            )
            return False
        if tx.at > now:
            await asyncio.sleep(tx.at - now)
        started = self._mono()
        if not self.scheduler.clear_to_send(tx, started):
            self.counters["duty_cycle_blocked"] += 1
            log.warning("%s for %s not sent: duty-cycle budget used up", tx.kind, tx.device)
            return False
        try:
            airtime = await self.radio.transmit(tx.frame)
        except RadioError as exc:
            self.counters["tx_failed"] += 1
            log.error("%s for %s not sent: %s", tx.kind, tx.device, exc)
            return False
        self.state.count_sent()
        self.state.note_downlink(tx.device, "lora")
        size, body = len(tx.frame), dict(tx.summary)
        self.state.log_frame(
            FrameLogEntry(self._wall(), Direction.DOWN, tx.device, tx.kind, None, None, size, body)
        )
        self._apply(self.scheduler.transmitted(tx, airtime, started))
        return True

    # ------------------------------------------------------------------ fleet

    def use_fleet(self, fleet: FleetRole, ref_of: Callable[[str, str, set[int]], int]) -> None:
        """Serve only the devices ``fleet`` gives this gateway; name command references with
        ``ref_of`` (the same on every gateway). Before ``start``."""
        self.fleet = fleet
        self._fleet_refs = ref_of

    def adopt(self, record: LeaseRecord, dl_from: int = 0) -> LeaseInfo | None:
        """Take a session another gateway of the fleet wrote (kept in the leases here too)."""
        info = self.core.adopt(record, dl_from)
        self._journal.due_in(LEASE_SYNC_S)
        if info is not None:
            self.state.node(info.device_id, "lora").address = info.address
        return info

    def device_left(self, device: str) -> None:
        """Another gateway of the fleet serves ``device`` now: its commands end here, it is no
        longer watched for silence."""
        self._apply(self.scheduler.device_left(device, SERVED_ELSEWHERE))
        self.presence.forget(device)
        self._note_queue(device)

    def session_record(self, device: str) -> LeaseRecord | None:
        return self.core.record(device)

    def duty_cycle_used(self) -> dict[str, float]:
        return self.duty.used_by_band(self.radio.settings.frequency_hz, self._mono())

    # ------------------------------------------------------------------ leases

    async def _watch_presence(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            try:
                await self._mark_silent_offline()
            except Exception as exc:  # the event was not stored (disk full): next second
                log.error("offline event not stored (will retry): %s", exc)

    # ------------------------------------------------------------------ presence

    async def _mark_silent_offline(self) -> None:
        for device, silent_s in self.presence.silent(self._mono()):
            if self._sink is not None:
                log.info("%s not heard for %.0f s: offline", device, silent_s)
                await self._sink.event(device, EventKind.OFFLINE, {"silent_s": round(silent_s)})
                self.presence.reported_offline(device)

    def _log_up(self, device: str, kind: str, packet: RxPacket, body: Any) -> None:
        rssi, snr, size = packet.rssi, packet.snr, len(packet.payload)
        self.state.log_frame(
            FrameLogEntry(self._wall(), Direction.UP, device, kind, rssi, snr, size, body)
        )
