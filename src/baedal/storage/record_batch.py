"""Record batches: Kafka's RecordBatch v2 (magic 2) as the one on-disk batch format of streams.

Theory of operation
-------------------
A stream stores *batches*: one ``StreamLog.append`` (or one Kafka produce batch) is one
batch with one header and 1..n records.  The bytes are exactly Kafka's RecordBatch v2
(Kafka "message format" page; ``DefaultRecordBatch`` in kafka-python / aiokafka)::

    baseOffset:i64 | batchLength:i32 | partitionLeaderEpoch:i32 | magic:i8 (=2) | crc:u32 |
    attributes:i16 | lastOffsetDelta:i32 | baseTimestamp:i64 | maxTimestamp:i64 |
    producerId:i64 | producerEpoch:i16 | baseSequence:i32 | recordsCount:i32 | records...

all big-endian; ``batchLength`` counts the bytes after itself (a batch is
``batchLength + 12`` bytes) and the CRC-32C covers ``attributes`` to the end.  A record is
``length:varint | attributes:i8 | timestampDelta:varlong | offsetDelta:varint |
key (varint length, -1 = null) | value (same) | headerCount:varint | headers``, each
header a string key and a nullable bytes value; varints are zig-zag (protobuf style).

Why Kafka v2 and not a Baedal header around an opaque payload
~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~~
* A later Kafka adapter stores a producer's batch byte for byte: only ``baseOffset`` (and,
  once leader epochs exist, ``partitionLeaderEpoch``) is rewritten, and neither is under
  the CRC, so appending is a CRC check plus an 8-byte ``pack_into``.  Fetch then serves
  the segment file as byte ranges (``os.sendfile``) with no re-encoding, which a
  wrapper format would forbid (the client would see our header).
* It is already versioned (``magic``) and checksummed (CRC-32C, hardware-accelerated by
  the ``crc32c`` package), carries first/max timestamps for the time index and
  retention, and a record count for offsets: everything the log needs is in the header.
* Baedal's neutral records (key, value, headers, timestamp, attributes) map onto v2
  records one to one; an AMQP message is a record whose value is the body and whose
  properties travel in headers (the adapter chooses the names).  So one decoder serves
  every protocol, and a Kafka consumer can read a stream written over AMQP.
* The price: a magic-2 batch has no spare field for a Baedal "format" tag.  If another
  layout is ever needed it gets a new magic value (Kafka itself went 0 → 1 → 2 that
  way); ``decode_header`` refuses any magic it does not know.

Compression: batches with codec bits set are stored and served as they came (Kafka
semantics); ``decode_records`` can inflate gzip (zlib is in the standard library, with a
bound on the inflated size) and reports the other codecs as unsupported.

Errors: every malformed input raises ``RecordBatchError`` (a ``ValueError``); nothing
else escapes the decoders, which the fuzz tests check.  ``BatchDecoder`` is the
incremental, sans-IO form (feed bytes, pull batches) used for byte streams such as a
produce request or a segment file read in chunks.
"""

from __future__ import annotations

import struct
import time
import zlib
from collections.abc import Iterable, Sequence
from typing import Any

import crc32c

from .._speedups import load as load_speedup

__all__ = [
    "BATCH_HEADER",
    "BATCH_HEADER_SIZE",
    "BATCH_OVERHEAD",
    "MAGIC",
    "Batch",
    "BatchDecoder",
    "Record",
    "RecordBatchError",
    "UnsupportedCompression",
    "check_batch",
    "decode_header",
    "decode_records",
    "decode_rows",
    "encode_batch",
    "encode_headers",
    "set_base_offset",
]

MAGIC = 2
BATCH_HEADER = struct.Struct(">qiibIhiqqqhii")
BATCH_HEADER_SIZE = BATCH_HEADER.size  # 61
# baseOffset + batchLength are not counted by batchLength.
BATCH_OVERHEAD = 12
_LENGTH = struct.Struct(">qi")  # baseOffset, batchLength: the first 12 bytes
_BASE_OFFSET = struct.Struct(">q")
_CRC_OFFSET = 17
_ATTRIBUTES_OFFSET = 21  # the CRC covers [21, end)
_MAGIC_OFFSET = 16

# Attribute bits (Kafka DefaultRecordBatch).
CODEC_MASK = 0x07
CODEC_NONE = 0
CODEC_GZIP = 1
CODEC_SNAPPY = 2
CODEC_LZ4 = 3
CODEC_ZSTD = 4
# Kafka's snappy payloads use the xerial framing (the Java client's SnappyOutputStream):
# this magic, a version and a compatible version (int32 each), then blocks of
# int32 length + one raw snappy block.
_XERIAL_MAGIC = b"\x82SNAPPY\x00"
_XERIAL_HEADER = 16
TIMESTAMP_TYPE_MASK = 0x08  # 1 = LogAppendTime
TRANSACTIONAL_MASK = 0x10
CONTROL_MASK = 0x20

# A batch may not claim more than this; a larger length is corruption (or abuse), not
# data.  Kafka's default message.max.bytes is ~1 MiB; 64 MiB leaves room for big AMQP
# bodies while keeping a hostile length from making a reader buffer gigabytes.
DEFAULT_MAX_BATCH_BYTES = 64 * 1024 * 1024

_NO_PRODUCER = -1


class RecordBatchError(ValueError):
    """The bytes are not a valid RecordBatch v2 (or not a complete one)."""


class UnsupportedCompression(RecordBatchError):
    """The batch is valid but compressed with a codec this build cannot inflate."""


class Record:
    """One neutral record: what every protocol's message maps onto.

    ``timestamp`` is milliseconds since the epoch (Kafka's unit); ``offset`` is set when
    the record is read back from a log (``-1`` before it is appended).  For writing,
    ``headers`` may also be the section already encoded (``encode_headers``).
    """

    __slots__ = ("key", "value", "headers", "timestamp", "attributes", "offset")

    def __init__(
        self,
        value: bytes | None,
        key: bytes | None = None,
        headers: Sequence[tuple[str, bytes | None]] = (),
        timestamp: int | None = None,
        attributes: int = 0,
        offset: int = -1,
    ) -> None:
        self.value = value
        self.key = key
        self.headers = headers
        self.timestamp = timestamp
        self.attributes = attributes
        self.offset = offset

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return (
            self.value == other.value
            and self.key == other.key
            and list(self.headers) == list(other.headers)
            and self.timestamp == other.timestamp
            and self.attributes == other.attributes
            and self.offset == other.offset
        )

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (
            f"Record(offset={self.offset}, timestamp={self.timestamp}, key={self.key!r}, "
            f"value={self.value!r:.40}, headers={list(self.headers)!r})"
        )


class Batch:
    """One stored batch: its header fields and its raw bytes (whole, CRC included)."""

    __slots__ = (
        "base_offset",
        "last_offset",
        "record_count",
        "base_timestamp",
        "max_timestamp",
        "attributes",
        "leader_epoch",
        "producer_id",
        "producer_epoch",
        "base_sequence",
        "data",
    )

    def __init__(self, data: bytes | memoryview, fields: tuple[int, ...]) -> None:
        (
            self.base_offset,
            _length,
            self.leader_epoch,
            _magic,
            _crc,
            self.attributes,
            last_offset_delta,
            self.base_timestamp,
            self.max_timestamp,
            self.producer_id,
            self.producer_epoch,
            self.base_sequence,
            self.record_count,
        ) = fields
        self.last_offset = self.base_offset + last_offset_delta
        self.data = data

    @property
    def size(self) -> int:
        return len(self.data)

    @property
    def next_offset(self) -> int:
        return self.last_offset + 1

    def records(self, max_inflated_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> list[Record]:
        return decode_records(self.data, max_inflated_bytes)

    def __repr__(self) -> str:
        return (
            f"<Batch {self.base_offset}..{self.last_offset} {self.record_count} records "
            f"{len(self.data)}B>"
        )


# -- varints -------------------------------------------------------------------------------


def _write_varint(out: bytearray, value: int) -> None:
    """Zig-zag varint (Kafka's varint/varlong; 64-bit range)."""
    value = (value << 1) ^ (value >> 63)
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)


def _read_varint(data: bytes | memoryview, pos: int, end: int) -> tuple[int, int]:
    """(value, new position); a varlong of at most 10 bytes, as Kafka reads it."""
    result = 0
    shift = 0
    while True:
        if pos >= end:
            raise RecordBatchError("record truncated inside a varint")
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            break
        shift += 7
        if shift > 63:
            raise RecordBatchError("varint longer than 10 bytes")
    return (result >> 1) ^ -(result & 1), pos


def _varint(value: int) -> bytes:
    out = bytearray()
    _write_varint(out, value)
    return bytes(out)


# Encoded varints of 0..2047 (lengths of values up to 2 KiB, offset deltas): the common
# case becomes a list lookup.  About 70 KB, once per process.
_SMALL_VARINTS = [_varint(value) for value in range(2048)]
_NULL = _varint(-1)
_HEADER_PLACEHOLDER = bytes(BATCH_HEADER_SIZE)
_ONE_BYTE = [bytes((value,)) for value in range(256)]
_ZIGZAG = [(byte >> 1) ^ -(byte & 1) for byte in range(128)]
_ZERO = _varint(0)

# -- encoding ------------------------------------------------------------------------------


def encode_batch(
    records: Sequence[Record],
    base_offset: int = 0,
    *,
    now_ms: int | None = None,
    leader_epoch: int = -1,
    attributes: int = 0,
) -> bytearray:
    """One uncompressed v2 batch holding ``records`` (at least one).

    Records without a timestamp get ``now_ms`` (default: the wall clock), which is the
    arrival time RabbitMQ streams use for timestamp offsets.  Offsets inside the batch
    are 0..n-1.
    """
    count = len(records)
    if count == 0:
        raise ValueError("a batch holds at least one record")
    if now_ms is None:
        now_ms = int(time.time() * 1000)
    first_timestamp = records[0].timestamp
    if first_timestamp is None:
        first_timestamp = now_ms
    max_timestamp = first_timestamp
    # Pieces joined once at the end: growing one bytearray record by record would copy
    # the batch several times over (bytearray over-allocates by only 1/8).  Per record
    # the small fields before and after the value are joined into two short strings,
    # so the value itself is copied once, and the record length is known up front.
    pieces: list[bytes | bytearray] = [_HEADER_PLACEHOLDER]
    extend = pieces.extend
    varint = _varint
    small = _SMALL_VARINTS
    limit = len(small)
    one_byte = _ONE_BYTE
    null = _NULL
    join = b"".join
    for delta, record in enumerate(records):
        timestamp = record.timestamp
        if timestamp is None:
            timestamp = now_ms
        if timestamp > max_timestamp:
            max_timestamp = timestamp
        timestamp_delta = timestamp - first_timestamp
        value = record.value
        if value is None:
            value_length = null
            value = b""
        else:
            n = len(value)
            value_length = small[n] if n < limit else varint(n)
        key = record.key
        head = join(
            (
                one_byte[record.attributes & 0xFF],
                small[timestamp_delta] if 0 <= timestamp_delta < limit else varint(timestamp_delta),
                small[delta] if delta < limit else varint(delta),
                null if key is None else small[len(key)] if len(key) < limit else varint(len(key)),
                b"" if key is None else key,
                value_length,
            )
        )
        headers = record.headers
        if headers.__class__ is bytes:  # already encoded (``encode_headers``)
            tail = headers
        elif headers:
            n = len(headers)
            parts = [small[n] if n < limit else varint(n)]
            add = parts.extend
            for name, header_value in headers:
                encoded = name.encode()
                n = len(encoded)
                if header_value is None:
                    add((small[n] if n < limit else varint(n), encoded, null))
                else:
                    m = len(header_value)
                    add(
                        (
                            small[n] if n < limit else varint(n),
                            encoded,
                            small[m] if m < limit else varint(m),
                            header_value,
                        )
                    )
            tail = join(parts)
        else:
            tail = _ZERO
        length = len(head) + len(value) + len(tail)
        extend((small[length] if length < limit else varint(length), head, value, tail))
    return finish_batch(
        pieces, count, first_timestamp, max_timestamp, base_offset, leader_epoch, attributes
    )


def finish_batch(
    pieces: Sequence[bytes | bytearray],
    count: int,
    first_timestamp: int,
    max_timestamp: int,
    base_offset: int = 0,
    leader_epoch: int = -1,
    attributes: int = 0,
) -> bytearray:
    """The batch whose records are already encoded in ``pieces``, after a first piece of
    ``BATCH_HEADER_SIZE`` placeholder bytes (``HEADER_PLACEHOLDER``): joined once, then
    the header is written over the placeholder and the CRC computed.

    ``encode_batch`` ends here; so does a writer that encodes each record as it arrives
    (``RecordBuilder``) and so keeps no ``Record`` objects."""
    out = bytearray().join(pieces)
    BATCH_HEADER.pack_into(
        out,
        0,
        base_offset,
        len(out) - BATCH_OVERHEAD,
        leader_epoch,
        MAGIC,
        0,
        attributes & ~CODEC_MASK,
        count - 1,
        first_timestamp,
        max_timestamp,
        _NO_PRODUCER,
        -1,
        -1,
        count,
    )
    struct.pack_into(">I", out, _CRC_OFFSET, crc32c.crc32c(memoryview(out)[_ATTRIBUTES_OFFSET:]))
    return out


HEADER_PLACEHOLDER = _HEADER_PLACEHOLDER

# RecordBuilder.add's encoding compiled (optional: see baedal/_speedups), or None.
_records_encode = load_speedup("_records")
_append_record: Any = getattr(_records_encode, "append_record", None)


class RecordBuilder:
    """An uncompressed v2 batch built one record at a time, with no ``Record`` objects.

    ``add`` encodes the record at once (offset delta = records added so far, timestamp
    delta against the first record's) as ``encode_batch`` would encode it, and keeps
    only the pieces; ``finish`` joins them under one header and one CRC.  The bytes are
    identical to ``encode_batch`` of the same records (tests/unit/storage).  ``headers``
    is the header section already encoded (``encode_headers``), which a writer whose
    records repeat one header set encodes once.
    """

    __slots__ = ("pieces", "count", "first_timestamp", "max_timestamp", "size")

    def __init__(self) -> None:
        self.pieces: list[bytes | bytearray] = [_HEADER_PLACEHOLDER]
        self.count = 0
        self.first_timestamp = 0
        self.max_timestamp = 0
        self.size = 0  # bytes of keys, values and header sections so far

    def add(self, key: bytes | None, value: bytes, headers: bytes, timestamp: int) -> None:
        count = self.count
        if count:
            delta = timestamp - self.first_timestamp
            if timestamp > self.max_timestamp:
                self.max_timestamp = timestamp
        else:
            self.first_timestamp = self.max_timestamp = timestamp
            delta = 0
        if _append_record is not None:
            # The same encoding in C (baedal/_speedups/_records.c): the length varint
            # and head in one piece; None = arguments it does not take (the code below).
            length = _append_record(self.pieces, key, value, headers, delta, count)
            if length is not None:
                self.count = count + 1
                self.size += length
                return
        small = _SMALL_VARINTS
        n = len(value)
        if key is None:
            head = b"".join(
                (
                    b"\x00",
                    small[delta] if 0 <= delta < 2048 else _varint(delta),
                    small[count] if count < 2048 else _varint(count),
                    _NULL,
                    small[n] if n < 2048 else _varint(n),
                )
            )
        else:
            k = len(key)
            head = b"".join(
                (
                    b"\x00",
                    small[delta] if 0 <= delta < 2048 else _varint(delta),
                    small[count] if count < 2048 else _varint(count),
                    small[k] if k < 2048 else _varint(k),
                    key,
                    small[n] if n < 2048 else _varint(n),
                )
            )
        length = len(head) + n + len(headers)
        self.pieces.extend((small[length] if length < 2048 else _varint(length), head, value, headers))
        self.count = count + 1
        self.size += length

    def finish(self, base_offset: int = 0) -> bytearray:
        """The batch (at least one record added)."""
        if not self.count:
            raise ValueError("a batch holds at least one record")
        return finish_batch(
            self.pieces, self.count, self.first_timestamp, self.max_timestamp, base_offset
        )


def encode_headers(headers: Sequence[tuple[str, bytes | None]]) -> bytes:
    """A record's header section (count, then each key and value) as ``encode_batch``
    writes it.  A ``Record`` whose ``headers`` is this ``bytes`` is encoded with it as
    is: a writer whose records repeat one header set encodes it once."""
    out = bytearray()
    _write_varint(out, len(headers))
    for name, value in headers:
        encoded = name.encode()
        _write_varint(out, len(encoded))
        out += encoded
        if value is None:
            out += _NULL
        else:
            _write_varint(out, len(value))
            out += value
    return bytes(out)


def set_base_offset(batch: bytearray | memoryview, base_offset: int) -> None:
    """Rewrite ``baseOffset`` in place (it is outside the CRC, so nothing else changes)."""
    _BASE_OFFSET.pack_into(batch, 0, base_offset)


# -- decoding ------------------------------------------------------------------------------


def batch_size_at(data: bytes | memoryview, pos: int = 0) -> int:
    """Total size of the batch starting at ``pos`` (its first 12 bytes must be there)."""
    length = _LENGTH.unpack_from(data, pos)[1]
    return length + BATCH_OVERHEAD


def decode_header(
    data: bytes | memoryview, pos: int = 0, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> tuple[int, ...]:
    """The 13 header fields of the batch at ``pos``, sanity-checked (no CRC check).

    Needs ``BATCH_HEADER_SIZE`` bytes at ``pos``.
    """
    if _batch_header is not None:
        # The same checks in C; None = one fails (or an input it does not take): the
        # code below then raises its error (or answers) as always.
        checked = _batch_header(data, pos, max_batch_bytes, False)
        if checked is not None:
            return checked[0]  # type: ignore[no-any-return]
    if len(data) - pos < BATCH_HEADER_SIZE:
        raise RecordBatchError("truncated batch header")
    fields = BATCH_HEADER.unpack_from(data, pos)
    length = fields[1]
    if fields[3] != MAGIC:
        raise RecordBatchError(f"unsupported batch magic {fields[3]}")
    if length < BATCH_HEADER_SIZE - BATCH_OVERHEAD or length + BATCH_OVERHEAD > max_batch_bytes:
        raise RecordBatchError(f"implausible batch length {length}")
    if fields[6] < 0 or fields[12] < 0:
        raise RecordBatchError("negative lastOffsetDelta or record count")
    return fields


def check_batch(
    data: bytes | memoryview,
    pos: int = 0,
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
) -> tuple[tuple[int, ...], int]:
    """Validate the whole batch at ``pos``: header, size present, CRC-32C.

    Returns (header fields, total size).  Does not decode records.
    """
    if _batch_header is not None:
        # Header checks in C, the CRC by the same crc32c package as below;
        # None = something fails: the code below says what.
        checked = _batch_header(data, pos, max_batch_bytes, True)
        if checked is not None:
            return checked  # type: ignore[no-any-return]
    fields = decode_header(data, pos, max_batch_bytes)
    size = fields[1] + BATCH_OVERHEAD
    if len(data) - pos < size:
        raise RecordBatchError(f"batch truncated: {len(data) - pos} of {size} bytes")
    view = data if isinstance(data, memoryview) else memoryview(data)
    if crc32c.crc32c(view[pos + _ATTRIBUTES_OFFSET : pos + size]) != fields[4]:
        raise RecordBatchError(f"CRC mismatch in batch at base offset {fields[0]}")
    return fields, size


def check_appendable(fields: tuple[int, ...]) -> None:
    """Rules for a batch entering a log: dense offsets, at least one record.

    A producer's batch always has ``recordsCount == lastOffsetDelta + 1``; only
    compaction (which streams do not do) leaves gaps.
    """
    if fields[12] < 1 or fields[12] != fields[6] + 1:
        raise RecordBatchError(
            f"record count {fields[12]} does not match lastOffsetDelta {fields[6]}"
        )
    if fields[8] < fields[7] and fields[8] != -1:
        raise RecordBatchError("maxTimestamp before baseTimestamp")


def _inflate(payload: memoryview, codec: int, max_inflated_bytes: int) -> bytes:
    if codec == CODEC_SNAPPY:
        return _inflate_snappy(payload, max_inflated_bytes)
    if codec == CODEC_LZ4:
        return _inflate_lz4(payload, max_inflated_bytes)
    if codec == CODEC_ZSTD:
        return _inflate_zstd(payload, max_inflated_bytes)
    if codec != CODEC_GZIP:
        raise UnsupportedCompression(f"compression codec {codec} is not supported")
    inflater = zlib.decompressobj(wbits=31)  # gzip container
    try:
        out = inflater.decompress(payload, max_inflated_bytes)
        if inflater.unconsumed_tail:
            raise RecordBatchError(f"compressed records inflate past {max_inflated_bytes} bytes")
        out += inflater.flush()
    except zlib.error as exc:
        raise RecordBatchError(f"bad gzip data: {exc}") from None
    if len(out) > max_inflated_bytes:
        raise RecordBatchError(f"compressed records inflate past {max_inflated_bytes} bytes")
    return out


# Snappy, LZ4 and zstd come from optional packages (cramjam, lz4, zstandard): without
# them a batch in that codec is still stored and fetched by Kafka clients as is; only
# decoding its records (an AMQP reader) raises UnsupportedCompression.  Every decoder
# is bounded: the inflated size is checked before (snappy: its length headers) or
# while (lz4, zstd: at most max_inflated_bytes + 1 bytes asked for) inflating.


def _inflate_snappy(payload: memoryview, max_inflated_bytes: int) -> bytes:
    try:
        import cramjam
    except ImportError:
        raise UnsupportedCompression("snappy needs the cramjam package") from None
    data = bytes(payload)
    if data.startswith(_XERIAL_MAGIC):
        blocks = []
        pos = _XERIAL_HEADER
        while pos < len(data):
            if len(data) - pos < 4:
                raise RecordBatchError("bad snappy data: truncated xerial block header")
            (length,) = struct.unpack_from(">i", data, pos)
            pos += 4
            if length < 0 or length > len(data) - pos:
                raise RecordBatchError("bad snappy data: xerial block past the payload")
            blocks.append(data[pos : pos + length])
            pos += length
    else:
        blocks = [data]  # a raw snappy block (some producers send it unframed)
    out = []
    total = 0
    for block in blocks:
        try:
            total += cramjam.snappy.decompress_raw_len(block)
            if total > max_inflated_bytes:
                raise RecordBatchError(f"compressed records inflate past {max_inflated_bytes} bytes")
            out.append(bytes(cramjam.snappy.decompress_raw(block)))
        except cramjam.DecompressionError as exc:
            raise RecordBatchError(f"bad snappy data: {exc}") from None
    return b"".join(out)


def _inflate_lz4(payload: memoryview, max_inflated_bytes: int) -> bytes:
    try:
        import lz4.frame
    except ImportError:
        raise UnsupportedCompression("lz4 needs the lz4 package") from None
    inflater = lz4.frame.LZ4FrameDecompressor()
    try:
        out = inflater.decompress(bytes(payload), max_length=max_inflated_bytes + 1)
    except RuntimeError as exc:
        raise RecordBatchError(f"bad lz4 data: {exc}") from None
    if len(out) > max_inflated_bytes:
        raise RecordBatchError(f"compressed records inflate past {max_inflated_bytes} bytes")
    if not inflater.eof:
        raise RecordBatchError("bad lz4 data: truncated frame")
    return bytes(out)


def _inflate_zstd(payload: memoryview, max_inflated_bytes: int) -> bytes:
    try:
        import io

        import zstandard
    except ImportError:
        raise UnsupportedCompression("zstd needs the zstandard package") from None
    try:
        reader = zstandard.ZstdDecompressor().stream_reader(
            io.BytesIO(bytes(payload)), read_across_frames=True
        )
        out = reader.read(max_inflated_bytes + 1)
    except zstandard.ZstdError as exc:
        raise RecordBatchError(f"bad zstd data: {exc}") from None
    if len(out) > max_inflated_bytes:
        raise RecordBatchError(f"compressed records inflate past {max_inflated_bytes} bytes")
    # The bounded reader returns what a truncated frame yields without complaint; a
    # second pass (bounded by the first: the same input cannot inflate further) tells a
    # whole frame from a cut one.
    checker = zstandard.ZstdDecompressor().decompressobj()
    try:
        checker.decompress(bytes(payload))
    except zstandard.ZstdError as exc:
        raise RecordBatchError(f"bad zstd data: {exc}") from None
    if not checker.eof:
        raise RecordBatchError("bad zstd data: truncated frame")
    return bytes(out)


def decode_records(
    data: bytes | memoryview, max_inflated_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> list[Record]:
    """Every record of one whole batch (CRC checked), with absolute offsets.

    Not for the hot path of a Kafka fetch (that serves bytes); for recovery tools,
    Kafka's produce checks and tests.  (A stream's push readers use ``decode_rows``.)
    """
    return [  # each its own headers list (rows may share one)
        Record(value, key, list(headers), timestamp, attributes, offset)
        for offset, timestamp, key, value, headers, attributes in decode_rows(
            data, max_inflated_bytes
        )
    ]


# Header names seen so far (a stream's records repeat a handful): bytes -> str without a
# UTF-8 decode per record.  Bounded (names up to 64 bytes, at most 1024 of them): past
# that, names are decoded and not kept.
_NAME_CACHE: dict[bytes, str] = {}
_NAME_CACHE_LIMIT = 1024

# decode_rows' record loop compiled (optional: see baedal/_speedups), or None.
_records_c = load_speedup("_records")
_speedup: Any = _records_c.decode_body if _records_c is not None else None
# decode_header's and check_batch's checks compiled (the read side of every stream and
# queue batch), or None.
_batch_header: Any = getattr(_records_c, "batch_header", None)


def decode_rows(
    data: bytes | memoryview,
    max_inflated_bytes: int = DEFAULT_MAX_BATCH_BYTES,
    check_crc: bool = True,
) -> list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]], int]]:
    """``decode_records`` as plain tuples ``(offset, timestamp, key, value, headers,
    attributes)``: the same checks and errors, no object per record beyond the tuple
    (a stream read delivers each record once, so a ``Record`` would be built only to
    be taken apart again).  ``check_crc=False``: the caller has just checked it (a
    ``StreamReader`` verifies every batch it returns), so it is not computed twice.

    Consecutive records whose header sections are the same bytes (a stream fed by one
    publisher: every AMQP publish to one exchange has the same ``x-baedal-exchange``
    header) share one headers list, decoded once: treat ``headers`` as read-only.
    """
    if check_crc:
        fields, size = check_batch(data, 0, max(len(data), BATCH_HEADER_SIZE))
    else:
        fields = decode_header(data, 0, max(len(data), BATCH_HEADER_SIZE))
        size = fields[1] + BATCH_OVERHEAD
    if size != len(data):
        raise RecordBatchError(f"{len(data) - size} bytes after the batch")
    base_offset = fields[0]
    attributes = fields[5]
    last_delta = fields[6]
    base_timestamp = fields[7]
    count = fields[12]
    log_append_time = attributes & TIMESTAMP_TYPE_MASK
    max_timestamp = fields[8]
    view = memoryview(data)[BATCH_HEADER_SIZE:size]
    codec = attributes & CODEC_MASK
    # One copy into ``bytes``: slicing and indexing bytes is cheaper than a memoryview.
    buffer = bytes(view) if codec == CODEC_NONE else _inflate(view, codec, max_inflated_bytes)
    end = len(buffer)
    # Each record takes at least 7 bytes; a count beyond that is a lie we can refuse
    # before allocating anything.
    if count * 7 > end:
        raise RecordBatchError(f"record count {count} cannot fit in {end} bytes")
    if _speedup is not None:
        # The same loop in C (baedal/_speedups/_records.c); None = not something it
        # decodes (bad data, numbers past 64 bits): the loop below answers instead.
        rows = _speedup(
            buffer, count, base_offset, last_delta, base_timestamp, max_timestamp,
            log_append_time, _NAME_CACHE, _NAME_CACHE_LIMIT,
        )  # fmt: skip
        if rows is not None:
            return rows  # type: ignore[no-any-return]
    records: list[tuple[int, int, bytes | None, bytes | None, list[tuple[str, bytes | None]], int]] = []
    append = records.append
    names = _NAME_CACHE
    pos = 0
    read_varint = _read_varint
    zigzag = _ZIGZAG
    section = b""  # the previous record's header section and what it decoded to
    section_size = -1
    headers: list[tuple[str, bytes | None]] = []
    # Varints below 64 (most lengths, deltas and counts) are one byte and record and
    # value lengths below 8 KiB two: decoded inline (``_ZIGZAG`` undoes the zig-zag of
    # one byte), the rest by ``_read_varint``.  An IndexError means a field ran off the
    # buffer.
    try:
        for _ in range(count):
            byte = buffer[pos]
            if byte < 0x80:
                length, pos = zigzag[byte], pos + 1
            elif buffer[pos + 1] < 0x80:  # two bytes: records up to 8 KiB
                raw = (byte & 0x7F) | (buffer[pos + 1] << 7)
                length, pos = (raw >> 1) ^ -(raw & 1), pos + 2
            else:
                length, pos = read_varint(buffer, pos, end)
            stop = pos + length
            if length < 6 or stop > end:
                raise RecordBatchError(f"bad record length {length}")
            record_attributes = buffer[pos]
            pos += 1
            byte = buffer[pos]
            if byte < 0x80:
                timestamp_delta, pos = zigzag[byte], pos + 1
            elif buffer[pos + 1] < 0x80 and pos + 2 <= stop:
                raw = (byte & 0x7F) | (buffer[pos + 1] << 7)
                timestamp_delta, pos = (raw >> 1) ^ -(raw & 1), pos + 2
            else:
                timestamp_delta, pos = read_varint(buffer, pos, stop)
            byte = buffer[pos]
            if byte < 0x80:
                offset_delta, pos = zigzag[byte], pos + 1
            elif buffer[pos + 1] < 0x80 and pos + 2 <= stop:  # deltas 64..8191
                raw = (byte & 0x7F) | (buffer[pos + 1] << 7)
                offset_delta, pos = (raw >> 1) ^ -(raw & 1), pos + 2
            else:
                offset_delta, pos = read_varint(buffer, pos, stop)
            if not 0 <= offset_delta <= last_delta:
                raise RecordBatchError(f"record offset delta {offset_delta} outside the batch")
            byte = buffer[pos]
            if byte < 0x80:
                key_length, pos = zigzag[byte], pos + 1
            else:
                key_length, pos = read_varint(buffer, pos, stop)
            if key_length < -1 or pos + key_length > stop:
                raise RecordBatchError(f"bad key length {key_length}")
            key: bytes | None = None
            if key_length >= 0:
                key = buffer[pos : pos + key_length]
                pos += key_length
            byte = buffer[pos]
            if byte < 0x80:
                value_length, pos = zigzag[byte], pos + 1
            elif buffer[pos + 1] < 0x80:
                raw = (byte & 0x7F) | (buffer[pos + 1] << 7)
                value_length, pos = (raw >> 1) ^ -(raw & 1), pos + 2
            else:
                value_length, pos = read_varint(buffer, pos, stop)
            if value_length < -1 or pos + value_length > stop:
                raise RecordBatchError(f"bad value length {value_length}")
            value: bytes | None = None
            if value_length >= 0:
                value = buffer[pos : pos + value_length]
                pos += value_length
            # The header section runs from its count to the record's end: the same
            # bytes as the previous record's mean the same headers.
            if pos + section_size == stop and buffer.startswith(section, pos):
                pos = stop
                timestamp = max_timestamp if log_append_time else base_timestamp + timestamp_delta
                append((base_offset + offset_delta, timestamp, key, value, headers, record_attributes))
                continue
            section_start = pos
            byte = buffer[pos]
            if byte < 0x80:
                header_count, pos = zigzag[byte], pos + 1
            else:
                header_count, pos = read_varint(buffer, pos, stop)
            if header_count < 0 or header_count * 2 > stop - pos:
                raise RecordBatchError(f"bad header count {header_count}")
            headers = []
            for _h in range(header_count):
                byte = buffer[pos]
                if byte < 0x80:
                    name_length, pos = zigzag[byte], pos + 1
                else:
                    name_length, pos = read_varint(buffer, pos, stop)
                if name_length < 0 or pos + name_length > stop:
                    raise RecordBatchError(f"bad header key length {name_length}")
                raw_name = buffer[pos : pos + name_length]
                name = names.get(raw_name)
                if name is None:
                    try:
                        name = str(raw_name, "utf-8")
                    except UnicodeDecodeError:
                        raise RecordBatchError("header key is not UTF-8") from None
                    if name_length <= 64 and len(names) < _NAME_CACHE_LIMIT:
                        names[raw_name] = name
                pos += name_length
                byte = buffer[pos]
                if byte < 0x80:
                    header_length, pos = zigzag[byte], pos + 1
                else:
                    header_length, pos = read_varint(buffer, pos, stop)
                if header_length < -1 or pos + header_length > stop:
                    raise RecordBatchError(f"bad header value length {header_length}")
                header_value: bytes | None = None
                if header_length >= 0:
                    header_value = buffer[pos : pos + header_length]
                    pos += header_length
                headers.append((name, header_value))
            if pos != stop:
                raise RecordBatchError("record length does not match its fields")
            section = buffer[section_start:stop]
            section_size = stop - section_start
            timestamp = max_timestamp if log_append_time else base_timestamp + timestamp_delta
            append(
                (base_offset + offset_delta, timestamp, key, value, headers, record_attributes)
            )
    except IndexError:
        raise RecordBatchError("record truncated") from None
    if pos != end:
        raise RecordBatchError(f"{end - pos} bytes after the last record")
    return records


class BatchDecoder:
    """Sans-IO batch reader: ``feed(bytes)``, then ``next_batch()`` until it returns None.

    Every batch is fully validated (header, CRC, and every record decodes).  The buffer
    never holds more than one batch plus the bytes of one ``feed`` (a batch larger than
    ``max_batch_bytes`` is refused as soon as its length field arrives).  The first error
    is sticky: every later call raises it again.
    """

    __slots__ = ("_buffer", "max_batch_bytes", "failure")

    def __init__(self, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES) -> None:
        self._buffer = bytearray()
        self.max_batch_bytes = max_batch_bytes
        self.failure: RecordBatchError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.failure is not None:
            raise self.failure
        self._buffer += data

    def next_batch(self) -> tuple[Batch, list[Record]] | None:
        if self.failure is not None:
            raise self.failure
        buffer = self._buffer
        if len(buffer) < BATCH_OVERHEAD:
            return None
        try:
            size = batch_size_at(buffer)
            if not BATCH_HEADER_SIZE <= size <= self.max_batch_bytes:
                raise RecordBatchError(f"implausible batch length {size - BATCH_OVERHEAD}")
            if len(buffer) < size:
                return None
            data = bytes(buffer[:size])
            fields, _size = check_batch(data, 0, self.max_batch_bytes)
            records = decode_records(data, self.max_batch_bytes)
        except RecordBatchError as exc:
            self.failure = exc
            raise
        del buffer[:size]
        return Batch(data, fields), records

    def close(self) -> None:
        """End of input: leftover bytes are a truncated batch."""
        if self.failure is not None:
            raise self.failure
        if self._buffer:
            self.failure = RecordBatchError(f"{len(self._buffer)} bytes of a truncated batch")
            raise self.failure


def iter_batches(
    data: bytes | memoryview, max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
) -> Iterable[Batch]:
    """Whole batches in ``data`` (CRC-checked), in order; raises on the first bad one."""
    pos = 0
    end = len(data)
    view = data if isinstance(data, memoryview) else memoryview(data)
    while pos < end:
        fields, size = check_batch(view, pos, max_batch_bytes)
        yield Batch(view[pos : pos + size], fields)
        pos += size
