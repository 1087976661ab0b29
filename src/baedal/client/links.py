"""Links: how a ``baedal.client`` socket reaches a broker, one per URL scheme.

``inproc://NAME``  → ``InprocLink``: a ``transport.inproc.InprocSession`` on the broker
                     registered as NAME in this process; messages cross as core
                     ``Message`` objects, no socket, no codec.
``ipc:///path``    → ``AMQPLink`` over a Unix socket (``ipc://@name``: Linux abstract).
``tcp://host:port``→ ``AMQPLink`` over TCP.  Credentials and vhost may be given as in an
                     AMQP URL: ``tcp://user:pass@host:port/vhost``.

The AMQP side runs on Baedal's own sans-IO codec (``protocols/amqp/codec.py`` parses
and assembles any method, ``spec.py`` encodes both directions); ``client/amqp.py`` adds
the client half of the state machine.  A first version used aiormq: it spawns a task
per delivery and waits for its writer per publish, which capped ipc/tcp at about 1 000
msg/s on the benchmark machine; the own client needs no dependency either.

Every link offers the same small set of operations (declare, bind, publish, consume,
settle, a direct reply-to address) and owns **reconnection**: the socket records its
topology as a list of steps (``Link.add_setup``); the link runs them after every
(re)connect, so declarations and consumers come back after a broker restart.  Sends
wait (up to the socket's timeout) while the link is down.  Deliveries carry the link's
``generation``; settling a delivery from an older generation is a no-op (the broker has
already requeued it when the connection died).

Multipart messages: the parts are concatenated into one body and their lengths listed
in the header ``x-multipart`` (an array of integers), so any AMQP, STOMP or HTTP client
sees an ordinary message and can split it; a single-part message has no such header.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit

from ..core.message import Message
from ..core.publish import NEEDS_SYNC, REFUSED
from ..core.vhost import CoreError

log = logging.getLogger("baedal.client")

MULTIPART_HEADER = "x-multipart"
# Publishes from another thread waiting for the broker's loop to take them: past this
# many the sender waits for the loop to catch up (the in-process send buffer's bound).
OUTBOX_LIMIT = 4096
REPLY_TO = "amq.rabbitmq.reply-to"


class ClientError(Exception):
    """A refused operation (the broker's answer is in the text)."""


class Disconnected(ClientError):
    """The link is down and did not come back within the timeout."""


@dataclass
class Delivery:
    """One received message."""

    body: bytes
    headers: dict[str, Any] | None
    reply_to: str | None
    correlation_id: str | None
    routing_key: str
    redelivered: bool
    tag: int = 0
    generation: int = 0
    consumer: Any = None
    parts: list[bytes] | None = field(default=None)

    def frames(self) -> list[bytes]:
        """The message's parts (one for a single-part message)."""
        if self.parts is None:
            self.parts = split_multipart(self.body, self.headers)
        return self.parts


def join_multipart(data: bytes | bytearray | memoryview | list[bytes] | tuple[bytes, ...]) -> tuple[bytes, dict[str, Any] | None]:
    """Body and headers for ``data`` (see the module docstring)."""
    if isinstance(data, bytes):
        return data, None
    if isinstance(data, (bytearray, memoryview)):
        return bytes(data), None
    parts = [bytes(p) for p in data]
    return b"".join(parts), {MULTIPART_HEADER: [len(p) for p in parts]}


def split_multipart(body: bytes, headers: dict[str, Any] | None) -> list[bytes]:
    lengths = headers.get(MULTIPART_HEADER) if headers else None
    # Anything but a list of non-negative integers adding up to the body's length (a
    # header another client set for its own reasons) means: one part.
    if (
        not isinstance(lengths, list)
        or not all(type(x) is int and x >= 0 for x in lengths)
        or sum(lengths) != len(body)
    ):
        return [body]
    parts = []
    pos = 0
    for length in lengths:
        parts.append(body[pos : pos + length])
        pos += length
    return parts


@dataclass
class Endpoint:
    scheme: str  # inproc | ipc | tcp
    address: str  # broker name, socket path or @name, or host
    port: int = 5672
    user: str = "guest"
    password: str = "guest"
    vhost: str = "/"


def parse_endpoint(url: str) -> Endpoint:
    """``inproc://NAME``, ``ipc:///path``, ``ipc://@name``, ``tcp://[user:pass@]host:port[/vhost]``."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("inproc", "ipc", "tcp"):
        raise ValueError(f"{url!r}: expected inproc://NAME, ipc:///path, ipc://@name or tcp://host:port")
    if scheme == "inproc":
        if not rest:
            raise ValueError(f"{url!r}: inproc:// needs a name")
        return Endpoint("inproc", rest)
    if scheme == "ipc":
        if not rest:
            raise ValueError(f"{url!r}: ipc:// needs a path or @name")
        return Endpoint("ipc", rest)
    parts = urlsplit("amqp://" + rest)
    if not parts.hostname:
        raise ValueError(f"{url!r}: tcp:// needs host:port")
    vhost = unquote(parts.path[1:]) if len(parts.path) > 1 else "/"
    return Endpoint(
        "tcp",
        parts.hostname,
        parts.port or 5672,
        unquote(parts.username or "guest"),
        unquote(parts.password or "guest"),
        vhost,
    )


Receiver = Callable[[Delivery | None], None]  # None: the consumer was cancelled


class Link:
    """Base: setup steps replayed on every (re)connect, and the reconnect loop."""

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop, *, timeout: float | None = None) -> None:
        self.endpoint = endpoint
        self.loop = loop
        self.timeout = timeout
        self.generation = 0
        self._setup: list[Callable[[], Awaitable[None]]] = []
        self._up = asyncio.Event()
        self._closed = False
        self._task: asyncio.Task[None] | None = None
        self._lost: asyncio.Event = asyncio.Event()
        self.reconnects = 0
        self.failure: ClientError | None = None  # a refusal during setup: not retried

    # What subclasses implement.
    async def _connect(self) -> None:
        raise NotImplementedError

    async def _disconnect(self) -> None:
        raise NotImplementedError

    async def declare_queue(self, name: str, *, durable: bool = False, exclusive: bool = False, auto_delete: bool = False, arguments: dict[str, Any] | None = None) -> str:
        raise NotImplementedError

    async def declare_exchange(self, name: str, type_: str) -> None:
        raise NotImplementedError

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        raise NotImplementedError

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        raise NotImplementedError

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, headers: dict[str, Any] | None = None, persistent: bool = False, confirm: bool = False, reply_to: str | None = None, correlation_id: str | None = None) -> None:
        raise NotImplementedError

    async def consume(self, queue: str, receiver: Receiver, *, prefetch: int, no_ack: bool = False) -> None:
        raise NotImplementedError

    async def reply_address(self, receiver: Receiver) -> str:
        raise NotImplementedError

    def settle(self, delivery: Delivery, ack: bool = True, requeue: bool = True) -> None:
        raise NotImplementedError

    # --- lifecycle -----------------------------------------------------------------------

    def add_setup(self, step: Callable[[], Awaitable[None]]) -> None:
        self._setup.append(step)

    async def open(self) -> None:
        """Connect (waiting for the broker if it is not there yet) and run the setup."""
        self._task = self.loop.create_task(self._run())
        await self.wait_up()

    async def run_step(self, step: Callable[[], Awaitable[None]]) -> None:
        """Record ``step`` for reconnects and run it now if the link is up."""
        self._setup.append(step)
        if self._up.is_set():
            await step()

    async def wait_up(self, timeout: float | None = -1.0) -> None:
        if self._up.is_set():
            return
        if self._closed:
            raise Disconnected("socket closed")
        wait = self.timeout if timeout == -1.0 else timeout
        try:
            await asyncio.wait_for(self._up.wait(), wait)
        except TimeoutError:
            raise Disconnected(f"not connected to {self.endpoint.scheme}://{self.endpoint.address}") from None
        if self.failure is not None:
            raise self.failure

    def lost(self) -> None:
        """The connection died (called on the link's loop)."""
        if self._up.is_set():
            self._up.clear()
        self._lost.set()

    async def _run(self) -> None:
        delay = 0.02
        while not self._closed:
            try:
                await self._connect()
                self.generation += 1
                for step in list(self._setup):
                    await step()
            except asyncio.CancelledError:
                raise
            except (ClientError, ValueError) as exc:
                # The broker refused the topology (e.g. a queue declared with other
                # flags) or the client library refused a name: retrying would not help;
                # report it to whoever waits.
                self.failure = exc if isinstance(exc, ClientError) else ClientError(str(exc))
                self._closed = True
                try:
                    await self._disconnect()
                except Exception:
                    pass
                self._up.set()
                return
            except Exception as exc:  # broker not there (yet): retry with backoff
                log.debug("connect to %s failed: %r", self.endpoint, exc)
                try:
                    await self._disconnect()
                except Exception:
                    pass
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.02
            self._lost.clear()
            self._up.set()
            await self._lost.wait()
            self._up.clear()
            if self._closed:
                return
            self.reconnects += 1
            try:
                await self._disconnect()
            except Exception:
                pass

    async def close(self) -> None:
        self._closed = True
        self._up.clear()
        self._lost.set()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        await self._disconnect()


# --- in-process ------------------------------------------------------------------------


class InprocLink(Link):
    """A session on an in-process broker (transport/inproc.py).

    When this link's loop is the broker's loop, every call is a plain function call.
    Otherwise control operations run on the broker's loop through
    ``run_coroutine_threadsafe``; publishes without confirm are queued and flushed by one
    ``call_soon_threadsafe`` per batch; deliveries come back batched the same way.
    """

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop, *, timeout: float | None = None) -> None:
        super().__init__(endpoint, loop, timeout=timeout)
        self.broker: Any = None
        self.session: Any = None
        self.same_loop = False
        self._outbox: list[tuple[Message, bool]] = []
        self._flush_pending = False

    async def _connect(self) -> None:
        from ..transport import inproc

        broker = await inproc.wait_for_broker(self.endpoint.address)
        self.broker = broker
        self.same_loop = broker._loop is self.loop
        generation = self.generation + 1

        def on_lost() -> None:
            if self.generation == generation:
                self._call_here(self.lost)

        self.session = await self._on_broker(lambda: inproc.InprocSession(broker, on_lost=on_lost))

    async def _disconnect(self) -> None:
        session, self.session = self.session, None
        if session is not None and not session.closed:
            try:
                await self._on_broker(session.close)
            except Exception:
                pass

    def _call_here(self, fn: Callable[[], None]) -> None:
        """Run ``fn`` on this link's loop (from the broker's loop)."""
        if self.same_loop:
            fn()
            return
        try:
            self.loop.call_soon_threadsafe(fn)
        except RuntimeError:  # the client's loop is closed: nobody is listening
            self._abandoned()

    def _abandoned(self) -> None:
        """On the broker's loop: the client's loop closed without closing this socket
        (e.g. ``asyncio.run`` ended).  Close the session, so its unacknowledged
        deliveries go back to the queue, instead of failing inside the broker."""
        session = self.session
        if session is not None and not session.closed:
            self.broker._loop.call_soon(session.close)

    async def _on_broker(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn()`` on the broker's loop; CoreError becomes ClientError."""
        try:
            if self.same_loop:
                return fn()

            async def run() -> Any:
                return fn()

            broker_loop = self.broker._loop
            return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(run(), broker_loop))
        except CoreError as exc:
            raise ClientError(f"{exc.kind}: {exc.text}") from None

    async def declare_queue(self, name: str, *, durable: bool = False, exclusive: bool = False, auto_delete: bool = False, arguments: dict[str, Any] | None = None) -> str:
        session = self.session
        return await self._on_broker(
            lambda: session.declare_queue(name, durable=durable, exclusive=exclusive, auto_delete=auto_delete, arguments=arguments)
        )

    async def declare_exchange(self, name: str, type_: str) -> None:
        session = self.session
        await self._on_broker(lambda: session.declare_exchange(name, type_))

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        session = self.session
        await self._on_broker(lambda: session.bind(queue, exchange, routing_key))

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        session = self.session
        await self._on_broker(lambda: session.unbind(queue, exchange, routing_key))

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, headers: dict[str, Any] | None = None, persistent: bool = False, confirm: bool = False, reply_to: str | None = None, correlation_id: str | None = None) -> None:
        if not self._up.is_set():
            await self.wait_up()
        plain = headers is None and reply_to is None and correlation_id is None
        if plain:
            message = Message(exchange, routing_key, body, persistent)
        else:
            message = Message.build(exchange, routing_key, body, persistent=persistent, headers=headers, reply_to=reply_to, correlation_id=correlation_id)
        session = self.session
        if self.same_loop and not confirm:
            try:
                session.publish(message, False, plain)
            except CoreError as exc:
                raise ClientError(f"{exc.kind}: {exc.text}") from None
            return
        if not confirm:
            # Fire and forget from another thread: batch into one loop hop.
            outbox = self._outbox
            outbox.append((message, plain))
            if not self._flush_pending:
                self._flush_pending = True
                self.broker._loop.call_soon_threadsafe(self._flush, session)
            if len(outbox) >= OUTBOX_LIMIT:
                # Bound: wait for one round trip to the broker's loop, which runs after
                # the flush already scheduled (its callbacks run in order).
                await self._on_broker(_nothing)
            return
        await self._publish_confirmed(session, message)

    def _flush(self, session: Any) -> None:
        """On the broker's loop: publish what other threads queued."""
        self._flush_pending = False
        outbox, self._outbox = self._outbox, []
        for message, plain in outbox:
            try:
                session.publish(message, False, plain)
            except CoreError as exc:
                log.warning("inproc publish refused: %s", exc.text)

    async def _publish_confirmed(self, session: Any, message: Message) -> None:
        """Publish and wait until the broker has the message safe (fsync for persistent
        messages in durable queues), as a publisher confirm would."""
        done: asyncio.Future[None] = self.loop.create_future()

        def resolve(exc: BaseException | None) -> None:
            if done.done():
                return
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)

        def start() -> None:
            outcome = session.publish(message)
            if outcome & REFUSED:
                raise CoreError("refused", "a queue refused the message (overflow or storage failure)")
            if not (outcome & NEEDS_SYNC) or not session.when_stored(
                outcome,
                lambda: self._call_here(lambda: resolve(None)),
                lambda exc: self._call_here(lambda: resolve(ClientError(f"not stored: {exc}"))),
            ):
                self._call_here(lambda: resolve(None))

        await self._on_broker(start)
        await done

    async def consume(self, queue: str, receiver: Receiver, *, prefetch: int, no_ack: bool = False) -> None:
        session = self.session
        sink = self._sink(receiver)
        await self._on_broker(lambda: session.consume(queue, sink, prefetch=prefetch, no_ack=no_ack))

    async def reply_address(self, receiver: Receiver) -> str:
        session = self.session
        sink = self._sink(receiver)
        return await self._on_broker(lambda: session.reply_address(sink))

    def _sink(self, receiver: Receiver) -> Callable[[Any, int, Message | None, bool], None]:
        generation = self.generation
        link = self

        if self.same_loop:

            def sink(consumer: Any, tag: int, message: Message | None, redelivered: bool) -> None:
                receiver(None if message is None else _delivery(message, tag, redelivered, generation, consumer))

        else:
            pending: list[Delivery | None] = []
            scheduled = [False]

            def drain() -> None:
                scheduled[0] = False
                batch = pending[:]
                del pending[: len(batch)]
                for item in batch:
                    receiver(item)

            def sink(consumer: Any, tag: int, message: Message | None, redelivered: bool) -> None:
                pending.append(None if message is None else _delivery(message, tag, redelivered, generation, consumer))
                if not scheduled[0]:
                    scheduled[0] = True
                    try:
                        link.loop.call_soon_threadsafe(drain)
                    except RuntimeError:  # the client's loop is closed
                        link._abandoned()

        return sink

    def settle(self, delivery: Delivery, ack: bool = True, requeue: bool = True) -> None:
        consumer = delivery.consumer
        if consumer is None or delivery.generation != self.generation or not delivery.tag:
            return
        if self.same_loop:
            consumer.settle([delivery.tag], ack, requeue)
        else:
            self.broker._loop.call_soon_threadsafe(consumer.settle, [delivery.tag], ack, requeue)


def _nothing() -> None:
    return None


def _delivery(message: Message, tag: int, redelivered: bool, generation: int, consumer: Any) -> Delivery:
    if message._fields is None and message.extension is None:  # built here: no fields
        return Delivery(message.body, None, None, None, message.routing_key, redelivered, tag, generation, consumer)
    return Delivery(
        message.body,
        message.headers,
        message.reply_to,
        message.correlation_id,
        message.routing_key,
        redelivered,
        tag,
        generation,
        consumer,
    )


# --- AMQP over TCP or a Unix socket ------------------------------------------------------


class AMQPLink(Link):
    """AMQP 0-9-1 on Baedal's own codec (``client/amqp.py``): channel 1 publishes and
    holds the direct reply-to consumer, a confirm channel is opened on the first
    confirmed publish, and each consumer gets its own channel (its prefetch)."""

    def __init__(self, endpoint: Endpoint, loop: asyncio.AbstractEventLoop, *, timeout: float | None = None) -> None:
        super().__init__(endpoint, loop, timeout=timeout)
        self.connection: Any = None
        self.channel = 0
        self.confirm_channel = 0

    async def _connect(self) -> None:
        from .amqp import open_connection

        e = self.endpoint
        connection = await open_connection(
            e.address if e.scheme == "ipc" else (e.address, e.port),
            user=e.user,
            password=e.password,
            vhost=e.vhost,
            unix=e.scheme == "ipc",
        )
        self.connection = connection
        self.channel = await connection.open_channel()
        self.confirm_channel = 0
        generation = self.generation + 1

        def closed(_: Any) -> None:
            if self.generation == generation:
                self.lost()

        connection.closed.add_done_callback(closed)

    async def _disconnect(self) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()

    async def _call(self, method: Any, *expected: type) -> Any:
        from .amqp import AMQPError

        try:
            return await self.connection.call(self.channel, method, *expected)
        except AMQPError as exc:
            self.lost()  # the channel is gone: reconnect to get a clean one
            raise ClientError(str(exc)) from None

    async def declare_queue(self, name: str, *, durable: bool = False, exclusive: bool = False, auto_delete: bool = False, arguments: dict[str, Any] | None = None) -> str:
        from ..protocols.amqp import spec

        ok = await self._call(
            spec.QueueDeclare(0, name, False, durable, exclusive, auto_delete, False, arguments or {}), spec.QueueDeclareOk
        )
        return ok.queue

    async def declare_exchange(self, name: str, type_: str) -> None:
        from ..protocols.amqp import spec

        await self._call(spec.ExchangeDeclare(0, name, type_, False, True, False, False, False, {}), spec.ExchangeDeclareOk)

    async def bind(self, queue: str, exchange: str, routing_key: str) -> None:
        from ..protocols.amqp import spec

        await self._call(spec.QueueBind(0, queue, exchange, routing_key, False, {}), spec.QueueBindOk)

    async def unbind(self, queue: str, exchange: str, routing_key: str) -> None:
        from ..protocols.amqp import spec

        await self._call(spec.QueueUnbind(0, queue, exchange, routing_key, {}), spec.QueueUnbindOk)

    async def publish(self, exchange: str, routing_key: str, body: bytes, *, headers: dict[str, Any] | None = None, persistent: bool = False, confirm: bool = False, reply_to: str | None = None, correlation_id: str | None = None) -> None:
        from .amqp import AMQPError, properties_block

        properties = properties_block(headers, persistent, reply_to, correlation_id)
        connection = self.connection
        if not confirm and self._up.is_set() and connection.writable:
            try:  # the common case, without the retry machinery below
                connection.publish(self.channel, exchange, routing_key, properties, body)
                return
            except (AMQPError, ConnectionError):
                pass  # handled below
        while True:
            if not self._up.is_set():
                await self.wait_up()
            connection = self.connection
            try:
                await connection.drain()  # the socket's backpressure
                if confirm:
                    if not self.confirm_channel:
                        self.confirm_channel = await connection.open_confirm_channel()
                    acked = await connection.publish(self.confirm_channel, exchange, routing_key, properties, body)
                    if not acked:
                        raise ClientError("the broker refused the message (nack)")
                else:
                    connection.publish(self.channel, exchange, routing_key, properties, body)
                return
            except ClientError:
                raise
            except AMQPError as exc:
                if exc.code in (320, 504) or connection.closed.done():
                    self.lost()  # the connection went: wait for the reconnect, send again
                    await asyncio.sleep(0)
                    continue
                self.lost()
                raise ClientError(str(exc)) from None
            except (ConnectionError, OSError, AttributeError):
                self.lost()
                await asyncio.sleep(0)

    async def consume(self, queue: str, receiver: Receiver, *, prefetch: int, no_ack: bool = False) -> None:
        from ..protocols.amqp import spec
        from .amqp import AMQPError, read_properties

        connection = self.connection
        number = await connection.open_channel()
        generation = self.generation
        try:
            if not no_ack:
                await connection.call(number, spec.BasicQos(0, prefetch, False), spec.BasicQosOk)

            def on_deliver(method: Any, block: bytes, body: bytes) -> None:
                if len(block) <= 2:  # no properties at all (the common case)
                    receiver(Delivery(body, None, None, None, method.routing_key, method.redelivered, method.delivery_tag, generation, number))
                    return
                p = read_properties(block)
                receiver(Delivery(body, p.headers or None, p.reply_to, p.correlation_id, method.routing_key, method.redelivered, method.delivery_tag, generation, number))

            await connection.consume(number, queue, on_deliver, no_ack=no_ack, on_cancel=lambda: receiver(None))
        except AMQPError as exc:
            self.lost()
            raise ClientError(str(exc)) from None

    async def reply_address(self, receiver: Receiver) -> str:
        from .amqp import AMQPError, read_properties

        generation = self.generation

        def on_deliver(method: Any, block: bytes, body: bytes) -> None:
            p = read_properties(block)
            receiver(Delivery(body, p.headers or None, p.reply_to, p.correlation_id, method.routing_key, False, 0, generation, None))

        try:
            await self.connection.consume(self.channel, REPLY_TO, on_deliver, no_ack=True)
        except AMQPError as exc:
            self.lost()
            raise ClientError(str(exc)) from None
        return REPLY_TO  # the broker rewrites it into this channel's address

    def settle(self, delivery: Delivery, ack: bool = True, requeue: bool = True) -> None:
        number = delivery.consumer
        connection = self.connection
        if number is None or connection is None or delivery.generation != self.generation or not delivery.tag:
            return
        connection.settle(number, delivery.tag, ack, requeue)


def make_link(url: str, loop: asyncio.AbstractEventLoop, *, timeout: float | None = None) -> Link:
    endpoint = parse_endpoint(url)
    if endpoint.scheme == "inproc":
        return InprocLink(endpoint, loop, timeout=timeout)
    return AMQPLink(endpoint, loop, timeout=timeout)
