"""baedal.client and ordinary AMQP clients meet on the same queues: pika publishes and a
PULL socket gets it, a PUSH socket sends and a pika consumer gets it (multipart parts
visible through the x-multipart header), and RPC across the two."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator

import pika
import pytest
from clientkit import Endpoints, running_broker

from baedal.client import PUB, PULL, PUSH, REP, REQ, SUB, Context

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    yield from running_broker(tmp_path_factory.mktemp("client-interop"), f"interop-{os.getpid()}")


@pytest.fixture
def unique(unique):  # noqa: F811  (names AMQP clients accept: no brackets)
    return lambda prefix="q": unique(prefix).replace("[", "-").replace("]", "")


@pytest.fixture
def channel(endpoints: Endpoints) -> Iterator[pika.adapters.blocking_connection.BlockingChannel]:
    connection = pika.BlockingConnection(pika.URLParameters(endpoints.broker.amqp_url))
    try:
        yield connection.channel()
    finally:
        connection.close()


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
def test_pika_publishes_and_a_pull_socket_gets_it(transport: str, endpoints: Endpoints, channel, unique) -> None:
    name = unique("from-pika")
    with Context(timeout=10) as ctx:
        pull = ctx.socket(PULL, name).connect(endpoints.url(transport))
        channel.basic_publish("", name, b"from pika", pika.BasicProperties(headers={"k": "v"}))
        delivery = pull.recv_delivery(timeout=10)
        assert delivery.body == b"from pika" and delivery.headers == {"k": "v"}


@pytest.mark.parametrize("transport", ["inproc", "ipc", "tcp"])
def test_a_push_socket_sends_and_a_pika_consumer_gets_it(transport: str, endpoints: Endpoints, channel, unique) -> None:
    name = unique("to-pika")
    with Context(timeout=10) as ctx:
        push = ctx.socket(PUSH, name).connect(endpoints.url(transport))
        push.send(b"to pika")
        push.send([b"ab", b"cde"])
    got = []
    for _method, properties, body in channel.consume(name, auto_ack=True, inactivity_timeout=10):
        assert body is not None, "timed out"
        got.append((body, (properties.headers or {}).get("x-multipart")))
        if len(got) == 2:
            break
    channel.cancel()
    assert got == [(b"to pika", None), (b"abcde", [2, 3])]


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_a_pika_subscriber_bound_to_a_pub_socket_exchange(transport: str, endpoints: Endpoints, channel, unique) -> None:
    name = unique("pub")
    with Context(timeout=10) as ctx:
        pub = ctx.socket(PUB, name).connect(endpoints.url(transport))
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, name, "alerts.#")
        pub.send(b"fire", topic="alerts.kitchen")
        pub.send(b"ignored", topic="news")
        sub = ctx.socket(SUB, name).connect(endpoints.url(transport))
        sub.subscribe("alerts")
        channel.basic_publish(name, "alerts.garden", b"from pika")
        assert sub.recv_multipart(timeout=10) == [b"alerts.garden", b"from pika"]
    _method, _properties, body = next(channel.consume(queue, auto_ack=True, inactivity_timeout=10))
    assert body == b"fire"
    channel.cancel()


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
def test_rpc_between_pika_and_the_pattern_sockets(transport: str, endpoints: Endpoints, channel, unique) -> None:
    name = unique("rpc")
    url = endpoints.url(transport)
    with Context(timeout=10) as ctx:
        # pika requester (direct reply-to) -> REP socket
        rep = ctx.socket(REP, name).bind(url)

        def serve() -> None:
            rep.send(rep.recv(timeout=10).upper())

        thread = threading.Thread(target=serve)
        thread.start()
        replies: list[tuple[bytes, str | None]] = []
        channel.basic_consume(
            "amq.rabbitmq.reply-to",
            lambda _ch, _m, props, body: replies.append((body, props.correlation_id)),
            auto_ack=True,
        )
        channel.basic_publish(
            "", name, b"hello", pika.BasicProperties(reply_to="amq.rabbitmq.reply-to", correlation_id="c-1")
        )
        deadline = 50
        while not replies and deadline:
            channel.connection.process_data_events(time_limit=0.2)
            deadline -= 1
        thread.join(10)
        assert replies == [(b"HELLO", "c-1")]

        # REQ socket -> pika replier
        server_queue = unique("pika-server")
        channel.queue_declare(server_queue)  # the flags REQ/REP declare with
        req = ctx.socket(REQ, server_queue).connect(url)
        req.send(b"ping")
        _method, properties, body = next(channel.consume(server_queue, auto_ack=True, inactivity_timeout=10))
        channel.cancel()
        channel.basic_publish(
            "", properties.reply_to, body + b"-pong", pika.BasicProperties(correlation_id=properties.correlation_id)
        )
        assert req.recv(timeout=10) == b"ping-pong"


async def test_patterns_over_tcp_against_the_amqp_url_broker(amqp_url: str, unique) -> None:
    """Baedal by default; with BAEDAL_TEST_AMQP_URL set, RabbitMQ itself (the client's
    AMQP side must work against the reference broker, not only against Baedal)."""
    from baedal.client import AsyncContext

    url = "tcp://" + amqp_url.split("://", 1)[1]
    jobs, news, rpc = unique("rq-jobs"), unique("rq-news"), unique("rq-rpc")
    async with AsyncContext(timeout=10) as ctx:
        push = await ctx.socket(PUSH, jobs, durable=True).connect(url)
        pull = await ctx.socket(PULL, jobs, durable=True).connect(url)
        await push.send([b"part1", b"part2"])  # confirmed by the broker
        assert await pull.recv_multipart(timeout=10) == [b"part1", b"part2"]
        pub = await ctx.socket(PUB, news).connect(url)
        sub = await ctx.socket(SUB, news, hwm=2, prefetch=1).connect(url)
        await sub.subscribe("x")
        for i in range(5):
            await pub.send(b"%d" % i, topic="x.y")
        got = [await sub.recv(timeout=10) for _ in range(3)]
        assert got == [b"0", b"1", b"2"]  # drop-newest: 1 in hand + hwm 2
        rep = await ctx.socket(REP, rpc).connect(url)
        req = await ctx.socket(REQ, rpc).connect(url)
        await req.send(b"q")
        await rep.send(await rep.recv(timeout=10) + b"!")
        assert await req.recv(timeout=10) == b"q!"
        pull.ack()
    # Leave nothing behind on a shared broker.
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    for queue in (jobs, rpc):
        channel.queue_delete(queue)
    channel.exchange_delete(news)
    connection.close()
