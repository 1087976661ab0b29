"""MQTT meets AMQP in ``amq.topic`` (RabbitMQ's MQTT plugin mapping: ``/`` ↔ ``.``,
``+`` ↔ ``*``), with properties mapped both ways; sessions and retained messages
survive a broker restart.  Baedal only (pika talks to the same broker)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest
from mqtt_helpers import EXTERNAL_MQTT, PacketTypes, Properties, Target, start_target, wait_until

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(bool(EXTERNAL_MQTT), reason="Baedal-specific (AMQP side, restart)"),
]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path)


def test_amqp_publish_reaches_mqtt_subscriber(target: Target) -> None:
    sub = target.client(version=5)
    sub.subscribe("home/+/temp", 1)
    conn = pika.BlockingConnection(pika.URLParameters(target.broker.amqp_url))
    ch = conn.channel()
    ch.basic_publish(
        "amq.topic",
        "home.kitchen.temp",
        b"21.5",
        pika.BasicProperties(
            content_type="text/plain",
            correlation_id="req-1",
            reply_to="replies.kitchen",
            headers={"unit": "C", "n": 3},
            delivery_mode=2,
            expiration="60000",
        ),
    )
    got = sub.wait_messages(1)[0]
    assert got.topic == "home/kitchen/temp" and got.payload == b"21.5"
    props = got.properties
    assert props.ContentType == "text/plain"
    assert props.CorrelationData == b"req-1"
    assert props.ResponseTopic == "replies/kitchen"
    assert dict(props.UserProperty) == {"unit": "C", "n": "3"}
    assert 0 < props.MessageExpiryInterval <= 60
    conn.close()
    sub.disconnect()


def test_mqtt_publish_reaches_amqp_consumer(target: Target) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(target.broker.amqp_url))
    ch = conn.channel()
    queue = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(queue, "amq.topic", "plant.*.pressure")
    pub = target.client(version=5)
    props = Properties(PacketTypes.PUBLISH)
    props.ContentType = "application/json"
    props.CorrelationData = b"corr-9"
    props.ResponseTopic = "answers/here"
    props.UserProperty = [("site", "north")]
    props.MessageExpiryInterval = 120
    pub.publish("plant/7/pressure", b'{"bar": 2}', 1, properties=props)
    method, header, body = None, None, None
    deadline = time.monotonic() + 10
    while method is None and time.monotonic() < deadline:
        method, header, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            time.sleep(0.02)
    assert method is not None, "no message on the AMQP side"
    assert method.routing_key == "plant.7.pressure" and body == b'{"bar": 2}'
    assert header.content_type == "application/json"
    assert header.correlation_id == "corr-9"
    assert header.reply_to == "answers.here"
    assert header.delivery_mode == 2  # QoS 1: persistent
    assert header.expiration == "120000"
    assert header.headers["site"] == "north"
    assert header.headers["x-mqtt-publish-qos"] == 1
    conn.close()
    pub.disconnect()


def test_session_and_retained_survive_restart(tmp_path: Path) -> None:
    from baedal import Broker

    data = tmp_path / "data"
    with Broker(host="127.0.0.1", port=0, data_dir=data) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        sub = target.client("restart-sub", clean=False)
        sub.subscribe("r/#", 2)
        sub.disconnect()
        pub = target.client()
        pub.publish("r/1", "queued-1", 1)
        pub.publish("r/2", "queued-2", 2)
        pub.publish("r/state", "retained", 1, retain=True)
        pub.disconnect()
    with Broker(host="127.0.0.1", port=0, data_dir=data) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        sub = target.client("restart-sub", clean=False)
        assert sub.connack is not None and sub.connack[0] is True
        got = sub.wait_messages(3)  # r/state matches r/# too
        assert sorted(m.payload for m in got) == [b"queued-1", b"queued-2", b"retained"]
        late = target.client()
        late.subscribe("r/state", 1)
        assert late.wait_messages(1)[0].payload == b"retained"
        # the restored subscription still routes new messages
        pub = target.client()
        pub.publish("r/3", "live", 1)
        wait_until(lambda: b"live" in sub.payloads(), 10, "live message after restart")
        for c in (sub, late, pub):
            c.disconnect()


def test_subscription_visible_in_management_api(tmp_path: Path) -> None:
    import requests

    from baedal import Broker

    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path / "m", http_port=0) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        sub = target.client("mgmt-api", clean=False)
        sub.subscribe("x/+", 1)
        queues = requests.get(f"{broker.http_url}/api/queues", auth=("guest", "guest"), timeout=10).json()
        names = {q["name"]: q for q in queues}
        assert names["mqtt-subscription-mgmt-apiqos1"]["durable"] is True
        bindings = requests.get(
            f"{broker.http_url}/api/queues/%2F/mqtt-subscription-mgmt-apiqos1/bindings",
            auth=("guest", "guest"), timeout=10,
        ).json()
        assert any(b["source"] == "amq.topic" and b["routing_key"] == "x.*" for b in bindings)
        sub.disconnect()


def test_qos2_handshake_state_survives_restart(tmp_path: Path) -> None:
    """Exactly once across a restart, both directions, with raw packets: a QoS 2
    PUBLISH resent after the restart is not routed twice, and a PUBREL sent before the
    restart is sent again."""
    import socket as socketlib

    from baedal import Broker
    from baedal.protocols.mqtt import codec
    from baedal.protocols.mqtt.codec import (
        Ack,
        Connect,
        Parser,
        Publish,
        Subscribe,
        Subscription,
        encode,
    )

    def raw(port: int, client_id: str) -> tuple[socketlib.socket, Parser, list[codec.Packet]]:
        sock = socketlib.create_connection(("127.0.0.1", port), 10)
        sock.sendall(encode(Connect(client_id, clean_start=False, username="guest", password=b"guest")))
        parser = Parser(version=4)
        return sock, parser, []

    def read(sock: socketlib.socket, parser: Parser, pending: list[codec.Packet]) -> codec.Packet:
        sock.settimeout(10)
        while not pending:
            data = sock.recv(65536)
            assert data, "connection closed"
            pending.extend(parser.feed(data))
        return pending.pop(0)

    data = tmp_path / "data"
    with Broker(host="127.0.0.1", port=0, data_dir=data) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        watcher = target.client("qos2-watcher", clean=False)
        watcher.subscribe("q2/in", 1)
        watcher.disconnect()
        sender, sp, spend = raw(broker.mqtt_port, "qos2-sender")
        assert isinstance(read(sender, sp, spend), codec.Connack)
        sender.sendall(encode(Publish("q2/in", b"once", 2, packet_id=7)))
        assert read(sender, sp, spend) == Ack(codec.PUBREC, 7)
        receiver, rp, rpend = raw(broker.mqtt_port, "qos2-receiver")
        assert isinstance(read(receiver, rp, rpend), codec.Connack)
        receiver.sendall(encode(Subscribe(1, [Subscription("q2/out", 2)])))
        assert isinstance(read(receiver, rp, rpend), codec.Suback)
        pub = target.client()
        pub.publish("q2/out", b"to-receiver", 2)
        delivered = read(receiver, rp, rpend)
        assert isinstance(delivered, Publish) and delivered.qos == 2
        receiver.sendall(encode(Ack(codec.PUBREC, delivered.packet_id or 0)))
        assert read(receiver, rp, rpend) == Ack(codec.PUBREL, delivered.packet_id or 0)
        pub.disconnect()
        sender.close()
        receiver.close()
    with Broker(host="127.0.0.1", port=0, data_dir=data) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        sender, sp, spend = raw(broker.mqtt_port, "qos2-sender")
        connack = read(sender, sp, spend)
        assert isinstance(connack, codec.Connack) and connack.session_present
        sender.sendall(encode(Publish("q2/in", b"once", 2, dup=True, packet_id=7)))
        assert read(sender, sp, spend) == Ack(codec.PUBREC, 7)
        sender.sendall(encode(Ack(codec.PUBREL, 7)))
        assert read(sender, sp, spend) == Ack(codec.PUBCOMP, 7)
        receiver, rp, rpend = raw(broker.mqtt_port, "qos2-receiver")
        assert isinstance(read(receiver, rp, rpend), codec.Connack)
        assert read(receiver, rp, rpend) == Ack(codec.PUBREL, delivered.packet_id or 0)
        receiver.sendall(encode(Ack(codec.PUBCOMP, delivered.packet_id or 0)))
        watcher = target.client("qos2-watcher", clean=False)
        watcher.wait_messages(1)
        quiet_seconds = 0.5
        time.sleep(quiet_seconds)  # a second copy would arrive by now
        assert watcher.payloads() == [b"once"]
        watcher.disconnect()
        sender.close()
        receiver.close()


def test_http_publish_reaches_mqtt_subscriber(tmp_path: Path) -> None:
    import requests

    from baedal import Broker

    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path / "h", http_port=0) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        sub = target.client(version=5)
        sub.subscribe("web/#", 1)
        answer = requests.post(
            f"{broker.http_url}/api/exchanges/%2F/amq.topic/publish",
            json={"routing_key": "web.hook", "payload": "from http", "payload_encoding": "string",
                  "properties": {"content_type": "text/plain", "headers": {"origin": "curl"}}},
            auth=("guest", "guest"), timeout=10,
        )
        assert answer.status_code == 200 and answer.json() == {"routed": True}
        got = sub.wait_messages(1)[0]
        assert got.topic == "web/hook" and got.payload == b"from http"
        assert got.properties.ContentType == "text/plain"
        assert ("origin", "curl") in got.properties.UserProperty
        sub.disconnect()


def test_dollar_topics_and_non_topic_keys_from_amqp(target: Target) -> None:
    everything = target.client()
    everything.subscribe("#", 0)
    system = target.client()
    system.subscribe("$SYS/#", 0)
    plus_first = target.client()
    plus_first.subscribe("+/broker/load", 0)
    conn = pika.BlockingConnection(pika.URLParameters(target.broker.amqp_url))
    ch = conn.channel()
    ch.basic_publish("amq.topic", "$SYS.broker.load", b"sys")
    ch.basic_publish("amq.topic", "odd.#", b"not a topic name")
    ch.basic_publish("amq.topic", "plain.broker.load", b"plain")
    conn.close()
    assert [m.topic for m in system.wait_messages(1)] == ["$SYS/broker/load"]
    wait_until(lambda: everything.payloads() == [b"plain"], 10, "only the plain topic for #")
    wait_until(lambda: plus_first.payloads() == [b"plain"], 10, "only the plain topic for +/...")
    for c in (everything, system, plus_first):
        c.disconnect()


def test_shared_subscription_of_a_persistent_member_survives_restart(tmp_path: Path) -> None:
    from baedal import Broker

    data = tmp_path / "data"
    with Broker(host="127.0.0.1", port=0, data_dir=data) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        durable = target.client("share-durable", clean=False)
        durable.subscribe("$share/g1/work/#", 1)
        clean = target.client("share-clean")
        clean.subscribe("$share/g1/work/#", 1)
        lonely = target.client("share-lonely")  # a group of clean members only
        lonely.subscribe("$share/g2/work/#", 1)
        for c in (durable, clean, lonely):
            c.disconnect()
        wait_until(lambda: "mqtt-share-g2-work.#" not in broker.core.vhosts["/"].queues, 5,
                   "the clean-only group's queue gone with its last member")
        pub = target.client()
        for i in range(5):
            pub.publish("work/item", f"{i}", 1)
        pub.disconnect()
    with Broker(host="127.0.0.1", port=0, data_dir=data) as broker:
        target = Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
        durable = target.client("share-durable", clean=False)
        assert durable.connack is not None and durable.connack[0] is True
        got = durable.wait_messages(5)
        assert sorted(m.payload for m in got) == [f"{i}".encode() for i in range(5)]
        pub = target.client()
        pub.publish("work/item", b"live", 1)
        wait_until(lambda: b"live" in durable.payloads(), 10, "a live shared delivery")
        # leaving the group (unsubscribe) by its last member removes the queue
        durable.paho.unsubscribe("$share/g1/work/#")
        wait_until(lambda: "mqtt-share-g1-work.#" not in broker.core.vhosts["/"].queues, 5,
                   "the group's queue gone with its last member")
        durable.disconnect()
        pub.disconnect()
