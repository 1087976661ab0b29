"""Exchanges and their routing tables.

Each exchange type answers one question: for this message, which bound destinations
match?  Destinations are queues or exchanges (exchange-to-exchange bindings); the
virtual host follows exchange destinations and applies the alternate exchange.

* direct  – dict routing key → destinations: O(1).
* fanout  – every destination.
* topic   – a trie over dot-separated words with ``*`` (one word) and ``#`` (zero or
  more), plus a bounded cache of routing key → result that any binding change clears.
* headers – ``x-match`` all / any / all-with-x / any-with-x over the message headers.
* x-delayed-message – RabbitMQ's delayed-message exchange: routes as the type named by
  its ``x-delayed-type`` argument (an inner exchange of that type holds the bindings);
  a publish with an ``x-delay`` header is held by the scheduler first (core/scheduler.py).
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from .properties import Timestamp

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers", "x-delayed-message")


class Binding:
    __slots__ = ("source", "destination", "routing_key", "arguments")

    def __init__(self, source: str, destination: Any, routing_key: str, arguments: dict[str, Any]) -> None:
        self.source = source
        self.destination = destination  # Queue or Exchange
        self.routing_key = routing_key
        self.arguments = arguments

    @property
    def key(self) -> tuple[int, str, Any]:
        return (id(self.destination), self.routing_key, _freeze(self.arguments))


def _freeze(value: Any) -> Any:
    if isinstance(value, dict):
        return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
    if isinstance(value, list):
        return tuple(_freeze(v) for v in value)
    return value


class Exchange:
    """Base: keeps the binding list; subclasses keep a lookup structure beside it."""

    type = ""
    is_queue = False
    # Set once a stream is bound (direct and fanout exchanges, whose route() needs no
    # message): the AMQP adapter's stream publish fast path is tried only then.
    stream_bound = False

    def __init__(
        self,
        vhost: str,
        name: str,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = durable
        self.auto_delete = auto_delete
        self.internal = internal
        self.arguments = arguments or {}
        self.bindings: dict[tuple[int, str, Any], Binding] = {}
        self.publish_count = 0  # publish_in: messages published to this exchange
        self.publish_out_count = 0  # publish_out: (message, queue) deliveries routed from it
        self.deleted = False
        self.exchange_destinations = 0  # e2e bindings; 0 lets routing take the fast path
        alternate = self.arguments.get("alternate-exchange")
        self.alternate_exchange: str | None = alternate if isinstance(alternate, str) else None


    def add_binding(self, binding: Binding) -> bool:
        key = binding.key
        if key in self.bindings:
            return False
        self.bindings[key] = binding
        if not binding.destination.is_queue:
            self.exchange_destinations += 1
        self._added(binding)
        return True

    def remove_binding(self, destination: Any, routing_key: str, arguments: dict[str, Any]) -> Binding | None:
        binding = self.bindings.pop((id(destination), routing_key, _freeze(arguments)), None)
        if binding is not None:
            if not destination.is_queue:
                self.exchange_destinations -= 1
            self._removed(binding)
        return binding

    def remove_destination(self, destination: Any) -> list[Binding]:
        gone = [b for b in self.bindings.values() if b.destination is destination]
        for binding in gone:
            del self.bindings[binding.key]
            if not destination.is_queue:
                self.exchange_destinations -= 1
            self._removed(binding)
        return gone

    def route(self, routing_key: str, message: Any) -> list[Any]:
        """Destinations for a routing key (``message.headers`` decodes on demand)."""
        raise NotImplementedError

    def _added(self, binding: Binding) -> None:
        pass

    def _removed(self, binding: Binding) -> None:
        pass

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name!r}>"


class DirectExchange(Exchange):
    type = "direct"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._table: dict[str, list[Any]] = {}

    def _added(self, binding: Binding) -> None:
        dests = self._table.setdefault(binding.routing_key, [])
        if binding.destination not in dests:  # same key bound twice with other arguments
            dests.append(binding.destination)
        if getattr(binding.destination, "is_stream", False):
            self.stream_bound = True

    def _removed(self, binding: Binding) -> None:
        dests = self._table.get(binding.routing_key)
        if dests is None:
            return
        if any(b.destination is binding.destination and b.routing_key == binding.routing_key for b in self.bindings.values()):
            return
        dests.remove(binding.destination)
        if not dests:
            del self._table[binding.routing_key]

    def route(self, routing_key: str, message: Any) -> list[Any]:
        return self._table.get(routing_key, _EMPTY)


_EMPTY: list[Any] = []


class FanoutExchange(Exchange):
    type = "fanout"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._destinations: list[Any] = []

    def _added(self, binding: Binding) -> None:
        if binding.destination not in self._destinations:
            self._destinations.append(binding.destination)
        if getattr(binding.destination, "is_stream", False):
            self.stream_bound = True

    def _removed(self, binding: Binding) -> None:
        if not any(b.destination is binding.destination for b in self.bindings.values()):
            self._destinations.remove(binding.destination)

    def route(self, routing_key: str, message: Any) -> list[Any]:
        return self._destinations


class _TrieNode:
    __slots__ = ("children", "destinations")

    def __init__(self) -> None:
        self.children: dict[str, _TrieNode] = {}
        self.destinations: list[Any] = []


def _words(key: str) -> list[str]:
    """An empty key has zero words (so ``*`` does not match it), as in RabbitMQ."""
    return key.split(".") if key else []


class TopicTrie:
    """Binding patterns as a trie of words; ``match`` walks it with ``*`` and ``#``."""

    def __init__(self) -> None:
        self.root = _TrieNode()

    def add(self, pattern: str, destination: Any) -> None:
        node = self.root
        for word in _words(pattern):
            node = node.children.setdefault(word, _TrieNode())
        node.destinations.append(destination)

    def remove(self, pattern: str, destination: Any) -> None:
        path = [self.root]
        words = _words(pattern)
        node = self.root
        for word in words:
            node = node.children[word]
            path.append(node)
        node.destinations.remove(destination)
        # prune empty branches
        for i in range(len(words) - 1, -1, -1):
            child = path[i + 1]
            if child.destinations or child.children:
                break
            del path[i].children[words[i]]

    def match(self, routing_key: str) -> list[Any]:
        words = _words(routing_key)
        found: list[Any] = []
        seen: set[int] = set()
        self._walk(self.root, words, 0, found, seen)
        return found

    def _walk(self, node: _TrieNode, words: list[str], i: int, found: list[Any], seen: set[int]) -> None:
        children = node.children
        hash_node = children.get("#")
        if hash_node is not None:
            # '#' matches zero or more words: try every split point.
            for j in range(i, len(words) + 1):
                self._walk(hash_node, words, j, found, seen)
        if i == len(words):
            for dest in node.destinations:
                if id(dest) not in seen:
                    seen.add(id(dest))
                    found.append(dest)
            return
        word = words[i]
        child = children.get(word)
        if child is not None:
            self._walk(child, words, i + 1, found, seen)
        star = children.get("*")
        if star is not None:
            self._walk(star, words, i + 1, found, seen)


class TopicExchange(Exchange):
    type = "topic"
    CACHE_LIMIT = 4096  # bounded: cleared wholesale when full or when bindings change

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._trie = TopicTrie()
        self._cache: dict[str, list[Any]] = {}

    def _added(self, binding: Binding) -> None:
        self._trie.add(binding.routing_key, binding.destination)
        self._cache.clear()

    def _removed(self, binding: Binding) -> None:
        self._trie.remove(binding.routing_key, binding.destination)
        self._cache.clear()

    def route(self, routing_key: str, message: Any) -> list[Any]:
        hit = self._cache.get(routing_key)
        if hit is None:
            hit = self._trie.match(routing_key)
            if len(self._cache) >= self.CACHE_LIMIT:
                self._cache.clear()
            self._cache[routing_key] = hit
        return hit


_NO_HEADERS: dict[str, Any] = {}  # read only


class HeadersExchange(Exchange):
    type = "headers"

    def route(self, routing_key: str, message: Any) -> list[Any]:
        if not self.bindings:
            return _EMPTY
        headers = message.headers or _NO_HEADERS
        found: list[Any] = []
        for binding in self.bindings.values():
            if binding.destination in found:
                continue
            if headers_match(binding.arguments, headers):
                found.append(binding.destination)
        return found


def _type_class(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, Decimal):
        return "decimal"
    if isinstance(value, str | bytes):
        return "longstr"
    return type(value).__name__


def headers_match(arguments: dict[str, Any], headers: dict[str, Any]) -> bool:
    """RabbitMQ's rabbit_exchange_type_headers semantics."""
    mode = arguments.get("x-match", "all")
    if isinstance(mode, bytes):
        mode = mode.decode()
    with_x = mode in ("all-with-x", "any-with-x")
    want_all = mode in ("all", "all-with-x")
    matched_any = False
    for key, expected in arguments.items():
        if key == "x-match" or (key.startswith("x-") and not with_x):
            continue
        present = key in headers
        # A binding value of void matches on presence alone; otherwise type class and
        # value must both agree (rabbit_misc:type_class: True does not match 1).
        ok = present and (
            expected is None or (_type_class(headers[key]) == _type_class(expected) and headers[key] == expected)
        )
        if want_all and not ok:
            return False
        if ok:
            matched_any = True
            if not want_all:
                return True
    return want_all or matched_any


class DelayedMessageExchange(Exchange):
    """RabbitMQ's ``x-delayed-message`` exchange type (the delayed-message plugin).

    Routing is delegated to an inner exchange of the ``x-delayed-type`` type, which
    keeps the bindings' lookup structure; this object keeps the binding list like any
    exchange, so listing, deletion and persistence of bindings need nothing special.
    Holding a message back is not routing: ``Publisher.admit`` sees the ``x-delay``
    header and hands the message to the scheduler, which calls ``route`` (through the
    publish path) once it is due.  Declaration errors are the plugin's
    (``rabbit_exchange_type_delayed_message:validate``): 406 when ``x-delayed-type`` is
    missing or is ``x-delayed-message`` itself, 503 for an unknown type.  Redeclaring
    compares only what the inner type compares (``alternate-exchange``), as the plugin
    delegates ``assert_args_equivalence``.
    """

    type = "x-delayed-message"

    def __init__(self, vhost: str, name: str, *args: Any, **kwargs: Any) -> None:
        super().__init__(vhost, name, *args, **kwargs)
        from .vhost import CoreError  # vhost imports this module

        delayed_type = self.arguments.get("x-delayed-type")
        if isinstance(delayed_type, bytes):
            delayed_type = delayed_type.decode("utf-8", "replace")
        if delayed_type == self.type:
            raise CoreError(
                "precondition_failed",
                "Invalid argument, 'x-delayed-message' can't be used for 'x-delayed-type'",
            )
        if not isinstance(delayed_type, str):
            raise CoreError(
                "precondition_failed",
                "Invalid argument, 'x-delayed-type' must be an existing exchange type",
            )
        inner_class = EXCHANGE_CLASSES.get(delayed_type)
        if inner_class is None:
            raise CoreError("command_invalid", f"unknown exchange type '{delayed_type}'")
        self.delayed_type = delayed_type
        self.inner = inner_class(vhost, name, arguments=self.arguments)

    def _added(self, binding: Binding) -> None:
        self.inner.add_binding(binding)

    def _removed(self, binding: Binding) -> None:
        self.inner.remove_binding(binding.destination, binding.routing_key, binding.arguments)

    def route(self, routing_key: str, message: Any) -> list[Any]:
        return self.inner.route(routing_key, message)


EXCHANGE_CLASSES: dict[str, type[Exchange]] = {
    "direct": DirectExchange,
    "fanout": FanoutExchange,
    "topic": TopicExchange,
    "headers": HeadersExchange,
    "x-delayed-message": DelayedMessageExchange,
}
