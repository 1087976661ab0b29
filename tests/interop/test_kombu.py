"""kombu (py-amqp transport) interop scenarios, validated against RabbitMQ 3.10."""

from __future__ import annotations

import contextlib
import socket

import amqp.exceptions
import pytest
from kombu import Connection, Consumer, Exchange, Producer, Queue

pytestmark = pytest.mark.timeout(30)

WAIT = 5
# bound py-amqp socket reads/writes so a broker that stops answering fails a test
# instead of hanging it (e.g. in connection close during teardown)
IO_TIMEOUTS = {"read_timeout": 10, "write_timeout": 10}


@pytest.fixture
def conn(amqp_url):
    # confirm_publish makes each publish wait for the broker's ack, so later reads see it
    c = Connection(
        amqp_url, connect_timeout=5, transport_options={"confirm_publish": True, **IO_TIMEOUTS}
    )
    c.connect()
    yield c
    c.release()


@pytest.fixture
def cleanup(conn):
    """Names registered here are deleted after the test."""
    queues: list[Queue] = []
    exchanges: list[Exchange] = []
    yield queues, exchanges
    with Connection(conn.as_uri(include_password=True), transport_options=IO_TIMEOUTS) as c:
        ch = c.channel()
        for q in queues:
            with contextlib.suppress(Exception):
                ch.queue_delete(q.name)
        for x in exchanges:
            with contextlib.suppress(Exception):
                ch.exchange_delete(x.name)


def drain_until(conn: Connection, predicate, timeout: float = WAIT) -> None:
    """drain_events until predicate() holds (drain_events blocks; no sleeping)."""
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"condition not met within {timeout}s")
        with contextlib.suppress(socket.timeout):
            conn.drain_events(timeout=min(remaining, 0.5))


def test_connection_uses_py_amqp_and_negotiates_rabbitmq_capabilities(conn):
    assert conn.transport_cls in ("amqp", "pyamqp")
    raw = conn.connection
    server_caps = raw.server_properties["capabilities"]
    client_caps = raw.client_properties["capabilities"]
    for cap in ("consumer_cancel_notify", "connection.blocked", "authentication_failure_close"):
        assert server_caps[cap] is True
        assert client_caps[cap] is True  # py-amqp only asks for what the server offers


def test_producer_and_consumer_round_trip_json(conn, unique, cleanup):
    queues, exchanges = cleanup
    x = Exchange(unique("x"), type="direct", durable=False)
    q = Queue(unique("q"), exchange=x, routing_key="work", durable=False)
    exchanges.append(x)
    queues.append(q)
    producer = Producer(conn.channel(), exchange=x, serializer="json")
    producer.publish({"task": "add", "args": [2, 3]}, routing_key="work", declare=[q])
    received = []

    def on_message(body, message):
        received.append((body, message))
        message.ack()

    with Consumer(conn.channel(), queues=[q], callbacks=[on_message], accept=["json"]):
        drain_until(conn, lambda: received)
    body, message = received[0]
    assert body == {"task": "add", "args": [2, 3]}
    assert message.content_type == "application/json"
    assert message.delivery_info["routing_key"] == "work"
    assert message.delivery_info["exchange"] == x.name
    assert message.delivery_info["redelivered"] is False
    assert message.acknowledged


def test_simple_queue_put_get_and_empty(conn, unique, cleanup):
    queues, exchanges = cleanup
    name = unique("simple")
    sq = conn.SimpleQueue(name)
    queues.append(sq.queue)
    exchanges.append(sq.queue.exchange)
    try:
        for i in range(3):
            sq.put({"n": i})
        assert sq.qsize() == 3
        got = []
        for _ in range(3):
            m = sq.get(block=True, timeout=WAIT)
            got.append(m.payload["n"])
            m.ack()
        assert got == [0, 1, 2]
        with pytest.raises(sq.Empty):
            sq.get_nowait()
    finally:
        sq.close()


@pytest.mark.parametrize(
    "xtype, bindings, publishes, expected",
    [
        ("fanout", [{}], [("any.key", {})], ["any.key"]),
        (
            "topic",
            [{"routing_key": "logs.*.error"}],
            [("logs.web.error", {}), ("logs.web.info", {}), ("logs.error", {})],
            ["logs.web.error"],
        ),
        (
            "headers",
            [{"arguments": {"x-match": "any", "level": "error", "app": "web"}}],
            [("a", {"level": "error"}), ("b", {"level": "info"}), ("c", {"app": "web"})],
            ["a", "c"],
        ),
        (
            "direct",
            [{"routing_key": "red"}, {"routing_key": "blue"}],
            [("red", {}), ("green", {}), ("blue", {})],
            ["red", "blue"],
        ),
    ],
)
def test_exchange_types_route_like_rabbitmq(
    conn, unique, cleanup, xtype, bindings, publishes, expected
):
    queues, exchanges = cleanup
    x = Exchange(unique("x"), type=xtype, durable=False)
    exchanges.append(x)
    ch = conn.channel()
    x(ch).declare()
    q = Queue(unique("q"), durable=False, channel=ch)
    queues.append(q)
    q.declare()
    for b in bindings:
        q.bind_to(exchange=x, **b)
    producer = Producer(ch, exchange=x)
    for key, headers in publishes:
        producer.publish(key, routing_key=key, headers=headers, serializer="json")
    Producer(ch).publish("end", routing_key=q.name, serializer="json")  # default exchange
    got = []
    while True:
        m = q.get(no_ack=True)
        if m is None:
            break
        got.append(m.payload)
    assert got == [*expected, "end"]


def test_drain_events_times_out_when_nothing_arrives(conn, unique, cleanup):
    queues, _ = cleanup
    q = Queue(unique("idle"), durable=False)
    queues.append(q)
    with Consumer(conn.channel(), queues=[q], callbacks=[lambda b, m: None]):
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.2)


def test_reject_discards_and_requeue_redelivers(conn, unique, cleanup):
    queues, exchanges = cleanup
    name = unique("rr")
    sq = conn.SimpleQueue(name)
    queues.append(sq.queue)
    exchanges.append(sq.queue.exchange)
    try:
        sq.put("to-reject")
        sq.put("to-requeue")
        first = sq.get(timeout=WAIT)
        assert first.payload == "to-reject"
        first.reject()
        second = sq.get(timeout=WAIT)
        assert second.payload == "to-requeue"
        assert second.delivery_info["redelivered"] is False
        second.requeue()
        again = sq.get(timeout=WAIT)
        assert again.payload == "to-requeue"
        assert again.delivery_info["redelivered"] is True
        again.ack()
        with pytest.raises(sq.Empty):
            sq.get_nowait()
    finally:
        sq.close()


def test_consumer_qos_prefetch_limits_deliveries(conn, unique, cleanup):
    queues, _ = cleanup
    q = Queue(unique("qos"), durable=False)
    queues.append(q)
    producer = Producer(conn.channel(), serializer="json")
    for i in range(4):
        producer.publish(i, routing_key=q.name, declare=[q])
    received = []
    ch = conn.channel()
    consumer = Consumer(ch, queues=[q], callbacks=[lambda b, m: received.append(m)])
    # kombu picks the basic.qos global flag from the server's product/version
    consumer.qos(prefetch_count=1)
    with consumer:
        drain_until(conn, lambda: received)
        with pytest.raises(socket.timeout):
            conn.drain_events(timeout=0.3)
        assert [m.payload for m in received] == [0]
        received[0].ack()
        drain_until(conn, lambda: len(received) == 2)
        assert [m.payload for m in received] == [0, 1]
        received[1].ack()


def test_blocked_callbacks_registered_and_connection_works(amqp_url, unique, cleanup):
    queues, exchanges = cleanup
    events = []
    with Connection(
        amqp_url,
        transport_options={
            "on_blocked": lambda reason: events.append(("blocked", reason)),
            "on_unblocked": lambda: events.append(("unblocked",)),
            **IO_TIMEOUTS,
        },
    ) as c:
        c.connect()
        assert c.connection.client_properties["capabilities"]["connection.blocked"] is True
        sq = c.SimpleQueue(unique("blk"))
        queues.append(sq.queue)
        exchanges.append(sq.queue.exchange)
        try:
            sq.put("hello")
            m = sq.get(timeout=WAIT)
            assert m.payload == "hello"
            m.ack()
        finally:
            sq.close()
    assert events == []  # no resource alarm here


def test_confirm_publish_raises_when_broker_nacks(amqp_url, unique, cleanup):
    queues, _ = cleanup
    q = Queue(
        unique("full"),
        durable=False,
        queue_arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    queues.append(q)
    with Connection(amqp_url, transport_options={"confirm_publish": True, **IO_TIMEOUTS}) as c:
        producer = Producer(c.channel(), serializer="json")
        producer.publish("first", routing_key=q.name, declare=[q])
        with pytest.raises(amqp.exceptions.MessageNacked):
            producer.publish("second", routing_key=q.name)
        m = q(c.channel()).get(no_ack=True)
        assert m.payload == "first"


def test_consumer_cancel_notification_reaches_py_amqp(conn, unique):
    ch = conn.channel()
    q = Queue(unique("cancelled"), durable=False, channel=ch)
    q.declare()
    cancelled = []
    ch.basic_consume(q.name, callback=lambda m: None, on_cancel=cancelled.append)
    conn.channel().queue_delete(q.name)
    drain_until(conn, lambda: cancelled)
    assert isinstance(cancelled[0], str) and cancelled[0]
