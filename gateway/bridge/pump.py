"""Outbox pump: one drain per upstream, in order, with a window of publishes in flight.

An entry is marked delivered for an upstream when that upstream's publish returned (the
server acknowledged it). An upstream that is down holds back nothing but itself: its drain
waits for the connection and starts again from its oldest undelivered entry.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter

from gateway.model import Report
from gateway.state import GatewayState
from gateway.store.outbox import Outbox, OutboxClosed, OutboxEntry, OutboxError
from gateway.tasks import first_of
from gateway.upstreams.base import Upstream, UpstreamError, UpstreamUnavailable

log = logging.getLogger("duogate.bridge")

PAGE_SIZE = 256
CONNECTED_POLL_S = 0.1
PAUSE_AFTER_FAILURE_S = 0.2


class OutboxPump:
    def __init__(self, outbox: Outbox, state: GatewayState, counters: Counter[str]) -> None:
        self.outbox = outbox
        self.state = state
        self.counters = counters  # undeliverable_<upstream>: entries dropped as unsendable

    async def drain(self, upstream: Upstream) -> None:
        """Deliver the outbox to ``upstream`` until cancelled or the outbox closes."""
        outbox = self.outbox
        name = upstream.name
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._until_connected(upstream)
                failed = asyncio.Event()
                slots = asyncio.Semaphore(upstream.window)
                after = 0
                try:
                    while not failed.is_set():
                        mark = outbox.last_id
                        page = await outbox.pending(name, after, limit=PAGE_SIZE)
                        if not page:
                            await first_of(outbox.wait_for_entries_after(mark), failed.wait())
                            continue
                        for entry in page:
                            await slots.acquire()
                            if failed.is_set():
                                slots.release()
                                break
                            task = asyncio.create_task(
                                self._deliver(upstream, entry, slots, failed)
                            )
                            in_flight.add(task)
                            task.add_done_callback(in_flight.discard)
                        after = page[-1].entry_id
                except OutboxClosed:
                    return
                except OutboxError as exc:  # the database failed; nothing is lost, retry
                    log.error("%s: outbox not readable, retrying: %s", name, exc)
                    await asyncio.sleep(1.0)
                if in_flight:
                    await asyncio.gather(*in_flight, return_exceptions=True)
                await asyncio.sleep(PAUSE_AFTER_FAILURE_S)
        finally:
            for task in in_flight:
                task.cancel()

    async def _deliver(
        self,
        upstream: Upstream,
        entry: OutboxEntry,
        slots: asyncio.Semaphore,
        failed: asyncio.Event,
    ) -> None:
        try:
            if isinstance(entry.item, Report):
                await upstream.publish_report(entry.item)
            else:
                await upstream.publish_event(entry.item)
        except UpstreamUnavailable as exc:
            if not failed.is_set():
                log.info("%s: delivery paused: %s", upstream.name, exc)
                self.state.set_upstream(upstream.name, upstream.connected, str(exc))
            failed.set()
            return
        except (UpstreamError, ValueError) as exc:
            # The server will never take this entry (e.g. data it cannot carry): drop it loudly.
            self.counters[f"undeliverable_{upstream.name}"] += 1
            log.error(
                "%s: entry %d dropped, cannot be delivered: %s", upstream.name, entry.entry_id, exc
            )
        finally:
            slots.release()
        with contextlib.suppress(OutboxClosed):  # stopping: delivered again after the restart
            self.outbox.mark_delivered(upstream.name, (entry.entry_id,))

    async def _until_connected(self, upstream: Upstream) -> None:
        while not upstream.connected:
            self.state.set_upstream(upstream.name, False)
            await asyncio.sleep(CONNECTED_POLL_S)
        self.state.set_upstream(upstream.name, True)
