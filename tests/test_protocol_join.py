"""Joins and the address pool, driven through NetworkCore with node-side frames."""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.sim.node_frames import NodeSession, join_request, open_join_answer
from gateway.model import lora_device_id
from gateway.protocol import crypto
from gateway.protocol.frames import FrameRejected, JoinAccept, JoinRefusedFrame
from gateway.protocol.join import PUBLIC_LAB_KEY, AddressPool, DeviceCredentials, JoinSettings
from gateway.protocol.session import (
    JoinAccepted,
    JoinRefused,
    LeaseReclaimed,
    NetworkCore,
    ReportReceived,
)

EXAMPLES = int(os.environ.get("DUOGATE_FUZZ_EXAMPLES", "300"))
DAY = 24 * 3600.0


def root_key_of(eui: int) -> bytes:
    return eui.to_bytes(8, "big") * 2


def counting_random() -> Callable[[int], bytes]:
    numbers = itertools.count(1)
    return lambda size: next(numbers).to_bytes(size, "big")


def make_core(
    euis: range | list[int] = range(1, 11),
    **overrides: object,
) -> NetworkCore:
    join_settings = JoinSettings(**{"lease_inactive_s": 7 * DAY, **overrides})  # type: ignore[arg-type]
    registry = {eui: DeviceCredentials(root_key_of(eui)) for eui in euis}
    return NetworkCore(join_settings, registry, random_bytes=counting_random())


def nonce(n: int) -> bytes:
    return n.to_bytes(8, "big")


def join(
    core: NetworkCore, eui: int, dev_nonce: bytes, now: float, root: bytes | None = None
) -> tuple[list[object], JoinAccept | JoinRefusedFrame]:
    root = root or root_key_of(eui)
    actions = core.receive(join_request(eui, root, dev_nonce), now)
    answer = open_join_answer(actions[-1].frame, eui, root, dev_nonce)  # type: ignore[attr-defined]
    return actions, answer


def joined(core: NetworkCore, eui: int, dev_nonce: bytes, now: float) -> NodeSession:
    _, answer = join(core, eui, dev_nonce, now)
    assert isinstance(answer, JoinAccept)
    return NodeSession.from_accept(eui, root_key_of(eui), dev_nonce, answer)


def test_a_thousand_joins_get_a_thousand_unique_addresses() -> None:
    core = make_core(range(1, 1001))
    addresses = set()
    for eui in range(1, 1001):
        actions, answer = join(core, eui, nonce(eui), now=1000.0 + eui)
        assert isinstance(answer, JoinAccept)
        (accepted,) = actions
        assert isinstance(accepted, JoinAccepted)
        assert accepted.lease.address == answer.address
        assert accepted.lease.device_id == lora_device_id(eui)
        addresses.add(answer.address)
    assert len(addresses) == 1000
    assert all(1 <= a <= 0xFFFE for a in addresses)
    assert core.free_addresses == 0xFFFE - 1000
    assert len(core.take_dirty()) == 1000


def test_interleaved_joins_and_uplinks_keep_sessions_apart() -> None:
    core = make_core(range(1, 51))
    sessions = [joined(core, eui, nonce(eui), 10.0) for eui in range(1, 51)]
    for node in reversed(sessions):
        _, phy = node.report({"eui": node.eui})
        (action,) = core.receive(phy, 11.0)
        assert isinstance(action, ReportReceived)
        assert action.device_id == lora_device_id(node.eui)
        assert action.body == {"eui": node.eui}


def test_repeated_request_gets_the_byte_identical_accept() -> None:
    core = make_core()
    first = core.receive(join_request(1, root_key_of(1), nonce(7)), 10.0)
    core.take_dirty()
    again = core.receive(join_request(1, root_key_of(1), nonce(7)), 11.0)
    assert isinstance(first[0], JoinAccepted) and isinstance(again[0], JoinAccepted)
    assert again[0].frame == first[0].frame
    assert again[0].repeated and not first[0].repeated
    assert again[0].lease.generation == first[0].lease.generation == 1


def test_an_older_nonce_is_a_replay() -> None:
    core = make_core()
    joined(core, 1, nonce(1), 10.0)
    joined(core, 1, nonce(2), 20.0)
    joined(core, 1, nonce(3), 30.0)
    for old in (nonce(1), nonce(2)):
        with pytest.raises(FrameRejected) as caught:
            core.receive(join_request(1, root_key_of(1), old), 40.0)
        assert caught.value.reason == "join_replay"
        assert caught.value.device_id == lora_device_id(1)
    assert core.lease(lora_device_id(1)).generation == 3  # type: ignore[union-attr]


def test_rejoin_keeps_the_address_and_retires_the_old_keys() -> None:
    core = make_core()
    old = joined(core, 1, nonce(1), 10.0)
    joined(core, 2, nonce(1), 10.0)
    _, phy = old.report({"n": 1})
    core.receive(phy, 11.0)
    actions, answer = join(core, 1, nonce(2), 12.0)
    assert isinstance(answer, JoinAccept)
    assert answer.address == old.address
    assert isinstance(actions[0], JoinAccepted) and actions[0].rejoin
    _, stale = old.report({"n": 2})
    with pytest.raises(FrameRejected) as caught:
        core.receive(stale, 13.0)
    assert caught.value.reason == "bad_tag"
    new = NodeSession.from_accept(1, root_key_of(1), nonce(2), answer)
    _, fresh = new.report({"n": 3})
    (report,) = core.receive(fresh, 14.0)
    assert isinstance(report, ReportReceived)
    assert report.counter == 0  # counters start again with the new keys
    assert report.report_id != f"{lora_device_id(1)}:{old.gw_nonce.hex()}:0"


def test_pool_exhaustion_is_refused_on_air() -> None:
    core = make_core(pool_start=10, pool_end=12)
    for eui in (1, 2, 3):
        joined(core, eui, nonce(1), 10.0)
    actions, answer = join(core, 4, nonce(1), 11.0)
    assert answer == JoinRefusedFrame(reason=1, retry_after_s=600)
    (refused,) = actions
    assert isinstance(refused, JoinRefused)
    assert (refused.reason, refused.device_id) == ("pool_exhausted", lora_device_id(4))
    assert core.lease(lora_device_id(4)) is None
    # The refused nonce is spent: a replay of that request is not answered again.
    with pytest.raises(FrameRejected) as caught:
        core.receive(join_request(4, root_key_of(4), nonce(1)), 12.0)
    assert caught.value.reason == "join_replay"


def test_inactive_lease_is_reclaimed_only_when_the_pool_is_exhausted() -> None:
    core = make_core(pool_start=10, pool_end=12)
    joined(core, 1, nonce(1), 100.0)
    joined(core, 2, nonce(1), 50.0)  # inactive the longest
    # Long after every lease expired, a free address is still preferred over reclaiming.
    actions, answer = join(core, 3, nonce(1), 100 * DAY)
    assert isinstance(answer, JoinAccept) and answer.address == 12
    assert not any(isinstance(a, LeaseReclaimed) for a in actions)
    actions, answer = join(core, 4, nonce(1), 100 * DAY)
    assert isinstance(answer, JoinAccept)
    reclaimed = actions[0]
    assert isinstance(reclaimed, LeaseReclaimed)
    assert (reclaimed.device_id, reclaimed.address) == (lora_device_id(2), 11)
    assert answer.address == 11
    assert core.lease(lora_device_id(2)) is None
    # EUI 1 is next oldest; EUI 3 is fresh and never taken.
    actions, answer = join(core, 5, nonce(1), 100 * DAY)
    assert isinstance(actions[0], LeaseReclaimed) and actions[0].eui == 1
    actions, answer = join(core, 6, nonce(1), 100 * DAY)
    assert isinstance(answer, JoinRefusedFrame)


def test_active_leases_are_never_reclaimed() -> None:
    core = make_core(pool_start=1, pool_end=2)
    node = joined(core, 1, nonce(1), 0.0)
    joined(core, 2, nonce(1), 0.0)
    _, phy = node.report({})
    core.receive(phy, 8 * DAY)  # EUI 1 active again; EUI 2 has expired
    _, answer = join(core, 3, nonce(1), 8 * DAY)
    assert isinstance(answer, JoinAccept) and answer.address == 2
    _, answer = join(core, 4, nonce(1), 8 * DAY)
    assert isinstance(answer, JoinRefusedFrame)


def test_a_reclaimed_device_rejoins_with_a_new_generation() -> None:
    core = make_core(pool_start=1, pool_end=1)
    first = joined(core, 1, nonce(1), 0.0)
    joined(core, 2, nonce(1), 30 * DAY)
    with pytest.raises(FrameRejected) as caught:
        core.receive(first.report({})[1], 30 * DAY)
    assert caught.value.reason == "bad_tag"  # the address now belongs to EUI 2
    core.release(lora_device_id(2))
    actions, answer = join(core, 1, nonce(2), 31 * DAY)
    assert isinstance(answer, JoinAccept)
    assert isinstance(actions[0], JoinAccepted)
    assert actions[0].lease.generation == 2
    assert not actions[0].rejoin


def test_forged_join_flood_allocates_nothing() -> None:
    core = make_core()
    for n in range(500):
        eui = 1 + n % 10
        forged = join_request(eui, bytes(16), nonce(n))  # wrong root key
        with pytest.raises(FrameRejected) as caught:
            core.receive(forged, 10.0)
        assert caught.value.reason == "bad_tag"
        unknown = join_request(1000 + n, bytes(16), nonce(n))
        with pytest.raises(FrameRejected) as caught:
            core.receive(unknown, 10.0)
        assert caught.value.reason == "unknown_eui"
    assert core.leases() == []
    assert core.free_addresses == 0xFFFE
    assert core.take_dirty() == []
    joined(core, 1, nonce(1), 11.0)  # the forged nonces did not burn a real one


def test_open_join_derives_root_keys_from_the_lab_key() -> None:
    lab = bytes(range(16))
    core = make_core([], open_join=True, lab_key=lab)
    root = crypto.lab_root_key(lab, 0xABCDEF)
    _, answer = join(core, 0xABCDEF, nonce(1), 1.0, root=root)
    assert isinstance(answer, JoinAccept)
    with pytest.raises(FrameRejected) as caught:
        core.receive(join_request(0xABCDF0, bytes(16), nonce(1)), 2.0)
    assert caught.value.reason == "bad_tag"
    with pytest.raises(ValueError):
        JoinSettings(open_join=True, lab_key=bytes(15))


def test_open_join_without_a_lab_key_uses_the_public_one() -> None:
    core = make_core([], open_join=True)
    root = crypto.lab_root_key(PUBLIC_LAB_KEY, 77)
    _, answer = join(core, 77, nonce(1), 1.0, root=root)
    assert isinstance(answer, JoinAccept)
    closed = make_core([])
    with pytest.raises(FrameRejected) as caught:
        closed.receive(join_request(77, root, nonce(1)), 1.0)
    assert caught.value.reason == "unknown_eui"


def test_registered_keys_take_precedence_over_open_join() -> None:
    core = make_core([5], open_join=True, lab_key=bytes(16))
    lab_root = crypto.lab_root_key(bytes(16), 5)
    with pytest.raises(FrameRejected):
        core.receive(join_request(5, lab_root, nonce(1)), 1.0)
    joined(core, 5, nonce(2), 1.0)


def test_disabled_device_is_refused_and_loses_its_lease() -> None:
    registry = {1: DeviceCredentials(root_key_of(1))}
    core = NetworkCore(JoinSettings(), registry, random_bytes=counting_random())
    node = joined(core, 1, nonce(1), 1.0)
    assert core.set_registry({1: DeviceCredentials(root_key_of(1), enabled=False)}) == [
        lora_device_id(1)
    ]
    with pytest.raises(FrameRejected) as caught:
        core.receive(node.report({})[1], 2.0)
    assert caught.value.reason == "unknown_address"
    actions, answer = join(core, 1, nonce(2), 3.0)
    assert answer == JoinRefusedFrame(reason=2, retry_after_s=600)
    assert isinstance(actions[0], JoinRefused) and actions[0].reason == "device_disabled"


def test_encrypting_devices_learn_it_from_the_accept() -> None:
    registry = {1: DeviceCredentials(root_key_of(1), encrypt=True)}
    core = NetworkCore(JoinSettings(rx_delay_s=2.5), registry)
    _, answer = join(core, 1, nonce(1), 1.0)
    assert isinstance(answer, JoinAccept)
    assert answer.encrypt and answer.rx_delay_ds == 25


def test_address_pool_reuses_released_addresses_lowest_first() -> None:
    pool = AddressPool(5, 9)
    assert [pool.allocate() for _ in range(5)] == [5, 6, 7, 8, 9]
    assert pool.allocate() is None
    pool.release(8)
    pool.release(6)
    pool.release(6)
    pool.release(100)  # outside the pool: ignored
    assert pool.free_count == 2
    assert [pool.allocate(), pool.allocate(), pool.allocate()] == [6, 8, None]
    pool.release(7)
    assert pool.claim(7) and not pool.claim(7)
    assert pool.allocate() is None


operations = st.lists(
    st.tuples(
        st.integers(1, 12),  # EUI
        st.integers(0, 5),  # nonce choice
        st.floats(0, 3 * DAY),  # time step
        st.booleans(),  # send an uplink afterwards
    ),
    max_size=60,
)


@settings(max_examples=max(50, EXAMPLES // 3), deadline=None)
@given(ops=operations)
def test_addresses_stay_unique_whatever_the_join_order(
    ops: list[tuple[int, int, float, bool]],
) -> None:
    core = make_core(range(1, 13), pool_start=100, pool_end=107, lease_inactive_s=DAY)
    now = 0.0
    sessions: dict[int, NodeSession] = {}
    for eui, choice, step, uplink in ops:
        now += step
        try:
            actions, answer = join(core, eui, nonce(choice), now)
        except FrameRejected as exc:
            assert exc.reason == "join_replay"
        else:
            if isinstance(answer, JoinAccept):
                sessions[eui] = NodeSession.from_accept(
                    eui, root_key_of(eui), nonce(choice), answer
                )
            for action in actions:
                if isinstance(action, LeaseReclaimed):
                    sessions.pop(action.eui, None)
        if uplink and eui in sessions:
            try:
                core.receive(sessions[eui].report({})[1], now)
            except FrameRejected as exc:
                assert exc.reason == "bad_tag"  # an old session after a repeated old accept
        leases = core.leases()
        addresses = [lease.address for lease in leases]
        assert len(addresses) == len(set(addresses))
        assert all(100 <= a <= 107 for a in addresses)
        assert core.free_addresses == 8 - len(leases)


# --------------------------------------------------------------------------- fleet adoption


def test_a_session_adopted_from_another_gateway_verifies_its_uplinks() -> None:
    owner = make_core(pool_start=0x0100, pool_end=0x01FF)
    neighbour = make_core(pool_start=0x0200, pool_end=0x02FF)
    node = joined(owner, 1, nonce(1), 1000.0)
    for _ in range(3):
        owner.receive(node.report({"n": 1})[1], 1001.0)
    record = owner.record(lora_device_id(1))
    assert record is not None and record.address is not None
    assert 0x0100 <= record.address <= 0x01FF
    info = neighbour.adopt(record)
    assert info is not None and info.address == record.address
    _, frame = node.report({"n": 2})
    (report,) = neighbour.receive(frame, 1002.0)
    assert isinstance(report, ReportReceived) and not report.duplicate
    assert report.report_id.startswith(f"{lora_device_id(1)}:{info.session_id}:")
    with pytest.raises(FrameRejected, match="bad_tag"):
        neighbour.receive(frame[:-4] + b"\0" * 4, 1002.0)


def test_adopting_the_same_session_again_keeps_what_this_gateway_learnt() -> None:
    owner, neighbour = make_core(), make_core()
    node = joined(owner, 1, nonce(1), 1000.0)
    device = lora_device_id(1)
    neighbour.adopt(owner.record(device))  # type: ignore[arg-type]
    for _ in range(4):
        neighbour.receive(node.report({})[1], 1001.0)
    stale = owner.record(device)
    assert stale is not None
    neighbour.adopt(stale, dl_from=5000)
    mine = neighbour.record(device)
    assert mine is not None and mine.up_last == 3  # not back to the stale record's
    ack = neighbour.build_downlink(device, 3, None)
    assert node.open_downlink(ack).counter >= 5000


def test_a_newer_session_from_another_gateway_replaces_the_old_one() -> None:
    a = make_core(pool_start=0x0100, pool_end=0x01FF)
    b = NetworkCore(
        JoinSettings(pool_start=0x0200, pool_end=0x02FF),
        {1: DeviceCredentials(root_key_of(1)), 2: DeviceCredentials(root_key_of(2))},
        random_bytes=lambda size: b"\x77" * size,
    )
    old = joined(a, 1, nonce(1), 1000.0)
    b.adopt(a.record(lora_device_id(1)))  # type: ignore[arg-type]
    new = joined(b, 1, nonce(2), 1100.0)  # a rejoin there: it keeps its address
    a.adopt(b.record(lora_device_id(1)))  # type: ignore[arg-type]
    lease = a.lease(lora_device_id(1))
    assert lease is not None and lease.address == new.address == old.address
    assert lease.session_id == "77" * 8
    with pytest.raises(FrameRejected, match="bad_tag"):
        a.receive(old.report({})[1], 1101.0)
    (report,) = a.receive(new.report({})[1], 1101.0)
    assert isinstance(report, ReportReceived)
    with pytest.raises(FrameRejected, match="join_replay"):
        join(a, 1, nonce(1), 1102.0)  # the old join nonce is known here too
