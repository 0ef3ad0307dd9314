"""`make run` as a user meets it: the demo under `timeout`, its printed command pasted into a
shell, its status page, and SIGTERM or SIGHUP leaving nothing behind."""

from __future__ import annotations

import json
import os
import queue
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

REPO = Path(__file__).resolve().parent.parent
WAIT_S = 45.0  # for anything the demo prints: the first join, a report, a result

pytestmark = pytest.mark.skipif(
    not all(shutil.which(tool) for tool in ("mosquitto_pub", "timeout"))
    or not (shutil.which("mosquitto") or Path("/usr/sbin/mosquitto").exists()),
    reason="needs mosquitto, mosquitto-clients and coreutils' timeout",
)


class DemoOutput:
    """The demo's stdout and stderr, read line by line on a thread."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._proc = proc
        self.closed = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            with self._changed:
                self.lines.append(line.rstrip("\n"))
                self._changed.notify_all()
        with self._changed:
            self.closed = True
            self._changed.notify_all()

    def wait_for(self, pattern: str, after: int = 0) -> re.Match[str]:
        """The first line from index ``after`` on that matches ``pattern``."""
        regex = re.compile(pattern)
        deadline = time.monotonic() + WAIT_S
        seen = after
        with self._changed:
            while True:
                for line in self.lines[seen:]:
                    match = regex.search(line)
                    if match:
                        return match
                seen = len(self.lines)
                left = deadline - time.monotonic()
                if self.closed or left <= 0:
                    raise AssertionError(
                        f"no line matching {pattern!r}; output:\n" + "\n".join(self.lines[-40:])
                    )
                self._changed.wait(left)

    def index_of(self, pattern: str) -> tuple[int, re.Match[str]]:
        """Where the first line matching ``pattern`` is, and the match."""
        match = self.wait_for(pattern)
        return self.lines.index(match.string), match

    def wait_closed(self) -> None:
        """Every process holding the output pipe has exited."""
        self._thread.join(WAIT_S)
        assert self.closed, "something the demo started still holds its output open"


@dataclass(frozen=True)
class Process:
    pid: int
    command: str


def descendants(root: int) -> list[Process]:
    """Every process below ``root``, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        parent = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(parent, []).append(int(entry.name))
    found: list[Process] = []
    pending = list(children.get(root, []))
    while pending:
        pid = pending.pop()
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        found.append(Process(pid, command.strip()))
        pending += children.get(pid, [])
    return found


def alive(process: Process) -> bool:
    """Still running as that command (a zombie or a reused pid does not count)."""
    try:
        command = Path(f"/proc/{process.pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        return False
    return command.decode().strip() == process.command


class Demo:
    """A running demo, its output and what it started (as far as the test has looked)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.proc = proc
        self.output = DemoOutput(proc)
        self.children: list[Process] = []
        self.workdir: Path | None = None

    def folder(self) -> Path:
        """The temporary folder the demo prints."""
        found = self.output.wait_for(r"^  files: +(\S+) \(removed on exit\)$").group(1)
        self.workdir = Path(found)
        return self.workdir

    def started(self) -> list[Process]:
        """What the demo started: its broker, the simulated world and the gateway."""
        processes = descendants(self.proc.pid)
        kinds = {
            "mosquitto": [p for p in processes if "mosquitto" in p.command.split(" ")[0]],
            "sim": [p for p in processes if " -m gateway sim " in p.command],
            "run": [p for p in processes if " -m gateway run " in p.command],
        }
        assert all(len(found) == 1 for found in kinds.values()), processes
        self.children = [found[0] for found in kinds.values()]
        return self.children

    def stopped_cleanly(self, workdir: Path) -> None:
        """The demo exited 0 and took everything it started with it."""
        assert self.proc.wait(timeout=WAIT_S) == 0, "\n".join(self.output.lines[-30:])
        assert [child for child in self.children if alive(child)] == []
        assert not workdir.exists()
        self.output.wait_closed()


@contextmanager
def demo_process(*, under_timeout: bool) -> Iterator[Demo]:
    """``python -m gateway.demo examples/demo.toml`` (what `make run` runs), optionally under
    coreutils' ``timeout`` as in ``timeout 120 make run``."""
    command = [sys.executable, "-m", "gateway.demo", "examples/demo.toml"]
    if under_timeout:
        command = ["timeout", "--kill-after=30", "120", *command]
    proc = subprocess.Popen(
        command,
        cwd=REPO,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    demo = Demo(proc)
    try:
        yield demo
    finally:
        # After a failure: let it stop by itself first, then make sure.
        leftovers = descendants(proc.pid) + demo.children
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=WAIT_S)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        for process in leftovers:
            if alive(process):
                os.kill(process.pid, signal.SIGKILL)
        if demo.workdir is not None:
            shutil.rmtree(demo.workdir, ignore_errors=True)


def readme_examples() -> list[list[str]]:
    """The demo's output as README.md's "Start here" shows it (its plain ``` blocks)."""
    section = (REPO / "README.md").read_text().split("\n## Start here\n", 1)[1]
    section = section.split("\n## ", 1)[0]
    blocks: list[list[str]] = []
    fence: str | None = None  # the open block's info string
    for line in section.splitlines():
        if line.startswith("```"):
            if fence is None:
                fence = line[3:]
                if not fence:
                    blocks.append([])
            else:
                fence = None
        elif fence == "":
            blocks[-1].append(line)
    return blocks


def without_run_details(line: str) -> str:
    """``line`` with what differs from run to run (ports, the node, the folder) named."""
    line = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:<port>", line)
    line = re.sub(r"-p \d+ ", "-p <port> ", line)
    line = re.sub(r"lora-[0-9a-f]{16}", "lora-<eui>", line)
    return re.sub(r"\S*/duogate-demo-\S+", "<folder>", line)


def shown_in(block: list[str], lines: list[str]) -> bool:
    return any(lines[start : start + len(block)] == block for start in range(len(lines)))


class ResultWatcher:
    """Command results from the demo's broker, as any MQTT client sees them."""

    def __init__(self, port: int, prefix: str) -> None:
        self.results: queue.Queue[dict[str, Any]] = queue.Queue()
        self._subscribed = threading.Event()
        self._client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2)
        self._client.on_message = self._on_message
        self._client.on_subscribe = lambda *_args: self._subscribed.set()
        self._client.connect("127.0.0.1", port)
        self._client.subscribe(f"{prefix}/devices/+/command/result", qos=1)
        self._client.loop_start()
        assert self._subscribed.wait(10), "no SUBACK from the demo's broker"

    def _on_message(self, _client: Any, _userdata: Any, msg: mqtt.MQTTMessage) -> None:
        self.results.put({"topic": msg.topic, **json.loads(msg.payload)})

    def results_until_final(self, command_id: str) -> list[dict[str, Any]]:
        """The results for ``command_id`` up to the first past ``accepted`` and ``sent``."""
        deadline = time.monotonic() + WAIT_S
        results: list[dict[str, Any]] = []
        while not results or results[-1]["status"] in ("accepted", "sent"):
            try:
                result = self.results.get(timeout=max(0.1, deadline - time.monotonic()))
            except queue.Empty:
                raise AssertionError(f"no final result for {command_id}: {results}") from None
            if result["id"] == command_id:
                results.append(result)
        return results

    def close(self) -> None:
        self._client.loop_stop()
        self._client.disconnect()


def test_pasted_command_lines_run_and_sigterm_from_timeout_stops_everything() -> None:
    with demo_process(under_timeout=True) as demo:
        output = demo.output
        workdir = demo.folder()
        web_url = output.wait_for(r"^  status page: +(http://127\.0\.0\.1:\d+/)$").group(1)
        joined, match = output.index_of(r"^duogate demo: (lora-[0-9a-f]{16}) has joined\.")
        device = match.group(1)
        pasted = output.wait_for(r"^  (mosquitto_pub .*\"id\":\"c1\".*)$", joined).group(1)
        short_lived = output.wait_for(r"^  (mosquitto_pub .*\"id\":\"c2\".*)$", joined).group(1)
        output.wait_for(r"^The results arrive on ", joined)
        assert workdir.is_dir()
        demo.started()

        # The README shows what the demo prints, up to ports, the node and the folder.
        printed = [without_run_details(line) for line in output.lines]
        examples = readme_examples()
        assert len(examples) == 2
        for example in examples:
            assert shown_in([without_run_details(line) for line in example], printed), example

        words = shlex.split(pasted)
        assert words[words.index("-t") + 1] == f"duogate/demo/devices/{device}/command"
        watcher = ResultWatcher(int(words[words.index("-p") + 1]), "duogate/demo")
        try:
            subprocess.run(pasted, shell=True, check=True, timeout=10)
            results = watcher.results_until_final("c1")
            assert [r["status"] for r in results] == ["accepted", "sent", "executed"]
            assert {r["topic"] for r in results} == {
                f"duogate/demo/devices/{device}/command/result"
            }
            subprocess.run(short_lived, shell=True, check=True, timeout=10)
            results = watcher.results_until_final("c2")
            assert [r["status"] for r in results] == ["accepted", "expired"]
        finally:
            watcher.close()
        output.wait_for(rf"result  {device}  c1: executed")

        # The simulated meter reports beside the LoRa nodes and BLE sensors.
        output.wait_for(r"^\d\d:\d\d:\d\d  report  modbus-meter-1  .*voltage=")
        output.wait_for(r"^\d\d:\d\d:\d\d  report  ble-[0-9a-f]{12}  rssi=")
        with urllib.request.urlopen(web_url, timeout=10) as page:
            assert page.status == 200 and b"duogate" in page.read()

        demo.proc.send_signal(signal.SIGTERM)  # what `timeout` does when its time is up
        demo.stopped_cleanly(workdir)


def test_sighup_stops_everything_as_ctrl_c_does() -> None:
    with demo_process(under_timeout=False) as demo:
        output = demo.output
        workdir = demo.folder()
        output.wait_for(r"^duogate demo: lora-[0-9a-f]{16} has joined\.")
        demo.started()
        assert workdir.is_dir()
        demo.proc.send_signal(signal.SIGHUP)  # the terminal went away
        demo.stopped_cleanly(workdir)
