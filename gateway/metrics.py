"""Prometheus metrics served over HTTP on the event loop, read from the live state at scrape time.

Nothing is counted twice: a custom collector turns ``GatewayState`` into metric families when
Prometheus asks, so the numbers always agree with the console and the web page. The endpoint
is served without aiohttp (``gateway.plain_http``): a gateway with the status page off never
loads it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from typing import TypeVar

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from gateway.config import MetricsSection
from gateway.plain_http import PlainHttpServer
from gateway.state import KNOWN_PROBLEMS, GatewayState

log = logging.getLogger(__name__)

T = TypeVar("T")


class StateCollector(Collector):
    """Metric families computed from a ``GatewayState`` on each scrape."""

    def __init__(self, state: GatewayState) -> None:
        self._state = state

    def collect(self) -> Iterator[Metric]:
        state = self._state
        counters = state.counters

        yield _counter("duogate_frames_received", "Air frames received", counters.frames_received)
        yield _counter("duogate_frames_sent", "Air frames transmitted", counters.frames_sent)

        rejected = CounterMetricFamily(
            "duogate_frames_rejected", "Air frames rejected, by reason", labels=["reason"]
        )
        for reason, count in sorted(counters.frames_rejected.items()):
            rejected.add_metric([reason], count)
        yield rejected

        joins = CounterMetricFamily("duogate_joins", "Join requests by result", labels=["result"])
        for result in ("accepted", "refused"):
            joins.add_metric([result], counters.joins.get(result, 0))
        yield joins

        commands = CounterMetricFamily(
            "duogate_commands", "Commands by final status", labels=["status"]
        )
        for status, count in sorted(counters.commands.items()):
            commands.add_metric([status], count)
        yield commands

        yield _counter(
            "duogate_console_errors", "Console input lines refused", counters.console_errors
        )
        yield _counter(
            "duogate_frame_log_dropped",
            "Frame log entries dropped for slow live readers",
            state.frames.dropped,
        )

        # The bridge's callables may touch the database; one failing must not fail the scrape.
        leases = _read("leases", state.lease_rows)
        if leases is not None:
            yield _gauge("duogate_leases_in_use", "Short addresses leased", len(leases))
        outbox = _read("outbox", state.outbox)
        if outbox is not None:
            yield _gauge("duogate_outbox_depth", "Entries waiting in the outbox", outbox.depth)
            yield _gauge(
                "duogate_outbox_oldest_age_seconds",
                "Age of the oldest outbox entry (0 when empty)",
                outbox.oldest_age_s or 0.0,
            )
            yield _counter(
                "duogate_storage_commits",
                "Database commits, each one disk sync (outbox, command states, leases)",
                outbox.commits,
            )
            yield _counter(
                "duogate_outbox_rows_written", "Outbox rows written to disk", outbox.rows_written
            )
            yield _counter(
                "duogate_outbox_rows_never_written",
                "Outbox rows every upstream acknowledged before they were due on disk",
                outbox.never_written,
            )
        crc_errors = _read("radio counters", state.crc_errors)
        if crc_errors is not None:
            yield _counter(
                "duogate_frames_crc_error",
                "Air frames received with a payload CRC error (collision, weak signal), dropped",
                crc_errors,
            )
        yield _gauge("duogate_nodes_seen", "Devices seen since start", len(state.nodes))

        upstreams = GaugeMetricFamily(
            "duogate_upstream_connected", "1 while the upstream is connected", labels=["upstream"]
        )
        for name, upstream in sorted(state.upstreams.items()):
            upstreams.add_metric([name], 1.0 if upstream.connected else 0.0)
        yield upstreams

        degraded = GaugeMetricFamily(
            "duogate_degraded",
            "1 while part of the gateway's work is impossible (e.g. storage: disk full)",
            labels=["problem"],
        )
        for problem in sorted(set(KNOWN_PROBLEMS) | set(state.problems)):
            degraded.add_metric([problem], 1.0 if problem in state.problems else 0.0)
        yield degraded

        duty = GaugeMetricFamily(
            "duogate_radio_duty_cycle_used_ratio",
            "Share of the sub-band's duty-cycle budget used in the current window",
            labels=["band"],
        )
        for band, used in sorted((_read("duty cycle", state.duty_cycle_used) or {}).items()):
            duty.add_metric([band], used)
        yield duty

        yield _gauge(
            "duogate_uptime_seconds", "Seconds since the gateway started", state.uptime_s()
        )


def _read(what: str, reader: Callable[[], T]) -> T | None:
    try:
        return reader()
    except Exception:
        log.exception("metrics: cannot read %s", what)
        return None


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def make_registry(state: GatewayState) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StateCollector(state))
    return registry


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (port 0 picks a free port; see ``port`` after start)."""

    def __init__(self, state: GatewayState, host: str = "127.0.0.1", port: int = 9108) -> None:
        self._registry = make_registry(state)
        self._http = PlainHttpServer(host, port, {"/metrics": self._metrics, "/": self._index})

    @classmethod
    def from_config(cls, section: MetricsSection, state: GatewayState) -> MetricsServer:
        return cls(state, section.host, section.port)

    async def start(self) -> int:
        """Start serving; return the bound port. OSError if the address cannot be bound."""
        port = await self._http.start()
        log.info("metrics on http://%s:%d/metrics", self._http.host, port)
        return port

    @property
    def port(self) -> int | None:
        return self._http.port

    async def stop(self) -> None:
        await self._http.stop()

    def _metrics(self) -> tuple[str, bytes]:
        return CONTENT_TYPE_LATEST, generate_latest(self._registry)

    def _index(self) -> tuple[str, bytes]:
        return "text/plain; charset=utf-8", b"duogate metrics: /metrics\n"
