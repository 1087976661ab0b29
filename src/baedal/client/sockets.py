"""Pattern sockets (asyncio): ZeroMQ's shapes mapped onto ordinary broker objects.

=========  ==============================================================================
pattern    broker objects (all visible in the management API, usable from any protocol)
=========  ==============================================================================
PUSH/PULL  a queue named NAME (default exchange, routing key NAME).  Pullers compete;
           each holds at most ``prefetch`` unacknowledged messages.  A received message
           is acknowledged when the puller asks for the next one (``recv``), calls
           ``ack()``, or closes cleanly; if the puller dies first, the broker gives it
           (and whatever else it had prefetched) to another puller, flagged
           redelivered.  ``durable=True`` (on both sides): a durable queue, persistent
           messages, and ``send`` returns once the message is on disk.
PUB/SUB    a topic exchange named NAME.  ``send(data, topic="a.b")`` publishes with
           routing key ``a.b``; ``subscribe("a")`` binds ``a.#``, so filters are
           prefixes of whole dot-separated words (``a`` matches ``a`` and ``a.b``, not
           ``ab``); ``subscribe("")`` takes everything.  A non-durable subscriber owns an
           exclusive, auto-deleted queue holding at most ``hwm`` messages (plus at most
           ``prefetch`` already handed to the socket); past it the ``overflow`` policy
           applies: ``"drop-newest"`` (ZeroMQ's PUB behaviour, the
           default: new messages are refused for that subscriber) or ``"drop-oldest"``.
           Both are counted per queue (``dropped`` in the management API,
           ``baedal_queue_messages_dropped_total`` in /metrics).  A durable subscriber
           (``subscriber="id"``) owns the durable queue ``NAME.id``: no limit, it keeps
           everything while away.
REQ/REP    a queue named NAME for requests; replies go back by direct reply-to
           (``amq.rabbitmq.reply-to``) with a correlation id, so requesters and
           repliers can be many and of any protocol.  ``request(data, timeout=...)``
           may be awaited concurrently; ``send``/``recv`` keep ZeroMQ's alternation.
=========  ==============================================================================

``bind`` and ``connect`` are the same operation here: both declare the rendezvous on the
broker (queue or exchange), so either side may come first, and messages pushed before
any puller exists wait in the queue.  The link reconnects by itself (links.py).
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections import deque
from typing import Any

from .links import ClientError, Delivery, Link, join_multipart, make_link

PUSH = "push"
PULL = "pull"
PUB = "pub"
SUB = "sub"
REQ = "req"
REP = "rep"
KINDS = (PUSH, PULL, PUB, SUB, REQ, REP)
OVERFLOW = {"drop-newest": "reject-publish", "drop-oldest": "drop-head"}

_YIELD_EVERY = 64  # a same-loop sender yields to the loop this often (consumers run)


class AsyncSocket:
    """One pattern socket; create it with ``AsyncContext.socket``."""

    def __init__(
        self,
        kind: str,
        name: str,
        *,
        durable: bool = False,
        prefetch: int | None = None,
        hwm: int = 1000,
        overflow: str = "drop-newest",
        subscriber: str | None = None,
        timeout: float | None = 30.0,
    ) -> None:
        if kind not in KINDS:
            raise ValueError(f"unknown socket type {kind!r}: one of {', '.join(KINDS)}")
        if overflow not in OVERFLOW:
            raise ValueError(f"overflow must be one of {', '.join(OVERFLOW)}")
        if not name:
            raise ValueError("a socket needs a name (the queue or exchange it meets at)")
        self.kind = kind
        self.name = name
        self.durable = durable
        self.prefetch = prefetch if prefetch is not None else (1 if kind == REP else 64)
        self.hwm = hwm
        self.overflow = overflow
        self.subscriber = subscriber
        self.timeout = timeout
        self.link: Link | None = None
        self.queue_name: str | None = None  # the queue this socket consumes, once known
        self._inbox: deque[Delivery] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._last: Delivery | None = None  # received, not yet acknowledged
        self._prefixes: list[str] = []
        self._sent = 0
        self._reply_to: str | None = None
        self._pending: dict[str, asyncio.Future[Delivery]] = {}
        self._next_reply: asyncio.Future[Delivery] | None = None
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(6).hex()
        self._cancelled = False

    # --- connecting ----------------------------------------------------------------------

    async def connect(self, url: str) -> AsyncSocket:
        """Attach to the broker at ``url`` and declare this pattern's objects there."""
        if self.link is not None:
            raise ClientError("already connected (one broker per socket)")
        link = self.link = make_link(url, asyncio.get_running_loop(), timeout=self.timeout)
        link.add_setup(self._setup)
        await link.open()
        return self

    bind = connect  # both sides declare the rendezvous: order does not matter

    async def _setup(self) -> None:
        """Declarations and consumers; the link runs this again after a reconnect."""
        link = self.link
        assert link is not None
        kind = self.kind
        self._cancelled = False
        # Deliveries still in hand from before a reconnect were never acknowledged: the
        # broker has put them back (or lost them with a non-durable queue), so keeping
        # them would hand out duplicates.
        self._inbox.clear()
        self._last = None
        if kind in (PUSH, PULL, REQ, REP):
            await link.declare_queue(self.name, durable=self.durable and kind in (PUSH, PULL))
            self.queue_name = self.name
            if kind in (PULL, REP):
                await link.consume(self.name, self._receive, prefetch=self.prefetch)
            if kind == REQ:
                self._reply_to = await link.reply_address(self._reply)
            return
        await link.declare_exchange(self.name, "topic")
        if kind == SUB:
            if self.subscriber is not None:
                queue = await link.declare_queue(f"{self.name}.{self.subscriber}", durable=True)
            else:
                arguments = {"x-max-length": self.hwm, "x-overflow": OVERFLOW[self.overflow]}
                queue = await link.declare_queue("", exclusive=True, auto_delete=True, arguments=arguments)
            self.queue_name = queue
            for prefix in self._prefixes:
                await link.bind(queue, self.name, _pattern(prefix))
            await link.consume(queue, self._receive, prefetch=self.prefetch)

    # --- receiving (called by the link on this socket's loop) ----------------------------

    def _receive(self, delivery: Delivery | None) -> None:
        if delivery is None:
            self._cancelled = True
        else:
            self._inbox.append(delivery)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _reply(self, delivery: Delivery | None) -> None:
        if delivery is None:
            return
        future = self._pending.pop(delivery.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_result(delivery)

    async def recv_delivery(self, timeout: float | None = None) -> Delivery:
        """The next message with its metadata (routing key, headers, redelivered)."""
        if self.kind == REQ:  # the reply to the last send
            return await self._recv_reply(timeout)
        if self.kind not in (PULL, SUB, REP):
            raise ClientError(f"{self.kind} sockets do not receive")
        last = self._last
        if last is not None:  # asking for the next one acknowledges the last (PULL/SUB)
            self._last = None
            assert self.link is not None
            self.link.settle(last)
        inbox = self._inbox
        if not inbox:
            await self._wait(timeout)
        # Acknowledged at the next recv, ack() or close; a REP's request when it is
        # answered.
        delivery = self._last = inbox.popleft()
        return delivery

    async def _wait(self, timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        while not self._inbox:
            if self._cancelled:
                raise ClientError(f"queue '{self.queue_name}' was deleted")
            if self.link is None:
                raise ClientError("socket is not connected")
            waiter = self._waiter = loop.create_future()
            try:
                if timeout is None:
                    await waiter
                else:
                    async with asyncio.timeout(timeout):
                        await waiter
            finally:
                self._waiter = None

    async def recv(self, timeout: float | None = None) -> bytes:
        """The next message's body (a multipart message's parts joined; see recv_multipart)."""
        return (await self.recv_delivery(timeout)).body

    async def recv_multipart(self, timeout: float | None = None) -> list[bytes]:
        """The next message's parts; on SUB the first part is the topic (as in ZeroMQ)."""
        delivery = await self.recv_delivery(timeout)
        parts = delivery.frames()
        if self.kind == SUB:
            return [delivery.routing_key.encode(), *parts]
        return parts

    def ack(self) -> None:
        """Acknowledge the last received message now (PULL, SUB)."""
        last, self._last = self._last, None
        if last is not None and self.link is not None:
            self.link.settle(last)

    def reject(self, requeue: bool = True) -> None:
        """Give the last received message back (``requeue``) or drop it."""
        last, self._last = self._last, None
        if last is not None and self.link is not None:
            self.link.settle(last, ack=False, requeue=requeue)

    # --- sending -------------------------------------------------------------------------

    async def send(self, data: bytes | list[bytes], *, topic: str = "") -> None:
        """PUSH: enqueue; PUB: publish under ``topic``; REQ: send a request (then
        ``recv`` its reply); REP: reply to the last received request."""
        link = self.link
        if link is None:
            raise ClientError("socket is not connected")
        kind = self.kind
        body, headers = join_multipart(data)
        if kind == PUSH:
            await link.publish("", self.name, body, headers=headers, persistent=self.durable, confirm=self.durable)
        elif kind == PUB:
            await link.publish(self.name, topic, body, headers=headers)
        elif kind == REQ:
            if self._next_reply is not None:
                raise ClientError("REQ: recv the reply before sending again (or use request())")
            self._next_reply = await self._start_request(body, headers)
            return
        elif kind == REP:
            request = self._last
            if request is None:
                raise ClientError("REP: nothing to reply to (recv a request first)")
            self._last = None
            if request.reply_to:
                await link.publish("", request.reply_to, body, headers=headers, correlation_id=request.correlation_id)
            link.settle(request)
            return
        else:
            raise ClientError(f"{kind} sockets do not send")
        self._sent += 1
        if self._sent % _YIELD_EVERY == 0:
            await asyncio.sleep(0)

    async def send_multipart(self, parts: list[bytes]) -> None:
        """As ``send``; on PUB the first part is the topic (ZeroMQ's convention)."""
        if self.kind == PUB:
            if not parts:
                raise ValueError("PUB: send_multipart needs a topic part")
            topic = parts[0].decode() if isinstance(parts[0], bytes) else str(parts[0])
            await self.send(list(parts[1:]) if len(parts) > 2 else parts[1] if len(parts) == 2 else b"", topic=topic)
            return
        await self.send(list(parts))

    async def _start_request(self, body: bytes, headers: dict[str, Any] | None) -> asyncio.Future[Delivery]:
        link = self.link
        assert link is not None
        await link.wait_up()
        correlation_id = f"{self._id_prefix}-{next(self._ids)}"
        future: asyncio.Future[Delivery] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = future
        try:
            await link.publish("", self.name, body, headers=headers, reply_to=self._reply_to, correlation_id=correlation_id)
        except BaseException:
            self._pending.pop(correlation_id, None)
            raise
        future.correlation_id = correlation_id  # type: ignore[attr-defined]
        return future

    async def request(self, data: bytes | list[bytes], timeout: float | None = None) -> bytes:
        """REQ: send ``data`` and return the reply's body (``TimeoutError`` after ``timeout``)."""
        return (await self.request_delivery(data, timeout)).body

    async def request_delivery(self, data: bytes | list[bytes], timeout: float | None = None) -> Delivery:
        if self.kind != REQ:
            raise ClientError("request() is for REQ sockets")
        body, headers = join_multipart(data)
        future = await self._start_request(body, headers)
        try:
            async with asyncio.timeout(timeout if timeout is not None else self.timeout):
                return await future
        finally:
            self._pending.pop(future.correlation_id, None)  # type: ignore[attr-defined]

    async def _recv_reply(self, timeout: float | None) -> Delivery:
        future = self._next_reply
        if future is None:
            raise ClientError("REQ: send a request before recv")
        # shield: a recv that times out leaves the request pending (recv may be retried)
        delivery = await asyncio.wait_for(asyncio.shield(future), timeout if timeout is not None else self.timeout)
        self._next_reply = None
        self._pending.pop(future.correlation_id, None)  # type: ignore[attr-defined]
        return delivery

    # --- subscriptions -------------------------------------------------------------------

    async def subscribe(self, prefix: str | bytes = "") -> None:
        """SUB: receive messages whose topic starts with the words of ``prefix``."""
        if self.kind != SUB:
            raise ClientError("subscribe() is for SUB sockets")
        prefix = prefix.decode() if isinstance(prefix, bytes) else prefix
        if prefix in self._prefixes:
            return
        self._prefixes.append(prefix)
        if self.link is not None and self.queue_name is not None:
            await self.link.bind(self.queue_name, self.name, _pattern(prefix))

    async def unsubscribe(self, prefix: str | bytes = "") -> None:
        prefix = prefix.decode() if isinstance(prefix, bytes) else prefix
        if prefix not in self._prefixes:
            return
        self._prefixes.remove(prefix)
        if self.link is not None and self.queue_name is not None:
            await self.link.unbind(self.queue_name, self.name, _pattern(prefix))

    # --- lifecycle -----------------------------------------------------------------------

    async def close(self) -> None:
        """Acknowledge the last received message, leave the broker; prefetched messages
        not yet received go back to the queue for others.  (Leaving an ``async with``
        block by an exception gives the last message back instead of acknowledging it.)"""
        link, self.link = self.link, None
        if link is None:
            return
        last, self._last = self._last, None
        if last is not None and self.kind != REP:
            link.settle(last)
            await asyncio.sleep(0)  # let the ack leave before the session closes
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()
        await link.close()

    async def __aenter__(self) -> AsyncSocket:
        return self

    async def __aexit__(self, exc_type: object, *exc: object) -> None:
        if exc_type is not None:
            self.reject(requeue=True)  # the work failed: the message goes back, not acked
        await self.close()


def _pattern(prefix: str) -> str:
    """The topic binding for a word prefix: ``""`` → ``#``, ``a.b`` → ``a.b.#``."""
    prefix = prefix.strip(".")
    return f"{prefix}.#" if prefix else "#"


class AsyncContext:
    """Makes sockets and closes them all at the end (``async with AsyncContext() as ctx``)."""

    def __init__(self, timeout: float | None = 30.0) -> None:
        self.timeout = timeout
        self.sockets: list[AsyncSocket] = []

    def socket(self, kind: str, name: str, **options: Any) -> AsyncSocket:
        options.setdefault("timeout", self.timeout)
        sock = AsyncSocket(kind, name, **options)
        self.sockets.append(sock)
        return sock

    async def close(self) -> None:
        sockets, self.sockets = self.sockets, []
        for sock in sockets:
            await sock.close()

    async def __aenter__(self) -> AsyncContext:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
