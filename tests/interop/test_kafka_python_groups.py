"""kafka-python consumer groups on Baedal: the classic group protocol and committed offsets.

Producers use enable_idempotence=False only to keep these tests about groups.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from baedal.app import Broker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def fill(bootstrap: str, topic: str, count: int) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False, acks="all")
    for i in range(count):
        producer.send(topic, key=b"k%d" % i, value=b"%d" % i)
    producer.flush()
    producer.close()


def group_consumer(bootstrap: str, topic: str, group: str) -> KafkaConsumer:
    return KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=group,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        heartbeat_interval_ms=200,
        session_timeout_ms=6000,
    )


def test_two_members_split_the_partitions_and_read_every_record_once(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, num_partitions=4) as broker:
        bootstrap = broker.kafka_bootstrap
        assert bootstrap is not None
        fill(bootstrap, "work", 80)
        first = group_consumer(bootstrap, "work", "workers")
        second = group_consumer(bootstrap, "work", "workers")
        seen: list[bytes] = []
        try:
            # Upper bounds only (the loop ends as soon as the split is done): a loaded
            # machine has been seen to need more than 30 s for two joins and a rebalance.
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                for consumer in (first, second):
                    for records in consumer.poll(timeout_ms=200).values():
                        seen.extend(r.value for r in records)
                assigned = (first.assignment(), second.assignment())
                if len(set(seen)) == 80 and all(assigned) and not assigned[0] & assigned[1]:
                    break
            assert first.assignment() and second.assignment()
            assert not first.assignment() & second.assignment()
            assert first.assignment() | second.assignment() == {
                TopicPartition("work", p) for p in range(4)
            }
            # Rebalances may hand a partition over before it was committed, so a record
            # can be read twice; none may be missing.
            assert set(seen) == {b"%d" % i for i in range(80)}
            # The second member leaves (LeaveGroup): the first takes every partition.
            second.close()
            everything = {TopicPartition("work", p) for p in range(4)}
            deadline = time.monotonic() + 40
            while first.assignment() != everything and time.monotonic() < deadline:
                first.poll(timeout_ms=200)
            assert first.assignment() == everything
        finally:
            first.close()
            second.close()


def test_committed_offsets_and_metadata_survive_a_restart(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        bootstrap = broker.kafka_bootstrap
        assert bootstrap is not None
        fill(bootstrap, "resume", 10)
        consumer = group_consumer(bootstrap, "resume", "readers")
        try:
            got: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(got) < 6 and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500, max_records=6 - len(got)).values():
                    got.extend(r.value for r in records)
            assert got == [b"%d" % i for i in range(6)]
            from kafka.structs import OffsetAndMetadata

            consumer.commit({TopicPartition("resume", 0): OffsetAndMetadata(6, "note", -1)})
        finally:
            consumer.close()
    with Broker(port=0, data_dir=tmp_path) as broker:
        bootstrap = broker.kafka_bootstrap
        assert bootstrap is not None
        consumer = group_consumer(bootstrap, "resume", "readers")
        try:
            rest: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(rest) < 4 and time.monotonic() < deadline:
                for records in consumer.poll(timeout_ms=500).values():
                    rest.extend(r.value for r in records)
            assert rest == [b"%d" % i for i in range(6, 10)]
            committed = consumer.committed(TopicPartition("resume", 0), metadata=True)
            assert (committed.offset, committed.metadata) == (6, "note")
        finally:
            consumer.close()
