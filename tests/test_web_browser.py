"""The status page in headless Chromium (the system browser at /usr/bin/chromium)."""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from drivers.radio.base import RadioSettings
from gateway.model import CommandResult, CommandStatus
from gateway.state import Direction, FrameLogEntry, GatewayState, OutboxStats
from gateway.web import WebServer
from tests.browser_fixtures import SCREENSHOT_COPY, chromium, requires_chromium, watch_errors

DEVICES = ["lora-00000000000000a1", "lora-00000000000000b2", "lora-00000000000000c3"]
BLE_SENSOR = "ble-a4c138000001"
PHONE = {"width": 375, "height": 740}

pytestmark = requires_chromium

expect.set_options(timeout=10_000)


class TestControls:
    """``executed`` for ttl >= 1 s (or the default), ``expired`` below, after a short wait."""

    __test__ = False

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any], float | None]] = []

    async def send_command(
        self, device: str, action: str, params: dict[str, Any], ttl_s: float | None
    ) -> CommandResult:
        self.calls.append((device, action, params, ttl_s))
        await asyncio.sleep(1.0)  # long enough to see it pending
        status = (
            CommandStatus.EXPIRED if ttl_s is not None and ttl_s < 1 else CommandStatus.EXECUTED
        )
        return CommandResult(f"cmd-{len(self.calls)}", device, status, time.time())

    async def reconfigure_radio(self, changes: dict[str, Any]) -> RadioSettings:
        return RadioSettings(**changes)

    def set_log_level(self, level: str) -> None:
        pass


def signal(index: int, ts: float) -> tuple[float, float]:
    phase = ts / 300 + index
    return round(-95 - 10 * index + 6 * math.sin(phase), 1), round(
        7 - 3 * index + 2 * math.cos(phase), 1
    )


def hear(state: GatewayState, index: int, ts: float) -> None:
    device = DEVICES[index]
    rssi, snr = signal(index, ts)
    data = {"temp_c": round(20 + math.sin(ts / 600), 2), "battery_v": 3.1}
    state.note_uplink(device, "lora", rssi=rssi, snr=snr, address=index + 1, data=data, ts=ts)
    state.count_received()
    state.log_frame(FrameLogEntry(ts, Direction.UP, device, "data", rssi, snr, 27, data))


def hear_ble(state: GatewayState, ts: float) -> None:
    """What the bridge does with a BLE advert: an uplink with an RSSI and no SNR, no frame."""
    rssi = round(-62 + 4 * math.sin(ts / 5), 1)
    state.note_uplink(BLE_SENSOR, "ble", rssi=rssi, data={"temperature": 21.5}, ts=ts)


def station() -> GatewayState:
    """A gateway that has been hearing three nodes for the last hour."""
    state = GatewayState()
    state.set_upstream("mqtt", True)
    state.set_upstream("xmpp", False, "connection refused")
    state.outbox_stats = lambda: OutboxStats(3, 1.5)
    state.duty_cycle = lambda: {"g1": 0.031, "g3": 0.004}
    state.radio = RadioSettings()
    now = time.time()
    for minute in range(60, 0, -1):
        for index in range(len(DEVICES)):
            hear(state, index, now - minute * 60 + index)
    return state


async def produce(state: GatewayState) -> None:
    while True:
        for index in range(len(DEVICES)):
            hear(state, index, time.time())
            await asyncio.sleep(0.1)
        hear_ble(state, time.time())


@contextlib.asynccontextmanager
async def running(
    state: GatewayState, password: str | None = None
) -> AsyncIterator[tuple[WebServer, TestControls, str]]:
    controls = TestControls()
    server = WebServer(state, controls, host="127.0.0.1", port=0, password=password)
    port = await server.start()
    # LoRa history comes from the frame log, which the page reads on starting; BLE adverts are
    # followed from then on, so the sensor's hour is heard now.
    now = time.time()
    for minute in range(60, 0, -1):
        hear_ble(state, now - minute * 60)
    producer = asyncio.create_task(produce(state))
    try:
        yield server, controls, f"http://127.0.0.1:{port}/"
    finally:
        producer.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await producer
        await server.stop()


async def send(page: Any, device: str, params: str, ttl: str) -> None:
    await page.select_option("#cmd-device", device)
    await page.fill("#cmd-action", "set")
    await page.fill("#cmd-params", params)
    await page.fill("#cmd-ttl", ttl)
    await page.click("#command button")


async def test_status_page_end_to_end(tmp_path: Path) -> None:
    state = station()
    async with running(state) as (server, controls, url), chromium() as browser:
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = watch_errors(page)
        await page.goto(url)

        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#nodes tbody tr")).to_have_count(4)
        first_row = page.locator("#nodes tbody tr").first
        await expect(first_row.locator("td").first).to_have_text(BLE_SENSOR)
        await expect(page.locator("#upstreams")).to_contain_text("mqtt connected")
        await expect(page.locator("#upstreams")).to_contain_text("xmpp disconnected")
        await expect(page.locator("#outbox-depth")).to_have_text("3")
        await expect(page.locator("#radio")).to_contain_text("868.100 MHz  SF7")
        await expect(page.locator("#duty progress")).to_have_count(2)

        # The frame log streams: lines keep arriving after the backlog.
        log_lines = page.locator("#log div")
        await expect(log_lines.first).to_be_visible()
        shown = await log_lines.last.text_content()
        await page.wait_for_function(
            "last => document.querySelector('#log').lastElementChild.textContent !== last",
            arg=shown,
        )
        await expect(log_lines.last).to_contain_text("lora-")

        # The first row is charted: a BLE sensor, heard by its adverts (no frames): RSSI over
        # the hour, and its live samples move the last value; it has no SNR.
        await expect(page.locator("#chart-device")).to_have_text(BLE_SENSOR)
        await expect(page.locator("#chart svg polyline.rssi")).to_have_count(1)
        rssi_points = await page.locator("#chart polyline.rssi").get_attribute("points")
        assert rssi_points is not None and len(rssi_points.split()) >= 50
        await expect(page.locator("#chart svg")).to_contain_text("SNR dB: no samples")
        last_rssi = page.locator("#chart text", has_text="last ")
        shown_last = await last_rssi.text_content()
        await expect(last_rssi).not_to_have_text(shown_last or "")
        # Another node on a tap: LoRa nodes, from their frames, have both.
        await page.locator("#nodes tbody tr", has_text=DEVICES[0]).click()
        await expect(page.locator("#chart-device")).to_have_text(DEVICES[0])
        rssi_points = await page.locator("#chart polyline.rssi").get_attribute("points")
        assert rssi_points is not None and len(rssi_points.split()) >= 50
        await page.locator("#nodes tbody tr", has_text=DEVICES[2]).click()
        await expect(page.locator("#chart-device")).to_have_text(DEVICES[2])
        await expect(page.locator("#nodes tbody tr.selected td").first).to_have_text(DEVICES[2])
        await expect(page.locator("#chart svg polyline.snr")).to_have_count(1)

        # Commands: the result arrives over the live feed.
        newest = page.locator("#results li").first.locator(".status")
        await send(page, DEVICES[1], '{"on": true}', "5")
        await expect(newest).to_have_text("pending")
        await expect(newest).to_have_text("executed")
        await send(page, DEVICES[1], '{"on": false}', "0.5")
        await expect(newest).to_have_text("expired")
        await expect(page.locator("#results li")).to_have_count(2)
        await send(page, DEVICES[1], "{not json", "5")
        await expect(page.locator("#cmd-error")).to_contain_text("params are not valid JSON")
        assert controls.calls == [
            (DEVICES[1], "set", {"on": True}, 5),
            (DEVICES[1], "set", {"on": False}, 0.5),
        ]

        await page.locator("#log").evaluate("log => { log.scrollTop = log.scrollHeight; }")
        shot = tmp_path / "status-page.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("DUOGATE_SAVE_SCREENSHOT") == "1":
            SCREENSHOT_COPY.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT_COPY / "status-page.png")

        # A phone-sized screen: everything fits the width, tables and log scroll inside.
        phone = await browser.new_page(viewport=PHONE, device_scale_factor=2, is_mobile=True)
        errors += watch_errors(phone)
        await phone.goto(url)
        await expect(phone.locator("#nodes tbody tr")).to_have_count(4)
        await expect(phone.locator("#chart svg")).to_have_count(1)
        widths = await phone.evaluate(
            "() => [document.body.scrollWidth, document.documentElement.scrollWidth,"
            " window.innerWidth]"
        )
        assert widths[0] <= widths[2] and widths[1] <= widths[2], widths
        await phone.screenshot(path=str(tmp_path / "status-page-phone.png"), full_page=True)
        assert server.live_clients == 2
    # The refused command's answer is the only failed load.
    assert [e for e in errors if "status of 400" not in e] == []
    assert len(errors) == 1


async def test_password_protected_page_streams_with_basic_auth() -> None:
    state = station()
    async with running(state, password="cabinet-7") as (server, _, url), chromium() as browser:
        refused = await browser.new_page()
        response = await refused.request.get(url)
        assert response.status == 401

        context = await browser.new_context(
            http_credentials={"username": "tech", "password": "cabinet-7"}
        )
        page = await context.new_page()
        errors = watch_errors(page)
        await page.goto(url)
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#nodes tbody tr")).to_have_count(4)
        count = await page.locator("#log div").count()
        await page.wait_for_function(
            "n => document.querySelectorAll('#log div').length > n", arg=count
        )
        assert errors == []
        assert server.stats.auth_failures >= 1
