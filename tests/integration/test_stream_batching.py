"""A stream appends the records of a loop turn as one RecordBatch (core/stream.py), bounded
in records and bytes; a record too large to batch is appended alone; order, confirms and
what readers see are unchanged.

These look inside Baedal's log (batch boundaries), so they do not run against RabbitMQ.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from rawamqp import FRAME_BODY, FRAME_HEADER, connect, frame, method_frame, shortstr

from baedal import Broker
from baedal.core.stream import PENDING_MAX_BYTES, PENDING_MAX_RECORDS

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="inspects Baedal's log"),
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, http_port=0, data_dir=tmp_path) as running:
        yield running


def _publishes(name: str, bodies: list[bytes], persistent: bool = True) -> bytes:
    data = bytearray()
    for body in bodies:
        data += method_frame(1, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr(name) + b"\x00")
        flags, props = (0x1000, b"\x02") if persistent else (0, b"")
        data += frame(FRAME_HEADER, 1, struct.pack("!HHQH", 60, 0, len(body), flags) + props)
        for start in range(0, len(body), 100_000):  # frame_max is 128 KiB
            data += frame(FRAME_BODY, 1, body[start : start + 100_000])
    return bytes(data)


def _publish_confirmed(broker: Broker, name: str, bodies: list[bytes], persistent: bool = True) -> None:
    """Pipeline every publish in one write (many per loop turn), then await every ack."""
    client = connect("127.0.0.1", broker.port)
    try:
        client.open_channel(1)
        client.send(method_frame(1, 85, 10, b"\x00"))  # confirm.select
        client.read_method((85, 11))
        client.sock.sendall(_publishes(name, bodies, persistent))
        acked = 0
        while acked < len(bodies):
            ack = client.read_method((60, 80))
            tag, multiple = struct.unpack("!QB", ack.payload[4:13])
            acked = tag if multiple else acked + 1
    finally:
        client.close()


def _batches(broker: Broker, name: str) -> list[Any]:
    stream = broker.core.vhosts["/"].queues[name]
    return broker.call(lambda: stream.read(0, 1 << 30))


def _consume_all(broker: Broker, name: str, count: int) -> list[bytes]:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)
        got: list[bytes] = []
        for method, _props, body in channel.consume(
            name, arguments={"x-stream-offset": "first"}, inactivity_timeout=10
        ):
            assert method is not None, f"only {len(got)} of {count} arrived"
            got.append(body)
            channel.basic_ack(method.delivery_tag)
            if len(got) == count:
                break
        channel.cancel()
        return got
    finally:
        connection.close()


def _declare(broker: Broker, name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    connection.channel().queue_declare(name, durable=True, arguments={"x-queue-type": "stream"})
    connection.close()


def test_a_pipelined_burst_is_stored_in_few_bounded_batches_in_order(broker: Broker) -> None:
    _declare(broker, "burst")
    count = 3 * PENDING_MAX_RECORDS
    bodies = [b"%d" % i for i in range(count)]
    _publish_confirmed(broker, "burst", bodies)
    batches = _batches(broker, "burst")
    assert sum(b.record_count for b in batches) == count
    assert [b.base_offset for b in batches] == sorted(b.base_offset for b in batches)
    assert len(batches) < count // 10  # one per loop turn, not one per record
    assert max(b.record_count for b in batches) <= PENDING_MAX_RECORDS
    assert _consume_all(broker, "burst", count) == bodies


def test_a_record_too_large_to_batch_is_appended_alone_in_its_place(broker: Broker) -> None:
    _declare(broker, "large")
    big = b"B" * PENDING_MAX_BYTES
    bodies = [b"a", b"b", big, b"c", b"d"]
    _publish_confirmed(broker, "large", bodies, persistent=False)  # transient: same path
    batches = _batches(broker, "large")
    assert sum(b.record_count for b in batches) == 5
    assert any(b.record_count == 1 and len(b.data) > PENDING_MAX_BYTES for b in batches)
    assert _consume_all(broker, "large", 5) == bodies


def test_pending_records_are_written_at_a_clean_shutdown(tmp_path: Path) -> None:
    with Broker(port=0, http_port=0, data_dir=tmp_path) as broker:
        _declare(broker, "kept")
        stream = broker.core.vhosts["/"].queues["kept"]

        def publish_without_a_turn_end() -> None:
            from baedal.core.message import Message

            for i in range(3):
                stream.publish(Message("", "kept", b"%d" % i, persistent=True))

        broker.call(publish_without_a_turn_end)  # the shutdown follows at once
    with Broker(port=0, http_port=0, data_dir=tmp_path) as broker:
        assert _consume_all(broker, "kept", 3) == [b"0", b"1", b"2"]
