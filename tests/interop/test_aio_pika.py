"""aio-pika (aiormq) interop scenarios, validated against RabbitMQ 3.10."""

from __future__ import annotations

import asyncio
import contextlib

import aio_pika
import aio_pika.exceptions
import pytest
from aio_pika import DeliveryMode, ExchangeType, Message

pytestmark = pytest.mark.timeout(30)

WAIT = 5.0


@pytest.fixture
async def connection(amqp_url):
    conn = await aio_pika.connect_robust(amqp_url, reconnect_interval=0.2)
    yield conn
    with contextlib.suppress(Exception):
        await asyncio.wait_for(conn.close(), WAIT)


@pytest.fixture
async def channel(connection):
    return await connection.channel()  # publisher confirms on by default


async def _delete_queue(channel, name):
    with contextlib.suppress(Exception):
        await channel.queue_delete(name)


async def test_connect_robust_opens_a_confirming_channel(connection):
    assert not connection.is_closed
    caps = connection.transport.connection.server_capabilities
    assert caps["publisher_confirms"] is True
    assert caps["basic.nack"] is True
    channel = await connection.channel()
    assert channel.publisher_confirms is True
    # aio-pika 10 names "" queues client-side (amq_...); ask the broker directly
    underlay = await channel.get_underlay_channel()
    ok = await underlay.queue_declare("", exclusive=True)
    assert ok.queue.startswith("amq.gen-")
    await channel.close()
    assert channel.is_closed


async def test_declare_bind_publish_consume_and_ack(channel, unique):
    x = await channel.declare_exchange(unique("x"), ExchangeType.TOPIC, auto_delete=True)
    q = await channel.declare_queue("", exclusive=True)
    await q.bind(x, "orders.*")
    confirmation = await x.publish(
        Message(b"order-1", content_type="text/plain", headers={"n": 1}), "orders.new"
    )
    assert confirmation is not None
    got: asyncio.Future = asyncio.get_running_loop().create_future()

    async def on_message(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        await message.ack()
        if not got.done():
            got.set_result(message)

    tag = await q.consume(on_message)
    message = await asyncio.wait_for(got, WAIT)
    assert message.body == b"order-1"
    assert message.routing_key == "orders.new"
    assert message.exchange == x.name
    assert message.content_type == "text/plain"
    assert message.headers == {"n": 1}
    assert message.redelivered is False
    await q.cancel(tag)
    # acked: nothing is left
    assert await q.get(fail=False, timeout=WAIT) is None
    await x.delete()


async def test_unroutable_mandatory_publish_is_reported_to_the_publisher(channel, unique):
    x = await channel.declare_exchange(unique("x"), ExchangeType.DIRECT, auto_delete=True)
    # keep the auto-delete exchange alive with a binding
    q = await channel.declare_queue("", exclusive=True)
    await q.bind(x, "routed")
    returned = await x.publish(Message(b"lost"), "unrouted", mandatory=True)
    # aio-pika 10 hands back the basic.return (older versions raised DeliveryError)
    assert returned.delivery.reply_code == 312
    assert returned.delivery.reply_text == "NO_ROUTE"
    assert returned.body == b"lost"
    # not mandatory: silently dropped but confirmed
    assert await x.publish(Message(b"dropped"), "unrouted", mandatory=False) is not None
    await x.delete()


async def test_nack_with_requeue_redelivers_the_message(channel):
    q = await channel.declare_queue("", exclusive=True)
    await channel.default_exchange.publish(Message(b"retry-me"), q.name)
    first = await q.get(timeout=WAIT)
    assert first.redelivered is False
    await first.nack(requeue=True)
    second = await q.get(timeout=WAIT)
    assert second.body == b"retry-me"
    assert second.redelivered is True
    await second.reject(requeue=False)
    assert await q.get(fail=False, timeout=WAIT) is None


async def test_get_reports_empty_queue(channel):
    q = await channel.declare_queue("", exclusive=True)
    with pytest.raises(aio_pika.exceptions.QueueEmpty):
        await q.get(timeout=WAIT)
    for i in range(3):
        await channel.default_exchange.publish(Message(str(i).encode()), q.name)
    bodies = []
    for _ in range(3):
        m = await q.get(no_ack=True, timeout=WAIT)
        bodies.append(m.body)
    assert bodies == [b"0", b"1", b"2"]
    assert await q.get(fail=False, timeout=WAIT) is None


async def test_rpc_over_direct_reply_to(connection, unique):
    server_channel = await connection.channel()
    client_channel = await connection.channel()
    rpc_queue = await server_channel.declare_queue(unique("rpc"), auto_delete=True)

    async def serve(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        async with message.process():
            assert message.reply_to.startswith("amq.rabbitmq.reply-to.")
            n = int(message.body)
            await server_channel.default_exchange.publish(
                Message(str(n * n).encode(), correlation_id=message.correlation_id),
                message.reply_to,
            )

    await rpc_queue.consume(serve)
    reply_queue = await client_channel.get_queue("amq.rabbitmq.reply-to", ensure=False)
    pending: dict[str, asyncio.Future] = {}

    async def on_reply(message: aio_pika.abc.AbstractIncomingMessage) -> None:
        pending.pop(message.correlation_id).set_result(message.body)

    await reply_queue.consume(on_reply, no_ack=True)
    loop = asyncio.get_running_loop()
    futures = []
    for n in (3, 7, 12):
        cid = f"call-{n}"
        pending[cid] = fut = loop.create_future()
        futures.append(fut)
        await client_channel.default_exchange.publish(
            Message(str(n).encode(), correlation_id=cid, reply_to="amq.rabbitmq.reply-to"),
            rpc_queue.name,
        )
    results = await asyncio.wait_for(asyncio.gather(*futures), WAIT)
    assert results == [b"9", b"49", b"144"]


async def test_qos_prefetch_limits_unacked_deliveries(connection):
    channel = await connection.channel()
    await channel.set_qos(prefetch_count=2)
    q = await channel.declare_queue("", exclusive=True)
    for i in range(5):
        await channel.default_exchange.publish(Message(str(i).encode()), q.name)
    inbox: asyncio.Queue = asyncio.Queue()
    await q.consume(inbox.put)
    first = await asyncio.wait_for(inbox.get(), WAIT)
    second = await asyncio.wait_for(inbox.get(), WAIT)
    underlay = await channel.get_underlay_channel()
    assert (await underlay.queue_declare(q.name, passive=True)).message_count == 3
    assert inbox.empty()
    await first.ack()
    third = await asyncio.wait_for(inbox.get(), WAIT)
    assert [m.body for m in (first, second, third)] == [b"0", b"1", b"2"]
    assert (await underlay.queue_declare(q.name, passive=True)).message_count == 2
    assert inbox.empty()


async def test_queue_iterator_yields_messages_in_order(channel):
    q = await channel.declare_queue("", exclusive=True)
    for i in range(4):
        await channel.default_exchange.publish(
            Message(f"m{i}".encode(), delivery_mode=DeliveryMode.PERSISTENT), q.name
        )
    bodies = []

    async def collect():
        async with q.iterator() as it:
            async for message in it:
                async with message.process():
                    bodies.append(message.body)
                    assert message.delivery_mode == DeliveryMode.PERSISTENT
                if len(bodies) == 4:
                    break

    await asyncio.wait_for(collect(), WAIT)
    assert bodies == [b"m0", b"m1", b"m2", b"m3"]
    assert await q.get(fail=False, timeout=WAIT) is None


async def test_message_process_context_rejects_on_exception(channel):
    q = await channel.declare_queue("", exclusive=True)
    await channel.default_exchange.publish(Message(b"boom"), q.name)
    message = await q.get(timeout=WAIT)
    with pytest.raises(RuntimeError):
        async with message.process(requeue=True):
            raise RuntimeError("handler failed")
    again = await q.get(timeout=WAIT)
    assert again.body == b"boom"
    assert again.redelivered is True
    await again.ack()


class DroppingProxy:
    """TCP proxy in front of the broker whose live connections can be cut at will."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.writers: list[asyncio.StreamWriter] = []
        self.server: asyncio.Server | None = None
        self.connections = 0

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self.server.sockets[0].getsockname()[1]

    async def _handle(self, reader, writer) -> None:
        self.connections += 1
        up_reader, up_writer = await asyncio.open_connection(*self.target)
        self.writers += [writer, up_writer]

        async def pipe(src, dst):
            with contextlib.suppress(Exception):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            with contextlib.suppress(Exception):
                dst.transport.abort()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))

    def drop_all(self) -> None:
        for w in self.writers:
            w.transport.abort()
        self.writers.clear()

    async def stop(self) -> None:
        self.drop_all()
        self.server.close()


async def test_robust_connection_reconnects_and_restores_its_consumer(amqp_url, unique):
    from urllib.parse import urlparse

    u = urlparse(amqp_url)
    proxy = DroppingProxy(u.hostname, u.port or 5672)
    proxy_port = await proxy.start()
    url = f"amqp://{u.username}:{u.password}@127.0.0.1:{proxy_port}/"
    conn = await aio_pika.connect_robust(url, reconnect_interval=0.2)
    name = unique("robust")
    try:
        channel = await conn.channel()
        q = await channel.declare_queue(name, durable=False, auto_delete=False)
        received: asyncio.Queue = asyncio.Queue()

        async def on_message(message):
            await message.ack()
            await received.put(message.body)

        await q.consume(on_message)
        await channel.default_exchange.publish(Message(b"before"), name)
        assert await asyncio.wait_for(received.get(), WAIT) == b"before"

        reconnected = asyncio.get_running_loop().create_future()
        conn.reconnect_callbacks.add(lambda *_: reconnected.done() or reconnected.set_result(True))
        proxy.drop_all()  # the TCP connection dies under the client, no AMQP close
        await asyncio.wait_for(reconnected, 10)
        assert proxy.connections == 2
        await channel.default_exchange.publish(Message(b"after"), name)
        assert await asyncio.wait_for(received.get(), WAIT) == b"after"
    finally:
        with contextlib.suppress(Exception):
            ch = await conn.channel()
            await asyncio.wait_for(ch.queue_delete(name), WAIT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(conn.close(), WAIT)
        await proxy.stop()
