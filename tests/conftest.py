"""Shared fixtures: real mosquitto, prosody and ejabberd servers, started per test on free
loopback ports.

hil_tests/ imports these too (see hil_tests/conftest.py).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.servers import Ejabberd, Mosquitto, Prosody, XmppServer


def _require(binary: str, package: str) -> None:
    if shutil.which(binary) is None and not Path(f"/usr/sbin/{binary}").exists():
        pytest.fail(f"{binary} is not installed: run `make test` (installs {package} via apt-get)")


@pytest.fixture
def mosquitto(tmp_path: Path) -> Iterator[Mosquitto]:
    """A private mosquitto on a free 127.0.0.1 port; stop/kill/start it freely in the test."""
    _require("mosquitto", "mosquitto")
    broker = Mosquitto(tmp_path / "mosquitto")
    broker.start()
    try:
        yield broker
    finally:
        broker.kill()


@pytest.fixture
def prosody(tmp_path: Path) -> Iterator[Prosody]:
    """A private prosody (TLS required, XEP-0198, XEP-0199, ad-hoc) on a free 127.0.0.1 port."""
    _require("prosody", "prosody")
    server = Prosody(tmp_path / "prosody")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture
def ejabberd(tmp_path: Path) -> Iterator[Ejabberd]:
    """A private ejabberd (STARTTLS required, XEP-0198, XEP-0199, ad-hoc) on a free port."""
    _require("ejabberdctl", "ejabberd")
    server = Ejabberd(tmp_path / "ejabberd")
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(params=["prosody", "ejabberd"])
def xmpp_server(request: pytest.FixtureRequest) -> XmppServer:
    """Each XMPP server users run, in turn: the test runs once against each."""
    return request.getfixturevalue(request.param)
