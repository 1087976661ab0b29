"""A virtual host: its exchanges, queues and bindings, and routing between them.

Every operation here is protocol-neutral; errors are raised as ``CoreError`` with a
symbolic kind (``not_found``, ``precondition_failed``, ``access_refused``,
``resource_locked``) that each adapter maps to its own wire answer.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from .exchange import EXCHANGE_CLASSES, Binding, Exchange
from .message import Message
from .policy import Policy, alternate_exchange, select
from .queue import Queue, QueueArgumentError, QueueSettings
from .stream import StreamQueue, StreamSettings, check_stream_declare

if TYPE_CHECKING:
    from .broker import BrokerCore as Broker

PREDECLARED = (
    ("amq.direct", "direct"),
    ("amq.fanout", "fanout"),
    ("amq.topic", "topic"),
    ("amq.headers", "headers"),
    ("amq.match", "headers"),
    ("amq.rabbitmq.trace", "topic"),
)
REPLY_TO = "amq.rabbitmq.reply-to"
REPLY_TO_PREFIX = "amq.rabbitmq.reply-to."
# Classic-queue arguments RabbitMQ 3.10.8 refuses on a quorum queue (406).
QUORUM_INVALID_ARGUMENTS = frozenset({"x-max-priority", "x-queue-mode", "x-queue-version", "x-queue-master-locator"})


class CoreError(Exception):
    def __init__(self, kind: str, text: str) -> None:
        super().__init__(text)
        self.kind = kind
        self.text = text


class VirtualHost:
    def __init__(self, broker: Broker, name: str) -> None:
        self.broker = broker
        self.name = name
        self.exchanges: dict[str, Exchange] = {}
        self.queues: dict[str, Queue] = {}
        # Policies by name (core/policy.py); user policies and operator policies are
        # separate namespaces, as in RabbitMQ.
        self.policies: dict[str, Policy] = {}
        self.operator_policies: dict[str, Policy] = {}
        self.default_exchange = EXCHANGE_CLASSES["direct"](name, "", durable=True)
        self.exchanges[""] = self.default_exchange
        for ex_name, ex_type in PREDECLARED:
            self.exchanges[ex_name] = EXCHANGE_CLASSES[ex_type](
                name, ex_name, durable=True, internal=ex_name == "amq.rabbitmq.trace"
            )

    # --- exchanges ---------------------------------------------------------------------

    def get_exchange(self, name: str) -> Exchange:
        exchange = self.exchanges.get(name)
        if exchange is None:
            raise CoreError("not_found", f"no exchange '{name}' in vhost '{self.name}'")
        return exchange

    def declare_exchange(
        self,
        name: str,
        type_: str,
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> tuple[Exchange, bool]:
        """Declare; returns (exchange, created)."""
        arguments = arguments or {}
        existing = self.exchanges.get(name)
        if existing is not None:
            if existing.type != type_:
                raise CoreError(
                    "precondition_failed",
                    f"inequivalent arg 'type' for exchange '{name}' in vhost '{self.name}': "
                    f"received '{type_}' but current is '{existing.type}'",
                )
            self._check_equivalent_flags(
                "exchange",
                name,
                (
                    ("durable", existing.durable, durable),
                    ("auto_delete", existing.auto_delete, auto_delete),
                    ("internal", existing.internal, internal),
                ),
            )
            self._check_equivalent_args(
                "exchange", name, existing.arguments, arguments, ("alternate-exchange",)
            )
            return existing, False
        cls = EXCHANGE_CLASSES.get(type_)
        if cls is None:
            raise CoreError("command_invalid", f"unknown exchange type '{type_}'")
        exchange = cls(
            self.name,
            name,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
        self.exchanges[name] = exchange
        if self.policies:
            self._apply_exchange_policy(exchange)
        if durable:
            self.broker.definitions_changed("exchange", self, exchange)
        return exchange, True

    def _check_equivalent_flags(
        self, kind: str, name: str, flags: tuple[tuple[str, bool, bool], ...]
    ) -> None:
        """Redeclaring with different flags is 406, in RabbitMQ's words."""
        for field, have, want in flags:
            if have != want:
                raise CoreError(
                    "precondition_failed",
                    f"inequivalent arg '{field}' for {kind} '{name}' in vhost '{self.name}': "
                    f"received '{str(want).lower()}' but current is '{str(have).lower()}'",
                )

    def _check_equivalent_args(
        self,
        kind: str,
        name: str,
        have: dict[str, Any],
        want: dict[str, Any],
        keys: tuple[str, ...] | None,
    ) -> None:
        names = keys if keys is not None else tuple(sorted(set(have) | set(want)))
        for key in names:
            if have.get(key) != want.get(key):
                raise CoreError(
                    "precondition_failed",
                    f"inequivalent arg '{key}' for {kind} '{name}' in vhost '{self.name}': "
                    f"received {_fmt(want.get(key))} but current is {_fmt(have.get(key))}",
                )

    def delete_exchange(self, name: str, if_unused: bool = False) -> None:
        exchange = self.get_exchange(name)
        # RabbitMQ counts only the bindings *from* the exchange as use: one that is only
        # a destination is deleted with if-unused, its incoming bindings with it.
        if if_unused and exchange.bindings:
            raise CoreError(
                "precondition_failed", f"exchange '{name}' in vhost '{self.name}' in use"
            )
        self._remove_exchange(exchange)

    def _remove_exchange(self, exchange: Exchange) -> None:
        exchange.deleted = True
        self.broker.retire_counts(exchange)
        self.exchanges.pop(exchange.name, None)
        for other in list(self.exchanges.values()):
            if other.remove_destination(exchange):
                self._maybe_auto_delete(other)
        exchange.bindings.clear()
        if exchange.durable:
            self.broker.definitions_changed("exchange-deleted", self, exchange)

    def _maybe_auto_delete(self, exchange: Exchange) -> None:
        if exchange.auto_delete and not exchange.bindings and exchange.name in self.exchanges:
            self._remove_exchange(exchange)

    # --- queues ------------------------------------------------------------------------

    def get_queue(self, name: str) -> Queue:
        queue = self.queues.get(name)
        if queue is None:
            raise CoreError("not_found", f"no queue '{name}' in vhost '{self.name}'")
        return queue

    def declare_queue(
        self,
        name: str,
        *,
        durable: bool = False,
        exclusive_owner: Any = None,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
        check_type: bool = True,
    ) -> tuple[Queue, bool]:
        """``check_type=False`` only for recovery: a queue stored by an older version
        that accepted it comes back as it was rather than failing the start."""
        arguments = arguments or {}
        if check_type and (not name or name not in self.queues):
            self._check_queue_type(name, durable, exclusive_owner is not None, auto_delete, arguments)
        if not name:
            name = "amq.gen-" + uuid.uuid4().bytes.hex()[:22]
        existing = self.queues.get(name)
        if existing is not None:
            self.check_exclusive(existing, exclusive_owner)
            self._check_equivalent_flags(
                "queue",
                name,
                (
                    ("durable", existing.durable, durable),
                    ("exclusive", existing.exclusive, exclusive_owner is not None),
                    ("auto_delete", existing.auto_delete, auto_delete),
                ),
            )
            self._check_queue_args(existing, arguments)
            existing.touch()
            return existing, False
        if arguments.get("x-queue-type") == "stream":
            return self._declare_stream(name, arguments), True
        try:
            queue = Queue(
                self,
                name,
                durable=durable,
                exclusive_owner=exclusive_owner,
                auto_delete=auto_delete,
                arguments=arguments,
                store=self.broker.make_store(self.name, name, durable, arguments),
            )
        except QueueArgumentError as exc:
            raise CoreError("precondition_failed", str(exc)) from None
        self.queues[name] = queue
        if self.policies or self.operator_policies:
            self._apply_queue_policy(queue)
        self.default_exchange.add_binding(Binding("", queue, name, {}))
        if durable:
            self.broker.definitions_changed("queue", self, queue)
        return queue, True

    def _declare_stream(self, name: str, arguments: dict[str, Any]) -> Queue:
        """A new stream (core/stream.py): one StreamLog in the data directory."""
        storage = self.broker.storage
        if storage is None:
            raise CoreError(
                "precondition_failed",
                f"stream '{name}' in vhost '{self.name}' needs a data directory (durable storage)",
            )
        try:
            settings = StreamSettings(arguments, f"for queue '{name}' in vhost '{self.name}'")
        except QueueArgumentError as exc:
            raise CoreError("precondition_failed", str(exc)) from None
        stream = StreamQueue(self, name, storage.stream_log(self.name, name, settings), arguments=arguments)
        self.queues[name] = stream  # type: ignore[assignment]
        self.default_exchange.add_binding(Binding("", stream, name, {}))  # type: ignore[arg-type]
        self.broker.definitions_changed("queue", self, stream)
        return stream  # type: ignore[return-value]

    def _check_queue_type(
        self, name: str, durable: bool, exclusive: bool, auto_delete: bool, arguments: dict[str, Any]
    ) -> None:
        """Queue types are never silently downgraded: a quorum queue refuses what
        RabbitMQ 3.10.8's quorum queues refuse, in the same order and words (checked
        against it: tests/integration/test_queue_types.py), and a stream is refused
        until streams exist rather than served as a classic queue."""
        queue_type = arguments.get("x-queue-type", "classic")
        if queue_type == "classic":
            return
        where = f"for queue '{name}' in vhost '{self.name}'"
        if not isinstance(queue_type, str):
            raise CoreError(
                "precondition_failed",
                f"invalid arg 'x-queue-type' {where}: {{unacceptable_type,{type(queue_type).__name__}}}",
            )
        if queue_type == "stream":
            try:
                check_stream_declare(name, self.name, durable, exclusive, auto_delete, arguments)
            except QueueArgumentError as exc:
                raise CoreError("precondition_failed", str(exc)) from None
            return
        if queue_type != "quorum":
            raise CoreError(
                "precondition_failed", f"invalid arg 'x-queue-type' {where}: \"unsupported queue type '{queue_type}'\""
            )
        if not name:
            raise CoreError(
                "precondition_failed", "Cannot declare a server-named queue for type rabbit_quorum_queue"
            )
        for key in arguments:
            if key in QUORUM_INVALID_ARGUMENTS:
                raise CoreError(
                    "precondition_failed", f"invalid arg '{key}' {where} of queue type rabbit_quorum_queue"
                )
        for refused, prop in ((auto_delete, "auto-delete"), (exclusive, "exclusive-owner"), (not durable, "non-durable")):
            if refused:
                raise CoreError("precondition_failed", f"invalid property '{prop}' {where}")

    def _check_queue_args(self, queue: Queue, arguments: dict[str, Any]) -> None:
        have = queue.arguments
        for key in sorted(set(have) | set(arguments)):
            if key == "x-queue-type" and {
                have.get(key, "classic"),
                arguments.get(key, "classic"),
            } == {"classic"}:
                continue
            if have.get(key) != arguments.get(key):
                raise CoreError(
                    "precondition_failed",
                    f"inequivalent arg '{key}' for queue '{queue.name}' in vhost '{self.name}': "
                    f"received {_fmt(arguments.get(key))} but current is {_fmt(have.get(key))}",
                )

    def check_exclusive(self, queue: Queue, owner: Any) -> None:
        if queue.exclusive_owner is not None and queue.exclusive_owner is not owner:
            raise CoreError(
                "resource_locked",
                f"cannot obtain exclusive access to locked queue '{queue.name}' in vhost '{self.name}'. "
                "It could be originally declared on another connection or the exclusive property "
                "value does not match that of the original declaration.",
            )

    def delete_queue(self, queue: Queue, if_unused: bool = False, if_empty: bool = False) -> int:
        if queue.deleted:
            return 0
        if if_unused and queue.consumers:
            raise CoreError(
                "precondition_failed", f"queue '{queue.name}' in vhost '{self.name}' in use"
            )
        if if_empty and queue.message_count:
            raise CoreError(
                "precondition_failed", f"queue '{queue.name}' in vhost '{self.name}' not empty"
            )
        count = queue.message_count
        queue.deleted = True
        self.broker.retire_counts(queue)
        queue.cancel_timers()
        self.queues.pop(queue.name, None)
        for exchange in list(self.exchanges.values()):
            if exchange.remove_destination(queue):
                self._maybe_auto_delete(exchange)
        for consumer in list(queue.consumers):
            consumer.cancelled_by_server(queue)
        queue.consumers.clear()
        queue.delete_store()
        if queue.durable:
            self.broker.definitions_changed("queue-deleted", self, queue)
        return count

    # --- policies ----------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> bool:
        """Add or replace a policy and re-apply every policy at once; True if it is new."""
        table = self.operator_policies if policy.operator else self.policies
        created = policy.name not in table
        table[policy.name] = policy
        self.broker.definitions_changed("policy", self, policy)
        self.apply_policies()
        return created

    def clear_policy(self, name: str, operator: bool = False) -> None:
        table = self.operator_policies if operator else self.policies
        policy = table.pop(name, None)
        if policy is None:
            raise CoreError("not_found", f"no {'operator ' if operator else ''}policy '{name}' in vhost '{self.name}'")
        self.broker.definitions_changed("policy-deleted", self, policy)
        self.apply_policies()

    def apply_policies(self) -> None:
        """Recompute which policy governs every queue and exchange (policy changes are
        rare; this walks the vhost once)."""
        for queue in list(self.queues.values()):
            self._apply_queue_policy(queue)
        for exchange in self.exchanges.values():
            self._apply_exchange_policy(exchange)

    def _apply_queue_policy(self, queue: Queue) -> None:
        policy = select(self.policies.values(), "queues", queue.name)
        operator = select(self.operator_policies.values(), "queues", queue.name)
        if policy is queue.policy and operator is queue.operator_policy and policy is None and operator is None:
            return
        queue.policy = policy
        queue.operator_policy = operator
        queue.apply_settings(QueueSettings.merged(queue.arguments, policy, operator))

    def _apply_exchange_policy(self, exchange: Exchange) -> None:
        if not exchange.name:
            return  # the default exchange takes no policy
        policy = select(self.policies.values(), "exchanges", exchange.name)
        exchange.policy = policy  # type: ignore[attr-defined]
        exchange.alternate_exchange = alternate_exchange(exchange.arguments, policy)

    # --- bindings ----------------------------------------------------------------------

    def bind(
        self,
        source_name: str,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: dict[str, Any],
    ) -> None:
        source = self.get_exchange(source_name)
        if source is self.default_exchange:
            raise CoreError("access_refused", "operation not permitted on the default exchange")
        created = source.add_binding(Binding(source.name, destination, routing_key, arguments))
        if created and source.durable and destination.durable:
            self.broker.definitions_changed(
                "binding", self, (source, destination, routing_key, arguments)
            )

    def unbind(
        self,
        source_name: str,
        destination: Queue | Exchange,
        routing_key: str,
        arguments: dict[str, Any],
        owner: Any = None,
    ) -> None:
        """Remove a binding; idempotent, as RabbitMQ 3.10's binding removal is.

        A missing source (or a binding that is not there) is not an error: clients tear
        down in any order.  The exclusive-queue check applies only when there is a
        binding to remove (RabbitMQ runs it inside the removal).
        """
        if not source_name:
            raise CoreError("access_refused", "operation not permitted on the default exchange")
        source = self.exchanges.get(source_name)
        if source is None:
            return
        if (
            owner is not None
            and destination.is_queue
            and Binding(source_name, destination, routing_key, arguments).key in source.bindings
        ):
            self.check_exclusive(destination, owner)  # type: ignore[arg-type]
        removed = source.remove_binding(destination, routing_key, arguments)
        if removed is not None:
            if source.durable and destination.durable:
                self.broker.definitions_changed(
                    "binding-deleted", self, (source, destination, routing_key, arguments)
                )
            self._maybe_auto_delete(source)

    def bindings(self) -> list[Binding]:
        return [b for ex in self.exchanges.values() for b in ex.bindings.values()]

    # --- routing -----------------------------------------------------------------------

    def route(
        self, exchange: Exchange, message: Message, extra_keys: list[str] | None = None
    ) -> list[Queue]:
        """Queues a message goes to: e2e bindings followed, alternate exchange applied."""
        if extra_keys is None and not exchange.exchange_destinations:
            # Fast path: no exchange-to-exchange bindings; each type's route() already
            # returns every queue once.  The alternate exchange only matters when empty.
            first = exchange.route(message.routing_key, message)
            if first or exchange.alternate_exchange is None:
                return first
        keys = [message.routing_key] + (extra_keys or [])
        result: list[Queue] = []
        seen_queues: set[int] = set()
        seen_exchanges: set[int] = set()
        self._route_into(exchange, keys, message, result, seen_queues, seen_exchanges)
        return result

    def _route_into(
        self,
        exchange: Exchange,
        keys: list[str],
        message: Message,
        result: list[Queue],
        seen_queues: set[int],
        seen_exchanges: set[int],
    ) -> None:
        if id(exchange) in seen_exchanges:
            return
        seen_exchanges.add(id(exchange))
        before = len(result)
        for key in keys:
            for dest in exchange.route(key, message):
                if dest.is_queue:
                    if id(dest) not in seen_queues:
                        seen_queues.add(id(dest))
                        result.append(dest)
                else:
                    self._route_into(dest, keys, message, result, seen_queues, seen_exchanges)
        if len(result) == before:
            alternate = exchange.alternate_exchange
            if alternate is not None:
                target = self.exchanges.get(alternate)
                if target is not None:
                    self._route_into(target, keys, message, result, seen_queues, seen_exchanges)

    def dead_letter_publish(
        self, message: Message, exchange_name: str, keys: list[str], exclude: set[Any] | None
    ) -> None:
        exchange = self.exchanges.get(exchange_name)
        if exchange is None:
            return  # RabbitMQ drops dead letters for a missing DLX
        result: list[Queue] = []
        self._route_into(exchange, keys, message, result, set(), set())
        for queue in result:
            if exclude is not None and queue.name in exclude:
                continue
            queue.publish(message)
        if message.persistent and any(q.durable for q in result):
            self.broker.request_sync()

    # --- connection cleanup ------------------------------------------------------------

    def owner_closed(self, owner: Any) -> None:
        for queue in [q for q in self.queues.values() if q.exclusive_owner is owner]:
            self.delete_queue(queue)


def _fmt(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, str):
        return f"'{value}'"
    return f"'{value}'" if not isinstance(value, bool) else f"'{str(value).lower()}'"
