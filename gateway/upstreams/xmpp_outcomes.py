"""How a command's outcome answers the IQ it came in: one pure table, no I/O.

Only final statuses answer the IQ; ``accepted`` and ``sent`` give ``None`` (they may travel
as progress messages instead). ``rejected`` splits on the bridge's reason: a detail that names
an unknown device becomes ``item-not-found``, a command too large ``not-acceptable`` (RFC 6120
8.3.3.9: it does not meet the gateway's criteria), any other rejection ``bad-request``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

from gateway.model import CommandResult, CommandStatus

_UNKNOWN_DEVICE = re.compile(r"unknown[ _-]device", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class IqAnswer:
    """What to put in the IQ reply. ``condition`` etc. are None for ``type='result'``."""

    iq_type: Literal["result", "error"]
    condition: str | None = None  # RFC 6120 stanza error condition
    error_type: Literal["cancel", "modify", "wait", "auth"] | None = None
    text: str | None = None
    app_condition: str | None = None  # element name in urn:duogate:1 inside <error/>


EXECUTED = IqAnswer("result")

# Answer for a command from a JID not on xmpp.allowed_jids (never reaches the bridge).
FORBIDDEN = IqAnswer("error", "forbidden", "auth", "sender is not allowed to send commands")


def is_unknown_device(detail: str | None) -> bool:
    return bool(detail) and _UNKNOWN_DEVICE.search(detail or "") is not None


def iq_answer_for(result: CommandResult) -> IqAnswer | None:
    status = result.status
    detail = result.detail
    if status is CommandStatus.EXECUTED:
        return EXECUTED
    if status is CommandStatus.FAILED:
        return IqAnswer("error", "undefined-condition", "cancel", detail or "command failed")
    if status is CommandStatus.EXPIRED:
        return IqAnswer("error", "not-acceptable", "modify", detail or "command expired", "expired")
    if status is CommandStatus.REJECTED:
        if is_unknown_device(detail):
            return IqAnswer("error", "item-not-found", "cancel", detail)
        if detail == "too_large":
            return IqAnswer("error", "not-acceptable", "modify", detail)
        return IqAnswer("error", "bad-request", "modify", detail or "malformed command")
    if status is CommandStatus.TIMEOUT:
        return IqAnswer(
            "error", "remote-server-timeout", "wait", detail or "device did not answer in time"
        )
    return None
