"""Fleet commands at one gateway: whether its bridge takes a command published on the fleet
topic, the commands it keeps for devices served elsewhere (carried out should a device come
here), and the one answer for a kept command nobody can carry out any more."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from gateway.fleet.kept_commands import KeptCommands
from gateway.fleet.link import FleetLink
from gateway.model import CommandResult, CommandStatus, IncomingCommand
from gateway.protocol.fleet import SessionRecord
from gateway.tasks import TaskSet

log = logging.getLogger("duogate.fleet")

OWNER_OFFLINE = "owner_offline"


class Ownership(Protocol):
    """Who serves which device, as the fleet coordinator knows it."""

    me: str
    records: dict[str, SessionRecord]
    alive: dict[str, bool]
    serving: set[str]


class FleetCommands:
    def __init__(
        self,
        owners: Ownership,
        link: FleetLink,
        kept: KeptCommands,
        tasks: TaskSet,
        *,
        owns_locally: Callable[[str], bool],
    ) -> None:
        self.owners = owners
        self.link = link
        self.kept = kept
        self._tasks = tasks
        self._owns_locally = owns_locally

    def arrived(self, incoming: IncomingCommand) -> bool:
        """A fleet command arrived; True if this gateway's bridge is to take it."""
        device, owners = incoming.device, self.owners
        if not device.startswith("lora-"):
            return self._owns_locally(device)  # a Modbus or BLE device: the gateway that has it
        if device not in owners.records:
            return self.first_alive() == owners.me
        self.kept.keep(incoming)
        if device in owners.serving:
            return True
        log.info(
            "fleet: a command for %s kept (served by %s)", device, owners.records[device].owner
        )
        return False

    def first_alive(self) -> str:
        """The gateway that answers a fleet command for a LoRa device nobody has a session
        of (``rejected``, ``device_not_joined``): one for the whole fleet."""
        return min(gateway for gateway, alive in self.owners.alive.items() if alive)

    def deliver_kept(self, device: str) -> None:
        """Carry out the fleet's commands for ``device`` that have no outcome yet."""
        for incoming in self.kept.open_for(device):
            self._tasks.spawn(self.link.deliver(incoming))

    def answer_abandoned(self) -> None:
        """A kept command whose device's owner went offline without an outcome is answered
        ``timeout`` (``owner_offline``: whether the node ran it is not known) by one gateway,
        the first online one by name."""
        for kept in self.kept.take_due():
            device = kept.incoming.device
            record = self.owners.records.get(device)
            if record is None or self.owners.alive.get(record.owner, False):
                continue  # its owner answers it
            if self.first_alive() != self.owners.me:
                continue
            result = CommandResult(
                kept.command_id, device, CommandStatus.TIMEOUT, time.time(), OWNER_OFFLINE
            )
            log.info("command %r for %s: %s, no outcome", kept.command_id, device, OWNER_OFFLINE)
            self._tasks.spawn(self._answer(result, kept.incoming.reply_to))

    def on_result(self, topic: str, payload: bytes, _arrival: float) -> None:
        """A result on the fleet topic: a final one ends the keeping of its command."""
        try:
            result = json.loads(payload)
            command_id, status = result["id"], result["status"]
        except (ValueError, KeyError, TypeError):
            return
        if status not in ("accepted", "sent") and isinstance(command_id, str):
            self.kept.answered(command_id, self.link.topics.device_of(topic))

    async def _answer(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        try:
            await self.link.publish_result(result, reply_to)
        except Exception as exc:
            log.warning("fleet: result of %r not published: %s", result.id, exc)
