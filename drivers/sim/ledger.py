"""The world's ledger: what the nodes and the site did, one JSON object a line.

Each line is ``{"t": unix time, "event": NAME, ...}``, appended and flushed as it happens, so a
test or a person reads it while the world runs (``tail -f``):

==========  ==================================================================================
event       fields
==========  ==================================================================================
schedule    ``from`` ("start" or "gateways"): second 0 of moves and power periods
joined      ``node``, ``device``, ``session_id`` (the gateway's nonce in hex, as in report ids),
            ``address``
report      ``node``, ``device``, ``report_id`` (as the gateway forms it: device, session id,
            frame counter), ``counter`` (the report's own number), ``confirmed``; once per
            report and session, when it first goes on air
acked       ``node``, ``device``, ``report_id``, ``counter``: the node took the ack
command     ``node``, ``device``, ``ref``, ``action``, ``status`` (executed, failed, expired),
            ``repeated`` (true: a repeat answered from memory, not run again)
moved       ``node``, ``device``, ``to`` [x, y]
power       ``gateway``, ``on``
==========  ==================================================================================

A line costs one ``json.dumps`` and one write; a failing write (disk full) is logged once and
stops the ledger, never the world.

The node's lines come from ``NodeNotes`` (the news of ``drivers.sim.node.SimNode``) and
``TellingNode``, the library's node with word of the commands it answers.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Protocol

from gateway.protocol.frames import ResultCode
from gateway.protocol.session import report_id
from node import frames as node_frames
from node import session as ns

log = logging.getLogger(__name__)


class NodeLedger(Protocol):
    """What a node is given to write its lines with (its number and device are added)."""

    def __call__(self, event: str, /, **fields: Any) -> None: ...


class Ledger:
    """A JSON Lines file the world appends to; ``path`` None writes nothing."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.lines = 0
        self._file: IO[str] | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Line buffering: every line reaches the file as it is written.
            self._file = path.open("a", encoding="utf-8", buffering=1)

    @property
    def enabled(self) -> bool:
        return self._file is not None

    def write(self, event: str, /, **fields: Any) -> None:
        file = self._file
        if file is None:
            return
        try:
            file.write(json.dumps({"t": round(time.time(), 6), "event": event, **fields}) + "\n")
        except OSError as exc:
            log.error("ledger %s: write failed, no more lines: %s", self.path, exc)
            self.close()
            return
        self.lines += 1

    def for_node(self, index: int, device: str) -> NodeLedger | None:
        """A writer that adds ``node`` and ``device`` to each line; None when disabled."""
        if self._file is None:
            return None

        def note(event: str, /, **fields: Any) -> None:
            self.write(event, node=index, device=device, **fields)

        return note

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            try:
                file.close()
            except OSError as exc:
                log.error("ledger %s: %s", self.path, exc)


CommandNote = Callable[[int, str | None, int, bool], None]  # ref, action, status, repeated
_ANSWERED = (node_frames.EXECUTED, node_frames.FAILED, node_frames.EXPIRED)


class TellingNode(ns.Node):
    """The library's node, also telling ``on_command`` of each command it answers: run (its
    result comes through ``command_done``) or repeated and answered from memory, which the
    library does on its own, without news for the application."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_command: CommandNote | None = None
        self._actions: dict[int, str] = {}  # ref -> action, of commands handed over to run

    def received(self, phy: bytes, now: float, rssi: Any = None, snr: Any = None) -> list[Any]:
        if self.on_command is None:
            return super().received(phy, now, rssi, snr)
        repeats = self.stats["commands_repeated"]
        session = self.session
        actions = super().received(phy, now, rssi, snr)
        for action in actions:
            if isinstance(action, ns.Execute):
                self._actions[action.command.ref] = action.command.action
        if self.stats["commands_repeated"] != repeats and session is not None:
            # Rare, so the downlink is opened a second time to learn which command came back.
            command = node_frames.open_downlink(phy, session.keys, session.address).command
            for ref, status, _detail in self.commands:
                if command is not None and ref == command.ref and status in _ANSWERED:
                    self.on_command(ref, command.action, status, True)
        return actions

    def command_done(self, ref: int, status: int, detail: Any, now: float) -> list[Any]:
        running = any(entry[0] == ref and entry[1] not in _ANSWERED for entry in self.commands)
        actions = super().command_done(ref, status, detail, now)
        if running and self.on_command is not None:
            self.on_command(ref, self._actions.pop(ref, None), status, False)
        return actions


class NodeNotes:
    """A node's lines: ``event`` takes the library's news, ``report`` an uplink about to go on
    air for the first time in its session."""

    def __init__(self, ledger: NodeLedger, device_id: str, node: TellingNode) -> None:
        self._ledger = ledger
        self._device_id = device_id
        self._node = node
        self._report_ids: dict[int, str] = {}  # report number -> id, from air to ack
        node.on_command = self.command

    def event(self, event: Any) -> None:
        if isinstance(event, ns.Joined):
            session = self._node.session
            assert session is not None
            self._ledger("joined", session_id=session.gw_nonce.hex(), address=event.address)
        elif isinstance(event, ns.Acked) and event.kind == "report":
            rid = self._report_ids.pop(event.number, None)
            self._ledger("acked", report_id=rid, counter=event.number)
        elif isinstance(event, ns.Dropped) and event.kind == "report":
            self._report_ids.pop(event.number, None)

    def report(self, uplink: Any) -> None:
        session = self._node.session
        assert session is not None
        # The gateway's id of the report (gateway.protocol.session): the frame counter under
        # the session's id, the gateway's nonce in hex (join.Lease.session_id).
        rid = report_id(self._device_id, session.gw_nonce.hex(), uplink.counter)
        if uplink.confirmed:
            self._report_ids[uplink.number] = rid
        self._ledger("report", report_id=rid, counter=uplink.number, confirmed=uplink.confirmed)

    def command(self, ref: int, action: str | None, status: int, repeated: bool) -> None:
        name = ResultCode(status).name.lower()
        self._ledger("command", ref=ref, action=action, status=name, repeated=repeated)
