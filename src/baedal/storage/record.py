"""The on-disk message record: protocol-neutral and versioned.

Theory of operation
-------------------
A queue's segment files hold records ``length | crc32c | kind | payload`` (see
``segment.py``); this module is the *payload*: one message, as the neutral ``Message``
has it (``core/message.py``), plus the queue's deadline for it.  No protocol's wire form
is stored: a record written from an AMQP publish and one from an HTTP (later Kafka,
STOMP, MQTT) publish have the same shape, and any adapter can deliver either.

Version 2 (this code writes only this one), little-endian::

    meta      version:u8 (0x82)  flags:u8  priority:u8
              exchange_len:u16  routing_key_len:u16  fields_len:u32
              expiration_ms:u64  published_at:f64  expires_at:f64
    exchange  utf-8, exchange_len bytes
    routing   utf-8, routing_key_len bytes
    fields    fields_len bytes (0 when the message has none of them), see below
    body      the rest of the payload

    flags     1 persistent, 2 expiration_ms present, 4 expires_at present (a wall-clock
              deadline, seconds since the epoch)

    fields    present:u16, then each present field in this order:
              bit 0 content_type, 1 content_encoding, 2 correlation_id, 3 reply_to,
                  4 message_id, 5 user_id      string: length:u32 + utf-8 (surrogates
                                               escaped, so any bytes round-trip)
              bit 6 timestamp                  u64, seconds since the epoch
              bit 7 headers                    a typed map (below); present even when
                                               empty, so "no headers" stays apart from
                                               "empty headers"
              bit 8 extension                  protocol:u8 length + ascii tag, then
                                               length:u32 + the protocol's opaque bytes

The typed map is Baedal's encoding of a mapping of typed values (``core.properties``:
``encode_table``/``decode_table``): ``size:u32`` then ``name_len:u8 name type:u8 value``
per entry, with the type tags ``S`` string (``u32`` length), ``I`` int32, ``l`` int64,
``t`` bool, ``d`` float64, ``D`` decimal (scale ``u8`` + int32), ``T`` timestamp
(``u64``), ``x`` bytes (``u32`` length), ``A`` list (``u32`` size + values), ``F`` nested
map, ``V`` none (and, read only, ``b B s u i f``: int8/uint8/int16/uint16/uint32/float32).
All numbers in it are big-endian.  It is the same bytes as an AMQP 0-9-1 field table in
RabbitMQ's dialect, by choice (a compact, self-describing, complete format), but it is
this record's own format: it does not change if an adapter's wire form does.

The extension holds what a protocol has beyond the neutral fields (AMQP's ``type``,
``app_id``, ``cluster_id``...), tagged with the protocol; storage never interprets it,
``core.message.load_extension`` hands it back to the adapter.

Legacy records (version 1) were written by Baedal 0.1.0 up to issue 9's main, and are
still read: ``flags:u8 priority:u8 exchange_len:u16 routing_key_len:u16
properties_len:u32 expiration_ms:u64 published_at:f64 expires_at:f64``, exchange, routing
key, an AMQP basic-properties block, body.  Their first byte is the flags byte, which
only ever used bits 0-3 (1 persistent, 2 expiration, 4 deadline, 8 wall-clock deadline),
so a first byte with the high bit set is a version byte and a first byte below 0x10 is a
legacy record.  The properties block is handed, unread, to the adapter registered for
``LEGACY_RECORD_TAG`` (the AMQP adapter), which decodes the neutral fields from it
lazily as it does for a fresh publish.  Their deadlines were wall-clock only with flag 8;
before that they were the old process's event-loop (monotonic) time: ``_legacy_deadline``.

Headers are written and read as the typed map's bytes (``Message.encoded_headers``): a
record neither decodes nor encodes a header value, and a message read back decodes its
headers only if something looks inside.  For an AMQP publish the bytes are a slice of
its properties block (the typed map is the field table), so the cost of the neutral
record over the old one is splitting the block into fields once (measured in
``docs/benchmarks.md``, ``bench/micro/bench_record.py``).
"""

from __future__ import annotations

import struct
import time

from ..core.message import NO_FIELDS, Message, load_extension
from ..core.properties import DecodeError

__all__ = [
    "LEGACY_RECORD_TAG",
    "MIN_RECORD_SIZE",
    "RecordError",
    "VERSION",
    "body_size",
    "decode_record",
    "encode_record",
    "record_has_deadline",
    "record_priority",
]

VERSION = 0x82  # 0x80 | 2: the high bit says "versioned" (see the module docstring)

_META = struct.Struct("<BBBHHIQdd")
_META_SIZE = _META.size
_LEGACY_META = struct.Struct("<BBHHIQdd")
_LEGACY_META_SIZE = _LEGACY_META.size
MIN_RECORD_SIZE = min(_META_SIZE, _LEGACY_META_SIZE)

FLAG_PERSISTENT = 1
FLAG_EXPIRATION = 2
FLAG_EXPIRES_AT = 4
# Legacy records only: set when ``expires_at`` is wall-clock (version 2 always is).
LEGACY_FLAG_WALL_CLOCK = 8

LEGACY_RECORD_TAG = "amqp-0-9-1-properties"

_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_TABLE_SIZE = struct.Struct(">I")  # the typed map's own size field (big-endian)

_BIT_TIMESTAMP = 1 << 6
_BIT_HEADERS = 1 << 7
_BIT_EXTENSION = 1 << 8


class RecordError(DecodeError):
    """A version-2 record payload that does not decode (the CRC passed, so this is a bug
    or a record from a newer Baedal).  The only error ``decode_record`` raises for one
    (``tests/fuzz/test_record_fuzz.py``); headers decoded later raise ``DecodeError``."""


def encode_record(message: Message, expires_at: float | None) -> bytes:
    """The record payload for ``message`` (one meta pack, one join)."""
    exchange = message.exchange.encode()
    routing_key = message.routing_key.encode()
    extension = message.extension
    if message.field_values() is NO_FIELDS and (extension is None or not extension.leftovers()):
        fields = b""  # the common "delivery-mode only" publish, without another call
    else:
        fields = _encode_fields(message)
    expiration = message.expiration_ms
    flags = (
        (FLAG_PERSISTENT if message.persistent else 0)
        | (0 if expiration is None else FLAG_EXPIRATION)
        | (0 if expires_at is None else FLAG_EXPIRES_AT)
    )
    meta = _META.pack(
        VERSION,
        flags,
        message.priority,
        len(exchange),
        len(routing_key),
        len(fields),
        expiration or 0,
        message.published_at,
        expires_at or 0.0,
    )
    return b"".join((meta, exchange, routing_key, fields, message.body))


def _encode_fields(message: Message) -> bytes:
    # Runs for every persistent publish; for an AMQP publish ``field_values`` splits
    # its properties block (once).
    fields = message.field_values()
    extension = message.extension
    if fields is NO_FIELDS and (extension is None or not extension.leftovers()):
        return b""  # the common "delivery-mode only" publish
    present = 0
    out = [b""]
    # Unrolled (content_type .. user_id): this runs for every persistent publish.
    value = fields[0]
    if value is not None:
        present = 1
        raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")
        out += (_U32.pack(len(raw)), raw)
    value = fields[1]
    if value is not None:
        present |= 2
        raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")
        out += (_U32.pack(len(raw)), raw)
    value = fields[2]
    if value is not None:
        present |= 4
        raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")
        out += (_U32.pack(len(raw)), raw)
    value = fields[3]
    if value is not None:
        present |= 8
        raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")
        out += (_U32.pack(len(raw)), raw)
    value = fields[4]
    if value is not None:
        present |= 16
        raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")
        out += (_U32.pack(len(raw)), raw)
    value = fields[5]
    if value is not None:
        present |= 32
        raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")
        out += (_U32.pack(len(raw)), raw)
    value = fields[6]
    if value is not None:
        present |= _BIT_TIMESTAMP
        out.append(_U64.pack(value))
    value = fields[7]  # the typed map's bytes, encoded at most once
    if value is not None:
        present |= _BIT_HEADERS
        out.append(value)
    if extension is not None:
        leftovers = extension.leftovers()
        if leftovers:
            present |= _BIT_EXTENSION
            tag = extension.protocol.encode("ascii")
            out.append(bytes((len(tag),)))
            out.append(tag)
            out.append(_U32.pack(len(leftovers)))
            out.append(leftovers)
    if not present:
        return b""
    out[0] = _U16.pack(present)
    return b"".join(out)


def decode_record(payload: bytes, queue_ttl_ms: int | None = None) -> tuple[Message, float | None]:
    """Inverse of ``encode_record``: (message, expires_at as wall-clock time).

    Reads legacy records too; ``queue_ttl_ms`` (the queue's ``x-message-ttl``) is only
    used to bound the deadline of a legacy record without a wall-clock deadline.
    """
    if payload[0] & 0x80:
        return _decode_v2(payload)
    return _decode_legacy(payload, queue_ttl_ms)


def _decode_v2(payload: bytes) -> tuple[Message, float | None]:
    try:
        (
            version,
            flags,
            priority,
            exchange_len,
            key_len,
            fields_len,
            expiration,
            published_at,
            expires_at,
        ) = _META.unpack_from(payload)
    except struct.error:
        raise RecordError("record shorter than its meta") from None
    if version != VERSION:
        raise RecordError(f"unknown record version {version:#x}")
    pos = _META_SIZE
    fields_end = pos + exchange_len + key_len + fields_len
    if fields_end > len(payload):
        raise RecordError("record names and fields run past its end")
    try:
        exchange = payload[pos : pos + exchange_len].decode()
        pos += exchange_len
        routing_key = payload[pos : pos + key_len].decode()
    except UnicodeDecodeError:
        raise RecordError("record names are not UTF-8") from None
    pos += key_len
    message = Message(
        exchange,
        routing_key,
        payload[fields_end:],
        flags & FLAG_PERSISTENT != 0,
        priority,
        expiration if flags & FLAG_EXPIRATION else None,
        published_at,
    )
    if fields_len:
        _decode_fields(message, payload, pos, fields_end)
    else:
        message.adopt_fields(NO_FIELDS)
    return message, (expires_at if flags & FLAG_EXPIRES_AT else None)


def _decode_fields(message: Message, payload: bytes, pos: int, end: int) -> None:
    try:
        (present,) = _U16.unpack_from(payload, pos)
        pos += 2
        strings: list[bytes | None] = [None, None, None, None, None, None]
        if present & 63:  # content_type .. user_id
            for bit in range(6):
                if present & (1 << bit):
                    stop = pos + 4 + _U32.unpack_from(payload, pos)[0]
                    strings[bit] = payload[pos + 4 : stop]  # decoded if read (Message)
                    pos = stop
        timestamp = None
        if present & _BIT_TIMESTAMP:
            (timestamp,) = _U64.unpack_from(payload, pos)
            pos += 8
        headers = None
        if present & _BIT_HEADERS:
            # Kept encoded: decoded only if something looks inside (``Message.headers``).
            headers_end = pos + 4 + _TABLE_SIZE.unpack_from(payload, pos)[0]
            if headers_end > end:
                raise RecordError("record headers run past their fields")
            headers = payload[pos:headers_end]
            pos = headers_end
        if present & _BIT_EXTENSION:
            n = payload[pos]
            tag = payload[pos + 1 : pos + 1 + n].decode("ascii")
            pos += 1 + n
            stop = pos + 4 + _U32.unpack_from(payload, pos)[0]
            message.extension = load_extension(tag, payload[pos + 4 : stop])
            pos = stop
    except (struct.error, IndexError, UnicodeDecodeError):
        raise RecordError("record fields run past their length") from None
    if pos != end:
        raise RecordError("record fields do not match their length")
    message.set_fields(*strings, timestamp, headers)  # type: ignore[arg-type]


def _decode_legacy(payload: bytes, queue_ttl_ms: int | None) -> tuple[Message, float | None]:
    flags, priority, exchange_len, key_len, props_len, expiration, published_at, expires_at = (
        _LEGACY_META.unpack_from(payload)
    )
    pos = _LEGACY_META_SIZE
    exchange = payload[pos : pos + exchange_len].decode()
    pos += exchange_len
    routing_key = payload[pos : pos + key_len].decode()
    pos += key_len
    properties = payload[pos : pos + props_len]
    pos += props_len
    message = Message(
        exchange,
        routing_key,
        payload[pos:],
        flags & FLAG_PERSISTENT != 0,
        priority,
        expiration if flags & FLAG_EXPIRATION else None,
        published_at,
        load_extension(LEGACY_RECORD_TAG, bytes(properties)),
    )
    if not flags & FLAG_EXPIRES_AT:
        return message, None
    if not flags & LEGACY_FLAG_WALL_CLOCK:
        expires_at = _legacy_deadline(expires_at, message.expiration_ms, queue_ttl_ms)
    return message, expires_at


def _legacy_deadline(
    monotonic_deadline: float, expiration_ms: int | None, queue_ttl_ms: int | None
) -> float:
    """A wall-clock deadline for a record written with an event-loop-time deadline.

    Such records carry no usable publish time (``published_at`` was never filled in), so
    the deadline is re-based on this boot's monotonic clock: when the broker restarted
    without a reboot the clock is the same and the result is exact.  A deadline further
    away than the message's TTL can only come from another boot (the clock restarted);
    the message then gets its whole TTL again from now.  One already past expires now.
    """
    remaining = monotonic_deadline - time.monotonic()
    ttls = [ttl for ttl in (expiration_ms, queue_ttl_ms) if ttl is not None]
    if ttls:
        remaining = min(remaining, min(ttls) / 1000.0)
    return time.time() + max(0.0, remaining)


def body_size(payload: bytes | memoryview, start: int = 0) -> int:
    """The body length of the record at ``payload[start:]`` without decoding it."""
    if payload[start] & 0x80:
        _v, _f, _p, exchange_len, key_len, fields_len, _e, _t, _x = _META.unpack_from(payload, start)
        return len(payload) - start - _META_SIZE - exchange_len - key_len - fields_len
    _f, _p, exchange_len, key_len, props_len, _e, _t, _x = _LEGACY_META.unpack_from(payload, start)
    return len(payload) - start - _LEGACY_META_SIZE - exchange_len - key_len - props_len


def record_priority(payload: bytes | memoryview) -> int:
    return payload[2] if payload[0] & 0x80 else payload[1]


def record_has_deadline(payload: bytes | memoryview) -> bool:
    flags = payload[1] if payload[0] & 0x80 else payload[0]
    return bool(flags & FLAG_EXPIRES_AT)
