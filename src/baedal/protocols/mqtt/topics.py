"""MQTT topics as ``amq.topic`` routing keys, the way RabbitMQ's MQTT plugin maps them.

A topic's levels are separated by ``/`` in MQTT and by ``.`` in AMQP, so the two
characters are swapped (``a/b.c`` ↔ ``a.b/c``): an AMQP publish to ``amq.topic`` with
key ``a.b`` reaches an MQTT subscriber of ``a/b`` and the other way round.  In filters
``+`` becomes ``*`` and ``#`` stays ``#``.

The topic exchange does the routing; ``matches`` is only needed for what the exchange
cannot know: which of a session's subscriptions matched a message (MQTT 5.0
subscription identifiers, no-local, retain-as-published), the ``$``-topic rule (a
filter starting with a wildcard does not match a topic starting with ``$``), and
retained messages, which live outside queues.
"""

from __future__ import annotations

_TO_KEY = str.maketrans({"/": ".", ".": "/"})
_FILTER_TO_KEY = str.maketrans({"/": ".", ".": "/", "+": "*"})
_TO_TOPIC = str.maketrans({".": "/", "/": "."})

SHARE_PREFIX = "$share/"


def topic_to_key(topic: str) -> str:
    return topic.translate(_TO_KEY)


def key_to_topic(key: str) -> str:
    return key.translate(_TO_TOPIC)


def filter_to_key(topic_filter: str) -> str:
    return topic_filter.translate(_FILTER_TO_KEY)


def split_shared(topic_filter: str) -> tuple[str | None, str]:
    """``$share/<group>/<filter>`` → (group, filter); any other filter → (None, filter).
    Raises ValueError for a malformed share (empty group, wildcard in it, no filter)."""
    if not topic_filter.startswith(SHARE_PREFIX):
        return None, topic_filter
    group, sep, rest = topic_filter[len(SHARE_PREFIX):].partition("/")
    if not group or not sep or not rest or "+" in group or "#" in group:
        raise ValueError(f"malformed shared subscription {topic_filter!r}")
    return group, rest


def matches(topic_filter: str, topic: str) -> bool:
    """Does ``topic_filter`` match ``topic`` (MQTT 4.7, with the ``$`` rule)?"""
    if topic.startswith("$") and topic_filter[:1] in ("+", "#"):
        return False
    f_levels = topic_filter.split("/")
    t_levels = topic.split("/")
    for i, level in enumerate(f_levels):
        if level == "#":
            return True
        if i >= len(t_levels):
            return False
        if level != "+" and level != t_levels[i]:
            return False
    return len(f_levels) == len(t_levels)
