"""The status page of a real running gateway in headless Chromium.

The gateway runs in this process with a real mosquitto and the simulated world (nodes, medium
and chip on the same event loop); the page is the one its WebServer serves, and commands from
the page's form travel the whole way down to a simulated node.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path
from typing import Any

from playwright.async_api import expect

from gateway.config import parse_config
from gateway.daemon import Gateway
from gateway.web import WebServer
from gateway.web.live import resolve_device
from gateway.web.views import frame_view
from tests.bridge_fixtures import TIMEOUT, fast_settings, running_gateway, world_of
from tests.browser_fixtures import SCREENSHOT_COPY, chromium, requires_chromium, watch_errors
from tests.servers import Mosquitto

REPORT_INTERVAL_S = 2.0  # well above the short ttl below, so it cannot meet a receive window
SHORT_TTL = "0.5"

pytestmark = requires_chromium

expect.set_options(timeout=15_000)


async def send_from_form(page: Any, device: str, action: str, params: str, ttl: str) -> None:
    await page.select_option("#cmd-device", device)
    await page.fill("#cmd-action", action)
    await page.fill("#cmd-params", params)
    await page.fill("#cmd-ttl", ttl)
    await page.click("#command button")


def node_reports(gateway: Gateway, device: str) -> int:
    return gateway.state.nodes[device].reports


async def wait_for_reports(gateway: Gateway, device: str, count: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while node_reports(gateway, device) < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {count} reports from {device}")
        await asyncio.sleep(0.05)


async def test_live_gateway_page_shows_nodes_frames_and_runs_commands_on_the_nodes(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=2)
    settings["sim"]["report_interval_s"] = REPORT_INTERVAL_S
    settings["web"] = {"enabled": True, "host": "127.0.0.1", "port": 0}
    async with running_gateway(parse_config(settings)) as gateway, chromium() as browser:
        web = next(service for service in gateway.services if isinstance(service, WebServer))
        assert web.port not in (None, 0)
        world = world_of(gateway)
        devices = sorted(node.device_id for node in world.nodes)
        page = await browser.new_page(viewport={"width": 1280, "height": 1000})
        errors = watch_errors(page)
        await page.goto(f"http://127.0.0.1:{web.port}/")

        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#upstreams")).to_contain_text("mqtt connected")
        # The simulated nodes join and report; their rows appear.
        rows = page.locator("#nodes tbody tr")
        await expect(rows).to_have_count(len(devices))
        shown = sorted(await rows.evaluate_all("rows => rows.map(r => r.cells[0].textContent)"))
        assert shown == devices
        await expect(page.locator("#cmd-device option")).to_have_count(len(devices))

        # The frame log streams the gateway's own frames, line for line.
        log_lines = page.locator("#log div")
        await expect(log_lines.first).to_be_visible()
        last = await log_lines.last.text_content()
        await page.wait_for_function(
            "last => document.querySelector('#log').lastElementChild.textContent !== last",
            arg=last,
        )
        on_page = set(await log_lines.all_text_contents())
        logged = {
            frame_view(entry, resolve_device(gateway.state, entry.node))["text"]
            for entry in gateway.state.frames.recent()
        }
        assert len(on_page & logged) >= 3, (sorted(on_page)[:5], sorted(logged)[:5])

        # A command from the form reaches the node and is executed there.
        node = next(node for node in world.nodes if node.device_id == devices[0])
        index = world.nodes.index(node)
        assert node.relay is False
        newest = page.locator("#results li").first.locator(".status")
        await send_from_form(page, node.device_id, "relay", '{"on": true}', "20")
        await expect(page.locator("#results li")).to_have_count(1)
        await expect(newest).to_have_text("pending")
        await expect(newest).to_have_text("executed")
        assert world_of(gateway).nodes[index].relay is True
        assert [(c.action, c.params) for c in node.executed] == [("relay", {"on": True})]

        # A ttl shorter than the time to the node's next receive window: it expires unsent.
        await send_from_form(page, node.device_id, "relay", '{"on": false}', SHORT_TTL)
        await expect(page.locator("#results li")).to_have_count(2)
        await expect(newest).to_have_text("expired")
        # Receive windows come and go; the expired command never goes out.
        await wait_for_reports(gateway, node.device_id, node_reports(gateway, node.device_id) + 2)
        assert node.relay is True
        assert [(c.action, c.params) for c in node.executed] == [("relay", {"on": True})]
        assert node.stats.commands_expired == 0  # never sent, not dropped on arrival
        commands_sent = [e for e in gateway.state.frames.recent() if e.type == "command"]
        assert len(commands_sent) == 1

        await page.locator("#log").evaluate("log => { log.scrollTop = log.scrollHeight; }")
        shot = tmp_path / "status-page-live.png"
        await page.screenshot(path=str(shot), full_page=True)
        assert shot.stat().st_size > 10_000
        if os.environ.get("DUOGATE_SAVE_SCREENSHOT") == "1":
            SCREENSHOT_COPY.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, SCREENSHOT_COPY / "status-page-live.png")
    assert errors == []
