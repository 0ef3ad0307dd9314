"""The fleet's own messages through the broker, sealed with the fleet key (``FleetSeal``: a
broker reader can neither read nor forge them): session records, retained and published again
until the broker took them; sightings, best effort; a gateway's sync marker. Messages that
arrive are opened here; one that is not the fleet's is refused, counted and logged."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

from gateway.fleet.link import FleetLink
from gateway.protocol.fleet import (
    FleetMessageRejected,
    FleetSeal,
    SessionRecord,
    Sighting,
    encode_record,
    encode_sighting,
)
from gateway.tasks import TaskSet

log = logging.getLogger("duogate.fleet")
T = TypeVar("T")


class FleetMessages:
    def __init__(self, link: FleetLink, key: bytes, tasks: TaskSet, counters: dict[str, int]):
        self.link = link
        self.topics = link.topics
        self._seal = FleetSeal(key)
        self._tasks = tasks
        self._counters = counters  # not_published, rejected_messages
        self.unshared: set[str] = set()  # devices whose record did not reach the broker

    def share_record(self, record: SessionRecord) -> None:
        """Publish a device's record (retained); should the broker not take it, it stays in
        ``unshared`` until ``share_again`` gets it there."""
        device = record.device
        topic = self.topics.session(device)
        payload = self._seal.seal(topic, encode_record(record))
        self.unshared.add(device)
        self._tasks.spawn(self._publish(topic, payload, retain=True, shared=device))

    def share_again(self, records: dict[str, SessionRecord]) -> None:
        """Records that did not reach the broker (it was away) are published again."""
        for device in list(self.unshared):
            if device in records:
                self.share_record(records[device])

    def send_sighting(self, sighting: Sighting) -> None:
        topic = self.topics.sightings(sighting.device)
        payload = self._seal.seal(topic, encode_sighting(sighting))
        self._tasks.spawn(self._publish(topic, payload, retain=False, qos=0))

    async def send_marker(self, topic: str, marker: bytes) -> None:
        await self._publish(topic, self._seal.seal(topic, marker), retain=False)

    def open(self, topic: str, payload: bytes, decode: Callable[[bytes], T]) -> T | None:
        """Unseal and decode a fleet message; None (counted, logged) if it is not one."""
        try:
            return decode(self._seal.open(topic, payload))
        except FleetMessageRejected as exc:
            self._counters["rejected_messages"] += 1
            log.warning("fleet: message on %s refused: %s", topic, exc)
            return None

    async def _publish(
        self, topic: str, payload: bytes, *, retain: bool, qos: int = 1, shared: str = ""
    ) -> None:
        try:
            await self.link.publish_raw(topic, payload, qos, retain=retain)
            self.unshared.discard(shared)
        except Exception as exc:
            if shared:
                self.unshared.add(shared)  # published again when the link is back
                log.info("fleet: %s not published yet: %s", topic, exc)
            elif qos:
                log.warning("fleet: %s not published: %s", topic, exc)
            self._counters["not_published"] += 1
