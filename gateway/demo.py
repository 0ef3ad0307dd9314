"""`make run`: the whole loop on one machine, with nothing to set up.

Starts a private mosquitto on a free loopback port (unless ``--broker HOST:PORT`` names one),
the simulated radio world (``duogate sim``), a simulated Modbus meter (pymodbus's server, on a
free loopback port) and the gateway (``duogate run``) on the real SX127x driver talking to the
world's simulated chip, with its status page on loopback. Then it shows reports, events and
command results as they arrive, and once a LoRa node has joined, the ``mosquitto_pub`` lines
that send it a command. Ctrl-C, SIGTERM and SIGHUP all stop everything it started and remove
its temporary folder.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import paho.mqtt.client as mqtt

from gateway.config import ConfigError, ModbusSection, load_config

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
CHILD_STOP_TIMEOUT_S = 10.0
METER_BUS = "meter"
# The two commands the demo offers: one that is executed, one whose life is too short to
# reach the node's next receive window (it expires in the gateway's queue, never sent).
COMMAND = {"id": "c1", "action": "relay", "params": {"on": True}, "ttl_s": 30}
SHORT_LIVED_COMMAND = {"id": "c2", "action": "relay", "params": {"on": False}, "ttl_s": 0.5}


class StopSignals:
    """SIGINT, SIGTERM and SIGHUP all stop the demo as Ctrl-C does (KeyboardInterrupt).

    Inside ``held()`` a stop waits until the block ends, so that a child being started is on
    the list of children to stop before the stop happens.
    """

    def __init__(self) -> None:
        self._held = 0
        self._pending = False

    def install(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def ignore(self) -> None:
        """While stopping: a second signal (``timeout`` sends one to make and one to its
        group) must not cut the clean-up short."""
        for sig in STOP_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)

    def _on_signal(self, _signum: int, _frame: FrameType | None) -> None:
        if self._held:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def held(self) -> Iterator[None]:
        self._held += 1
        try:
            yield
        finally:
            self._held -= 1
        if not self._held and self._pending:
            raise KeyboardInterrupt


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"duogate demo: {what} exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"duogate demo: {what} is not listening on port {port} after {timeout}s")


def mosquitto_binary() -> str:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise SystemExit(
            "duogate demo: mosquitto is not installed (sudo apt-get install mosquitto)"
        )
    return binary


def toml_value(value: Any) -> str:
    """A JSON-shaped value (tables, arrays, strings, numbers, booleans) as the TOML inline
    value that ``--set`` takes. JSON's strings, integers and finite floats are valid TOML;
    tables and booleans are spelled the TOML way. Checked by reading it back."""

    def spell(item: Any) -> str:
        if isinstance(item, dict):
            return (
                "{" + ", ".join(f"{json.dumps(str(k))} = {spell(v)}" for k, v in item.items()) + "}"
            )
        if isinstance(item, list):
            return "[" + ", ".join(spell(v) for v in item) + "]"
        if isinstance(item, bool):
            return "true" if item else "false"
        if isinstance(item, int | str) or (isinstance(item, float) and math.isfinite(item)):
            return json.dumps(item)
        raise ValueError(f"no TOML value for {item!r}")

    text = spell(value)
    if tomllib.loads(f"v = {text}")["v"] != value:
        raise ValueError(f"TOML value does not read back: {text}")
    return text


class SimulatedMeter:
    """The demo energy meter (``drivers.modbus.sim.ModbusDemo``) served from a thread with its
    own event loop, next to the demo's blocking MQTT loop."""

    def __init__(self, bus_name: str = METER_BUS) -> None:
        self.bus_name = bus_name
        self.section: ModbusSection | None = None
        self._error: BaseException | None = None
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="modbus-meter", daemon=True)

    def start(self, timeout: float = 20.0) -> ModbusSection:
        self._thread.start()
        if not self._ready.wait(timeout) or self.section is None:
            raise SystemExit(
                f"duogate demo: the simulated Modbus meter did not start: {self._error}"
            )
        return self.section

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout=CHILD_STOP_TIMEOUT_S)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except Exception as exc:
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        from drivers.modbus.sim import ModbusDemo

        demo = ModbusDemo(poll_interval_s=5.0)
        self._stop = asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            bus = await demo.start(self.bus_name)
            self.section = ModbusSection.from_table({"enabled": True, "buses": [bus]})
            self._ready.set()
            await self._stop.wait()
        finally:
            await demo.stop()


def modbus_overrides(section: ModbusSection) -> list[str]:
    buses = [bus.to_table() for bus in section.buses]
    return ["modbus.enabled=true", f"modbus.buses={toml_value(buses)}"]


def command_line(host: str, port: int, topic: str, command: dict[str, Any]) -> str:
    payload = json.dumps(command, separators=(",", ":"))
    return shlex.join(["mosquitto_pub", "-h", host, "-p", str(port), "-t", topic, "-m", payload])


class Display:
    """Prints what arrives under the gateway's topics, one line each."""

    def __init__(self, prefix: str, host: str, port: int) -> None:
        self.prefix = prefix
        self.host = host
        self.port = port
        self.offered_command = False

    def on_message(self, msg: mqtt.MQTTMessage) -> None:
        topic = msg.topic.removeprefix(self.prefix + "/")
        try:
            body = json.loads(msg.payload)
        except ValueError:
            body = msg.payload.decode(errors="replace")
        parts = topic.split("/")
        device = parts[1] if len(parts) > 2 and parts[0] == "devices" else None
        if topic.endswith("/report") and isinstance(body, dict):
            signal_text = " ".join(
                f"{key}={body[key]}" for key in ("rssi", "snr") if body.get(key) is not None
            )
            data = " ".join(f"{k}={v}" for k, v in body.get("data", {}).items())
            line = (
                f"report  {body.get('device')}  {signal_text + '  ' if signal_text else ''}{data}"
            )
        elif topic.endswith("/event") and isinstance(body, dict):
            line = f"event   {device}  {body.get('event')}"
        elif topic.endswith("/command/result") and isinstance(body, dict):
            detail = f" ({body['detail']})" if body.get("detail") else ""
            line = f"result  {device}  {body.get('id')}: {body.get('status')}{detail}"
        elif topic == "status":
            line = f"gateway {body}"
        else:
            return
        print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)
        joined = isinstance(body, dict) and body.get("event") in ("joined", "rejoined")
        if joined and device is not None and device.startswith("lora-"):
            self.offer_command(device)

    def offer_command(self, device: str) -> None:
        """Once, for the first LoRa node that joins: the command lines to paste."""
        if self.offered_command:
            return
        self.offered_command = True
        topic = f"{self.prefix}/devices/{device}/command"
        print(
            f"\nduogate demo: {device} has joined. To switch its relay on, paste into another "
            "terminal:\n"
            f"  {command_line(self.host, self.port, topic, COMMAND)}\n"
            "To send it a command that expires before its next receive window:\n"
            f"  {command_line(self.host, self.port, topic, SHORT_LIVED_COMMAND)}\n"
            f"The results arrive on {topic}/result (shown below).\n",
            flush=True,
        )


def stop_child(child: subprocess.Popen) -> None:
    if child.poll() is None:
        child.send_signal(signal.SIGTERM)
    try:
        child.wait(timeout=CHILD_STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        child.kill()
        child.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", default=Path("examples/demo.toml"))
    parser.add_argument("--broker", help="use this broker HOST:PORT instead of a private one")
    args = parser.parse_args(argv)
    try:
        load_config(args.config)  # nothing is started for a config with problems
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2

    signals = StopSignals()
    signals.install()
    broker: subprocess.Popen | None = None
    children: list[subprocess.Popen] = []  # the world and the gateway, stopped gateway first
    meter: SimulatedMeter | None = None
    workdir: Path | None = None
    try:
        with signals.held():
            workdir = Path(tempfile.mkdtemp(prefix="duogate-demo-"))
        if args.broker:
            host, _, port_text = args.broker.rpartition(":")
            broker_port = int(port_text)
        else:
            host, broker_port = "127.0.0.1", free_port()
            conf = workdir / "mosquitto.conf"
            conf.write_text(f"listener {broker_port} {host}\nallow_anonymous true\nlog_dest none\n")
            with signals.held():
                broker = subprocess.Popen(
                    [mosquitto_binary(), "-c", str(conf)], start_new_session=True
                )
            wait_for_port(broker_port, broker, "mosquitto")

        meter = SimulatedMeter()
        meter_section = meter.start()
        world_port = free_port()
        web_port = free_port()
        overrides = [
            f"gateway.data_dir={json.dumps(str(workdir / 'data'))}",
            f"mqtt.host={json.dumps(host)}",
            f"mqtt.port={broker_port}",
            f'radio.spi="sim://127.0.0.1:{world_port}"',
            f'sim.listen="127.0.0.1:{world_port}"',
            f"web.port={web_port}",
            *modbus_overrides(meter_section),
        ]
        try:
            final = load_config(args.config, overrides=overrides)
        except ConfigError as exc:
            print("\n".join(exc.problems), file=sys.stderr)
            return 2
        sets = [arg for item in overrides for arg in ("--set", item)]
        base = [sys.executable, "-m", "gateway"]
        # Own sessions: a Ctrl-C in the terminal reaches the demo alone, which stops the
        # children in order, as it does on SIGTERM and SIGHUP.
        with signals.held():
            world = subprocess.Popen(
                [*base, "sim", "--config", str(args.config), *sets], start_new_session=True
            )
            children.append(world)
        wait_for_port(world_port, world, "the simulated world")
        with signals.held():
            gateway = subprocess.Popen(
                [*base, "run", "--config", str(args.config), *sets], start_new_session=True
            )
            children.append(gateway)

        prefix = final.topic_prefix
        meter_bus = meter_section.buses[0]
        meter_ids = ", ".join(
            f"modbus-{meter_bus.name}-{device.unit}" for device in meter_bus.devices
        )
        ble = ", simulated BLE sensors" if final.ble.enabled else ""
        rows = [
            ("broker", f"{host}:{broker_port}"),
            ("world", f"127.0.0.1:{world_port}"),
            ("meter", f"{meter_bus.host}:{meter_bus.tcp_port} (Modbus TCP)"),
        ]
        if final.web.enabled:
            rows.append(("status page", f"http://{final.web.host}:{web_port}/"))
        rows.append(("files", f"{workdir} (removed on exit)"))
        table = "".join(f"  {name + ':':<13}{value}\n" for name, value in rows)
        print(
            f"\nduogate demo: {final.sim.nodes} simulated LoRa nodes{ble} and the Modbus meter "
            f"{meter_ids}.\n{table}"
            "A command line to paste follows as soon as a LoRa node has joined. "
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        display = Display(prefix, host, broker_port)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = lambda _c, _u, msg: display.on_message(msg)
        client.connect(host, broker_port)
        client.subscribe(f"{prefix}/#")
        while gateway.poll() is None and world.poll() is None:
            client.loop(0.5)
        print("duogate demo: a process ended; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        signals.ignore()
        for child in reversed(children):
            stop_child(child)
        if meter is not None:
            meter.stop()
        if broker is not None:
            stop_child(broker)
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
