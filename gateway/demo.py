"""`make run`: the whole loop on one machine, with nothing to set up.

Starts a private mosquitto on a free loopback port (unless ``--broker HOST:PORT`` names one),
the simulated radio world (``duogate sim``) and the gateway (``duogate run``) on the real SX127x
driver talking to the world's simulated chip, then shows reports, events and command results as
they arrive. Ctrl-C stops everything it started.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from gateway.config import ConfigError, load_config


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


def start_mosquitto(workdir: Path) -> tuple[subprocess.Popen, int]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    if not os.path.exists(binary):
        raise SystemExit(
            "duogate demo: mosquitto is not installed (sudo apt-get install mosquitto)"
        )
    port = free_port()
    conf = workdir / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\nlog_dest none\n")
    proc = subprocess.Popen([binary, "-c", str(conf)], start_new_session=True)
    wait_for_port(port, proc, "mosquitto")
    return proc, port


def show(msg: mqtt.MQTTMessage, prefix: str) -> None:
    topic = msg.topic.removeprefix(prefix + "/")
    try:
        body = json.loads(msg.payload)
    except ValueError:
        body = msg.payload.decode(errors="replace")
    if topic.endswith("/report") and isinstance(body, dict):
        data = " ".join(f"{k}={v}" for k, v in body.get("data", {}).items())
        line = (
            f"report  {body.get('device')}  rssi={body.get('rssi')} snr={body.get('snr')}  {data}"
        )
    elif topic.endswith("/event") and isinstance(body, dict):
        line = f"event   {topic.split('/')[1]}  {body.get('event')}"
    elif topic.endswith("/command/result") and isinstance(body, dict):
        detail = f" ({body['detail']})" if body.get("detail") else ""
        line = f"result  {topic.split('/')[1]}  {body.get('id')}: {body.get('status')}{detail}"
    elif topic == "status":
        line = f"gateway {body}"
    else:
        return
    print(f"{time.strftime('%H:%M:%S')}  {line}", flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="make run", description=__doc__.splitlines()[0])
    parser.add_argument("config", type=Path, nargs="?", default=Path("examples/demo.toml"))
    parser.add_argument("--broker", help="use this broker HOST:PORT instead of a private one")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print("\n".join(exc.problems), file=sys.stderr)
        return 2

    children: list[subprocess.Popen] = []
    workdir = Path(tempfile.mkdtemp(prefix="duogate-demo-"))
    try:
        if args.broker:
            host, _, port_text = args.broker.rpartition(":")
            broker_port = int(port_text)
        else:
            broker, broker_port = start_mosquitto(workdir)
            host = "127.0.0.1"
            children.append(broker)
        world_port = free_port()
        overrides = [
            f"mqtt.host={json.dumps(host)}",
            f"mqtt.port={broker_port}",
            f'radio.spi="sim://127.0.0.1:{world_port}"',
            f'sim.listen="127.0.0.1:{world_port}"',
        ]
        sets = [arg for item in overrides for arg in ("--set", item)]
        base = [sys.executable, "-m", "gateway"]
        world = subprocess.Popen([*base, "sim", "--config", str(args.config), *sets])
        children.append(world)
        wait_for_port(world_port, world, "the simulated world")
        gateway = subprocess.Popen([*base, "run", "--config", str(args.config), *sets])
        children.append(gateway)

        prefix = config.topic_prefix
        print(
            f"\nduogate demo: broker 127.0.0.1:{broker_port}, world 127.0.0.1:{world_port}, "
            f"{config.sim.nodes} simulated nodes. Send a command with:\n"
            f"  mosquitto_pub -p {broker_port} -t '{prefix}/devices/<device>/command' "
            """-m '{"id":"c1","action":"relay","params":{"on":true},"ttl_s":30}'\n"""
            "Ctrl-C stops everything.\n",
            flush=True,
        )
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
        client.on_message = lambda _c, _u, msg: show(msg, prefix)
        client.connect(host, broker_port)
        client.subscribe(f"{prefix}/#")
        while gateway.poll() is None and world.poll() is None:
            client.loop(0.5)
        print("duogate demo: a process ended; stopping", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    finally:
        for child in reversed(children):
            if child.poll() is None:
                child.send_signal(signal.SIGTERM)
        for child in reversed(children):
            try:
                child.wait(timeout=10)
            except subprocess.TimeoutExpired:
                child.kill()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
