"""The AMQP connection: an ``asyncio.Protocol`` around the sans-IO codec.

State machine (connection class on channel 0)::

    AWAITING_HEADER --header--> AWAITING_START_OK --start-ok--> AWAITING_TUNE_OK
      --tune-ok--> AWAITING_OPEN --open--> OPEN --close--> CLOSING --> CLOSED

Any method not legal in the current state is ``COMMAND_INVALID`` (503); every error is
answered with its reply code: channel faults close the channel, connection faults the
connection, and the broker keeps serving everyone else.

I/O discipline: all complete frames of one ``data_received`` call are handled, then the
collected output is written with one ``writelines``.  Output produced outside a read
(deliveries triggered by another connection's publish, fsync completions) is flushed by
one ``call_soon`` per loop turn.  ``pause_writing`` stops deliveries to this connection
(consumers report no credit) until ``resume_writing``.

Output bound (``max_connection_output``, default 8 MiB): everything this connection owes
its peer -- deliveries, ``basic.return``, ``get-ok``, confirms, method replies -- counts
against one bound: after each batch (once ``_out`` is flushed) the transport's write
buffer is compared with it, and within a batch the content queued in ``_out``
(``_out_bytes``: get-ok, return, multi-frame deliveries) is compared with the room the
transport left at the start of the batch.  Past the bound the
connection stops reading (``output_full``, one of the reasons ``_update_reading``
weighs), so a peer that stops reading its socket stops being served instead of making
the broker buffer for it without limit; it is read again once the transport has
drained (``resume_writing``, i.e. below its low-water mark).  The check is one integer
comparison per batch of frames, plus one per non-publish method (a burst of
``basic.get`` can produce many messages from a small read); a publish's ``basic.return``
is no bigger than the publish itself, so one read's worth is the most a batch can add.
Frames already parsed when the bound is hit wait in ``_pending_events`` (at most one
read).  The transport pauses writing at ``min(1 MiB, bound / 2)``, which stops
deliveries (consumer credit) well before the bound; a queue's drain may overshoot that
by one drain batch.  Precedents: RabbitMQ blocks a reader with credit flow (state
``flow``) but lets its writer buffer grow until the memory alarm; redis closes a client
past ``client-output-buffer-limit``; nats-server cuts a slow consumer at
``max_pending`` (64 MiB).  Pausing the reader keeps the client connected and loses
nothing, and 8 MiB is 64 frames of the default ``frame_max``: enough to keep a fast
link busy, small enough that a thousand stalled clients cost 8 GiB at worst.
"""

from __future__ import annotations

import logging
import struct
from typing import TYPE_CHECKING, Any

from ...core.properties import DecodeError, decode_table
from ...core.vhost import VirtualHost
from ...transport.address import connection_name, is_loopback
from . import spec
from .channel import Channel
from .codec import (
    ACCESS_REFUSED,
    CHANNEL_ERROR,
    COMMAND_INVALID,
    CONNECTION_FORCED,
    FRAME_METHOD,
    FRAME_MIN_SIZE,
    NOT_ALLOWED,
    PROTOCOL_HEADER,
    SYNTAX_ERROR,
    UNEXPECTED_FRAME,
    AMQPFault,
    ChannelFault,
    ConnectionFault,
    ContentFrame,
    FrameReader,
    Heartbeat,
    MethodFrame,
    ProtocolHeader,
    frame_snippet,
    heartbeat_frame,
    method_frame,
)

if TYPE_CHECKING:
    from ...core.broker import BrokerCore as Broker
    from ...core.broker import Permission
    from .server import AMQPServer

log = logging.getLogger("baedal.amqp")

AWAITING_HEADER = "awaiting-header"
AWAITING_START_OK = "awaiting-start-ok"
AWAITING_TUNE_OK = "awaiting-tune-ok"
AWAITING_OPEN = "awaiting-open"
OPEN = "open"
CLOSING = "closing"
CLOSED = "closed"

# Legal connection-class methods from the client, per state.
_LEGAL = {
    AWAITING_START_OK: {spec.ConnectionStartOk.INDEX},
    AWAITING_TUNE_OK: {spec.ConnectionTuneOk.INDEX, spec.ConnectionSecureOk.INDEX},
    AWAITING_OPEN: {spec.ConnectionOpen.INDEX},
    OPEN: {spec.ConnectionClose.INDEX, spec.ConnectionUpdateSecret.INDEX},
    CLOSING: {spec.ConnectionClose.INDEX, spec.ConnectionCloseOk.INDEX},
}

# RabbitMQ's names for the connection states, as its error texts show them
# ("CHANNEL_ERROR - unexpected method in connection state running").
_RABBIT_STATE_NAMES = {
    AWAITING_START_OK: "starting",
    AWAITING_TUNE_OK: "tuning",
    AWAITING_OPEN: "opening",
    OPEN: "running",
    CLOSING: "closing",
}

SERVER_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "consumer_priorities": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
    "direct_reply_to": True,
}

_CLOSE_OK_TIMEOUT = 5.0
# Work cap per loop callback: frames parsed from one read beyond this are handled in later
# callbacks (reading paused meanwhile), so a publisher's 256 KiB read cannot hold the loop
# while consumers' acks wait: the fairness RabbitMQ gets from credit flow.
EVENTS_PER_CALLBACK = 512
# Where the transport calls pause_writing (deliveries stop) unless the output bound is
# smaller; the resume (low-water) mark is a quarter of it.
TRANSPORT_HIGH_WATER = 1024 * 1024


class AMQPConnection:
    """asyncio.Protocol for one AMQP client."""

    _ids = 0

    def __init__(self, server: AMQPServer) -> None:
        AMQPConnection._ids += 1
        self.id = AMQPConnection._ids
        self.server = server
        self.broker: Broker = server.broker
        config = self.broker.config
        self.reader = FrameReader(frame_max=config.frame_max, max_message_size=config.max_message_size)
        self.state = AWAITING_HEADER
        self.transport: Any = None
        self.peer: tuple[str, int] | None = None
        self.channels: dict[int, Channel] = {}
        self.closing_channels: set[int] = set()
        self.vhost: VirtualHost = None  # type: ignore[assignment]
        self.username = ""
        self.permission: Permission | None = None
        self.client_properties: dict[str, Any] = {}
        self.auth_mechanism = ""  # as negotiated in start-ok
        self.frame_max = config.frame_max
        self.channel_max = config.channel_max
        self.heartbeat = 0
        self.write_paused = False
        self.sync_wanted = False
        self._out: list[bytes] = []
        self._out_bytes = 0  # content bytes queued in _out since the last flush
        self.output_limit: int = config.max_connection_output
        self._output_room = self.output_limit  # for this batch: the bound minus what the transport holds
        self.output_full = False  # past the output bound: not read until the transport drains
        self._continue_scheduled = False
        self._in_read = False
        self._flush_scheduled = False
        self._confirm_channels: list[Channel] = []
        self._last_received = 0.0
        self._sent_since_tick = False
        self._heartbeat_handle: Any = None
        self._handshake_handle: Any = None
        self._close_handle: Any = None
        self.blocked = False
        self.is_publisher = False
        self._reading_paused = False
        self._throttled_by: set[Any] = set()
        self._pending_events: list[Any] = []
        self.connected_at = 0.0
        self.recv_bytes = 0
        self.send_bytes = 0
        self.name = ""

    # --- asyncio.Protocol --------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        peer = transport.get_extra_info("peername")
        local = transport.get_extra_info("sockname")
        if isinstance(peer, tuple):
            self.peer = (peer[0], peer[1])
            # RabbitMQ's connection name format, which management tooling shows and passes back.
            self.name = f"{self.peer[0]}:{self.peer[1]} -> {local[0]}:{local[1]}" if local else f"{self.peer[0]}:{self.peer[1]}"
        else:
            # A Unix socket (transport/unix.py): the peer is on this machine by
            # definition, so it counts as loopback (loopback_users may connect); the file's
            # permissions decided who could reach it.
            self.peer = ("localhost", 0)
            self.name = connection_name(self.peer, local)  # the socket's real path or @name
        broker = self.broker
        self.connected_at = broker.now()
        self._last_received = self.connected_at
        broker.connections[self.id] = self
        broker.counters["connections_opened"] += 1
        self._handshake_handle = broker.call_later(broker.config.handshake_timeout, self._handshake_timeout)
        high = min(TRANSPORT_HIGH_WATER, self.output_limit // 2)
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        self._in_read = True
        self._last_received = self.broker.loop.time()  # type: ignore[union-attr]
        self.recv_bytes += len(data)
        self._output_room = self.output_limit - self.transport.get_write_buffer_size()
        try:
            while True:
                try:
                    events = self.reader.feed(data)
                    break
                except ChannelFault as exc:
                    # Soft error mid-buffer (an oversized message): answer it, then go on
                    # with what followed it in the buffer.  A loop, not recursion: a peer
                    # can pack any number of such frames into one read.  The frames
                    # before the fault are handled in full (no output-bound stop here),
                    # so the channel error stays in order; one read is the overshoot.
                    room, self._output_room = self._output_room, 1 << 62
                    self._handle_events(exc.events)  # type: ignore[attr-defined]
                    self._output_room = room
                    self._channel_fault(exc, exc.channel)
                    data = b""
                except ConnectionFault as exc:
                    self._handle_events(exc.events)  # type: ignore[attr-defined]
                    raise
            if self._pending_events or self.output_full:
                # Reading is paused, but a transport may still hand over what it had
                # already read: it queues behind the frames waiting, in order.
                self._pending_events.extend(events)
                events = []
            elif len(events) > EVENTS_PER_CALLBACK:
                self._pending_events = events[EVENTS_PER_CALLBACK:]
                events = events[:EVENTS_PER_CALLBACK]
                self._schedule_continue()
            self._handle_events(events)
        except ConnectionFault as exc:
            self.close_with_error(exc)
        except Exception as exc:  # an internal bug must not take the broker down
            log.exception("internal error on connection %s", self.name)
            self.close_with_error(ConnectionFault(541, f"internal error: {type(exc).__name__}"))
        finally:
            self._in_read = False
            self._end_of_batch()

    def _schedule_continue(self) -> None:
        if not self._continue_scheduled:
            self._continue_scheduled = True
            self.broker.call_soon(self._continue_events)

    def _continue_events(self) -> None:
        """Handle the next slice of frames parsed by an earlier read (work cap), unless
        the output is over its bound: then the drain reschedules this."""
        self._continue_scheduled = False
        events = self._pending_events
        if not events or self.state == CLOSED:
            self._pending_events = []
            return
        if self.output_full:
            return
        self._in_read = True
        self._output_room = self.output_limit - self.transport.get_write_buffer_size()
        try:
            self._pending_events = events[EVENTS_PER_CALLBACK:]
            if self._pending_events:
                self._schedule_continue()
            self._handle_events(events[:EVENTS_PER_CALLBACK])
        except ConnectionFault as exc:
            self._pending_events = []
            self.close_with_error(exc)
        except Exception as exc:
            self._pending_events = []
            log.exception("internal error on connection %s", self.name)
            self.close_with_error(ConnectionFault(541, f"internal error: {type(exc).__name__}"))
        finally:
            self._in_read = False
            self._end_of_batch()

    def _handle_events(self, events: list[Any]) -> None:
        room = self._output_room
        for event in events:
            if self.state == CLOSED:
                return
            cls = type(event)
            if cls is ContentFrame:
                self._content(event)
            elif cls is MethodFrame:
                self._method(event.channel, event.method)
                if self._out_bytes > room:
                    self._output_over_bound(events, event)
                    return
            elif cls is Heartbeat:
                pass
            elif cls is ProtocolHeader:
                self._protocol_header(event.data)

    def _output_over_bound(self, events: list[Any], current: Any) -> None:
        """Mid-batch, the output passed the bound: the frames after ``current`` wait
        (in order, ahead of any already waiting) until the output drains."""
        for index, event in enumerate(events):
            if event is current:
                self._pending_events = events[index + 1 :] + self._pending_events
                break
        self.output_full = True

    def _end_of_batch(self) -> None:
        if self._confirm_channels:
            channels, self._confirm_channels = self._confirm_channels, []
            for channel in channels:
                channel.flush_confirms()
        if self.sync_wanted:
            self.sync_wanted = False
            self.broker.request_sync()
        self.flush()
        self._check_output()
        self._update_reading()

    def eof_received(self) -> bool:
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._teardown()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.output_full:
            self._output_drained()
        queues = []
        for channel in list(self.channels.values()):
            for consumer in list(channel.consumers.values()):
                queue = consumer.queue
                if queue is not None and not queue.deleted and queue not in queues:
                    queues.append(queue)
        for queue in queues:
            queue.drain()
            queue.release_publishers()
        self.flush()

    # --- flow control ------------------------------------------------------------------

    def maybe_throttle(self, queue: Any) -> None:
        """Pause reading from this publisher while ``queue``'s consumers are socket-bound."""
        if queue in self._throttled_by:
            return
        if not all(c.owner.write_paused for c in queue.consumers if hasattr(c.owner, "write_paused")):
            return
        queue.throttled_publishers.add(self)
        self._throttled_by.add(queue)
        self._update_reading()

    def unthrottle(self, queue: Any) -> None:
        self._throttled_by.discard(queue)
        self._update_reading()

    def _check_output(self) -> None:
        """After a flush: past the output bound, stop reading; once the transport is no
        longer write-paused (below its high-water mark, or drained to its low-water
        mark after a pause), read again."""
        if self.transport is None or self.state == CLOSED:
            return
        if self.output_full:
            if not self.write_paused:
                self._output_drained()
        elif self.transport.get_write_buffer_size() > self.output_limit:
            self.output_full = True

    def _output_drained(self) -> None:
        self.output_full = False
        # Our own pause is no reason to hold the peer's silence against it (heartbeats).
        self._last_received = self.broker.now()
        if self._pending_events:
            self._schedule_continue()
        self._update_reading()

    def output_pending(self) -> int:
        """Bytes queued for the peer and not yet taken by the socket."""
        queued = sum(map(len, self._out))
        if self.transport is not None and not self.transport.is_closing():
            queued += self.transport.get_write_buffer_size()
        return queued

    @property
    def flow_state(self) -> str:
        """RabbitMQ's connection states: ``flow`` while reading is held back by this
        connection's own output bound or for a queue's consumers, ``blocked`` /
        ``blocking`` under a resource alarm (a publisher / not yet publishing)."""
        if self.blocked:
            return "blocked" if self.is_publisher else "blocking"
        if self.output_full or self._throttled_by:
            return "flow"
        return "running"

    def _update_reading(self) -> None:
        """One place decides whether this socket is read: not while the connection is a
        blocked publisher (alarm), is throttled for a queue's sake, has more output
        waiting than its bound, or still has parsed frames waiting from its last read
        (work cap per callback)."""
        if self.transport is None or self.state == CLOSED:
            return
        want_pause = bool(
            (self.blocked and self.is_publisher) or self._throttled_by or self._pending_events or self.output_full
        )
        if want_pause != self._reading_paused:
            self._reading_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # --- output ------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._out.append(data)
        if not self._in_read and not self._flush_scheduled:
            self._flush_scheduled = True
            self.broker.call_soon(self._scheduled_flush)

    def write_many(self, frames: list[bytes]) -> None:
        self._out.extend(frames)
        # Content (get-ok, return, a large delivery) is counted as it is queued, for the
        # mid-batch bound check; single frames are counted when flushed.
        self._out_bytes += sum(map(len, frames))
        if not self._in_read and not self._flush_scheduled:
            self._flush_scheduled = True
            self.broker.call_soon(self._scheduled_flush)

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        if self._confirm_channels:
            self._end_of_batch()
        else:
            self.flush()
            self._check_output()
            self._update_reading()

    def flush(self) -> None:
        out = self._out
        if out and self.transport is not None:
            self._sent_since_tick = True
            # send_oct counts every write path (C-level sum: cheaper than a Python
            # counter per queued frame).
            if len(out) == 1:
                data = out[0]
                self.send_bytes += len(data)
                self.transport.write(data)
            else:
                self.send_bytes += sum(map(len, out))
                self.transport.writelines(out)
            self._out = []
            self._out_bytes = 0

    def confirms_dirty(self, channel: Channel) -> None:
        if channel not in self._confirm_channels:
            self._confirm_channels.append(channel)
            if not self._in_read and not self._flush_scheduled:
                self._flush_scheduled = True
                self.broker.call_soon(self._scheduled_flush)

    # --- handshake -----------------------------------------------------------------------

    def _protocol_header(self, header: bytes) -> None:
        if header != PROTOCOL_HEADER:
            # Answer with the header we speak, then close (RabbitMQ reader behaviour).
            self.transport.write(PROTOCOL_HEADER)
            self.state = CLOSED
            self.transport.close()
            return
        self.state = AWAITING_START_OK
        mechanisms = b"PLAIN AMQPLAIN"
        start = spec.ConnectionStart(
            version_major=0,
            version_minor=9,
            server_properties={
                "capabilities": dict(SERVER_CAPABILITIES),
                "product": self.broker.product,
                "version": self.broker.version,
                "platform": "Baedal (Python)",
                "cluster_name": "baedal",
                "copyright": "Baedal contributors",
                "information": "Baedal: a message broker in Python, https://pypi.org/project/baedal/",
            },
            mechanisms=mechanisms,
            locales=b"en_US",
        )
        self.write(method_frame(0, start))

    def client_capability(self, name: str) -> bool:
        caps = self.client_properties.get("capabilities")
        return isinstance(caps, dict) and bool(caps.get(name))

    def _start_ok(self, method: spec.ConnectionStartOk) -> None:
        self.client_properties = method.client_properties or {}
        mechanism = method.mechanism
        response = method.response
        if mechanism == "PLAIN":
            parts = response.split(b"\x00")
            if len(parts) != 3:
                raise ConnectionFault(SYNTAX_ERROR, f"response {response[:64]!r} invalid", 10, 11)
            username, password = parts[1].decode("utf-8", "replace"), parts[2].decode("utf-8", "replace")
        elif mechanism == "AMQPLAIN":
            try:
                table, _ = decode_table(struct.pack(">I", len(response)) + response)
            except DecodeError:
                raise ConnectionFault(ACCESS_REFUSED, "Login was refused using authentication mechanism AMQPLAIN. For details see the broker logfile.", 10, 11) from None
            username = str(table.get("LOGIN", ""))
            password = str(table.get("PASSWORD", ""))
        else:
            raise ConnectionFault(COMMAND_INVALID, f"unknown authentication mechanism '{mechanism}'", 10, 11)
        self.auth_mechanism = mechanism
        user = self.broker.authenticate(username, password)
        if user is None:
            log.warning("login refused for user %r from %s (mechanism %s)", username, self.name, mechanism)
            self._refuse_login(f"Login was refused using authentication mechanism {mechanism}. For details see the broker logfile.")
            return
        if user.name in self.broker.config.loopback_users and not is_loopback(self.peer[0] if self.peer else ""):
            self._refuse_login(f"user '{user.name}' can only connect via localhost")
            return
        self.username = user.name
        self.state = AWAITING_TUNE_OK
        config = self.broker.config
        self.write(method_frame(0, spec.ConnectionTune(channel_max=config.channel_max, frame_max=config.frame_max, heartbeat=config.heartbeat)))

    def _refuse_login(self, text: str) -> None:
        if self.client_capability("authentication_failure_close"):
            self.close_with_error(ConnectionFault(ACCESS_REFUSED, text, 10, 11))
        else:
            self.flush()
            self.state = CLOSED
            self.transport.close()

    def _tune_ok(self, method: spec.ConnectionTuneOk) -> None:
        config = self.broker.config
        self.channel_max = _negotiate("channel_max", method.channel_max, config.channel_max, 1)
        self.frame_max = _negotiate("frame_max", method.frame_max, config.frame_max, FRAME_MIN_SIZE)
        self.reader.frame_max = self.frame_max
        self.heartbeat = method.heartbeat
        self.state = AWAITING_OPEN

    def _open(self, method: spec.ConnectionOpen) -> None:
        vhost = self.broker.vhosts.get(method.virtual_host)
        if vhost is None:
            raise ConnectionFault(NOT_ALLOWED, f"vhost {method.virtual_host} not found", 10, 40)
        permission = self.broker.permission(self.username, vhost.name)
        if permission is None:
            raise ConnectionFault(NOT_ALLOWED, f"access to vhost '{vhost.name}' refused for user '{self.username}'", 10, 40)
        self.vhost = vhost
        self.permission = permission
        self.state = OPEN
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
            self._handshake_handle = None
        self.write(method_frame(0, spec.ConnectionOpenOk()))
        if self.heartbeat:
            self._heartbeat_handle = self.broker.call_later(self.heartbeat / 2, self._heartbeat_tick)
        self.broker.alarm_listeners.append(self._on_alarm)
        if self.broker.alarms:
            self._on_alarm(self.broker.alarms)

    def _handshake_timeout(self) -> None:
        self._handshake_handle = None
        if self.state not in (OPEN, CLOSING, CLOSED):
            log.warning("closing %s: handshake timeout", self.name)
            self.state = CLOSED
            if self.transport is not None:
                self.transport.close()

    # --- heartbeats --------------------------------------------------------------------

    def _heartbeat_tick(self) -> None:
        self._heartbeat_handle = None
        if self.state in (CLOSED,) or self.transport is None:
            return
        now = self.broker.now()
        # Not while we hold its reading back (alarm, output bound): RabbitMQ pauses the
        # heartbeat monitor of a blocked reader the same way.
        if not self.blocked and not self._reading_paused and now - self._last_received > self.heartbeat * 2:
            log.warning("closing %s: missed heartbeats from client, timeout: %ss", self.name, self.heartbeat)
            self.state = CLOSED
            self.transport.abort()
            return
        if not self._sent_since_tick:
            self.write(heartbeat_frame())
            self.flush()
        self._sent_since_tick = False
        self._heartbeat_handle = self.broker.call_later(self.heartbeat / 2, self._heartbeat_tick)

    # --- alarms ------------------------------------------------------------------------

    def _on_alarm(self, alarms: set[str]) -> None:
        if alarms and not self.blocked:
            self.blocked = True
            if self.client_capability("connection.blocked"):
                self.write(method_frame(0, spec.ConnectionBlocked(reason=self.broker.alarm_reason)))
            self._update_reading()
        elif not alarms and self.blocked:
            self.blocked = False
            if self.client_capability("connection.blocked"):
                self.write(method_frame(0, spec.ConnectionUnblocked()))
            self._update_reading()

    # --- dispatch ----------------------------------------------------------------------

    def _method(self, channel_number: int, method: spec.Method) -> None:
        state = self.state
        if channel_number == 0:
            # Channel 0 takes only the connection methods legal in this state; anything
            # else, of any class, is RabbitMQ's 504 (tests/integration/test_protocol_sweep.py).
            if method.INDEX not in _LEGAL.get(state, ()):
                if state == CLOSING:
                    return
                raise ConnectionFault(
                    CHANNEL_ERROR,
                    f"unexpected method in connection state {_RABBIT_STATE_NAMES.get(state, state)}",
                    method.CLASS_ID,
                    method.METHOD_ID,
                )
            self._connection_method(method)
            return
        if state != OPEN:
            if state == CLOSING:
                return
            # RabbitMQ treats any frame on a channel before connection.open-ok as unexpected.
            raise ConnectionFault(UNEXPECTED_FRAME, frame_snippet(FRAME_METHOD, method.encode()))
        channel = self.channels.get(channel_number)
        index = method.INDEX
        if channel_number in self.closing_channels:
            if index == spec.ChannelCloseOk.INDEX:
                self.closing_channels.discard(channel_number)
                self.reader.channel_reset(channel_number)
            elif index == spec.ChannelClose.INDEX:
                self.write(method_frame(channel_number, spec.ChannelCloseOk()))
            return
        if index == spec.ChannelOpen.INDEX:
            if channel is not None:
                raise ConnectionFault(CHANNEL_ERROR, "second 'channel.open' seen", 20, 10)
            if self.channel_max and len(self.channels) >= self.channel_max:
                # RabbitMQ counts open channels against channel_max, not channel numbers.
                raise ConnectionFault(
                    NOT_ALLOWED,
                    f"number of channels opened ({len(self.channels)}) has reached the negotiated channel_max ({self.channel_max})",
                    20,
                    10,
                )
            self.channels[channel_number] = Channel(self, channel_number)
            self.reader.channel_reset(channel_number)
            self.broker.counters["channels_opened"] += 1
            self.write(method_frame(channel_number, spec.ChannelOpenOk()))
            return
        if channel is None:
            raise ConnectionFault(CHANNEL_ERROR, "expected 'channel.open'", method.CLASS_ID, method.METHOD_ID)
        if index == spec.ChannelClose.INDEX:
            self._drop_channel(channel)
            self.write(method_frame(channel_number, spec.ChannelCloseOk()))
            return
        if index == spec.AccessRequest.INDEX:
            self.write(method_frame(channel_number, spec.AccessRequestOk(ticket=1)))
            return
        try:
            channel.handle(method)
        except ChannelFault as exc:
            self._channel_fault(exc, channel_number)

    def _content(self, event: ContentFrame) -> None:
        channel_number = event.channel
        if self.state != OPEN:
            if self.state == CLOSING:
                return
            raise ConnectionFault(UNEXPECTED_FRAME, frame_snippet(FRAME_METHOD, event.method.encode()))
        if channel_number in self.closing_channels:
            return
        channel = self.channels.get(channel_number)
        if channel is None:
            raise ConnectionFault(CHANNEL_ERROR, "expected 'channel.open'", 60, 40)
        method = event.method
        if type(method) is not spec.BasicPublish:
            # basic.return / deliver / get-ok: only a server sends them (RabbitMQ's words)
            raise ConnectionFault(COMMAND_INVALID, "unimplemented method", method.CLASS_ID, method.METHOD_ID)
        self.is_publisher = True
        try:
            channel.on_publish(method, event)
        except ChannelFault as exc:
            self._channel_fault(exc, channel_number)

    def _connection_method(self, method: spec.Method) -> None:
        index = method.INDEX
        if index == spec.ConnectionStartOk.INDEX:
            self._start_ok(method)  # type: ignore[arg-type]
        elif index == spec.ConnectionTuneOk.INDEX:
            self._tune_ok(method)  # type: ignore[arg-type]
        elif index == spec.ConnectionOpen.INDEX:
            self._open(method)  # type: ignore[arg-type]
        elif index == spec.ConnectionClose.INDEX:
            self.write(method_frame(0, spec.ConnectionCloseOk()))
            self.flush()
            self.state = CLOSED
            self._teardown()
            self.transport.close()
        elif index == spec.ConnectionCloseOk.INDEX:
            self.state = CLOSED
            self.flush()
            self.transport.close()
        elif index == spec.ConnectionSecureOk.INDEX:
            raise ConnectionFault(COMMAND_INVALID, "unexpected connection.secure-ok", 10, 21)
        elif index == spec.ConnectionUpdateSecret.INDEX:
            self.write(method_frame(0, spec.ConnectionUpdateSecretOk()))

    # --- errors and closing --------------------------------------------------------------

    def _channel_fault(self, exc: ChannelFault, channel_number: int) -> None:
        channel = self.channels.get(channel_number)
        if channel is not None:
            self._drop_channel(channel)
        self.closing_channels.add(channel_number)
        self.reader.discard_channel(channel_number)
        self.write(
            method_frame(
                channel_number,
                spec.ChannelClose(reply_code=exc.code, reply_text=exc.reply_text, class_id=exc.class_id, method_id=exc.method_id),
            )
        )

    def _drop_channel(self, channel: Channel) -> None:
        self.channels.pop(channel.number, None)
        if channel in self._confirm_channels:
            self._confirm_channels.remove(channel)
        channel.close()
        self.broker.counters["channels_closed"] += 1

    def close_with_error(self, exc: AMQPFault) -> None:
        """Send connection.close with the fault's code; wait briefly for close-ok."""
        if self.state in (CLOSED, CLOSING):
            return
        if self.state == AWAITING_HEADER:
            self.state = CLOSED
            self.transport.close()
            return
        log.info("closing connection %s: %s", self.name, exc.reply_text)
        self.state = CLOSING
        self._teardown_channels()
        self.write(
            method_frame(
                0, spec.ConnectionClose(reply_code=exc.code, reply_text=exc.reply_text, class_id=exc.class_id, method_id=exc.method_id)
            )
        )
        self.flush()
        self._close_handle = self.broker.call_later(_CLOSE_OK_TIMEOUT, self._close_timeout)

    def force_close(self, reason: str) -> None:
        """Operator or shutdown: 320 CONNECTION_FORCED."""
        self.close_with_error(ConnectionFault(CONNECTION_FORCED, reason))

    def _close_timeout(self) -> None:
        self._close_handle = None
        if self.transport is not None and self.state != CLOSED:
            self.state = CLOSED
            if self.transport.get_write_buffer_size():
                # A peer that stopped reading would hold close() (and the buffered
                # output) open forever: drop the connection instead.
                self.transport.abort()
            else:
                self.transport.close()

    def _teardown_channels(self) -> None:
        for channel in list(self.channels.values()):
            self._drop_channel(channel)

    def _teardown(self) -> None:
        if self.id not in self.broker.connections:
            return
        del self.broker.connections[self.id]
        self.broker.counters["connections_closed"] += 1
        self._teardown_channels()
        for queue in list(self._throttled_by):
            queue.throttled_publishers.discard(self)
        self._throttled_by.clear()
        if self.vhost is not None:
            self.vhost.owner_closed(self)
        for handle in (self._heartbeat_handle, self._handshake_handle, self._close_handle):
            if handle is not None:
                handle.cancel()
        try:
            self.broker.alarm_listeners.remove(self._on_alarm)
        except ValueError:
            pass
        self.state = CLOSED


def _negotiate(name: str, client: int, server: int, minimum: int) -> int:
    """RabbitMQ's rule for tune-ok values (rabbit_reader validate_negotiated_integer_value)."""
    if client != 0 and client < minimum:
        raise ConnectionFault(NOT_ALLOWED, f"{name}={client} < {minimum} min size", 10, 31)
    if server != 0 and (client == 0 or client > server):
        raise ConnectionFault(
            NOT_ALLOWED, f"negotiated {name} = {client} is higher than the maximum allowed value ({server})", 10, 31
        )
    return client
