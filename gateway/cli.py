"""The ``duogate`` command line: run, sim, check-config, airtime, console, install-service."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NoReturn

from gateway import __version__
from gateway.config import Config, ConfigError, load_config, one_line, secret_file_warnings
from gateway.config_checks import parse_listen
from gateway.config_warnings import startup_warnings
from gateway.logsetup import setup_logging
from gateway.protocol.airtime import BANDWIDTHS_HZ

log = logging.getLogger("duogate")

DEFAULT_CONFIG = Path("/etc/duogate/duogate.toml")


class UsageError(Exception):
    """A user mistake on the command line or in the environment: one line, no traceback."""


EXIT_CODES = """\
exit status: 0 done; 2 a mistake in the command line or the configuration (one line per
problem on stderr, nothing started); 1 a failure of the world at run time (a radio that does
not answer, an address already in use); 130 interrupted."""

# Every spelling of a coding rate the command line documents, as the denominator 5..8.
CODING_RATES = {
    **{f"4/{denominator}": denominator for denominator in range(5, 9)},
    **{str(denominator): denominator for denominator in range(5, 9)},
}


class _Parser(argparse.ArgumentParser):
    """argparse with a one-line error (``prog: error: reason``) instead of usage + error."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {one_line(message)} (see --help)\n")


def _coding_rate(text: str) -> int:
    """Accept ``4/5``..``4/8`` or ``5``..``8`` and return the denominator 5..8."""
    rate = CODING_RATES.get(text.strip().replace(" ", ""))
    if rate is None:
        raise argparse.ArgumentTypeError(
            f"coding rate must be 4/5, 4/6, 4/7 or 4/8 (or 5..8), got {text!r}"
        )
    return rate


def _bandwidth(text: str) -> int:
    """A LoRa bandwidth in Hz, one of the ten the SX127x has."""
    try:
        value = int(text.strip().replace("_", ""))
    except ValueError:
        value = 0  # not a bandwidth either
    if value not in BANDWIDTHS_HZ:
        allowed = ", ".join(str(bandwidth) for bandwidth in BANDWIDTHS_HZ)
        raise argparse.ArgumentTypeError(f"bandwidth must be one of {allowed} (Hz), got {text!r}")
    return value


def _int_in(low: int, high: int, what: str) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text, 0)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"{what} must be a whole number, got {text!r}"
            ) from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{what} must be {low}..{high}, got {value}")
        return value

    return parse


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="duogate",
        description="Gateway for LoRa SX127x, BLE and Modbus devices, relaying to MQTT and XMPP "
        "with end-to-end command expiry.",
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"duogate {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    run = sub.add_parser("run", help="run the gateway daemon", description="Run the gateway.")
    run.add_argument("--config", type=Path, default=DEFAULT_CONFIG, help="TOML config file")
    run.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set mqtt.port=1884 (repeatable)",
    )

    sim = sub.add_parser(
        "sim",
        help="run the simulated radio world",
        description="Run a simulated RF medium with nodes and the gateway's SX127x chip, served "
        "on a local socket for a gateway configured with radio.spi = 'sim://HOST:PORT'.",
    )
    sim.add_argument("--config", type=Path, required=True, help="TOML config file ([sim])")
    sim.add_argument("--listen", help="HOST:PORT to serve the chip on (overrides sim.listen)")
    sim.add_argument("-v", "--verbose", action="count", default=0, help="debug logging")
    sim.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )

    check = sub.add_parser(
        "check-config",
        help="validate a config file",
        description="Validate a config file with the checks `run` makes before it starts: exit "
        "0 when `run` would accept it (warnings about exposed settings on stderr); otherwise one "
        "line per problem and exit 2.",
    )
    check.add_argument("path", type=Path, help="TOML config file")
    check.add_argument(
        "--sim",
        action="store_true",
        help="check it as `duogate sim` reads it: the simulated world's nodes too (checked "
        "anyway when radio.driver = 'sim'), no upstream needed",
    )
    check.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value (repeatable)",
    )

    air = sub.add_parser(
        "airtime",
        help="time on air of a LoRa packet",
        description="Print the time on air in milliseconds (Semtech formula, SX1276 4.1.1.7).",
    )
    air.add_argument("--sf", type=_int_in(6, 12, "spreading factor"), required=True, help="6..12")
    air.add_argument(
        "--bw",
        type=_bandwidth,
        required=True,
        help=f"bandwidth in Hz: {', '.join(str(bandwidth) for bandwidth in BANDWIDTHS_HZ)}",
    )
    air.add_argument(
        "--cr",
        type=_coding_rate,
        default=5,
        help="coding rate: 4/5, 4/6, 4/7 or 4/8, or just the denominator 5..8 (default 4/5)",
    )
    air.add_argument(
        "--payload", type=_int_in(0, 255, "payload"), required=True, help="payload bytes"
    )
    air.add_argument("--preamble", type=_int_in(6, 65535, "preamble"), default=8)
    air.add_argument("--implicit-header", action="store_true")
    air.add_argument("--no-crc", action="store_true")
    air.add_argument(
        "--ldro",
        choices=("auto", "on", "off"),
        default="auto",
        help="low data rate optimisation (auto: on when a symbol lasts > 16 ms)",
    )

    console = sub.add_parser(
        "console",
        help="connect to the running gateway's console",
        description="Connect to the bench console of a running gateway over its Unix socket.",
    )
    console.add_argument("--config", type=Path, default=None, help="TOML config file")
    console.add_argument("--socket", type=Path, default=None, help="console socket path")
    console.add_argument(
        "-c", "--command", dest="console_command", help="run one console command and exit"
    )

    install = sub.add_parser(
        "install-service",
        help="install the systemd service",
        description="Create the duogate system user, install the systemd unit and a sample "
        "config in /etc/duogate.",
    )
    install.add_argument("--dry-run", action="store_true", help="print what would be done")
    install.add_argument("--unit", type=Path, default=None, help="unit file to install")
    return parser


def _start(path: Path, overrides: list[str], verbose: int, *, for_sim: bool = False) -> Config:
    """Load and check the config (ConfigError: nothing started), set up logging, warn.

    The world of ``duogate sim`` serves no gateway: only its secret files are worth a word.
    """
    config = load_config(path, overrides=overrides, for_sim=for_sim)
    setup_logging(config.gateway.log_level, verbose)
    warnings = secret_file_warnings(config) if for_sim else startup_warnings(config)
    for warning in warnings:
        log.warning("%s", warning)
    return config


def cmd_check_config(args: argparse.Namespace) -> int:
    config = load_config(args.path, overrides=args.set, for_sim=args.sim)
    for warning in startup_warnings(config):
        print(f"warning: {warning}", file=sys.stderr)
    print(f"{args.path}: ok (gateway {config.gateway.id}, radio {config.radio.driver})")
    return 0


def cmd_airtime(args: argparse.Namespace) -> int:
    from gateway.protocol.airtime import time_on_air_s

    ldro = {"auto": None, "on": True, "off": False}[args.ldro]
    seconds = time_on_air_s(
        args.payload,
        sf=args.sf,
        bw_hz=args.bw,
        cr=args.cr,
        preamble=args.preamble,
        explicit_header=not args.implicit_header,
        crc=not args.no_crc,
        low_data_rate=ldro,
    )
    print(f"{seconds * 1000:.3f}")
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    config = _start(args.config, args.set, args.verbose)
    from gateway.daemon import run_daemon

    return asyncio.run(run_daemon(config))


def cmd_sim(args: argparse.Namespace) -> int:
    if args.listen is not None:
        try:
            parse_listen(args.listen)
        except ValueError as exc:
            raise ConfigError([f"--listen: {exc}"]) from None
    config = _start(args.config, args.set, args.verbose, for_sim=True)
    from gateway.sim_command import run_world

    return asyncio.run(run_world(config, listen=args.listen))


def cmd_console(args: argparse.Namespace) -> int:
    from gateway.console.client import DEFAULT_CONFIG as CONSOLE_CONFIG
    from gateway.console.client import console_main, console_socket_path

    if args.socket is None:
        # Resolved here so that a bad config is refused like every other command's.
        if args.config is None and not CONSOLE_CONFIG.is_file():
            raise UsageError(
                f"no console socket: give --socket or --config ({CONSOLE_CONFIG} absent)"
            )
        config = load_config(args.config or CONSOLE_CONFIG, check_files=False)
        args.socket = console_socket_path(config)
    return console_main(args)


def cmd_install_service(args: argparse.Namespace) -> int:
    from gateway.install import install_service

    return install_service(args)


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": cmd_run,
    "sim": cmd_sim,
    "check-config": cmd_check_config,
    "airtime": cmd_airtime,
    "console": cmd_console,
    "install-service": cmd_install_service,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command not in ("run", "sim"):
        setup_logging("warning", args.verbose)
    try:
        return COMMANDS[args.command](args)
    except ConfigError as exc:
        for problem in exc.problems:
            print(problem, file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except (UsageError, *_late_config_errors()) as exc:
        print(f"duogate: error: {one_line(str(exc))}", file=sys.stderr)
        return 2
    except _world_errors() as exc:
        print(f"duogate: error: {one_line(str(exc))}", file=sys.stderr)
        return 1


def _late_config_errors() -> tuple[type[BaseException], ...]:
    """Configuration refused by a part as it starts (config checks normally catch it first)."""
    from gateway.web.errors import WebConfigError

    return (WebConfigError,)


def _world_errors() -> tuple[type[BaseException], ...]:
    """Errors that describe the world, not a bug: shown in one line, never as a traceback."""
    from drivers.radio.base import RadioError
    from gateway.store.db import StoreError
    from gateway.upstreams.base import UpstreamError

    return (RadioError, StoreError, UpstreamError, OSError)
