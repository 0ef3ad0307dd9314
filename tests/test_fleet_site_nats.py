"""The fleet site (tests/fleet_site_fixtures.py) on a 3-node NATS cluster, each gateway on its
own cluster node: overlapping coverage, a walking node, a killed gateway, and the cluster node
of gw-b killed mid-run and started again (its clients' will messages are never sent: gw-b keeps
serving its nodes on air and publishes what it kept once it is back)."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pytest

from tests.fleet_site_fixtures import FAILOVER_BOUND_S, KILLED, Figures, play_site
from tests.servers import NatsCluster, nats_server_binary

# The site on NATS is not part of `make test` yet: see docs/FLEET.md, "Measured"; `make fleet`
# runs it (DUOGATE_FLEET_NATS=1).
pytestmark = [
    pytest.mark.timeout(400),
    pytest.mark.skipif(
        os.environ.get("DUOGATE_FLEET_NATS") != "1", reason="the NATS site runs with make fleet"
    ),
]
CLUSTER_NODE_DOWN_S = 10.0
GATEWAY_NODES = {"gw-a": 0, "gw-b": 1, "gw-c": 2}
KILLED_NODE = GATEWAY_NODES["gw-b"]


@pytest.fixture(scope="module")
def figures(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Figures]:
    if nats_server_binary() is None:
        pytest.skip("nats-server is not installed: run `make test` (installs it via apt-get)")
    workdir = tmp_path_factory.mktemp("fleet-nats")
    cluster = NatsCluster(workdir / "nats")
    cluster.start()
    restarted: list[threading.Thread] = []

    def kill_and_restart() -> None:
        cluster.kill(KILLED_NODE)
        thread = threading.Timer(CLUSTER_NODE_DOWN_S, cluster.start, (KILLED_NODE,))
        thread.start()
        restarted.append(thread)

    try:
        ports = {name: cluster.mqtt_port(node) for name, node in GATEWAY_NODES.items()}
        played = play_site(workdir, "nats", ports, cluster.mqtt_port(0), kill_and_restart)
        for thread in restarted:
            thread.join()
    finally:
        cluster.stop()
    print(played.line())
    yield played


def test_no_report_acked_on_air_is_lost_and_none_is_published_twice(figures: Figures) -> None:
    assert figures.acked > 5 * figures.nodes, figures.explain()
    assert figures.lost == [], figures.explain()
    assert figures.duplicated == [], figures.explain()


def test_every_command_is_executed_once_or_expired(figures: Figures) -> None:
    assert figures.command_faults == [], figures.explain()
    assert figures.commands["executed"] >= 10, figures.explain()


def test_the_walking_node_keeps_reporting_with_at_most_one_rejoin(figures: Figures) -> None:
    assert 1 <= figures.walker_joins <= 2, figures.explain()
    assert figures.walker_lost == [], figures.explain()


def test_the_killed_gateways_nodes_are_served_by_a_neighbour_within_the_bound(
    figures: Figures,
) -> None:
    assert figures.failover_s, f"{KILLED} served no node\n{figures.explain()}"
    assert figures.orphans == [], figures.explain()
    assert max(figures.failover_s.values()) <= FAILOVER_BOUND_S, figures.explain()


def test_the_gateway_on_the_killed_cluster_node_came_back_and_lost_nothing(
    figures: Figures,
) -> None:
    assert figures.reconnects["gw-b"] >= 2, figures.explain()
    assert figures.lost == [], figures.explain()
