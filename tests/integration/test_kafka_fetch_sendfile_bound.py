"""A Fetch on plain TCP answers at most ``SENDFILE_RESPONSE_BYTES`` of records (shared by
the partitions asked for), so the whole answer goes out with ``os.sendfile`` instead of
being read into memory past the socket buffer; a consumer still gets everything, in
order, by fetching again from where each answer ended (raw wire requests, kio-encoded)."""

from __future__ import annotations

import datetime
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kio.schema.fetch.v11.request import FetchPartition, FetchTopic
from test_kafka_wire import FETCH, RawKafka, build_batch, create_topic, produce

from baedal.app import Broker
from baedal.protocols.kafka.server import SENDFILE_RESPONSE_BYTES


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path, num_partitions=2) as running:
        yield running


@pytest.fixture
def client(broker: Broker) -> Iterator[RawKafka]:
    assert broker.kafka_port is not None
    connection = RawKafka(broker.kafka_port)
    yield connection
    connection.close()


def fetch(
    client: RawKafka,
    topic: str,
    offsets: dict[int, int],
    limit: int,
    min_bytes: int = 1,
    wait_ms: int = 0,
) -> Any:
    """One Fetch v11 of ``limit`` bytes per partition (and in all) from ``offsets``."""
    return client.request(
        FETCH,
        11,
        max_wait=datetime.timedelta(milliseconds=wait_ms),
        min_bytes=min_bytes,
        max_bytes=limit * len(offsets),
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            FetchTopic(
                topic=topic,
                partitions=tuple(
                    FetchPartition(
                        partition=index,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=limit,
                    )
                    for index, offset in offsets.items()
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )


def batches_in(records: bytes) -> list[tuple[int, int]]:
    """(base offset, record count) of each whole batch in a fetched records blob."""
    found = []
    position = 0
    while position < len(records):
        base, length = struct.unpack_from(">qi", records, position)
        count = struct.unpack_from(">i", records, position + 57)[0]
        found.append((base, count))
        position += 12 + length
    assert position == len(records)  # whole batches only
    return found


def test_a_big_fetch_is_answered_in_sendfile_sized_parts_and_nothing_is_lost(
    broker: Broker, client: RawKafka
) -> None:
    create_topic(client, "big")
    batch = build_batch([b"v" * 1000] * 60)  # ~61 KB, as a 64 KB producer batch
    batches = 3 * SENDFILE_RESPONSE_BYTES // len(batch) + 2
    for _ in range(batches):
        produce(client, "big", batch)
    total = batches * 60
    before = broker.call(lambda: broker.kafka.sendfile_bytes)
    offset, answers, received = 0, 0, 0
    while offset < total:
        partition = fetch(client, "big", {0: offset}, 10 * 1024 * 1024).responses[0].partitions[0]
        records = bytes(partition.records)
        # Bounded, in whole batches, even though 10 MB per partition was allowed.
        assert 0 < len(records) <= SENDFILE_RESPONSE_BYTES
        found = batches_in(records)
        assert found[0][0] == offset  # continues exactly where the last answer ended
        offset = found[-1][0] + found[-1][1]
        received += len(records)
        answers += 1
    assert offset == total and answers >= 3
    assert broker.call(lambda: broker.kafka.sendfile_bytes) - before == received


def test_the_bound_is_shared_and_every_partition_asked_for_gets_records(
    client: RawKafka,
) -> None:
    create_topic(client, "pair")  # two partitions (num_partitions=2)
    batch = build_batch([b"p" * 1000] * 60)
    for _ in range(2 * SENDFILE_RESPONSE_BYTES // len(batch)):
        produce(client, "pair", batch, partition=0)
        produce(client, "pair", batch, partition=1)
    response = fetch(client, "pair", {0: 0, 1: 0}, 10 * 1024 * 1024)
    sizes = [len(bytes(p.records)) for p in response.responses[0].partitions]
    assert all(size > 0 for size in sizes)  # the busy first partition does not starve
    assert sum(sizes) <= SENDFILE_RESPONSE_BYTES


def test_a_min_bytes_above_the_bound_does_not_make_every_fetch_wait_out_max_wait(
    client: RawKafka,
) -> None:
    create_topic(client, "patient")
    batch = build_batch([b"m" * 1000] * 60)
    for _ in range(2 * SENDFILE_RESPONSE_BYTES // len(batch)):
        produce(client, "patient", batch)
    # max_wait 60 s, the client's socket timeout 10 s: an answer held for min_bytes
    # (never reachable under the bound) would time the request out.
    client.sock.settimeout(10)
    limit = 10 * 1024 * 1024
    response = fetch(client, "patient", {0: 0}, limit, min_bytes=limit, wait_ms=60_000)
    records = bytes(response.responses[0].partitions[0].records)
    assert 0 < len(records) <= SENDFILE_RESPONSE_BYTES
