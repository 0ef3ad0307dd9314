"""Leases persisted in SQLite and the network core rebuilt from them."""

from __future__ import annotations

from pathlib import Path

import pytest

from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.model import lora_device_id
from gateway.protocol.frames import FrameRejected, JoinAccept
from gateway.protocol.join import DeviceCredentials, JoinSettings
from gateway.protocol.session import NetworkCore, ReportReceived
from gateway.store.db import StoreError
from gateway.store.leases import LeaseStore, open_core

SETTINGS = JoinSettings(lease_inactive_s=3600)


def root_key_of(eui: int) -> bytes:
    return (eui * 7919).to_bytes(16, "big")


def registry_for(euis: range) -> dict[int, DeviceCredentials]:
    return {eui: DeviceCredentials(root_key_of(eui)) for eui in euis}


def join(core: NetworkCore, eui: int, dev_nonce: bytes, now: float) -> NodeSession:
    actions = core.receive(join_request(eui, root_key_of(eui), dev_nonce), now)
    answer = open_join_answer(actions[-1].frame, eui, root_key_of(eui), dev_nonce)  # type: ignore[union-attr]
    assert isinstance(answer, JoinAccept)
    return NodeSession.from_accept(eui, root_key_of(eui), dev_nonce, answer)


def test_a_thousand_leases_survive_a_restart(tmp_path: Path) -> None:
    euis = range(0x70B3D50000000001, 0x70B3D50000000001 + 1000)
    registry = registry_for(euis)
    store = LeaseStore.open(tmp_path)
    core = open_core(store, SETTINGS, registry)
    nodes = [join(core, eui, eui.to_bytes(8, "big"), 1000.0) for eui in euis]
    last_frames = {}
    for node in nodes:
        _, phy = node.report({"counter": 1})
        core.receive(phy, 1001.0)
        last_frames[node.eui] = phy
        node.open_downlink(core.build_downlink(lora_device_id(node.eui), 0, None))
    assert store.flush(core) == 1000
    store.close()

    reopened = LeaseStore.open(tmp_path)
    restarted = open_core(reopened, SETTINGS, registry)
    leases = {lease.eui: lease for lease in restarted.leases()}
    assert len(leases) == 1000
    assert len({lease.address for lease in leases.values()}) == 1000
    for node in nodes:
        assert leases[node.eui].address == node.address
        (dup,) = restarted.receive(last_frames[node.eui], 2000.0)
        assert isinstance(dup, ReportReceived) and dup.duplicate
        _, phy = node.report({"counter": 2})
        (new,) = restarted.receive(phy, 2001.0)
        assert isinstance(new, ReportReceived) and not new.duplicate and new.counter == 1
        downlink = node.open_downlink(restarted.build_downlink(lora_device_id(node.eui), 1, None))
        assert downlink.counter > 0
    assert reopened.skipped_rows == 0
    assert restarted.free_addresses == 0xFFFE - 1000


def test_join_history_outlives_a_reclaimed_lease(tmp_path: Path) -> None:
    settings = JoinSettings(pool_start=1, pool_end=1, lease_inactive_s=60)
    registry = registry_for(range(1, 3))
    store = LeaseStore.open(tmp_path)
    core = open_core(store, settings, registry)
    join(core, 1, b"\x01" * 8, 0.0)
    join(core, 1, b"\x02" * 8, 10.0)
    join(core, 2, b"\x01" * 8, 1000.0)  # reclaims EUI 1's address
    store.flush(core)
    restarted = open_core(LeaseStore.open(tmp_path), settings, registry)
    assert restarted.lease(lora_device_id(1)) is None
    assert restarted.lease(lora_device_id(2)) is not None
    with pytest.raises(FrameRejected) as caught:
        restarted.receive(join_request(1, root_key_of(1), b"\x01" * 8), 2000.0)
    assert caught.value.reason == "join_replay"
    restarted.release(lora_device_id(2))
    actions = restarted.receive(join_request(1, root_key_of(1), b"\x03" * 8), 2000.0)
    assert actions[0].lease.generation == 3  # type: ignore[union-attr]


def test_a_failed_write_keeps_the_records_pending(tmp_path: Path) -> None:
    registry = registry_for(range(1, 4))
    store = LeaseStore.open(tmp_path)
    core = open_core(store, SETTINGS, registry)
    for eui in range(1, 4):
        join(core, eui, b"\x09" * 8, 5.0)
    store.close()
    with pytest.raises(StoreError):
        store.flush(core)
    second = LeaseStore.open(tmp_path)
    assert second.flush(core) == 3
    assert {record.eui for record in second.load()} == {1, 2, 3}


def test_unreadable_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    registry = registry_for(range(1, 3))
    store = LeaseStore.open(tmp_path)
    core = open_core(store, SETTINGS, registry)
    join(core, 1, b"\x01" * 8, 5.0)
    join(core, 2, b"\x01" * 8, 5.0)
    store.flush(core)
    store.conn.execute("UPDATE lora_leases SET up_recent = x'0102' WHERE eui = ?", (f"{2:016x}",))
    records = store.load()
    assert [record.eui for record in records] == [1]
    assert store.skipped_rows == 1


def test_devices_removed_from_the_registry_lose_their_lease_on_restart(tmp_path: Path) -> None:
    store = LeaseStore.open(tmp_path)
    core = open_core(store, SETTINGS, registry_for(range(1, 3)))
    join(core, 1, b"\x01" * 8, 5.0)
    node = join(core, 2, b"\x01" * 8, 5.0)
    store.flush(core)
    restarted = open_core(store, SETTINGS, registry_for(range(1, 2)))
    assert restarted.lease(lora_device_id(2)) is None
    with pytest.raises(FrameRejected) as caught:
        restarted.receive(node.report({})[1], 6.0)
    assert caught.value.reason == "unknown_address"
    rows = dict(store.conn.execute("SELECT eui, address FROM lora_leases").fetchall())
    assert rows == {f"{1:016x}": 1, f"{2:016x}": None}


def test_full_snapshot_round_trips_every_field(tmp_path: Path) -> None:
    registry = {1: DeviceCredentials(root_key_of(1), encrypt=True)}
    store = LeaseStore.open(tmp_path)
    core = open_core(store, SETTINGS, registry)
    node = join(core, 1, b"\x05" * 8, 5.0)
    for n in range(20):
        core.receive(node.report({"n": n})[1], 6.0 + n)
    core.build_downlink(lora_device_id(1), 19, None)
    store.save(core.records())
    assert store.load() == core.records()
