"""MQTT 3.1.1 with paho-mqtt: QoS 0/1/2, retained, will, wildcards, $-topics, sessions.

Runs against an in-process Baedal, or against another broker with
``BAEDAL_TEST_MQTT_URL=host:port`` (see mqtt_helpers.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import Target, baedal_only, quiet, start_target, wait_until

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publish_subscribe_each_qos(target: Target, qos: int) -> None:
    sub = target.client()
    assert sub.subscribe("sensors/+/temp", qos) == [qos]
    pub = target.client()
    for i in range(20):
        pub.publish(f"sensors/{i % 3}/temp", f"m{i}", qos)
    got = sub.wait_messages(20)
    assert [m.payload for m in got] == [f"m{i}".encode() for i in range(20)]
    assert {m.qos for m in got} == {qos}
    assert got[0].topic == "sensors/0/temp"
    pub.disconnect()
    sub.disconnect()


def test_delivered_qos_is_the_lower_of_publish_and_subscription(target: Target) -> None:
    sub = target.client()
    sub.subscribe("q/low", 1)
    pub = target.client()
    pub.publish("q/low", "two", 2)
    pub.publish("q/low", "zero", 0)
    got = sub.wait_messages(2)
    assert sorted((m.payload, m.qos) for m in got) == [(b"two", 1), (b"zero", 0)]
    pub.disconnect()
    sub.disconnect()


def test_hash_wildcard_and_dollar_topics(target: Target) -> None:
    sub = target.client()
    sub.subscribe("#", 0)
    sub.subscribe("a/#", 0)
    pub = target.client()
    pub.publish("a/b/c", "abc", 1)
    got = sub.wait_messages(1)
    assert got[0].topic == "a/b/c"
    # ($-topics and leading wildcards: test_mqtt_cross_protocol.py, where an AMQP
    # publisher puts a message on one; MQTT clients may not publish to them.)
    pub.disconnect()
    sub.disconnect()


def test_retained_message_delivered_on_subscribe_and_cleared(target: Target) -> None:
    pub = target.client()
    pub.publish("state/door", "open", 1, retain=True)
    late = target.client()
    late.subscribe("state/#", 1)
    got = late.wait_messages(1)
    assert got[0].payload == b"open" and got[0].retain
    # a live delivery does not carry the retain flag
    pub.publish("state/door", "closed", 1, retain=True)
    got = late.wait_messages(2)
    assert got[1].payload == b"closed" and not got[1].retain
    pub.publish("state/door", b"", 1, retain=True)  # clears it
    later = target.client()
    later.subscribe("state/#", 1)
    quiet()
    assert later.messages == []
    for c in (pub, late, later):
        c.disconnect()


def test_will_published_on_unclean_close_only(target: Target) -> None:
    watcher = target.client()
    watcher.subscribe("wills/#", 1)
    clean = target.client(will=("wills/clean", b"gone", 1, False))
    clean.disconnect()
    dirty = target.client(will=("wills/dirty", b"gone", 1, False))
    dirty.drop()
    got = watcher.wait_messages(1)
    assert [m.topic for m in got] == ["wills/dirty"]
    quiet()
    assert len(watcher.messages) == 1
    watcher.disconnect()


def test_persistent_session_keeps_subscriptions_and_queues_messages(target: Target) -> None:
    sub = target.client("persist-1", clean=False)
    assert sub.connack is not None and sub.connack[0] is False
    sub.subscribe("jobs/#", 1)
    sub.disconnect()
    pub = target.client()
    for i in range(10):
        pub.publish("jobs/x", f"j{i}", 1)
    again = target.client("persist-1", clean=False)
    assert again.connack is not None and again.connack[0] is True  # session present
    got = again.wait_messages(10)
    assert [m.payload for m in got] == [f"j{i}".encode() for i in range(10)]
    again.disconnect()
    # a clean session discards it
    fresh = target.client("persist-1", clean=True)
    assert fresh.connack is not None and fresh.connack[0] is False
    fresh.disconnect()
    pub.publish("jobs/x", "after", 1)
    back = target.client("persist-1", clean=False)
    assert back.connack is not None and back.connack[0] is False
    quiet()
    assert back.messages == []
    back.disconnect()
    pub.disconnect()


def test_session_takeover_by_client_id(target: Target) -> None:
    first = target.client("same-id")
    second = target.client("same-id")
    wait_until(lambda: first.disconnected is not None, 10, "first connection closed")
    second.subscribe("t/take", 0)
    pub = target.client()
    pub.publish("t/take", "x", 1)
    second.wait_messages(1)
    first.paho.loop_stop()
    second.disconnect()
    pub.disconnect()


def test_unsubscribe_stops_delivery(target: Target) -> None:
    sub = target.client()
    sub.subscribe("u/1", 1)
    pub = target.client()
    pub.publish("u/1", "a", 1)
    sub.wait_messages(1)
    result, mid = sub.paho.unsubscribe("u/1")
    quiet()
    pub.publish("u/1", "b", 1)
    quiet()
    assert sub.payloads() == [b"a"]
    sub.disconnect()
    pub.disconnect()


@baedal_only
def test_login_is_checked(target: Target) -> None:
    bad = target.client(password="wrong", connect=False)
    bad.connect()
    assert bad.connack is not None and bad.connack[1] != 0
    bad.paho.loop_stop()
    anonymous = target.client(username=None, password=None, connect=False)
    anonymous.connect()
    assert anonymous.connack is not None and anonymous.connack[1] != 0
    anonymous.paho.loop_stop()


@baedal_only
def test_subscription_queues_are_core_queues(target: Target) -> None:
    persistent = target.client("mgmt-p", clean=False)
    persistent.subscribe("m/a", 1)
    clean = target.client("mgmt-c")
    clean.subscribe("m/b", 0)
    vhost = target.broker.core.vhosts["/"]
    queues = target.broker.call(lambda: {n: (q.durable, q.exclusive) for n, q in vhost.queues.items()})
    assert queues["mqtt-subscription-mgmt-pqos1"] == (True, False)
    assert queues["mqtt-subscription-mgmt-cqos0"] == (False, True)
    clean.disconnect()
    wait_until(lambda: "mqtt-subscription-mgmt-cqos0" not in vhost.queues, 5, "clean session queue gone")
    persistent.disconnect()
    assert "mqtt-subscription-mgmt-pqos1" in vhost.queues
