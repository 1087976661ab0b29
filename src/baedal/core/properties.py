"""Message properties and field tables, in the AMQP 0-9-1 wire encoding.

Theory of operation
-------------------
The core keeps a message's properties as the raw *basic properties block* exactly as
the publisher sent it (``property flags`` followed by the present fields).  That block
is compact, it is what the dominant protocol (AMQP 0-9-1) puts on the wire both ways, and
passing it through untouched means the publish → deliver path never decodes it.

Only when the broker needs a value (headers exchange, TTL, priority, dead-lettering,
direct reply-to) does it decode, and only the fields it needs.  Other protocols translate
their headers into and out of this block at their own boundary.

Field-table tags follow RabbitMQ/Qpid (``s`` = int16, ``l`` = int64, ``x`` = bytes), not
the 0-9-1 spec text (RabbitMQ errata §3).  Decoding is lenient (also ``L`` and ``\\x00``,
as pamqp accepts), encoding strict.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "DecodeError",
    "decode_table",
    "encode_table",
    "BasicProperties",
    "decode_properties",
    "encode_properties",
    "scan_properties",
    "PROPERTY_NAMES",
]


class DecodeError(ValueError):
    """Malformed field table or property block (an AMQP 502 SYNTAX_ERROR / 501 FRAME_ERROR)."""


_UINT8 = struct.Struct(">B")
_INT8 = struct.Struct(">b")
_INT16 = struct.Struct(">h")
_UINT16 = struct.Struct(">H")
_INT32 = struct.Struct(">i")
_UINT32 = struct.Struct(">I")
_INT64 = struct.Struct(">q")
_UINT64 = struct.Struct(">Q")
_FLOAT = struct.Struct(">f")
_DOUBLE = struct.Struct(">d")
_DECIMAL = struct.Struct(">Bi")

MAX_TABLE_DEPTH = 32  # a hostile peer must not drive the decoder into RecursionError


class Timestamp(int):
    """An AMQP timestamp (seconds since the epoch) kept distinct from plain integers."""


def _shortstr(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    n = buf[pos]
    end = pos + 1 + n
    if end > len(buf):
        raise DecodeError("short string runs past the end of the frame")
    return bytes(buf[pos + 1 : end]).decode("utf-8", "surrogateescape"), end


def _decode_value(buf: bytes | memoryview, pos: int, depth: int) -> tuple[Any, int]:
    try:
        tag = buf[pos]
    except IndexError:
        raise DecodeError("field value runs past the end of the table") from None
    pos += 1
    try:
        if tag == 0x53:  # 'S' long string
            (n,) = _UINT32.unpack_from(buf, pos)
            end = pos + 4 + n
            if end > len(buf):
                raise DecodeError("long string runs past the end of the table")
            raw = bytes(buf[pos + 4 : end])
            try:
                return raw.decode("utf-8"), end
            except UnicodeDecodeError:
                return raw, end
        if tag == 0x49:  # 'I'
            return _INT32.unpack_from(buf, pos)[0], pos + 4
        if tag == 0x74:  # 't'
            return bool(buf[pos]), pos + 1
        if tag == 0x46:  # 'F'
            return _decode_table(buf, pos, depth + 1)
        if tag == 0x6C or tag == 0x4C:  # 'l' (and pamqp's 'L')
            return _INT64.unpack_from(buf, pos)[0], pos + 8
        if tag == 0x41:  # 'A'
            (n,) = _UINT32.unpack_from(buf, pos)
            pos += 4
            end = pos + n
            if end > len(buf):
                raise DecodeError("array runs past the end of the table")
            items = []
            if depth >= MAX_TABLE_DEPTH:
                raise DecodeError("field tables nested too deeply")
            while pos < end:
                value, pos = _decode_value(buf, pos, depth + 1)
                items.append(value)
            if pos != end:
                raise DecodeError("array length does not match its contents")
            return items, end
        if tag == 0x62:  # 'b'
            return _INT8.unpack_from(buf, pos)[0], pos + 1
        if tag == 0x42:  # 'B'
            return _UINT8.unpack_from(buf, pos)[0], pos + 1
        if tag == 0x73:  # 's' int16 (RabbitMQ), not short string
            return _INT16.unpack_from(buf, pos)[0], pos + 2
        if tag == 0x75:  # 'u'
            return _UINT16.unpack_from(buf, pos)[0], pos + 2
        if tag == 0x69:  # 'i'
            return _UINT32.unpack_from(buf, pos)[0], pos + 4
        if tag == 0x66:  # 'f'
            return _FLOAT.unpack_from(buf, pos)[0], pos + 4
        if tag == 0x64:  # 'd'
            return _DOUBLE.unpack_from(buf, pos)[0], pos + 8
        if tag == 0x44:  # 'D'
            scale, value = _DECIMAL.unpack_from(buf, pos)
            return Decimal(value).scaleb(-scale), pos + 5
        if tag == 0x54:  # 'T'
            return Timestamp(_UINT64.unpack_from(buf, pos)[0]), pos + 8
        if tag == 0x56 or tag == 0x00:  # 'V' void
            return None, pos
        if tag == 0x78:  # 'x' byte array
            (n,) = _UINT32.unpack_from(buf, pos)
            end = pos + 4 + n
            if end > len(buf):
                raise DecodeError("byte array runs past the end of the table")
            return bytes(buf[pos + 4 : end]), end
    except struct.error:
        raise DecodeError("field value runs past the end of the table") from None
    raise DecodeError(f"unknown field type {chr(tag)!r}")


def _decode_table(buf: bytes | memoryview, pos: int, depth: int = 0) -> tuple[dict[str, Any], int]:
    if depth > MAX_TABLE_DEPTH:
        raise DecodeError("field tables nested too deeply")
    try:
        (n,) = _UINT32.unpack_from(buf, pos)
    except struct.error:
        raise DecodeError("table length runs past the end of the frame") from None
    pos += 4
    end = pos + n
    if end > len(buf):
        raise DecodeError("table runs past the end of the frame")
    table: dict[str, Any] = {}
    while pos < end:
        key, pos = _shortstr(buf, pos)
        value, pos = _decode_value(buf, pos, depth)
        table[key] = value
    if pos != end:
        raise DecodeError("table length does not match its contents")
    return table, end


def decode_table(buf: bytes | memoryview, pos: int = 0) -> tuple[dict[str, Any], int]:
    """Decode a field table at ``pos``; return (table, position after it)."""
    return _decode_table(buf, pos, 0)


def _encode_value(out: bytearray, value: Any) -> None:
    if isinstance(value, bool):
        out += b"t\x01" if value else b"t\x00"
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        out += b"S"
        out += _UINT32.pack(len(raw))
        out += raw
    elif isinstance(value, Timestamp):
        out += b"T"
        out += _UINT64.pack(value)
    elif isinstance(value, int):
        if -(2**31) <= value < 2**31:
            out += b"I"
            out += _INT32.pack(value)
        elif -(2**63) <= value < 2**63:
            out += b"l"
            out += _INT64.pack(value)
        else:
            raise ValueError(f"integer {value} does not fit in a field table")
    elif isinstance(value, float):
        out += b"d"
        out += _DOUBLE.pack(value)
    elif isinstance(value, dict):
        out += b"F"
        out += encode_table(value)
    elif isinstance(value, list | tuple):
        inner = bytearray()
        for item in value:
            _encode_value(inner, item)
        out += b"A"
        out += _UINT32.pack(len(inner))
        out += inner
    elif isinstance(value, bytes | bytearray | memoryview):
        out += b"x"
        out += _UINT32.pack(len(value))
        out += value
    elif value is None:
        out += b"V"
    elif isinstance(value, Decimal):
        sign, digits, exponent = value.as_tuple()
        scale = -int(exponent) if isinstance(exponent, int) and exponent < 0 else 0
        unscaled = int(value.scaleb(scale))
        out += b"D"
        out += _DECIMAL.pack(scale, unscaled)
    elif isinstance(value, datetime):
        out += b"T"
        out += _UINT64.pack(int(value.replace(tzinfo=value.tzinfo or UTC).timestamp()))
    else:
        raise ValueError(f"cannot encode {type(value).__name__} in a field table")


def encode_table(table: dict[str, Any] | None) -> bytes:
    if not table:
        return b"\x00\x00\x00\x00"
    out = bytearray(4)
    for key, value in table.items():
        raw = key.encode("utf-8")
        if len(raw) > 255:
            raise ValueError("field table key longer than 255 bytes")
        out.append(len(raw))
        out += raw
        _encode_value(out, value)
    out[0:4] = _UINT32.pack(len(out) - 4)
    return bytes(out)


# --- basic properties -------------------------------------------------------------------

PROPERTY_NAMES = (
    "content_type",
    "content_encoding",
    "headers",
    "delivery_mode",
    "priority",
    "correlation_id",
    "reply_to",
    "expiration",
    "message_id",
    "timestamp",
    "type",
    "user_id",
    "app_id",
    "cluster_id",
)
# Field kinds in flag order: s = shortstr, t = table, o = octet, T = timestamp.
_KINDS = "sstoossssTssss"
_FLAG_BITS = tuple(1 << (15 - i) for i in range(14))


@dataclass(slots=True)
class BasicProperties:
    content_type: str | None = None
    content_encoding: str | None = None
    headers: dict[str, Any] | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: int | None = None
    type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None


def decode_properties(block: bytes | memoryview) -> BasicProperties:
    """Decode a whole property block (flags + fields)."""
    if len(block) < 2:
        raise DecodeError("property flags missing")
    flags = (block[0] << 8) | block[1]
    if flags & 0x0001:
        # Continuation flags: 0-9-1 basic has only 14 properties, so a continuation is bogus.
        raise DecodeError("property flags continuation is not supported for basic")
    if flags & 0x0002:
        raise DecodeError("reserved property flag bit set")
    pos = 2
    values: list[Any] = []
    try:
        for bit, kind in zip(_FLAG_BITS, _KINDS, strict=True):
            if not flags & bit:
                values.append(None)
                continue
            if kind == "s":
                value, pos = _shortstr(block, pos)
            elif kind == "o":
                value = block[pos]
                pos += 1
            elif kind == "t":
                value, pos = _decode_table(block, pos)
            else:
                value = Timestamp(_UINT64.unpack_from(block, pos)[0])
                pos += 8
            values.append(value)
    except (IndexError, struct.error):
        raise DecodeError("property block runs past the end of the frame") from None
    if pos != len(block):
        raise DecodeError("property block longer than its fields")
    return BasicProperties(*values)


def encode_properties(props: BasicProperties) -> bytes:
    flags = 0
    out = bytearray(2)
    for bit, kind, name in zip(_FLAG_BITS, _KINDS, PROPERTY_NAMES, strict=True):
        value = getattr(props, name)
        if value is None:
            continue
        flags |= bit
        if kind == "s":
            raw = value.encode("utf-8", "surrogateescape") if isinstance(value, str) else bytes(value)
            if len(raw) > 255:
                raise ValueError(f"property {name} longer than 255 bytes")
            out.append(len(raw))
            out += raw
        elif kind == "o":
            out.append(int(value) & 0xFF)
        elif kind == "t":
            out += encode_table(value)
        else:
            out += _UINT64.pack(int(value))
    out[0] = flags >> 8
    out[1] = flags & 0xFF
    return bytes(out)


_DELIVERY_MODE_BIT = 1 << 12
_PRIORITY_BIT = 1 << 11
_EXPIRATION_BIT = 1 << 8
_HEADERS_BIT = 1 << 13


def scan_properties(block: bytes) -> tuple[int, int, str | None]:
    """Fast path for the publish hot path: (delivery_mode, priority, expiration).

    Skips over the fields before the ones it needs without building objects.  Most
    publishes carry only delivery-mode (and maybe content-type), so this costs a few
    index operations.  Raises DecodeError on a block that runs short.
    """
    if len(block) < 2:
        raise DecodeError("property flags missing")
    flags = (block[0] << 8) | block[1]
    if not flags & (_DELIVERY_MODE_BIT | _PRIORITY_BIT | _EXPIRATION_BIT):
        return 0, 0, None
    pos = 2
    try:
        if flags & 0x8000:  # content-type
            pos += 1 + block[pos]
        if flags & 0x4000:  # content-encoding
            pos += 1 + block[pos]
        if flags & _HEADERS_BIT:
            pos += 4 + _UINT32.unpack_from(block, pos)[0]
        delivery_mode = 0
        priority = 0
        if flags & _DELIVERY_MODE_BIT:
            delivery_mode = block[pos]
            pos += 1
        if flags & _PRIORITY_BIT:
            priority = block[pos]
            pos += 1
        expiration = None
        if flags & _EXPIRATION_BIT:
            if flags & 0x0400:  # correlation-id
                pos += 1 + block[pos]
            if flags & 0x0200:  # reply-to
                pos += 1 + block[pos]
            n = block[pos]
            if pos + 1 + n > len(block):
                raise DecodeError("expiration runs past the end of the frame")
            expiration = block[pos + 1 : pos + 1 + n].decode("latin-1")
    except (IndexError, struct.error):
        raise DecodeError("property block runs past the end of the frame") from None
    return delivery_mode, priority, expiration
