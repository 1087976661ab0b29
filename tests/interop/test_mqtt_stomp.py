"""MQTT meets STOMP in ``amq.topic``: the MQTT topic ``a/b`` is the STOMP destination
``/topic/a.b`` (RabbitMQ's plugins' shared mapping, ``/`` ↔ ``.``).  paho-mqtt (MQTT 5)
on one side, stomp.py on the other, one Baedal in between.  MQTT 5 user properties
become STOMP headers and STOMP headers become user properties; the MQTT content type is
STOMP's ``content-type`` both ways.  Baedal only (mosquitto has no STOMP)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from mqtt_helpers import EXTERNAL_MQTT, PacketTypes, Properties, Target, start_target
from stomp_support import StompEndpoint, connect, disconnect

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(bool(EXTERNAL_MQTT), reason="Baedal-specific (STOMP side)"),
]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path)


def stomp_of(target: Target) -> StompEndpoint:
    assert target.broker.stomp_port, "the broker should listen for STOMP"
    return StompEndpoint("127.0.0.1", target.broker.stomp_port, target.broker.amqp_url, target.broker)


def subscribe_with_receipt(connection: Any, collector: Any, destination: str) -> None:
    """SUBSCRIBE and wait for its RECEIPT, so the topic binding exists before publishing."""
    receipt = f"sub-{uuid.uuid4().hex[:8]}"
    connection.subscribe(destination, id="1", ack="auto", headers={"receipt": receipt})
    collector.wait_receipt(receipt)


@pytest.mark.parametrize("qos", [0, 1])
def test_mqtt_publish_reaches_stomp_subscriber(target: Target, qos: int) -> None:
    connection, collector = connect(stomp_of(target))
    try:
        subscribe_with_receipt(connection, collector, "/topic/a.b")
        pub = target.client(version=5)
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.UserProperty = [("site", "north"), ("unit", "C")]
        pub.publish("a/b", b'{"t": 21.5}', qos, properties=props)
        pub.publish("a/c", b"elsewhere", qos)  # another topic: must not arrive
        pub.publish("a/b", b"last", qos)
        got = collector.wait_messages(2)
        first, last = got[0], got[1]
        assert first.body == '{"t": 21.5}' and last.body == "last"
        assert len(collector.messages) == 2
        assert first.headers["destination"] == "/topic/a.b"
        assert first.headers["content-type"] == "application/json"
        assert first.headers["site"] == "north" and first.headers["unit"] == "C"
        # the unset properties did not invent headers
        assert "site" not in last.headers and "content-type" not in last.headers
        pub.disconnect()
    finally:
        disconnect(connection)


@pytest.mark.parametrize("qos", [0, 1])
def test_stomp_send_reaches_mqtt_subscriber(target: Target, qos: int) -> None:
    sub = target.client(version=5)
    sub.subscribe("a/b", qos)
    other = target.client(version=5)
    other.subscribe("a/+/c", qos)  # must not match a.b
    connection, collector = connect(stomp_of(target))
    try:
        receipt = "send-1"
        connection.send(
            "/topic/a.b",
            "hello from stomp",
            content_type="text/plain",
            headers={"site": "south", "trace": "t-42", "receipt": receipt},
        )
        collector.wait_receipt(receipt)
        got = sub.wait_messages(1)[0]
        assert got.topic == "a/b" and got.payload == b"hello from stomp"
        props = got.properties
        assert props.ContentType == "text/plain"
        user = dict(props.UserProperty)
        assert user["site"] == "south" and user["trace"] == "t-42"
        # the frame's own headers are not message headers
        assert "destination" not in user and "receipt" not in user and "content-length" not in user
        # and a wildcard subscriber (a/+ ↔ a.*) gets it too
        wild = target.client(version=5)
        wild.subscribe("a/+", qos)
        connection.send("/topic/a.b", "second", headers={"receipt": "send-2"})
        collector.wait_receipt("send-2")
        assert [m.payload for m in wild.wait_messages(1)] == [b"second"]
        assert sub.wait_messages(2)[1].payload == b"second"
        assert other.payloads() == []
        for c in (sub, other, wild):
            c.disconnect()
    finally:
        disconnect(connection)


def test_mqtt_3_1_1_subscriber_gets_stomp_body(target: Target) -> None:
    """An MQTT 3.1.1 subscriber has no properties: it gets the body alone."""
    sub = target.client(version=4)
    sub.subscribe("x/y/z", 1)
    connection, collector = connect(stomp_of(target))
    try:
        connection.send("/topic/x.y.z", "plain", headers={"h": "v", "receipt": "r"})
        collector.wait_receipt("r")
        got = sub.wait_messages(1)[0]
        assert got.topic == "x/y/z" and got.payload == b"plain"
        sub.disconnect()
    finally:
        disconnect(connection)
