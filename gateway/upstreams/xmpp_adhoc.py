"""XEP-0050 ad-hoc commands on the gateway JID, for people using a stock XMPP client.

"List devices" shows the device table twice: as an XEP-0004 result form (``<reported>``
columns and one ``<item>`` per device, drawn as a table by graphical clients) and as plain
text in the first ``<note>`` (text clients such as Profanity print the note but not the rows
of a form). "Send command" takes a form (device, action, params JSON, ttl_s), hands the
command to the bridge like an IQ command, and shows its outcome when it is known or after
``wait_s`` (a later outcome then follows as a message).

Both commands exist only for JIDs on ``xmpp.allowed_jids``: anyone else gets an empty command
list (disco#items on the commands node) and ``forbidden`` for disco#info on a command node or
for running one, as XEP-0050 allows.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from slixmpp import JID, ClientXMPP
from slixmpp.exceptions import XMPPError
from slixmpp.plugins.xep_0030.stanza import DiscoInfo, DiscoItems
from slixmpp.plugins.xep_0050.stanza import Command

from gateway.model import CommandResult, CommandStatus, IncomingCommand

log = logging.getLogger(__name__)

LIST_DEVICES_NODE = "list-devices"
SEND_COMMAND_NODE = "send-command"
COMMANDS_NODE = Command.namespace  # the disco node listing the commands

DeviceLister = Callable[[], list[dict[str, Any]]]
Notifier = Callable[[str, CommandResult], None]

AdhocSession = dict[str, Any]

_FINISHED_KEEP_S = 60.0
_OPEN_FORM_KEEP_S = 900.0  # a form left open longer than this must be started again


class AdhocCommands:
    def __init__(
        self,
        client: ClientXMPP,
        *,
        is_allowed: Callable[[JID], bool],
        list_devices: DeviceLister,
        submit: Callable[[IncomingCommand], Awaitable[None]],
        notify_late: Notifier,
        wait_s: float,
        counters: Counter[str],
    ) -> None:
        self._client = client
        self._is_allowed = is_allowed
        self._list_devices = list_devices
        self._submit = submit
        self._notify_late = notify_late
        self._wait_s = wait_s
        self._counters = counters
        self._waiters: dict[str, asyncio.Future[CommandResult]] = {}
        self._last_status: dict[str, CommandStatus] = {}
        self._offered_on: set[str] = set()

    def offer(self, jid: JID) -> None:
        """Announce both commands on the bound JID (once per distinct JID), to allowed JIDs."""
        if jid.full in self._offered_on:
            return
        self._offered_on.add(jid.full)
        adhoc = self._client.plugin["xep_0050"]
        adhoc.add_command(jid, LIST_DEVICES_NODE, "List devices", self._list_start)
        adhoc.add_command(jid, SEND_COMMAND_NODE, "Send command", self._send_start)
        disco = self._client.plugin["xep_0030"]
        disco.set_node_handler("get_items", jid, COMMANDS_NODE, self._command_list)
        for node in (LIST_DEVICES_NODE, SEND_COMMAND_NODE):
            disco.set_node_handler("get_info", jid, node, self._command_info)

    def _command_list(
        self, jid: JID, node: str, requester: JID | None, query: Any
    ) -> DiscoItems | None:
        """disco#items on the commands node: the commands, or nothing for a stranger."""
        if requester is not None and not self._is_allowed(requester):
            self._counters["adhoc_hidden"] += 1
            empty = DiscoItems()
            empty["node"] = node
            return empty
        return self._client.plugin["xep_0030"].static.get_items(jid, node, requester, query)

    def _command_info(
        self, jid: JID, node: str, requester: JID | None, query: Any
    ) -> DiscoInfo | None:
        """disco#info on one command node; a stranger learns nothing about it."""
        if requester is not None:
            self._check(requester)
        return self._client.plugin["xep_0030"].static.get_info(jid, node, requester, query)

    def deliver(self, result: CommandResult, reply_to: dict[str, Any]) -> None:
        """A result for a command that came in through the form."""
        command_id = str(reply_to.get("adhoc", ""))
        if not result.status.final:
            self._last_status[command_id] = result.status
            return
        self._last_status.pop(command_id, None)
        waiter = self._waiters.get(command_id)
        if waiter is not None and not waiter.done():
            waiter.set_result(result)
            return
        recipient = reply_to.get("from")
        if isinstance(recipient, str) and recipient:
            self._notify_late(recipient, result)

    def _forget_later(self, session: AdhocSession, delay_s: float) -> None:
        """XEP-0050 keeps every session, finished ones too; drop ours after a while."""
        sessions = self._client.plugin["xep_0050"].sessions
        asyncio.get_running_loop().call_later(delay_s, sessions.pop, session["id"], None)

    def _check(self, sender: JID) -> None:
        if not self._is_allowed(sender):
            self._counters["adhoc_forbidden"] += 1
            log.warning("xmpp: ad-hoc command from %s refused: not on allowed_jids", sender.bare)
            raise XMPPError("forbidden", text="not allowed to use this gateway", etype="auth")

    def _form(self, ftype: str, title: str) -> Any:
        return self._client.plugin["xep_0004"].make_form(ftype=ftype, title=title)

    def _list_start(self, iq: Any, session: AdhocSession) -> AdhocSession:
        self._check(iq["from"])
        self._forget_later(session, _FINISHED_KEEP_S)
        try:
            devices = self._list_devices()
        except Exception as exc:
            log.exception("xmpp: list_devices failed")
            session.update(payload=None, next=None, notes=[("error", f"device list: {exc}")])
            return session
        columns = _columns(devices)
        rows = [[_cell(device.get(column)) for column in columns] for device in devices]
        form = self._form("result", "Devices")
        for column in columns:
            form.add_reported(column, ftype="text-single", label=column)
        for row in rows:
            form.add_item(dict(zip(columns, row, strict=True)))
        note = f"{_count(len(devices), 'device')}\n{text_table(columns, rows)}"
        session.update(payload=form, next=None, notes=[("info", note)])
        return session

    def _send_start(self, iq: Any, session: AdhocSession) -> AdhocSession:
        self._check(iq["from"])
        self._forget_later(session, _OPEN_FORM_KEEP_S)
        form = self._form("form", "Send a command to a device")
        known = sorted(str(d.get("device", "")) for d in self._safe_devices() if d.get("device"))
        if known:
            options = [{"label": device, "value": device} for device in known]
            form.add_field("device", "list-single", label="Device", required=True, options=options)
        else:
            form.add_field("device", "text-single", label="Device id", required=True)
        form.add_field("action", "text-single", label="Action", required=True)
        form.add_field("params", "text-multi", label="Parameters (JSON object)", value="{}")
        form.add_field("ttl_s", "text-single", label="Time to live (seconds)", value="60")
        session.update(payload=form, next=self._send_submit, has_next=False)
        return session

    def _safe_devices(self) -> list[dict[str, Any]]:
        try:
            return self._list_devices()
        except Exception:
            log.exception("xmpp: list_devices failed")
            return []

    async def _send_submit(self, payload: Any, session: AdhocSession) -> AdhocSession:
        sender: JID = session["from"]
        self._check(sender)
        self._forget_later(session, _FINISHED_KEEP_S)
        session.update(payload=None, next=None)
        form = payload[0] if isinstance(payload, list) and payload else payload
        try:
            device, body = _command_from_form(form.get_values() if form else {})
        except ValueError as exc:
            self._counters["adhoc_malformed"] += 1
            session["notes"] = [("error", str(exc))]
            return session
        command_id = body["id"]
        waiter: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = waiter
        try:
            await self._submit(
                IncomingCommand(
                    origin="xmpp",
                    device=device,
                    body=body,
                    received_mono=time.monotonic(),
                    reply_to={"adhoc": command_id, "from": sender.full},
                )
            )
            result = await asyncio.wait_for(asyncio.shield(waiter), self._wait_s)
        except TimeoutError:
            status = self._last_status.get(command_id, CommandStatus.ACCEPTED)
            note = f"command {command_id} is still {status}; its outcome follows as a message"
            session["notes"] = [("warn", note)]
            return session
        finally:
            self._waiters.pop(command_id, None)
        level = "info" if result.status is CommandStatus.EXECUTED else "error"
        text = f"{device} {body['action']}: {result.status}"
        if result.detail:
            text += f" ({result.detail})"
        session["notes"] = [(level, text)]
        session["payload"] = self._result_form(result)
        return session

    def _result_form(self, result: CommandResult) -> Any:
        form = self._form("result", "Command outcome")
        for name, value in result.to_wire().items():
            form.add_field(name, "text-single", label=name, value=str(value))
        return form


def _command_from_form(values: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    device = _text(values.get("device"))
    action = _text(values.get("action"))
    if not device:
        raise ValueError("device is required")
    if not action:
        raise ValueError("action is required")
    params_text = _text(values.get("params")) or "{}"
    try:
        params = json.loads(params_text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"params is not JSON: {exc.msg} at char {exc.pos}") from None
    if not isinstance(params, dict):
        raise ValueError(f"params must be a JSON object, got {type(params).__name__}")
    ttl_text = _text(values.get("ttl_s")) or "60"
    try:
        ttl_s = float(ttl_text)
    except ValueError:
        raise ValueError(f"ttl_s must be a number of seconds, got {ttl_text!r}") from None
    if not math.isfinite(ttl_s) or ttl_s <= 0:
        raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_text!r}")
    body = {"id": f"adhoc-{uuid.uuid4().hex[:16]}", "action": action, "params": params}
    body["ttl_s"] = ttl_s
    return device, body


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\n".join(str(v) for v in value).strip()
    return str(value).strip()


def text_table(columns: list[str], rows: list[list[str]]) -> str:
    """Rows as left-aligned plain-text columns under a header line (one line per row)."""
    lines = [columns, *([_one_line(cell) for cell in row] for row in rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(columns))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _one_line(cell: str) -> str:
    return " ".join(cell.split())


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _columns(devices: list[dict[str, Any]]) -> list[str]:
    columns: list[str] = ["device"]
    for device in devices:
        for key in device:
            if key not in columns:
                columns.append(key)
    return columns


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)
