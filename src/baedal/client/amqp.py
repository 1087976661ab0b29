"""A small AMQP 0-9-1 client connection on Baedal's own sans-IO codec.

``protocols/amqp/codec.py``'s ``FrameReader`` parses any method from ``spec.py`` and
assembles content for any content-bearing method (``basic.deliver`` as well as
``basic.publish``), and ``content_frames`` / ``method_frame`` encode; the client side
of a connection only needs the other half of the state machine, which is this module:

* handshake: protocol header → start / start-ok (PLAIN) → tune / tune-ok → open / open-ok;
* channels: synchronous methods are answered in order on a channel, so each channel
  keeps a FIFO of waiting futures (``call``); ``channel.close`` from the broker fails
  them with ``AMQPError`` and answers ``close-ok``;
* deliveries: ``basic.deliver`` content goes straight to the consumer's callback, in
  the ``data_received`` call that completed it (no task per message, unlike aiormq,
  which this replaced for the benchmarks' sake: see docs/benchmarks.md);
* confirms: one confirm channel counts publishes and resolves their futures on
  ``basic.ack`` / ``basic.nack`` (``multiple`` honoured);
* output: frames are collected and written once per loop turn (``writelines``); while
  the transport is paused (``pause_writing``), ``drain`` waits — the client's own
  backpressure, as the server does it;
* heartbeats: the broker's proposal is accepted and a heartbeat is sent every half
  interval; the broker's silence is not policed (the socket's close is the signal).

Only what ``baedal.client`` uses is here; it is not a general-purpose AMQP client.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any

from ..protocols.amqp import spec
from ..protocols.amqp.codec import (
    PROTOCOL_HEADER,
    AMQPFault,
    ContentFrame,
    FrameReader,
    MethodFrame,
    content_frames,
    heartbeat_frame,
    method_frame,
)
from ..protocols.amqp.properties import BasicProperties, decode_properties, encode_properties

FRAME_MAX = 131072
EMPTY_PROPERTIES = encode_properties(BasicProperties())
PERSISTENT_PROPERTIES = encode_properties(BasicProperties(delivery_mode=2))

DeliverCallback = Callable[[spec.BasicDeliver, bytes, bytes], None]


class AMQPError(Exception):
    """The broker closed a channel or the connection (its reply code and text)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{code} {text}")
        self.code = code


class _Channel:
    __slots__ = ("number", "waiting", "open", "consumers", "cancelled", "confirm_seq", "confirms")

    def __init__(self, number: int) -> None:
        self.number = number
        self.waiting: deque[tuple[tuple[type, ...], asyncio.Future[Any]]] = deque()
        self.open = True
        self.consumers: dict[str, DeliverCallback] = {}
        self.cancelled: dict[str, Callable[[], None]] = {}
        self.confirm_seq = 0
        self.confirms: dict[int, asyncio.Future[bool]] = {}


class AMQPClientConnection(asyncio.Protocol):
    """One client connection; create with ``await open_connection(...)``."""

    def __init__(self, loop: asyncio.AbstractEventLoop, user: str, password: str, vhost: str) -> None:
        self.loop = loop
        self.user = user
        self.password = password
        self.vhost = vhost
        self.transport: asyncio.Transport | None = None
        self.reader = FrameReader(frame_max=FRAME_MAX, max_message_size=1 << 31)
        self.reader._need_protocol_header = False  # a server sends none (only on mismatch)
        self.frame_max = FRAME_MAX
        self.channels: dict[int, _Channel] = {0: _Channel(0)}
        self.closed: asyncio.Future[BaseException | None] = loop.create_future()
        self._out: list[bytes] = []
        self._flush_scheduled = False
        self._writable = asyncio.Event()
        self._writable.set()
        self._heartbeat: asyncio.TimerHandle | None = None
        self._heartbeat_interval = 0.0
        self._next_channel = 1
        self._confirming: set[int] = set()  # channels in confirm mode
        # basic.publish arguments by (exchange, routing key): a socket publishes to one
        # or a few, so each is encoded once.
        self._publish_payloads: dict[tuple[str, str], bytes] = {}

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(PROTOCOL_HEADER)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        fault: AMQPFault | None = None
        try:
            events = self.reader.feed(data)
        except AMQPFault as exc:
            # The frames before the bad one still count (found by the fuzzer: fed byte by
            # byte they would have been handled), then the connection is done.
            events = getattr(exc, "events", [])
            fault = exc
        self._dispatch(events)
        if fault is not None:
            self._fail(AMQPError(fault.code, f"from the broker: {fault.reply_text}"))

    def _dispatch(self, events: list[Any]) -> None:
        for event in events:
            if type(event) is ContentFrame:
                method = event.method
                if type(method) is spec.BasicDeliver:
                    channel = self.channels.get(event.channel)
                    callback = channel.consumers.get(method.consumer_tag) if channel else None
                    if callback is not None:
                        callback(method, event.properties, event.body)
                # basic.return / basic.get-ok are not used by baedal.client
            elif type(event) is MethodFrame:
                self._method(event.channel, event.method)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exc or ConnectionResetError("connection closed"))

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    # --- incoming methods ----------------------------------------------------------------

    def _method(self, number: int, method: spec.Method) -> None:
        channel = self.channels.get(number)
        if channel is None:
            return
        kind = type(method)
        if kind is spec.BasicAck or kind is spec.BasicNack:
            self._confirmed(channel, method.delivery_tag, method.multiple, kind is spec.BasicAck)
            return
        if kind is spec.ChannelClose:
            self._send(method_frame(number, spec.ChannelCloseOk()))
            self._close_channel(channel, AMQPError(method.reply_code, method.reply_text))
            return
        if kind is spec.ConnectionClose:
            self._send(method_frame(0, spec.ConnectionCloseOk()))
            self._flush()
            self._fail(AMQPError(method.reply_code, method.reply_text))
            return
        if kind is spec.BasicCancel:  # the broker cancelled a consumer (queue deleted)
            channel.consumers.pop(method.consumer_tag, None)
            cancelled = channel.cancelled.pop(method.consumer_tag, None)
            if cancelled is not None:
                cancelled()
            return
        if kind is spec.ConnectionStart:
            response = f"\0{self.user}\0{self.password}"
            properties = {"product": "baedal.client", "capabilities": {"consumer_cancel_notify": True, "publisher_confirms": True}}
            self._send(method_frame(0, spec.ConnectionStartOk(properties, "PLAIN", response, "en_US")))
            return
        if kind is spec.ConnectionTune:
            self.frame_max = min(method.frame_max or FRAME_MAX, FRAME_MAX)
            self._send(method_frame(0, spec.ConnectionTuneOk(method.channel_max, self.frame_max, method.heartbeat)))
            self._send(method_frame(0, spec.ConnectionOpen(self.vhost, "", False)))
            if method.heartbeat:
                self._heartbeat_interval = method.heartbeat / 2
                self._heartbeat = self.loop.call_later(self._heartbeat_interval, self._beat)
            return
        # Everything else answers a synchronous request on this channel, in order.
        while channel.waiting:
            expected, future = channel.waiting.popleft()
            if future.done():
                continue
            if isinstance(method, expected):
                future.set_result(method)
            else:
                future.set_exception(AMQPError(503, f"unexpected {method.NAME} (waiting for {expected})"))
            return

    def _confirmed(self, channel: _Channel, tag: int, multiple: bool, ack: bool) -> None:
        confirms = channel.confirms
        tags = [t for t in confirms if t <= tag] if multiple else [tag]
        for t in tags:
            future = confirms.pop(t, None)
            if future is not None and not future.done():
                future.set_result(ack)

    def _beat(self) -> None:
        if self.closed.done():
            return
        self._send(heartbeat_frame())
        self._heartbeat = self.loop.call_later(self._heartbeat_interval, self._beat)

    # --- failure -------------------------------------------------------------------------

    def _close_channel(self, channel: _Channel, exc: BaseException) -> None:
        channel.open = False
        self.channels.pop(channel.number, None)
        while channel.waiting:
            _, future = channel.waiting.popleft()
            if not future.done():
                future.set_exception(exc)
        for future in channel.confirms.values():
            if not future.done():
                future.set_exception(exc)
        channel.confirms.clear()
        for cancelled in channel.cancelled.values():
            cancelled()
        channel.cancelled.clear()

    def _fail(self, exc: BaseException) -> None:
        if self.closed.done():
            return
        if self._heartbeat is not None:
            self._heartbeat.cancel()
        for channel in list(self.channels.values()):
            self._close_channel(channel, exc)
        self.closed.set_result(exc)
        if self.transport is not None:
            self.transport.close()

    # --- output --------------------------------------------------------------------------

    def _send(self, frame: bytes) -> None:
        self._out.append(frame)
        if not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if out and self.transport is not None and not self.transport.is_closing():
            self.transport.writelines(out)

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    async def drain(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    # --- requests ------------------------------------------------------------------------

    def _check_open(self, channel: _Channel) -> None:
        if self.closed.done():
            raise ConnectionResetError("connection closed")
        if not channel.open:
            raise AMQPError(504, f"channel {channel.number} is closed")

    async def call(self, number: int, method: spec.Method, *expected: type) -> Any:
        """Send a synchronous method and wait for its answer on the channel."""
        channel = self.channels.get(number)
        if channel is None:
            raise AMQPError(504, f"channel {number} is closed")
        self._check_open(channel)
        future: asyncio.Future[Any] = self.loop.create_future()
        channel.waiting.append((expected, future))
        self._send(method_frame(number, method))
        return await future

    async def handshake(self) -> None:
        channel = self.channels[0]
        future: asyncio.Future[Any] = self.loop.create_future()
        channel.waiting.append(((spec.ConnectionOpenOk,), future))
        done, _ = await asyncio.wait({future, self.closed}, return_when=asyncio.FIRST_COMPLETED)
        if future not in done:
            exc = self.closed.result()
            raise exc if exc is not None else ConnectionResetError("closed during the handshake")

    async def open_channel(self, confirm: bool = False) -> int:
        number = self._next_channel
        self._next_channel += 1
        self.channels[number] = _Channel(number)
        await self.call(number, spec.ChannelOpen(""), spec.ChannelOpenOk)
        if confirm:
            await self.call(number, spec.ConfirmSelect(False), spec.ConfirmSelectOk)
        return number

    def publish(self, number: int, exchange: str, routing_key: str, properties: bytes, body: bytes) -> asyncio.Future[bool] | None:
        """Send a message; on a confirm channel, a future for the broker's ack (True) or nack."""
        channel = self.channels.get(number)
        if channel is None:
            raise AMQPError(504, f"channel {number} is closed")
        self._check_open(channel)
        key = (exchange, routing_key)
        payload = self._publish_payloads.get(key)
        if payload is None:
            if len(self._publish_payloads) >= 1024:  # bounded: a cache, not a registry
                self._publish_payloads.clear()
            payload = self._publish_payloads[key] = spec.BasicPublish(0, exchange, routing_key, False, False).encode()
        for frame in content_frames(number, payload, properties, body, self.frame_max):
            self._send(frame)
        if number in self._confirming:
            channel.confirm_seq += 1
            future: asyncio.Future[bool] = self.loop.create_future()
            channel.confirms[channel.confirm_seq] = future
            return future
        return None

    async def open_confirm_channel(self) -> int:
        number = await self.open_channel(confirm=True)
        self._confirming.add(number)
        return number

    async def consume(
        self, number: int, queue: str, callback: DeliverCallback, *, no_ack: bool, on_cancel: Callable[[], None] | None = None
    ) -> str:
        channel = self.channels[number]
        tag = f"bc-{number}-{len(channel.consumers) + 1}"
        channel.consumers[tag] = callback
        if on_cancel is not None:
            channel.cancelled[tag] = on_cancel
        try:
            await self.call(number, spec.BasicConsume(0, queue, tag, False, no_ack, False, False, {}), spec.BasicConsumeOk)
        except BaseException:
            channel.consumers.pop(tag, None)
            channel.cancelled.pop(tag, None)
            raise
        return tag

    def settle(self, number: int, tag: int, ack: bool, requeue: bool) -> None:
        channel = self.channels.get(number)
        if channel is None or not channel.open or self.closed.done():
            return  # closed: the broker requeues what was not acknowledged
        method: spec.Method = spec.BasicAck(tag, False) if ack else spec.BasicReject(tag, requeue)
        self._send(method_frame(number, method))

    async def close(self) -> None:
        if self.closed.done():
            return
        try:
            await asyncio.wait_for(self.call(0, spec.ConnectionClose(200, "bye", 0, 0), spec.ConnectionCloseOk), 2)
        except (Exception, asyncio.CancelledError):
            pass
        self._fail(ConnectionResetError("closed by the client"))


def properties_block(
    headers: dict[str, Any] | None, persistent: bool, reply_to: str | None, correlation_id: str | None
) -> bytes:
    if headers is None and reply_to is None and correlation_id is None:
        return PERSISTENT_PROPERTIES if persistent else EMPTY_PROPERTIES
    return encode_properties(
        BasicProperties(
            headers=headers, delivery_mode=2 if persistent else None, reply_to=reply_to, correlation_id=correlation_id
        )
    )


def read_properties(block: bytes) -> BasicProperties:
    return decode_properties(block)


async def open_connection(
    address: str | tuple[str, int], *, user: str, password: str, vhost: str, unix: bool, timeout: float = 10.0
) -> AMQPClientConnection:
    """Connect over TCP (``(host, port)``) or a Unix socket (``address``) and shake hands."""
    loop = asyncio.get_running_loop()
    connection = AMQPClientConnection(loop, user, password, vhost)

    async def connect() -> None:
        if unix:
            from ..transport.unix import socket_address

            await loop.create_unix_connection(lambda: connection, socket_address(address))  # type: ignore[arg-type]
        else:
            host, port = address  # type: ignore[misc]
            transport, _ = await loop.create_connection(lambda: connection, host, port)
            sock = transport.get_extra_info("socket")
            if sock is not None:
                import socket as socket_module

                sock.setsockopt(socket_module.IPPROTO_TCP, socket_module.TCP_NODELAY, 1)
        await connection.handshake()

    try:
        await asyncio.wait_for(connect(), timeout)
    except BaseException:
        connection._fail(ConnectionResetError("handshake failed"))
        raise
    return connection
