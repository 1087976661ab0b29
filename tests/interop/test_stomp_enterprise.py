"""The ActiveMQ-style ("enterprise") features over STOMP, driven with stomp.py: message
groups (``JMSXGroupID``), scheduled delivery (``AMQ_SCHEDULED_DELAY``, ``_PERIOD``,
``_REPEAT``), the delivery limit (a NACK loop on a queue declared with
``x-delivery-limit`` and a dead-letter exchange through pika ends in the DLX) and
``activemq.exclusive`` (single active consumer) fail-over.

These are implemented in the protocol-neutral core (core/queue.py, core/scheduler.py);
the STOMP adapter only passes the headers through, so these tests show the whole chain
from a STOMP client.  RabbitMQ's STOMP plugin has no groups, no scheduler and ignores
``activemq.exclusive``: those are ``baedal_only``.  The delivery limit runs against
RabbitMQ too on a quorum queue (3.10 has ``x-delivery-limit`` on quorum queues only).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
from stomp_support import baedal_only, connect, disconnect, stomp_endpoint  # noqa: F401

from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(60)


def _amqp(endpoint: Any) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(endpoint.amqp_url))


def _bodies(collector: Any) -> list[str]:
    with collector.lock:
        return [m.body for m in collector.messages]


@baedal_only("RabbitMQ has no message groups")
def test_groups_stay_with_one_subscriber_in_order_and_move_when_it_disconnects(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = f"/queue/{unique('groups')}"
    groups = [f"g{k}" for k in range(4)]
    first, one = connect(stomp_endpoint)
    second, two = connect(stomp_endpoint)
    producer, _ = connect(stomp_endpoint)
    try:
        first.subscribe(queue, id="a", ack="client-individual", receipt="a")
        one.wait_receipt("a")
        second.subscribe(queue, id="b", ack="client-individual", receipt="b")
        two.wait_receipt("b")
        for i in range(10):  # the groups interleaved
            for group in groups:
                producer.send(queue, f"{group}-{i}", headers={"JMSXGroupID": group})
        wait_until(lambda: len(one.messages) + len(two.messages) == 40, what="40 grouped messages delivered")
        assert all(m.headers["JMSXGroupID"] == m.body.split("-")[0] for m in one.messages + two.messages)
        owner: dict[str, str] = {}
        for name, collector in (("a", one), ("b", two)):
            for body in _bodies(collector):
                group = body.split("-")[0]
                assert owner.setdefault(group, name) == name, f"{group} went to both subscribers"
        for group in groups:  # each group whole, in order, at its one subscriber
            collector = one if owner[group] == "a" else two
            assert [b for b in _bodies(collector) if b.startswith(f"{group}-")] == [f"{group}-{i}" for i in range(10)]
        assert set(owner.values()) == {"a", "b"}, f"every group went to one subscriber: {owner}"

        # "b" acknowledges what it has; "a" disconnects holding its groups' messages
        # unacked: they come back, in order, to "b", which now owns those groups too and
        # gets their next messages after them.
        for message in list(two.messages):
            second.ack(message.headers["ack"])
        moved = sorted(g for g, o in owner.items() if o == "a")
        first.disconnect()
        for group in moved:
            producer.send(queue, f"{group}-10", headers={"JMSXGroupID": group})
        expected = 40 + len(moved)  # what it had, what the other had, the new ones
        wait_until(lambda: len(two.messages) == expected, what="the moved groups delivered to the other subscriber")
        later = two.messages[40 - len(one.messages):]
        for group in moved:
            got = [m for m in later if m.body.startswith(f"{group}-")]
            assert [m.body for m in got] == [f"{group}-{i}" for i in range(11)]
            assert all(m.headers["redelivered"] == "true" for m in got[:10])
            assert got[10].headers["redelivered"] == "false"
    finally:
        for connection in (first, second, producer):
            disconnect(connection)


@baedal_only("RabbitMQ has no AMQ_SCHEDULED_* scheduler")
def test_scheduled_delay_holds_a_send_back(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    queue = f"/queue/{unique('delay')}"
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(queue, id="s", receipt="sub")
        collector.wait_receipt("sub")
        sent = time.monotonic()
        connection.send(queue, "later", headers={"AMQ_SCHEDULED_DELAY": "1500", "persistent": "true"}, receipt="r1")
        connection.send(queue, "now", receipt="r2")
        collector.wait_receipt("r2")
        collector.wait_receipt("r1")
        assert "later" not in _bodies(collector)  # stored, not yet due
        wait_until(lambda: len(collector.messages) == 2, 10, "the scheduled message")
        arrived = time.monotonic()
        assert _bodies(collector) == ["now", "later"]
        # Due 1.5 s after the broker got it, which is after the client sent it.
        assert arrived - sent >= 1.5
    finally:
        disconnect(connection)


@baedal_only("RabbitMQ has no AMQ_SCHEDULED_* scheduler")
def test_scheduled_period_and_repeat_deliver_one_plus_repeat_times(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = f"/queue/{unique('repeat')}"
    connection, collector = connect(stomp_endpoint)
    arrivals: list[float] = []
    original = collector.on_message

    def timed(frame: Any) -> None:
        arrivals.append(time.monotonic())
        original(frame)

    collector.on_message = timed  # type: ignore[method-assign]
    try:
        connection.subscribe(queue, id="s", receipt="sub")
        collector.wait_receipt("sub")
        sent = time.monotonic()
        connection.send(
            queue, "tick",
            headers={"AMQ_SCHEDULED_DELAY": "200", "AMQ_SCHEDULED_PERIOD": "300", "AMQ_SCHEDULED_REPEAT": "3"},
            receipt="r",
        )
        collector.wait_receipt("r")
        wait_until(lambda: len(collector.messages) == 4, 10, "1 + 3 repeats")
        assert _bodies(collector) == ["tick"] * 4
        assert arrivals[0] - sent >= 0.2
        # each repeat is due one period after the previous due time (firing jitter only delays)
        assert arrivals[3] - sent >= 0.2 + 3 * 0.3
        # a repeat series ends: no fifth copy one period after the last
        time.sleep(0.6)
        assert len(collector.messages) == 4
    finally:
        disconnect(connection)


@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
def test_nack_loop_ends_in_the_dead_letter_exchange_at_the_delivery_limit(
    stomp_endpoint: Any, unique: Callable[[str], str], queue_type: str  # noqa: F811
) -> None:
    if queue_type == "classic" and stomp_endpoint.broker is None:
        pytest.skip("RabbitMQ 3.10 has x-delivery-limit on quorum queues only")
    queue = unique(f"limited-{queue_type}")
    dlq = unique("limited-dlq")
    amqp = _amqp(stomp_endpoint)
    channel = amqp.channel()
    channel.queue_declare(dlq, durable=True)
    channel.queue_declare(
        queue, durable=True,
        arguments={
            "x-queue-type": queue_type, "x-delivery-limit": 2,
            "x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq,
        },
    )
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/amq/queue/{queue}", id="s", ack="client-individual", receipt="sub")
        collector.wait_receipt("sub")
        connection.send(f"/amq/queue/{queue}", "poison", headers={"persistent": "true"})
        nacked = 0
        deadline = time.monotonic() + 15
        # NACK (requeue) every delivery until the queue gives up on it
        while time.monotonic() < deadline:
            if len(collector.messages) > nacked:
                connection.nack(collector.messages[nacked].headers["ack"])
                nacked += 1
            elif channel.queue_declare(dlq, passive=True).method.message_count == 1:
                break
            else:
                time.sleep(0.02)
        assert [m.body for m in collector.messages] == ["poison"] * 3, "first delivery + 2 redeliveries"
        assert [m.headers["redelivered"] for m in collector.messages] == ["false", "true", "true"]
        method, properties, body = channel.basic_get(dlq, auto_ack=True)
        assert method is not None and body == b"poison"
        death = properties.headers["x-death"][0]
        assert death["queue"] == queue
        assert death["reason"] == "delivery_limit"
        assert channel.queue_declare(queue, passive=True).method.message_count == 0
    finally:
        disconnect(connection)
        channel.queue_delete(queue)
        channel.queue_delete(dlq)
        amqp.close()


@baedal_only("activemq.exclusive is ActiveMQ's header; RabbitMQ 3.10 ignores it")
def test_exclusive_consumer_fails_over_and_the_old_one_comes_back_as_standby(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = f"/queue/{unique('exclusive')}"
    exclusive = {"activemq.exclusive": "true"}
    first, one = connect(stomp_endpoint)
    second, two = connect(stomp_endpoint)
    producer, _ = connect(stomp_endpoint)
    third = None
    try:
        first.subscribe(queue, id="a", ack="client-individual", headers=exclusive, receipt="a")
        one.wait_receipt("a")
        second.subscribe(queue, id="b", ack="client-individual", headers=exclusive, receipt="b")
        two.wait_receipt("b")
        for i in range(6):
            producer.send(queue, f"m{i}")
        one.wait_messages(6)
        for message in one.messages[:3]:  # m0..m2 done; m3..m5 unacked
            first.ack(message.headers["ack"])
        assert two.messages == []
        first.disconnect()
        assert [m.body for m in two.wait_messages(3)] == ["m3", "m4", "m5"]
        assert all(m.headers["redelivered"] == "true" for m in two.messages)
        # the old consumer returns: it is the standby now, the active one keeps the queue
        third, three = connect(stomp_endpoint)
        third.subscribe(queue, id="c", ack="client-individual", headers=exclusive, receipt="c")
        three.wait_receipt("c")
        producer.send(queue, "m6", receipt="m6")
        two.wait_messages(4)
        assert two.messages[3].body == "m6"
        assert three.messages == []
    finally:
        for connection in (first, second, producer, third):
            if connection is not None:
                disconnect(connection)
