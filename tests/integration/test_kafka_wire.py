"""Baedal's Kafka listener driven over raw sockets: framing, bad input, error codes.

Requests are encoded with kio (the same generated schemas the broker decodes with) and
record batches built with kafka-python's record builder, so what is stored can be
compared byte for byte with what was sent.
"""

from __future__ import annotations

import datetime
import struct
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kafka.record.memory_records import MemoryRecordsBuilder

from baedal.app import Broker
from kafka_raw import RawKafka

PRODUCE, FETCH, LIST_OFFSETS, METADATA, API_VERSIONS = 0, 1, 2, 3, 18
GZIP = 1


def build_batch(values: list[bytes], compression: int = 0, timestamp: int = 1_700_000_000_000) -> bytes:
    builder = MemoryRecordsBuilder(2, compression, 1 << 20)
    for i, value in enumerate(values):
        builder.append(timestamp + i, b"key-%d" % i, value, [("h", b"v")])
    builder.close()
    return bytes(builder.buffer())


def produce(client: RawKafka, topic: str, records: bytes, acks: int = -1, partition: int = 0) -> Any:
    from kio.schema.produce.v8.request import PartitionProduceData, TopicProduceData

    return client.request(
        PRODUCE,
        8,
        transactional_id=None,
        acks=acks,
        timeout=datetime.timedelta(seconds=5),
        topic_data=(
            TopicProduceData(
                name=topic,
                partition_data=(PartitionProduceData(index=partition, records=records),),
            ),
        ),
    )


def fetch(
    client: RawKafka,
    topic: str,
    offset: int,
    wait_ms: int = 0,
    min_bytes: int = 1,
    partition_max_bytes: int = 1 << 20,
) -> Any:
    from kio.schema.fetch.v11.request import FetchPartition, FetchTopic

    return client.request(
        FETCH,
        11,
        max_wait=datetime.timedelta(milliseconds=wait_ms),
        min_bytes=min_bytes,
        max_bytes=1 << 20,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            FetchTopic(
                topic=topic,
                partitions=(
                    FetchPartition(
                        partition=0,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=partition_max_bytes,
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )


def create_topic(client: RawKafka, topic: str) -> None:
    from kio.schema.metadata.v8.request import MetadataRequestTopic

    response = client.request(
        METADATA,
        8,
        topics=(MetadataRequestTopic(name=topic),),
        allow_auto_topic_creation=True,
        include_cluster_authorized_operations=False,
        include_topic_authorized_operations=False,
    )
    assert response.topics[0].error_code.value == 0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path) as running:
        yield running


@pytest.fixture
def client(broker: Broker) -> Iterator[RawKafka]:
    assert broker.kafka_port is not None
    connection = RawKafka(broker.kafka_port)
    yield connection
    connection.close()


def stored_batches(broker: Broker, topic: str) -> list[bytes]:
    def read() -> list[bytes]:
        partition = broker.kafka.registry.partition(topic, 0)
        return [bytes(b.data) for b in partition.log.reader("first").read(1 << 20)]

    return broker.call(read)  # type: ignore[no-any-return]


def test_gzip_batch_is_stored_byte_for_byte_with_only_the_base_offset_rewritten(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "gz")
    first = build_batch([b"a" * 100, b"b" * 100])
    second = build_batch([b"c" * 500, b"d" * 500], compression=GZIP)
    assert produce(client, "gz", first).responses[0].partition_responses[0].base_offset == 0
    answer = produce(client, "gz", second).responses[0].partition_responses[0]
    assert (answer.error_code.value, answer.base_offset) == (0, 2)
    stored = stored_batches(broker, "gz")
    assert len(stored) == 2
    assert stored[1][8:] == second[8:]  # everything after baseOffset, compressed payload too
    assert struct.unpack_from(">q", stored[1])[0] == 2


def test_batch_with_a_bad_crc_is_refused_as_corrupt_message_and_not_stored(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "crc")
    batch = bytearray(build_batch([b"x"]))
    batch[-1] ^= 0xFF
    answer = produce(client, "crc", bytes(batch)).responses[0].partition_responses[0]
    assert answer.error_code.value == 2  # CORRUPT_MESSAGE
    assert stored_batches(broker, "crc") == []


def test_batch_over_max_message_bytes_is_refused_as_message_too_large(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "big")
    answer = produce(client, "big", build_batch([b"x" * 1_100_000])).responses[0]
    assert answer.partition_responses[0].error_code.value == 10  # MESSAGE_TOO_LARGE


def test_produce_to_an_unknown_topic_is_unknown_topic_or_partition(client: RawKafka) -> None:
    answer = produce(client, "never-created", build_batch([b"x"])).responses[0]
    assert answer.partition_responses[0].error_code.value == 3


def test_fetch_past_the_end_is_offset_out_of_range(client: RawKafka) -> None:
    create_topic(client, "oor")
    produce(client, "oor", build_batch([b"x"]))
    partition = fetch(client, "oor", 999).responses[0].partitions[0]
    assert partition.error_code.value == 1  # OFFSET_OUT_OF_RANGE
    assert partition.high_watermark == 1


def test_fetch_inside_a_batch_returns_the_whole_batch(client: RawKafka) -> None:
    create_topic(client, "inside")
    batch = build_batch([b"one", b"two", b"three"])
    produce(client, "inside", batch)
    partition = fetch(client, "inside", 1).responses[0].partitions[0]
    assert bytes(partition.records)[8:] == batch[8:]


def test_long_poll_fetch_is_answered_when_a_record_arrives(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "poll")
    assert broker.kafka_port is not None
    producer = RawKafka(broker.kafka_port)
    try:
        client.send_raw(
            client.frame(FETCH, 11, _fetch_body("poll", offset=0, wait_ms=20_000))
        )
        produce(producer, "poll", build_batch([b"late"]))
        partition = client.response(FETCH, 11).responses[0].partitions[0]
        assert partition.high_watermark == 1
        assert len(partition.records) > 0
    finally:
        producer.close()


def _fetch_body(topic: str, offset: int, wait_ms: int) -> Any:
    from kio.schema.fetch.v11.request import FetchPartition, FetchRequest, FetchTopic

    return FetchRequest(
        max_wait=datetime.timedelta(milliseconds=wait_ms),
        min_bytes=1,
        max_bytes=1 << 20,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            FetchTopic(
                topic=topic,
                partitions=(
                    FetchPartition(
                        partition=0,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=1 << 20,
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )


def test_acks_0_gets_no_response_but_is_stored_and_the_next_request_is_answered(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "fire")
    from kio.schema.produce.v8.request import (
        PartitionProduceData,
        ProduceRequest,
        TopicProduceData,
    )

    body = ProduceRequest(
        transactional_id=None,
        acks=0,
        timeout=datetime.timedelta(seconds=5),
        topic_data=(
            TopicProduceData(
                name="fire",
                partition_data=(PartitionProduceData(index=0, records=build_batch([b"x"])),),
            ),
        ),
    )
    client.send_raw(client.frame(PRODUCE, 8, body))
    # The next answer on the connection is the fetch's: nothing came back for acks=0.
    partition = fetch(client, "fire", 0, wait_ms=5_000).responses[0].partitions[0]
    assert partition.high_watermark == 1


def test_api_versions_at_an_unknown_version_answers_unsupported_version_in_v0(
    client: RawKafka,
) -> None:
    from kio.schema.api_versions.v0.request import ApiVersionsRequest

    data = bytearray(client.frame(API_VERSIONS, 0, ApiVersionsRequest()))
    struct.pack_into(">h", data, 6, 99)  # api_version field of the header
    client.send_raw(bytes(data))
    answer = client.response(API_VERSIONS, 0)
    assert answer.error_code.value == 35
    versions = {entry.api_key: (entry.min_version, entry.max_version) for entry in answer.api_keys}
    assert versions[API_VERSIONS] == (0, 3)
    assert versions[PRODUCE][0] == 0  # kafka-protocol.md §3.3
    # The connection stays usable.
    assert client.request(API_VERSIONS, 3, client_software_name="t", client_software_version="1").error_code.value == 0


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(struct.pack(">i", 2**31 - 1), id="2GiB-size-field"),
        pytest.param(struct.pack(">i", -5), id="negative-size"),
        pytest.param(struct.pack(">ihhih", 10, 4242, 0, 1, -1), id="unknown-api-key"),
        pytest.param(struct.pack(">ihhih", 10, METADATA, 99, 1, -1), id="unknown-metadata-version"),
        pytest.param(struct.pack(">ihhihh", 12, METADATA, 1, 1, -1, 7), id="truncated-body"),
        pytest.param(struct.pack(">ihhih", 10, PRODUCE, 1, 1, -1), id="produce-v1-old-format"),
    ],
)
def test_bad_input_closes_the_connection_and_others_keep_working(
    broker: Broker, client: RawKafka, payload: bytes
) -> None:
    client.send_raw(payload)
    assert client.closed_by_peer()
    assert broker.kafka_port is not None
    other = RawKafka(broker.kafka_port)
    try:
        create_topic(other, "still-fine")
    finally:
        other.close()


def idempotent_batch(producer_id: int, sequence: int, values: list[bytes], epoch: int = 0) -> bytes:
    builder = MemoryRecordsBuilder(
        2, 0, 1 << 20, producer_id=producer_id, producer_epoch=epoch, base_sequence=sequence
    )
    for value in values:
        builder.append(1_700_000_000_000, None, value, [])
    builder.close()
    return bytes(builder.buffer())


def test_idempotent_retry_is_not_stored_twice_and_a_sequence_gap_is_refused(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "idem")
    answer = client.request(22, 1, transactional_id=None, transaction_timeout=datetime.timedelta(0))
    assert answer.error_code.value == 0 and answer.producer_id >= 0
    producer_id = answer.producer_id
    first = idempotent_batch(producer_id, 0, [b"a", b"b"])
    assert produce(client, "idem", first).responses[0].partition_responses[0].base_offset == 0
    # The same batch again (a retry after a lost answer): same offset, nothing stored.
    retry = produce(client, "idem", first).responses[0].partition_responses[0]
    assert (retry.error_code.value, retry.base_offset) == (0, 0)
    # Sequence 5 after 0..1 leaves a gap: OUT_OF_ORDER_SEQUENCE_NUMBER.
    gap = produce(client, "idem", idempotent_batch(producer_id, 5, [b"c"])).responses[0]
    assert gap.partition_responses[0].error_code.value == 45
    # An older epoch than one already seen is fenced: INVALID_PRODUCER_EPOCH.
    produce(client, "idem", idempotent_batch(producer_id, 0, [b"e1"], epoch=1))
    stale = produce(client, "idem", idempotent_batch(producer_id, 2, [b"old"], epoch=0))
    assert stale.responses[0].partition_responses[0].error_code.value == 47
    # The next sequence is accepted.
    following = produce(client, "idem", idempotent_batch(producer_id, 1, [b"d"], epoch=1))
    assert following.responses[0].partition_responses[0].base_offset == 3
    assert len(stored_batches(broker, "idem")) == 3


def test_transactional_init_producer_id_is_refused_with_an_error_not_a_hang(
    client: RawKafka,
) -> None:
    answer = client.request(
        22, 1, transactional_id="tx", transaction_timeout=datetime.timedelta(seconds=60)
    )
    assert answer.error_code.value != 0 and answer.producer_id == -1


def test_fetch_returns_whole_batches_within_max_bytes_and_always_the_first(
    client: RawKafka,
) -> None:
    create_topic(client, "sizes")
    batches = [build_batch([bytes([65 + i]) * 1000]) for i in range(3)]
    for batch in batches:
        produce(client, "sizes", batch)
    size = len(batches[0])

    def fetched(limit: int) -> bytes:
        partition = fetch(client, "sizes", 0, partition_max_bytes=limit).responses[0].partitions[0]
        return bytes(partition.records)

    assert len(fetched(10)) == size  # KIP-74: the first batch even past the limit
    assert len(fetched(2 * size - 1)) == size  # never a partial batch
    assert len(fetched(2 * size)) == 2 * size
    everything = fetched(1 << 20)
    assert len(everything) == 3 * size
    for i, sent in enumerate(batches):  # as sent, apart from the base offset
        stored = everything[i * size : (i + 1) * size]
        assert stored[8:] == sent[8:] and struct.unpack_from(">q", stored)[0] == i


def test_fetch_sends_the_stored_batches_byte_for_byte_with_sendfile(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "sendfile")
    sent = [
        build_batch([b"plain-%d" % i for i in range(10)]),
        build_batch([b"z" * 3000, b"y" * 3000], compression=GZIP),
        build_batch([b"tail"]),
    ]
    for batch in sent:
        produce(client, "sendfile", batch)
    stored = stored_batches(broker, "sendfile")
    before = broker.call(lambda: broker.kafka.sendfile_bytes)
    partition = fetch(client, "sendfile", 0).responses[0].partitions[0]
    received = bytes(partition.records)
    assert received == b"".join(stored)  # the compressed batch passes through untouched
    assert received[len(stored[0]) + 8:len(stored[0]) + len(stored[1])] == sent[1][8:]
    assert partition.high_watermark == 13
    # The records went out with os.sendfile, not through a Python buffer.
    assert broker.call(lambda: broker.kafka.sendfile_bytes) - before == len(received)
    # A fetch from inside the second batch starts at that batch; a small limit still
    # returns one whole batch (KIP-74).
    inside = fetch(client, "sendfile", 11, partition_max_bytes=10).responses[0].partitions[0]
    assert bytes(inside.records) == stored[1]


def test_pipelined_fetches_and_metadata_answers_keep_request_order(
    broker: Broker, client: RawKafka
) -> None:
    from kio.schema.metadata.v8.request import MetadataRequest, MetadataRequestTopic

    create_topic(client, "order")
    produce(client, "order", build_batch([b"x" * 50_000 for _ in range(10)]))
    frames = []
    for _ in range(5):
        frames.append(client.frame(METADATA, 8, MetadataRequest(
            topics=(MetadataRequestTopic(name="order"),),
            allow_auto_topic_creation=False,
            include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False,
        )))
        first = client.correlation
        from kio.schema.fetch.v11.request import FetchPartition, FetchRequest, FetchTopic

        frames.append(client.frame(FETCH, 11, FetchRequest(
            max_wait=datetime.timedelta(0), min_bytes=1, max_bytes=1 << 20, isolation_level=0,
            session_id=0, session_epoch=-1,
            topics=(FetchTopic(topic="order", partitions=(FetchPartition(
                partition=0, current_leader_epoch=-1, fetch_offset=0, log_start_offset=-1,
                partition_max_bytes=1 << 20),)),),
            forgotten_topics_data=(), rack_id="",
        )))
        assert client.correlation == first + 1
    client.send_raw(b"".join(frames))
    correlations = []
    sizes = []
    for _ in range(10):
        data = client.read_frame()
        correlations.append(struct.unpack_from(">i", data, 0)[0])
        sizes.append(len(data))
    assert correlations == list(range(correlations[0], correlations[0] + 10))
    assert all(size > 500_000 for size in sizes[1::2])  # every fetch carried the batch


def test_transactional_apis_answer_invalid_request_and_the_connection_stays_usable(
    client: RawKafka,
) -> None:
    answer = client.request(
        26, 2, transactional_id="tx", producer_id=1, producer_epoch=0, committed=True
    )
    assert answer.error_code.value == 42  # INVALID_REQUEST
    answer = client.request(25, 2, transactional_id="tx", producer_id=1, producer_epoch=0, group_id="g")
    assert answer.error_code.value == 42
    create_topic(client, "after-txn")  # still served


def test_requests_before_sasl_close_the_connection_when_sasl_is_required(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, kafka_sasl=True) as broker:
        assert broker.kafka_port is not None
        connection = RawKafka(broker.kafka_port)
        try:
            versions = connection.request(API_VERSIONS, 0)  # allowed before authentication
            assert {k.api_key for k in versions.api_keys} >= {17, 36}
            connection.send_raw(b"")
            from kio.schema.metadata.v8.request import MetadataRequest

            connection.send_raw(connection.frame(METADATA, 8, MetadataRequest(
                topics=None, allow_auto_topic_creation=False,
                include_cluster_authorized_operations=False,
                include_topic_authorized_operations=False,
            )))
            assert connection.closed_by_peer()
        finally:
            connection.close()


def test_an_undecodable_compressed_batch_cancels_the_amqp_stream_reader_not_its_connection(
    broker: Broker, client: RawKafka
) -> None:
    import crc32c
    import pika

    create_topic(client, "garbled")
    batch = bytearray(build_batch([b"x" * 300, b"y" * 300], compression=GZIP))
    batch[61 + 10 : 61 + 30] = b"\xee" * 20  # damage the gzip payload (after the header)
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))  # a valid CRC
    answer = produce(client, "garbled", bytes(batch)).responses[0].partition_responses[0]
    assert answer.error_code.value == 0  # stored as sent: batches are not inflated on produce
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume("garbled", lambda *a: None, arguments={"x-stream-offset": "first"})
        deadline = time.monotonic() + 10
        while channel.consumer_tags and time.monotonic() < deadline:
            connection.process_data_events(0.05)
        assert not channel.consumer_tags  # basic.cancel from the broker
        assert channel.is_open and connection.is_open
        channel.queue_declare("garbled", passive=True)  # the connection still works
    finally:
        connection.close()
