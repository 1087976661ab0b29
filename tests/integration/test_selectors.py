"""Selected consumers over AMQP: the ``x-selector`` consumer argument (issue 12 item 4).

A consumer with a selector gets only the messages its selector matches; the others stay
in the queue, in order, for other consumers.  RabbitMQ has no selectors, so these run
against Baedal only; the selector language itself is pinned in tests/unit/test_selector.py.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pika
import pika.exceptions
import pytest

pytestmark = pytest.mark.skipif(
    os.environ.get("BAEDAL_TEST_AMQP_URL") is not None, reason="x-selector is a Baedal extension"
)


def pump(connection: pika.BlockingConnection, done: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    """Run the blocking connection's I/O until ``done()`` (fail after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        connection.process_data_events(time_limit=0.02)


def settle(connection: pika.BlockingConnection, seconds: float = 0.3) -> None:
    """Give the broker a moment to (wrongly) deliver more: for asserting that nothing came."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        connection.process_data_events(time_limit=0.02)


def subscribe(
    channel: Any, queue: str, sink: list[Any], arguments: dict[str, Any] | None = None, prefetch: int = 0
) -> str:
    if prefetch:
        channel.basic_qos(prefetch_count=prefetch)

    def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        sink.append(body)
        ch.basic_ack(method.delivery_tag)

    return channel.basic_consume(queue, on_message, arguments=arguments)


def publish(channel: Any, queue: str, body: str, headers: dict[str, Any]) -> None:
    channel.basic_publish("", queue, body.encode(), pika.BasicProperties(headers=headers))


@pytest.fixture
def connection(amqp_url: str):
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        yield conn
    finally:
        if conn.is_open:
            conn.close()


def test_consumers_with_complementary_selectors_each_get_exactly_their_messages(connection, unique) -> None:
    queue = unique("sel")
    setup = connection.channel()
    setup.queue_declare(queue, auto_delete=True)
    red: list[bytes] = []
    blue: list[bytes] = []
    subscribe(connection.channel(), queue, red, {"x-selector": "color = 'red'"}, prefetch=5)
    subscribe(connection.channel(), queue, blue, {"x-selector": "color <> 'red'"}, prefetch=5)
    sent = {"red": [], "blue": []}
    for i in range(60):
        color = "red" if i % 3 == 0 else "blue"
        sent[color].append(f"{color}-{i}".encode())
        publish(setup, queue, f"{color}-{i}", {"color": color})
    pump(connection, lambda: len(red) + len(blue) >= 60, what="all 60 delivered")
    settle(connection)
    assert red == sent["red"]
    assert blue == sent["blue"]


def test_messages_no_selector_matches_stay_for_a_later_consumer_in_order(connection, unique) -> None:
    queue = unique("sel")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    big: list[bytes] = []
    subscribe(connection.channel(), queue, big, {"x-selector": "n > 5"}, prefetch=2)
    for n in range(1, 11):
        publish(channel, queue, str(n), {"n": n})
    pump(connection, lambda: len(big) >= 5, what="n > 5 delivered")
    settle(connection)
    assert big == [b"6", b"7", b"8", b"9", b"10"]
    assert channel.queue_declare(queue, passive=True).method.message_count == 5
    rest: list[bytes] = []
    subscribe(connection.channel(), queue, rest)
    pump(connection, lambda: len(rest) >= 5, what="the rest delivered")
    settle(connection)
    assert rest == [b"1", b"2", b"3", b"4", b"5"]
    assert big == [b"6", b"7", b"8", b"9", b"10"]


def test_selectors_read_amqp_typed_headers(connection, unique) -> None:
    queue = unique("sel")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    got: list[bytes] = []
    selector = "i = 3 AND s = 'x' AND b = TRUE AND f > 1.5 AND missing IS NULL"
    subscribe(connection.channel(), queue, got, {"x-selector": selector})
    # pika sends a Python float as nothing it can encode; Decimal is AMQP's decimal.
    publish(channel, queue, "match", {"i": 3, "s": "x", "b": True, "f": Decimal("2.5")})
    publish(channel, queue, "wrong-int", {"i": 4, "s": "x", "b": True, "f": Decimal("2.5")})
    publish(channel, queue, "wrong-bool", {"i": 3, "s": "x", "b": False, "f": Decimal("2.5")})
    publish(channel, queue, "wrong-decimal", {"i": 3, "s": "x", "b": True, "f": Decimal("1.0")})
    publish(channel, queue, "no-headers", {})
    publish(channel, queue, "string-number", {"i": "3", "s": "x", "b": "true", "f": "2"})
    pump(connection, lambda: len(got) >= 2, what="the matches")
    settle(connection)
    assert got == [b"match", b"string-number"]
    assert channel.queue_declare(queue, passive=True).method.message_count == 4


def test_bad_selector_is_406_with_the_parse_error(connection, unique) -> None:
    queue = unique("sel")
    connection.channel().queue_declare(queue, auto_delete=True)
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        channel.basic_consume(queue, lambda *a: None, arguments={"x-selector": "color = 'red"})
    assert caught.value.reply_code == 406
    assert "invalid x-selector: unterminated string" in caught.value.reply_text
    other = connection.channel()  # the connection still serves
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
        other.basic_consume(queue, lambda *a: None, arguments={"x-selector": 5})
    assert caught.value.reply_code == 406


def test_blank_selector_is_no_selector(connection, unique) -> None:
    queue = unique("sel")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    got: list[bytes] = []
    subscribe(connection.channel(), queue, got, {"x-selector": "  "})
    publish(channel, queue, "a", {})
    pump(connection, lambda: got == [b"a"], what="delivered")


def test_requeued_messages_keep_their_place_for_a_plain_consumer(connection, unique) -> None:
    """Held (unselected) messages and requeued ones merge back in publish order."""
    queue = unique("sel")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    taker = connection.channel()
    taken: list[Any] = []

    def hold(ch: Any, method: Any, properties: Any, body: bytes) -> None:
        taken.append(method.delivery_tag)

    taker.basic_consume(queue, hold, arguments={"x-selector": "keep = TRUE"})
    for n in range(6):
        publish(channel, queue, str(n), {"keep": n % 2 == 0})
    pump(connection, lambda: len(taken) == 3, what="0, 2, 4 taken")
    got: list[bytes] = []
    plain = connection.channel()
    subscribe(plain, queue, got, {"x-selector": "keep = FALSE"})
    pump(connection, lambda: len(got) == 3, what="1, 3, 5")
    taker.close()  # 0, 2, 4 are requeued
    everything: list[bytes] = []
    subscribe(connection.channel(), queue, everything)
    pump(connection, lambda: len(everything) == 3, what="requeued delivered")
    settle(connection)
    assert got == [b"1", b"3", b"5"]
    assert everything == [b"0", b"2", b"4"]


def test_a_deep_backlog_nobody_selects_stays_in_order(connection, unique) -> None:
    """More unmatched messages than the hold window: the selected consumer waits, the
    broker stays responsive and a plain consumer then gets every message in order."""
    queue = unique("sel")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True)
    for n in range(3000):
        publish(channel, queue, str(n), {"kind": "other"})
    wanted: list[bytes] = []
    subscribe(connection.channel(), queue, wanted, {"x-selector": "kind = 'wanted'"}, prefetch=1)
    settle(connection)
    assert wanted == []
    assert channel.queue_declare(queue, passive=True).method.message_count == 3000
    publish(channel, queue, "w-0", {"kind": "wanted"})
    rest: list[bytes] = []
    subscribe(connection.channel(), queue, rest, prefetch=100)
    pump(connection, lambda: len(rest) + len(wanted) >= 3001, what="everything delivered", timeout=30)
    assert wanted + [b for b in rest if b.startswith(b"w-")] == [b"w-0"]
    assert [b for b in rest if not b.startswith(b"w-")] == [str(n).encode() for n in range(3000)]


def test_selector_on_a_stream_is_refused(connection, unique) -> None:
    queue = unique("sel")
    connection.channel().queue_declare(queue, durable=True, arguments={"x-queue-type": "stream"})
    channel = connection.channel()
    channel.basic_qos(prefetch_count=10)
    try:
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as caught:
            channel.basic_consume(queue, lambda *a: None, arguments={"x-selector": "a = 1"})
        assert caught.value.reply_code == 406
    finally:
        connection.channel().queue_delete(queue)


def test_selectors_read_amqp_float_headers(amqp_url: str, unique) -> None:
    """Doubles ('d') through aio-pika, which can send them (pika cannot)."""
    import asyncio

    import aio_pika

    async def scenario() -> list[bytes]:
        connection = await aio_pika.connect(amqp_url)
        try:
            channel = await connection.channel()
            queue = await channel.declare_queue(unique("sel"), auto_delete=True)
            got: list[bytes] = []
            arrived = asyncio.Event()

            async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
                async with message.process():
                    got.append(message.body)
                    if len(got) == 2:
                        arrived.set()

            await queue.consume(on_message, arguments={"x-selector": "ratio >= 0.5 AND ratio < 1e1"})
            for body, ratio in ((b"low", 0.25), (b"mid", 0.5), (b"high", 10.0), (b"top", 9.75)):
                await channel.default_exchange.publish(
                    aio_pika.Message(body, headers={"ratio": ratio}), routing_key=queue.name
                )
            await asyncio.wait_for(arrived.wait(), 10)
            await asyncio.sleep(0.2)
            return got
        finally:
            await connection.close()

    assert asyncio.run(scenario()) == [b"mid", b"top"]


def test_unselected_messages_still_expire_and_are_dead_lettered(connection, unique) -> None:
    queue, dead = unique("sel"), unique("sel-dead")
    channel = connection.channel()
    channel.queue_declare(dead, auto_delete=True)
    channel.queue_declare(
        queue,
        auto_delete=True,
        arguments={"x-message-ttl": 200, "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead},
    )
    got: list[bytes] = []
    subscribe(connection.channel(), queue, got, {"x-selector": "a = 1"})
    for n in range(3):
        publish(channel, queue, f"other-{n}", {"a": 2})
    publish(channel, queue, "mine", {"a": 1})
    pump(connection, lambda: got == [b"mine"], what="the match")
    pump(
        connection,
        lambda: channel.queue_declare(dead, passive=True).method.message_count == 3,
        what="the unselected messages expire",
    )
    assert channel.queue_declare(queue, passive=True).method.message_count == 0


def test_max_length_counts_unselected_messages(connection, unique) -> None:
    queue = unique("sel")
    channel = connection.channel()
    channel.queue_declare(queue, auto_delete=True, arguments={"x-max-length": 3})
    got: list[bytes] = []
    subscribe(connection.channel(), queue, got, {"x-selector": "a = 1"})
    for n in range(6):
        publish(channel, queue, str(n), {"a": 2})
    publish(channel, queue, "mine", {"a": 1})
    pump(connection, lambda: got == [b"mine"], what="the match")
    assert channel.queue_declare(queue, passive=True).method.message_count == 3
    rest: list[bytes] = []
    subscribe(connection.channel(), queue, rest)
    pump(connection, lambda: len(rest) == 3, what="the newest three")
    settle(connection)
    assert rest == [b"3", b"4", b"5"]
