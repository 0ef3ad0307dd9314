"""A duogate sensor and relay node for an Adafruit Feather with an RFM95 (CircuitPython 9).

Reports its temperature, the relay's state and its uptime every ``report_interval_s``, and
takes three commands from the gateway: ``relay`` (``{"on": true}``), ``set_interval``
(``{"seconds": 300}``) and ``ping`` (answered ``"pong"``). Keys, EUI, radio settings and pins
come from ``node_settings.json`` beside this file; the node's counters and session are kept
in ``node_state.0`` / ``node_state.1`` (two slots written in turn, rarely: docs/NODE.md).

On the board: CIRCUITPY/code.py (this file), CIRCUITPY/boot.py (lets this code write its
state), CIRCUITPY/node_settings.json, CIRCUITPY/lib/node/ (the node library),
CIRCUITPY/lib/adafruit_rfm9x.mpy and CIRCUITPY/lib/adafruit_bus_device/. docs/NODE.md says
how. The same file runs on a computer with the stand-ins of tests/circuitpython_stand_ins on
the path, against a simulated chip of ``duogate sim``.
"""

import binascii
import json
import os
import time

import adafruit_rfm9x
import board
import busio
import digitalio

from node import frames
from node.rfm9x import Rfm9xRadio
from node.runner import Runner, TickClock
from node.session import Node, NodeConfig
from node.storage import NodeStore

SETTINGS_FILE = "node_settings.json"
STATE_FILE = "node_state"
LONGEST_SLEEP_S = 0.5


def load_settings(path):
    with open(path) as handle:
        settings = json.load(handle)
    for key in ("eui", "root_key", "frequency_hz"):
        if key not in settings:
            raise ValueError(path + ": " + key + " is missing")
    return settings


def unhex(text, size, name):
    value = binascii.unhexlify(text.replace(":", "").replace("-", ""))
    if len(value) != size:
        raise ValueError(name + " must be " + str(size) + " bytes of hex")
    return value


def make_clock():
    """Seconds on the board's millisecond ticks, kept small (``TickClock``): a single-precision
    float still resolves a millisecond however long the node runs. CircuitPython's
    ``supervisor.ticks_ms`` wraps at 2**29 ms."""
    try:
        from supervisor import ticks_ms
    except ImportError:  # CPython, running against a simulated chip

        def ticks_ms():
            return int(time.monotonic() * 1000)

        return TickClock(ticks_ms, lambda a, b: a - b, lambda t, delta: t + delta)
    period = 1 << 29

    def ticks_diff(a, b):
        diff = (a - b) & (period - 1)
        return diff - period if diff >= period // 2 else diff

    def ticks_add(t, delta):
        return (t + delta) % period

    return TickClock(ticks_ms, ticks_diff, ticks_add)


def board_pin(name):
    pin = getattr(board, name, None)
    if pin is None:
        raise ValueError("this board has no pin " + name)
    return pin


def radio_pin(settings, key, names):
    """The pin named in the settings, else the first of the board's usual names."""
    if key in settings:
        return board_pin(settings[key])
    for name in names:
        if hasattr(board, name):
            return getattr(board, name)
    raise ValueError("set " + key + " in " + SETTINGS_FILE + ": no " + names[0] + " on this board")


def make_radio(settings):
    spi = busio.SPI(board.SCK, MOSI=board.MOSI, MISO=board.MISO)
    cs = digitalio.DigitalInOut(radio_pin(settings, "cs_pin", ("RFM9X_CS", "RFM_CS")))
    reset = digitalio.DigitalInOut(radio_pin(settings, "reset_pin", ("RFM9X_RST", "RFM_RST")))
    rfm = adafruit_rfm9x.RFM9x(spi, cs, reset, settings["frequency_hz"] / 1000000)
    radio = Rfm9xRadio(rfm)
    radio.configure(
        settings["frequency_hz"],
        settings.get("spreading_factor", 7),
        settings.get("bandwidth_hz", 125000),
        settings.get("coding_rate", 5),
        settings.get("tx_power_dbm", 14),
        settings.get("preamble", 8),
        settings.get("sync_word", 0x12),
    )
    return radio


def random_source(radio):
    """``os.urandom`` where the chip has a generator; else (SAMD21) a generator seeded from
    the radio's wideband RSSI. Nonces must only never repeat, jitter only spread nodes out."""
    try:
        os.urandom(2)
        return os.urandom
    except (AttributeError, NotImplementedError):
        import random

        random.seed(int.from_bytes(radio.random_bytes(4), "big"))
        return lambda count: bytes(random.getrandbits(8) for _ in range(count))


def check_writable(path):
    try:
        with open(path + ".probe", "wb") as handle:
            handle.write(b"1")
        os.remove(path + ".probe")
    except OSError:
        raise RuntimeError(
            "cannot write " + path + ": the node must keep its counters (boot.py, docs/NODE.md)"
        ) from None


def cpu_temperature():
    try:
        import microcontroller

        value = microcontroller.cpu.temperature
    except (ImportError, AttributeError, NotImplementedError, RuntimeError):
        return None
    return None if value is None else round(value, 1)


class Application:
    """What this node measures and does."""

    def __init__(self, settings, clock) -> None:
        self.clock = clock
        self.started = clock()
        self.interval_s = settings.get("report_interval_s", 60)
        self.relay = digitalio.DigitalInOut(board_pin(settings.get("relay_pin", "D5")))
        self.relay.switch_to_output(value=False)
        self.next_report_at = self.started

    def rebase(self, shift_s):
        """The clock's origin moved ``shift_s`` later (``TickClock.on_rebase``)."""
        self.started -= shift_s
        self.next_report_at -= shift_s

    def readings(self):
        data = {"relay": self.relay.value, "uptime_s": int(self.clock() - self.started)}
        temperature = cpu_temperature()
        if temperature is not None:
            data["temperature_c"] = temperature
        return data

    def execute(self, command):
        params = command.params
        if command.action == "relay":
            on = params.get("on")
            if on is not True and on is not False:
                return frames.FAILED, "params.on must be true or false"
            self.relay.value = on
            print("relay", "on" if on else "off")
            return frames.EXECUTED, None
        if command.action == "set_interval":
            seconds = params.get("seconds")
            if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
                return frames.FAILED, "params.seconds must be a number"
            if not 0 < seconds <= 86400:
                return frames.FAILED, "params.seconds must be 0 < seconds <= 86400"
            self.interval_s = seconds
            self.next_report_at = min(self.next_report_at, self.clock() + seconds)
            return frames.EXECUTED, None
        if command.action == "ping":
            return frames.EXECUTED, "pong"
        return frames.FAILED, "unknown action " + command.action


def on_event(event):
    print("node:", repr(event))


def main():
    settings = load_settings(SETTINGS_FILE)
    eui = unhex(settings["eui"], 8, "eui")
    root_key = unhex(settings["root_key"], 16, "root_key")
    ticks = make_clock()
    clock = ticks.now
    radio = make_radio(settings)
    check_writable(STATE_FILE)
    store = NodeStore.at(STATE_FILE)
    config = NodeConfig(**settings.get("node", {}))
    node = Node(eui, root_key, random_source(radio), config=config, record=store.load())
    app = Application(settings, clock)
    runner = Runner(node, radio, store=store, execute=app.execute, on_event=on_event)
    ticks.on_rebase.append(runner.rebase)
    ticks.on_rebase.append(app.rebase)
    print("node", settings["eui"], "on", settings["frequency_hz"], "Hz")
    while True:
        now = clock()
        if now >= app.next_report_at:
            app.next_report_at = now + app.interval_s
            if node.joined:
                runner.report(app.readings(), now)
        wake = runner.step(now)
        until = app.next_report_at if wake is None else min(wake, app.next_report_at)
        pause = min(until - clock(), LONGEST_SLEEP_S)
        if pause > 0:
            time.sleep(pause)


main()
