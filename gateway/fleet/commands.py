"""Fleet commands at one gateway: whether its bridge takes a command published on the fleet
topic, the commands it keeps for devices served elsewhere (carried out should a device come
here), and the one answer for a kept command nobody can carry out any more."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from typing import Protocol

from gateway.fleet.kept_commands import KeptCommand, KeptCommands
from gateway.fleet.link import FleetLink
from gateway.model import CommandResult, CommandStatus, IncomingCommand
from gateway.protocol.fleet import SessionRecord
from gateway.tasks import TaskSet
from gateway.upstreams.base import UpstreamError

log = logging.getLogger("duogate.fleet")

OWNER_OFFLINE = "owner_offline"
# A gateway whose broker connection drops for a moment is reported offline (its will) and back
# online a second later; its commands are answered ``owner_offline`` only once it has been
# offline this long, so that a short drop does not give a command two outcomes.
OWNER_GONE_S = 15.0


class Ownership(Protocol):
    """Who serves which device, as the fleet coordinator knows it."""

    me: str
    records: dict[str, SessionRecord]
    alive: dict[str, bool]
    offline_since: dict[str, float]  # monotonic; gateways offline now
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
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.owners = owners
        self.link = link
        self.kept = kept
        self._tasks = tasks
        self._owns_locally = owns_locally
        self._mono = monotonic
        self._answering: set[str] = set()  # kept commands whose answer is being published
        link.subscribe_extra(link.topics.all_results, self.on_result, 1)

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
        """A kept command whose device's owner went offline (``OWNER_GONE_S`` ago at least)
        without an outcome is answered ``timeout`` (``owner_offline``: whether the node ran
        it is not known) by one gateway, the first online one by name, which keeps it until
        the answer is published (tried again at the next call). The others keep it until
        that answer shows on the fleet topic or its time is over: should the answering
        gateway go away first, the next one answers."""
        for kept in self.kept.due():
            device = kept.incoming.device
            record = self.owners.records.get(device)
            owner_gone = record is not None and self._gone(record.owner)
            if not owner_gone or self.first_alive() != self.owners.me:
                if self.kept.over(kept):
                    self.kept.drop(kept.command_id)
                continue  # its owner answers it, or the first gateway online does
            if kept.command_id in self._answering:
                continue
            self._answering.add(kept.command_id)
            self._tasks.spawn(self._answer(kept))

    def _gone(self, gateway: str) -> bool:
        """Offline for ``OWNER_GONE_S`` at least (or for as long as this gateway knows)."""
        if self.owners.alive.get(gateway, False):
            return False
        since = self.owners.offline_since.get(gateway)
        return since is None or self._mono() - since >= OWNER_GONE_S

    def on_result(self, topic: str, payload: bytes, _arrival: float) -> None:
        """A result on the fleet topic: a final one ends the keeping of its command."""
        try:
            result = json.loads(payload)
            command_id, status = result["id"], result["status"]
        except (ValueError, KeyError, TypeError):
            return
        if status not in ("accepted", "sent") and isinstance(command_id, str):
            self.kept.answered(command_id, self.link.topics.device_of(topic))

    async def _answer(self, kept: KeptCommand) -> None:
        device, command_id = kept.incoming.device, kept.command_id
        result = CommandResult(
            command_id, device, CommandStatus.TIMEOUT, time.time(), OWNER_OFFLINE
        )
        try:
            await self.link.publish_result(result, kept.incoming.reply_to)
        except UpstreamError as exc:
            log.info("fleet: result of %r not published yet: %s", command_id, exc)
            return
        finally:
            self._answering.discard(command_id)
        self.kept.drop(command_id)
        log.info("command %r for %s: %s, no outcome", command_id, device, OWNER_OFFLINE)
