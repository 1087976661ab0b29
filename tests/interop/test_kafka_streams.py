"""Kafka topics are streams: kafka-python and pika on the same data (issue 11 item 4).

The mapping both ways is documented in docs/design.md ("Kafka records and messages").
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewPartitions

from baedal.app import Broker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path) as running:
        yield running


def amqp(broker: Broker) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))


def consume_stream(connection: pika.BlockingConnection, queue: str, count: int) -> list[tuple[Any, Any, bytes]]:
    channel = connection.channel()
    channel.basic_qos(prefetch_count=50)
    got: list[tuple[Any, Any, bytes]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((method, properties, body))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(queue, on_message, arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(0.05)
    channel.close()
    return got


def kafka_records(bootstrap: str, topic: str, count: int) -> list[Any]:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, consumer_timeout_ms=10_000
    )
    try:
        partitions = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning()
        records = []
        for record in consumer:
            records.append(record)
            if len(records) == count:
                break
        return records
    finally:
        consumer.close()


def test_kafka_records_reach_an_amqp_stream_consumer_with_key_value_and_headers(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    sent_at = int(time.time() * 1000)
    for i in range(5):
        producer.send(
            "k2a",
            key=f"key-{i}".encode(),
            value=f"value-{i}".encode(),
            headers=[("content-type", b"text/plain"), ("trace", f"t{i}".encode())],
            timestamp_ms=sent_at + i,
        )
    producer.send("k2a", value=b"no key, no headers")
    producer.flush()
    producer.close()

    connection = amqp(broker)
    try:
        # The auto-created topic is a stream in "/": a passive declare finds it.
        connection.channel().queue_declare("k2a", passive=True, durable=True)
        got = consume_stream(connection, "k2a", 6)
    finally:
        connection.close()
    assert [body for _m, _p, body in got] == [f"value-{i}".encode() for i in range(5)] + [
        b"no key, no headers"
    ]
    method, properties, _body = got[0]
    assert method.routing_key == "key-0"  # the record key is the routing key
    assert method.exchange == ""
    assert properties.content_type == "text/plain"  # neutral names become properties
    assert properties.headers["trace"] == "t0"  # other headers: strings
    assert properties.headers["x-stream-offset"] == 0
    assert "content-type" not in properties.headers
    assert got[5][0].routing_key == ""
    assert [p.headers["x-stream-offset"] for _m, p, _b in got] == list(range(6))


def test_amqp_publishes_routed_to_a_stream_reach_a_kafka_consumer_with_headers(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    connection = amqp(broker)
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("a2k", durable=True, arguments={"x-queue-type": "stream"})
        channel.exchange_declare("a2k-in", "direct", durable=True)
        channel.queue_bind("a2k", "a2k-in", routing_key="orders")
        before = time.time()
        for i in range(3):
            channel.basic_publish(
                "a2k-in",
                "orders",
                f"body-{i}".encode(),
                pika.BasicProperties(
                    content_type="application/json",
                    correlation_id=f"c{i}",
                    delivery_mode=2,
                    headers={"tenant": "acme", "n": i},
                ),
            )
    finally:
        connection.close()
    records = kafka_records(bootstrap, "a2k", 3)
    assert [r.value for r in records] == [b"body-0", b"body-1", b"body-2"]
    assert [r.offset for r in records] == [0, 1, 2]
    first = records[0]
    assert first.key == b"orders"
    headers = dict(first.headers)
    assert headers["x-baedal-exchange"] == b"a2k-in"
    assert headers["content-type"] == b"application/json"
    assert headers["correlation-id"] == b"c0"
    assert headers["tenant"] == b"acme"
    assert headers["n"] == b"0"
    # The record timestamp is the arrival time (CreateTime, milliseconds).
    assert before * 1000 - 1000 <= first.timestamp <= time.time() * 1000 + 1000


def test_a_stream_declared_over_amqp_is_listed_as_a_kafka_topic_and_grows_into_a_super_stream(
    broker: Broker,
) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    connection = amqp(broker)
    try:
        connection.channel().queue_declare("grown", durable=True, arguments={"x-queue-type": "stream"})
    finally:
        connection.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    producer.send("grown", value=b"before", partition=0).get(10)
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        assert "grown" in admin.list_topics()
        admin.create_partitions({"grown": NewPartitions(total_count=3)})
        described = admin.describe_topics(["grown"])[0]
        assert sorted(p.get("partition", p.get("partition_index")) for p in described["partitions"]) == [0, 1, 2]
    finally:
        admin.close()
    producer.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    producer.send("grown", value=b"to two", partition=2).get(10)
    producer.close()

    def layout() -> tuple[list[str], list[tuple[str, str, Any]]]:
        vhost = broker.core.vhosts["/"]
        streams = sorted(n for n, q in vhost.queues.items() if getattr(q, "is_stream", False))
        bindings = sorted(
            (b.destination.name, b.routing_key, b.arguments.get("x-stream-partition-order"))
            for b in vhost.exchanges["grown"].bindings.values()
        )
        return streams, bindings

    streams, bindings = broker.call(layout)
    # Partition 0 stays the original stream (its data keeps its offsets).
    assert streams == ["grown", "grown-1", "grown-2"]
    assert bindings == [("grown", "0", 0), ("grown-1", "1", 1), ("grown-2", "2", 2)]
    consumed = kafka_records(bootstrap, "grown", 2)
    assert sorted((r.partition, r.value) for r in consumed) == [(0, b"before"), (2, b"to two")]


def test_a_waiting_amqp_stream_consumer_is_woken_by_a_kafka_produce(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    connection = amqp(broker)
    try:
        channel = connection.channel()
        channel.queue_declare("live", durable=True, arguments={"x-queue-type": "stream"})
        channel.basic_qos(prefetch_count=10)
        got: list[bytes] = []
        channel.basic_consume(
            "live",
            lambda ch, m, p, body: (got.append(body), ch.basic_ack(m.delivery_tag)),
            arguments={"x-stream-offset": "next"},
        )
        connection.process_data_events(0.2)
        producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
        try:
            for i in range(3):
                producer.send("live", value=b"late-%d" % i).get(10)
        finally:
            producer.close()
        deadline = time.monotonic() + 10
        while len(got) < 3 and time.monotonic() < deadline:
            connection.process_data_events(0.05)
        assert got == [b"late-0", b"late-1", b"late-2"]
    finally:
        connection.close()


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_an_amqp_stream_consumer_reads_compressed_kafka_batches(broker: Broker, codec: str) -> None:
    from confluent_kafka import Producer

    topic = f"compressed-{codec}"
    producer = Producer({"bootstrap.servers": broker.kafka_bootstrap, "compression.type": codec, "linger.ms": 5})
    values = [b"value-%d-" % i + b"x" * 200 for i in range(20)]
    for value in values:
        producer.produce(topic, value=value, key=b"k")
    assert producer.flush(15) == 0
    connection = amqp(broker)
    try:
        got = consume_stream(connection, topic, 20)
    finally:
        connection.close()
    assert [body for _m, _p, body in got] == values


def test_kafka_headers_named_like_baedals_own_cannot_poison_amqp_readers(broker: Broker) -> None:
    """A Kafka producer may send any header, also ``x-baedal-headers`` (Baedal's typed
    table) or ``x-baedal-ext-*`` (a protocol's leftovers) with bytes that do not
    decode.  Such a record reaches AMQP readers with those headers as plain strings:
    before, it closed every reader's connection (541) when read, or had the broker send
    a property block pika cannot parse."""
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    garbage = b"\xff\xfe\x00garbage"
    forged = ["x-baedal-headers", "x-baedal-ext-amqp", "x-baedal-ext-amqp-0-9-1-properties", "x-baedal-ext-mqtt"]
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    producer.send("forged", value=b"before")
    for name in forged:
        producer.send("forged", value=name.encode(), headers=[(name, garbage)])
    producer.send("forged", value=b"after")
    producer.flush()
    producer.close()

    connection = amqp(broker)
    try:
        got = consume_stream(connection, "forged", len(forged) + 2)
        assert connection.is_open
    finally:
        connection.close()
    assert [body for _m, _p, body in got] == [b"before", *(n.encode() for n in forged), b"after"]
    by_body = {body: properties for _m, properties, body in got}
    assert by_body[b"x-baedal-headers"].headers["x-baedal-headers"] == garbage.decode("utf-8", "replace")
    assert by_body[b"x-baedal-ext-amqp"].headers["x-baedal-ext-amqp"] == garbage.decode("utf-8", "replace")
    assert by_body[b"x-baedal-ext-amqp-0-9-1-properties"].headers["x-baedal-ext-amqp-0-9-1-properties"]
    # MQTT's loader takes anything (a default extension): nothing for AMQP to see.
    assert by_body[b"after"].headers == {"x-stream-offset": len(forged) + 1}
