from __future__ import annotations

import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from gateway.config import MetricsSection
from gateway.metrics import MetricsServer
from gateway.model import CommandStatus
from gateway.state import GatewayState, LeaseRow, OutboxStats


@pytest.fixture
async def served() -> AsyncIterator[tuple[GatewayState, MetricsServer]]:
    state = GatewayState()
    server = MetricsServer.from_config(MetricsSection(host="127.0.0.1", port=0), state)
    await server.start()
    try:
        yield state, server
    finally:
        await server.stop()


async def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{port}/metrics") as response,
    ):
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_port_zero_binds_a_free_loopback_port(
    served: tuple[GatewayState, MetricsServer],
) -> None:
    _, server = served
    assert server.port is not None and server.port > 0
    with socket.create_connection(("127.0.0.1", server.port), timeout=5):
        pass


async def test_scrape_reflects_the_live_state(served: tuple[GatewayState, MetricsServer]) -> None:
    state, server = served
    assert server.port is not None
    before = await scrape(server.port)
    assert before[("duogate_frames_received_total", ())] == 0
    assert before[("duogate_joins_total", (("result", "accepted"),))] == 0

    for _ in range(5):
        state.count_received()
    state.count_sent()
    state.count_rejected("bad_tag")
    state.count_rejected("bad_tag")
    state.count_rejected("too_short")
    state.count_join(accepted=True)
    state.count_join(accepted=False)
    state.count_command(CommandStatus.EXECUTED)
    state.count_command(CommandStatus.EXPIRED)
    state.count_command(CommandStatus.EXPIRED)
    state.set_upstream("mqtt", True)
    state.set_upstream("xmpp", False, "timed out")
    state.outbox_stats = lambda: OutboxStats(42, 3.5)
    state.duty_cycle = lambda: {"g1": 0.125, "g3": 0.5}
    state.leases = lambda: [LeaseRow(1, "lora-0000000000000001", None), LeaseRow(2, "x", 1.0)]

    after = await scrape(server.port)
    expected = {
        ("duogate_frames_received_total", ()): 5,
        ("duogate_frames_sent_total", ()): 1,
        ("duogate_frames_rejected_total", (("reason", "bad_tag"),)): 2,
        ("duogate_frames_rejected_total", (("reason", "too_short"),)): 1,
        ("duogate_joins_total", (("result", "accepted"),)): 1,
        ("duogate_joins_total", (("result", "refused"),)): 1,
        ("duogate_commands_total", (("status", "executed"),)): 1,
        ("duogate_commands_total", (("status", "expired"),)): 2,
        ("duogate_upstream_connected", (("upstream", "mqtt"),)): 1,
        ("duogate_upstream_connected", (("upstream", "xmpp"),)): 0,
        ("duogate_outbox_depth", ()): 42,
        ("duogate_outbox_oldest_age_seconds", ()): 3.5,
        ("duogate_leases_in_use", ()): 2,
        ("duogate_radio_duty_cycle_used_ratio", (("band", "g1"),)): 0.125,
        ("duogate_radio_duty_cycle_used_ratio", (("band", "g3"),)): 0.5,
    }
    for key, value in expected.items():
        assert after[key] == value, key
    assert after[("duogate_uptime_seconds", ())] >= before[("duogate_uptime_seconds", ())] >= 0


async def test_a_failing_bridge_callable_does_not_fail_the_scrape(
    served: tuple[GatewayState, MetricsServer],
) -> None:
    state, server = served
    assert server.port is not None

    def broken() -> OutboxStats:
        raise RuntimeError("database is locked")

    state.outbox_stats = broken
    state.count_received()
    samples = await scrape(server.port)
    assert samples[("duogate_frames_received_total", ())] == 1
    assert ("duogate_outbox_depth", ()) not in samples


async def test_stop_releases_the_port() -> None:
    server = MetricsServer(GatewayState(), "127.0.0.1", 0)
    port = await server.start()
    await server.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
