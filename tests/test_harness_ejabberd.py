"""The harness's ejabberd is real: STARTTLS required, accounts that survive a SIGKILL, and
nothing left running (no epmd, no Erlang node name) once it is killed."""

from __future__ import annotations

import socket
import subprocess

import pytest
import xmpp

from tests.servers import Ejabberd, ServerError


def stream_features(server: Ejabberd) -> bytes:
    with socket.create_connection((server.host, server.port), timeout=5) as sock:
        sock.sendall(
            b"<?xml version='1.0'?><stream:stream to='localhost' version='1.0' "
            b"xmlns='jabber:client' xmlns:stream='http://etherx.jabber.org/streams'>"
        )
        features = b""
        while b"</stream:features>" not in features:
            chunk = sock.recv(4096)
            assert chunk, f"ejabberd closed the stream after {features!r}"
            features += chunk
    return features


def logs_in(server: Ejabberd, user: str, password: str) -> bool:
    client = xmpp.Client(server.domain, debug=[])
    try:
        if client.connect(server=(server.host, server.port)) != "tls":
            return False
        return bool(client.auth(user, password, resource="harness"))
    finally:
        if client.isConnected():
            client.disconnect()


def test_ejabberd_requires_tls_before_any_login(ejabberd: Ejabberd):
    features = stream_features(ejabberd)
    assert b"<starttls" in features and b"<required" in features
    assert b"<mechanisms" not in features, "SASL offered before TLS"


def test_an_account_made_just_before_a_kill_survives_the_restart(ejabberd: Ejabberd):
    assert ejabberd.create_user("alice", "secret") == "alice@localhost"
    port = ejabberd.port
    ejabberd.kill()
    with pytest.raises(OSError):
        socket.create_connection((ejabberd.host, port), timeout=0.5)
    ejabberd.start()
    assert ejabberd.port == port
    assert logs_in(ejabberd, "alice", "secret")
    assert not logs_in(ejabberd, "alice", "wrong")
    with pytest.raises(ServerError, match="already registered"):
        ejabberd.create_user("alice", "again")


def pids_of(name: str) -> set[str]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True)
    return set(found.stdout.split())


def test_nothing_is_left_running_after_a_kill(tmp_path):
    port_mappers = pids_of("epmd")
    server = Ejabberd(tmp_path / "ejabberd")
    server.start()
    try:
        server.create_user("alice", "secret")
        assert server.proc is not None
        group = server.proc.pid
    finally:
        server.kill()
    left = subprocess.run(["pgrep", "-g", str(group)], capture_output=True, text=True)
    assert left.stdout == "", f"processes left in the server's group: {left.stdout}"
    assert pids_of("epmd") <= port_mappers, "an Erlang port mapper was started"


def test_a_broken_configuration_is_reported(tmp_path):
    server = Ejabberd(tmp_path / "broken")
    server.config_path.write_text("hosts: [localhost]\nlisten: 12\n")
    with pytest.raises(ServerError, match="ejabberd"):
        server.start(timeout=20)
    assert not server.running
