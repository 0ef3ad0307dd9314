"""XMPP throughput to one subscriber with XEP-0198 acks, and bytes on the wire per report.

The gateway runs with XMPP as its only upstream against the prosody ``bench.run`` started
(STARTTLS required, stream management on); one subscriber, a plain slixmpp client in its own
process (``bench.xmpp_peer``), is online and receives every report. The burst is timed from
the first injected frame to the last report acknowledged by the server; the subscriber's
arrival of the last report is reported beside it. Bytes are the gateway socket's TCP
counters (Linux TCP_INFO) over the burst, both directions, TLS records included.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench.child import Channel
from bench.harness import AckClock
from bench.pipeline import frames_of, inject_burst, joined_gateway
from gateway.config import Config
from gateway.model import Report
from gateway.upstreams.xmpp import XmppUpstream


class TimedXmppUpstream(XmppUpstream):
    def __init__(self, config: Config, acks: AckClock) -> None:
        super().__init__(config.xmpp, lambda: [])
        self.acks = acks

    async def publish_report(self, report: Report) -> None:
        await super().publish_report(report)
        self.acks.note(report)

    def wire_socket(self) -> Any:
        transport = getattr(self._client, "transport", None)
        return transport.get_extra_info("socket") if transport is not None else None


async def xmpp_throughput(params: dict[str, Any], channel: Channel) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="duogate-bench-xmpp-") as tmp:
        secret = Path(tmp) / "xmpp-password"
        secret.write_text(params["password"] + "\n")
        xmpp = {
            "enabled": True,
            "jid": f"{params['jid']}/duogate",
            "password": {"file": str(secret)},
            "host": params["host"],
            "port": params["port"],
            "tls": "starttls",
            "ca_file": params["ca_file"],
            "subscribers": [params["subscriber"]],
            "keepalive_s": 60,
            "reconnect_max_s": 1.0,
        }
        async with joined_gateway(params["nodes"], xmpp=xmpp) as (gateway, fleet):
            frames = frames_of(fleet, params["reports"], 0)
            channel.announce("ready")
            await channel.wait_go()
            figures = await inject_burst(gateway, frames)
            figures["stanzas_acked"] = gateway.upstream.counters["stanzas_acked"]
            figures["bounced"] = gateway.upstream.counters["messages_bounced"]
    return figures
