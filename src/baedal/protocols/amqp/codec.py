"""Sans-IO AMQP 0-9-1 framing: bytes in, events out; events in, bytes out.

Theory of operation
-------------------
``FrameReader.feed(data)`` parses every complete frame in ``data`` (plus what was left
over from the previous call) and returns a list of events:

* ``ProtocolHeader`` – the 8-byte preamble (only as the first event of a connection);
* ``MethodFrame`` – a method without content;
* ``ContentFrame`` – a content-bearing method (``basic.publish``...) with its properties
  block and its body, assembled from the method → header → body* frame sequence;
* ``Heartbeat``.

Content assembly is a per-channel state machine (AWAITING_METHOD → AWAITING_HEADER →
AWAITING_BODY); any frame that is not legal in the current state is an
``UNEXPECTED_FRAME`` (505), exactly as RabbitMQ's command assembler does.  Malformed
frames are ``FRAME_ERROR`` (501).  Errors are raised as ``ConnectionFault`` (hard,
connection.close) or ``ChannelFault`` (soft, channel.close) carrying the reply code,
text and the class/method ids for the close method.  Once the reader has raised a
connection fault it stays failed: a broken stream has no trustworthy frame boundary.

Bounds: the reader holds at most one partial frame, and a frame's payload may not exceed
the negotiated ``frame_max`` (501 otherwise; RabbitMQ allows the 8 bytes of frame
overhead on top, so do we), so its buffer is bounded by ``frame_max + 8``.  The
``basic.publish`` fast path takes only frames the general path would accept and hands
anything else (an oversized body frame included) to the general path, so both give the
same answer.
A content body may not exceed ``max_message_size`` (406 on the channel, as RabbitMQ).

Nothing here touches a socket, a clock or the event loop.
"""

from __future__ import annotations

import struct
from typing import Any

from ...core.properties import DecodeError
from . import spec
from .properties import AmqpExtension

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_MIN_SIZE = 4096  # RabbitMQ 3.10 accepts a tune-ok frame_max down to 4096

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_INDEX = struct.Struct(">I")
_CONTENT_HEADER = struct.Struct(">HHQ")
_HEARTBEAT = b"\x08\x00\x00\x00\x00\x00\x00\xce"

# Reply codes (spec JSON constants).
REPLY_SUCCESS = 200
CONTENT_TOO_LARGE = 311
NO_ROUTE = 312
NO_CONSUMERS = 313
CONNECTION_FORCED = 320
INVALID_PATH = 402
ACCESS_REFUSED = 403
NOT_FOUND = 404
RESOURCE_LOCKED = 405
PRECONDITION_FAILED = 406
FRAME_ERROR = 501
SYNTAX_ERROR = 502
COMMAND_INVALID = 503
CHANNEL_ERROR = 504
UNEXPECTED_FRAME = 505
RESOURCE_ERROR = 506
NOT_ALLOWED = 530
NOT_IMPLEMENTED = 540
INTERNAL_ERROR = 541

REPLY_NAMES = {
    200: "REPLY_SUCCESS",
    311: "CONTENT_TOO_LARGE",
    312: "NO_ROUTE",
    313: "NO_CONSUMERS",
    320: "CONNECTION_FORCED",
    402: "INVALID_PATH",
    403: "ACCESS_REFUSED",
    404: "NOT_FOUND",
    405: "RESOURCE_LOCKED",
    406: "PRECONDITION_FAILED",
    501: "FRAME_ERROR",
    502: "SYNTAX_ERROR",
    503: "COMMAND_INVALID",
    504: "CHANNEL_ERROR",
    505: "UNEXPECTED_FRAME",
    506: "RESOURCE_ERROR",
    530: "NOT_ALLOWED",
    540: "NOT_IMPLEMENTED",
    541: "INTERNAL_ERROR",
}
HARD_ERRORS = frozenset({320, 402, 501, 502, 503, 504, 505, 506, 530, 540, 541})


class AMQPFault(Exception):
    """An error that has its AMQP answer: reply code, text, and the offending method."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0) -> None:
        super().__init__(f"{REPLY_NAMES.get(code, code)} - {text}")
        self.code = code
        self.text = text
        self.class_id = class_id
        self.method_id = method_id

    @property
    def reply_text(self) -> str:
        """RabbitMQ's style: ``NOT_FOUND - no queue 'x' in vhost '/'`` (max 255 bytes)."""
        return f"{REPLY_NAMES.get(self.code, str(self.code))} - {self.text}"[:255]


class ConnectionFault(AMQPFault):
    """A hard error: the whole connection is closed."""


class ChannelFault(AMQPFault):
    """A soft error: only the channel is closed."""

    def __init__(self, code: int, text: str, class_id: int = 0, method_id: int = 0, channel: int = 0) -> None:
        super().__init__(code, text, class_id, method_id)
        self.channel = channel


# --- events ----------------------------------------------------------------------------


class ProtocolHeader:
    __slots__ = ("data",)

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"<ProtocolHeader {self.data!r}>"


class MethodFrame:
    __slots__ = ("channel", "method")

    def __init__(self, channel: int, method: spec.Method) -> None:
        self.channel = channel
        self.method = method

    def __repr__(self) -> str:
        return f"<MethodFrame ch={self.channel} {self.method!r}>"


class ContentFrame(AmqpExtension):
    """A content-bearing method with its assembled properties block and body.

    It is an ``AmqpExtension`` (``properties``, ``wire_names``): for ``basic.publish``
    the channel hands the event itself to the message as its AMQP extension, so the
    publish path allocates no extension object (the channel drops ``method``).
    """

    __slots__ = ("channel", "method", "body")

    def __init__(self, channel: int, method: spec.Method, properties: bytes, body: bytes, wire_names: bytes | None = None) -> None:
        self.channel = channel
        self.method = method
        self.properties = properties
        self.body = body
        # basic.publish's exchange + routing key exactly as they came (two short strings):
        # the same bytes basic.deliver needs, so deliveries never re-encode them.
        self.wire_names = wire_names

    def __repr__(self) -> str:
        return f"<ContentFrame ch={self.channel} {self.method!r} {len(self.body)}B>"


class Heartbeat:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<Heartbeat>"


HEARTBEAT_EVENT = Heartbeat()


_PRINTABLE_ESCAPES = {9: "\\t", 10: "\\n", 11: "\\v", 8: "\\b", 12: "\\f", 13: "\\r", 27: "\\e", 34: '\\"', 92: "\\\\"}


def frame_snippet(frame_type: int, payload: bytes) -> str:
    """RabbitMQ's description of a bad frame: ``type 3, all octets = <<"abc">>``.

    The first 16 payload bytes as Erlang's ``~p`` prints a binary: as a quoted string
    when every byte is printable, else as a list of numbers.  (Erlang also counts
    Latin-1 bytes 160-255 as printable and sends them raw; we print those as numbers
    so that the reply text stays valid UTF-8.)
    """
    data = bytes(payload[:16])
    label = "all" if len(payload) <= 16 else "first 16"
    if data and all(32 <= b < 127 or b in _PRINTABLE_ESCAPES for b in data):
        text = "".join(_PRINTABLE_ESCAPES.get(b) or chr(b) for b in data)
        shown = f'<<"{text}">>'
    else:
        shown = "<<" + ",".join(str(b) for b in data) + ">>"
    return f"type {frame_type}, {label} octets = {shown}"


class _Assembly:
    """Content being assembled on one channel (AWAITING_HEADER / AWAITING_BODY)."""

    __slots__ = ("method", "properties", "body_size", "parts", "received")

    def __init__(self, method: spec.Method) -> None:
        self.method = method
        self.properties: bytes | None = None  # None while AWAITING_HEADER
        self.body_size = 0
        self.parts: list[bytes] = []
        self.received = 0


def _decode_publish(payload: bytes) -> spec.BasicPublish:
    """Hand-specialised basic.publish decode: the hottest method on the wire."""
    n = payload[6]
    pos = 7 + n
    exchange = payload[7:pos].decode("utf-8", "surrogateescape") if n else ""
    m = payload[pos]
    end = pos + 1 + m
    routing_key = payload[pos + 1 : end].decode("utf-8", "surrogateescape")
    if end + 1 != len(payload):
        raise DecodeError("basic.publish arguments have the wrong length")
    bits = payload[end]
    method = spec.BasicPublish.__new__(spec.BasicPublish)
    method.ticket = 0
    method.exchange = exchange
    method.routing_key = routing_key
    method.mandatory = bool(bits & 1)
    method.immediate = bool(bits & 2)
    return method


_PUBLISH_INDEX = spec.BasicPublish.INDEX
_PUBLISH_PREFIX = _METHOD_INDEX.pack(_PUBLISH_INDEX)
_METHODS = spec.METHODS


class FrameReader:
    """Server-side frame parser and content assembler (see module docstring)."""

    def __init__(self, frame_max: int = 131072, max_message_size: int = 128 * 1024 * 1024) -> None:
        self.frame_max = frame_max
        self.max_message_size = max_message_size
        self._leftover = b""
        self._need_protocol_header = True
        self._assemblies: dict[int, _Assembly] = {}
        self._discarding: set[int] = set()
        self.failed: AMQPFault | None = None

    @property
    def buffered(self) -> int:
        return len(self._leftover)

    def discard_channel(self, channel: int) -> None:
        """Drop every frame for ``channel`` except channel.close / close-ok (it is closing)."""
        self._assemblies.pop(channel, None)
        self._discarding.add(channel)

    def channel_reset(self, channel: int) -> None:
        """The channel is closed (or reopened): frames for it are parsed normally again."""
        self._assemblies.pop(channel, None)
        self._discarding.discard(channel)

    def feed(self, data: bytes) -> list[Any]:
        if self.failed is not None:
            # The events parsed before the failure went out with its first raise; a
            # later feed must not hand them over again (they were handled already).
            self.failed.events = []  # type: ignore[attr-defined]
            raise self.failed
        buf = self._leftover + data if self._leftover else data
        events: list[Any] = []
        pos = 0
        end_of_data = len(buf)
        try:
            if self._need_protocol_header:
                if end_of_data < 8:
                    # A wrong header is answered as soon as it cannot be a valid one.
                    if PROTOCOL_HEADER.startswith(bytes(buf)) or b"AMQP".startswith(bytes(buf[:4])):
                        self._leftover = bytes(buf)
                        return events
                self._need_protocol_header = False
                events.append(ProtocolHeader(bytes(buf[:8])))
                pos = 8
            frame_max = self.frame_max
            while end_of_data - pos >= 7:
                frame_type, channel, size = _FRAME_HEADER.unpack_from(buf, pos)
                if size > frame_max and frame_max:
                    # RabbitMQ (rabbit_reader): payload > frame_max - 8 + 8 bytes of fudge.
                    raise ConnectionFault(
                        FRAME_ERROR,
                        f"{frame_snippet(frame_type, b'')}: {{frame_too_large,{size},{frame_max - 8}}}",
                    )
                frame_end = pos + 7 + size
                if frame_end >= end_of_data:
                    break
                if buf[frame_end] != FRAME_END:
                    raise ConnectionFault(
                        FRAME_ERROR,
                        f"{frame_snippet(frame_type, buf[pos + 7 : frame_end])}: "
                        f"{{invalid_frame_end_marker,{buf[frame_end]}}}",
                    )
                payload = buf[pos + 7 : frame_end]
                pos = frame_end + 1
                if channel in self._discarding:
                    self._discarded_frame(frame_type, channel, payload, events)
                    continue
                if frame_type == FRAME_METHOD:
                    if (
                        size > 10
                        and payload[:4] == _PUBLISH_PREFIX
                        and channel  # channel 0 takes no content: the general path refuses it
                        and channel not in self._assemblies
                        and end_of_data - pos >= 30
                    ):
                        # Fast path: basic.publish + header + one body frame all in the
                        # buffer (the common case) are assembled without the per-channel
                        # state machine.  Anything unusual falls back to it, so the checks
                        # and error answers stay in one place.
                        done = self._publish_fast(buf, pos, end_of_data, channel, payload, events)
                        if done:
                            pos = done
                            continue
                    self._method(channel, payload, events)
                elif frame_type == FRAME_BODY:
                    assembly = self._assemblies.get(channel)
                    if assembly is None:
                        raise ConnectionFault(
                            UNEXPECTED_FRAME,
                            frame_snippet(frame_type, payload)
                            if channel == 0
                            else "expected method frame, got non method frame instead",
                        )
                    if assembly.properties is None:
                        raise ConnectionFault(
                            UNEXPECTED_FRAME,
                            "expected content header for class 60, got non content header frame instead",
                            assembly.method.CLASS_ID,
                            assembly.method.METHOD_ID,
                        )
                    assembly.received += len(payload)
                    if assembly.received > assembly.body_size:
                        raise ConnectionFault(
                            FRAME_ERROR,
                            f"content body larger than the {assembly.body_size} bytes announced in its header",
                        )
                    if assembly.received == assembly.body_size:
                        del self._assemblies[channel]
                        if assembly.parts:
                            assembly.parts.append(payload)
                            body = b"".join(assembly.parts)
                        else:
                            body = bytes(payload)
                        events.append(ContentFrame(channel, assembly.method, assembly.properties, body))
                    else:
                        assembly.parts.append(bytes(payload))
                elif frame_type == FRAME_HEADER:
                    self._content_header(channel, payload, events)
                elif frame_type == FRAME_HEARTBEAT:
                    if size:
                        # RabbitMQ cannot parse a heartbeat with a payload at all.
                        raise ConnectionFault(FRAME_ERROR, f"{frame_snippet(frame_type, payload)}: unknown_frame")
                    if channel != 0:
                        raise ConnectionFault(UNEXPECTED_FRAME, frame_snippet(frame_type, payload))
                    events.append(HEARTBEAT_EVENT)
                else:
                    raise ConnectionFault(FRAME_ERROR, f"{frame_snippet(frame_type, payload)}: unknown_frame")
        except ChannelFault as exc:
            # Soft errors raised mid-buffer: keep what follows for the next feed() call
            # (the caller marks the channel as discarding first).
            self._leftover = bytes(buf[pos:])
            exc.events = events  # type: ignore[attr-defined]
            raise
        except AMQPFault as exc:
            self.failed = exc
            exc.events = events  # type: ignore[attr-defined]
            raise
        self._leftover = bytes(buf[pos:]) if pos < end_of_data else b""
        return events

    def _publish_fast(self, buf: bytes, pos: int, end: int, channel: int, payload: bytes, events: list[Any]) -> int:
        """Returns the position after the body frame, or 0 to take the general path."""
        htype, hchannel, hsize = _FRAME_HEADER.unpack_from(buf, pos)
        frame_max = self.frame_max
        if htype != FRAME_HEADER or hchannel != channel or hsize < 14 or hsize > frame_max:
            return 0
        hend = pos + 7 + hsize
        if hend >= end or buf[hend] != FRAME_END:
            return 0
        class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(buf, pos + 7)
        if class_id != 60 or body_size > self.max_message_size:
            return 0
        properties = buf[pos + 19 : hend]
        if body_size == 0:
            events.append(ContentFrame(channel, _decode_publish(payload), properties, b""))
            return hend + 1
        bpos = hend + 1
        if end - bpos < 8:
            return 0
        btype, bchannel, bsize = _FRAME_HEADER.unpack_from(buf, bpos)
        if btype != FRAME_BODY or bchannel != channel or bsize != body_size or bsize > frame_max:
            # An oversized body frame is the general path's to refuse (501), as is
            # anything else unusual.
            return 0
        bend = bpos + 7 + bsize
        if bend >= end or buf[bend] != FRAME_END:
            return 0
        try:
            method = _decode_publish(payload)
        except (DecodeError, IndexError, UnicodeDecodeError):
            return 0
        events.append(ContentFrame(channel, method, properties, buf[bpos + 7 : bend], payload[6:-1]))
        return bend + 1

    def _method(self, channel: int, payload: bytes, events: list[Any]) -> None:
        if channel in self._assemblies:
            assembly = self._assemblies[channel]
            raise ConnectionFault(
                UNEXPECTED_FRAME,
                "expected content header for class 60, got non content header frame instead"
                if assembly.properties is None
                else "expected content body, got non content body frame instead",
                assembly.method.CLASS_ID,
                assembly.method.METHOD_ID,
            )
        if len(payload) < 4:
            raise ConnectionFault(FRAME_ERROR, "method frame shorter than its class and method ids")
        (index,) = _METHOD_INDEX.unpack_from(payload, 0)
        try:
            if index == _PUBLISH_INDEX:
                method = _decode_publish(payload)
            else:
                cls = _METHODS.get(index)
                if cls is None:
                    raise ConnectionFault(
                        COMMAND_INVALID if (index >> 16) in _KNOWN_CLASSES else NOT_IMPLEMENTED,
                        f"unknown method, class {index >> 16}, method {index & 0xFFFF}",
                        index >> 16,
                        index & 0xFFFF,
                    )
                method = cls.decode(memoryview(payload)[4:])
        except (DecodeError, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ConnectionFault(
                FRAME_ERROR,
                f"cannot decode method class {index >> 16}, method {index & 0xFFFF}: {exc}",
                index >> 16,
                index & 0xFFFF,
            ) from None
        if method.HAS_CONTENT and channel:
            self._assemblies[channel] = _Assembly(method)
        else:
            events.append(MethodFrame(channel, method))

    def _content_header(self, channel: int, payload: bytes, events: list[Any]) -> None:
        if len(payload) < 12:
            # RabbitMQ's frame parser needs class, weight and body size (12 bytes).
            raise ConnectionFault(FRAME_ERROR, f"{frame_snippet(FRAME_HEADER, payload)}: unknown_frame")
        assembly = self._assemblies.get(channel)
        if assembly is None:
            raise ConnectionFault(
                UNEXPECTED_FRAME,
                frame_snippet(FRAME_HEADER, payload)
                if channel == 0
                else "expected method frame, got non method frame instead",
            )
        if assembly.properties is not None:
            raise ConnectionFault(UNEXPECTED_FRAME, "expected content body, got non content body frame instead")
        if len(payload) < 14:
            raise ConnectionFault(FRAME_ERROR, "content header shorter than 14 bytes")
        class_id, _weight, body_size = _CONTENT_HEADER.unpack_from(payload, 0)
        if class_id != assembly.method.CLASS_ID:
            raise ConnectionFault(
                UNEXPECTED_FRAME,
                f"expected content header for class {assembly.method.CLASS_ID}, got one for class {class_id} instead",
            )
        if body_size > self.max_message_size:
            del self._assemblies[channel]
            raise ChannelFault(
                PRECONDITION_FAILED,
                f"message size {body_size} is larger than configured max size {self.max_message_size}",
                assembly.method.CLASS_ID,
                assembly.method.METHOD_ID,
                channel,
            )
        assembly.properties = bytes(payload[12:])
        assembly.body_size = body_size
        if body_size == 0:
            del self._assemblies[channel]
            events.append(ContentFrame(channel, assembly.method, assembly.properties, b""))

    def _discarded_frame(self, frame_type: int, channel: int, payload: bytes, events: list[Any]) -> None:
        """A closing channel: RabbitMQ ignores everything but close / close-ok (spec 4.2.6)."""
        if frame_type != FRAME_METHOD or len(payload) < 4:
            return
        (index,) = _METHOD_INDEX.unpack_from(payload, 0)
        if index in (spec.ChannelClose.INDEX, spec.ChannelCloseOk.INDEX):
            try:
                method = _METHODS[index].decode(memoryview(payload)[4:])
            except (DecodeError, struct.error, IndexError):
                return
            if index == spec.ChannelCloseOk.INDEX:
                # The close handshake ends here: frames after it in this same buffer
                # (typically a channel.open reusing the number) are parsed normally.
                self._discarding.discard(channel)
            events.append(MethodFrame(channel, method))


_KNOWN_CLASSES = frozenset(cls.CLASS_ID for cls in spec.METHODS.values())


# --- encoding ----------------------------------------------------------------------------


def method_frame(channel: int, method: spec.Method) -> bytes:
    payload = method.encode()
    return _FRAME_HEADER.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


def heartbeat_frame() -> bytes:
    return _HEARTBEAT


def content_frames(
    channel: int, method_payload: bytes, properties: bytes, body: bytes, frame_max: int, class_id: int = 60
) -> list[bytes]:
    """Frames for a content-bearing method, the body split to fit ``frame_max``.

    Small messages come back as one joined ``bytes`` so the transport gets fewer pieces.
    """
    head = (
        _FRAME_HEADER.pack(FRAME_METHOD, channel, len(method_payload))
        + method_payload
        + FRAME_END_BYTE
        + _FRAME_HEADER.pack(FRAME_HEADER, channel, 12 + len(properties))
        + _CONTENT_HEADER.pack(class_id, 0, len(body))
        + properties
        + FRAME_END_BYTE
    )
    if not body:
        return [head]
    chunk = frame_max - 8 if frame_max else len(body)
    if len(body) <= chunk:
        if len(body) <= 4096:
            return [head + _FRAME_HEADER.pack(FRAME_BODY, channel, len(body)) + body + FRAME_END_BYTE]
        return [head, _FRAME_HEADER.pack(FRAME_BODY, channel, len(body)), body, FRAME_END_BYTE]
    frames = [head]
    view = memoryview(body)
    for start in range(0, len(body), chunk):
        piece = view[start : start + chunk]
        frames.append(_FRAME_HEADER.pack(FRAME_BODY, channel, len(piece)))
        frames.append(piece)  # type: ignore[arg-type]
        frames.append(FRAME_END_BYTE)
    return frames


_DELIVER_PREFIX = _METHOD_INDEX.pack(spec.BasicDeliver.INDEX)
_DELIVER_TAIL = struct.Struct(">QB")


def encode_short_string(value: str) -> bytes:
    raw = value.encode("utf-8", "surrogateescape")
    if len(raw) > 255:
        raise ValueError("short string longer than 255 bytes")
    return bytes((len(raw),)) + raw


_PACK_FRAME = _FRAME_HEADER.pack
_PACK_CONTENT_HEADER = _CONTENT_HEADER.pack
_PACK_DELIVER_TAIL = _DELIVER_TAIL.pack


def deliver_frames(
    channel: int, consumer_tag: bytes, delivery_tag: int, redelivered: bool, names: bytes, properties: bytes, body: bytes, frame_max: int
) -> bytes | list[bytes]:
    """basic.deliver + content header + body as one bytes object (hot path).

    ``consumer_tag`` and ``names`` (exchange + routing key) are pre-encoded short strings.
    Bodies larger than one frame, or large enough that joining would copy a lot, go
    through ``content_frames``.
    """
    body_size = len(body)
    if body_size > 65536 or (frame_max and body_size > frame_max - 8):
        return content_frames(
            channel, deliver_payload(consumer_tag, delivery_tag, redelivered, names, b""), properties, body, frame_max
        )
    parts = [
        _PACK_FRAME(FRAME_METHOD, channel, 13 + len(consumer_tag) + len(names)),
        _DELIVER_PREFIX,
        consumer_tag,
        _PACK_DELIVER_TAIL(delivery_tag, 1 if redelivered else 0),
        names,
        FRAME_END_BYTE,
        _PACK_FRAME(FRAME_HEADER, channel, 12 + len(properties)),
        _PACK_CONTENT_HEADER(60, 0, body_size),
        properties,
        FRAME_END_BYTE,
    ]
    if body_size:
        parts += (_PACK_FRAME(FRAME_BODY, channel, body_size), body, FRAME_END_BYTE)
    return b"".join(parts)


def deliver_payload(consumer_tag: bytes, delivery_tag: int, redelivered: bool, exchange: bytes, routing_key: bytes) -> bytes:
    """basic.deliver arguments from pre-encoded short strings (hot path)."""
    return (
        _DELIVER_PREFIX
        + consumer_tag
        + _DELIVER_TAIL.pack(delivery_tag, 1 if redelivered else 0)
        + exchange
        + routing_key
    )
