"""Real servers for tests: mosquitto, prosody and ejabberd on free 127.0.0.1 ports, private
config and data.

Each server can be stopped, killed with SIGKILL and started again on the same port mid-test,
for fault tests. Nothing here is a stand-in: the gateway talks to the real daemons.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


class ServerError(RuntimeError):
    pass


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen | None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServerError(f"server exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise ServerError(f"nothing listening on {host}:{port} after {timeout}s")


class _Daemon:
    """A server process we own: start, stop (SIGTERM), kill (SIGKILL), restart on the same port."""

    name = "server"
    host = "127.0.0.1"

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.proc: subprocess.Popen | None = None
        self.log_path = workdir / f"{self.name}.log"

    def command(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
        )
        log.close()
        try:
            wait_for_port(self.host, self.port, timeout, self.proc)
        except ServerError as exc:
            raise ServerError(f"{self.name}: {exc}\n{self.log_tail()}") from None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def restart(self) -> None:
        self.stop()
        self.start()

    def _signal(self, sig: int) -> None:
        if self.proc is None:
            return
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.proc = None

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""


class Mosquitto(_Daemon):
    name = "mosquitto"

    def __init__(self, workdir: Path, acl: str | None = None, users: dict[str, str] | None = None):
        super().__init__(workdir)
        self.users = users or {}
        self.acl = acl
        self.config_path = workdir / "mosquitto.conf"
        self._write_config()

    def _write_config(self) -> None:
        lines = [
            f"listener {self.port} {self.host}",
            "persistence true",
            f"persistence_location {self.workdir}/",
            "log_dest stdout",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "max_inflight_messages 0",
            "max_queued_messages 0",
        ]
        if os.geteuid() == 0:
            # As root mosquitto drops to its own user, which cannot read a private temp dir.
            lines.append("user root")
        if self.users:
            passwd = self.workdir / "passwd"
            passwd.write_text("")
            for user, password in self.users.items():
                subprocess.run(
                    ["mosquitto_passwd", "-b", str(passwd), user, password],
                    check=True,
                    capture_output=True,
                )
            passwd.chmod(0o600)
            lines += ["allow_anonymous false", f"password_file {passwd}"]
        else:
            lines.append("allow_anonymous true")
        if self.acl is not None:
            acl_path = self.workdir / "acl"
            acl_path.write_text(self.acl)
            acl_path.chmod(0o600)
            lines.append(f"acl_file {acl_path}")
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
        return [binary, "-c", str(self.config_path)]


def make_self_signed_cert(directory: Path, hostname: str = "localhost") -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / f"{hostname}.crt"
    key_path = directory / f"{hostname}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class Prosody(_Daemon):
    """Prosody with TLS required on c2s, stream management (XEP-0198), ping and ad-hoc."""

    name = "prosody"
    domain = "localhost"

    def __init__(self, workdir: Path) -> None:
        super().__init__(workdir)
        self.data_dir = workdir / "data"
        self.data_dir.mkdir(exist_ok=True)
        self.data_dir.chmod(0o750)
        self.cert_file, self.key_file = make_self_signed_cert(workdir, self.domain)
        self.ca_file = self.cert_file
        self.config_path = workdir / "prosody.cfg.lua"
        self._write_config()

    def _write_config(self) -> None:
        self.config_path.write_text(
            f"""
pidfile = "{self.workdir}/prosody.pid"
certificates = "{self.workdir}"
data_path = "{self.data_dir}"
run_as_root = true
daemonize = false
log = {{ info = "*console" }}
interfaces = {{ "127.0.0.1" }}
local_interfaces = {{ "127.0.0.1" }}
c2s_ports = {{ {self.port} }}
c2s_direct_tls_ports = {{ }}
s2s_ports = {{ }}
component_ports = {{ }}
http_ports = {{ }}
https_ports = {{ }}
c2s_require_encryption = true
allow_registration = false
authentication = "internal_hashed"
storage = "internal"
modules_enabled = {{
    "roster"; "saslauth"; "tls"; "dialback"; "disco"; "ping"; "smacks";
    "presence"; "message"; "iq"; "adhoc"; "version"; "uptime"; "time";
}}
modules_disabled = {{ "s2s"; "posix"; }}
smacks_hibernation_time = 120
limits = {{ c2s = {{ rate = "10mb/s"; burst = "10mb"; }}; }}
ssl = {{ certificate = "{self.cert_file}"; key = "{self.key_file}"; }}
VirtualHost "{self.domain}"
"""
        )

    def command(self) -> list[str]:
        return ["prosody", "--config", str(self.config_path), "-F"]

    def create_user(self, name: str, password: str) -> str:
        jid = f"{name}@{self.domain}"
        result = subprocess.run(
            [
                "prosodyctl",
                "--config",
                str(self.config_path),
                "register",
                name,
                self.domain,
                password,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if result.returncode != 0:
            raise ServerError(f"prosodyctl register {jid} failed: {result.stdout}{result.stderr}")
        return jid


class Ejabberd(_Daemon):
    """ejabberd with TLS required on c2s (STARTTLS), stream management, ping and ad-hoc.

    It runs as the current user straight from ``erl``, without Erlang distribution (no node
    name, no epmd, nothing shared with a system ejabberd), its Mnesia database in ``spool/``.
    Accounts are made through mod_http_api on a second loopback port, the one a deployment
    reaches with ``ejabberdctl register``. ``direct_tls_port`` adds a c2s listener speaking TLS
    from the first byte; ``stream_management=False`` leaves out mod_stream_mgmt.
    """

    name = "ejabberd"
    domain = "localhost"

    def __init__(
        self,
        workdir: Path,
        *,
        direct_tls_port: int | None = None,
        stream_management: bool = True,
    ) -> None:
        super().__init__(workdir)
        self.api_port = free_port()
        self.direct_tls_port = direct_tls_port
        self.stream_management = stream_management
        self.spool_dir = workdir / "spool"
        self.spool_dir.mkdir(exist_ok=True)
        self.spool_dir.chmod(0o700)
        self.cert_file, self.key_file = make_self_signed_cert(workdir, self.domain)
        self.ca_file = self.cert_file
        self.config_path = workdir / "ejabberd.yml"
        self.ready_marker = workdir / "ready"
        self._write_config()

    def _write_config(self) -> None:
        direct_tls = ""
        if self.direct_tls_port is not None:
            direct_tls = f"""
  - port: {self.direct_tls_port}
    ip: "{self.host}"
    module: ejabberd_c2s
    tls: true"""
        stream_management = ""
        if self.stream_management:
            stream_management = """
  mod_stream_mgmt:
    resume_timeout: 120"""
        self.config_path.write_text(
            f"""hosts:
  - "{self.domain}"
loglevel: info
log_rotate_count: 0
certfiles:
  - "{self.cert_file}"
  - "{self.key_file}"
auth_method: internal
auth_password_format: scram
listen:
  - port: {self.port}
    ip: "{self.host}"
    module: ejabberd_c2s
    starttls_required: true{direct_tls}
  - port: {self.api_port}
    ip: "{self.host}"
    module: ejabberd_http
    request_handlers:
      /api: mod_http_api
api_permissions:
  "accounts from the test harness on loopback":
    from:
      - mod_http_api
    who:
      ip: 127.0.0.1/8
    what:
      - register
modules:
  mod_adhoc: {{}}
  mod_disco: {{}}
  mod_http_api: {{}}
  mod_ping: {{}}
  mod_roster: {{}}{stream_management}
"""
        )

    def command(self) -> list[str]:
        # Mnesia writes its transaction log in the background (up to ~2 s later), so an
        # account made just before a SIGKILL would be gone after the restart: a hook syncs
        # the log once an account exists. The marker tells start() that the hook is in place.
        after_start = (
            f'ejabberd_hooks:add(register_user, <<"{self.domain}">>, '
            "fun(_User, _Server) -> mnesia:sync_log() end, 100), "
            f'file:write_file("{self.ready_marker}", <<"ready">>).'
        )
        return [
            "erl", "-noinput", "-noshell",
            "-mnesia", "dir", f'"{self.spool_dir}"',
            "-s", "ejabberd",
            "-eval", after_start,
        ]  # fmt: skip

    def start(self, timeout: float = 30.0) -> None:
        if self.running:
            return
        self.ready_marker.unlink(missing_ok=True)
        env = {
            **os.environ,
            "ERL_LIBS": str(ejabberd_lib_dir()),
            "EJABBERD_CONFIG_PATH": str(self.config_path),
            "EJABBERD_LOG_PATH": str(self.workdir / "ejabberd-file.log"),
            "ERL_CRASH_DUMP_BYTES": "0",
        }
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            self.command(),
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        try:
            while not self.ready_marker.exists():
                if self.proc.poll() is not None:
                    raise ServerError(f"exited with {self.proc.returncode} while starting")
                if time.monotonic() > deadline:
                    raise ServerError(f"not started after {timeout}s")
                time.sleep(0.05)
            for port in (self.port, self.api_port):
                wait_for_port(self.host, port, max(0.5, deadline - time.monotonic()), self.proc)
        except ServerError as exc:
            raise ServerError(f"{self.name}: {exc}\n{self.log_tail()}") from None

    def create_user(self, name: str, password: str) -> str:
        jid = f"{name}@{self.domain}"
        body = json.dumps({"user": name, "host": self.domain, "password": password})
        request = urllib.request.Request(
            f"http://{self.host}:{self.api_port}/api/register",
            data=body.encode(),
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                answer.read()
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode(errors="replace")
            raise ServerError(f"ejabberd register {jid} failed: {exc.code} {detail}") from None
        return jid


def ejabberd_lib_dir() -> Path:
    """The directory holding ejabberd-<version>/ebin (the ERL_LIBS ejabberdctl sets)."""
    found = sorted(Path("/usr/lib").glob("*/ejabberd-*/ebin")) + sorted(
        Path("/usr/lib").glob("ejabberd-*/ebin")
    )
    if not found:
        raise ServerError("ejabberd's Erlang libraries are not under /usr/lib")
    return found[-1].parent.parent


XmppServer = Prosody | Ejabberd
