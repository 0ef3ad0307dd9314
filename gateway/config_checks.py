"""Checks across sections, files and secrets: whether a configuration can work as a whole.

``gateway.config.load_config`` runs ``check_config`` after the schema, so ``check-config``,
``run``, ``sim`` and ``console`` refuse the same files with the same lines. Each check here
mirrors a place where the running gateway would otherwise fail later: at start with a
traceback, in a reconnect loop, or silently (a setting that has no effect).

Settings that work but expose the gateway are ``gateway.config_warnings``.
"""

from __future__ import annotations

import ipaddress
import os
import ssl
import stat
from collections.abc import Iterator

from gateway.config import (
    CONTROL_CHARACTERS,
    Config,
    ConfigError,
    FleetSection,
    MqttSection,
    Secret,
    SimSection,
    XmppSection,
    secret_fields,
    shown,
)
from gateway.protocol.dutycycle import REGIONS
from gateway.registry import join_settings, load_registry
from gateway.upstreams.response_topics import prefix_problems

# A secret is a line of text; a larger file is a wrong path (a key bundle, a log).
MAX_SECRET_BYTES = 64 * 1024
# Topics are at most 65535 bytes; the prefix leaves room for ".../devices/<id>/command/result".
MAX_TOPIC_PREFIX_BYTES = 1024
# MQTT strings (client id, user name) are at most 65535 bytes of UTF-8.
MAX_MQTT_STRING_BYTES = 65535
# sun_path of a Unix socket holds 108 bytes including the terminating NUL.
MAX_SOCKET_PATH_BYTES = 107


def check_config(config: Config, *, check_files: bool = True, for_sim: bool = False) -> None:
    """Raise ConfigError with one line per problem when ``config`` cannot work."""
    problems = config_problems(config, check_files=check_files, for_sim=for_sim)
    if problems:
        raise ConfigError(problems)


def config_problems(
    config: Config, *, check_files: bool = True, for_sim: bool = False
) -> list[str]:
    """Every problem of ``config`` beyond its schema, one line each.

    ``check_files`` reads secrets, the registry and TLS files (the console client, which only
    needs the socket path, skips them). ``for_sim`` checks the file as ``duogate sim`` reads it:
    the world's node plan (checked anyway when ``radio.driver = "sim"`` runs the world inside
    the gateway), and no upstream needed, since a world relays nothing.
    """
    problems = [
        *([] if for_sim else _upstream_problems(config)),
        *_mqtt_problems(config.mqtt),
        *prefix_problems(config.topic_prefix, config.mqtt.response_topic_prefixes),
        *_xmpp_problems(config.xmpp),
        *_radio_problems(config),
        *_listener_problems(config),
        *_serial_port_problems(config),
        *_modbus_problems(config),
        *_other_problems(config),
        *_sim_site_problems(config, for_sim=for_sim, check_files=check_files),
        *_fleet_problems(config),
    ]
    if check_files:
        secret_lines = {
            name: secret_problem(name, secret)
            for name, secret in secret_fields(config)
            if secret is not None
        }
        problems += [line for line in secret_lines.values() if line is not None]
        problems += _file_problems(config)
        if config.fleet is not None and secret_lines.get("fleet.key") is None:
            try:
                fleet_key(config.fleet)
            except ConfigError as exc:
                problems += exc.problems
        if secret_lines.get("join.open_join_key") is None:
            try:
                join_settings(config)
            except ConfigError as exc:
                problems += exc.problems
        registry_size = _registry_size(config, problems)
        if registry_size is not None and (for_sim or config.radio.driver == "sim"):
            problems += _sim_world_problems(config, registry_size)
    return problems


# --- upstreams -------------------------------------------------------------------------------


def _upstream_problems(config: Config) -> Iterator[str]:
    if not config.mqtt.enabled and not config.xmpp.enabled and config.fleet is None:
        yield "mqtt.enabled: enable mqtt, xmpp or a fleet; reports need somewhere to go"


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot prefix the gateway's publish topics, or None when it can."""
    if not topic:
        return "must not be empty"
    if "+" in topic or "#" in topic:
        return f"must not hold the wildcards '+' or '#', got {shown(topic)}"
    if _has_control(topic):
        return f"must not hold NUL or control characters, got {shown(topic)}"
    if topic.startswith("/") or topic.endswith("/") or "//" in topic:
        return f"must not start or end with '/' or have empty levels, got {shown(topic)}"
    if topic.startswith("$"):
        return f"must not start with '$' (reserved for the broker), got {shown(topic)}"
    if len(topic.encode()) > MAX_TOPIC_PREFIX_BYTES:
        return f"must be at most {MAX_TOPIC_PREFIX_BYTES} bytes"
    return None


def _mqtt_problems(mqtt: MqttSection) -> Iterator[str]:
    # An empty prefix would silently mean the default one: refused like any other bad one.
    if mqtt.topic_prefix is not None and (reason := topic_problem(mqtt.topic_prefix)):
        yield f"mqtt.topic_prefix: {reason}"
    if reason := topic_problem(mqtt.discovery_prefix):
        yield f"mqtt.discovery_prefix: {reason}"
    if not mqtt.host.strip():
        yield "mqtt.host: must not be empty"
    if mqtt.password is not None and mqtt.username is None:
        yield "mqtt.password: needs mqtt.username (a password alone is never sent)"
    for name in ("username", "client_id"):
        value = getattr(mqtt, name)
        if value is None:
            continue
        if _has_control(value):
            yield f"mqtt.{name}: must not hold NUL or control characters, got {shown(value)}"
        elif len(value.encode()) > MAX_MQTT_STRING_BYTES:
            yield f"mqtt.{name}: must be at most {MAX_MQTT_STRING_BYTES} bytes"
    if mqtt.reconnect_max_s < mqtt.reconnect_min_s:
        yield "mqtt.reconnect_max_s: must not be below mqtt.reconnect_min_s"
    if mqtt.tls is not None and mqtt.tls.key_file is not None and mqtt.tls.cert_file is None:
        yield "mqtt.tls.key_file: needs mqtt.tls.cert_file (a key alone is never used)"


def _xmpp_problems(xmpp: XmppSection) -> Iterator[str]:
    if xmpp.port is not None and xmpp.host is None:
        yield "xmpp.port: needs xmpp.host (without it the server comes from the JID's domain)"
    if xmpp.host is not None and not xmpp.host.strip():
        yield "xmpp.host: must not be empty"
    if not xmpp.enabled:
        return
    from slixmpp import JID
    from slixmpp.jid import InvalidJID

    try:
        own = JID(xmpp.jid)
    except InvalidJID as exc:
        yield f"xmpp.jid: not a valid JID: {exc}"
    else:
        if not own.user:
            yield f"xmpp.jid: needs a user part (user@domain), got {shown(xmpp.jid)}"
    for name in ("subscribers", "allowed_jids"):
        for index, text in enumerate(getattr(xmpp, name)):
            try:
                domain = JID(text).domain
            except InvalidJID as exc:
                yield f"xmpp.{name}[{index}]: not a valid JID: {exc}"
                continue
            if not domain:
                yield f"xmpp.{name}[{index}]: not a valid JID: {shown(text)}"


# --- radio, listeners, ports ----------------------------------------------------------------


def _radio_problems(config: Config) -> Iterator[str]:
    radio = config.radio
    bands = REGIONS[radio.region]
    if bands is not None and not any(band.contains(radio.frequency_hz) for band in bands):
        yield (
            f"radio.frequency_hz: {radio.frequency_hz} Hz is outside every {radio.region} "
            "sub-band, so the gateway could never transmit (set radio.region or the frequency)"
        )
    if radio.spi.startswith("sim://"):
        try:
            parse_listen(radio.spi.removeprefix("sim://"), allow_any_port=False)
        except ValueError as exc:
            yield f"radio.spi: {exc}"


def parse_listen(text: str, *, allow_any_port: bool = True) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT``; an empty host is 127.0.0.1) -> (host, port); ValueError.

    ``allow_any_port`` admits port 0 (pick a free one), which a listener can use and a
    client cannot.
    """
    host, sep, port_text = text.rpartition(":")
    if not sep or not port_text.isascii() or not port_text.isdigit():
        raise ValueError(f"must be HOST:PORT, got {shown(text)}")
    port = int(port_text) if len(port_text) <= 5 else 65536  # int() of 5,000 digits raises
    low = 0 if allow_any_port else 1
    if not low <= port <= 65535:
        raise ValueError(f"port must be {low}..65535, got {port_text[:12]}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"[{host}] is not an IPv6 address") from None
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets ([::1]:PORT), got {shown(text)}")
    if not host:
        return "127.0.0.1", port
    if _has_control(host) or any(character.isspace() for character in host):
        raise ValueError(f"host must not hold spaces or control characters, got {shown(text)}")
    return host, port


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _listener_problems(config: Config) -> Iterator[str]:
    yield from _sim_listen_problems(config)
    web, metrics = config.web, config.metrics
    for name, section in (("web", web), ("metrics", metrics)):
        if not section.host.strip():
            yield f"{name}.host: must not be empty (0.0.0.0 listens on every address)"
    if web.enabled and web.password is None and not is_loopback(web.host):
        yield (
            f"web.password: required when web.host is not loopback (web.host = {web.host!r}); "
            "set a password or bind to 127.0.0.1"
        )
    if web.enabled and metrics.enabled and web.port == metrics.port != 0:
        wildcard = {"0.0.0.0", "::", ""}
        if web.host == metrics.host or web.host in wildcard or metrics.host in wildcard:
            yield f"web.port: {web.port} is also metrics.port; give each its own port"


def _sim_listen_problems(config: Config) -> Iterator[str]:
    """``duogate sim`` listens on ``sim.listen`` (or on each of ``sim.gateways``) and on each
    external node chip's port: every one must parse, and no two may ask for the same fixed
    port."""
    sim = config.sim
    listeners = [] if sim.gateways else [("sim.listen", sim.listen)]
    listeners += [
        (f"sim.gateways[{index}].listen", gateway.listen)
        for index, gateway in enumerate(sim.gateways)
    ]
    listeners += [
        (f"sim.external_nodes[{index}].listen", chip.listen)
        for index, chip in enumerate(config.sim.external_nodes)
    ]
    taken: dict[int, str] = {}
    for name, text in listeners:
        try:
            _, port = parse_listen(text)
        except ValueError as exc:
            yield f"{name}: {exc}"
            continue
        if port in taken:
            yield f"{name}: port {port} is also {taken[port]}; give each chip its own port"
        elif port:
            taken[port] = name


def _serial_port_problems(config: Config) -> Iterator[str]:
    """One serial port, one user: two would steal each other's bytes."""
    users: list[tuple[str, str]] = []
    if config.radio.driver == "serial" and config.radio.serial_port:
        users.append(("radio.serial_port", config.radio.serial_port))
    if config.console.enabled and config.console.serial_port:
        users.append(("console.serial_port", config.console.serial_port))
    if config.modbus.enabled:
        for index, bus in enumerate(config.modbus.buses):
            if bus.transport == "rtu" and bus.port:
                users.append((f"modbus.buses[{index}].port", bus.port))
    first: dict[str, str] = {}
    for name, port in users:
        if port in first:
            yield f"{name}: {port} is already used by {first[port]}"
        else:
            first[port] = name


def _modbus_problems(config: Config) -> Iterator[str]:
    if not config.modbus.buses:
        return
    from drivers.modbus.codec import width

    for b, bus in enumerate(config.modbus.buses):
        for d, device in enumerate(bus.devices):
            for r, register in enumerate(device.registers):
                if register.address + width(register) > 65536:
                    yield (
                        f"modbus.buses[{b}].devices[{d}].registers[{r}].address: "
                        f"a {register.type} at {register.address} runs past address 65535"
                    )


def _other_problems(config: Config) -> Iterator[str]:
    commands = config.commands
    if commands.default_ttl_s > commands.max_ttl_s:
        yield (
            f"commands.default_ttl_s: {commands.default_ttl_s:g} exceeds "
            f"commands.max_ttl_s {commands.max_ttl_s:g}"
        )
    if config.console.enabled:
        socket = config.console.socket or config.gateway.data_dir / "console.sock"
        if len(os.fsencode(socket)) > MAX_SOCKET_PATH_BYTES:
            name = "console.socket" if config.console.socket else "gateway.data_dir"
            yield (
                f"{name}: the console socket path {socket} is longer than "
                f"{MAX_SOCKET_PATH_BYTES} bytes (a Unix socket limit); set console.socket"
            )


def _fleet_problems(config: Config) -> Iterator[str]:
    fleet = config.fleet
    if fleet is None:
        return
    join = config.join
    if (join.address_pool_start, join.address_pool_end) == (0x0001, 0xFFFE):
        yield (
            "join.address_pool_start: in a fleet each gateway hands out addresses from its own "
            "range: set join.address_pool_start and join.address_pool_end (docs/FLEET.md)"
        )
    if not fleet.broker.enabled:
        yield "fleet.broker.enabled: a fleet needs its broker"
    yield from (line.replace("mqtt.", "fleet.broker.", 1) for line in _mqtt_problems(fleet.broker))
    if fleet.broker.topic_prefix is not None:
        yield "fleet.broker.topic_prefix: the fleet's topics start with fleet.name"
    if "." in config.gateway.id:
        yield (
            f"gateway.id: in a fleet the id is part of topics and may not hold '.' (a NATS "
            f"cluster refuses it), got {config.gateway.id!r}"
        )
    for name in ("qos_reports", "qos_events", "qos_results"):
        if getattr(fleet.broker, name) == 2:
            yield f"fleet.broker.{name}: 0 or 1 (clustered brokers such as NATS refuse QoS 2)"


def fleet_key(fleet: FleetSection) -> bytes:
    """The fleet key from its secret; ConfigError with one line when it is not 16 or 32 bytes
    of hex."""
    try:
        text = fleet.key.read()
    except (OSError, KeyError, UnicodeDecodeError) as exc:
        raise ConfigError([f"fleet.key: cannot read the secret: {exc}"]) from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) not in (16, 32):
        raise ConfigError(["fleet.key: expected 32 or 64 hex digits (a 128- or 256-bit key)"])
    return key


# --- files and secrets -----------------------------------------------------------------------


def secret_problem(name: str, secret: Secret) -> str | None:
    """Why the secret ``name`` cannot be used (unreadable, binary, empty...), or None."""
    if secret.file is not None:
        where, path = f"{name}.file", secret.file
        try:
            info = path.stat()
        except OSError as exc:
            return f"{where}: cannot read {path}: {exc.strerror or exc}"
        if not stat.S_ISREG(info.st_mode):
            return f"{where}: {path} is not a regular file"
        if info.st_size > MAX_SECRET_BYTES:
            return f"{where}: {path} is larger than {MAX_SECRET_BYTES // 1024} KiB"
        try:
            value = secret.read()
        except OSError as exc:
            return f"{where}: cannot read {path}: {exc.strerror or exc}"
        except UnicodeDecodeError:
            return f"{where}: {path} is not UTF-8 text"
    else:
        assert secret.env is not None
        where = f"{name}.env"
        if secret.env not in os.environ:
            return f"{where}: environment variable {secret.env} is not set"
        value = os.environ[secret.env]
    if not value:
        return f"{where}: the secret is empty"
    if _has_control(value):
        return f"{where}: the secret holds control characters (expected one line of text)"
    return None


def _registry_size(config: Config, problems: list[str]) -> int | None:
    """Parse the registry as the gateway does; its size, or None when it cannot be used."""
    if config.join.registry is None:
        return 0
    try:
        return len(load_registry(config.join.registry))
    except ConfigError as exc:
        problems += [f"join.registry: {line}" for line in exc.problems]
        return None


def _file_problems(config: Config) -> Iterator[str]:
    data_dir = config.gateway.data_dir
    if data_dir.exists() and not data_dir.is_dir():
        yield f"gateway.data_dir: {data_dir} exists and is not a directory"
    tls = config.mqtt.tls
    if tls is not None and (tls.ca_file or tls.cert_file):
        try:
            context = ssl.create_default_context(
                ssl.Purpose.SERVER_AUTH, cafile=str(tls.ca_file) if tls.ca_file else None
            )
            if tls.cert_file is not None:
                key = str(tls.key_file) if tls.key_file else None
                context.load_cert_chain(str(tls.cert_file), key, password=_no_passphrase)
        except (OSError, ValueError) as exc:  # ssl.SSLError is an OSError
            yield f"mqtt.tls: cannot load the certificates: {_ssl_reason(exc)}"
    if config.xmpp.ca_file is not None:
        try:
            ssl.create_default_context(cafile=str(config.xmpp.ca_file))
        except (OSError, ValueError) as exc:
            yield f"xmpp.ca_file: cannot load {config.xmpp.ca_file}: {_ssl_reason(exc)}"


def _no_passphrase() -> str:
    # A key protected by a passphrase cannot be unlocked unattended: refuse, never prompt.
    raise ValueError("the key is protected by a passphrase")


def _ssl_reason(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError) and exc.reason:
        return str(exc.reason).lower().replace("_", " ")
    return getattr(exc, "strerror", None) or str(exc) or type(exc).__name__


def _sim_site_problems(config: Config, *, for_sim: bool, check_files: bool) -> Iterator[str]:
    """A site in ``[sim]``: gateway names, node numbers, where the world runs, the ledger."""
    sim = config.sim
    names: dict[str, int] = {}
    for index, gateway in enumerate(sim.gateways):
        if gateway.name in names:
            yield (
                f"sim.gateways[{index}].name: {gateway.name!r} is also "
                f"sim.gateways[{names[gateway.name]}].name; give each gateway its own name"
            )
        names.setdefault(gateway.name, index)
    if sim.gateways and sim.listen != SimSection().listen:
        yield "sim.listen: not used with sim.gateways (each gateway chip has its own listen)"
    placed: dict[int, int] = {}
    for index, pinned in enumerate(sim.node_positions):
        if pinned.node >= sim.nodes:
            yield (
                f"sim.node_positions[{index}].node: node {pinned.node} but sim.nodes = "
                f"{sim.nodes} (nodes are numbered from 0)"
            )
        elif pinned.node in placed:
            yield (
                f"sim.node_positions[{index}].node: node {pinned.node} is also placed by "
                f"sim.node_positions[{placed[pinned.node]}]"
            )
        placed.setdefault(pinned.node, index)
    for index, move in enumerate(sim.moves):
        if move.node >= sim.nodes:
            yield (
                f"sim.moves[{index}].node: node {move.node} but sim.nodes = {sim.nodes} "
                "(nodes are numbered from 0)"
            )
    if not for_sim and config.radio.driver == "sim":
        if sim.gateways:
            yield (
                "sim.gateways: a site runs in `duogate sim`, with a gateway process per chip; "
                "radio.driver = 'sim' runs a single chip inside the gateway"
            )
        if sim.schedule_from == "gateways":
            yield (
                "sim.schedule_from: 'gateways' waits for gateway processes to take their "
                "chips; with radio.driver = 'sim' the world runs inside the gateway (use 'start')"
            )
    if check_files and sim.ledger is not None and sim.ledger.is_dir():
        yield f"sim.ledger: {sim.ledger} is a directory"


def _sim_world_problems(config: Config, registry_size: int) -> Iterator[str]:
    count = config.sim.nodes
    if count > registry_size and not config.join.open_join:
        yield (
            f"sim.nodes: {count} simulated nodes but {registry_size} registry "
            f"device{'' if registry_size == 1 else 's'} and join.open_join is off "
            "(set join.open_join = true, add devices, or lower sim.nodes)"
        )


def _has_control(text: str) -> bool:
    return CONTROL_CHARACTERS.search(text) is not None
