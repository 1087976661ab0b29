"""MQTT 5.0 with paho-mqtt (and raw packets where paho has no API): reason codes,
session and message expiry, request/response, user properties, topic aliases both
ways, subscription identifiers, no-local, retain-as-published, retain handling, will
delay, assigned client id, server keep alive, receive maximum, shared subscriptions,
server DISCONNECT with a reason.

Runs against another broker with ``BAEDAL_TEST_MQTT_URL=host:port`` (see mqtt_helpers.py).
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import (
    PacketTypes,
    Properties,
    Target,
    baedal_only,
    differs_from_mosquitto,
    quiet,
    start_target,
    wait_until,
)
from paho.mqtt.subscribeoptions import SubscribeOptions

from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import Connect, Parser, Publish, Subscribe, Subscription, encode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path, mqtt_max_keep_alive=30)


class Raw:
    """A client speaking packets through the codec, for what paho cannot do."""

    def __init__(self, target: Target, connect: Connect) -> None:
        if target.username is not None:
            connect.username, connect.password = target.username, (target.password or "").encode()
        self.sock = socket.create_connection((target.host, target.port), 10)
        self.parser = Parser(version=5)
        self.pending: list[codec.Packet] = []
        self.sock.sendall(encode(connect, 5))

    def send(self, packet: codec.Packet) -> None:
        self.sock.sendall(encode(packet, 5))

    def read(self, timeout: float = 5.0) -> codec.Packet | None:
        deadline = time.monotonic() + timeout
        while not self.pending:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                return None
            if not data:
                return None
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def publish_props(**values: object) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    for name, value in values.items():
        setattr(props, name, value)
    return props


def test_request_response_with_correlation_and_user_properties(target: Target) -> None:
    responder = target.client(version=5)
    requester = target.client(version=5)
    responder.subscribe("svc/request", 1)
    requester.subscribe("svc/reply/me", 1)
    requester.publish("svc/request", b"ping", 1, properties=publish_props(
        ResponseTopic="svc/reply/me", CorrelationData=b"\x00\x01id", UserProperty=[("k", "v")],
        ContentType="text/plain"))
    request = responder.wait_messages(1)[0]
    assert request.properties.ResponseTopic == "svc/reply/me"
    assert request.properties.CorrelationData == b"\x00\x01id"
    assert ("k", "v") in request.properties.UserProperty
    assert request.properties.ContentType == "text/plain"
    responder.publish(request.properties.ResponseTopic, b"pong", 1, properties=publish_props(
        CorrelationData=request.properties.CorrelationData))
    reply = requester.wait_messages(1)[0]
    assert reply.payload == b"pong" and reply.properties.CorrelationData == b"\x00\x01id"
    responder.disconnect()
    requester.disconnect()


def test_session_expiry(target: Target) -> None:
    kept = target.client("exp-kept", version=5, clean=False, session_expiry=300)
    kept.subscribe("exp/a", 1)
    kept.disconnect()
    gone = target.client("exp-gone", version=5, clean=False, session_expiry=0)
    gone.subscribe("exp/b", 1)
    gone.disconnect()
    again = target.client("exp-kept", version=5, clean=False, session_expiry=300)
    assert again.connack is not None and again.connack[0] is True
    again.disconnect()
    again = target.client("exp-gone", version=5, clean=False, session_expiry=0)
    assert again.connack is not None and again.connack[0] is False
    again.disconnect()
    short = target.client("exp-short", version=5, clean=False, session_expiry=1)
    short.subscribe("exp/c", 1)
    short.disconnect()
    time.sleep(2.5)  # the expiry interval is the behaviour under test
    short = target.client("exp-short", version=5, clean=False, session_expiry=1)
    assert short.connack is not None and short.connack[0] is False
    short.disconnect()


def test_message_expiry_while_away(target: Target) -> None:
    sub = target.client("mexp", version=5, clean=False, session_expiry=300)
    sub.subscribe("mexp/t", 1)
    sub.disconnect()
    pub = target.client(version=5)
    pub.publish("mexp/t", b"short", 1, properties=publish_props(MessageExpiryInterval=1))
    pub.publish("mexp/t", b"long", 1, properties=publish_props(MessageExpiryInterval=600))
    time.sleep(2.2)  # let the first one expire
    sub = target.client("mexp", version=5, clean=False, session_expiry=300)
    got = sub.wait_messages(1)
    quiet()
    assert [m.payload for m in sub.messages] == [b"long"]
    assert 0 < got[0].properties.MessageExpiryInterval <= 600
    sub.disconnect()
    pub.disconnect()


def test_subscription_identifier_no_local_retain_as_published(target: Target) -> None:
    c = target.client(version=5)
    props = Properties(PacketTypes.SUBSCRIBE)
    props.SubscriptionIdentifier = 42
    c.subscribe("opt/sid", options=SubscribeOptions(qos=1), properties=props)
    c.subscribe("opt/local", options=SubscribeOptions(qos=1, noLocal=True))
    c.subscribe("opt/rap", options=SubscribeOptions(qos=1, retainAsPublished=True))
    other = target.client(version=5)
    other.publish("opt/sid", b"sid", 1)
    c.publish("opt/local", b"mine", 1)  # not echoed back (no-local)
    other.publish("opt/local", b"theirs", 1)
    other.publish("opt/rap", b"rap", 1, retain=True)
    got = {m.payload: m for m in c.wait_messages(3)}
    quiet()
    assert set(got) == {b"sid", b"theirs", b"rap"}
    assert got[b"sid"].properties.SubscriptionIdentifier == [42]
    assert got[b"rap"].retain
    other.publish("opt/rap", b"", 1, retain=True)
    c.disconnect()
    other.disconnect()


def test_retain_handling(target: Target) -> None:
    pub = target.client(version=5)
    pub.publish("rh/x", b"kept", 1, retain=True)
    never = target.client(version=5)
    never.subscribe("rh/x", options=SubscribeOptions(qos=1, retainHandling=2))
    if_new = target.client(version=5)
    if_new.subscribe("rh/x", options=SubscribeOptions(qos=1, retainHandling=1))
    if_new.subscribe("rh/x", options=SubscribeOptions(qos=1, retainHandling=1))  # not new
    assert if_new.wait_messages(1)[0].payload == b"kept"
    quiet()
    assert never.messages == [] and len(if_new.messages) == 1
    pub.publish("rh/x", b"", 1, retain=True)
    for c in (pub, never, if_new):
        c.disconnect()


def test_will_delay_cancelled_by_reconnect(target: Target) -> None:
    watcher = target.client(version=5)
    watcher.subscribe("wd/#", 1)
    will_props = Properties(PacketTypes.WILLMESSAGE)
    will_props.WillDelayInterval = 3
    c = target.client("wd-client", version=5, clean=False, session_expiry=60,
                      will=("wd/gone", b"bye", 1, False), will_properties=will_props)
    c.drop()
    back = target.client("wd-client", version=5, clean=False, session_expiry=60)
    time.sleep(3.5)  # past the will delay
    assert watcher.messages == []
    immediate = target.client(version=5, will=("wd/now", b"bye", 1, False))
    immediate.drop()
    assert watcher.wait_messages(1)[0].topic == "wd/now"
    back.disconnect()
    watcher.disconnect()


def test_shared_subscription_splits_work(target: Target) -> None:
    a = target.client(version=5)
    b = target.client(version=4)  # also for 3.1.1 clients, as mosquitto accepts it
    a.subscribe("$share/workers/jobs/#", 1)
    b.subscribe("$share/workers/jobs/#", 1)
    pub = target.client(version=5)
    for i in range(40):
        pub.publish("jobs/n", f"{i}".encode(), 1)
    wait_until(lambda: len(a.messages) + len(b.messages) >= 40, 10, "40 shared deliveries")
    quiet()
    together = sorted(int(m.payload) for m in a.messages + b.messages)
    assert together == list(range(40))
    assert a.messages and b.messages  # the work is split
    for c in (a, b, pub):
        c.disconnect()


@differs_from_mosquitto("an invalid filter in SUBSCRIBE closes the connection (no SUBACK 0x8F)")
def test_puback_no_matching_subscribers_and_suback_codes(target: Target) -> None:
    raw = Raw(target, Connect("rc-raw", version=5))
    assert isinstance(raw.read(), codec.Connack)
    raw.send(Publish("nobody/listens", b"x", 1, packet_id=1))
    ack = raw.read()
    assert isinstance(ack, codec.Ack) and ack.packet_id == 1
    assert ack.reason_code == codec.NO_MATCHING_SUBSCRIBERS
    raw.send(Subscribe(2, [Subscription("ok/+", 2), Subscription("bad/#/x", 1)]))
    suback = raw.read()
    assert isinstance(suback, codec.Suback)
    assert suback.reason_codes[0] == 2 and suback.reason_codes[1] >= 0x80
    raw.close()


@differs_from_mosquitto("never sends topic aliases to clients (allowed: the server MAY)")
def test_topic_aliases_both_ways(target: Target) -> None:
    raw = Raw(target, Connect("alias-raw", version=5, properties={"topic_alias_maximum": 4}))
    connack = raw.read()
    assert isinstance(connack, codec.Connack)
    assert connack.properties.get("topic_alias_maximum", 0) >= 1
    raw.send(Subscribe(1, [Subscription("al/#", 0)]))
    assert isinstance(raw.read(), codec.Suback)
    # client -> broker: set alias 1, then use it with an empty topic
    raw.send(Publish("al/one", b"first", 0, properties={"topic_alias": 1}))
    raw.send(Publish("", b"second", 0, properties={"topic_alias": 1}))
    first, second = raw.read(), raw.read()
    assert isinstance(first, Publish) and isinstance(second, Publish)
    # broker -> client: the first delivery names the topic and sets an alias, the
    # next uses the alias with an empty topic
    assert first.topic == "al/one" and "topic_alias" in first.properties
    assert second.topic == "" and second.properties["topic_alias"] == first.properties["topic_alias"]
    assert second.payload == b"second"
    raw.close()


def test_receive_maximum_limits_inflight(target: Target) -> None:
    raw = Raw(target, Connect("rm-raw", version=5, properties={"receive_maximum": 2}))
    assert isinstance(raw.read(), codec.Connack)
    raw.send(Subscribe(1, [Subscription("rm/t", 1)]))
    assert isinstance(raw.read(), codec.Suback)
    pub = target.client(version=5)
    for i in range(5):
        pub.publish("rm/t", f"{i}".encode(), 1)
    got = [raw.read(), raw.read()]
    assert all(isinstance(p, Publish) for p in got)
    assert raw.read(0.5) is None  # two unacknowledged: no third
    raw.send(codec.Ack(codec.PUBACK, got[0].packet_id))  # type: ignore[union-attr]
    third = raw.read()
    assert isinstance(third, Publish) and third.payload == b"2"
    raw.close()
    pub.disconnect()


def test_assigned_client_id_and_server_keep_alive(target: Target) -> None:
    raw = Raw(target, Connect("", version=5, keep_alive=600))
    connack = raw.read()
    assert isinstance(connack, codec.Connack) and connack.reason_code == 0
    assert connack.properties.get("assigned_client_identifier")
    if target.broker is not None:  # mosquitto's max_keepalive is not set here
        assert connack.properties.get("server_keep_alive") == 30
    raw.close()


@baedal_only
def test_takeover_disconnect_carries_reason(target: Target) -> None:
    first = Raw(target, Connect("take-raw", version=5))
    assert isinstance(first.read(), codec.Connack)
    second = target.client("take-raw", version=5)
    disconnect = first.read()
    assert isinstance(disconnect, codec.Disconnect)
    assert disconnect.reason_code == codec.SESSION_TAKEN_OVER
    first.close()
    second.disconnect()
