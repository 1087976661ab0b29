"""Streams over AMQP 0-9-1 with pika and aio-pika, as RabbitMQ's own stream tutorials
use them, plus the refusals table.

Every test also passes against RabbitMQ 3.10.8 (``BAEDAL_TEST_AMQP_URL=
amqp://guest:guest@127.0.0.1:5672/``, feature flag ``stream_queue`` enabled); where the
answers differ on purpose the test says so and why.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import os
import time
from typing import Any

import aio_pika
import pika
import pika.exceptions
import pytest

from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(60)

EXTERNAL = bool(os.environ.get("BAEDAL_TEST_AMQP_URL"))
STREAM = {"x-queue-type": "stream"}
OK = None
WHERE = "for queue '{name}' in vhost '/'"


def _connect(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


@pytest.fixture
def connection(amqp_url: str):
    conn = _connect(amqp_url)
    yield conn
    with contextlib.suppress(Exception):
        conn.close()


@pytest.fixture
def stream(amqp_url: str, unique):
    """A fresh stream declared as the tutorial does; deleted afterwards."""
    name = unique("stream")
    conn = _connect(amqp_url)
    conn.channel().queue_declare(
        name,
        durable=True,
        arguments={
            **STREAM,
            "x-max-length-bytes": 2_000_000_000,
            "x-stream-max-segment-size-bytes": 100_000_000,
        },
    )
    conn.close()
    yield name
    with contextlib.suppress(Exception):
        conn = _connect(amqp_url)
        conn.channel().queue_delete(name)
        conn.close()


def _publish(channel: Any, queue: str, bodies: list[bytes], **props: Any) -> None:
    """Publish with confirms (the tutorial's way): returns once every one is confirmed."""
    channel.confirm_delivery()
    for body in bodies:
        channel.basic_publish("", queue, body, pika.BasicProperties(delivery_mode=2, **props))


def _consume(
    connection: pika.BlockingConnection,
    queue: str,
    count: int,
    offset: Any = None,
    prefetch: int = 10,
    timeout: float = 10.0,
) -> list[tuple[Any, Any, bytes]]:
    """Consume ``count`` deliveries from ``offset`` (acking each) on a new channel."""
    channel = connection.channel()
    channel.basic_qos(prefetch_count=prefetch)
    got: list[tuple[Any, Any, bytes]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        got.append((method, properties, body))
        ch.basic_ack(method.delivery_tag)

    arguments = {} if offset is None else {"x-stream-offset": offset}
    channel.basic_consume(queue, on_message, arguments=arguments)
    deadline = time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        connection.process_data_events(0.05)
    channel.close()
    return got


def _offsets(got: list[tuple[Any, Any, bytes]]) -> list[int]:
    return [properties.headers["x-stream-offset"] for _m, properties, _b in got]


def _refusal(url: str, action: Any) -> tuple[str, int, str] | None:
    """Run ``action(channel)``; the close it caused as (level, code, text), or None."""
    conn = _connect(url)
    try:
        channel = conn.channel()
        action(channel)
        conn.process_data_events(0.2)
        return None
    except pika.exceptions.ChannelClosedByBroker as exc:
        return ("channel", exc.reply_code, exc.reply_text)
    except pika.exceptions.ConnectionClosedByBroker as exc:
        return ("connection", exc.reply_code, exc.reply_text)
    finally:
        with contextlib.suppress(Exception):
            conn.close()


# --- declaring ----------------------------------------------------------------------------

# (case, durable, exclusive, auto_delete, extra arguments, server-named, expected 406 text)
DECLARE_TABLE = [
    ("plain", True, False, False, {}, False, OK),
    ("with retention", True, False, False, {"x-max-length-bytes": 20_000_000_000, "x-max-age": "7D"}, False, OK),
    ("x-max-age 1Y", True, False, False, {"x-max-age": "1Y"}, False, OK),
    ("x-max-age 1M", True, False, False, {"x-max-age": "1M"}, False, OK),
    ("x-max-age 1h", True, False, False, {"x-max-age": "1h"}, False, OK),
    ("x-max-age 30m", True, False, False, {"x-max-age": "30m"}, False, OK),
    ("x-max-age 10s", True, False, False, {"x-max-age": "10s"}, False, OK),
    ("segment size", True, False, False, {"x-stream-max-segment-size-bytes": 1_000_000}, False, OK),
    ("cluster size is accepted", True, False, False, {"x-initial-cluster-size": 1}, False, OK),
    ("unknown arguments are accepted", True, False, False, {"x-whatever": 1}, False, OK),
    ("non-durable", False, False, False, {}, False, "invalid property 'non-durable' " + WHERE),
    ("exclusive", True, True, False, {}, False, "invalid property 'exclusive-owner' " + WHERE),
    ("auto-delete", True, False, True, {}, False, "invalid property 'auto-delete' " + WHERE),
    ("exclusive and auto-delete", True, True, True, {}, False, "invalid property 'auto-delete' " + WHERE),
    ("server-named", True, False, False, {}, True, "Cannot declare a server-named queue for type rabbit_stream_queue"),
    (
        "argument beats non-durable",
        False, False, False, {"x-message-ttl": 5}, False,
        "invalid arg 'x-message-ttl' " + WHERE + " of queue type rabbit_stream_queue",
    ),
    ("x-max-age number", True, False, False, {"x-max-age": 10}, False,
     "invalid arg 'x-max-age' " + WHERE + ": {{unacceptable_type,signedint}}"),
    ("x-max-age 0s", True, False, False, {"x-max-age": "0s"}, False, "invalid arg 'x-max-age' " + WHERE + ": invalid_max_age"),
    ("x-max-age 1d", True, False, False, {"x-max-age": "1d"}, False, "invalid arg 'x-max-age' " + WHERE + ": invalid_max_age"),
    ("x-max-age 1x", True, False, False, {"x-max-age": "1x"}, False, "invalid arg 'x-max-age' " + WHERE + ": invalid_max_age"),
    ("x-max-length-bytes string", True, False, False, {"x-max-length-bytes": "x"}, False,
     "invalid arg 'x-max-length-bytes' " + WHERE + ': "expected integer, got longstr"'),
    ("x-max-length-bytes negative", True, False, False, {"x-max-length-bytes": -1}, False,
     "invalid arg 'x-max-length-bytes' " + WHERE + ": {{value_negative,-1}}"),
    ("segment size negative", True, False, False, {"x-stream-max-segment-size-bytes": -5}, False,
     "invalid arg 'x-stream-max-segment-size-bytes' " + WHERE + ": {{value_negative,-5}}"),
] + [
    (argument, True, False, False, {argument: value}, False,
     f"invalid arg '{argument}' " + WHERE + " of queue type rabbit_stream_queue")
    for argument, value in [
        ("x-message-ttl", 1000),
        ("x-expires", 1000),
        ("x-max-length", 10),
        ("x-overflow", "reject-publish"),
        ("x-dead-letter-exchange", "dlx"),
        ("x-dead-letter-routing-key", "k"),
        ("x-max-priority", 5),
        ("x-single-active-consumer", True),
        ("x-queue-mode", "lazy"),
        ("x-queue-version", 2),
        ("x-delivery-limit", 3),
        ("x-quorum-initial-group-size", 1),
        ("x-max-in-memory-length", 1),
        ("x-max-in-memory-bytes", 1),
    ]
]


@pytest.mark.parametrize(
    "case, durable, exclusive, auto_delete, extra, server_named, expected",
    DECLARE_TABLE,
    ids=[row[0] for row in DECLARE_TABLE],
)
def test_stream_declaration_is_answered_as_rabbitmq_answers_it(
    amqp_url: str, unique, case, durable, exclusive, auto_delete, extra, server_named, expected
) -> None:
    name = "" if server_named else unique("stream")

    def declare(channel: Any) -> None:
        channel.queue_declare(
            name, durable=durable, exclusive=exclusive, auto_delete=auto_delete,
            arguments={**STREAM, **extra},
        )
        channel.queue_delete(name)

    answer = _refusal(amqp_url, declare)
    if expected is OK:
        assert answer is None
    else:
        assert answer == ("channel", 406, "PRECONDITION_FAILED - " + expected.format(name=name))


def test_redeclaring_a_stream_as_classic_is_inequivalent(amqp_url: str, stream: str) -> None:
    answer = _refusal(amqp_url, lambda ch: ch.queue_declare(stream, durable=True))
    assert answer is not None and answer[:2] == ("channel", 406)
    assert "inequivalent arg 'x-" in answer[2]


@pytest.mark.skipif(EXTERNAL, reason="deliberate difference: RabbitMQ 3.10.8 crashes (541, connection closed)")
def test_x_max_age_without_a_number_is_refused_with_406(amqp_url: str, unique) -> None:
    # RabbitMQ 3.10.8 answers "h" with 541 INTERNAL_ERROR and closes the connection (a
    # crash in its parser); Baedal answers it as RabbitMQ answers "1x".
    name = unique("stream")
    answer = _refusal(
        amqp_url, lambda ch: ch.queue_declare(name, durable=True, arguments={**STREAM, "x-max-age": "h"})
    )
    assert answer == ("channel", 406, f"PRECONDITION_FAILED - invalid arg 'x-max-age' for queue '{name}' in vhost '/': invalid_max_age")


# --- consuming refusals -------------------------------------------------------------------


def test_consuming_a_stream_without_a_prefetch_is_refused(amqp_url: str, stream: str) -> None:
    def consume(channel: Any) -> None:
        channel.basic_consume(stream, lambda *a: None)

    assert _refusal(amqp_url, consume) == (
        "channel", 406, f"PRECONDITION_FAILED - consumer prefetch count is not set for 'queue '{stream}' in vhost '/''"
    )


def test_a_global_prefetch_alone_does_not_count(amqp_url: str, stream: str) -> None:
    def consume(channel: Any) -> None:
        channel.basic_qos(prefetch_count=10, global_qos=True)
        channel.basic_consume(stream, lambda *a: None)

    answer = _refusal(amqp_url, consume)
    assert answer is not None and answer[:2] == ("channel", 406)
    assert "consumer prefetch count is not set" in answer[2]


def test_automatic_acknowledgement_is_refused_with_540(amqp_url: str, stream: str) -> None:
    def consume(channel: Any) -> None:
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(stream, lambda *a: None, auto_ack=True)

    assert _refusal(amqp_url, consume) == (
        "connection", 540,
        f"NOT_IMPLEMENTED - automatic acknowledgement not supported by stream queues queue '{stream}' in vhost '/'",
    )


@pytest.mark.parametrize("auto_ack", [False, True])
def test_basic_get_is_refused_with_540(amqp_url: str, stream: str, auto_ack: bool) -> None:
    assert _refusal(amqp_url, lambda ch: ch.basic_get(stream, auto_ack=auto_ack)) == (
        "connection", 540, f"NOT_IMPLEMENTED - basic.get not supported by stream queues queue '{stream}' in vhost '/'"
    )


def test_purge_is_refused_with_540(amqp_url: str, stream: str) -> None:
    assert _refusal(amqp_url, lambda ch: ch.queue_purge(stream)) == (
        "connection", 540, f"NOT_IMPLEMENTED - queue.purge not supported by stream queues queue '{stream}' in vhost '/'"
    )


@pytest.mark.parametrize("how", ["nack", "reject"])
def test_nack_and_reject_are_refused_with_540(amqp_url: str, stream: str, how: str) -> None:
    conn = _connect(amqp_url)
    _publish(conn.channel(), stream, [b"one"])
    conn.close()

    def consume_then_settle(channel: Any) -> None:
        channel.basic_qos(prefetch_count=10)
        tags: list[int] = []
        channel.basic_consume(
            stream, lambda ch, m, p, b: tags.append(m.delivery_tag), arguments={"x-stream-offset": "first"}
        )
        wait_until(lambda: channel.connection.process_data_events(0.05) or tags, what="a delivery")
        if how == "nack":
            channel.basic_nack(tags[0], requeue=True)
        else:
            channel.basic_reject(tags[0], requeue=False)
        channel.connection.process_data_events(0.5)

    assert _refusal(amqp_url, consume_then_settle) == (
        "connection", 540,
        f"NOT_IMPLEMENTED - basic.nack and basic.reject not supported by stream queues queue '{stream}' in vhost '/'",
    )


@pytest.mark.skipif(EXTERNAL, reason="deliberate difference: RabbitMQ 3.10.8 crashes (541, connection closed)")
@pytest.mark.parametrize("offset", ["bogus", True, {"a": 1}])
def test_an_invalid_x_stream_offset_is_refused_with_406(amqp_url: str, stream: str, offset: Any) -> None:
    # RabbitMQ 3.10.8 answers these with 541 INTERNAL_ERROR (connection closed).
    def consume(channel: Any) -> None:
        channel.basic_qos(prefetch_count=10)
        channel.basic_consume(stream, lambda *a: None, arguments={"x-stream-offset": offset})

    answer = _refusal(amqp_url, consume)
    assert answer is not None and answer[:2] == ("channel", 406)
    assert "x-stream-offset" in answer[2]


# --- the tutorial -------------------------------------------------------------------------


def test_tutorial_publish_with_confirms_then_consume_from_first(
    connection: pika.BlockingConnection, stream: str
) -> None:
    bodies = [f"hello {i}".encode() for i in range(20)]
    _publish(
        connection.channel(), stream, bodies,
        content_type="text/plain", message_id="m", headers={"app": "tutorial", "big": 2**40, "n": 7},
    )
    got = _consume(connection, stream, 20, "first")
    assert [body for _m, _p, body in got] == bodies
    assert _offsets(got) == list(range(20))
    method, properties, _body = got[0]
    assert method.routing_key == stream and method.exchange == "" and not method.redelivered
    assert properties.content_type == "text/plain" and properties.message_id == "m"
    assert properties.delivery_mode == 2
    assert properties.headers == {"app": "tutorial", "big": 2**40, "n": 7, "x-stream-offset": 0}


def test_transient_messages_are_confirmed_and_stored_too(
    connection: pika.BlockingConnection, stream: str
) -> None:
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(5):  # delivery_mode 1: a stream stores it all the same
        channel.basic_publish("", stream, f"t{i}".encode(), pika.BasicProperties(delivery_mode=1))
    got = _consume(connection, stream, 5, "first")
    assert [b for *_x, b in got] == [f"t{i}".encode() for i in range(5)]
    assert [p.delivery_mode for _m, p, _b in got] == [1] * 5


def test_messages_stay_after_ack_and_a_second_reader_from_first_sees_them_all(
    connection: pika.BlockingConnection, stream: str
) -> None:
    bodies = [f"m{i}".encode() for i in range(30)]
    _publish(connection.channel(), stream, bodies)
    first = _consume(connection, stream, 30, "first", prefetch=7)
    second = _consume(connection, stream, 30, "first", prefetch=3)
    assert [b for *_x, b in first] == bodies and [b for *_x, b in second] == bodies
    assert _offsets(second) == list(range(30))
    wait_until(
        lambda: connection.channel().queue_declare(stream, passive=True).method.message_count == 30,
        timeout=15,
        what="the stream still counts 30 messages",
    )


def test_default_offset_is_next(connection: pika.BlockingConnection, stream: str) -> None:
    _publish(connection.channel(), stream, [b"old"])
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)
    got: list[bytes] = []
    channel.basic_consume(stream, lambda ch, m, p, b: (got.append(b), ch.basic_ack(m.delivery_tag)))
    connection.process_data_events(0.3)
    _publish(connection.channel(), stream, [b"new"])
    wait_until(lambda: connection.process_data_events(0.05) or got, what="the new message")
    connection.process_data_events(0.2)
    assert got == [b"new"]


def test_offset_next_gets_only_what_is_published_afterwards(
    connection: pika.BlockingConnection, stream: str
) -> None:
    _publish(connection.channel(), stream, [b"a", b"b"])
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)
    got: list[tuple[bytes, int]] = []
    channel.basic_consume(
        stream,
        lambda ch, m, p, b: (got.append((b, p.headers["x-stream-offset"])), ch.basic_ack(m.delivery_tag)),
        arguments={"x-stream-offset": "next"},
    )
    connection.process_data_events(0.3)
    _publish(connection.channel(), stream, [b"c"])
    wait_until(lambda: connection.process_data_events(0.05) or got, what="the new message")
    assert got == [(b"c", 2)]


def test_offset_last_starts_at_the_last_chunk(connection: pika.BlockingConnection, stream: str) -> None:
    # Published one at a time with a confirm each, so every message is its own chunk in
    # RabbitMQ and its own batch in Baedal: "last" is the last message.
    channel = connection.channel()
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", stream, f"x{i}".encode(), pika.BasicProperties(delivery_mode=2))
    got = _consume(connection, stream, 1, "last", timeout=3)
    assert [b for *_x, b in got] == [b"x4"] and _offsets(got) == [4]


def test_numeric_offset_starts_there(connection: pika.BlockingConnection, stream: str) -> None:
    _publish(connection.channel(), stream, [f"n{i}".encode() for i in range(10)])
    got = _consume(connection, stream, 3, 7)
    assert _offsets(got) == [7, 8, 9] and [b for *_x, b in got] == [b"n7", b"n8", b"n9"]


def test_offset_beyond_the_end_waits_for_new_messages(connection: pika.BlockingConnection, stream: str) -> None:
    _publish(connection.channel(), stream, [b"a"])
    assert _consume(connection, stream, 1, 100, timeout=0.5) == []


def test_timestamp_offset_starts_at_messages_stored_from_then(
    connection: pika.BlockingConnection, stream: str
) -> None:
    _publish(connection.channel(), stream, [b"before-1", b"before-2"])
    time.sleep(1.1)  # timestamps have one-second resolution: separate the two groups
    middle = datetime.datetime.fromtimestamp(int(time.time()), datetime.UTC)
    time.sleep(1.1)
    _publish(connection.channel(), stream, [b"after-1", b"after-2"])
    got = _consume(connection, stream, 2, middle)
    assert [b for *_x, b in got] == [b"after-1", b"after-2"]
    assert _offsets(got) == [2, 3]


def test_interval_offset_reads_what_was_stored_within_it(
    connection: pika.BlockingConnection, stream: str
) -> None:
    _publish(connection.channel(), stream, [b"i0", b"i1", b"i2"])
    got = _consume(connection, stream, 3, "1h")
    assert [b for *_x, b in got] == [b"i0", b"i1", b"i2"]


def test_prefetch_bounds_unacked_deliveries_and_acks_return_credit(
    connection: pika.BlockingConnection, stream: str
) -> None:
    _publish(connection.channel(), stream, [f"c{i}".encode() for i in range(10)])
    channel = connection.channel()
    channel.basic_qos(prefetch_count=3)
    tags: list[int] = []
    channel.basic_consume(stream, lambda ch, m, p, b: tags.append(m.delivery_tag), arguments={"x-stream-offset": "first"})
    wait_until(lambda: connection.process_data_events(0.05) or len(tags) >= 3, what="three deliveries")
    connection.process_data_events(0.3)
    assert len(tags) == 3  # no credit left
    channel.basic_ack(tags[-1], multiple=True)
    wait_until(lambda: connection.process_data_events(0.05) or len(tags) >= 6, what="three more")
    connection.process_data_events(0.3)
    assert len(tags) == 6


def test_a_mixed_stream_reads_back_in_order_with_its_offsets(
    connection: pika.BlockingConnection, stream: str, unique
) -> None:
    # Plain persistent records (the broker's batch path) interleaved with every shape
    # that is not: properties, an empty body, a body over one frame, a transient one,
    # and a record routed through an exchange with its own routing key.
    exchange = unique("x")
    channel = connection.channel()
    channel.exchange_declare(exchange, "direct")
    channel.queue_bind(stream, exchange, "k")
    channel.confirm_delivery()
    sent: list[tuple[str, str, bytes, dict[str, Any]]] = []
    for i in range(60):
        shape = i % 6
        body = f"plain {i}".encode()
        props: dict[str, Any] = {"delivery_mode": 2}
        target, key = "", stream
        if shape == 1:
            props.update(content_type="text/plain", headers={"n": i})
        elif shape == 2:
            body = b""
        elif shape == 3:
            body = bytes(range(256)) * 800  # 204,800 bytes: more than pika's frame_max
        elif shape == 4:
            props["delivery_mode"] = 1
        elif shape == 5:
            target, key = exchange, "k"
        channel.basic_publish(target, key, body, pika.BasicProperties(**props))
        sent.append((target, key, body, props))
    for prefetch in (1000, 2):
        got = _consume(connection, stream, len(sent), "first", prefetch=prefetch)
        assert [b for *_x, b in got] == [body for *_x, body, _p in sent]
        assert _offsets(got) == list(range(len(sent)))
        for (method, properties, _body), (target, key, _b, props) in zip(got, sent, strict=True):
            assert (method.exchange, method.routing_key, method.redelivered) == (target, key, False)
            assert properties.delivery_mode == props["delivery_mode"]
            assert properties.content_type == props.get("content_type")
            headers = dict(properties.headers)
            del headers["x-stream-offset"]
            assert headers == props.get("headers", {})
    channel.exchange_delete(exchange)


def _deliveries(channel: Any, stream: str, prefetch: int) -> list[int]:
    """Consume from first on ``channel`` (no acks) until a full prefetch has arrived."""
    connection = channel.connection
    channel.basic_qos(prefetch_count=prefetch)
    tags: list[int] = []
    channel.basic_consume(
        stream, lambda ch, m, p, b: tags.append(m.delivery_tag), arguments={"x-stream-offset": "first"}
    )
    wait_until(lambda: connection.process_data_events(0.05) or len(tags) >= prefetch, what="a full prefetch")
    return tags


def test_acking_a_stream_delivery_twice_is_an_unknown_delivery_tag(amqp_url: str, stream: str) -> None:
    conn = _connect(amqp_url)
    _publish(conn.channel(), stream, [b"a", b"b", b"c", b"d"])
    conn.close()

    def ack_twice(channel: Any) -> None:
        tags = _deliveries(channel, stream, 4)
        channel.basic_ack(tags[2])
        channel.basic_ack(tags[0], multiple=True)
        channel.basic_ack(tags[2])
        channel.basic_qos(prefetch_count=4)  # a round trip: the refusal arrives first

    assert _refusal(amqp_url, ack_twice) == ("channel", 406, "PRECONDITION_FAILED - unknown delivery tag 3")


def test_stream_deliveries_acked_one_by_one_out_of_order_return_credit(
    connection: pika.BlockingConnection, stream: str
) -> None:
    _publish(connection.channel(), stream, [f"o{i}".encode() for i in range(20)])
    channel = connection.channel()
    tags = _deliveries(channel, stream, 5)
    while len(tags) < 20:
        held = list(tags[-5:])
        for tag in reversed(held):  # newest first: each ack frees one credit
            channel.basic_ack(tag)
        wanted = min(20, len(tags) + 5)
        wait_until(
            lambda wanted=wanted: connection.process_data_events(0.05) or len(tags) >= wanted,
            what="five more deliveries",
        )
    connection.process_data_events(0.2)
    assert tags == list(range(1, 21))


def test_closing_with_unacked_stream_deliveries_loses_nothing(
    amqp_url: str, connection: pika.BlockingConnection, stream: str
) -> None:
    bodies = [f"u{i}".encode() for i in range(50)]
    _publish(connection.channel(), stream, bodies)
    other = _connect(amqp_url)
    channel = other.channel()
    tags = _deliveries(channel, stream, 20)
    channel.basic_ack(tags[4], multiple=True)
    # five more arrive; take them all in (pika nacks on close whatever it still holds
    # undispatched, which a stream refuses with 540)
    wait_until(lambda: other.process_data_events(0.05) or len(tags) >= 25, what="five more")
    other.process_data_events(0.2)
    assert len(tags) == 25
    other.close()  # twenty unacked: the stream keeps them, nothing is redelivered
    got = _consume(connection, stream, 50, "first", prefetch=20)
    assert [b for *_x, b in got] == bodies and not any(m.redelivered for m, _p, _b in got)


def test_exchanges_route_into_a_stream(connection: pika.BlockingConnection, stream: str, unique) -> None:
    exchange = unique("x")
    channel = connection.channel()
    channel.exchange_declare(exchange, "topic")
    channel.queue_bind(stream, exchange, "orders.*")
    channel.confirm_delivery()
    channel.basic_publish(exchange, "orders.new", b"routed", pika.BasicProperties(delivery_mode=2))
    channel.basic_publish(exchange, "other", b"not routed", pika.BasicProperties(delivery_mode=2))
    got = _consume(connection, stream, 1, "first")
    channel.exchange_delete(exchange)
    assert [(m.exchange, m.routing_key, b) for m, _p, b in got] == [(exchange, "orders.new", b"routed")]


def test_deleting_a_stream_cancels_its_consumers(amqp_url: str, unique) -> None:
    name = unique("stream")
    conn = _connect(amqp_url)
    channel = conn.channel()
    channel.queue_declare(name, durable=True, arguments=STREAM)
    channel.basic_qos(prefetch_count=5)
    cancelled: list[Any] = []
    channel.add_on_cancel_callback(cancelled.append)
    channel.basic_consume(name, lambda *a: None)
    other = _connect(amqp_url)
    other.channel().queue_delete(name)
    other.close()
    wait_until(lambda: conn.process_data_events(0.05) or cancelled, what="basic.cancel from the broker")
    conn.close()


# --- aio-pika ---------------------------------------------------------------------------


async def test_aio_pika_stream_tutorial(amqp_url: str, unique) -> None:
    name = unique("stream")
    connection = await aio_pika.connect(amqp_url)
    try:
        channel = await connection.channel()  # publisher confirms on
        queue = await channel.declare_queue(
            name,
            durable=True,
            arguments={**STREAM, "x-max-length-bytes": 2_000_000_000, "x-stream-max-segment-size-bytes": 100_000_000},
        )
        for i in range(10):
            await channel.default_exchange.publish(
                aio_pika.Message(f"aio {i}".encode(), delivery_mode=aio_pika.DeliveryMode.PERSISTENT, headers={"i": i}),
                routing_key=name,
            )
        await channel.set_qos(prefetch_count=4)
        got: list[tuple[bytes, int, int]] = []
        done = asyncio.get_running_loop().create_future()

        async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
            got.append((message.body, message.headers["i"], message.headers["x-stream-offset"]))
            await message.ack()
            if len(got) == 10 and not done.done():
                done.set_result(None)

        await queue.consume(on_message, arguments={"x-stream-offset": "first"})
        await asyncio.wait_for(done, 10)
        assert got == [(f"aio {i}".encode(), i, i) for i in range(10)]
        await queue.delete(if_unused=False, if_empty=False)
    finally:
        await connection.close()
