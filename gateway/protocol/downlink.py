"""What the gateway puts on air, and when: the LoRa downlink scheduler.

The gateway transmits only in a node's receive window: ``rx_delay_s`` after each uplink, or
``join_rx_delay_s`` after a join request. ``DownlinkScheduler`` decides what goes into each
window (an ack, the next queued command with the time it has left, a join answer), which
command reference a command gets, when a command expires or times out, and whether the
duty-cycle budget allows a transmission. It is fed events with the current monotonic time and
returns actions; the shell (``gateway/lora.py``) carries them out in order and does nothing
else: it transmits, arms one timer, writes the store and answers the waiting callers.

Events (methods)                      Actions returned
  store_by(uplink, rx_done) -> float    -
  command_queued(command)               CommandQueued, ReserveCommandRefs, ResolveCommand
  refs_reserved(device, up_to)          -
  uplink_received(uplink, rx_done)      ResolveCommand, Transmit
  join_answered(answer, rx_done)        PersistLeases, Transmit
  clear_to_send(tx, now) -> bool        -
  transmitted(tx, airtime_s, started)   CommandSent
  timer_due(now)                        ResolveCommand
  command_withdrawn(command)            -
Any of them may end with ``WakeAt``: call ``timer_due`` at that time.

A command's life: queued; put into the receive window after an uplink of its device while
it has at least one whole second left when the frame ends on air (the node is told whole
deciseconds, rounded down); ``sent`` after its first transmission, and sent again in later
windows while the node has not answered and time is left (the node answers a repeated
reference from memory instead of executing twice); resolved by the node's answer, or
``expired`` if never sent by its deadline, or ``timeout`` ``node_answer_timeout_s`` after its
deadline without an answer.

An ack goes on air only once the report it acks is safe: on disk, or taken by every
upstream. ``store_by`` says by when that must be, so that the store can write it with one
commit just before the window (serving every row that came in meanwhile), or not at all if
the upstreams acknowledge it first.

Pure: no I/O, no clock reads; every time is passed in (monotonic seconds).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.model import Command, CommandStatus
from gateway.protocol import expiry, frames
from gateway.protocol.dutycycle import DutyCycle
from gateway.protocol.frames import DownlinkCommand
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    JoinRefused,
    NetworkCore,
    ReportReceived,
)

# Start a transmission this much before the window is due: SPI and scheduling take a moment.
TX_LEAD_S = 0.005
# A transmission that cannot start within this long after its planned start missed the window.
LATE_LIMIT_S = 0.05
# Command references are reserved on disk in blocks, ahead of use (as downlink counters are).
REF_RESERVATION = 256
REF_MODULUS = 0x10000
# A timer may fire this much early (clock resolution) and still count as due.
TIMER_SLACK_S = 1e-3

NO_ANSWER = "no_answer_from_node"
# A report an ack waits for is due on disk this long before the ack goes on air: the time a
# commit (one write and one sync on an SD card) may take.
COMMIT_MARGIN_S = 0.15


# ----------------------------------------------------------------------------------- actions


@dataclass(frozen=True, slots=True)
class Transmit:
    """Transmit ``frame`` at ``at``; if it cannot start by ``not_after``, the window is missed.

    Ask ``clear_to_send`` right before transmitting and report ``transmitted`` afterwards.
    ``kind`` and ``summary`` describe the frame for the frame log.
    """

    at: float
    not_after: float
    frame: bytes
    device: str
    kind: str  # "ack", "command", "join-accept", "join-refused"
    summary: Mapping[str, Any]
    command_ref: int | None = None


@dataclass(frozen=True, slots=True)
class PersistLeases:
    """Write the core's changed lease records now. The actions after it wait for the write;
    if it fails they are not carried out."""


@dataclass(frozen=True, slots=True)
class ReserveCommandRefs:
    """The command was not queued: store that references of ``device`` below ``up_to`` may be
    in use, report ``refs_reserved`` and queue the command again."""

    device: str
    up_to: int


@dataclass(frozen=True, slots=True)
class CommandQueued:
    command: Command
    ref: int


@dataclass(frozen=True, slots=True)
class CommandSent:
    """The command went on air for the first time."""

    command: Command


@dataclass(frozen=True, slots=True)
class ResolveCommand:
    """The command's final outcome; it has left the queue."""

    command: Command
    status: CommandStatus
    detail: str | None = None


@dataclass(frozen=True, slots=True)
class WakeAt:
    """Call ``timer_due`` at ``at`` (replacing any earlier request); None: no timer needed."""

    at: float | None


Action = (
    Transmit
    | PersistLeases
    | ReserveCommandRefs
    | CommandQueued
    | CommandSent
    | ResolveCommand
    | WakeAt
)


# ---------------------------------------------------------------------------------- scheduler


@dataclass(frozen=True, slots=True)
class DownlinkSettings:
    queue_per_device: int = 16
    node_answer_timeout_s: float = 30.0


@dataclass(slots=True)
class _Queued:
    command: Command
    ref: int
    sent_at: float | None = None  # end of the last transmission

    def due_at(self, answer_timeout_s: float) -> float:
        """When the command ends unless answered: expired at its deadline if never sent,
        else ``timeout`` a while after it (the node may still answer). A carried command
        (``Command.carried``) never sent here waits that while too: its node is asked once it
        is heard."""
        deadline = self.command.deadline
        if self.sent_at is None and not self.command.carried:
            return deadline
        return max(deadline, self.sent_at or deadline) + answer_timeout_s


@dataclass(slots=True)
class _RefCounter:
    next: int = 0  # grows without bound; the reference on air is next % REF_MODULUS
    reserved: int = 0  # stored bound: no reference at or above it was handed out
    in_use: set[int] = field(default_factory=set)


class DownlinkScheduler:
    """Downlink decisions for every node behind one radio.

    ``network`` builds the frames (and owns the sessions); ``time_on_air`` gives the seconds
    a payload of so many bytes takes with the radio's current settings; ``frequency_hz``
    the radio's current channel, for the duty-cycle budget kept in ``duty``.
    ``ref_reservations`` are the stored bounds of ``ReserveCommandRefs``, per device.
    ``ref_of(device, command_id, taken)``, when given, names each command's reference instead
    of the per-device counter (a fleet: the same reference on every gateway).
    """

    def __init__(
        self,
        network: NetworkCore,
        settings: DownlinkSettings,
        *,
        time_on_air: Callable[[int], float],
        frequency_hz: Callable[[], int],
        duty: DutyCycle,
        ref_reservations: Mapping[str, int] | None = None,
        ref_of: Callable[[str, str, set[int]], int] | None = None,
    ) -> None:
        self.network = network
        self._ref_of = ref_of
        self.settings = settings
        self.duty = duty
        self._time_on_air = time_on_air
        self._frequency_hz = frequency_hz
        self._queues: dict[str, list[_Queued]] = {}
        self._refs: dict[str, _RefCounter] = {
            device: _RefCounter(next=bound, reserved=bound)
            for device, bound in (ref_reservations or {}).items()
        }
        self._wake: float | None = None

    def queued(self, device: str) -> int:
        """Commands of ``device`` waiting for their outcome (sent or not)."""
        return len(self._queues.get(device, ()))

    # ---------------------------------------------------------------------- commands

    def command_queued(self, command: Command) -> list[Action]:
        """Queue a command for its device's next receive windows.

        ``[ResolveCommand(rejected, queue_full)]`` when the queue is full;
        ``[ReserveCommandRefs]`` when the next reference is not reserved yet (queue the command
        again after ``refs_reserved``); else ``[CommandQueued, WakeAt?]``.
        """
        device = command.device
        queue = self._queues.setdefault(device, [])
        if len(queue) >= self.settings.queue_per_device:
            return [ResolveCommand(command, CommandStatus.REJECTED, "queue_full")]
        refs = self._refs.setdefault(device, _RefCounter())
        if self._ref_of is not None:
            ref = self._ref_of(device, command.id, refs.in_use)
            refs.in_use.add(ref)
            queue.append(_Queued(command, ref))
            return [CommandQueued(command, ref), *self._wake_change()]
        number = refs.next
        while number % REF_MODULUS in refs.in_use:  # wrapped around onto a waiting command
            number += 1
        if number >= refs.reserved:
            return [ReserveCommandRefs(device, number + REF_RESERVATION)]
        refs.next = number + 1
        ref = number % REF_MODULUS
        refs.in_use.add(ref)
        queue.append(_Queued(command, ref))
        return [CommandQueued(command, ref), *self._wake_change()]

    def refs_reserved(self, device: str, up_to: int) -> None:
        """References of ``device`` below ``up_to`` are reserved in the store."""
        refs = self._refs.setdefault(device, _RefCounter())
        refs.reserved = max(refs.reserved, up_to)

    def command_withdrawn(self, command: Command) -> list[Action]:
        """The caller gave up waiting (shutdown): forget the command without an outcome."""
        for entry in self._queues.get(command.device, ()):
            if entry.command is command:
                self._remove(entry)
                break
        return self._wake_change()

    def device_left(self, device: str, detail: str) -> list[Action]:
        """Another gateway serves ``device`` now: its commands end here as rejected with
        ``detail`` (the new owner carries them out, with the same references)."""
        entries = list(self._queues.get(device, ()))
        for entry in entries:
            self._remove(entry)
        resolved = [ResolveCommand(e.command, CommandStatus.REJECTED, detail) for e in entries]
        return [*resolved, *self._wake_change()]

    def timer_due(self, now: float) -> list[Action]:
        """End the commands whose time is up (see ``_Queued.due_at``)."""
        self._wake = None  # the timer that called us is spent
        actions: list[Action] = []
        timeout = self.settings.node_answer_timeout_s
        for queue in list(self._queues.values()):
            for entry in list(queue):
                if now < entry.due_at(timeout) - TIMER_SLACK_S:
                    continue
                self._remove(entry)
                if entry.sent_at is None and not entry.command.carried:
                    reason = expiry.EXPIRED_REASONS[expiry.Stage.QUEUE]
                    actions.append(ResolveCommand(entry.command, CommandStatus.EXPIRED, reason))
                else:
                    actions.append(ResolveCommand(entry.command, CommandStatus.TIMEOUT, NO_ANSWER))
        return actions + self._wake_change()

    # ---------------------------------------------------------------------- receive windows

    def store_by(self, uplink: ReportReceived, rx_done: float) -> float | None:
        """When the report of an uplink that ended at ``rx_done`` must be safe for its ack
        to go out in the receive window; None if nothing acks it (not confirmed)."""
        if not uplink.confirmed:
            return None
        return rx_done + uplink.rx_delay_s - TX_LEAD_S - COMMIT_MARGIN_S

    def uplink_received(
        self, uplink: ReportReceived | CommandResultReceived, rx_done: float
    ) -> list[Action]:
        """An uplink that ended at ``rx_done`` was taken (a report: stored): resolve the
        command it answers, then fill the receive window that follows it."""
        device = uplink.device_id
        actions: list[Action] = []
        if isinstance(uplink, CommandResultReceived) and not uplink.duplicate:
            entry = self._find(device, uplink.command_ref)
            if entry is not None:
                self._remove(entry)
                actions.append(ResolveCommand(entry.command, uplink.status, uplink.detail))
        ack = uplink.counter if uplink.confirmed else None
        actions += self._fill_window(device, rx_done + uplink.rx_delay_s, ack)
        return actions + self._wake_change()

    def join_answered(self, answer: JoinAccepted | JoinRefused, rx_done: float) -> list[Action]:
        """Send the core's join answer in the join window; an accept only once its lease is
        on disk, so the node never uses an address the gateway could forget."""
        at = rx_done + answer.send_after_s - TX_LEAD_S
        if isinstance(answer, JoinRefused):
            summary: dict[str, Any] = {"reason": answer.reason}
            return [self._transmission(at, answer.frame, answer.device_id, "join-refused", summary)]
        lease = answer.lease
        summary = {"address": f"0x{lease.address:04x}"}
        return [
            PersistLeases(),
            self._transmission(at, answer.frame, lease.device_id, "join-accept", summary),
        ]

    def clear_to_send(self, tx: Transmit, now: float) -> bool:
        """Whether the duty-cycle budget allows ``tx`` to start at ``now``."""
        airtime = self._time_on_air(len(tx.frame))
        return self.duty.can_transmit(self._frequency_hz(), airtime, now)

    def transmitted(self, tx: Transmit, airtime_s: float, started_at: float) -> list[Action]:
        """``tx`` went on air at ``started_at`` for ``airtime_s``."""
        self.duty.record(self._frequency_hz(), airtime_s, started_at)
        if tx.command_ref is None:
            return []
        entry = self._find(tx.device, tx.command_ref)
        if entry is None:
            return []
        first = entry.sent_at is None
        entry.sent_at = started_at + airtime_s
        actions: list[Action] = [CommandSent(entry.command)] if first else []
        return actions + self._wake_change()

    # ---------------------------------------------------------------------- internals

    def _fill_window(self, device: str, window: float, ack: int | None) -> list[Action]:
        actions: list[Action] = []
        command = self._command_for_window(device, window, ack is not None, actions)
        if ack is None and command is None:
            return actions
        try:
            frame = self.network.build_downlink(device, ack, command)
        except KeyError:  # no lease (any more)
            return actions
        summary: dict[str, Any] = {} if ack is None else {"ack": ack}
        if command is not None:
            summary |= {"command": command.action, "ttl_ds": command.ttl_ds}
        kind = "ack" if command is None else "command"
        ref = None if command is None else command.ref
        actions.append(self._transmission(window - TX_LEAD_S, frame, device, kind, summary, ref))
        return actions

    def _command_for_window(
        self, device: str, window: float, with_ack: bool, actions: list[Action]
    ) -> DownlinkCommand | None:
        """The first queued command still worth sending in the window starting at ``window``,
        with the time it has left when the frame ends on air; ends the commands that cannot
        be sent any more (appending to ``actions``)."""
        for entry in list(self._queues.get(device, ())):
            command = entry.command
            probe = DownlinkCommand(entry.ref, command.action, command.params)
            try:
                size = frames.downlink_length(with_ack, probe)
            except ValueError as exc:  # does not fit in a frame, or cannot be encoded
                self._remove(entry)
                actions.append(ResolveCommand(command, CommandStatus.REJECTED, f"too_large: {exc}"))
                continue
            airtime = self._time_on_air(size)
            in_queue = expiry.check(command, window, airtime, stage=expiry.Stage.QUEUE)
            reason = in_queue or expiry.check(
                command, window, airtime, stage=expiry.Stage.TRANSMISSION
            )
            if reason is None:
                left = command.deadline - window - airtime
                return DownlinkCommand.from_seconds(entry.ref, command.action, command.params, left)
            if command.carried and entry.sent_at is None:
                # Perhaps run through another gateway: ask, with no time left to run it.
                return DownlinkCommand(entry.ref, command.action, command.params, ttl_ds=0)
            # A command sent already is not sent again once out of time: its outcome is the
            # node's answer or, failing that, ``timeout``.
            if entry.sent_at is None:
                self._remove(entry)
                actions.append(ResolveCommand(command, CommandStatus.EXPIRED, reason))
            if in_queue is None:
                return None  # alive, but too late for this window: the rest wait too
        return None

    def _transmission(
        self,
        at: float,
        frame: bytes,
        device: str,
        kind: str,
        summary: Mapping[str, Any],
        command_ref: int | None = None,
    ) -> Transmit:
        return Transmit(at, at + LATE_LIMIT_S, frame, device, kind, summary, command_ref)

    def _find(self, device: str, ref: int) -> _Queued | None:
        return next((e for e in self._queues.get(device, ()) if e.ref == ref), None)

    def _remove(self, entry: _Queued) -> None:
        device = entry.command.device
        self._queues[device].remove(entry)
        self._refs[device].in_use.discard(entry.ref)

    def _wake_change(self) -> list[Action]:
        """``[WakeAt]`` if the earliest time a command ends has changed since last announced."""
        timeout = self.settings.node_answer_timeout_s
        due = [entry.due_at(timeout) for queue in self._queues.values() for entry in queue]
        wake = min(due, default=None)
        if wake == self._wake:
            return []
        self._wake = wake
        return [WakeAt(wake)]
