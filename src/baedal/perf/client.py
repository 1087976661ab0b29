"""A minimal, fast asyncio AMQP 0-9-1 client for the load generator.

Theory of operation
-------------------
The load generator needs exactly two hot paths, and everything else is set-up:

* **publishing** — every message is the same three frames (basic.publish, content
  header, body) except for the 16-byte stamp at the start of the body.  A
  ``PublishTemplate`` pre-encodes the frames once with the project's codec and splits
  them at the stamp, so one message costs one ``bytes`` concatenation
  (``head + stamp + tail``).  Producers join a batch of messages and hand the
  transport one ``write`` per loop turn (STYLE habit 6).
* **consuming** — ``ClientFrameReader.feed`` parses a server-to-client byte stream.  It
  has a hand-specialised path for ``basic.deliver`` + header + body: a delivery is not
  turned into objects, it only bumps ``delivered``, remembers the last delivery tag and
  appends the publish → receive latency (from the body's first 8 bytes) to ``latencies``.
  Every other method is decoded with the generated ``spec`` classes and returned as a
  codec event (``MethodFrame`` / ``ContentFrame`` / ``Heartbeat``).

The project's ``FrameReader`` is the *server* side (it expects the protocol header and
assembles ``basic.publish``); this reader is the client side of the same framing rules:
bad frame end, oversized frame, a frame that is illegal in the current content-assembly
state (method → header → body*) all raise ``ConnectionFault`` and leave the reader
failed (a broken stream has no trustworthy frame boundary).

Clock: stamps are ``time.monotonic_ns()`` — ``CLOCK_MONOTONIC``, which on Linux is one
clock for the whole system, so a stamp written by a producer process can be compared
with the receive time in a consumer process.  Stamps are little-endian int64 followed by
a little-endian uint64 message id, the same layout as the C tool ``amqp-load`` (its
``memcpy`` of native integers on x86-64), so the two tools can read each other's bodies.

``Connection`` is an ``asyncio.Protocol``: the handshake and the set-up methods
(``call``) await replies with futures, but the per-message paths use none — the producer
writes, the consumer's ``on_deliveries`` hook runs once per ``data_received``.
"""

from __future__ import annotations

import asyncio
import ssl
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlparse

from ..core.properties import DecodeError
from ..protocols.amqp import codec, spec
from ..protocols.amqp.codec import (
    FRAME_BODY,
    FRAME_END,
    FRAME_ERROR,
    FRAME_HEADER,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
    HEARTBEAT_EVENT,
    PROTOCOL_HEADER,
    UNEXPECTED_FRAME,
    ConnectionFault,
    ContentFrame,
    MethodFrame,
)

__all__ = [
    "AMQPError",
    "BrokerAddress",
    "ClientFrameReader",
    "Connection",
    "PublishTemplate",
    "ack_frame",
    "parse_uri",
    "STAMP",
]

_FRAME_HEADER = struct.Struct(">BHI")
_METHOD_INDEX = struct.Struct(">I")
_UINT64 = struct.Struct(">Q")
# Body stamp: send time (CLOCK_MONOTONIC ns) and message id, little-endian like amqp-load.
STAMP = struct.Struct("<qQ")
_STAMP_TIME = struct.Struct("<q")

_DELIVER_INDEX = spec.BasicDeliver.INDEX
_METHODS = spec.METHODS

DEFAULT_FRAME_MAX = 131072

# Reader states (content assembly per the 0-9-1 framing rules, spec 4.2.6).
AWAITING_METHOD = 0
AWAITING_HEADER = 1
AWAITING_BODY = 2


class AMQPError(Exception):
    """The broker refused something (a channel.close / connection.close), or the link broke."""

    def __init__(self, text: str, code: int = 0) -> None:
        super().__init__(text)
        self.code = code


# --- URIs -------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class BrokerAddress:
    host: str
    port: int
    username: str
    password: str
    virtual_host: str
    tls: bool

    def __str__(self) -> str:
        scheme = "amqps" if self.tls else "amqp"
        return f"{scheme}://{self.username}@{self.host}:{self.port}/{self.virtual_host}"


def parse_uri(uri: str) -> BrokerAddress:
    """``amqp[s]://user:pass@host:port/vhost`` (RabbitMQ URI spec, percent-decoded).

    An empty path or a lone ``/`` means the default vhost ``/`` (what tools such as
    PerfTest and pika do in practice); ``%2f`` also spells ``/``.
    """
    parsed = urlparse(uri)
    if parsed.scheme not in ("amqp", "amqps"):
        raise ValueError(f"not an AMQP URI (amqp:// or amqps://): {uri!r}")
    tls = parsed.scheme == "amqps"
    path = parsed.path[1:] if parsed.path.startswith("/") else parsed.path
    return BrokerAddress(
        host=parsed.hostname or "127.0.0.1",
        port=parsed.port or (5671 if tls else 5672),
        username=unquote(parsed.username) if parsed.username is not None else "guest",
        password=unquote(parsed.password) if parsed.password is not None else "guest",
        virtual_host=unquote(path) if path else "/",
        tls=tls,
    )


# --- outgoing frames ---------------------------------------------------------------------


class PublishTemplate:
    """Pre-encoded frames of one basic.publish, split around the body's stamp.

    ``head + STAMP.pack(t, id) + tail`` is a complete method + header + body sequence
    (the body split over as many body frames as ``frame_max`` needs).  Bodies shorter
    than 16 bytes carry only the 8-byte time (``stamp_size`` 8), or nothing (size < 8).
    """

    __slots__ = ("head", "tail", "stamp_size", "size", "wire_size")

    def __init__(
        self,
        channel: int,
        exchange: str,
        routing_key: str,
        properties: bytes,
        size: int,
        frame_max: int = DEFAULT_FRAME_MAX,
    ) -> None:
        method = spec.BasicPublish(exchange=exchange, routing_key=routing_key).encode()
        body = b"x" * size
        head = codec.content_frames(channel, method, properties, b"", frame_max)[0]
        frames = b"".join(codec.content_frames(channel, method, properties, body, frame_max))
        self.size = size
        self.stamp_size = 16 if size >= 16 else 8 if size >= 8 else 0
        first_body_payload = len(head) + 7
        self.head = frames[:first_body_payload] if size else frames
        self.tail = frames[first_body_payload + self.stamp_size :] if size else b""
        self.wire_size = len(frames)

    def message(self, sent_ns: int, message_id: int) -> bytes:
        """One message's frames (the hot loops inline this; it is here for tests)."""
        if self.stamp_size == 16:
            return self.head + STAMP.pack(sent_ns, message_id) + self.tail
        if self.stamp_size == 8:
            return self.head + _STAMP_TIME.pack(sent_ns) + self.tail
        return self.head + self.tail


_ACK_PREFIX = _FRAME_HEADER.pack(FRAME_METHOD, 1, 13) + _METHOD_INDEX.pack(spec.BasicAck.INDEX)


def ack_frame(delivery_tag: int, multiple: bool, channel: int = 1) -> bytes:
    """basic.ack as one frame (hot path of manual-ack consumers)."""
    prefix = (
        _ACK_PREFIX
        if channel == 1
        else _FRAME_HEADER.pack(FRAME_METHOD, channel, 13) + _ACK_PREFIX[7:]
    )
    return prefix + _UINT64.pack(delivery_tag) + (b"\x01\xce" if multiple else b"\x00\xce")


# --- incoming frames ---------------------------------------------------------------------


class ClientFrameReader:
    """Client-side frame parser; deliveries are counted, not materialised (module docstring).

    After each ``feed``: ``delivered`` (total deliveries so far), ``last_delivery_tag``,
    ``redelivered`` and ``unstamped`` (bodies too short to carry a stamp) are updated,
    and ``latencies`` has one entry per stamped delivery: receive time minus stamp, in
    microseconds (``now_ns`` passed to ``feed`` is the receive time of the whole chunk).
    The owner empties ``latencies`` when it has used them.
    """

    def __init__(self, frame_max: int = DEFAULT_FRAME_MAX) -> None:
        self.frame_max = frame_max
        self.delivered = 0
        self.last_delivery_tag = 0
        self.redelivered = 0
        self.unstamped = 0
        self.latencies: list[int] = []
        self.failed: ConnectionFault | None = None
        self._leftover = b""
        self._state = AWAITING_METHOD
        self._channel = 0
        self._is_delivery = False
        self._delivery_tag = 0
        self._method: spec.Method | None = None
        self._properties = b""
        self._remaining = 0
        self._first_body = True
        self._parts: list[bytes] = []

    @property
    def buffered(self) -> int:
        return len(self._leftover)

    def feed(self, data: bytes, now_ns: int = 0) -> list[Any]:
        if self.failed is not None:
            raise self.failed
        if self._leftover:
            data = self._leftover + data
            self._leftover = b""
        events: list[Any] = []
        try:
            pos = self._parse(data, now_ns, events)
        except ConnectionFault as exc:
            self.failed = exc
            exc.events = events  # type: ignore[attr-defined]
            raise
        if pos < len(data):
            self._leftover = bytes(data[pos:])
        return events

    def _parse(self, data: bytes, now_ns: int, events: list[Any]) -> int:
        # Locals for the hot loop; written back before returning.
        unpack_header = _FRAME_HEADER.unpack_from
        unpack_index = _METHOD_INDEX.unpack_from
        unpack_u64 = _UINT64.unpack_from
        unpack_stamp = _STAMP_TIME.unpack_from
        latencies_append = self.latencies.append
        limit = self.frame_max - 8 if self.frame_max else 1 << 32
        state = self._state
        delivered = self.delivered
        delivery_tag = self._delivery_tag
        last_tag = self.last_delivery_tag
        redelivered = self.redelivered
        unstamped = self.unstamped
        remaining = self._remaining
        first_body = self._first_body
        is_delivery = self._is_delivery
        channel_of_content = self._channel
        pos = 0
        end = len(data)
        try:
            while end - pos >= 7:
                frame_type, channel, size = unpack_header(data, pos)
                if size > limit:
                    raise ConnectionFault(
                        FRAME_ERROR,
                        f"type {frame_type}, frame size {size + 8} larger than frame_max {self.frame_max}",
                    )
                frame_end = pos + 7 + size
                if frame_end >= end:
                    break
                if data[frame_end] != FRAME_END:
                    raise ConnectionFault(
                        FRAME_ERROR, f"type {frame_type}, bad frame end byte {data[frame_end]:#x}"
                    )
                if frame_type == FRAME_METHOD:
                    if state != AWAITING_METHOD:
                        raise ConnectionFault(
                            UNEXPECTED_FRAME, "expected content frame, got a method frame"
                        )
                    if size < 4:
                        raise ConnectionFault(
                            FRAME_ERROR, "method frame shorter than its class and method ids"
                        )
                    (index,) = unpack_index(data, pos + 7)
                    if index == _DELIVER_INDEX:
                        # basic.deliver: consumer-tag (shortstr), delivery-tag, redelivered, ...
                        tag_end = pos + 12 + data[pos + 11]
                        if tag_end + 9 > frame_end:
                            raise ConnectionFault(
                                FRAME_ERROR, "basic.deliver arguments run past the frame"
                            )
                        (delivery_tag,) = unpack_u64(data, tag_end)
                        redelivered += data[tag_end + 8] & 1
                        is_delivery = True
                        state = AWAITING_HEADER
                        channel_of_content = channel
                    else:
                        method = self._decode_method(index, data, pos + 11, frame_end)
                        if method.HAS_CONTENT:
                            self._method = method
                            is_delivery = False
                            state = AWAITING_HEADER
                            channel_of_content = channel
                        else:
                            events.append(MethodFrame(channel, method))
                elif frame_type == FRAME_HEADER:
                    if state != AWAITING_HEADER or channel != channel_of_content:
                        raise ConnectionFault(UNEXPECTED_FRAME, "unexpected content header frame")
                    if size < 14:
                        raise ConnectionFault(FRAME_ERROR, "content header shorter than 14 bytes")
                    (remaining,) = unpack_u64(data, pos + 11)
                    first_body = True
                    if not is_delivery:
                        self._properties = bytes(data[pos + 19 : frame_end])
                        self._parts = []
                    if remaining == 0:
                        state = AWAITING_METHOD
                        if is_delivery:
                            delivered += 1
                            last_tag = delivery_tag
                            unstamped += 1
                        else:
                            events.append(
                                ContentFrame(channel, self._method, self._properties, b"")
                            )  # type: ignore[arg-type]
                    else:
                        state = AWAITING_BODY
                elif frame_type == FRAME_BODY:
                    if state != AWAITING_BODY or channel != channel_of_content:
                        raise ConnectionFault(UNEXPECTED_FRAME, "unexpected content body frame")
                    remaining -= size
                    if remaining < 0:
                        raise ConnectionFault(
                            FRAME_ERROR, "content body larger than announced in its header"
                        )
                    if is_delivery:
                        if first_body:
                            first_body = False
                            if size >= 8:
                                latencies_append((now_ns - unpack_stamp(data, pos + 7)[0]) // 1000)
                            else:
                                unstamped += 1
                        if remaining == 0:
                            delivered += 1
                            last_tag = delivery_tag
                            state = AWAITING_METHOD
                    else:
                        self._parts.append(bytes(data[pos + 7 : frame_end]))
                        if remaining == 0:
                            state = AWAITING_METHOD
                            body = b"".join(self._parts)
                            self._parts = []
                            events.append(
                                ContentFrame(channel, self._method, self._properties, body)
                            )  # type: ignore[arg-type]
                elif frame_type == FRAME_HEARTBEAT:
                    events.append(HEARTBEAT_EVENT)
                else:
                    raise ConnectionFault(FRAME_ERROR, f"unknown frame type {frame_type}")
                pos = frame_end + 1
        finally:
            self._state = state
            self.delivered = delivered
            self._delivery_tag = delivery_tag
            self.last_delivery_tag = last_tag  # of the last *completed* delivery
            self.redelivered = redelivered
            self.unstamped = unstamped
            self._remaining = remaining
            self._first_body = first_body
            self._is_delivery = is_delivery
            self._channel = channel_of_content
        return pos

    @staticmethod
    def _decode_method(index: int, data: bytes, start: int, stop: int) -> spec.Method:
        cls = _METHODS.get(index)
        if cls is None:
            raise ConnectionFault(
                FRAME_ERROR, f"unknown method, class {index >> 16}, method {index & 0xFFFF}"
            )
        try:
            return cls.decode(memoryview(data)[start:stop])
        except (DecodeError, struct.error, IndexError, UnicodeDecodeError) as exc:
            raise ConnectionFault(
                FRAME_ERROR,
                f"cannot decode method class {index >> 16}, method {index & 0xFFFF}: {exc}",
            ) from None


# --- connection --------------------------------------------------------------------------


CLIENT_PROPERTIES = {
    "product": "baedal perf",
    "platform": "Python",
    "capabilities": {
        "publisher_confirms": True,
        "consumer_cancel_notify": True,
        "basic.nack": True,
        "connection.blocked": True,
        "exchange_exchange_bindings": True,
        "per_consumer_qos": True,
    },
}


class Connection(asyncio.Protocol):
    """One AMQP connection (one channel, number 1, is all the tool uses).

    Hooks for the hot paths (set by the owner): ``on_deliveries(reader)`` after each
    chunk that completed deliveries, ``on_method(channel, method)`` for asynchronous
    methods nobody awaits (basic.ack/nack confirms, connection.blocked...).
    """

    def __init__(self, name: str = "perf") -> None:
        self.name = name
        self.reader = ClientFrameReader()
        self.transport: asyncio.Transport | None = None
        self.frame_max = DEFAULT_FRAME_MAX
        self.server_properties: dict[str, Any] = {}
        self.on_deliveries: Callable[[ClientFrameReader], None] | None = None
        self.on_method: Callable[[int, spec.Method], None] | None = None
        self.blocked = False
        self.error: AMQPError | None = None
        self._waiters: list[
            tuple[int, tuple[type[spec.Method], ...], asyncio.Future[spec.Method]]
        ] = []
        self._closed: asyncio.Future[None] | None = None
        self._can_write: asyncio.Future[None] | None = None
        self._delivered_seen = 0

    # -- asyncio.Protocol ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Big enough for a few batches of publishes before pause_writing() (the producer
        # awaits drain then); bounded so a stalled broker cannot grow our memory.
        self.transport.set_write_buffer_limits(high=1 << 20, low=1 << 18)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        reader = self.reader
        try:
            events = reader.feed(data, time.monotonic_ns())
        except ConnectionFault as exc:
            self._fail(AMQPError(f"{self.name}: protocol error from broker: {exc}", exc.code))
            if self.transport is not None:
                self.transport.close()
            return
        if reader.delivered != self._delivered_seen:
            self._delivered_seen = reader.delivered
            if self.on_deliveries is not None:
                self.on_deliveries(reader)
        for event in events:
            if type(event) is MethodFrame:
                self._dispatch(event.channel, event.method)
            elif type(event) is ContentFrame:
                method = event.method
                if isinstance(method, spec.BasicReturn):
                    # mandatory is never set, so a return means a misrouted publish
                    if self.on_method is not None:
                        self.on_method(event.channel, method)
                else:
                    self._dispatch(event.channel, method)
            # heartbeats: the tool negotiates heartbeat 0, but a broker may still send them

    def pause_writing(self) -> None:
        if self._can_write is None:
            self._can_write = asyncio.get_running_loop().create_future()

    def resume_writing(self) -> None:
        waiter, self._can_write = self._can_write, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.error is None:
            self._fail(AMQPError(f"{self.name}: connection lost" + (f": {exc}" if exc else "")))
        if self._closed is not None and not self._closed.done():
            self._closed.set_result(None)
        self.resume_writing()

    # -- plumbing -----------------------------------------------------------------------

    def _fail(self, error: AMQPError) -> None:
        if self.error is None:
            self.error = error
        waiters, self._waiters = self._waiters, []
        for _, _, future in waiters:
            if not future.done():
                future.set_exception(error)
        waiter, self._can_write = self._can_write, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def _dispatch(self, channel: int, method: spec.Method) -> None:
        for i, (wanted_channel, types, future) in enumerate(self._waiters):
            if wanted_channel == channel and isinstance(method, types):
                del self._waiters[i]
                if not future.done():
                    future.set_result(method)
                return
        if isinstance(method, spec.ChannelClose):
            self.write(codec.method_frame(channel, spec.ChannelCloseOk()))
            self._fail(
                AMQPError(
                    f"{self.name}: broker closed channel {channel}: {method.reply_code} {method.reply_text}",
                    method.reply_code,
                )
            )
        elif isinstance(method, spec.ConnectionClose):
            self.write(codec.method_frame(0, spec.ConnectionCloseOk()))
            self._fail(
                AMQPError(
                    f"{self.name}: broker closed connection: {method.reply_code} {method.reply_text}",
                    method.reply_code,
                )
            )
        elif isinstance(method, spec.ConnectionBlocked):
            self.blocked = True
        elif isinstance(method, spec.ConnectionUnblocked):
            self.blocked = False
        elif isinstance(method, spec.BasicCancel):
            self._fail(
                AMQPError(
                    f"{self.name}: broker cancelled consumer {method.consumer_tag!r} (queue deleted?)"
                )
            )
        if self.on_method is not None:
            self.on_method(channel, method)

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(data)

    async def drain(self) -> None:
        """Wait until the transport's buffer is below its low-water mark."""
        if self._can_write is not None:
            await self._can_write
        if self.error is not None:
            raise self.error

    def expect(self, channel: int, *types: type[spec.Method]) -> asyncio.Future[spec.Method]:
        if self.error is not None:
            raise self.error
        future: asyncio.Future[spec.Method] = asyncio.get_running_loop().create_future()
        self._waiters.append((channel, types, future))
        return future

    async def call(
        self,
        method: spec.Method,
        *reply: type[spec.Method],
        channel: int = 1,
        timeout: float = 30.0,
    ) -> spec.Method:
        """Send a synchronous method and await its reply (set-up path only)."""
        future = self.expect(channel, *reply, spec.ChannelClose) if reply else None
        self.write(codec.method_frame(channel, method))
        if future is None:
            return method
        result = await asyncio.wait_for(future, timeout)
        if isinstance(result, spec.ChannelClose):
            self.write(codec.method_frame(channel, spec.ChannelCloseOk()))
            raise AMQPError(
                f"{method.NAME} refused: {result.reply_code} {result.reply_text}", result.reply_code
            )
        return result

    # -- life cycle ---------------------------------------------------------------------

    async def open(self, address: BrokerAddress, heartbeat: int = 0, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        self._closed = loop.create_future()
        context = None
        if address.tls:
            context = ssl.create_default_context()
        await asyncio.wait_for(
            loop.create_connection(lambda: self, address.host, address.port, ssl=context), timeout
        )
        start_waiter = self.expect(0, spec.ConnectionStart, spec.ConnectionClose)
        self.write(PROTOCOL_HEADER)
        start = await asyncio.wait_for(start_waiter, timeout)
        if not isinstance(start, spec.ConnectionStart):
            raise AMQPError(f"broker refused the connection: {start!r}")
        self.server_properties = start.server_properties
        mechanisms = (
            start.mechanisms.split()
            if isinstance(start.mechanisms, str)
            else bytes(start.mechanisms).decode().split()
        )
        if "PLAIN" not in mechanisms:
            raise AMQPError(f"broker offers no PLAIN authentication (offers {mechanisms})")
        response = b"\x00" + address.username.encode() + b"\x00" + address.password.encode()
        tune = await self.call(
            spec.ConnectionStartOk(
                client_properties=CLIENT_PROPERTIES, mechanism="PLAIN", response=response
            ),
            spec.ConnectionTune,
            spec.ConnectionClose,
            channel=0,
            timeout=timeout,
        )
        if isinstance(tune, spec.ConnectionClose):
            raise AMQPError(
                f"broker refused the login: {tune.reply_code} {tune.reply_text}", tune.reply_code
            )
        assert isinstance(tune, spec.ConnectionTune)
        frame_max = min(tune.frame_max or DEFAULT_FRAME_MAX, DEFAULT_FRAME_MAX)
        self.frame_max = self.reader.frame_max = frame_max
        channel_max = min(tune.channel_max or 2047, 2047)
        self.write(codec.method_frame(0, spec.ConnectionTuneOk(channel_max, frame_max, heartbeat)))
        opened = await self.call(
            spec.ConnectionOpen(virtual_host=address.virtual_host),
            spec.ConnectionOpenOk,
            spec.ConnectionClose,
            channel=0,
            timeout=timeout,
        )
        if isinstance(opened, spec.ConnectionClose):
            raise AMQPError(
                f"broker refused vhost {address.virtual_host!r}: {opened.reply_code} {opened.reply_text}",
                opened.reply_code,
            )
        await self.call(spec.ChannelOpen(), spec.ChannelOpenOk, channel=1, timeout=timeout)

    async def close(self, timeout: float = 5.0) -> None:
        """connection.close and wait for close-ok (or the socket to go)."""
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        try:
            if self.error is None:
                waiter = self.expect(0, spec.ConnectionCloseOk)
                self.write(codec.method_frame(0, spec.ConnectionClose(200, "perf run finished")))
                await asyncio.wait_for(waiter, timeout)
        except (AMQPError, TimeoutError):
            pass
        finally:
            transport.close()
            if self._closed is not None:
                try:
                    await asyncio.wait_for(asyncio.shield(self._closed), timeout)
                except TimeoutError:
                    transport.abort()
