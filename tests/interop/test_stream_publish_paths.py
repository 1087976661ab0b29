"""A publish into a stream gives the same result whichever of Baedal's two publish paths
takes it.

Baedal's AMQP channel has a stream fast path (``Channel._publish_stream``): a
persistent publish whose only property is delivery-mode 2, to a direct or fanout
exchange (or the default one) that routes it to exactly one stream, skips the
``Message`` and the general route/enqueue/confirm code.  Everything else (other
properties, several destinations, unroutable, a transaction) takes the general path.
These tests publish the same messages both ways into one stream and compare what a
reader gets, and check the behaviour around the fast path's edges: mandatory returns,
alternate exchanges, user-id validation, confirms.

They use pika only and pass against RabbitMQ 3.10.8 too (``BAEDAL_TEST_AMQP_URL``),
where there is one path: the comparisons then hold trivially, and the edge cases show
RabbitMQ's answers, which Baedal's match.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

pytestmark = pytest.mark.timeout(60)

STREAM = {"x-queue-type": "stream"}
BARE = pika.BasicProperties(delivery_mode=2)


def _connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


@pytest.fixture
def names(amqp_url: str, unique: Callable[[str], str]) -> Iterator[Callable[[str, str], str]]:
    """``make(kind, prefix)``: a unique queue ("q") or exchange ("x") name, deleted after."""
    made: list[tuple[str, str]] = []

    def make(kind: str, prefix: str) -> str:
        name = unique(prefix)
        made.append((kind, name))
        return name

    yield make
    with contextlib.suppress(Exception):
        conn = _connect(amqp_url)
        channel = conn.channel()
        for kind, name in made:
            if kind == "q":
                channel.queue_delete(name)
            else:
                channel.exchange_delete(name)
        conn.close()


def _read(conn: pika.BlockingConnection, stream: str, count: int) -> list[tuple[Any, Any, bytes]]:
    """``count`` deliveries from the start of ``stream``, acked (prefetch as RabbitMQ wants)."""
    channel = conn.channel()
    channel.basic_qos(prefetch_count=50)
    got: list[tuple[Any, Any, bytes]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((method, properties, body))
        ch.basic_ack(method.delivery_tag)

    channel.basic_consume(stream, on_message, arguments={"x-stream-offset": "first"})
    deadline = time.monotonic() + 10
    while len(got) < count and time.monotonic() < deadline:
        conn.process_data_events(0.05)
    channel.close()
    return got


def _props(properties: Any) -> dict[str, Any]:
    """Delivered properties without the per-delivery stream offset."""
    out = {k: v for k, v in vars(properties).items() if v is not None}
    headers = dict(out.pop("headers", None) or {})
    headers.pop("x-stream-offset", None)
    if headers:
        out["headers"] = headers
    return out


def test_fast_and_general_paths_store_the_same_records(amqp_url: str, names: Any) -> None:
    stream = names("q", "paths.s")
    queue = names("q", "paths.q")
    exchange = names("x", "paths.x")
    fanout = names("x", "paths.f")
    conn = _connect(amqp_url)
    try:
        channel = conn.channel()
        channel.queue_declare(stream, durable=True, arguments=STREAM)
        channel.queue_declare(queue, durable=True)
        channel.exchange_declare(exchange, "direct", durable=True)
        channel.exchange_declare(fanout, "fanout", durable=True)
        channel.queue_bind(stream, exchange, "solo")
        channel.queue_bind(stream, exchange, "both")
        channel.queue_bind(queue, exchange, "both")
        channel.queue_bind(stream, fanout, "")
        channel.confirm_delivery()
        every = pika.BasicProperties(
            content_type="application/json",
            content_encoding="gzip",
            # (no nested table: RabbitMQ's streams drop those, Baedal keeps them)
            headers={"h": "v", "n": 7},
            delivery_mode=2,
            priority=3,
            correlation_id="c-1",
            reply_to="r",
            expiration="600000",
            message_id="m-1",
            timestamp=1_700_000_000,
            type="t",
            app_id="app",
        )
        channel.basic_publish("", stream, b"default-fast", BARE)  # fast
        channel.basic_publish(exchange, "solo", b"direct-fast", BARE)  # fast
        channel.basic_publish(exchange, "both", b"direct-general", BARE)  # 2 destinations
        channel.basic_publish(fanout, "any", b"fanout-fast", BARE)  # fast
        channel.basic_publish(exchange, "solo", b"every", every)  # general: properties
        channel.basic_publish(exchange, "solo", b"transient", pika.BasicProperties(delivery_mode=1))
        channel.basic_publish(exchange, "solo", b"none", pika.BasicProperties())
        tx = conn.channel()
        tx.tx_select()
        tx.basic_publish("", stream, b"default-general", BARE)  # general: a transaction
        tx.tx_commit()
        got = _read(conn, stream, 8)
        assert [body for _m, _p, body in got] == [
            b"default-fast",
            b"direct-fast",
            b"direct-general",
            b"fanout-fast",
            b"every",
            b"transient",
            b"none",
            b"default-general",
        ]
        routed = [(m.exchange, m.routing_key) for m, _p, _b in got]
        assert routed == [
            ("", stream),
            (exchange, "solo"),
            (exchange, "both"),
            (fanout, "any"),
            (exchange, "solo"),
            (exchange, "solo"),
            (exchange, "solo"),
            ("", stream),
        ]
        props = [_props(p) for _m, p, _b in got]
        # the same bare message, fast or general: the same properties delivered
        assert props[0] == props[1] == props[2] == props[3] == props[7]
        assert props[0].get("delivery_mode") == 2
        assert props[4] == _props(every)
        offsets = [p.headers["x-stream-offset"] for _m, p, _b in got]
        assert offsets == sorted(offsets) and len(set(offsets)) == 8
        # the classic queue got only its own key's message
        method, _props_q, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"direct-general"
        assert channel.basic_get(queue, auto_ack=True) == (None, None, None)
    finally:
        conn.close()


def test_unroutable_and_alternate_exchange_around_a_stream(amqp_url: str, names: Any) -> None:
    stream = names("q", "edge.s")
    spill = names("q", "edge.spill")
    alternate = names("x", "edge.ae")
    exchange = names("x", "edge.x")
    conn = _connect(amqp_url)
    try:
        channel = conn.channel()
        channel.queue_declare(stream, durable=True, arguments=STREAM)
        channel.queue_declare(spill, durable=True, arguments=STREAM)
        channel.exchange_declare(alternate, "fanout", durable=True)
        channel.exchange_declare(
            exchange, "direct", durable=True, arguments={"alternate-exchange": alternate}
        )
        channel.queue_bind(stream, exchange, "k")
        channel.queue_bind(spill, alternate, "")
        plain = names("x", "edge.plain")
        channel.exchange_declare(plain, "direct", durable=True)
        channel.queue_bind(stream, plain, "k")
        channel.confirm_delivery()
        channel.basic_publish(exchange, "k", b"to-stream", BARE, mandatory=True)
        channel.basic_publish(exchange, "other", b"to-alternate", BARE, mandatory=True)
        with pytest.raises(pika.exceptions.UnroutableError) as returned:
            channel.basic_publish(plain, "nowhere", b"returned", BARE, mandatory=True)
        assert [m.body for m in returned.value.messages] == [b"returned"]
        assert returned.value.messages[0].method.reply_code == 312
        channel.basic_publish(plain, "k", b"after", BARE, mandatory=True)
        assert [b for _m, _p, b in _read(conn, stream, 2)] == [b"to-stream", b"after"]
        assert [b for _m, _p, b in _read(conn, spill, 1)] == [b"to-alternate"]
    finally:
        conn.close()


def test_a_foreign_user_id_into_a_stream_is_refused_and_the_channel_closed(
    amqp_url: str, names: Any
) -> None:
    stream = names("q", "uid.s")
    conn = _connect(amqp_url)
    try:
        channel = conn.channel()
        channel.queue_declare(stream, durable=True, arguments=STREAM)
        channel.confirm_delivery()
        channel.basic_publish("", stream, b"mine", pika.BasicProperties(delivery_mode=2, user_id="guest"))
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
            channel.basic_publish(
                "", stream, b"theirs", pika.BasicProperties(delivery_mode=2, user_id="someone")
            )
        assert closed.value.reply_code == 406
        channel = conn.channel()
        channel.confirm_delivery()
        channel.basic_publish("", stream, b"again", BARE)
        got = _read(conn, stream, 2)
        assert [b for _m, _p, b in got] == [b"mine", b"again"]
        assert got[0][1].user_id == "guest"
    finally:
        conn.close()


def test_many_fast_publishes_with_confirms_are_all_stored_in_order(
    amqp_url: str, names: Any
) -> None:
    """Pipelined (many per loop turn, several turns): every confirm comes, and a reader
    from first gets every record once, in order."""
    stream = names("q", "many.s")
    conn = _connect(amqp_url)
    try:
        channel = conn.channel()
        channel.queue_declare(stream, durable=True, arguments=STREAM)
        channel.confirm_delivery()
        for i in range(3000):
            channel.basic_publish("", stream, b"%06d" % i + b"x" * 1000, BARE)
        got = _read(conn, stream, 3000)
        assert [b[:6] for _m, _p, b in got] == [b"%06d" % i for i in range(3000)]
    finally:
        conn.close()
