"""The Kafka listener reads sockets straight into its decoder's buffer
(``asyncio.BufferedProtocol``): requests cut anywhere by the network, one byte at a
time or in odd chunks, pipelined, and larger than the buffer, are all read whole, in
order, and stored byte for byte; the buffer follows the bytes that arrived, not what a
size field promises, and shrinks back after a big request (raw sockets, kio-encoded
requests, kafka-python's batch builder)."""

from __future__ import annotations

import datetime
import random
import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from kafka.record.memory_records import MemoryRecordsBuilder
from kio.schema.produce.v8.request import (
    PartitionProduceData,
    ProduceRequest,
    TopicProduceData,
)
from test_kafka_wire import PRODUCE, RawKafka, build_batch, create_topic

from baedal.app import Broker
from baedal.protocols.kafka.admin import MAX_MESSAGE_BYTES_ARGUMENT
from baedal.protocols.kafka.codec import (
    INITIAL_BUFFER_BYTES,
    MIN_READ_BYTES,
    RETAINED_BUFFER_BYTES,
    RequestDecoder,
)
from baedal.protocols.kafka.server import DECODED, KafkaConnection
from baedal_testing import wait_until


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path) as running:
        yield running


@pytest.fixture
def client(broker: Broker) -> Iterator[RawKafka]:
    assert broker.kafka_port is not None
    connection = RawKafka(broker.kafka_port)
    connection.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    yield connection
    connection.close()


def big_batch(values: list[bytes]) -> bytes:
    builder = MemoryRecordsBuilder(2, 0, 8 << 20)  # test_kafka_wire's stops at 1 MiB
    for value in values:
        assert builder.append(1_700_000_000_000, None, value, []) is not None
    builder.close()
    return bytes(builder.buffer())


def produce_frame(client: RawKafka, topic: str, batch: bytes) -> bytes:
    body = ProduceRequest(
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(seconds=10),
        topic_data=(
            TopicProduceData(
                name=topic, partition_data=(PartitionProduceData(index=0, records=batch),)
            ),
        ),
    )
    return client.frame(PRODUCE, 8, body)


def read_base_offsets(client: RawKafka, count: int) -> list[int]:
    """The base offsets of the next ``count`` produce responses, checked in order."""
    first = client.correlation - count + 1
    offsets = []
    for expected in range(first, first + count):
        data = client.read_frame()
        assert struct.unpack_from(">i", data, 0)[0] == expected  # responses in request order
        response = ProduceResponse.read(data)
        assert response[1] == 0, f"error code {response[1]}"
        offsets.append(response[2])
    return offsets


class ProduceResponse:
    """Produce v8 response, one topic, one partition: (index, error, base offset)."""

    @staticmethod
    def read(data: bytes) -> tuple[int, int, int]:
        position = 4 + 4  # correlation id, topic count
        name_length = struct.unpack_from(">h", data, position)[0]
        position += 2 + name_length + 4  # name, partition count
        index, error, base = struct.unpack_from(">ihq", data, position)
        return index, error, base


def stored_batches(broker: Broker, topic: str) -> list[bytes]:
    def read() -> list[bytes]:
        partition = broker.kafka.registry.partition(topic, 0)
        return [bytes(b.data) for b in partition.log.reader("first").read(16 << 20)]

    return broker.call(read)  # type: ignore[no-any-return]


def records_of(batch: bytes) -> bytes:
    return batch[8:]  # all but the base offset, which the broker rewrites


def connection_state(broker: Broker) -> tuple[int, int]:
    """(capacity, bytes buffered) of the one Kafka connection's decoder."""

    def read() -> tuple[int, int]:
        connections: list[KafkaConnection] = list(broker.kafka.connections)
        assert len(connections) == 1
        decoder = connections[0].decoder
        return decoder.capacity, decoder.buffered

    return broker.call(read)  # type: ignore[no-any-return]


def test_pipelined_produce_requests_sent_one_byte_at_a_time_are_stored_in_order(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "bytewise")
    batches = [build_batch([b"v%d-%d" % (n, i) * 20 for i in range(n + 1)]) for n in range(3)]
    stream = b"".join(produce_frame(client, "bytewise", batch) for batch in batches)
    for i in range(len(stream)):
        client.send_raw(stream[i : i + 1])
    assert read_base_offsets(client, 3) == [0, 1, 3]
    stored = stored_batches(broker, "bytewise")
    assert [records_of(b) for b in stored] == [records_of(b) for b in batches]


def test_requests_cut_at_random_points_and_one_larger_than_the_buffer_are_read_whole(
    broker: Broker, client: RawKafka
) -> None:
    # A topic that takes a 3 MiB batch: bigger than the buffer kept between requests.
    broker.call(
        lambda: broker.kafka.registry.create("chunks", 1, {MAX_MESSAGE_BYTES_ARGUMENT: 8 << 20})
    )
    rng = random.Random(11)
    batches = [
        build_batch([rng.randbytes(900) for _ in range(70)]),  # a producer's ~64 KB batch
        big_batch([rng.randbytes(1000) for _ in range(3 * 1024)]),  # ~3 MiB
        build_batch([b"small"]),
        build_batch([rng.randbytes(1000) for _ in range(70)]),
        build_batch([rng.randbytes(30) for _ in range(5)]),
    ]
    assert len(batches[1]) > RETAINED_BUFFER_BYTES
    stream = b"".join(produce_frame(client, "chunks", batch) for batch in batches)
    position = 0
    while position < len(stream):
        size = rng.choice([1, 3, 7, 100, 4095, 4097, 65536, 200_000])
        client.send_raw(stream[position : position + size])
        position += size
    offsets = read_base_offsets(client, len(batches))
    expected, next_offset = [], 0
    for records in (70, 3 * 1024, 1, 70, 5):
        expected.append(next_offset)
        next_offset += records
    assert offsets == expected
    stored = stored_batches(broker, "chunks")
    assert [records_of(b) for b in stored] == [records_of(b) for b in batches]
    # Once the big request is consumed and the connection reads again, the buffer is
    # back to its small size (a producer of big requests does not pin megabytes).
    client.send_raw(produce_frame(client, "chunks", build_batch([b"after"])))
    assert read_base_offsets(client, 1) == [next_offset]
    capacity, _buffered = connection_state(broker)
    assert capacity <= RETAINED_BUFFER_BYTES


def test_a_size_field_promising_a_big_request_allocates_only_what_arrived(
    broker: Broker, client: RawKafka
) -> None:
    # 50 MiB promised (under the 100 MiB limit, so legal), 100 bytes sent.
    head = struct.pack(">ihhih", 50 << 20, PRODUCE, 8, 1, -1) + b"\0" * 86
    client.send_raw(head)
    assert wait_until(lambda: connection_state(broker)[1] == len(head) == 100, timeout=10)
    capacity, _buffered = connection_state(broker)
    assert capacity == INITIAL_BUFFER_BYTES


def test_while_whole_requests_wait_unread_the_decoder_offers_only_small_reads(
    client: RawKafka,
) -> None:
    # The connection stops taking requests while it owes many answers (pause) or hit
    # its per-callback cap; the event loop may still read before it notices.  Each such
    # read must be small: offering all the room (doubled again and again) let one
    # producer's pipelined requests pull ~450 MB into a connection's buffer under load.
    decoder = RequestDecoder(DECODED, 100 << 20)
    batch = build_batch([b"x" * 1000] * 63)
    frame = produce_frame(client, "waiting", batch)
    stream = frame * 200  # 200 pipelined ~64 KB requests arrive, none is taken
    position = 0
    while position < len(stream):
        view = decoder.get_buffer(-1)
        assert len(view) >= MIN_READ_BYTES
        if decoder.buffered >= len(frame):  # a whole request waits
            assert len(view) == MIN_READ_BYTES
        count = min(len(view), len(stream) - position)
        view[:count] = stream[position : position + count]
        decoder.buffer_updated(count)
        position += count
    assert decoder.buffered == len(stream)
    assert len(decoder.get_buffer(-1)) == MIN_READ_BYTES
    assert decoder.capacity <= 2 * (len(stream) + MIN_READ_BYTES)
    # And every one of them is still there, whole.
    for _ in range(200):
        request = decoder.next_request()
        assert request is not None and request.api_key == PRODUCE
        assert bytes(request.body.topic_data[0].partition_data[0].records) == batch
    assert decoder.next_request() is None


@pytest.mark.parametrize("seed", range(8))
def test_reads_of_any_size_and_requests_taken_at_any_time_give_every_request_whole(
    client: RawKafka, seed: int
) -> None:
    # The decoder's buffer moves (compaction), grows and shrinks under reads of random
    # sizes while requests are taken at random moments: each must come out byte-exact.
    rng = random.Random(seed)
    batches = [
        build_batch([rng.randbytes(rng.choice([10, 900, 1000])) for _ in range(rng.randint(1, 80))])
        for _ in range(60)
    ]
    batches[rng.randrange(60)] = big_batch([rng.randbytes(1000) for _ in range(1500)])  # 1.5 MB
    stream = b"".join(produce_frame(client, "t", batch) for batch in batches)
    decoder = RequestDecoder(DECODED, 100 << 20)
    taken: list[bytes] = []
    position = 0
    while len(taken) < len(batches):
        if position < len(stream) and rng.random() < 0.7:
            view = decoder.get_buffer(-1)
            count = min(rng.randint(1, len(view)), len(stream) - position)
            view[:count] = stream[position : position + count]
            decoder.buffer_updated(count)
            position += count
        for _ in range(rng.randint(0, 3)):
            request = decoder.next_request()
            if request is None:
                break
            taken.append(bytes(request.body.topic_data[0].partition_data[0].records))
        assert decoder.capacity <= 4 * (len(stream) + MIN_READ_BYTES)
    assert taken == batches
