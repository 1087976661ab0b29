"""The MQTT 3.1.1 / 5.0 listener on the protocol-neutral core.

Theory of operation
-------------------
MQTT is served the way RabbitMQ's MQTT plugin serves it, so MQTT and AMQP (and every
other protocol on the core) meet in the same exchange:

* **Publish.**  A PUBLISH goes through the one publish path (``core/publish.py``:
  ``Publisher.publish``) to ``amq.topic`` with the topic mapped to a routing key
  (``topics.py``: ``/`` ↔ ``.``).  QoS 1 and 2 messages are persistent.  The PUBACK
  (QoS 1) or PUBREC (QoS 2) is sent only once the message is as safe as an AMQP
  publisher confirm makes it (``Publisher.when_stored``: the group-commit fsync of the
  durable queues it reached, and of the retained store for a retained message).
  Acknowledgements leave in the order the PUBLISHes came (MQTT 4.6), so a later
  publish that needed no fsync waits behind an earlier one that does.
* **Subscribe.**  A session's subscriptions are bindings of ``amq.topic`` to the
  session's queues, one queue per granted QoS named as RabbitMQ names them
  (``mqtt-subscription-<client id>qos<N>``): durable for a persistent session (so the
  subscriptions and the QoS 1/2 messages published while the client is away survive a
  restart and a kill -9 in the core's own storage), exclusive and auto-delete for a
  clean one.  A subscription's options (the filter as given, QoS, MQTT 5.0 subscription
  identifier, no-local, retain-as-published) are kept in the binding's arguments, so a
  persistent session is rebuilt after a restart from the recovered bindings alone.  A
  shared subscription ``$share/<group>/<filter>`` is one durable queue per group and
  filter (``mqtt-share-<group>-<filter>``) consumed by every member (the core's
  round-robin splits the work); it lives while the group has a member (a persistent
  member's share is recorded in ``sessionstate.py``, so it survives a restart too).
* **Deliver.**  Each queue has one ``MQTTConsumer`` (the core's ``Consumer``) while the
  client is connected.  QoS 0 deliveries are settled when written; QoS 1/2 ones stay
  in the session's in-flight map under their packet id until PUBACK (or PUBREC) and go
  back to their queue (redelivered with DUP set) when the connection goes away.  The
  consumer has credit while the socket is writable and the in-flight count is below
  the client's Receive Maximum.
* **Retained messages** live in ``retained.py`` (an fsynced log under the data dir).
* **Wills** are published on an unclean close (no DISCONNECT, keep-alive expiry,
  protocol error, takeover), after the MQTT 5.0 will delay.

What the codec cannot check (it lacks the session) is checked here: the first packet is
a CONNECT and only the first, packet-id reuse, topic aliases, receive maximum, limits on
topic length and levels and on subscriptions per client.  Any violation closes the
connection (after a DISCONNECT with a reason code in 5.0); nothing else is touched.

The middle of a QoS 2 exchange of a persistent session (ids awaiting PUBREL from the
client, PUBRELs awaiting PUBCOMP) is kept in ``sessionstate.py`` so it survives a restart
too.

Output: packets are queued and written with one ``transport.write`` at the end of each
read, or by one ``call_soon`` per loop turn when produced outside a read (deliveries
caused by another client's PUBLISH, fsync completions).  64 KiB of queued output is
written at once, so the transport's high-water mark and ``pause_writing`` still stop a
queue draining into a client that does not read.

Per-message costs (issue 13, measured in docs/benchmarks.md with
``bench/micro/bench_mqtt_pipeline.py``):

* A PUBLISH without properties (every 3.1.1 one) becomes a ``Message`` with lazy neutral
  fields and an ``MQTTExtension`` shared by all such messages of the connection with the
  same QoS and retain flag; its only header, ``x-mqtt-publish-qos``, is a constant in both
  its encoded and decoded forms, so neither the core's header check nor a record encodes
  or decodes a table.  A topic's checks and routing key are remembered per connection.
* The PUBACKs (PUBRECs) of one read wait for one ``after_sync`` (``_request_sync``), as
  AMQP confirms do, and leave in one write; acknowledgements from a subscriber drain its
  queues once per read, not once per PUBACK.
* A delivery to a 3.1.1 client without per-subscription options is built from the
  topic's cached wire form (``codec.encode_publish``), inside ``MQTTConsumer.deliver``
  (``_deliver`` has the general case and fills the topic cache).
* A PUBLISH without properties is admitted with the topic-permission check alone (its
  one header can be neither CC/BCC nor a scheduling header); a subscriber's plain
  PUBACK of a QoS 1 delivery is settled in ``_received`` without ``dispatch``/``on_ack``;
  the codec splits a read into those packets in C when ``_speedups/_mqtt.c`` is built.

Idle connections: keep-alive and the CONNECT deadline are one sweep per listener every
``KEEP_ALIVE_TICK`` over buckets of connections by due tick (``MQTTServer.watch``), not a
``TimerHandle`` per connection; a read only stores the current tick.  Everything a
connection or session needs only once it publishes, subscribes or uses MQTT 5.0
features (publisher, maps, sets, buffers) is created then.  Plain-TCP listeners serve
their connections on the light epoll transport (``transport/epoll.py``: a descriptor and
a six-slot object per connection instead of an event-loop transport, ~1.1 KB less per
client under uvloop; ``MQTTConfig.light_transport``); the parser exists only while a
connection has something half-read or a topic cache, and fields an idle client leaves
at their default live in a side object (``_RARE_FIELDS``).  The per-client bytes are
listed in docs/benchmarks.md (issue 13, third pass).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import struct
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ...core.message import Extension, Message, QueueEntry, register_extension
from ...core.properties import encode_table
from ...core.publish import NEEDS_SYNC, REFUSED, REPLICATING, UNROUTABLE, Publisher
from ...core.vhost import CoreError
from ...transport import epoll
from ...transport.address import is_loopback
from . import codec
from .codec import (
    Ack,
    Connack,
    Connect,
    Disconnect,
    MQTTError,
    Packet,
    Parser,
    Publish,
    Suback,
    Subscribe,
    Unsuback,
    Unsubscribe,
    encode,
    encode_ack,
    encode_publish,
    encode_topic,
)
from .retained import RetainedStore
from .sessionstate import SessionStateStore
from .topics import filter_to_key, key_to_topic, matches, split_shared, topic_to_key

if TYPE_CHECKING:
    from ...core.broker import BrokerCore
    from ...core.queue import Queue
    from ...core.vhost import VirtualHost

log = logging.getLogger("baedal.mqtt")

EXCHANGE = "amq.topic"
_FLUSH_AT = 16 * 1024  # bytes of queued output written at once (see MQTTConnection._emit)
# PUBLISHes per bulk run (``_publish_run``).  A read can hold thousands; each run's
# PUBACKs wait for their own sync callback, which early release (storage/syncer.py)
# can run as soon as the subscribers have acked that run, and a run's deliveries reach
# the subscribers (``_FLUSH_AT``) while the rest of the read is still being handled:
# the publisher's window keeps moving instead of waiting for the whole read.
_RUN_MAX = 128
# codec.encode_ack(PUBACK, id) without the call (``_publish_run``: a run's PUBACKs)
_PUBACK_PACK = struct.Struct(">BBH").pack
_PUBACK_FIRST = codec.PUBACK << 4


@functools.lru_cache(maxsize=256)
def _publish_heads(topic_size: int) -> tuple[struct.Struct, struct.Struct, struct.Struct, struct.Struct]:
    """``deliver_many``'s packers of a short PUBLISH's fixed header and topic (and packet
    id): one-byte remaining length without and with an id, two-byte the same; one set
    per topic length, built once."""
    return (
        struct.Struct(f">BB{topic_size}s"),
        struct.Struct(f">BB{topic_size}sH"),
        struct.Struct(f">BBB{topic_size}s"),
        struct.Struct(f">BBB{topic_size}sH"),
    )
MAX_CLIENT_ID = 200  # bytes; the queue name mqtt-subscription-<id>qos<N> stays < 255
QOS_HEADER = "x-mqtt-publish-qos"  # as RabbitMQ's plugin marks MQTT-published messages
_CACHE_SIZE = 256  # topics and routing keys remembered per connection (dropped whole when full)
_wall_clock = time.time
KEEP_ALIVE_TICK = 0.5  # seconds between the listener's keep-alive sweeps (MQTTServer.watch)
_NO_LIMIT = codec.MAX_REMAINING_LENGTH + 5  # one shared int, not one per connection
_PUBACK = codec.PUBACK
_NO_IDS: frozenset[int] = frozenset()  # a session's awaiting_rel until its first QoS 2 PUBLISH


class _EmptyMap(dict):  # type: ignore[type-arg]
    """The one shared, empty stand-in for a connection's consumers and a session's
    subscriptions and in-flight map while it has none (an empty dict is 64 bytes, for
    every idle client).  Reads work as on any empty dict; writing raises, so the code
    that adds (``_attach``, ``on_subscribe``, ``allocate_id``) gives the owner its own
    dict first, and a forgotten case fails loudly instead of sharing state."""

    __slots__ = ()

    def _refuse(self, *args: Any, **kwargs: Any) -> None:
        raise TypeError("the shared empty map is read-only: give the owner its own dict")

    __setitem__ = setdefault = update = _refuse  # type: ignore[assignment]


_EMPTY: Any = _EmptyMap()
_NO_CONSUMERS: dict[str, Any] = _EMPTY
# keep-alive values as int objects shared between connections (600 is 28 bytes each)
_KEEP_ALIVES: dict[int, int] = {}


@dataclass
class MQTTConfig:
    vhost: str = "/"
    allow_anonymous: bool = False
    max_packet_size: int = 16 * 1024 * 1024
    max_topic_length: int = 4096
    max_topic_levels: int = 64
    max_subscriptions: int = 1024  # per client
    receive_maximum: int = 1024  # QoS 1/2 PUBLISHes a client may have unacknowledged
    max_inflight: int = 65535  # QoS 1/2 deliveries in flight to one client (and its RM)
    topic_alias_maximum: int = 64
    max_keep_alive: int = 0  # 0: the client's keep-alive stands (else Server Keep Alive)
    handshake_timeout: float = 10.0
    max_output: int = 8 * 1024 * 1024
    # Plain-TCP listeners serve connections with the epoll transport (transport/epoll.py:
    # a descriptor and a small object per idle client) where the platform has one.
    light_transport: bool = True


# --- the MQTT part of a message -------------------------------------------------------------


# The neutral fields of a PUBLISH without properties: only the QoS header, whose typed-map
# bytes are one of three constants (``MQTTExtension.decode_fields``), so neither the
# publish nor a record of it encodes a header table.
# The decoded form is shared too (read-only, as every message's headers are): the core
# reads every message's headers at publish (CC/BCC, scheduling).
_PLAIN_HEADERS = tuple({QOS_HEADER: qos} for qos in (0, 1, 2))
_PLAIN_FIELDS = tuple(
    [None, None, None, None, None, None, None, encode_table(headers)] for headers in _PLAIN_HEADERS
)


class MQTTExtension(Extension):
    """What an MQTT publish carries besides the neutral fields: its QoS and retain flag,
    the publishing client (no-local), payload format and binary correlation data.

    The extension of a PUBLISH without MQTT 5.0 properties is shared by every such
    message of one connection with the same QoS and retain flag (``plain_extension``):
    it is read-only, and its record bytes (``leftovers``) are encoded once.  Those
    messages are built with lazy neutral fields (``Message(...)``, not ``build``);
    ``decode_fields`` gives them the one header, ``x-mqtt-publish-qos``, from a constant.
    """

    __slots__ = ("qos", "retain", "client_id", "payload_format", "correlation_data", "_leftovers")
    protocol = "mqtt"

    def __init__(self, qos: int, retain: bool, client_id: str, payload_format: int | None,
                 correlation_data: bytes | None) -> None:
        self.qos = qos
        self.retain = retain
        self.client_id = client_id
        self.payload_format = payload_format
        self.correlation_data = correlation_data
        self._leftovers: bytes | None = None

    def decode_fields(self, message: Message) -> None:
        # Only a message of ``message_from_plain_publish`` has lazy fields (the others
        # are built with every field), and all it has is the QoS header.
        message.adopt_fields_and_headers(_PLAIN_FIELDS[self.qos], _PLAIN_HEADERS[self.qos])

    def leftovers(self) -> bytes:
        data = self._leftovers
        if data is None:
            cid = self.client_id.encode()
            corr = self.correlation_data or b""
            flags = (1 if self.retain else 0) | (2 if self.correlation_data is not None else 0)
            flags |= 4 if self.payload_format is not None else 0
            data = self._leftovers = (
                struct.pack(">BBBH", self.qos, flags, self.payload_format or 0, len(cid)) + cid + corr
            )
        return data

    def derived(self) -> Extension | None:
        return self

    @classmethod
    def load(cls, data: bytes) -> Extension:
        try:
            qos, flags, pfi, size = struct.unpack_from(">BBBH", data)
            cid = data[5:5 + size].decode()
            corr = data[5 + size:] if flags & 2 else None
        except (struct.error, UnicodeDecodeError):
            return cls(0, False, "", None, None)
        return cls(qos, bool(flags & 1), cid, pfi if flags & 4 else None, corr)


register_extension("mqtt", MQTTExtension.load)


def message_from_publish(packet: Publish, topic: str, client_id: str) -> Message:
    """The neutral message of an MQTT PUBLISH (the mapping is in docs/design.md)."""
    props = packet.properties
    headers: dict[str, Any] = {QOS_HEADER: packet.qos}
    for name, value in props.get("user_property", ()):
        headers[name] = value  # a repeated name keeps its last value
    correlation = props.get("correlation_data")
    correlation_id = None
    binary_correlation = None
    if correlation is not None:
        try:
            correlation_id = correlation.decode("utf-8")
        except UnicodeDecodeError:
            binary_correlation = correlation
        if correlation_id is not None and len(correlation_id) > 255:
            correlation_id, binary_correlation = None, correlation
    expiry = props.get("message_expiry_interval")
    response_topic = props.get("response_topic")
    extension = MQTTExtension(
        packet.qos, packet.retain, client_id, props.get("payload_format_indicator"), binary_correlation
    )
    return Message.build(
        EXCHANGE,
        topic_to_key(topic),
        packet.payload,
        persistent=packet.qos > 0,
        expiration_ms=None if expiry is None else expiry * 1000,
        published_at=time.time(),
        extension=extension,
        headers=headers,
        content_type=props.get("content_type"),
        correlation_id=correlation_id,
        reply_to=None if response_topic is None else topic_to_key(response_topic),
    )


def publish_properties(message: Message, now: float) -> dict[str, Any] | None:
    """MQTT 5.0 properties for delivering ``message``; None when it has expired."""
    props: dict[str, Any] = {}
    extension = message.extension
    if message.expiration_ms is not None:
        published = message.published_at or now
        left = math.ceil(published + message.expiration_ms / 1000 - now)
        if left <= 0 and message.expiration_ms:
            return None
        props["message_expiry_interval"] = max(left, 0)
    if isinstance(extension, MQTTExtension):
        if extension.payload_format is not None:
            props["payload_format_indicator"] = extension.payload_format
        if extension.correlation_data is not None:
            props["correlation_data"] = extension.correlation_data
    content_type = message.content_type
    if content_type is not None:
        props["content_type"] = content_type
    correlation_id = message.correlation_id
    if correlation_id is not None and "correlation_data" not in props:
        props["correlation_data"] = correlation_id.encode()
    reply_to = message.reply_to
    if reply_to is not None:
        props["response_topic"] = key_to_topic(reply_to)
    headers = message.headers
    if headers:
        pairs = [(k, _header_text(v)) for k, v in headers.items() if not k.startswith("x-mqtt-")]
        if pairs:
            props["user_property"] = pairs
    return props


def _header_text(value: Any) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- sessions -----------------------------------------------------------------------------


class SubOptions:
    __slots__ = ("topic_filter", "qos", "no_local", "retain_as_published", "sub_id", "queue_name",
                 "routing_key", "group")

    def __init__(self, topic_filter: str, qos: int, no_local: bool, retain_as_published: bool,
                 sub_id: int | None, queue_name: str, routing_key: str, group: str | None) -> None:
        self.topic_filter = topic_filter  # without any $share prefix
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.sub_id = sub_id
        self.queue_name = queue_name
        self.routing_key = routing_key
        self.group = group

    def binding_arguments(self) -> dict[str, Any]:
        if self.group is not None:  # one binding for the whole group, whoever made it
            return {"x-mqtt-filter": self.topic_filter, "x-mqtt-share": self.group}
        args: dict[str, Any] = {"x-mqtt-filter": self.topic_filter, "x-mqtt-qos": self.qos}
        if self.no_local:
            args["x-mqtt-no-local"] = True
        if self.retain_as_published:
            args["x-mqtt-retain-as-published"] = True
        if self.sub_id is not None:
            args["x-mqtt-subscription-id"] = self.sub_id
        return args


class Inflight:
    __slots__ = ("queue", "entry", "qos", "released")

    def __init__(self, queue: Queue | None, entry: QueueEntry | None, qos: int) -> None:
        self.queue = queue
        self.entry = entry
        self.qos = qos
        self.released = False  # QoS 2: PUBREC came, PUBREL sent, waiting for PUBCOMP


class Session:
    """A client id's state; outlives connections when persistent."""

    __slots__ = ("client_id", "persistent", "expiry", "subscriptions", "inflight", "awaiting_rel",
                 "next_id", "connection", "expiry_timer", "will_timer", "special")

    def __init__(self, client_id: str, persistent: bool, expiry: int | None) -> None:
        self.client_id = client_id
        self.persistent = persistent
        self.expiry = expiry  # seconds; None: never (3.1.1 clean_session=0)
        # keyed by the filter as subscribed; both _EMPTY until the first entry
        self.subscriptions: dict[str, SubOptions] = _EMPTY
        self.inflight: dict[int, Inflight] = _EMPTY
        # inbound QoS 2 ids between PUBREC and PUBREL (a set from the first one on: an
        # empty set is 216 bytes, for every idle client)
        self.awaiting_rel: set[int] | frozenset[int] = _NO_IDS
        self.next_id = 1
        self.connection: MQTTConnection | None = None
        self.expiry_timer: Any = None
        self.will_timer: Any = None
        self.special = False  # some subscription needs per-message matching (5.0 options)

    def queue_name(self, qos: int) -> str:
        return f"mqtt-subscription-{self.client_id}qos{qos}"

    def allocate_id(self) -> int:
        if self.inflight is _EMPTY:  # every insertion into inflight follows this call
            self.inflight = {}
        for _ in range(65535):
            packet_id = self.next_id
            self.next_id = packet_id % 65535 + 1
            if packet_id not in self.inflight:
                return packet_id
        raise MQTTError(codec.QUOTA_EXCEEDED, "no free packet identifier")

    def refresh_special(self) -> None:
        self.special = any(
            s.no_local or s.retain_as_published or s.sub_id is not None
            for s in self.subscriptions.values()
        )


class MQTTConsumer:
    """One session queue (or shared-subscription queue) consumed by a connection."""

    __slots__ = ("tag", "priority", "exclusive", "no_ack", "owner", "connection", "queue", "qos",
                 "shared")

    def __init__(self, connection: MQTTConnection, queue: Queue, qos: int, shared: bool) -> None:
        self.tag = f"mqtt-{id(self):x}"
        self.priority = 0
        self.exclusive = False
        self.no_ack = qos == 0
        self.owner = connection
        self.connection = connection
        self.queue = queue
        self.qos = qos
        self.shared = shared

    def can_deliver(self) -> bool:
        connection = self.connection
        if not connection.can_send:
            return False
        if self.qos == 0:
            return True
        session = connection.session
        return session is None or len(session.inflight) < connection.client_receive_max

    def credit(self) -> int:
        """How many deliveries ``can_deliver`` would take one after another now (for
        ``Queue.publish_many``'s hand-off of a run: ``deliver_many``)."""
        connection = self.connection
        if not connection.can_send:
            return 0
        session = connection.session
        if self.qos == 0 or session is None:
            return 1 << 30
        return connection.client_receive_max - len(session.inflight)

    def deliver_many(self, queue: Queue, entries: list[QueueEntry]) -> None:
        """``deliver`` of entries handed out together, within ``credit()``
        (``Queue.publish_many``: a run of PUBLISHes of one read to one topic, so one
        routing key): the common 3.1.1 delivery of ``deliver`` in one loop and one
        write.  Anything else goes entry by entry through ``deliver``, in order."""
        connection = self.connection
        session = connection.session
        topics = connection._topics_out
        key = entries[0].message.routing_key  # type: ignore[union-attr]
        found = topics.get(key) if topics is not None else None
        if (found is None or session is None or session.special or connection.version != 4
                or found[0][0] == "$" or connection.closed):
            for entry in entries:
                self.deliver(queue, entry)
            return
        topic_wire = found[1]
        topic_size = len(topic_wire)
        head, head_id, head2, head2_id = _publish_heads(topic_size)
        max_packet = connection.client_max_packet
        qos = self.qos
        no_ack = self.no_ack
        chunks: list[bytes] = []
        sent = 0
        for entry in entries:
            try:
                message = entry.message
                if message.routing_key != key:  # type: ignore[union-attr]
                    if chunks:
                        connection._emit(b"".join(chunks))
                        chunks = []
                    self.deliver(queue, entry)
                    continue
                effective = qos
                extension = message.extension  # type: ignore[union-attr]
                if extension.__class__ is MQTTExtension and extension.qos < effective:  # type: ignore[union-attr]
                    effective = extension.qos  # type: ignore[union-attr]
                dup = entry.delivery_count > 0
                entry.delivery_count += 1
                packet_id = None
                if effective:
                    packet_id = session.next_id
                    inflight = session.inflight
                    if inflight is _EMPTY or packet_id in inflight:
                        packet_id = session.allocate_id()
                    else:
                        session.next_id = packet_id % 65535 + 1
                # encode_publish's bytes, as two pieces: header (fixed header, topic,
                # packet id: one pack) and body, joined once for the whole run
                body = message.body  # type: ignore[union-attr]
                first = 0x30 | (8 if dup and effective else 0) | (effective << 1)
                size = topic_size + len(body) + (2 if effective else 0)
                data = None
                if size >= 16384:
                    data = encode_publish(topic_wire, body, effective, False, dup and effective > 0,
                                          packet_id, None)
                    total = len(data)
                else:
                    total = size + (2 if size < 128 else 3)
                if total > max_packet:
                    if chunks:
                        connection._emit(b"".join(chunks))
                        chunks = []
                    connection._drop(self, queue, entry)
                    continue
                if data is not None:
                    chunks.append(data)
                elif size < 128:
                    if effective:
                        chunks.append(head_id.pack(first, size, topic_wire, packet_id))
                    else:
                        chunks.append(head.pack(first, size, topic_wire))
                    chunks.append(body)
                else:
                    if effective:
                        chunks.append(head2_id.pack(first, (size & 0x7F) | 0x80, size >> 7,
                                                    topic_wire, packet_id))
                    else:
                        chunks.append(head2.pack(first, (size & 0x7F) | 0x80, size >> 7, topic_wire))
                    chunks.append(body)
                sent += 1
                if effective:
                    session.inflight[packet_id] = Inflight(queue, entry, effective)  # type: ignore[index]
                    if no_ack:
                        queue.settle_delivered(entry)
                elif no_ack:
                    queue.settle_delivered(entry)
                else:
                    queue.ack(entry)
            except Exception:
                log.exception("mqtt %s: cannot deliver a message from %r", connection.client_id, queue.name)
                if entry.message is not None:
                    connection._drop(self, queue, entry)
        if chunks and not connection.closed:
            connection._emit(chunks[0] if len(chunks) == 1 else b"".join(chunks))
        connection.server.counters["publish_out"] += sent

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        # Called from the core's drain, i.e. often inside *another* client's publish: a
        # message this client cannot be sent must not fail that publish.
        connection = self.connection
        try:
            message = entry.message
            topics = connection._topics_out
            found = topics.get(message.routing_key) if topics is not None else None  # type: ignore[union-attr]
            session = connection.session
            if found is None or session.special or connection.version != 4 or found[0][0] == "$":  # type: ignore[union-attr]
                # Everything but the common case (and its first message per topic, which
                # fills the cache): MQTTConnection._deliver.
                connection._deliver(self, queue, entry)
                return
            # The common delivery, here rather than one call further: a 3.1.1 client, no
            # per-subscription options to match, no properties, the topic's wire form
            # from the cache (filled by _deliver): the packet from its pieces.
            qos = self.qos
            extension = message.extension  # type: ignore[union-attr]
            if extension.__class__ is MQTTExtension and extension.qos < qos:  # type: ignore[union-attr]
                qos = extension.qos  # type: ignore[union-attr]
            dup = entry.delivery_count > 0
            entry.delivery_count += 1
            packet_id = None
            if qos:
                # Session.allocate_id's first try inline (the next id is free but after
                # a wrap-around, or before the session's first delivery).
                packet_id = session.next_id  # type: ignore[union-attr]
                inflight = session.inflight  # type: ignore[union-attr]
                if inflight is _EMPTY or packet_id in inflight:
                    packet_id = session.allocate_id()  # type: ignore[union-attr]
                else:
                    session.next_id = packet_id % 65535 + 1  # type: ignore[union-attr]
            data = encode_publish(found[1], message.body, qos, False, dup and qos > 0, packet_id, None)  # type: ignore[union-attr]
            if len(data) > connection.client_max_packet:
                connection._drop(self, queue, entry)
                return
            if not connection.closed:
                connection._emit(data)
            connection.server.counters["publish_out"] += 1
            if qos:
                session.inflight[packet_id] = Inflight(queue, entry, qos)  # type: ignore[union-attr,index]
                if self.no_ack:
                    queue.settle_delivered(entry)
            elif self.no_ack:
                queue.settle_delivered(entry)
            else:
                queue.ack(entry)
        except Exception:
            log.exception("mqtt %s: cannot deliver a message from %r", connection.client_id, queue.name)
            if entry.message is not None:
                connection._drop(self, queue, entry)

    def cancelled_by_server(self, queue: Queue) -> None:
        self.connection.consumers.pop(queue.name, None)


# --- the listener -------------------------------------------------------------------------


class MQTTServer:
    def __init__(self, core: BrokerCore, config: MQTTConfig, retained: RetainedStore,
                 state: SessionStateStore | None = None) -> None:
        self.core = core
        self.config = config
        self.retained = retained
        self.state = state if state is not None else SessionStateStore(None, None)
        self.sessions: dict[str, Session] = {}
        # shared-subscription queue -> client ids of its members (in memory, and the
        # persistent ones recorded on disk)
        self.share_members: dict[str, set[str]] = {}
        for client_id, shares in self.state.shares.items():
            for topic_filter in shares:
                group, inner = split_shared(topic_filter)
                self.share_members.setdefault(share_queue_name(group or "", inner), set()).add(client_id)
        # A shared queue whose members were all clean sessions when the broker went
        # down has no member any more.
        vhost = core.vhosts.get(config.vhost)
        if vhost is not None:
            for name in [n for n in vhost.queues if n.startswith("mqtt-share-")]:
                if name not in self.share_members:
                    vhost.delete_queue(vhost.queues[name])
        self.connections: set[MQTTConnection] = set()
        self._servers: list[Any] = []  # asyncio Servers and epoll.EpollListeners
        self.counters = {"connections": 0, "publish_in": 0, "publish_out": 0, "refused": 0}
        # Keep-alive and handshake deadlines: one sweep every KEEP_ALIVE_TICK for the
        # whole listener instead of a TimerHandle per connection (~0.5 KB each under
        # uvloop).  ``tick`` counts sweeps; ``_due`` maps a tick to the connections to
        # check then (each connection is in at most one bucket: ``watch``; a closed one
        # leaves at once, ``unwatch``, so nothing closed is kept until its tick).
        self.tick = 0
        # Lists, not sets: 8 bytes per idle client instead of ~50.  Leaving one is lazy:
        # the connection's ``_due`` is cleared (the sweep skips an entry whose ``_due``
        # is not the bucket's tick) and ``_stale`` counts such entries per bucket; once
        # they are half of it the bucket is rebuilt from its live entries.  So a close
        # is amortised O(1) and a bucket holds at most as many closed connections as
        # live ones.  (An identity scan per close was quadratic under churn: 20,000
        # connections due in one tick, closed newest first, took 4.0 s of CPU, 40,000
        # took 18 s; see docs/benchmarks.md.)
        self._due: dict[int, list[MQTTConnection]] = {}
        self._stale: dict[int, int] = {}
        self._sweeper: Any = None

    @property
    def vhost(self) -> VirtualHost:
        vhost = self.core.vhosts.get(self.config.vhost)
        if vhost is None:
            raise CoreError("not_found", f"vhost {self.config.vhost} not found")
        return vhost

    async def listen(self, host: str, port: int, ssl: Any = None) -> int:
        if ssl is None and self.config.light_transport and epoll.available():
            listener = await epoll.EpollListener.create(lambda: MQTTConnection(self), host, port)
            # The connections' limits (``connection_made``) are the listener's: stored once.
            listener.write_limits = (self.config.max_output, self.config.max_output // 4)
            self._servers.append(listener)
            return listener.port
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: MQTTConnection(self), host, port, ssl=ssl)
        self._servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    def watch(self, connection: MQTTConnection, ticks: int) -> None:
        """Call ``connection.check_idle()`` at the sweep ``ticks`` from now, unless an
        earlier check is already booked (that one books the next).  The tick counts
        sweeps that ran, so a stalled loop makes a check late, never early."""
        due = self.tick + ticks
        booked = connection._due
        if booked:
            if booked <= due:
                return
            self.unwatch(connection)
        connection._due = due
        bucket = self._due.get(due)
        if bucket is None:
            self._due[due] = [connection]
        else:
            bucket.append(connection)
        if self._sweeper is None:
            self._sweeper = self.core.call_later(KEEP_ALIVE_TICK, self._sweep)

    def unwatch(self, connection: MQTTConnection) -> None:
        booked = connection._due
        if booked:
            connection._due = 0
            bucket = self._due.get(booked)
            if bucket is None:
                return
            stale = self._stale.get(booked, 0) + 1
            if stale * 2 < len(bucket):
                self._stale[booked] = stale
                return
            # Half the bucket has left: keep its live entries (a connection booked
            # again for the same tick may be listed twice; the sweep checks it once).
            self._stale.pop(booked, None)
            live = [c for c in bucket if c._due == booked]
            if live:
                self._due[booked] = live
            else:
                del self._due[booked]

    def _sweep(self) -> None:
        self.tick += 1
        tick = self.tick
        bucket = self._due.pop(tick, None)
        self._stale.pop(tick, None)
        for connection in bucket or ():
            if connection._due != tick:
                continue  # left the bucket (unwatch) or listed twice
            connection._due = 0
            try:
                connection.check_idle()
            except Exception:
                log.exception("mqtt %s: keep-alive check failed", connection.client_id)
        self._sweeper = self.core.call_later(KEEP_ALIVE_TICK, self._sweep) if self._due else None

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for server in self._servers:
            server.close()
        for connection in list(self.connections):
            connection.server_disconnect(codec.SERVER_SHUTTING_DOWN, "broker shutdown", will=False)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for session in self.sessions.values():
            for timer in (session.expiry_timer, session.will_timer):
                if timer is not None:
                    timer.cancel()
        self.retained.close()
        self.state.close()

    # --- sessions ---------------------------------------------------------------------

    def restore_session(self, client_id: str, vhost: VirtualHost) -> Session | None:
        """A persistent session from the durable queues and bindings the core recovered."""
        names = {f"mqtt-subscription-{client_id}qos{q}": q for q in (0, 1, 2)}
        queues = {n: vhost.queues[n] for n in names if n in vhost.queues}
        if not queues and client_id not in self.state.state and client_id not in self.state.shares:
            return None
        session = Session(client_id, True, None)
        session.subscriptions = {}
        session.inflight = {}
        exchange = vhost.exchanges.get(EXCHANGE)
        if exchange is not None:
            for binding in list(exchange.bindings.values()):
                queue = binding.destination
                if getattr(queue, "name", None) not in queues:
                    continue
                args = binding.arguments
                topic_filter = args.get("x-mqtt-filter", key_to_topic(binding.routing_key))
                session.subscriptions[topic_filter] = SubOptions(
                    topic_filter, names[queue.name], bool(args.get("x-mqtt-no-local")),
                    bool(args.get("x-mqtt-retain-as-published")), args.get("x-mqtt-subscription-id"),
                    queue.name, binding.routing_key, None,
                )
        for topic_filter, qos in self.state.shares.get(client_id, {}).items():
            group, inner = split_shared(topic_filter)
            session.subscriptions[topic_filter] = SubOptions(
                inner, qos, False, False, None, share_queue_name(group or "", inner),
                filter_to_key(inner), group,
            )
        session.refresh_special()
        inbound, outbound = self.state.get(client_id)
        session.awaiting_rel = inbound
        for packet_id in outbound:  # PUBREL sent before the restart: sent again
            record = Inflight(None, None, 2)
            record.released = True
            session.inflight[packet_id] = record
        return session

    def discard_session(self, session: Session, vhost: VirtualHost) -> None:
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]
        for timer in (session.expiry_timer, session.will_timer):
            if timer is not None:
                timer.cancel()
        session.expiry_timer = None
        for qos in (0, 1, 2):
            queue = vhost.queues.get(session.queue_name(qos))
            if queue is not None:
                vhost.delete_queue(queue)
        for options in session.subscriptions.values():
            if options.group is not None:
                self.leave_share(session.client_id, options, vhost)
        session.subscriptions.clear()
        self.state.record(session.client_id, "drop")

    def leave_share(self, client_id: str, options: SubOptions, vhost: VirtualHost) -> None:
        """A member leaves a shared subscription; its queue goes with the last member."""
        members = self.share_members.get(options.queue_name)
        if members is not None:
            members.discard(client_id)
            if members:
                return
            del self.share_members[options.queue_name]
        queue = vhost.queues.get(options.queue_name)
        if queue is not None:
            vhost.delete_queue(queue)

    def session_ended(self, session: Session, vhost: VirtualHost) -> None:
        """The connection of ``session`` is gone: keep it, expire it later, or drop it."""
        if not session.persistent:
            self.discard_session(session, vhost)
            return
        if session.expiry is not None:
            session.expiry_timer = self.core.call_later(
                session.expiry, lambda: self._expire(session, vhost)
            )

    def _expire(self, session: Session, vhost: VirtualHost) -> None:
        session.expiry_timer = None
        if session.connection is None:
            self.discard_session(session, vhost)


def share_queue_name(group: str, topic_filter: str) -> str:
    return f"mqtt-share-{group}-{filter_to_key(topic_filter)}"


# --- a connection ---------------------------------------------------------------------------


_SECOND: list[int] = [0]  # the current second as one shared int (``_this_second``)


def _this_second() -> int:
    now = int(_wall_clock())
    if _SECOND[0] != now:
        _SECOND[0] = now
    return _SECOND[0]


# Connection fields an idle client never changes from their default, kept in a side
# object (``_RareState``) created when one is set to anything else; reading one with no
# side object gives the default.  None of them is read per message on a 3.1.1
# connection (aliases and their maximum are MQTT 5.0; the rest is per connection).
_RARE_FIELDS: dict[str, Any] = {
    "_peer": None,  # set by listeners that know better than the transport (Unix sockets)
    "will": None,  # codec.Will of the CONNECT
    "client_alias_max": 0,  # MQTT 5.0 Topic Alias Maximum of the client
    "aliases_in": None,  # dict[int, str], MQTT 5.0 topic aliases, at first use
    "aliases_out": None,  # dict[str, int]
    "_reading_paused": False,  # stopped reading for a resource alarm
}


class _RareState:
    __slots__ = tuple(_RARE_FIELDS)

    def __init__(self) -> None:
        for name, default in _RARE_FIELDS.items():
            setattr(self, name, default)


def _rare_field(name: str, default: Any) -> property:
    def get(self: MQTTConnection) -> Any:
        rare = self._rare
        return default if rare is None else getattr(rare, name)

    def set_(self: MQTTConnection, value: Any) -> None:
        rare = self._rare
        if rare is None:
            if value is default or (type(value) is type(default) and value == default):
                return
            rare = self._rare = _RareState()
        setattr(rare, name, value)

    return property(get, set_)




class MQTTConnection(asyncio.Protocol):
    # Slots: past ~30 attributes an instance __dict__ is resized to a 1.5 KiB table;
    # with 10,000 idle clients that was 40 % of the broker's memory per connection.
    # Fields an idle client leaves at their default live in a side object created when
    # one is first set to something else (``_RARE_FIELDS``, ``_RareState``), and
    # ``config`` is the server's: 8 bytes per slot per idle client (issue 13).  No
    # ``__weakref__``: nothing refers to a connection weakly.
    __slots__ = (
        "server", "core", "parser", "transport", "version", "session", "vhost",
        "publisher", "permission", "username", "client_id", "keep_alive", "last_seen",
        "can_send", "closed", "consumers", "client_receive_max", "client_max_packet",
        "inbound_unacked", "acks", "_due", "_rare",
        "_out", "_out_bytes", "_in_read", "_flush_pending",
        # the publish/deliver fast paths (created at first use; see on_publish/_deliver)
        "_extensions", "_keys", "_topics_out", "_unsynced", "_unsynced_counted", "_credit_back",
        "connected_at", "recv_bytes", "send_bytes",  # for operators (describe())
    )

    # Properties over ``_rare`` (installed after the class, from ``_RARE_FIELDS``):
    _peer: Any
    will: codec.Will | None
    client_alias_max: int
    aliases_in: dict[int, str] | None
    aliases_out: dict[str, int] | None
    _reading_paused: bool

    @property
    def config(self) -> MQTTConfig:
        return self.server.config

    def __init__(self, server: MQTTServer) -> None:
        self.server = server
        self.core = server.core
        # Created at the first read, and dropped again while it holds nothing (after
        # the CONNECT, at keep-alive checks): an idle client has none (``_received``).
        self.parser: Parser | None = None
        self.transport: Any = None
        self._rare: _RareState | None = None  # _peer, will, topic aliases, ... (see _RARE_FIELDS)
        self.version = 4
        self.session: Session | None = None
        self.vhost: VirtualHost | None = None
        # Created at the first PUBLISH or will (``_get_publisher``): an idle client has
        # none; its permission is kept for SUBSCRIBE.
        self.publisher: Publisher | None = None
        self.permission: Any = None
        self.username: str | None = None
        self.client_id = ""
        self.keep_alive = 0
        # Keep-alive without a timer per connection: the listener's sweep tick of the
        # last read (an int the server already holds, so a read allocates nothing) and
        # the tick of this connection's next check (``MQTTServer.watch``).
        self.last_seen = server.tick
        self._due = 0
        self.can_send = True
        self.closed = False
        self.consumers: dict[str, MQTTConsumer] = _NO_CONSUMERS
        self.client_receive_max = 65535
        self.client_max_packet = _NO_LIMIT
        self.inbound_unacked = 0
        # PUBACK/PUBREC in PUBLISH order: [packet, ready] pairs (see the module docstring)
        self.acks: deque[list[Any]] | None = None  # created at the first PUBLISH (760 B each)
        # For operators (describe()): plain int increments, nothing per message else.
        # Whole seconds, one int shared by the connections of the same second (a float
        # per connection was 24 bytes per idle client).
        self.connected_at = _this_second()
        self.recv_bytes = 0
        self.send_bytes = 0
        # Output of one read (or one loop turn) goes out in one transport write: a
        # syscall per PUBLISH/PUBACK was most of the broker's time at high rates.
        self._out: list[bytes] | None = None
        self._out_bytes = 0
        self._in_read = False
        self._flush_pending = False
        self._extensions: dict[int, MQTTExtension] | None = None  # by qos | retain << 2
        self._keys: dict[str, str] | None = None  # checked topic -> routing key
        self._topics_out: dict[str, tuple[str, bytes] | None] | None = None  # key -> topic
        # PUBACK/PUBREC records of this read waiting for one fsync (``_request_sync``)
        self._unsynced: list[list[Any]] | None = None
        self._unsynced_counted = 0
        self._credit_back = False  # a PUBACK/PUBREC/PUBCOMP in this read freed in-flight room

    def session_inflight(self) -> dict[int, Inflight]:
        session = self.session
        return session.inflight if session is not None else _EMPTY

    # --- transport --------------------------------------------------------------------

    @property
    def peer(self) -> Any:
        """The client's address, asked of the transport when needed (uvloop builds a new
        tuple per call: kept, it was 146 bytes per idle client), unless a listener set
        one (the Unix-socket listener sets ``LOCAL_PEER``)."""
        if self._peer is not None:
            return self._peer
        transport = self.transport
        if transport is None:
            return None
        try:
            return transport.get_extra_info("peername")
        except Exception:  # a closed uvloop transport may refuse
            return None

    @peer.setter
    def peer(self, value: Any) -> None:
        self._peer = value

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        transport.set_write_buffer_limits(self.config.max_output)  # type: ignore[attr-defined]
        server = self.server
        server.connections.add(self)
        server.counters["connections"] += 1
        # The handshake deadline: the first check_idle finds no session and aborts.
        server.watch(self, math.ceil(self.config.handshake_timeout / KEEP_ALIVE_TICK) + 1)

    def check_idle(self) -> None:
        """Called by the listener's sweep at this connection's due tick: the CONNECT
        did not come in time, or the keep-alive ran out (1.5 x the interval without a
        packet, MQTT-3.1.2-24), or a later check is booked."""
        if self.closed:
            return
        if self.session is None:
            self.abort()
            return
        parser = self.parser
        if parser is not None and parser.is_idle():
            self.parser = None  # a quiet connection gives its parser back (``_received``)
        if not self.keep_alive:
            return
        server = self.server
        # +1: a read seen at tick t may have come just before tick t + 1.
        due = self.last_seen + math.ceil(self.keep_alive * 1.5 / KEEP_ALIVE_TICK) + 1
        if due <= server.tick:
            log.info("mqtt %s: keep-alive expired", self.client_id)
            self.server_disconnect(codec.KEEP_ALIVE_TIMEOUT, "keep alive timeout", will=True)
            return
        server.watch(self, due - server.tick)

    def pause_writing(self) -> None:
        self.can_send = False

    def resume_writing(self) -> None:
        self.can_send = True
        for consumer in list(self.consumers.values()):
            consumer.queue.drain()

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        self._in_read = True
        try:
            self._received(data)
            if self._unsynced:
                self._request_sync()
            if self._credit_back:
                self._credit_back = False
                for consumer in list(self.consumers.values()):
                    if consumer.qos:
                        consumer.queue.drain()
        finally:
            self._in_read = False
            self._flush()

    def _received(self, data: bytes) -> None:
        self.last_seen = self.server.tick
        self.recv_bytes += len(data)
        parser = self.parser
        connecting = self.session is None
        if parser is None:
            parser = self.parser = Parser(self.config.max_packet_size, None if connecting else self.version)
        try:
            packets = parser.feed(data)
        except MQTTError as exc:
            for packet in exc.packets:
                if self.closed:
                    return
                self._dispatch_safely(packet)
            if not self.closed:
                self.protocol_error(exc.reason_code, exc.text)
            return
        on_publish = self.on_publish
        count = len(packets)
        index = 0
        while index < count:
            packet = packets[index]
            index += 1
            if self.closed:
                return
            if packet.__class__ is Publish and self.session is not None:
                # The packet most reads are made of, without _dispatch_safely/dispatch.
                # A run of plain QoS 0/1 PUBLISHes to one topic already published to on
                # this connection goes through the core in bulk (_publish_run).
                if (
                    index < count
                    and packet.qos < 2  # type: ignore[attr-defined]
                    and not packet.properties  # type: ignore[attr-defined]
                    and not packet.retain  # type: ignore[attr-defined]
                    and self._keys is not None
                    and packet.topic in self._keys  # type: ignore[attr-defined]
                ):
                    end = index
                    topic = packet.topic  # type: ignore[attr-defined]
                    qos = packet.qos  # type: ignore[attr-defined]
                    limit = min(count, index - 1 + _RUN_MAX)
                    while end < limit:
                        other = packets[end]
                        if (other.__class__ is not Publish or other.topic != topic  # type: ignore[attr-defined]
                                or other.qos != qos or other.retain or other.properties):  # type: ignore[attr-defined]
                            break
                        end += 1
                    if end - index >= 1:
                        run = packets[index - 1:end]
                        index = end
                        try:
                            if self._publish_run(run, topic, qos):  # type: ignore[arg-type]
                                if self._unsynced and index < count:
                                    self._request_sync()  # this run's PUBACKs on their own
                                continue
                            for packet in run:  # the single path, for what the run cannot do
                                if self.closed:
                                    return
                                on_publish(packet)  # type: ignore[arg-type]
                        except MQTTError as exc:
                            self.protocol_error(exc.reason_code, exc.text)
                        except Exception:
                            log.exception("mqtt: internal error on %r", packet)
                            self.protocol_error(codec.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
                        continue
                try:
                    on_publish(packet)  # type: ignore[arg-type]
                except MQTTError as exc:
                    self.protocol_error(exc.reason_code, exc.text)
                except Exception:
                    log.exception("mqtt: internal error on %r", packet)
                    self.protocol_error(codec.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
            elif packet.__class__ is Ack and packet.kind == _PUBACK and self.session is not None:
                # A subscriber's reads are made of these: on_ack's QoS 1 case inline for
                # the run of PUBACKs starting here (the rest, an unknown id or a QoS 2
                # record, takes the general path), settled with one ``Queue.ack_many``.
                end = index
                while end < count:
                    other = packets[end]
                    if other.__class__ is not Ack or other.kind != _PUBACK:  # type: ignore[attr-defined]
                        break
                    end += 1
                self._puback_run(packets, index - 1, end)
                index = end
            else:
                self._dispatch_safely(packet)
        if connecting and self.session is not None and parser.is_idle():
            self.parser = None  # connected and nothing half-read: an idle client holds none
        if self.core.alarms and not self._reading_paused and not self.closed and self.session:
            # A resource alarm (memory, disk): stop reading publishers, as the AMQP
            # listener does (connection.blocked); resumed when every alarm clears.
            self._reading_paused = True
            self.transport.pause_reading()
            self.core.alarm_listeners.append(self._on_alarm)

    def _puback_run(self, packets: list[Packet], start: int, end: int) -> None:
        """PUBACKs ``packets[start:end]``: each one's in-flight record forgotten, their
        entries settled with one ``Queue.ack_many`` per queue run (in order: an
        unusual PUBACK first settles what came before it, then takes ``on_ack``)."""
        inflight = self.session.inflight  # type: ignore[union-attr]
        pending: list[QueueEntry] = []
        pending_queue: Queue | None = None
        for i in range(start, end):
            packet = packets[i]
            packet_id = packet.packet_id  # type: ignore[attr-defined]
            record = inflight.get(packet_id)
            if record is None or record.qos != 1:
                if pending:
                    if not self._ack_pending(pending_queue, pending):  # type: ignore[arg-type]
                        return
                    pending = []
                if self.closed:
                    return
                self._dispatch_safely(packet)
                continue
            del inflight[packet_id]
            entry = record.entry
            queue = record.queue
            if entry is not None and queue is not None:
                record.entry = None
                if queue is not pending_queue and pending:
                    if not self._ack_pending(pending_queue, pending):  # type: ignore[arg-type]
                        return
                    pending = []
                pending_queue = queue
                pending.append(entry)
            self._credit_back = True  # the QoS 1/2 queues drain once, at the end of the read
        if pending:
            self._ack_pending(pending_queue, pending)  # type: ignore[arg-type]

    def _ack_pending(self, queue: Queue, entries: list[QueueEntry]) -> bool:
        try:
            if len(entries) == 1:
                queue.ack(entries[0])
            else:
                queue.ack_many(entries)
        except Exception:
            log.exception("mqtt %s: internal error settling %d PUBACKs", self.client_id, len(entries))
            self.protocol_error(codec.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")
            return False
        return True

    def _on_alarm(self, alarms: set[str]) -> None:
        if alarms or not self._reading_paused:
            return
        self._reading_paused = False
        self.core.alarm_listeners.remove(self._on_alarm)
        if not self.closed:
            self.transport.resume_reading()

    def _dispatch_safely(self, packet: Packet) -> None:
        try:
            self.dispatch(packet)
        except MQTTError as exc:
            self.protocol_error(exc.reason_code, exc.text)
        except Exception:
            log.exception("mqtt: internal error on %r", packet)
            self.protocol_error(codec.IMPLEMENTATION_SPECIFIC_ERROR, "internal error")

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.teardown(publish_will=True)

    def write(self, packet: Packet) -> None:
        if not self.closed:
            self._emit(encode(packet, self.version))

    def _emit(self, data: bytes) -> None:
        """Queue output; written at the end of the current read, or by one ``call_soon``
        when produced outside a read (a delivery caused by another client's PUBLISH).
        Past ``_FLUSH_AT`` bytes it is written at once, so the transport's high-water
        mark (``pause_writing``) still stops a queue draining into a slow client."""
        out = self._out
        if out is None:
            self._out = [data]
        else:
            out.append(data)
        self._out_bytes += len(data)
        self.send_bytes += len(data)
        if self._out_bytes >= _FLUSH_AT:
            self._flush()
        elif not self._in_read and not self._flush_pending:
            self._flush_pending = True
            self.core.call_soon(self._flush_soon)

    def _flush_soon(self) -> None:
        self._flush_pending = False
        self._flush()

    def _flush(self) -> None:
        out = self._out
        if not out:
            return
        self._out = None
        self._out_bytes = 0
        if not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def abort(self) -> None:
        if not self.closed and self.transport is not None:
            self.transport.abort()
        self.teardown(publish_will=True)

    def protocol_error(self, reason: int, text: str) -> None:
        """Bad input: close (with DISCONNECT and the reason in 5.0, after CONNECT)."""
        log.info("mqtt %s: closing: %s (reason 0x%02x)", self.client_id or self.peer, text, reason)
        self.server.counters["refused"] += 1
        if self.session is None and reason == codec.UNSUPPORTED_PROTOCOL_VERSION:
            # MQTT-3.1.2-2: CONNACK "unacceptable protocol version", in 3.1.1 form (the
            # client's version is the thing we do not know).
            self._flush()
            self.transport.write(encode(Connack(False, codec.V3_UNACCEPTABLE_PROTOCOL), 4))
        self.server_disconnect(reason, text, will=True)

    def server_disconnect(self, reason: int, text: str, *, will: bool) -> None:
        if self.closed:
            return
        if self.version == 5 and self.session is not None:
            props = {"reason_string": text[:200]} if text else {}
            self.write(Disconnect(reason, props))
        self._flush()
        transport = self.transport
        self.teardown(publish_will=will)
        transport.close()

    # --- operators --------------------------------------------------------------------

    @property
    def name(self) -> str:
        """The management API's name, as RabbitMQ's: "peer -> local" (built when asked,
        so an idle client costs no string)."""
        peer = self.peer if isinstance(self.peer, tuple) and len(self.peer) >= 2 else ("", 0)
        local = self.transport.get_extra_info("sockname") if self.transport is not None else None
        if isinstance(local, tuple):
            return f"{peer[0]}:{peer[1]} -> {local[0]}:{local[1]}"
        return f"mqtt {id(self):x}"

    @property
    def protocol(self) -> str:
        # "Web MQTT" over WebSocket, as RabbitMQ names it (websocket.py's transport has ws)
        web = "Web " if hasattr(self.transport, "ws") else ""
        return f"{web}MQTT 5.0" if self.version == 5 else f"{web}MQTT 3.1.1"

    def describe(self) -> dict[str, Any]:
        """This connection as ``/api/connections`` shows one (AMQP's fields, plus the
        MQTT ones: client id, keep-alive, clean session, subscriptions, in flight)."""
        peer = self.peer if isinstance(self.peer, tuple) and len(self.peer) >= 2 else ("", 0)
        transport = self.transport
        local = transport.get_extra_info("sockname") if transport is not None else None
        session = self.session
        pending = 0
        if transport is not None and not self.closed and hasattr(transport, "get_write_buffer_size"):
            pending = transport.get_write_buffer_size()
        if self.closed:
            state = "closed"
        elif session is None:
            state = "starting"
        elif self._reading_paused:
            state = "blocked"
        else:
            state = "running" if self.can_send else "flow"
        return {
            "name": self.name,
            "type": "network",
            "protocol": self.protocol,
            "peer_host": str(peer[0]),
            "peer_port": int(peer[1]),
            "host": str(local[0]) if isinstance(local, tuple) else "",
            "port": int(local[1]) if isinstance(local, tuple) else 0,
            "user": self.username or "",
            "vhost": self.vhost.name if self.vhost is not None else None,
            "channels": 0,
            "timeout": self.keep_alive,
            "state": state,
            "client_properties": {"client_id": self.client_id, "product": "MQTT client"},  # as RabbitMQ
            "recv_oct": self.recv_bytes,
            "send_oct": self.send_bytes,
            "send_pend": pending,
            "connected_at": int(self.connected_at * 1000),
            "ssl": transport is not None and transport.get_extra_info("sslcontext") is not None,
            "auth_mechanism": "MQTT",
            "client_id": self.client_id,
            "keep_alive": self.keep_alive,
            "clean_session": session is not None and not session.persistent,
            "session_expiry": session.expiry if session is not None else None,
            "subscriptions": len(session.subscriptions) if session is not None else 0,
            "inflight": len(session.inflight) if session is not None else 0,
        }

    def force_close(self, reason: str) -> None:
        """Closed by an operator: MQTT 5.0 clients get DISCONNECT 0x98 (Administrative
        action); the will is published, as for any close the client did not ask for."""
        if self.closed:
            return
        if self.session is None:
            self.abort()
            return
        self.server_disconnect(codec.ADMINISTRATIVE_ACTION, reason, will=True)

    # --- teardown ---------------------------------------------------------------------

    def teardown(self, publish_will: bool) -> None:
        if self.closed:
            return
        self.closed = True
        self.server.connections.discard(self)
        self.server.unwatch(self)
        if self._reading_paused:
            self._reading_paused = False
            self.core.alarm_listeners.remove(self._on_alarm)
        for consumer in self.consumers.values():
            consumer.queue.remove_consumer(consumer)
        self.consumers = _NO_CONSUMERS
        session = self.session
        vhost = self.vhost
        if session is None or vhost is None:
            return
        # In-flight deliveries go back to their queues (DUP on the redelivery); QoS 2
        # messages already released (PUBREL sent) stay in the session.
        by_queue: dict[int, tuple[Queue, list[QueueEntry]]] = {}
        for packet_id, record in list(session.inflight.items()):
            if record.released:
                continue
            del session.inflight[packet_id]
            if record.queue is not None and record.entry is not None and not record.queue.deleted:
                by_queue.setdefault(id(record.queue), (record.queue, []))[1].append(record.entry)
        for queue, entries in by_queue.values():
            queue.requeue(entries)
        if session.connection is self:
            session.connection = None
            if publish_will and self.will is not None:
                self._schedule_will(session)
            self.server.session_ended(session, vhost)
        vhost.owner_closed(self)

    def _schedule_will(self, session: Session) -> None:
        will = self.will
        assert will is not None
        delay = will.properties.get("will_delay_interval", 0) if self.version == 5 else 0
        if session.expiry is not None and session.persistent:
            delay = min(delay, session.expiry)
        elif not session.persistent:
            delay = 0
        publisher = self._get_publisher() if self.vhost is not None else None
        client_id = self.client_id

        def send() -> None:
            session.will_timer = None
            if session.connection is not None:
                return  # the client came back in time: no will
            _publish_will(self.server, publisher, will, client_id)

        if delay:
            session.will_timer = self.core.call_later(delay, send)
        else:
            _publish_will(self.server, publisher, will, client_id)

    # --- packets ----------------------------------------------------------------------

    def dispatch(self, packet: Packet) -> None:
        if self.session is None:
            if not isinstance(packet, Connect):
                raise MQTTError(codec.PROTOCOL_ERROR, "the first packet must be CONNECT")
            self.on_connect(packet)
            return
        if isinstance(packet, Publish):
            self.on_publish(packet)
        elif isinstance(packet, Ack):
            self.on_ack(packet)
        elif isinstance(packet, Subscribe):
            self.on_subscribe(packet)
        elif isinstance(packet, Unsubscribe):
            self.on_unsubscribe(packet)
        elif isinstance(packet, codec.Pingreq):
            self.write(codec.Pingresp())
        elif isinstance(packet, Disconnect):
            self.on_disconnect(packet)
        elif isinstance(packet, Connect):
            raise MQTTError(codec.PROTOCOL_ERROR, "second CONNECT")
        else:
            raise MQTTError(codec.PROTOCOL_ERROR, f"unexpected {type(packet).__name__}")

    def _refuse(self, v3_code: int, v5_code: int, text: str) -> None:
        log.info("mqtt %s: connection refused: %s", self.client_id or self.peer, text)
        code = v5_code if self.version == 5 else v3_code
        props = {"reason_string": text} if self.version == 5 else {}
        self.write(Connack(False, code, props))
        self._flush()
        self.closed = True
        self.server.connections.discard(self)
        self.server.unwatch(self)
        self.transport.close()

    def on_connect(self, packet: Connect) -> None:
        self.version = 5 if packet.version == 5 else 4
        config = self.config
        core = self.core
        props = packet.properties
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if not packet.clean_start and self.version == 4:
                self._refuse(codec.V3_IDENTIFIER_REJECTED, codec.CLIENT_ID_NOT_VALID,
                             "empty client id needs a clean session")
                return
            client_id = assigned = "baedal-" + uuid.uuid4().hex[:16]
        self.client_id = client_id
        if len(client_id.encode()) > MAX_CLIENT_ID:
            # The id names the session's queues; 3.1.1 needs only 23 characters accepted.
            self._refuse(codec.V3_IDENTIFIER_REJECTED, codec.CLIENT_ID_NOT_VALID,
                         f"client id longer than {MAX_CLIENT_ID} bytes")
            return
        # Login against Baedal's users (anonymous only when configured).
        if packet.username is None:
            if not config.allow_anonymous:
                self._refuse(codec.V3_NOT_AUTHORIZED, codec.NOT_AUTHORIZED,
                             "anonymous connections are not allowed")
                return
            user = core.users.get(core.config.default_user)
        else:
            password = (packet.password or b"").decode("utf-8", "replace")
            user = core.authenticate(packet.username, password)
        if user is None:
            self._refuse(codec.V3_BAD_USERNAME_OR_PASSWORD, codec.BAD_USERNAME_OR_PASSWORD,
                         "bad user name or password")
            return
        if user.name in core.config.loopback_users and not is_loopback(self.peer[0] if self.peer else ""):
            self._refuse(codec.V3_NOT_AUTHORIZED, codec.NOT_AUTHORIZED,
                         f"user '{user.name}' can only connect via localhost")
            return
        try:
            vhost = self.server.vhost
        except CoreError as exc:
            self._refuse(codec.V3_SERVER_UNAVAILABLE, codec.SERVER_UNAVAILABLE, exc.text)
            return
        permission = core.permission(user.name, vhost.name)
        if permission is None:
            self._refuse(codec.V3_NOT_AUTHORIZED, codec.NOT_AUTHORIZED,
                         f"access to vhost '{vhost.name}' refused for user '{user.name}'")
            return
        self.username = user.name
        self.vhost = vhost
        self.permission = permission
        self.will = packet.will
        if self.version == 5:
            self.client_receive_max = min(props.get("receive_maximum", 65535), config.max_inflight)
            self.client_max_packet = props.get("maximum_packet_size", self.client_max_packet)
            self.client_alias_max = props.get("topic_alias_maximum", 0)
            expiry = props.get("session_expiry_interval", 0)
            persistent = expiry > 0
            session_expiry: int | None = None if expiry == 0xFFFFFFFF else expiry
        else:
            self.client_receive_max = config.max_inflight
            persistent = not packet.clean_start
            session_expiry = None
        # Takeover: the same client id elsewhere is disconnected (its will is sent).
        server = self.server
        existing = server.sessions.get(client_id)
        if existing is not None and existing.connection is not None:
            existing.connection.server_disconnect(codec.SESSION_TAKEN_OVER, "session taken over",
                                                  will=True)
            existing = server.sessions.get(client_id)  # a clean one ended with that
        if existing is None and not packet.clean_start:
            existing = server.restore_session(client_id, vhost)
        if existing is not None and packet.clean_start:
            server.discard_session(existing, vhost)
            existing = None
        session_present = existing is not None
        if existing is None:
            session = Session(client_id, persistent, session_expiry)
        else:
            session = existing
            if session.expiry_timer is not None:
                session.expiry_timer.cancel()
                session.expiry_timer = None
            if session.will_timer is not None:  # came back within the will delay
                session.will_timer.cancel()
                session.will_timer = None
            session.persistent = persistent
            session.expiry = session_expiry
        session.connection = self
        server.sessions[client_id] = session
        self.session = session
        # Keep-alive: 1.5 x the interval without any packet closes the connection.
        keep_alive = packet.keep_alive
        server_keep_alive = None
        if config.max_keep_alive and (keep_alive == 0 or keep_alive > config.max_keep_alive):
            keep_alive = server_keep_alive = config.max_keep_alive
        if len(_KEEP_ALIVES) < 1024:
            keep_alive = _KEEP_ALIVES.setdefault(keep_alive, keep_alive)
        self.keep_alive = keep_alive
        if keep_alive:
            server.watch(self, math.ceil(keep_alive * 1.5 / KEEP_ALIVE_TICK) + 1)
        ack_props: dict[str, Any] = {}
        if self.version == 5:
            ack_props = {
                "receive_maximum": config.receive_maximum,
                "maximum_packet_size": config.max_packet_size,
                "topic_alias_maximum": config.topic_alias_maximum,
                "retain_available": 1,
                "wildcard_subscription_available": 1,
                "subscription_identifier_available": 1,
                "shared_subscription_available": 1,
            }
            if assigned is not None:
                ack_props["assigned_client_identifier"] = assigned
            if server_keep_alive is not None:
                ack_props["server_keep_alive"] = server_keep_alive
        self.write(Connack(session_present, 0, ack_props))
        # Resume the session: subscriptions' queues get consumers, PUBRELs are resent.
        for packet_id, record in session.inflight.items():
            if record.released:
                self.write(Ack(codec.PUBREL, packet_id))
        for options in list(session.subscriptions.values()):
            try:
                self._attach(options)
            except CoreError as exc:
                log.warning("mqtt %s: cannot resume subscription %s: %s", client_id,
                            options.topic_filter, exc.text)

    def on_disconnect(self, packet: Disconnect) -> None:
        session = self.session
        if (
            self.version == 5
            and session is not None
            and "session_expiry_interval" in packet.properties
        ):
            expiry = packet.properties["session_expiry_interval"]
            if expiry and not session.persistent:
                raise MQTTError(codec.PROTOCOL_ERROR, "session expiry set on DISCONNECT after 0")
            session.persistent = expiry > 0
            session.expiry = None if expiry == 0xFFFFFFFF else expiry
        with_will = self.version == 5 and packet.reason_code == codec.DISCONNECT_WITH_WILL
        if not with_will:
            self.will = None
        self._flush()
        transport = self.transport
        self.teardown(publish_will=with_will)
        transport.close()

    # --- publish (client → broker) ----------------------------------------------------

    def _check_topic(self, topic: str, what: str) -> None:
        config = self.config
        if len(topic.encode()) > config.max_topic_length:
            raise MQTTError(codec.TOPIC_NAME_INVALID if what == "topic" else codec.TOPIC_FILTER_INVALID,
                            f"{what} longer than {config.max_topic_length} bytes")
        if topic.count("/") + 1 > config.max_topic_levels:
            raise MQTTError(codec.TOPIC_NAME_INVALID if what == "topic" else codec.TOPIC_FILTER_INVALID,
                            f"{what} has more than {config.max_topic_levels} levels")

    def _get_publisher(self) -> Publisher:
        publisher = self.publisher
        if publisher is None:
            assert self.vhost is not None and self.username is not None
            publisher = self.publisher = Publisher(self.core, self.vhost, self.username, self.permission)
        return publisher

    def on_publish(self, packet: Publish) -> None:
        session = self.session
        assert session is not None
        publisher = self.publisher
        if publisher is None:
            publisher = self._get_publisher()
        acks = self.acks
        if acks is None:
            acks = self.acks = deque()
        topic = packet.topic
        properties = packet.properties
        if properties and self.version == 5:
            alias = properties.get("topic_alias")
            if alias is not None:
                if alias > self.config.topic_alias_maximum:
                    raise MQTTError(codec.TOPIC_ALIAS_INVALID, f"topic alias {alias} out of range")
                if topic:
                    if self.aliases_in is None:
                        self.aliases_in = {}
                    self.aliases_in[alias] = topic
                else:
                    known = self.aliases_in.get(alias) if self.aliases_in is not None else None
                    if known is None:
                        raise MQTTError(codec.PROTOCOL_ERROR, f"unknown topic alias {alias}")
                    topic = known
        qos = packet.qos
        keys = self._keys
        key = keys.get(topic) if keys is not None else None
        if key is None:
            # First PUBLISH to this topic on this connection: the checks, then the
            # routing key remembered (only for topics that pass, and never a $-topic).
            self._check_topic(topic, "topic")
            if topic.startswith("$"):
                # $-topics are the broker's ($SYS); clients may not publish to them.
                if qos:
                    kind = codec.PUBACK if qos == 1 else codec.PUBREC
                    acks.append([self._ack_wire(kind, packet.packet_id or 0, codec.NOT_AUTHORIZED), True])
                    self._flush_acks()
                return
            key = topic_to_key(topic)
            if keys is None:
                keys = self._keys = {}
            elif len(keys) >= _CACHE_SIZE:
                keys.clear()
            keys[topic] = key
        if qos == 2 and packet.packet_id in session.awaiting_rel:
            # A resent QoS 2 PUBLISH we already have: PUBREC again, do not route twice.
            acks.append([encode_ack(codec.PUBREC, packet.packet_id), True])
            self._flush_acks()
            return
        # In flight from the client: QoS 1 PUBLISHes not yet acknowledged (waiting for
        # the fsync) and QoS 2 ones not yet released by PUBREL.
        if qos and self.inbound_unacked + len(session.awaiting_rel) >= self.server.config.receive_maximum:
            raise MQTTError(codec.RECEIVE_MAXIMUM_EXCEEDED, "receive maximum exceeded")
        self.server.counters["publish_in"] += 1
        if properties:
            message = message_from_publish(packet, topic, self.client_id)
        else:
            # The common PUBLISH (3.1.1, or 5.0 without properties): the message's fields
            # stay lazy and its extension is shared (``plain_extension``).
            extensions = self._extensions
            extension = extensions.get(qos | (4 if packet.retain else 0)) if extensions is not None else None
            if extension is None:
                extension = self.plain_extension(qos, packet.retain)
            message = Message(EXCHANGE, key, packet.payload, qos > 0, 0, None, _wall_clock(), extension)
            # Set now rather than on first read: the core's admit reads them at once.
            message.adopt_fields_and_headers(_PLAIN_FIELDS[qos], _PLAIN_HEADERS[qos])
        needs_sync = False
        try:
            # Publisher.publish's three steps, without its per-message PublishResult.
            exchange = publisher.target(EXCHANGE)
            if properties or len(packet.payload) > publisher.max_message_size:
                message, extra_keys = publisher.admit(exchange, message)
            else:
                # ``admit`` of a plain message is its topic check alone: no user-id, and
                # its one header (the QoS) is neither CC/BCC nor a scheduling header.
                # (As the AMQP channel skips ``admit`` for a message without either.)
                if exchange.type == "topic":
                    publisher.check_topic_write(exchange, key)
                extra_keys = None
            outcome = publisher.deliver(exchange, message, extra_keys)
        except CoreError as exc:
            log.info("mqtt %s: publish to %r refused: %s", self.client_id, topic, exc.text)
            if qos == 0:
                return
            if self.version != 5:
                # 3.1.1 has no negative acknowledgement: RabbitMQ closes the connection.
                raise MQTTError(codec.NOT_AUTHORIZED, exc.text) from None
            kind = codec.PUBACK if qos == 1 else codec.PUBREC
            acks.append([encode(Ack(kind, packet.packet_id or 0, codec.NOT_AUTHORIZED,
                                    {"reason_string": exc.text[:200]}), 5), True])
            self._flush_acks()
            return
        if packet.retain:
            needs_sync = self.server.retained.set(
                topic, packet.payload, qos, _retainable(properties)
            )
        if qos == 0:
            if outcome & REPLICATING:
                publisher.take_replicating()  # nobody waits for them
            return
        reason = codec.NO_MATCHING_SUBSCRIBERS if (
            outcome & UNROUTABLE and self.version == 5
        ) else 0
        if outcome & REFUSED:
            reason = codec.QUOTA_EXCEEDED if self.version == 5 else 0
        if qos == 2:
            awaiting = session.awaiting_rel
            if awaiting is _NO_IDS:
                awaiting = session.awaiting_rel = set()
            awaiting.add(packet.packet_id or 0)  # type: ignore[union-attr]
            if session.persistent:
                # Remembered on disk with the message (the PUBREC waits for that fsync).
                self.server.state.record(self.client_id, "in+", packet.packet_id or 0)
                needs_sync = True
        kind = _PUBACK if qos == 1 else codec.PUBREC
        record = [self._ack_wire(kind, packet.packet_id or 0, reason) if reason
                  else encode_ack(kind, packet.packet_id or 0), False]  # (_ack_wire of reason 0)
        acks.append(record)
        counted = qos == 1  # a QoS 2 one is counted in awaiting_rel
        if counted:
            self.inbound_unacked += 1
        replicating = publisher.take_replicating() if outcome & REPLICATING else None
        if not replicating:
            if needs_sync or outcome & NEEDS_SYNC:
                # One fsync wait for every PUBLISH of this read (``_request_sync`` at
                # the end of the read), as AMQP confirms are grouped.
                unsynced = self._unsynced
                if unsynced is None:
                    self._unsynced = [record]
                else:
                    unsynced.append(record)
                if counted:
                    self._unsynced_counted += 1
                return
            record[1] = True
            if counted:
                self.inbound_unacked -= 1
            self._flush_acks()
            return
        outcome |= NEEDS_SYNC if needs_sync else 0

        def stored() -> None:
            record[1] = True
            if counted:
                self.inbound_unacked -= 1
            self._flush_acks()

        def failed(exc: BaseException) -> None:
            if counted:
                self.inbound_unacked -= 1
            log.warning("mqtt %s: message not stored: %s", self.client_id, exc)
            # Not stored: no acknowledgement may go out; the client resends after reconnect.
            self.server_disconnect(codec.UNSPECIFIED_ERROR, "message not stored", will=True)

        if not publisher.when_stored(outcome, replicating, stored, failed):
            stored()

    def _publish_run(self, run: list[Publish], topic: str, qos: int) -> bool:
        """A run of plain QoS 0/1 PUBLISHes (no properties, no retain) to one topic
        already published to on this connection, from one read: ``on_publish`` of each,
        with one permission check, one route lookup and one enqueue per queue
        (``Publisher.deliver_many``/``Queue.publish_many``).  The PUBACKs are the same
        records in the same order, still behind the read's one fsync wait.

        False when nothing was done and the caller must take ``on_publish`` packet by
        packet: anything refused (receive maximum, a permission, a size), or a route
        or a queue the bulk path does not handle (those answer at the packet they
        concern, as ``on_publish`` does).
        """
        session = self.session
        assert session is not None
        count = len(run)
        if qos and self.inbound_unacked + len(session.awaiting_rel) + count > self.server.config.receive_maximum:
            return False
        publisher = self.publisher
        if publisher is None:
            publisher = self._get_publisher()
        key = self._keys[topic]  # type: ignore[index]
        try:
            exchange = publisher.target(EXCHANGE)
            if exchange.type == "topic":
                publisher.check_topic_write(exchange, key)
        except CoreError:
            return False
        max_size = publisher.max_message_size
        extensions = self._extensions
        extension = extensions.get(qos) if extensions is not None else None
        if extension is None:
            extension = self.plain_extension(qos, False)
        fields = _PLAIN_FIELDS[qos]
        headers = _PLAIN_HEADERS[qos]
        persistent = qos > 0
        now = _wall_clock()  # one read, one arrival time
        for packet in run:
            if len(packet.payload) > max_size:
                return False
        messages = [
            Message(EXCHANGE, key, packet.payload, persistent, 0, None, now, extension, fields, headers)
            for packet in run
        ]
        outcomes = publisher.deliver_many(exchange, messages)
        if outcomes is None:
            return False
        self.server.counters["publish_in"] += count
        if qos == 0:
            if publisher.replicating is not None:
                publisher.take_replicating()  # nobody waits for them
            return True
        acks = self.acks
        if acks is None:
            acks = self.acks = deque()
        replicating = publisher.take_replicating() if publisher.replicating is not None else None
        version5 = self.version == 5
        outcome = outcomes[0]
        if (
            replicating is None
            and outcomes.count(outcome) == count
            and not (outcome & (UNROUTABLE | REFUSED) and version5)
        ):
            # Every PUBLISH of the run had the same outcome (the common case): one
            # record holds the run's PUBACKs (encode_ack's bytes, joined).
            pack = _PUBACK_PACK
            record = [b"".join([pack(_PUBACK_FIRST, 2, packet.packet_id or 0) for packet in run]), False]
            acks.append(record)
            if outcome & NEEDS_SYNC:
                unsynced = self._unsynced
                if unsynced is None:
                    unsynced = self._unsynced = []
                unsynced.append(record)
                self._unsynced_counted += count
                self.inbound_unacked += count
            else:
                record[1] = True
            self._flush_acks()
            return True
        records = []
        unsynced = None
        for packet, outcome in zip(run, outcomes, strict=True):
            packet_id = packet.packet_id or 0
            if outcome & (UNROUTABLE | REFUSED) and version5:
                reason = codec.QUOTA_EXCEEDED if outcome & REFUSED else codec.NO_MATCHING_SUBSCRIBERS
                record = [self._ack_wire(_PUBACK, packet_id, reason), False]
            else:
                record = [encode_ack(_PUBACK, packet_id), False]
            acks.append(record)
            if replicating:
                records.append(record)
            elif outcome & NEEDS_SYNC:
                if unsynced is None:
                    unsynced = self._unsynced
                    if unsynced is None:
                        unsynced = self._unsynced = []
                unsynced.append(record)
                self._unsynced_counted += 1
                self.inbound_unacked += 1
            else:
                record[1] = True
        if replicating:
            # The run's PUBACKs wait for all its handles (and the fsync when any needs it).
            self.inbound_unacked += count
            waiting = 0
            for outcome in outcomes:
                waiting |= outcome

            stored, failed = self._when_stored(records, count)
            if not publisher.when_stored(waiting, replicating, stored, failed):
                stored()
            return True
        self._flush_acks()
        return True

    def plain_extension(self, qos: int, retain: bool) -> MQTTExtension:
        """The shared extension of this connection's PUBLISHes without properties."""
        extensions = self._extensions
        if extensions is None:
            extensions = self._extensions = {}
        index = qos | (4 if retain else 0)
        extension = extensions.get(index)
        if extension is None:
            extension = extensions[index] = MQTTExtension(qos, retain, self.client_id, None, None)
        return extension

    def _ack_wire(self, kind: int, packet_id: int, reason: int) -> bytes:
        if reason and self.version == 5:
            return encode(Ack(kind, packet_id, reason), 5)
        return encode_ack(kind, packet_id)

    def _when_stored(
        self, records: list[Any], counted: int
    ) -> tuple[Callable[[], None], Callable[[BaseException], None]]:
        """The callbacks that release a read's acknowledgements (``records``, of which
        ``counted`` count against the receive maximum) once their messages are stored,
        or disconnect the client when they could not be."""

        def stored() -> None:
            for record in records:
                record[1] = True
            self.inbound_unacked -= counted
            self._flush_acks()
            if not self._in_read:
                # Written now, not one loop turn later (after whatever reads that turn
                # brings): the publisher's window moves as soon as it can.
                self._flush()

        def failed(exc: BaseException) -> None:
            self.inbound_unacked -= counted
            log.warning("mqtt %s: messages not stored: %s", self.client_id, exc)
            # Not stored: no acknowledgement may go out; the client resends after reconnect.
            self.server_disconnect(codec.UNSPECIFIED_ERROR, "message not stored", will=True)

        return stored, failed

    def _request_sync(self) -> None:
        """The PUBACKs/PUBRECs of this read go out after one fsync covering them all."""
        records = self._unsynced
        counted = self._unsynced_counted
        self._unsynced = None
        self._unsynced_counted = 0
        if self.closed or records is None:
            return

        stored, failed = self._when_stored(records, counted)
        if not self.core.after_sync(stored, failed):
            stored()

    def _flush_acks(self) -> None:
        acks = self.acks
        if not acks or not acks[0][1] or self.closed:
            return
        ready = []
        while acks and acks[0][1]:
            ready.append(acks.popleft()[0])
        self._emit(ready[0] if len(ready) == 1 else b"".join(ready))

    def on_ack(self, packet: Ack) -> None:
        session = self.session
        assert session is not None
        kind = packet.kind
        if kind == codec.PUBREL:
            # Inbound QoS 2, step 3: forget the id, answer PUBCOMP.
            known = packet.packet_id in session.awaiting_rel
            if known:
                session.awaiting_rel.discard(packet.packet_id)  # type: ignore[union-attr]
            if known and session.persistent:
                self.server.state.record(self.client_id, "in-", packet.packet_id)
            reason = 0 if known or self.version != 5 else codec.PACKET_ID_NOT_FOUND
            self.write(Ack(codec.PUBCOMP, packet.packet_id, reason))
            return
        record = session.inflight.get(packet.packet_id)
        if record is None:
            return  # an ack for something no longer in flight (spec: ignore)
        if kind == codec.PUBACK and record.qos == 1:
            del session.inflight[packet.packet_id]
            self._settle(record)
        elif kind == codec.PUBREC and record.qos == 2 and not record.released:
            if packet.reason_code >= 0x80:
                del session.inflight[packet.packet_id]
                self._settle(record)
                return
            record.released = True
            if session.persistent:
                self.server.state.record(self.client_id, "out+", packet.packet_id)
            self._settle(record)  # the receiver owns the message now
            self._emit(encode_ack(codec.PUBREL, packet.packet_id))
        elif kind == codec.PUBCOMP and record.released:
            del session.inflight[packet.packet_id]
            if session.persistent:
                self.server.state.record(self.client_id, "out-", packet.packet_id)
        else:
            raise MQTTError(codec.PROTOCOL_ERROR, f"unexpected acknowledgement type {kind}")
        # Credit came back: the QoS 1/2 queues are drained once at the end of the read
        # (data_received), not once per acknowledgement.
        self._credit_back = True

    @staticmethod
    def _settle(record: Inflight) -> None:
        queue, entry = record.queue, record.entry
        if queue is not None and entry is not None:
            record.entry = None
            queue.ack(entry)

    # --- subscribe --------------------------------------------------------------------

    def on_subscribe(self, packet: Subscribe) -> None:
        session = self.session
        vhost = self.vhost
        assert session is not None and vhost is not None
        if session.subscriptions is _EMPTY:
            session.subscriptions = {}
        sub_ids = packet.properties.get("subscription_identifier", [])
        sub_id = sub_ids[0] if sub_ids else None
        codes: list[int] = []
        retained_to_send: list[tuple[SubOptions, int]] = []
        permission = self.permission
        for request in packet.subscriptions:
            try:
                group, topic_filter = split_shared(request.topic_filter)
                codec.check_topic_filter(topic_filter)
                self._check_topic(topic_filter, "topic filter")
                if group is not None and request.no_local and self.version == 5:
                    raise MQTTError(codec.PROTOCOL_ERROR, "no local on a shared subscription")
            except ValueError:
                codes.append(0x80 if self.version != 5 else codec.TOPIC_FILTER_INVALID)
                continue
            except MQTTError as exc:
                if exc.reason_code == codec.PROTOCOL_ERROR:
                    raise
                codes.append(0x80 if self.version != 5 else exc.reason_code)
                continue
            key = request.topic_filter
            if key not in session.subscriptions and len(session.subscriptions) >= self.config.max_subscriptions:
                codes.append(0x80 if self.version != 5 else codec.QUOTA_EXCEEDED)
                continue
            if permission is None or not permission.allows("read", EXCHANGE):
                codes.append(0x80 if self.version != 5 else codec.NOT_AUTHORIZED)
                continue
            qos = request.qos
            if group is None:
                queue_name = session.queue_name(qos)
            else:
                queue_name = share_queue_name(group, topic_filter)
            options = SubOptions(topic_filter, qos, request.no_local, request.retain_as_published,
                                 sub_id, queue_name, filter_to_key(topic_filter), group)
            previous = session.subscriptions.get(key)
            try:
                if previous is not None and group is not None:
                    # the same share again: stay a member (leaving could drop the queue)
                    session.subscriptions[key] = options
                    consumer = self.consumers.get(queue_name)
                    if consumer is not None:
                        consumer.qos = qos
                        consumer.no_ack = qos == 0
                    codes.append(qos)
                    continue
                if previous is not None:
                    self._unbind(previous)
                session.subscriptions[key] = options
                self._attach(options)
                if group is not None and session.persistent:
                    self.server.state.record(self.client_id, "share+", [key, qos])
            except CoreError as exc:
                session.subscriptions.pop(key, None)
                log.info("mqtt %s: subscribe %r refused: %s", self.client_id, key, exc.text)
                codes.append(0x80 if self.version != 5 else codec.NOT_AUTHORIZED)
                continue
            codes.append(qos)
            handling = request.retain_handling if self.version == 5 else 0
            if group is None and (handling == 0 or (handling == 1 and previous is None)):
                retained_to_send.append((options, qos))
        session.refresh_special()
        self.write(Suback(packet.packet_id, codes))
        for options, qos in retained_to_send:
            for message in self.server.retained.matching(options.topic_filter):
                self._send_retained(message, options, qos)

    def _ensure_queue(self, options: SubOptions) -> Queue:
        session = self.session
        vhost = self.vhost
        assert session is not None and vhost is not None
        queue = vhost.queues.get(options.queue_name)
        if queue is not None:
            return queue
        if options.group is not None:
            queue, _ = vhost.declare_queue(options.queue_name, durable=True)
            return queue
        if session.persistent:
            arguments: dict[str, Any] = {}
            if session.expiry is not None:
                arguments["x-expires"] = max(session.expiry, 1) * 1000
            queue, _ = vhost.declare_queue(options.queue_name, durable=True, arguments=arguments)
        else:
            queue, _ = vhost.declare_queue(options.queue_name, durable=False,
                                           exclusive_owner=self, auto_delete=True)
        return queue

    def _attach(self, options: SubOptions) -> None:
        """Bind the subscription and consume its queue on this connection."""
        vhost = self.vhost
        assert vhost is not None
        queue = self._ensure_queue(options)
        vhost.bind(EXCHANGE, queue, options.routing_key, options.binding_arguments())
        if options.group is not None:
            session = self.session
            assert session is not None
            self.server.share_members.setdefault(queue.name, set()).add(session.client_id)
        if queue.name not in self.consumers:
            consumer = MQTTConsumer(self, queue, options.qos, options.group is not None)
            if self.consumers is _NO_CONSUMERS:
                self.consumers = {}
            self.consumers[queue.name] = consumer
            queue.add_consumer(consumer)

    def _unbind(self, options: SubOptions) -> None:
        vhost = self.vhost
        assert vhost is not None
        queue = vhost.queues.get(options.queue_name)
        if queue is None:
            return
        if options.group is not None:
            consumer = self.consumers.pop(queue.name, None)
            if consumer is not None:
                queue.remove_consumer(consumer)
            session = self.session
            assert session is not None
            self.server.state.record(session.client_id, "share-",
                                     [f"$share/{options.group}/{options.topic_filter}", 0])
            self.server.leave_share(session.client_id, options, vhost)
            return
        vhost.unbind(EXCHANGE, queue, options.routing_key, options.binding_arguments())

    def on_unsubscribe(self, packet: Unsubscribe) -> None:
        session = self.session
        assert session is not None
        codes = []
        for topic_filter in packet.topic_filters:
            options = session.subscriptions.pop(topic_filter, None)
            if options is None:
                codes.append(codec.NO_SUBSCRIPTION_EXISTED)
                continue
            self._unbind(options)
            codes.append(0)
        session.refresh_special()
        self.write(Unsuback(packet.packet_id, codes if self.version == 5 else []))

    # --- deliver (broker → client) ----------------------------------------------------

    def _matching_options(self, queue_name: str, topic: str) -> list[SubOptions]:
        session = self.session
        assert session is not None
        return [
            s for s in session.subscriptions.values()
            if s.queue_name == queue_name and matches(s.topic_filter, topic)
        ]

    def deliver(self, consumer: MQTTConsumer, queue: Queue, entry: QueueEntry) -> None:
        consumer.deliver(queue, entry)  # (the guarded call is MQTTConsumer.deliver)

    def _deliver(self, consumer: MQTTConsumer, queue: Queue, entry: QueueEntry) -> None:
        message = entry.message
        session = self.session
        assert message is not None and session is not None
        topics = self._topics_out
        if topics is None:
            topics = self._topics_out = {}
        key = message.routing_key
        found_topic = topics.get(key, False)
        if found_topic is False:
            topic = key_to_topic(key)
            if "+" in topic or "#" in topic or not topic:
                found_topic = None  # no MQTT topic name (MQTT-4.7.3-1): never sent
            else:
                found_topic = (topic, encode_topic(topic))
            if len(topics) >= _CACHE_SIZE:
                topics.clear()
            topics[key] = found_topic
        if found_topic is None:
            self._drop(consumer, queue, entry)
            return
        topic, topic_wire = found_topic
        extension = message.extension
        if not session.special and self.version == 4 and topic[0] != "$":
            # The common delivery, now that the topic is cached (MQTTConsumer.deliver).
            consumer.deliver(queue, entry)
            return
        mqtt_ext = extension if isinstance(extension, MQTTExtension) else None
        publish_qos = mqtt_ext.qos if mqtt_ext is not None else consumer.qos
        qos = min(publish_qos, consumer.qos)
        retain = False
        sub_ids: list[int] = []
        if session.special or topic.startswith("$"):
            matched = self._matching_options(queue.name, topic)
            if not consumer.shared:
                if mqtt_ext is not None and mqtt_ext.client_id == self.client_id:
                    matched = [s for s in matched if not s.no_local]
                if not matched:
                    self._drop(consumer, queue, entry)
                    return
            if mqtt_ext is not None and mqtt_ext.retain and any(s.retain_as_published for s in matched):
                retain = True
            sub_ids = [s.sub_id for s in matched if s.sub_id is not None]
        props: dict[str, Any] = {}
        if self.version == 5:
            found = publish_properties(message, time.time())
            if found is None:
                self._drop(consumer, queue, entry)
                return
            props = found
            if sub_ids:
                props["subscription_identifier"] = sub_ids
        dup = entry.delivery_count > 0
        entry.delivery_count += 1
        packet_id = None
        if qos:
            packet_id = session.allocate_id()
        packet = Publish(topic, message.body, qos, retain, dup and qos > 0, packet_id, props)
        if not self._send_publish(packet):
            self._drop(consumer, queue, entry)
            return
        self.server.counters["publish_out"] += 1
        if qos:
            assert packet_id is not None
            session.inflight[packet_id] = Inflight(queue, entry, qos)
            if consumer.no_ack:  # a QoS 0 queue never has qos > 0 deliveries
                queue.settle_delivered(entry)
        else:
            if consumer.no_ack:
                queue.settle_delivered(entry)
            else:
                queue.ack(entry)

    def _drop(self, consumer: MQTTConsumer, queue: Queue, entry: QueueEntry) -> None:
        """A delivery that does not go out (no-local, expired, too large): settled."""
        if consumer.no_ack:
            queue.settle_delivered(entry)
        else:
            queue.ack(entry)

    def _send_publish(self, packet: Publish) -> bool:
        """Write a PUBLISH, with an outbound topic alias when the client allows them;
        False when it is larger than the client's Maximum Packet Size (dropped)."""
        if self.version == 5 and self.client_alias_max:
            aliases = self.aliases_out
            if aliases is None:
                aliases = self.aliases_out = {}
            alias = aliases.get(packet.topic)
            if alias is not None:
                packet.properties["topic_alias"] = alias
                full_topic = packet.topic
                packet.topic = ""
                data = encode(packet, 5)
                packet.topic = full_topic
            elif len(aliases) < self.client_alias_max:
                alias = len(aliases) + 1
                packet.properties["topic_alias"] = alias
                data = encode(packet, 5)
                if len(data) <= self.client_max_packet:  # the client learns it only if sent
                    aliases[packet.topic] = alias
            else:
                data = encode(packet, 5)
        else:
            data = encode(packet, self.version)
        if len(data) > self.client_max_packet:
            return False
        if not self.closed:
            self._emit(data)
        return True

    def _send_retained(self, message: Any, options: SubOptions, sub_qos: int) -> None:
        session = self.session
        assert session is not None
        qos = min(message.qos, sub_qos)
        props: dict[str, Any] = {}
        if self.version == 5:
            props = dict(message.properties)
            left = message.remaining_expiry(time.time())
            if left is not None:
                if left <= 0:
                    return
                props["message_expiry_interval"] = left
            if options.sub_id is not None:
                props["subscription_identifier"] = [options.sub_id]
        packet_id = session.allocate_id() if qos else None
        packet = Publish(message.topic, message.payload, qos, True, False, packet_id, props)
        if self._send_publish(packet) and qos:
            assert packet_id is not None
            session.inflight[packet_id] = Inflight(None, None, qos)


for _name, _default in _RARE_FIELDS.items():
    setattr(MQTTConnection, _name, _rare_field(_name, _default))


def _retainable(properties: dict[str, Any]) -> dict[str, Any]:
    keep = ("payload_format_indicator", "message_expiry_interval", "content_type",
            "response_topic", "correlation_data", "user_property")
    return {k: v for k, v in properties.items() if k in keep}


def _publish_will(server: MQTTServer, publisher: Publisher | None, will: codec.Will, client_id: str) -> None:
    if publisher is None:
        return
    packet = Publish(will.topic, will.payload, will.qos, will.retain, False, None, will.properties)
    message = message_from_publish(packet, will.topic, client_id)
    try:
        publisher.publish(EXCHANGE, message)
    except CoreError as exc:
        log.info("mqtt %s: will to %r refused: %s", client_id, will.topic, exc.text)
        return
    if will.retain:
        server.retained.set(will.topic, will.payload, will.qos, _retainable(will.properties))
