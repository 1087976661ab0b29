"""REST messaging: publish over HTTP, consume with leases (long poll or WebSocket).

Theory of operation
-------------------
ActiveMQ's REST API removed a message from the queue when it answered a GET, so a
response lost on the wire lost the message.  Here a consumed message is *leased*, never
removed: the REST consumer is registered on the queue like an AMQP consumer (the core's
``Consumer`` protocol), the queue delivers the entry synchronously, and the entry stays
unacked (it counts in ``messages_unacknowledged``) until one of:

* ``POST .../leases/{id}/ack``                -> ``queue.ack``          (done)
* ``POST .../leases/{id}/nack?requeue=true``  -> ``queue.reject``       (back, or dead-lettered)
* the lease timer fires                       -> ``queue.reject(requeue)`` (back, redelivered)
* the WebSocket closes                        -> ``queue.requeue``      (back, in order)

So a client that disconnects while the response is being written loses nothing: its
lease simply expires.  A long poll whose client disconnects *before* a message arrived
is cancelled by aiohttp (``handler_cancellation``) and its waiter leaves the queue.

Settlement is idempotent: a settled lease id is remembered (bounded, oldest forgotten
first), so acking twice answers 200 both times; an unknown or expired lease is 404.

Bounds (each with its overflow answer):

* leases per client (user + ``X-Baedal-Client-Id``): ``LEASES_PER_CLIENT`` = 1000, then
  429 -- the same role as NATS JetStream's ``max_ack_pending``;
* leases in total: ``MAX_LEASES`` = 100 000, then 429;
* remembered settlements: ``SETTLED_MEMORY`` = 10 000 ids;
* idempotency keys: ``IDEMPOTENCY_MAX`` = 10 000 within ``IDEMPOTENCY_WINDOW`` = 10 min
  (the IETF Idempotency-Key draft leaves the window to the server; Stripe keeps 24 h);
* WebSocket outbound frames: at most ``prefetch`` (credit) outstanding leases, so the
  send queue never holds more than ``prefetch`` frames;
* publish bodies: the broker's ``max_message_size`` (413 past it).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import time
import uuid
from collections import OrderedDict, deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import WSMsgType, web

from ...core.publish import NEEDS_SYNC, REFUSED, UNROUTABLE, Publisher
from ...core.vhost import CoreError
from .auth import check_permission
from .convert import (
    check_table,
    decode_payload,
    encode_payload,
    make_message,
    message_properties,
    properties_from_json,
)
from .errors import HTTPError, bad_request, from_core, not_found
from .routes import dumps, query_bool, query_number, reply, server_of

if TYPE_CHECKING:
    from ...core.broker import BrokerCore, User
    from ...core.message import QueueEntry
    from ...core.queue import Queue
    from ...core.vhost import VirtualHost
    from .server import HTTPServer

LEASES_PER_CLIENT = 1000
MAX_LEASES = 100_000
SETTLED_MEMORY = 10_000
IDEMPOTENCY_MAX = 10_000
IDEMPOTENCY_WINDOW = 600.0
MAX_WAIT = 60.0
MAX_LEASE = 3600.0
DEFAULT_LEASE = 30.0
DEFAULT_PREFETCH = 10
MAX_PREFETCH = 1000
WS_MAX_FRAME = 1024 * 1024
ENVELOPE_TYPE = "application/vnd.baedal.envelope+json"
HEADER_PREFIX = "x-baedal-header-"


class Lease:
    __slots__ = ("id", "queue", "entry", "client", "user", "timer", "session", "expires_at")

    def __init__(
        self,
        lease_id: str,
        queue: Queue,
        entry: QueueEntry,
        client: str,
        user: str,
        session: SocketSession | None,
    ) -> None:
        self.id = lease_id
        self.queue = queue
        self.entry = entry
        self.client = client
        self.user = user
        self.session = session
        self.timer: asyncio.TimerHandle | None = None
        self.expires_at: float | None = None


class LeaseManager:
    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.leases: dict[str, Lease] = {}
        self.per_client: dict[str, int] = {}
        self.settled: OrderedDict[str, str] = OrderedDict()
        self.idempotency: OrderedDict[tuple[str, ...], IdempotentPublish] = OrderedDict()
        self.waiters: set[PollWaiter] = set()
        self.sessions: set[SocketSession] = set()
        self.leases_per_client = LEASES_PER_CLIENT
        self.max_leases = MAX_LEASES
        self.closed = False

    # --- leases ------------------------------------------------------------------------

    def has_room(self, client: str) -> bool:
        return (
            not self.closed
            and len(self.leases) < self.max_leases
            and self.per_client.get(client, 0) < self.leases_per_client
        )

    def grant(
        self,
        queue: Queue,
        entry: QueueEntry,
        client: str,
        user: str,
        seconds: float | None,
        session: SocketSession | None = None,
    ) -> Lease:
        lease_id = secrets.token_urlsafe(18)
        lease = Lease(lease_id, queue, entry, client, user, session)
        if seconds:
            loop = asyncio.get_running_loop()
            lease.expires_at = time.time() + seconds
            lease.timer = loop.call_later(seconds, self._expire, lease_id)
        self.leases[lease_id] = lease
        self.per_client[client] = self.per_client.get(client, 0) + 1
        return lease

    def _forget(self, lease: Lease, outcome: str) -> None:
        self.leases.pop(lease.id, None)
        remaining = self.per_client.get(lease.client, 1) - 1
        if remaining > 0:
            self.per_client[lease.client] = remaining
        else:
            self.per_client.pop(lease.client, None)
        if lease.timer is not None:
            lease.timer.cancel()
            lease.timer = None
        if lease.session is not None:
            lease.session.leases.pop(lease.id, None)
        self.settled[lease.id] = outcome
        while len(self.settled) > SETTLED_MEMORY:
            self.settled.popitem(last=False)

    def _expire(self, lease_id: str) -> None:
        lease = self.leases.get(lease_id)
        if lease is None:
            return
        lease.timer = None
        self._forget(lease, "expired")
        lease.queue.reject(lease.entry, True)  # back to the queue, flagged redelivered
        if lease.session is not None:
            lease.session.credit_returned()

    def settle(
        self,
        lease_id: str,
        user: str,
        queue: Queue | None,
        how: str,
        requeue: bool,
        before_queue: Callable[[str], None] | None = None,
    ) -> tuple[str, bool]:
        """Ack or nack; returns (outcome, replayed).  Raises 404 / 409 as documented.

        ``before_queue(outcome)`` runs after the lease is settled and before the queue
        acts on it, so a WebSocket's "settled" frame precedes the delivery it frees."""
        outcome = "ack" if how == "ack" else ("requeue" if requeue else "reject")
        lease = self.leases.get(lease_id)
        if lease is None or lease.user != user or (queue is not None and lease.queue is not queue):
            previous = self.settled.get(lease_id)
            if previous is None or lease is not None:
                raise not_found(f"no lease '{lease_id}'")
            if previous == "expired":
                raise HTTPError(
                    404,
                    f"lease '{lease_id}' expired and its message went back to the queue",
                    "lease_expired",
                )
            if previous != outcome:
                raise HTTPError(
                    409, f"lease '{lease_id}' was already settled ({previous})", "already_settled"
                )
            return outcome, True
        self._forget(lease, outcome)
        if before_queue is not None:
            before_queue(outcome)
        target = lease.queue
        if how == "ack":
            target.ack(lease.entry)
            if target.consumers and not target.deleted:
                target.drain()
        else:
            target.reject(lease.entry, requeue)
        if lease.session is not None:
            lease.session.credit_returned()
        return outcome, False

    def release(self, leases: list[Lease]) -> None:
        """Give leases back (socket closed, shutdown), in their queues' original order."""
        by_queue: dict[int, tuple[Queue, list[QueueEntry]]] = {}
        for lease in leases:
            if lease.id not in self.leases:
                continue
            self._forget(lease, "released")
            by_queue.setdefault(id(lease.queue), (lease.queue, []))[1].append(lease.entry)
        for queue, entries in by_queue.values():
            entries.sort()
            queue.requeue(entries)

    def close(self) -> None:
        self.closed = True
        for waiter in list(self.waiters):
            waiter.finish(None)
        self.release(list(self.leases.values()))
        for session in list(self.sessions):
            session.closing = True
            session.wakeup.set()


# --- the consumers the queue sees -----------------------------------------------------


class PollWaiter:
    """One long poll: a consumer that takes exactly one message."""

    priority = 0
    exclusive = False
    no_ack = False

    def __init__(self, manager: LeaseManager, client: str, user: str, lease_seconds: float) -> None:
        self.tag = "http.poll-" + secrets.token_hex(8)
        self.manager = manager
        self.client = client
        self.user = user
        self.owner = None
        self.lease_seconds = lease_seconds
        self.future: asyncio.Future[tuple[Lease, bool] | None] = (
            asyncio.get_running_loop().create_future()
        )
        self.queue_deleted = False

    def can_deliver(self) -> bool:
        return not self.future.done() and self.manager.has_room(self.client)

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        lease = self.manager.grant(queue, entry, self.client, self.user, self.lease_seconds)
        self.finish((lease, redelivered))

    def cancelled_by_server(self, queue: Queue) -> None:
        self.queue_deleted = True
        self.finish(None)

    def finish(self, result: tuple[Lease, bool] | None) -> None:
        if not self.future.done():
            self.future.set_result(result)


class SocketConsumer:
    priority = 0
    exclusive = False
    no_ack = False

    def __init__(self, session: SocketSession) -> None:
        self.session = session
        self.tag = "http.ws-" + secrets.token_hex(8)
        self.owner = None

    def can_deliver(self) -> bool:
        session = self.session
        return (
            not session.closing
            and len(session.leases) < session.prefetch
            and session.manager.has_room(session.client)
        )

    def deliver(self, queue: Queue, entry: QueueEntry) -> None:
        session = self.session
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        lease = session.manager.grant(
            queue, entry, session.client, session.user, session.lease_seconds, session
        )
        session.leases[lease.id] = lease
        session.outbox.append(message_frame(lease, redelivered))
        session.wakeup.set()

    def cancelled_by_server(self, queue: Queue) -> None:
        self.session.outbox.append(
            {"type": "cancelled", "reason": f"queue '{queue.name}' was deleted"}
        )
        self.session.closing = True
        self.session.wakeup.set()


class SocketSession:
    def __init__(
        self,
        manager: LeaseManager,
        queue: Queue,
        client: str,
        user: str,
        prefetch: int,
        lease_seconds: float | None,
    ) -> None:
        self.manager = manager
        self.queue = queue
        self.client = client
        self.user = user
        self.prefetch = prefetch
        self.lease_seconds = lease_seconds
        self.leases: dict[str, Lease] = {}
        self.outbox: deque[dict[str, Any]] = deque()
        self.wakeup = asyncio.Event()
        self.closing = False

    def credit_returned(self) -> None:
        queue = self.queue
        if not self.closing and queue.consumers and not queue.deleted:
            queue.drain()


def message_frame(lease: Lease, redelivered: bool) -> dict[str, Any]:
    message = lease.entry.message
    assert message is not None
    frame: dict[str, Any] = {"type": "message", "lease_id": lease.id}
    frame.update(encode_payload(message.body))
    frame.update(
        {
            "redelivered": redelivered,
            "exchange": message.exchange,
            "routing_key": message.routing_key,
            "properties": message_properties(message),
            "lease_expires_at": lease.expires_at,
        }
    )
    return frame


# --- helpers --------------------------------------------------------------------------


def _vhost(request: web.Request) -> VirtualHost:
    name = request.match_info["vhost"]
    vhost = server_of(request).core.vhosts.get(name)
    if vhost is None:
        raise not_found(f"no vhost '{name}'")
    return vhost


def _queue(request: web.Request, vhost: VirtualHost) -> Queue:
    name = request.match_info["queue"]
    queue = vhost.queues.get(name)
    if queue is None:
        raise not_found(f"no queue '{name}' in vhost '{vhost.name}'")
    return queue


def _user(request: web.Request) -> User:
    user = request["user"]
    assert user is not None
    return user


def _client(request: web.Request, user: User) -> str:
    client_id = request.headers.get("X-Baedal-Client-Id", "")[:128]
    return f"{user.name}\x00{client_id}"


def _consumable(request: web.Request) -> tuple[VirtualHost, Queue, User]:
    server = server_of(request)
    vhost = _vhost(request)
    queue = _queue(request, vhost)
    user = _user(request)
    check_permission(server.core, user, vhost.name, "read", queue.name)
    try:
        vhost.check_exclusive(queue, None)
    except CoreError as exc:
        raise from_core(exc) from None
    if any(c.exclusive for c in queue.consumers):
        raise HTTPError(
            409, f"queue '{queue.name}' in vhost '{vhost.name}' in exclusive use", "resource_locked"
        )
    return vhost, queue, user


def lease_urls(vhost: str, queue: str, lease_id: str) -> tuple[str, str]:
    base = f"/api/rest/{quote(vhost, safe='')}/queues/{quote(queue, safe='')}/leases/{lease_id}"
    return f"{base}/ack", f"{base}/nack"


def _header_value(value: Any) -> str | None:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        text = str(value)
        return text if text.isascii() and text.isprintable() else None
    return None


# --- publish ----------------------------------------------------------------------------


class IdempotentPublish:
    __slots__ = ("fingerprint", "created", "done")

    def __init__(
        self, fingerprint: str, created: float, done: asyncio.Future[dict[str, Any]]
    ) -> None:
        self.fingerprint = fingerprint
        self.created = created
        self.done = done


async def _read_body(request: web.Request, limit: int) -> bytes:
    if request.content_length is not None and request.content_length > limit:
        raise HTTPError(
            413, f"message size {request.content_length} is larger than max size {limit}"
        )
    chunks = []
    size = 0
    async for chunk in request.content.iter_chunked(65536):
        size += len(chunk)
        if size > limit:
            raise HTTPError(413, f"message is larger than max size {limit}")
        chunks.append(chunk)
    return b"".join(chunks)


def _plain_properties(request: web.Request) -> dict[str, Any]:
    headers: dict[str, Any] = {}
    for name, value in request.headers.items():
        if name.lower().startswith(HEADER_PREFIX) and len(name) > len(HEADER_PREFIX):
            headers[name[len(HEADER_PREFIX) :]] = value
    props: dict[str, Any] = {}
    content_type = request.headers.get("Content-Type")
    if content_type:
        props["content_type"] = content_type
    if headers:
        props["headers"] = headers
    for header, key in (
        ("X-Baedal-Message-Id", "message_id"),
        ("X-Baedal-Correlation-Id", "correlation_id"),
        ("X-Baedal-Reply-To", "reply_to"),
        ("X-Baedal-Expiration", "expiration"),
        ("X-Baedal-Type", "type"),
    ):
        if header in request.headers:
            props[key] = request.headers[header]
    if "X-Baedal-Priority" in request.headers:
        try:
            props["priority"] = int(request.headers["X-Baedal-Priority"])
        except ValueError:
            raise bad_request("X-Baedal-Priority must be an integer") from None
    return props


def _envelope(body: bytes) -> tuple[bytes, dict[str, Any]]:
    try:
        doc = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON envelope: {exc}") from None
    if not isinstance(doc, dict):
        raise bad_request("the envelope must be a JSON object")
    payload = decode_payload(doc.get("payload", ""), doc.get("payload_encoding", "string"))
    props = doc.get("properties") or {}
    if not isinstance(props, dict):
        raise bad_request("properties must be an object")
    props = dict(props)
    extra_headers = check_table(doc.get("headers"), "headers")
    if extra_headers:
        merged = dict(check_table(props.get("headers"), "properties.headers"))
        merged.update(extra_headers)
        props["headers"] = merged
    return payload, props


async def publish_message(request: web.Request) -> web.Response:
    server = server_of(request)
    core = server.core
    vhost = _vhost(request)
    queue = _queue(request, vhost)
    user = _user(request)
    persistent = query_bool(request, "persistent", True)
    if "X-Baedal-Persistent" in request.headers:
        persistent = request.headers["X-Baedal-Persistent"].lower() not in ("false", "0", "no")
    key = request.headers.get("Idempotency-Key")
    if key is not None and not 1 <= len(key) <= 255:
        raise bad_request("Idempotency-Key must be 1-255 characters")
    body = await _read_body(request, core.config.max_message_size)
    content_type = (request.headers.get("Content-Type") or "").split(";")[0].strip().lower()
    if content_type == ENVELOPE_TYPE:
        payload, props_json = _envelope(body)
    else:
        payload, props_json = body, _plain_properties(request)
    # What makes two requests "the same" for Idempotency-Key: body, properties, persistence.
    fingerprint = hashlib.sha256(
        body + b"\x00" + dumps([props_json, persistent]).encode()
    ).hexdigest()
    props_json.setdefault("message_id", uuid.uuid4().hex)
    if persistent:
        props_json.setdefault("delivery_mode", 2)
    props = properties_from_json(props_json)
    publisher = http_publisher(core, vhost, user)
    # Fail fast on what the publish path would refuse anyway (permission, user-id,
    # CC/BCC shape), before an Idempotency-Key is remembered for this request.
    exchange = _core_call(publisher.target, "")
    message = make_message("", queue.name, props, payload)
    message, extra_keys = _core_call(publisher.admit, exchange, message)
    blocked = publisher.blocked
    if blocked is not None:
        raise HTTPError(
            503,
            f"publishing is blocked: {blocked}",
            "resource_alarm",
            {"Retry-After": "5"},
        )

    manager = server.leases
    idem_key: tuple[str, ...] | None = None
    if key is not None:
        idem_key = (user.name, vhost.name, queue.name, key)
        _prune_idempotency(manager)
        seen = manager.idempotency.get(idem_key)
        if seen is not None:
            if seen.fingerprint != fingerprint:
                raise HTTPError(
                    422,
                    "Idempotency-Key was already used with a different request",
                    "idempotency_key_reused",
                )
            result = await asyncio.shield(seen.done)
            return reply(
                result, 201, {"Idempotent-Replayed": "true", "Location": result["location"]}
            )
        done: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        manager.idempotency[idem_key] = IdempotentPublish(fingerprint, time.monotonic(), done)
        while len(manager.idempotency) > IDEMPOTENCY_MAX:
            manager.idempotency.popitem(last=False)[1].done.cancel()
    try:
        outcome = publisher.deliver(exchange, message, extra_keys)
        if outcome & (REFUSED | UNROUTABLE):
            raise HTTPError(
                409,
                f"queue '{queue.name}' in vhost '{vhost.name}' refused the message (overflow)"
                if outcome & REFUSED
                else f"no queue '{queue.name}' in vhost '{vhost.name}' took the message",
                "publish_refused",
            )
        await wait_stored(publisher, outcome)
    except BaseException as exc:
        if idem_key is not None:
            entry = manager.idempotency.pop(idem_key, None)
            if entry is not None and not entry.done.done():
                if isinstance(exc, Exception):
                    entry.done.set_exception(exc)
                    entry.done.exception()  # retrieved: a replay re-raises its own copy
                else:
                    entry.done.cancel()
        raise
    result = {
        "message_id": props.message_id,
        "vhost": vhost.name,
        "queue": queue.name,
        "persistent": message.persistent,
        "location": f"/api/rest/{quote(vhost.name, safe='')}/queues/{quote(queue.name, safe='')}/messages/{quote(props.message_id or '', safe='')}",
    }
    if idem_key is not None:
        entry = manager.idempotency.get(idem_key)
        if entry is not None and not entry.done.done():
            entry.done.set_result(result)
    return reply(result, 201, {"Location": result["location"]})


def http_publisher(core: BrokerCore, vhost: VirtualHost, user: User) -> Publisher:
    """The core publish path (core/publish.py) as an HTTP user: the same checks as an
    AMQP channel of that user (write permission on the exchange, user-id, CC/BCC...)."""
    return Publisher(core, vhost, user.name, core.permission(user.name, vhost.name))


def _core_call(step: Callable[..., Any], *args: Any) -> Any:
    try:
        return step(*args)
    except CoreError as exc:
        raise from_core(exc) from None


async def wait_stored(
    publisher: Publisher, outcome: int, replicating: list[Any] | None = None
) -> None:
    """Answer only once the message is as safe as a publisher confirm makes it: a
    persistent message in a durable queue fsynced, and every replication handle done."""
    if replicating is None:
        replicating = publisher.take_replicating()
    if not outcome & NEEDS_SYNC and not replicating:
        return
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def stored() -> None:
        if not done.done():
            done.set_result(None)

    def failed(exc: BaseException) -> None:
        if not done.done():
            done.set_exception(HTTPError(503, f"message not stored: {exc}", "storage_failed"))

    if publisher.when_stored(outcome, replicating, stored, failed):
        await asyncio.shield(done)


def _prune_idempotency(manager: LeaseManager) -> None:
    cutoff = time.monotonic() - IDEMPOTENCY_WINDOW
    table = manager.idempotency
    while table:
        oldest = next(iter(table.values()))
        if oldest.created >= cutoff:
            break
        table.popitem(last=False)


# --- long poll --------------------------------------------------------------------------


async def next_message(request: web.Request) -> web.StreamResponse:
    server = server_of(request)
    manager = server.leases
    wait = query_number(request, "wait", 30.0, 0.0, MAX_WAIT)
    lease_seconds = query_number(request, "lease", DEFAULT_LEASE, 1.0, MAX_LEASE)
    vhost, queue, user = _consumable(request)
    client = _client(request, user)
    if not manager.has_room(client):
        raise HTTPError(
            429,
            f"client holds {manager.per_client.get(client, 0)} leases; ack some first",
            "too_many_leases",
            {"Retry-After": "1"},
        )
    waiter = PollWaiter(manager, client, user.name, lease_seconds)
    manager.waiters.add(waiter)
    timer = asyncio.get_running_loop().call_later(wait, waiter.finish, None)
    try:
        queue.add_consumer(waiter)  # may deliver at once
        result = await waiter.future
    finally:
        timer.cancel()
        manager.waiters.discard(waiter)
        if not queue.deleted:
            queue.remove_consumer(waiter)
    if result is None:
        if waiter.queue_deleted:
            raise not_found(f"queue '{queue.name}' was deleted")
        return web.Response(status=204, headers={"Cache-Control": "no-store"})
    lease, redelivered = result
    return _lease_response(vhost, queue, lease, redelivered)


def _lease_response(
    vhost: VirtualHost, queue: Queue, lease: Lease, redelivered: bool
) -> web.Response:
    message = lease.entry.message
    assert message is not None
    ack_url, nack_url = lease_urls(vhost.name, queue.name, lease.id)
    headers = {
        "X-Baedal-Lease-Id": lease.id,
        "X-Baedal-Ack-URL": ack_url,
        "X-Baedal-Nack-URL": nack_url,
        "X-Baedal-Redelivered": "true" if redelivered else "false",
        "X-Baedal-Exchange": quote(message.exchange, safe=""),
        "X-Baedal-Routing-Key": quote(message.routing_key, safe=""),
        "Cache-Control": "no-store",
    }
    if lease.expires_at is not None:
        headers["X-Baedal-Lease-Expires"] = f"{lease.expires_at:.3f}"
    if message.message_id is not None and _header_value(message.message_id) is not None:
        headers["X-Baedal-Message-Id"] = message.message_id
    if message.correlation_id is not None and _header_value(message.correlation_id) is not None:
        headers["X-Baedal-Correlation-Id"] = message.correlation_id
    for name, value in (message.headers or {}).items():
        text = _header_value(value)
        if text is not None and name.isascii() and name.replace("-", "").replace("_", "").isalnum():
            headers["X-Baedal-Header-" + name] = text
    content_type = (
        message.content_type
        if message.content_type and _header_value(message.content_type)
        else "application/octet-stream"
    )
    headers["Content-Type"] = content_type
    return web.Response(status=200, body=message.body, headers=headers)


# --- settlement -------------------------------------------------------------------------


async def _settle(request: web.Request, how: str) -> web.Response:
    server = server_of(request)
    vhost = _vhost(request)
    queue = vhost.queues.get(request.match_info["queue"])
    user = _user(request)
    requeue = query_bool(request, "requeue", True) if how == "nack" else False
    lease_id = request.match_info["lease"]
    outcome, replayed = server.leases.settle(lease_id, user.name, queue, how, requeue)
    return reply({"lease_id": lease_id, "outcome": outcome, "replayed": replayed})


async def ack_lease(request: web.Request) -> web.Response:
    return await _settle(request, "ack")


async def nack_lease(request: web.Request) -> web.Response:
    return await _settle(request, "nack")


# --- WebSocket ----------------------------------------------------------------------------


async def subscribe(request: web.Request) -> web.StreamResponse:
    server = server_of(request)
    manager = server.leases
    prefetch = int(query_number(request, "prefetch", DEFAULT_PREFETCH, 1, MAX_PREFETCH))
    lease_param = request.query.get("lease")
    lease_seconds = query_number(request, "lease", 0.0, 1.0, MAX_LEASE) if lease_param else None
    _vhost_obj, queue, user = _consumable(request)
    ws = web.WebSocketResponse(heartbeat=30.0, max_msg_size=WS_MAX_FRAME)
    if not ws.can_prepare(request).ok:
        raise HTTPError(400, "this endpoint needs a WebSocket upgrade", "websocket_required")
    await ws.prepare(request)
    session = SocketSession(
        manager, queue, _client(request, user), user.name, prefetch, lease_seconds
    )
    consumer = SocketConsumer(session)
    manager.sessions.add(session)
    writer = asyncio.get_running_loop().create_task(_write_frames(ws, session))
    try:
        await ws.send_str(
            dumps(
                {
                    "type": "subscribed",
                    "queue": queue.name,
                    "prefetch": prefetch,
                    "consumer_tag": consumer.tag,
                }
            )
        )
        queue.add_consumer(consumer)
        async for frame in ws:
            if frame.type != WSMsgType.TEXT:
                if frame.type == WSMsgType.BINARY:
                    session.outbox.append({"type": "error", "reason": "frames must be JSON text"})
                    session.wakeup.set()
                    continue
                break
            _client_frame(manager, session, frame.data)
    finally:
        session.closing = True
        manager.sessions.discard(session)
        if not queue.deleted:
            queue.remove_consumer(consumer)
        manager.release(list(session.leases.values()))
        writer.cancel()
        with contextlib.suppress(asyncio.CancelledError, ConnectionError):
            await writer
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.close()
    return ws


def _client_frame(manager: LeaseManager, session: SocketSession, data: str) -> None:
    def answer(frame: dict[str, Any]) -> None:
        session.outbox.append(frame)
        session.wakeup.set()

    try:
        doc = json.loads(data)
    except ValueError as exc:
        answer({"type": "error", "reason": f"malformed JSON: {exc}"})
        return
    if not isinstance(doc, dict) or doc.get("type") not in ("ack", "nack"):
        answer({"type": "error", "reason": "expected {type: ack|nack, lease_id}"})
        return
    lease_id = doc.get("lease_id")
    if not isinstance(lease_id, str):
        answer({"type": "error", "reason": "lease_id must be a string"})
        return
    requeue = doc.get("requeue", True)
    if not isinstance(requeue, bool):
        answer({"type": "error", "lease_id": lease_id, "reason": "requeue must be a boolean"})
        return
    try:
        outcome, replayed = manager.settle(
            lease_id,
            session.user,
            session.queue,
            doc["type"],
            requeue,
            lambda outcome: answer(
                {"type": "settled", "lease_id": lease_id, "outcome": outcome, "replayed": False}
            ),
        )
    except HTTPError as exc:
        answer({"type": "error", "lease_id": lease_id, "error": exc.error, "reason": exc.reason})
        return
    if replayed:
        answer({"type": "settled", "lease_id": lease_id, "outcome": outcome, "replayed": True})


async def _write_frames(ws: web.WebSocketResponse, session: SocketSession) -> None:
    outbox = session.outbox
    while True:
        while outbox:
            await ws.send_str(dumps(outbox.popleft()))
        if session.closing and not outbox:
            await ws.close()
            return
        session.wakeup.clear()
        await session.wakeup.wait()
