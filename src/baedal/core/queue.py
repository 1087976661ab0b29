"""Queues: ready messages, consumers under credit, TTL, length limits, dead-lettering.

Theory of operation
-------------------
A queue owns a ``MessageStore`` (memory for transient queues, the segment log for
durable ones) holding its *ready* entries; entries that were delivered and await an ack
live in the consuming channel's unacked map, which hands them back with ``ack``,
``reject`` or ``requeue``.

Delivery is push-based and inline: ``publish`` appends to the store and, when a consumer
has credit, ``drain`` shifts and hands entries to consumers right away, so a message
that meets an idle consumer costs no task, future or timer.  ``drain`` delivers at most
``DRAIN_BATCH`` messages per call and, if more are deliverable, schedules one
``call_soon`` for the rest: a deep backlog cannot starve the event loop (work per
callback is capped).  Consumers get credit back on ack or when their socket drains, and
the adapter calls ``drain`` again.

Consumer choice: highest ``priority`` first; round-robin among equals; with
single-active-consumer only the first registered consumer receives.

Selected consumers and message groups (issue 12; ActiveMQ's semantics)
----------------------------------------------------------------------
A consumer may carry a ``selector`` (core/selector.py): it gets only the messages the
selector matches.  A message with a ``JMSXGroupID`` header is pinned to the consumer that
first received its group, while that consumer lives; ``JMSXGroupSeq = -1`` closes the
group.  Both are off the plain path: the queue is *selective* (``_selective``, the one
flag ``drain`` and ``publish`` check) only while some consumer has a selector or a group
is pinned.  Finding groups means reading a message's headers, so the plain path does it
only while two or more consumers may receive (``_grouping``; with one consumer every
message goes to it anyway): the first grouped message delivered pins its group and
switches the queue to the selective dispatch until no group is pinned.

A selective queue serves each consumer with credit in turn (``_take_for``): the first
entry, in queue order, that the consumer may take.  Entries taken off the store that the
consumer may not take go to ``_held``, a list in queue order that sits before the store
(held entries are the head of the queue: ``message_count`` counts them, ``basic.get``,
purge and drop-head take them first; requeued entries are merged into it while it is not
empty so order is kept).  So a message nobody selects stays, in order, for a later
consumer, and a consumer never sees its messages out of order.

Bounds: ``_held`` never grows past ``HOLD_LIMIT`` entries (ActiveMQ's ``maxPageSize``,
200 by default, is the same idea: selectors look at a window of paged-in messages).  A
consumer whose matching messages lie deeper than that window waits until the messages in
front are consumed, like ActiveMQ's.  Each consumer remembers the last held position it
rejected (``_Selection.memo``), so a consumer does not re-test the same held entries on every
credit it gets back: a dispatch costs the new entries only, not O(held) each time
(priority queues, whose held order is not position order, re-scan the window; it is
bounded).  A memo is forgotten when an entry is merged back below it or a group is freed.

Groups: ``_Selection.groups`` maps a group id to its owner.  An owner's unacked grouped deliveries
are counted (``_Selection.group_unacked``); when the owner goes while some are unacked, the group is
``_DRAINING`` (nobody may take it) until they are acked or come back (a closing channel
requeues them after cancelling its consumers), so the next owner gets the group's
messages in order.  Groups are only pinned while two or more consumers may receive: with
one consumer every message goes to it anyway, and the plain path stays free of header
reads.  (So a group whose messages were in flight to the only consumer when a second one
subscribed is not pinned to the first: documented, as ActiveMQ's
``consumersBeforeDispatchStarts`` is for the same race.)

Expiry is lazy as in RabbitMQ: an expired entry is dropped or dead-lettered when it
reaches the head; one timer per queue fires when the head's TTL runs out, so
dead-letter "delay queues" work without consumers.  Deadlines (``QueueEntry.expires_at``)
are wall-clock time (``time.time()``), as RabbitMQ's are (``os:system_time``): the
durable store persists them as they are and they keep their meaning across a restart
or a reboot.  A recovered queue arms its expiry timer at once, so a message whose
deadline passed while the broker was down is dead-lettered right at start-up, in order.
The ``x-expires`` idle lease is not persisted: as in RabbitMQ it starts afresh when the
queue is recovered.
"""

from __future__ import annotations

import time
from bisect import bisect_right, insort
from typing import TYPE_CHECKING, Any, Protocol

from ..cluster.replicator import ACKED, AUTO_ACKED, DELETED, PURGED
from .message import Message, QueueEntry
from .properties import Timestamp
from .store import MemoryStore, MessageStore

if TYPE_CHECKING:
    from .vhost import VirtualHost

DRAIN_BATCH = 256
# Body bytes of a run's head that ``publish_many`` hands a consumer with ``deliver_many``
# at once (one write for it): beyond this the rest goes one by one, so the connection's
# output bound (pause_writing) is not overshot by more than this.
HAND_OUT_BYTES = 256 * 1024
HOLD_LIMIT = 1024  # entries a selective queue holds aside at its head (see the docstring)
GROUP_HEADER = "JMSXGroupID"
GROUP_SEQUENCE_HEADER = "JMSXGroupSeq"
_DRAINING: Any = object()  # a group whose owner went while some of its messages were unacked

# Message deadlines are wall-clock (see the module docstring); bound once, so reading
# the clock costs one C call on the publish and delivery paths.
_wall_clock = time.time


class Consumer(Protocol):
    """What a protocol adapter registers on a queue."""

    tag: str
    priority: int
    exclusive: bool
    no_ack: bool
    owner: Any  # the connection, for exclusive-queue and auto-delete bookkeeping
    # None, or a core.selector.Selector: the consumer gets only matching messages.
    # Adapters default it to None; one that has no such attribute counts as None.
    selector: Any

    def can_deliver(self) -> bool: ...
    def deliver(self, queue: Queue, entry: QueueEntry) -> None: ...
    def cancelled_by_server(self, queue: Queue) -> None: ...


def _position(entry: QueueEntry) -> int:
    return entry.position


def _group_of(message: Message) -> str | None:
    """The message's ``JMSXGroupID`` as a string, or None (no group)."""
    if not message.may_have_header(GROUP_HEADER):
        return None  # (an AMQP message's raw block said so: nothing decoded)
    headers = message.headers
    if not headers:
        return None
    group = headers.get(GROUP_HEADER)
    if group is None:
        return None
    if group.__class__ is bytes:
        return group.decode("utf-8", "surrogateescape")  # type: ignore[no-any-return]
    return str(group)


def _closes_group(sequence: Any) -> bool:
    """``JMSXGroupSeq = -1`` (an AMQP integer, or a STOMP string header) closes a group."""
    if sequence is None or sequence.__class__ is bool:
        return False
    if isinstance(sequence, (bytes, str)):
        try:
            return int(sequence) == -1
        except ValueError:
            return False
    return isinstance(sequence, int) and sequence == -1


class _Selection:
    """A queue's selected-consumer and message-group state (module docstring)."""

    __slots__ = ("memo", "groups", "group_unacked", "group_of_entry")

    def __init__(self) -> None:
        self.memo: dict[Any, int] = {}  # consumer -> last held position it rejected
        self.groups: dict[str, Any] = {}  # group id -> owner consumer, or _DRAINING
        self.group_unacked: dict[str, int] = {}  # group id -> its owners' unacked deliveries
        self.group_of_entry: dict[QueueEntry, str] = {}  # unacked grouped delivery -> group


class QueueArgumentError(ValueError):
    """An invalid x- argument (the adapter answers 406 PRECONDITION_FAILED)."""


OVERFLOW_POLICIES = ("drop-head", "reject-publish", "reject-publish-dlx")


def _int_arg(arguments: dict[str, Any], name: str, minimum: int) -> int | None:
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueueArgumentError(f"invalid arg '{name}' for queue: {value!r} is not an integer")
    if value < minimum:
        raise QueueArgumentError(f"invalid arg '{name}' for queue: {value} is below {minimum}")
    return value


class QueueSettings:
    """Validated queue arguments (RabbitMQ's rabbit_amqqueue argument checks)."""

    __slots__ = (
        "message_ttl",
        "expires",
        "max_length",
        "max_length_bytes",
        "overflow",
        "dead_letter_exchange",
        "dead_letter_routing_key",
        "max_priority",
        "single_active_consumer",
        "queue_type",
        "delivery_limit",
        "consumer_timeout",
    )

    def __init__(self, arguments: dict[str, Any]) -> None:
        self.message_ttl = _int_arg(arguments, "x-message-ttl", 0)
        self.expires = _int_arg(arguments, "x-expires", 1)
        self.max_length = _int_arg(arguments, "x-max-length", 0)
        self.max_length_bytes = _int_arg(arguments, "x-max-length-bytes", 0)
        overflow = arguments.get("x-overflow", "drop-head")
        if overflow not in OVERFLOW_POLICIES:
            raise QueueArgumentError(f"invalid arg 'x-overflow' for queue: {overflow!r}")
        self.overflow = overflow
        dlx = arguments.get("x-dead-letter-exchange")
        if dlx is not None and not isinstance(dlx, str):
            raise QueueArgumentError("invalid arg 'x-dead-letter-exchange' for queue: not a string")
        self.dead_letter_exchange = dlx
        dlrk = arguments.get("x-dead-letter-routing-key")
        if dlrk is not None:
            if not isinstance(dlrk, str):
                raise QueueArgumentError(
                    "invalid arg 'x-dead-letter-routing-key' for queue: not a string"
                )
            if dlx is None:
                raise QueueArgumentError(
                    "invalid arg 'x-dead-letter-routing-key' for queue: x-dead-letter-exchange is not set"
                )
        self.dead_letter_routing_key = dlrk
        max_priority = _int_arg(arguments, "x-max-priority", 0)
        if max_priority is not None and max_priority > 255:
            raise QueueArgumentError(
                f"invalid arg 'x-max-priority' for queue: {max_priority} is above 255"
            )
        self.max_priority = max_priority or None
        sac = arguments.get("x-single-active-consumer", False)
        if not isinstance(sac, bool):
            raise QueueArgumentError(
                "invalid arg 'x-single-active-consumer' for queue: not a boolean"
            )
        self.single_active_consumer = sac
        qtype = arguments.get("x-queue-type", "classic")
        if qtype not in ("classic", "quorum", "stream"):
            raise QueueArgumentError(f"invalid arg 'x-queue-type' for queue: {qtype!r}")
        self.queue_type = qtype
        # Quorum queues have it in RabbitMQ; Baedal also honours it on classic queues
        # (a message delivered more than this many times is dead-lettered).
        self.delivery_limit = _int_arg(arguments, "x-delivery-limit", -1)
        # Delivery acknowledgement timeout for this queue's deliveries (ms), overriding
        # the broker's consumer_timeout (RabbitMQ 3.12+; 0 disables it for the queue).
        self.consumer_timeout = _int_arg(arguments, "x-consumer-timeout", 0)

    @classmethod
    def merged(cls, arguments: dict[str, Any], policy: Any, operator_policy: Any) -> QueueSettings:
        """Settings from a queue's arguments combined with its policy and operator policy
        (core/policy.py has the precedence rules).  A combination that does not validate
        (it cannot with validated policies, but a policy must never break a queue) falls
        back to the arguments alone."""
        from .policy import queue_arguments

        try:
            return cls(queue_arguments(arguments, policy, operator_policy))
        except QueueArgumentError:
            return cls(arguments)


# One log per priority queue, the order in a bounded in-memory index: see priority.py.
from .priority import PriorityStore  # noqa: E402


class Queue:
    is_queue = True

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        *,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        store: MessageStore | PriorityStore | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.exclusive_owner = exclusive_owner
        self.auto_delete = auto_delete
        self.arguments = arguments or {}
        self.settings = QueueSettings(self.arguments)
        self.policy: Any = None  # core.policy.Policy governing this queue, if any
        self.operator_policy: Any = None
        # Quorum queues count redeliveries (x-delivery-count) and so does any queue with
        # a delivery limit.
        self._limited = self.settings.queue_type == "quorum" or self.settings.delivery_limit is not None
        self.store: Any = store if store is not None else MemoryStore()
        self.consumers: list[Consumer] = []
        self.unacked_count = 0
        self.deleted = False
        self._had_consumer = False
        self._drain_scheduled = False
        self.throttled_publishers: set[Any] = set()  # adapters' flow control (see channel.py)
        # Selected consumers and message groups (module docstring): all idle unless
        # ``_selective``, the one flag the plain paths check.
        # (Few instance attributes: past 30, CPython 3.11 stops sharing the instance
        # dict's keys and every attribute read on the hot path gets slower, so the rest
        # of the state lives in one ``_Selection``.)
        self._selective = False
        self._grouping = False
        self._held: list[QueueEntry] = []
        self._selection = _Selection()
        self._expiry_timer: Any = None
        self._expires_timer: Any = None
        # counters for management / metrics
        self.publish_count = 0
        self.deliver_count = 0
        self.ack_count = 0
        self.redeliver_count = 0
        # Messages the length limit took (x-overflow: drop-head dropped or dead-lettered
        # them, reject-publish[-dlx] refused them): how a subscriber's high-water mark
        # shows up in metrics (baedal.client's PUB/SUB).  Counted off the hot path.
        self.dropped_count = 0
        self._reset_expires()
        self._arm_recovered_expiry()
        vhost.broker.note_ack_timeout(self.settings.consumer_timeout)

    # --- properties ------------------------------------------------------------------

    @property
    def message_count(self) -> int:
        return self.store.ready_count + len(self._held)

    @property
    def exclusive(self) -> bool:
        return self.exclusive_owner is not None

    def _entry_expiry(self, message: Message) -> float | None:
        ttl = self.settings.message_ttl
        if message.expiration_ms is not None:
            ttl = message.expiration_ms if ttl is None else min(ttl, message.expiration_ms)
        if ttl is None:
            return None
        return _wall_clock() + ttl / 1000.0

    # --- publish -----------------------------------------------------------------------

    def publish(self, message: Message) -> Any:
        """Enqueue; False when refused by ``x-overflow: reject-publish[-dlx]``, else True
        or, for a durable queue whose replicator has not replicated the append yet, the
        replicator's handle (truthy; the confirm waits for it, see core/publish.py)."""
        settings = self.settings
        store = self.store
        if settings.max_length is not None or settings.max_length_bytes is not None:
            if settings.overflow != "drop-head" and self._would_overflow(message):
                self.dropped_count += 1
                if settings.overflow == "reject-publish-dlx":
                    self._dead_letter_message(message, "maxlen")
                return False
        expires_at = (
            self._entry_expiry(message)
            if (settings.message_ttl is not None or message.expiration_ms is not None)
            else None
        )
        if expires_at is not None and settings.message_ttl == 0 and not self._has_ready_consumer():
            # TTL 0 with nobody to take it now: expires at once (RabbitMQ semantics).
            self._dead_letter_message(message, "expired")
            return True
        if (
            not store.ready_count
            and self.consumers
            and expires_at is None
            and not self._selective
            and (not store.durable or (message.persistent and getattr(store, "hands_out", False)))
        ):
            # Direct hand-off: an empty queue and a consumer with credit, so the message
            # goes straight out without passing through the store's ready window (the
            # common case of a queue consumed as fast as it is fed).  A durable store
            # still takes it (``hand_out``: written behind, unless acked first).
            consumer = self._next_consumer()
            if consumer is not None:
                replicating = None
                if store.durable:
                    entry = store.hand_out(message)
                    if self.durable:
                        replicating = self.vhost.broker.replicator.appended(self, entry)
                else:
                    entry = store.direct(message)
                self.publish_count += 1
                self._count_delivery(entry, consumer.no_ack)
                if self._grouping:
                    self._note_group(consumer, entry)
                consumer.deliver(self, entry)
                return True if replicating is None else replicating
        entry = store.append(message, expires_at)
        replicating = self.vhost.broker.replicator.appended(self, entry) if self.durable else None
        self.publish_count += 1
        if settings.max_length is not None or settings.max_length_bytes is not None:
            self._enforce_drop_head()
        if self.consumers:
            self.drain()
        if expires_at is not None and self._expiry_timer is None and store.ready_count:
            self._schedule_expiry()
        return True if replicating is None else replicating

    def publish_many(self, messages: list[Message]) -> tuple[int, list[Any] | None, OSError | None] | None:
        """``publish`` of each message in order, with less per-message Python (a run of
        PUBLISHes of one read, protocols/mqtt): the same entries, counters, store
        appends, replication handles and deliveries, one drain at the end.

        Only for the plain queue: None (nothing done, the caller publishes one by one)
        when it has a length limit or overflow policy, a dead-letter exchange, a queue
        TTL, priorities, selection or groups, or more than one consumer, where what
        ``publish`` does to one message depends on what it did to the one before.
        Otherwise ``(done, handles, error)``: ``done`` messages were enqueued (all of
        them unless ``error``, the store's OSError at message ``done``, is set: the
        caller handles it as ``Publisher.deliver`` does and publishes the rest one by
        one), ``handles`` the replicator's handles of the durable appends (or None).
        """
        settings = self.settings
        consumers = self.consumers
        if (
            settings.max_length is not None
            or settings.max_length_bytes is not None
            or settings.overflow != "drop-head"
            or settings.dead_letter_exchange is not None
            or settings.message_ttl is not None
            or settings.max_priority is not None
            or len(consumers) > 1
            or self._selective
            or self._grouping
        ):
            return None
        store = self.store
        done = 0
        handles: list[Any] | None = None
        error: OSError | None = None
        expiring = False
        if consumers and (not store.durable or getattr(store, "hands_out", False)):
            # One consumer: ``publish``'s direct hand-off while the queue is empty and
            # the consumer has credit, an append otherwise (delivered by the drain below,
            # in order, as ``publish``'s own drain would).
            consumer = consumers[0]
            no_ack = consumer.no_ack
            # (a durable queue on a memory store, e.g. a core without a data directory:
            # its appends still go to the replicator, as in ``publish``)
            appended = self.vhost.broker.replicator.appended if self.durable else None
            durable_store = store.durable
            direct = store.hand_out if durable_store else store.direct
            start = 0
            deliver_many = getattr(consumer, "deliver_many", None)
            if deliver_many is not None and not store.ready_count:
                # The run's head that the consumer can take now, handed out and
                # delivered together (one write for the client, protocols/mqtt).
                limit = min(consumer.credit(), len(messages))
                size = 0
                while start < limit:
                    message = messages[start]
                    if message.expiration_ms is not None or not (message.persistent or not durable_store):
                        break
                    size += len(message.body)
                    if size > HAND_OUT_BYTES:
                        break
                    start += 1
                if start:
                    head = messages[:start]
                    entries = store.hand_out_many(head) if durable_store else None
                    if entries is None:
                        entries = []
                        try:
                            for message in head:
                                entries.append(direct(message))
                        except OSError as exc:  # StorageError: as below
                            error = exc
                    handed_count = len(entries)
                    done = handed_count
                    self.deliver_count += handed_count
                    if not no_ack:
                        self.unacked_count += handed_count
                    if appended is not None and durable_store:  # (handles is None so far)
                        found = [h for entry in entries if (h := appended(self, entry)) is not None]
                        handles = found or None
                    if entries:
                        deliver_many(self, entries)
            if error is not None:
                rest: list[Message] = []
            else:
                rest = messages[start:] if start else messages
            try:
                for message in rest:
                    handed = False
                    if message.expiration_ms is None:
                        if (
                            not store.ready_count
                            and (message.persistent or not durable_store)
                            and consumer.can_deliver()
                        ):
                            entry = direct(message)
                            handed = True
                            self.deliver_count += 1
                            if not no_ack:
                                self.unacked_count += 1
                        else:
                            entry = store.append(message, None)
                    else:
                        entry = store.append(message, self._entry_expiry(message))
                        expiring = True
                    done += 1
                    # (a memory store's hand-off skips the replicator, as in ``publish``)
                    if appended is not None and (durable_store or not handed):
                        handle = appended(self, entry)
                        if handle is not None:
                            if handles is None:
                                handles = []
                            handles.append(handle)
                    if handed:
                        consumer.deliver(self, entry)
                    elif consumer.can_deliver():
                        self.drain()
            except OSError as exc:  # StorageError: what was appended stays, the rest is refused
                error = exc
            self.publish_count += done
        else:
            durable = self.durable
            appended = self.vhost.broker.replicator.appended
            append = store.append
            try:
                for message in messages:
                    if message.expiration_ms is None:
                        entry = append(message, None)
                    else:
                        entry = append(message, self._entry_expiry(message))
                        expiring = True
                    done += 1
                    if durable:
                        handle = appended(self, entry)
                        if handle is not None:
                            if handles is None:
                                handles = []
                            handles.append(handle)
            except OSError as exc:  # StorageError: what was appended stays, the rest is refused
                error = exc
            self.publish_count += done
            if consumers:
                # One drain for the run (``publish`` drains after each append); more
                # than DRAIN_BATCH entries take more than one call, as they would have.
                while store.ready_count:
                    before = store.ready_count
                    self.drain()
                    if store.ready_count == before:
                        break
        if expiring and self._expiry_timer is None and store.ready_count:
            self._schedule_expiry()
        return done, handles, error

    def _would_overflow(self, message: Message) -> bool:
        s = self.settings
        store = self.store
        if s.max_length is not None and self.message_count >= s.max_length:
            return not self._has_ready_consumer()
        if (
            s.max_length_bytes is not None
            and store.ready_bytes + self._held_bytes() + len(message.body) > s.max_length_bytes
        ):
            return not self._has_ready_consumer()
        return False

    def _has_ready_consumer(self) -> bool:
        return self.message_count == 0 and any(
            c.can_deliver() for c in self._eligible_consumers()
        )

    def _enforce_drop_head(self) -> None:
        s = self.settings
        store = self.store
        if self._selective and self.consumers:
            self.drain()  # what a consumer can take now is not dropped
        while self.message_count and (
            (s.max_length is not None and self.message_count > s.max_length)
            or (
                s.max_length_bytes is not None
                and store.ready_bytes + self._held_bytes() > s.max_length_bytes
            )
        ):
            if self.consumers and self._has_any_credit() and not self._selective:
                self.drain()
                continue
            entry = self._held.pop(0) if self._held else store.shift()
            if entry is None:
                break
            self.dropped_count += 1
            self._dead_letter_entry(entry, "maxlen")

    def _has_any_credit(self) -> bool:
        return any(c.can_deliver() for c in self._eligible_consumers())

    def _held_deadline(self) -> float | None:
        deadlines = [entry.expires_at for entry in self._held if entry.expires_at is not None]
        return min(deadlines) if deadlines else None

    def _held_bytes(self) -> int:
        held = self._held
        return sum(entry.size for entry in held) if held else 0

    # --- consumers ---------------------------------------------------------------------

    def _eligible_consumers(self) -> list[Consumer]:
        if self.settings.single_active_consumer:
            return self.consumers[:1]
        return self.consumers

    def add_consumer(self, consumer: Consumer) -> None:
        consumers = self.consumers
        # Keep highest priority first; a new consumer goes after its equals (round-robin).
        index = len(consumers)
        for i, other in enumerate(consumers):
            if other.priority < consumer.priority:
                index = i
                break
        if self.settings.single_active_consumer:
            index = len(consumers)
        consumers.insert(index, consumer)
        self._had_consumer = True
        self._cancel_expires()
        self._refresh_mode()
        self.drain()

    def remove_consumer(self, consumer: Consumer) -> None:
        try:
            self.consumers.remove(consumer)
        except ValueError:
            return
        if self._selective or self._grouping:
            self._forget_consumer(consumer)
        self.release_publishers()
        if not self.consumers:
            if self.auto_delete and self._had_consumer:
                self.vhost.delete_queue(self)
                return
            self._reset_expires()
        else:
            self.drain()

    def _next_consumer(self) -> Consumer | None:
        consumers = self.consumers
        if not consumers:
            return None
        if self.settings.single_active_consumer:
            first = consumers[0]
            return first if first.can_deliver() else None
        n = len(consumers)
        if n == 1:
            only = consumers[0]
            return only if only.can_deliver() else None
        top = consumers[0].priority
        for i in range(n):
            consumer = consumers[i]
            if consumer.priority != top and i:
                top = consumer.priority
            if consumer.can_deliver():
                # rotate it to the end of its priority group
                j = i + 1
                while j < n and consumers[j].priority == consumer.priority:
                    j += 1
                if j - 1 != i:
                    consumers.insert(j, consumer)
                    del consumers[i]
                return consumer
        return None

    def drain(self) -> None:
        """Deliver ready entries while some consumer has credit (at most DRAIN_BATCH)."""
        if self._selective:
            self._drain_selective()
            return
        store = self.store
        budget = DRAIN_BATCH
        now: float | None = None
        while store.ready_count:
            consumer = self._next_consumer()
            if consumer is None:
                return
            entry = store.shift()
            if entry is None:
                return
            if entry.expires_at is not None:
                if now is None:
                    now = _wall_clock()
                if entry.expires_at <= now:
                    self._dead_letter_entry(entry, "expired")
                    continue
            if not self._count_delivery(entry, consumer.no_ack):
                continue
            if self._grouping:
                self._note_group(consumer, entry)
                if self._selective:  # that message pinned a group: dispatch changes
                    consumer.deliver(self, entry)
                    self._drain_selective()
                    return
            consumer.deliver(self, entry)
            budget -= 1
            if budget == 0:
                if store.ready_count and not self._drain_scheduled:
                    self._drain_scheduled = True
                    self.vhost.broker.call_soon(self._scheduled_drain)
                return

    def _count_delivery(self, entry: QueueEntry, no_ack: bool) -> bool:
        """Book an entry about to go out; False if the delivery limit took it instead."""
        if entry.delivery_count:
            self.redeliver_count += 1
            if self._limited and self._over_delivery_limit(entry):
                return False
        self.deliver_count += 1
        if not no_ack:
            self.unacked_count += 1
        return True

    def _over_delivery_limit(self, entry: QueueEntry) -> bool:
        """Quorum-queue semantics, on classic queues too when they have a limit:
        ``x-delivery-count`` header on redeliveries, and the message is dead-lettered
        (reason ``delivery_limit``; dropped without a dead-letter exchange) past
        ``x-delivery-limit``."""
        limit = self.settings.delivery_limit
        if limit is not None and limit >= 0 and entry.delivery_count > limit:
            self._dead_letter_entry(entry, "delivery_limit")
            return True
        message = entry.message
        assert message is not None
        headers = dict(message.headers or {})
        headers["x-delivery-count"] = entry.delivery_count
        entry.message = message.derive(headers=headers)
        return False

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        if not self.deleted:
            self.drain()

    # --- selected consumers and message groups (module docstring) ---------------------

    def _refresh_mode(self) -> None:
        """Recompute ``_selective`` after consumers or groups changed; a queue that no
        longer needs it puts its held entries back into the store, in order."""
        self._grouping = len(self._eligible_consumers()) >= 2 or bool(self._selection.groups)
        selective = bool(self._selection.groups) or any(
            getattr(consumer, "selector", None) is not None for consumer in self.consumers
        )
        if not selective and self._held:
            self._release_held(settle=False)
        self._selective = selective

    def _release_held(self, settle: bool) -> None:
        held = self._held
        self._held = []
        self._selection.memo.clear()
        if settle:
            for entry in held:
                self.store.settle(entry)
        else:
            # Shifted but never delivered: the store takes them back as ready, in order.
            self.store.requeue(held)

    def _forget_consumer(self, consumer: Consumer) -> None:
        """A consumer went: its memo goes, and so do its groups, at once when none of
        their messages is unacked, else once those are settled or requeued."""
        self._selection.memo.pop(consumer, None)
        groups = self._selection.groups
        if groups:
            unacked = self._selection.group_unacked
            for group, owner in list(groups.items()):
                if owner is consumer:
                    if unacked.get(group):
                        groups[group] = _DRAINING
                    else:
                        del groups[group]
            self._selection.memo.clear()
        self._refresh_mode()

    def _return(self, entries: list[QueueEntry]) -> None:
        """Entries become ready again: merged into the held head while there is one (so
        order is kept), else given back to the store."""
        held = self._held
        if not held:
            self.store.requeue(entries)
            return
        # An entry that belongs before the last held one is merged into the held head;
        # one after it goes back to the store, which serves requeued entries (in
        # position order) before its tail: either way the queue order is kept.
        key = self._held_key()
        last = key(held[-1])
        later = []
        for entry in entries:
            if key(entry) < last:
                insort(held, entry, key=key)
            else:
                later.append(entry)
        if later:
            self.store.requeue(later)
        self._selection.memo.clear()

    def _held_key(self) -> Any:
        if isinstance(self.store, PriorityStore):
            top = self.store.max_priority

            def priority_order(entry: QueueEntry) -> tuple[int, int]:
                message = entry.message
                priority = 0 if message is None else min(message.priority, top)
                return (-priority, entry.position)

            return priority_order
        return _position

    def _drain_selective(self) -> None:
        """``drain`` for a selective queue: each consumer with credit in turn takes the
        first entry it may have; a higher-priority consumer that took one ends the round
        for lower-priority ones (they get messages while it is blocked)."""
        budget = DRAIN_BATCH
        rotate = not self.settings.single_active_consumer
        store = self.store
        while store.ready_count or self._held:
            delivered = False
            top: int | None = None
            for consumer in list(self._eligible_consumers()):
                if top is not None and consumer.priority < top:
                    break
                if not consumer.can_deliver():
                    continue
                entry = self._take_for(consumer)
                if entry is None:
                    continue
                delivered = True
                if not self._count_delivery(entry, consumer.no_ack):
                    continue  # the delivery limit took it
                if self._grouping:
                    self._note_group(consumer, entry)
                consumer.deliver(self, entry)
                top = consumer.priority
                if rotate:
                    self._rotate(consumer)
                budget -= 1
                if budget == 0:
                    if self.message_count and not self._drain_scheduled:
                        self._drain_scheduled = True
                        self.vhost.broker.call_soon(self._scheduled_drain)
                    return
            if not delivered or self.deleted:
                return

    def _rotate(self, consumer: Consumer) -> None:
        """Round-robin: ``consumer`` goes to the end of its priority group."""
        consumers = self.consumers
        try:
            i = consumers.index(consumer)
        except ValueError:  # it went while being delivered to (its connection failed)
            return
        j = i + 1
        n = len(consumers)
        while j < n and consumers[j].priority == consumer.priority:
            j += 1
        if j - 1 != i:
            consumers.insert(j, consumer)
            del consumers[i]

    def _take_for(self, consumer: Consumer) -> QueueEntry | None:
        """Remove and return the first ready entry ``consumer`` may take, moving the ones
        before it that it may not take from the store to ``_held`` (at most HOLD_LIMIT)."""
        held = self._held
        memo = self._selection.memo
        selector = getattr(consumer, "selector", None)
        write_pending = getattr(self.store, "write_pending", None)
        if write_pending is not None:
            # A durable store may hand out entries whose write (and so their final
            # position) is deferred; the memo keeps positions, so they must be final.
            write_pending()
        if held:
            start = 0
            last = memo.get(consumer)
            if last is not None and not isinstance(self.store, PriorityStore):
                start = bisect_right(held, last, key=_position)
            for index in range(start, len(held)):
                entry = held[index]
                if self._accepts(consumer, selector, entry):
                    del held[index]
                    return entry
            memo[consumer] = held[-1].position
        store = self.store
        key = self._held_key() if isinstance(store, PriorityStore) else None
        now: float | None = None
        while store.ready_count and len(held) < HOLD_LIMIT:
            entry = store.shift()
            if entry is None:
                return None
            if entry.expires_at is not None:
                if now is None:
                    now = _wall_clock()
                if entry.expires_at <= now:
                    self._dead_letter_entry(entry, "expired")
                    continue
            if self._accepts(consumer, selector, entry):
                return entry
            if key is None:
                held.append(entry)  # the store hands entries out in position order
            else:
                insort(held, entry, key=key)
            memo[consumer] = entry.position
            if entry.expires_at is not None and self._expiry_timer is None:
                self._schedule_expiry()
        return None

    def _accepts(self, consumer: Consumer, selector: Any, entry: QueueEntry) -> bool:
        message = entry.message
        if message is None:
            return True  # (a store always loads what it hands out)
        if selector is not None and not selector.matches(message):
            return False
        if self._grouping:
            group = _group_of(message)
            if group is not None:
                owner = self._selection.groups.get(group)
                if owner is not None and owner is not consumer:
                    return False
        return True

    def _note_group(self, consumer: Consumer, entry: QueueEntry) -> None:
        """A grouped message goes to ``consumer``: the group is (still) its own, or is
        closed by ``JMSXGroupSeq = -1``."""
        message = entry.message
        if message is None or not message.may_have_header(GROUP_HEADER):
            return  # the common case, decided without decoding anything
        group = _group_of(message)
        if group is None:
            return
        headers = message.headers or {}  # type: ignore[union-attr]
        if _closes_group(headers.get(GROUP_SEQUENCE_HEADER)):
            if self._selection.groups.pop(group, None) is not None:
                self._selection.memo.clear()  # its held messages may go to anyone now
            if not self._selection.groups:
                self._refresh_mode()
            return
        self._selection.groups[group] = consumer
        self._selective = True  # a pinned group: the selective dispatch from now on
        if not consumer.no_ack:
            self._selection.group_of_entry[entry] = group
            self._selection.group_unacked[group] = self._selection.group_unacked.get(group, 0) + 1

    def _group_entry_done(self, entry: QueueEntry) -> None:
        """A grouped delivery was acked, rejected or requeued; a draining group whose
        last unacked message this was is free again."""
        group = self._selection.group_of_entry.pop(entry, None)
        if group is None:
            return
        unacked = self._selection.group_unacked
        left = unacked[group] - 1
        if left:
            unacked[group] = left
            return
        del unacked[group]
        if self._selection.groups.get(group) is _DRAINING:
            del self._selection.groups[group]
            self._selection.memo.clear()
            self._refresh_mode()
            if self.consumers and not self._drain_scheduled and not self.deleted:
                self._drain_scheduled = True
                self.vhost.broker.call_soon(self._scheduled_drain)

    def get(self, no_ack: bool) -> QueueEntry | None:
        """basic.get: the next unexpired entry, or None."""
        self._reset_expires()
        store = self.store
        held = self._held
        while True:
            entry = held.pop(0) if held else store.shift()
            if entry is None:
                return None
            if entry.expires_at is not None and entry.expires_at <= _wall_clock():
                self._dead_letter_entry(entry, "expired")
                continue
            if self._count_delivery(entry, no_ack):
                return entry

    # --- settlement --------------------------------------------------------------------

    def settle_delivered(self, entry: QueueEntry) -> None:
        """A no-ack delivery went out: the entry is done."""
        if self.durable:
            self.vhost.broker.replicator.settled(self, entry, AUTO_ACKED)
        self.store.settle(entry)

    def ack(self, entry: QueueEntry) -> None:
        self.unacked_count -= 1
        self.ack_count += 1
        if self._selection.group_of_entry:
            self._group_entry_done(entry)
        if not self.deleted:
            if self.durable:
                self.vhost.broker.replicator.settled(self, entry, ACKED)
            try:
                self.store.settle(entry)
            except OSError as exc:  # the store keeps its memory state; the ack is retried
                self.vhost.broker.write_failed(self.store, exc)

    def ack_many(self, entries: list[QueueEntry]) -> None:
        """``ack`` of each entry (a subscriber's read of acknowledgements, protocols/mqtt):
        the same counters and store settles, with the counters updated once."""
        if self._selection.group_of_entry:
            for entry in entries:
                self.ack(entry)
            return
        count = len(entries)
        self.unacked_count -= count
        self.ack_count += count
        if self.deleted:
            return
        store = self.store
        settle = store.settle
        settled = self.vhost.broker.replicator.settled if self.durable else None
        settle_many = getattr(store, "settle_many", None)
        if settle_many is not None:  # a durable store: its deferred entries in one loop
            if settled is not None:
                for entry in entries:
                    settled(self, entry, ACKED)
                settled = None
            entries = settle_many(entries) or ()  # type: ignore[assignment]
        for entry in entries:
            if settled is not None:
                settled(self, entry, ACKED)
            try:
                settle(entry)
            except OSError as exc:  # the store keeps its memory state; the ack is retried
                self.vhost.broker.write_failed(store, exc)

    def reject(self, entry: QueueEntry, requeue: bool) -> None:
        self.unacked_count -= 1
        if self._selection.group_of_entry:
            self._group_entry_done(entry)
        if self.deleted:
            return
        if requeue:
            self._return([entry])
            self._after_requeue()
        else:
            self._dead_letter_entry(entry, "rejected")

    def requeue(self, entries: list[QueueEntry]) -> None:
        """Unacked entries of a closed channel come back, in their original order."""
        self.unacked_count -= len(entries)
        if self._selection.group_of_entry:
            for entry in entries:
                self._group_entry_done(entry)
        if self.deleted or not entries:
            return
        self._return(entries)
        self._after_requeue()

    def _after_requeue(self) -> None:
        # x-delivery-limit is enforced when the entry is next delivered (_count_delivery).
        if self.consumers:
            self.drain()

    def purge(self) -> int:
        count = self.store.purge()
        if self._held:
            count += len(self._held)
            self._release_held(settle=True)
        if self.durable:
            self.vhost.broker.replicator.cleared(self, PURGED, count)
        return count

    def delete_store(self) -> None:
        """The queue is being deleted: its store and every entry in it go."""
        if self.durable:
            self.vhost.broker.replicator.cleared(self, DELETED, self.message_count)
        self._held.clear()
        self.store.delete()

    def apply_settings(self, settings: QueueSettings) -> None:
        """Take new effective settings now (a policy was set, changed or cleared).

        A lower ``max-length`` drops from the head at once when overflow is drop-head and
        keeps what is there otherwise (as RabbitMQ 3.10 does); a new ``message-ttl``
        applies to messages published from now on; ``expires`` restarts its lease.
        """
        old = self.settings
        self.settings = settings
        self._limited = settings.queue_type == "quorum" or settings.delivery_limit is not None
        if settings.expires != old.expires:
            self._cancel_expires()
            self._reset_expires()
        if settings.overflow == "drop-head" and (
            settings.max_length is not None or settings.max_length_bytes is not None
        ):
            self._enforce_drop_head()

    # --- expiry ------------------------------------------------------------------------

    def _schedule_expiry(self) -> None:
        head = self.store.peek()
        deadline = None if head is None else head.expires_at
        if self._held:  # held entries are the head too (selected consumers)
            held_deadline = self._held_deadline()
            if held_deadline is not None and (deadline is None or held_deadline < deadline):
                deadline = held_deadline
        if deadline is None:
            return
        # A wall-clock step makes this fire early or late; _expire_head re-checks the
        # head against the clock and re-arms, so an early firing costs one extra timer.
        delay = max(0.0, deadline - _wall_clock())
        self._expiry_timer = self.vhost.broker.call_later(delay, self._expire_head)

    def _arm_recovered_expiry(self) -> None:
        """A durable queue recovered with deadlines arms its timer now (no client needed)."""
        store = self.store
        if isinstance(store, PriorityStore):
            # A priority queue's index is rebuilt from its log before this queue object
            # exists and keeps no deadlines for unloaded records; its log's recovery scan
            # says whether any record had one (peek then loads the head and reads it).
            log_store = store.log_store
            recovered = False
            if log_store is not None and hasattr(log_store, "queue_ttl_ms"):
                log_store.queue_ttl_ms = self.settings.message_ttl
                recovered = log_store.recovered_deadlines and store.ready_count > 0
        else:
            recovered = False
            if hasattr(store, "queue_ttl_ms"):  # the segment log (storage.queue_store)
                store.queue_ttl_ms = self.settings.message_ttl
                recovered = store.recovered_deadlines and store.ready_count > 0
        if recovered and self._expiry_timer is None:
            self._schedule_expiry()

    def _expire_head(self) -> None:
        self._expiry_timer = None
        if self.deleted:
            return
        now = _wall_clock()
        store = self.store
        expired = 0
        while expired < 4096:  # capped; the timer is re-armed below
            head = store.peek()
            if head is None or head.expires_at is None or head.expires_at > now:
                break
            entry = store.shift()
            assert entry is not None
            self._dead_letter_entry(entry, "expired")
            expired += 1
        if self._held:
            # Held entries nobody selected expire here (at most HOLD_LIMIT to look at).
            kept = []
            for entry in self._held:
                if entry.expires_at is not None and entry.expires_at <= now:
                    self._dead_letter_entry(entry, "expired")
                else:
                    kept.append(entry)
            self._held = kept
            if not kept:
                self._refresh_mode()
        if store.ready_count or self._held:
            self._schedule_expiry()

    def _reset_expires(self) -> None:
        expires = self.settings.expires
        if expires is None or self.consumers:
            return
        self._cancel_expires()
        self._expires_timer = self.vhost.broker.call_later(expires / 1000.0, self._expired_unused)

    def _cancel_expires(self) -> None:
        if self._expires_timer is not None:
            self._expires_timer.cancel()
            self._expires_timer = None

    def touch(self) -> None:
        """queue.declare / basic.get count as use (x-expires lease)."""
        self._reset_expires()

    def _expired_unused(self) -> None:
        self._expires_timer = None
        if not self.deleted and not self.consumers:
            self.vhost.delete_queue(self)

    # --- dead-lettering ----------------------------------------------------------------

    def _dead_letter_entry(self, entry: QueueEntry, reason: str) -> None:
        """The entry leaves for good (``reason`` is RabbitMQ's x-death reason, which is
        also the replicator's settle reason); dead-lettered first, so the copy is
        appended to the dead-letter queue before the original is settled here."""
        message = entry.message
        if message is not None:
            self._dead_letter_message(message, reason)
        if self.durable:
            self.vhost.broker.replicator.settled(self, entry, reason)
        self.store.settle(entry)

    def _dead_letter_message(self, message: Message, reason: str) -> None:
        dlx = self.settings.dead_letter_exchange
        if dlx is None:
            return
        headers = dict(message.headers or {})
        deaths = [dict(d) for d in headers.get("x-death", []) if isinstance(d, dict)]
        routing_keys = [message.routing_key]
        cc = headers.get("CC")
        if isinstance(cc, list):
            routing_keys.extend(k for k in cc if isinstance(k, str))
        for i, death in enumerate(deaths):
            if death.get("queue") == self.name and death.get("reason") == reason:
                death["count"] = int(death.get("count", 1)) + 1
                death["time"] = Timestamp(int(time.time()))
                deaths.insert(0, deaths.pop(i))
                break
        else:
            death = {
                "count": 1,
                "reason": reason,
                "queue": self.name,
                "time": Timestamp(int(time.time())),
                "exchange": message.exchange,
                "routing-keys": routing_keys,
            }
            if message.expiration_ms is not None:
                death["original-expiration"] = str(message.expiration_ms)
            deaths.insert(0, death)
        headers["x-death"] = deaths
        if "x-first-death-reason" not in headers:
            headers["x-first-death-reason"] = reason
            headers["x-first-death-queue"] = self.name
            headers["x-first-death-exchange"] = message.exchange
        headers["x-last-death-reason"] = reason
        headers["x-last-death-queue"] = self.name
        headers["x-last-death-exchange"] = message.exchange
        routing_key = self.settings.dead_letter_routing_key
        # A new message sharing the body: new headers, no expiration (RabbitMQ removes it
        # so the dead letter does not expire again), everything else kept.
        dead = message.derive(
            exchange=dlx,
            routing_key=routing_key or message.routing_key,
            headers=headers,
            expiration_ms=None,
        )
        # Cycle protection (RabbitMQ): a message that would come back to a queue it already
        # died in is dropped, unless a rejection happened along the way.
        rejected_somewhere = any(d.get("reason") == "rejected" for d in deaths)
        keys = [routing_key] if routing_key is not None else routing_keys
        self.vhost.dead_letter_publish(
            dead, dlx, keys, None if rejected_somewhere else {d.get("queue") for d in deaths}
        )

    # --- lifecycle ---------------------------------------------------------------------

    def release_publishers(self) -> None:
        """Publishers paused for this queue's sake may read again."""
        if self.throttled_publishers:
            publishers, self.throttled_publishers = self.throttled_publishers, set()
            for publisher in publishers:
                publisher.unthrottle(self)

    def cancel_timers(self) -> None:
        self.release_publishers()
        if self._expiry_timer is not None:
            self._expiry_timer.cancel()
            self._expiry_timer = None
        self._cancel_expires()

    def __repr__(self) -> str:
        return f"<Queue {self.vhost.name}/{self.name} ready={self.message_count}>"
