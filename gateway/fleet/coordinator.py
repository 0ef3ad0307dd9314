"""Who serves each LoRa device in a fleet, moved through the broker (docs/FLEET.md).

The rules are in ``gateway.protocol.fleet``; this is their I/O: session records and sightings
in and out (sealed by ``FleetMessages``, through the ``FleetLink``), the waits (gathering
sightings, settling a claim), and the LoRa shell told which devices it serves (``FleetRole``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from drivers.radio.base import RxPacket
from gateway.config import Config, FleetSection
from gateway.config_checks import fleet_key
from gateway.fleet.commands import FleetCommands
from gateway.fleet.kept_commands import KeptCommands
from gateway.fleet.link import FleetLink
from gateway.fleet.messages import FleetMessages
from gateway.fleet.role import Uplink
from gateway.lora import LoraNetwork
from gateway.model import IncomingCommand, lora_device_id
from gateway.protocol.expiry import ExpiryPolicy
from gateway.protocol.fleet import (
    Gather,
    Gatherings,
    Reception,
    SessionRecord,
    Sighting,
    UplinkKey,
    best_placed,
    command_ref,
    decode_record,
    decode_sighting,
    former_owner_publishes,
    handover_target,
)
from gateway.protocol.join import DOWNLINK_RESERVATION
from gateway.protocol.session import ReportReceived, split_report_id
from gateway.tasks import TaskSet

log = logging.getLogger("duogate.fleet")

HEARD_KEPT_PER_DEVICE = 8  # uplinks heard here of a device served elsewhere
# An owner hands a device over when a neighbour heard this many of its uplinks in a row that
# the owner did not (one may just have collided here).
MISSES_BEFORE_HANDOVER = 2
RECORD_CHECK_S = 5.0  # how often downlink reservations of served devices are shared
KEEP_COMMANDS_MARGIN_S = 60.0  # fleet commands are kept this long past the longest time to live
# A kept command whose device's owner is offline this long past the command's deadline (and
# nobody took the device) has no outcome anybody can learn.
UNANSWERED_MARGIN_S = 10.0


class FleetCoordinator:
    """The fleet side of one gateway: implements ``FleetRole`` for the LoRa shell and
    ``FleetGate`` for the link."""

    def __init__(
        self,
        settings: FleetSection,
        gateway: str,
        key: bytes,
        lora: LoraNetwork,
        link: FleetLink,
        *,
        keep_commands_s: float,
        policy: ExpiryPolicy | None = None,
        owns_locally: Callable[[str], bool] = lambda device: False,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.me = gateway
        self.lora = lora
        self.link = link
        self.topics = link.topics
        self._mono = monotonic
        self.records: dict[str, SessionRecord] = {}
        self.alive: dict[str, bool] = {}
        self.offline_since: dict[str, float] = {}
        self.serving: set[str] = set()
        self._floors: dict[str, int] = {}
        self._published: dict[str, tuple[str, int]] = {}  # device -> (session, highest counter)
        self._gathers = Gatherings()
        self._heard: dict[str, deque[tuple[ReportReceived, RxPacket, str]]] = {}
        self._claiming: set[str] = set()
        self._missed: dict[str, int] = {}  # served devices: uplinks heard only elsewhere in a row
        self.counters: dict[str, int] = dict.fromkeys(
            (
                "rejected_messages",
                "handed_over",
                "taken_over",
                "claims",
                "joins_answered",
                "not_published",
            ),
            0,
        )
        self._tasks = TaskSet(log, "fleet: task failed")
        self.messages = FleetMessages(link, key, self._tasks, self.counters)
        self._check_task: asyncio.Task[None] | None = None
        kept = KeptCommands(
            keep_s=keep_commands_s,
            answer_s=UNANSWERED_MARGIN_S,
            policy=policy or ExpiryPolicy(),
            monotonic=monotonic,
        )
        self.commands = FleetCommands(
            self, link, kept, self._tasks, owns_locally=owns_locally, monotonic=monotonic
        )
        link.gate = self
        topics = self.topics
        link.subscribe_extra(topics.all_sessions, self._on_record, 1, retained=True)
        link.subscribe_extra(topics.all_status, self._on_status, 1, retained=True)
        link.subscribe_extra(topics.all_sightings, self._on_sighting, 0)
        link.subscribe_extra(topics.all_reports, self._on_report, 1)
        # Subscribed last: the marker comes back after the retained records sent before it.
        link.subscribe_extra(topics.sync(gateway), self._on_sync, 1)
        link.add_ready_listener(self._on_link_ready)
        self._sync_marker = b""

    @classmethod
    def from_config(
        cls,
        config: Config,
        lora: LoraNetwork,
        link: FleetLink,
        *,
        owns_locally: Callable[[str], bool],
    ) -> FleetCoordinator:
        """The coordinator of ``config.fleet``; tells ``lora`` to serve only what it gives
        it (call before the LoRa network starts)."""
        assert config.fleet is not None
        coordinator = cls(
            config.fleet,
            config.gateway.id,
            fleet_key(config.fleet),
            lora,
            link,
            keep_commands_s=config.commands.max_ttl_s + KEEP_COMMANDS_MARGIN_S,
            policy=ExpiryPolicy.from_config(config.commands),
            owns_locally=owns_locally,
        )
        lora.use_fleet(coordinator, command_ref)
        return coordinator

    async def start(self) -> None:
        self.alive[self.me] = True
        self._check_task = asyncio.create_task(self._share_reservations(), name="fleet-records")

    async def stop(self) -> None:
        if self._check_task is not None:
            self._check_task.cancel()
        await self._tasks.cancel_all()

    # -------------------------------------------------------------------- FleetGate (link)

    def publishes(self, device: str) -> bool:
        if not device.startswith("lora-"):
            return True
        return device in self.serving

    def publishes_report(self, device: str, report_id: str) -> bool:
        """A report is published by the device's owner, or by a former one
        (``former_owner_publishes``)."""
        return self.publishes(device) or former_owner_publishes(self.records.get(device), report_id)

    def command_arrived(self, incoming: IncomingCommand) -> bool:
        return self.commands.arrived(incoming)

    # -------------------------------------------------------------------- FleetRole (LoRa)

    async def join_heard(self, device: str, request: str, packet: RxPacket) -> bool:
        if not self.link.synced:
            # Cut off from the fleet: another gateway may answer it too. The node asks again.
            return False
        reception = Reception(self.me, packet.rssi, packet.snr)
        sighting = Sighting(device, "join", request, 0, reception)
        gather = self._gathers.of(sighting.key())
        gather.receptions[self.me] = reception
        self.messages.send_sighting(sighting)
        record = self.records.get(device)
        owner = record.owner if record is not None else None
        if owner != self.me:
            await asyncio.sleep(self.settings.gather_s)
            sighters = gather.receptions
            if owner is not None and self.alive.get(owner, False) and owner in sighters:
                return False  # its owner heard it and answers
            if best_placed(sighters.values()) != self.me:
                return False
        self.counters["joins_answered"] += 1
        return True

    def joined(self, device: str) -> None:
        before = self.records.get(device)
        epoch = before.epoch + 1 if before is not None else 1
        self._floors[device] = -1
        self._publish_record(device, self.me, epoch, floor=-1)
        if device not in self.serving:
            self.serving.add(device)
            self.commands.deliver_kept(device)  # a node that rejoined here after it moved

    def uplink_heard(self, uplink: Uplink, session: str, packet: RxPacket) -> bool:
        device = uplink.device_id
        reception = Reception(self.me, packet.rssi, packet.snr)
        sighting = Sighting(device, "uplink", session, uplink.counter, reception)
        gather = self._gathers.of(sighting.key())
        gather.receptions[self.me] = reception
        if device in self.serving:
            self._missed.pop(device, None)
            return True
        if isinstance(uplink, ReportReceived) and not uplink.duplicate:
            kept = self._heard.setdefault(device, deque(maxlen=HEARD_KEPT_PER_DEVICE))
            kept.append((uplink, packet, session))
        self.messages.send_sighting(sighting)
        record = self.records.get(device)
        owner_gone = record is not None and not self.alive.get(record.owner, False)
        if owner_gone and device not in self._claiming:
            self._tasks.spawn(self._maybe_claim(device, sighting.key()))
        return False

    def published_before(self, device: str, session: str, counter: int) -> bool:
        record = self.records.get(device)
        if record is None or record.session != session:
            return False
        return counter <= self._floors.get(device, -1)

    async def receptions(
        self, uplink: Uplink, session: str, packet: RxPacket, latest: float | None
    ) -> list[dict[str, Any]]:
        key = (uplink.device_id, "uplink", session, uplink.counter)
        gather = self._gathers.of(key)
        wait = self.settings.gather_s
        if latest is not None:
            wait = min(wait, latest - self._mono() - 0.05)
        if wait > 0:
            await asyncio.sleep(wait)
        self._consider_handover(key, gather)
        # The serving gateway first, then the others, strongest first.
        ranked = sorted(gather.receptions.values(), key=Reception.rank, reverse=True)
        ranked.sort(key=lambda reception: reception.gateway != self.me)
        return [reception.to_wire() for reception in ranked]

    # -------------------------------------------------------------------- ownership moves

    def _consider_handover(self, key: UplinkKey, gather: Gather) -> None:
        device = key[0]
        if gather.checked or device not in self.serving or not self.link.synced:
            return  # cut off from the fleet, a hand-over would reach nobody
        gather.checked = True
        own = gather.receptions.get(self.me)
        others = [r for g, r in gather.receptions.items() if g != self.me and self.alive.get(g)]
        target = handover_target(own, others, self.settings.handover_margin_db)
        if target is None:
            return
        theirs = gather.receptions[target]
        why = (
            f"uplink #{key[3]} heard there only"
            if own is None
            else f"heard at {theirs.rssi:.1f} dB there, {own.rssi:.1f} dB here"
        )
        # Heard here, this report is published here: the next owner starts above it.
        self._hand_over(device, target, why, key[3] if own is not None else -1)

    def _hand_over(self, device: str, target: str, why: str, handled: int) -> None:
        record = self.records.get(device)
        if record is None:
            return
        published = self._published.get(device)
        handled = max(handled, self._floors.get(device, -1))
        if published is not None and published[0] == record.session:
            handled = max(handled, published[1])
        self._publish_record(device, target, record.epoch + 1, floor=handled)
        self.serving.discard(device)
        self.lora.device_left(device)
        self.counters["handed_over"] += 1
        log.info("fleet: %s handed over to %s (%s)", device, target, why)

    async def _maybe_claim(self, device: str, key: UplinkKey) -> None:
        """The owner of ``device`` is offline: the best placed of the gateways that heard
        this uplink claims it, and serves it if no better claim arrives meanwhile."""
        self._claiming.add(device)
        try:
            await asyncio.sleep(self.settings.gather_s)
            record = self.records.get(device)
            if record is None or self.alive.get(record.owner, False) or device in self.serving:
                return
            if not self.link.synced:
                return  # cut off from the fleet: a claim would not meet its rivals
            gather = self._gathers.get(key)
            heard = gather.receptions if gather is not None else {}
            alive = [r for g, r in heard.items() if self.alive.get(g)]
            if best_placed(alive) != self.me:
                return
            floor = max(record.floor, self._published_in(record))
            claim = self._publish_record(
                device, self.me, record.epoch + 1, floor=floor, dl_skip=DOWNLINK_RESERVATION
            )
            self.counters["claims"] += 1
            await asyncio.sleep(self.settings.claim_settle_s)
            if self.records.get(device) is claim and device in self.messages.unshared:
                # Not on the broker yet: served when it comes back from there (_on_record);
                # should it never get there, a later uplink claims again.
                self.messages.unshared.discard(device)
                self.records[device] = record
            elif self.records.get(device) is claim:
                self._serve(device, claim, f"took {device} over from {record.owner}")
        finally:
            self._claiming.discard(device)

    def _serve(self, device: str, record: SessionRecord, why: str) -> None:
        """This gateway serves ``device`` from now on: publish what it heard above the floor
        and carry out the fleet's commands for it that have no outcome yet."""
        self.serving.add(device)
        self._floors[device] = max(record.floor, self._published_in(record))
        self.counters["taken_over"] += 1
        log.info("fleet: %s (reports up to #%d handled)", why, self._floors[device])
        for report, packet, session in self._heard.pop(device, ()):
            if session == record.session and report.counter > self._floors[device]:
                self._tasks.spawn(self.lora.store_report(report, packet))
        self.commands.deliver_kept(device)

    def _published_in(self, record: SessionRecord) -> int:
        published = self._published.get(record.device)
        if published is None or published[0] != record.session:
            return -1
        lease = self.lora.session_record(record.device)
        same = lease is not None and lease.gw_nonce == record.lease.gw_nonce
        ceiling = lease.up_last if lease is not None and same else -1
        # A report on the open fleet topic raises the floor only as far as this gateway has
        # verified the device's counters itself: a forged one cannot silence later reports.
        return min(published[1], max(ceiling, record.lease.up_last))

    def _publish_record(
        self, device: str, owner: str, epoch: int, *, floor: int, dl_skip: int = 0
    ) -> SessionRecord | None:
        lease = self.lora.session_record(device)
        if lease is None:
            return None
        if dl_skip:
            lease = replace(lease, dl_reserved=lease.dl_reserved + dl_skip)
            self.lora.adopt(lease)
        record = SessionRecord(device, owner, epoch, lease, floor)
        self.records[device] = record
        self.messages.share_record(record)
        return record

    async def _share_reservations(self) -> None:
        """Share a served device's record again when its downlink reservation moved, so a
        gateway taking it over never repeats a downlink counter."""
        while True:
            await asyncio.sleep(RECORD_CHECK_S)
            self.commands.answer_abandoned()
            self.messages.share_again(self.records)
            for device in list(self.serving):
                record = self.records.get(device)
                lease = self.lora.session_record(device)
                if record is None or lease is None:
                    continue
                if lease.dl_reserved > record.lease.dl_reserved:
                    self._publish_record(device, self.me, record.epoch + 1, floor=record.floor)

    # -------------------------------------------------------------------- messages in

    async def _on_link_ready(self) -> None:
        self.messages.share_again(self.records)
        self._sync_marker = secrets.token_bytes(8)
        topic = self.topics.sync(self.me)
        await self.messages.send_marker(topic, self._sync_marker)

    def _on_sync(self, topic: str, payload: bytes, _arrival: float) -> None:
        if self.messages.open(topic, payload, bytes) == self._sync_marker and not self.link.synced:
            self.link.synced = True
            log.info(
                "fleet: %d device records read, %d gateways alive; serving",
                len(self.records),
                sum(self.alive.values()),
            )

    def _on_record(self, topic: str, payload: bytes, _arrival: float) -> None:
        if not payload:
            return
        record = self.messages.open(topic, payload, decode_record)
        if record is None:
            return
        if self.topics.device_of(topic) != record.device or record.device != lora_device_id(
            record.lease.eui
        ):
            self.counters["rejected_messages"] += 1
            log.warning("fleet: record on %s names another device", topic)
            return
        current = self.records.get(record.device)
        if not record.outranks(current):
            return
        self.records[record.device] = record
        self.lora.adopt(record.lease)
        device = record.device
        if device in self.serving and record.owner != self.me:
            self.serving.discard(device)
            self.lora.device_left(device)
            log.info("fleet: %s now served by %s", device, record.owner)
        elif device not in self.serving and record.owner == self.me:
            before = current.owner if current is not None else "nobody"
            self._serve(device, record, f"{device} now served here (from {before})")

    def _on_status(self, topic: str, payload: bytes, _arrival: float) -> None:
        gateway = self.topics.gateway_of(topic)
        if gateway is None or gateway == self.me:
            return
        online = payload == b"online"
        if self.alive.get(gateway) == online:
            return
        self.alive[gateway] = online
        if online:
            self.offline_since.pop(gateway, None)
        else:
            self.offline_since[gateway] = self._mono()
        owned = sum(1 for r in self.records.values() if r.owner == gateway)
        log.info(
            "fleet: gateway %s %s (%d devices)", gateway, "online" if online else "offline", owned
        )

    def _on_sighting(self, topic: str, payload: bytes, _arrival: float) -> None:
        sighting = self.messages.open(topic, payload, decode_sighting)
        if sighting is None:
            return
        gateway = sighting.reception.gateway
        if gateway == self.me or self.topics.device_of(topic) != sighting.device:
            return
        self.alive.setdefault(gateway, True)
        key = sighting.key()
        gather = self._gathers.of(key)
        gather.receptions[gateway] = sighting.reception
        served = sighting.kind == "uplink" and sighting.device in self.serving
        if served and self.me not in gather.receptions:
            self._tasks.spawn(self._check_unheard(key, gather))

    async def _check_unheard(self, key: UplinkKey, gather: Gather) -> None:
        """A neighbour heard an uplink of a device served here: if this gateway does not hear
        it too within the gathering time, that is a miss; after ``MISSES_BEFORE_HANDOVER`` in a
        row the device goes to the best that heard it."""
        await asyncio.sleep(self.settings.gather_s * 2)
        device = key[0]
        if self.me in gather.receptions or device not in self.serving:
            return
        missed = self._missed[device] = self._missed.get(device, 0) + 1
        if missed >= MISSES_BEFORE_HANDOVER:
            self._missed.pop(device, None)
            gather.checked = False
            self._consider_handover(key, gather)

    def _on_report(self, topic: str, payload: bytes, _arrival: float) -> None:
        try:
            parts = split_report_id(str(json.loads(payload)["id"]))
        except (ValueError, KeyError, TypeError):
            return
        if parts is None or self.topics.device_of(topic) != parts[0]:
            return
        device, session, number = parts
        seen = self._published.get(device)
        if seen is None or seen[0] != session or seen[1] < number:
            self._published[device] = (session, number)
