"""The bridge assembled: device drivers -> durable outbox -> upstreams, commands back down.

``Bridge`` is the ``DeviceSink`` of every driver: a report or event is committed to the
outbox before the call returns (so the LoRa side acks on air only after that). It opens the
stores and starts, in order, the parts that do the work:

* ``pump.OutboxPump``: one drain per upstream;
* ``router.CommandRouter`` and ``results.ResultSender``: commands in, results out;
* ``home_assistant.HomeAssistantPublisher``: discovery, availability, health (MQTT only);
* ``feeds.StateFeeds``: what the console, metrics and web page read;
* ``controls.LocalControls``: the console's and web page's commands and settings.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from drivers.radio.base import Radio
from gateway.bridge.controls import LocalControls
from gateway.bridge.directory import DriverDirectory
from gateway.bridge.feeds import StateFeeds
from gateway.bridge.home_assistant import HomeAssistantPublisher
from gateway.bridge.pump import OutboxPump
from gateway.bridge.results import ResultSender
from gateway.bridge.router import CommandRouter
from gateway.config import Config
from gateway.config_warnings import exposure_warnings
from gateway.devices import DeviceDriver
from gateway.model import Command, CommandStatus, DeviceEvent, EventKind, IncomingCommand, Report
from gateway.protocol import expiry
from gateway.state import GatewayState
from gateway.store.commands import CommandStore, CommandStoreError
from gateway.store.db import StoreError
from gateway.store.journal import Journal
from gateway.store.outbox import Outbox, OutboxClosed, OutboxError, UnstorableItem
from gateway.tasks import TaskSet, cancel_and_wait
from gateway.upstreams.base import Upstream

log = logging.getLogger("duogate.bridge")

# A database that failed (disk full, I/O error): logged, retried, never the end of a loop.
STORE_ERRORS = (OutboxError, CommandStoreError, StoreError, sqlite3.Error, OSError)


class Bridge:
    """Wire drivers, the outbox, the command store and upstreams together (one event loop)."""

    def __init__(
        self,
        config: Config,
        state: GatewayState,
        upstreams: Sequence[Upstream],
        drivers: DriverDirectory | Sequence[DeviceDriver],
        *,
        radio: Radio | None = None,
        journal: Journal | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        """``journal``: the database shared with the LoRa network (default: the outbox's own)."""
        self.config = config
        # The outbox and the command store (and the LoRa leases, when given the same journal)
        # share one database connection and its commits.
        self.journal = journal if journal is not None else Journal(config.gateway.data_dir)
        self.state = state
        self.upstreams = {upstream.name: upstream for upstream in upstreams}
        self.drivers = drivers if isinstance(drivers, DriverDirectory) else DriverDirectory(drivers)
        self.radio = radio
        self._mono = monotonic
        self._wall = wall
        self.counters: Counter[str] = Counter()
        self.warnings = exposure_warnings(config)  # also in <prefix>/status/health
        # Set by start(), once the stores are open:
        self.outbox: Outbox | None = None
        self.commands: CommandStore | None = None
        self.router: CommandRouter | None = None
        self.results: ResultSender | None = None
        self.home_assistant: HomeAssistantPublisher | None = None
        self._loops: list[asyncio.Task[Any]] = []  # drains, result retries, state feeds
        self._tasks = TaskSet(log, "bridge task failed")  # commands, progress, publishes
        self._local_ids = itertools.count(1)
        self._report_ids = itertools.count(1)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        config = self.config
        droppable = frozenset(k for u in self.upstreams.values() for k in u.droppable_kinds)
        self.outbox = await Outbox.open(
            config.gateway.data_dir,
            list(self.upstreams),
            max_entries=config.outbox.max_entries,
            commit_interval_s=config.outbox.commit_interval_s,
            droppable_kinds=droppable,
            journal=self.journal,
        )
        self.journal.watch(self._storage_problem)
        self.commands = await CommandStore.open(config.gateway.data_dir, journal=self.journal)
        self.results = ResultSender(
            self.upstreams,
            self.commands,
            self.counters,
            wall=self._wall,
            store_errors=STORE_ERRORS,
        )
        self.router = CommandRouter(
            state=self.state,
            drivers=self.drivers,
            commands=self.commands,
            results=self.results,
            policy=expiry.ExpiryPolicy.from_config(config.commands),
            max_message_bytes=config.commands.max_message_bytes,
            counters=self.counters,
            tasks=self._tasks,
            storage_problem=self._storage_problem,
            store_errors=STORE_ERRORS,
            monotonic=self._mono,
            wall=self._wall,
        )
        await self.router.recover()
        await self.results.schedule_unpublished()
        feeds = StateFeeds(
            self.state,
            self.outbox,
            self.upstreams,
            self.drivers,
            wall=self._wall,
            store_errors=STORE_ERRORS,
        )
        feeds.attach(self.radio)
        for driver in self.drivers:
            await driver.start(self)
        extras = next((u.extras for u in self.upstreams.values() if u.extras is not None), None)
        if extras is not None:
            self.home_assistant = HomeAssistantPublisher(
                config,
                self.state,
                extras,
                drivers=self.drivers,
                router=self.router,
                results=self.results,
                tasks=self._tasks,
                warnings=self.warnings,
                wall=self._wall,
            )
            self.home_assistant.start()
        pump = OutboxPump(self.outbox, self.state, self.counters)
        for upstream in self.upstreams.values():
            self.state.set_upstream(upstream.name, False)
            await upstream.start(self.router.on_command)
            self._loops.append(
                asyncio.create_task(pump.drain(upstream), name=f"drain-{upstream.name}")
            )
        self._loops.append(asyncio.create_task(self.results.retry_loop(), name="result-retry"))
        self._loops.append(asyncio.create_task(feeds.run(), name="bridge-stats"))

    async def stop(self) -> None:
        for task in self._loops:
            await cancel_and_wait(task)
        for driver in self.drivers:
            try:
                await driver.stop()
            except Exception as exc:
                log.debug("driver %s did not stop cleanly: %s", driver.kind, exc)
        await self._tasks.cancel_all()
        for upstream in self.upstreams.values():
            try:
                await upstream.stop()
            except Exception as exc:
                log.debug("upstream %s did not stop cleanly: %s", upstream.name, exc)
        if self.outbox is not None:
            try:
                await self.outbox.close()
            except STORE_ERRORS as exc:  # rows not committed were never acknowledged on air
                log.error("outbox closed without its last commit: %s", exc)
        if self.commands is not None:
            await self.commands.close()

    # ------------------------------------------------------------------ commands

    async def on_command(self, incoming: IncomingCommand) -> None:
        """Take a command from an upstream (after ``start``)."""
        assert self.router is not None, "Bridge.start() first"
        await self.router.on_command(incoming)

    def on_driver_progress(
        self, command: Command, status: CommandStatus, detail: str | None
    ) -> None:
        """Intermediate status from a driver (``sent``); a driver's ``progress`` callback."""
        assert self.router is not None, "Bridge.start() first"
        self.router.on_driver_progress(command, status, detail)

    def controls_for(self, origin: str) -> LocalControls:
        """The ``Controls`` a local front end (``console``, ``web``) uses, its commands
        tagged with it (after ``start``)."""
        assert self.router is not None and self.results is not None, "Bridge.start() first"
        return LocalControls(
            origin,
            router=self.router,
            results=self.results,
            state=self.state,
            radio=self.radio,
            ids=self._local_ids,
            monotonic=self._mono,
            wall=self._wall,
        )

    # ------------------------------------------------------------------ DeviceSink

    async def report(
        self,
        device: str,
        kind: str,
        data: dict[str, Any],
        *,
        rssi: float | None = None,
        snr: float | None = None,
        seq: int | None = None,
        report_id: str | None = None,
        safe_within_s: float | None = None,
        gateways: list[dict[str, Any]] | None = None,
    ) -> None:
        now = self._wall()
        number = next(self._report_ids)
        if report_id is None:
            report_id = f"{device}:{int(now * 1000)}:{number}"
        report = Report(
            report_id, device, kind, now, number if seq is None else seq, data, rssi, snr, gateways
        )
        if not device.startswith("lora-"):
            self.state.note_uplink(device, kind, rssi=rssi, snr=snr, data=data)
        await self._store(report, safe_within_s)

    async def event(
        self, device: str, event: EventKind, detail: dict[str, Any] | None = None
    ) -> None:
        item = DeviceEvent(device, event, self._wall(), detail or {})
        await self._store(item, None)
        if self.home_assistant is not None:
            self.home_assistant.device_event(item)

    async def _store(self, item: Report | DeviceEvent, safe_within_s: float | None) -> None:
        """Give ``item`` to the outbox (see ``DeviceSink.report``). A failing database makes
        the gateway ``degraded`` (told by the journal after each commit); the caller does not
        acknowledge an item that was refused, so its sender keeps it."""
        assert self.outbox is not None, "Bridge.start() first"
        try:
            if safe_within_s is None:
                self.outbox.add(item)
            else:
                await self.outbox.add_durable(item, safe_within_s)
        except (UnstorableItem, OutboxClosed):
            raise
        except STORE_ERRORS as exc:
            self._storage_problem(f"outbox: {exc}")
            raise

    def _storage_problem(self, detail: str | None) -> None:
        """Say in the log, the metrics and ``<prefix>/status/health`` when storing fails or
        works again."""
        if not self.state.set_problem("storage", detail):
            return
        if detail is None:
            log.warning("storage works again; no longer degraded")
        else:
            log.error("degraded: cannot store, nothing new is acknowledged: %s", detail)
        if self.home_assistant is not None:
            self.home_assistant.health_changed()
