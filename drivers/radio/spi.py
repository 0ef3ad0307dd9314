"""The SPI bus and GPIO lines an SX127x driver needs, and the backends that provide them.

The surface is exactly what pyLoRa (``SX127x/board_config.py`` and ``SX127x/LoRa.py``) uses:
``SpiBus.xfer(list[int]) -> list[int]`` and ``close()``; GPIO ``setup``/``output``/``input``/
``add_event_detect(pin, RISING, callback)``/``remove_event_detect``/``cleanup``. Edge callbacks
run on a GPIO thread and receive the pin number, as with RPi.GPIO.

Backends, chosen by ``radio.spi``:

``spidev://B.C``
    The real chip: ``spidev`` for /dev/spidevB.C and ``RPi.GPIO`` (or rpi-lgpio, which installs
    under the same name) for the pins. Both are imported only when this backend is built.

``sim://HOST:PORT``
    A simulated chip served by ``duogate sim`` (``drivers.sim.chip_server``), reached over TCP.

In process (``open_local_chip``)
    A simulated chip object in this process; its DIO0 edges are delivered from a GPIO thread.

Wire protocol of ``sim://`` (version 1)
---------------------------------------
Every message, in both directions, is ``LEN KIND BODY``: ``LEN`` is a big-endian u16 giving the
length of ``KIND`` + ``BODY`` (1..4097), ``KIND`` one byte. Requests go client -> server and are
answered strictly in order, one at a time; a request is answered by its reply kind or ERROR.

=====  ============  =========  ============================================================
kind   name          direction  body
=====  ============  =========  ============================================================
0x00   HELLO         c -> s     ``duogate-sim-chip/1`` (ASCII); first request on a connection
0x80   HELLO_OK      s -> c     the same text
0x01   XFER          c -> s     bytes clocked out on MOSI (1..4096), chip select held throughout
0x81   XFER_REPLY    s -> c     bytes clocked in on MISO, same length
0x02   RESET         c -> s     empty: the RST line was pulsed; the chip resets
0x82   RESET_DONE    s -> c     empty
0x03   DIO0_READ     c -> s     empty
0x83   DIO0_LEVEL    s -> c     one byte, 0 or 1
0x90   DIO0_EDGE     s -> c     one byte, the new DIO0 level; pushed unasked whenever it changes,
                                between any two messages
0xEF   ERROR         s -> c     UTF-8 reason; answers a request the server could not carry out
=====  ============  =========  ============================================================

The server serves one chip to one client at a time; a new connection replaces the previous one.
The client waits a bounded time for every reply and reconnects on its next request when the
connection was lost, so a restarted ``duogate sim`` or gateway picks up where it left off.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import queue
import re
import socket
import struct
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

from drivers.radio.base import RadioError

log = logging.getLogger(__name__)

# Values as RPi.GPIO defines them, so stand-ins and the real module agree.
BCM = 11
OUT = 0
IN = 1
LOW = 0
HIGH = 1
PUD_OFF = 20
PUD_DOWN = 21
PUD_UP = 22
RISING = 31
FALLING = 32
BOTH = 33

EdgeCallback = Callable[[int], None]


class SpiBus(Protocol):
    """One SPI device: chip select is held for the whole of each ``xfer``."""

    def xfer(self, data: list[int]) -> list[int]:
        """Clock ``data`` out and return the bytes clocked in (same length)."""

    def close(self) -> None: ...


class Gpio(Protocol):
    """The GPIO calls pyLoRa makes, with RPi.GPIO's BCM numbering and constants."""

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF) -> None: ...

    def output(self, pin: int, value: int) -> None: ...

    def input(self, pin: int) -> int: ...

    def add_event_detect(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        """Call ``callback(pin)`` on a GPIO thread for each ``edge`` (RISING/FALLING/BOTH)."""

    def remove_event_detect(self, pin: int) -> None: ...

    def cleanup(self) -> None:
        """Release the pins this backend set up; no more callbacks after it returns."""


class BackendUnavailable(RadioError, ImportError):
    """The hardware backend's library (spidev, RPi.GPIO) is not installed."""


class LinkError(RadioError):
    """The ``sim://`` server is unreachable, did not answer in time, or answered nonsense."""


@dataclass(frozen=True, slots=True)
class Pins:
    """BCM numbers of the lines the driver uses."""

    dio0: int
    reset: int


@dataclass(slots=True)
class Backend:
    """An SPI bus and GPIO lines for one chip; ``close()`` releases both."""

    spi: SpiBus
    gpio: Gpio
    description: str

    def close(self) -> None:
        try:
            self.gpio.cleanup()
        finally:
            self.spi.close()


_SPIDEV_URL = re.compile(r"^spidev://(\d+)\.(\d+)$")
_SIM_URL = re.compile(r"^sim://([^:]+):(\d+)$")


def parse_spi_url(url: str) -> tuple[str, str | int, int]:
    """``spidev://0.1`` -> ("spidev", 0, 1); ``sim://h:7000`` -> ("sim", "h", 7000)."""
    if match := _SPIDEV_URL.match(url):
        return "spidev", int(match[1]), int(match[2])
    if match := _SIM_URL.match(url):
        port = int(match[2])
        if not 1 <= port <= 65535:
            raise RadioError(f"radio.spi: port must be 1..65535, got {url!r}")
        return "sim", match[1], port
    raise RadioError(f"radio.spi: expected spidev://BUS.CS or sim://HOST:PORT, got {url!r}")


def open_backend(url: str, pins: Pins, *, reply_timeout_s: float = 1.0) -> Backend:
    """Build the backend ``url`` names; hardware libraries are imported only here."""
    kind, first, second = parse_spi_url(url)
    if kind == "spidev":
        assert isinstance(first, int)
        spi = SpidevBus(first, second)
        try:
            gpio: Gpio = RpiGpio()
        except BaseException:
            spi.close()
            raise
        return Backend(spi, gpio, f"spidev {first}.{second}")
    assert isinstance(first, str)
    link = SimChipLink(first, second, reply_timeout_s=reply_timeout_s)
    link.connect()
    return Backend(SimSpiBus(link), SimGpio(link, pins), f"sim chip at {first}:{second}")


def _import_hardware(name: str, package: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise BackendUnavailable(
            f"{name} is not installed (pip install 'duogate[pi]' or {package}): {exc}"
        ) from None


# --- real hardware ---------------------------------------------------------------------------


class SpidevBus:
    """/dev/spidevB.C through the ``spidev`` module."""

    def __init__(self, bus: int, cs: int, max_speed_hz: int = 5_000_000) -> None:
        spidev = _import_hardware("spidev", "spidev")
        self._dev: Any = spidev.SpiDev()
        try:
            self._dev.open(bus, cs)
        except OSError as exc:
            raise RadioError(f"cannot open /dev/spidev{bus}.{cs}: {exc.strerror}") from None
        self._dev.max_speed_hz = max_speed_hz
        self._dev.mode = 0

    def xfer(self, data: list[int]) -> list[int]:
        try:
            return list(self._dev.xfer(list(data)))
        except OSError as exc:
            raise RadioError(f"SPI transfer failed: {exc.strerror}") from None

    def close(self) -> None:
        self._dev.close()


class RpiGpio:
    """RPi.GPIO (or rpi-lgpio, a drop-in under the same module name) in BCM numbering."""

    def __init__(self) -> None:
        self._gpio: Any = _import_hardware("RPi.GPIO", "RPi.GPIO or rpi-lgpio")
        self._pins: set[int] = set()
        with self._errors("setup"):
            self._gpio.setwarnings(False)
            self._gpio.setmode(self._gpio.BCM)

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF) -> None:
        with self._errors(f"GPIO {pin}"):
            self._gpio.setup(pin, direction, pull_up_down=pull_up_down)
        self._pins.add(pin)

    def output(self, pin: int, value: int) -> None:
        with self._errors(f"GPIO {pin}"):
            self._gpio.output(pin, value)

    def input(self, pin: int) -> int:
        with self._errors(f"GPIO {pin}"):
            return int(self._gpio.input(pin))

    def add_event_detect(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        with self._errors(f"GPIO {pin} edge detection"):
            self._gpio.add_event_detect(pin, edge, callback=callback)

    def remove_event_detect(self, pin: int) -> None:
        with self._errors(f"GPIO {pin}"):
            self._gpio.remove_event_detect(pin)

    def cleanup(self) -> None:
        if self._pins:
            with self._errors("GPIO cleanup"):
                self._gpio.cleanup(sorted(self._pins))
            self._pins.clear()

    @staticmethod
    @contextlib.contextmanager
    def _errors(what: str) -> Iterator[None]:
        try:
            yield
        except (RuntimeError, ValueError) as exc:
            # RPi.GPIO cannot drive the Pi 5's GPIO chip nor add edge detection on recent
            # kernels; rpi-lgpio can.
            raise RadioError(
                f"{what}: {exc} (on a Raspberry Pi 5 or a recent kernel install rpi-lgpio: "
                "pip install 'duogate[pi5]')"
            ) from None


# --- GPIO lines driven by a simulated chip ---------------------------------------------------


class EdgeDispatcher:
    """Runs edge callbacks on one GPIO thread, as RPi.GPIO does, fed from any thread."""

    def __init__(self, name: str = "gpio-events") -> None:
        self._events: queue.SimpleQueue[tuple[int, int] | None] = queue.SimpleQueue()
        self._callbacks: dict[int, tuple[int, EdgeCallback]] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def register(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        if edge not in (RISING, FALLING, BOTH):
            raise RadioError(f"GPIO {pin}: unknown edge {edge}")
        with self._lock:
            if pin in self._callbacks:
                raise RadioError(f"GPIO {pin}: edge detection is already on")
            self._callbacks[pin] = (edge, callback)

    def unregister(self, pin: int) -> None:
        with self._lock:
            self._callbacks.pop(pin, None)

    def post(self, pin: int, level: int) -> None:
        """The line ``pin`` changed to ``level``; safe to call from any thread."""
        self._events.put((pin, level))

    def close(self) -> None:
        with self._lock:
            self._callbacks.clear()
        self._events.put(None)
        if threading.current_thread() is not self._thread:
            self._thread.join(timeout=2.0)

    def _run(self) -> None:
        while (event := self._events.get()) is not None:
            pin, level = event
            with self._lock:
                entry = self._callbacks.get(pin)
            if entry is None:
                continue
            edge, callback = entry
            if edge == BOTH or (edge == RISING) == bool(level):
                try:
                    callback(pin)
                except Exception as exc:
                    log.error("GPIO %d edge callback failed: %s: %s", pin, type(exc).__name__, exc)


class _SimulatedLines:
    """GPIO lines where DIO0 follows a simulated chip and RST pulses reset it."""

    def __init__(self, pins: Pins, read_dio0: Callable[[], int], reset: Callable[[], None]):
        self._pins = pins
        self._read_dio0 = read_dio0
        self._reset = reset
        self._levels: dict[int, int] = {}
        self.dispatcher = EdgeDispatcher()

    def setup(self, pin: int, direction: int, pull_up_down: int = PUD_OFF) -> None:
        if direction == OUT:
            self._levels.setdefault(pin, LOW)

    def output(self, pin: int, value: int) -> None:
        before = self._levels.get(pin, HIGH)
        self._levels[pin] = HIGH if value else LOW
        if pin == self._pins.reset and before == LOW and value:
            self._reset()

    def input(self, pin: int) -> int:
        if pin == self._pins.dio0:
            return self._read_dio0()
        return self._levels.get(pin, LOW)

    def add_event_detect(self, pin: int, edge: int, callback: EdgeCallback) -> None:
        self.dispatcher.register(pin, edge, callback)

    def remove_event_detect(self, pin: int) -> None:
        self.dispatcher.unregister(pin)

    def cleanup(self) -> None:
        self.dispatcher.close()


# --- sim:// over TCP -------------------------------------------------------------------------

PROTOCOL_HELLO = b"duogate-sim-chip/1"
MAX_BODY = 4096

HELLO = 0x00
XFER = 0x01
RESET = 0x02
DIO0_READ = 0x03
HELLO_OK = 0x80
XFER_REPLY = 0x81
RESET_DONE = 0x82
DIO0_LEVEL = 0x83
DIO0_EDGE = 0x90
ERROR = 0xEF

REPLY_TO = {HELLO: HELLO_OK, XFER: XFER_REPLY, RESET: RESET_DONE, DIO0_READ: DIO0_LEVEL}


def encode_message(kind: int, body: bytes = b"") -> bytes:
    """One message of the ``sim://`` protocol."""
    if len(body) > MAX_BODY:
        raise ValueError(f"message body of {len(body)} bytes exceeds {MAX_BODY}")
    return struct.pack(">HB", len(body) + 1, kind) + body


def split_messages(buffer: bytearray) -> list[tuple[int, bytes]]:
    """Remove and return the complete messages at the front of ``buffer``.

    Raises LinkError for a length no peer of this protocol sends (0 or above the maximum).
    """
    messages = []
    while len(buffer) >= 2:
        (length,) = struct.unpack_from(">H", buffer)
        if not 1 <= length <= MAX_BODY + 1:
            raise LinkError(f"bad message length {length}")
        if len(buffer) < 2 + length:
            break
        messages.append((buffer[2], bytes(buffer[3 : 2 + length])))
        del buffer[: 2 + length]
    return messages


class _Connection:
    """One TCP connection: its socket, its reader thread and the replies read so far."""

    def __init__(self, sock: socket.socket, address: str, on_dio0: Callable[[int], None]):
        self.sock = sock
        self.address = address
        self.replies: queue.SimpleQueue[tuple[int, bytes] | LinkError] = queue.SimpleQueue()
        self.dead = threading.Event()
        self._on_dio0 = on_dio0
        self.reader = threading.Thread(target=self._read_loop, name="sim-chip-reader", daemon=True)
        self.reader.start()

    def close(self) -> None:
        self.dead.set()
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        if self.reader is not threading.current_thread():
            self.reader.join(timeout=2.0)

    def _fail(self, reason: str) -> None:
        self.dead.set()
        self.replies.put(LinkError(f"sim chip at {self.address} {reason}"))

    def _read_loop(self) -> None:
        buffer = bytearray()
        while not self.dead.is_set():
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                chunk = b""
            if not chunk:
                self._fail("closed the connection")
                return
            buffer += chunk
            try:
                messages = split_messages(buffer)
            except LinkError as exc:
                self._fail(f"sent garbage: {exc}")
                return
            for kind, body in messages:
                if kind == DIO0_EDGE:
                    if len(body) == 1:
                        self._on_dio0(body[0])
                else:
                    self.replies.put((kind, body))


class SimChipLink:
    """Client end of ``sim://``: requests from any thread, DIO0 edges from its reader thread.

    ``on_dio0`` is called with each new DIO0 level from the reader thread; it must not block
    (hand the edge to a GPIO thread). Every request waits at most ``reply_timeout_s``. A lost
    connection fails the request in flight; the next request connects again.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        connect_timeout_s: float = 2.0,
        reply_timeout_s: float = 1.0,
    ) -> None:
        self.address = f"{host}:{port}"
        self._host = host
        self._port = port
        self._connect_timeout_s = connect_timeout_s
        self._reply_timeout_s = reply_timeout_s
        self._request_lock = threading.Lock()
        self._conn: _Connection | None = None
        self._closed = False
        self.on_dio0: Callable[[int], None] | None = None
        self.connects = 0

    @property
    def connected(self) -> bool:
        conn = self._conn
        return conn is not None and not conn.dead.is_set()

    def connect(self) -> None:
        """Connect and greet the server; a no-op when already connected."""
        with self._request_lock:
            self._ensure_connected()

    def request(self, kind: int, body: bytes = b"") -> bytes:
        """Send one request and return the body of its reply (LinkError on any failure)."""
        with self._request_lock:
            conn = self._ensure_connected()
            return self._exchange(conn, kind, body)

    def close(self) -> None:
        with self._request_lock:
            self._closed = True
            self._drop()

    def _edge(self, level: int) -> None:
        callback = self.on_dio0
        if callback is not None:
            callback(level)

    def _ensure_connected(self) -> _Connection:
        if self._closed:
            raise LinkError(f"sim chip link to {self.address} is closed")
        if self._conn is not None and not self._conn.dead.is_set():
            return self._conn
        self._drop()
        try:
            sock = socket.create_connection(
                (self._host, self._port), timeout=self._connect_timeout_s
            )
        except OSError as exc:
            reason = exc.strerror or type(exc).__name__
            raise LinkError(f"sim chip at {self.address} unreachable: {reason}") from None
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.settimeout(self._reply_timeout_s)
        conn = _Connection(sock, self.address, self._edge)
        self._conn = conn
        try:
            greeting = self._exchange(conn, HELLO, PROTOCOL_HELLO)
            if greeting != PROTOCOL_HELLO:
                raise LinkError(f"{self.address} is not a duogate sim chip server")
            level = self._exchange(conn, DIO0_READ)
        except LinkError:
            self._drop()
            raise
        self.connects += 1
        if level == b"\x01":
            # An edge that happened while no one was connected would otherwise be lost.
            self._edge(1)
        return conn

    def _exchange(self, conn: _Connection, kind: int, body: bytes = b"") -> bytes:
        try:
            conn.sock.sendall(encode_message(kind, body))
        except OSError as exc:
            self._drop()
            raise LinkError(f"sim chip at {self.address}: send failed: {exc}") from None
        try:
            reply = conn.replies.get(timeout=self._reply_timeout_s)
        except queue.Empty:
            self._drop()
            raise LinkError(
                f"sim chip at {self.address} did not answer within {self._reply_timeout_s} s"
            ) from None
        if isinstance(reply, LinkError):
            self._drop()
            raise reply
        reply_kind, reply_body = reply
        if reply_kind == ERROR:
            raise LinkError(f"sim chip at {self.address}: {reply_body.decode('utf-8', 'replace')}")
        if reply_kind != REPLY_TO[kind]:
            self._drop()
            raise LinkError(
                f"sim chip at {self.address}: reply kind {reply_kind:#04x} to {kind:#04x}"
            )
        return reply_body

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()


class SimSpiBus:
    """SPI transfers carried by a ``SimChipLink``."""

    def __init__(self, link: SimChipLink) -> None:
        self._link = link

    def xfer(self, data: list[int]) -> list[int]:
        out = bytes(data)
        reply = self._link.request(XFER, out)
        if len(reply) != len(out):
            raise LinkError(f"sim chip answered {len(reply)} bytes to a {len(out)}-byte transfer")
        return list(reply)

    def close(self) -> None:
        self._link.close()


class SimGpio(_SimulatedLines):
    """GPIO lines of a chip behind a ``SimChipLink``: DIO0 edges arrive from the server."""

    def __init__(self, link: SimChipLink, pins: Pins) -> None:
        super().__init__(pins, self._read_dio0, self._pulse_reset)
        self._link = link
        link.on_dio0 = lambda level: self.dispatcher.post(pins.dio0, level)

    def _read_dio0(self) -> int:
        return 1 if self._link.request(DIO0_READ) == b"\x01" else 0

    def _pulse_reset(self) -> None:
        self._link.request(RESET)


# --- a simulated chip in this process --------------------------------------------------------


class LocalChip(Protocol):
    """What the in-process backend needs from a simulated chip (``drivers.sim.chip``)."""

    on_dio0: Callable[[bool], None] | None

    @property
    def dio0(self) -> bool: ...

    def xfer(self, data: list[int]) -> list[int]: ...

    def reset(self) -> None: ...


class LocalChipBus:
    """SPI transfers straight into a chip object in this process."""

    def __init__(self, chip: LocalChip) -> None:
        self._chip = chip
        self._closed = False

    def xfer(self, data: list[int]) -> list[int]:
        if self._closed:
            raise RadioError("SPI bus is closed")
        return list(self._chip.xfer(list(data)))

    def close(self) -> None:
        self._closed = True
        self._chip.on_dio0 = None


def open_local_chip(chip: LocalChip, pins: Pins) -> Backend:
    """A backend on a chip object in this process (the chip must be safe to call from threads).

    The chip's DIO0 edges reach the driver from a GPIO thread, never from the chip's own call
    stack, as they would from RPi.GPIO.
    """
    lines = _SimulatedLines(pins, lambda: int(chip.dio0), chip.reset)
    chip.on_dio0 = lambda level: lines.dispatcher.post(pins.dio0, int(level))
    return Backend(LocalChipBus(chip), lines, "in-process simulated chip")
