"""The fleet commands a gateway keeps for devices another gateway serves: should a device come
to this gateway before its command has an outcome, this gateway carries it out."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from gateway.model import IncomingCommand
from gateway.protocol.envelope import EnvelopeRejected, parse_envelope
from gateway.protocol.expiry import ExpiryPolicy, ExpiryRejected, compute_deadline

COMMANDS_KEPT = 10_000


@dataclass(frozen=True, slots=True)
class KeptCommand:
    incoming: IncomingCommand
    command_id: str
    until: float  # monotonic: dropped after, unless this gateway is to answer it
    answer_by: float  # monotonic: its deadline and the node's time to answer have passed


class KeptCommands:
    """Kept until a final result appears on the fleet topic or their time is over."""

    def __init__(
        self,
        *,
        keep_s: float,
        answer_s: float,
        policy: ExpiryPolicy,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self._keep_s = keep_s
        self._answer_s = answer_s
        self._policy = policy
        self._mono = monotonic
        self._wall = wall
        self._commands: OrderedDict[str, KeptCommand] = OrderedDict()

    def __len__(self) -> int:
        return len(self._commands)

    def keep(self, incoming: IncomingCommand) -> None:
        """Keep a command as it arrived; one its owner will refuse anyway is not kept."""
        try:
            envelope = parse_envelope(incoming.body)
            now_mono, now_wall = self._mono(), self._wall()
            deadline = compute_deadline(
                self._policy,
                arrival_mono=incoming.received_mono,
                arrival_wall=now_wall - (now_mono - incoming.received_mono),
                expires_at=envelope.expires_at,
                ttl_s=envelope.ttl_s,
                transport_expiry_s=incoming.expiry_s,
            )
        except (EnvelopeRejected, ExpiryRejected):
            return
        until = incoming.received_mono + self._keep_s
        self._commands[envelope.id] = KeptCommand(
            incoming, envelope.id, until, deadline + self._answer_s
        )
        while len(self._commands) > COMMANDS_KEPT:
            self._commands.popitem(last=False)

    def answered(self, command_id: str, device: str | None) -> None:
        """A final result of the command appeared on the fleet topic of ``device``."""
        kept = self._commands.get(command_id)
        if kept is not None and kept.incoming.device == device:
            del self._commands[command_id]

    def open_for(self, device: str) -> list[IncomingCommand]:
        """The device's kept commands with time left, as they arrived."""
        now = self._mono()
        return [
            k.incoming
            for k in self._commands.values()
            if k.incoming.device == device and k.answer_by > now
        ]

    def due(self) -> list[KeptCommand]:
        """The commands whose time to be answered has passed (still kept), oldest first."""
        now = self._mono()
        return [k for k in self._commands.values() if k.answer_by <= now or k.until <= now]

    def over(self, kept: KeptCommand) -> bool:
        """True once ``kept`` is past the time it is kept for (unless this gateway is to
        answer it)."""
        return kept.until <= self._mono()

    def drop(self, command_id: str) -> None:
        self._commands.pop(command_id, None)
