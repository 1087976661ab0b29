"""pika SelectConnection (asynchronous callbacks), validated against RabbitMQ 3.10."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest
from pika import BasicProperties

pytestmark = pytest.mark.timeout(30)

LOOP_TIMEOUT = 10


class Scenario:
    """Drives a SelectConnection's ioloop until the scenario calls finish()."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.events: list = []
        self.error: BaseException | str | None = None
        self.closed_reason: BaseException | None = None
        self.conn: pika.SelectConnection | None = None

    def on_open_error(self, conn, err) -> None:
        self.error = err
        self.conn.ioloop.stop()

    def on_closed(self, conn, reason) -> None:
        self.closed_reason = reason
        self.events.append("connection-closed")
        self.conn.ioloop.stop()

    def fail(self, why) -> None:
        self.error = why
        if self.conn.is_open:
            self.conn.close()
            # if the broker never answers the close, stop the loop anyway
            self.conn.ioloop.call_later(3, self.conn.ioloop.stop)
        else:
            self.conn.ioloop.stop()

    def run(self, on_open) -> None:
        params = pika.URLParameters(self.url)
        params.connection_attempts = 1
        self.conn = pika.SelectConnection(
            params,
            on_open_callback=on_open,
            on_open_error_callback=self.on_open_error,
            on_close_callback=self.on_closed,
        )
        timer = self.conn.ioloop.call_later(LOOP_TIMEOUT, lambda: self.fail("timeout"))
        self.conn.ioloop.start()
        self.conn.ioloop.remove_timeout(timer)
        assert self.error is None, self.error


def test_select_connection_declares_publishes_with_confirms_consumes_acks_and_closes(
    amqp_url, unique
):
    queue = unique("sel")
    n = 5
    s = Scenario(amqp_url)
    confirms: list[tuple[str, int, bool]] = []
    received: list[tuple[bytes, bool, str | None]] = []
    state: dict = {}

    def on_open(conn):
        s.events.append("open")
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        s.events.append("channel")
        state["ch"] = ch
        ch.add_on_close_callback(lambda c, reason: s.events.append(("channel-closed", reason)))
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=on_confirm_ok)

    def on_confirm_ok(_frame):
        s.events.append("confirm-ok")
        state["ch"].queue_declare(queue, auto_delete=False, callback=on_declared)

    def on_declared(frame):
        assert frame.method.queue == queue
        s.events.append("declared")
        for i in range(n):
            state["ch"].basic_publish(
                "", queue, f"m{i}".encode(), BasicProperties(content_type="text/plain")
            )

    def on_confirm(frame):
        method = frame.method
        kind = type(method).__name__
        confirms.append((kind, method.delivery_tag, method.multiple))
        acked = max(tag for _, tag, _ in confirms)
        if acked == n and "consuming" not in state:
            state["consuming"] = True
            state["tag"] = state["ch"].basic_consume(queue, on_message)

    def on_message(ch, method, props, body):
        received.append((body, method.redelivered, props.content_type))
        ch.basic_ack(method.delivery_tag)
        if len(received) == n:
            ch.basic_cancel(state["tag"], callback=on_cancelled)

    def on_cancelled(_frame):
        s.events.append("cancelled")
        state["ch"].queue_delete(queue, callback=on_deleted)

    def on_deleted(frame):
        state["deleted_count"] = frame.method.message_count
        state["ch"].close()
        s.conn.close()

    s.run(on_open)

    assert s.events[:4] == ["open", "channel", "confirm-ok", "declared"]
    assert "cancelled" in s.events
    assert s.events[-1] == "connection-closed"
    assert all(kind == "Ack" for kind, _, _ in confirms)
    assert max(tag for _, tag, _ in confirms) == n  # confirm tags count publishes from 1
    assert [b for b, _, _ in received] == [f"m{i}".encode() for i in range(n)]
    assert all(redelivered is False for _, redelivered, _ in received)
    assert all(ct == "text/plain" for _, _, ct in received)
    assert state["deleted_count"] == 0  # everything was acked
    assert isinstance(s.closed_reason, pika.exceptions.ConnectionClosedByClient)
    assert s.closed_reason.reply_code == 200


def test_select_connection_gets_return_before_confirm_for_unroutable_mandatory(amqp_url, unique):
    s = Scenario(amqp_url)
    order: list[str] = []
    state: dict = {}

    def on_open(conn):
        conn.channel(on_open_callback=on_channel)

    def on_channel(ch):
        state["ch"] = ch
        ch.add_on_return_callback(on_return)
        ch.confirm_delivery(ack_nack_callback=on_confirm, callback=on_confirm_ok)

    def on_confirm_ok(_frame):
        state["ch"].basic_publish("", unique("nowhere"), b"lost", mandatory=True)

    def on_return(ch, method, props, body):
        order.append(f"return:{method.reply_code}:{method.reply_text}:{body.decode()}")

    def on_confirm(frame):
        order.append(f"{type(frame.method).__name__}:{frame.method.delivery_tag}")
        s.conn.close()

    s.run(on_open)
    assert order == ["return:312:NO_ROUTE:lost", "Ack:1"]


def test_select_connection_survives_a_channel_error(amqp_url, unique):
    s = Scenario(amqp_url)
    missing = unique("missing")
    state: dict = {}

    def on_open(conn):
        conn.channel(on_open_callback=on_bad_channel)

    def on_bad_channel(ch):
        ch.add_on_close_callback(on_bad_closed)
        ch.queue_declare(missing, passive=True, callback=lambda f: s.fail("declared?!"))

    def on_bad_closed(ch, reason):
        state["reason"] = reason
        s.conn.channel(on_open_callback=on_good_channel)

    def on_good_channel(ch):
        ch.queue_declare("", exclusive=True, callback=on_declared)

    def on_declared(frame):
        state["server_named"] = frame.method.queue
        s.conn.close()

    s.run(on_open)
    reason = state["reason"]
    assert isinstance(reason, pika.exceptions.ChannelClosedByBroker)
    assert reason.reply_code == 404
    assert reason.reply_text == f"NOT_FOUND - no queue '{missing}' in vhost '/'"
    assert state["server_named"].startswith("amq.gen-")
