"""gateway/lora.py on the simulated radio: ack only what is stored, resend lost commands,
command references that never repeat across restarts."""

from __future__ import annotations

from pathlib import Path

from gateway.model import Command
from gateway.protocol.downlink import (
    REF_RESERVATION,
    CommandQueued,
    DownlinkScheduler,
    DownlinkSettings,
    ReserveCommandRefs,
)
from gateway.protocol.dutycycle import DutyCycle
from gateway.protocol.frames import Flag
from gateway.protocol.join import JoinSettings
from gateway.protocol.session import NetworkCore
from gateway.store.command_refs import CommandRefStore
from tests.bridge_fixtures import (
    AckDropper,
    MqttWatcher,
    assert_no_gaps,
    fast_config,
    max_counter,
    running_gateway,
    world_of,
)
from tests.servers import Mosquitto


async def test_reports_the_outbox_refuses_are_not_acked_and_arrive_later(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 2)
        assert gateway.bridge is not None and gateway.bridge.outbox is not None
        assert gateway.lora is not None
        outbox = gateway.bridge.outbox
        limit, outbox.max_queued_rows = outbox.max_queued_rows, 0  # every write refused
        await watcher.wait_until(
            lambda: gateway.lora.counters["report_not_stored"] >= 2, "refused reports"
        )
        # The refused report was never acked: the node still holds it and sends it again.
        head = node.pending[0]
        assert head.attempts >= 2
        published = {r["data"]["counter"] for r in watcher.reports()[device]}
        assert head.body["counter"] not in published
        stuck = max_counter(watcher.reports()[device])
        outbox.max_queued_rows = limit
        await watcher.wait_for_counters([device], stuck + 3)
    watcher.drop()
    assert_no_gaps(watcher.reports(), [device], ids_once=True)


async def test_a_command_whose_downlink_is_lost_is_sent_again_and_executed_once(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(fast_config(tmp_path, mosquitto, nodes=1)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        dropper = AckDropper(node, 1, only=Flag.COMMAND)
        watcher.command(device, {"id": "again", "action": "ping", "ttl_s": 20})
        assert await watcher.wait_for_final(device, "again") == "executed"
        assert dropper.left == 0
        sent = [e for e in gateway.state.frames.recent() if e.type == "command"]
        assert len(sent) >= 2
        # The same command delivered again (an application retrying) is not executed again.
        watcher.command(device, {"id": "again", "action": "ping", "ttl_s": 20})
        await watcher.wait_until(
            lambda: watcher.statuses(device, "again").count("executed") == 2,
            "the stored result repeated",
        )
    watcher.drop()
    assert [c.action for c in node.executed] == ["ping"]
    assert watcher.statuses(device, "again") == ["accepted", "sent", "executed", "executed"]


def scheduler_on(store: CommandRefStore) -> DownlinkScheduler:
    return DownlinkScheduler(
        NetworkCore(JoinSettings(), {}),
        DownlinkSettings(),
        time_on_air=lambda size: 0.05,
        frequency_hz=lambda: 868_100_000,
        duty=DutyCycle(),
        ref_reservations=store.load(),
    )


def queue(scheduler: DownlinkScheduler, store: CommandRefStore, device: str) -> int:
    """Queue a command as LoraNetwork.execute does (reserving on disk when asked); its ref."""
    command = Command("c", device, "ping", {}, deadline=60.0, origin="mqtt")
    while True:
        first = scheduler.command_queued(command)[0]
        if isinstance(first, CommandQueued):
            return first.ref
        assert isinstance(first, ReserveCommandRefs)
        store.reserve(first.device, first.up_to)
        scheduler.refs_reserved(first.device, first.up_to)


def test_command_references_never_repeat_across_restarts(tmp_path: Path) -> None:
    device = "lora-0016c00100000001"
    store = CommandRefStore.open(tmp_path)
    scheduler = scheduler_on(store)
    first = [queue(scheduler, store, device) for _ in range(3)]
    assert first == [0, 1, 2]
    assert queue(scheduler, store, "lora-0016c00100000002") == 0  # per device
    restarted = CommandRefStore.open(tmp_path)  # a restart, without a clean shutdown
    after = queue(scheduler_on(restarted), restarted, device)
    assert after not in first
    assert after == REF_RESERVATION  # the next block reserved on disk
    assert restarted.load()[device] == 2 * REF_RESERVATION


async def test_a_silent_node_goes_offline_and_comes_back_online(
    tmp_path: Path, mosquitto: Mosquitto
) -> None:
    import asyncio

    from gateway.config import parse_config
    from tests.bridge_fixtures import fast_settings

    settings = fast_settings(tmp_path / "data", mosquitto.port, nodes=1)
    settings["join"]["offline_after_s"] = 2
    watcher = MqttWatcher(mosquitto)
    watcher.connect()
    async with running_gateway(parse_config(settings)) as gateway:
        node = world_of(gateway).nodes[0]
        device = node.device_id
        await watcher.wait_for_counters([device], 1)
        node.stop()

        def events() -> list[str]:
            return [
                m.json()["event"] for m in watcher.messages if m.topic.endswith(f"{device}/event")
            ]

        await watcher.wait_until(lambda: "offline" in events(), "offline event")
        assert events().count("offline") == 1
        availability = [m.payload for m in watcher.messages if m.topic.endswith("/availability")]
        assert availability[-1] == b"offline"
        task = asyncio.create_task(node.run())
        try:
            await watcher.wait_until(lambda: events()[-1:] == ["online"], "online event")
        finally:
            node.stop()
            await task
    watcher.drop()
