"""The protocol-neutral message and a queue's entry for it.

Theory of operation
-------------------
A ``Message`` is created once per publish and shared, never copied, by every queue it is
routed to (fan-out shares one body).  What is per queue (its position in that queue's
log, delivery count, expiry) lives in ``QueueEntry``.

A message has what every protocol has (AMQP 0-9-1, HTTP today; Kafka, STOMP and MQTT
later): exchange and routing key (a Kafka topic, an MQTT topic), the body, the flags the
core acts on at publish time (``persistent``, ``priority``, ``expiration_ms``), the
*neutral fields* (``NEUTRAL_FIELDS``: headers, content type and encoding, correlation
id, reply-to, message id, timestamp, user id) and an opaque per-protocol ``extension``.

The neutral fields are lazy.  The AMQP adapter creates a message from the publish frame
with only the publish-time flags and an extension holding the raw properties block; the
fields stay unset until something asks for one (headers exchange, CC/BCC, dead-lettering,
a record on disk, delivery over another protocol).  The first read of any of them
(``__getattr__``, only reached while the slot is empty) asks the extension to decode them
all, once; from then on they are plain slot reads.  So AMQP → AMQP pays nothing for the
fields it never looks at, and other protocols never see AMQP's shape.

A message built from neutral fields (``Message.build``: HTTP, a recovered record, a
dead letter) has every field set and an extension that carries only a protocol's
leftovers (AMQP's ``type``, ``app_id``...), or none.  An adapter delivering it encodes its
own wire form from the neutral fields (and caches it in its extension).

``headers`` is ``None`` when the message has none (which is not the same as an empty
mapping on the wire, and a round trip keeps the difference); code that only reads
headers uses ``message.headers or {}``.  Values are Baedal's typed values
(``core.properties``: ``str``, ``bytes``, ``int``, ``bool``, ``float``, ``Decimal``,
``Timestamp``, ``None``, lists and nested mappings).

Extensions: ``Extension`` is the interface; ``register_extension(tag, loader)`` lets an
adapter turn the opaque bytes a record stored back into its own extension object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

__all__ = [
    "Extension",
    "Message",
    "NEUTRAL_FIELDS",
    "QueueEntry",
    "StoredExtension",
    "load_extension",
    "parse_expiration",
    "register_extension",
]

# The lazily decoded neutral fields, in the order the record stores them.
NEUTRAL_FIELDS = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "user_id",
    "timestamp",
    "headers",
)
_NEUTRAL = frozenset(NEUTRAL_FIELDS)


class Extension:
    """A protocol's own part of a message, opaque to the core and to storage.

    ``protocol`` tags the bytes ``leftovers()`` returns when a record stores the message;
    ``load_extension`` hands them back to the adapter registered for that tag.
    """

    __slots__ = ()
    protocol = ""

    def decode_fields(self, message: Message) -> None:
        """Set every neutral field of ``message`` (called once, on first use).

        Only an extension that carries a protocol's complete wire form (AMQP's raw
        properties block) has anything to decode; the default is "no fields".
        """
        message.set_fields()

    def leftovers(self) -> bytes:
        """What a record keeps for this protocol besides the neutral fields."""
        return b""

    def derived(self) -> Extension | None:
        """The extension of a message derived from this one (new headers, a dead letter):
        the leftovers stay, any cached wire form of the old message does not."""
        return self


class StoredExtension(Extension):
    """Leftovers read back from a record for a protocol no adapter has registered."""

    __slots__ = ("protocol", "data")

    def __init__(self, protocol: str, data: bytes) -> None:
        self.protocol = protocol  # type: ignore[misc]
        self.data = data

    def leftovers(self) -> bytes:
        return self.data

    def __repr__(self) -> str:
        return f"<StoredExtension {self.protocol!r} {len(self.data)}B>"


_LOADERS: dict[str, Callable[[bytes], Extension]] = {}


def register_extension(tag: str, loader: Callable[[bytes], Extension]) -> None:
    """Adapters call this at import: ``loader(data)`` rebuilds their extension from a
    record's bytes (storage never interprets them)."""
    _LOADERS[tag] = loader


def load_extension(tag: str, data: bytes) -> Extension:
    loader = _LOADERS.get(tag)
    return loader(data) if loader is not None else StoredExtension(tag, data)


class Message:
    __slots__ = (
        "exchange",
        "routing_key",
        "body",
        "persistent",
        "priority",
        "expiration_ms",
        "published_at",
        "extension",
        # neutral fields: unset until first read (see the module docstring)
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "message_id",
        "user_id",
        "timestamp",
        "headers",
    )

    # Declared for type checkers; the slots above hold them.
    content_type: str | None
    content_encoding: str | None
    correlation_id: str | None
    reply_to: str | None
    message_id: str | None
    user_id: str | None
    timestamp: int | None
    headers: dict[str, Any] | None

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        body: bytes,
        persistent: bool = False,
        priority: int = 0,
        expiration_ms: int | None = None,
        published_at: float = 0.0,
        extension: Extension | None = None,
    ) -> None:
        # The publish hot path: only the publish-time flags, fields stay lazy.
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.persistent = persistent
        self.priority = priority
        self.expiration_ms = expiration_ms
        self.published_at = published_at
        self.extension = extension

    @classmethod
    def build(
        cls,
        exchange: str,
        routing_key: str,
        body: bytes,
        *,
        persistent: bool = False,
        priority: int = 0,
        expiration_ms: int | None = None,
        published_at: float = 0.0,
        extension: Extension | None = None,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
        content_encoding: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        user_id: str | None = None,
        timestamp: int | None = None,
    ) -> Message:
        """A message with every neutral field given (nothing left to decode)."""
        message = cls(
            exchange, routing_key, body, persistent, priority, expiration_ms, published_at, extension
        )
        message.set_fields(
            content_type,
            content_encoding,
            correlation_id,
            reply_to,
            message_id,
            user_id,
            timestamp,
            headers,
        )
        return message

    def set_fields(
        self,
        content_type: str | None = None,
        content_encoding: str | None = None,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        message_id: str | None = None,
        user_id: str | None = None,
        timestamp: int | None = None,
        headers: dict[str, Any] | None = None,
    ) -> None:
        """Set all neutral fields at once (``NEUTRAL_FIELDS`` order); for extensions."""
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.message_id = message_id
        self.user_id = user_id
        self.timestamp = timestamp
        self.headers = headers

    def __getattr__(self, name: str) -> Any:
        # Reached only when a slot is unset: a neutral field not decoded yet.
        if name not in _NEUTRAL:
            raise AttributeError(f"'Message' object has no attribute {name!r}")
        extension = self.extension
        if extension is None:
            self.set_fields()
        else:
            extension.decode_fields(self)
        return object.__getattribute__(self, name)

    @property
    def size(self) -> int:
        return len(self.body)

    def fields(self) -> dict[str, Any]:
        """The neutral fields as a dict (decoding them if needed)."""
        return {name: getattr(self, name) for name in NEUTRAL_FIELDS}

    def derive(self, *, exchange: str | None = None, routing_key: str | None = None, **changes: Any) -> Message:
        """A new message sharing this body, with some neutral fields or flags changed
        (dead-lettering, CC/BCC, direct reply-to); ``changes`` name fields of ``build``."""
        values = self.fields()
        values["persistent"] = self.persistent
        values["priority"] = self.priority
        values["expiration_ms"] = self.expiration_ms
        values["published_at"] = self.published_at
        extension = self.extension
        values["extension"] = None if extension is None else extension.derived()
        for name in changes:
            if name not in values:
                raise TypeError(f"derive() got an unexpected field {name!r}")
        values.update(changes)
        return Message.build(
            self.exchange if exchange is None else exchange,
            self.routing_key if routing_key is None else routing_key,
            self.body,
            **values,
        )

    def __repr__(self) -> str:
        return f"<Message {self.exchange!r}/{self.routing_key!r} {len(self.body)}B>"


def parse_expiration(value: str) -> int:
    """RabbitMQ accepts a non-negative integer string of milliseconds; anything else is 406."""
    if not value.isdigit():
        raise ValueError(f"invalid expiration {value!r}")
    return int(value)


class QueueEntry:
    """One message as held by one queue.

    ``position`` is the entry's identity in its queue: strictly increasing in publish
    order, so sorting by it restores the original order after requeues.  A disk-backed
    store uses it as the record's address (``segment << 32 | offset``).
    ``message`` may be ``None`` while the body lives only on disk (a store reloads it).
    """

    __slots__ = ("position", "message", "delivery_count", "expires_at", "size")

    def __init__(self, position: int, message: Message | None, size: int, expires_at: float | None = None) -> None:
        self.position = position
        self.message = message
        self.size = size
        self.delivery_count = 0
        self.expires_at = expires_at

    @property
    def redelivered(self) -> bool:
        return self.delivery_count > 0

    def __lt__(self, other: QueueEntry) -> bool:
        return self.position < other.position

    def __repr__(self) -> str:
        return f"<QueueEntry #{self.position} deliveries={self.delivery_count}>"
