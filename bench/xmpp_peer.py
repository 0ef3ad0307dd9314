"""The XMPP subscriber of the XMPP benchmark, in a process of its own.

    python -m bench.xmpp_peer HOST PORT JID PASSWORD CA_FILE

Prints ``online`` once its session started, then counts the report messages it receives.
Each ``count`` line on its standard input is answered with ``count N LAST_MONO``: the
reports so far and the ``time.monotonic()`` of the last one's arrival (the same clock as
every process on the machine). End of input ends it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import sys
import time
from typing import Any

from slixmpp import ClientXMPP, Message

from gateway.upstreams.xmpp_stanzas import NS, register_stanza_plugins

REPORT_TAG = f"{{{NS}}}report"


class Subscriber:
    def __init__(self, host: str, port: int, jid: str, password: str, ca_file: str) -> None:
        register_stanza_plugins()
        self.host, self.port = host, port
        self.client = ClientXMPP(f"{jid}/bench", password)
        self.client.ssl_context = ssl.create_default_context(cafile=ca_file)
        self.client.enable_direct_tls = False
        self.reports = 0
        self.last_arrival = 0.0
        self.online = asyncio.Event()
        self.client.add_event_handler("session_start", self._started)
        self.client.add_event_handler("message", self._message)

    def _started(self, _event: Any) -> None:
        self.client.send_presence()
        self.online.set()

    def _message(self, message: Message) -> None:
        if message.xml.find(REPORT_TAG) is not None:
            self.reports += 1
            self.last_arrival = time.monotonic()

    async def run(self) -> None:
        self.client.connect(self.host, self.port)
        await asyncio.wait_for(self.online.wait(), 30)
        print("online", flush=True)
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                break
            if line.strip() == "count":
                print(f"count {self.reports} {self.last_arrival}", flush=True)
        self.client.cancel_connection_attempt()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.client.disconnect(wait=1.0), 2.0)
        self.client.abort()


async def serve(host: str, port: int, jid: str, password: str, ca_file: str) -> None:
    # Built inside the running loop: slixmpp binds to the loop current at construction.
    await Subscriber(host, port, jid, password, ca_file).run()


def main() -> int:
    host, port, jid, password, ca_file = sys.argv[1:6]
    asyncio.run(serve(host, int(port), jid, password, ca_file))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
