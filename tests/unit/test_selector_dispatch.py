"""The selective dispatch in core/queue.py against a naive model (Hypothesis).

Random runs of publishes (with a colour and maybe a ``JMSXGroupID``), subscriptions with
selectors, acks, requeues and cancellations on a real ``Queue`` (in-memory store and a
priority store), with fake consumers that take deliveries like an adapter.  After every
step: each delivery matched its consumer's selector; nothing was lost or duplicated; a
consumer's first deliveries come in publish order; a group's unacked messages are never
split over two consumers; and no consumer with credit is left without a ready message
it may take.  At the end a plain consumer gets everything left, in publish order.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.core.broker import BrokerCore
from baedal.core.message import Message, QueueEntry
from baedal.core.queue import Queue
from baedal.core.selector import compile_selector

SELECTORS = [None, "color = 'red'", "color <> 'red'", "color IS NULL", "n > 10"]


class FakeConsumer:
    def __init__(self, tag: str, selector: str | None, prefetch: int) -> None:
        self.tag = tag
        self.priority = 0
        self.exclusive = False
        self.no_ack = False
        self.owner = None
        self.text = selector
        self.selector = None if selector is None else compile_selector(selector)
        self.prefetch = prefetch
        self.unacked: list[QueueEntry] = []
        self.first_deliveries: list[int] = []

    def can_deliver(self) -> bool:
        return len(self.unacked) < self.prefetch

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        assert entry.message is not None
        if self.selector is not None:
            assert self.selector.matches(entry.message), (self.text, entry.message.headers)
        if not entry.delivery_count:
            self.first_deliveries.append(entry.message.headers["n"])
        entry.delivery_count += 1
        self.unacked.append(entry)

    def cancelled_by_server(self, queue: Queue) -> None:
        pass


def number(entry: QueueEntry) -> int:
    assert entry.message is not None
    return entry.message.headers["n"]  # type: ignore[index,no-any-return]


OPERATIONS = st.lists(
    st.one_of(
        st.tuples(st.just("publish"), st.sampled_from(["red", "blue", None]), st.sampled_from([None, None, "g1", "g2"])),
        st.tuples(st.just("subscribe"), st.sampled_from(SELECTORS), st.integers(1, 3)),
        st.tuples(st.just("ack"), st.integers(0, 9), st.integers(0, 2)),
        st.tuples(st.just("requeue"), st.integers(0, 9), st.integers(0, 2)),
        st.tuples(st.just("cancel"), st.integers(0, 9), st.just(0)),
    ),
    max_size=60,
)


def run(operations: list[tuple[Any, Any, Any]], arguments: dict[str, Any]) -> None:
    loop = asyncio.new_event_loop()
    try:
        core = BrokerCore(loop=loop)
        queue, _ = core.vhosts["/"].declare_queue("model", arguments=arguments)

        def settle_loop() -> None:
            loop.run_until_complete(asyncio.sleep(0))
            loop.run_until_complete(asyncio.sleep(0))

        # Two consumers that stay (groups are pinned while two or more may receive).
        live = [FakeConsumer("anchor-0", None, 2), FakeConsumer("anchor-1", "color = 'red'", 2)]
        for consumer in live:
            queue.add_consumer(consumer)
        published: dict[int, Message] = {}
        acked: set[int] = set()
        for step, (kind, a, b) in enumerate(operations):
            if kind == "publish":
                n = len(published)
                headers: dict[str, Any] = {"n": n}
                if a is not None:
                    headers["color"] = a
                if b is not None:
                    headers["JMSXGroupID"] = b
                message = Message.build("", "model", b"x", headers=headers, priority=n % 3)
                published[n] = message
                queue.publish(message)
            elif kind == "subscribe":
                consumer = FakeConsumer(f"c{step}", a, b)
                live.append(consumer)
                queue.add_consumer(consumer)
            else:
                consumer = live[a % len(live)]
                if kind == "ack" and consumer.unacked:
                    entry = consumer.unacked.pop(b % len(consumer.unacked))
                    acked.add(number(entry))
                    queue.ack(entry)
                    queue.drain()  # an adapter drains when credit comes back
                elif kind == "requeue" and consumer.unacked:
                    entry = consumer.unacked.pop(b % len(consumer.unacked))
                    queue.reject(entry, requeue=True)
                elif kind == "cancel" and len(live) > 2 and a % len(live) >= 2:
                    live.remove(consumer)
                    queue.remove_consumer(consumer)  # a closing channel: cancel, then requeue
                    entries, consumer.unacked = consumer.unacked, []
                    queue.requeue(sorted(entries))
            settle_loop()
            check(queue, live, published, acked, ordered="x-max-priority" not in arguments)
        # Everything left goes to one plain consumer, in publish order.
        for consumer in list(live):
            queue.remove_consumer(consumer)
            entries, consumer.unacked = consumer.unacked, []
            queue.requeue(sorted(entries))
        settle_loop()
        final = FakeConsumer("final", None, 10_000)
        queue.add_consumer(final)
        settle_loop()
        left = [number(entry) for entry in final.unacked]
        assert sorted(left) == sorted(set(published) - acked)
        if "x-max-priority" not in arguments:
            assert left == sorted(left)
        assert queue.message_count == 0
    finally:
        loop.close()


def check(
    queue: Queue, live: list[FakeConsumer], published: dict[int, Message], acked: set[int], ordered: bool
) -> None:
    unacked = {number(entry): consumer for consumer in live for entry in consumer.unacked}
    held_count = sum(len(consumer.unacked) for consumer in live)
    assert held_count == len(unacked), "a message delivered twice at once"
    ready = set(published) - acked - set(unacked)
    assert queue.message_count == len(ready)
    for consumer in live:
        if ordered:  # (a priority queue's order is by priority first)
            assert consumer.first_deliveries == sorted(consumer.first_deliveries)
    owners: dict[str, FakeConsumer] = {}
    for n, consumer in unacked.items():
        group = published[n].headers.get("JMSXGroupID")  # type: ignore[union-attr]
        if group is not None:
            assert owners.setdefault(group, consumer) is consumer, f"group {group} split"
    for consumer in live:
        if not consumer.can_deliver():
            continue
        for n in ready:
            message = published[n]
            if consumer.selector is not None and not consumer.selector.matches(message):
                continue
            group = message.headers.get("JMSXGroupID")  # type: ignore[union-attr]
            owner = queue._selection.groups.get(group) if group is not None else None
            if owner is not None and owner is not consumer:
                continue
            raise AssertionError(f"{consumer.tag} has credit and message {n} is ready for it")


@settings(max_examples=150, deadline=None)
@given(OPERATIONS)
def test_selective_dispatch_matches_the_model(operations: list[tuple[Any, Any, Any]]) -> None:
    run(operations, {})


@settings(max_examples=75, deadline=None)
@given(OPERATIONS)
def test_selective_dispatch_matches_the_model_on_a_priority_queue(operations: list[tuple[Any, Any, Any]]) -> None:
    run(operations, {"x-max-priority": 2})


def test_group_detection_decodes_nothing_for_an_amqp_message_without_the_header() -> None:
    from baedal.core.queue import _group_of
    from baedal.protocols.amqp.properties import AmqpExtension, BasicProperties, encode_properties

    plain = Message("", "q", b"x", extension=AmqpExtension(encode_properties(BasicProperties(delivery_mode=2))))
    assert not plain.may_have_header("JMSXGroupID")
    assert _group_of(plain) is None
    assert plain._fields is None  # still lazy: the raw block was searched, not decoded
    grouped = Message(
        "", "q", b"x", extension=AmqpExtension(encode_properties(BasicProperties(headers={"JMSXGroupID": "g-1"})))
    )
    assert _group_of(grouped) == "g-1"
    no_block = Message("", "q", b"x", extension=AmqpExtension(None))
    assert _group_of(no_block) is None
    built = Message.build("", "q", b"x", headers={"JMSXGroupID": 7})  # a STOMP-style neutral message
    assert built.may_have_header("JMSXGroupID") and _group_of(built) == "7"
    assert _group_of(Message.build("", "q", b"x")) is None
