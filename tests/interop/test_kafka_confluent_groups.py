"""A consumer group of three (confluent-kafka, classic protocol) on a six-partition
topic: the partitions are split, a member leaves and one joins late, and every record
is consumed exactly once when each is committed before it counts as consumed; committed
offsets resume after a broker restart."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baedal.app import Broker

TOPIC = "six"
PARTITIONS = 6


def member(bootstrap: str, name: str) -> Consumer:
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "three",
            "client.id": name,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": 6000,
            "heartbeat.interval.ms": 300,
            "partition.assignment.strategy": "range",
        }
    )
    consumer.subscribe([TOPIC])
    return consumer


def produce(bootstrap: str, start: int, count: int) -> None:
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 2})
    for i in range(start, start + count):
        producer.produce(TOPIC, value=b"%d" % i, partition=i % PARTITIONS)
    assert producer.flush(30) == 0


def poll_round(consumers: dict[str, Consumer], consumed: dict[tuple[int, int], str]) -> None:
    """One poll per member; a record counts once its commit succeeded."""
    for name, consumer in consumers.items():
        message = consumer.poll(0.05)
        if message is None or message.error():
            continue
        try:
            consumer.commit(message=message, asynchronous=False)
        except KafkaException:
            continue  # refused (a rebalance is under way): it will be delivered again
        key = (message.partition(), message.offset())
        assert key not in consumed, f"{key} consumed by {consumed.get(key)} and {name}"
        consumed[key] = name


def assigned(consumers: dict[str, Consumer]) -> dict[str, set[int]]:
    return {name: {tp.partition for tp in c.assignment()} for name, c in consumers.items()}


def run_until(consumers: dict[str, Consumer], consumed: dict[tuple[int, int], str], done: Any,
              timeout: float = 40.0) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        assert time.monotonic() < deadline, (len(consumed), assigned(consumers))
        poll_round(consumers, consumed)


def split_evenly(consumers: dict[str, Consumer]) -> bool:
    parts = assigned(consumers)
    everything = set().union(*parts.values())
    return everything == set(range(PARTITIONS)) and all(parts.values()) and sum(
        len(p) for p in parts.values()) == PARTITIONS


def test_three_members_split_six_partitions_and_consume_each_record_exactly_once(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        bootstrap = broker.kafka_bootstrap
        assert bootstrap is not None
        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(15)
        produce(bootstrap, 0, 300)
        consumed: dict[tuple[int, int], str] = {}
        consumers = {"a": member(bootstrap, "a"), "b": member(bootstrap, "b")}
        try:
            run_until(consumers, consumed, lambda: split_evenly(consumers) and len(consumed) >= 60)
            # A third member joins late: the six partitions are split three ways.
            consumers["c"] = member(bootstrap, "c")
            produce(bootstrap, 300, 300)
            run_until(consumers, consumed, lambda: split_evenly(consumers)
                      and all(len(p) == 2 for p in assigned(consumers).values()))
            assert {name for name in consumed.values()} >= {"a", "b"}
            run_until(consumers, consumed, lambda: "c" in consumed.values())
            # A member leaves: the other two take its partitions.
            consumers.pop("a").close()
            produce(bootstrap, 600, 300)
            run_until(consumers, consumed, lambda: split_evenly(consumers) and len(consumed) == 900)
        finally:
            for consumer in consumers.values():
                consumer.close()
        # Every record once: offsets 0..149 of each partition.
        assert sorted(consumed) == sorted((p, o) for p in range(PARTITIONS) for o in range(150))
        checker = Consumer({"bootstrap.servers": bootstrap, "group.id": "three"})
        try:
            committed = checker.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)
            assert [tp.offset for tp in committed] == [150] * PARTITIONS
        finally:
            checker.close()

    # Committed offsets resume after a restart: only records produced since are read.
    with Broker(port=0, data_dir=tmp_path) as broker:
        bootstrap = broker.kafka_bootstrap
        assert bootstrap is not None
        produce(bootstrap, 900, 60)
        consumed = {}
        consumers = {"d": member(bootstrap, "d")}
        try:
            run_until(consumers, consumed, lambda: len(consumed) >= 60)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:  # nothing else may come
                poll_round(consumers, consumed)
        finally:
            consumers["d"].close()
        assert sorted(consumed) == sorted((p, o) for p in range(PARTITIONS) for o in range(150, 160))
