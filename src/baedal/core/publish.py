"""The one publish path: every protocol adapter (AMQP, HTTP, and later Kafka, STOMP,
MQTT) hands its messages to a ``Publisher`` and gets the same checks and effects.

Theory of operation
-------------------
A ``Publisher`` is the per-publisher state an adapter keeps (one per AMQP channel, one
per HTTP request): who publishes (user name and that user's permission in the vhost),
a cache of exchanges already checked for write access (RabbitMQ's channel keeps the
same cache), and the publisher's own counters.  A publish runs these steps, in
RabbitMQ's order (``rabbit_channel:handle_method(basic.publish)``):

1. ``target(name)``: the exchange exists (``not_found``), the user may write to it
   (``access_refused``, checked once per exchange and publisher), it is not internal
   (``access_refused``).
2. ``admit(exchange, message)``: topic permissions (a hook, see ``check_topic_write``),
   the ``user-id`` property equals the authenticated user unless the user is tagged
   ``impersonator`` (``precondition_failed`` with RabbitMQ's text), ``CC``/``BCC``
   headers become extra routing keys and ``BCC`` is removed from what is delivered.
3. ``deliver(exchange, message, extra_keys, mandatory)``: route (exchange-to-exchange
   bindings and alternate exchanges through ``VirtualHost.route``), enqueue into every
   routed queue, count (exchange ``publish_in``/``publish_out``, queue ``publish``,
   publisher ``publish``, broker ``unroutable``/``returned``), ask the adapter to
   throttle when a queue's consumers are socket-bound, and collect what the confirm
   must wait for.

``publish(name, message, mandatory=...)`` runs all three and returns a
``PublishResult``.  The AMQP channel calls the three steps itself: ``target`` before it
decodes the content header (a missing exchange is 404 even when the header is bad, as
in RabbitMQ), ``admit`` at publish time and ``deliver`` at ``tx.commit`` in a
transaction.

``deliver`` returns an ``int`` of outcome bits rather than an object, because it is on
the hot path (no allocation per message): ``UNROUTABLE`` (no queue matched: the adapter
returns a mandatory message, e.g. ``basic.return`` or HTTP ``routed: false``),
``REFUSED`` (a queue refused it: overflow ``reject-publish`` or a failed write, so the
confirm is a nack), ``NEEDS_SYNC`` (a persistent message reached a durable queue: the
confirm waits for the fsync that covers it) and ``REPLICATING`` (the replicator handed
back handles, kept in ``Publisher.replicating`` until the adapter takes them: the
confirm waits for those too).  ``when_stored`` waits for both for adapters that confirm
one publish at a time (HTTP, ``tx.commit``); the AMQP channel batches confirms itself
(group commit) and waits on the same two things.

Scheduled delivery (core/scheduler.py): ``admit`` looks for the ActiveMQ
``AMQ_SCHEDULED_*`` headers (and ``x-delay`` on an ``x-delayed-message`` exchange) with one
set test, only when the message has headers, and then returns a ``ScheduleRequest`` in
the extra-keys slot; ``deliver`` checks for it only on its slow path (extra keys
present) and hands the message to the scheduler instead of routing it: outcome 0, or
``NEEDS_SYNC`` when the schedule log is durable, so the confirm waits for its fsync.
A publish without headers (the AMQP fast path skips ``admit``) pays nothing.

Blocking: while a resource alarm is up, ``blocked`` says why; the AMQP adapter stops
reading the socket (``connection.blocked``), request/response adapters refuse (HTTP 503).

Nothing here imports a protocol; errors are ``CoreError`` kinds that adapters map to
their wire answers.  ``admit`` reads the message's neutral fields (``user_id``,
``headers``: ``core/message.py``); for an AMQP publish that decodes its properties
block, so the AMQP adapter calls ``admit`` only when the block's flags say it has a
user-id or headers (and ``check_topic_write`` alone for other topic publishes).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..cluster.replicator import replication_failure
from .exchange import Exchange
from .message import Message
from .properties import DecodeError
from .scheduler import SCHEDULE_HEADERS, ScheduleRequest, request_for
from .vhost import CoreError

if TYPE_CHECKING:
    from .broker import BrokerCore, Permission
    from .queue import Queue
    from .vhost import VirtualHost

# Outcome bits of ``Publisher.deliver`` (0: routed, accepted, nothing to wait for).
UNROUTABLE = 1
REFUSED = 2
NEEDS_SYNC = 4
REPLICATING = 8

# Flow control (RabbitMQ's credit flow, simplified for one event loop): a publisher is
# asked to pause when a queue it feeds has more than this many ready messages *and*
# the queue's consumers are held back by their sockets (the adapter's ``throttle``
# decides the latter), so one fast publisher cannot starve its own consumers.
FLOW_HIGH_WATER = 2000

class PublishResult:
    """What ``Publisher.publish`` did, for adapters that answer one publish at a time."""

    __slots__ = ("outcome", "message", "replicating")

    def __init__(self, outcome: int, message: Message, replicating: list[Any] | None) -> None:
        self.outcome = outcome
        self.message = message  # as delivered (BCC removed)
        self.replicating = replicating

    @property
    def routed(self) -> bool:
        return not self.outcome & UNROUTABLE

    @property
    def refused(self) -> bool:
        return bool(self.outcome & REFUSED)


class Publisher:
    """One publisher's view of the publish path (see the module docstring)."""

    def __init__(
        self,
        broker: BrokerCore,
        vhost: VirtualHost,
        user: str,
        permission: Permission | None,
        *,
        throttle: Callable[[Queue], None] | None = None,
    ) -> None:
        self.broker = broker
        self.vhost = vhost
        self.user = user
        self.permission = permission
        self.throttle = throttle
        self.max_message_size = broker.config.max_message_size
        self.publish_count = 0  # channel / connection stats
        self.replicating: list[Any] | None = None
        self.write_checked: dict[str, bool] = {}  # exchanges this publisher may write to

    # --- step 1: the exchange ----------------------------------------------------------

    def target(self, name: str) -> Exchange:
        """The exchange to publish to, checked for existence, write access and internal."""
        vhost = self.vhost
        exchange = vhost.exchanges.get(name)
        if exchange is None:
            raise CoreError("not_found", f"no exchange '{name}' in vhost '{vhost.name}'")
        if name not in self.write_checked:
            # RabbitMQ caches positive write checks per channel; so do we.
            resource = name or "amq.default"
            permission = self.permission
            if permission is None or not permission.allows("write", resource):
                raise CoreError(
                    "access_refused",
                    f"access to exchange '{resource}' in vhost '{vhost.name}' refused for user '{self.user}'",
                )
            self.write_checked[name] = True
        if exchange.internal:
            raise CoreError(
                "access_refused",
                f"cannot publish to internal exchange '{name}' in vhost '{vhost.name}'",
            )
        return exchange

    # --- step 2: the message -----------------------------------------------------------

    def admit(self, exchange: Exchange, message: Message) -> tuple[Message, list[str] | None]:
        """Message checks before routing; returns the message to route (``BCC`` removed)
        and the extra routing keys from ``CC``/``BCC`` (None when there are none)."""
        if len(message.body) > self.max_message_size:
            raise CoreError(
                "precondition_failed",
                f"message size {len(message.body)} is larger than configured max size {self.max_message_size}",
            )
        if exchange.type == "topic":
            self.check_topic_write(exchange, message.routing_key)
        return self._inspect(message, exchange)

    def check_topic_write(self, exchange: Exchange, routing_key: str) -> None:
        """Topic permissions (issue 9 item 9): a publish to a topic exchange needs the
        routing key to match the user's topic write pattern for that exchange.

        The check lives in ``BrokerCore.topic_permission_allows`` (added with topic
        permissions); until then, and for users without topic permissions in this vhost,
        this costs one dict lookup.
        """
        topic_permissions = getattr(self.broker, "topic_permissions", None)
        if not topic_permissions or (self.user, self.vhost.name) not in topic_permissions:
            return
        if not self.broker.topic_permission_allows(  # type: ignore[attr-defined]
            self.user, self.vhost.name, exchange.name, routing_key, "write"
        ):
            raise CoreError(
                "access_refused",
                f"access to topic '{routing_key}' in exchange '{exchange.name}' in vhost "
                f"'{self.vhost.name}' refused for user '{self.user}'",
            )

    def _inspect(self, message: Message, exchange: Exchange) -> tuple[Message, list[str] | None]:
        try:
            user_id = message.user_id  # the first field read decodes them all
            headers = message.headers
        except DecodeError as exc:
            raise CoreError("malformed", f"cannot decode message properties: {exc}") from None
        if user_id is not None and user_id != self.user:
            user = self.broker.users.get(self.user)
            if user is None or "impersonator" not in user.tags:
                raise CoreError(
                    "precondition_failed",
                    f"user_id property set to '{user_id}' but authenticated user was '{self.user}'",
                )
        if not headers:
            return message, None
        # Scheduled delivery (core/scheduler.py): one set test, only for messages with
        # headers.  The request travels to ``deliver`` in the extra-keys slot.
        schedule = None if SCHEDULE_HEADERS.isdisjoint(headers) else request_for(headers, exchange)
        cc = headers.get("CC")
        bcc = headers.get("BCC")
        if not isinstance(cc, list) and not isinstance(bcc, list):
            return message, schedule
        # RabbitMQ (rabbit_basic): CC and BCC values are arrays of longstr routing keys;
        # BCC is removed from the message every queue gets.
        extra = [k for k in (cc if isinstance(cc, list) else []) if isinstance(k, str)]
        extra += [k for k in (bcc if isinstance(bcc, list) else []) if isinstance(k, str)]
        if "BCC" in headers:
            stripped = dict(headers)
            del stripped["BCC"]
            message = message.derive(headers=stripped)
        if schedule is not None:
            schedule.extend(extra)
            return message, schedule
        return message, extra

    # --- step 3: route, enqueue, count -------------------------------------------------

    def deliver(
        self,
        exchange: Exchange,
        message: Message,
        extra_keys: list[str] | None = None,
        mandatory: bool = False,
    ) -> int:
        """Route and enqueue; returns the outcome bits (module docstring)."""
        self.publish_count += 1
        exchange.publish_count += 1
        if extra_keys is None and not exchange.exchange_destinations:
            # VirtualHost.route's fast path, inlined (the hot path): no e2e bindings and
            # no CC/BCC, so each exchange type's route() already lists every queue once.
            queues = exchange.route(message.routing_key, message)
            if not queues and exchange.alternate_exchange is not None:
                queues = self.vhost.route(exchange, message, None)
        else:
            if extra_keys.__class__ is ScheduleRequest:
                return self._schedule(exchange, message, extra_keys)  # type: ignore[arg-type]
            queues = self.vhost.route(exchange, message, extra_keys)
        if not queues:
            counters = self.broker.counters
            counters["unroutable"] += 1
            if mandatory:
                counters["returned"] += 1
            return UNROUTABLE
        outcome = 0
        accepted_count = 0
        persistent = message.persistent
        for queue in queues:
            try:
                accepted = queue.publish(message)
            except OSError as exc:  # StorageError: full disk or I/O error, sticky until reset
                self.broker.write_failed(queue.store, exc)
                accepted = False
            if accepted:
                accepted_count += 1
                if persistent and queue.durable:
                    outcome |= NEEDS_SYNC
                if accepted is not True:  # a replication handle (cluster/replicator.py)
                    if self.replicating is None:
                        self.replicating = []
                    self.replicating.append(accepted)
                    outcome |= REPLICATING
                if queue.store.ready_count > FLOW_HIGH_WATER and queue.consumers:
                    throttle = self.throttle
                    if throttle is not None:
                        throttle(queue)
            else:
                outcome |= REFUSED
        exchange.publish_out_count += accepted_count
        return outcome

    def deliver_many(self, exchange: Exchange, messages: list[Message]) -> list[int] | None:
        """``deliver`` of messages that share one routing key (a run of PUBLISHes of one
        read to one topic, protocols/mqtt): one route lookup, then each routed queue
        takes them all with ``Queue.publish_many``.  Returns each message's outcome bits,
        or None (nothing done: the caller delivers them one by one) when the route may
        depend on more than the key (a headers exchange, exchange-to-exchange bindings,
        an alternate exchange).  Not mandatory, no extra keys: ``admit``'s
        CC/BCC/scheduling cases take ``deliver``."""
        if (
            exchange.exchange_destinations
            or exchange.alternate_exchange is not None
            or exchange.type not in ("topic", "direct", "fanout")
        ):
            return None
        count = len(messages)
        queues = exchange.route(messages[0].routing_key, messages[0])
        self.publish_count += count
        exchange.publish_count += count
        if not queues:
            self.broker.counters["unroutable"] += count
            return [UNROUTABLE] * count
        outcomes = [0] * count
        sync = NEEDS_SYNC if messages[0].persistent else 0  # the run shares its QoS
        accepted_count = 0
        for queue in queues:
            needs_sync = sync if queue.durable else 0
            result = queue.publish_many(messages)
            if result is None:
                start = 0  # a queue with a limit, a policy or consumers to choose: one by one
            else:
                done, handles, error = result
                accepted_count += done
                if needs_sync:
                    for i in range(done):
                        outcomes[i] |= needs_sync
                if handles:
                    # Every message of the run waits for every handle (the adapter
                    # acknowledges the run together): later than one by one, never earlier.
                    if self.replicating is None:
                        self.replicating = []
                    self.replicating.extend(handles)
                    for i in range(done):
                        outcomes[i] |= REPLICATING
                if error is None:
                    start = count
                else:
                    self.broker.write_failed(queue.store, error)
                    outcomes[done] |= REFUSED
                    start = done + 1
            for i in range(start, count):
                try:
                    accepted = queue.publish(messages[i])
                except OSError as exc:
                    self.broker.write_failed(queue.store, exc)
                    accepted = False
                if accepted:
                    accepted_count += 1
                    outcomes[i] |= needs_sync
                    if accepted is not True:
                        if self.replicating is None:
                            self.replicating = []
                        self.replicating.append(accepted)
                        outcomes[i] |= REPLICATING
                else:
                    outcomes[i] |= REFUSED
            if queue.store.ready_count > FLOW_HIGH_WATER and queue.consumers:
                throttle = self.throttle
                if throttle is not None:
                    throttle(queue)
        exchange.publish_out_count += accepted_count
        return outcomes

    def _schedule(self, exchange: Exchange, message: Message, request: ScheduleRequest) -> int:
        """Hand a message to the scheduler instead of routing it (core/scheduler.py):
        accepted (never UNROUTABLE: routing happens when it fires), NEEDS_SYNC when the
        schedule store is durable, REFUSED when it cannot be written."""
        broker = self.broker
        scheduler = getattr(broker, "scheduler", None)
        if scheduler is None:  # a core without the app's wiring (tools, unit tests)
            from ..storage.schedule_store import MemoryScheduleStore
            from .scheduler import Scheduler

            scheduler = broker.scheduler = Scheduler(broker, MemoryScheduleStore())  # type: ignore[attr-defined]
        try:
            durable = scheduler.schedule(self.vhost.name, exchange, message, request)
        except OSError as exc:  # StorageError: the schedule log failed, sticky until reset
            broker.write_failed(getattr(scheduler.store, "log", None), exc)
            return REFUSED
        exchange.publish_out_count += 1
        return NEEDS_SYNC if durable else 0

    def take_replicating(self) -> list[Any] | None:
        """The replication handles of the last ``deliver``(s), handed to the adapter."""
        handles, self.replicating = self.replicating, None
        return handles

    # --- all three ---------------------------------------------------------------------

    def publish(
        self, exchange_name: str, message: Message, *, mandatory: bool = False
    ) -> PublishResult:
        """``target`` + ``admit`` + ``deliver`` (raises ``CoreError`` when refused)."""
        exchange = self.target(exchange_name)
        message, extra_keys = self.admit(exchange, message)
        outcome = self.deliver(exchange, message, extra_keys, mandatory)
        return PublishResult(outcome, message, self.take_replicating())

    # --- blocking and confirms ---------------------------------------------------------

    @property
    def blocked(self) -> str | None:
        """Why publishing is blocked (a resource alarm), or None."""
        broker = self.broker
        return broker.alarm_reason if broker.alarms else None

    def when_stored(
        self,
        outcome: int,
        replicating: list[Any] | None,
        on_stored: Callable[[], None],
        on_failed: Callable[[BaseException], None],
    ) -> bool:
        """Call ``on_stored`` once a published message is safe (see ``when_stored``)."""
        return when_stored(self.broker, bool(outcome & NEEDS_SYNC), replicating, on_stored, on_failed)


def when_stored(
    broker: BrokerCore,
    needs_sync: bool,
    replicating: list[Any] | None,
    on_stored: Callable[[], None],
    on_failed: Callable[[BaseException], None],
) -> bool:
    """Run ``on_stored`` after the fsync covering every write so far (when ``needs_sync``)
    *and* every replication handle are done, or ``on_failed(exc)`` at the first failure.

    Returns False when there is nothing to wait for (the caller acts at once).
    """
    waiting = len(replicating) if replicating else 0
    if needs_sync:
        waiting += 1
    if not waiting:
        return False
    state = [waiting, False]  # outstanding, finished

    def one_done(exc: BaseException | None = None) -> None:
        if state[1]:
            return
        if exc is not None:
            state[1] = True
            on_failed(exc)
            return
        state[0] -= 1
        if state[0] == 0:
            state[1] = True
            on_stored()

    if needs_sync and not broker.after_sync(one_done, one_done):
        one_done()  # no disk store: nothing to fsync
    for handle in replicating or ():
        handle.add_done_callback(lambda h: one_done(replication_failure(h)))
    return True
