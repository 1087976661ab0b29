"""kafka-python against a real Baedal Kafka listener.

Most producers here set enable_idempotence=False to pin acks per test; the default
(idempotent, acks=all: kafka-python 3) is covered by its own test below.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from baedal.app import Broker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path) as running:
        yield running


def producer(bootstrap: str, **config: object) -> KafkaProducer:
    return KafkaProducer(
        bootstrap_servers=bootstrap, enable_idempotence=False, acks="all", **config
    )


def consume_all(bootstrap: str, topic: str, count: int) -> list:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=10_000,
    )
    try:
        partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
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


def test_records_keep_keys_headers_and_timestamps(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    sender = producer(bootstrap)
    sent = []
    for i in range(20):
        sent.append(
            sender.send(
                "orders",
                key=b"key-%d" % i,
                value=b"value-%d" % i,
                headers=[("trace", b"t%d" % i), ("empty", b"")],
                timestamp_ms=1_700_000_000_000 + i,
            )
        )
    metadata = [future.get(timeout=10) for future in sent]
    assert [m.offset for m in metadata] == list(range(20))
    sender.close()
    records = consume_all(bootstrap, "orders", 20)
    assert [(r.offset, r.key, r.value, r.timestamp) for r in records] == [
        (i, b"key-%d" % i, b"value-%d" % i, 1_700_000_000_000 + i) for i in range(20)
    ]
    assert records[3].headers == [("trace", b"t3"), ("empty", b"")]


@pytest.mark.parametrize("compression", ["gzip", None])
def test_compressed_and_plain_batches_round_trip(broker: Broker, compression: str | None) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    topic = f"codec-{compression}"
    sender = producer(bootstrap, compression_type=compression, linger_ms=50)
    futures = [sender.send(topic, value=b"x" * 1000 + bytes([i])) for i in range(50)]
    sender.flush()
    assert all(future.get(timeout=10) for future in futures)
    sender.close()

    def first_batch_codec() -> int:
        partition = broker.kafka.registry.partition(topic, 0)
        return partition.log.reader("first").read(1 << 20)[0].attributes & 0x07

    assert broker.call(first_batch_codec) == (1 if compression == "gzip" else 0)
    records = consume_all(bootstrap, topic, 50)
    assert [r.value[-1] for r in records] == list(range(50))


def test_list_offsets_earliest_latest_and_by_time(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    sender = producer(bootstrap)
    base = 1_700_000_000_000
    for i in range(10):
        sender.send("times", value=b"%d" % i, timestamp_ms=base + i * 1000).get(timeout=10)
    sender.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tp = TopicPartition("times", 0)
        assert consumer.beginning_offsets([tp]) == {tp: 0}
        assert consumer.end_offsets([tp]) == {tp: 10}
        found = consumer.offsets_for_times({tp: base + 4500})[tp]
        assert (found.offset, found.timestamp) == (5, base + 5000)
        assert consumer.offsets_for_times({tp: base + 60_000})[tp] is None
    finally:
        consumer.close()


def test_acks_0_and_acks_1_producers_are_stored(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    for acks in (0, 1):
        sender = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks=acks)
        for i in range(5):
            sender.send("acks", value=b"%d-%d" % (acks, i))
        sender.flush()
        sender.close()
    records = consume_all(bootstrap, "acks", 10)
    assert sorted(r.value for r in records) == sorted(
        b"%d-%d" % (acks, i) for acks in (0, 1) for i in range(5)
    )


def test_consumer_waiting_at_the_end_gets_records_produced_later(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    sender = producer(bootstrap)
    sender.send("live", value=b"first").get(timeout=10)
    consumer = KafkaConsumer(
        "live", bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=5000
    )
    try:
        got = consumer.poll(timeout_ms=10_000, max_records=1)
        assert [r.value for rs in got.values() for r in rs] == [b"first"]
        sender.send("live", value=b"second").get(timeout=10)
        deadline = time.monotonic() + 10
        later: list[bytes] = []
        while not later and time.monotonic() < deadline:
            later = [r.value for rs in consumer.poll(timeout_ms=1000).values() for r in rs]
        assert later == [b"second"]
    finally:
        consumer.close()
        sender.close()


def test_produced_records_survive_a_broker_restart(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as first:
        bootstrap = first.kafka_bootstrap
        assert bootstrap is not None
        sender = producer(bootstrap)
        for i in range(30):
            sender.send("durable", key=b"%d" % i, value=b"v%d" % i)
        sender.flush()
        sender.close()
    with Broker(port=0, data_dir=tmp_path) as second:
        bootstrap = second.kafka_bootstrap
        assert bootstrap is not None
        records = consume_all(bootstrap, "durable", 30)
        assert [r.value for r in records] == [b"v%d" % i for i in range(30)]
        # New records continue the offsets.
        sender = producer(bootstrap)
        assert sender.send("durable", value=b"after").get(timeout=10).offset == 30
        sender.close()


def test_auto_created_topic_gets_num_partitions(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, num_partitions=3) as running:
        bootstrap = running.kafka_bootstrap
        assert bootstrap is not None
        sender = producer(bootstrap)
        for i in range(30):
            sender.send("spread", key=b"k%d" % i, value=b"%d" % i)
        sender.flush()
        assert sender.partitions_for("spread") == {0, 1, 2}
        sender.close()
        records = consume_all(bootstrap, "spread", 30)
        assert sorted(r.value for r in records) == sorted(b"%d" % i for i in range(30))
        assert {r.partition for r in records} == {0, 1, 2}


def test_auto_create_off_leaves_unknown_topics_unknown(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, auto_create_topics=False) as running:
        bootstrap = running.kafka_bootstrap
        assert bootstrap is not None
        consumer = KafkaConsumer(bootstrap_servers=bootstrap)
        try:
            assert not consumer.partitions_for_topic("nobody")  # None or set(): client detail
        finally:
            consumer.close()
        assert running.call(lambda: running.kafka.registry.get("nobody")) is None


def test_default_idempotent_producer_works(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    sender = KafkaProducer(bootstrap_servers=bootstrap)  # kafka-python 3: idempotent
    offsets = [sender.send("idem-default", value=b"%d" % i).get(timeout=10).offset for i in range(10)]
    sender.close()
    assert offsets == list(range(10))

    def producer_ids() -> set[int]:
        partition = broker.kafka.registry.partition("idem-default", 0)
        return {b.producer_id for b in partition.log.reader("first").read(1 << 20)}

    ids = broker.call(producer_ids)
    assert len(ids) == 1 and min(ids) >= 0
    assert [r.value for r in consume_all(bootstrap, "idem-default", 10)] == [
        b"%d" % i for i in range(10)
    ]


def streams_in_default_vhost(broker: Broker) -> list[str]:
    def names() -> list[str]:
        queues = broker.core.vhosts["/"].queues
        return sorted(name for name, queue in queues.items() if getattr(queue, "is_stream", False))

    return broker.call(names)  # type: ignore[no-any-return]


def test_admin_creates_and_deletes_topics(broker: Broker, tmp_path: Path) -> None:
    from kafka.admin import KafkaAdminClient, NewTopic
    from kafka.errors import InvalidReplicationFactorError, TopicAlreadyExistsError

    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic("made", 3, 1)])
        assert "made" in admin.list_topics()
        # Three partitions: a super stream (the exchange "made" and streams made-<n>).
        assert streams_in_default_vhost(broker) == ["made-0", "made-1", "made-2"]
        assert broker.call(lambda: broker.core.vhosts["/"].exchanges["made"].type) == "direct"
        with pytest.raises(TopicAlreadyExistsError):
            admin.create_topics([NewTopic("made", 1, 1)], raise_errors=True)
        with pytest.raises(InvalidReplicationFactorError):
            admin.create_topics([NewTopic("replicated", 1, 3)], raise_errors=True)
        admin.delete_topics(["made"])
        assert "made" not in admin.list_topics()
        assert streams_in_default_vhost(broker) == []
        assert broker.call(lambda: "made" in broker.core.vhosts["/"].exchanges) is False
    finally:
        admin.close()
