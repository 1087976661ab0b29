"""Baedal's typed values and the typed-map encoding (headers, arguments, definitions).

Theory of operation
-------------------
Header values and queue/exchange arguments are *typed values*: ``str``, ``bytes``,
``int`` (with its width chosen on encoding), ``bool``, ``float``, ``Decimal``,
``Timestamp``, ``None``, lists and nested mappings.  ``encode_table``/``decode_table``
are Baedal's own binary encoding of a mapping of typed values (a *typed map*), used by
the on-disk record (``storage/record.py``) and the definitions store.  The encoding is
the same as an AMQP 0-9-1 field table on purpose (RabbitMQ's dialect, below): it is a
complete, compact, self-describing format, and the AMQP adapter can pass it through.
The AMQP basic-properties block (the adapter's wire form of a message) is not here: it
lives in ``protocols/amqp/properties.py``; nothing in core or storage reads it.

Field-table tags follow RabbitMQ/Qpid (``s`` = int16, ``l`` = int64, ``x`` = bytes), not
the 0-9-1 spec text (RabbitMQ errata §3).  Decoding is lenient (also ``L`` and ``\\x00``,
as pamqp accepts), encoding strict.
"""

from __future__ import annotations

import struct
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

__all__ = [
    "DecodeError",
    "Timestamp",
    "decode_table",
    "encode_table",
]


class DecodeError(ValueError):
    """Malformed typed map (or, raised by an adapter, a malformed wire form such as an
    AMQP property block: 502 SYNTAX_ERROR / 501 FRAME_ERROR)."""


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
