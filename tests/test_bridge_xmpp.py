"""The whole loop over XMPP against real prosody and ejabberd (TLS with their own CA, XEP-0198):
simulated nodes -> real SX127x driver -> bridge -> outbox -> XMPP subscriber, and command IQs
from an allowed JID back down to the nodes.

The gateway is built from its config by ``Gateway.build`` (``radio.driver = "sim"``, node
timing scaled down); stock slixmpp clients on their own accounts play the subscriber and the
people sending commands.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from slixmpp import Iq

from gateway.config import Config, parse_config
from gateway.protocol import frames
from gateway.timefmt import rfc3339
from tests.bridge_fixtures import (
    AckDropper,
    assert_no_gaps,
    fast_settings,
    running_gateway,
    world_of,
)
from tests.bridge_xmpp_fixtures import XmppWatcher, answer, xmpp_of, xmpp_settings
from tests.servers import XmppServer
from tests.xmpp_fixtures import refused

TIMEOUT = 30.0
STANZAS = "urn:ietf:params:xml:ns:xmpp-stanzas"
UNKNOWN = "lora-00000000000000ff"


# -- helpers ------------------------------------------------------------------------------


def xmpp_config(
    server: XmppServer, tmp_path: Path, *, nodes: int = 1, **commands: Any
) -> tuple[Config, dict[str, str]]:
    """A gateway relaying to XMPP only."""
    settings = fast_settings(tmp_path / "data", 1, nodes=nodes)
    settings["mqtt"] = {"enabled": False}
    settings["xmpp"], jids = xmpp_settings(server, tmp_path)
    settings["commands"] = {**settings["commands"], **commands}
    return parse_config(settings), jids


def condition(iq: Iq) -> tuple[str, str]:
    return iq["error"]["type"], iq["error"]["condition"]


# -- reports and commands ---------------------------------------------------------------------


async def test_reports_reach_the_subscriber_and_command_iqs_get_their_outcome(
    xmpp_server: XmppServer, tmp_path: Path
) -> None:
    config, jids = xmpp_config(xmpp_server, tmp_path, node_answer_timeout_s=1.0)
    alice = await XmppWatcher(xmpp_server, jids["alice"], "pw-alice").connect()
    mallory = await XmppWatcher(xmpp_server, jids["mallory"], "pw-mallory").connect()
    async with running_gateway(config) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        upstream = xmpp_of(gateway)
        to = upstream.jid
        await alice.wait_for_counters([device], 2)

        # Two at once for one node: each gets its own command reference, both run.
        executed, pinged = await asyncio.gather(
            alice.command(
                to, device=device, id="c-on", action="relay", ttl_s="20", params='{"on": true}'
            ),
            alice.command(to, device=device, id="c-ping", action="ping", ttl_s="20"),
        )
        assert answer(executed) == ("result", "executed", None)
        assert answer(pinged) == ("result", "executed", None)
        assert pinged["duogate_result"]["detail"] == "pong"
        assert node.relay is True

        late = await refused(
            alice.command(to, device=device, id="c-late", action="relay",
                          expires=rfc3339(time.time() - 5), params='{"on": false}')
        )  # fmt: skip
        assert answer(late) == ("error", "expired", "expired")
        assert condition(late) == ("modify", "not-acceptable")

        stranger = await refused(alice.command(to, device=UNKNOWN, id="c-who", action="ping"))
        assert answer(stranger) == ("error", "rejected", None)
        assert condition(stranger) == ("cancel", "item-not-found")

        # Malformed: refused by the upstream (no device, params not an object) or the bridge.
        no_device = await refused(alice.command(to, id="c-m1", action="ping"))
        bad_params = await refused(
            alice.command(to, device=device, id="c-m2", action="relay", params="[1, 2]")
        )
        no_action = await refused(alice.command(to, device=device, id="c-m3"))
        for iq in (no_device, bad_params, no_action):
            assert condition(iq) == ("modify", "bad-request")
        assert answer(no_action) == ("error", "rejected", None)
        assert no_action["error"]["text"] == "missing_action"

        forbidden = await refused(
            mallory.command(to, device=device, id="c-evil", action="relay", params='{"on": false}')
        )
        assert condition(forbidden) == ("auth", "forbidden")

        # Timeout: the node never hears the command (its downlinks are lost), so never answers.
        dropper = AckDropper(node, 1000, only=frames.Flag.COMMAND)
        silent = await refused(
            alice.command(to, device=device, id="c-lost", action="relay", ttl_s="2",
                          params='{"on": false}')
        )  # fmt: skip
        node.link = dropper.inner
        assert answer(silent) == ("error", "timeout", None)
        assert condition(silent) == ("wait", "remote-server-timeout")
        assert dropper.left < 1000, "the command was never sent"

        # Reports keep flowing after all that.
        await alice.wait_for_counters([device], alice.counter(device) + 2)
        assert gateway.bridge is not None and gateway.bridge.commands is not None
        assert await gateway.bridge.commands.get("xmpp", device, "c-evil") is None
        assert upstream.counters["commands_forbidden"] == 1
        assert upstream.counters["commands_malformed"] == 2
    await alice.drop()
    await mallory.drop()

    assert node.relay is True  # only c-on and c-ping ever reached the node
    executed_on_node = sorted((c.action, c.params) for c in node.executed)
    assert executed_on_node == [("ping", {}), ("relay", {"on": True})]
    assert alice.statuses("c-on") == ["accepted", "sent"]  # progress; the IQ has the outcome
    assert alice.statuses("c-lost") == ["accepted", "sent"]
    assert alice.statuses("c-late") == []
    assert mallory.results == [] and mallory.reports == []
    reports = alice.by_device()
    assert set(reports) == {device}
    assert_no_gaps(reports, [device], ids_once=False)
    first = reports[device][0]
    assert (first["kind"], first["data"]["counter"]) == ("lora", 1)
    assert set(first["data"]) == {"counter", "temperature_c", "relay"}
    assert isinstance(first["rssi"], float) and isinstance(first["snr"], float)
    assert any(r["data"]["relay"] for r in reports[device]), "no report showed the relay on"


async def test_server_killed_mid_stream_loses_no_report(
    xmpp_server: XmppServer, tmp_path: Path
) -> None:
    config, jids = xmpp_config(xmpp_server, tmp_path, nodes=2)
    alice = await XmppWatcher(xmpp_server, jids["alice"], "pw-alice").connect()
    async with running_gateway(config) as gateway:
        devices = [node.device_id for node in world_of(gateway).nodes]
        await alice.wait_for_counters(devices, 2)
        xmpp_server.kill()
        await alice.drop()
        before = {device: alice.counter(device) for device in devices}
        await asyncio.sleep(3.0)  # the nodes keep reporting; the outbox keeps their reports
        assert gateway.bridge is not None and gateway.bridge.outbox is not None
        assert await gateway.bridge.outbox.pending_count("xmpp") > 0
        assert not xmpp_of(gateway).connected
        xmpp_server.start()
        await alice.connect()
        await alice.wait_for_counters(devices, max(before.values()) + 6)
    await alice.drop()
    assert_no_gaps(alice.by_device(), devices, ids_once=False)
    assert xmpp_of(gateway).counters["reconnects"] >= 1
    for device in devices:
        assert alice.counter(device) > before[device] + 3
