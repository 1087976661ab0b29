"""The AMQP 0-9-1 basic-properties block, and the AMQP adapter's message extension.

Theory of operation
-------------------
AMQP carries a message's properties as one *basic properties block* (``property flags``
followed by the present fields).  The core's ``Message`` is protocol-neutral; the AMQP
adapter keeps the block a publisher sent in its ``AmqpExtension`` and passes it through
untouched to AMQP consumers, so the publish → deliver path never decodes it.  Only when
something asks for a neutral field (headers exchange, CC/BCC, dead-lettering, a record on
disk, an HTTP reader) is the block decoded, once, into the message's neutral fields
(``AmqpExtension.decode_fields``).

What AMQP has and the neutral message does not -- ``type``, ``app_id``, ``cluster_id``,
and ``delivery-mode`` / ``priority`` values the neutral flags cannot say (a
delivery-mode of 1 rather than absent, a priority of 0 rather than absent) -- are the
extension's *extra* properties.  They survive a record on disk (``leftovers``: a block
holding only them) and a derived message (a dead letter keeps its ``type``).

A message from another origin (HTTP, a record, a dead letter) has no block; the first
AMQP delivery encodes one from the neutral fields and the extra properties
(``wire_extension``) and caches it in the message's extension, so a fan-out encodes it
once.

Field-table values use ``core.properties`` (Baedal's typed-map encoding is the AMQP
field table).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

from ...core.message import NO_FIELDS, Extension, Message, register_extension
from ...core.properties import DecodeError, Timestamp, decode_table, encode_table
from ...storage.record import LEGACY_RECORD_TAG

__all__ = [
    "AmqpExtension",
    "BasicProperties",
    "LEGACY_RECORD_TAG",
    "PROPERTY_NAMES",
    "decode_properties",
    "encode_properties",
    "message_from_properties",
    "properties_of",
    "encode_block",
    "scan_properties",
    "split_properties",
    "wire_extension",
]

_UINT32 = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")


def _shortstr(buf: bytes | memoryview, pos: int) -> tuple[str, int]:
    n = buf[pos]
    end = pos + 1 + n
    if end > len(buf):
        raise DecodeError("short string runs past the end of the frame")
    return bytes(buf[pos + 1 : end]).decode("utf-8", "surrogateescape"), end


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


def split_properties(block: bytes | memoryview) -> list[Any]:
    """The 14 property values of a block in ``PROPERTY_NAMES`` order, the headers left
    encoded (the field table's bytes, length included: Baedal's typed-map encoding) and
    the timestamp a plain int.

    Unrolled flag by flag (no per-property loop): it runs once for every persistent
    AMQP publish (the record needs the neutral fields).
    """
    if len(block) < 2:
        raise DecodeError("property flags missing")
    flags = (block[0] << 8) | block[1]
    if flags & 0x0003:
        if flags & 0x0001:
            # Continuation flags: 0-9-1 basic has only 14 properties, so one is bogus.
            raise DecodeError("property flags continuation is not supported for basic")
        raise DecodeError("reserved property flag bit set")
    values: list[Any] = [None] * 14
    pos = 2
    try:
        if flags & 0x8000:
            values[0], pos = _shortstr(block, pos)
        if flags & 0x4000:
            values[1], pos = _shortstr(block, pos)
        if flags & 0x2000:
            end = pos + 4 + _UINT32.unpack_from(block, pos)[0]
            if end > len(block):
                raise DecodeError("table runs past the end of the frame")
            values[2] = bytes(block[pos:end])
            pos = end
        if flags & 0x1000:
            values[3] = block[pos]
            pos += 1
        if flags & 0x0800:
            values[4] = block[pos]
            pos += 1
        if flags & 0x0400:
            values[5], pos = _shortstr(block, pos)
        if flags & 0x0200:
            values[6], pos = _shortstr(block, pos)
        if flags & 0x0100:
            values[7], pos = _shortstr(block, pos)
        if flags & 0x0080:
            values[8], pos = _shortstr(block, pos)
        if flags & 0x0040:
            values[9] = _UINT64.unpack_from(block, pos)[0]
            pos += 8
        if flags & 0x0020:
            values[10], pos = _shortstr(block, pos)
        if flags & 0x0010:
            values[11], pos = _shortstr(block, pos)
        if flags & 0x0008:
            values[12], pos = _shortstr(block, pos)
        if flags & 0x0004:
            values[13], pos = _shortstr(block, pos)
    except (IndexError, struct.error):
        raise DecodeError("property block runs past the end of the frame") from None
    if pos != len(block):
        raise DecodeError("property block longer than its fields")
    return values


# How each property of a block lands in the neutral fields (``Message.field_values``
# order: content_type, content_encoding, correlation_id, reply_to, message_id, user_id,
# timestamp, encoded headers) or in the AMQP-only extras (delivery_mode, priority,
# type, app_id, cluster_id): (flag bit, kind, neutral index or -1 - extra index).
_SHORT, _OCTET, _TABLE, _STAMP = range(4)
_LANDING = (
    (0x8000, _SHORT, 0),  # content_type
    (0x4000, _SHORT, 1),  # content_encoding
    (0x2000, _TABLE, 7),  # headers
    (0x1000, _OCTET, -1),  # delivery_mode -> extras[0]
    (0x0800, _OCTET, -2),  # priority -> extras[1]
    (0x0400, _SHORT, 2),  # correlation_id
    (0x0200, _SHORT, 3),  # reply_to
    (0x0100, _SHORT, -6),  # expiration: said by Message.expiration_ms -> discarded
    (0x0080, _SHORT, 4),  # message_id
    (0x0040, _STAMP, 6),  # timestamp
    (0x0020, _SHORT, -3),  # type -> extras[2]
    (0x0010, _SHORT, 5),  # user_id
    (0x0008, _SHORT, -4),  # app_id -> extras[3]
    (0x0004, _SHORT, -5),  # cluster_id -> extras[4]
)
def split_neutral(block: bytes) -> tuple[list[Any], BasicProperties | None]:
    """A block split into the neutral fields (strings as their bytes, headers as their
    encoding: nothing is decoded) and the AMQP-only extras (see ``_extra_of``): what a
    message needs from its block, for the record of every persistent publish.

    Runs once for every persistent AMQP publish, so it is specialised: the first block
    with a given flags value compiles a straight-line splitter for exactly the
    properties those flags say are present (``_compile_split``), cached per flags value.
    """
    if len(block) < 2:
        raise DecodeError("property flags missing")
    flags = (block[0] << 8) | block[1]
    split = _SPLITTERS.get(flags)
    if split is None:
        if flags & 0x0003:
            split_properties(block)  # raises the precise error
        split = _compile_split(flags)
    try:
        return split(block)
    except (IndexError, struct.error):
        raise DecodeError("property block runs past the end of the frame") from None


_SPLITTERS: dict[int, Any] = {}  # flags -> its splitter; at most 2**14 small functions
_NEUTRAL_BITS = 0xE6D0  # the properties that are neutral fields
_EXTRA_BITS = 0x002C  # type, app_id, cluster_id: always AMQP-only extras


def _compile_split(flags: int) -> Any:
    """A splitter for blocks with these flags: one line per present property, no loop
    and no branch on kinds (as ``collections.namedtuple`` and ``dataclasses`` generate
    code).  The source is built only from this module's constants and the flags int."""
    names = ["f0", "f1", "f2", "f3", "f4", "f5", "f6", "f7"]
    extras = {"delivery_mode": "None", "priority": "None", "type": "None", "app_id": "None", "cluster_id": "None"}
    extra_names = ("delivery_mode", "priority", "type", "app_id", "cluster_id")
    lines = ["def split(block):", "    pos = 2"]
    for bit, kind, index in _LANDING:
        if not flags & bit:
            continue
        if index >= 0:
            target = names[index] = f"v{index}"
        else:
            position = -1 - index
            target = f"x{position}"
            if position < len(extra_names):
                extras[extra_names[position]] = target
        if kind == _SHORT:
            lines += ["    stop = pos + 1 + block[pos]", f"    {target} = block[pos + 1 : stop]", "    pos = stop"]
        elif kind == _OCTET:
            lines += [f"    {target} = block[pos]", "    pos += 1"]
        elif kind == _TABLE:
            lines += [
                "    stop = pos + 4 + _UINT32.unpack_from(block, pos)[0]",
                f"    {target} = block[pos:stop]",
                "    pos = stop",
            ]
        else:
            lines += [f"    {target} = _UINT64.unpack_from(block, pos)[0]", "    pos += 8"]
    # Every overrun shows here: a slice past the end is short, so pos cannot land on it.
    lines += ["    if pos != len(block):", "        raise _overrun(pos, len(block))"]
    fields = "_NO_FIELDS" if not flags & _NEUTRAL_BITS else "[" + ", ".join(
        "None" if name.startswith("f") else name for name in names
    ) + "]"
    # Extras: delivery-mode other than 2, an explicit priority 0, or type/app/cluster.
    tests = []
    if flags & 0x1000:
        tests.append(f"{extras['delivery_mode']} != 2")
    if flags & 0x0800:
        tests.append(f"{extras['priority']} == 0")
    if flags & _EXTRA_BITS:
        tests = ["True"]
    if tests:
        arguments = ", ".join(extras[name] for name in extra_names)
        lines += [f"    if {' or '.join(tests)}:", f"        return {fields}, _extra({arguments})"]
    lines.append(f"    return {fields}, None")
    namespace: dict[str, Any] = {
        "_UINT32": _UINT32,
        "_UINT64": _UINT64,
        "_NO_FIELDS": NO_FIELDS,
        "_extra": _split_extra,
        "_overrun": _overrun,
    }
    exec("\n".join(lines), namespace)  # noqa: S102  (generated from constants only)
    split = namespace["split"]
    _SPLITTERS[flags] = split
    return split


def _overrun(pos: int, end: int) -> DecodeError:
    if pos > end:
        return DecodeError("property block runs past the end of the frame")
    return DecodeError("property block longer than its fields")


def _split_extra(
    delivery_mode: int | None, priority: int | None, type_: bytes | None, app_id: bytes | None, cluster_id: bytes | None
) -> BasicProperties | None:
    if delivery_mode == 2:  # said by ``Message.persistent``
        delivery_mode = None
    if priority:  # said by ``Message.priority``; only an explicit 0 is extra
        priority = None
    if delivery_mode is None and priority is None and type_ is None and app_id is None and cluster_id is None:
        return None
    return BasicProperties(
        delivery_mode=delivery_mode,
        priority=priority,
        type=None if type_ is None else type_.decode("utf-8", "surrogateescape"),
        app_id=None if app_id is None else app_id.decode("utf-8", "surrogateescape"),
        cluster_id=None if cluster_id is None else cluster_id.decode("utf-8", "surrogateescape"),
    )


def decode_properties(block: bytes | memoryview) -> BasicProperties:
    """Decode a whole property block (flags + fields)."""
    values = split_properties(block)
    if values[2] is not None:
        values[2] = decode_table(values[2])[0]
    if values[9] is not None:
        values[9] = Timestamp(values[9])
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


# --- the AMQP extension of a neutral message -------------------------------------------

_EXTRA_NAMES = ("delivery_mode", "priority", "type", "app_id", "cluster_id")
_NOT_DECODED: Any = object()
# Blocks with no neutral field and no AMQP-only extra (delivery-mode 2 is
# ``Message.persistent``; 1 is the default): nothing to split.
_BARE_BLOCKS = frozenset((b"\x00\x00", b"\x10\x00\x02"))


def _extra_of(values: list[Any]) -> BasicProperties | None:
    """The AMQP-only part of a block's values (``split_properties`` order, see the
    module docstring), or None (the common case)."""
    delivery_mode = values[3]
    if delivery_mode == 2:  # said by ``Message.persistent``
        delivery_mode = None
    priority = values[4]
    if priority:  # said by ``Message.priority``; only an explicit 0 is extra
        priority = None
    type_, app_id, cluster_id = values[10], values[12], values[13]
    if (
        delivery_mode is None
        and priority is None
        and type_ is None
        and app_id is None
        and cluster_id is None
    ):
        return None
    return BasicProperties(
        delivery_mode=delivery_mode,
        priority=priority,
        type=type_,
        app_id=app_id,
        cluster_id=cluster_id,
    )


def _properties_values(props: BasicProperties) -> list[Any]:
    return [getattr(props, name) for name in PROPERTY_NAMES]


class AmqpExtension(Extension):
    """``properties``: the complete properties block (as published, or encoded once for
    delivery; None until then); ``wire_names``: exchange and routing key as two AMQP
    short strings, encoded once per message for every delivery; ``extra``: the AMQP-only
    properties (unset until the block is decoded).

    A publish's extension is its ``codec.ContentFrame`` (a subclass): the event the codec
    allocated anyway carries the block and names, so a publish allocates nothing more.
    """

    __slots__ = ("properties", "wire_names", "extra")
    protocol = "amqp"

    def __init__(self, properties: bytes | None, wire_names: bytes | None = None) -> None:
        self.properties = properties
        self.wire_names = wire_names

    def decode_fields(self, message: Message) -> None:
        block = self.properties
        if block is None:
            message._fields = NO_FIELDS
            return
        if block in _BARE_BLOCKS:  # delivery-mode 1 or 2 alone: most persistent publishes
            self.extra = None
            message._fields = NO_FIELDS
            return
        fields, self.extra = split_neutral(block)
        message._fields = fields

    def extra_properties(self) -> BasicProperties | None:
        extra = getattr(self, "extra", _NOT_DECODED)
        if extra is _NOT_DECODED:
            block = self.properties
            extra = self.extra = None if block is None else _extra_of(split_properties(block))
        return extra

    def plain(self, message: Message) -> bool:
        # A bare block (delivery-mode alone, or nothing) is what decode_fields maps to no
        # fields and no leftovers: decided without the two calls (the stream publish).
        fields = message._fields
        if self.properties in _BARE_BLOCKS and (fields is None or fields is NO_FIELDS):
            if fields is None:
                message._fields = NO_FIELDS
                self.extra = None
            return True
        return super().plain(message)

    def leftovers(self) -> bytes:
        try:  # set by decode_fields, which a record's field_values() has just run
            extra = self.extra
        except AttributeError:
            extra = self.extra_properties()
        return b"" if extra is None else encode_properties(extra)

    def may_have_header(self, name: str) -> bool:
        # A header's name is in the block as its UTF-8 bytes: absent there, absent.
        block = self.properties
        return block is not None and name.encode() in block

    def derived(self) -> Extension | None:
        extra = self.extra_properties()
        if extra is None:
            return None  # nothing AMQP-only: the derived message is purely neutral
        derived = AmqpExtension(None)
        derived.extra = extra
        return derived

    def __repr__(self) -> str:
        size = "-" if self.properties is None else len(self.properties)
        return f"<{type(self).__name__} properties={size}B>"


def _load_leftovers(data: bytes) -> AmqpExtension:
    extension = AmqpExtension(None)
    extension.extra = decode_properties(data) if data else None
    return extension


# Records written before the neutral record (Baedal 0.1.0 up to issue 10) stored the
# complete properties block; storage hands it back under LEGACY_RECORD_TAG, and the
# message's neutral fields are then decoded from it lazily, exactly as for a publish.
register_extension(AmqpExtension.protocol, _load_leftovers)
def _load_legacy(data: bytes) -> AmqpExtension:
    """A whole property block (records of the old format): checked here, once, because
    the block is later sent to clients as it is (a record from a Kafka producer may
    carry a header of this name with anything in it)."""
    decode_properties(data)  # raises DecodeError for a malformed block
    return AmqpExtension(data)


register_extension(LEGACY_RECORD_TAG, _load_legacy)


def properties_of(message: Message) -> BasicProperties:
    """The AMQP properties of any message (decoded from its block, or built from the
    neutral fields and the extra properties).  Treat the result as read-only."""
    extension = message.extension
    extra = None
    if isinstance(extension, AmqpExtension):
        if extension.properties is not None:
            return decode_properties(extension.properties)
        extra = extension.extra_properties()
    delivery_mode = 2 if message.persistent else None
    priority = message.priority or None
    type_ = app_id = cluster_id = None
    if extra is not None:
        if extra.delivery_mode is not None:
            delivery_mode = extra.delivery_mode
        if priority is None:
            priority = extra.priority
        type_, app_id, cluster_id = extra.type, extra.app_id, extra.cluster_id
    expiration = message.expiration_ms
    timestamp = message.timestamp
    return BasicProperties(
        content_type=message.content_type,
        content_encoding=message.content_encoding,
        headers=message.headers,
        delivery_mode=delivery_mode,
        priority=priority,
        correlation_id=message.correlation_id,
        reply_to=message.reply_to,
        expiration=None if expiration is None else str(expiration),
        message_id=message.message_id,
        timestamp=None if timestamp is None else Timestamp(timestamp),
        type=type_,
        user_id=message.user_id,
        app_id=app_id,
        cluster_id=cluster_id,
    )


_PERSISTENT_BLOCK = b"\x10\x00\x02"  # delivery-mode 2, nothing else
_EMPTY_BLOCK = b"\x00\x00"


def _short(value: str | bytes) -> bytes:
    raw = value if value.__class__ is bytes else value.encode("utf-8", "surrogateescape")  # type: ignore[union-attr]
    if len(raw) > 255:
        raise ValueError("an AMQP short string property is longer than 255 bytes")
    return bytes((len(raw),)) + raw


def encode_block(message: Message) -> bytes:
    """The AMQP properties block of a message built from neutral fields (its headers
    go in as their encoded bytes: the typed map is the field table)."""
    extension = message.extension
    extra = extension.extra_properties() if isinstance(extension, AmqpExtension) else None
    fields = message.field_values()
    if fields is NO_FIELDS and extra is None and message.expiration_ms is None and not message.priority:
        # The common case (a recovered or paged-out delivery-mode-only publish).
        return _PERSISTENT_BLOCK if message.persistent else _EMPTY_BLOCK
    flags = 0
    out = [b""]
    value: Any = fields[0]
    if value is not None:
        flags |= 0x8000
        out.append(_short(value))
    value = fields[1]
    if value is not None:
        flags |= 0x4000
        out.append(_short(value))
    value = fields[7]
    if value is not None:
        flags |= 0x2000
        out.append(value)
    delivery_mode = 2 if message.persistent else None
    priority = message.priority or None
    if extra is not None:
        if extra.delivery_mode is not None:
            delivery_mode = extra.delivery_mode
        if priority is None:
            priority = extra.priority
    if delivery_mode is not None:
        flags |= 0x1000
        out.append(bytes((delivery_mode,)))
    if priority is not None:
        flags |= 0x0800
        out.append(bytes((priority,)))
    value = fields[2]
    if value is not None:
        flags |= 0x0400
        out.append(_short(value))
    value = fields[3]
    if value is not None:
        flags |= 0x0200
        out.append(_short(value))
    value = message.expiration_ms
    if value is not None:
        flags |= 0x0100
        out.append(_short(str(value)))
    value = fields[4]
    if value is not None:
        flags |= 0x0080
        out.append(_short(value))
    value = fields[6]
    if value is not None:
        flags |= 0x0040
        out.append(_UINT64.pack(value))
    if extra is not None and extra.type is not None:
        flags |= 0x0020
        out.append(_short(extra.type))
    value = fields[5]
    if value is not None:
        flags |= 0x0010
        out.append(_short(value))
    if extra is not None:
        if extra.app_id is not None:
            flags |= 0x0008
            out.append(_short(extra.app_id))
        if extra.cluster_id is not None:
            flags |= 0x0004
            out.append(_short(extra.cluster_id))
    out[0] = bytes((flags >> 8, flags & 0xFF))
    return b"".join(out)


def wire_extension(message: Message) -> AmqpExtension:
    """The message's ``AmqpExtension`` with a complete block, encoding the block from the
    neutral fields the first time (cached on the message, so a fan-out encodes once).

    A message carrying another protocol's extension keeps it (its leftovers must survive
    a later record or dead letter); the block is then encoded per delivery.
    """
    extension = message.extension
    if isinstance(extension, AmqpExtension):
        if extension.properties is None:
            extension.properties = encode_block(message)
        return extension
    wire = AmqpExtension(encode_block(message))
    if extension is None:
        message.extension = wire
    return wire


def message_from_properties(
    exchange: str, routing_key: str, props: BasicProperties, body: bytes, expiration_ms: int | None
) -> Message:
    """A neutral message from AMQP-shaped properties given as values (the management
    API's publish): neutral fields, and an extension only for AMQP-only extras."""
    extra = _extra_of(_properties_values(props))
    extension = None
    if extra is not None:
        extension = AmqpExtension(None)
        extension.extra = extra
    timestamp = props.timestamp
    return Message.build(
        exchange,
        routing_key,
        body,
        persistent=props.delivery_mode == 2,
        priority=props.priority or 0,
        expiration_ms=expiration_ms,
        extension=extension,
        headers=props.headers,
        content_type=props.content_type,
        content_encoding=props.content_encoding,
        correlation_id=props.correlation_id,
        reply_to=props.reply_to,
        message_id=props.message_id,
        user_id=props.user_id,
        timestamp=None if timestamp is None else Timestamp(timestamp),
    )
