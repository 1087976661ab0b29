"""confluent-kafka (librdkafka: ApiVersions v3 first, idempotent producer, classic group)
against Baedal's Kafka listener."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from baedal.app import Broker


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_idempotent_producer_and_group_consumer_with_every_codec(
    tmp_path: Path, codec: str
) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        bootstrap = broker.kafka_bootstrap
        producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "enable.idempotence": True,
                "compression.type": codec,
                "linger.ms": 5,
            }
        )
        for i in range(100):
            producer.produce(
                "rd", key=b"k%d" % i, value=b"v%d" % i, headers=[("h", b"%d" % i)],
                timestamp=1_700_000_000_000 + i,
            )
        assert producer.flush(20) == 0

        def stored_codecs() -> set[int]:
            partition = broker.kafka.registry.partition("rd", 0)
            return {b.attributes & 0x07 for b in partition.log.reader("first").read(1 << 22)}

        expected = {"none": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}[codec]
        assert broker.call(stored_codecs) == {expected}  # passed through, not recompressed

        consumer = Consumer(
            {"bootstrap.servers": bootstrap, "group.id": "rd-group", "auto.offset.reset": "earliest"}
        )
        try:
            consumer.subscribe(["rd"])
            got = []
            deadline = time.monotonic() + 30
            while len(got) < 100 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is None:
                    continue
                assert message.error() is None, message.error()
                got.append(message)
            assert [(m.key(), m.value(), m.timestamp()[1]) for m in got] == [
                (b"k%d" % i, b"v%d" % i, 1_700_000_000_000 + i) for i in range(100)
            ]
            assert got[5].headers() == [("h", b"5")]
            consumer.commit(asynchronous=False)
            committed = consumer.committed([TopicPartition("rd", 0)], timeout=10)
            assert committed[0].offset == 100
        finally:
            consumer.close()
