"""The protocol-neutral message and a queue's entry for it.

A ``Message`` is created once per publish and shared, never copied, by every queue it is
routed to (fan-out shares one body).  What is per queue (its position in that queue's
log, delivery count, expiry) lives in ``QueueEntry``.

``properties`` is the raw AMQP basic-properties block (see ``core.properties``); it is
decoded only when the broker needs a header.  ``persistent``, ``priority`` and
``expiration_ms`` are pulled out once at publish time by the adapter's fast scanner.
"""

from __future__ import annotations

from typing import Any

from .properties import BasicProperties, decode_properties, encode_properties


class Message:
    __slots__ = (
        "exchange",
        "routing_key",
        "properties",
        "body",
        "persistent",
        "priority",
        "expiration_ms",
        "published_at",
        "_decoded",
        "wire_names",
    )

    def __init__(
        self,
        exchange: str,
        routing_key: str,
        properties: bytes,
        body: bytes,
        persistent: bool = False,
        priority: int = 0,
        expiration_ms: int | None = None,
        published_at: float = 0.0,
    ) -> None:
        self.exchange = exchange
        self.routing_key = routing_key
        self.properties = properties
        self.body = body
        self.persistent = persistent
        self.priority = priority
        self.expiration_ms = expiration_ms
        self.published_at = published_at
        self._decoded: BasicProperties | None = None
        # Opaque per-protocol cache: the AMQP adapter keeps exchange + routing key
        # pre-encoded as short strings here so fan-out encodes them once.
        self.wire_names: bytes | None = None

    @property
    def size(self) -> int:
        return len(self.body)

    def decoded_properties(self) -> BasicProperties:
        """The decoded properties (cached).  Treat the result as read-only."""
        if self._decoded is None:
            self._decoded = decode_properties(self.properties)
        return self._decoded

    @property
    def headers(self) -> dict[str, Any]:
        return self.decoded_properties().headers or {}

    def with_properties(self, props: BasicProperties, *, exchange: str | None = None, routing_key: str | None = None) -> Message:
        """A new message sharing this body, with new properties (dead-lettering, reply-to)."""
        msg = Message(
            self.exchange if exchange is None else exchange,
            self.routing_key if routing_key is None else routing_key,
            encode_properties(props),
            self.body,
            persistent=props.delivery_mode == 2,
            priority=props.priority or 0,
            expiration_ms=_parse_expiration(props.expiration),
            published_at=self.published_at,
        )
        msg._decoded = props
        return msg

    def __repr__(self) -> str:
        return f"<Message {self.exchange!r}/{self.routing_key!r} {len(self.body)}B>"


def _parse_expiration(value: str | None) -> int | None:
    if value is None:
        return None
    try:
        ms = int(value)
    except ValueError:
        return None
    return ms if ms >= 0 else None


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
