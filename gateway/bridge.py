"""The bridge: device drivers -> durable outbox -> upstreams, and commands back down.

Reports and events enter through ``Bridge`` as a ``DeviceSink``: each is committed to the
outbox before the call returns (so the LoRa side acks on air only after that). One drain task
per upstream streams the outbox in order through a window of publishes in flight and marks an
entry delivered when the server acknowledged it. An upstream that is down holds back nothing
but itself.

Commands arrive from an upstream (or the console and web page), are validated against the
envelope and expiry rules, recorded as ``accepted``, routed to the driver that owns the
device and end in exactly one final result, which goes back over the way the command came.
That result is published once when the command ends; only if that fails is it retried, by
the retry loop alone, with a growing delay, and given up after ``MAX_RESULT_ATTEMPTS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import logging
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from drivers.radio.base import Radio, RadioSettings
from gateway.config import Config
from gateway.config_checks import exposure_warnings
from gateway.devices import DeviceDriver
from gateway.discovery import DiscoveryPublisher, availability_for_event, availability_topic
from gateway.logsetup import set_level
from gateway.model import (
    Command,
    CommandResult,
    CommandStatus,
    DeviceEvent,
    EventKind,
    Report,
)
from gateway.protocol import envelope, expiry
from gateway.state import GatewayState, OutboxStats, radio_settings_with
from gateway.store.commands import CommandState, CommandStore, CommandStoreError
from gateway.store.outbox import (
    Outbox,
    OutboxClosed,
    OutboxEntry,
    OutboxError,
    UnstorableItem,
    droppable_kinds_for_mqtt,
)
from gateway.upstreams.base import IncomingCommand, Upstream, UpstreamError, UpstreamUnavailable

log = logging.getLogger("duogate.bridge")

LOCAL_ORIGINS = ("console", "web")
RESULT_RETRY_S = 2.0  # how often due retries are looked for, and the first retry delay
RESULT_RETRY_MAX_S = 300.0
MAX_RESULT_ATTEMPTS = 8  # failed publications of a final result before it is given up
STATS_INTERVAL_S = 1.0
# A database that failed (disk full, I/O error): logged, retried, never the end of a loop.
STORE_ERRORS = (OutboxError, CommandStoreError, sqlite3.Error, OSError)


class Bridge:
    """Wire drivers, the outbox, the command store and upstreams together (one event loop)."""

    def __init__(
        self,
        config: Config,
        state: GatewayState,
        upstreams: Sequence[Upstream],
        drivers: Sequence[DeviceDriver],
        *,
        radio: Radio | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.state = state
        self.upstreams = {upstream.name: upstream for upstream in upstreams}
        self.drivers = list(drivers)
        self.radio = radio
        self._mono = monotonic
        self._wall = wall
        self.policy = expiry.ExpiryPolicy.from_config(config.commands)
        self.counters: Counter[str] = Counter()
        self.outbox: Outbox | None = None
        self.commands: CommandStore | None = None
        self._tasks: list[asyncio.Task[Any]] = []
        self._command_tasks: set[asyncio.Task[Any]] = set()
        self._local_waiters: dict[tuple[str, str], asyncio.Future[CommandResult]] = {}
        self._local_ids = itertools.count(1)
        self._report_ids = itertools.count(1)
        self._oldest_ts: float | None = None
        self._discovery: DiscoveryPublisher | None = None
        self._availability: dict[str, str] = {}  # device -> last "online"/"offline" published
        self._health_unsent = False  # the retained health message is out of date
        self.warnings = exposure_warnings(config)  # also in <prefix>/status/health
        self._stopping = False

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        config = self.config
        droppable = (
            droppable_kinds_for_mqtt(config.mqtt.qos_reports, config.mqtt.qos_events)
            if "mqtt" in self.upstreams
            else frozenset()
        )
        self.outbox = await Outbox.open(
            config.gateway.data_dir,
            list(self.upstreams),
            max_entries=config.outbox.max_entries,
            commit_interval_s=config.outbox.commit_interval_s,
            droppable_kinds=droppable,
        )
        self.commands = await CommandStore.open(config.gateway.data_dir)
        await self._recover_commands()
        await self.commands.schedule_unpublished(
            now_wall=self._wall(), max_attempts=MAX_RESULT_ATTEMPTS
        )
        self.state.outbox_stats = self._outbox_stats
        self.state.duty_cycle = self._duty_cycle
        self.state.leases = self._lease_rows
        if self.radio is not None:
            self.state.radio = self.radio.settings
        for driver in self.drivers:
            await driver.start(self)
        mqtt = self.upstreams.get("mqtt")
        if mqtt is not None and config.mqtt.discovery:
            self._setup_discovery(mqtt)
        if mqtt is not None and hasattr(mqtt, "add_ready_listener"):
            mqtt.add_ready_listener(self._on_mqtt_ready)
        for upstream in self.upstreams.values():
            self.state.set_upstream(upstream.name, False)
            await upstream.start(self.on_command)
            self._tasks.append(
                asyncio.create_task(self._drain(upstream), name=f"drain-{upstream.name}")
            )
        self._tasks.append(asyncio.create_task(self._result_retry_loop(), name="result-retry"))
        self._tasks.append(asyncio.create_task(self._stats_loop(), name="bridge-stats"))

    async def stop(self) -> None:
        self._stopping = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for driver in self.drivers:
            with contextlib.suppress(Exception):
                await driver.stop()
        for task in list(self._command_tasks):
            task.cancel()
        for task in list(self._command_tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for upstream in self.upstreams.values():
            with contextlib.suppress(Exception):
                await upstream.stop()
        if self.outbox is not None:
            try:
                await self.outbox.close()
            except STORE_ERRORS as exc:  # rows not committed were never acknowledged on air
                log.error("outbox closed without its last commit: %s", exc)
        if self.commands is not None:
            await self.commands.close()

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
    ) -> None:
        assert self.outbox is not None
        now = self._wall()
        number = next(self._report_ids)
        if report_id is None:
            report_id = f"{device}:{int(now * 1000)}:{number}"
        report = Report(
            report_id, device, kind, now, number if seq is None else seq, data, rssi, snr
        )
        if not device.startswith("lora-"):
            self.state.note_uplink(device, kind, rssi=rssi, snr=snr, data=data)
        await self._store(report)

    async def event(
        self, device: str, event: EventKind, detail: dict[str, Any] | None = None
    ) -> None:
        assert self.outbox is not None
        item = DeviceEvent(device, event, self._wall(), detail or {})
        await self._store(item)
        # A BLE sensor becomes a device when first heard (ONLINE), a LoRa node when it joins.
        appeared = (EventKind.JOINED, EventKind.REJOINED, EventKind.ONLINE)
        if event in appeared and self._discovery is not None:
            self._spawn(self._publish_discovery(changed_only=True))
        mqtt = self.upstreams.get("mqtt")
        availability = availability_for_event(item)
        if mqtt is not None and availability is not None and hasattr(mqtt, "publish_raw"):
            self._availability[device] = availability
            topic = availability_topic(self.config.topic_prefix, device)
            self._spawn(self._publish_quietly(mqtt, topic, availability))

    async def _store(self, item: Report | DeviceEvent) -> None:
        """Commit ``item`` to the outbox; a failing database makes the gateway ``degraded``
        (the caller does not acknowledge the item, so its sender keeps it)."""
        assert self.outbox is not None
        try:
            await self.outbox.add_durable(item)
        except (UnstorableItem, OutboxClosed):
            raise
        except STORE_ERRORS as exc:
            self._storage_problem(f"outbox: {exc}")
            raise
        self._storage_problem(None)

    def _storage_problem(self, detail: str | None) -> None:
        """Say in the log, the metrics and ``<prefix>/status/health`` when storing fails or
        works again."""
        if not self.state.set_problem("storage", detail):
            return
        if detail is None:
            log.warning("storage works again; no longer degraded")
        else:
            log.error("degraded: cannot store, nothing new is acknowledged: %s", detail)
        self._spawn(self._publish_health())

    async def _publish_health(self) -> None:
        """Retained ``<prefix>/status/health``: ``{"state": "ok"|"degraded", "problems",
        "warnings"}``; ``warnings`` are the settings that expose the gateway (open join with
        the public key, metrics beyond loopback, ...), the lines ``run`` logs at start.

        ``<prefix>/status`` itself stays ``online``/``offline`` (the Last Will, and Home
        Assistant's availability).
        """
        mqtt = self.upstreams.get("mqtt")
        if mqtt is None or not hasattr(mqtt, "publish_raw"):
            return
        problems = dict(self.state.problems)
        body = {
            "state": "degraded" if problems else "ok",
            "problems": problems,
            "warnings": self.warnings,
        }
        topic = f"{self.config.topic_prefix}/status/health"
        try:
            await mqtt.publish_raw(topic, json.dumps(body, sort_keys=True), qos=1, retain=True)
        except (UpstreamError, ValueError) as exc:
            self._health_unsent = True
            log.debug("not published to %s: %s", topic, exc)
            return
        self._health_unsent = False

    # ------------------------------------------------------------------ outbox drain

    async def _drain(self, upstream: Upstream) -> None:
        """Deliver the outbox to one upstream, in order, with a window of publishes in flight."""
        assert self.outbox is not None
        name = upstream.name
        window = self.config.mqtt.inflight if name == "mqtt" else 32
        in_flight: set[asyncio.Task[None]] = set()
        try:
            while True:
                await self._until_connected(upstream)
                failed = asyncio.Event()
                slots = asyncio.Semaphore(window)
                after = 0
                try:
                    while not failed.is_set():
                        mark = self.outbox.last_id
                        page = await self.outbox.pending(name, after, limit=256)
                        if not page:
                            await _first_of(self.outbox.wait_for_entries_after(mark), failed.wait())
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
                await asyncio.sleep(0.2)
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
        assert self.outbox is not None
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
            await asyncio.sleep(0.1)
        self.state.set_upstream(upstream.name, True)

    # ------------------------------------------------------------------ commands

    def known_device(self, device: str) -> bool:
        return any(driver.owns(device) for driver in self.drivers)

    def _driver_for(self, device: str) -> DeviceDriver | None:
        return next((driver for driver in self.drivers if driver.owns(device)), None)

    async def on_command(self, incoming: IncomingCommand) -> None:
        """Take a command from an upstream; never raises for bad input."""
        now_mono, now_wall = self._mono(), self._wall()
        outcome = envelope.validate(
            incoming,
            self.known_device,
            self.policy,
            now_mono=now_mono,
            now_wall=now_wall,
            max_bytes=self.config.commands.max_message_bytes,
        )
        if isinstance(outcome, envelope.Rejection):
            self.counters["commands_rejected"] += 1
            self.state.count_command(CommandStatus.REJECTED)
            log.info(
                "command %r for %s from %s rejected: %s",
                outcome.command_id,
                incoming.device,
                incoming.origin,
                outcome.reason,
            )
            await self._send_result(incoming.origin, incoming.reply_to, outcome.result(now_wall))
            return
        command = outcome
        refusal = self._refusal(command)
        if refusal is not None:
            self.counters["commands_rejected"] += 1
            self.state.count_command(CommandStatus.REJECTED)
            log.info("command %r for %s rejected: %s", command.id, command.device, refusal)
            rejected = CommandResult(
                command.id, command.device, CommandStatus.REJECTED, now_wall, refusal
            )
            await self._send_result(command.origin, command.reply_to, rejected)
            return
        assert self.commands is not None
        try:
            accepted = await self.commands.accept(command, now_mono=now_mono, now_wall=now_wall)
        except STORE_ERRORS as exc:
            self._storage_problem(f"command store: {exc}")
            # Without a stored state there is no promise of exactly one final result: refuse.
            log.error("command %r for %s not stored: %s", command.id, command.device, exc)
            failed = CommandResult(
                command.id, command.device, CommandStatus.FAILED, now_wall, "not_stored"
            )
            await self._send_result(command.origin, command.reply_to, failed)
            return
        if not accepted:
            existing = await self.commands.get(command.origin, command.device, command.id)
            log.info("command %r for %s repeated; not executed again", command.id, command.device)
            if existing is not None:
                await self._send_result(command.origin, command.reply_to, existing.result())
            return
        self._spawn(self._run_command(command), commands=True)

    def _refusal(self, command: Command) -> str | None:
        """Why the device's driver refuses the command outright (e.g. ``unknown_action``).

        Drivers may offer ``refusal(command) -> str | None``; a refused command is answered
        ``rejected`` without ever being ``accepted``.
        """
        check = getattr(self._driver_for(command.device), "refusal", None)
        return check(command) if callable(check) else None

    async def _run_command(self, command: Command) -> None:
        reason = expiry.check(command, self._mono(), stage=expiry.Stage.ARRIVAL)
        if reason is not None:
            await self._finish(command, CommandStatus.EXPIRED, reason)
            return
        await self._progress(command, CommandStatus.ACCEPTED, None)
        driver = self._driver_for(command.device)
        if driver is None:
            await self._finish(command, CommandStatus.REJECTED, "unknown_device")
            return
        try:
            result = await driver.execute(command)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.exception("command %r for %s failed in its driver", command.id, command.device)
            await self._finish(command, CommandStatus.FAILED, f"driver_error: {exc}")
            return
        await self._finish(command, result.status, result.detail)

    def on_driver_progress(
        self, command: Command, status: CommandStatus, detail: str | None
    ) -> None:
        """Intermediate status from a driver (``sent``)."""
        self._spawn(self._progress(command, status, detail))

    async def _progress(self, command: Command, status: CommandStatus, detail: str | None) -> None:
        assert self.commands is not None
        now_mono, now_wall = self._mono(), self._wall()
        if status is not CommandStatus.ACCEPTED:
            await self.commands.transition(
                command, status, now_mono=now_mono, now_wall=now_wall, detail=detail
            )
        result = CommandResult(command.id, command.device, status, now_wall, detail)
        await self._send_result(command.origin, command.reply_to, result, final=False)

    async def _finish(self, command: Command, status: CommandStatus, detail: str | None) -> None:
        assert self.commands is not None
        now_mono, now_wall = self._mono(), self._wall()
        if not await self.commands.transition(
            command, status, now_mono=now_mono, now_wall=now_wall, detail=detail
        ):
            return  # already final: exactly one final result is ever published
        self.state.count_command(status)
        log.info(
            "command %r for %s: %s%s",
            command.id,
            command.device,
            status,
            f" ({detail})" if detail else "",
        )
        result = CommandResult(command.id, command.device, status, now_wall, detail)
        upstream = self.upstreams.get(command.origin)
        connected = upstream is None or upstream.connected
        if await self._send_result(command.origin, command.reply_to, result):
            await self.commands.mark_result_published(
                command.origin, command.device, command.id, status
            )
            return
        # From here on only the retry loop publishes this result.
        attempts = 1 if connected else 0
        await self.commands.schedule_result_retry(
            command.origin,
            command.device,
            command.id,
            attempts=attempts,
            retry_at=now_wall + _retry_delay(attempts),
        )

    async def _send_result(
        self, origin: str, reply_to: dict[str, Any], result: CommandResult, *, final: bool = True
    ) -> bool:
        """Send a result back the way its command came; False if that is not possible now."""
        if origin in LOCAL_ORIGINS:
            waiter = self._local_waiters.get((origin, result.id))
            if final and waiter is not None and not waiter.done():
                waiter.set_result(result)
            return True
        upstream = self.upstreams.get(origin)
        if upstream is None:
            return True
        try:
            await upstream.publish_result(result, reply_to)
        except (UpstreamError, ValueError) as exc:
            log.info("%s result of %r not sent yet: %s", origin, result.id, exc)
            return False
        return True

    async def _result_retry_loop(self) -> None:
        """Final results whose first publication failed, retried when due, with a growing
        delay; attempts made while the upstream is down do not count."""
        assert self.commands is not None
        while True:
            await asyncio.sleep(RESULT_RETRY_S)
            try:
                for state in await self.commands.due_results(
                    now_wall=self._wall(), max_delay_s=RESULT_RETRY_MAX_S
                ):
                    await self._retry_result(state)
            except STORE_ERRORS as exc:
                log.error("command results not republished (will retry): %s", exc)

    async def _retry_result(self, state: CommandState) -> None:
        assert self.commands is not None
        upstream = self.upstreams.get(state.origin)
        if upstream is not None and not upstream.connected:
            return  # due again as soon as the upstream is back; no attempt spent
        key = (state.origin, state.device, state.id)
        if await self._send_result(state.origin, state.reply_to, state.result()):
            await self.commands.mark_result_published(*key, state.status)
            return
        attempts = state.result_attempts + 1
        if attempts >= MAX_RESULT_ATTEMPTS:
            self.counters["results_given_up"] += 1
            log.warning(
                "%s result %s of %r for %s given up after %d attempts",
                state.origin,
                state.status,
                state.id,
                state.device,
                attempts,
            )
            await self.commands.schedule_result_retry(*key, attempts=attempts, retry_at=None)
            return
        await self.commands.schedule_result_retry(
            *key, attempts=attempts, retry_at=self._wall() + _retry_delay(attempts)
        )

    async def _recover_commands(self) -> None:
        assert self.commands is not None
        recovered = await self.commands.recover(now_wall=self._wall())
        for state in recovered:
            log.info("command %r for %s ended by restart: %s", state.id, state.device, state.status)
            self.state.count_command(state.status)

    # ------------------------------------------------------------------ Controls

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        """A command from the console; returns its final result."""
        return await self.local_command("console", device, action, params, ttl_s)

    def controls_for(self, origin: str) -> OriginControls:
        """The ``Controls`` a local front end (``web``) uses, its commands tagged with it."""
        return OriginControls(self, origin)

    async def local_command(
        self,
        origin: str,
        device: str,
        action: str,
        params: dict[str, Any],
        ttl_s: float | None,
    ) -> CommandResult:
        command_id = f"{origin}-{int(self._wall())}-{next(self._local_ids)}"
        body: dict[str, Any] = {"id": command_id, "action": action, "params": params}
        if ttl_s is not None:
            body["ttl_s"] = ttl_s
        waiter: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._local_waiters[(origin, command_id)] = waiter
        try:
            await self.on_command(IncomingCommand(origin, device, body, self._mono()))
            if not waiter.done():
                # Rejections are answered before a waiter could see them: look them up.
                assert self.commands is not None
                state = await self.commands.get(origin, device, command_id)
                if state is None:
                    return CommandResult(
                        command_id, device, CommandStatus.REJECTED, self._wall(), "invalid command"
                    )
            return await waiter
        finally:
            self._local_waiters.pop((origin, command_id), None)

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        if self.radio is None:
            raise ValueError("no radio configured")
        settings = radio_settings_with(self.radio.settings, changes)
        await self.radio.reconfigure(settings)
        self.state.radio = settings
        return settings

    def set_log_level(self, level: str) -> None:
        set_level(level)

    # ------------------------------------------------------------------ state feeds

    def _outbox_stats(self) -> OutboxStats:
        if self.outbox is None:
            return OutboxStats(0, None)
        oldest = None if self._oldest_ts is None else max(0.0, self._wall() - self._oldest_ts)
        return OutboxStats(self.outbox.size, oldest)

    def _duty_cycle(self) -> dict[str, float]:
        for driver in self.drivers:
            used = getattr(driver, "duty_cycle_used", None)
            if used is not None:
                return used()
        return {}

    def _lease_rows(self) -> list[Any]:
        from gateway.state import LeaseRow

        rows: list[LeaseRow] = []
        for driver in self.drivers:
            core = getattr(driver, "core", None) if driver.kind == "lora" else None
            if core is None:
                continue
            with contextlib.suppress(RuntimeError):
                rows = [
                    LeaseRow(i.address, i.device_id, i.last_seen or None) for i in core.leases()
                ]
        return sorted(rows, key=lambda row: row.address)

    async def _stats_loop(self) -> None:
        assert self.outbox is not None
        while True:
            oldest: float | None = None
            try:
                for name in self.upstreams:
                    page = await self.outbox.pending(name, 0, limit=1)
                    if page:
                        ts = page[0].item.ts
                        oldest = ts if oldest is None else min(oldest, ts)
            except STORE_ERRORS as exc:
                log.debug("outbox statistics not read: %s", exc)
            self._oldest_ts = oldest
            for upstream in self.upstreams.values():
                self.state.set_upstream(upstream.name, upstream.connected)
            await asyncio.sleep(STATS_INTERVAL_S)

    # ------------------------------------------------------------------ discovery

    def _setup_discovery(self, mqtt: Any) -> None:
        from gateway.discovery import HA_COMMAND_QOS, HA_STATUS_QOS
        from gateway.ha_commands import HaCommands

        self._discovery = DiscoveryPublisher(
            topic_prefix=self.config.topic_prefix,
            gateway_id=self.config.gateway.id,
            discovery_prefix=self.config.mqtt.discovery_prefix,
        )
        ha_commands = HaCommands(
            topic_prefix=self.config.topic_prefix,
            ttl_s=self.config.commands.default_ttl_s,
            devices=self._all_devices,
        )

        async def on_ha_status(_topic: str, payload: bytes, _arrival: float) -> None:
            assert self._discovery is not None
            messages = self._discovery.on_ha_status(
                payload.decode(errors="replace"), self._all_devices()
            )
            await self._publish_messages(mqtt, messages)

        in_order = asyncio.Lock()  # taken in arrival order: ON then OFF is never OFF, ON

        async def on_ha_command(topic: str, payload: bytes, arrival: float) -> None:
            """Home Assistant's plain payload on an entity's command topic: a command as any
            other from MQTT, or ``rejected`` on the device's result topic."""
            async with in_order:
                outcome = ha_commands.incoming(
                    topic, payload, received_mono=arrival, now_wall=self._wall()
                )
                if isinstance(outcome, IncomingCommand):
                    await self.on_command(outcome)
                elif outcome is not None:
                    self.counters["commands_rejected"] += 1
                    self.state.count_command(CommandStatus.REJECTED)
                    log.info("home assistant command on %s rejected: %s", topic, outcome.detail)
                    await self._send_result(ha_commands.origin, {}, outcome)

        mqtt.subscribe_extra(self._discovery.status_topic, on_ha_status, qos=HA_STATUS_QOS)
        mqtt.subscribe_extra(
            ha_commands.topic_filter, on_ha_command, qos=HA_COMMAND_QOS, commands=True
        )

    async def _on_mqtt_ready(self) -> None:
        """After every (re)connection: discovery configs, then device availability.

        Availability changes while the broker was unreachable were not published; the
        retained topics are brought up to date here.
        """
        mqtt = self.upstreams["mqtt"]
        if self.state.problems or self._health_unsent or self.warnings:
            await self._publish_health()
        await self._publish_discovery(changed_only=False)
        for device, availability in list(self._availability.items()):
            topic = availability_topic(self.config.topic_prefix, device)
            await self._publish_quietly(mqtt, topic, availability)

    def _all_devices(self) -> list[Any]:
        return [info for driver in self.drivers for info in driver.devices()]

    async def _publish_discovery(self, *, changed_only: bool) -> None:
        mqtt = self.upstreams.get("mqtt")
        if mqtt is None or self._discovery is None:
            return
        devices = self._all_devices()
        messages = (
            self._discovery.changed(devices) if changed_only else self._discovery.messages(devices)
        )
        await self._publish_messages(mqtt, messages)

    async def _publish_messages(self, mqtt: Any, messages: list[Any]) -> None:
        for message in messages:
            payload = (
                message.payload
                if isinstance(message.payload, str | bytes)
                else json.dumps(message.payload)
            )
            await self._publish_quietly(mqtt, message.topic, payload, retain=message.retain)

    async def _publish_quietly(
        self, mqtt: Any, topic: str, payload: str | bytes, *, retain: bool = True
    ) -> None:
        try:
            await mqtt.publish_raw(topic, payload, qos=1, retain=retain)
        except (UpstreamError, ValueError) as exc:
            log.debug("not published to %s: %s", topic, exc)

    # ------------------------------------------------------------------ helpers

    def _spawn(self, coroutine: Any, *, commands: bool = False) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._command_tasks.add(task)
        task.add_done_callback(self._task_done)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._command_tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("bridge task failed: %r", task.exception())


class OriginControls:
    """``Controls`` whose commands carry their own origin (the web page, not the console)."""

    def __init__(self, bridge: Bridge, origin: str) -> None:
        if origin not in LOCAL_ORIGINS:
            raise ValueError(f"not a local origin: {origin!r}")
        self._bridge = bridge
        self.origin = origin

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        return await self._bridge.local_command(self.origin, device, action, params, ttl_s)

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        return await self._bridge.reconfigure_radio(changes)

    def set_log_level(self, level: str) -> None:
        self._bridge.set_log_level(level)


def _retry_delay(failed_attempts: int) -> float:
    """Seconds before the next publication of a result that failed ``failed_attempts`` times."""
    return min(RESULT_RETRY_MAX_S, RESULT_RETRY_S * 2 ** max(failed_attempts - 1, 0))


async def _first_of(*awaitables: Any) -> None:
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
