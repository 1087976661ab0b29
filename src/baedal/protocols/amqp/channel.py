"""AMQP channels: translate channel-level methods into core operations.

Errors: core ``CoreError`` kinds map to soft reply codes (channel.close); protocol
misuse raises ``ConnectionFault`` (connection.close).  The connection owns the socket
and the output buffer; the channel only appends frames to it.

Publisher confirms (theory of operation): every publish in confirm mode takes the next
sequence number.  A message is *decided* when routed; a persistent message that reached
a durable queue is additionally *unsynced* until the storage syncer's next fsync covers
it.  Confirms are emitted in sequence order as cumulative ``basic.ack multiple=true``
up to the first unsynced number, with ``basic.nack`` for refused publishes interleaved
in order; they are flushed once per read batch and once per completed fsync, never per
message.
"""

from __future__ import annotations

import os
import struct
from bisect import insort
from collections import deque
from typing import TYPE_CHECKING, Any

from ...cluster.replicator import replication_failure
from ...core.exchange import EXCHANGE_CLASSES, Exchange
from ...core.message import NO_FIELDS, Message, QueueEntry, parse_expiration
from ...core.properties import DecodeError
from ...core.publish import (
    NEEDS_SYNC,
    REFUSED,
    REPLICATING,
    UNROUTABLE,
    Publisher,
    when_stored,
)
from ...core.queue import Queue
from ...core.stream import EXCHANGE_HEADER, StartError, StreamQueue, start_from_argument
from ...core.vhost import REPLY_TO, REPLY_TO_PREFIX, CoreError
from . import spec
from .codec import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    FRAME_BODY,
    FRAME_END_BYTE,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_METHOD,
    NO_ROUTE,
    NOT_ALLOWED,
    NOT_FOUND,
    NOT_IMPLEMENTED,
    PRECONDITION_FAILED,
    RESOURCE_LOCKED,
    ChannelFault,
    ConnectionFault,
    ContentFrame,
    content_frames,
    deliver_frames,
    deliver_payload,
    encode_short_string,
    method_frame,
)
from .properties import AmqpExtension, scan_properties, wire_extension

if TYPE_CHECKING:
    from ...core.selector import Selector
    from .connection import AMQPConnection

_CORE_CODES = {
    "not_found": NOT_FOUND,
    "precondition_failed": PRECONDITION_FAILED,
    "access_refused": ACCESS_REFUSED,
    "resource_locked": RESOURCE_LOCKED,
    "command_invalid": COMMAND_INVALID,
    "not_allowed": NOT_ALLOWED,
}

# Bound on message bodies held by one uncommitted transaction (publishes are routed at
# tx.commit); past it the channel is closed with 406.  RabbitMQ sets no such bound and
# holds them in its channel process; a bound is the honest version of the same.
MAX_TX_BYTES = 256 * 1024 * 1024

# Delivery acknowledgement timeout bookkeeping (see Channel.check_ack_timeout): at most
# this many (delivery tag, time) marks per channel.
_MAX_DELIVERY_MARKS = 64

_REPLY_TO_BIT = 1 << 9
# Property-flag bits of the fields ``Publisher.admit`` reads (user-id, headers for
# CC/BCC); a publish with neither skips it, so its block is never decoded.
USER_ID_FLAG = 1 << 4
HEADERS_FLAG = 1 << 13
# A properties block holding delivery-mode 2 alone: a persistent message with no other
# property, the one kind of publish the stream fast path takes (Channel._publish_stream).
_BARE_PERSISTENT = b"\x10\x00\x02"


def _soft(code: int, text: str, method: spec.Method | None) -> ChannelFault:
    return ChannelFault(
        code, text, method.CLASS_ID if method else 0, method.METHOD_ID if method else 0
    )


def _hard(code: int, text: str, method: spec.Method | None) -> ConnectionFault:
    return ConnectionFault(
        code, text, method.CLASS_ID if method else 0, method.METHOD_ID if method else 0
    )


class AMQPConsumer:
    """A basic.consume subscription: the core's Consumer for one channel and queue."""

    __slots__ = (
        "tag",
        "tag_wire",
        "queue",
        "channel",
        "no_ack",
        "exclusive",
        "priority",
        "prefetch",
        "unacked",
        "owner",
        "arguments",
        "selector",
    )

    def __init__(
        self,
        tag: str,
        queue: Queue,
        channel: Channel,
        no_ack: bool,
        exclusive: bool,
        priority: int,
        prefetch: int,
        arguments: dict[str, Any],
    ) -> None:
        self.tag = tag
        self.tag_wire = encode_short_string(tag)
        self.queue = queue
        self.channel = channel
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.priority = priority
        self.prefetch = prefetch
        self.unacked = 0
        self.owner = channel.connection
        self.arguments = arguments
        self.selector: Selector | None = None  # x-selector (core/selector.py)

    def can_deliver(self) -> bool:
        channel = self.channel
        if not channel.can_send:
            return False
        if self.no_ack:
            return True
        if self.prefetch and self.unacked >= self.prefetch:
            return False
        limit = channel.global_prefetch
        return not limit or channel.unacked_count < limit

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        self.channel.send_delivery(self, queue, entry)

    def cancelled_by_server(self, queue: Queue) -> None:
        self.channel.server_cancel(self)


_STREAM_OFFSET_KEY = b"\x0fx-stream-offset" + b"l"
_LONG = struct.Struct(">q")
_TABLE_SIZE = struct.Struct(">I")


def with_stream_offset(properties: bytes, offset: int) -> bytes:
    """The properties block with an ``x-stream-offset`` header (AMQP long, as RabbitMQ
    sends it) appended to its headers table: spliced in, no decode of the block."""
    flags = (properties[0] << 8) | properties[1]
    pos = 2
    if flags & 0x8000:  # content-type
        pos += 1 + properties[pos]
    if flags & 0x4000:  # content-encoding
        pos += 1 + properties[pos]
    entry = _STREAM_OFFSET_KEY + _LONG.pack(offset)
    if flags & 0x2000:  # headers: grow the table by one entry at its end
        size = _TABLE_SIZE.unpack_from(properties, pos)[0]
        end = pos + 4 + size
        return b"".join(
            (properties[:pos], _TABLE_SIZE.pack(size + len(entry)), properties[pos + 4 : end], entry, properties[end:])
        )
    flags |= 0x2000
    return b"".join(
        (bytes((flags >> 8, flags & 0xFF)), properties[2:pos], _TABLE_SIZE.pack(len(entry)), entry, properties[pos:])
    )


# The block of a message with no neutral fields, priority or expiry (the common stream
# record) plus its offset, packed in one call: flags (headers, and delivery-mode when
# persistent), a one-entry headers table, delivery-mode 2.
_PERSISTENT_OFFSET_BLOCK = struct.Struct(">HI17sqB")
_TRANSIENT_OFFSET_BLOCK = struct.Struct(">HI17sq")
_OFFSET_TABLE_SIZE = len(_STREAM_OFFSET_KEY) + 8
_FRAME_HEADER = struct.Struct(">BHI")
_DELIVER_PREFIX = struct.pack(">HH", 60, 60)  # basic.deliver
_CLASS_WEIGHT = struct.pack(">HH", 60, 0)  # content header: class basic, weight 0


class AMQPStreamConsumer(AMQPConsumer):
    """A consumer of a stream: each delivery carries its offset as ``x-stream-offset``.

    ``names_exchange``/``names_key``/``names``: the last exchange and routing key pair
    and its wire form; a stream's records mostly share one, so it is encoded once per
    consumer, not per delivery.

    ``deliver_rows`` (the batch path, ``core/stream.py``): the common record (an AMQP
    publish whose only property was delivery-mode 2: its one header is the exchange)
    goes from the decoded record straight to its three frames, packed by one
    ``struct`` call per record around the body, and a whole chunk of them is one
    ``bytes`` join and one connection write.  No ``Message``, ``QueueEntry`` or
    ``_Unacked`` per record: every tag of the chunk maps to this consumer's one shared
    ``_Unacked`` (``settled``), since settling a stream delivery only returns credit
    (RabbitMQ streams never redeliver an unacked message to a consumer; a nack or
    reject of one is refused by ``_refuse_settle_on_stream``).  Any other record shape,
    an empty body or one that needs more than one body frame stops the batch, and the
    stream sends that record through ``deliver``.
    """

    __slots__ = ("names_exchange", "names_key", "names", "row_names", "row_frames", "settled")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.names_exchange: str | None = None
        self.names_key: str | None = None
        self.names = b""
        # (exchange bytes, routing key bytes) of the last record taken by deliver_rows,
        # and its constant pieces (``_row_frames``).
        self.row_names: tuple[bytes | None, bytes | None] | None = None
        self.row_frames: tuple[struct.Struct, bytes, bytes, bytes, bytes] | None = None
        self.settled = _Unacked(self.queue, None, self)

    def _row_frames(
        self, exchange: bytes | None, key: bytes | None
    ) -> tuple[struct.Struct, bytes, bytes, bytes, bytes]:
        """The constant pieces of a batch-path delivery for one exchange/routing-key
        pair: the same names as ``record_to_message`` + ``send_delivery`` give."""
        names = encode_short_string(
            exchange.decode("utf-8", "replace") if exchange else ""
        ) + encode_short_string(key.decode("utf-8", "replace") if key else "")
        channel = self.channel.number
        tag_wire = self.tag_wire
        # basic.deliver method frame up to the delivery tag
        method = _FRAME_HEADER.pack(FRAME_METHOD, channel, 13 + len(tag_wire) + len(names))
        method += _DELIVER_PREFIX + tag_wire
        # redelivered=0, names, frame end, content header frame up to the body size
        middle = (
            b"\x00" + names + FRAME_END_BYTE
            + _FRAME_HEADER.pack(FRAME_HEADER, channel, 12 + _PERSISTENT_OFFSET_BLOCK.size)
            + _CLASS_WEIGHT
        )  # fmt: skip
        # the block's constant head: flags (headers, delivery-mode), table size, key
        block_head = struct.pack(">HI", 0x3000, _OFFSET_TABLE_SIZE) + _STREAM_OFFSET_KEY
        # delivery-mode 2, frame end, body frame up to its size
        tail = b"\x02" + FRAME_END_BYTE + struct.pack(">BH", FRAME_BODY, channel)
        head = struct.Struct(f">{len(method)}sQ{len(middle)}sQ{len(block_head)}sq{len(tail)}sI")
        return head, method, middle, block_head, tail

    def deliver_rows(self, stream: StreamQueue, rows: list[tuple[Any, ...]], start: int, stop: int) -> int:
        """Deliver ``rows[start:stop]`` within credit as far as they take the batch path
        (class docstring); the number delivered."""
        channel = self.channel
        credit = stop - start
        if self.prefetch:
            credit = min(credit, self.prefetch - self.unacked)
        limit = channel.global_prefetch
        if limit:
            credit = min(credit, limit - channel.unacked_count)
        if credit <= 0 or not channel.can_send:
            return 0
        connection = channel.connection
        frame_max = connection.frame_max
        largest = min(65536, frame_max - 8) if frame_max else 65536
        frames = self.row_frames
        if frames is not None:
            head, method, middle, block_head, tail = frames
        pair = self.row_names
        # Rows of one batch with the same header bytes share one headers list
        # (record_batch.decode_rows): checked once per list, not per record.
        checked: list[Any] | None = None
        checked_key: bytes | None = None
        first_tag = tag = channel.next_delivery_tag
        parts: list[bytes] = []
        end_byte = FRAME_END_BYTE
        for index in range(start, start + credit):
            offset, _timestamp, key, value, headers, _attributes = rows[index]
            if headers is not checked or key != checked_key:
                if len(headers) != 1:
                    break
                name, exchange = headers[0]
                if name != EXCHANGE_HEADER:
                    break
                if pair is None or pair[0] != exchange or pair[1] != key:
                    try:
                        frames = self._row_frames(exchange, key)
                    except ValueError:  # a name too long for a short string: general path
                        break
                    pair = self.row_names = (exchange, key)
                    self.row_frames = frames
                    head, method, middle, block_head, tail = frames
                checked = headers
                checked_key = key
            size = len(value) if value is not None else 0
            if not size or size > largest:
                break
            parts += (
                head.pack(method, tag, middle, size, block_head, offset, tail, size),
                value,
                end_byte,
            )
            tag += 1
        count = tag - first_tag
        if not count:
            return 0
        connection.write(b"".join(parts))
        channel.next_delivery_tag = tag
        channel.unacked.update(dict.fromkeys(range(first_tag, tag), self.settled))
        self.unacked += count
        channel.unacked_count += count
        return count

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        message = entry.message
        assert message is not None
        if (
            message.extension is None
            and message.field_values() is NO_FIELDS
            and not message.priority
            and message.expiration_ms is None
        ):
            # Fast path: the block is known without encoding anything.
            if message.persistent:
                block = _PERSISTENT_OFFSET_BLOCK.pack(
                    0x3000, _OFFSET_TABLE_SIZE, _STREAM_OFFSET_KEY, entry.position, 2
                )
            else:
                block = _TRANSIENT_OFFSET_BLOCK.pack(
                    0x2000, _OFFSET_TABLE_SIZE, _STREAM_OFFSET_KEY, entry.position
                )
            exchange = message.exchange
            routing_key = message.routing_key
            if exchange != self.names_exchange or routing_key != self.names_key:
                self.names_exchange = exchange
                self.names_key = routing_key
                self.names = encode_short_string(exchange) + encode_short_string(routing_key)
            message.extension = AmqpExtension(block, self.names)
            self.channel.send_delivery(self, queue, entry)
            return
        # The message was read back for this cursor alone, so its extension may be
        # changed: its block (encoded from the neutral fields) gains the offset header.
        extension = wire_extension(message)
        message.extension = extension
        block = extension.properties
        assert block is not None
        extension.properties = with_stream_offset(block, entry.position)
        self.channel.send_delivery(self, queue, entry)


class _Unacked:
    """One unsettled delivery (``entry`` is None for a stream consumer's batch-path
    deliveries, which share one record: see ``AMQPStreamConsumer``)."""

    __slots__ = ("queue", "entry", "consumer")

    def __init__(self, queue: Queue, entry: QueueEntry | None, consumer: AMQPConsumer | None) -> None:
        self.queue = queue
        self.entry = entry
        self.consumer = consumer


class Channel:
    def __init__(self, connection: AMQPConnection, number: int) -> None:
        self.connection = connection
        self.number = number
        self.broker = connection.broker
        self.vhost = connection.vhost
        self.consumers: dict[str, AMQPConsumer] = {}
        self.unacked: dict[int, _Unacked] = {}
        self.unacked_count = 0
        self.next_delivery_tag = 1
        self.prefetch_count = 0  # per consumer, for consumers created afterwards
        self.global_prefetch = 0  # shared by the channel's consumers (RabbitMQ's global=true)
        self.flow_active = True
        self.closing = False
        self.last_queue: str | None = None
        # confirms
        self.confirm_mode = False
        self.publish_seq = 0
        self._confirmed_upto = 0
        self._first_unsynced = 0
        self._sync_requested_upto = 0
        self._nacked: list[int] = []
        # transactions
        self.tx_mode = False
        self._tx_publishes: list[tuple[Exchange, Message, list[str] | None, bool]] = []
        self._tx_settles: list[tuple[str, int, bool, bool]] = []
        self._tx_bytes = 0
        self.reply_to_consumer: AMQPConsumer | None = None
        self.reply_token: str | None = None
        # (next delivery tag, broker.now()) taken on ack-timeout ticks: every tag below
        # the mark's was delivered at or before its time (check_ack_timeout).
        self._delivery_marks: deque[tuple[int, float]] = deque()
        self.broker.watch_ack_timeouts(self)
        # The core publish path (core/publish.py) as this channel's publisher; it may
        # ask the connection to stop reading while a queue's consumers are socket-bound.
        self.publisher = Publisher(
            self.broker,
            self.vhost,
            connection.username,
            connection.permission,
            throttle=connection.maybe_throttle,
        )
        self._unreplicated: dict[int, int] = {}  # confirm seq -> replication handles pending

    @property
    def can_send(self) -> bool:
        return self.flow_active and not self.closing and not self.connection.write_paused

    # --- dispatch ----------------------------------------------------------------------

    def handle(self, method: spec.Method) -> None:
        handler = _HANDLERS.get(method.INDEX)
        if handler is None:
            # connection.* methods, replies only a server sends, and channel.close-ok on a
            # channel that is not closing: RabbitMQ 3.10's 503 "unimplemented method".
            raise _hard(COMMAND_INVALID, "unimplemented method", method)
        handler(self, method)

    def reply(self, method: spec.Method) -> None:
        self.connection.write(method_frame(self.number, method))

    def _core(self, exc: CoreError, method: spec.Method) -> ChannelFault | ConnectionFault:
        code = _CORE_CODES.get(exc.kind, PRECONDITION_FAILED)
        if code in (COMMAND_INVALID, NOT_ALLOWED):
            return _hard(code, exc.text, method)
        return _soft(code, exc.text, method)

    # --- permissions -------------------------------------------------------------------

    def _check(self, kind: str, resource: str, method: spec.Method, what: str = "queue") -> None:
        perm = self.connection.permission
        name = resource or "amq.default"
        if perm is None or not perm.allows(kind, name):
            raise _soft(
                ACCESS_REFUSED,
                f"access to {what} '{name}' in vhost '{self.vhost.name}' refused for user '{self.connection.username}'",
                method,
            )

    def _check_topic(self, exchange: str, routing_key: str, kind: str, method: spec.Method) -> None:
        """Topic permissions (core: BrokerCore.topic_permission_allows); the caller has
        checked that some exist and the exchange is a topic exchange."""
        username = self.connection.username
        vhost = self.vhost.name
        if not self.broker.topic_permission_allows(username, vhost, exchange, routing_key, kind):
            raise _soft(
                ACCESS_REFUSED,
                f"access to topic '{routing_key}' in exchange '{exchange}' in vhost '{vhost}' refused for user '{username}'",
                method,
            )

    def _check_topic_binding(self, method: Any) -> None:
        """RabbitMQ checks the binding key against the topic read permission on bind and
        unbind (queue and exchange bindings) when the source is a topic exchange."""
        source = self.vhost.exchanges.get(method.source if hasattr(method, "source") else method.exchange)
        if source is not None and source.type == "topic":
            self._check_topic(source.name, method.routing_key, "read", method)

    def _queue(self, name: str, method: spec.Method) -> Queue:
        if not name:
            if self.last_queue is None:
                raise _soft(NOT_FOUND, "no previously declared queue", method)
            name = self.last_queue
        try:
            queue = self.vhost.get_queue(name)
            self.vhost.check_exclusive(queue, self.connection)
        except CoreError as exc:
            raise self._core(exc, method) from None
        return queue

    # --- channel class -----------------------------------------------------------------

    def on_flow(self, method: spec.ChannelFlow) -> None:
        self.flow_active = bool(method.active)
        self.reply(spec.ChannelFlowOk(active=method.active))
        if self.flow_active:
            self.drain_consumers()

    # --- exchange class ----------------------------------------------------------------

    def on_exchange_declare(self, method: spec.ExchangeDeclare) -> None:
        name = method.exchange
        vhost = self.vhost
        if method.passive:
            if not name:
                raise _soft(
                    ACCESS_REFUSED, "operation not permitted on the default exchange", method
                )
            if name not in vhost.exchanges:
                raise _soft(NOT_FOUND, f"no exchange '{name}' in vhost '{vhost.name}'", method)
        else:
            # RabbitMQ checks the type before anything else (even for an existing name).
            if method.type not in EXCHANGE_CLASSES:
                raise _hard(COMMAND_INVALID, f"unknown exchange type '{method.type}'", method)
            if not name:
                raise _soft(
                    ACCESS_REFUSED, "operation not permitted on the default exchange", method
                )
            self._check("configure", name, method, "exchange")
            # RabbitMQ reserves the amq. prefix for *new* names only: redeclaring a
            # predeclared amq.* exchange is checked for equivalence like any other.
            if name.startswith("amq.") and name not in vhost.exchanges:
                raise _soft(
                    ACCESS_REFUSED,
                    f"exchange name '{name}' contains reserved prefix 'amq.*'",
                    method,
                )
            alternate = method.arguments.get("alternate-exchange")
            if alternate is not None:
                self._check("write", alternate, method, "exchange")
                self._check("read", name, method, "exchange")
            try:
                vhost.declare_exchange(
                    name,
                    method.type,
                    durable=method.durable,
                    auto_delete=method.auto_delete,
                    internal=method.internal,
                    arguments=method.arguments,
                )
            except CoreError as exc:
                raise self._core(exc, method) from None
        if not method.nowait:
            self.reply(spec.ExchangeDeclareOk())

    def on_exchange_delete(self, method: spec.ExchangeDelete) -> None:
        name = method.exchange
        if not name:
            raise _soft(ACCESS_REFUSED, "operation not permitted on the default exchange", method)
        if name.startswith("amq."):
            # RabbitMQ refuses any amq.* name here, existing or not.
            raise _soft(
                ACCESS_REFUSED,
                f"deletion of system exchange '{name}' in vhost '{self.vhost.name}' not allowed",
                method,
            )
        self._check("configure", name, method, "exchange")
        if name in self.vhost.exchanges:
            try:
                self.vhost.delete_exchange(name, method.if_unused)
            except CoreError as exc:
                raise self._core(exc, method) from None
        if not method.nowait:
            self.reply(spec.ExchangeDeleteOk())

    def _exchange_binding(self, method: Any, bind: bool) -> None:
        vhost = self.vhost
        if not method.source or not method.destination:
            raise _soft(ACCESS_REFUSED, "operation not permitted on the default exchange", method)
        self._check("write", method.destination, method, "exchange")
        self._check("read", method.source, method, "exchange")
        if self.broker.topic_permissions:
            self._check_topic_binding(method)
        try:
            if bind:
                destination = vhost.get_exchange(method.destination)
                vhost.get_exchange(method.source)
                vhost.bind(method.source, destination, method.routing_key, method.arguments)
            else:
                # Unbinding is idempotent (RabbitMQ 3.10): a missing end is unbind-ok.
                destination = vhost.exchanges.get(method.destination)
                if destination is not None:
                    vhost.unbind(method.source, destination, method.routing_key, method.arguments)
        except CoreError as exc:
            raise self._core(exc, method) from None
        if not method.nowait:
            self.reply(spec.ExchangeBindOk() if bind else spec.ExchangeUnbindOk())

    def on_exchange_bind(self, method: spec.ExchangeBind) -> None:
        self._exchange_binding(method, True)

    def on_exchange_unbind(self, method: spec.ExchangeUnbind) -> None:
        self._exchange_binding(method, False)

    # --- queue class -------------------------------------------------------------------

    def on_queue_declare(self, method: spec.QueueDeclare) -> None:
        vhost = self.vhost
        name = method.queue
        if method.passive:
            if name.startswith(REPLY_TO_PREFIX):
                if not self.connection.server.reply_to_alive(name[len(REPLY_TO_PREFIX) :]):
                    raise _soft(NOT_FOUND, f"no queue '{name}' in vhost '{vhost.name}'", method)
                self.reply(spec.QueueDeclareOk(queue=name, message_count=0, consumer_count=1))
                return
            if not name:
                name = self.last_queue or ""
            queue = self._queue(name, method)
            queue.touch()  # a passive declare is use too: RabbitMQ renews the x-expires lease
        else:
            if name.startswith("amq."):
                raise _soft(
                    ACCESS_REFUSED, f"queue name '{name}' contains reserved prefix 'amq.*'", method
                )
            if name:
                self._check("configure", name, method)
            dlx = method.arguments.get("x-dead-letter-exchange")
            if isinstance(dlx, str):
                self._check("write", dlx, method, "exchange")
                if name:
                    self._check("read", name, method)
            try:
                queue, _created = vhost.declare_queue(
                    name,
                    durable=method.durable,
                    exclusive_owner=self.connection if method.exclusive else None,
                    auto_delete=method.auto_delete,
                    arguments=method.arguments,
                )
            except CoreError as exc:
                raise self._core(exc, method) from None
            except OSError as exc:
                raise _hard(541, f"cannot create queue storage: {exc}", method) from None
        self.last_queue = queue.name
        if not method.nowait:
            self.reply(
                spec.QueueDeclareOk(
                    queue=queue.name,
                    message_count=queue.message_count,
                    consumer_count=len(queue.consumers),
                )
            )

    def on_queue_bind(self, method: spec.QueueBind) -> None:
        self._queue_binding(method, True)

    def on_queue_unbind(self, method: spec.QueueUnbind) -> None:
        self._queue_binding(method, False)

    def _queue_binding(self, method: Any, bind: bool) -> None:
        if bind:
            # RabbitMQ's order: the queue name shortcut, write permission, the default
            # exchange (403 even for a missing queue), read permission, then the lookup.
            if not method.queue and not self.last_queue:
                raise _soft(NOT_FOUND, "no previously declared queue", method)
            self._check("write", method.queue or self.last_queue or "", method)
            if not method.exchange:
                raise _soft(
                    ACCESS_REFUSED, "operation not permitted on the default exchange", method
                )
            self._check("read", method.exchange, method, "exchange")
            if self.broker.topic_permissions:
                self._check_topic_binding(method)
            queue = self._queue(method.queue, method)
            try:
                self.vhost.bind(method.exchange, queue, method.routing_key, method.arguments)
            except CoreError as exc:
                raise self._core(exc, method) from None
            if not method.nowait:
                self.reply(spec.QueueBindOk())
            return
        # Unbinding is idempotent (RabbitMQ 3.10): a missing queue, exchange or binding
        # is unbind-ok; the exclusive check applies only to a binding that is there.
        name = method.queue or self.last_queue
        if not name:
            raise _soft(NOT_FOUND, "no previously declared queue", method)
        self._check("write", name, method)
        self._check("read", method.exchange, method, "exchange")
        if self.broker.topic_permissions:
            self._check_topic_binding(method)
        queue = self.vhost.queues.get(name)
        try:
            if queue is not None:
                self.vhost.unbind(
                    method.exchange, queue, method.routing_key, method.arguments, self.connection
                )
            elif not method.exchange:
                raise CoreError("access_refused", "operation not permitted on the default exchange")
        except CoreError as exc:
            raise self._core(exc, method) from None
        self.reply(spec.QueueUnbindOk())

    def on_queue_purge(self, method: spec.QueuePurge) -> None:
        queue = self._queue(method.queue, method)
        self._check("read", queue.name, method)
        self._refuse_on_stream(queue, "queue.purge", method)
        count = queue.purge()
        if not method.nowait:
            self.reply(spec.QueuePurgeOk(message_count=count))

    def on_queue_delete(self, method: spec.QueueDelete) -> None:
        name = method.queue or self.last_queue
        if not name:
            raise _soft(NOT_FOUND, "no previously declared queue", method)
        self._check("configure", name, method)
        queue = self.vhost.queues.get(name)
        if queue is None:
            # RabbitMQ: deleting a queue that is not there is not an error.
            if not method.nowait:
                self.reply(spec.QueueDeleteOk(message_count=0))
            return
        try:
            self.vhost.check_exclusive(queue, self.connection)
            count = self.vhost.delete_queue(queue, method.if_unused, method.if_empty)
        except CoreError as exc:
            raise self._core(exc, method) from None
        if not method.nowait:
            self.reply(spec.QueueDeleteOk(message_count=count))

    # --- basic: qos, consume, cancel ---------------------------------------------------

    def on_basic_qos(self, method: spec.BasicQos) -> None:
        if method.prefetch_size:
            raise _hard(NOT_IMPLEMENTED, f"prefetch_size!={method.prefetch_size}", method)
        if method.global_:
            self.global_prefetch = method.prefetch_count
        else:
            self.prefetch_count = method.prefetch_count
        self.reply(spec.BasicQosOk())
        self.drain_consumers()

    def on_basic_consume(self, method: spec.BasicConsume) -> None:
        tag = method.consumer_tag
        if tag in self.consumers:
            raise _hard(NOT_ALLOWED, f"attempt to reuse consumer tag '{tag}'", method)
        if method.queue == REPLY_TO:
            self._consume_reply_to(method)
            return
        queue = self._queue(method.queue, method)
        self._check("read", queue.name, method)
        if not tag:
            tag = "amq.ctag-" + os.urandom(16).hex()[:22]
        selector = self._selector_argument(queue, method)
        if type(queue) is StreamQueue:
            self._consume_stream(queue, tag, method)
            return
        if queue.consumers and (method.exclusive or any(c.exclusive for c in queue.consumers)):
            raise _soft(
                ACCESS_REFUSED,
                f"queue '{queue.name}' in vhost '{self.vhost.name}' in exclusive use",
                method,
            )
        if method.exclusive and queue.settings.single_active_consumer:
            raise _soft(
                RESOURCE_LOCKED,
                f"cannot obtain exclusive access to queue '{queue.name}' in vhost '{self.vhost.name}': single active consumer enabled",
                method,
            )
        priority = method.arguments.get("x-priority", 0)
        if isinstance(priority, bool) or not isinstance(priority, int):
            raise _soft(PRECONDITION_FAILED, f"invalid x-priority {priority!r}", method)
        consumer = AMQPConsumer(
            tag,
            queue,
            self,
            method.no_ack,
            method.exclusive,
            priority,
            self.prefetch_count,
            method.arguments,
        )
        consumer.selector = selector
        self.consumers[tag] = consumer
        if not method.nowait:
            self.reply(spec.BasicConsumeOk(consumer_tag=tag))
        queue.add_consumer(consumer)

    def _selector_argument(self, queue: Any, method: spec.BasicConsume) -> Selector | None:
        """The ``x-selector`` consumer argument (ActiveMQ's SQL-92 selector, as STOMP's
        ``selector`` header), compiled once; blank is no selector.  A bad one is 406
        with the parser's message; streams have no selected consumers (406 too)."""
        text = method.arguments.get("x-selector")
        if text is None:
            return None
        if isinstance(text, bytes):
            text = text.decode("utf-8", "replace")
        if not isinstance(text, str):
            raise _soft(PRECONDITION_FAILED, f"invalid x-selector {text!r}: not a string", method)
        if not text.strip():
            return None
        if type(queue) is StreamQueue:
            raise _soft(
                PRECONDITION_FAILED,
                f"x-selector is not supported on stream queue '{queue.name}' in vhost '{self.vhost.name}'",
                method,
            )
        # Imported here: a broker whose clients never select pays nothing for it.
        from ...core.selector import SelectorError, compile_selector

        try:
            return compile_selector(text)
        except SelectorError as exc:
            raise _soft(PRECONDITION_FAILED, f"invalid x-selector: {exc}", method) from None

    def _consume_stream(self, stream: StreamQueue, tag: str, method: spec.BasicConsume) -> None:
        """basic.consume on a stream, as RabbitMQ 3.10.8 answers it: a consumer prefetch
        (basic.qos, global=false) is required (406), automatic acks are refused (540,
        a connection error), ``x-stream-offset`` says where to start (default: next)."""
        where = f"queue '{stream.name}' in vhost '{self.vhost.name}'"
        if not self.prefetch_count:
            raise _soft(PRECONDITION_FAILED, f"consumer prefetch count is not set for '{where}'", method)
        if method.no_ack:
            raise _hard(
                NOT_IMPLEMENTED, f"automatic acknowledgement not supported by stream queues {where}", method
            )
        try:
            start, timestamp_ms = start_from_argument(method.arguments.get("x-stream-offset"))
        except StartError as exc:
            # RabbitMQ 3.10.8 crashes on these (541 INTERNAL_ERROR, connection closed); a
            # channel error that names the argument is the better answer.
            raise _soft(PRECONDITION_FAILED, f"{exc} for {where}", method) from None
        consumer = AMQPStreamConsumer(
            tag, stream, self, False, method.exclusive, 0, self.prefetch_count, method.arguments  # type: ignore[arg-type]
        )
        self.consumers[tag] = consumer
        if not method.nowait:
            self.reply(spec.BasicConsumeOk(consumer_tag=tag))
        stream.add_consumer(consumer, start, timestamp_ms)

    def _refuse_on_stream(self, queue: Any, what: str, method: spec.Method) -> None:
        if type(queue) is StreamQueue:
            raise _hard(
                NOT_IMPLEMENTED,
                f"{what} not supported by stream queues queue '{queue.name}' in vhost '{self.vhost.name}'",
                method,
            )

    def _consume_reply_to(self, method: spec.BasicConsume) -> None:
        if not method.no_ack:
            raise _soft(PRECONDITION_FAILED, "reply consumer cannot acknowledge", method)
        if self.reply_to_consumer is not None:
            raise _soft(PRECONDITION_FAILED, "reply consumer already set", method)
        tag = method.consumer_tag or "amq.ctag-" + os.urandom(16).hex()[:22]
        consumer = AMQPConsumer(tag, None, self, True, False, 0, 0, {})  # type: ignore[arg-type]
        self.consumers[tag] = consumer
        self.reply_to_consumer = consumer
        self.reply_token = self.connection.server.register_reply_to(self)
        if not method.nowait:
            self.reply(spec.BasicConsumeOk(consumer_tag=tag))

    def on_basic_cancel(self, method: spec.BasicCancel) -> None:
        consumer = self.consumers.pop(method.consumer_tag, None)
        if consumer is not None:
            self._remove_consumer(consumer)
        if not method.nowait:
            self.reply(spec.BasicCancelOk(consumer_tag=method.consumer_tag))

    def _remove_consumer(self, consumer: AMQPConsumer) -> None:
        if consumer is self.reply_to_consumer:
            self.reply_to_consumer = None
            self.connection.server.unregister_reply_to(self.reply_token)
            self.reply_token = None
            return
        consumer.queue.remove_consumer(consumer)

    def server_cancel(self, consumer: AMQPConsumer) -> None:
        """The queue went away: tell the client if it understands server-sent cancels."""
        if self.consumers.pop(consumer.tag, None) is None:
            return
        if self.connection.client_capability("consumer_cancel_notify") and not self.closing:
            self.reply(spec.BasicCancel(consumer_tag=consumer.tag, nowait=True))

    # --- basic: delivery ----------------------------------------------------------------

    def send_delivery(self, consumer: AMQPConsumer, queue: Queue, entry: QueueEntry) -> None:
        """Hot path: one basic.deliver + header + body into the connection's buffer."""
        message = entry.message
        assert message is not None
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        extension = message.extension
        kind = extension.__class__
        if (kind is not ContentFrame and kind is not AmqpExtension) or extension.properties is None:
            extension = wire_extension(message)  # not from AMQP: encode the block once
        names = extension.wire_names
        if names is None:
            names = extension.wire_names = encode_short_string(
                message.exchange
            ) + encode_short_string(message.routing_key)
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        connection = self.connection
        frames = deliver_frames(
            self.number,
            consumer.tag_wire,
            tag,
            redelivered,
            names,
            extension.properties,
            message.body,
            connection.frame_max,
        )
        if type(frames) is bytes:
            connection.write(frames)
        else:
            connection.write_many(frames)
        if consumer.no_ack:
            queue.settle_delivered(entry)
        else:
            self.unacked[tag] = _Unacked(queue, entry, consumer)
            consumer.unacked += 1
            self.unacked_count += 1

    def on_basic_get(self, method: spec.BasicGet) -> None:
        queue = self._queue(method.queue, method)
        self._check("read", queue.name, method)
        self._refuse_on_stream(queue, "basic.get", method)
        entry = queue.get(method.no_ack)
        if entry is None:
            self.reply(spec.BasicGetEmpty())
            return
        message = entry.message
        assert message is not None
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        payload = spec.BasicGetOk(
            delivery_tag=tag,
            redelivered=redelivered,
            exchange=message.exchange,
            routing_key=message.routing_key,
            message_count=queue.message_count,
        ).encode()
        self.connection.write_many(
            content_frames(
                self.number, payload, _block(message), message.body, self.connection.frame_max
            )
        )
        if method.no_ack:
            queue.settle_delivered(entry)
        else:
            self.unacked[tag] = _Unacked(queue, entry, None)
            self.unacked_count += 1

    # --- basic: settlement -------------------------------------------------------------

    def _take_unacked(self, tag: int, multiple: bool, method: spec.Method) -> list[_Unacked]:
        unacked = self.unacked
        if multiple:
            if tag == 0:
                taken = list(unacked.values())
                unacked.clear()
                return taken
            tags = []
            for t in unacked:
                if t > tag:
                    break
                tags.append(t)
            if not tags and tag >= self.next_delivery_tag:
                raise _soft(PRECONDITION_FAILED, f"unknown delivery tag {tag}", method)
            return [unacked.pop(t) for t in tags]
        record = unacked.pop(tag, None)
        if record is None:
            raise _soft(PRECONDITION_FAILED, f"unknown delivery tag {tag}", method)
        return [record]

    def on_basic_ack(self, method: spec.BasicAck) -> None:
        if self.tx_mode:
            self._validate_tags(method.delivery_tag, method.multiple, method)
            self._tx_settles.append(("ack", method.delivery_tag, method.multiple, False))
            return
        self._settle(self._take_unacked(method.delivery_tag, method.multiple, method), "ack", False)

    def on_basic_nack(self, method: spec.BasicNack) -> None:
        if self.tx_mode:
            self._validate_tags(method.delivery_tag, method.multiple, method)
            self._tx_settles.append(
                ("reject", method.delivery_tag, method.multiple, method.requeue)
            )
            return
        records = self._take_unacked(method.delivery_tag, method.multiple, method)
        self._refuse_settle_on_stream(records, method)
        self._settle(records, "reject", method.requeue)

    def on_basic_reject(self, method: spec.BasicReject) -> None:
        if self.tx_mode:
            self._validate_tags(method.delivery_tag, False, method)
            self._tx_settles.append(("reject", method.delivery_tag, False, method.requeue))
            return
        records = self._take_unacked(method.delivery_tag, False, method)
        self._refuse_settle_on_stream(records, method)
        self._settle(records, "reject", method.requeue)

    def _refuse_settle_on_stream(self, records: list[_Unacked], method: spec.Method) -> None:
        """RabbitMQ 3.10.8: basic.nack / basic.reject of a stream delivery is 540."""
        for record in records:
            if type(record.queue) is StreamQueue:
                # The connection closes: hand every taken delivery back as closing would
                # (classic ones requeued, stream ones just release their credit).
                self._settle(records, "reject", True)
                self._refuse_on_stream(record.queue, "basic.nack and basic.reject", method)

    def _validate_tags(self, tag: int, multiple: bool, method: spec.Method) -> None:
        if multiple:
            if tag and tag >= self.next_delivery_tag:
                raise _soft(PRECONDITION_FAILED, f"unknown delivery tag {tag}", method)
        elif tag not in self.unacked or any(s[1] == tag and not s[2] for s in self._tx_settles):
            raise _soft(PRECONDITION_FAILED, f"unknown delivery tag {tag}", method)

    def _settle(self, records: list[_Unacked], how: str, requeue: bool) -> None:
        touched: list[Queue] = []
        if how == "reject" and requeue:
            # requeue preserves original order: group per queue
            by_queue: dict[int, tuple[Queue, list[QueueEntry]]] = {}
            for record in records:
                self._release(record)
                by_queue.setdefault(id(record.queue), (record.queue, []))[1].append(record.entry)
            for queue, entries in by_queue.values():
                queue.requeue(entries)
            return
        shared: dict[_Unacked, int] | None = None  # shared record -> deliveries settled
        for record in records:
            if record.entry is None:
                # A stream consumer's batch-path deliveries share one record
                # (AMQPStreamConsumer): counted here, settled in bulk below.
                if shared is None:
                    shared = {}
                shared[record] = shared.get(record, 0) + 1
                continue
            self._release(record)
            queue = record.queue
            if how == "ack":
                queue.ack(record.entry)
            else:
                queue.reject(record.entry, False)
            if record.consumer is not None and queue not in touched:
                touched.append(queue)
        if shared is not None:
            for record, count in shared.items():
                self.unacked_count -= count
                record.consumer.unacked -= count  # type: ignore[union-attr]
                stream = record.queue
                stream.settle_many(count, how == "ack")  # type: ignore[attr-defined]
                if stream not in touched:
                    touched.append(stream)
        if self.global_prefetch:
            self.drain_consumers()
        else:
            for queue in touched:
                if queue.consumers:
                    queue.drain()

    def _release(self, record: _Unacked) -> None:
        self.unacked_count -= 1
        consumer = record.consumer
        if consumer is not None:
            consumer.unacked -= 1

    def on_basic_recover(self, method: spec.BasicRecover) -> None:
        if not method.requeue:
            raise _hard(NOT_IMPLEMENTED, "requeue=false", method)
        self.requeue_all(only_consumed=True)
        self.reply(spec.BasicRecoverOk())

    def on_basic_recover_async(self, method: spec.BasicRecoverAsync) -> None:
        if not method.requeue:
            raise _hard(NOT_IMPLEMENTED, "requeue=false", method)
        self.requeue_all(only_consumed=True)

    def requeue_all(self, only_consumed: bool = False) -> None:
        """Return unacked deliveries to their queues in their original order."""
        records = list(self.unacked.values())
        if only_consumed:
            records = [
                r for r in records if r.consumer is not None
            ]  # errata §2: not basic.get ones
            for tag in [t for t, r in self.unacked.items() if r.consumer is not None]:
                del self.unacked[tag]
        else:
            self.unacked.clear()
        if records:
            self._settle(records, "reject", True)

    def drain_consumers(self) -> None:
        for consumer in list(self.consumers.values()):
            if consumer.queue is not None and not consumer.queue.deleted:
                consumer.queue.drain()

    # --- basic: publish ----------------------------------------------------------------

    def on_publish(self, method: spec.BasicPublish, content: ContentFrame) -> None:
        """basic.publish with its content (the hot path): core/publish.py's three steps,
        with AMQP's own parts (content header, direct reply-to, confirms, returns) here.

        ``content`` becomes the message's AMQP extension (it carries the properties block
        and the wire names), so the message costs no other object."""
        properties = content.properties
        body = content.body
        if method.immediate:
            raise _hard(NOT_IMPLEMENTED, "immediate=true", method)
        publisher = self.publisher
        name = method.exchange
        exchange = self.vhost.exchanges.get(name)
        if exchange is None or exchange.internal or name not in publisher.write_checked:
            # Publisher.target's checks; the common case (a known, writable, not
            # internal exchange) is decided by the line above without a call.
            try:
                exchange = publisher.target(name)
            except CoreError as exc:
                raise self._core(exc, method) from None
        if exchange.stream_bound and properties == _BARE_PERSISTENT and not self.tx_mode:
            # The stream fast path: a bare persistent publish routed to exactly one
            # stream (the attribute test is all a queue-only exchange pays).
            routing_key = method.routing_key
            queues = exchange.route(routing_key, None)
            if (
                len(queues) == 1
                and queues[0].__class__ is StreamQueue
                and (name or not routing_key.startswith(REPLY_TO_PREFIX))
            ):
                self._publish_stream(exchange, queues[0], name, routing_key, body)
                return
        try:
            delivery_mode, priority, expiration = scan_properties(properties)
        except DecodeError as exc:
            raise _hard(
                FRAME_ERROR, f"cannot decode content header properties: {exc}", method
            ) from None
        expiration_ms = None
        if expiration is not None:
            try:
                expiration_ms = parse_expiration(expiration)
            except ValueError:
                raise _soft(
                    PRECONDITION_FAILED, f"invalid expiration '{expiration}'", method
                ) from None
        message = Message(
            name,
            method.routing_key,
            body,
            delivery_mode == 2,
            priority,
            expiration_ms,
            0.0,
            content,
        )
        content.method = None  # type: ignore[assignment]  # not kept with the message
        extra_keys = None
        flags = (properties[0] << 8) | properties[1]
        # Publisher.admit, skipped when it has nothing to do: no user-id, no headers
        # (CC/BCC), so the block stays undecoded; the size limit was enforced by the
        # codec before the body was even assembled.
        if flags & (USER_ID_FLAG | HEADERS_FLAG):
            try:
                message, extra_keys = publisher.admit(exchange, message)
            except CoreError as exc:
                raise self._publish_fault(exc, method) from None
        elif exchange.type == "topic":
            try:
                publisher.check_topic_write(exchange, method.routing_key)
            except CoreError as exc:
                raise self._core(exc, method) from None
        if flags & _REPLY_TO_BIT:
            message = self._direct_reply_to(message, method)
        if self.tx_mode:
            self._tx_bytes += len(body)
            if self._tx_bytes > MAX_TX_BYTES:
                # Uncommitted publishes are held in memory: bounded, and refused with 406
                # on this channel (the transaction is rolled back) rather than exhausting RAM.
                self._tx_publishes.clear()
                self._tx_bytes = 0
                raise _soft(
                    PRECONDITION_FAILED,
                    f"transaction holds more than {MAX_TX_BYTES} bytes of uncommitted messages",
                    method,
                )
            self._tx_publishes.append((exchange, message, extra_keys, method.mandatory))
            return
        if not method.exchange and method.routing_key.startswith(REPLY_TO_PREFIX):
            self._publish_reply(message)
            return
        outcome = publisher.deliver(exchange, message, extra_keys, method.mandatory)
        if outcome or self.confirm_mode:
            self._delivered(outcome, message, method.mandatory)

    def _publish_stream(
        self, exchange: Exchange, stream: StreamQueue, name: str, routing_key: str, body: bytes
    ) -> None:
        """``Publisher.deliver`` + ``_delivered`` for a persistent publish with no other
        property, routed to one stream and nowhere else, without the ``Message``: the
        same counters, the same record (``StreamQueue.publish_bare``), the same confirm
        bookkeeping.  Nothing here can be unroutable, returned, CC'd or scheduled
        (``on_publish`` checked), and a bare block has no user-id to validate."""
        publisher = self.publisher
        publisher.publish_count += 1
        exchange.publish_count += 1
        try:
            accepted = stream.publish_bare(name, routing_key, body)
        except OSError as exc:  # as Publisher.deliver: the log failed, sticky until reset
            publisher.broker.write_failed(stream.store, exc)
            accepted = False
        if accepted is True:  # the common case: stored once the next fsync is done
            exchange.publish_out_count += 1
            if self.confirm_mode:
                seq = self.publish_seq = self.publish_seq + 1
                if not self._first_unsynced:
                    self._first_unsynced = seq
                self._last_unsynced = seq
                self.connection.confirms_dirty(self)
            else:
                self.connection.sync_wanted = True
            return
        if accepted:  # a replication handle (cluster/replicator.py)
            exchange.publish_out_count += 1
            if publisher.replicating is None:
                publisher.replicating = []
            publisher.replicating.append(accepted)
            outcome = NEEDS_SYNC | REPLICATING
        else:
            outcome = REFUSED
        self._delivered(outcome, None, False)  # type: ignore[arg-type]  # routed: no return

    def _publish_fault(self, exc: CoreError, method: spec.Method) -> ChannelFault | ConnectionFault:
        if exc.kind == "malformed":
            return _hard(FRAME_ERROR, f"cannot decode content header properties: {exc.text}", method)
        return self._core(exc, method)

    def _direct_reply_to(self, message: Message, method: spec.Method) -> Message:
        """RabbitMQ's direct reply-to: ``reply-to: amq.rabbitmq.reply-to`` names this
        channel's reply consumer, which must exist."""
        try:
            reply_to = message.reply_to
        except DecodeError as exc:
            raise _hard(
                FRAME_ERROR, f"cannot decode content header properties: {exc}", method
            ) from None
        if reply_to != REPLY_TO:
            return message
        if self.reply_token is None:
            raise _soft(PRECONDITION_FAILED, "fast reply consumer does not exist", method)
        return message.derive(reply_to=REPLY_TO_PREFIX + self.reply_token)

    def _delivered(self, outcome: int, message: Message, mandatory: bool) -> None:
        """What a publish's outcome means for AMQP: basic.return, confirm bookkeeping."""
        if outcome & UNROUTABLE and mandatory:
            self._return(message, NO_ROUTE, "NO_ROUTE")
        seq = 0
        if self.confirm_mode:
            seq = self.publish_seq = self.publish_seq + 1
        if outcome & REPLICATING:
            handles = self.publisher.take_replicating()
            if seq and handles:
                self._await_replication(seq, handles)
        if seq:
            if outcome & REFUSED:
                self._nacked.append(seq)
            if outcome & NEEDS_SYNC:
                if not self._first_unsynced:
                    self._first_unsynced = seq
                self._last_unsynced = seq
            self.connection.confirms_dirty(self)
        elif outcome & NEEDS_SYNC:
            self.connection.sync_wanted = True

    def _publish_reply(self, message: Message) -> None:
        self.publisher.publish_count += 1
        token = message.routing_key[len(REPLY_TO_PREFIX) :]
        target = self.connection.server.reply_to_channel(token)
        if self.confirm_mode:
            self.publish_seq += 1
            self.connection.confirms_dirty(self)
        if target is None or target.reply_to_consumer is None:
            return  # at-most-once: the requester is gone
        consumer = target.reply_to_consumer
        if not target.can_send:
            return
        entry = QueueEntry(0, message, len(message.body))
        target.send_reply(consumer, entry)

    def send_reply(self, consumer: AMQPConsumer, entry: QueueEntry) -> None:
        message = entry.message
        assert message is not None
        tag = self.next_delivery_tag
        self.next_delivery_tag = tag + 1
        names = encode_short_string(message.exchange) + encode_short_string(message.routing_key)
        payload = deliver_payload(consumer.tag_wire, tag, False, names, b"")
        self.connection.write_many(
            content_frames(
                self.number, payload, _block(message), message.body, self.connection.frame_max
            )
        )

    def _return(self, message: Message, code: int, text: str) -> None:
        payload = spec.BasicReturn(
            reply_code=code,
            reply_text=text,
            exchange=message.exchange,
            routing_key=message.routing_key,
        ).encode()
        self.connection.write_many(
            content_frames(
                self.number, payload, _block(message), message.body, self.connection.frame_max
            )
        )

    @property
    def publish_count(self) -> int:
        return self.publisher.publish_count

    # --- confirms ----------------------------------------------------------------------

    _last_unsynced = 0

    def on_confirm_select(self, method: spec.ConfirmSelect) -> None:
        if self.tx_mode:
            raise _soft(PRECONDITION_FAILED, "cannot switch from tx to confirm mode", method)
        self.confirm_mode = True
        if not method.nowait:
            self.reply(spec.ConfirmSelectOk())

    def flush_confirms(self) -> None:
        """Emit every confirm that is decided, covered by fsync and replicated (in order)."""
        if self.closing:
            return
        if self._first_unsynced and self._sync_requested_upto < self._last_unsynced:
            target = self._last_unsynced
            self._sync_requested_upto = target
            if not self.broker.after_sync(
                lambda: self._synced(target), lambda exc: self._sync_failed(target)
            ):
                self._synced(target)
                return
        upto = self.publish_seq if not self._first_unsynced else self._first_unsynced - 1
        if self._unreplicated:
            # Held until the replicator says the write is replicated (in order: the dict
            # is keyed by sequence number in insertion order, so its first key is lowest).
            upto = min(upto, next(iter(self._unreplicated)) - 1)
        confirmed = self._confirmed_upto
        if upto <= confirmed:
            return
        write = self.connection.write
        nacked = self._nacked
        while nacked and nacked[0] <= upto:
            seq = nacked.pop(0)
            if seq <= confirmed:
                continue  # already nacked by a failed sync
            if seq - 1 > confirmed:
                write(method_frame(self.number, spec.BasicAck(delivery_tag=seq - 1, multiple=True)))
            write(
                method_frame(
                    self.number, spec.BasicNack(delivery_tag=seq, multiple=False, requeue=False)
                )
            )
            confirmed = seq
        if upto > confirmed:
            write(
                method_frame(
                    self.number, spec.BasicAck(delivery_tag=upto, multiple=upto - confirmed > 1)
                )
            )
            confirmed = upto
        self.broker.counters["confirmed"] += confirmed - self._confirmed_upto
        self._confirmed_upto = confirmed

    def _await_replication(self, seq: int, handles: list[Any]) -> None:
        """Hold confirm ``seq`` until every replication handle of its publish is done."""
        self._unreplicated[seq] = len(handles)
        for handle in handles:
            handle.add_done_callback(lambda h, seq=seq: self._replicated(seq, h))

    def _replicated(self, seq: int, handle: Any) -> None:
        remaining = self._unreplicated.get(seq)
        if remaining is None or self.closing:
            return
        failure = replication_failure(handle)
        if failure is None and remaining > 1:
            self._unreplicated[seq] = remaining - 1
            return
        del self._unreplicated[seq]
        if failure is not None and seq > self._confirmed_upto:
            insort(self._nacked, seq)  # not replicated: the publisher must resend
        self.flush_confirms()
        self.connection.flush()

    def _sync_failed(self, upto: int) -> None:
        """A buffered write failed before its fsync: nack everything not yet confirmed up
        to ``upto`` (a few may in fact be safe; a nack only makes the publisher resend,
        whereas an ack would be a lie)."""
        if self.closing:
            return
        if upto > self._confirmed_upto:
            self.connection.write(
                method_frame(
                    self.number, spec.BasicNack(delivery_tag=upto, multiple=True, requeue=False)
                )
            )
            self._confirmed_upto = upto
            self._nacked = [n for n in self._nacked if n > upto]
            for seq in [s for s in self._unreplicated if s <= upto]:
                del self._unreplicated[seq]
        if self._last_unsynced <= upto:
            self._first_unsynced = 0
        else:
            self._first_unsynced = upto + 1
        self.flush_confirms()
        self.connection.flush()

    def _synced(self, upto: int) -> None:
        if self.closing:
            return
        if self._last_unsynced <= upto:
            self._first_unsynced = 0
        elif self._first_unsynced <= upto:
            self._first_unsynced = upto + 1
        self.flush_confirms()
        self.connection.flush()

    # --- transactions ------------------------------------------------------------------

    def on_tx_select(self, method: spec.TxSelect) -> None:
        if self.confirm_mode:
            raise _soft(PRECONDITION_FAILED, "cannot switch from confirm to tx mode", method)
        self.tx_mode = True
        self.reply(spec.TxSelectOk())

    def on_tx_commit(self, method: spec.TxCommit) -> None:
        if not self.tx_mode:
            raise _soft(PRECONDITION_FAILED, "channel is not transactional", method)
        publishes, self._tx_publishes = self._tx_publishes, []
        self._tx_bytes = 0
        settles, self._tx_settles = self._tx_settles, []
        publisher = self.publisher
        replicating: list[Any] = []
        for exchange, message, extra_keys, mandatory in publishes:
            if exchange.deleted:
                continue
            if not exchange.name and message.routing_key.startswith(REPLY_TO_PREFIX):
                self._publish_reply(message)
                continue
            outcome = publisher.deliver(exchange, message, extra_keys, mandatory)
            if outcome & UNROUTABLE and mandatory:
                self._return(message, NO_ROUTE, "NO_ROUTE")
            if outcome & REPLICATING:
                replicating.extend(publisher.take_replicating() or ())
        for how, tag, multiple, requeue in settles:
            try:
                records = self._take_unacked(tag, multiple, method)
            except ChannelFault:
                continue
            self._settle(records, how, requeue)
        # commit-ok once everything so far is on disk (publishes and acks alike) and the
        # replicator has every append.
        if when_stored(self.broker, True, replicating, self._commit_ok, self._commit_failed):
            self.connection.sync_wanted = True
        else:
            self._commit_ok()

    def _commit_ok(self) -> None:
        if not self.closing:
            self.reply(spec.TxCommitOk())
            self.connection.flush()

    def _commit_failed(self, exc: BaseException) -> None:
        """The commit's writes are not safe: never answer commit-ok; close with 541
        INTERNAL_ERROR (a hard error, as RabbitMQ answers an internal failure)."""
        if not self.closing:
            self.connection.close_with_error(
                _hard(541, f"transaction not stored: {exc}", spec.TxCommit())
            )

    def on_tx_rollback(self, method: spec.TxRollback) -> None:
        if not self.tx_mode:
            raise _soft(PRECONDITION_FAILED, "channel is not transactional", method)
        self._tx_publishes.clear()
        self._tx_bytes = 0
        self._tx_settles.clear()
        self.reply(spec.TxRollbackOk())

    # --- delivery acknowledgement timeout (RabbitMQ's consumer_timeout) ------------------

    def check_ack_timeout(self, now: float) -> None:
        """Called by the broker's periodic tick: close the channel with 406 when its
        oldest unacked delivery has waited longer than its acknowledgement timeout.

        As in RabbitMQ only the oldest delivery is checked (the unacked map keeps
        delivery order).  Nothing is recorded per delivery: each tick that saw new
        deliveries leaves a mark (next delivery tag, time), so a delivery's time is
        bounded by the first mark above its tag.  The timeout therefore never fires
        early and fires at most about one tick late (later only past
        ``_MAX_DELIVERY_MARKS`` ticks of deliveries behind one held message).
        Applies to consumer and basic.get deliveries alike, as in RabbitMQ.
        """
        unacked = self.unacked
        marks = self._delivery_marks
        if not unacked or self.closing:
            marks.clear()
            return
        oldest = next(iter(unacked))
        while marks and marks[0][0] <= oldest:
            marks.popleft()
        next_tag = self.next_delivery_tag
        if not marks:
            marks.append((next_tag, now))
            return  # delivered since the last tick: not old enough to judge yet
        if marks[-1][0] != next_tag and len(marks) < _MAX_DELIVERY_MARKS:
            marks.append((next_tag, now))
        record = unacked[oldest]
        timeout = self._ack_timeout(record)
        if not timeout:
            return
        self.broker.note_ack_timeout(timeout)
        if (now - marks[0][1]) * 1000.0 < timeout:
            return
        connection = self.connection
        # RabbitMQ 3.10.8's wording (checked against a node with consumer_timeout set).
        fault = _soft(
            PRECONDITION_FAILED,
            f"delivery acknowledgement on channel {self.number} timed out. Timeout value "
            f"used: {timeout} ms. This timeout value can be configured, see consumers doc "
            "guide to learn more",
            None,
        )
        connection._channel_fault(fault, self.number)  # requeues the unacked deliveries
        connection.flush()

    def _ack_timeout(self, record: _Unacked) -> int | None:
        """Precedence as RabbitMQ 3.12+: consumer argument, queue argument, broker."""
        consumer = record.consumer
        if consumer is not None:
            value = consumer.arguments.get("x-consumer-timeout")
            if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
                return value
        queue_timeout = record.queue.settings.consumer_timeout
        if queue_timeout is not None:
            return queue_timeout
        return self.broker.config.consumer_timeout

    # --- teardown ----------------------------------------------------------------------

    def close(self) -> None:
        """Channel closed (either side) or connection gone: requeue and unsubscribe."""
        self.closing = True
        self.broker.unwatch_ack_timeouts(self)
        self._delivery_marks.clear()
        for consumer in list(self.consumers.values()):
            self._remove_consumer(consumer)
        self.consumers.clear()
        self.requeue_all()
        self._tx_publishes.clear()


_HANDLERS = {
    spec.ChannelFlow.INDEX: Channel.on_flow,
    spec.ExchangeDeclare.INDEX: Channel.on_exchange_declare,
    spec.ExchangeDelete.INDEX: Channel.on_exchange_delete,
    spec.ExchangeBind.INDEX: Channel.on_exchange_bind,
    spec.ExchangeUnbind.INDEX: Channel.on_exchange_unbind,
    spec.QueueDeclare.INDEX: Channel.on_queue_declare,
    spec.QueueBind.INDEX: Channel.on_queue_bind,
    spec.QueueUnbind.INDEX: Channel.on_queue_unbind,
    spec.QueuePurge.INDEX: Channel.on_queue_purge,
    spec.QueueDelete.INDEX: Channel.on_queue_delete,
    spec.BasicQos.INDEX: Channel.on_basic_qos,
    spec.BasicConsume.INDEX: Channel.on_basic_consume,
    spec.BasicCancel.INDEX: Channel.on_basic_cancel,
    spec.BasicGet.INDEX: Channel.on_basic_get,
    spec.BasicAck.INDEX: Channel.on_basic_ack,
    spec.BasicNack.INDEX: Channel.on_basic_nack,
    spec.BasicReject.INDEX: Channel.on_basic_reject,
    spec.BasicRecover.INDEX: Channel.on_basic_recover,
    spec.BasicRecoverAsync.INDEX: Channel.on_basic_recover_async,
    spec.ConfirmSelect.INDEX: Channel.on_confirm_select,
    spec.TxSelect.INDEX: Channel.on_tx_select,
    spec.TxCommit.INDEX: Channel.on_tx_commit,
    spec.TxRollback.INDEX: Channel.on_tx_rollback,
}

# Methods a client may not send (server-to-client only) are answered as COMMAND_INVALID
# by Channel.handle's fallback; CHANNEL_ERROR is used by the connection for bad channel use.
__all__ = ["Channel", "AMQPConsumer", "CHANNEL_ERROR"]


def _block(message: Message) -> bytes:
    """The message's AMQP properties block (encoded from its neutral fields if needed)."""
    block = wire_extension(message).properties
    assert block is not None
    return block
