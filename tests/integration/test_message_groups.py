"""Message groups and exclusive consumers over AMQP (issue 12 item 5).

Groups, ActiveMQ's semantics: ``JMSXGroupID`` pins a group to the consumer that first
receives it while that consumer lives; when it goes, the group moves to another
consumer, its unacked messages first, in order; ``JMSXGroupSeq = -1`` closes the group.
RabbitMQ has no groups, so those tests run against Baedal only.

Exclusive consumers (ActiveMQ's ``consumer.exclusive`` / STOMP ``activemq.exclusive``) are
RabbitMQ's single active consumer (``x-single-active-consumer`` on the queue); that test
runs against RabbitMQ 3.10.8 too (``BAEDAL_TEST_AMQP_URL``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pika
import pytest

baedal_only = pytest.mark.skipif(
    os.environ.get("BAEDAL_TEST_AMQP_URL") is not None, reason="message groups are a Baedal extension"
)


def pump(connections: list[Any], done: Callable[[], bool], timeout: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        for connection in connections:
            if connection.is_open:
                connection.process_data_events(time_limit=0.01)


def settle(connections: list[Any], seconds: float = 0.3) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        for connection in connections:
            if connection.is_open:
                connection.process_data_events(time_limit=0.01)


class Member:
    """One consumer on its own connection; records (body, redelivered, delivery tag)."""

    def __init__(self, url: str, queue: str, prefetch: int, auto_settle: bool) -> None:
        self.connection = pika.BlockingConnection(pika.URLParameters(url))
        self.channel = self.connection.channel()
        self.channel.basic_qos(prefetch_count=prefetch)
        self.got: list[bytes] = []
        self.tags: list[int] = []
        self.redelivered: list[bool] = []
        self.auto_settle = auto_settle
        self.tag = self.channel.basic_consume(queue, self.on_message)

    def on_message(self, channel: Any, method: Any, properties: Any, body: bytes) -> None:
        self.got.append(body)
        self.redelivered.append(method.redelivered)
        if self.auto_settle:
            channel.basic_ack(method.delivery_tag)
        else:
            self.tags.append(method.delivery_tag)

    def ack_all(self) -> None:
        for tag in self.tags:
            self.channel.basic_ack(tag)
        self.tags.clear()

    def close(self) -> None:
        if self.connection.is_open:
            self.connection.close()


@pytest.fixture
def group_setup(amqp_url: str, unique, request: pytest.FixtureRequest):
    made: list[Any] = []
    publisher = pika.BlockingConnection(pika.URLParameters(amqp_url))
    made.append(publisher)
    channel = publisher.channel()
    queue = unique("groups")
    channel.queue_declare(queue, arguments=getattr(request, "param", None))

    def member(prefetch: int = 10, auto_settle: bool = True) -> Member:
        m = Member(amqp_url, queue, prefetch, auto_settle)
        made.append(m)
        return m

    def publish(body: str, group: str | None, sequence: Any = None) -> None:
        headers: dict[str, Any] = {}
        if group is not None:
            headers["JMSXGroupID"] = group
        if sequence is not None:
            headers["JMSXGroupSeq"] = sequence
        channel.basic_publish("", queue, body.encode(), pika.BasicProperties(headers=headers))

    try:
        yield member, publish, publisher
    finally:
        for thing in made:
            try:
                thing.close()
            except Exception:  # noqa: BLE001  (teardown must go on)
                pass
        cleanup = pika.BlockingConnection(pika.URLParameters(amqp_url))
        cleanup.channel().queue_delete(queue)
        cleanup.close()


@baedal_only
def test_each_group_reaches_one_consumer_in_order(group_setup) -> None:
    member, publish, publisher = group_setup
    first, second = member(prefetch=3), member(prefetch=3)
    sent: dict[str, list[bytes]] = {"A": [], "B": [], "C": []}
    for i in range(60):
        group = "ABC"[i % 3]
        sent[group].append(f"{group}-{i}".encode())
        publish(f"{group}-{i}", group)
    connections = [first.connection, second.connection, publisher]
    pump(connections, lambda: len(first.got) + len(second.got) >= 60, what="all delivered")
    settle(connections)
    for group, bodies in sent.items():
        in_first = [b for b in first.got if b.startswith(group.encode())]
        in_second = [b for b in second.got if b.startswith(group.encode())]
        assert (in_first, in_second) in ((bodies, []), ([], bodies)), group
    assert first.got and second.got  # three groups spread over both consumers


@baedal_only
def test_killing_the_owner_moves_the_group_with_its_unacked_messages_in_order(group_setup) -> None:
    member, publish, publisher = group_setup
    first, second = member(prefetch=50, auto_settle=False), member(prefetch=50, auto_settle=False)
    for i in range(5):
        publish(f"G-{i}", "G")
    connections = [first.connection, second.connection, publisher]
    pump(connections, lambda: len(first.got) + len(second.got) >= 5, what="G delivered")
    owner, other = (first, second) if first.got else (second, first)
    assert owner.got == [f"G-{i}".encode() for i in range(5)] and other.got == []
    for i in range(5, 8):
        publish(f"G-{i}", "G")
    pump(connections, lambda: len(owner.got) >= 8, what="the owner keeps the group")
    owner.close()  # its 8 unacked messages are requeued and the group moves
    pump([other.connection, publisher], lambda: len(other.got) >= 8, what="the group moved")
    publish("G-8", "G")
    pump([other.connection, publisher], lambda: len(other.got) >= 9, what="new messages follow")
    assert other.got == [f"G-{i}".encode() for i in range(9)]
    assert other.redelivered == [True] * 8 + [False]


@baedal_only
def test_a_cancelled_owner_keeps_the_group_until_its_unacked_messages_are_settled(group_setup) -> None:
    member, publish, publisher = group_setup
    first, second = member(auto_settle=False), member(auto_settle=False)
    publish("G-0", "G")
    connections = [first.connection, second.connection, publisher]
    pump(connections, lambda: len(first.got) + len(second.got) >= 1, what="G-0")
    owner, other = (first, second) if first.got else (second, first)
    owner.channel.basic_cancel(owner.tag)
    publish("G-1", "G")
    settle(connections)
    assert other.got == []  # G-0 is still being processed by the old owner
    owner.ack_all()
    pump(connections, lambda: other.got == [b"G-1"], what="G-1 after G-0 was acked")


@baedal_only
def test_sequence_minus_one_closes_the_group(group_setup) -> None:
    member, publish, publisher = group_setup
    first, second = member(prefetch=2, auto_settle=False), member(prefetch=2, auto_settle=False)
    publish("G-0", "G")
    connections = [first.connection, second.connection, publisher]
    pump(connections, lambda: len(first.got) + len(second.got) >= 1, what="G-0")
    owner, other = (first, second) if first.got else (second, first)
    publish("G-1", "G", sequence="-1")  # a STOMP client sends it as a string
    pump(connections, lambda: owner.got == [b"G-0", b"G-1"], what="the closing message goes to the owner")
    publish("G-2", "G")  # the owner has no credit left: a new group goes elsewhere
    pump(connections, lambda: other.got == [b"G-2"], what="the reopened group goes to anyone")


@baedal_only
def test_a_blocked_group_does_not_block_other_messages(group_setup) -> None:
    member, publish, publisher = group_setup
    first, second = member(prefetch=1, auto_settle=False), member(prefetch=5, auto_settle=True)
    connections = [first.connection, second.connection, publisher]
    publish("G-0", "G")
    pump(connections, lambda: len(first.got) + len(second.got) >= 1, what="G-0")
    if second.got:  # make sure the group belongs to the consumer that holds its messages
        pytest.skip("the group went to the acking consumer first")  # (round-robin starts with the first)
    publish("G-1", "G")
    for i in range(5):
        publish(f"plain-{i}", None)
    pump(connections, lambda: len(second.got) >= 5, what="plain messages pass the blocked group")
    settle(connections)
    assert second.got == [f"plain-{i}".encode() for i in range(5)]
    assert first.got == [b"G-0"]
    first.ack_all()
    pump(connections, lambda: first.got == [b"G-0", b"G-1"], what="G-1 once the owner has credit")


@pytest.mark.parametrize("group_setup", [{"x-single-active-consumer": True}], indirect=True)
def test_exclusive_consumer_is_single_active_consumer_and_fails_over_in_order(group_setup) -> None:
    """RabbitMQ 3.10.8 and Baedal: the first consumer is active; when its connection
    goes, its unacked messages are requeued and the next consumer gets them, in order."""
    member, publish, publisher = group_setup
    first, second = member(prefetch=50, auto_settle=False), member(prefetch=50, auto_settle=False)
    for i in range(5):
        publish(f"m-{i}", None)
    connections = [first.connection, second.connection, publisher]
    pump(connections, lambda: len(first.got) >= 5, what="the active consumer gets everything")
    settle(connections)
    assert second.got == []
    first.close()
    publish("m-5", None)
    pump([second.connection, publisher], lambda: len(second.got) >= 6, what="failover")
    assert second.got == [f"m-{i}".encode() for i in range(6)]
    assert second.redelivered == [True] * 5 + [False]
