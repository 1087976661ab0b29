"""Streams: a queue-like target backed by one append-only ``StreamLog``, read by cursors.

Theory of operation
-------------------
A ``StreamQueue`` sits in ``vhost.queues`` like a ``Queue``, so exchanges route into it,
bindings, deletes and the management listing work unchanged.  Publishing adds one
record to the loop turn's pending batch, appended to its ``storage.stream_log.StreamLog``
as one RecordBatch when the broker's one ``Syncer`` starts its next job
(``Syncer.before_flush``: before that job flushes and fsyncs, so every confirm waiting
on it covers the batch; bounded, see ``publish``).  Nothing is ever removed by
consumers: retention (``x-max-length-bytes``, ``x-max-age``, or their policy keys, which
win over the arguments as in RabbitMQ 3.10) deletes whole segments from the oldest.

Replication: each appended batch goes to ``Replicator.appended_records``; its handle
holds those records' confirms and ``committed_offset``; retention is reported as
``cleared(stream, "retention", n)`` (``cluster/replicator.py``).

Confirms: a stream is durable, so a persistent message routed to it sets ``NEEDS_SYNC``
in ``core/publish.py`` and its confirm waits for the covering fsync, exactly as for a
durable queue.  Readers only see *committed* records (up to ``committed_offset``, the
last offset both fsynced and, if a replicator holds it, replicated): a consumer never
receives a record that a crash could still take away (Kafka's high watermark; RabbitMQ delivers
committed chunks only).

One consumer interface, two ways to read
----------------------------------------
* **Push with credit** (AMQP now; STOMP and MQTT later): the adapter registers a
  ``Consumer`` (``core/queue.py``: ``can_deliver()``, ``deliver(queue, entry)``,
  ``cancelled_by_server(queue)``) with ``add_consumer(consumer, start=...)``.  The
  stream gives it a ``StreamCursor`` (a ``StreamLog.reader`` plus at most one bounded
  chunk of decoded records).  ``drain()`` calls ``consumer.deliver`` while
  ``can_deliver()`` says the consumer has credit; each delivery is a ``QueueEntry``
  whose ``position`` is the record's offset and whose message is ``record_to_message``.
  Credit comes back when the adapter settles (``ack``), which only counts: nothing is
  deleted.  A consumer may also offer ``deliver_rows(stream, rows, start, stop)``: the
  cursor's decoded records themselves (``record_batch.decode_rows`` tuples, neutral:
  offset, timestamp, key, value, headers, attributes), of which it takes as many from
  ``rows[start:stop]`` as its credit allows, in order, and returns how many.  It may stop
  early at a record it has no fast form for; that one then goes through ``deliver`` as
  above.  This is how an adapter turns a chunk of records into wire frames in one go,
  with no ``Message`` or ``QueueEntry`` per record (the AMQP stream consumer does).  Work per call is bounded: at most ``DRAIN_BATCH`` deliveries and
  ``READ_CHUNK_BYTES`` read per cursor, then one ``call_soon`` for the rest, so reading
  a huge stream never holds the whole stream in memory nor the loop for long.
* **Pull by offset** (Kafka fetch later): ``read(offset, max_bytes)`` returns whole
  committed batches from ``offset`` (``storage.record_batch.Batch``; the raw bytes are
  what a Kafka fetch answers) and ``file_ranges(offset, max_bytes)`` the same bytes as
  descriptor ranges for ``os.sendfile``.  No state is kept per puller.

``start`` for a consumer is ``"first"``, ``"last"``, ``"next"`` (the default, as in
RabbitMQ), an offset (clamped into the retained range, as RabbitMQ does), or
``timestamp_ms=`` (the first record stored at or after that time).

The record mapping (``message_to_record`` / ``record_to_message``) is the only place
that knows how a ``Message`` looks inside the log; see their docstrings.
"""

from __future__ import annotations

import logging
import re
import time
from typing import TYPE_CHECKING, Any

from ..cluster.replicator import RETENTION, LocalReplicator, replication_failure
from ..storage.record_batch import Record, RecordBatchError, RecordBuilder, encode_headers
from ..storage.segment import StorageError
from ..storage.stream_log import DEFAULT_MAX_SEGMENT_BYTES
from .message import NO_FIELDS, Extension, Message, QueueEntry, load_extension
from .properties import DecodeError, Timestamp, decode_table, encode_table
from .queue import QueueArgumentError, QueueSettings

if TYPE_CHECKING:
    from ..storage.record_batch import Batch
    from ..storage.stream_log import FileRange, StreamLog
    from .queue import Consumer
    from .vhost import VirtualHost

logger = logging.getLogger("baedal.core")

DRAIN_BATCH = 256  # deliveries per cursor per drain call (as core/queue.py)
READ_CHUNK_BYTES = 256 * 1024  # bytes read from the log per cursor refill
RETENTION_CHECK_SECONDS = 60.0  # how often x-max-age is applied (at most; see below)
# Records of one loop turn are held in memory and appended as one RecordBatch when the
# syncer's next job starts (``Syncer.before_flush``), or earlier past these bounds.  A
# record at least PENDING_MAX_BYTES is appended alone at once (so only it is refused
# when it is larger than a batch may be).
PENDING_MAX_RECORDS = 1024
PENDING_MAX_BYTES = 1024 * 1024

# Classic/quorum arguments RabbitMQ 3.10.8 refuses on a stream (406, checked against it:
# tests/interop/test_streams.py).  Other x- arguments are accepted and ignored there too.
STREAM_INVALID_ARGUMENTS = frozenset(
    {
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-delivery-limit",
        "x-expires",
        "x-max-in-memory-bytes",
        "x-max-in-memory-length",
        "x-max-length",
        "x-max-priority",
        "x-message-ttl",
        "x-overflow",
        "x-queue-mode",
        "x-queue-version",
        "x-quorum-initial-group-size",
        "x-single-active-consumer",
    }
)

# RabbitMQ's x-max-age units (rabbit_amqqueue: Y, M, D, h, m, s; a year is 365 days, a
# month 30).  "0s", an unknown unit or a lowercase "d" are refused (invalid_max_age).
MAX_AGE_UNITS = {"Y": 365 * 86400, "M": 30 * 86400, "D": 86400, "h": 3600, "m": 60, "s": 1}
_MAX_AGE = re.compile(r"^([0-9]*)(.*)$", re.DOTALL)


def parse_interval(value: str) -> int | None:
    """Seconds in a RabbitMQ interval string ("7D", "1h", "30m", "10s", "1Y", "1M"), or
    None when it is not one (zero is not one either)."""
    match = _MAX_AGE.match(value)
    if match is None or not match.group(1):
        return None
    unit = MAX_AGE_UNITS.get(match.group(2))
    number = int(match.group(1))
    if unit is None or number <= 0:
        return None
    return number * unit


def _amqp_type(value: Any) -> str:
    """RabbitMQ's name for a field-table value's type, as in its error texts."""
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, Timestamp):
        return "timestamp"
    if isinstance(value, int):
        return "signedint" if -(2**31) <= value < 2**31 else "long"
    if isinstance(value, str):
        return "longstr"
    if isinstance(value, float):
        return "double"
    if isinstance(value, dict):
        return "table"
    if isinstance(value, list):
        return "array"
    if isinstance(value, bytes):
        return "binary"
    return "void" if value is None else type(value).__name__


class StreamSettings:
    """A stream's validated arguments (retention and segment size)."""

    __slots__ = ("max_bytes", "max_age", "max_age_text", "max_segment_bytes")

    def __init__(self, arguments: dict[str, Any], where: str) -> None:
        """``where`` is "for queue 'q' in vhost '/'" (RabbitMQ's texts include it)."""
        self.max_bytes = _non_negative(arguments, "x-max-length-bytes", where)
        self.max_segment_bytes = _non_negative(arguments, "x-stream-max-segment-size-bytes", where)
        max_age = arguments.get("x-max-age")
        self.max_age: int | None = None
        self.max_age_text: str | None = None
        if max_age is not None:
            if not isinstance(max_age, str):
                raise QueueArgumentError(
                    f"invalid arg 'x-max-age' {where}: {{unacceptable_type,{_amqp_type(max_age)}}}"
                )
            seconds = parse_interval(max_age)
            if seconds is None:
                # RabbitMQ 3.10.8 answers "h" (no number) with 541 INTERNAL_ERROR (a crash
                # in its parser); we answer it as it answers "1x": 406 invalid_max_age.
                raise QueueArgumentError(f"invalid arg 'x-max-age' {where}: invalid_max_age")
            self.max_age = seconds
            self.max_age_text = max_age

    def log_settings(self) -> dict[str, Any]:
        settings: dict[str, Any] = {"max_bytes": self.max_bytes, "max_age": self.max_age}
        if self.max_segment_bytes:
            settings["max_segment_bytes"] = self.max_segment_bytes
        return settings


def _non_negative(arguments: dict[str, Any], name: str, where: str) -> int | None:
    value = arguments.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise QueueArgumentError(
            f'invalid arg \'{name}\' {where}: "expected integer, got {_amqp_type(value)}"'
        )
    if value < 0:
        raise QueueArgumentError(f"invalid arg '{name}' {where}: {{value_negative,{value}}}")
    return value


def check_stream_declare(
    name: str,
    vhost: str,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    arguments: dict[str, Any],
) -> None:
    """Refuse what RabbitMQ 3.10.8 refuses for ``x-queue-type: stream``, in its order:
    argument values, a server-named queue, classic-only arguments, then the properties
    (auto-delete, exclusive, non-durable).  Raises ``QueueArgumentError`` (406)."""
    where = f"for queue '{name}' in vhost '{vhost}'"
    StreamSettings(arguments, where)
    if not name:
        raise QueueArgumentError("Cannot declare a server-named queue for type rabbit_stream_queue")
    for key in sorted(arguments):
        if key in STREAM_INVALID_ARGUMENTS:
            raise QueueArgumentError(
                f"invalid arg '{key}' {where} of queue type rabbit_stream_queue"
            )
    for refused, prop in (
        (auto_delete, "auto-delete"),
        (exclusive, "exclusive-owner"),
        (not durable, "non-durable"),
    ):
        if refused:
            raise QueueArgumentError(f"invalid property '{prop}' {where}")


class StartError(ValueError):
    """An ``x-stream-offset`` the stream cannot start from."""


def start_from_argument(value: Any, now: float | None = None) -> tuple[Any, int | None]:
    """(start, timestamp_ms) for a consumer from an ``x-stream-offset`` argument value:
    "first" / "last" / "next", an offset (negative: from the first), an AMQP timestamp
    (seconds), or an interval string ("1h": from one hour ago)."""
    if value is None:
        return "next", None
    if isinstance(value, Timestamp):
        return "first", int(value) * 1000
    if isinstance(value, bool):
        raise StartError(f"invalid x-stream-offset {value!r}")
    if isinstance(value, int):
        return max(value, 0), None
    if isinstance(value, str):
        if value in ("first", "last", "next"):
            return value, None
        seconds = parse_interval(value)
        if seconds is not None:
            moment = time.time() if now is None else now
            return "first", int((moment - seconds) * 1000)
    raise StartError(f"invalid x-stream-offset {value!r}")


# --- the record mapping -------------------------------------------------------------------

# Reserved record header names.  Neutral fields use their plain names so a Kafka reader
# sees ordinary headers; everything Baedal-specific starts with "x-baedal-".
EXCHANGE_HEADER = "x-baedal-exchange"
# The headers in Baedal's typed-map encoding: a round trip through a stream keeps every
# typed value (long vs int, timestamps, decimals, nested tables), which the plain string
# headers written beside it for other readers cannot carry.
TYPED_HEADERS_HEADER = "x-baedal-headers"
# A protocol's leftovers (``Extension.leftovers``), e.g. AMQP's type/app-id/delivery-mode,
# under "x-baedal-ext-<protocol>".
EXTENSION_HEADER_PREFIX = "x-baedal-ext-"
# Written only for a message published as transient (a stream stores it anyway).
TRANSIENT_HEADER = "x-baedal-transient"
_STRING_FIELDS = (
    (0, "content-type"),
    (1, "content-encoding"),
    (2, "correlation-id"),
    (3, "reply-to"),
    (4, "message-id"),
    (5, "user-id"),
)
_NEUTRAL_NAMES = {name: index for index, name in _STRING_FIELDS}
_RESERVED = frozenset(
    [EXCHANGE_HEADER, TYPED_HEADERS_HEADER, "timestamp", "priority", "expiration"]
    + [name for _index, name in _STRING_FIELDS]
)


def _header_bytes(value: Any) -> bytes:
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode("utf-8", "surrogateescape")
    if isinstance(value, bool):
        return b"true" if value else b"false"
    return str(value).encode()


def message_to_record(message: Message) -> tuple[bytes | None, bytes, list[tuple[str, bytes]], int]:
    """(key, value, headers, timestamp_ms) of the record a message is stored as.

    * value = the body; key = the routing key as UTF-8 (None when empty);
    * timestamp_ms = the arrival time (what ``x-stream-offset`` timestamps select on,
      as RabbitMQ's chunk timestamps);
    * headers = ``x-baedal-exchange`` (the exchange it was published to), then the
      neutral fields present under their plain names (``content-type``,
      ``content-encoding``, ``correlation-id``, ``reply-to``, ``message-id``,
      ``user-id``, ``timestamp`` in seconds, ``priority``, ``expiration`` in ms), then
      each application header as bytes (strings UTF-8, numbers and the rest in their
      text form) followed by ``x-baedal-headers`` (the same headers typed, for an exact
      round trip), then ``x-baedal-ext-<protocol>``: the publishing protocol's leftovers
      (AMQP's delivery-mode, type, app-id...).  Nothing here is AMQP-shaped: a Kafka
      reader sees ordinary headers, and any adapter rebuilds its wire form from them.
    """
    headers: list[tuple[str, bytes]] = [(EXCHANGE_HEADER, message.exchange.encode())]
    fields = message.field_values()
    if fields is not NO_FIELDS:
        for index, name in _STRING_FIELDS:
            value = fields[index]
            if value is not None:
                headers.append((name, _header_bytes(value)))
        if fields[6] is not None:
            headers.append(("timestamp", str(int(fields[6])).encode()))
    if message.priority:
        headers.append(("priority", str(message.priority).encode()))
    if not message.persistent:
        headers.append((TRANSIENT_HEADER, b"1"))
    if message.expiration_ms is not None:
        headers.append(("expiration", str(message.expiration_ms).encode()))
    if fields is not NO_FIELDS and fields[7] is not None:
        for name, value in (message.headers or {}).items():
            if name not in _RESERVED and not name.startswith("x-baedal-"):
                headers.append((name, _header_bytes(value)))
        headers.append((TYPED_HEADERS_HEADER, fields[7]))
    extension = message.extension
    if extension is not None:
        leftovers = extension.leftovers()
        if leftovers:
            headers.append((EXTENSION_HEADER_PREFIX + extension.protocol, leftovers))
    key = message.routing_key.encode() if message.routing_key else None
    published = message.published_at or time.time()
    return key, message.body, headers, int(published * 1000)


def _is_table(data: bytes) -> bool:
    """``data`` is exactly one well-formed typed table (``core/properties.py``)."""
    try:
        return decode_table(data)[1] == len(data)
    except DecodeError:
        return False


def record_to_message(
    key: bytes | None,
    value: bytes | None,
    headers: Any,
    timestamp_ms: int | None,
    trusted: bool = False,
) -> Message:
    """The message a stored record reads back as (the inverse of ``message_to_record``).

    A record written by another protocol (a Kafka producer) has no ``x-baedal-*``
    headers: its neutral names become neutral fields and its other headers become
    string headers.  A record with no ``x-baedal-ext-*`` leftovers reads back
    persistent (it is in a durable log).

    A stream's records may come from any Kafka producer, which can send headers named
    like Baedal's own: an ``x-baedal-headers`` table or an ``x-baedal-ext-*`` leftover
    that does not decode is kept as a plain string header instead, so one forged record
    can neither close the connection of every AMQP reader that reaches it nor make the
    broker send a malformed property block.  ``trusted`` (the queue log: records Baedal
    wrote itself, CRC-checked) skips the table check.
    """
    if len(headers) == 1:
        # The common record (an AMQP publish with no properties but delivery-mode 2:
        # only the exchange header): no neutral fields to look for, nothing to decode
        # later either.  Same result as the general loop below.
        name, raw = headers[0]
        if name == EXCHANGE_HEADER:
            message = Message(
                raw.decode("utf-8", "replace") if raw else "",
                key.decode("utf-8", "replace") if key else "",
                value if value is not None else b"",
                True,
                0,
                None,
                (timestamp_ms or 0) / 1000.0,
            )
            message.adopt_fields(NO_FIELDS)
            return message
    exchange = ""
    strings: list[Any] = [None, None, None, None, None, None]
    timestamp: int | None = None
    priority = 0
    expiration_ms: int | None = None
    typed: bytes | None = None
    plain: dict[str, str | None] = {}
    extension: Extension | None = None
    persistent = True
    for name, raw in headers:
        if name == EXCHANGE_HEADER:
            exchange = bytes(raw).decode("utf-8", "replace") if raw is not None else ""
            continue
        index = _NEUTRAL_NAMES.get(name)
        if index is not None:
            if raw is not None:
                strings[index] = bytes(raw).decode("utf-8", "surrogateescape")
        elif name == "timestamp":
            if raw is not None and bytes(raw).isdigit():
                timestamp = int(raw)
        elif name == "priority":
            if raw is not None and bytes(raw).isdigit():
                priority = min(int(raw), 255)
        elif name == "expiration":
            if raw is not None and bytes(raw).isdigit():
                expiration_ms = int(raw)
        elif name == TRANSIENT_HEADER:
            persistent = False
        elif name == TYPED_HEADERS_HEADER:
            if raw is not None:
                table = bytes(raw)
                if trusted or _is_table(table):
                    typed = table
                else:
                    plain[name] = table.decode("utf-8", "replace")
        elif name.startswith(EXTENSION_HEADER_PREFIX):
            data = bytes(raw or b"")
            try:
                extension = load_extension(name[len(EXTENSION_HEADER_PREFIX):], data)
            except ValueError:  # properties.DecodeError: not what Baedal writes
                plain[name] = data.decode("utf-8", "replace")
        else:
            plain[name] = bytes(raw).decode("utf-8", "replace") if raw is not None else None
    message = Message(
        exchange,
        key.decode("utf-8", "replace") if key else "",
        value if value is not None else b"",
        persistent=persistent,
        priority=priority,
        expiration_ms=expiration_ms,
        published_at=(timestamp_ms or 0) / 1000.0,
        extension=extension,
    )
    if typed is not None:
        message.set_fields(*strings, timestamp, typed)
    elif plain:
        message.set_fields(*strings, timestamp, encode_table(plain))
    elif timestamp is None and strings == [None] * 6:
        message.adopt_fields(NO_FIELDS)
    else:
        message.set_fields(*strings, timestamp, None)
    return message


# --- the stream ---------------------------------------------------------------------------


class _NoStore:
    """What ``core/publish.py`` and the management API read from ``queue.store``: a
    stream has no ready backlog (nothing is consumed away), so it never throttles."""

    __slots__ = ("stream",)
    durable = True
    ready_count = 0

    def __init__(self, stream: StreamQueue) -> None:
        self.stream = stream

    @property
    def ready_bytes(self) -> int:
        return 0

    @property
    def failure(self) -> Any:
        return self.stream.log.failure


class CommitHandle:
    """Done once the fsync covering a stream's appends up to ``target`` has completed.

    Returned by ``StreamQueue.publish`` for a *transient* message (``core/publish.py``
    sets ``NEEDS_SYNC`` only for persistent ones), through the same replication-handle
    seam the confirm path already waits on: a stream stores every message, so its
    confirm always waits for the disk, as RabbitMQ's does.  One handle is shared by
    every transient message of a commit round (no allocation per message).
    """

    __slots__ = ("target", "_callbacks", "_failure", "done")

    def __init__(self) -> None:
        self.target: int | None = None  # set when the covering sync is requested
        self._callbacks: list[Any] = []
        self._failure: BaseException | None = None
        self.done = False

    def add_done_callback(self, fn: Any, /) -> None:
        if self.done:
            fn(self)
        else:
            self._callbacks.append(fn)

    def exception(self) -> BaseException | None:
        return self._failure

    def finish(self, failure: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        self._failure = failure
        callbacks, self._callbacks = self._callbacks, []
        for fn in callbacks:
            fn(self)


class StreamCursor:
    """One push consumer's position: a log reader plus one bounded chunk of records."""

    __slots__ = ("consumer", "reader", "pending", "index", "delivered", "failed_at")

    def __init__(self, consumer: Consumer, reader: Any) -> None:
        self.consumer = consumer
        self.reader = reader
        # ``record_batch.decode_rows`` tuples: (offset, timestamp, key, value, headers, ...)
        self.pending: list[tuple[Any, ...]] = []
        self.index = 0
        self.delivered = 0
        self.failed_at = -1  # offset of the last failed read, logged once

    @property
    def offset(self) -> int:
        """The offset of the next record this consumer will get."""
        if self.index < len(self.pending):
            return self.pending[self.index][0]
        return self.reader.next_offset


class StreamQueue:
    """A stream in a vhost: routable like a queue, consumed by cursors (module docstring)."""

    is_queue = True
    is_stream = True
    queue_type = "stream"

    def __init__(
        self,
        vhost: VirtualHost,
        name: str,
        log: StreamLog,
        *,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self.vhost = vhost
        self.name = name
        self.durable = True
        self.exclusive_owner = None
        self.auto_delete = False
        self.arguments = arguments or {}
        self.settings = QueueSettings(
            {k: v for k, v in self.arguments.items() if k.startswith("x-") and k in _SETTINGS_KEYS}
        )
        self.stream_settings = StreamSettings(
            self.arguments, f"for queue '{name}' in vhost '{vhost.name}'"
        )
        self.policy: Any = None
        self.operator_policy: Any = None
        self.log = log
        self.store = _NoStore(self)
        self.consumers: list[Consumer] = []
        self.cursors: dict[int, StreamCursor] = {}  # id(consumer) -> cursor
        self.unacked_count = 0
        self.deleted = False
        self.throttled_publishers: set[Any] = set()
        self.committed_offset = log.next_offset  # recovered records were synced before
        self._synced_offset = log.next_offset  # covered by an fsync (committed: + replicated)
        self._commit_waiting = False
        self._handles: list[CommitHandle] = []  # confirms waiting on a commit, oldest first
        self._open_handle: CommitHandle | None = None  # shared by this commit round's messages
        # Records published but not yet appended (one batch per loop turn, see publish),
        # already encoded into the batch they will be appended as; None when there are none.
        self._pending: RecordBuilder | None = None
        self._pending_count = 0
        self._exchange_headers: dict[str, bytes] = {}  # see publish
        self._flush_registered = False
        self._flushed_target = 0  # log.next_offset after the last syncer-job flush
        self._lost: StorageError | None = None  # accepted records an append lost
        # Batches whose replication handle is outstanding: [base, last, done], oldest first.
        self._replicating: list[list[Any]] = []
        self._reported_first = log.first_offset  # retention reported up to here
        log.before_close = self._flush_pending
        self._drain_scheduled = False
        self._retention_timer: Any = None
        # Called once each, the next time committed_offset advances (Kafka's long-polling
        # fetches wait on this; a pull reader has no cursor to drain).
        self.commit_waiters: list[Any] = []
        self.publish_count = 0
        self.deliver_count = 0
        self.ack_count = 0
        self.redeliver_count = 0
        self._schedule_retention()
        policies = getattr(vhost, "policies", None)
        operator_policies = getattr(vhost, "operator_policies", None)
        if policies or operator_policies:  # a new or recovered stream takes its policy now
            from .policy import select

            self.policy = select((policies or {}).values(), "queues", name)
            self.operator_policy = select((operator_policies or {}).values(), "queues", name)
            if self.policy is not None or self.operator_policy is not None:
                self._apply_stream_policy()

    # --- what management and the AMQP adapter read ----------------------------------

    @property
    def message_count(self) -> int:
        """Records retained (RabbitMQ's stream "messages")."""
        return self.log.message_count

    @property
    def exclusive(self) -> bool:
        return False

    def stream_info(self) -> dict[str, Any]:
        log_ = self.log
        settings = self.stream_settings
        return {
            "first_offset": log_.first_offset,
            "last_offset": log_.last_offset,
            "next_offset": log_.next_offset,
            "committed_offset": self.committed_offset,
            "messages": log_.message_count,
            "bytes_on_disk": log_.bytes_on_disk,
            "segments": log_.segment_count,
            "max_length_bytes": settings.max_bytes,
            "max_age": settings.max_age_text,
            "max_segment_size_bytes": log_.max_segment_bytes,
            "readers": len(self.cursors),
            # where each push consumer is: the next offset it gets and how far behind
            # the end of the stream that is
            "reader_details": [
                {
                    "consumer_tag": getattr(cursor.consumer, "tag", ""),
                    "offset": cursor.offset,
                    "lag": max(log_.next_offset - cursor.offset, 0),
                    "delivered": cursor.delivered,
                }
                for cursor in self.cursors.values()
            ],
            "segments_removed_by_retention": log_.removed_by_retention,
        }

    # --- publish ----------------------------------------------------------------------

    def publish(self, message: Message) -> Any:
        """Accept one record.  False (the confirm is a nack) when the log cannot write;
        True, or a ``CommitHandle`` the confirm waits for (a transient message, or any
        message while a replicator that may hold confirms is installed).

        The record joins this loop turn's pending batch; the syncer's next job appends
        the batch before it flushes and fsyncs (``Syncer.before_flush``), so every
        confirm waiting on that fsync covers it, and readers (up to
        ``committed_offset``) never see it earlier.  A crash before then loses only
        records whose confirms were not sent.
        """
        log_ = self.log
        if log_.failure is not None:
            self.vhost.broker.write_failed(None, log_.failure)
            return False
        extension = message.extension
        routing_key = message.routing_key
        value = message.body
        if (
            message.persistent
            and not message.priority
            and message.expiration_ms is None
            and (
                message.field_values() is NO_FIELDS if extension is None else extension.plain(message)
            )
        ):
            # The common record (what message_to_record gives for it: the exchange
            # header alone), its header section encoded once per exchange.
            exchange = message.exchange
            headers = self._exchange_headers.get(exchange)
            if headers is None:
                headers = encode_headers(((EXCHANGE_HEADER, exchange.encode()),))
                if len(self._exchange_headers) < 64:
                    self._exchange_headers[exchange] = headers
            key = routing_key.encode() if routing_key else None
            timestamp_ms = int((message.published_at or time.time()) * 1000)
        else:
            key, value, header_list, timestamp_ms = message_to_record(message)
            headers = encode_headers(header_list)
        return self._accept(key, value, headers, timestamp_ms, message.persistent)

    def publish_bare(self, exchange: str, routing_key: str, value: bytes) -> Any:
        """``publish`` of a persistent message with no neutral field, no priority and
        no expiry (what a publish with only ``delivery-mode: 2`` is): the AMQP
        adapter's stream fast path calls this with the parts it has, so no ``Message``
        is built.  The record stored is the one ``publish`` stores for that message
        (the exchange header alone, the routing key as the key)."""
        log_ = self.log
        if log_.failure is not None:
            self.vhost.broker.write_failed(None, log_.failure)
            return False
        headers = self._exchange_headers.get(exchange)
        if headers is None:
            headers = encode_headers(((EXCHANGE_HEADER, exchange.encode()),))
            if len(self._exchange_headers) < 64:
                self._exchange_headers[exchange] = headers
        key = routing_key.encode() if routing_key else None
        pending = self._pending
        if (
            pending is None
            or len(value) + len(headers) >= PENDING_MAX_BYTES
            or type(self.vhost.broker.replicator) is not LocalReplicator
        ):
            # A turn's first record, a huge one, or confirms a replicator may hold.
            return self._accept(key, value, headers, int(time.time() * 1000), True)
        # _accept's common case, inlined (the stream publish hot path): into the turn's
        # batch, and the confirm waits for the fsync that follows the batch's append.
        pending.add(key, value, headers, int(time.time() * 1000))
        self._pending_count = pending.count
        if pending.count >= PENDING_MAX_RECORDS or pending.size >= PENDING_MAX_BYTES:
            self._flush_pending()  # a failure fails the confirms (hook raises _lost)
        self.publish_count += 1
        if not self._commit_waiting:
            self._wait_for_commit()
        return True

    def _accept(
        self, key: bytes | None, value: bytes, headers: bytes, timestamp_ms: int, persistent: bool
    ) -> Any:
        """The record into this turn's batch (or appended alone); the confirm's handle."""
        log_ = self.log
        size = len(value) + len(headers)
        if size >= PENDING_MAX_BYTES or log_.syncer is None:
            # Alone and at once: a huge record (refused by itself if it exceeds the batch
            # bound), or no syncer to tell us when a turn ends.
            if self._pending is not None and not self._flush_pending():
                return False
            try:
                result = log_.append((Record(value, key, headers, timestamp_ms),))
            except OSError as exc:
                self.vhost.broker.write_failed(None, exc)
                return False
            except RecordBatchError as exc:  # larger than the log's batch bound: nacked
                logger.warning("stream %s: message refused: %s", self.name, exc)
                return False
            self._appended(result.base_offset, result.last_offset)
        else:
            # Encoded now into this turn's batch (no Record kept): the flush only adds
            # the batch header and CRC.
            pending = self._pending
            if pending is None:
                pending = self._pending = RecordBuilder()
                if not self._flush_registered:
                    self._flush_registered = True
                    log_.syncer.before_flush(self._flush_hook)
            pending.add(key, value, headers, timestamp_ms)
            self._pending_count = pending.count
            if pending.count >= PENDING_MAX_RECORDS or pending.size >= PENDING_MAX_BYTES:
                self._flush_pending()  # a failure fails the confirms (hook raises _lost)
        self.publish_count += 1
        handle: Any = True
        if not persistent or type(self.vhost.broker.replicator) is not LocalReplicator:
            handle = self._open_handle
            if handle is None:
                handle = self._open_handle = CommitHandle()
                self._handles.append(handle)
            handle.target = log_.next_offset + self._pending_count
        if not self._commit_waiting:
            self._wait_for_commit()
        return handle

    def _flush_hook(self) -> None:
        """``Syncer.before_flush``: append this turn's records before the job's fsync."""
        self._flush_registered = False
        if self.deleted:
            return
        self._flush_pending()
        self._flushed_target = self.log.next_offset
        lost, self._lost = self._lost, None
        if lost is not None:
            raise lost  # the job's confirms (persistent messages) become nacks

    def _flush_pending(self) -> bool:
        """Append the pending records as one batch; False (confirms failed) if it fails."""
        pending = self._pending
        if pending is None:
            return True
        self._pending = None
        self._pending_count = 0
        try:
            result = self.log.append_batch(pending.finish())
        except (OSError, RecordBatchError) as exc:
            # These records were accepted: whoever waits for them must get a nack.
            if isinstance(exc, StorageError):
                self._lost = exc
            else:
                self._lost = StorageError(None, f"stream '{self.name}': batch refused: {exc}")
            logger.error("stream %s: %d record(s) lost: %s", self.name, pending.count, exc)
            self._fail_handles(self._lost)
            if isinstance(exc, OSError):
                self.vhost.broker.write_failed(None, exc)
            return False
        self._appended(result.base_offset, result.last_offset)
        return True

    def _appended(self, base: int, last: int) -> None:
        """Tell the replicator about one appended batch (and any retention it caused)."""
        replicator = self.vhost.broker.replicator
        handle = replicator.appended_records(self, base, last)
        if handle is not None:
            entry = [base, last, False]
            self._replicating.append(entry)
            handle.add_done_callback(lambda h: self._replicated(entry, replication_failure(h)))
        self._report_retention()

    def _report_retention(self) -> None:
        """``cleared(stream, "retention", n)`` for records retention removed since the
        last report (size retention runs inside appends, age retention on a timer)."""
        first = self.log.first_offset
        if first > self._reported_first:
            self.vhost.broker.replicator.cleared(self, RETENTION, first - self._reported_first)
            self._reported_first = first

    def _replicated(self, entry: list[Any], failure: BaseException | None) -> None:
        entry[2] = True
        if failure is not None:
            # Every confirm that covers this batch is a nack; the records stay.
            base = entry[0]
            keep = []
            for handle in self._handles:
                if handle.target is not None and handle.target > base:
                    handle.finish(failure)
                    if handle is self._open_handle:
                        self._open_handle = None
                else:
                    keep.append(handle)
            self._handles = keep
        if not self.deleted:
            self._advance()

    def _advance(self) -> None:
        """committed_offset = what is both fsynced and replicated; finish its confirms."""
        limit = self._synced_offset
        replicating = self._replicating
        while replicating and replicating[0][2]:
            replicating.pop(0)
        if replicating and replicating[0][0] < limit:
            limit = replicating[0][0]
        if limit > self.committed_offset:
            self.committed_offset = limit
            if self.commit_waiters:
                waiters, self.commit_waiters = self.commit_waiters, []
                for waiter in waiters:
                    waiter()
        committed = self.committed_offset
        handles = self._handles
        while handles and handles[0].target is not None and handles[0].target <= committed:
            handle = handles.pop(0)
            if handle is self._open_handle:
                self._open_handle = None
            handle.finish()
        if self.cursors:
            self.drain()

    def _wait_for_commit(self) -> None:
        """Advance ``committed_offset`` after the fsync covering what is accepted now
        (one pending callback per stream at a time, however many appends)."""
        target = self.log.next_offset + self._pending_count
        self._commit_waiting = True
        self._open_handle = None  # later messages join the next round

        def committed() -> None:
            self._commit_waiting = False
            if self.deleted:
                return
            # The hook of this job (or an earlier one) appended up to _flushed_target
            # before the fsync began, so that much is covered too.
            synced = max(target, self._flushed_target)
            if synced > self._synced_offset:
                self._synced_offset = synced
            self._advance()
            if self.log.next_offset + self._pending_count > self._synced_offset:
                self._wait_for_commit()

        def failed(exc: BaseException) -> None:
            self._commit_waiting = False
            self._fail_handles(exc)

        if not self.vhost.broker.after_sync(committed, failed):
            committed()

    def _fail_handles(self, exc: BaseException) -> None:
        self._open_handle = None
        handles, self._handles = self._handles, []
        for handle in handles:
            handle.finish(exc)

    # --- raw batches (Kafka produce) ---------------------------------------------------

    def append_batch(self, data: bytearray | memoryview) -> tuple[Any, CommitHandle]:
        """Store one Kafka RecordBatch as received (only its base offset is rewritten,
        in place: ``StreamLog.append_batch``) and return (``AppendResult``, a ``CommitHandle`` done
        once the batch is committed: fsynced and, with a replicator, replicated).

        Records published by other protocols in this loop turn are appended first, so
        offsets follow arrival order.  Raises ``RecordBatchError`` for a bad batch and
        ``StorageError``/``OSError`` when the log cannot write (the log stays failed).
        """
        log_ = self.log
        if log_.failure is not None:
            raise log_.failure
        if self._pending is not None and not self._flush_pending():
            assert self._lost is not None
            raise self._lost
        try:
            result = log_.append_batch(data)
        except OSError as exc:
            self.vhost.broker.write_failed(None, exc)
            raise
        self.publish_count += result.last_offset - result.base_offset + 1
        self._appended(result.base_offset, result.last_offset)
        return result, self.commit_handle(result.last_offset + 1)

    def commit_handle(self, target: int) -> CommitHandle:
        """A handle done once ``committed_offset`` reaches ``target``."""
        handle = CommitHandle()
        handle.target = target
        if target <= self.committed_offset:
            handle.finish()
            return handle
        self._handles.append(handle)
        if not self._commit_waiting:
            self._wait_for_commit()
        return handle

    # --- pull (Kafka fetch) -----------------------------------------------------------

    def read(self, offset: int, max_bytes: int) -> list[Batch]:
        """Whole committed batches from ``offset`` (at least one if there is one, then
        up to ``max_bytes``).  Raises ``OffsetOutOfRange`` outside the retained range."""
        self.log.check_offset(offset)
        reader = self.log.reader(offset)
        return reader.read(max_bytes, end_offset=self.committed_offset)

    def file_ranges(self, offset: int, max_bytes: int) -> list[FileRange]:
        """``read`` as descriptor ranges for ``os.sendfile`` (uncommitted bytes included
        only if ``offset`` is below ``committed_offset``; the caller trims)."""
        return self.log.file_ranges(offset, max_bytes)

    def committed_file_ranges(self, offset: int, max_bytes: int) -> list[FileRange]:
        """``file_ranges`` cut at ``committed_offset`` (Kafka fetch with ``os.sendfile``).

        ``committed_offset`` is always a batch boundary (it only moves to the end of an
        appended batch), so cutting the range there keeps whole batches.  Empty when
        nothing at or after ``offset`` is committed.  Raises ``OffsetOutOfRange``.
        """
        committed = self.committed_offset
        log_ = self.log
        log_.check_offset(offset)
        if offset >= committed:
            return []
        ranges = log_.file_ranges(offset, max_bytes)
        if committed >= log_.next_offset:
            return ranges
        segment, position = log_._locate(committed)
        kept: list[FileRange] = []
        cut = False
        for file_range in ranges:
            if not cut and file_range.path == segment.path:
                cut = True
                if file_range.position < position:
                    file_range.length = min(file_range.length, position - file_range.position)
                    kept.append(file_range)
                    continue
            if cut:
                file_range.close()
            else:
                kept.append(file_range)
        return kept

    # --- push consumers ---------------------------------------------------------------

    def add_consumer(
        self, consumer: Consumer, start: Any = "next", timestamp_ms: int | None = None
    ) -> StreamCursor:
        reader = self.log.reader(start, timestamp=timestamp_ms)
        cursor = StreamCursor(consumer, reader)
        self.cursors[id(consumer)] = cursor
        self.consumers.append(consumer)
        self.drain()
        return cursor

    def remove_consumer(self, consumer: Consumer) -> None:
        if self.cursors.pop(id(consumer), None) is None:
            return
        try:
            self.consumers.remove(consumer)
        except ValueError:
            pass

    def drain(self) -> None:
        """Deliver to every cursor with credit, bounded per call (module docstring)."""
        if self.deleted:
            return
        more = False
        for cursor in list(self.cursors.values()):
            if self._drain_cursor(cursor):
                more = True
        if more and not self._drain_scheduled:
            self._drain_scheduled = True
            self.vhost.broker.call_soon(self._scheduled_drain)

    def _scheduled_drain(self) -> None:
        self._drain_scheduled = False
        self.drain()

    def _drain_cursor(self, cursor: StreamCursor) -> bool:
        """Deliver up to DRAIN_BATCH records; True when more could go out right now."""
        consumer = cursor.consumer
        delivered = 0
        committed = self.committed_offset
        deliver_rows = getattr(consumer, "deliver_rows", None)
        while consumer.can_deliver():
            if delivered >= DRAIN_BATCH:
                return True
            pending = cursor.pending
            if cursor.index >= len(pending):
                if cursor.reader.next_offset >= committed:
                    return False
                try:
                    cursor.pending = pending = cursor.reader.read_rows(
                        READ_CHUNK_BYTES, end_offset=committed
                    )
                except OSError as exc:
                    # A reader stuck at a damaged batch is retried on every drain (each
                    # publish, each ack): say so once per position, not once per retry.
                    if cursor.failed_at != cursor.reader.next_offset:
                        cursor.failed_at = cursor.reader.next_offset
                        logger.error("stream %s: read failed: %s", self.name, exc)
                    return False
                except RecordBatchError as exc:
                    # A batch kept as a Kafka producer sent it whose records cannot be
                    # decoded (compressed data damaged under a valid CRC, or a codec
                    # this install lacks): this reader cannot pass it.  Cancel the
                    # consumer (AMQP basic.cancel), not its connection, and say where.
                    logger.error(
                        "stream %s: consumer cancelled at offset %d: %s",
                        self.name, cursor.reader.next_offset, exc,
                    )
                    self.remove_consumer(consumer)
                    consumer.cancelled_by_server(self)
                    return False
                cursor.index = 0
                if not pending:
                    return False
                if delivered:
                    return True  # one disk read per cursor per call
            if deliver_rows is not None:
                index = cursor.index
                count = deliver_rows(
                    self, pending, index, min(len(pending), index + DRAIN_BATCH - delivered)
                )
                if count:
                    delivered += count
                    cursor.delivered += count
                    self.deliver_count += count
                    self.unacked_count += count
                    cursor.index = index = index + count
                    if index >= len(pending):
                        cursor.pending = []
                        cursor.index = 0
                    continue
                # Nothing taken with credit left: this record needs the general path.
            offset, timestamp, key, value, headers, _attributes = pending[cursor.index]
            cursor.index += 1
            message = record_to_message(key, value, headers, timestamp)
            entry = QueueEntry(offset, message, len(message.body))
            delivered += 1
            cursor.delivered += 1
            self.deliver_count += 1
            self.unacked_count += 1
            consumer.deliver(self, entry)
            if cursor.index >= len(pending):
                cursor.pending = []
                cursor.index = 0
        return False

    def get(self, no_ack: bool) -> QueueEntry | None:
        """Refused (RabbitMQ: streams are read by consumers with an offset).  The AMQP
        adapter answers 540 before calling this; others (HTTP) get the CoreError."""
        from .vhost import CoreError  # vhost imports this module

        raise CoreError(
            "precondition_failed",
            f"basic.get not supported by stream queues queue '{self.name}' in vhost '{self.vhost.name}'",
        )

    # --- settlement: acks only return credit -------------------------------------------

    def settle_delivered(self, entry: QueueEntry) -> None:
        self.unacked_count -= 1

    def ack(self, entry: QueueEntry) -> None:
        self.unacked_count -= 1
        self.ack_count += 1

    def reject(self, entry: QueueEntry, requeue: bool) -> None:
        self.unacked_count -= 1

    def settle_many(self, count: int, acked: bool) -> None:
        """``count`` deliveries settled at once (an adapter that tracks a consumer's
        deliveries as a count, not one entry each: ``deliver_rows``)."""
        self.unacked_count -= count
        if acked:
            self.ack_count += count

    def requeue(self, entries: list[QueueEntry]) -> None:
        """A channel closed with deliveries unacked: nothing to put back (a stream keeps
        every record); a new consumer chooses where to start."""
        self.unacked_count -= len(entries)

    def purge(self) -> int:
        from .vhost import CoreError  # vhost imports this module

        raise CoreError(
            "precondition_failed",
            f"queue.purge not supported by stream queues queue '{self.name}' in vhost '{self.vhost.name}'",
        )

    def delete_store(self) -> None:
        self.cursors.clear()
        self._pending = None
        self._pending_count = 0
        self.log.before_close = None
        self._fail_handles(ConnectionAbortedError(f"stream '{self.name}' deleted"))
        storage = self.vhost.broker.storage
        if storage is not None:
            storage.stream_deleted(self.vhost.name, self.name)
        else:
            self.log.close()

    # --- settings, lifecycle ----------------------------------------------------------

    def apply_settings(self, settings: QueueSettings) -> None:
        """The vhost (re)selected this stream's policies: recompute its retention and
        segment size (``_apply_stream_policy``); ``settings`` is for classic queues."""
        self._apply_stream_policy()

    def _apply_stream_policy(self) -> None:
        """``max-length-bytes``, ``max-age`` and ``stream-max-segment-size-bytes`` from the
        policy (with the operator policy's lower ``max-length-bytes``) *win over* the
        ``x-`` arguments, as RabbitMQ 3.10's rabbit_stream_queue does
        (``policy_precedence``), unlike classic queues' lower-value rule.  A new segment
        size applies from the next segment; retention applies at once."""
        from .policy import STREAM_POLICY_ARGUMENTS, effective_definition

        where = f"for queue '{self.name}' in vhost '{self.vhost.name}'"
        definition = effective_definition(self.policy, self.operator_policy)
        arguments = dict(self.arguments)
        for key, argument in STREAM_POLICY_ARGUMENTS.items():
            if key in definition:
                arguments[argument] = definition[key]
        try:
            settings = StreamSettings(arguments, where)
        except QueueArgumentError as exc:  # a policy must never break a stream
            logger.warning("stream %s: policy ignored: %s", self.name, exc)
            settings = StreamSettings(self.arguments, where)
        self.stream_settings = settings
        log_ = self.log
        log_.max_bytes = settings.max_bytes
        log_.max_age = settings.max_age
        log_.max_segment_bytes = settings.max_segment_bytes or DEFAULT_MAX_SEGMENT_BYTES
        self.cancel_timers()
        self._apply_retention()  # reschedules the age check for the new max-age

    def touch(self) -> None:
        pass

    def release_publishers(self) -> None:
        self.throttled_publishers.clear()

    def cancel_timers(self) -> None:
        if self._retention_timer is not None:
            self._retention_timer.cancel()
            self._retention_timer = None

    def _schedule_retention(self) -> None:
        """Age retention runs on a timer (size retention runs at every segment roll):
        every RETENTION_CHECK_SECONDS, or sooner for a short x-max-age."""
        max_age = self.stream_settings.max_age
        if max_age is None:
            return
        delay = min(RETENTION_CHECK_SECONDS, max(max_age / 4, 1.0))
        try:
            self._retention_timer = self.vhost.broker.call_later(delay, self._apply_retention)
        except RuntimeError:
            self._retention_timer = None  # no loop (tools): retention runs at rolls

    def _apply_retention(self) -> None:
        self._retention_timer = None
        if self.deleted:
            return
        try:
            removed = self.log.apply_retention()
        except OSError as exc:
            logger.error("stream %s: retention failed: %s", self.name, exc)
            removed = []
        self._report_retention()
        for segment in removed:
            logger.info("stream %s: removed segment %s (%s)", self.name, segment.segment.name, segment.reason)
        self._schedule_retention()

    def __repr__(self) -> str:
        return f"<StreamQueue {self.vhost.name}/{self.name} {self.log!r}>"


# Keys QueueSettings understands that a stream may carry (x-queue-type, x-max-length-bytes
# and x-consumer-timeout); the others are refused for streams (STREAM_INVALID_ARGUMENTS).
_SETTINGS_KEYS = frozenset({"x-queue-type", "x-max-length-bytes", "x-consumer-timeout"})
