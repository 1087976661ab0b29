"""aiokafka (asyncio client, sends ApiVersions v0 first) against Baedal's Kafka listener."""

from __future__ import annotations

from pathlib import Path

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from baedal.app import Broker


async def test_produce_and_consume_with_keys_headers_timestamps_and_gzip(tmp_path: Path) -> None:
    async with Broker(port=0, data_dir=tmp_path) as broker:
        bootstrap = broker.kafka_bootstrap
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap, acks="all", compression_type="gzip", linger_ms=20
        )
        await producer.start()
        try:
            futures = [
                await producer.send(
                    "aio",
                    key=b"k%d" % i,
                    value=b"v%d" % i,
                    headers=[("n", b"%d" % i)],
                    timestamp_ms=1_700_000_000_000 + i,
                )
                for i in range(25)
            ]
            offsets = [(await future).offset for future in futures]
        finally:
            await producer.stop()
        assert offsets == list(range(25))
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, auto_offset_reset="earliest", enable_auto_commit=False
        )
        await consumer.start()
        try:
            tp = TopicPartition("aio", 0)
            consumer.assign([tp])
            await consumer.seek_to_beginning(tp)
            records = []
            while len(records) < 25:
                batch = await consumer.getmany(tp, timeout_ms=5000)
                assert batch, "no records within 5 s"
                records.extend(batch[tp])
            assert (await consumer.end_offsets([tp])) == {tp: 25}
            assert (await consumer.beginning_offsets([tp])) == {tp: 0}
            found = await consumer.offsets_for_times({tp: 1_700_000_000_010})
            assert found[tp].offset == 10
        finally:
            await consumer.stop()
        assert [(r.offset, r.key, r.value, r.timestamp) for r in records] == [
            (i, b"k%d" % i, b"v%d" % i, 1_700_000_000_000 + i) for i in range(25)
        ]
        assert records[7].headers == (("n", b"7"),) or list(records[7].headers) == [("n", b"7")]
