"""The LoRa device registry: which EUIs may join, and with which root key.

A TOML file of devices::

    [[device]]
    eui = "0011223344556677"
    root_key = "000102030405060708090a0b0c0d0e0f"  # or root_key_file / root_key_env
    encrypt = true      # optional: encrypt every body of its sessions (default false)
    enabled = true      # optional: false refuses its joins and ends its lease
    name = "greenhouse" # optional: for people, not used on air

Every problem becomes one line naming its place (``registry.device[3].eui: ...``); all of them
are raised together as ``ConfigError``. Relative ``root_key_file`` paths are relative to the
registry file.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from gateway.config import Config, ConfigError, read_toml
from gateway.protocol.join import PUBLIC_LAB_KEY, DeviceCredentials, JoinSettings

HEX_EUI = re.compile(r"^[0-9a-fA-F]{16}$")
HEX_KEY = re.compile(r"^[0-9a-fA-F]{32}$")
DEVICE_KEYS = {"eui", "root_key", "root_key_file", "root_key_env", "encrypt", "enabled", "name"}
KEY_SOURCES = ("root_key", "root_key_file", "root_key_env")

Registry = dict[int, DeviceCredentials]


def parse_key(text: str) -> bytes:
    """A 128-bit key written as 32 hex digits (spaces, colons and dashes are ignored)."""
    compact = re.sub(r"[\s:-]", "", text)
    if not HEX_KEY.match(compact):
        raise ValueError(f"must be 32 hex digits, got {len(compact)} characters")
    return bytes.fromhex(compact)


def _read_key(entry: dict[str, Any], base: Path, where: str) -> bytes | str:
    """The device's root key, or a one-line problem."""
    sources = [name for name in KEY_SOURCES if name in entry]
    if len(sources) != 1:
        return f"{where}: give exactly one of root_key, root_key_file, root_key_env"
    source = sources[0]
    value = entry[source]
    if not isinstance(value, str):
        return f"{where}.{source}: must be a string, got {type(value).__name__}"
    if source == "root_key":
        text = value
    elif source == "root_key_file":
        path = Path(value) if os.path.isabs(value) else base / value
        try:
            text = path.read_text()
        except OSError as exc:
            return f"{where}.root_key_file: cannot read {path}: {exc.strerror}"
    else:
        if value not in os.environ:
            return f"{where}.root_key_env: environment variable {value} is not set"
        text = os.environ[value]
    try:
        return parse_key(text)
    except ValueError as exc:
        return f"{where}.{source}: {exc}"


def parse_registry(data: dict[str, Any], base: Path) -> Registry:
    """Validate a decoded registry document; ConfigError with one line per problem."""
    problems: list[str] = []
    registry: Registry = {}
    first_index: dict[int, int] = {}
    for key in data:
        if key != "device":
            problems.append(f"registry.{key}: unknown key (expected [[device]] tables)")
    devices = data.get("device", [])
    if not isinstance(devices, list):
        raise ConfigError(["registry.device: must be an array of tables ([[device]])"])
    for index, entry in enumerate(devices):
        where = f"registry.device[{index}]"
        if not isinstance(entry, dict):
            problems.append(f"{where}: must be a table")
            continue
        problems += [f"{where}.{key}: unknown key" for key in entry if key not in DEVICE_KEYS]
        eui_text = entry.get("eui")
        eui = None
        if eui_text is None:
            problems.append(f"{where}.eui: required")
        elif not isinstance(eui_text, str) or not HEX_EUI.match(eui_text):
            problems.append(f"{where}.eui: must be 16 hex digits, got {eui_text!r}")
        else:
            eui = int(eui_text, 16)
            if eui in first_index:
                problems.append(f"{where}.eui: {eui_text} repeats device[{first_index[eui]}]")
                eui = None
            else:
                first_index[eui] = index
        flags = {}
        for flag, default in (("encrypt", False), ("enabled", True)):
            value = entry.get(flag, default)
            if not isinstance(value, bool):
                problems.append(f"{where}.{flag}: must be true or false, got {value!r}")
            flags[flag] = value is True
        if "name" in entry and not isinstance(entry["name"], str):
            problems.append(f"{where}.name: must be a string")
        key = _read_key(entry, base, where)
        if isinstance(key, str):
            problems.append(key)
        elif eui is not None:
            registry[eui] = DeviceCredentials(key, flags["encrypt"], flags["enabled"])
    if problems:
        raise ConfigError(problems)
    return registry


def load_registry(path: str | Path) -> Registry:
    """Read the registry file; ConfigError with one line per problem."""
    path = Path(path)
    return parse_registry(read_toml(path, "registry "), path.parent)


def join_settings(config: Config) -> JoinSettings:
    """Core settings from the configuration (reads the open-join key if one is given)."""
    lab_key = PUBLIC_LAB_KEY
    secret = config.join.open_join_key
    if secret is not None:
        try:
            lab_key = parse_key(secret.read())
        except (OSError, KeyError) as exc:
            raise ConfigError([f"join.open_join_key: cannot read: {exc}"]) from None
        except ValueError as exc:
            raise ConfigError([f"join.open_join_key: {exc}"]) from None
    return JoinSettings(
        pool_start=config.join.address_pool_start,
        pool_end=config.join.address_pool_end,
        lease_inactive_s=config.join.lease_inactive_s,
        rx_delay_s=config.radio.rx_delay_s,
        join_rx_delay_s=config.join.join_rx_delay_s,
        open_join=config.join.open_join,
        lab_key=lab_key,
    )


def load_join(config: Config) -> tuple[JoinSettings, Registry]:
    """Settings and registry for the network core; an absent registry means no devices."""
    registry = load_registry(config.join.registry) if config.join.registry is not None else {}
    return join_settings(config), registry
