"""pika BlockingConnection interop scenarios, validated against RabbitMQ 3.10.

Each test describes one behaviour of RabbitMQ that Baedal must reproduce.
"""

from __future__ import annotations

import datetime
import socket
import time

import pika
import pika.exceptions
import pytest
from helpers import (
    RABBITMQ_CAPABILITIES,
    Resources,
    blocking_connection,
    exchange_exists,
    message_count,
    open_blocking,
    pump_until,
    queue_exists,
)
from pika import BasicProperties

from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(30)

ChannelClosedByBroker = pika.exceptions.ChannelClosedByBroker


@pytest.fixture
def res(amqp_url):
    r = Resources(amqp_url)
    yield r
    r.cleanup()


@pytest.fixture
def conn(amqp_url):
    with blocking_connection(amqp_url) as c:
        yield c


@pytest.fixture
def ch(conn):
    return conn.channel()


def drain(ch, queue: str) -> list[bytes]:
    """basic.get (auto-ack) until get-empty; returns the bodies in order."""
    out = []
    while True:
        method, _props, body = ch.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def consume_into(ch, queue: str, **kwargs):
    got: list = []
    tag = ch.basic_consume(queue, lambda c, m, p, b: got.append((m, p, b)), **kwargs)
    return got, tag


def confirmed_channel(conn):
    c = conn.channel()
    c.confirm_delivery()
    return c


# --------------------------------------------------------------------------- connection


def test_connection_opens_advertises_rabbitmq_capabilities_and_closes_cleanly(amqp_url):
    conn = open_blocking(amqp_url)
    assert conn.is_open
    props = conn._impl.server_properties
    caps = props["capabilities"]
    for name in RABBITMQ_CAPABILITIES:
        assert caps.get(name) is True, name
    assert "product" in props and "version" in props
    conn.close()
    assert conn.is_closed


def test_many_channels_on_one_connection_work_independently(conn, res, unique, amqp_url):
    q = res.queue(unique("q"))
    channels = [conn.channel() for _ in range(60)]
    assert len({c.channel_number for c in channels}) == 60
    channels[0].queue_declare(q)
    for i, c in enumerate(channels):
        c.basic_publish("", q, str(i).encode())
    for c in channels[::2]:
        c.close()
    assert all(c.is_closed for c in channels[::2])
    assert all(c.is_open for c in channels[1::2])
    wait_until(lambda: message_count(amqp_url, q) == 60, interval=0.05)
    bodies = sorted(int(b) for b in drain(channels[1], q))
    assert bodies == list(range(60))


# --------------------------------------------------------------------------- exchanges


@pytest.mark.parametrize("xtype", ["direct", "fanout", "topic", "headers"])
def test_exchange_declare_of_each_type_is_idempotent_and_found_passively(ch, res, unique, xtype):
    x = res.exchange(unique("x"))
    ch.exchange_declare(x, xtype, durable=True)
    ch.exchange_declare(x, xtype, durable=True)
    # passive declare ignores type and flags
    other = "fanout" if xtype != "fanout" else "direct"
    ch.exchange_declare(x, other, passive=True)
    assert ch.is_open


@pytest.mark.parametrize(
    "first, second, arg",
    [
        ({"exchange_type": "direct"}, {"exchange_type": "fanout"}, "type"),
        ({"durable": True}, {"durable": False}, "durable"),
        ({"auto_delete": False}, {"auto_delete": True}, "auto_delete"),
        ({"internal": False}, {"internal": True}, "internal"),
        (
            {"arguments": {"alternate-exchange": "ae1"}},
            {"arguments": {"alternate-exchange": "ae2"}},
            "alternate-exchange",
        ),
    ],
)
def test_exchange_redeclare_with_different_properties_fails_with_406(
    conn, res, unique, first, second, arg
):
    x = res.exchange(unique("x"))
    ch = conn.channel()
    ch.exchange_declare(x, **{"exchange_type": "direct", **first})
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(x, **{"exchange_type": "direct", **second})
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for exchange '{x}' in vhost '/'"
    ), e.value.reply_text
    # the connection survives a channel error
    assert conn.is_open
    conn.channel().exchange_declare(x, passive=True)


def test_passive_declare_of_missing_exchange_fails_with_404(ch, unique):
    x = unique("missing")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.exchange_declare(x, passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"


def test_auto_delete_exchange_is_deleted_when_its_last_binding_goes(ch, res, unique, amqp_url):
    x = res.exchange(unique("x"))
    ch.exchange_declare(x, "fanout", auto_delete=True)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x)
    assert exchange_exists(amqp_url, x)
    ch.queue_unbind(q, x)
    wait_until(lambda: not exchange_exists(amqp_url, x), interval=0.05)


def test_internal_exchange_refuses_publishes_but_routes_via_exchange_binding(conn, res, unique):
    src = res.exchange(unique("src"))
    internal = res.exchange(unique("int"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(src, "fanout")
    ch.exchange_declare(internal, "fanout", internal=True)
    ch.exchange_bind(destination=internal, source=src)
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, internal)
    ch.basic_publish(src, "", b"via-e2e")
    assert drain(ch, q) == [b"via-e2e"]

    ch2 = conn.channel()
    ch2.basic_publish(internal, "", b"direct")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch2.queue_declare(q, passive=True)
    assert e.value.reply_code == 403
    assert e.value.reply_text == (
        f"ACCESS_REFUSED - cannot publish to internal exchange '{internal}' in vhost '/'"
    )


def test_exchange_to_exchange_binding_routes_by_key_and_unbind_stops_it(conn, res, unique):
    src = res.exchange(unique("src"))
    dst = res.exchange(unique("dst"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(src, "topic")
    ch.exchange_declare(dst, "fanout")
    ch.exchange_bind(destination=dst, source=src, routing_key="a.*")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, dst)
    ch.basic_publish(src, "a.b", b"1")
    ch.basic_publish(src, "b.b", b"2")
    assert drain(ch, q) == [b"1"]
    ch.exchange_unbind(destination=dst, source=src, routing_key="a.*")
    ch.basic_publish(src, "a.b", b"3")
    ch.basic_publish("", q, b"sentinel")
    assert drain(ch, q) == [b"sentinel"]


def test_alternate_exchange_receives_unroutable_messages(conn, res, unique):
    x = res.exchange(unique("x"))
    ae = res.exchange(unique("ae"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(ae, "fanout")
    ch.exchange_declare(x, "direct", arguments={"alternate-exchange": ae})
    main_q = ch.queue_declare("", exclusive=True).method.queue
    ae_q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(main_q, x, "good")
    ch.queue_bind(ae_q, ae)
    ch.basic_publish(x, "good", b"routed")
    # mandatory publish that the AE catches counts as routed: no return -> no exception
    ch.basic_publish(x, "bad", b"unroutable", mandatory=True)
    assert drain(ch, main_q) == [b"routed"]
    assert drain(ch, ae_q) == [b"unroutable"]


# --------------------------------------------------------------------------- queues


def test_server_named_queue_gets_amq_gen_name_and_zero_counts(ch):
    ok = ch.queue_declare("", exclusive=True).method
    assert ok.queue.startswith("amq.gen-")
    assert ok.message_count == 0
    assert ok.consumer_count == 0


def test_passive_queue_declare_reports_message_and_consumer_counts(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, str(i).encode())
    ok = ch.queue_declare(q, passive=True).method
    assert (ok.queue, ok.message_count, ok.consumer_count) == (q, 3, 0)
    cons = conn.channel()
    cons.basic_qos(prefetch_count=1)
    got, _ = consume_into(cons, q)
    pump_until(conn, lambda: got)
    ok = ch.queue_declare(q, passive=True).method
    # message_count counts ready messages only, not the unacked delivery
    assert (ok.message_count, ok.consumer_count) == (2, 1)


def test_passive_declare_of_missing_queue_fails_with_404(ch, unique):
    q = unique("missing")
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(q, passive=True)
    assert e.value.reply_code == 404
    assert e.value.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"


def test_exclusive_queue_is_locked_to_its_connection_and_deleted_with_it(amqp_url, unique):
    q = unique("excl")
    owner = open_blocking(amqp_url)
    owner.channel().queue_declare(q, exclusive=True)
    with blocking_connection(amqp_url) as other:
        for attempt in (
            lambda c: c.queue_declare(q, exclusive=True),
            lambda c: c.basic_consume(q, lambda *a: None),
            lambda c: c.queue_delete(q),
        ):
            with pytest.raises(ChannelClosedByBroker) as e:
                attempt(other.channel())
            assert e.value.reply_code == 405
            assert e.value.reply_text.startswith(
                f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'"
            ), e.value.reply_text
    owner.close()
    wait_until(lambda: not queue_exists(amqp_url, q), interval=0.05)


def test_auto_delete_queue_is_deleted_when_last_consumer_cancels(ch, res, unique, amqp_url):
    q = res.queue(unique("ad"))
    ch.queue_declare(q, auto_delete=True)
    t1 = ch.basic_consume(q, lambda *a: None)
    t2 = ch.basic_consume(q, lambda *a: None)
    ch.basic_cancel(t1)
    assert queue_exists(amqp_url, q)
    ch.basic_cancel(t2)
    wait_until(lambda: not queue_exists(amqp_url, q), interval=0.05)


@pytest.mark.parametrize(
    "first, second, arg",
    [
        ({"durable": True}, {"durable": False}, "durable"),
        ({"auto_delete": False}, {"auto_delete": True}, "auto_delete"),
        (
            {"arguments": {"x-message-ttl": 1000}},
            {"arguments": {"x-message-ttl": 2000}},
            "x-message-ttl",
        ),
        ({"arguments": {}}, {"arguments": {"x-max-length": 5}}, "x-max-length"),
    ],
)
def test_queue_redeclare_with_different_properties_fails_with_406(
    conn, res, unique, first, second, arg
):
    q = res.queue(unique("q"))
    conn.channel().queue_declare(q, **first)
    ch = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare(q, **second)
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg '{arg}' for queue '{q}' in vhost '/'"
    ), e.value.reply_text


def test_durable_queue_redeclares_and_survives_its_declaring_connection(amqp_url, res, unique):
    q = res.queue(unique("durable"))
    with blocking_connection(amqp_url) as c1:
        ok = c1.channel().queue_declare(q, durable=True)
        assert ok.method.queue == q
    with blocking_connection(amqp_url) as c2:
        assert c2.channel().queue_declare(q, durable=True).method.queue == q


def test_bind_routes_and_unbind_stops_routing(conn, res, unique):
    x = res.exchange(unique("x"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(x, "direct")
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q, x, "k")
    ch.basic_publish(x, "k", b"1")
    assert drain(ch, q) == [b"1"]
    ch.queue_unbind(q, x, "k")
    ch.basic_publish(x, "k", b"2")
    ch.basic_publish("", q, b"sentinel")
    assert drain(ch, q) == [b"sentinel"]


def test_purge_removes_ready_messages_and_reports_count(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for i in range(4):
        ch.basic_publish("", q, str(i).encode())
    assert ch.queue_purge(q).method.message_count == 4
    assert ch.queue_declare(q, passive=True).method.message_count == 0


def test_delete_if_unused_fails_with_406_while_a_consumer_exists(conn, res, unique, amqp_url):
    q = res.queue(unique("q"))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    ch2 = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch2.queue_delete(q, if_unused=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"
    assert queue_exists(amqp_url, q)


def test_delete_if_empty_fails_with_406_when_messages_are_ready(conn, res, unique, amqp_url):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    ch.basic_publish("", q, b"x")
    ch2 = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch2.queue_delete(q, if_empty=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == f"PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"
    # plain delete works and reports the dropped messages
    assert conn.channel().queue_delete(q).method.message_count == 1
    assert not queue_exists(amqp_url, q)


# --------------------------------------------------------------------------- routing


def test_direct_exchange_routes_by_exact_key(conn, res, unique):
    x = res.exchange(unique("x"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(x, "direct")
    q1 = ch.queue_declare("", exclusive=True).method.queue
    q2 = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q1, x, "red")
    ch.queue_bind(q1, x, "green")
    ch.queue_bind(q2, x, "green")
    for key in ("red", "green", "blue", "RED"):
        ch.basic_publish(x, key, key.encode())
    assert drain(ch, q1) == [b"red", b"green"]
    assert drain(ch, q2) == [b"green"]


def test_fanout_exchange_copies_to_every_bound_queue_ignoring_key(conn, res, unique):
    x = res.exchange(unique("x"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(x, "fanout")
    qs = [ch.queue_declare("", exclusive=True).method.queue for _ in range(3)]
    for i, q in enumerate(qs):
        ch.queue_bind(q, x, f"ignored-{i}")
    ch.basic_publish(x, "anything", b"hello")
    for q in qs:
        assert drain(ch, q) == [b"hello"]


def test_topic_exchange_star_matches_one_word_and_hash_zero_or_more(conn, res, unique):
    x = res.exchange(unique("x"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(x, "topic")
    patterns = ["a.*.c", "a.#", "#.c", "#", "*"]
    queues = {}
    for p in patterns:
        queues[p] = ch.queue_declare("", exclusive=True).method.queue
        ch.queue_bind(queues[p], x, p)
    keys = ["a", "a.b", "a.b.c", "a.c", "a.b.b.c", "c", "b.a", ""]
    for k in keys:
        ch.basic_publish(x, k, k.encode())
    got = {p: [b.decode() for b in drain(ch, q)] for p, q in queues.items()}
    assert got["a.*.c"] == ["a.b.c"]
    assert got["a.#"] == ["a", "a.b", "a.b.c", "a.c", "a.b.b.c"]
    assert got["#.c"] == ["a.b.c", "a.c", "a.b.b.c", "c"]
    assert got["#"] == keys
    assert got["*"] == ["a", "c"]


def test_headers_exchange_x_match_all_and_any(conn, res, unique):
    x = res.exchange(unique("x"))
    ch = confirmed_channel(conn)
    ch.exchange_declare(x, "headers")
    q_all = ch.queue_declare("", exclusive=True).method.queue
    q_any = ch.queue_declare("", exclusive=True).method.queue
    ch.queue_bind(q_all, x, arguments={"x-match": "all", "a": "1", "b": "2"})
    ch.queue_bind(q_any, x, arguments={"x-match": "any", "a": "1", "b": "2"})
    messages = {
        "both": {"a": "1", "b": "2"},
        "both+extra": {"a": "1", "b": "2", "c": "3"},
        "only-a": {"a": "1"},
        "only-b": {"b": "2", "c": "3"},
        "wrong-a": {"a": "2"},
        "none": {},
    }
    for name, headers in messages.items():
        ch.basic_publish(x, "", name.encode(), BasicProperties(headers=headers))
    assert drain(ch, q_all) == [b"both", b"both+extra"]
    assert drain(ch, q_any) == [b"both", b"both+extra", b"only-a", b"only-b"]


def test_unroutable_mandatory_publish_comes_back_as_basic_return(conn, res, unique):
    x = res.exchange(unique("x"))
    ch = conn.channel()
    ch.exchange_declare(x, "direct")
    returned = []
    ch.add_on_return_callback(lambda c, m, p, b: returned.append((m, p, b)))
    ch.basic_publish(x, "nowhere", b"lost", BasicProperties(message_id="m1"), mandatory=True)
    ch.basic_publish(x, "nowhere", b"dropped-silently", mandatory=False)
    pump_until(conn, lambda: returned)
    method, props, body = returned[0]
    assert method.reply_code == 312
    assert method.reply_text == "NO_ROUTE"
    assert method.exchange == x
    assert method.routing_key == "nowhere"
    assert props.message_id == "m1"
    assert body == b"lost"
    ch.queue_declare("", exclusive=True)  # round trip: nothing else is returned
    conn.process_data_events(0)
    assert len(returned) == 1


# --------------------------------------------------------------------------- get / ack


def test_basic_get_reports_remaining_count_and_get_empty(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode(), BasicProperties(content_type="text/plain"))
    for i in range(3):
        method, props, body = ch.basic_get(q, auto_ack=True)
        assert body == f"m{i}".encode()
        assert method.message_count == 2 - i
        assert method.redelivered is False
        assert method.exchange == ""
        assert method.routing_key == q
        assert props.content_type == "text/plain"
    assert ch.basic_get(q) == (None, None, None)


def test_ack_multiple_acks_every_earlier_delivery_only(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    tags = [ch.basic_get(q)[0].delivery_tag for _ in range(3)]
    assert tags == [1, 2, 3]
    ch.basic_ack(2, multiple=True)
    ch.close()
    ch2 = conn.channel()
    method, _, body = ch2.basic_get(q, auto_ack=True)
    assert body == b"m2"
    assert method.redelivered is True
    assert method.message_count == 0


def test_nack_multiple_with_requeue_returns_all_in_order_flagged_redelivered(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    for _ in range(3):
        ch.basic_get(q)
    ch.basic_nack(3, multiple=True, requeue=True)
    got = [ch.basic_get(q, auto_ack=True) for _ in range(3)]
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2"]
    assert all(m.redelivered for m, _, _ in got)


def test_nack_and_reject_without_requeue_discard_the_message(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    for i in range(3):
        ch.basic_publish("", q, f"m{i}".encode())
    t1 = ch.basic_get(q)[0].delivery_tag
    t2 = ch.basic_get(q)[0].delivery_tag
    ch.basic_nack(t1, requeue=False)
    ch.basic_reject(t2, requeue=False)
    ch.close()
    assert drain(conn.channel(), q) == [b"m2"]


def test_reject_with_requeue_redelivers_flagged_redelivered(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    ch.basic_publish("", q, b"again")
    method, _, _ = ch.basic_get(q)
    assert method.redelivered is False
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, _, body = ch.basic_get(q)
    assert body == b"again"
    assert method.redelivered is True
    assert method.delivery_tag == 2
    ch.basic_ack(method.delivery_tag)


def test_basic_recover_redelivers_unacked_consumer_deliveries(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    ch.basic_publish("", q, b"a")
    ch.basic_publish("", q, b"b")
    got, _ = consume_into(ch, q)
    pump_until(conn, lambda: len(got) == 2)
    assert [m.redelivered for m, _, _ in got] == [False, False]
    ch.basic_recover(requeue=True)
    pump_until(conn, lambda: len(got) == 4)
    assert sorted(b for _, _, b in got[2:]) == [b"a", b"b"]
    assert all(m.redelivered for m, _, _ in got[2:])
    ch.basic_ack(0, multiple=True)


# --------------------------------------------------------------------------- qos


def test_per_consumer_prefetch_limits_unacked_deliveries(conn, res, unique):
    q = res.queue(unique("q"))
    pub = confirmed_channel(conn)
    pub.queue_declare(q)
    for i in range(5):
        pub.basic_publish("", q, str(i).encode())
    ch = conn.channel()
    ch.basic_qos(prefetch_count=2)
    got, _ = consume_into(ch, q)
    pump_until(conn, lambda: len(got) == 2)
    assert pub.queue_declare(q, passive=True).method.message_count == 3
    assert len(got) == 2
    ch.basic_ack(got[0][0].delivery_tag)
    pump_until(conn, lambda: len(got) == 3)
    assert pub.queue_declare(q, passive=True).method.message_count == 2
    assert [b for _, _, b in got] == [b"0", b"1", b"2"]


def test_prefetch_without_global_applies_to_each_consumer_separately(conn, res, unique):
    queues = [res.queue(unique("q")) for _ in range(2)]
    pub = confirmed_channel(conn)
    for q in queues:
        pub.queue_declare(q)
        for i in range(3):
            pub.basic_publish("", q, str(i).encode())
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=False)
    got = [consume_into(ch, q)[0] for q in queues]
    pump_until(conn, lambda: len(got[0]) == 1 and len(got[1]) == 1)
    for q in queues:
        assert pub.queue_declare(q, passive=True).method.message_count == 2
    assert [len(g) for g in got] == [1, 1]


def test_global_prefetch_is_shared_by_all_consumers_on_the_channel(conn, res, unique):
    queues = [res.queue(unique("q")) for _ in range(2)]
    pub = confirmed_channel(conn)
    for q in queues:
        pub.queue_declare(q)
        for i in range(3):
            pub.basic_publish("", q, str(i).encode())
    ch = conn.channel()
    ch.basic_qos(prefetch_count=1, global_qos=True)
    got = [consume_into(ch, q)[0] for q in queues]
    pump_until(conn, lambda: len(got[0]) + len(got[1]) == 1)
    ready = sum(pub.queue_declare(q, passive=True).method.message_count for q in queues)
    assert ready == 5
    assert len(got[0]) + len(got[1]) == 1
    first = got[0] or got[1]
    ch.basic_ack(first[0][0].delivery_tag)
    pump_until(conn, lambda: len(got[0]) + len(got[1]) == 2)


# --------------------------------------------------------------------------- confirms / tx


def test_publisher_confirms_ack_routable_and_report_unroutable_mandatory(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q)
    ch.basic_publish("", q, b"ok")  # raises if nacked
    ch.basic_publish("", unique("nowhere"), b"unroutable, not mandatory")  # acked anyway
    with pytest.raises(pika.exceptions.UnroutableError) as e:
        ch.basic_publish("", unique("nowhere"), b"unroutable", mandatory=True)
    assert e.value.messages[0].body == b"unroutable"
    assert ch.queue_declare(q, passive=True).method.message_count == 1


def test_tx_rollback_discards_publishes_and_commit_applies_them(conn, res, unique):
    q = res.queue(unique("q"))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.tx_select()
    ch.basic_publish("", q, b"rolled-back-1")
    ch.basic_publish("", q, b"rolled-back-2")
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.tx_rollback()
    assert ch.queue_declare(q, passive=True).method.message_count == 0
    ch.basic_publish("", q, b"committed")
    ch.tx_commit()
    assert ch.queue_declare(q, passive=True).method.message_count == 1
    assert drain(conn.channel(), q) == [b"committed"]


def test_tx_rollback_discards_acks_and_commit_applies_them(conn, res, unique):
    q = res.queue(unique("q"))
    pub = confirmed_channel(conn)
    pub.queue_declare(q)
    pub.basic_publish("", q, b"m0")
    pub.basic_publish("", q, b"m1")
    ch = conn.channel()
    ch.tx_select()
    t0 = ch.basic_get(q)[0].delivery_tag
    t1 = ch.basic_get(q)[0].delivery_tag
    ch.basic_ack(t0)
    ch.tx_rollback()
    ch.basic_ack(t1)
    ch.tx_commit()
    ch.close()
    # the rolled-back ack left m0 unacked: closing the channel requeued it
    method, _, body = pub.basic_get(q, auto_ack=True)
    assert body == b"m0"
    assert method.redelivered is True
    assert method.message_count == 0


# --------------------------------------------------------------------------- TTL / expiry


def _dead_letter_pair(ch, unique, res, **src_args):
    """Source queue dead-lettering to the default exchange into a fresh DLQ."""
    dlq = res.queue(unique("dlq"))
    src = res.queue(unique("src"))
    ch.queue_declare(dlq)
    args = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq, **src_args}
    ch.queue_declare(src, arguments=args)
    return src, dlq


def _get_one(conn, ch, queue, timeout=5.0):
    return pump_until(
        conn, lambda: (r := ch.basic_get(queue, auto_ack=True))[0] is not None and r, timeout
    )


def test_queue_message_ttl_expires_messages_and_dead_letters_them_as_expired(conn, res, unique):
    ch = confirmed_channel(conn)
    src, dlq = _dead_letter_pair(ch, unique, res, **{"x-message-ttl": 50})
    ch.basic_publish("", src, b"short-lived")
    _, props, body = _get_one(conn, ch, dlq)
    assert body == b"short-lived"
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired"
    assert death["queue"] == src
    assert ch.queue_declare(src, passive=True).method.message_count == 0


def test_per_message_expiration_expires_and_records_original_expiration(conn, res, unique):
    ch = confirmed_channel(conn)
    src, dlq = _dead_letter_pair(ch, unique, res)
    # expiry happens at the head of the queue (lazily), so the expiring one goes first
    ch.basic_publish("", src, b"expires", BasicProperties(expiration="30"))
    ch.basic_publish("", src, b"keeps")
    _, props, body = _get_one(conn, ch, dlq)
    assert body == b"expires"
    assert props.expiration is None
    death = props.headers["x-death"][0]
    assert death["reason"] == "expired"
    assert death["original-expiration"] == "30"
    assert drain(ch, src) == [b"keeps"]


def test_per_message_expiration_zero_is_expired_unless_delivered_at_once(conn, res, unique):
    ch = confirmed_channel(conn)
    src, dlq = _dead_letter_pair(ch, unique, res)
    ch.basic_publish("", src, b"gone", BasicProperties(expiration="0"))
    _, props, body = _get_one(conn, ch, dlq)
    assert body == b"gone"
    assert props.headers["x-death"][0]["reason"] == "expired"


def test_queue_with_x_expires_is_deleted_after_being_unused(conn, res, unique):
    q = res.queue(unique("exp"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q, arguments={"x-expires": 1000})

    def gone() -> bool:
        # publishing is not "use" (a passive declare would renew the lease in RabbitMQ),
        # so probe with a mandatory publish: it comes back unroutable once the queue is gone
        try:
            ch.basic_publish("", q, b"probe", mandatory=True)
        except pika.exceptions.UnroutableError:
            return True
        return False

    assert not gone()
    wait_until(gone, timeout=10, interval=0.05)


def test_passive_declare_renews_the_x_expires_lease(conn, res, unique):
    q = res.queue(unique("exp-passive"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q, arguments={"x-expires": 1500})
    # Passive declares every 0.3 s for 3 s (twice the lease): each one is use, so the
    # queue must still be there at the end (RabbitMQ 3.10.8 renews the lease on it).
    deadline = time.monotonic() + 3.0
    while time.monotonic() < deadline:
        ch.queue_declare(q, passive=True)
        time.sleep(0.3)
    ch.queue_declare(q, passive=True)


# --------------------------------------------------------------------------- length limits


def test_max_length_drop_head_drops_and_dead_letters_oldest(conn, res, unique):
    ch = confirmed_channel(conn)
    src, dlq = _dead_letter_pair(ch, unique, res, **{"x-max-length": 2})
    for body in (b"a", b"b", b"c"):
        ch.basic_publish("", src, body)
    assert drain(ch, src) == [b"b", b"c"]
    _, props, body = _get_one(conn, ch, dlq)
    assert body == b"a"
    assert props.headers["x-death"][0]["reason"] == "maxlen"


def test_max_length_reject_publish_nacks_the_confirming_publisher(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q, arguments={"x-max-length": 1, "x-overflow": "reject-publish"})
    ch.basic_publish("", q, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", q, b"second")
    assert drain(ch, q) == [b"first"]
    ch.basic_publish("", q, b"third")  # room again
    assert drain(ch, q) == [b"third"]


def test_max_length_reject_publish_dlx_nacks_and_dead_letters_the_new_message(conn, res, unique):
    ch = confirmed_channel(conn)
    src, dlq = _dead_letter_pair(
        ch, unique, res, **{"x-max-length": 1, "x-overflow": "reject-publish-dlx"}
    )
    ch.basic_publish("", src, b"first")
    with pytest.raises(pika.exceptions.NackError):
        ch.basic_publish("", src, b"second")
    _, props, body = _get_one(conn, ch, dlq)
    assert body == b"second"
    assert props.headers["x-death"][0]["reason"] == "maxlen"
    assert drain(ch, src) == [b"first"]


def test_max_length_bytes_counts_body_bytes_and_drops_head(conn, res, unique):
    q = res.queue(unique("q"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q, arguments={"x-max-length-bytes": 10})
    for body in (b"aaaa", b"bbbb", b"cccc"):
        ch.basic_publish("", q, body)
    assert drain(ch, q) == [b"bbbb", b"cccc"]


# --------------------------------------------------------------------------- dead-lettering


def test_rejected_message_is_dead_lettered_with_x_death_layout(conn, res, unique):
    ch = confirmed_channel(conn)
    x = res.exchange(unique("x"))
    dlx = res.exchange(unique("dlx"))
    src = res.queue(unique("src"))
    dlq = res.queue(unique("dlq"))
    ch.exchange_declare(x, "direct")
    ch.exchange_declare(dlx, "fanout")
    ch.queue_declare(src, arguments={"x-dead-letter-exchange": dlx})
    ch.queue_declare(dlq)
    ch.queue_bind(src, x, "rk")
    ch.queue_bind(dlq, dlx)
    ch.basic_publish(x, "rk", b"bad", BasicProperties(headers={"app": "v"}))
    method, _, _ = ch.basic_get(src)
    ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, body = _get_one(conn, ch, dlq)
    assert body == b"bad"
    assert method.exchange == dlx
    assert method.routing_key == "rk"  # original key kept without x-dead-letter-routing-key
    headers = props.headers
    assert headers["app"] == "v"
    deaths = headers["x-death"]
    assert isinstance(deaths, list) and len(deaths) == 1
    d = deaths[0]
    assert d["queue"] == src
    assert d["reason"] == "rejected"
    assert d["count"] == 1
    assert d["exchange"] == x
    assert d["routing-keys"] == ["rk"]
    assert isinstance(d["time"], datetime.datetime)
    assert headers["x-first-death-queue"] == src
    assert headers["x-first-death-reason"] == "rejected"
    assert headers["x-first-death-exchange"] == x


def test_dead_letter_routing_key_replaces_the_original_key(conn, res, unique):
    ch = confirmed_channel(conn)
    src, dlq = _dead_letter_pair(ch, unique, res)
    ch.basic_publish("", src, b"m")
    method, _, _ = ch.basic_get(src)
    ch.basic_nack(method.delivery_tag, requeue=False)
    method, props, _ = _get_one(conn, ch, dlq)
    assert method.routing_key == dlq
    assert props.headers["x-death"][0]["routing-keys"] == [src]
    assert props.headers["x-death"][0]["exchange"] == ""


def test_repeated_dead_lettering_increments_count_in_one_x_death_entry(conn, res, unique):
    ch = confirmed_channel(conn)
    q = res.queue(unique("loop"))
    # rejected messages come back to the same queue (allowed: the cycle contains a rejection)
    ch.queue_declare(q, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": q})
    ch.basic_publish("", q, b"m")
    for expected in (1, 2):
        method, props, _ = _get_one_unacked(conn, ch, q)
        if expected == 2:
            deaths = props.headers["x-death"]
            assert len(deaths) == 1
            assert deaths[0]["count"] == 1
        ch.basic_reject(method.delivery_tag, requeue=False)
    method, props, _ = _get_one_unacked(conn, ch, q)
    deaths = props.headers["x-death"]
    assert len(deaths) == 1
    assert deaths[0]["count"] == 2
    assert deaths[0]["reason"] == "rejected"
    ch.basic_ack(method.delivery_tag)


def _get_one_unacked(conn, ch, queue):
    return pump_until(conn, lambda: (r := ch.basic_get(queue))[0] is not None and r)


def test_dead_letter_entries_are_most_recent_first_across_queues(conn, res, unique):
    ch = confirmed_channel(conn)
    q2 = res.queue(unique("second"))
    q1 = res.queue(unique("first"))
    final = res.queue(unique("final"))
    ch.queue_declare(final)
    ch.queue_declare(
        q2, arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": final}
    )
    ch.queue_declare(
        q1,
        arguments={
            "x-dead-letter-exchange": "",
            "x-dead-letter-routing-key": q2,
            "x-message-ttl": 10,
        },
    )
    ch.basic_publish("", q1, b"m")
    method, _, _ = _get_one_unacked(conn, ch, q2)
    ch.basic_reject(method.delivery_tag, requeue=False)
    _, props, _ = _get_one(conn, ch, final)
    deaths = props.headers["x-death"]
    assert [(d["queue"], d["reason"]) for d in deaths] == [(q2, "rejected"), (q1, "expired")]
    assert props.headers["x-first-death-queue"] == q1
    assert props.headers["x-first-death-reason"] == "expired"


# --------------------------------------------------------------------------- priorities, SAC


def test_priority_queue_delivers_higher_priority_first(conn, res, unique):
    q = res.queue(unique("prio"))
    ch = confirmed_channel(conn)
    ch.queue_declare(q, arguments={"x-max-priority": 5})
    for body, prio in ((b"p1", 1), (b"none", None), (b"p5", 5), (b"p3", 3), (b"p9", 9)):
        ch.basic_publish("", q, body, BasicProperties(priority=prio))
    # priority above the max is treated as the max: p5 then p9 keep FIFO order
    assert drain(ch, q) == [b"p5", b"p9", b"p3", b"p1", b"none"]


def test_single_active_consumer_fails_over_to_the_next_consumer(conn, res, unique):
    q = res.queue(unique("sac"))
    pub = confirmed_channel(conn)
    pub.queue_declare(q, arguments={"x-single-active-consumer": True})
    ch_a, ch_b = conn.channel(), conn.channel()
    got_a, tag_a = consume_into(ch_a, q, auto_ack=True)
    got_b, _ = consume_into(ch_b, q, auto_ack=True)
    for i in range(3):
        pub.basic_publish("", q, f"a{i}".encode())
    pump_until(conn, lambda: len(got_a) == 3)
    assert got_b == []
    ch_a.basic_cancel(tag_a)
    for i in range(2):
        pub.basic_publish("", q, f"b{i}".encode())
    pump_until(conn, lambda: len(got_b) == 2)
    assert [b for _, _, b in got_b] == [b"b0", b"b1"]
    assert len(got_a) == 3


def test_higher_priority_consumer_gets_messages_until_its_prefetch_is_full(conn, res, unique):
    q = res.queue(unique("cprio"))
    pub = confirmed_channel(conn)
    pub.queue_declare(q)
    low_ch, high_ch = conn.channel(), conn.channel()
    high_ch.basic_qos(prefetch_count=2)
    got_low, _ = consume_into(low_ch, q, arguments={"x-priority": 0})
    got_high, _ = consume_into(high_ch, q, arguments={"x-priority": 10})
    for i in range(5):
        pub.basic_publish("", q, str(i).encode())
    pump_until(conn, lambda: len(got_low) + len(got_high) == 5)
    assert [b for _, _, b in got_high] == [b"0", b"1"]
    assert [b for _, _, b in got_low] == [b"2", b"3", b"4"]


def test_consumer_gets_cancel_notification_when_its_queue_is_deleted(conn, res, unique):
    q = res.queue(unique("q"))
    ch = conn.channel()
    ch.queue_declare(q)
    cancels = []
    ch.add_on_cancel_callback(lambda frame: cancels.append(frame))
    tag = ch.basic_consume(q, lambda *a: None)
    conn.channel().queue_delete(q)
    pump_until(conn, lambda: cancels)
    assert cancels[0].method.consumer_tag == tag
    # the channel stays usable
    assert ch.queue_declare("", exclusive=True).method.queue.startswith("amq.gen-")


def test_second_consumer_on_exclusively_consumed_queue_is_refused_with_403(conn, res, unique):
    q = res.queue(unique("q"))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None, exclusive=True)
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().basic_consume(q, lambda *a: None)
    assert e.value.reply_code == 403
    assert e.value.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


def test_exclusive_consume_on_queue_with_consumers_is_refused_with_403(conn, res, unique):
    q = res.queue(unique("q"))
    ch = conn.channel()
    ch.queue_declare(q)
    ch.basic_consume(q, lambda *a: None)
    with pytest.raises(ChannelClosedByBroker) as e:
        conn.channel().basic_consume(q, lambda *a: None, exclusive=True)
    assert e.value.reply_code == 403
    assert e.value.reply_text == f"ACCESS_REFUSED - queue '{q}' in vhost '/' in exclusive use"


# --------------------------------------------------------------------------- direct reply-to


def test_direct_reply_to_round_trip(amqp_url, res, unique):
    rq = res.queue(unique("rpc"))
    with blocking_connection(amqp_url) as client, blocking_connection(amqp_url) as server:
        sch = server.channel()
        sch.queue_declare(rq)
        cch = client.channel()
        replies = []
        cch.basic_consume(
            "amq.rabbitmq.reply-to", lambda c, m, p, b: replies.append((p, b)), auto_ack=True
        )
        cch.basic_publish(
            "",
            rq,
            b"ping",
            BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c1"),
        )
        _, props, body = pump_until(
            server, lambda: (r := sch.basic_get(rq, auto_ack=True))[0] is not None and r
        )
        assert body == b"ping"
        assert props.reply_to.startswith("amq.rabbitmq.reply-to.")
        assert len(props.reply_to) > len("amq.rabbitmq.reply-to.")
        # a passive declare of the generated name says the requester is still there
        assert sch.queue_declare(props.reply_to, passive=True).method.queue == props.reply_to
        sch.basic_publish(
            "", props.reply_to, b"pong", BasicProperties(correlation_id=props.correlation_id)
        )
        pump_until(client, lambda: replies)
        assert replies[0][1] == b"pong"
        assert replies[0][0].correlation_id == "c1"


def test_direct_reply_to_publish_without_reply_consumer_fails_with_406(ch):
    ch.basic_publish("", "whatever", b"x", BasicProperties(reply_to="amq.rabbitmq.reply-to"))
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.queue_declare("", exclusive=True)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - fast reply consumer does not exist"


def test_direct_reply_to_consumer_must_use_no_ack(ch):
    with pytest.raises(ChannelClosedByBroker) as e:
        ch.basic_consume("amq.rabbitmq.reply-to", lambda *a: None, auto_ack=False)
    assert e.value.reply_code == 406
    assert e.value.reply_text == "PRECONDITION_FAILED - reply consumer cannot acknowledge"


# --------------------------------------------------------------------------- requeue on close


def _publish_numbered(conn, q, n):
    pub = confirmed_channel(conn)
    pub.queue_declare(q)
    for i in range(n):
        pub.basic_publish("", q, f"m{i}".encode())
    return pub


def test_unacked_messages_return_to_queue_in_order_flagged_redelivered_when_channel_closes(
    conn, res, unique
):
    q = res.queue(unique("q"))
    pub = _publish_numbered(conn, q, 5)
    ch = conn.channel()
    ch.basic_qos(prefetch_count=3)
    got, _ = consume_into(ch, q)
    pump_until(conn, lambda: len(got) == 3)
    ch.basic_ack(got[1][0].delivery_tag)
    pump_until(conn, lambda: len(got) == 4)  # the ack freed a prefetch slot for m3
    assert [b for _, _, b in got] == [b"m0", b"m1", b"m2", b"m3"]
    ch.close()
    rest = [pub.basic_get(q, auto_ack=True) for _ in range(4)]
    assert [b for _, _, b in rest] == [b"m0", b"m2", b"m3", b"m4"]
    assert [m.redelivered for m, _, _ in rest] == [True, True, True, False]


def test_unacked_messages_return_to_queue_in_order_when_connection_drops(
    amqp_url, conn, res, unique
):
    q = res.queue(unique("q"))
    pub = _publish_numbered(conn, q, 4)
    victim = open_blocking(amqp_url)
    vch = victim.channel()
    got, _ = consume_into(vch, q)
    pump_until(victim, lambda: len(got) == 4)
    assert pub.queue_declare(q, passive=True).method.message_count == 0
    # drop the TCP connection without any AMQP close
    sock = victim._impl._transport._sock
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    wait_until(lambda: pub.queue_declare(q, passive=True).method.message_count == 4)
    rest = [pub.basic_get(q, auto_ack=True) for _ in range(4)]
    assert [b for _, _, b in rest] == [b"m0", b"m1", b"m2", b"m3"]
    assert all(m.redelivered for m, _, _ in rest)


# --------------------------------------------------------------------------- queue types


def test_quorum_queue_type_is_accepted_and_counts_redeliveries(conn, res, unique):
    q = res.queue(unique("quorum"))
    ch = confirmed_channel(conn)
    ok = ch.queue_declare(q, durable=True, arguments={"x-queue-type": "quorum"})
    assert ok.method.queue == q
    ch.basic_publish("", q, b"qq", BasicProperties(delivery_mode=2))
    method, _, body = _get_one_unacked(conn, ch, q)
    assert body == b"qq"
    ch.basic_reject(method.delivery_tag, requeue=True)
    method, props, body = _get_one_unacked(conn, ch, q)
    assert body == b"qq"
    assert method.redelivered is True
    assert props.headers["x-delivery-count"] == 1
    ch.basic_ack(method.delivery_tag)
    ch2 = conn.channel()
    with pytest.raises(ChannelClosedByBroker) as e:
        ch2.queue_declare(q, durable=True, arguments={"x-queue-type": "classic"})
    assert e.value.reply_code == 406
    assert e.value.reply_text.startswith(
        f"PRECONDITION_FAILED - inequivalent arg 'x-queue-type' for queue '{q}'"
    ), e.value.reply_text
