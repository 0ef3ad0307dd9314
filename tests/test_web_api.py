from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from drivers.radio.base import RadioSettings
from gateway.config import Config, Secret, WebSection
from gateway.console.formatting import format_age, format_frame, format_nodes, format_status
from gateway.model import CommandResult, CommandStatus
from gateway.state import Direction, FrameLogEntry, GatewayState, OutboxStats
from gateway.web import WebConfigError, WebServer, page_weight
from gateway.web.history import SignalHistory
from gateway.web.live import SseClient

LAMP = "lora-00000000000000a1"
METER = "modbus-bus1-3"
TAG = "ble-a4c138000001"
T0 = 1_700_000_000.0


class FakeClock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


class FakeControls:
    """The bridge's side of ``Controls``: ``executed`` for ttl >= 1 s or the default,
    ``expired`` below 1 s; ``boom`` raises."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], float | None]] = []

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        self.calls.append((device, action, params, ttl_s))
        await asyncio.sleep(0.05)
        if action == "boom":
            raise RuntimeError("bridge fell over\nsecond line")
        status = (
            CommandStatus.EXPIRED if ttl_s is not None and ttl_s < 1 else CommandStatus.EXECUTED
        )
        return CommandResult(f"cmd-{len(self.calls)}", device, status, time.time(), detail=None)

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        return RadioSettings(**changes)

    def set_log_level(self, level: str) -> None:
        pass


def frame(node: str, n: int, *, rssi: float | None = -90.0, kind: str = "data") -> FrameLogEntry:
    return FrameLogEntry(
        ts=T0 + n,
        direction=Direction.UP,
        node=node,
        type=kind,
        rssi=rssi,
        snr=7.5 if rssi is not None else None,
        size=24,
        body={"n": n, "temp": 21.5},
    )


def filled_state() -> GatewayState:
    state = GatewayState(clock=FakeClock(T0 + 100), monotonic=FakeClock(5000.0))
    state.set_upstream("mqtt", True)
    state.set_upstream("xmpp", False, "connection refused\x1b[2J")
    state.outbox_stats = lambda: OutboxStats(7, 12.5)
    state.duty_cycle = lambda: {"g1": 0.0125}
    state.radio = RadioSettings(spreading_factor=9)
    state.note_uplink(LAMP, "lora", rssi=-97.5, snr=6.25, address=2, data={"on": True}, ts=T0 + 40)
    state.note_uplink(METER, "modbus", data={"power_w": 120.0}, ts=T0 + 90)
    state.node(TAG, "ble").pending_commands = 1
    for _ in range(3):
        state.count_received()
    state.count_rejected("bad_tag")
    state.count_join(accepted=True)
    state.log_frame(frame(LAMP, 1))
    state.log_frame(frame("0x0002", 2, rssi=-101.0))
    state.log_frame(frame("0x0bad", 3, rssi=None, kind="rejected:bad_tag"))
    return state


@pytest.fixture
async def served() -> AsyncIterator[tuple[GatewayState, FakeControls, WebServer, str]]:
    state = filled_state()
    controls = FakeControls()
    server = WebServer(state, controls, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        yield state, controls, server, f"http://127.0.0.1:{port}"
    finally:
        await server.stop()


def basic_auth(user: str, password: str) -> dict[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return {"Authorization": f"Basic {token}"}


async def get_json(url: str, **kwargs: Any) -> Any:
    async with aiohttp.ClientSession() as session, session.get(url, **kwargs) as response:
        assert response.status == 200, await response.text()
        return await response.json()


async def sse_events(response: aiohttp.ClientResponse) -> AsyncIterator[tuple[str, Any]]:
    event, data = None, []
    async for raw in response.content:
        line = raw.decode().rstrip("\n")
        if not line:
            if event is not None:
                yield event, json.loads("\n".join(data))
            event, data = None, []
        elif line.startswith("event: "):
            event = line[len("event: ") :]
        elif line.startswith("data: "):
            data.append(line[len("data: ") :])


async def next_event(events: AsyncIterator[tuple[str, Any]], name: str) -> Any:
    async with asyncio.timeout(10):
        async for event, data in events:
            if event == name:
                return data
    raise AssertionError(f"stream ended before a {name!r} event")


# --- starting, auth, headers ---


def test_refuses_a_non_loopback_address_without_a_password() -> None:
    state = GatewayState()
    with pytest.raises(WebConfigError, match=r"web.password is required .*'0.0.0.0'"):
        WebServer(state, None, host="0.0.0.0", port=0, password=None)
    config = Config(web=WebSection(enabled=True, host="192.168.1.20"))
    with pytest.raises(WebConfigError) as refused:
        WebServer.from_config(config, state, None)
    assert "\n" not in str(refused.value)
    WebServer(state, None, host="192.168.1.20", port=0, password="s3cret")  # accepted
    with pytest.raises(WebConfigError, match="empty"):
        WebServer(state, None, host="127.0.0.1", port=0, password="")


def test_an_unreadable_password_secret_is_a_one_line_error(tmp_path: Any) -> None:
    missing = tmp_path / "nope"
    config = Config(web=WebSection(host="0.0.0.0", password=Secret(file=missing)))
    with pytest.raises(WebConfigError, match=r"^web.password: cannot read .*nope"):
        WebServer.from_config(config, GatewayState(), None)


async def test_a_password_is_checked_on_every_route(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DUOGATE_TEST_WEB_PASSWORD", "correct horse")
    config = Config(web=WebSection(port=0, password=Secret(env="DUOGATE_TEST_WEB_PASSWORD")))
    server = WebServer.from_config(config, filled_state(), FakeControls())
    port = await server.start()
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as session:
            for path in ("/", "/app.js", "/api/status", "/api/nodes", "/events"):
                async with session.get(base + path) as response:
                    assert response.status == 401, path
                    assert response.headers["WWW-Authenticate"].startswith("Basic ")
            wrong = basic_auth("admin", "correct horsE")
            async with session.get(base + "/api/status", headers=wrong) as response:
                assert response.status == 401
            garbage = {"Authorization": "Basic %%%not-base64"}
            async with session.get(base + "/api/status", headers=garbage) as response:
                assert response.status == 401
            right = basic_auth("anyone", "correct horse")
            async with session.get(base + "/api/status", headers=right) as response:
                assert response.status == 200
                assert (await response.json())["nodes_seen"] == 3
            async with session.post(base + "/api/command", json={}) as response:
                assert response.status == 401
        assert server.stats.auth_failures == 8
    finally:
        await server.stop()


async def test_password_with_non_ascii_characters() -> None:
    server = WebServer(GatewayState(), None, host="127.0.0.1", port=0, password="grüße")
    port = await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.get(
                f"http://127.0.0.1:{port}/api/nodes", headers=basic_auth("u", "grüße")
            ) as response,
        ):
            assert response.status == 200
    finally:
        await server.stop()


async def test_unprotected_server_refuses_foreign_host_names(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    _, _, server, base = served
    async with aiohttp.ClientSession() as session:
        async with session.get(base + "/api/status", headers={"Host": "evil.example"}) as response:
            assert response.status == 403
        async with session.get(base + "/api/status", headers={"Host": "localhost:1"}) as response:
            assert response.status == 200
    assert server.stats.refused_hosts == 1


async def test_page_and_assets_with_security_headers(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    _, _, _, base = served
    weight = page_weight()
    async with aiohttp.ClientSession() as session:
        for path, kind, name in (
            ("/", "text/html", "index.html"),
            ("/app.js", "text/javascript", "app.js"),
            ("/style.css", "text/css", "style.css"),
        ):
            async with session.get(base + path) as response:
                assert response.status == 200
                assert response.content_type == kind
                assert len(await response.read()) == weight[name]
                csp = response.headers["Content-Security-Policy"]
                assert "default-src 'none'" in csp and "script-src 'self'" in csp
                assert response.headers["X-Content-Type-Options"] == "nosniff"
                etag = response.headers["ETag"]
            async with session.get(base + path, headers={"If-None-Match": etag}) as response:
                assert response.status == 304
        async with session.get(base + "/api/status") as response:
            assert response.headers["Cache-Control"] == "no-store"
            assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
        async with session.get(base + "/nope") as response:
            assert response.status == 404
            assert "Content-Security-Policy" in response.headers
    assert weight["total"] == weight["index.html"] + weight["app.js"] + weight["style.css"]
    assert weight["total"] < 30_000


def test_the_page_fetches_nothing_from_elsewhere() -> None:
    from importlib import resources

    folder = resources.files("gateway.web") / "static"
    for name in ("index.html", "app.js", "style.css"):
        text = (folder / name).read_text().replace('"http://www.w3.org/2000/svg"', "")
        for outside in ("http:", "https:", '="//', "url(", "@import", "<script>", " style="):
            assert outside not in text, (name, outside)


# --- the JSON API agrees with the console ---


async def test_status_json_matches_the_console(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, _, base = served
    status = await get_json(base + "/api/status")
    assert status["text"] == format_status(state)
    assert status["uptime"] == "00:00:00"
    assert [(u["name"], u["connected"]) for u in status["upstreams"]] == [
        ("mqtt", True),
        ("xmpp", False),
    ]
    assert status["upstreams"][1]["last_error"] == "connection refused\\x1b[2J"
    assert status["outbox"] == {"depth": 7, "oldest_age_s": 12.5}
    assert status["radio"]["spreading_factor"] == 9
    assert status["radio_text"].startswith("868.100 MHz  SF9")
    assert status["duty_cycle"] == {"g1": 0.0125}
    assert status["duty_cycle_text"] == "g1 1.25 %"
    assert status["frames"]["received"] == 3
    assert status["frames"]["rejected_by_reason"] == {"bad_tag": 1}
    assert status["joins"] == {"accepted": 1}
    assert status["nodes_seen"] == 3


async def test_a_failing_bridge_reader_gives_null_not_an_error(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, _, base = served

    def broken() -> OutboxStats:
        raise OSError("database is locked")

    state.outbox_stats = broken
    status = await get_json(base + "/api/status")
    assert status["outbox"] is None
    assert status["text"].startswith("error: cannot read status: OSError: database is locked")


async def test_nodes_json_matches_the_console(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, _, base = served
    view = await get_json(base + "/api/nodes")
    assert view["text"] == format_nodes(state)
    assert [node["device"] for node in view["nodes"]] == [TAG, LAMP, METER]
    tag, lamp, meter = view["nodes"]
    assert lamp["address"] == 2 and lamp["address_text"] == "0x0002"
    assert lamp["rssi"] == -97.5 and lamp["snr"] == 6.25
    assert lamp["last_seen_text"] == format_age(T0 + 40, T0 + 100) == "1m ago"
    assert lamp["last_data"] == {"on": True}
    assert meter["kind"] == "modbus" and meter["rssi"] is None
    assert tag["pending_commands"] == 1 and tag["last_seen_text"] == "never"


async def test_frames_json_carries_the_console_line(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, server, base = served
    frames = (await get_json(base + "/api/frames"))["frames"]
    assert [f["text"] for f in frames] == [format_frame(e).rstrip("\n") for e in state.frames]
    assert [f["device"] for f in frames] == [LAMP, LAMP, None]  # 0x0002 is the lamp's address
    assert frames[2]["type"] == "rejected:bad_tag" and frames[2]["rssi"] is None
    assert len((await get_json(base + "/api/frames?count=1"))["frames"]) == 1
    async with aiohttp.ClientSession() as session:
        for bad in ("-1", "x", "100000"):
            async with session.get(f"{base}/api/frames?count={bad}") as response:
                assert response.status == 400
                assert "count must be" in (await response.json())["error"]
    assert server.stats.bad_requests == 3


async def test_odd_values_stay_valid_json(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, _, base = served
    state.note_uplink(LAMP, "lora", rssi=float("nan"), data={"x": float("inf"), "b": b"\x00"})
    state.log_frame(
        FrameLogEntry(T0, Direction.DOWN, "\x1b[31mnode", "ack", float("nan"), None, 5, "\x07hi")
    )
    nodes = await get_json(base + "/api/nodes")
    lamp = next(n for n in nodes["nodes"] if n["device"] == LAMP)
    assert lamp["rssi"] is None
    frames = (await get_json(base + "/api/frames"))["frames"]
    assert frames[-1]["rssi"] is None
    assert frames[-1]["node"] == "\\x1b[31mnode"
    assert lamp["last_data"] == {"x": None, "b": "b'\\x00'"}


# --- live events ---


async def test_events_stream_snapshot_then_diffs_and_frames(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, server, base = served
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + "/events") as response,
    ):
        assert response.status == 200
        assert response.content_type == "text/event-stream"
        events = sse_events(response)
        hello = await next_event(events, "hello")
        assert hello["history_window_s"] == 3600
        first = await next_event(events, "snapshot")
        assert first["full"] is True
        assert set(first["nodes"]) == {LAMP, METER, TAG}
        assert first["ages"] == {LAMP: "1m ago", METER: "10s ago", TAG: "never"}
        assert "last_seen_text" not in first["nodes"][LAMP]
        assert first["status"]["outbox"]["depth"] == 7
        backlog = await next_event(events, "frames")
        assert [f["node"] for f in backlog] == [LAMP, "0x0002", "0x0bad"]
        assert server.live_clients == 1

        state.note_uplink(METER, "modbus", data={"power_w": 99.0}, ts=T0 + 95)
        state.log_frame(frame(LAMP, 50, rssi=-80.0))
        live = await next_event(events, "frame")
        assert live["ts"] == T0 + 50 and live["device"] == LAMP and live["rssi"] == -80.0
        assert live["text"] == format_frame(frame(LAMP, 50, rssi=-80.0)).rstrip("\n")
        assert "body" not in live  # the console line carries it
        diff = await next_event(events, "snapshot")
        while not diff["nodes"]:  # a tick before the change: status only
            diff = await next_event(events, "snapshot")
        assert diff["full"] is False
        assert list(diff["nodes"]) == [METER]
        assert diff["ages"] == {METER: "5s ago"}
        assert diff["nodes"][METER]["last_data"] == {"power_w": 99.0}
        assert diff["gone"] == []
    async with asyncio.timeout(5):
        while server.live_clients:
            await asyncio.sleep(0.05)


async def test_stop_ends_open_streams() -> None:
    server = WebServer(filled_state(), None, host="127.0.0.1", port=0)
    port = await server.start()
    async with aiohttp.ClientSession() as session:
        response = await session.get(f"http://127.0.0.1:{port}/events")
        await next_event(sse_events(response), "frames")
        async with asyncio.timeout(5):
            await server.stop()
        async with asyncio.timeout(5):
            assert await response.content.read() == b""
        response.release()


def test_a_slow_reader_is_cut_off_not_fed_a_gap() -> None:
    client = SseClient(max_queued=3)
    for n in range(4):
        client.offer(f"m{n}".encode())
    assert client.overflowed
    assert asyncio.run(client.next_batch()) is None


async def test_history_backfills_and_follows_the_frame_log(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, _, base = served
    history = await get_json(f"{base}/api/history/{LAMP}")
    assert history["bucket_s"] == 15
    assert history["points"] == [[T0 + 2, -95.5, 7.5]]  # -90 and -101 in one bucket
    state.log_frame(frame(LAMP, 60, rssi=-70.0))
    async with asyncio.timeout(5):
        while len(history["points"]) < 2:
            await asyncio.sleep(0.02)
            history = await get_json(f"{base}/api/history/{LAMP}")
    assert history["points"][-1] == [T0 + 60, -70.0, 7.5]
    assert (await get_json(f"{base}/api/history/{METER}"))["points"] == []


async def test_ble_devices_get_signal_history_and_live_samples(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    state, _, _, base = served
    assert (await get_json(f"{base}/api/history/{TAG}"))["points"] == []
    async with (
        aiohttp.ClientSession() as session,
        session.get(base + "/events") as response,
    ):
        events = sse_events(response)
        await next_event(events, "frames")
        # What the bridge does with a BLE advert: an uplink with its RSSI, no frame log entry.
        state.note_uplink(TAG, "ble", rssi=-61.0, data={"temperature": 21.5}, ts=T0 + 70)
        state.note_uplink(TAG, "ble", rssi=-65.0, data={"temperature": 21.6}, ts=T0 + 72)
        assert await next_event(events, "signal") == {
            "device": TAG,
            "ts": T0 + 70,
            "rssi": -61.0,
            "snr": None,
        }
        assert (await next_event(events, "signal"))["rssi"] == -65.0
        # A Modbus poll carries no signal; a LoRa node's comes from its frames, once each.
        state.note_uplink(METER, "modbus", data={"power_w": 1.0}, ts=T0 + 73)
        state.note_uplink(LAMP, "lora", rssi=-50.0, snr=9.0, data={"on": False}, ts=T0 + 74)
        state.log_frame(frame(LAMP, 74, rssi=-50.0))
        lamp = await next_event(events, "signal")
        assert (lamp["device"], lamp["rssi"], lamp["snr"]) == (LAMP, -50.0, 7.5)
    history = await get_json(f"{base}/api/history/{TAG}")
    assert history["points"] == [[T0 + 72, -63.0, None]]  # one 15 s bucket: the mean
    assert (await get_json(f"{base}/api/history/{METER}"))["points"] == []
    lamp_points = (await get_json(f"{base}/api/history/{LAMP}"))["points"]
    assert lamp_points[-1] == [T0 + 74, -50.0, 7.5]


async def test_a_ble_device_heard_before_the_page_started_has_its_last_sample() -> None:
    state = filled_state()
    state.note_uplink(TAG, "ble", rssi=-70.0, data={"battery": 90}, ts=T0 + 80)
    server = WebServer(state, None, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        history = await get_json(f"http://127.0.0.1:{port}/api/history/{TAG}")
        assert history["points"] == [[T0 + 80, -70.0, None]]
        state.note_uplink(TAG, "ble", rssi=-74.0, data={"battery": 90}, ts=T0 + 100)
        history = await get_json(f"http://127.0.0.1:{port}/api/history/{TAG}")
        assert history["points"] == [[T0 + 80, -70.0, None], [T0 + 100, -74.0, None]]
    finally:
        await server.stop()
    state.note_uplink(TAG, "ble", rssi=-80.0, data={"battery": 90}, ts=T0 + 130)
    assert len(server.history.points(TAG, T0 + 130)) == 2  # stopped: no longer following


def test_signal_history_is_bounded() -> None:
    history = SignalHistory(window_s=60, bucket_s=10, max_nodes=2)
    for second in range(0, 300, 2):
        history.add("a", T0 + second, -100.0 + second / 10, 5.0)
    points = history.points("a", T0 + 300)
    assert len(points) <= 7
    assert all(p[0] >= T0 + 240 for p in points)
    history.add("a", T0 + 10, -50.0, None)  # older than the last bucket: ignored
    assert history.points("a", T0 + 300) == points
    history.add("b", T0, float("nan"), None)  # nothing finite: ignored
    assert history.devices() == ["a"]
    history.add("b", T0, -90.0, None)
    history.add("c", T0, -90.0, None)
    assert history.devices() == ["b", "c"]
    assert history.points("c", T0) == [[T0, -90.0, None]]


# --- commands ---


async def test_command_post_returns_a_request_and_the_result_follows(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    _, controls, server, base = served
    async with aiohttp.ClientSession() as session, session.get(base + "/events") as stream:
        events = sse_events(stream)
        await next_event(events, "frames")
        results = {}
        for ttl, expected in ((5, "executed"), (0.5, "expired"), (None, "executed")):
            body = {"device": LAMP, "action": "set", "params": '{"on": false}', "ttl_s": ttl}
            async with session.post(base + "/api/command", json=body) as response:
                assert response.status == 202
                accepted = await response.json()
            assert accepted["status"] == "pending"
            done = await next_event(events, "result")
            assert done["request"] == accepted["request"]
            assert done["status"] == expected
            assert done["result"]["status"] == expected and done["result"]["device"] == LAMP
            results[accepted["request"]] = expected
        for request, expected in results.items():
            assert (await get_json(f"{base}/api/command/{request}"))["status"] == expected
    assert controls.calls == [
        (LAMP, "set", {"on": False}, 5),
        (LAMP, "set", {"on": False}, 0.5),
        (LAMP, "set", {"on": False}, None),
    ]
    assert server.stats.results == {"executed": 2, "expired": 1}


async def test_a_failing_control_is_an_error_result(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    _, _, server, base = served
    async with aiohttp.ClientSession() as session:
        body = {"device": LAMP, "action": "boom", "params": {"a": [1, 2]}}
        async with session.post(base + "/api/command", json=body) as response:
            request = (await response.json())["request"]
    async with asyncio.timeout(5):
        while (command := await get_json(f"{base}/api/command/{request}"))["status"] == "pending":
            await asyncio.sleep(0.02)
    assert command["status"] == "error"
    assert command["result"]["detail"] == "RuntimeError: bridge fell over"
    assert server.stats.command_errors == 1


@pytest.mark.parametrize(
    ("body", "status", "message"),
    [
        ("not json", 400, "body is not valid JSON"),
        ([1, 2], 400, "body must be a JSON object"),
        ({"device": LAMP}, 400, "action must be a non-empty string"),
        ({"device": "lamp 1", "action": "set"}, 400, "not a device id"),
        ({"device": "lamp", "action": "set"}, 400, "not a device id: 'lamp'"),
        ({"device": LAMP, "action": "se t"}, 400, "not an action name"),
        ({"device": LAMP, "action": "$et"}, 400, "not an action name"),
        ({"device": LAMP, "action": "set", "params": "[1]"}, 400, "must be a JSON object"),
        ({"device": LAMP, "action": "set", "params": "{oops"}, 400, "params are not valid JSON"),
        ({"device": LAMP, "action": "set", "params": 3}, 400, "params must be a JSON object"),
        ({"device": LAMP, "action": "set", "ttl_s": 0}, 400, "ttl must be a positive number"),
        ({"device": LAMP, "action": "set", "ttl_s": -2}, 400, "ttl must be a positive number"),
        ({"device": LAMP, "action": "set", "ttl_s": "5"}, 400, "ttl_s must be a number"),
        ({"device": LAMP, "action": "set", "ttl_s": True}, 400, "ttl_s must be a number"),
        ({"device": LAMP, "action": "set", "colour": 1}, 400, "unknown field 'colour'"),
    ],
)
async def test_bad_commands_are_refused_by_the_console_rules(
    served: tuple[GatewayState, FakeControls, WebServer, str],
    body: Any,
    status: int,
    message: str,
) -> None:
    _, controls, server, base = served
    data = body if isinstance(body, str) else json.dumps(body)
    headers = {"Content-Type": "application/json"}
    async with (
        aiohttp.ClientSession() as session,
        session.post(base + "/api/command", data=data, headers=headers) as response,
    ):
        assert response.status == status
        error = (await response.json())["error"]
    assert message in error and "\n" not in error
    assert controls.calls == []
    assert server.stats.bad_requests == 1


async def test_command_post_needs_json_from_this_origin(
    served: tuple[GatewayState, FakeControls, WebServer, str],
) -> None:
    _, controls, _, base = served
    form = {"device": LAMP, "action": "set"}
    async with aiohttp.ClientSession() as session:
        async with session.post(base + "/api/command", data=form) as response:
            assert response.status == 415
        headers = {"Origin": "http://evil.example"}
        async with session.post(base + "/api/command", json=form, headers=headers) as response:
            assert response.status == 403
        async with session.post(
            base + "/api/command", json=form, headers={"Origin": base}
        ) as response:
            assert response.status == 202
        async with session.get(base + "/api/command/unknown") as response:
            assert response.status == 404
    assert len(controls.calls) == 1


async def test_commands_without_controls_are_unavailable() -> None:
    server = WebServer(GatewayState(), None, host="127.0.0.1", port=0)
    port = await server.start()
    try:
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"http://127.0.0.1:{port}/api/command", json={"device": LAMP, "action": "set"}
            ) as response,
        ):
            assert response.status == 503
            assert "no controls" in (await response.json())["error"]
    finally:
        await server.stop()
