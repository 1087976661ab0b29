"""Delivery limit on every queue type (issue 12 item 7): RabbitMQ's ``delivery-limit``.

RabbitMQ 3.10 has it on quorum queues only (``x-delivery-limit`` or the
``delivery-limit`` policy key): a message requeued more than the limit is dead-lettered
with reason ``delivery_limit`` (dropped without a dead-letter exchange), and each
redelivery carries ``x-delivery-count``.  Baedal does the same on classic queues.  The
quorum rows run against RabbitMQ 3.10.8 too (``BAEDAL_TEST_AMQP_URL``) and pin what the
classic rows must match.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import pika
import pytest

EXTERNAL = os.environ.get("BAEDAL_TEST_AMQP_URL") is not None

QUEUE_TYPES = [
    pytest.param({"x-queue-type": "quorum"}, True, id="quorum"),
    pytest.param(
        {},
        False,
        id="classic",
        marks=pytest.mark.skipif(EXTERNAL, reason="RabbitMQ 3.10 classic queues have no delivery limit"),
    ),
    pytest.param(
        {"x-max-priority": 5},
        True,
        id="classic-priority",
        marks=pytest.mark.skipif(EXTERNAL, reason="RabbitMQ 3.10 classic queues have no delivery limit"),
    ),
]


@pytest.fixture
def connection(amqp_url: str) -> Iterator[Any]:
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


def bounce_until_gone(connection: Any, channel: Any, queue: str, timeout: float = 10.0) -> list[tuple[bool, Any]]:
    """Consume ``queue`` nacking every delivery with requeue until nothing comes back;
    returns (redelivered, x-delivery-count) per delivery."""
    seen: list[tuple[bool, Any]] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        seen.append((method.redelivered, (properties.headers or {}).get("x-delivery-count")))
        ch.basic_nack(method.delivery_tag, requeue=True)

    tag = channel.basic_consume(queue, on_message)
    deadline = time.monotonic() + timeout
    quiet_since = time.monotonic()
    last = 0
    while time.monotonic() - quiet_since < 0.5:  # nothing new for half a second: done
        assert time.monotonic() < deadline, "the message kept coming back"
        connection.process_data_events(time_limit=0.02)
        if len(seen) != last:
            last = len(seen)
            quiet_since = time.monotonic()
    channel.basic_cancel(tag)
    return seen


def declare(channel: Any, queue: str, arguments: dict[str, Any], durable: bool) -> None:
    channel.queue_declare(queue, durable=durable, arguments=arguments)


@pytest.mark.parametrize(("type_arguments", "durable"), QUEUE_TYPES)
def test_nack_requeue_loop_ends_in_the_dead_letter_queue(connection, unique, type_arguments, durable) -> None:
    channel = connection.channel()
    queue, dead = unique("dl"), unique("dl-dead")
    channel.queue_declare(dead)
    arguments = {
        **type_arguments,
        "x-delivery-limit": 2,
        "x-dead-letter-exchange": "",
        "x-dead-letter-routing-key": dead,
    }
    try:
        declare(channel, queue, arguments, durable)
        channel.basic_publish("", queue, b"poison", pika.BasicProperties(headers={"app": "x"}))
        seen = bounce_until_gone(connection, channel, queue)
        # RabbitMQ 3.10.8 quorum: three deliveries, the redeliveries counted in the header
        assert seen == [(False, None), (True, 1), (True, 2)]
        method, properties, body = channel.basic_get(dead, auto_ack=True)
        assert body == b"poison"
        headers = properties.headers
        assert headers["app"] == "x"
        death = headers["x-death"][0]
        assert death["reason"] == "delivery_limit"
        assert death["queue"] == queue
        assert death["count"] == 1
        assert death["exchange"] == ""
        assert death["routing-keys"] == [queue]
        assert headers["x-first-death-reason"] == "delivery_limit"
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        channel.queue_delete(queue)
        channel.queue_delete(dead)


@pytest.mark.parametrize(("type_arguments", "durable"), QUEUE_TYPES)
def test_without_a_dead_letter_exchange_the_message_is_dropped(connection, unique, type_arguments, durable) -> None:
    channel = connection.channel()
    queue = unique("dl")
    try:
        declare(channel, queue, {**type_arguments, "x-delivery-limit": 0}, durable)
        channel.basic_publish("", queue, b"poison")
        channel.basic_publish("", queue, b"second")
        seen = bounce_until_gone(connection, channel, queue)
        assert seen == [(False, None), (False, None)]
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        channel.queue_delete(queue)


@pytest.mark.skipif(EXTERNAL, reason="RabbitMQ 3.10 classic queues have no delivery limit")
def test_delivery_limit_from_a_policy_on_a_classic_queue(session_broker, connection, unique) -> None:
    from baedal.core.policy import Policy

    channel = connection.channel()
    prefix = unique("dl-pol")
    queue, dead = prefix + ".q", unique("dl-pol-dead")
    channel.queue_declare(dead)
    channel.queue_declare(queue)
    policy = Policy(
        "/",
        prefix,
        "^" + prefix.replace(".", "\\.") + "\\.",
        {"delivery-limit": 1, "dead-letter-exchange": "", "dead-letter-routing-key": dead},
        apply_to="queues",
    )
    session_broker.call(lambda: session_broker.core.vhosts["/"].set_policy(policy))
    try:
        channel.basic_publish("", queue, b"poison")
        seen = bounce_until_gone(connection, channel, queue)
        assert seen == [(False, None), (True, 1)]
        method, properties, _body = channel.basic_get(dead, auto_ack=True)
        assert properties.headers["x-death"][0]["reason"] == "delivery_limit"
    finally:
        session_broker.call(lambda: session_broker.core.vhosts["/"].clear_policy(prefix))
        channel.queue_delete(queue)
        channel.queue_delete(dead)


@pytest.mark.skipif(EXTERNAL, reason="RabbitMQ 3.10 classic queues have no delivery limit")
def test_a_classic_queue_without_a_limit_redelivers_forever_and_adds_no_header(connection, unique) -> None:
    channel = connection.channel()
    queue = unique("dl")
    channel.queue_declare(queue, auto_delete=True)
    channel.basic_publish("", queue, b"again")
    seen: list[Any] = []

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        seen.append((properties.headers or {}).get("x-delivery-count"))
        ch.basic_nack(method.delivery_tag, requeue=len(seen) < 10)

    channel.basic_consume(queue, on_message)
    deadline = time.monotonic() + 10
    while len(seen) < 10:
        assert time.monotonic() < deadline
        connection.process_data_events(time_limit=0.02)
    assert seen == [None] * 10
