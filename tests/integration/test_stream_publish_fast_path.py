"""The AMQP stream publish fast path (``Channel._publish_stream`` →
``StreamQueue.publish_bare``) stores what the general path stores and counts what it
counts; these look inside Baedal (records in the log, counters, which path ran), so they
do not run against RabbitMQ.  ``tests/interop/test_stream_publish_paths.py`` compares
what readers get, against both brokers.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from baedal import Broker
from baedal.core.stream import EXCHANGE_HEADER, PENDING_MAX_BYTES
from baedal.storage.record_batch import decode_records

pytestmark = [
    pytest.mark.timeout(90),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="inspects Baedal's log"),
]

BARE = pika.BasicProperties(delivery_mode=2)


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, http_port=0, data_dir=tmp_path) as running:
        yield running


def _spy_fast_path(broker: Broker, name: str) -> list[bytes]:
    """Record the bodies that went through ``publish_bare`` on this stream (the real
    method still runs: an instance attribute in front of it)."""
    stream = broker.core.vhosts["/"].queues[name]
    seen: list[bytes] = []
    real = stream.publish_bare

    def publish_bare(exchange: str, routing_key: str, value: bytes) -> Any:
        seen.append(value)
        return real(exchange, routing_key, value)

    broker.call(lambda: setattr(stream, "publish_bare", publish_bare))
    return seen


def _records(broker: Broker, name: str) -> list[Any]:
    stream = broker.core.vhosts["/"].queues[name]
    batches = broker.call(lambda: stream.read(0, 1 << 30))
    return [r for batch in batches for r in decode_records(bytes(batch.data))]


def test_both_paths_store_the_same_record_and_count_the_same(broker: Broker) -> None:
    conn = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        channel = conn.channel()
        channel.queue_declare("fp", durable=True, arguments={"x-queue-type": "stream"})
        channel.queue_declare("fp-classic", durable=True)
        channel.exchange_declare("fp-x", "direct", durable=True)
        channel.queue_bind("fp", "fp-x", "k")
        channel.queue_bind("fp", "fp-x", "two")
        channel.queue_bind("fp-classic", "fp-x", "two")
        fast = _spy_fast_path(broker, "fp")
        vhost = broker.core.vhosts["/"]
        exchange = vhost.exchanges["fp-x"]
        before = broker.call(lambda: (exchange.publish_count, exchange.publish_out_count))
        channel.confirm_delivery()
        channel.basic_publish("fp-x", "k", b"fast", BARE)
        channel.basic_publish("fp-x", "two", b"general", BARE)  # a stream and a queue
        channel.basic_publish("fp-x", "k", b"big" * (PENDING_MAX_BYTES // 3 + 1), BARE)  # alone
        channel.basic_publish("fp-x", "nowhere", b"unroutable", BARE)
        tx = conn.channel()
        tx.tx_select()
        tx.basic_publish("", "fp", b"in-tx", BARE)
        tx.tx_commit()
        channel.basic_publish("", "fp", b"default", BARE)
        assert fast == [b"fast", fast[1], b"default"]  # the big one too; not the others
        assert fast[1].startswith(b"big")
        after = broker.call(lambda: (exchange.publish_count, exchange.publish_out_count))
        # 4 published to fp-x; routed: fast 1, general 2 (stream + queue), big 1
        assert (after[0] - before[0], after[1] - before[1]) == (4, 4)
        stream = vhost.queues["fp"]
        assert broker.call(lambda: stream.publish_count) == 5
        records = _records(broker, "fp")
        assert [r.value[:7] for r in records] == [b"fast", b"general", b"bigbigb", b"in-tx", b"default"]
        # same exchange header and key, whichever path: the general path's record
        assert (records[0].key, records[0].headers) == (b"k", [(EXCHANGE_HEADER, b"fp-x")])
        assert (records[1].key, records[1].headers) == (b"two", [(EXCHANGE_HEADER, b"fp-x")])
        assert (records[2].key, records[2].headers) == (b"k", [(EXCHANGE_HEADER, b"fp-x")])
        assert (records[3].key, records[3].headers) == (records[4].key, records[4].headers)
        assert records[3].key == b"fp" and records[3].headers == [(EXCHANGE_HEADER, b"")]
        stamps = [r.timestamp for r in records]
        assert stamps == sorted(stamps) and stamps[-1] - stamps[0] < 60_000
    finally:
        conn.close()


def test_a_stream_bound_next_to_queues_leaves_the_queue_publishes_alone(broker: Broker) -> None:
    """A fanout with a stream and a queue: both get every message (the general path);
    after the queue is unbound the stream alone takes the fast path."""
    conn = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        channel = conn.channel()
        channel.queue_declare("fan-s", durable=True, arguments={"x-queue-type": "stream"})
        channel.queue_declare("fan-q", durable=True)
        channel.exchange_declare("fan-x", "fanout", durable=True)
        channel.queue_bind("fan-s", "fan-x")
        channel.queue_bind("fan-q", "fan-x")
        fast = _spy_fast_path(broker, "fan-s")
        channel.confirm_delivery()
        channel.basic_publish("fan-x", "", b"one", BARE)
        channel.queue_unbind("fan-q", "fan-x")
        channel.basic_publish("fan-x", "", b"two", BARE)
        assert fast == [b"two"]
        assert [r.value for r in _records(broker, "fan-s")] == [b"one", b"two"]
        assert channel.basic_get("fan-q", auto_ack=True)[2] == b"one"
        assert channel.basic_get("fan-q", auto_ack=True) == (None, None, None)
    finally:
        conn.close()
