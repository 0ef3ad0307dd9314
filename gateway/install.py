"""``duogate install-service``: set a Raspberry Pi up to run the gateway under systemd.

It creates the ``duogate`` system user, the groups the unit asks for, ``/etc/duogate`` with a
sample config (an existing config is never touched), installs the unit and reloads systemd.
``--dry-run`` prints the steps without doing them.
"""

from __future__ import annotations

import argparse
import grp
import os
import pwd
import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

SERVICE_USER = "duogate"
SUPPLEMENTARY_GROUPS = ("gpio", "spi", "dialout", "bluetooth")
CONFIG_DIR = Path("/etc/duogate")
CONFIG_FILE = CONFIG_DIR / "duogate.toml"
STATE_DIR = Path("/var/lib/duogate")
UNIT_TARGET = Path("/etc/systemd/system/duogate.service")
UNIT_NAME = "duogate.service"
DEFAULT_EXEC = "/opt/duogate/venv/bin/duogate"

SAMPLE_CONFIG = """\
# duogate configuration. Check it with: duogate check-config /etc/duogate/duogate.toml
# Secrets are never written here: they come from a file (mode 600) or the environment.

[gateway]
id = "gw1"
data_dir = "/var/lib/duogate"   # systemd's StateDirectory; survives upgrades
log_level = "info"

[radio]
driver = "sx127x"
spi = "spidev://0.0"            # SPI0, CE0
pins = { dio0 = 25, reset = 17 }
frequency_hz = 868_100_000
spreading_factor = 7
bandwidth_hz = 125_000
coding_rate = 5
tx_power_dbm = 14
region = "EU868"

[join]
# registry = "/etc/duogate/devices.toml"   # [[device]] eui + root key; chmod 600
open_join = false

[mqtt]
host = "127.0.0.1"
port = 1883
# username = "gw1"
# password = { file = "/etc/duogate/mqtt.password" }
# tls = { ca_file = "/etc/duogate/ca.pem" }   # and port = 8883

[console]
enabled = true
# serial_port = "/dev/ttyGS0"   # USB gadget serial; or a USB-UART such as /dev/ttyUSB0
serial_baud = 115200

[metrics]
enabled = true
host = "127.0.0.1"
port = 9108
"""


class InstallError(Exception):
    """A step that failed; the message is one line."""


@dataclass(frozen=True, slots=True)
class Step:
    description: str
    run: Callable[[], None]


def add_install_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dry-run", action="store_true", help="print what would be done")
    parser.add_argument("--unit", type=Path, default=None, help="unit file to install")


def install_service(args: argparse.Namespace) -> int:
    """Run (or with ``args.dry_run`` print) the install steps. 0 on success, 1 on failure."""
    dry_run = bool(getattr(args, "dry_run", False))
    if not dry_run and os.geteuid() != 0:
        print(
            "error: install-service must run as root (sudo duogate install-service), "
            "or add --dry-run to see what it would do",
            file=sys.stderr,
        )
        return 1
    try:
        unit_source = find_unit_file(getattr(args, "unit", None))
        steps = plan_install(unit_source)
    except InstallError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for step in steps:
        print(("would: " if dry_run else "") + step.description)
        if dry_run:
            continue
        try:
            step.run()
        except (InstallError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 1
    print()
    print(f"next: edit {CONFIG_FILE}, check it with `duogate check-config {CONFIG_FILE}`,")
    print(
        "      then `systemctl enable --now duogate` and follow it with `journalctl -fu duogate`."
    )
    print(
        f"      People in group {SERVICE_USER} may use `duogate console` "
        f"(usermod -aG {SERVICE_USER} NAME)."
    )
    return 0


def find_unit_file(explicit: Path | None = None) -> Path:
    """The unit file: ``explicit``, the source tree's ``systemd/``, or ``<prefix>/share``."""
    candidates = (
        [explicit]
        if explicit is not None
        else [
            Path(__file__).resolve().parent.parent / "systemd" / UNIT_NAME,
            Path(sys.prefix) / "share" / "duogate" / UNIT_NAME,
        ]
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise InstallError(f"unit file not found (looked in {', '.join(map(str, candidates))})")


def unit_text(source: Path, executable: Path | None = None) -> str:
    """The unit's text, with ExecStart pointing at ``executable`` when given."""
    text = source.read_text()
    if executable is None or str(executable) == DEFAULT_EXEC:
        return text
    return text.replace(f"ExecStart={DEFAULT_EXEC} ", f"ExecStart={executable} ")


def installed_executable() -> Path | None:
    """The ``duogate`` script of the environment running this, if there is one."""
    script = Path(sys.prefix) / "bin" / "duogate"
    return script if script.is_file() else None


def plan_install(unit_source: Path) -> list[Step]:
    steps: list[Step] = []
    for group in SUPPLEMENTARY_GROUPS:
        if not _group_exists(group):
            command = ["groupadd", "--system", group]
            steps.append(Step(shlex.join(command), _runner(command)))
    if not _user_exists(SERVICE_USER):
        command = [
            "useradd",
            "--system",
            "--user-group",
            "--home-dir",
            str(STATE_DIR),
            "--no-create-home",
            "--shell",
            "/usr/sbin/nologin",
            "--comment",
            "duogate gateway",
            SERVICE_USER,
        ]
        steps.append(Step(shlex.join(command), _runner(command)))
    steps.append(
        Step(
            f"create {CONFIG_DIR} (root:{SERVICE_USER}, 0750)",
            lambda: _make_config_dir(CONFIG_DIR),
        )
    )
    if CONFIG_FILE.exists():
        steps.append(Step(f"keep the existing {CONFIG_FILE}", lambda: None))
    else:
        steps.append(
            Step(
                f"write a sample config to {CONFIG_FILE} (root:{SERVICE_USER}, 0640)",
                lambda: _write_sample_config(CONFIG_FILE),
            )
        )
    executable = installed_executable()
    text = unit_text(unit_source, executable)
    steps.append(
        Step(
            f"install {unit_source} as {UNIT_TARGET}"
            + (f" (ExecStart {executable})" if executable else ""),
            lambda: _write_file(UNIT_TARGET, text, 0o644),
        )
    )
    steps.append(Step("systemctl daemon-reload", _runner(["systemctl", "daemon-reload"])))
    return steps


def _user_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def _runner(command: list[str]) -> Callable[[], None]:
    def run() -> None:
        if shutil.which(command[0]) is None:
            raise InstallError(f"{command[0]} not found")
        completed = subprocess.run(command, capture_output=True, text=True, check=False)
        if completed.returncode != 0:
            reason = completed.stderr.strip().splitlines()
            raise InstallError(
                f"{shlex.join(command)} failed ({completed.returncode})"
                + (f": {reason[-1]}" if reason else "")
            )

    return run


def _service_gid() -> int:
    try:
        return grp.getgrnam(SERVICE_USER).gr_gid
    except KeyError:
        raise InstallError(f"group {SERVICE_USER} does not exist") from None


def _make_config_dir(path: Path) -> None:
    path.mkdir(mode=0o750, parents=True, exist_ok=True)
    os.chown(path, 0, _service_gid())
    path.chmod(0o750)


def _write_sample_config(path: Path) -> None:
    _write_file(path, SAMPLE_CONFIG, 0o640)
    os.chown(path, 0, _service_gid())


def _write_file(path: Path, text: str, mode: int) -> None:
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(text)
    temporary.chmod(mode)
    temporary.replace(path)
