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
a record on disk, delivery over another protocol).  The first read of any of them (a
property) asks the extension to set them all, once (``Extension.decode_fields``).  So AMQP → AMQP pays nothing for the
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
    "NO_FIELDS",
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
_UNSET: Any = object()  # a lazy value not computed yet
# The fields of a message that has none: one shared, read-only list (``adopt_fields``).
NO_FIELDS: list[Any] = [None, None, None, None, None, None, None, None]
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
        """Set the neutral fields of ``message`` with ``message.set_fields`` (called
        once, on first use).  Only an extension that carries a protocol's complete wire
        form (AMQP's raw properties block) has anything to decode; the default: none."""
        message.set_fields()

    def leftovers(self) -> bytes:
        """What a record keeps for this protocol besides the neutral fields."""
        return b""

    def plain(self, message: Message) -> bool:
        """True if ``message`` has no neutral fields and this extension no leftovers (its
        stream record needs no header but the exchange).  An adapter holding its wire
        form may answer from it in one call; the default asks the two questions."""
        return message.field_values() is NO_FIELDS and not self.leftovers()

    def derived(self) -> Extension | None:
        """The extension of a message derived from this one (new headers, a dead letter):
        the leftovers stay, any cached wire form of the old message does not."""
        return self

    def may_have_header(self, name: str) -> bool:
        """False only if the message certainly has no header ``name``, found without
        decoding the fields (an adapter holding its raw wire form can search it).  The
        default does not know: True."""
        return True


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
        # The neutral fields (see the module docstring): None until first read, then a
        # list of the SCALAR_FIELDS values followed by the encoded headers (or _UNSET
        # while only the dict exists).  A list in one slot, read through properties,
        # rather than a slot per field read through ``__getattr__``: a class with
        # ``__getattr__`` loses CPython's specialised slot reads on *every* attribute,
        # which costs the hot path more than the lazy fields save.
        "_fields",
        "_headers",  # the decoded headers, or _UNSET until asked for
    )

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
        fields: list[Any] | None = None,
        headers: Any = _UNSET,
    ) -> None:
        # The publish hot path: only the publish-time flags, fields stay lazy
        # (``fields``/``headers``: what ``adopt_fields_and_headers`` takes, at once).
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.persistent = persistent
        self.priority = priority
        self.expiration_ms = expiration_ms
        self.published_at = published_at
        self.extension = extension
        self._fields: list[Any] | None = fields
        self._headers: Any = headers

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
        message._fields = [
            content_type,
            content_encoding,
            correlation_id,
            reply_to,
            message_id,
            user_id,
            timestamp,
            _UNSET,  # encoded only if asked (``encoded_headers``)
        ]
        message._headers = headers
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
        encoded_headers: bytes | None = None,
    ) -> None:
        """Set every neutral field at once, the headers in their typed-map encoding
        (``SCALAR_FIELDS`` order); for extensions and records.  Strings may be given as
        their UTF-8 bytes (see ``field_values``)."""
        self._fields = [
            content_type,
            content_encoding,
            correlation_id,
            reply_to,
            message_id,
            user_id,
            timestamp,
            encoded_headers,
        ]

    def adopt_fields(self, fields: list[Any]) -> None:
        """Take ``fields`` (``SCALAR_FIELDS`` values, then the encoded headers) as this
        message's neutral fields, without copying; it may be shared read-only between
        messages (an extension's cache of a common wire form)."""
        self._fields = fields

    def adopt_fields_and_headers(self, fields: list[Any], headers: dict[str, Any] | None) -> None:
        """``adopt_fields`` plus ``headers``, the decoded form of ``fields[7]``, shared
        read-only the same way (an extension whose few header sets are constants: MQTT's
        ``x-mqtt-publish-qos``), so that reading the headers decodes nothing."""
        self._fields = fields
        self._headers = headers

    def _load_fields(self) -> list[Any]:
        extension = self.extension
        if extension is None:
            self._fields = NO_FIELDS
        else:
            extension.decode_fields(self)
        fields = self._fields
        assert fields is not None
        return fields

    def _string(self, index: int) -> str | None:
        fields = self._fields
        if fields is None:
            fields = self._load_fields()
        value = fields[index]
        if value.__class__ is bytes:  # still encoded (see ``field_values``): decode once
            value = fields[index] = value.decode("utf-8", "surrogateescape")
        return value

    def field_values(self) -> list[Any]:
        """Every neutral field in ``SCALAR_FIELDS`` order, then the encoded headers: one
        call for code that reads them all (a record, an adapter's wire form).  Read-only.

        A string field may still be its UTF-8 bytes (surrogate-escaped): extensions and
        records set strings as they find them, undecoded, and the properties decode on
        first read, so a message that only passes from a wire form to a record (or back)
        never builds a ``str``."""
        fields = self._fields
        if fields is None:  # _load_fields inlined: every persistent publish comes here
            extension = self.extension
            if extension is None:
                fields = self._fields = NO_FIELDS
            else:
                extension.decode_fields(self)
                fields = self._fields
                assert fields is not None
        if fields[7] is _UNSET:
            self.encoded_headers  # noqa: B018  (encodes the dict into fields[7])
        return fields

    @property
    def content_type(self) -> str | None:
        return self._string(0)

    @property
    def content_encoding(self) -> str | None:
        return self._string(1)

    @property
    def correlation_id(self) -> str | None:
        return self._string(2)

    @property
    def reply_to(self) -> str | None:
        return self._string(3)

    @property
    def message_id(self) -> str | None:
        return self._string(4)

    @property
    def user_id(self) -> str | None:
        return self._string(5)

    @property
    def timestamp(self) -> int | None:
        fields = self._fields
        return (self._load_fields() if fields is None else fields)[6]

    @property
    def encoded_headers(self) -> bytes | None:
        """The headers in Baedal's typed-map encoding (None: no headers)."""
        fields = self._fields
        if fields is None:
            fields = self._load_fields()
        raw = fields[7]
        if raw is _UNSET:  # built with a dict: encode it, once
            headers = self._headers
            raw = fields[7] = None if headers is None else encode_table(headers)
        return raw

    @property
    def headers(self) -> dict[str, Any] | None:
        """The headers as a mapping (decoded on first read; None: no headers)."""
        headers = self._headers
        if headers is _UNSET:
            raw = self.encoded_headers
            headers = self._headers = None if raw is None else decode_table(raw)[0]
        return headers

    @property
    def size(self) -> int:
        return len(self.body)

    def may_have_header(self, name: str) -> bool:
        """False only if the message certainly has no header ``name``: a cheap check
        for code that looks for one rare header on every message (message groups), so
        that a message whose fields are still undecoded stays so."""
        if self._fields is None and self.extension is not None:
            return self.extension.may_have_header(name)
        return True

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
        fields = [changes.get(name, getattr(self, name)) for name in SCALAR_FIELDS]
        if "headers" in changes:
            fields.append(_UNSET)
            message._headers = changes["headers"]
        else:  # unchanged: pass the encoded form on, decoding nothing
            fields.append(self.encoded_headers)
        message._fields = fields
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
