"""The downlink scheduler on its own: no loop, no radio, no clock; times are plain numbers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest

from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.model import Command, CommandStatus, lora_device_id
from gateway.protocol.downlink import (
    COMMIT_MARGIN_S,
    LATE_LIMIT_S,
    REF_MODULUS,
    REF_RESERVATION,
    TX_LEAD_S,
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
from gateway.protocol.fleet import command_ref
from gateway.protocol.frames import JoinAccept, ResultCode
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    CommandResultReceived,
    JoinAccepted,
    JoinRefused,
    NetworkCore,
    ReportReceived,
)

EUI = 0x0011223344556677
ROOT = bytes.fromhex("000102030405060708090a0b0c0d0e0f")
DEVICE = lora_device_id(EUI)
FREQUENCY_HZ = 868_100_000
RX_DELAY_S = 1.0  # JoinSettings' default, announced to the node in the accept
ANSWER_TIMEOUT_S = 30.0


def airtime(size: int) -> float:
    """Roughly SF7/125 kHz: a fixed preamble plus 1.6 ms a byte."""
    return 0.025 + 0.0016 * size


class Gateway:
    """A core with one joined node, and a scheduler over it."""

    def __init__(
        self,
        *,
        queue_per_device: int = 16,
        duty: DutyCycle | None = None,
        ref_of: Callable[[str, str, set[int]], int] | None = None,
    ) -> None:
        self.core = NetworkCore(JoinSettings(), {EUI: DeviceCredentials(ROOT)})
        self.scheduler = DownlinkScheduler(
            self.core,
            DownlinkSettings(queue_per_device, ANSWER_TIMEOUT_S),
            time_on_air=airtime,
            frequency_hz=lambda: FREQUENCY_HZ,
            duty=duty or DutyCycle("EU868"),
            ref_of=ref_of,
        )
        dev_nonce = b"\x01" * 8
        actions = self.core.receive(join_request(EUI, ROOT, dev_nonce), 1000.0)
        accepted = actions[-1]
        assert isinstance(accepted, JoinAccepted)
        self.accepted = accepted
        answer = open_join_answer(accepted.frame, EUI, ROOT, dev_nonce)
        assert isinstance(answer, JoinAccept)
        self.node = NodeSession.from_accept(EUI, ROOT, dev_nonce, answer)

    def queue(self, command: Command) -> list[Action]:
        """Queue as the shell does: reserve references when asked, then queue again."""
        actions = self.scheduler.command_queued(command)
        while isinstance(actions[0], ReserveCommandRefs):
            self.scheduler.refs_reserved(DEVICE, actions[0].up_to)
            actions = self.scheduler.command_queued(command)
        return actions

    def report(self, rx_done: float, *, confirmed: bool = True) -> list[Action]:
        """The node's next report, received (and stored) with RxDone at ``rx_done``."""
        _, phy = self.node.report({"n": 1}, confirmed=confirmed)
        (uplink,) = self.core.receive(phy, 2000.0)
        assert isinstance(uplink, ReportReceived)
        return self.scheduler.uplink_received(uplink, rx_done)

    def answer(self, ref: int, rx_done: float, status: ResultCode) -> list[Action]:
        _, phy = self.node.result(ref, status, "pong")
        (uplink,) = self.core.receive(phy, 2000.0)
        assert isinstance(uplink, CommandResultReceived)
        return self.scheduler.uplink_received(uplink, rx_done)


def command(deadline: float, action: str = "ping", **params: Any) -> Command:
    return Command("c1", DEVICE, action, params, deadline=deadline, origin="mqtt")


def only(actions: list[Action], kind: type[Any]) -> list[Any]:
    return [action for action in actions if isinstance(action, kind)]


def test_a_confirmed_report_is_acked_in_its_receive_window() -> None:
    gateway = Gateway()
    (tx,) = gateway.report(rx_done=50.0)
    assert isinstance(tx, Transmit)
    assert tx.at == 50.0 + RX_DELAY_S - TX_LEAD_S
    assert tx.not_after == tx.at + LATE_LIMIT_S
    assert (tx.device, tx.kind, tx.command_ref) == (DEVICE, "ack", None)
    downlink = gateway.node.open_downlink(tx.frame)
    assert downlink.ack_counter == 0 and downlink.command is None
    assert tx.summary == {"ack": 0}


def test_a_confirmed_report_is_due_on_disk_a_commit_before_its_ack_and_an_unconfirmed_never() -> (
    None
):
    gateway = Gateway()
    for confirmed, due in ((True, 50.0 + RX_DELAY_S - TX_LEAD_S - COMMIT_MARGIN_S), (False, None)):
        _, phy = gateway.node.report({"n": 1}, confirmed=confirmed)
        (uplink,) = gateway.core.receive(phy, 2000.0)
        assert isinstance(uplink, ReportReceived)
        assert gateway.scheduler.store_by(uplink, 50.0) == due
        if due is not None:
            (tx,) = gateway.scheduler.uplink_received(uplink, 50.0)
            assert isinstance(tx, Transmit)
            assert tx.at - due == pytest.approx(COMMIT_MARGIN_S)


def test_an_unconfirmed_report_with_nothing_queued_gets_no_downlink() -> None:
    assert Gateway().report(rx_done=50.0, confirmed=False) == []


def test_a_queued_command_goes_out_with_its_time_to_live_rounded_down() -> None:
    gateway = Gateway()
    window = 50.0 + RX_DELAY_S
    size = 12 + 4 + 4 + 7  # header and tag, ack counter, ref and ttl, CBOR ["ping", {}]
    deadline = window + airtime(size) + 12.37
    pending = command(deadline)
    assert gateway.queue(pending) == [CommandQueued(pending, 0), WakeAt(deadline)]
    (tx,) = gateway.report(rx_done=50.0)
    assert (tx.kind, tx.command_ref, len(tx.frame)) == ("command", 0, size)
    downlink = gateway.node.open_downlink(tx.frame)
    assert downlink.ack_counter == 0
    assert downlink.command is not None
    assert (downlink.command.ref, downlink.command.action) == (0, "ping")
    assert downlink.command.ttl_ds == 123  # 12.37 s left when the frame ends on air
    sent = gateway.scheduler.transmitted(tx, airtime(size), tx.at)
    assert sent == [CommandSent(pending), WakeAt(deadline + ANSWER_TIMEOUT_S)]


def test_the_nodes_answer_resolves_the_command_and_the_next_one_follows() -> None:
    gateway = Gateway()
    first, second = command(500.0), command(600.0, "relay", on=True)
    gateway.queue(first)
    gateway.queue(second)
    (tx,) = gateway.report(rx_done=50.0)
    gateway.scheduler.transmitted(tx, 0.1, tx.at)
    actions = gateway.answer(0, rx_done=60.0, status=ResultCode.EXECUTED)
    assert actions[0] == ResolveCommand(first, CommandStatus.EXECUTED, "pong")
    (tx,) = only(actions, Transmit)
    assert (tx.kind, tx.command_ref) == ("command", 1)
    assert gateway.scheduler.queued(DEVICE) == 1


def test_an_unanswered_command_is_sent_again_and_marked_sent_once() -> None:
    gateway = Gateway()
    pending = command(500.0)
    gateway.queue(pending)
    (tx,) = gateway.report(rx_done=50.0)
    assert only(gateway.scheduler.transmitted(tx, 0.1, tx.at), CommandSent) == [
        CommandSent(pending)
    ]
    (again,) = gateway.report(rx_done=80.0)
    assert (again.kind, again.command_ref) == ("command", 0)
    assert only(gateway.scheduler.transmitted(again, 0.1, again.at), CommandSent) == []
    assert gateway.scheduler.timer_due(500.0) == [WakeAt(500.0 + ANSWER_TIMEOUT_S)]
    assert gateway.scheduler.timer_due(500.0 + ANSWER_TIMEOUT_S) == [
        ResolveCommand(pending, CommandStatus.TIMEOUT, "no_answer_from_node")
    ]


def test_a_command_never_sent_expires_in_the_queue_at_its_deadline() -> None:
    gateway = Gateway()
    pending = command(40.0)
    assert gateway.queue(pending)[-1] == WakeAt(40.0)
    assert gateway.scheduler.timer_due(39.0) == [WakeAt(40.0)]
    assert gateway.scheduler.timer_due(40.0) == [
        ResolveCommand(pending, CommandStatus.EXPIRED, "expired_in_queue")
    ]
    assert gateway.scheduler.queued(DEVICE) == 0


def test_a_carried_command_past_its_deadline_asks_the_node_instead_of_expiring() -> None:
    gateway = Gateway()
    pending = replace(command(40.0, "relay", on=True), carried=True)
    assert gateway.queue(pending)[-1] == WakeAt(40.0 + ANSWER_TIMEOUT_S)
    assert gateway.scheduler.timer_due(40.0) == [WakeAt(40.0 + ANSWER_TIMEOUT_S)]  # not expired
    (tx,) = gateway.report(rx_done=50.0)  # past the deadline
    downlink = gateway.node.open_downlink(tx.frame)
    assert downlink.command is not None and downlink.command.ttl_ds == 0
    assert only(gateway.scheduler.transmitted(tx, 0.1, tx.at), CommandSent) == [
        CommandSent(pending)
    ]
    actions = gateway.answer(0, rx_done=55.0, status=ResultCode.EXECUTED)  # from its memory
    assert actions[0] == ResolveCommand(pending, CommandStatus.EXECUTED, "pong")


def test_a_carried_command_whose_node_is_never_heard_ends_in_timeout_not_expired() -> None:
    gateway = Gateway()
    pending = replace(command(40.0), carried=True)
    gateway.queue(pending)
    assert gateway.scheduler.timer_due(40.0 + ANSWER_TIMEOUT_S) == [
        ResolveCommand(pending, CommandStatus.TIMEOUT, "no_answer_from_node")
    ]


def test_a_command_out_of_time_by_its_window_expires_in_the_queue() -> None:
    gateway = Gateway()
    pending = command(50.5)  # the window opens at 51
    gateway.queue(pending)
    resolved, tx, wake = gateway.report(rx_done=50.0)
    assert resolved == ResolveCommand(pending, CommandStatus.EXPIRED, "expired_in_queue")
    assert isinstance(tx, Transmit) and tx.kind == "ack"
    assert wake == WakeAt(None)


def test_a_command_without_a_whole_second_left_on_arrival_expires_before_transmission() -> None:
    gateway = Gateway()
    window = 50.0 + RX_DELAY_S
    pending = command(window + 0.9)  # alive in the window, but < 1 s left at the node
    gateway.queue(pending)
    resolved, tx, _ = gateway.report(rx_done=50.0)
    assert resolved == ResolveCommand(pending, CommandStatus.EXPIRED, "expired_before_transmission")
    assert tx.kind == "ack" and gateway.node.open_downlink(tx.frame).command is None
    # Without an uplink to ack, nothing goes on air at all.
    gateway.queue(command(window + 10.9))
    (resolved,) = only(gateway.report(rx_done=60.0, confirmed=False), ResolveCommand)
    assert resolved.detail == "expired_before_transmission"


def test_a_command_too_large_for_a_frame_is_rejected_and_the_ack_still_goes() -> None:
    gateway = Gateway()
    pending = command(500.0, "relay", pad="x" * 300)
    gateway.queue(pending)
    resolved, tx, _ = gateway.report(rx_done=50.0)
    assert isinstance(resolved, ResolveCommand)
    assert resolved.status is CommandStatus.REJECTED and resolved.detail is not None
    assert resolved.detail.startswith("too_large: ")
    assert tx.kind == "ack"


def test_a_full_queue_rejects_the_command() -> None:
    gateway = Gateway(queue_per_device=2)
    gateway.queue(command(500.0))
    gateway.queue(command(500.0))
    third = command(500.0)
    assert gateway.scheduler.command_queued(third) == [
        ResolveCommand(third, CommandStatus.REJECTED, "queue_full")
    ]


def test_references_are_reserved_before_use() -> None:
    gateway = Gateway()
    pending = command(500.0)
    assert gateway.scheduler.command_queued(pending) == [
        ReserveCommandRefs(DEVICE, REF_RESERVATION)
    ]
    assert gateway.scheduler.queued(DEVICE) == 0  # not queued until the reservation is stored
    gateway.scheduler.refs_reserved(DEVICE, REF_RESERVATION)
    assert gateway.scheduler.command_queued(pending)[0] == CommandQueued(pending, 0)


def test_references_wrap_around_without_reusing_a_waiting_ones() -> None:
    gateway = Gateway()
    waiting = command(500.0)
    assert gateway.queue(waiting)[0] == CommandQueued(waiting, 0)
    for expected in range(1, REF_MODULUS):
        passing = command(500.0)
        assert gateway.queue(passing)[0] == CommandQueued(passing, expected)
        gateway.scheduler.command_withdrawn(passing)
    wrapped = command(500.0)
    assert gateway.queue(wrapped)[0] == CommandQueued(wrapped, 1)  # 0 still waits


def test_the_duty_cycle_budget_refuses_a_transmission_until_the_hour_has_room() -> None:
    duty = DutyCycle("EU868")
    gateway = Gateway(duty=duty)
    (tx,) = gateway.report(rx_done=50.0)
    assert gateway.scheduler.clear_to_send(tx, tx.at)
    duty.record(FREQUENCY_HZ, 36.0, 0.0)  # the whole 1 % of the hour in the 868.1 MHz band
    assert not gateway.scheduler.clear_to_send(tx, tx.at)
    assert gateway.scheduler.clear_to_send(tx, 3600.0 + 1)
    gateway.scheduler.transmitted(tx, airtime(len(tx.frame)), 3600.0 + 1)
    assert duty.used_fraction(FREQUENCY_HZ, 3600.0 + 2) > 0


def test_a_join_accept_waits_for_its_lease_on_disk_and_goes_in_the_join_window() -> None:
    gateway = Gateway()
    persist, tx = gateway.scheduler.join_answered(gateway.accepted, rx_done=10.0)
    assert persist == PersistLeases()
    assert isinstance(tx, Transmit)
    assert tx.at == 10.0 + gateway.accepted.send_after_s - TX_LEAD_S
    assert (tx.frame, tx.kind) == (gateway.accepted.frame, "join-accept")
    assert tx.summary == {"address": f"0x{gateway.accepted.lease.address:04x}"}


def test_a_join_refusal_goes_in_the_join_window_without_a_lease_write() -> None:
    refusal = JoinRefused(EUI, DEVICE, "pool_exhausted", b"\x13\x00", send_after_s=1.0)
    (tx,) = Gateway().scheduler.join_answered(refusal, rx_done=10.0)
    assert isinstance(tx, Transmit)
    assert (tx.at, tx.kind, tx.frame) == (11.0 - TX_LEAD_S, "join-refused", b"\x13\x00")


def test_a_sent_command_out_of_time_waits_for_its_answer_while_the_next_one_goes() -> None:
    gateway = Gateway()
    first, second = command(60.0), command(500.0, "relay", on=False)
    gateway.queue(first)
    gateway.queue(second)
    (tx,) = gateway.report(rx_done=50.0)
    gateway.scheduler.transmitted(tx, 0.1, tx.at)
    (tx,) = gateway.report(rx_done=70.0)  # the first is out of time: not sent again
    assert (tx.kind, tx.command_ref) == ("command", 1)
    assert gateway.scheduler.queued(DEVICE) == 2  # the first may still be answered
    actions = gateway.answer(0, rx_done=80.0, status=ResultCode.EXECUTED)
    assert actions[0] == ResolveCommand(first, CommandStatus.EXECUTED, "pong")


def test_in_a_fleet_a_command_takes_the_reference_the_fleet_names_without_reserving() -> None:
    gateway = Gateway(ref_of=command_ref)
    first = command(500.0)
    expected = command_ref(DEVICE, "c1")
    assert gateway.scheduler.command_queued(first) == [
        CommandQueued(first, expected),
        WakeAt(500.0),
    ]
    (tx,) = gateway.report(rx_done=50.0)
    assert tx.command_ref == expected
    assert gateway.node.open_downlink(tx.frame).command.ref == expected  # type: ignore[union-attr]


def test_a_device_that_left_for_another_gateway_ends_its_commands_here() -> None:
    gateway = Gateway()
    first, second = command(500.0), command(600.0, "relay", on=True)
    gateway.queue(first)
    gateway.queue(second)
    (tx,) = gateway.report(rx_done=50.0)
    gateway.scheduler.transmitted(tx, 0.1, tx.at)  # the first one may be on air already
    actions = gateway.scheduler.device_left(DEVICE, "served_elsewhere")
    assert only(actions, ResolveCommand) == [
        ResolveCommand(first, CommandStatus.REJECTED, "served_elsewhere"),
        ResolveCommand(second, CommandStatus.REJECTED, "served_elsewhere"),
    ]
    assert gateway.scheduler.queued(DEVICE) == 0
    assert gateway.scheduler.timer_due(10_000.0) == []
