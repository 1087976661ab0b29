"""The in-process transport: ``inproc://NAME`` reaches an embedded broker with no socket.

Theory of operation
-------------------
A ``Broker`` started with ``inproc_name="jobs"`` registers itself here under that
name.  A client in the same process opens an ``InprocSession`` on it: the session is
the in-process counterpart of an AMQP connection + channel.  It publishes core
``Message`` objects through the one publish path (``core/publish.py`` ``Publisher``:
target → admit → deliver) and consumes through ``InprocConsumer``, an implementation
of the core ``Consumer`` protocol (``core/queue.py``) with a prefetch window, exactly
like ``protocols/amqp/channel.py``'s ``AMQPConsumer``: the queue calls ``deliver``
while ``can_deliver`` says there is credit, and an ack gives the credit back.  Nothing
is encoded or decoded; the body object a publisher hands over is the one the consumer
receives.  Queues and exchanges are the ordinary ones, so AMQP, HTTP and Kafka clients
see and share them (the management API lists them).

Threads: every method of a session runs on the broker's event loop (the core is
single-threaded).  The client side (``baedal.client``) calls them directly when it runs
on that loop and hops with ``loop.call_soon_threadsafe`` otherwise.  Deliveries go to
a ``sink`` callable given at ``consume`` time; the client's sink is responsible for
getting them to its own thread (see ``baedal.client.links``).

Direct reply-to: a session can own a reply address ``amq.rabbitmq.reply-to.<token>``
registered in the AMQP server's registry, the same one AMQP channels use, so an AMQP
replier can answer an in-process requester and the other way round (a publish to the
default exchange with such a routing key is handed to the registered target, as
``Channel._publish_reply`` does; at-most-once, as in RabbitMQ).

Bounds: a consumer holds at most ``prefetch`` unacknowledged deliveries (the queue
keeps the rest); a closed session's unacknowledged deliveries are requeued in their
original order, so a puller that dies mid-work loses nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..core.message import Message, QueueEntry
from ..core.publish import Publisher
from ..core.vhost import REPLY_TO_PREFIX, CoreError

if TYPE_CHECKING:
    from ..core.queue import Queue

_lock = threading.Lock()
_brokers: dict[str, Any] = {}
_sessions: dict[int, InprocSession] = {}
_numbers = itertools.count(1)  # names sessions for the management API

# A sink receives (consumer, delivery tag, message, redelivered); tag 0 for no-ack
# deliveries and replies (consumer None).  ``None`` as the message means the consumer
# was cancelled by the broker.  The consumer comes with every call because the first
# deliveries happen inside ``consume`` (the queue drains as soon as it is added).
Sink = Callable[[Any, int, Message | None, bool], None]


def check_free(name: str, broker: Any) -> None:
    with _lock:
        if name in _brokers and _brokers[name] is not broker:
            raise ValueError(f"inproc://{name} is already registered in this process")


def register(name: str, broker: Any) -> None:
    """Make ``broker`` reachable as ``inproc://name`` (called by ``Broker.start``)."""
    with _lock:
        if name in _brokers and _brokers[name] is not broker:
            raise ValueError(f"inproc://{name} is already registered in this process")
        _brokers[name] = broker


def lookup(name: str) -> Any:
    """The running broker registered as ``name``, or None."""
    with _lock:
        return _brokers.get(name)


async def unregister(name: str, broker: Any) -> None:
    """``Broker.stop``: forget the name and close its sessions (clients reconnect)."""
    with _lock:
        if _brokers.get(name) is broker:
            del _brokers[name]
        sessions = [s for s in _sessions.values() if s.broker is broker]
    for session in sessions:
        session.close(lost=True)


class InprocConsumer:
    """The core ``Consumer`` for one in-process subscription (see the module docstring)."""

    __slots__ = ("tag", "priority", "exclusive", "no_ack", "owner", "queue", "prefetch", "unacked", "sink", "next_tag")

    def __init__(self, tag: str, queue: Queue, session: InprocSession, sink: Sink, prefetch: int, no_ack: bool) -> None:
        self.tag = tag
        self.priority = 0
        self.exclusive = False
        self.no_ack = no_ack
        self.owner = session
        self.queue = queue
        self.prefetch = prefetch
        self.unacked: dict[int, QueueEntry] = {}
        self.sink = sink
        self.next_tag = 1

    @property
    def description(self) -> str:
        """How the management API names this consumer's channel."""
        return f"inproc://{self.owner.broker.settings.inproc_name} ({self.owner.user})"

    def can_deliver(self) -> bool:
        return self.no_ack or not self.prefetch or len(self.unacked) < self.prefetch

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        message = entry.message
        assert message is not None
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        if self.no_ack:
            queue.settle_delivered(entry)
            self.sink(self, 0, message, redelivered)
            return
        tag = self.next_tag
        self.next_tag = tag + 1
        self.unacked[tag] = entry
        self.sink(self, tag, message, redelivered)

    def cancelled_by_server(self, queue: Queue) -> None:
        self.owner.consumers.pop(self.tag, None)
        self.unacked.clear()  # the queue and its entries are gone
        self.sink(self, 0, None, False)

    def settle(self, tags: list[int], ack: bool, requeue: bool) -> None:
        queue = self.queue
        unacked = self.unacked
        for tag in tags:
            entry = unacked.pop(tag, None)
            if entry is None:
                continue  # already settled, or from before a reconnect
            if ack:
                queue.ack(entry)
            else:
                queue.reject(entry, requeue)
        if not queue.deleted:
            queue.drain()  # credit came back

    def release(self) -> None:
        """Leave the queue; unacknowledged deliveries go back in their original order."""
        queue = self.queue
        queue.remove_consumer(self)
        entries = sorted(self.unacked.values())
        self.unacked.clear()
        if entries:
            queue.requeue(entries)


class _ReplyTarget:
    """What the AMQP server's direct reply-to registry calls (duck-typed like a Channel:
    ``reply_to_consumer``, ``can_send``, ``send_reply``)."""

    def __init__(self, sink: Sink) -> None:
        self.sink = sink
        self.reply_to_consumer: object | None = self
        self.can_send = True

    def send_reply(self, consumer: object, entry: QueueEntry) -> None:
        self.sink(None, 0, entry.message, False)


class InprocSession:
    """One client's attachment to an in-process broker; runs on the broker's loop."""

    protocol = "inproc"  # as the management API and /metrics label it

    def __init__(self, broker: Any, user: str | None = None, on_lost: Callable[[], None] | None = None) -> None:
        core = broker.core
        if core is None:
            raise CoreError("not_found", "broker is not running")
        self.broker = broker
        self.core = core
        self.user = user or core.config.default_user
        self.vhost = core.vhosts["/"]
        self.permission = core.permission(self.user, self.vhost.name)
        self.publisher = Publisher(core, self.vhost, self.user, self.permission)
        self.consumers: dict[str, InprocConsumer] = {}
        self.on_lost = on_lost
        self.closed = False
        self._reply_token: str | None = None
        self._reply_target: _ReplyTarget | None = None
        self._tags = 0
        self.name = f"inproc {broker.settings.inproc_name} #{next(_numbers)}"
        self.connected_at = time.time()
        with _lock:
            _sessions[id(self)] = self

    # --- topology ------------------------------------------------------------------------

    def _check(self, kind: str, name: str) -> None:
        permission = self.permission
        if permission is None or not permission.allows(kind, name):
            raise CoreError(
                "access_refused",
                f"{kind} access to '{name}' in vhost '{self.vhost.name}' refused for user '{self.user}'",
            )

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = False,
        exclusive: bool = False,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> str:
        if name:
            self._check("configure", name)
        queue, _ = self.vhost.declare_queue(
            name,
            durable=durable,
            exclusive_owner=self if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        return queue.name

    def declare_exchange(self, name: str, type_: str, *, durable: bool = True) -> None:
        self._check("configure", name)
        self.vhost.declare_exchange(name, type_, durable=durable)

    def bind(self, queue_name: str, exchange: str, routing_key: str) -> None:
        self._check("write", queue_name)
        self._check("read", exchange)
        self.vhost.bind(exchange, self.vhost.get_queue(queue_name), routing_key, {})

    def unbind(self, queue_name: str, exchange: str, routing_key: str) -> None:
        queue = self.vhost.queues.get(queue_name)
        if queue is not None:
            self.vhost.unbind(exchange, queue, routing_key, {}, self)

    # --- publish -------------------------------------------------------------------------

    def publish(self, message: Message, mandatory: bool = False, plain: bool = False) -> int:
        """The one publish path; returns ``core/publish.py``'s outcome bits.

        ``plain``: the caller built the message without headers or user-id, so
        ``Publisher.admit`` has nothing to inspect beyond the size and topic checks
        (the AMQP channel skips it the same way when the property flags say so)."""
        if self.closed:
            raise CoreError("connection_forced", "session closed")
        exchange_name = message.exchange
        if not exchange_name and message.routing_key.startswith(REPLY_TO_PREFIX):
            self._publish_reply(message)
            return 0
        publisher = self.publisher
        exchange = self.vhost.exchanges.get(exchange_name)
        if exchange is None or exchange.internal or exchange_name not in publisher.write_checked:
            exchange = publisher.target(exchange_name)  # raises the right refusal
        extra_keys = None
        if not plain:
            message, extra_keys = publisher.admit(exchange, message)
        else:
            if len(message.body) > publisher.max_message_size:
                publisher.admit(exchange, message)  # raises precondition_failed
            if exchange.type == "topic":
                publisher.check_topic_write(exchange, message.routing_key)
        return publisher.deliver(exchange, message, extra_keys, mandatory)

    def when_stored(self, outcome: int, on_stored: Callable[[], None], on_failed: Callable[[BaseException], None]) -> bool:
        publisher = self.publisher
        return publisher.when_stored(outcome, publisher.take_replicating(), on_stored, on_failed)

    def _publish_reply(self, message: Message) -> None:
        self.publisher.publish_count += 1
        amqp = self.broker.amqp
        if amqp is None:
            return
        target = amqp.reply_to_channel(message.routing_key[len(REPLY_TO_PREFIX) :])
        if target is None or target.reply_to_consumer is None or not target.can_send:
            return  # at-most-once: the requester is gone (as in RabbitMQ)
        target.send_reply(target.reply_to_consumer, QueueEntry(0, message, len(message.body)))

    def reply_address(self, sink: Sink) -> str:
        """This session's direct reply-to address; replies go to ``sink``."""
        if self._reply_token is None:
            amqp = self.broker.amqp
            if amqp is None:
                raise CoreError("not_found", "direct reply-to needs the broker's AMQP side")
            self._reply_target = _ReplyTarget(sink)
            self._reply_token = amqp.register_reply_to(self._reply_target)
        return REPLY_TO_PREFIX + self._reply_token

    # --- consume -------------------------------------------------------------------------

    def consume(self, queue_name: str, sink: Sink, *, prefetch: int = 100, no_ack: bool = False) -> InprocConsumer:
        queue = self.vhost.get_queue(queue_name)
        self._check("read", queue.name)
        if not hasattr(queue, "requeue"):
            raise CoreError("not_implemented", f"queue '{queue.name}' is a stream: use an offset reader")
        self.vhost.check_exclusive(queue, self)
        self._tags += 1
        tag = f"inproc-{os.getpid()}-{id(self):x}-{self._tags}"
        consumer = InprocConsumer(tag, queue, self, sink, prefetch, no_ack)
        self.consumers[tag] = consumer
        queue.add_consumer(consumer)
        return consumer

    def cancel(self, consumer: InprocConsumer) -> None:
        if self.consumers.pop(consumer.tag, None) is not None:
            consumer.release()

    # --- lifecycle -----------------------------------------------------------------------

    def close(self, lost: bool = False) -> None:
        """Release consumers (requeue their unacked deliveries), drop exclusive queues,
        give up the reply address.  ``lost``: the broker is stopping."""
        if self.closed:
            return
        self.closed = True
        with _lock:
            _sessions.pop(id(self), None)
        for consumer in list(self.consumers.values()):
            if not consumer.queue.deleted:
                consumer.release()
        self.consumers.clear()
        self.vhost.owner_closed(self)
        amqp = self.broker.amqp
        if self._reply_token is not None and amqp is not None:
            amqp.unregister_reply_to(self._reply_token)
            self._reply_token = None
        if lost and self.on_lost is not None:
            self.on_lost()


    # --- operators (the management API lists sessions beside network connections) ------

    @property
    def username(self) -> str:
        return self.user

    def describe(self) -> dict[str, Any]:
        """This session as ``/api/connections`` shows a connection."""
        return {
            "name": self.name,
            "type": "direct",
            "protocol": self.protocol,
            "peer_host": "",
            "peer_port": 0,
            "host": f"inproc://{self.broker.settings.inproc_name}",
            "port": 0,
            "user": self.user,
            "vhost": self.vhost.name,
            "channels": 1 if not self.closed else 0,
            "consumers": len(self.consumers),
            "unacked": sum(len(c.unacked) for c in self.consumers.values()),
            "published": self.publisher.publish_count,
            "state": "closed" if self.closed else "running",
            "client_properties": {"product": "baedal.client", "transport": "inproc"},
            "recv_oct": 0,  # nothing is encoded: no bytes move
            "send_oct": 0,
            "send_pend": 0,
            "connected_at": int(self.connected_at * 1000),
            "ssl": False,
            "auth_mechanism": "none",
        }

    def force_close(self, reason: str) -> None:
        """Closed by an operator: the client sees its link lost (and reconnects if it
        is meant to, as after a broker restart)."""
        self.close(lost=True)


def sessions_of(broker: Any) -> list[InprocSession]:
    """The open sessions on ``broker`` (for the management API and /metrics)."""
    with _lock:
        return [s for s in _sessions.values() if s.broker is broker and not s.closed]


async def wait_for_broker(name: str, timeout: float | None = None) -> Any:
    """The broker registered as ``name``, waiting for it to start (connect before bind)."""
    loop = asyncio.get_running_loop()
    deadline = None if timeout is None else loop.time() + timeout
    delay = 0.005
    while True:
        broker = lookup(name)
        if broker is not None and broker.core is not None and broker._loop is not None:
            return broker
        if deadline is not None and loop.time() >= deadline:
            raise TimeoutError(f"no broker registered as inproc://{name}")
        await asyncio.sleep(delay)
        delay = min(delay * 2, 0.2)
