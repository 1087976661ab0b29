"""The STOMP listener and connection: an ``asyncio.Protocol`` around the sans-IO codec,
translating frames into the protocol-neutral core (``core/publish.py`` for SEND, the
core ``Consumer`` interface for SUBSCRIBE).

Connection states (one table, ``_ALLOWED``)::

    AWAITING_CONNECT --CONNECT/STOMP--> OPEN --DISCONNECT or ERROR--> CLOSED

A frame not allowed in the current state, a codec error (``StompError``), or a failed
SEND/SUBSCRIBE is answered with one ERROR frame (``message`` header, ``receipt-id`` when
the frame asked for a receipt, detail in the body), after which the connection closes
(1.2 spec: "the server MUST then close the connection").  RabbitMQ 3.10 keeps the socket
open after some ERRORs (a refused CONNECT); Baedal follows the spec.

Destinations are RabbitMQ's STOMP plugin names (``Destination`` / ``parse_destination``):
``/queue/q`` (durable queue declared on SEND and SUBSCRIBE, default exchange),
``/topic/k`` (``amq.topic``; each subscription gets its own exclusive auto-delete queue,
or a durable named one with ``durable:true`` + ``id``, or ActiveMQ's
``activemq.subscriptionName`` + ``client-id``), ``/exchange/x/k``, ``/amq/queue/q``
(existing queue, never declared), ``/temp-queue/t`` (a connection-owned queue created
when named in a SEND's ``reply-to``, which is rewritten to ``/reply-queue/<queue>``) and
``/reply-queue/q``.

Header mapping (SEND -> neutral message -> MESSAGE, the same names RabbitMQ uses):
``content-type``, ``content-encoding``, ``correlation-id``, ``reply-to``,
``amqp-message-id`` (the neutral message id: a MESSAGE's own ``message-id`` is the ack
handle), ``expiration`` (ms), ``priority``, ``persistent:true``, ``timestamp``,
``user-id``; every other header except the frame's own (``destination``,
``transaction``, ``receipt``, ``content-length``) becomes a neutral header, so the core
sees ``AMQ_SCHEDULED_DELAY`` or ``JMSXGroupID`` as any protocol would set them.

Acks: a MESSAGE's ``message-id`` and (1.2) ``ack`` header carry a per-connection
delivery number.  ``client`` acks are cumulative per subscription, ``client-individual``
single; NACK requeues, or with ``requeue:false`` rejects (dead-letters when the queue has
a dead-letter exchange, as RabbitMQ).  BEGIN/COMMIT/ABORT buffer SENDs and ACK/NACKs
until COMMIT; an open transaction is aborted at disconnect.  Unacked deliveries go back to
their queues, flagged redelivered, when the connection ends.

Heart-beating: the server mirrors the client's request (``heart-beat: cy,cx``, as
RabbitMQ does) with a 100 ms floor; one timer per connection sends an EOL when nothing
else went out in the interval and closes a peer silent for twice its promised interval
(Artemis's 2.0 margin; ActiveMQ Classic's strict 1.0 drops peers on ordinary jitter).

I/O discipline (as the AMQP connection): every frame of one read is handled, then the
output is written with one ``writelines``; output produced outside a read (deliveries
triggered by another connection's publish, fsync completions) is flushed by one
``call_soon`` per loop turn.  Bound: ``pause_writing`` stops deliveries (subscriptions
report no credit), and while the transport holds more than ``max_output`` bytes the
socket is not read, so a peer that stops reading stops being served instead of making
the broker buffer for it; reading resumes in ``resume_writing``.  Each output write is
exactly one frame (or one heart-beat EOL), which is what the WebSocket transport needs
(websocket.py sends one frame per message).
"""

from __future__ import annotations

import asyncio
import base64
import collections
import hashlib
import logging
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ... import __version__
from ...core.message import Message, QueueEntry
from ...core.publish import Publisher
from ...core.vhost import CoreError
from ...transport.address import connection_name, is_loopback, peer_address
from .codec import (
    DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_HEADER_LINE,
    DEFAULT_MAX_HEADERS,
    VERSIONS,
    Frame,
    FrameReader,
    StompError,
    encode_frame,
    negotiate_version,
    parse_heart_beat,
)

if TYPE_CHECKING:
    from ...core.broker import BrokerCore, Permission
    from ...core.queue import Queue
    from ...core.vhost import VirtualHost

log = logging.getLogger("baedal.stomp")

AWAITING_CONNECT = "awaiting_connect"
OPEN = "open"
CLOSED = "closed"

_CONNECT_COMMANDS = frozenset({"CONNECT", "STOMP"})
_ALLOWED = {
    AWAITING_CONNECT: _CONNECT_COMMANDS,
    OPEN: frozenset(
        {"SEND", "SUBSCRIBE", "UNSUBSCRIBE", "ACK", "NACK", "BEGIN", "COMMIT", "ABORT", "DISCONNECT"}
    ),
    CLOSED: frozenset(),
}

HEART_BEAT_FLOOR_MS = 100
HEART_BEAT_MARGIN = 2.0
TRANSPORT_HIGH_WATER = 1024 * 1024
SERVER_NAME = f"Baedal/{__version__}"

# Headers that belong to the frame, not to the message.
_FRAME_HEADERS = frozenset({"destination", "transaction", "receipt", "content-length"})
# SEND headers that become neutral message fields (the rest become neutral headers).
_FIELD_HEADERS = frozenset(
    {
        "content-type",
        "content-encoding",
        "correlation-id",
        "reply-to",
        "amqp-message-id",
        "expiration",
        "priority",
        "persistent",
        "timestamp",
        "user-id",
    }
)
# MESSAGE headers the server sets; a message header of the same name is not copied.
_MESSAGE_RESERVED = _FIELD_HEADERS | _FRAME_HEADERS | {"subscription", "message-id", "ack", "redelivered"}
_VALID_PREFIXES = "/exchange/, /topic/, /queue/, /amq/queue/, /temp-queue/, /reply-queue/"


@dataclass
class StompConfig:
    max_headers: int = DEFAULT_MAX_HEADERS
    max_header_line: int = DEFAULT_MAX_HEADER_LINE
    max_header_bytes: int = DEFAULT_MAX_HEADER_BYTES
    max_body: int = 128 * 1024 * 1024
    max_output: int = 8 * 1024 * 1024
    handshake_timeout: float = 10.0
    loopback_users: tuple[str, ...] = ("guest",)
    default_user: str = "guest"
    default_pass: str = "guest"


class StompFault(Exception):
    """A request the server refuses: ERROR with ``message`` (and detail), then close."""

    def __init__(self, message: str, detail: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.detail = detail


def _core_fault(exc: CoreError) -> StompFault:
    titles = {
        "not_found": "not_found",
        "access_refused": "access_refused",
        "precondition_failed": "precondition_failed",
        "resource_locked": "resource_locked",
    }
    return StompFault(titles.get(exc.kind, exc.kind), exc.text)


# --- destinations --------------------------------------------------------------------------


@dataclass(frozen=True)
class Destination:
    kind: str  # queue | topic | exchange | amq-queue | temp-queue | reply-queue
    name: str  # queue name, exchange name, or temp-queue name
    key: str = ""  # routing key / binding key


def parse_destination(text: str | None) -> Destination:
    if not text:
        raise StompFault("Missing destination", "the frame needs a 'destination' header")
    for prefix, kind in (
        ("/amq/queue/", "amq-queue"),
        ("/queue/", "queue"),
        ("/topic/", "topic"),
        ("/temp-queue/", "temp-queue"),
        ("/reply-queue/", "reply-queue"),
    ):
        if text.startswith(prefix):
            name = text[len(prefix) :]
            if not name:
                break
            if kind == "topic":
                return Destination("topic", "amq.topic", name)
            return Destination(kind, name)
    else:
        if text.startswith("/exchange/"):
            exchange, _, key = text[len("/exchange/") :].partition("/")
            if exchange:
                return Destination("exchange", exchange, key)
    raise StompFault(
        "Unknown destination",
        f"'{text}' is not a valid destination.\nValid destination types are: {_VALID_PREFIXES}.",
    )


def destination_of(message: Message) -> str:
    """The ``destination`` a MESSAGE shows for a routed message (RabbitMQ's rule)."""
    exchange = message.exchange
    if exchange == "":
        return f"/queue/{message.routing_key}"
    if exchange == "amq.topic":
        return f"/topic/{message.routing_key}"
    return f"/exchange/{exchange}/{message.routing_key}"


def _argument_value(value: str) -> Any:
    """A queue argument from a string header (RabbitMQ's STOMP plugin accepts x-*
    headers on SUBSCRIBE/SEND as queue arguments): integers and booleans typed."""
    if value.lstrip("-").isdigit():
        return int(value)
    if value in ("true", "false"):
        return value == "true"
    return value


# The x- headers RabbitMQ's STOMP plugin takes as queue arguments on SUBSCRIBE / SEND to
# a destination it declares; other x- headers are ordinary message headers.
QUEUE_ARGUMENT_HEADERS = frozenset(
    {
        "x-dead-letter-exchange",
        "x-dead-letter-routing-key",
        "x-expires",
        "x-max-length",
        "x-max-length-bytes",
        "x-max-priority",
        "x-message-ttl",
        "x-overflow",
        "x-queue-mode",
        "x-queue-type",
        "x-single-active-consumer",
    }
)


def _queue_arguments(frame: Frame) -> dict[str, Any]:
    return {
        name: _argument_value(value)
        for name, value in frame.header_map.items()
        if name in QUEUE_ARGUMENT_HEADERS
    }


# --- the core Consumer --------------------------------------------------------------------


class Subscription:
    """One SUBSCRIBE: the core's ``Consumer`` for one queue (see core/queue.py)."""

    __slots__ = (
        "tag",
        "id",
        "priority",
        "exclusive",
        "no_ack",
        "owner",
        "queue",
        "ack_mode",
        "prefetch",
        "unacked",
        "selector",
        "arguments",
        "durable_queue",
    )

    def __init__(self, sub_id: str, connection: StompConnection, queue: Queue, ack_mode: str, prefetch: int) -> None:
        self.id = sub_id
        self.tag = f"stomp-{sub_id}"
        self.priority = 0
        self.exclusive = False
        self.no_ack = ack_mode == "auto"
        self.owner = connection
        self.queue = queue
        self.ack_mode = ack_mode
        self.prefetch = prefetch
        self.unacked = 0
        # A core selector (core/selector.py, when merged): the queue only offers this
        # subscription messages it matches.
        self.selector: Any = None
        self.arguments: dict[str, Any] = {}
        self.durable_queue = False

    def can_deliver(self) -> bool:
        if not self.owner.can_send:
            return False
        return self.no_ack or not self.prefetch or self.unacked < self.prefetch

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        self.owner.send_message(self, queue, entry)

    def cancelled_by_server(self, queue: Queue) -> None:
        self.owner.subscription_cancelled(self)


class _Unacked:
    __slots__ = ("subscription", "queue", "entry")

    def __init__(self, subscription: Subscription, queue: Queue, entry: QueueEntry) -> None:
        self.subscription = subscription
        self.queue = queue
        self.entry = entry


# --- the listener -------------------------------------------------------------------------


class StompServer:
    def __init__(self, broker: BrokerCore, config: StompConfig) -> None:
        self.broker = broker
        self.config = config
        self.servers: list[asyncio.AbstractServer] = []
        # /metrics: SEND frames published and MESSAGE frames delivered (int increments).
        self.counters = {"received": 0, "delivered": 0}

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: StompConnection(self), host, port, ssl=ssl_context, backlog=1024)
        self.servers.append(server)
        sockets = server.sockets or []
        return sockets[0].getsockname()[1] if sockets else port

    def connections(self) -> list[StompConnection]:
        return [c for c in self.broker.connections.values() if isinstance(c, StompConnection) and c.server is self]

    async def close(self, reason: str = "broker shutdown") -> None:
        for server in self.servers:
            server.close()
        for connection in self.connections():
            connection.force_close(reason)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        for connection in self.connections():
            if connection.transport is not None:
                connection.transport.abort()
            connection.teardown()


# --- the connection -----------------------------------------------------------------------


class StompConnection(asyncio.Protocol):
    """One STOMP client (TCP, TLS, or a WebSocket through websocket.py's transport)."""

    _ids = 0

    def __init__(self, server: StompServer, *, websocket: bool = False) -> None:
        StompConnection._ids += 1
        self.id = f"stomp-{StompConnection._ids}"
        self.server = server
        self.broker: BrokerCore = server.broker
        config = server.config
        self.config = config
        self.reader = FrameReader(
            max_headers=config.max_headers,
            max_header_line=config.max_header_line,
            max_header_bytes=config.max_header_bytes,
            max_body=config.max_body,
        )
        self.websocket = websocket
        self.state = AWAITING_CONNECT
        self.version = "1.2"
        self.transport: Any = None
        self.peer: tuple[str, int] = ("", 0)
        self.name = ""
        self.vhost: VirtualHost | None = None
        self.username = ""
        self.permission: Permission | None = None
        self.publisher: Publisher | None = None
        self.session = ""
        self.subscriptions: dict[str, Subscription] = {}
        self.unacked: dict[int, _Unacked] = {}
        self.next_tag = 1
        self._delivery_marks: collections.deque[tuple[int, float]] = collections.deque()
        self.transactions: dict[str, list[Frame]] = {}
        self.temp_queues: dict[str, Queue] = {}
        self.write_paused = False
        self.output_full = False
        self.blocked = False  # a resource alarm is up (core/broker.py alarms)
        self.is_publisher = False  # has sent a SEND: blocked publishers are not read
        self._reading_paused = False
        self._out: list[bytes] = []
        self._out_bytes = 0  # bytes in _out
        self._batch_limit = min(TRANSPORT_HIGH_WATER, config.max_output // 2)
        self._held_back = False  # a delivery waited for the next flush
        self._in_read = False
        self._flush_scheduled = False
        self._send_interval = 0.0  # seconds between our heart-beats (0: none)
        self._receive_interval = 0.0  # seconds the peer promised (0: none)
        self._last_received = 0.0
        self._sent_since_tick = False
        self._heart_beat_handle: Any = None
        self._receive_check_handle: Any = None
        self._handshake_handle: Any = None
        self._receipt_deferred = False  # the SEND being handled sends its RECEIPT later
        # What the management API shows (api.connection_info reads these, as for AMQP).
        self.channels: dict[int, Any] = {}
        self.channel_max = 0
        self.frame_max = config.max_body
        self.heartbeat = 0
        self.client_properties: dict[str, Any] = {}
        self.auth_mechanism = "STOMP"
        self.recv_bytes = 0
        self.send_bytes = 0
        self.connected_at = 0.0

    @property
    def protocol(self) -> str:
        return f"{'Web STOMP' if self.websocket else 'STOMP'} {self.version}"

    @property
    def can_send(self) -> bool:
        if self.state != OPEN or self.write_paused:
            return False
        if self._out_bytes >= self._batch_limit:
            # Output of this loop turn not yet handed to the transport: a queue's drain
            # must not pile up more than the transport's high-water mark before the
            # transport can say pause_writing; deliveries resume after the flush.
            self._held_back = True
            return False
        return True

    @property
    def flow_state(self) -> str:
        if self.blocked:
            return "blocked" if self.is_publisher else "blocking"
        return "flow" if self.output_full else "running"

    def output_pending(self) -> int:
        queued = sum(map(len, self._out))
        if self.transport is not None and not self.transport.is_closing():
            queued += self.transport.get_write_buffer_size()
        return queued

    # --- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: Any) -> None:  # type: ignore[override]
        self.transport = transport
        self.peer = peer_address(transport)  # a Unix socket's peer is local
        self.name = connection_name(self.peer, transport.get_extra_info("sockname"))
        broker = self.broker
        self.connected_at = broker.now()
        self._last_received = broker.now()
        broker.connections[self.id] = self  # type: ignore[index]
        broker.counters["connections_opened"] += 1
        self._handshake_handle = broker.call_later(self.config.handshake_timeout, self._handshake_timeout)
        high = min(TRANSPORT_HIGH_WATER, self.config.max_output // 2)
        transport.set_write_buffer_limits(high=high, low=high // 4)

    def data_received(self, data: bytes) -> None:
        if self.state == CLOSED:
            return
        self._in_read = True
        self._last_received = self.broker.now()
        self.recv_bytes += len(data)
        try:
            while True:
                try:
                    frames = self.reader.feed(data)
                except StompError as exc:
                    for frame in exc.frames:  # type: ignore[attr-defined]
                        self._handle(frame)
                        if self.state == CLOSED:
                            return
                    raise StompFault(exc.message, exc.detail) from None
                for frame in frames:
                    self._handle(frame)
                    if self.state == CLOSED:
                        return
                if not frames or frames[-1].command not in _CONNECT_COMMANDS:
                    break
                data = b""  # the reader stopped after CONNECT (codec.py): the rest now
        except StompFault as fault:
            self.fail(fault, None)
        except Exception as exc:  # an internal bug must not take the broker down
            log.exception("internal error on STOMP connection %s", self.name)
            self.fail(StompFault("Internal error", type(exc).__name__), None)
        finally:
            self._in_read = False
            self.flush()
            self._check_output()

    def connection_lost(self, exc: Exception | None) -> None:
        self.teardown()

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        if self.output_full:
            self.output_full = False
            self._last_received = self.broker.now()  # our pause is not the peer's silence
            self._update_reading()
        for queue in {id(s.queue): s.queue for s in self.subscriptions.values()}.values():
            if not queue.deleted:
                queue.drain()
                queue.release_publishers()  # publishers throttled for our sake (core/publish.py)
        if not self._in_read:
            self.flush()

    # --- output ----------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_bytes += len(data)
        if not self._in_read and not self._flush_scheduled:
            self._flush_scheduled = True
            self.broker.call_soon(self._scheduled_flush)

    def send_frame(self, command: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        self.write(encode_frame(command, headers, body, self.version))

    def _scheduled_flush(self) -> None:
        self._flush_scheduled = False
        self.flush()
        self._check_output()

    def flush(self) -> None:
        out = self._out
        if out and self.transport is not None and not self.transport.is_closing():
            self._sent_since_tick = True
            self.send_bytes += self._out_bytes
            self.transport.writelines(out)
        self._out = []
        self._out_bytes = 0
        if self._held_back and self.state == OPEN:
            self._held_back = False
            self.broker.call_soon(self._drain_subscriptions)

    def _drain_subscriptions(self) -> None:
        if self.state != OPEN or self.write_paused:
            return  # resume_writing drains
        for queue in {id(s.queue): s.queue for s in self.subscriptions.values()}.values():
            if not queue.deleted:
                queue.drain()

    def _check_output(self) -> None:
        if self.transport is None or self.state == CLOSED or self.output_full:
            return
        if self.transport.get_write_buffer_size() > self.config.max_output:
            self.output_full = True
            self._update_reading()

    def _update_reading(self) -> None:
        """Not read while over the output bound, or while a publisher and a resource
        alarm is up (STOMP has no connection.blocked frame: like RabbitMQ's STOMP plugin,
        the socket is simply not read until the alarm clears)."""
        if self.transport is None or self.state == CLOSED:
            return
        want_pause = self.output_full or (self.blocked and self.is_publisher)
        if want_pause != self._reading_paused:
            self._reading_paused = want_pause
            if want_pause:
                self.transport.pause_reading()
            else:
                self.transport.resume_reading()

    # --- errors and closing ----------------------------------------------------------

    def fail(self, fault: StompFault, frame: Frame | None) -> None:
        """ERROR then close (the spec's rule after ERROR)."""
        if self.state == CLOSED:
            return
        headers = [("message", fault.message), ("content-type", "text/plain")]
        receipt = frame.get("receipt") if frame is not None else None
        if receipt is not None:
            headers.append(("receipt-id", receipt))
        if fault.message in ("Version mismatch",):
            headers.append(("version", ",".join(VERSIONS)))
        body = fault.detail.encode("utf-8")
        headers.append(("content-length", str(len(body))))
        log.info("STOMP connection %s: ERROR %s %s", self.name, fault.message, fault.detail)
        self.send_frame("ERROR", headers, body)
        self.close()

    def close(self) -> None:
        self.flush()
        self.teardown()
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def force_close(self, reason: str) -> None:
        if self.state == CLOSED:
            return
        self.fail(StompFault("Connection closed", reason), None)

    def _on_alarm(self, alarms: set[str]) -> None:
        self.blocked = bool(alarms)
        self._update_reading()

    def _handshake_timeout(self) -> None:
        self._handshake_handle = None
        if self.state == AWAITING_CONNECT:
            self.fail(StompFault("Handshake timeout", "no CONNECT frame in time"), None)

    def teardown(self) -> None:
        """The connection is gone: subscriptions cancelled, transactions aborted, unacked
        deliveries back to their queues (redelivered), exclusive queues deleted."""
        if self.state == CLOSED and self.id not in self.broker.connections:
            return
        self.state = CLOSED
        broker = self.broker
        if broker.connections.pop(self.id, None) is not None:  # type: ignore[call-overload]
            broker.counters["connections_closed"] += 1
        for handle in (self._heart_beat_handle, self._receive_check_handle, self._handshake_handle):
            if handle is not None:
                handle.cancel()
        self._heart_beat_handle = self._receive_check_handle = self._handshake_handle = None
        try:
            broker.alarm_listeners.remove(self._on_alarm)
        except ValueError:
            pass
        broker.unwatch_ack_timeouts(self)
        self.transactions.clear()
        subscriptions = list(self.subscriptions.values())
        self.subscriptions.clear()
        for subscription in subscriptions:
            subscription.queue.remove_consumer(subscription)
        self._requeue(list(self.unacked.values()))
        self.unacked.clear()
        if self.vhost is not None:
            self.vhost.owner_closed(self)

    def _requeue(self, records: list[_Unacked]) -> None:
        by_queue: dict[int, tuple[Queue, list[QueueEntry]]] = {}
        for record in records:
            record.subscription.unacked -= 1
            by_queue.setdefault(id(record.queue), (record.queue, []))[1].append(record.entry)
        for queue, entries in by_queue.values():
            queue.requeue(entries)

    # --- dispatch ----------------------------------------------------------------------

    def _handle(self, frame: Frame) -> None:
        command = frame.command
        if command not in _ALLOWED[self.state]:
            if self.state == AWAITING_CONNECT:
                raise StompFault("Illegal frame", f"{command} before CONNECT")
            raise StompFault("Illegal frame", f"{command} is not allowed after CONNECT")
        try:
            handler = _HANDLERS[command]
            handler(self, frame)
        except StompFault as fault:
            self.fail(fault, frame)
            return
        except CoreError as exc:
            self.fail(_core_fault(exc), frame)
            return
        if command in _CONNECT_COMMANDS or command == "DISCONNECT" or self.state == CLOSED:
            return
        receipt = frame.get("receipt")
        if receipt is not None and not self._receipt_deferred:
            self.send_frame("RECEIPT", [("receipt-id", receipt)])
        self._receipt_deferred = False

    # --- CONNECT ---------------------------------------------------------------------

    def on_connect(self, frame: Frame) -> None:
        version = negotiate_version(frame.get("accept-version"))
        if version is None:
            self.version = "1.2"
            raise StompFault("Version mismatch", f"Supported versions are {','.join(VERSIONS)}")
        self.version = version
        self.reader.version = version
        config = self.config
        login = frame.get("login")
        passcode = frame.get("passcode")
        if login is None:
            # RabbitMQ's STOMP plugin logs in as its default_user (guest) when CONNECT has
            # no login; the loopback restriction below still applies.
            login, passcode = config.default_user, config.default_pass
        user = self.broker.authenticate(login, passcode or "")
        if user is None:
            log.warning("STOMP login refused for user %r from %s", login, self.name)
            raise StompFault("Bad CONNECT", f"Access refused for user '{login}'")
        if user.name in config.loopback_users and not is_loopback(self.peer[0]):
            raise StompFault("Bad CONNECT", f"user '{user.name}' can only connect via localhost")
        vhost_name = frame.get("host") or "/"
        vhost = self.broker.vhosts.get(vhost_name)
        permission = self.broker.permission(user.name, vhost_name) if vhost is not None else None
        if vhost is None or permission is None:
            raise StompFault("Bad CONNECT", f"Virtual host '{vhost_name}' access denied")
        client_x, client_y = parse_heart_beat(frame.get("heart-beat"))
        # Mirror the client (RabbitMQ): we send as often as it wants to receive, and
        # accept what it offers to send; a floor keeps a 1 ms request from costing a
        # timer per millisecond.
        server_x = max(client_y, HEART_BEAT_FLOOR_MS) if client_y else 0
        server_y = max(client_x, HEART_BEAT_FLOOR_MS) if client_x else 0
        self.username = user.name
        self.vhost = vhost
        self.permission = permission
        self.publisher = Publisher(self.broker, vhost, user.name, permission)
        self.session = "session-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("=")
        self.client_properties = {"product": frame.get("client-id") or "STOMP client"}
        self.state = OPEN
        if self._handshake_handle is not None:
            self._handshake_handle.cancel()
            self._handshake_handle = None
        self.send_frame(
            "CONNECTED",
            [
                ("server", SERVER_NAME),
                ("session", self.session),
                ("heart-beat", f"{server_x},{server_y}"),
                ("version", version),
            ],
        )
        self._start_heart_beats(server_x / 1000.0, server_y / 1000.0)
        self.broker.alarm_listeners.append(self._on_alarm)
        if self.broker.alarms:
            self._on_alarm(self.broker.alarms)
        self.broker.watch_ack_timeouts(self)

    def _start_heart_beats(self, send_every: float, receive_every: float) -> None:
        self._send_interval = send_every
        self._receive_interval = receive_every
        self.heartbeat = int(max(send_every, receive_every))
        if send_every:
            self._heart_beat_handle = self.broker.call_later(send_every, self._heart_beat_tick)
        if receive_every:
            self._receive_check_handle = self.broker.call_later(receive_every, self._receive_check)

    def _heart_beat_tick(self) -> None:
        self._heart_beat_handle = None
        if self.state != OPEN:
            return
        if not self._sent_since_tick and not self.write_paused:
            self.write(b"\n")
        self._sent_since_tick = False
        self._heart_beat_handle = self.broker.call_later(self._send_interval, self._heart_beat_tick)

    def _receive_check(self) -> None:
        self._receive_check_handle = None
        if self.state != OPEN:
            return
        silent = self.broker.now() - self._last_received
        if silent > self._receive_interval * HEART_BEAT_MARGIN and not self.output_full:
            log.info("STOMP connection %s: no heart-beat for %.1fs, closing", self.name, silent)
            self.fail(StompFault("Heart-beat timeout", f"nothing received for {silent:.1f}s"), None)
            self.flush()
            return
        self._receive_check_handle = self.broker.call_later(self._receive_interval, self._receive_check)

    def on_disconnect(self, frame: Frame) -> None:
        receipt = frame.get("receipt")
        if receipt is not None:
            self.send_frame("RECEIPT", [("receipt-id", receipt)])
        self.close()

    # --- SEND --------------------------------------------------------------------------

    def on_send(self, frame: Frame) -> None:
        transaction = frame.get("transaction")
        destination = parse_destination(frame.get("destination"))  # checked now, even in a tx
        if not self.is_publisher:
            self.is_publisher = True
            if self.blocked:
                self._update_reading()
        if transaction is not None:
            self._transaction(transaction).append(frame)
            return
        outcome, replicating = self._publish(frame, destination)
        receipt = frame.get("receipt")
        if receipt is not None:
            self._receipt_when_stored(receipt, frame, outcome, replicating)

    def _receipt_when_stored(self, receipt: str, frame: Frame, outcome: int, replicating: list[Any] | None) -> None:
        """A RECEIPT for persistent messages means "stored": it goes out after the fsync
        (and replication) covering them, as RabbitMQ sends it after the publisher
        confirm; a failed write is an ERROR instead."""
        publisher = self.publisher
        assert publisher is not None

        def stored() -> None:
            if self.state == OPEN:
                self.send_frame("RECEIPT", [("receipt-id", receipt)])

        def failed(exc: BaseException) -> None:
            if self.state == OPEN:
                self.fail(StompFault("Message not stored", str(exc)), frame)

        self._receipt_deferred = publisher.when_stored(outcome, replicating, stored, failed)

    def _publish(self, frame: Frame, destination: Destination) -> tuple[int, list[Any] | None]:
        self.server.counters["received"] += 1
        vhost = self.vhost
        publisher = self.publisher
        assert vhost is not None and publisher is not None
        kind = destination.kind
        if kind == "queue":
            self._declare_queue(destination.name, durable=True, arguments=_queue_arguments(frame))
            exchange, routing_key = "", destination.name
        elif kind in ("amq-queue", "reply-queue"):
            exchange, routing_key = "", destination.name
        elif kind == "temp-queue":
            exchange, routing_key = "", self._temp_queue(destination.name).name
        else:
            exchange, routing_key = destination.name, destination.key
        message = self._message(frame, exchange, routing_key)
        result = publisher.publish(exchange, message)
        if result.refused:
            raise StompFault("Message refused", f"a queue refused the message sent to {frame.get('destination')}")
        return result.outcome, result.replicating

    def _message(self, frame: Frame, exchange: str, routing_key: str) -> Message:
        fields = frame.header_map
        headers: dict[str, Any] = {}
        for name, value in fields.items():
            if name not in _FRAME_HEADERS and name not in _FIELD_HEADERS:
                headers[name] = value
        reply_to = fields.get("reply-to")
        if reply_to is not None and reply_to.startswith("/temp-queue/"):
            # RabbitMQ: the sender is subscribed to a private queue for the replies and
            # the header is rewritten to a destination others can send to.
            queue = self._temp_queue(reply_to[len("/temp-queue/") :])
            reply_to = f"/reply-queue/{queue.name}"
        expiration_ms = None
        if "expiration" in fields:
            expiration_ms = _non_negative(fields["expiration"], "expiration")
        priority = _non_negative(fields["priority"], "priority") if "priority" in fields else 0
        timestamp = _non_negative(fields["timestamp"], "timestamp") if "timestamp" in fields else None
        return Message.build(
            exchange,
            routing_key,
            frame.body,
            persistent=fields.get("persistent") == "true",
            priority=min(priority, 255),
            expiration_ms=expiration_ms,
            published_at=self.broker.wall_time(),
            headers=headers or None,
            content_type=fields.get("content-type"),
            content_encoding=fields.get("content-encoding"),
            correlation_id=fields.get("correlation-id"),
            reply_to=reply_to,
            message_id=fields.get("amqp-message-id"),
            user_id=fields.get("user-id"),
            timestamp=timestamp,
        )

    # --- queues ------------------------------------------------------------------------

    def _check(self, kind: str, resource: str) -> None:
        permission = self.permission
        if permission is None or not permission.allows(kind, resource):
            assert self.vhost is not None
            raise StompFault(
                "access_refused",
                f"{kind} access to '{resource}' in vhost '{self.vhost.name}' refused for user '{self.username}'",
            )

    def _declare_queue(self, name: str, *, durable: bool, arguments: dict[str, Any], exclusive: bool = False, auto_delete: bool = False) -> Queue:
        vhost = self.vhost
        assert vhost is not None
        existing = vhost.queues.get(name) if name else None
        if existing is not None and not arguments:
            vhost.check_exclusive(existing, self)
            return existing
        if existing is None:
            self._check("configure", name)
        queue, _ = vhost.declare_queue(
            name,
            durable=durable,
            exclusive_owner=self if exclusive else None,
            auto_delete=auto_delete,
            arguments=arguments,
        )
        return queue

    def _temp_queue(self, name: str) -> Queue:
        queue = self.temp_queues.get(name)
        if queue is not None and not queue.deleted:
            return queue
        queue = self._declare_queue("", durable=False, arguments={}, exclusive=True, auto_delete=True)
        self.temp_queues[name] = queue
        sub_id = f"/temp-queue/{name}"
        subscription = Subscription(sub_id, self, queue, "auto", 0)
        self.subscriptions[sub_id] = subscription
        queue.add_consumer(subscription)
        return queue

    # --- SUBSCRIBE / UNSUBSCRIBE -------------------------------------------------------

    def on_subscribe(self, frame: Frame) -> None:
        vhost = self.vhost
        assert vhost is not None
        destination = parse_destination(frame.get("destination"))
        sub_id = frame.get("id")
        if sub_id is None:
            if self.version != "1.0":
                raise StompFault("Missing header", "SUBSCRIBE needs an 'id' header")
            sub_id = frame.get("destination") or ""
        if sub_id in self.subscriptions:
            raise StompFault("Duplicated subscription identifier", f"a subscription '{sub_id}' already exists")
        ack_mode = frame.get("ack", "auto")
        if ack_mode not in ("auto", "client", "client-individual"):
            raise StompFault("Invalid ack mode", f"'{ack_mode}' is not auto, client or client-individual")
        prefetch = _non_negative(frame.get("prefetch-count") or frame.get("activemq.prefetchSize") or "0", "prefetch-count")
        selector = self._compile_selector(frame.get("selector"))
        arguments = _queue_arguments(frame)
        if frame.get("activemq.exclusive") == "true":
            # ActiveMQ's exclusive consumer is RabbitMQ's single active consumer: a queue
            # this subscription declares gets it; an existing queue declared without it
            # answers "inequivalent arg" rather than silently sharing.
            arguments["x-single-active-consumer"] = True
        kind = destination.kind
        durable_queue = False
        if kind == "queue":
            queue = self._declare_queue(destination.name, durable=True, arguments=arguments)
        elif kind == "amq-queue":
            queue = vhost.get_queue(destination.name)
            vhost.check_exclusive(queue, self)
        elif kind in ("topic", "exchange"):
            exchange = vhost.get_exchange(destination.name)
            durable_name = self._durable_subscription_name(frame, sub_id)
            if durable_name is not None:
                queue = self._declare_queue(durable_name, durable=True, arguments=arguments)
                durable_queue = True
            else:
                queue = self._declare_queue(
                    "stomp-subscription-" + base64.urlsafe_b64encode(os.urandom(16)).decode().rstrip("="),
                    durable=False,
                    arguments=arguments,
                    exclusive=True,
                    auto_delete=True,
                )
            self._check("write", queue.name)
            self._check("read", exchange.name)
            vhost.bind(exchange.name, queue, destination.key, {})
        else:
            raise StompFault("Invalid destination", f"cannot subscribe to {frame.get('destination')}")
        if getattr(queue, "is_stream", False):
            raise StompFault("Not supported", f"queue '{queue.name}' is a stream; STOMP consumes classic queues only")
        self._check("read", queue.name)
        subscription = Subscription(sub_id, self, queue, ack_mode, prefetch)
        subscription.selector = selector
        subscription.durable_queue = durable_queue
        self.subscriptions[sub_id] = subscription
        queue.add_consumer(subscription)

    @staticmethod
    def _durable_subscription_name(frame: Frame, sub_id: str) -> str | None:
        durable = frame.get("durable") == "true" or frame.get("persistent") == "true"
        name = frame.get("activemq.subscriptionName")
        if name is not None:
            # ActiveMQ names a durable subscription by client-id + subscription name.
            key = f"{frame.get('client-id', '')}:{name}"
        elif durable:
            key = f"{frame.get('client-id', '')}:{sub_id}" if frame.get("client-id") else sub_id
        else:
            return None
        digest = hashlib.md5(key.encode("utf-8"), usedforsecurity=False).digest()
        return "stomp-subscription-" + base64.urlsafe_b64encode(digest).decode().rstrip("=")

    @staticmethod
    def _compile_selector(text: str | None) -> Any:
        if not text:
            return None
        try:
            from ...core.selector import compile_selector  # type: ignore[import-not-found]
        except ImportError:
            raise StompFault("Selectors not available", "this broker has no selector support yet") from None
        try:
            return compile_selector(text)
        except ValueError as exc:  # SelectorError(ValueError)
            raise StompFault("Invalid selector", str(exc)) from None

    def on_unsubscribe(self, frame: Frame) -> None:
        sub_id = frame.get("id")
        if sub_id is None and self.version == "1.0":
            sub_id = frame.get("destination")
        if sub_id is None:
            raise StompFault("Missing header", "UNSUBSCRIBE needs an 'id' header")
        subscription = self.subscriptions.pop(sub_id, None)
        if subscription is None:
            raise StompFault("No such subscription", f"no subscription '{sub_id}'")
        queue = subscription.queue
        queue.remove_consumer(subscription)
        # Its unacked messages go back now (RabbitMQ cancels the consumer; the channel's
        # unacked deliveries would otherwise wait for the connection to end).
        records = [r for r in self.unacked.values() if r.subscription is subscription]
        for tag in [t for t, r in self.unacked.items() if r.subscription is subscription]:
            del self.unacked[tag]
        self._requeue(records)
        if subscription.durable_queue and (frame.get("durable") == "true" or frame.get("persistent") == "true"):
            # RabbitMQ: UNSUBSCRIBE with durable:true ends the durable subscription.
            assert self.vhost is not None
            self.vhost.delete_queue(queue)

    def subscription_cancelled(self, subscription: Subscription) -> None:
        """The queue was deleted under the subscription."""
        if self.subscriptions.get(subscription.id) is subscription:
            del self.subscriptions[subscription.id]
            if self.state == OPEN:
                self.fail(StompFault("Server cancelled subscription", f"queue '{subscription.queue.name}' was deleted"), None)

    # --- delivery (hot path) -----------------------------------------------------------

    def send_message(self, subscription: Subscription, queue: Queue, entry: QueueEntry) -> None:
        message = entry.message
        assert message is not None
        tag = self.next_tag
        self.next_tag = tag + 1
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        tag_text = str(tag)
        sub_id = subscription.id
        if sub_id.startswith("/temp-queue/"):
            destination = sub_id
        else:
            destination = destination_of(message)
        headers = [
            ("subscription", sub_id),
            ("destination", destination),
            ("message-id", tag_text),
            ("redelivered", "true" if redelivered else "false"),
        ]
        if not subscription.no_ack and self.version == "1.2":
            headers.append(("ack", tag_text))
        _message_headers(message, headers)
        body = message.body
        headers.append(("content-length", str(len(body))))
        self.write(encode_frame("MESSAGE", headers, body, self.version))
        self.server.counters["delivered"] += 1
        if subscription.no_ack:
            queue.settle_delivered(entry)
        else:
            self.unacked[tag] = _Unacked(subscription, queue, entry)
            subscription.unacked += 1

    # --- acknowledgement timeout --------------------------------------------------------

    def check_ack_timeout(self, now: float) -> None:
        """The broker's periodic tick (``BrokerCore.watch_ack_timeouts``): ERROR and close
        when the oldest unacked delivery waited longer than the queue's
        ``x-consumer-timeout`` or the broker's ``consumer_timeout`` (RabbitMQ closes the
        STOMP connection's channel, and with it the connection).  The same marks as the
        AMQP channel (channel.py ``check_ack_timeout``): nothing per delivery, each tick
        that saw deliveries leaves (next delivery number, time), so the timeout never
        fires early and at most about one tick late."""
        unacked = self.unacked
        marks = self._delivery_marks
        if not unacked or self.state != OPEN:
            marks.clear()
            return
        oldest = next(iter(unacked))
        while marks and marks[0][0] <= oldest:
            marks.popleft()
        next_tag = self.next_tag
        if not marks:
            marks.append((next_tag, now))
            return  # delivered since the last tick: not old enough to judge yet
        if marks[-1][0] != next_tag and len(marks) < 64:
            marks.append((next_tag, now))
        timeout = unacked[oldest].queue.settings.consumer_timeout
        if timeout is None:
            timeout = self.broker.config.consumer_timeout
        if not timeout:
            return
        self.broker.note_ack_timeout(timeout)
        if (now - marks[0][1]) * 1000.0 < timeout:
            return
        self.fail(
            StompFault(
                "Delivery acknowledgement timed out",
                f"no ACK for message {oldest} within the timeout. Timeout value used: {timeout} ms",
            ),
            None,
        )

    # --- ACK / NACK --------------------------------------------------------------------

    def on_ack(self, frame: Frame) -> None:
        self._settle_frame(frame, ack=True)

    def on_nack(self, frame: Frame) -> None:
        self._settle_frame(frame, ack=False)

    def _settle_frame(self, frame: Frame, *, ack: bool) -> None:
        ack_id = frame.get("id") if self.version == "1.2" else frame.get("message-id", frame.get("id"))
        if ack_id is None:
            raise StompFault("Missing header", f"{frame.command} needs an '{'id' if self.version == '1.2' else 'message-id'}' header")
        transaction = frame.get("transaction")
        if transaction is not None:
            self._transaction(transaction).append(frame)
            return
        self._settle(ack_id, ack, frame.get("requeue") != "false")

    def _settle(self, ack_id: str, ack: bool, requeue: bool) -> None:
        tag = int(ack_id) if ack_id.isdigit() and len(ack_id) < 20 else -1
        record = self.unacked.get(tag)
        if record is None:
            raise StompFault("Unknown ack id", f"no unacknowledged message with id '{ack_id}'")
        subscription = record.subscription
        if subscription.ack_mode == "client":
            # Cumulative: this message and every earlier one of the same subscription.
            tags = [t for t, r in self.unacked.items() if t <= tag and r.subscription is subscription]
        else:
            tags = [tag]
        records = [self.unacked.pop(t) for t in tags]
        if not ack and requeue:
            self._requeue(records)
            return
        touched: list[Queue] = []
        for record in records:
            record.subscription.unacked -= 1
            queue = record.queue
            if ack:
                queue.ack(record.entry)
            else:
                queue.reject(record.entry, False)  # dead-letters if the queue says so
            if queue not in touched:
                touched.append(queue)
        for queue in touched:
            if queue.consumers and not queue.deleted:
                queue.drain()

    # --- transactions ------------------------------------------------------------------

    def _transaction(self, name: str) -> list[Frame]:
        frames = self.transactions.get(name)
        if frames is None:
            raise StompFault("Bad transaction", f"invalid transaction identifier: {name}")
        return frames

    def on_begin(self, frame: Frame) -> None:
        name = frame.get("transaction")
        if name is None:
            raise StompFault("Missing transaction", "BEGIN needs a 'transaction' header")
        if name in self.transactions:
            raise StompFault("Bad transaction", f"transaction '{name}' is already open")
        self.transactions[name] = []

    def on_commit(self, frame: Frame) -> None:
        name = frame.get("transaction")
        if name is None:
            raise StompFault("Missing transaction", "COMMIT needs a 'transaction' header")
        frames = self._transaction(name)
        del self.transactions[name]
        outcome = 0
        replicating: list[Any] = []
        for item in frames:
            if item.command == "SEND":
                sent, handles = self._publish(item, parse_destination(item.get("destination")))
                outcome |= sent
                replicating.extend(handles or ())
            else:
                ack_id = item.get("id") if self.version == "1.2" else item.get("message-id", item.get("id"))
                assert ack_id is not None
                self._settle(ack_id, item.command == "ACK", item.get("requeue") != "false")
        receipt = frame.get("receipt")
        if receipt is not None:
            self._receipt_when_stored(receipt, frame, outcome, replicating or None)

    def on_abort(self, frame: Frame) -> None:
        name = frame.get("transaction")
        if name is None:
            raise StompFault("Missing transaction", "ABORT needs a 'transaction' header")
        self._transaction(name)
        del self.transactions[name]


_HANDLERS = {
    "CONNECT": StompConnection.on_connect,
    "STOMP": StompConnection.on_connect,
    "SEND": StompConnection.on_send,
    "SUBSCRIBE": StompConnection.on_subscribe,
    "UNSUBSCRIBE": StompConnection.on_unsubscribe,
    "ACK": StompConnection.on_ack,
    "NACK": StompConnection.on_nack,
    "BEGIN": StompConnection.on_begin,
    "COMMIT": StompConnection.on_commit,
    "ABORT": StompConnection.on_abort,
    "DISCONNECT": StompConnection.on_disconnect,
}


def _non_negative(value: str, name: str) -> int:
    if not value.isdigit() or len(value) > 18:
        raise StompFault("Invalid header", f"'{name}' must be a non-negative integer, not {value[:32]!r}")
    return int(value)


def _message_headers(message: Message, headers: list[tuple[str, str]]) -> None:
    """The neutral fields and headers of ``message`` as MESSAGE headers (module docstring)."""
    content_type = message.content_type
    if content_type is not None:
        headers.append(("content-type", content_type))
    reply_to = message.reply_to
    if reply_to is not None and not reply_to.startswith("/"):
        # RabbitMQ: an AMQP reply-to names a queue; STOMP clients get a destination.
        reply_to = "/reply-queue/" + reply_to
    for name, value in (
        ("content-encoding", message.content_encoding),
        ("correlation-id", message.correlation_id),
        ("reply-to", reply_to),
        ("amqp-message-id", message.message_id),
        ("user-id", message.user_id),
    ):
        if value is not None:
            headers.append((name, value))
    if message.expiration_ms is not None:
        headers.append(("expiration", str(message.expiration_ms)))
    if message.priority:
        headers.append(("priority", str(message.priority)))
    if message.persistent:
        headers.append(("persistent", "true"))
    timestamp = message.timestamp
    if timestamp is not None:
        headers.append(("timestamp", str(int(timestamp))))
    custom = message.headers
    if custom:
        for name, value in custom.items():
            if name in _MESSAGE_RESERVED:
                continue
            text = _header_text(value)
            if text is not None:
                headers.append((name, text))


def _header_text(value: Any) -> str | None:
    """A typed header value as STOMP text; tables and arrays have no STOMP form and are
    left out (RabbitMQ does the same)."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, bytes | bytearray):
        return bytes(value).decode("utf-8", "replace")
    if value is None or isinstance(value, list | dict):
        return None
    return str(value)
