"""The publish path's checks and effects over AMQP (pika), as RabbitMQ 3.10 has them.

Every test here also passes against RabbitMQ (``BAEDAL_TEST_AMQP_URL``).  The HTTP side
of the same pipeline is tests/http/test_publish_pipeline.py.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pika
import pika.exceptions
import pytest
from pika import BasicProperties

sys.path.insert(0, str(Path(__file__).parents[1] / "interop"))
from helpers import Resources, blocking_connection  # noqa: E402

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


def _get_all(channel, queue: str) -> list[tuple[bytes, BasicProperties]]:
    out = []
    while True:
        method, props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append((body, props))


def test_publishing_with_another_users_user_id_closes_the_channel_with_406(conn, res, unique):
    queue = unique("q")
    channel = conn.channel()
    res.queue(queue)
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"forged", BasicProperties(user_id="somebody-else"))
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.basic_get(queue)
    assert closed.value.reply_code == 406
    assert closed.value.reply_text == (
        "PRECONDITION_FAILED - user_id property set to 'somebody-else' but authenticated user was 'guest'"
    )
    assert _get_all(conn.channel(), queue) == []


def test_publishing_with_ones_own_user_id_is_delivered_with_it(conn, res, unique):
    queue = unique("q")
    channel = conn.channel()
    res.queue(queue)
    channel.queue_declare(queue)
    channel.basic_publish("", queue, b"mine", BasicProperties(user_id="guest"))
    [(body, props)] = _get_all(channel, queue)
    assert body == b"mine" and props.user_id == "guest"


def test_user_id_is_checked_when_published_in_a_transaction_not_at_commit(conn, res, unique):
    queue = unique("q")
    channel = conn.channel()
    res.queue(queue)
    channel.queue_declare(queue)
    channel.tx_select()
    channel.basic_publish("", queue, b"forged", BasicProperties(user_id="somebody-else"))
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.queue_declare(queue, passive=True)  # before any tx.commit
    assert closed.value.reply_code == 406
    assert "user_id property set to 'somebody-else'" in closed.value.reply_text


def test_cc_and_bcc_add_routing_keys_and_bcc_is_removed_from_every_copy(conn, res, unique):
    main, cc, bcc = unique("main"), unique("cc"), unique("bcc")
    channel = conn.channel()
    for queue in (main, cc, bcc):
        res.queue(queue)
        channel.queue_declare(queue)
    channel.basic_publish(
        "",
        main,
        b"fan",
        BasicProperties(headers={"CC": [cc], "BCC": [bcc], "other": "kept"}),
    )
    for queue in (main, cc, bcc):
        [(body, props)] = _get_all(channel, queue)
        assert body == b"fan"
        assert props.headers == {"CC": [cc], "other": "kept"}, queue


def test_bcc_alone_leaves_an_empty_headers_table(conn, res, unique):
    hidden = unique("bcc")
    channel = conn.channel()
    res.queue(hidden)
    channel.queue_declare(hidden)
    channel.basic_publish("", "no-such-queue-anywhere", b"x", BasicProperties(headers={"BCC": [hidden]}))
    [(body, props)] = _get_all(channel, hidden)
    assert body == b"x" and props.headers == {}


def test_mandatory_unroutable_message_is_returned_and_still_confirmed(conn, unique):
    channel = conn.channel()
    channel.confirm_delivery()
    key = unique("nobody")
    with pytest.raises(pika.exceptions.UnroutableError) as unroutable:
        channel.basic_publish("amq.direct", key, b"lost", mandatory=True)
    [returned] = unroutable.value.messages
    assert (returned.method.reply_code, returned.method.reply_text) == (312, "NO_ROUTE")
    assert (returned.method.exchange, returned.method.routing_key, returned.body) == (
        "amq.direct",
        key,
        b"lost",
    )
    # Not mandatory: silently dropped, and acked.
    channel.basic_publish("amq.direct", unique("nobody"), b"dropped")
    assert channel.is_open


def test_alternate_exchange_takes_what_an_exchange_to_exchange_route_misses(conn, res, unique):
    front, middle, alternate = unique("front"), unique("middle"), unique("ae")
    routed, caught = unique("routed"), unique("caught")
    channel = conn.channel()
    res.exchange(alternate)
    channel.exchange_declare(alternate, "fanout")
    res.exchange(middle)
    channel.exchange_declare(middle, "direct", arguments={"alternate-exchange": alternate})
    res.exchange(front)
    channel.exchange_declare(front, "fanout")
    channel.exchange_bind(middle, front)
    for queue in (routed, caught):
        res.queue(queue)
        channel.queue_declare(queue)
    channel.queue_bind(routed, middle, "hit")
    channel.queue_bind(caught, alternate)
    channel.confirm_delivery()
    channel.basic_publish(front, "hit", b"1", mandatory=True)
    channel.basic_publish(front, "miss", b"2", mandatory=True)  # routed via the AE: no return
    assert [b for b, _ in _get_all(channel, routed)] == [b"1"]
    assert [b for b, _ in _get_all(channel, caught)] == [b"2"]


def test_publishing_to_an_internal_exchange_is_403(conn, res, unique):
    internal = unique("internal")
    channel = conn.channel()
    res.exchange(internal)
    channel.exchange_declare(internal, "fanout", internal=True)
    channel.basic_publish(internal, "", b"x")
    with pytest.raises(ChannelClosedByBroker) as closed:
        channel.exchange_declare(internal, passive=True)  # any synchronous call
    assert closed.value.reply_code == 403
    assert f"cannot publish to internal exchange '{internal}'" in closed.value.reply_text


def test_persistent_message_to_a_durable_queue_is_confirmed_and_survives_in_the_queue(
    conn, res, unique
):
    queue = unique("durable")
    channel = conn.channel()
    res.queue(queue)
    channel.queue_declare(queue, durable=True)
    channel.confirm_delivery()
    for i in range(5):
        channel.basic_publish("", queue, b"%d" % i, BasicProperties(delivery_mode=2))
    assert [b for b, _ in _get_all(channel, queue)] == [b"0", b"1", b"2", b"3", b"4"]
