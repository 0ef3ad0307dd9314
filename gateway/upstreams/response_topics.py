"""Which MQTT 5 Response Topics a command may name.

A command can ask for its results on a Response Topic of its own choosing. Publishing there
lends the gateway's publish rights to whoever may send it a command, so a Response Topic is
taken only when it lies in an allowed namespace:

* ``<prefix>/responses/...``: the gateway's own result namespace (an application subscribes
  to ``<prefix>/responses/<its name>/#`` and names a topic below it);
* below one of ``mqtt.response_topic_prefixes``, configured by the operator.

Even there, never: a topic starting with ``$`` (broker topics such as ``$SYS``), a command
topic of any gateway (``.../devices/<device>/command``), a ``status`` topic (any gateway's
birth/Last Will and health), or a topic with wildcards, a NUL or empty text. Another gateway's
prefix is outside both namespaces unless the operator lists it on purpose.

Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

RESPONSES_LEVEL = "responses"
MAX_TOPIC_BYTES = 65_535


def responses_namespace(prefix: str) -> str:
    return f"{prefix}/{RESPONSES_LEVEL}/"


@dataclass(frozen=True, slots=True)
class ResponseTopicPolicy:
    prefix: str  # the gateway's topic prefix
    extra_prefixes: tuple[str, ...] = ()

    @classmethod
    def of(cls, prefix: str, extra_prefixes: Iterable[str] = ()) -> ResponseTopicPolicy:
        return cls(prefix, tuple(extra_prefixes))

    def refusal(self, topic: str) -> str | None:
        """None when results may be published on ``topic``, else why not (for the log)."""
        problem = topic_problem(topic)
        if problem is not None:
            return problem
        if topic.startswith("$"):
            return "a broker topic ($...)"
        levels = topic.split("/")
        if levels[-1] == "command" and len(levels) >= 3 and levels[-3] == "devices":
            return "a device command topic"
        if "status" in levels:
            return "a status topic"
        allowed = (responses_namespace(self.prefix), *self.extra_prefixes)
        if not any(topic.startswith(namespace) for namespace in allowed):
            return "outside the allowed response namespaces"
        return None


def topic_problem(topic: str) -> str | None:
    """Why ``topic`` cannot be published to at all, or None."""
    if not topic:
        return "an empty topic"
    if "+" in topic or "#" in topic:
        return "a topic with wildcards"
    if "\x00" in topic:
        return "a topic with NUL"
    try:
        size = len(topic.encode("utf-8"))
    except UnicodeEncodeError:
        return "a topic that is not valid Unicode"
    if size > MAX_TOPIC_BYTES:
        return "a topic longer than MQTT allows"
    return None


def prefix_problems(prefix: str, extra_prefixes: Iterable[str]) -> list[str]:
    """Configuration problems of ``mqtt.response_topic_prefixes`` (one line each)."""
    problems = []
    for index, extra in enumerate(extra_prefixes):
        where = f"mqtt.response_topic_prefixes[{index}]"
        problem = topic_problem(extra)
        if problem is not None:
            problems.append(f"{where}: {problem}, got {extra!r}")
        elif extra.startswith("$"):
            problems.append(f"{where}: broker topics ($...) cannot take results, got {extra!r}")
        elif not extra.endswith("/"):
            problems.append(f"{where}: must end with '/', got {extra!r}")
        elif (f"{prefix}/").startswith(extra) or extra.startswith(f"{prefix}/devices/"):
            problems.append(
                f"{where}: would allow the gateway's own command and status topics, got {extra!r}"
            )
    return problems
