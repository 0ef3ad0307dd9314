"""Online/offline of LoRa nodes from when they were last heard; times are plain numbers."""

from __future__ import annotations

from gateway.protocol.presence import Presence


def test_a_silent_node_is_reported_offline_once_and_online_when_heard_again() -> None:
    presence = Presence(offline_after_s=60.0)
    assert not presence.heard("a", 0.0)
    assert not presence.heard("b", 30.0)
    assert presence.silent(60.0) == []
    assert presence.silent(61.0) == [("a", 61.0)]
    assert presence.silent(62.0) == [("a", 62.0)]  # not reported yet (the event failed)
    presence.reported_offline("a")
    assert presence.silent(100.0) == [("b", 70.0)]
    assert presence.heard("a", 120.0)  # back: report online
    assert not presence.heard("a", 130.0)
    assert presence.silent(150.0) == [("b", 120.0)]


def test_offline_after_zero_never_reports_offline() -> None:
    presence = Presence(offline_after_s=0.0)
    presence.heard("a", 0.0)
    assert presence.silent(1e9) == []
