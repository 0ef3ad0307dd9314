"""XEP-0050 ad-hoc commands as a desktop or text client sees them, on prosody and ejabberd.

The client is xmpppy, not the slixmpp the gateway is built on, and the answers are read as
plain XML: a form the gateway's own library would parse happily but another client could not
show is caught here. Text clients such as Profanity print the first ``<note>`` and ignore the
rows of a result form, so the device table must be in both.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.servers import XmppServer
from tests.xmpp_fixtures import (
    COMMANDS_NS,
    DATA_NS,
    DEVICES,
    DISCO_INFO_NS,
    DISCO_ITEMS_NS,
    KNOWN,
    Rig,
    TextClient,
    error_condition,
    running_rig,
)

COMMAND = f"{{{COMMANDS_NS}}}command"
FORM = f"{{{DATA_NS}}}x"
COMMAND_NODES = ("list-devices", "send-command")


@pytest.fixture
async def rig(xmpp_server: XmppServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with running_rig(xmpp_server, tmp_path) as rig:
        yield rig


@pytest.fixture
async def text_clients(rig: Rig) -> AsyncIterator[dict[str, TextClient]]:
    """alice (allowed), bob (a subscriber, not allowed) and mallory (a stranger)."""
    clients: dict[str, TextClient] = {}
    try:
        for name in ("alice", "bob", "mallory"):
            clients[name] = await TextClient(rig.server, rig.jids[name], f"pw-{name}").connect()
        yield clients
    finally:
        for client in clients.values():
            await client.close()


def command_of(answer: ET.Element) -> ET.Element:
    assert answer.get("type") == "result", ET.tostring(answer)
    command = answer.find(COMMAND)
    assert command is not None, ET.tostring(answer)
    return command


def notes(command: ET.Element) -> list[tuple[str | None, str]]:
    return [(note.get("type"), note.text or "") for note in command.iter(f"{{{COMMANDS_NS}}}note")]


def field_values(container: ET.Element) -> dict[str, str]:
    """var -> value of the <field/> children of a form or of one of its <item/> rows."""
    return {
        str(field.get("var")): field.findtext(f"{{{DATA_NS}}}value", default="")
        for field in container.findall(f"{{{DATA_NS}}}field")
    }


async def test_list_devices_shows_rows_in_the_form_and_in_the_note(
    rig: Rig, text_clients: dict[str, TextClient]
):
    answer = await text_clients["alice"].execute(str(rig.upstream.jid), "list-devices")
    command = command_of(answer)
    assert command.get("status") == "completed"

    form = command.find(FORM)
    assert form is not None and form.get("type") == "result"
    assert form.findtext(f"{{{DATA_NS}}}title") == "Devices"
    reported = form.findall(f"{{{DATA_NS}}}reported/{{{DATA_NS}}}field")
    assert [(f.get("var"), f.get("label"), f.get("type")) for f in reported] == [
        ("device", "device", "text-single"),
        ("kind", "kind", "text-single"),
        ("name", "name", "text-single"),
        ("online", "online", "text-single"),
    ]
    rows = [field_values(item) for item in form.findall(f"{{{DATA_NS}}}item")]
    assert rows == [
        {"device": KNOWN, "kind": "lora", "name": "greenhouse", "online": "true"},
        {"device": "modbus-bus1-3", "kind": "modbus", "name": "meter", "online": "false"},
    ]
    assert len(rows) == len(DEVICES)

    # The first note is what a text client prints: the same rows as plain text.
    assert notes(command) == [
        (
            "info",
            "2 devices\n"
            "device                 kind    name        online\n"
            f"{KNOWN}  lora    greenhouse  true\n"
            "modbus-bus1-3          modbus  meter       false",
        )
    ]


async def test_commands_are_hidden_from_jids_not_allowed_to_run_them(
    rig: Rig, text_clients: dict[str, TextClient]
):
    gateway = str(rig.upstream.jid)
    listing = await text_clients["alice"].disco_items(gateway, COMMANDS_NS)
    assert listing.get("type") == "result"
    items = listing.findall(f"{{{DISCO_ITEMS_NS}}}query/{{{DISCO_ITEMS_NS}}}item")
    assert [(i.get("node"), i.get("name"), i.get("jid")) for i in items] == [
        ("list-devices", "List devices", gateway),
        ("send-command", "Send command", gateway),
    ]
    info = await text_clients["alice"].disco_info(gateway, "list-devices")
    identity = info.find(f"{{{DISCO_INFO_NS}}}query/{{{DISCO_INFO_NS}}}identity")
    assert identity is not None
    assert (identity.get("category"), identity.get("type")) == ("automation", "command-node")

    for name in ("bob", "mallory"):
        client = text_clients[name]
        hidden = await client.disco_items(gateway, COMMANDS_NS)
        assert hidden.get("type") == "result", f"{name}: {ET.tostring(hidden)!r}"
        query = hidden.find(f"{{{DISCO_ITEMS_NS}}}query")
        assert query is not None and list(query) == [], f"{name} sees {ET.tostring(query)!r}"
        for node in COMMAND_NODES:
            assert error_condition(await client.disco_info(gateway, node)) == "forbidden"
            assert error_condition(await client.execute(gateway, node)) == "forbidden"

    assert rig.bridge.commands == []
    assert rig.upstream.counters["adhoc_hidden"] == 2
    assert rig.upstream.counters["adhoc_forbidden"] == 8


async def test_send_command_form_hands_the_command_over_and_shows_its_outcome(
    rig: Rig, text_clients: dict[str, TextClient]
):
    gateway, alice = str(rig.upstream.jid), text_clients["alice"]
    opened = command_of(await alice.execute(gateway, "send-command"))
    assert opened.get("status") == "executing"
    form = opened.find(FORM)
    assert form is not None and form.get("type") == "form"
    fields = {f.get("var"): f for f in form.findall(f"{{{DATA_NS}}}field")}
    assert list(fields) == ["device", "action", "params", "ttl_s"]
    device_field = fields["device"]
    assert device_field.get("type") == "list-single"
    options = device_field.findall(f"{{{DATA_NS}}}option/{{{DATA_NS}}}value")
    assert [o.text for o in options] == [KNOWN, "modbus-bus1-3"]
    session = opened.get("sessionid")
    assert session

    done = command_of(
        await alice.execute(
            gateway, "send-command", action="complete", sessionid=session,
            submit={"device": KNOWN, "action": "relay", "params": '{"on": false}', "ttl_s": "20"},
        )
    )  # fmt: skip
    assert done.get("status") == "completed"
    assert notes(done) == [("info", f"{KNOWN} relay: executed")]
    outcome = done.find(FORM)
    assert outcome is not None
    values = field_values(outcome)
    assert values["status"] == "executed" and values["id"].startswith("adhoc-")
    handed = rig.bridge.commands[-1]
    assert handed.origin == "xmpp" and handed.device == KNOWN
    assert handed.body["params"] == {"on": False} and handed.body["ttl_s"] == 20.0
    assert handed.body["id"] == values["id"]
    assert handed.reply_to["from"] == f"{rig.jids['alice']}/text"

    reopened = command_of(await alice.execute(gateway, "send-command"))
    refused = command_of(
        await alice.execute(
            gateway, "send-command", action="complete", sessionid=reopened.get("sessionid"),
            submit={"device": KNOWN, "action": "relay", "params": "{on", "ttl_s": "20"},
        )
    )  # fmt: skip
    assert refused.get("status") == "completed"
    [(level, text)] = notes(refused)
    assert level == "error" and text.startswith("params is not JSON")
    assert len(rig.bridge.commands) == 1
