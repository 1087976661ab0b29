"""The neutral message seen from AMQP: a publish with headers routes on a headers
exchange (headers decoded lazily from the AMQP block), and dead-letters with RabbitMQ's
x-death while keeping every other property, AMQP-only ones included (``type``,
``app_id``), with the expiration moved into ``x-death``'s ``original-expiration``.

Passes against RabbitMQ 3.10.8 too (``BAEDAL_TEST_AMQP_URL``).
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

import pika
import pytest

from baedal_testing import wait_until

PROPERTIES = dict(
    content_type="application/json",
    content_encoding="utf-8",
    correlation_id="corr-7",
    reply_to="answers",
    message_id="m-7",
    timestamp=1700000000,
    type="order.created",
    app_id="shop",
    user_id="guest",
    priority=2,
    delivery_mode=2,
)


@pytest.fixture
def channel(amqp_url: str) -> Any:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield connection.channel()
    connection.close()


def dead_letter_setup(channel: Any, unique: Callable[[str], str]) -> tuple[str, str, str]:
    exchange, queue, dead = unique("hx"), unique("hq"), unique("dlq")
    channel.exchange_declare(exchange, "headers", auto_delete=True)
    channel.queue_declare(dead, auto_delete=True)
    channel.queue_declare(
        queue,
        auto_delete=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    channel.queue_bind(queue, exchange, arguments={"x-match": "all", "region": "eu", "n": 3})
    return exchange, queue, dead


def check_dead_letter(props: Any, *, reason: str, queue: str, exchange: str, key: str) -> None:
    headers = props.headers
    assert headers["region"] == "eu" and headers["n"] == 3 and headers["tags"] == ["a", "b"]
    [death] = headers["x-death"]
    assert death["count"] == 1 and death["reason"] == reason
    assert death["queue"] == queue and death["exchange"] == exchange
    assert death["routing-keys"] == [key]
    assert isinstance(death["time"], datetime.datetime)
    assert headers["x-first-death-reason"] == reason
    assert headers["x-first-death-queue"] == queue
    assert headers["x-first-death-exchange"] == exchange
    for name, value in PROPERTIES.items():
        assert getattr(props, name) == value, name
    assert props.expiration is None  # a dead letter does not expire again


def test_amqp_headers_route_on_a_headers_exchange_and_dead_letter_with_x_death(
    channel: Any, unique: Callable[[str], str]
) -> None:
    exchange, queue, dead = dead_letter_setup(channel, unique)
    headers = {"region": "eu", "n": 3, "tags": ["a", "b"]}
    channel.basic_publish(exchange, "k.1", b"routed", pika.BasicProperties(headers=headers, **PROPERTIES))
    channel.basic_publish(
        exchange, "k.2", b"not routed",
        pika.BasicProperties(headers={"region": "us", "n": 3}, **PROPERTIES),
    )
    channel.basic_publish(exchange, "k.3", b"no headers", pika.BasicProperties(**PROPERTIES))
    method, _props, body = channel.basic_get(queue)
    assert body == b"routed"
    assert channel.basic_get(queue)[0] is None  # only the matching one was routed
    channel.basic_reject(method.delivery_tag, requeue=False)
    result: list[Any] = []

    def take() -> bool:
        got = channel.basic_get(dead, auto_ack=True)
        if got[0] is not None:
            result.append(got)
        return bool(result)

    wait_until(take, what="the dead letter")
    _method, props, body = result[0]
    assert body == b"routed"
    check_dead_letter(props, reason="rejected", queue=queue, exchange=exchange, key="k.1")


def test_an_expired_message_dead_letters_with_its_original_expiration(
    channel: Any, unique: Callable[[str], str]
) -> None:
    exchange, queue, dead = dead_letter_setup(channel, unique)
    headers = {"region": "eu", "n": 3, "tags": ["a", "b"]}
    channel.basic_publish(
        exchange, "k.ttl", b"short-lived",
        pika.BasicProperties(headers=headers, expiration="30", **PROPERTIES),
    )
    result: list[Any] = []

    def take() -> bool:
        got = channel.basic_get(dead, auto_ack=True)
        if got[0] is not None:
            result.append(got)
        return bool(result)

    wait_until(take, what="the expired message dead-lettered")
    _method, props, body = result[0]
    assert body == b"short-lived"
    check_dead_letter(props, reason="expired", queue=queue, exchange=exchange, key="k.ttl")
    assert props.headers["x-death"][0]["original-expiration"] == "30"
