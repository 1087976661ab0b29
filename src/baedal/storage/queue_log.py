"""A durable queue's records in the stream's format: one log, two ways to read it.

Theory of operation
-------------------
A stream is a log plus retention; a durable queue is the same log plus cursors and an
ack set.  Since issue 10 a queue segment (``segment.Segment``, header version
``QUEUE_LOG_VERSION``) holds exactly what a stream segment holds: Kafka RecordBatch v2
batches (``record_batch``: same header, same CRC-32C over ``attributes..end``), and each
record is a message mapped by the stream's own mapping (``core.stream.message_to_record``
/ ``record_to_message``: the body as value, the routing key as key, the exchange and the
neutral fields as headers, typed headers and a protocol's leftovers under
``x-baedal-*``).  ``record_batch.decode_rows`` reads a queue's batches and a stream's
alike.

One message per batch, and the batch's ``baseOffset`` is the message's queue position
``segment_id << 32 | byte offset of the batch`` (64-bit, strictly increasing in append
order, not dense: a queue's offsets are addresses).  That keeps what the queue needs
from its log: a read by position is one ``pread`` pair at a known byte offset, an ack is
the 4-byte offset in the segment's ack file (``ackfile``), and ``core/queue.py`` sees the
same positions as before.  Several messages per batch would save ~60 bytes of header per
message but make a position point inside a batch (a read decodes the batch, an ack names
a record in it); measured (``docs/benchmarks.md``, issue 10 queue log) one batch per
message costs no more instructions per publish than the old record, so it stays simple.

Queue-only data (``record.py`` had fields a stream record has none for) goes in the
batch ``attributes`` (i16; Kafka leaves bits 7-15 unused, decoders here ignore them)
and in one reserved header:

* ``ATTR_TRANSIENT`` (0x4000): the message was published transient; recovery drops it
  without decoding the record (the record also carries the stream mapping's
  ``x-baedal-transient`` header, so it reads back the same);
* ``ATTR_DEADLINE`` (0x2000): the record has a ``x-baedal-deadline`` header, the
  per-message wall-clock expiry deadline (seconds since the epoch, Python's shortest
  round-tripping ``repr`` of the float as ASCII); it is removed before the record is
  mapped back, so a message never shows it as an application header.

``partitionLeaderEpoch`` is -1, ``producerId``/``producerEpoch``/``baseSequence`` -1,
``lastOffsetDelta`` 0, ``recordsCount`` 1.  The timestamps are the message's own
``published_at`` in ms, as the old record kept it (0 when the adapter set none, as AMQP
does): a stream stamps a missing one with the arrival time for its time index, a queue
has no time index and would only pay a clock read per publish for it.

Recovery rule for damage (``scan_batches``): batches are walked from the segment header;
each must pass ``record_batch.check_batch`` (magic, plausible length, whole, CRC-32C),
hold exactly one record, and carry its own position as ``baseOffset``.  At the first
that does not, the scan looks for the next byte offset ``p`` where the 8 bytes at ``p``
are this segment's position for ``p`` (``segment_id << 32 | p``) *and* a whole batch
there checks out as above; everything between is reported as damaged and skipped, every
intact batch after it survives.  When no such ``p`` exists the rest is a torn tail and is
truncated.  The position check makes a false resync need a forged CRC at exactly the
right address, and lets ``bytes.find`` jump between candidates (the segment id's four
bytes) rather than trying every offset.

Speed: a deep queue is read back one batch per message, and recovery checks every
batch, so both loops have a compiled twin (``baedal/_speedups/_records.c``):
``scan_batches`` hands the run of intact batches to ``scan_queue_batches`` and looks at
the batch it stops at itself, ``decode_message`` asks ``decode_common`` for the common
record, and ``record_batch.check_batch`` (the header and CRC-32C of every batch read)
asks ``batch_header``.  The Python code stays the reference: the C functions answer
only for what it would accept, with the same result, and hand everything else back
(``tests/unit/storage/test_queue_log_speedups.py`` compares them on intact, damaged and
arbitrary bytes).  Measured in ``docs/benchmarks.md`` (queue log read side in C).
"""

from __future__ import annotations

import logging
import struct
from pathlib import Path
from typing import Any

import crc32c

from .._speedups import load as load_speedup
from ..core.message import NO_FIELDS, Message
from .record_batch import (
    _NULL,
    _SMALL_VARINTS,
    BATCH_HEADER_SIZE,
    BATCH_OVERHEAD,
    MAGIC,
    RecordBatchError,
    _read_varint,
    _varint,
    batch_size_at,
    check_batch,
    decode_rows,
    encode_headers,
)

__all__ = [
    "BATCH_LENGTH",
    "BATCH_PREFIX",
    "LENGTH_AFTER_PREFIX",
    "MAGIC",
    "MIN_BATCH_LENGTH",
    "ATTR_DEADLINE",
    "ATTR_TRANSIENT",
    "DEADLINE_HEADER",
    "decode_message",
    "encode_message",
    "kind_of",
    "scan_batches",
]

log = logging.getLogger("baedal.storage")

# The record kinds the queue store uses (``queue_store.KIND_*``; the same numbers).
KIND_PERSISTENT = 1
KIND_TRANSIENT = 2

ATTR_TRANSIENT = 0x4000
ATTR_DEADLINE = 0x2000
DEADLINE_HEADER = "x-baedal-deadline"

# The batch header split where the CRC starts: the first 21 bytes (baseOffset,
# batchLength, partitionLeaderEpoch, magic, crc) are packed by the segment when the
# position is known; the rest (``_TAIL`` + the record) is under the CRC.
BATCH_PREFIX = struct.Struct(">qiibI")
_TAIL = struct.Struct(">hiqqqhii")  # attributes .. recordsCount (40 bytes)
_ZERO_TIME_TAIL = _TAIL.pack(0, 0, 0, 0, -1, -1, -1, 1)
BATCH_LENGTH = struct.Struct(">qi")  # baseOffset, batchLength
_ATTRIBUTES = struct.Struct(">h")
_ATTRIBUTES_AT = BATCH_PREFIX.size  # 21
# batchLength counts what follows it: the prefix after baseOffset+batchLength, + rest.
LENGTH_AFTER_PREFIX = BATCH_PREFIX.size - BATCH_OVERHEAD  # 9
MIN_BATCH_LENGTH = BATCH_HEADER_SIZE - BATCH_OVERHEAD
# A queue batch may be as large as a queue record could (a 1 GiB body).
MAX_BATCH_BYTES = 1 << 30

_SEGMENT_HEADER_SIZE = 16  # segment.SEGMENT_HEADER_SIZE (not imported: segment imports us)
_KEY_NULL_HEAD = b"\x00\x00\x00" + _NULL  # attributes, timestampDelta 0, offsetDelta 0, key -1

# The header section of the common record (the exchange header alone), per exchange.
_SECTIONS: dict[str, bytes] = {}
_EXCHANGES: dict[bytes, str] = {}  # the reverse, for decode_message's fast path
_TIMESTAMP = struct.Struct(">q")
_SECTIONS_LIMIT = 256
# The header section of any other record without a deadline, by everything it is made of
# (exchange, persistence, priority, TTL, the neutral fields with the encoded headers, the
# extension's leftovers): an MQTT publish's fields and leftovers are shared per QoS, so
# its section repeats too.  Bounded like _SECTIONS; a key that cannot be hashed, or a
# full cache, just encodes.
_GENERAL_SECTIONS: dict[tuple[Any, ...], bytes] = {}
_GENERAL_LIMIT = 1024

_mapping: Any = None

# The read side compiled (optional: baedal/_speedups), or None: decode_message's
# in-place read of the common record and scan_batches' walk over intact batches.  Each
# hands back what it does not take, and the Python code below answers.
_records_c = load_speedup("_records")
_decode_common: Any = getattr(_records_c, "decode_common", None)
_scan_intact: Any = getattr(_records_c, "scan_queue_batches", None)


def _stream_mapping() -> Any:
    """``core.stream`` (its record mapping), imported on first use: ``core.stream``
    imports storage, so storage cannot import it at module load."""
    global _mapping
    if _mapping is None:
        from ..core import stream

        _mapping = stream
    return _mapping


def kind_of(attributes: int) -> int:
    return KIND_TRANSIENT if attributes & ATTR_TRANSIENT else KIND_PERSISTENT


def encode_message(message: Message, expires_at: float | None) -> tuple[bytes, int]:
    """(the batch after its first 21 bytes, its CRC-32C) for ``message`` alone in a
    batch; ``Segment.append_batch`` adds the prefix with the position.

    The bytes are those of ``record_batch.encode_batch`` of the record
    ``core.stream.message_to_record`` gives (plus the deadline header), checked by
    ``tests/unit/storage/test_queue_log.py``; the common record (persistent, no fields,
    no priority, no TTL) is written here directly with its header section cached per
    exchange, as ``StreamQueue.publish`` does, to keep the persistent publish cheap.
    """
    extension = message.extension
    if (
        expires_at is None
        and message.persistent
        and not message.priority
        and message.expiration_ms is None
        and (message.field_values() is NO_FIELDS if extension is None else extension.plain(message))
    ):
        exchange = message.exchange
        section = _SECTIONS.get(exchange)
        if section is None:
            section = encode_headers(((_stream_mapping().EXCHANGE_HEADER, exchange.encode()),))
            if len(_SECTIONS) < _SECTIONS_LIMIT:
                _SECTIONS[exchange] = section
                _EXCHANGES[section] = exchange
        routing_key = message.routing_key
        key = routing_key.encode() if routing_key else None
        value = message.body
        published = message.published_at
        if published:
            timestamp = int(published * 1000)
            tail = _TAIL.pack(0, 0, timestamp, timestamp, -1, -1, -1, 1)
        else:
            tail = _ZERO_TIME_TAIL  # AMQP sets no publish time: the pack done once
    else:
        timestamp = int(message.published_at * 1000)
        attributes = 0 if message.persistent else ATTR_TRANSIENT
        section = None
        cache_key: tuple[Any, ...] | None = None
        if expires_at is None:
            cache_key = (
                message.exchange,
                message.persistent,
                message.priority,
                message.expiration_ms,
                tuple(message.field_values()),
                None if extension is None else extension.protocol,
                None if extension is None else extension.leftovers(),
            )
            try:
                section = _GENERAL_SECTIONS.get(cache_key)
            except TypeError:  # a field value that cannot be hashed
                cache_key = None
        if section is None:
            key, value, headers, _arrival = _stream_mapping().message_to_record(message)
            if expires_at is not None:
                headers.append((DEADLINE_HEADER, repr(float(expires_at)).encode()))
                attributes |= ATTR_DEADLINE
            section = encode_headers(headers)
            if cache_key is not None and len(_GENERAL_SECTIONS) < _GENERAL_LIMIT:
                _GENERAL_SECTIONS[cache_key] = section
        else:  # what message_to_record gives for these two
            routing_key = message.routing_key
            key = routing_key.encode() if routing_key else None
            value = message.body
        tail = _TAIL.pack(attributes, 0, timestamp, timestamp, -1, -1, -1, 1)
    small = _SMALL_VARINTS
    n = len(value)
    value_length = small[n] if n < 2048 else _varint(n)
    if key is None:
        length = 4 + len(value_length) + n + len(section)
        rest = b"".join(
            (
                tail,
                small[length] if length < 2048 else _varint(length),
                _KEY_NULL_HEAD,
                value_length,
                value,
                section,
            )
        )
    else:
        k = len(key)
        key_length = small[k] if k < 2048 else _varint(k)
        length = 3 + len(key_length) + k + len(value_length) + n + len(section)
        rest = b"".join(
            (
                tail,
                small[length] if length < 2048 else _varint(length),
                b"\x00\x00\x00",
                key_length,
                key,
                value_length,
                value,
                section,
            )
        )
    return rest, crc32c.crc32c(rest)


def decode_message(batch: bytes | memoryview) -> tuple[Message, float | None]:
    """(message, wall-clock deadline or None) of a whole queue batch whose CRC the
    caller has checked.  Raises ``RecordBatchError`` for anything else."""
    # The common record (what encode_message's fast path writes: attributes 0, deltas
    # 0, short key and value lengths, the exchange header alone) read in place; the
    # result is what the general path below gives for it.  Anything else, or an
    # exchange section not seen yet, takes the general path.
    if _decode_common is not None:
        # The same read in C (baedal/_speedups/_records.c): the Message's arguments, or
        # None where the code below would not read it in place either.
        common = _decode_common(batch, _EXCHANGES)
        if common is not None:
            message = Message(*common)
            message.adopt_fields(NO_FIELDS)
            return message, None
        size = 0  # the code below would not read it in place either (or not bytes)
    else:
        size = len(batch)
    if size > 66 and batch[21] == 0 and batch[22] == 0:
        first = batch[61]
        at = 62 if first < 0x80 else 63 if batch[62] < 0x80 else 0
        if at and batch[at] == 0 and batch[at + 1] == 0 and batch[at + 2] == 0:
            key_byte = batch[at + 3]
            at += 4
            key = b""
            if key_byte != 1:  # 1 = zig-zag -1, no key
                if key_byte & 0x81:  # odd (negative) or a longer varint
                    at = 0
                else:
                    stop = at + (key_byte >> 1)
                    key = batch[at:stop]
                    at = stop
            if at and at + 1 < size:  # the value length's bytes are there
                value_byte = batch[at]
                if value_byte < 0x80:
                    value_length = value_byte >> 1
                    at += 1
                elif batch[at + 1] < 0x80:
                    value_length = ((value_byte & 0x7F) | (batch[at + 1] << 7)) >> 1
                    at += 2
                else:
                    value_length = -1
                if value_length >= 0 and not value_byte & 1:  # zig-zag: odd = negative
                    stop = at + value_length
                    exchange = _EXCHANGES.get(batch[stop:])
                    if exchange is not None:
                        message = Message(
                            exchange,
                            key.decode("utf-8", "replace"),
                            batch[at:stop],
                            True,
                            0,
                            None,
                            _TIMESTAMP.unpack_from(batch, 27)[0] / 1000.0,
                        )
                        message.adopt_fields(NO_FIELDS)
                        return message, None
    rows = decode_rows(batch, MAX_BATCH_BYTES, check_crc=False)
    if len(rows) != 1:
        raise RecordBatchError(f"a queue batch holds one record, not {len(rows)}")
    _offset, timestamp, key, value, headers, _attributes = rows[0]
    if len(headers) == 1 and len(_EXCHANGES) < _SECTIONS_LIMIT:
        # A record read back after a restart: learn its exchange section.
        name, raw = headers[0]
        if name == _stream_mapping().EXCHANGE_HEADER and raw is not None:
            section = encode_headers(headers)
            if batch[len(batch) - len(section) :] == section:
                _EXCHANGES[section] = raw.decode("utf-8", "replace")
    expires_at = None
    if _ATTRIBUTES.unpack_from(batch, _ATTRIBUTES_AT)[0] & ATTR_DEADLINE:
        kept = []
        for name, raw in headers:
            if name == DEADLINE_HEADER and raw is not None:
                try:
                    expires_at = float(raw)
                except ValueError:
                    raise RecordBatchError("unreadable deadline header") from None
            else:
                kept.append((name, raw))
        headers = kept
    return _stream_mapping().record_to_message(key, value, headers, timestamp, True), expires_at


def _batch_at(
    data: bytes, view: memoryview, pos: int, position: int
) -> tuple[int, int, int] | str:
    """(size, attributes, body size) of the intact queue batch at ``pos``, else why not."""
    if len(data) - pos < BATCH_HEADER_SIZE:
        return f"partial batch header ({len(data) - pos} bytes)"
    try:
        fields, size = check_batch(view, pos, MAX_BATCH_BYTES)
    except RecordBatchError as exc:
        return str(exc)
    if fields[0] != position:
        return f"baseOffset {fields[0]:#x} is not this position {position:#x}"
    if fields[12] != 1 or fields[6] != 0:
        return f"{fields[12]} records in a queue batch"
    # The value's length, read from the record's first fields rather than decoding the
    # record (recovery reads every batch; the CRC has already passed).
    end = pos + size
    try:
        at = _read_varint(data, pos + BATCH_HEADER_SIZE, end)[1]  # record length
        at = _read_varint(data, at + 1, end)[1]  # after attributes: timestampDelta
        at = _read_varint(data, at, end)[1]  # offsetDelta
        key_length, at = _read_varint(data, at, end)
        if key_length > 0:
            at += key_length
        value_length = _read_varint(data, at, end)[0]
    except RecordBatchError as exc:
        return f"record does not decode: {exc}"
    return size, fields[5], max(value_length, 0)


def _resync(data: bytes, view: memoryview, start: int, base: int) -> int:
    """The first offset >= ``start`` where this segment's intact batch begins, or -1
    (the rule in the module docstring)."""
    prefix = (base >> 32).to_bytes(4, "big")
    unpack = BATCH_LENGTH.unpack_from
    search = start
    size = len(data)
    while True:
        found = data.find(prefix, search)
        if found < 0 or found + BATCH_OVERHEAD > size:
            return -1
        if unpack(data, found)[0] == base | found and not isinstance(
            _batch_at(data, view, found, base | found), str
        ):
            return found
        search = found + 1


def scan_batches(path: Path, data: bytes, segment_id: int, result: Any) -> None:
    """Walk a version-2 segment's batches, verifying each; log and step over damage.

    Fills ``result`` (``queue_store._ScanResult``): persistent offsets with body sizes,
    transient offsets, damaged spans, the end of the last intact batch, and whether a
    persistent record has a deadline.
    """
    size = len(data)
    view = memoryview(data)
    base = segment_id << 32
    pos = _SEGMENT_HEADER_SIZE
    persistent = result.persistent
    transient = result.transient
    scan_intact = _scan_intact if data.__class__ is bytes else None
    while pos < size:
        if scan_intact is not None:
            # Every intact batch from pos filed in C (the same rule as below); it stops
            # at the first batch it does not accept, which the code below looks at.
            pos, deadlines = scan_intact(data, pos, base, MAX_BATCH_BYTES, persistent, transient)
            if deadlines:
                result.deadlines = True
            if pos >= size:
                break
        found = _batch_at(data, view, pos, base | pos)
        if not isinstance(found, str):
            batch_size, attributes, body = found
            if attributes & ATTR_TRANSIENT:
                transient.append(pos)
            else:
                persistent[pos] = body
                if attributes & ATTR_DEADLINE:
                    result.deadlines = True
            pos += batch_size
            continue
        reason = found
        resume = _resync(data, view, pos + 1, base)
        if resume < 0:
            log.warning(
                "%s: truncating torn tail at offset %d: dropped %d bytes (at most 1 batch): %s",
                path,
                pos,
                size - pos,
                reason,
            )
            break
        damaged = count_span_batches(data, pos, resume)
        log.warning(
            "%s: dropped damaged data at offset %d: %d bytes, %s, resuming at the next intact batch at %d: %s",
            path,
            pos,
            resume - pos,
            f"{damaged} damaged record(s)" if damaged else "1 or more damaged records",
            resume,
            reason,
        )
        result.damaged.append((pos, resume))
        pos = resume
    result.valid_size = pos


def count_span_batches(data: bytes, pos: int, resume: int) -> int:
    """How many batches a damaged span held, if their length fields still chain exactly
    from ``pos`` to ``resume``; 0 when they do not (the count is then unknown)."""
    count = 0
    while pos < resume:
        if pos + BATCH_OVERHEAD > resume:
            return 0
        length = BATCH_LENGTH.unpack_from(data, pos)[1]
        if length < MIN_BATCH_LENGTH:
            return 0
        pos += BATCH_OVERHEAD + length
        count += 1
    return count if pos == resume else 0


def lost_body_sizes(lost: bytes) -> list[int]:
    """Body sizes of the whole batches in a failed write buffer, in order."""
    sizes = []
    pos = 0
    while pos + BATCH_OVERHEAD <= len(lost):
        size = batch_size_at(lost, pos)
        try:
            value = decode_rows(lost[pos : pos + size], MAX_BATCH_BYTES, check_crc=False)[0][3]
        except (RecordBatchError, IndexError):
            value = None  # our own bytes: cannot happen, but a count must not raise
        sizes.append(0 if value is None else len(value))
        pos += size
    return sizes

