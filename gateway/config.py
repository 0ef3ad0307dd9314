"""Configuration: one TOML file, parsed by tomllib and checked against msgspec structs.

Every problem in a file becomes one line naming the key path and the reason
(``mqtt.port: must be 1..65535, got 70000``). Secrets (passwords, keys) are never only
inline: each secret field has a ``*_file`` and a ``*_env`` form, resolved at load time.
"""

from __future__ import annotations

import os
import re
import stat
import tomllib
import types
from pathlib import Path
from typing import Annotated, Any, Literal, Self, TypeVar, Union, get_args, get_origin

import msgspec
from msgspec import Meta

from drivers.radio.base import FREQUENCIES_HZ, PREAMBLE_LENGTHS, SYNC_WORDS, TX_POWERS_DBM
from gateway.protocol.airtime import CODING_RATES, SPREADING_FACTORS

# A config file is a few KiB; this bounds what a mistaken path (a log, a disk image) costs.
MAX_TOML_BYTES = 1024 * 1024
# The deepest legitimate table is a Modbus register (8 levels); far deeper is not a config.
MAX_TOML_DEPTH = 20
# Longest shown excerpt of a refused value: the line names it, it need not repeat all of it.
_SHOWN_CHARS = 80


class ConfigError(Exception):
    """A configuration file that cannot be used; ``problems`` holds one line per problem."""

    def __init__(self, problems: list[str]) -> None:
        # Keys and values come from the file: a quoted key can hold a newline, and every
        # problem must stay one line.
        problems = [one_line(problem) for problem in problems]
        super().__init__("\n".join(problems))
        self.problems = problems


# Unicode's Cc category: C0, DEL and C1.
CONTROL_CHARACTERS = re.compile(r"[\x00-\x1f\x7f-\x9f]")


def one_line(text: str) -> str:
    """``text`` with control characters escaped, so it prints as exactly one line."""
    return CONTROL_CHARACTERS.sub(lambda match: repr(match.group())[1:-1], text)


def shown(value: Any) -> str:
    """``repr(value)``, cut to a readable length."""
    text = repr(value)
    return text if len(text) <= _SHOWN_CHARS else f"{text[: _SHOWN_CHARS - 5]}...{text[-2:]}"


def _matching(pattern: str) -> Meta:
    # msgspec searches with Python's re, where "$" also matches before a final newline:
    # "\Z" ends the match at the end of the text ("gw1\n" is not an id).
    return Meta(pattern=pattern.removesuffix("$") + r"\Z")


class Section(
    msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True, omit_defaults=True
):
    """A table of the file. Unknown keys are refused, so a typo is a clear error rather than
    a silent default; ``__post_init__`` checks that need several keys of the table."""

    @classmethod
    def from_table(cls, table: Any, *, strict: bool = False) -> Self:
        """``table`` (decoded TOML) checked as this section; ConfigError with one line per
        problem, key paths relative to the section. ``strict``: no numbers or booleans
        written as strings, no whole floats as integers."""
        return _convert(table, cls, strict=strict)

    def to_table(self) -> dict[str, Any]:
        """The values that differ from the defaults, as plain TOML-shaped data."""
        return msgspec.to_builtins(self, enc_hook=str)


class Secret(Section):
    """A secret read from a file or an environment variable (never only inline)."""

    file: Path | None = None
    env: str | None = None

    def __post_init__(self) -> None:
        if (self.file is None) == (self.env is None):
            raise ValueError("give exactly one of 'file' or 'env'")

    def read(self) -> str:
        """The secret, stripped; OSError, KeyError (env unset) or UnicodeDecodeError."""
        if self.file is not None:
            return self.file.read_bytes().decode("utf-8").strip()
        assert self.env is not None
        return os.environ[self.env]


Port = Annotated[int, Meta(ge=1, le=65535)]
# [radio] bounds come from the radio contract (drivers/radio/base.py): a file and a runtime
# change are checked alike.
_FrequencyHz = Annotated[int, Meta(ge=FREQUENCIES_HZ.start, le=FREQUENCIES_HZ.stop - 1)]
_SpreadingFactor = Annotated[int, Meta(ge=SPREADING_FACTORS.start, le=SPREADING_FACTORS.stop - 1)]
_CodingRate = Annotated[int, Meta(ge=CODING_RATES.start, le=CODING_RATES.stop - 1)]
_TxPowerDbm = Annotated[int, Meta(ge=TX_POWERS_DBM.start, le=TX_POWERS_DBM.stop - 1)]
_SyncWord = Annotated[int, Meta(ge=SYNC_WORDS.start, le=SYNC_WORDS.stop - 1)]
_PreambleLength = Annotated[int, Meta(ge=PREAMBLE_LENGTHS.start, le=PREAMBLE_LENGTHS.stop - 1)]


class GatewaySection(Section):
    id: Annotated[str, _matching(r"^[A-Za-z0-9_.-]{1,64}$")] = "gw1"
    data_dir: Path = Path("var/duogate")
    log_level: Literal["debug", "info", "warning", "error"] = "info"


class SpiPins(Section):
    dio0: Annotated[int, Meta(ge=0, le=40)] = 25
    reset: Annotated[int, Meta(ge=0, le=40)] = 17


class RadioSection(Section):
    driver: Literal["sx127x", "serial", "sim"] = "sim"
    frequency_hz: _FrequencyHz = 868_100_000
    spreading_factor: _SpreadingFactor = 7
    bandwidth_hz: Literal[
        7800, 10400, 15600, 20800, 31250, 41700, 62500, 125000, 250000, 500000
    ] = 125_000
    coding_rate: _CodingRate = 5
    tx_power_dbm: _TxPowerDbm = 14
    sync_word: _SyncWord = 0x12
    preamble_length: _PreambleLength = 8
    crc: bool = True
    # "spidev://0.0" for /dev/spidev0.0, or "sim://127.0.0.1:7000" for a `duogate sim` world.
    spi: Annotated[str, _matching(r"^(spidev://\d+\.\d+|sim://[^:]+:\d+)$")] = "spidev://0.0"
    pins: SpiPins = SpiPins()
    serial_port: str | None = None
    serial_baud: Annotated[int, Meta(ge=1200, le=4_000_000)] = 115_200
    region: Literal["EU868", "US915", "none"] = "EU868"
    rx_delay_s: Annotated[float, Meta(ge=0.1, le=10.0)] = 1.0

    def __post_init__(self) -> None:
        if self.driver == "serial" and not self.serial_port:
            raise ValueError("driver 'serial' needs radio.serial_port")


class JoinSection(Section):
    registry: Path | None = None  # TOML file of [[device]] eui + root key
    open_join: bool = False
    address_pool_start: Annotated[int, Meta(ge=1, le=0xFFFE)] = 0x0001
    address_pool_end: Annotated[int, Meta(ge=1, le=0xFFFE)] = 0xFFFE
    lease_inactive_s: Annotated[int, Meta(ge=60)] = 30 * 24 * 3600
    # A node not heard for this long is reported offline (0: never).
    offline_after_s: Annotated[int, Meta(ge=0)] = 900
    # Open join (lab only): an unknown EUI's root key is derived from this key (32 hex digits)
    # and the EUI; without it the public lab key of docs/protocol.md is used.
    open_join_key: Secret | None = None
    join_rx_delay_s: Annotated[float, Meta(ge=0.1, le=10.0)] = 1.0

    def __post_init__(self) -> None:
        if self.address_pool_end < self.address_pool_start:
            raise ValueError("address_pool_end must not be below address_pool_start")


class TlsSection(Section):
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    insecure_skip_verify: bool = False


class MqttSection(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Port = 1883
    protocol: Literal["5", "3.1.1"] = "5"
    client_id: str | None = None
    username: str | None = None
    password: Secret | None = None
    tls: TlsSection | None = None
    topic_prefix: str | None = None  # default duogate/<gateway.id>
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 30
    qos_reports: Literal[0, 1, 2] = 1
    qos_events: Literal[0, 1, 2] = 1
    qos_results: Literal[0, 1, 2] = 1
    inflight: Annotated[int, Meta(ge=1, le=65535)] = 64
    reconnect_min_s: Annotated[float, Meta(gt=0)] = 0.5
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 60.0
    publish_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0  # wait for PUBACK
    connect_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 10.0  # TCP + TLS + CONNACK
    session_expiry_s: Annotated[int, Meta(ge=0, le=0xFFFFFFFF)] = 86_400  # MQTT 5 only
    discovery: bool = True
    discovery_prefix: str = "homeassistant"
    # MQTT 5 Response Topics a command may name, besides <prefix>/responses/ (docs/COMMANDS.md).
    response_topic_prefixes: list[str] = []


class XmppSection(Section):
    enabled: bool = False
    jid: str = "gateway@localhost/duogate"
    password: Secret | None = None
    host: str | None = None
    port: Port | None = None
    tls: Literal["starttls", "direct", "plaintext_lab_only"] = "starttls"
    ca_file: Path | None = None
    subscribers: list[str] = []
    allowed_jids: list[str] = []
    keepalive_s: Annotated[int, Meta(ge=10, le=3600)] = 60
    reconnect_max_s: Annotated[float, Meta(gt=0)] = 60.0

    def __post_init__(self) -> None:
        if self.enabled and self.password is None:
            raise ValueError("password is required when xmpp is enabled")


class CommandsSection(Section):
    default_ttl_s: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    max_ttl_s: Annotated[float, Meta(gt=0, le=7 * 86_400)] = 3600.0
    node_answer_timeout_s: Annotated[float, Meta(gt=0, le=600)] = 30.0
    queue_per_device: Annotated[int, Meta(ge=1, le=1000)] = 16
    # Larger command messages are answered `too_large` without being parsed or stored.
    max_message_bytes: Annotated[int, Meta(ge=256, le=1_048_576)] = 4096


class OutboxSection(Section):
    max_entries: Annotated[int, Meta(ge=100)] = 200_000
    # The longest a report or event nobody waits for stays in memory only: it is written
    # with the first commit due after it (a confirmed LoRa report is due just before its
    # ack), or never if every upstream acknowledged it first. 0: write every row at once.
    commit_interval_s: Annotated[float, Meta(ge=0, le=60)] = 2.0


class ModbusRegister(Section):
    name: Annotated[str, _matching(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")]
    table: Literal["holding", "input", "coil", "discrete"]
    address: Annotated[int, Meta(ge=0, le=65535)]
    type: Literal["int16", "uint16", "int32", "uint32", "float32", "bool"] = "uint16"
    word_order: Literal["big", "little"] = "big"
    byte_order: Literal["big", "little"] = "big"
    scale: float = 1.0
    offset: float = 0.0
    unit: str | None = None
    writable: bool = False
    min: float | None = None
    max: float | None = None
    deadband: Annotated[float, Meta(ge=0)] | None = None  # overrides the device's deadband
    device_class: Annotated[str, _matching(r"^[a-z_0-9]{1,40}$")] | None = None
    state_class: Literal["measurement", "total", "total_increasing"] | None = None

    def __post_init__(self) -> None:
        # Coils and discrete inputs are bits; the default type (uint16) is taken to mean bool.
        if self.table in ("coil", "discrete") and self.type not in ("bool", "uint16"):
            raise ValueError(f"{self.table} registers are bool, got type {self.type!r}")
        if self.writable and self.table in ("input", "discrete"):
            raise ValueError(f"{self.table} registers cannot be writable")
        if self.scale == 0:
            raise ValueError("scale must not be 0")
        if self.min is not None and self.max is not None and self.max < self.min:
            raise ValueError("max must not be below min")


class ModbusDevice(Section):
    unit: Annotated[int, Meta(ge=0, le=247)]
    name: Annotated[str, Meta(min_length=1, max_length=64)] | None = None
    poll_interval_s: Annotated[float, Meta(gt=0, le=86_400)] = 10.0
    publish: Literal["on_change", "every_poll"] = "on_change"
    deadband: Annotated[float, Meta(ge=0)] = 0.0
    offline_after_failures: Annotated[int, Meta(ge=1, le=100)] = 3
    registers: list[ModbusRegister] = []

    def __post_init__(self) -> None:
        names = [register.name for register in self.registers]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"register names must be unique, repeated: {', '.join(duplicates)}")


class ModbusBus(Section):
    name: Annotated[str, _matching(r"^[a-z0-9_]{1,32}$")]
    transport: Literal["rtu", "tcp"] = "rtu"
    port: str | None = None  # serial device for rtu
    host: str | None = None  # for tcp
    tcp_port: Port = 502
    baudrate: Annotated[int, Meta(ge=300, le=4_000_000)] = 9600
    parity: Literal["N", "E", "O"] = "N"
    stopbits: Literal[1, 2] = 1
    bytesize: Literal[7, 8] = 8
    timeout_s: Annotated[float, Meta(gt=0, le=60)] = 1.0
    retries: Annotated[int, Meta(ge=0, le=10)] = 2
    retry_backoff_s: Annotated[float, Meta(ge=0, le=10)] = 0.1  # doubles per retry
    devices: list[ModbusDevice] = []

    def __post_init__(self) -> None:
        if self.transport == "rtu" and not self.port:
            raise ValueError("rtu bus needs 'port'")
        if self.transport == "tcp" and not self.host:
            raise ValueError("tcp bus needs 'host'")
        units = [device.unit for device in self.devices]
        duplicates = sorted({unit for unit in units if units.count(unit) > 1})
        if duplicates:
            raise ValueError(f"device units must be unique on a bus, repeated: {duplicates}")


class ModbusSection(Section):
    enabled: bool = False
    buses: list[ModbusBus] = []

    def __post_init__(self) -> None:
        names = [bus.name for bus in self.buses]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"bus names must be unique, repeated: {', '.join(duplicates)}")


_BLE_MAC = r"^(([0-9A-Fa-f]{2}:){5}|([0-9A-Fa-f]{2}-){5}|([0-9A-Fa-f]{2}){5})[0-9A-Fa-f]{2}$"


class BleSection(Section):
    enabled: bool = False
    backend: Literal["bleak", "sim"] = "bleak"
    adapter: str | None = None
    allow: list[Annotated[str, _matching(_BLE_MAC)]] = []  # MACs, ':' or '-' or none
    deny: list[Annotated[str, _matching(_BLE_MAC)]] = []
    min_interval_s: Annotated[float, Meta(ge=0, le=86_400)] = 30.0
    scanning_mode: Literal["passive", "active"] = "passive"
    offline_after_s: Annotated[float, Meta(ge=0, le=86_400)] = 900.0  # 0: never offline


# Metres from the gateway's chip at (0, 0); the medium's path loss stops growing closer than 1 m.
_WorldCoordinateM = Annotated[float, Meta(ge=-1_000_000, le=1_000_000)]


class ExternalNodeChip(Section):
    """A node chip in the world served on its own ``sim://`` port: a node program in another
    process (SPI and pin stand-ins, ``radio.spi = "sim://..."``) drives it like a board."""

    listen: str  # HOST:PORT, port 0 picks a free one (logged)
    x_m: _WorldCoordinateM = 100.0
    y_m: _WorldCoordinateM = 0.0


# Seconds of the world's schedule (from its start, or from when the gateways took their chips).
_ScheduleS = Annotated[float, Meta(ge=0, le=1e9)]
_UntilS = Annotated[float, Meta(ge=0)]  # inf: for good


def _check_point(values: list[float], key: str) -> None:
    if len(values) != 2:
        raise ValueError(f"{key} must be [x, y] in metres, got {len(values)} numbers")


class SimGateway(Section):
    """A gateway chip of a simulated site, served on its own ``sim://`` port to a
    ``duogate run`` with ``radio.spi = "sim://HOST:PORT"``."""

    name: Annotated[str, _matching(r"^[A-Za-z0-9_.-]{1,32}$")]
    listen: str  # HOST:PORT, port 0 picks a free one (logged)
    position: list[_WorldCoordinateM]
    # Power-off periods [from_s, to_s], in order; [from_s] alone (or to_s = inf): off for good.
    off: Annotated[list[list[_UntilS]], Meta(max_length=1000)] = []

    def __post_init__(self) -> None:
        _check_point(self.position, "position")
        end = -1.0
        for index, period in enumerate(self.off):
            if not 1 <= len(period) <= 2:
                raise ValueError(
                    f"off[{index}] must be [from_s, to_s] or [from_s], got {len(period)} numbers"
                )
            start, stop = period[0], period[-1] if len(period) == 2 else float("inf")
            if start == float("inf"):
                raise ValueError(f"off[{index}]: from_s must be a finite number of seconds")
            if stop <= start:
                raise ValueError(f"off[{index}]: to_s must be after from_s, got {period}")
            if start <= end:
                raise ValueError(f"off[{index}] must start after off[{index - 1}] ends")
            end = stop

    def off_periods(self) -> list[tuple[float, float]]:
        return [(p[0], p[1] if len(p) == 2 else float("inf")) for p in self.off]


class SimNodePosition(Section):
    """Where node number ``node`` (0-based) of the world stands."""

    node: Annotated[int, Meta(ge=0, le=9_999)]
    position: list[_WorldCoordinateM]

    def __post_init__(self) -> None:
        _check_point(self.position, "position")


class SimMove(Section):
    """Node number ``node`` goes to ``to`` at ``at_s`` seconds of the schedule."""

    node: Annotated[int, Meta(ge=0, le=9_999)]
    at_s: _ScheduleS
    to: list[_WorldCoordinateM]

    def __post_init__(self) -> None:
        _check_point(self.to, "to")


class SimSection(Section):
    nodes: Annotated[int, Meta(ge=0, le=10_000)] = 5
    report_interval_s: Annotated[float, Meta(gt=0, le=86_400)] = 10.0
    loss: Annotated[float, Meta(ge=0, le=1)] = 0.0
    seed: int = 1
    listen: str = "127.0.0.1:0"
    state_dir: Path | None = None
    # Node firmware timing (real-time defaults; tests and demos scale them down).
    start_spread_s: Annotated[float, Meta(ge=0, le=3600)] = 1.0  # nodes start staggered
    join_backoff_min_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0
    join_backoff_max_s: Annotated[float, Meta(gt=0, le=86_400)] = 60.0  # as node.session
    retry_min_s: Annotated[float, Meta(gt=0, le=3600)] = 2.0  # first retransmission
    retry_max_s: Annotated[float, Meta(gt=0, le=86_400)] = 60.0
    next_uplink_gap_s: Annotated[float, Meta(ge=0, le=3600)] = 1.0  # after an ack
    rejoin_after_unacked: Annotated[int, Meta(ge=1, le=1000)] = 12  # as node.session
    external_nodes: Annotated[list[ExternalNodeChip], Meta(max_length=64)] = []
    # A site: gateway chips at positions, each on its own port (none: one chip at the origin
    # on ``listen``), nodes placed in an area or one by one, moves and power periods.
    gateways: Annotated[list[SimGateway], Meta(max_length=64)] = []
    node_area: list[list[_WorldCoordinateM]] | None = None  # [[x0, y0], [x1, y1]]
    node_positions: Annotated[list[SimNodePosition], Meta(max_length=10_000)] = []
    moves: Annotated[list[SimMove], Meta(max_length=10_000)] = []
    schedule_from: Literal["start", "gateways"] = "start"
    # Log-distance path loss: 10 * exponent dB per decade of distance from the loss at 1 m
    # (free space at the frequency when not given), plus random shadowing per frame.
    path_loss_exponent: Annotated[float, Meta(ge=1, le=8)] = 2.7
    reference_loss_db: Annotated[float, Meta(ge=0, le=200)] | None = None
    shadowing_sigma_db: Annotated[float, Meta(ge=0, le=30)] = 0.0
    ledger: Path | None = None  # JSON Lines of what the nodes and the site did

    def __post_init__(self) -> None:
        if self.join_backoff_max_s < self.join_backoff_min_s:
            raise ValueError("join_backoff_max_s must not be below join_backoff_min_s")
        if self.retry_max_s < self.retry_min_s:
            raise ValueError("retry_max_s must not be below retry_min_s")
        area = self.node_area
        if area is not None and (len(area) != 2 or any(len(corner) != 2 for corner in area)):
            raise ValueError("node_area must be two corners [[x0, y0], [x1, y1]] in metres")


class FleetBrokerSection(MqttSection):
    """[mqtt]'s keys for the fleet's broker, with defaults that suit a cluster: MQTT 3.1.1
    (NATS speaks no other), a 10 s keepalive (a silent gateway is noticed sooner), no Home
    Assistant discovery."""

    protocol: Literal["5", "3.1.1"] = "3.1.1"
    keepalive_s: Annotated[int, Meta(ge=5, le=3600)] = 10
    discovery: bool = False


class FleetSection(Section):
    """Several gateways on one (clustered) broker serving LoRa nodes as one (docs/FLEET.md)."""

    name: Annotated[str, _matching(r"^[A-Za-z0-9_-]{1,64}$")]  # the fleet topics' prefix
    key: Secret  # 32 or 64 hex digits, the same on every gateway of the fleet
    broker: FleetBrokerSection = FleetBrokerSection()
    # How long the owner of a device waits for the neighbours' sightings of an uplink before
    # it publishes the report (and decides whether to hand the device over).
    gather_s: Annotated[float, Meta(ge=0.05, le=0.6)] = 0.3
    # A neighbour must hear a device this much stronger before the owner hands it over.
    handover_margin_db: Annotated[float, Meta(ge=0, le=40)] = 6.0
    # A gateway claiming a device of a gateway that went offline waits this long for rival
    # claims before it serves the device.
    claim_settle_s: Annotated[float, Meta(ge=0.1, le=30)] = 1.0


class ConsoleSection(Section):
    enabled: bool = True
    socket: Path | None = None  # default <data_dir>/console.sock
    serial_port: str | None = None
    serial_baud: Annotated[int, Meta(ge=1200, le=4_000_000)] = 115_200


class MetricsSection(Section):
    enabled: bool = True
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 9108


class WebSection(Section):
    enabled: bool = False
    host: str = "127.0.0.1"
    port: Annotated[int, Meta(ge=0, le=65535)] = 8080
    password: Secret | None = None


class Config(Section):
    gateway: GatewaySection = GatewaySection()
    radio: RadioSection = RadioSection()
    join: JoinSection = JoinSection()
    mqtt: MqttSection = MqttSection()
    xmpp: XmppSection = XmppSection()
    commands: CommandsSection = CommandsSection()
    outbox: OutboxSection = OutboxSection()
    modbus: ModbusSection = ModbusSection()
    ble: BleSection = BleSection()
    sim: SimSection = SimSection()
    fleet: FleetSection | None = None
    console: ConsoleSection = ConsoleSection()
    metrics: MetricsSection = MetricsSection()
    web: WebSection = WebSection()

    @property
    def topic_prefix(self) -> str:
        return self.mqtt.topic_prefix or f"duogate/{self.gateway.id}"


# --- checking decoded TOML against the structs ----------------------------------------------
#
# msgspec stops at the first problem. A table that fails is therefore checked again one key
# at a time, each value against its own type, descending into nested tables and arrays, so
# that every problem of a file gets its line. The first pass is the whole table at once, and
# a file without problems never needs the second.


SectionT = TypeVar("SectionT", bound=Section)


def _decode(kind: type, value: Any) -> Any:
    if kind is Path and isinstance(value, str | os.PathLike):
        return Path(value)
    raise TypeError(f"expected {kind.__name__}")


def _convert(table: Any, cls: type[SectionT], *, strict: bool) -> SectionT:
    try:
        return msgspec.convert(table, cls, strict=strict, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        first = str(exc)
    raise ConfigError(_problems(table, cls, "", strict) or [first])


def _line(where: str, reason: str) -> str:
    # Checks of a whole table name their keys in the message itself.
    return f"{where}: {reason}" if where else reason


def _problems(value: Any, annotation: Any, where: str, strict: bool) -> list[str]:
    """One line for each problem of ``value`` as ``annotation`` at key path ``where``."""
    kind, constraints = _unwrapped(annotation)
    if value is None and _is_optional(annotation):
        return []
    if isinstance(kind, type) and issubclass(kind, Section):
        return _table_problems(value, kind, where, strict)
    if get_origin(kind) is list:
        if not isinstance(value, list):
            return [_line(where, _type_reason("list", value))]
        (item,) = get_args(kind)
        return [
            problem
            for index, element in enumerate(value)
            for problem in _problems(element, item, f"{where}[{index}]", strict)
        ]
    try:
        msgspec.convert(value, annotation, strict=strict, dec_hook=_decode)
    except msgspec.ValidationError:
        return [_line(where, _value_reason(value, kind, constraints, strict))]
    return []


def _table_problems(value: Any, cls: type[Section], where: str, strict: bool) -> list[str]:
    if not isinstance(value, dict):
        if issubclass(cls, Secret):
            reason = "must be a table {file = PATH} or {env = NAME}; secrets are never inline"
        else:
            reason = f"must be a table, got {type(value).__name__} {shown(value)}"
        return [_line(where, reason)]
    fields = {field.name: field for field in msgspec.structs.fields(cls)}
    problems = []
    for name, field in fields.items():
        path = f"{where}.{name}" if where else name
        if name in value:
            problems += _problems(value[name], field.type, path, strict)
        elif field.required:
            problems.append(f"{path}: required")
    problems += [
        f"{where}.{key}: unknown key" if where else f"{key}: unknown key"
        for key in value
        if key not in fields
    ]
    if problems:
        return problems
    # Every key is right on its own: what is left is a check across the table's keys.
    try:
        msgspec.convert(value, cls, strict=strict, dec_hook=_decode)
    except msgspec.ValidationError as exc:
        return [_line(where, str(exc))]
    return []


def _is_optional(annotation: Any) -> bool:
    return get_origin(annotation) in (Union, types.UnionType) and type(None) in get_args(annotation)


def _unwrapped(annotation: Any) -> tuple[Any, list[Meta]]:
    """The type under ``X | None`` and ``Annotated[X, Meta(...)]``, and its constraints."""
    if get_origin(annotation) in (Union, types.UnionType):
        (annotation,) = [arg for arg in get_args(annotation) if arg is not type(None)]
    if get_origin(annotation) is Annotated:
        return annotation.__origin__, list(annotation.__metadata__)
    return annotation, []


_TYPE_NAMES = {int: "int", float: "float", str: "string", bool: "bool", Path: "path"}


def _type_reason(name: str, value: Any) -> str:
    article = "an" if name[:1] in "aeiou" else "a"
    return f"must be {article} {name}, got {type(value).__name__} {shown(value)}"


def _value_reason(value: Any, kind: Any, constraints: list[Meta], strict: bool) -> str:
    if get_origin(kind) is Literal:
        choices = [repr(choice) for choice in get_args(kind)]
        listed = f"{', '.join(choices[:-1])} or {choices[-1]}" if len(choices) > 1 else choices[0]
        return f"must be one of {listed}, got {shown(value)}"
    try:
        msgspec.convert(value, kind, strict=strict, dec_hook=_decode)
    except msgspec.ValidationError:
        return _type_reason(_TYPE_NAMES.get(kind, getattr(kind, "__name__", str(kind))), value)
    limits = {
        name: getattr(meta, name)
        for meta in constraints
        for name in ("ge", "gt", "le", "min_length", "max_length", "pattern")
        if getattr(meta, name) is not None
    }
    if "pattern" in limits and not re.search(limits["pattern"], value):
        pattern = limits["pattern"]
        if pattern.endswith(r"\Z"):  # see _matching: shown as the anchor people know
            pattern = pattern.removesuffix(r"\Z") + "$"
        return f"does not match {pattern}, got {shown(value)}"
    if "min_length" in limits or "max_length" in limits:
        low, high = limits.get("min_length", 0), limits.get("max_length")
        size = f"{low}..{high}" if high is not None else f"at least {low}"
        return f"must be {size} characters long, got {shown(value)}"
    return f"must be {_bounds(limits)}, got {shown(value)}"


def _bounds(limits: dict[str, Any]) -> str:
    low, high = limits.get("ge"), limits.get("le")
    if low is not None and high is not None:
        return f"{low}..{high}"
    parts = []
    if "gt" in limits:
        parts.append(f"greater than {limits['gt']}")
    if low is not None:
        parts.append(f"at least {low}")
    if high is not None:
        parts.append(f"at most {high}")
    return " and ".join(parts) or "a different value"


def parse_config(data: dict[str, Any], *, check_files: bool = True) -> Config:
    """Validate a decoded TOML document; raise ConfigError with one line per problem."""
    config = Config.from_table(data)
    if check_files:
        problems = list(_secret_problems(config))
        if problems:
            raise ConfigError(problems)
    return config


def secret_fields(config: Config) -> list[tuple[str, Secret | None]]:
    return [
        ("mqtt.password", config.mqtt.password),
        ("xmpp.password", config.xmpp.password),
        ("web.password", config.web.password),
        ("join.open_join_key", config.join.open_join_key),
        ("fleet.key", config.fleet.key if config.fleet is not None else None),
        (
            "fleet.broker.password",
            config.fleet.broker.password if config.fleet is not None else None,
        ),
    ]


def _secret_problems(config: Config) -> list[str]:
    problems = []
    for name, secret in secret_fields(config):
        if secret is None:
            continue
        if secret.file is not None and not secret.file.is_file():
            problems.append(f"{name}.file: secret file not found: {secret.file}")
        if secret.env is not None and secret.env not in os.environ:
            problems.append(f"{name}.env: environment variable {secret.env} is not set")
    registry = config.join.registry
    if registry is not None and not registry.is_file():
        problems.append(f"join.registry: device registry not found: {registry}")
    for tls_name, path in _tls_files(config):
        if path is not None and not path.is_file():
            problems.append(f"{tls_name}: file not found: {path}")
    return problems


def _tls_files(config: Config) -> list[tuple[str, Path | None]]:
    tls = config.mqtt.tls
    files: list[tuple[str, Path | None]] = [("xmpp.ca_file", config.xmpp.ca_file)]
    if tls is not None:
        files += [
            ("mqtt.tls.ca_file", tls.ca_file),
            ("mqtt.tls.cert_file", tls.cert_file),
            ("mqtt.tls.key_file", tls.key_file),
        ]
    return files


def secret_file_warnings(config: Config) -> list[str]:
    """Secret files that others can read: worth a warning, not a refusal."""
    warnings = []
    candidates = [
        (n, s.file) for n, s in secret_fields(config) if s is not None and s.file is not None
    ]
    if config.join.registry is not None:
        candidates.append(("join.registry", config.join.registry))
    for name, path in candidates:
        try:
            mode = path.stat().st_mode
        except OSError:
            continue
        if mode & (stat.S_IRGRP | stat.S_IROTH):
            warnings.append(f"{name}: {path} is readable by other users (chmod 600 it)")
    return warnings


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> None:
    """Apply ``key.path=value`` settings (value in TOML syntax, bare words taken as strings)."""
    problems = []
    for item in overrides:
        key, sep, text = item.partition("=")
        path = [part.strip() for part in key.split(".")]
        if not sep or not all(path):
            problems.append(f"--set {shown(item)}: expected KEY.PATH=VALUE")
            continue
        try:
            value = tomllib.loads(f"v = {text}")["v"]
        except tomllib.TOMLDecodeError:
            value = text
        except RecursionError:
            value = None
        if value is None or _depth({"v": value}) > MAX_TOML_DEPTH - len(path):
            problems.append(f"--set {shown(item)}: nested more than {MAX_TOML_DEPTH} levels deep")
            continue
        block = data
        for part in path[:-1]:
            child = block.setdefault(part, {})
            if not isinstance(child, dict):
                problems.append(f"--set {shown(item)}: {part} is not a table")
                break
            block = child
        else:
            block[path[-1]] = value
    if problems:
        raise ConfigError(problems)


def read_toml(path: Path, label: str = "", *, missing: str | None = None) -> dict[str, Any]:
    """Decode a TOML file; ConfigError with one line (``{label}{path}: reason``) if unusable.

    ``missing`` is the reason given for an absent file (default: the system's wording).
    Refuses files over ``MAX_TOML_BYTES`` and documents nested deeper than ``MAX_TOML_DEPTH``.
    """
    where = f"{label}{path}"
    try:
        with path.open("rb") as file:
            raw = file.read(MAX_TOML_BYTES + 1)
    except FileNotFoundError as exc:
        raise ConfigError([f"{where}: {missing or f'cannot read: {exc.strerror}'}"]) from None
    except OSError as exc:
        raise ConfigError([f"{where}: cannot read: {exc.strerror or exc}"]) from None
    if len(raw) > MAX_TOML_BYTES:
        raise ConfigError([f"{where}: larger than {MAX_TOML_BYTES >> 20} MiB"])
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError([f"{where}: not UTF-8 text"]) from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{where}: TOML syntax error: {exc}"]) from None
    except RecursionError:
        raise ConfigError([f"{where}: nested more than {MAX_TOML_DEPTH} levels deep"]) from None
    if _depth(data) > MAX_TOML_DEPTH:
        raise ConfigError([f"{where}: nested more than {MAX_TOML_DEPTH} levels deep"])
    return data


def _depth(document: dict[str, Any]) -> int:
    """How deeply tables and arrays nest (the document itself is level 1), without recursion."""
    deepest = 0
    pending: list[tuple[Any, int]] = [(document, 1)]
    while pending:
        value, level = pending.pop()
        deepest = max(deepest, level)
        if deepest > MAX_TOML_DEPTH:
            break
        children = value.values() if isinstance(value, dict) else value
        pending.extend((child, level + 1) for child in children if isinstance(child, dict | list))
    return deepest


def load_config(
    path: str | Path,
    *,
    check_files: bool = True,
    overrides: list[str] | None = None,
    for_sim: bool = False,
) -> Config:
    """Read and validate a TOML config file; relative paths in it resolve against its folder.

    This is the one validation path of ``run``, ``sim`` and ``check-config``: the schema, then
    every cross-section check of ``gateway.config_checks`` (files and secrets only with
    ``check_files``). ``for_sim`` reads the file as ``duogate sim`` does (see
    ``config_checks.config_problems``).
    """
    # config_checks builds on this module (and on the registry, which does too).
    from gateway.config_checks import check_config

    path = Path(path)
    data = read_toml(path, missing="no such file")
    apply_overrides(data, overrides or [])
    _resolve_relative_paths(data, path.parent)
    config = parse_config(data, check_files=check_files)
    check_config(config, check_files=check_files, for_sim=for_sim)
    return config


_PATH_KEYS = {
    ("gateway", "data_dir"),
    ("join", "registry"),
    ("sim", "state_dir"),
    ("sim", "ledger"),
    ("console", "socket"),
    ("xmpp", "ca_file"),
}


def _resolve_relative_paths(data: dict[str, Any], base: Path) -> None:
    """Make relative file paths relative to the config file, not the working directory."""

    def fix(value: Any) -> Any:
        if isinstance(value, str) and value and not os.path.isabs(value):
            return str(base / value)
        return value

    for section, key in _PATH_KEYS:
        block = data.get(section)
        if isinstance(block, dict) and key in block:
            block[key] = fix(block[key])
    for section, key in (
        ("mqtt", "password"),
        ("xmpp", "password"),
        ("web", "password"),
        ("join", "open_join_key"),
    ):
        block = data.get(section)
        secret = block.get(key) if isinstance(block, dict) else None
        if isinstance(secret, dict) and "file" in secret:
            secret["file"] = fix(secret["file"])
    tls = data.get("mqtt", {}).get("tls") if isinstance(data.get("mqtt"), dict) else None
    if isinstance(tls, dict):
        for key in ("ca_file", "cert_file", "key_file"):
            if key in tls:
                tls[key] = fix(tls[key])
