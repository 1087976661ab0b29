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
from .queue import Queue, QueueArgumentError

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
        if if_unused and (exchange.bindings or self._is_binding_destination(exchange)):
            raise CoreError(
                "precondition_failed", f"exchange '{name}' in vhost '{self.name}' in use"
            )
        self._remove_exchange(exchange)

    def _is_binding_destination(self, exchange: Exchange) -> bool:
        return any(
            b.destination is exchange
            for ex in self.exchanges.values()
            for b in ex.bindings.values()
        )

    def _remove_exchange(self, exchange: Exchange) -> None:
        exchange.deleted = True
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
    ) -> tuple[Queue, bool]:
        arguments = arguments or {}
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
        self.default_exchange.add_binding(Binding("", queue, name, {}))
        if durable:
            self.broker.definitions_changed("queue", self, queue)
        return queue, True

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
    ) -> None:
        source = self.get_exchange(source_name)
        if source is self.default_exchange:
            raise CoreError("access_refused", "operation not permitted on the default exchange")
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
