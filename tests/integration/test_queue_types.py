"""Queue types are never silently downgraded.

One row per declaration: what RabbitMQ 3.10.8 answers (checked against it with
``BAEDAL_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/``; ``{name}`` stands for the
queue name) and Baedal must answer the same.  Streams have their own table in
tests/interop/test_streams.py.
"""

from __future__ import annotations

import os

import pika
import pika.exceptions
import pytest

EXTERNAL = bool(os.environ.get("BAEDAL_TEST_AMQP_URL"))

QQ = {"x-queue-type": "quorum"}
OK = None

# (case, durable, exclusive, auto_delete, arguments, expected: None = declared, else (code, text))
QUORUM_TABLE = [
    ("plain", True, False, False, {}, OK),
    ("exclusive", True, True, False, {}, (406, "invalid property 'exclusive-owner' for queue '{name}' in vhost '/'")),
    ("non-durable", False, False, False, {}, (406, "invalid property 'non-durable' for queue '{name}' in vhost '/'")),
    ("auto-delete", True, False, True, {}, (406, "invalid property 'auto-delete' for queue '{name}' in vhost '/'")),
    ("exclusive and non-durable", False, True, False, {}, (406, "invalid property 'exclusive-owner' for queue '{name}' in vhost '/'")),
    ("non-durable and auto-delete", False, False, True, {}, (406, "invalid property 'auto-delete' for queue '{name}' in vhost '/'")),
    ("exclusive and auto-delete", True, True, True, {}, (406, "invalid property 'auto-delete' for queue '{name}' in vhost '/'")),
    (
        "x-max-priority",
        True,
        False,
        False,
        {"x-max-priority": 10},
        (406, "invalid arg 'x-max-priority' for queue '{name}' in vhost '/' of queue type rabbit_quorum_queue"),
    ),
    (
        "x-max-priority beats non-durable",
        False,
        False,
        False,
        {"x-max-priority": 10},
        (406, "invalid arg 'x-max-priority' for queue '{name}' in vhost '/' of queue type rabbit_quorum_queue"),
    ),
    (
        "x-queue-mode",
        True,
        False,
        False,
        {"x-queue-mode": "lazy"},
        (406, "invalid arg 'x-queue-mode' for queue '{name}' in vhost '/' of queue type rabbit_quorum_queue"),
    ),
    (
        "first refused argument in table order",
        True,
        False,
        False,
        {"x-queue-mode": "lazy", "x-max-priority": 10},
        (406, "invalid arg 'x-queue-mode' for queue '{name}' in vhost '/' of queue type rabbit_quorum_queue"),
    ),
    (
        "x-queue-version",
        True,
        False,
        False,
        {"x-queue-version": 2},
        (406, "invalid arg 'x-queue-version' for queue '{name}' in vhost '/' of queue type rabbit_quorum_queue"),
    ),
    (
        "x-queue-master-locator",
        True,
        False,
        False,
        {"x-queue-master-locator": "min-masters"},
        (406, "invalid arg 'x-queue-master-locator' for queue '{name}' in vhost '/' of queue type rabbit_quorum_queue"),
    ),
    ("x-message-ttl", True, False, False, {"x-message-ttl": 1000}, OK),
    ("x-expires", True, False, False, {"x-expires": 100000}, OK),
    ("x-max-length", True, False, False, {"x-max-length": 10}, OK),
    ("x-overflow reject-publish", True, False, False, {"x-overflow": "reject-publish"}, OK),
    ("x-overflow reject-publish-dlx", True, False, False, {"x-overflow": "reject-publish-dlx"}, OK),
    ("x-single-active-consumer", True, False, False, {"x-single-active-consumer": True}, OK),
    ("x-delivery-limit", True, False, False, {"x-delivery-limit": 3}, OK),
]

OTHER_TYPES_TABLE = [
    ("classic", True, OK),
    ("foo", True, (406, "invalid arg 'x-queue-type' for queue '{name}' in vhost '/': \"unsupported queue type 'foo'\"")),
    ("", True, (406, "invalid arg 'x-queue-type' for queue '{name}' in vhost '/': \"unsupported queue type ''\"")),
]


def _declare(url: str, name: str, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict) -> tuple[int, str] | None:
    connection = pika.BlockingConnection(pika.URLParameters(url))
    try:
        channel = connection.channel()
        try:
            ok = channel.queue_declare(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments)
        except pika.exceptions.ChannelClosedByBroker as exc:
            return exc.reply_code, exc.reply_text
        channel.queue_delete(ok.method.queue)
        return None
    finally:
        connection.close()


@pytest.mark.parametrize(
    ("durable", "exclusive", "auto_delete", "arguments", "expected"),
    [row[1:] for row in QUORUM_TABLE],
    ids=[row[0] for row in QUORUM_TABLE],
)
def test_quorum_queue_declaration_is_answered_as_rabbitmq_does(
    amqp_url: str, unique, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict, expected
) -> None:
    name = unique("qq")
    answer = _declare(amqp_url, name, durable, exclusive, auto_delete, {**QQ, **arguments})
    if expected is None:
        assert answer is None
    else:
        code, text = expected
        assert answer == (code, f"PRECONDITION_FAILED - {text.format(name=name)}")


def test_server_named_quorum_queue_is_refused(amqp_url: str) -> None:
    answer = _declare(amqp_url, "", True, False, False, QQ)
    assert answer == (406, "PRECONDITION_FAILED - Cannot declare a server-named queue for type rabbit_quorum_queue")


@pytest.mark.parametrize(("queue_type", "durable", "expected"), OTHER_TYPES_TABLE, ids=[row[0] or "empty" for row in OTHER_TYPES_TABLE])
def test_queue_type_argument_is_answered_as_rabbitmq_does(amqp_url: str, unique, queue_type: str, durable: bool, expected) -> None:
    name = unique("qt")
    answer = _declare(amqp_url, name, durable, False, False, {"x-queue-type": queue_type})
    if expected is None:
        assert answer is None
    else:
        code, text = expected
        assert answer == (code, f"PRECONDITION_FAILED - {text.format(name=name)}")


def test_a_refused_quorum_declaration_creates_nothing(amqp_url: str, unique) -> None:
    name = unique("qq")
    assert _declare(amqp_url, name, False, False, False, QQ) is not None
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            connection.channel().queue_declare(name, passive=True)
        assert info.value.reply_code == 404
    finally:
        connection.close()
