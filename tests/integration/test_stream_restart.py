"""A stream's data, offsets and retention settings survive a restart; retention deletes
whole segments from the oldest and readers from ``first`` start at what is retained.

These restart Baedal itself (or look inside it), so they do not run against RabbitMQ.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from baedal import Broker
from baedal_testing import wait_until

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="restarts Baedal itself"),
]


def _publish(broker: Broker, name: str, bodies: list[bytes]) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2, headers={"n": len(body)}))
    connection.close()


def _read(broker: Broker, name: str, offset: Any, count: int) -> list[tuple[int, bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=100)
    got: list[tuple[int, bytes]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((properties.headers["x-stream-offset"], body))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(name, on_message, arguments={"x-stream-offset": offset})
    wait_until(lambda: connection.process_data_events(0.02) or len(got) >= count, timeout=20, what=f"{count} records")
    connection.close()
    return got


def _stream(broker: Broker, name: str) -> dict[str, Any]:
    def info() -> dict[str, Any]:
        stream = broker.core.vhosts["/"].queues[name]  # type: ignore[union-attr]
        return {
            **stream.stream_info(),
            "max_age_seconds": stream.log.max_age,
            "max_bytes": stream.log.max_bytes,
        }

    return broker.call(info)


def test_data_offsets_and_retention_settings_survive_a_restart(tmp_path: Path) -> None:
    name = "restart-stream"
    bodies = [f"r{i}|".encode() + b"." * 500 for i in range(300)]
    arguments = {
        "x-queue-type": "stream",
        "x-max-length-bytes": 10_000_000,
        "x-max-age": "7D",
        "x-stream-max-segment-size-bytes": 32 * 1024,
    }
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        connection.channel().queue_declare(name, durable=True, arguments=arguments)
        connection.close()
        _publish(broker, name, bodies)
        before = _stream(broker, name)
    assert before["segments"] > 1 and before["messages"] == 300

    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        after = _stream(broker, name)
        for key in ("first_offset", "last_offset", "next_offset", "messages", "bytes_on_disk", "segments"):
            assert after[key] == before[key], key
        assert after["max_bytes"] == 10_000_000
        assert after["max_age_seconds"] == 7 * 86400 and after["max_age"] == "7D"
        assert after["max_segment_size_bytes"] == 32 * 1024
        records = _read(broker, name, "first", 300)
        assert records == list(enumerate(bodies))
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        # the same declaration is still equivalent; a different one is not
        channel.queue_declare(name, durable=True, arguments=arguments)
        assert channel.queue_declare(name, passive=True).method.message_count == 300
        connection.close()
        _publish(broker, name, [b"after restart"])
        assert _read(broker, name, 300, 1) == [(300, b"after restart")]


def test_size_retention_drops_oldest_segments_and_first_follows(tmp_path: Path) -> None:
    name = "retained-stream"
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        connection.channel().queue_declare(
            name,
            durable=True,
            arguments={
                "x-queue-type": "stream",
                "x-max-length-bytes": 60_000,
                "x-stream-max-segment-size-bytes": 20_000,
            },
        )
        connection.close()
        _publish(broker, name, [f"k{i}|".encode() + b"." * 1000 for i in range(200)])
        info = _stream(broker, name)
        assert info["first_offset"] > 0, "old segments were deleted"
        assert info["bytes_on_disk"] <= 60_000 + 20_000 + 1100
        assert info["next_offset"] == 200
        first = info["first_offset"]
        records = _read(broker, name, "first", 200 - first)
        assert [offset for offset, _b in records] == list(range(first, 200))
        # an offset before the first retained one starts at the first (as RabbitMQ)
        assert _read(broker, name, 0, 1)[0][0] == first


@pytest.mark.parametrize("delivery_mode", [1, 2])
def test_a_stream_confirm_waits_for_the_fsync_whatever_the_delivery_mode(tmp_path: Path, delivery_mode: int) -> None:
    import threading

    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.queue_declare("held", durable=True, arguments={"x-queue-type": "stream"})
        channel.confirm_delivery()
        gate = threading.Event()
        fsyncs: list[int] = []

        def held_fsync(fd: int) -> None:
            fsyncs.append(fd)
            gate.wait(10)
            os.fsync(fd)

        broker.call(lambda: setattr(broker.storage.syncer, "fsync_function", held_fsync))
        confirmed = threading.Event()

        def publish() -> None:
            channel.basic_publish("", "held", b"wait for me", pika.BasicProperties(delivery_mode=delivery_mode))
            confirmed.set()

        publisher = threading.Thread(target=publish, daemon=True)
        publisher.start()
        wait_until(lambda: fsyncs, what="the covering fsync starts")
        assert not confirmed.wait(0.3), "confirmed before its fsync completed"
        gate.set()
        assert confirmed.wait(10), "never confirmed"
        publisher.join(5)
        broker.call(lambda: setattr(broker.storage.syncer, "fsync_function", None))
        connection.close()


def test_age_retention_removes_segments_older_than_x_max_age_on_its_timer(tmp_path: Path) -> None:
    name = "aging-stream"
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        connection.channel().queue_declare(
            name,
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-age": "2s", "x-stream-max-segment-size-bytes": 2_000},
        )
        connection.close()
        _publish(broker, name, [f"old{i}|".encode() + b"." * 500 for i in range(20)])
        assert _stream(broker, name)["first_offset"] == 0
        # no publish from now on: only the stream's own timer can remove segments
        wait_until(lambda: _stream(broker, name)["first_offset"] > 0, timeout=15, what="aged segments removed")
        info = _stream(broker, name)
        assert info["segments"] == 1 and info["next_offset"] == 20  # the active one stays
        assert info["segments_removed_by_retention"] >= 2


def test_a_message_larger_than_a_stream_batch_is_nacked_and_the_stream_goes_on(tmp_path: Path) -> None:
    # A record batch holds at most 64 MiB (storage/record_batch.py); RabbitMQ would take
    # such a message into a stream, Baedal nacks it rather than write what it cannot read.
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.queue_declare("bounded", durable=True, arguments={"x-queue-type": "stream"})
        channel.confirm_delivery()
        with pytest.raises(pika.exceptions.NackError):
            channel.basic_publish("", "bounded", b"x" * (65 * 1024 * 1024), pika.BasicProperties(delivery_mode=2))
        channel.basic_publish("", "bounded", b"small", pika.BasicProperties(delivery_mode=2))
        connection.close()
        assert _read(broker, "bounded", "first", 1) == [(0, b"small")]
