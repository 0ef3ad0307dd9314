from __future__ import annotations

import asyncio
import errno
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


async def exchange(port: int, request: bytes) -> bytes:
    """Send raw request bytes; everything the server sent until it closed the connection."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        return await reader.read()
    finally:
        writer.close()


async def test_unknown_paths_are_404_and_the_index_names_the_endpoint(
    served: tuple[GatewayState, MetricsServer],
) -> None:
    _, server = served
    assert server.port is not None
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{server.port}/nothing") as response:
            assert response.status == 404
        async with session.get(f"http://127.0.0.1:{server.port}/") as response:
            assert response.status == 200
            assert await response.text() == "duogate metrics: /metrics\n"
        async with session.head(f"http://127.0.0.1:{server.port}/metrics") as response:
            assert response.status == 200
            assert int(response.headers["Content-Length"]) > 0
            assert await response.read() == b""


async def test_one_connection_carries_several_scrapes(
    served: tuple[GatewayState, MetricsServer],
) -> None:
    state, server = served
    assert server.port is not None
    state.count_received()
    one = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
    last = b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    replies = await exchange(server.port, one + one + last)
    assert replies.count(b"HTTP/1.1 200 OK\r\n") == 3
    assert replies.count(b"duogate_frames_received_total 1.0\n") == 3


async def test_a_request_line_that_is_not_http_is_refused(
    served: tuple[GatewayState, MetricsServer],
) -> None:
    _, server = served
    assert server.port is not None
    reply = await exchange(server.port, b"GET /metrics and more HTTP/1.1\r\n\r\n")
    assert reply.startswith(b"HTTP/1.1 400 ")


async def test_stop_closes_kept_alive_connections() -> None:
    server = MetricsServer(GatewayState(), "127.0.0.1", 0)
    port = await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        await reader.readuntil(b"\r\n\r\n")  # answered; the connection stays open
        await server.stop()
        await reader.read()  # returns at the close, whatever of the body was left
        assert reader.at_eof()
    finally:
        writer.close()


async def test_a_taken_port_is_an_os_error() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        server = MetricsServer(GatewayState(), "127.0.0.1", taken.getsockname()[1])
        with pytest.raises(OSError) as info:
            await server.start()
    assert info.value.errno == errno.EADDRINUSE


async def test_a_scrape_that_fails_is_a_500_and_the_next_one_works(
    served: tuple[GatewayState, MetricsServer],
) -> None:
    state, server = served
    assert server.port is not None
    state.duty_cycle = lambda: {"g1": "not a ratio"}  # a bug in the bridge
    async with (
        aiohttp.ClientSession() as session,
        session.get(f"http://127.0.0.1:{server.port}/metrics") as response,
    ):
        assert response.status == 500
    state.duty_cycle = lambda: {"g1": 0.25}
    samples = await scrape(server.port)
    assert samples[("duogate_radio_duty_cycle_used_ratio", (("band", "g1"),))] == 0.25
