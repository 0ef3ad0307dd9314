"""Shared helpers for the node library's tests: the protocol document's test vectors, and an
in-process air between one node (node/session.py) and the real gateway core
(gateway.protocol.session.NetworkCore + gateway.protocol.downlink.DownlinkScheduler).
"""

from __future__ import annotations

import random
import re
from pathlib import Path

from gateway.model import Command, lora_device_id
from gateway.protocol.downlink import (
    DownlinkScheduler,
    DownlinkSettings,
    ReserveCommandRefs,
    ResolveCommand,
    Transmit,
)
from gateway.protocol.dutycycle import DutyCycle
from gateway.protocol.frames import FrameRejected
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    JoinRefused,
    NetworkCore,
    ReportReceived,
)
from node import frames
from node import session as ns

DOC = Path(__file__).resolve().parent.parent / "docs" / "protocol.md"
_BLOCK = re.compile(r"^```vector\n(.*?)^```", re.MULTILINE | re.DOTALL)


def load_vectors() -> dict[str, dict[str, str]]:
    """Every ```vector block of docs/protocol.md, by name."""
    vectors = {}
    for block in _BLOCK.findall(DOC.read_text()):
        fields = dict(line.split(": ", 1) for line in block.strip().splitlines())
        vectors[fields["vector"]] = fields
    return vectors


def h(text: str) -> bytes:
    return bytes.fromhex(text)


def seeded_bytes(seed: int):
    """A repeatable random source for the node core (``random_bytes(n)``)."""
    source = random.Random(seed)
    return source.randbytes


# ------------------------------------------------------------------ node <-> gateway air


def airtime(size: int) -> float:
    """Roughly SF7/125 kHz: a fixed preamble plus 1.6 ms a byte."""
    return 0.025 + 0.0016 * size


class Air:
    """One node (node.session.Node) and the real gateway core on an ideal, shared virtual
    clock: every frame is handed over by hand, exactly when it ends on air.

    ``lose_uplinks`` / ``lose_downlinks``: how many of the next frames in that direction
    vanish. ``execute(command) -> (status, detail)`` plays the application.
    """

    def __init__(self, node, core, scheduler, store=None, execute=None, now: float = 0.0):
        self.node = node
        self.core = core
        self.scheduler = scheduler
        self.store = store
        self.execute = execute
        self.now = now
        self.wake: float | None = now
        self.lose_uplinks = 0
        self.lose_downlinks = 0
        self.uplinks: list[bytes] = []
        self.gateway_actions: list = []  # everything NetworkCore.receive returned
        self.rejected: list[str] = []  # FrameRejected reasons at the gateway
        self.resolved: list = []  # ResolveCommand actions of the scheduler
        self.node_events: list = []  # Joined, Acked, Dropped, SessionLost, JoinRefused, ...
        self.executed: list = []  # Execute actions the application carried out
        # Replaces the scheduler's answer to the next uplink: f(gateway actions) -> frame.
        self.downlink_override = None

    # The node side: carry out actions in order, as a radio shell would.
    def carry_out(self, actions: list) -> None:
        pending = list(actions)
        answers: list = []
        while pending or answers:
            if not pending:
                ref, status, detail = answers.pop(0)
                pending = self.node.command_done(ref, status, detail, self.now)
                continue
            action = pending.pop(0)
            if isinstance(action, ns.Persist):
                if self.store is not None:
                    self.store.save(action.record)
            elif isinstance(action, ns.Transmit):
                pending = self._transmit(action.frame) + pending
            elif isinstance(action, ns.Execute):
                self.executed.append(action)
                status, detail = self.execute(action.command)
                # The application answers once the shell is through this batch of actions.
                answers.append((action.command.ref, status, detail))
            elif isinstance(action, ns.WakeAt):
                self.wake = action.at
            elif isinstance(action, ns.Listen):
                raise AssertionError("a Listen outside a transmission")
            else:
                self.node_events.append(action)

    def _transmit(self, frame: bytes) -> list:
        self.uplinks.append(frame)
        ends = self.now + airtime(len(frame))
        downlink = None
        if self.lose_uplinks:
            self.lose_uplinks -= 1
        else:
            try:
                received = self.core.receive(frame, ends)
            except FrameRejected as exc:
                self.rejected.append(exc.reason)
                received = []
            for action in received:
                self.gateway_actions.append(action)
                if isinstance(action, (JoinAccepted, JoinRefused)):
                    answers = self.scheduler.join_answered(action, ends)
                elif isinstance(action, (ReportReceived, CommandResultReceived)):
                    answers = self.scheduler.uplink_received(action, ends)
                else:
                    answers = []
                for answer in answers:
                    if isinstance(answer, ResolveCommand):
                        self.resolved.append(answer)
                    elif isinstance(answer, Transmit):
                        downlink = answer
        if self.downlink_override is not None and received:
            frame_by_hand = self.downlink_override(received)
            self.downlink_override = None
            at = ends + self.core.rx_delay_s - 0.005
            downlink = Transmit(at, at + 0.05, frame_by_hand, "", "by hand", {})
        self.now = ends
        actions = self.node.tx_done(ends, airtime(len(frame)))
        (listen,) = actions
        assert isinstance(listen, ns.Listen)
        if downlink is not None and self.lose_downlinks:
            self.lose_downlinks -= 1
            downlink = None
        if downlink is not None and downlink.kind != "by hand":
            self.scheduler.transmitted(downlink, airtime(len(downlink.frame)), downlink.at)
        heard = downlink is not None and listen.at <= downlink.at <= listen.at + listen.duration
        if heard:
            self.now = downlink.at + airtime(len(downlink.frame))
            return self.node.received(downlink.frame, self.now, -60.0, 7.5)
        self.now = listen.at + listen.duration
        return self.node.rx_timeout(self.now)

    def run(self, until: float, stop=None) -> None:
        """Run the node (ticks at its WakeAt) until ``until`` or ``stop()`` holds."""
        self.carry_out(self.node.tick(self.now))
        while stop is None or not stop():
            for action in self.scheduler.timer_due(self.now):
                if isinstance(action, ResolveCommand):
                    self.resolved.append(action)
            if self.wake is None or self.wake > until:
                self.now = max(self.now, until)
                return
            self.now = max(self.now, self.wake)
            self.carry_out(self.node.tick(self.now))

    def report(self, data: dict, confirmed: bool = True) -> None:
        self.carry_out(self.node.report(data, self.now, confirmed))

    def events(self, kind: type) -> list:
        return [event for event in self.node_events if isinstance(event, kind)]


# ------------------------------------------------ one node of a gateway core, in-process

EUI = bytes.fromhex("70b3d57ed0001234")
ROOT = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
DEVICE = lora_device_id(EUI)
FREQUENCY_HZ = 869_525_000


def gateway(
    encrypt: bool = False, enabled: bool = True, registered: bool = True
) -> tuple[NetworkCore, DownlinkScheduler]:
    registry = {int.from_bytes(EUI, "big"): DeviceCredentials(ROOT, encrypt, enabled)}
    core = NetworkCore(JoinSettings(), registry if registered else {})
    scheduler = DownlinkScheduler(
        core,
        DownlinkSettings(),
        time_on_air=airtime,
        frequency_hz=lambda: FREQUENCY_HZ,
        duty=DutyCycle("EU868"),
    )
    return core, scheduler


def queue_command(
    scheduler: DownlinkScheduler, action: str, params: dict, deadline: float, name: str
) -> Command:
    command = Command(name, DEVICE, action, params, deadline, "mqtt")
    actions = scheduler.command_queued(command)
    while isinstance(actions[0], ReserveCommandRefs):
        scheduler.refs_reserved(DEVICE, actions[0].up_to)
        actions = scheduler.command_queued(command)
    return command


class Relay:
    """The application: one relay."""

    def __init__(self) -> None:
        self.on = False

    def __call__(self, command: frames.Command) -> tuple[int, str | None]:
        if command.action == "relay" and isinstance(command.params.get("on"), bool):
            self.on = command.params["on"]
            return frames.EXECUTED, None
        return frames.FAILED, "unknown action"


def fast_config(**changes: float) -> ns.NodeConfig:
    settings = {"duty_cycle": 1.0, "rejoin_after_unacked": 3}
    settings.update(changes)
    return ns.NodeConfig(**settings)
