"""Delivery acknowledgement timeout (RabbitMQ's ``consumer_timeout``, issue 9 item 7).

A delivery left unacknowledged past the timeout closes its channel with 406
PRECONDITION_FAILED and RabbitMQ's text, and the channel's unacked messages are requeued
(redelivered).  Checked against RabbitMQ 3.10.8 started with ``consumer_timeout = 2000``
(and ``channel_tick_interval`` 1000 ms, since RabbitMQ only checks once per channel tick,
60 s by default): both consumer and basic.get deliveries time out, the text is
"PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. Timeout value
used: 2000 ms. This timeout value can be configured, see consumers doc guide to learn
more", and 3.10.8 ignores the ``x-consumer-timeout`` queue and consumer arguments (they
arrived in 3.11.15/3.12, with precedence consumer > queue > broker): the tests of those
are Baedal-only.

Against RabbitMQ set ``BAEDAL_TEST_CONSUMER_TIMEOUT_URL`` to a node configured with a
short ``consumer_timeout`` and ``BAEDAL_TEST_CONSUMER_TIMEOUT_MS`` to its value (the
shared node keeps the 30-minute default, so these tests skip there).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from baedal import Broker
from baedal.cli import build_parser
from baedal.config import Settings, load_settings
from baedal_testing import wait_until

EXTERNAL_URL = os.environ.get("BAEDAL_TEST_AMQP_URL")
baedal_only = pytest.mark.skipif(
    bool(EXTERNAL_URL), reason="x-consumer-timeout arguments: RabbitMQ 3.12+, not 3.10.8"
)
pytestmark = pytest.mark.timeout(120)

TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def timeout_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """(url, consumer_timeout in ms) of a broker with a short acknowledgement timeout."""
    if EXTERNAL_URL:
        url = os.environ.get("BAEDAL_TEST_CONSUMER_TIMEOUT_URL")
        if not url:
            pytest.skip("needs BAEDAL_TEST_CONSUMER_TIMEOUT_URL (a RabbitMQ with a short consumer_timeout)")
        yield url, int(os.environ.get("BAEDAL_TEST_CONSUMER_TIMEOUT_MS", "2000"))
        return
    data_dir = tmp_path_factory.mktemp("consumer-timeout")
    with Broker(port=0, data_dir=data_dir, consumer_timeout=TIMEOUT_MS) as broker:
        yield broker.amqp_url, TIMEOUT_MS


class Watched:
    """A pika channel plus what the broker said when it closed it."""

    def __init__(self, connection: pika.BlockingConnection) -> None:
        self.connection = connection
        self.channel = connection.channel()
        self.closed: tuple[int, str] | None = None
        self.closed_at = 0.0
        self.channel._impl.add_on_close_callback(self._on_close)

    def _on_close(self, _channel: Any, reason: Exception) -> None:
        self.closed = (getattr(reason, "reply_code", 0), getattr(reason, "reply_text", ""))
        self.closed_at = time.monotonic()

    def wait_closed(self, seconds: float) -> tuple[int, str]:
        deadline = time.monotonic() + seconds
        while self.closed is None and time.monotonic() < deadline:
            self.connection.process_data_events(0.05)
        assert self.closed is not None, f"channel not closed within {seconds}s"
        return self.closed

    def stays_open(self, seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while self.closed is None and time.monotonic() < deadline:
            self.connection.process_data_events(0.05)
        return self.closed is None


def _expected_text(channel_number: int, timeout_ms: int) -> str:
    return (
        f"PRECONDITION_FAILED - delivery acknowledgement on channel {channel_number} timed out. "
        f"Timeout value used: {timeout_ms} ms. This timeout value can be configured, see "
        "consumers doc guide to learn more"
    )


def _slack(timeout_ms: int) -> float:
    """How long to wait for a close: the timeout plus the checker's period (RabbitMQ's
    channel tick) plus scheduling on a loaded machine."""
    return timeout_ms / 1000.0 * 2 + 10


def _connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def test_a_consumer_that_never_acks_is_closed_with_406_and_its_message_redelivered(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, timeout_ms = timeout_broker
    connection = _connect(url)
    queue = unique("ack-timeout")
    watched = Watched(connection)
    channel = watched.channel
    channel.queue_declare(queue, auto_delete=False)
    channel.basic_publish("", queue, b"held")
    channel.basic_qos(prefetch_count=1)
    received: list[bool] = []
    channel.basic_consume(queue, lambda _c, method, _p, _b: received.append(method.redelivered))
    started = time.monotonic()
    code, text = watched.wait_closed(_slack(timeout_ms))
    assert received == [False]
    assert code == 406
    assert text == _expected_text(channel.channel_number, timeout_ms)
    assert watched.closed_at - started >= timeout_ms / 1000.0 * 0.9  # never early
    # Only the channel: the connection serves on, and the message comes back redelivered.
    assert connection.is_open
    other = connection.channel()
    method, _props, body = other.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"held" and method.redelivered
    other.queue_delete(queue)
    connection.close()


def test_a_consumer_that_acks_in_time_is_never_closed(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, timeout_ms = timeout_broker
    connection = _connect(url)
    queue = unique("acks-in-time")
    watched = Watched(connection)
    channel = watched.channel
    channel.queue_declare(queue)
    channel.basic_qos(prefetch_count=2)
    held: list[tuple[float, int]] = []
    channel.basic_consume(
        queue, lambda _c, method, _p, _b: held.append((time.monotonic(), method.delivery_tag))
    )
    hold = timeout_ms / 1000.0 * 0.3  # each delivery is held a while, but acked in time
    end = time.monotonic() + timeout_ms / 1000.0 * 3 + 2
    published = acked = 0
    next_publish = 0.0
    while time.monotonic() < end and watched.closed is None:
        now = time.monotonic()
        if now >= next_publish:
            channel.basic_publish("", queue, b"work")
            published += 1
            next_publish = now + hold / 2
        while held and now - held[0][0] >= hold:
            channel.basic_ack(held.pop(0)[1])
            acked += 1
        connection.process_data_events(0.02)
    assert watched.closed is None
    assert acked >= 5 and published >= acked
    channel.queue_delete(queue)
    connection.close()


def test_an_unacked_basic_get_delivery_times_out_too(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, timeout_ms = timeout_broker
    connection = _connect(url)
    queue = unique("get-timeout")
    watched = Watched(connection)
    channel = watched.channel
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"fetched")
    method, _props, _body = channel.basic_get(queue, auto_ack=False)
    assert method is not None and not method.redelivered
    code, text = watched.wait_closed(_slack(timeout_ms))
    assert (code, text) == (406, _expected_text(channel.channel_number, timeout_ms))
    other = connection.channel()
    method, _props, body = other.basic_get(queue, auto_ack=True)
    assert method is not None and body == b"fetched" and method.redelivered
    other.queue_delete(queue)
    connection.close()


def test_only_the_oldest_channel_is_closed_and_other_consumers_continue(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, timeout_ms = timeout_broker
    connection = _connect(url)
    queue = unique("two-consumers")
    stuck = Watched(connection)
    stuck.channel.queue_declare(queue)
    stuck.channel.basic_qos(prefetch_count=1)
    stuck.channel.basic_consume(queue, lambda *_: None)  # never acks
    stuck.channel.basic_publish("", queue, b"first")
    connection.process_data_events(0.2)  # 'first' goes to the stuck consumer
    worker = Watched(connection)
    worker.channel.basic_qos(prefetch_count=1)
    done: list[bytes] = []

    def work(channel: Any, method: Any, _props: Any, body: bytes) -> None:
        done.append(body)
        channel.basic_ack(method.delivery_tag)

    worker.channel.basic_consume(queue, work)
    code, _text = stuck.wait_closed(_slack(timeout_ms))
    assert code == 406
    wait_until(
        lambda: connection.process_data_events(0.05) or done == [b"first"],
        timeout=10,
        what="the held message reaches the working consumer",
    )
    assert worker.closed is None
    worker.channel.queue_delete(queue)
    connection.close()


# --- per-queue and per-consumer overrides (Baedal-only: RabbitMQ 3.12+) -----------------


@baedal_only
def test_queue_argument_overrides_the_broker_timeout(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, timeout_ms = timeout_broker
    connection = _connect(url)
    patient = Watched(connection)
    long_queue = unique("patient")
    patient.channel.queue_declare(long_queue, arguments={"x-consumer-timeout": 600_000})
    patient.channel.basic_publish("", long_queue, b"slow job")
    patient.channel.basic_consume(long_queue, lambda *_: None)
    impatient = Watched(connection)
    short_queue = unique("impatient")
    impatient.channel.queue_declare(short_queue, arguments={"x-consumer-timeout": 300})
    impatient.channel.basic_publish("", short_queue, b"quick job")
    impatient.channel.basic_consume(short_queue, lambda *_: None)
    code, text = impatient.wait_closed(_slack(300))
    assert (code, text) == (406, _expected_text(impatient.channel.channel_number, 300))
    # Past the broker's own timeout, the queue with the longer one keeps its consumer.
    assert patient.stays_open(timeout_ms / 1000.0 * 2.5)
    patient.channel.queue_delete(long_queue)
    connection.channel().queue_delete(short_queue)
    connection.close()


@baedal_only
def test_consumer_argument_overrides_the_queue_argument(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, _timeout_ms = timeout_broker
    connection = _connect(url)
    watched = Watched(connection)
    queue = unique("consumer-arg")
    watched.channel.queue_declare(queue, arguments={"x-consumer-timeout": 600_000})
    watched.channel.basic_publish("", queue, b"job")
    watched.channel.basic_consume(queue, lambda *_: None, arguments={"x-consumer-timeout": 400})
    code, text = watched.wait_closed(_slack(400))
    assert (code, text) == (406, _expected_text(watched.channel.channel_number, 400))
    connection.channel().queue_delete(queue)
    connection.close()


@baedal_only
def test_invalid_queue_timeout_argument_is_refused(
    timeout_broker: tuple[str, int], unique: Any
) -> None:
    url, _timeout_ms = timeout_broker
    connection = _connect(url)
    channel = connection.channel()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as closed:
        channel.queue_declare(unique("bad-arg"), arguments={"x-consumer-timeout": "soon"})
    assert closed.value.reply_code == 406
    connection.close()


@baedal_only
def test_with_the_broker_timeout_off_only_queues_that_ask_for_one_time_out(
    tmp_path: Path,
) -> None:
    with Broker(port=0, data_dir=tmp_path, consumer_timeout=None) as broker:
        connection = _connect(broker.amqp_url)
        free = Watched(connection)
        free.channel.queue_declare("no-timeout")
        free.channel.basic_publish("", "no-timeout", b"kept")
        free.channel.basic_consume("no-timeout", lambda *_: None)
        bound = Watched(connection)
        bound.channel.queue_declare("with-timeout", arguments={"x-consumer-timeout": 300})
        bound.channel.basic_publish("", "with-timeout", b"taken back")
        bound.channel.basic_consume("with-timeout", lambda *_: None)
        assert bound.wait_closed(_slack(300))[0] == 406
        assert free.stays_open(1.5)
        connection.close()


# --- the setting ---------------------------------------------------------------------------


def test_consumer_timeout_setting_defaults_to_30_minutes_and_can_be_turned_off(
    tmp_path: Path,
) -> None:
    assert Settings().consumer_timeout == 1_800_000
    assert load_settings(environ={}).consumer_timeout == 1_800_000
    assert load_settings(environ={"BAEDAL_CONSUMER_TIMEOUT": "60000"}).consumer_timeout == 60000
    for off in ("off", "0", "false", "none"):
        assert load_settings(environ={"BAEDAL_CONSUMER_TIMEOUT": off}).consumer_timeout is None
    config = tmp_path / "baedal.toml"
    config.write_text("consumer-timeout = 900000\n")
    assert load_settings(config, environ={}).consumer_timeout == 900000
    config.write_text("consumer_timeout = false\n")
    assert load_settings(config, environ={}).consumer_timeout is None
    args = build_parser().parse_args(["serve", "--consumer-timeout", "off"])
    assert load_settings(flags={"consumer_timeout": args.consumer_timeout}, environ={}).consumer_timeout is None
    args = build_parser().parse_args(["serve", "--consumer-timeout", "5000"])
    assert load_settings(flags={"consumer_timeout": args.consumer_timeout}, environ={}).consumer_timeout == 5000


@baedal_only
def test_a_delivery_is_timed_from_when_it_went_out_not_from_when_it_became_the_oldest(
    tmp_path: Path,
) -> None:
    """Drives the channel's check with chosen clock values (the broker's own tick is
    detached from the channel) to pin the bookkeeping: never early, about one tick late."""
    with Broker(port=0, data_dir=tmp_path, consumer_timeout=None) as broker:
        connection = _connect(broker.amqp_url)
        watched = Watched(connection)
        channel = watched.channel
        channel.queue_declare("timed", arguments={"x-consumer-timeout": 10_000})
        tags: list[int] = []
        channel.basic_consume("timed", lambda _c, method, _p, _b: tags.append(method.delivery_tag))
        core = broker.core
        assert core is not None

        def server_channel() -> Any:
            (conn,) = core.connections.values()
            server_side = conn.channels[channel.channel_number]
            core.unwatch_ack_timeouts(server_side)
            return server_side

        server_side = broker.call(server_channel)

        def check(at: float) -> None:
            broker.call(lambda: server_side.check_ack_timeout(at))
            connection.process_data_events(0.1)

        channel.basic_publish("", "timed", b"A")
        wait_until(lambda: connection.process_data_events(0.05) or tags == [1], what="A")
        start = broker.call(core.now)
        check(start)  # first sight of A: delivered at or before `start`
        channel.basic_publish("", "timed", b"B")
        wait_until(lambda: connection.process_data_events(0.05) or tags == [1, 2], what="B")
        check(start + 5)  # B went out between `start` and `start + 5`
        channel.basic_ack(1)
        connection.process_data_events(0.1)
        check(start + 11)  # B is now the oldest, but at most 11 s old: not yet
        assert watched.closed is None
        check(start + 15.5)  # B is at least 10.5 s old
        assert watched.closed is not None and watched.closed[0] == 406
        assert "Timeout value used: 10000 ms" in watched.closed[1]
        connection.close()
