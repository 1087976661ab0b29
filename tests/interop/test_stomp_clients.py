"""STOMP with the real stomp.py client (and pika on the AMQP side of the same broker):
destinations, ack modes, NACK, transactions, receipts, prefetch, cross-protocol headers.

Runs against the in-process Baedal, or RabbitMQ's STOMP plugin with
``BAEDAL_TEST_STOMP_URL`` (see stomp_support.py).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pika
import pytest
from stomp_support import connect, disconnect, stomp_endpoint  # noqa: F401

from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(60)


def _amqp(endpoint: Any) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(endpoint.amqp_url))


@pytest.mark.parametrize("version", ["1.0", "1.1", "1.2"])
def test_queue_send_and_subscribe_in_every_version_keep_custom_headers(
    stomp_endpoint: Any, unique: Callable[[str], str], version: str  # noqa: F811
) -> None:
    queue = unique("stomp-q")
    connection, collector = connect(stomp_endpoint, version)
    try:
        connection.subscribe(f"/queue/{queue}", id="s1", ack="auto")
        connection.send(
            f"/queue/{queue}", "hello", content_type="text/plain", headers={"x-custom": "v:1", "colour": "blue"}
        )
        message = collector.wait_messages(1)[0]
        assert message.body == "hello"
        assert message.headers["destination"] == f"/queue/{queue}"
        assert message.headers["content-type"] == "text/plain"
        assert message.headers["colour"] == "blue"
        assert message.headers["x-custom"] == "v:1"
        assert message.headers["redelivered"] == "false"
        assert "message-id" in message.headers
        if version != "1.0":
            assert message.headers["subscription"] == "s1"
    finally:
        disconnect(connection)


def test_topic_fans_out_to_every_subscriber(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    key = unique("news").replace(".", "-")
    first, one = connect(stomp_endpoint)
    second, two = connect(stomp_endpoint)
    try:
        first.subscribe(f"/topic/{key}.*", id="a", receipt="ra")
        second.subscribe(f"/topic/{key}.*", id="b", receipt="rb")
        one.wait_receipt("ra")
        two.wait_receipt("rb")
        first.send(f"/topic/{key}.sport", "goal")
        assert one.wait_messages(1)[0].headers["destination"] == f"/topic/{key}.sport"
        assert two.wait_messages(1)[0].body == "goal"
    finally:
        disconnect(first)
        disconnect(second)


def test_exchange_destination_routes_by_key(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    key = unique("k")
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/exchange/amq.direct/{key}", id="d", receipt="r")
        collector.wait_receipt("r")
        connection.send("/exchange/amq.direct/other-key", "not for us")
        connection.send(f"/exchange/amq.direct/{key}", "for us")
        messages = collector.wait_messages(1)
        time.sleep(0.1)  # the unroutable one must not show up late either
        assert [m.body for m in collector.messages] == ["for us"]
        assert messages[0].headers["destination"] == f"/exchange/amq.direct/{key}"
    finally:
        disconnect(connection)


def test_amq_queue_uses_an_existing_queue_and_refuses_a_missing_one(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("amq-q")
    amqp = _amqp(stomp_endpoint)
    amqp.channel().queue_declare(queue, arguments={"x-max-length": 100})
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/amq/queue/{queue}", id="x")
        connection.send(f"/amq/queue/{queue}", "existing")
        assert collector.wait_messages(1)[0].body == "existing"
    finally:
        disconnect(connection)
        amqp.close()
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/amq/queue/{queue}-missing", id="y")
        wait_until(lambda: collector.errors, what="ERROR for a missing /amq/queue")
        assert "not_found" in collector.errors[0].headers["message"] or "not_found" in collector.errors[0].body
    finally:
        disconnect(connection)


def test_temp_queue_reply_to_is_rewritten_and_the_reply_comes_back(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    service_queue = unique("svc")
    client, client_in = connect(stomp_endpoint)
    server, server_in = connect(stomp_endpoint)
    try:
        server.subscribe(f"/queue/{service_queue}", id="svc", receipt="r")
        server_in.wait_receipt("r")
        client.send(f"/queue/{service_queue}", "ping", headers={"reply-to": "/temp-queue/answers"})
        request = server_in.wait_messages(1)[0]
        reply_to = request.headers["reply-to"]
        assert reply_to.startswith("/reply-queue/")
        server.send(reply_to, "pong")
        reply = client_in.wait_messages(1)[0]
        assert reply.body == "pong"
        assert reply.headers["subscription"] == "/temp-queue/answers"
    finally:
        disconnect(client)
        disconnect(server)


@pytest.mark.parametrize("style", ["rabbitmq", "activemq"])
def test_durable_topic_subscription_keeps_messages_across_a_reconnect(
    stomp_endpoint: Any, unique: Callable[[str], str], style: str  # noqa: F811
) -> None:
    key = unique("durable").replace(".", "-")
    sub_id = unique("sub")
    if style == "rabbitmq":
        headers = {"durable": "true", "auto-delete": "false"}
        connect_headers: dict[str, str] = {}
    else:
        if stomp_endpoint.broker is None:
            pytest.skip("RabbitMQ 3.10 has no activemq.subscriptionName")
        headers = {"activemq.subscriptionName": "orders"}
        connect_headers = {"client-id": sub_id}
    subscriber, collector = connect(stomp_endpoint, **connect_headers)
    subscriber.subscribe(f"/topic/{key}", id=sub_id, ack="client-individual", headers=headers, receipt="r1")
    collector.wait_receipt("r1")
    subscriber.disconnect()
    sender, sender_in = connect(stomp_endpoint)
    try:
        sender.send(f"/topic/{key}", "while away", headers={"persistent": "true"}, receipt="sent")
        sender_in.wait_receipt("sent")
    finally:
        disconnect(sender)
    subscriber, collector = connect(stomp_endpoint, **connect_headers)
    try:
        subscriber.subscribe(f"/topic/{key}", id=sub_id, ack="client-individual", headers=headers)
        message = collector.wait_messages(1)[0]
        assert message.body == "while away"
        subscriber.ack(message.headers["ack"])
        # UNSUBSCRIBE with durable:true ends the durable subscription (RabbitMQ).
        subscriber.unsubscribe(sub_id, headers={"durable": "true"} if style == "rabbitmq" else {})
    finally:
        disconnect(subscriber)


def test_client_ack_is_cumulative_and_unacked_come_back_redelivered(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("cumulative")
    connection, collector = connect(stomp_endpoint)
    try:
        for i in range(4):
            connection.send(f"/queue/{queue}", f"m{i}")
        connection.subscribe(f"/queue/{queue}", id="c", ack="client")
        messages = collector.wait_messages(4)
        connection.ack(messages[2].headers["ack"], receipt="acked")  # acks m0, m1, m2
        collector.wait_receipt("acked")
    finally:
        disconnect(connection)
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/queue/{queue}", id="c", ack="client-individual")
        message = collector.wait_messages(1)[0]
        time.sleep(0.1)
        assert [m.body for m in collector.messages] == ["m3"]
        assert message.headers["redelivered"] == "true"
        connection.ack(message.headers["ack"])
    finally:
        disconnect(connection)


def test_client_individual_ack_settles_only_that_message(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    queue = unique("individual")
    connection, collector = connect(stomp_endpoint)
    try:
        for i in range(3):
            connection.send(f"/queue/{queue}", f"m{i}")
        connection.subscribe(f"/queue/{queue}", id="i", ack="client-individual")
        messages = collector.wait_messages(3)
        connection.ack(messages[1].headers["ack"], receipt="one")
        collector.wait_receipt("one")
    finally:
        disconnect(connection)
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/queue/{queue}", id="i", ack="client-individual")
        collector.wait_messages(2)
        time.sleep(0.1)
        assert sorted(m.body for m in collector.messages) == ["m0", "m2"]
        for message in collector.messages:
            connection.ack(message.headers["ack"])
    finally:
        disconnect(connection)


def test_nack_requeues_and_the_message_comes_back_redelivered(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("nack")
    connection, collector = connect(stomp_endpoint)
    try:
        connection.send(f"/queue/{queue}", "again")
        connection.subscribe(f"/queue/{queue}", id="n", ack="client-individual")
        first = collector.wait_messages(1)[0]
        connection.nack(first.headers["ack"])
        second = collector.wait_messages(2)[1]
        assert second.body == "again"
        assert second.headers["redelivered"] == "true"
        connection.ack(second.headers["ack"])
    finally:
        disconnect(connection)


def test_nack_without_requeue_dead_letters_where_the_queue_says_so(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("dlx-src")
    dead = unique("dlx-dst")
    amqp = _amqp(stomp_endpoint)
    channel = amqp.channel()
    channel.queue_declare(dead)
    channel.queue_declare(queue, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead})
    connection, collector = connect(stomp_endpoint)
    try:
        connection.send(f"/amq/queue/{queue}", "poison")
        connection.subscribe(f"/amq/queue/{queue}", id="p", ack="client-individual")
        message = collector.wait_messages(1)[0]
        connection.nack(message.headers["ack"], requeue="false", receipt="nacked")
        collector.wait_receipt("nacked")
        method, properties, body = wait_until(lambda: _get(channel, dead))  # type: ignore[misc]
        assert body == b"poison"
        assert properties.headers["x-death"][0]["reason"] == "rejected"
    finally:
        disconnect(connection)
        amqp.close()


def _get(channel: Any, queue: str) -> Any:
    method, properties, body = channel.basic_get(queue, auto_ack=True)
    return (method, properties, body) if method else None


def test_transaction_commit_sends_and_abort_discards(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    queue = unique("tx")
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/queue/{queue}", id="t", receipt="sub")
        collector.wait_receipt("sub")
        tx = connection.begin()
        connection.send(f"/queue/{queue}", "in tx", transaction=tx)
        time.sleep(0.2)
        assert collector.messages == []  # not before COMMIT
        connection.commit(tx)
        assert collector.wait_messages(1)[0].body == "in tx"
        aborted = connection.begin()
        connection.send(f"/queue/{queue}", "aborted", transaction=aborted)
        connection.abort(aborted)
        connection.send(f"/queue/{queue}", "after", receipt="after")
        collector.wait_receipt("after")
        messages = collector.wait_messages(2)
        assert [m.body for m in messages] == ["in tx", "after"]
    finally:
        disconnect(connection)


def test_acks_inside_an_aborted_transaction_do_not_count(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    queue = unique("tx-ack")
    connection, collector = connect(stomp_endpoint)
    try:
        connection.send(f"/queue/{queue}", "keep me")
        connection.subscribe(f"/queue/{queue}", id="t", ack="client-individual")
        message = collector.wait_messages(1)[0]
        tx = connection.begin()
        connection.ack(message.headers["ack"], transaction=tx)
        connection.abort(tx)
    finally:
        disconnect(connection)
    connection, collector = connect(stomp_endpoint)
    try:
        connection.subscribe(f"/queue/{queue}", id="t", ack="client-individual")
        message = collector.wait_messages(1)[0]
        assert message.body == "keep me"
        tx = connection.begin()
        connection.ack(message.headers["ack"], transaction=tx)
        connection.commit(tx, receipt="committed")
        collector.wait_receipt("committed")
    finally:
        disconnect(connection)
    amqp = _amqp(stomp_endpoint)
    try:
        assert amqp.channel().queue_declare(queue, passive=True).method.message_count == 0
    finally:
        amqp.close()


def test_prefetch_count_bounds_unacked_deliveries(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    queue = unique("prefetch")
    connection, collector = connect(stomp_endpoint)
    try:
        for i in range(5):
            connection.send(f"/queue/{queue}", f"m{i}")
        connection.subscribe(f"/queue/{queue}", id="p", ack="client-individual", headers={"prefetch-count": "2"})
        collector.wait_messages(2)
        time.sleep(0.2)
        assert len(collector.messages) == 2
        connection.ack(collector.messages[0].headers["ack"])
        collector.wait_messages(3)
        time.sleep(0.1)
        assert len(collector.messages) == 3
    finally:
        disconnect(connection)


def test_stomp_send_reaches_a_pika_consumer_with_fields_and_headers(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("to-amqp")
    amqp = _amqp(stomp_endpoint)
    channel = amqp.channel()
    channel.queue_declare(queue, durable=True)
    connection, collector = connect(stomp_endpoint)
    try:
        connection.send(
            f"/amq/queue/{queue}",
            "from stomp",
            content_type="application/json",
            headers={
                "persistent": "true",
                "priority": "3",
                "correlation-id": "c-1",
                "reply-to": "replies",
                "expiration": "60000",
                "amqp-message-id": "m-1",
                "trace": "abc",
            },
            receipt="stored",
        )
        collector.wait_receipt("stored")
        method, properties, body = wait_until(lambda: _get(channel, queue))
        assert body == b"from stomp"
        assert properties.content_type == "application/json"
        assert properties.delivery_mode == 2
        assert properties.priority == 3
        assert properties.correlation_id == "c-1"
        assert properties.reply_to == "replies"
        assert properties.expiration == "60000"
        assert properties.message_id == "m-1"
        assert properties.headers["trace"] in ("abc", b"abc")
    finally:
        disconnect(connection)
        channel.queue_delete(queue)
        amqp.close()


def test_pika_publish_reaches_a_stomp_subscriber_with_fields_and_headers(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("from-amqp")
    connection, collector = connect(stomp_endpoint)
    amqp = _amqp(stomp_endpoint)
    try:
        connection.subscribe(f"/queue/{queue}", id="a", receipt="r")
        collector.wait_receipt("r")
        amqp.channel().basic_publish(
            "",
            queue,
            b"from amqp",
            pika.BasicProperties(
                content_type="text/plain",
                correlation_id="c-2",
                reply_to="back",
                message_id="m-2",
                delivery_mode=2,
                priority=4,
                headers={"trace": "xyz", "count": 7, "flag": True},
            ),
        )
        message = collector.wait_messages(1)[0]
        headers = message.headers
        assert message.body == "from amqp"
        assert headers["content-type"] == "text/plain"
        assert headers["correlation-id"] == "c-2"
        assert headers["reply-to"] == "/reply-queue/back"  # as RabbitMQ rewrites it
        assert headers["amqp-message-id"] == "m-2"
        assert headers["persistent"] == "true"
        assert headers["priority"] == "4"
        assert headers["trace"] == "xyz"
        assert headers["count"] == "7"
        if stomp_endpoint.broker is not None:
            # Deliberate difference: RabbitMQ 3.10 drops boolean headers; Baedal sends them.
            assert headers["flag"] == "true"
        assert headers["destination"] == f"/queue/{queue}"
    finally:
        disconnect(connection)
        amqp.close()


def test_receipt_on_subscribe_unsubscribe_and_disconnect(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    connection, collector = connect(stomp_endpoint)
    connection.subscribe(f"/queue/{unique('r')}", id="s", receipt="sub")
    collector.wait_receipt("sub")
    connection.unsubscribe("s", receipt="unsub")
    collector.wait_receipt("unsub")
    connection.disconnect(receipt="bye")
    collector.wait_receipt("bye")


def test_activemq_exclusive_gives_single_active_consumer_with_failover(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    if stomp_endpoint.broker is None:
        pytest.skip("activemq.exclusive is ActiveMQ's header; RabbitMQ 3.10 ignores it")
    queue = unique("exclusive")
    first, one = connect(stomp_endpoint)
    second, two = connect(stomp_endpoint)
    try:
        first.subscribe(f"/queue/{queue}", id="a", ack="client-individual", headers={"activemq.exclusive": "true"}, receipt="a")
        one.wait_receipt("a")
        second.subscribe(f"/queue/{queue}", id="b", ack="client-individual", headers={"activemq.exclusive": "true"}, receipt="b")
        two.wait_receipt("b")
        for i in range(4):
            second.send(f"/queue/{queue}", f"m{i}")
        one.wait_messages(4)
        assert two.messages == []
        first.disconnect()  # unacked ones fail over to the standby, in order
        assert [m.body for m in two.wait_messages(4)] == ["m0", "m1", "m2", "m3"]
    finally:
        disconnect(first)
        disconnect(second)


def test_selector_header_selects_with_the_core_selector(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    if stomp_endpoint.broker is None:
        pytest.skip("RabbitMQ has no selectors")
    queue = unique("selector")
    connection, collector = connect(stomp_endpoint)
    other, others = connect(stomp_endpoint)
    try:
        # STOMP header values are strings: "5" > 3 is true (ActiveMQ's numeric coercion)
        connection.subscribe(
            f"/queue/{queue}", id="s", headers={"selector": "colour = 'red' AND size > 3"}, receipt="sub"
        )
        collector.wait_receipt("sub")
        connection.send(f"/queue/{queue}", "blue", headers={"colour": "blue", "size": "5"})
        connection.send(f"/queue/{queue}", "small", headers={"colour": "red", "size": "2"})
        connection.send(f"/queue/{queue}", "red", headers={"colour": "red", "size": "5"})
        assert [m.body for m in collector.wait_messages(1)] == ["red"]
        # what it did not select stays, in order, for another subscriber
        other.subscribe(f"/queue/{queue}", id="t", ack="auto")
        assert [m.body for m in others.wait_messages(2)] == ["blue", "small"]
        connection.subscribe(f"/queue/{queue}-bad", id="b", headers={"selector": "colour = "})
        wait_until(lambda: collector.errors, what="ERROR for a bad selector")
    finally:
        disconnect(connection)
        disconnect(other)


def test_activemq_headers_pass_through_as_neutral_headers(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    queue = unique("jmsx")
    amqp = _amqp(stomp_endpoint)
    channel = amqp.channel()
    channel.queue_declare(queue)
    connection, collector = connect(stomp_endpoint)
    try:
        connection.send(f"/amq/queue/{queue}", "grouped", headers={"JMSXGroupID": "g1", "traceparent": "00-ab"}, receipt="s")
        collector.wait_receipt("s")
        _, properties, _ = wait_until(lambda: _get(channel, queue))  # type: ignore[misc]
        assert properties.headers["JMSXGroupID"] in ("g1", b"g1")
        assert properties.headers["traceparent"] in ("00-ab", b"00-ab")
    finally:
        disconnect(connection)
        amqp.close()
