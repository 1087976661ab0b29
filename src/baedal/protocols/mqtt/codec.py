"""Sans-IO MQTT 3.1.1 and 5.0 codec: bytes in, packets out; packets in, bytes out.

Theory of operation
-------------------
``Parser.feed(data)`` appends to a buffer and returns every whole packet it now holds;
a partial packet waits for more bytes.  It never reads a socket and never allocates
from a peer-supplied length before checking it:

* the Remaining Length is a variable-byte integer of at most four bytes (a fifth
  continuation byte is refused at once: the unbounded-length bug behind ActiveMQ's MQTT
  CVEs), and ``fixed header + remaining length`` must fit ``max_packet_size`` *before*
  the body is waited for, so the buffer never grows past one allowed packet;
* every length inside a packet (strings, binary data, the property block) is checked
  against the bytes the packet actually has.

Errors are ``MQTTError`` only, carrying the MQTT 5.0 reason code the server answers
with (0x81 malformed packet, 0x82 protocol error, 0x95 packet too large, 0x84
unsupported protocol version...); a 3.1.1 connection is simply closed on one.  After an
error the parser is poisoned (the stream is out of sync): every later ``feed`` raises.

The protocol version of a connection is known only from its CONNECT, so the parser
decodes a CONNECT with the level it carries and then sets ``version`` for every later
packet (3.1.1 = 4, 5.0 = 5; 3.1 = 3 is decoded as 3.1.1 is).  Packets are small
``__slots__`` classes; MQTT 5.0 properties are a dict keyed by property name, with
``user_property`` a list of (name, value) pairs and ``subscription_identifier`` a list
(both may repeat); a 3.1.1 packet has an empty dict.

Checks that belong to the codec (the packet's grammar) are done here: reserved fixed
header flags, QoS 3, the CONNECT reserved flag and will/password flag rules, UTF-8
validity (and no U+0000) of every string, wildcards in a PUBLISH topic, empty
SUBSCRIBE/UNSUBSCRIBE payloads, subscription option reserved bits, unknown or
duplicated properties and properties not allowed on a packet.  What needs session state
(packet-id reuse, topic aliases, limits per client) is the server's.
"""

from __future__ import annotations

import struct
from typing import Any

from ..._speedups import load as _load_speedup

__all__ = [
    "MQTTError",
    "Parser",
    "encode",
    "Connect",
    "Connack",
    "Publish",
    "Ack",
    "Subscribe",
    "Suback",
    "Unsubscribe",
    "Unsuback",
    "Pingreq",
    "Pingresp",
    "Disconnect",
    "Auth",
]

# Packet types (fixed header high nibble).
CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = (
    8, 9, 10, 11, 12, 13, 14, 15,
)

MAX_REMAINING_LENGTH = 268_435_455  # four variable-byte-integer bytes
MAX_VARINT = MAX_REMAINING_LENGTH

# MQTT 5.0 reason codes used by the codec and the server.
SUCCESS = 0x00
GRANTED_QOS_1 = 0x01
GRANTED_QOS_2 = 0x02
DISCONNECT_WITH_WILL = 0x04
NO_MATCHING_SUBSCRIBERS = 0x10
NO_SUBSCRIPTION_EXISTED = 0x11
UNSPECIFIED_ERROR = 0x80
MALFORMED_PACKET = 0x81
PROTOCOL_ERROR = 0x82
IMPLEMENTATION_SPECIFIC_ERROR = 0x83
UNSUPPORTED_PROTOCOL_VERSION = 0x84
CLIENT_ID_NOT_VALID = 0x85
BAD_USERNAME_OR_PASSWORD = 0x86
NOT_AUTHORIZED = 0x87
SERVER_UNAVAILABLE = 0x88
SERVER_BUSY = 0x89
SERVER_SHUTTING_DOWN = 0x8B
ADMINISTRATIVE_ACTION = 0x98  # DISCONNECT: an operator closed the connection
KEEP_ALIVE_TIMEOUT = 0x8D
SESSION_TAKEN_OVER = 0x8E
TOPIC_FILTER_INVALID = 0x8F
TOPIC_NAME_INVALID = 0x90
PACKET_ID_IN_USE = 0x91
PACKET_ID_NOT_FOUND = 0x92
RECEIVE_MAXIMUM_EXCEEDED = 0x93
TOPIC_ALIAS_INVALID = 0x94
PACKET_TOO_LARGE = 0x95
QUOTA_EXCEEDED = 0x97
PAYLOAD_FORMAT_INVALID = 0x99
RETAIN_NOT_SUPPORTED = 0x9A
QOS_NOT_SUPPORTED = 0x9B
SHARED_SUBSCRIPTIONS_NOT_SUPPORTED = 0x9E
SUBSCRIPTION_IDS_NOT_SUPPORTED = 0xA1
WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED = 0xA2

# 3.1.1 CONNACK return codes.
V3_ACCEPTED = 0
V3_UNACCEPTABLE_PROTOCOL = 1
V3_IDENTIFIER_REJECTED = 2
V3_SERVER_UNAVAILABLE = 3
V3_BAD_USERNAME_OR_PASSWORD = 4
V3_NOT_AUTHORIZED = 5


class MQTTError(Exception):
    """A packet the codec refuses; ``reason_code`` is the MQTT 5.0 reason to answer with."""

    def __init__(self, reason_code: int, text: str) -> None:
        super().__init__(text)
        self.reason_code = reason_code
        self.text = text
        # The whole packets decoded in the same ``feed`` before the bad one: the server
        # still acts on them (the stream was in sync up to there).
        self.packets: list[Packet] = []


# --- properties (MQTT 5.0 section 2.2.2.2) ------------------------------------------------

_BYTE, _U16, _U32, _VARINT, _UTF8, _BINARY, _PAIR = range(7)

# id -> (name, type, packet types it may appear on)
_C, _CA, _P, _PA, _S, _SA, _U, _UA, _D, _AU, _W = (
    CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK,
    DISCONNECT, AUTH, 0,  # 0: will properties (in the CONNECT payload)
)
_ACKS = frozenset((PUBACK, PUBREC, PUBREL, PUBCOMP))
PROPERTIES: dict[int, tuple[str, int, frozenset[int]]] = {
    0x01: ("payload_format_indicator", _BYTE, frozenset((_P, _W))),
    0x02: ("message_expiry_interval", _U32, frozenset((_P, _W))),
    0x03: ("content_type", _UTF8, frozenset((_P, _W))),
    0x08: ("response_topic", _UTF8, frozenset((_P, _W))),
    0x09: ("correlation_data", _BINARY, frozenset((_P, _W))),
    0x0B: ("subscription_identifier", _VARINT, frozenset((_P, _S))),
    0x11: ("session_expiry_interval", _U32, frozenset((_C, _CA, _D))),
    0x12: ("assigned_client_identifier", _UTF8, frozenset((_CA,))),
    0x13: ("server_keep_alive", _U16, frozenset((_CA,))),
    0x15: ("authentication_method", _UTF8, frozenset((_C, _CA, _AU))),
    0x16: ("authentication_data", _BINARY, frozenset((_C, _CA, _AU))),
    0x17: ("request_problem_information", _BYTE, frozenset((_C,))),
    0x18: ("will_delay_interval", _U32, frozenset((_W,))),
    0x19: ("request_response_information", _BYTE, frozenset((_C,))),
    0x1A: ("response_information", _UTF8, frozenset((_CA,))),
    0x1C: ("server_reference", _UTF8, frozenset((_CA, _D))),
    0x1F: ("reason_string", _UTF8, frozenset((_CA, _SA, _UA, _D, _AU)) | _ACKS),
    0x21: ("receive_maximum", _U16, frozenset((_C, _CA))),
    0x22: ("topic_alias_maximum", _U16, frozenset((_C, _CA))),
    0x23: ("topic_alias", _U16, frozenset((_P,))),
    0x24: ("maximum_qos", _BYTE, frozenset((_CA,))),
    0x25: ("retain_available", _BYTE, frozenset((_CA,))),
    0x26: ("user_property", _PAIR, frozenset((_C, _CA, _P, _W, _S, _SA, _U, _UA, _D, _AU)) | _ACKS),
    0x27: ("maximum_packet_size", _U32, frozenset((_C, _CA))),
    0x28: ("wildcard_subscription_available", _BYTE, frozenset((_CA,))),
    0x29: ("subscription_identifier_available", _BYTE, frozenset((_CA,))),
    0x2A: ("shared_subscription_available", _BYTE, frozenset((_CA,))),
}
_PROPERTY_IDS = {name: (pid, kind) for pid, (name, kind, _) in PROPERTIES.items()}
_REPEATABLE = frozenset(("user_property", "subscription_identifier"))

_U16S = struct.Struct(">H")
_U32S = struct.Struct(">I")


# --- packets ------------------------------------------------------------------------------


class Packet:
    __slots__ = ()
    type = 0

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and all(
            getattr(self, s) == getattr(other, s) for s in self.__slots__
        )

    def __repr__(self) -> str:
        fields = ", ".join(f"{s}={getattr(self, s)!r}" for s in self.__slots__)
        return f"{type(self).__name__}({fields})"


class Will:
    __slots__ = ("topic", "payload", "qos", "retain", "properties")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties or {}

    __eq__ = Packet.__eq__
    __repr__ = Packet.__repr__


class Connect(Packet):
    __slots__ = ("protocol_name", "version", "clean_start", "keep_alive", "client_id",
                 "will", "username", "password", "properties")
    type = CONNECT

    def __init__(self, client_id: str = "", *, version: int = 4, clean_start: bool = True,
                 keep_alive: int = 60, will: Will | None = None, username: str | None = None,
                 password: bytes | None = None, properties: dict[str, Any] | None = None,
                 protocol_name: str = "MQTT") -> None:
        self.protocol_name = protocol_name
        self.version = version
        self.clean_start = clean_start
        self.keep_alive = keep_alive
        self.client_id = client_id
        self.will = will
        self.username = username
        self.password = password
        self.properties = properties or {}


class Connack(Packet):
    __slots__ = ("session_present", "reason_code", "properties")
    type = CONNACK

    def __init__(self, session_present: bool = False, reason_code: int = 0,
                 properties: dict[str, Any] | None = None) -> None:
        self.session_present = session_present
        self.reason_code = reason_code
        self.properties = properties or {}


class Publish(Packet):
    __slots__ = ("topic", "payload", "qos", "retain", "dup", "packet_id", "properties")
    type = PUBLISH

    def __init__(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                 dup: bool = False, packet_id: int | None = None,
                 properties: dict[str, Any] | None = None) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.dup = dup
        self.packet_id = packet_id
        self.properties = properties or {}


class Ack(Packet):
    """PUBACK, PUBREC, PUBREL or PUBCOMP (``kind`` is the packet type)."""

    __slots__ = ("kind", "packet_id", "reason_code", "properties")

    def __init__(self, kind: int, packet_id: int, reason_code: int = 0,
                 properties: dict[str, Any] | None = None) -> None:
        self.kind = kind
        self.packet_id = packet_id
        self.reason_code = reason_code
        self.properties = properties or {}

    @property
    def type(self) -> int:  # type: ignore[override]
        return self.kind


class Subscription:
    """One topic filter of a SUBSCRIBE with its options."""

    __slots__ = ("topic_filter", "qos", "no_local", "retain_as_published", "retain_handling")

    def __init__(self, topic_filter: str, qos: int = 0, no_local: bool = False,
                 retain_as_published: bool = False, retain_handling: int = 0) -> None:
        self.topic_filter = topic_filter
        self.qos = qos
        self.no_local = no_local
        self.retain_as_published = retain_as_published
        self.retain_handling = retain_handling

    __eq__ = Packet.__eq__
    __repr__ = Packet.__repr__


class Subscribe(Packet):
    __slots__ = ("packet_id", "subscriptions", "properties")
    type = SUBSCRIBE

    def __init__(self, packet_id: int, subscriptions: list[Subscription],
                 properties: dict[str, Any] | None = None) -> None:
        self.packet_id = packet_id
        self.subscriptions = subscriptions
        self.properties = properties or {}


class Suback(Packet):
    __slots__ = ("packet_id", "reason_codes", "properties")
    type = SUBACK

    def __init__(self, packet_id: int, reason_codes: list[int],
                 properties: dict[str, Any] | None = None) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes
        self.properties = properties or {}


class Unsubscribe(Packet):
    __slots__ = ("packet_id", "topic_filters", "properties")
    type = UNSUBSCRIBE

    def __init__(self, packet_id: int, topic_filters: list[str],
                 properties: dict[str, Any] | None = None) -> None:
        self.packet_id = packet_id
        self.topic_filters = topic_filters
        self.properties = properties or {}


class Unsuback(Packet):
    __slots__ = ("packet_id", "reason_codes", "properties")
    type = UNSUBACK

    def __init__(self, packet_id: int, reason_codes: list[int] | None = None,
                 properties: dict[str, Any] | None = None) -> None:
        self.packet_id = packet_id
        self.reason_codes = reason_codes or []
        self.properties = properties or {}


class Pingreq(Packet):
    __slots__ = ()
    type = PINGREQ


class Pingresp(Packet):
    __slots__ = ()
    type = PINGRESP


class Disconnect(Packet):
    __slots__ = ("reason_code", "properties")
    type = DISCONNECT

    def __init__(self, reason_code: int = 0, properties: dict[str, Any] | None = None) -> None:
        self.reason_code = reason_code
        self.properties = properties or {}


class Auth(Packet):
    __slots__ = ("reason_code", "properties")
    type = AUTH

    def __init__(self, reason_code: int = 0, properties: dict[str, Any] | None = None) -> None:
        self.reason_code = reason_code
        self.properties = properties or {}


# --- decoding -----------------------------------------------------------------------------


class _Reader:
    """Bounds-checked reads over one packet's body."""

    __slots__ = ("data", "pos", "end")

    def __init__(self, data: bytes | memoryview, pos: int = 0, end: int | None = None) -> None:
        self.data = data
        self.pos = pos
        self.end = len(data) if end is None else end

    def remaining(self) -> int:
        return self.end - self.pos

    def take(self, n: int) -> bytes:
        if n > self.end - self.pos:
            raise MQTTError(MALFORMED_PACKET, "packet shorter than its fields")
        start = self.pos
        self.pos = start + n
        return bytes(self.data[start:self.pos])

    def byte(self) -> int:
        if self.pos >= self.end:
            raise MQTTError(MALFORMED_PACKET, "packet shorter than its fields")
        value = self.data[self.pos]
        self.pos += 1
        return value

    def u16(self) -> int:
        if self.end - self.pos < 2:
            raise MQTTError(MALFORMED_PACKET, "packet shorter than its fields")
        value: int = _U16S.unpack_from(self.data, self.pos)[0]
        self.pos += 2
        return value

    def u32(self) -> int:
        if self.end - self.pos < 4:
            raise MQTTError(MALFORMED_PACKET, "packet shorter than its fields")
        value: int = _U32S.unpack_from(self.data, self.pos)[0]
        self.pos += 4
        return value

    def varint(self) -> int:
        value = 0
        for shift in (0, 7, 14, 21):
            b = self.byte()
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
        raise MQTTError(MALFORMED_PACKET, "variable byte integer longer than 4 bytes")

    def binary(self) -> bytes:
        return self.take(self.u16())

    def utf8(self) -> str:
        return check_utf8(self.binary())


def check_utf8(raw: bytes) -> str:
    """A string field: well-formed UTF-8 (no surrogates) without U+0000 (MQTT 1.5.4)."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise MQTTError(MALFORMED_PACKET, "string is not valid UTF-8") from None
    if "\x00" in text:
        raise MQTTError(MALFORMED_PACKET, "string contains U+0000")
    return text


def _read_properties(reader: _Reader, where: int) -> dict[str, Any]:
    length = reader.varint()
    if length > reader.remaining():
        raise MQTTError(MALFORMED_PACKET, "property length larger than the packet")
    end = reader.pos + length
    sub = _Reader(reader.data, reader.pos, end)
    reader.pos = end
    properties: dict[str, Any] = {}
    while sub.pos < end:
        pid = sub.varint()
        spec = PROPERTIES.get(pid)
        if spec is None:
            raise MQTTError(MALFORMED_PACKET, f"unknown property 0x{pid:02x}")
        name, kind, allowed = spec
        if where not in allowed:
            raise MQTTError(PROTOCOL_ERROR, f"property {name} not allowed on this packet")
        if kind == _BYTE:
            value: Any = sub.byte()
        elif kind == _U16:
            value = sub.u16()
        elif kind == _U32:
            value = sub.u32()
        elif kind == _VARINT:
            value = sub.varint()
        elif kind == _UTF8:
            value = sub.utf8()
        elif kind == _BINARY:
            value = sub.binary()
        else:
            value = (sub.utf8(), sub.utf8())
        if name in _REPEATABLE:
            properties.setdefault(name, []).append(value)
        elif name in properties:
            raise MQTTError(PROTOCOL_ERROR, f"property {name} appears twice")
        else:
            properties[name] = value
    _check_property_values(properties)
    return properties


def _check_property_values(properties: dict[str, Any]) -> None:
    for name in ("payload_format_indicator", "request_problem_information",
                 "request_response_information", "maximum_qos", "retain_available",
                 "wildcard_subscription_available", "subscription_identifier_available",
                 "shared_subscription_available"):
        value = properties.get(name)
        if value is not None and value > (2 if name == "maximum_qos" else 1):
            raise MQTTError(PROTOCOL_ERROR, f"property {name} has an invalid value {value}")
    for name in ("receive_maximum", "maximum_packet_size"):
        if properties.get(name) == 0:
            raise MQTTError(PROTOCOL_ERROR, f"property {name} must not be 0")
    if 0 in properties.get("subscription_identifier", ()):
        raise MQTTError(PROTOCOL_ERROR, "subscription identifier must not be 0")
    if properties.get("topic_alias") == 0:
        raise MQTTError(PROTOCOL_ERROR, "topic alias must not be 0")


def _packet_id(reader: _Reader) -> int:
    packet_id = reader.u16()
    if packet_id == 0:
        raise MQTTError(MALFORMED_PACKET, "packet identifier 0")
    return packet_id


def _end(reader: _Reader) -> None:
    if reader.pos != reader.end:
        raise MQTTError(MALFORMED_PACKET, "bytes left over at the end of the packet")


def has_wildcard(topic: str) -> bool:
    return "+" in topic or "#" in topic


def check_topic_filter(topic_filter: str) -> None:
    """``+`` and ``#`` only as whole levels, ``#`` last (MQTT 4.7.1)."""
    if not topic_filter:
        raise MQTTError(TOPIC_FILTER_INVALID, "empty topic filter")
    levels = topic_filter.split("/")
    for i, level in enumerate(levels):
        if "#" in level and (level != "#" or i != len(levels) - 1):
            raise MQTTError(TOPIC_FILTER_INVALID, f"'#' misplaced in topic filter {topic_filter!r}")
        if "+" in level and level != "+":
            raise MQTTError(TOPIC_FILTER_INVALID, f"'+' misplaced in topic filter {topic_filter!r}")


def decode_packet(ptype: int, flags: int, body: bytes | memoryview, version: int) -> Packet:
    """One packet from its fixed-header type/flags and its body."""
    reader = _Reader(body)
    v5 = version == 5
    if ptype == PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            raise MQTTError(MALFORMED_PACKET, "QoS 3 in PUBLISH")
        dup = bool(flags & 8)
        if dup and qos == 0:
            raise MQTTError(MALFORMED_PACKET, "DUP set on a QoS 0 PUBLISH")
        topic = reader.utf8()
        if has_wildcard(topic):
            raise MQTTError(TOPIC_NAME_INVALID, "wildcard in a PUBLISH topic")
        packet_id = _packet_id(reader) if qos else None
        properties = _read_properties(reader, PUBLISH) if v5 else {}
        if not topic and "topic_alias" not in properties:
            raise MQTTError(PROTOCOL_ERROR if v5 else MALFORMED_PACKET, "empty PUBLISH topic")
        payload = reader.take(reader.remaining())
        return Publish(topic, payload, qos, bool(flags & 1), dup, packet_id, properties)
    if ptype in (PUBREL, SUBSCRIBE, UNSUBSCRIBE):
        if flags != 2:
            raise MQTTError(MALFORMED_PACKET, f"reserved flags {flags:#x} on packet type {ptype}")
    elif flags:
        raise MQTTError(MALFORMED_PACKET, f"reserved flags {flags:#x} on packet type {ptype}")
    if ptype in _ACKS:
        packet_id = _packet_id(reader)
        reason = 0
        properties = {}
        if v5 and reader.remaining():
            reason = reader.byte()
            if reader.remaining():
                properties = _read_properties(reader, ptype)
        _end(reader)
        return Ack(ptype, packet_id, reason, properties)
    if ptype == CONNECT:
        return _decode_connect(reader)
    if ptype == SUBSCRIBE:
        packet_id = _packet_id(reader)
        properties = _read_properties(reader, SUBSCRIBE) if v5 else {}
        subscriptions = []
        while reader.remaining():
            topic_filter = reader.utf8()
            options = reader.byte()
            if options & (0xC0 if v5 else 0xFC):
                raise MQTTError(MALFORMED_PACKET, "reserved subscription option bits set")
            qos = options & 3
            if qos == 3:
                raise MQTTError(MALFORMED_PACKET, "QoS 3 in SUBSCRIBE")
            retain_handling = (options >> 4) & 3
            if retain_handling == 3:
                raise MQTTError(PROTOCOL_ERROR, "retain handling 3")
            subscriptions.append(
                Subscription(topic_filter, qos, bool(options & 4), bool(options & 8), retain_handling)
            )
        if not subscriptions:
            raise MQTTError(PROTOCOL_ERROR, "SUBSCRIBE without a topic filter")
        return Subscribe(packet_id, subscriptions, properties)
    if ptype == UNSUBSCRIBE:
        packet_id = _packet_id(reader)
        properties = _read_properties(reader, UNSUBSCRIBE) if v5 else {}
        filters = []
        while reader.remaining():
            filters.append(reader.utf8())
        if not filters:
            raise MQTTError(PROTOCOL_ERROR, "UNSUBSCRIBE without a topic filter")
        return Unsubscribe(packet_id, filters, properties)
    if ptype in (PINGREQ, PINGRESP):
        _end(reader)
        return Pingreq() if ptype == PINGREQ else Pingresp()
    if ptype in (DISCONNECT, AUTH):
        if not v5:
            if ptype == AUTH:
                raise MQTTError(PROTOCOL_ERROR, "AUTH is an MQTT 5.0 packet")
            _end(reader)
            return Disconnect()
        reason = reader.byte() if reader.remaining() else 0
        properties = _read_properties(reader, ptype) if reader.remaining() else {}
        _end(reader)
        return Disconnect(reason, properties) if ptype == DISCONNECT else Auth(reason, properties)
    if ptype == CONNACK:
        ack_flags = reader.byte()
        if ack_flags & 0xFE:
            raise MQTTError(MALFORMED_PACKET, "reserved CONNACK flags set")
        reason = reader.byte()
        properties = _read_properties(reader, CONNACK) if v5 else {}
        _end(reader)
        return Connack(bool(ack_flags & 1), reason, properties)
    if ptype in (SUBACK, UNSUBACK):
        packet_id = _packet_id(reader)
        properties = _read_properties(reader, ptype) if v5 else {}
        codes = list(reader.take(reader.remaining()))
        if ptype == SUBACK:
            return Suback(packet_id, codes, properties)
        return Unsuback(packet_id, codes, properties)
    raise MQTTError(MALFORMED_PACKET, f"reserved packet type {ptype}")


def _decode_connect(reader: _Reader) -> Connect:
    protocol_name = reader.utf8()
    level = reader.byte()
    if (protocol_name, level) not in (("MQTT", 4), ("MQTT", 5), ("MQIsdp", 3)):
        raise MQTTError(UNSUPPORTED_PROTOCOL_VERSION,
                        f"unsupported protocol {protocol_name!r} level {level}")
    flags = reader.byte()
    if flags & 1:
        raise MQTTError(MALFORMED_PACKET, "CONNECT reserved flag set")
    will_flag = bool(flags & 4)
    will_qos = (flags >> 3) & 3
    will_retain = bool(flags & 0x20)
    if will_qos == 3:
        raise MQTTError(MALFORMED_PACKET, "will QoS 3")
    if not will_flag and (will_qos or will_retain):
        raise MQTTError(MALFORMED_PACKET, "will QoS/retain set without a will")
    has_password = bool(flags & 0x40)
    has_username = bool(flags & 0x80)
    if has_password and not has_username and level != 5:
        raise MQTTError(MALFORMED_PACKET, "password without a user name")
    keep_alive = reader.u16()
    v5 = level == 5
    properties = _read_properties(reader, CONNECT) if v5 else {}
    client_id = reader.utf8()
    will = None
    if will_flag:
        will_properties = _read_properties(reader, _W) if v5 else {}
        will_topic = reader.utf8()
        if not will_topic or has_wildcard(will_topic):
            raise MQTTError(TOPIC_NAME_INVALID, "invalid will topic")
        will = Will(will_topic, reader.binary(), will_qos, will_retain, will_properties)
    username = reader.utf8() if has_username else None
    password = reader.binary() if has_password else None
    _end(reader)
    return Connect(client_id, version=level, clean_start=bool(flags & 2), keep_alive=keep_alive,
                   will=will, username=username, password=password, properties=properties,
                   protocol_name=protocol_name)


# Parser.feed's inline loop compiled (optional, and off with BAEDAL_NO_SPEEDUPS: see
# baedal/_speedups/_mqtt.c for its contract), or None.
_split: Any = getattr(_load_speedup("_mqtt"), "split", None)
_TOPIC_CACHE_SIZE = 256  # validated PUBLISH topics remembered per connection (Parser)


class Parser:
    """Incremental decoder of one connection's byte stream (see the module docstring).

    The common packets of a busy connection, PUBLISH (without MQTT 5.0 properties) and a
    plain PUBACK, are decoded inline in ``feed`` rather than through ``decode_packet``'s
    bounds-checked reader: they are most of a publisher's and a subscriber's input.  The
    inline path takes exactly the packets it can decode completely and leaves anything
    unusual (a flag or length to refuse, properties, a packet id 0) to
    ``decode_packet``, so both paths give the same packets and the same errors (and
    ``_speedups/_mqtt.c``, when built, runs that inline loop for the packets it can take
    and hands every other one back to it: the same packets again).  A
    validated topic is remembered by its raw bytes (at most ``_TOPIC_CACHE_SIZE``; the
    cache is dropped whole when full), so a device publishing to a few topics pays the
    UTF-8 and wildcard checks once.

    Input is parsed from the ``bytes`` a read gave when nothing is buffered (slices of
    ``bytes`` are the payloads, one copy each); only an incomplete tail is kept.  While
    a packet larger than what is buffered is awaited, reads are only appended
    (``_needed``), so a large packet arriving in many reads is not rescanned.
    """

    __slots__ = ("max_packet_size", "version", "_buffer", "_failed", "_needed", "_topics")

    def __init__(self, max_packet_size: int = MAX_REMAINING_LENGTH + 5, version: int | None = None) -> None:
        self.max_packet_size = max_packet_size
        self.version = version
        self._buffer: bytearray | None = None  # an incomplete packet's bytes (none: idle)
        self._failed: MQTTError | None = None
        self._needed = 0  # bytes the buffer must hold before a packet can be whole
        self._topics: dict[bytes, str] | None = None  # created at the first PUBLISH

    def is_idle(self) -> bool:
        """Nothing half-read, no topic cache, not failed: a new ``Parser`` of the same
        version would do the same (the server drops an idle connection's parser)."""
        return self._buffer is None and self._topics is None and self._failed is None

    def feed(self, data: bytes) -> list[Packet]:
        if self._failed is not None:
            raise MQTTError(self._failed.reason_code, self._failed.text)
        buffer = self._buffer
        view: bytes
        if buffer is not None:
            buffer += data
            if len(buffer) < self._needed:
                return []  # a large packet still arriving: nothing to scan
            self._needed = 0
            view = bytes(buffer)
            self._buffer = None
        else:
            view = bytes(data) if data.__class__ is not bytes else data
        packets: list[Packet] = []
        append = packets.append
        pos = 0
        try:
            size = len(view)
            while size - pos >= 2:
                if _split is not None and self.version is not None:
                    # The inline packets below, in C while they last (see _speedups).
                    pos = _split(view, pos, self.version, self._topics, self.max_packet_size,
                                 append, Publish, Ack)
                    if size - pos < 2:
                        break
                first = view[pos]
                remaining = view[pos + 1]
                i = pos + 2
                if remaining & 0x80:
                    # A multi-byte remaining length (a one-byte one, < 128, is the
                    # common small packet: read above without the loop).
                    remaining &= 0x7F
                    shift = 7
                    while True:
                        if i >= size:
                            break
                        b = view[i]
                        remaining |= (b & 0x7F) << shift
                        i += 1
                        if not b & 0x80:
                            shift = -1
                            break
                        shift += 7
                        if shift == 28:
                            raise MQTTError(MALFORMED_PACKET, "remaining length longer than 4 bytes")
                    if shift != -1:
                        break  # the remaining length is not whole yet
                total = i - pos + remaining
                if total > self.max_packet_size:
                    raise MQTTError(PACKET_TOO_LARGE,
                                    f"packet of {total} bytes over the limit of {self.max_packet_size}")
                end = i + remaining
                if end > size:
                    self._needed = total
                    break
                ptype = first >> 4
                version = self.version
                if ptype == PUBLISH and version is not None and remaining >= 3:
                    # Inline PUBLISH: QoS 0-2, DUP only with QoS > 0, a non-empty topic
                    # (cached or checked here), a packet id other than 0, no properties.
                    qos = (first >> 1) & 3
                    if qos != 3 and (qos or not first & 8):
                        start = i + 2
                        topic_end = start + ((view[i] << 8) | view[i + 1])
                        body = topic_end + 2 if qos else topic_end
                        packet_id = ((view[topic_end] << 8) | view[topic_end + 1]) if qos and body <= end else None
                        if version == 5:
                            body += 1
                        if (
                            start < topic_end and body <= end and packet_id != 0
                            and (version == 4 or view[body - 1] == 0)
                        ):
                            raw = view[start:topic_end]
                            topics = self._topics
                            if topics is None:
                                topics = self._topics = {}
                            topic = topics.get(raw)
                            if topic is None:
                                topic = check_utf8(raw)
                                if has_wildcard(topic):
                                    raise MQTTError(TOPIC_NAME_INVALID, "wildcard in a PUBLISH topic")
                                if len(topics) >= _TOPIC_CACHE_SIZE:
                                    topics.clear()
                                topics[raw] = topic
                            append(Publish(topic, view[body:end], qos, first & 1 == 1, first & 8 == 8,
                                           packet_id, {}))
                            pos = end
                            continue
                elif first == 0x40 and remaining == 2 and version is not None:
                    packet_id = (view[i] << 8) | view[i + 1]
                    if packet_id:  # a plain PUBACK (inline)
                        append(Ack(PUBACK, packet_id))
                        pos = end
                        continue
                if ptype == 0:
                    raise MQTTError(MALFORMED_PACKET, "reserved packet type 0")
                body_view = memoryview(view)[i:end]
                try:
                    if version is None and ptype != CONNECT:
                        version = 4
                    else:
                        version = version or 4
                    packet = decode_packet(ptype, first & 0x0F, body_view, version)
                finally:
                    body_view.release()
                if isinstance(packet, Connect) and self.version is None:
                    self.version = 5 if packet.version == 5 else 4
                append(packet)
                pos = end
            if pos < size:
                self._buffer = bytearray(view[pos:] if pos else view)
        except MQTTError as exc:
            self._failed = exc
            exc.packets = packets
            self._buffer = None
            raise
        return packets

    @property
    def buffered(self) -> int:
        return len(self._buffer) if self._buffer is not None else 0


# --- encoding -----------------------------------------------------------------------------


def encode_varint(value: int) -> bytes:
    if not 0 <= value <= MAX_VARINT:
        raise ValueError(f"variable byte integer out of range: {value}")
    out = bytearray()
    while True:
        b = value & 0x7F
        value >>= 7
        if value:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    return _U16S.pack(len(raw)) + raw


def _binary(raw: bytes) -> bytes:
    return _U16S.pack(len(raw)) + raw


def encode_properties(properties: dict[str, Any]) -> bytes:
    out = bytearray()
    for name, value in properties.items():
        pid, kind = _PROPERTY_IDS[name]
        values = value if name in _REPEATABLE else (value,)
        for v in values:
            out += encode_varint(pid)
            if kind == _BYTE:
                out.append(v)
            elif kind == _U16:
                out += _U16S.pack(v)
            elif kind == _U32:
                out += _U32S.pack(v)
            elif kind == _VARINT:
                out += encode_varint(v)
            elif kind == _UTF8:
                out += _utf8(v)
            elif kind == _BINARY:
                out += _binary(v)
            else:
                out += _utf8(v[0]) + _utf8(v[1])
    return encode_varint(len(out)) + bytes(out)


def _frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


_HEAD_SHORT = struct.Struct(">BB")  # fixed header with a one-byte remaining length
_PUBACK_WIRE = struct.Struct(">BBH")  # a whole PUBACK/PUBREC/PUBREL/PUBCOMP without reason


def encode_ack(kind: int, packet_id: int) -> bytes:
    """A PUBACK, PUBREC, PUBREL or PUBCOMP with reason 0 and no properties (the same
    bytes in 3.1.1 and 5.0)."""
    return _PUBACK_WIRE.pack((kind << 4) | (2 if kind == PUBREL else 0), 2, packet_id)


def encode_topic(topic: str) -> bytes:
    """A topic as a PUBLISH carries it (length-prefixed UTF-8): a sender of many
    PUBLISHes to one topic encodes it once (``encode_publish``)."""
    return _utf8(topic)


def encode_publish(topic_wire: bytes, payload: bytes, qos: int, retain: bool, dup: bool,
                   packet_id: int | None, properties: bytes | None) -> bytes:
    """A PUBLISH from its pieces: the topic from ``encode_topic``, the MQTT 5.0 property
    block already encoded (``None`` for 3.1.1)."""
    first = 0x30 | (8 if dup else 0) | (qos << 1) | (1 if retain else 0)
    size = len(topic_wire) + len(payload)
    if qos:
        assert packet_id is not None
        size += 2
    if properties is not None:
        size += len(properties)
    head = _HEAD_SHORT.pack(first, size) if size < 128 else bytes((first,)) + encode_varint(size)
    if qos:
        if properties is None:
            return b"".join((head, topic_wire, _U16S.pack(packet_id), payload))  # type: ignore[arg-type]
        return b"".join((head, topic_wire, _U16S.pack(packet_id), properties, payload))  # type: ignore[arg-type]
    if properties is None:
        return b"".join((head, topic_wire, payload))
    return b"".join((head, topic_wire, properties, payload))


def encode(packet: Packet, version: int = 4) -> bytes:
    """The wire bytes of ``packet`` for a connection of ``version`` (4 or 5)."""
    v5 = version == 5
    if isinstance(packet, Publish):
        return encode_publish(_utf8(packet.topic), packet.payload, packet.qos, packet.retain, packet.dup,
                              packet.packet_id, encode_properties(packet.properties) if v5 else None)
    if isinstance(packet, Ack):
        body = _U16S.pack(packet.packet_id)
        if v5 and (packet.reason_code or packet.properties):
            body += bytes((packet.reason_code,))
            if packet.properties:
                body += encode_properties(packet.properties)
        return _frame((packet.kind << 4) | (2 if packet.kind == PUBREL else 0), body)
    if isinstance(packet, Connack):
        body = bytes((1 if packet.session_present else 0, packet.reason_code))
        if v5:
            body += encode_properties(packet.properties)
        return _frame(0x20, body)
    if isinstance(packet, Suback | Unsuback):
        body = _U16S.pack(packet.packet_id)
        if v5:
            body += encode_properties(packet.properties)
        if v5 or isinstance(packet, Suback):
            body += bytes(packet.reason_codes)
        return _frame(packet.type << 4, body)
    if isinstance(packet, Pingreq):
        return b"\xc0\x00"
    if isinstance(packet, Pingresp):
        return b"\xd0\x00"
    if isinstance(packet, Disconnect | Auth):
        if not v5:
            return b"\xe0\x00"
        body = b""
        if packet.reason_code or packet.properties:
            body = bytes((packet.reason_code,))
            if packet.properties:
                body += encode_properties(packet.properties)
        return _frame(packet.type << 4, body)
    if isinstance(packet, Subscribe):
        body = _U16S.pack(packet.packet_id)
        if v5:
            body += encode_properties(packet.properties)
        for s in packet.subscriptions:
            options = s.qos | (4 if s.no_local else 0) | (8 if s.retain_as_published else 0)
            options |= s.retain_handling << 4
            body += _utf8(s.topic_filter) + bytes((options,))
        return _frame(0x82, body)
    if isinstance(packet, Unsubscribe):
        body = _U16S.pack(packet.packet_id)
        if v5:
            body += encode_properties(packet.properties)
        for f in packet.topic_filters:
            body += _utf8(f)
        return _frame(0xA2, body)
    if isinstance(packet, Connect):
        return _encode_connect(packet)
    raise TypeError(f"cannot encode {packet!r}")


def _encode_connect(packet: Connect) -> bytes:
    v5 = packet.version == 5
    flags = 2 if packet.clean_start else 0
    will = packet.will
    if will is not None:
        flags |= 4 | (will.qos << 3) | (0x20 if will.retain else 0)
    if packet.password is not None:
        flags |= 0x40
    if packet.username is not None:
        flags |= 0x80
    body = _utf8(packet.protocol_name) + bytes((packet.version, flags)) + _U16S.pack(packet.keep_alive)
    if v5:
        body += encode_properties(packet.properties)
    body += _utf8(packet.client_id)
    if will is not None:
        if v5:
            body += encode_properties(will.properties)
        body += _utf8(will.topic) + _binary(will.payload)
    if packet.username is not None:
        body += _utf8(packet.username)
    if packet.password is not None:
        body += _binary(packet.password)
    return _frame(0x10, body)
