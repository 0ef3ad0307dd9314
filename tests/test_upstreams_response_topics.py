"""Which MQTT 5 Response Topics a command may name (gateway/upstreams/response_topics.py)."""

from __future__ import annotations

import pytest

from gateway.upstreams.response_topics import ResponseTopicPolicy, prefix_problems

PREFIX = "duogate/gw1"
POLICY = ResponseTopicPolicy.of(PREFIX, ["apps/"])


@pytest.mark.parametrize(
    "topic",
    [f"{PREFIX}/responses/app-1", f"{PREFIX}/responses/app/deep/er", "apps/x", "apps/a/b/c"],
)
def test_topics_in_the_allowed_namespaces_are_taken(topic: str) -> None:
    assert POLICY.refusal(topic) is None


@pytest.mark.parametrize(
    ("topic", "why"),
    [
        ("", "empty"),
        ("$SYS/evil", "broker topic"),
        ("$share/g/apps/x", "broker topic"),
        (f"{PREFIX}/status", "status"),
        (f"{PREFIX}/status/health", "status"),
        (f"{PREFIX}/devices/lora-01/command", "command topic"),
        (f"{PREFIX}/devices/lora-01/command/result", "outside"),
        ("duogate/gw2/responses/x", "outside"),
        ("duogate/gw2/devices/lora-01/command", "command topic"),
        ("apps/gw/devices/lora-01/command", "command topic"),
        ("apps/x/status", "status"),
        ("apps/+/x", "wildcards"),
        ("apps/#", "wildcards"),
        ("apps/\x00", "NUL"),
        ("apps/\ud800", "Unicode"),
        ("apps/" + "x" * 70_000, "longer"),
        ("elsewhere/x", "outside"),
        (f"{PREFIX}/responses", "outside"),  # the namespace itself is not below it
    ],
)
def test_topics_outside_them_or_of_a_forbidden_kind_are_refused(topic: str, why: str) -> None:
    refusal = POLICY.refusal(topic)
    assert refusal is not None and why in refusal


def test_without_configured_prefixes_only_the_gateways_own_namespace_is_allowed() -> None:
    policy = ResponseTopicPolicy.of(PREFIX)
    assert policy.refusal(f"{PREFIX}/responses/a") is None
    assert policy.refusal("apps/x") is not None


@pytest.mark.parametrize(
    ("prefixes", "problem"),
    [
        (["apps/"], None),
        (["apps/", "site/replies/"], None),
        (["apps"], "must end with '/'"),
        (["apps/#/"], "wildcards"),
        (["$SYS/"], "broker topics"),
        (["duogate/"], "own command and status topics"),
        ([f"{PREFIX}/"], "own command and status topics"),
        ([f"{PREFIX}/devices/x/"], "own command and status topics"),
        ([""], "empty"),
    ],
)
def test_configured_prefixes_are_checked(prefixes: list[str], problem: str | None) -> None:
    problems = prefix_problems(PREFIX, prefixes)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0]
        assert problems[0].startswith("mqtt.response_topic_prefixes[")
