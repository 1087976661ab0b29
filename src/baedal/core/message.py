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
(``__getattr__``, only reached while the slot is empty) asks the extension to set them
all, once; from then on they are plain slot reads.  So AMQP → AMQP pays nothing for the
fields it never looks at, and other protocols never see AMQP's shape.

Headers are lazy twice over.  ``encoded_headers`` is the headers in Baedal's typed-map
encoding (``core.properties.encode_table``); ``headers`` is the decoded mapping.  An
extension sets the encoded form (AMQP's field table is that encoding, so splitting the
block is a slice), a record stores and reads back the encoded form, and only code that
looks inside (headers exchange, dead-lettering, HTTP) pays for the dict.  A message built
with a dict encodes it only if a record or an adapter asks for the bytes.

A message built from neutral fields (``Message.build``: HTTP, a recovered record, a
dead letter) has every field set and an extension that carries only a protocol's
leftovers (AMQP's ``type``, ``app_id``...), or none.  An adapter delivering it encodes its
own wire form from the neutral fields (and caches it in its extension).

``headers`` is ``None`` when the message has none (which is not the same as an empty
mapping on the wire, and a round trip keeps the difference); code that only reads
headers uses ``message.headers or {}``.  Values are Baedal's typed values
(``core.properties``: ``str``, ``bytes``, ``int``, ``bool``, ``float``, ``Decimal``,
``Timestamp``, ``None``, lists and nested mappings).  Treat a message's headers as
read-only (it is shared by every queue): ``derive(headers=...)`` makes a changed copy.

Extensions: ``Extension`` is the interface; ``register_extension(tag, loader)`` lets an
adapter turn the opaque bytes a record stored back into its own extension object.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .properties import decode_table, encode_table

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

# The neutral fields besides headers, in the order ``set_fields`` takes them.
SCALAR_FIELDS = (
    "content_type",
    "content_encoding",
    "correlation_id",
    "reply_to",
    "message_id",
    "user_id",
    "timestamp",
)
NEUTRAL_FIELDS = (*SCALAR_FIELDS, "headers")
_SCALARS = frozenset(SCALAR_FIELDS)
_DERIVABLE = frozenset(
    (*NEUTRAL_FIELDS, "persistent", "priority", "expiration_ms", "published_at")
)


class Extension:
    """A protocol's own part of a message, opaque to the core and to storage.

    ``protocol`` tags the bytes ``leftovers()`` returns when a record stores the message;
    ``load_extension`` hands them back to the adapter registered for that tag.
    """

    __slots__ = ()
    protocol = ""

    def decode_fields(self, message: Message) -> None:
        """Set the scalar fields and ``encoded_headers`` of ``message`` (called once, on
        first use).  Only an extension that carries a protocol's complete wire form
        (AMQP's raw properties block) has anything to decode; the default is "none"."""
        message.set_fields()
        message.encoded_headers = None

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
        "encoded_headers",
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
    encoded_headers: bytes | None

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
        )
        message.headers = headers  # encoded only if asked (``encoded_headers``)
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
    ) -> None:
        """Set the scalar fields at once (``SCALAR_FIELDS`` order); for extensions and
        records, which set ``headers`` or ``encoded_headers`` themselves."""
        self.content_type = content_type
        self.content_encoding = content_encoding
        self.correlation_id = correlation_id
        self.reply_to = reply_to
        self.message_id = message_id
        self.user_id = user_id
        self.timestamp = timestamp

    def __getattr__(self, name: str) -> Any:
        # Reached only when a slot is unset: a neutral field not decoded yet.
        if name == "headers":
            raw = self.encoded_headers  # (sets the fields first if needed)
            headers = self.headers = None if raw is None else decode_table(raw)[0]
            return headers
        if name == "encoded_headers":
            try:
                headers = object.__getattribute__(self, "headers")
            except AttributeError:  # nothing decoded yet
                self._load_fields()
                return object.__getattribute__(self, "encoded_headers")
            raw = self.encoded_headers = None if headers is None else encode_table(headers)
            return raw
        if name in _SCALARS:
            self._load_fields()
            return object.__getattribute__(self, name)
        raise AttributeError(f"'Message' object has no attribute {name!r}")

    def _load_fields(self) -> None:
        extension = self.extension
        if extension is None:
            self.set_fields()
            self.encoded_headers = None
        else:
            extension.decode_fields(self)

    @property
    def size(self) -> int:
        return len(self.body)

    def fields(self) -> dict[str, Any]:
        """The neutral fields as a dict (decoding them if needed)."""
        return {name: getattr(self, name) for name in NEUTRAL_FIELDS}

    def derive(self, *, exchange: str | None = None, routing_key: str | None = None, **changes: Any) -> Message:
        """A new message sharing this body, with some neutral fields or flags changed
        (dead-lettering, CC/BCC, direct reply-to); ``changes`` name fields of ``build``
        (not ``extension``: the new message gets ``extension.derived()``)."""
        for name in changes:
            if name not in _DERIVABLE:
                raise TypeError(f"derive() got an unexpected field {name!r}")
        extension = self.extension
        message = Message(
            self.exchange if exchange is None else exchange,
            self.routing_key if routing_key is None else routing_key,
            self.body,
            changes.get("persistent", self.persistent),
            changes.get("priority", self.priority),
            changes.get("expiration_ms", self.expiration_ms),
            changes.get("published_at", self.published_at),
            None if extension is None else extension.derived(),
        )
        message.set_fields(*[changes.get(name, getattr(self, name)) for name in SCALAR_FIELDS])
        if "headers" in changes:
            message.headers = changes["headers"]
        else:  # unchanged: pass the encoded form on, decoding nothing
            message.encoded_headers = self.encoded_headers
        return message

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
