"""The management API: RabbitMQ's ``/api`` paths, verbs and field names.

Tools written for RabbitMQ's management plugin (rabbitmqadmin, monitoring agents,
Terraform providers) read these fields, so names and shapes follow RabbitMQ 3.x.
Vhost names are URL-encoded in paths (``/`` is ``%2F``); aiohttp decodes them into
``match_info``.  Every handler runs on the broker's event loop and calls the core
directly; every core failure becomes a JSON 4xx through ``errors.from_core``.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import re
import resource
import socket
import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from aiohttp import web

from ...core.broker import hash_password
from ...core.exchange import EXCHANGE_TYPES
from ...core.message import QueueEntry
from ...core.policy import Policy, PolicyError, effective_definition
from ...core.scram import (
    CredentialFormatError,
    ScramCredential,
    credentials_from_json,
    credentials_to_json,
    derive_all,
)
from ...core.vhost import CoreError
from .auth import can_see_vhost, check_permission, visible_vhosts
from .convert import (
    check_name,
    check_table,
    decode_payload,
    encode_payload,
    make_message,
    message_properties,
    properties_from_json,
)
from .errors import HTTPError, bad_request, from_core, not_found, require_type
from .rest import http_publisher, wait_stored
from .routes import no_content, query_bool, read_object, reply, server_of
from .stats import channel_counts

if TYPE_CHECKING:
    from ...core.broker import BrokerCore, User
    from ...core.exchange import Exchange
    from ...core.queue import Queue
    from ...core.vhost import VirtualHost
    from .server import HTTPServer

HASHING_ALGORITHM = "rabbit_password_hashing_sha256"


def node_name() -> str:
    return f"baedal@{socket.gethostname()}"


# --- lookups ---------------------------------------------------------------------------


def _core(request: web.Request) -> BrokerCore:
    return server_of(request).core


def _user(request: web.Request) -> User | None:
    return request.get("user")


def _vhost(request: web.Request) -> VirtualHost:
    name = request.match_info["vhost"]
    vhost = _core(request).vhosts.get(name)
    if vhost is None:
        raise not_found(f"no vhost '{name}'")
    return vhost


def _exchange_name(raw: str) -> str:
    return "" if raw == "amq.default" else raw


def _queue(request: web.Request, vhost: VirtualHost, key: str = "name") -> Queue:
    name = request.match_info[key]
    queue = vhost.queues.get(name)
    if queue is None:
        raise not_found(f"no queue '{name}' in vhost '{vhost.name}'")
    return queue


def _exchange(request: web.Request, vhost: VirtualHost, key: str = "name") -> Exchange:
    name = _exchange_name(request.match_info[key])
    exchange = vhost.exchanges.get(name)
    if exchange is None:
        raise not_found(f"no exchange '{name}' in vhost '{vhost.name}'")
    return exchange


def _vhosts_in_scope(request: web.Request) -> list[VirtualHost]:
    core = _core(request)
    if "vhost" in request.match_info:
        return [_vhost(request)]
    return [
        core.vhosts[name] for name in visible_vhosts(core, _user(request)) if name in core.vhosts
    ]


def _details(value: int, rate: float) -> tuple[int, dict[str, float]]:
    return value, {"rate": round(rate, 2)}


# --- overview and nodes ----------------------------------------------------------------


async def overview(request: web.Request) -> web.Response:
    server = server_of(request)
    core = server.core
    sampler = server.sampler
    totals = sampler.totals()
    rates = sampler.total_rates
    message_stats: dict[str, Any] = {}
    for key in (
        "publish",
        "deliver_get",
        "ack",
        "confirm",
        "redeliver",
        "return_unroutable",
        "drop_unroutable",
    ):
        message_stats[key] = totals[key]
        message_stats[f"{key}_details"] = {"rate": round(rates.get(key, 0.0), 2)}
    ready, unacked = sampler.depths()
    depth_rates = sampler.queue_totals_rates
    channels = sum(len(getattr(c, "channels", {})) for c in core.connections.values())
    visible = [core.vhosts[n] for n in visible_vhosts(core, _user(request)) if n in core.vhosts]
    # Every protocol's TCP, TLS and Unix-socket listeners (app.py Broker.listeners).
    listeners = [{"node": node_name(), **listener} for listener in server.broker.listeners()]
    if server.port is not None:
        listeners.append(
            {
                "node": node_name(),
                "protocol": "http",
                "ip_address": server.host,
                "port": server.port,
            }
        )
    return reply(
        {
            "management_version": core.version,
            "rabbitmq_version": core.version,
            "product_name": "Baedal",
            "product_version": _baedal_version(),
            "cluster_name": node_name(),
            "node": node_name(),
            "statistics_db_event_queue": 0,
            "rates_mode": "basic",
            "sample_interval": server.sampler.interval,
            "message_stats": message_stats,
            "queue_totals": {
                "messages": ready + unacked,
                "messages_details": {"rate": round(depth_rates["messages"], 2)},
                "messages_ready": ready,
                "messages_ready_details": {"rate": round(depth_rates["messages_ready"], 2)},
                "messages_unacknowledged": unacked,
                "messages_unacknowledged_details": {
                    "rate": round(depth_rates["messages_unacknowledged"], 2)
                },
            },
            "object_totals": {
                "connections": len(core.connections) + len(other_connections(server.broker)),
                "channels": channels,
                "exchanges": sum(len(v.exchanges) for v in visible),
                "queues": sum(len(v.queues) for v in visible),
                "consumers": sum(len(q.consumers) for v in visible for q in v.queues.values()),
            },
            "alarms": sorted(core.alarms),
            "listeners": listeners,
            "contexts": [
                {
                    "node": node_name(),
                    "description": "Baedal Management",
                    "path": "/",
                    "port": str(server.port),
                }
            ],
            # What storage recovery found at start (Baedal only; see storage/engine.py).
            **_recovery(server),
        }
    )


def _recovery(server: HTTPServer) -> dict[str, Any]:
    report = getattr(server.broker.storage, "recovery_report", None)
    return {"baedal_recovery": report} if report else {}


def _baedal_version() -> str:
    from ... import __version__

    return __version__


def node_info(server: HTTPServer) -> dict[str, Any]:
    core = server.core
    resources = server.resources()
    try:
        fd_used = len(os.listdir("/proc/self/fd"))
    except OSError:
        fd_used = -1
    soft_fds, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return {
        "name": node_name(),
        "type": "disc",
        "running": True,
        "os_pid": str(os.getpid()),
        "mem_used": resources["mem_used"],
        "mem_limit": resources["mem_limit"],
        "mem_alarm": "memory" in core.alarms,
        "disk_free": resources["disk_free"],
        "disk_free_limit": core.config.disk_free_limit,
        "disk_free_alarm": "disk" in core.alarms,
        "fd_used": fd_used,
        "fd_total": soft_fds,
        "sockets_used": len(core.connections),
        "proc_used": len(asyncio.all_tasks()),
        "processors": os.cpu_count() or 1,
        "uptime": int((time.time() - core.started_at) * 1000),
        "partitions": [],
        "applications": [
            {"name": "baedal", "description": "Baedal message broker", "version": _baedal_version()}
        ],
    }


async def nodes(request: web.Request) -> web.Response:
    return reply([node_info(server_of(request))])


async def node(request: web.Request) -> web.Response:
    if request.match_info["node"] != node_name():
        raise not_found(f"no node '{request.match_info['node']}'")
    return reply(node_info(server_of(request)))


async def whoami(request: web.Request) -> web.Response:
    user = _user(request)
    assert user is not None
    return reply({"name": user.name, "tags": list(user.tags)})


async def health_alarms(request: web.Request) -> web.Response:
    alarms = sorted(_core(request).alarms)
    if alarms:
        return reply(
            {
                "status": "failed",
                "reason": f"resource alarm(s) in effect: {', '.join(alarms)}",
                "alarms": alarms,
            },
            503,
        )
    return reply({"status": "ok"})


# --- vhosts ----------------------------------------------------------------------------


def vhost_info(vhost: VirtualHost) -> dict[str, Any]:
    ready = sum(q.message_count for q in vhost.queues.values())
    unacked = sum(q.unacked_count for q in vhost.queues.values())
    return {
        "name": vhost.name,
        "description": "",
        "tags": [],
        "metadata": {"description": "", "tags": []},
        "default_queue_type": "classic",
        "tracing": False,
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "cluster_state": {node_name(): "running"},
    }


async def list_vhosts(request: web.Request) -> web.Response:
    core = _core(request)
    return reply(
        [
            vhost_info(core.vhosts[n])
            for n in visible_vhosts(core, _user(request))
            if n in core.vhosts
        ]
    )


async def get_vhost(request: web.Request) -> web.Response:
    return reply(vhost_info(_vhost(request)))


async def put_vhost(request: web.Request) -> web.Response:
    name = check_name(request.match_info["vhost"], "vhost")
    await read_object(request, required=False)  # description/tags are accepted and ignored
    core = _core(request)
    existed = name in core.vhosts
    core.add_vhost(name)
    return no_content() if existed else web.Response(status=201)


async def delete_vhost(request: web.Request) -> web.Response:
    name = request.match_info["vhost"]
    try:
        _core(request).delete_vhost(name)
    except CoreError as exc:
        raise from_core(exc) from None
    return no_content()


# --- users -----------------------------------------------------------------------------


def user_info(user: User) -> dict[str, Any]:
    return {
        "name": user.name,
        "password_hash": user.password_hash,
        "hashing_algorithm": HASHING_ALGORITHM,
        "tags": list(user.tags),
        "limits": {},
    }


def _parse_tags(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [t.strip() for t in value.split(",") if t.strip()]
    if isinstance(value, list) and all(isinstance(t, str) for t in value):
        return [t.strip() for t in value if t.strip()]
    raise bad_request("tags must be a comma-separated string or an array of strings")


async def list_users(request: web.Request) -> web.Response:
    return reply([user_info(u) for u in _core(request).users.values()])


async def get_user(request: web.Request) -> web.Response:
    user = _core(request).users.get(request.match_info["user"])
    if user is None:
        raise not_found(f"no user '{request.match_info['user']}'")
    return reply(user_info(user))


def _apply_user(core: BrokerCore, name: str, body: dict[str, Any]) -> bool:
    check_name(name, "user")
    tags = _parse_tags(body.get("tags"))
    password = body.get("password")
    password_hash = body.get("password_hash")
    # SCRAM credentials follow the password (core/scram.py): derived from a new
    # password, taken from the document with a new hash (none if it has none: they
    # cannot be derived from the hash), kept when neither changes.
    try:
        given_scram = credentials_from_json(body.get("scram_credentials", {}))
    except CredentialFormatError as exc:
        raise bad_request(f"scram_credentials: {exc}") from None
    scram: dict[str, ScramCredential] | None = None
    if password is not None:
        require_type(password, str, "password")
        password_hash = hash_password(password)
        scram = derive_all(password)
    elif password_hash is not None:
        scram = given_scram
        require_type(password_hash, str, "password_hash")
        algorithm = body.get("hashing_algorithm", HASHING_ALGORITHM)
        if algorithm != HASHING_ALGORITHM:
            raise bad_request(
                f"unsupported hashing_algorithm '{algorithm}' (only {HASHING_ALGORITHM})"
            )
        if password_hash and not _valid_hash(password_hash):
            raise bad_request("password_hash must be base64 of a 4-byte salt and a SHA-256 digest")
    existing = core.users.get(name)
    if password_hash is None:
        password_hash = existing.password_hash if existing is not None else ""
        scram = existing.scram if existing is not None else {}
    core.add_user(name, None, tags, password_hash=password_hash, scram=scram)
    return existing is None


def _valid_hash(value: str) -> bool:
    import base64
    import binascii

    try:
        return len(base64.b64decode(value, validate=True)) == 36
    except (binascii.Error, ValueError):
        return False


async def put_user(request: web.Request) -> web.Response:
    body = await read_object(request)
    created = _apply_user(_core(request), request.match_info["user"], body)
    return web.Response(status=201) if created else no_content()


async def delete_user(request: web.Request) -> web.Response:
    try:
        _core(request).delete_user(request.match_info["user"])
    except CoreError as exc:
        raise from_core(exc) from None
    return no_content()


# --- permissions -----------------------------------------------------------------------


def permission_info(user: str, vhost: str, permission: Any) -> dict[str, Any]:
    return {
        "user": user,
        "vhost": vhost,
        "configure": permission.configure,
        "write": permission.write,
        "read": permission.read,
    }


async def list_permissions(request: web.Request) -> web.Response:
    core = _core(request)
    user = request.match_info.get("user")
    vhost = request.match_info.get("vhost")
    if user is not None and user not in core.users:
        raise not_found(f"no user '{user}'")
    if vhost is not None and vhost not in core.vhosts:
        raise not_found(f"no vhost '{vhost}'")
    return reply(
        [
            permission_info(u, v, p)
            for (u, v), p in core.permissions.items()
            if (user is None or u == user) and (vhost is None or v == vhost)
        ]
    )


async def get_permission(request: web.Request) -> web.Response:
    core = _core(request)
    key = (request.match_info["user"], request.match_info["vhost"])
    permission = core.permissions.get(key)
    if permission is None:
        raise not_found(f"no permission for user '{key[0]}' in vhost '{key[1]}'")
    return reply(permission_info(key[0], key[1], permission))


def _apply_permission(core: BrokerCore, user: str, vhost: str, body: dict[str, Any]) -> None:
    if user not in core.users:
        raise not_found(f"no user '{user}'")
    if vhost not in core.vhosts:
        raise not_found(f"no vhost '{vhost}'")
    patterns = []
    for kind in ("configure", "write", "read"):
        pattern = body.get(kind, "")
        require_type(pattern, str, kind)
        try:
            re.compile(pattern)
        except (re.error, RecursionError, OverflowError) as exc:
            raise bad_request(f"invalid regular expression for '{kind}': {exc}") from None
        patterns.append(pattern)
    core.set_permission(user, vhost, *patterns)


async def put_permission(request: web.Request) -> web.Response:
    body = await read_object(request)
    core = _core(request)
    key = (request.match_info["user"], request.match_info["vhost"])
    existed = key in core.permissions
    _apply_permission(core, key[0], key[1], body)
    return no_content() if existed else web.Response(status=201)


async def delete_permission(request: web.Request) -> web.Response:
    core = _core(request)
    key = (request.match_info["user"], request.match_info["vhost"])
    if key not in core.permissions:
        raise not_found(f"no permission for user '{key[0]}' in vhost '{key[1]}'")
    core.clear_permission(*key)
    return no_content()


# --- exchanges -------------------------------------------------------------------------


def exchange_info(server: HTTPServer, vhost: VirtualHost, exchange: Exchange) -> dict[str, Any]:
    return {
        "name": exchange.name,
        "vhost": vhost.name,
        "type": exchange.type,
        "durable": exchange.durable,
        "auto_delete": exchange.auto_delete,
        "internal": exchange.internal,
        "arguments": exchange.arguments,
        "policy": _policy_name(getattr(exchange, "policy", None)),
        "message_stats": {
            "publish_in": exchange.publish_count,
            "publish_in_details": {"rate": round(server.sampler.exchange_rate(exchange), 2)},
            "publish_out": exchange.publish_out_count,
        },
    }


async def list_exchanges(request: web.Request) -> web.Response:
    server = server_of(request)
    return reply(
        [
            exchange_info(server, v, e)
            for v in _vhosts_in_scope(request)
            for e in v.exchanges.values()
        ]
    )


async def get_exchange(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    return reply(exchange_info(server_of(request), vhost, _exchange(request, vhost)))


def _bool_field(body: dict[str, Any], key: str, default: bool) -> bool:
    value = body.get(key, default)
    return require_type(value, bool, key)


def declare_exchange(
    core: BrokerCore, user: User | None, vhost: VirtualHost, name: str, body: dict[str, Any]
) -> bool:
    check_name(name, "exchange")
    if name.startswith("amq."):
        raise HTTPError(
            403, f"exchange name '{name}' contains reserved prefix 'amq.*'", "access_refused"
        )
    type_ = body.get("type", "direct")
    require_type(type_, str, "type")
    if type_ not in EXCHANGE_TYPES:
        raise bad_request(f"unknown exchange type '{type_}'")
    durable = _bool_field(body, "durable", True)
    auto_delete = _bool_field(body, "auto_delete", False)
    internal = _bool_field(body, "internal", False)
    arguments = check_table(body.get("arguments"), "arguments")
    check_permission(core, user, vhost.name, "configure", name)
    try:
        _exchange, created = vhost.declare_exchange(
            name,
            type_,
            durable=durable,
            auto_delete=auto_delete,
            internal=internal,
            arguments=arguments,
        )
    except CoreError as exc:
        raise from_core(exc) from None
    return created


async def put_exchange(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    body = await read_object(request, required=False)
    name = _exchange_name(request.match_info["name"])
    if not name:
        raise HTTPError(403, "operation not permitted on the default exchange", "access_refused")
    created = declare_exchange(_core(request), _user(request), vhost, name, body)
    return web.Response(status=201) if created else no_content()


async def delete_exchange(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    exchange = _exchange(request, vhost)
    if not exchange.name or exchange.name.startswith("amq."):
        raise HTTPError(
            403,
            f"operation not permitted on exchange '{exchange.name or 'amq.default'}'",
            "access_refused",
        )
    check_permission(_core(request), _user(request), vhost.name, "configure", exchange.name)
    try:
        vhost.delete_exchange(exchange.name, if_unused=query_bool(request, "if-unused"))
    except CoreError as exc:
        raise from_core(exc) from None
    return no_content()


async def publish(request: web.Request) -> web.Response:
    """POST /api/exchanges/{vhost}/{name}/publish: RabbitMQ's test-publish, {routed}.

    As RabbitMQ's management plugin does, this is a mandatory publish with a confirm
    through the one publish path (core/publish.py): the same checks as an AMQP channel
    of the same user, ``routed: false`` when it would have been returned, the answer
    only once the message is stored, and a refusal answered 400 with the AMQP error
    RabbitMQ would close the channel with (``"406 PRECONDITION_FAILED - ..."``).
    """
    server = server_of(request)
    vhost = _vhost(request)
    exchange = _exchange(request, vhost)
    body = await read_object(request)
    routing_key = body.get("routing_key", "")
    require_type(routing_key, str, "routing_key")
    check_name(routing_key, "routing key", allow_empty=True)
    props = properties_from_json(body.get("properties", {}))
    payload = decode_payload(body.get("payload", ""), body.get("payload_encoding", "string"))
    if len(payload) > server.core.config.max_message_size:
        raise HTTPError(
            413,
            f"message size {len(payload)} is larger than max size {server.core.config.max_message_size}",
        )
    publisher = http_publisher(server.core, vhost, _user(request))
    blocked = publisher.blocked
    if blocked is not None:
        # RabbitMQ's test-publish would hang on its blocked connection; answer instead.
        raise HTTPError(503, f"publishing is blocked: {blocked}", "resource_alarm", {"Retry-After": "5"})
    message = make_message(exchange.name, routing_key, props, payload)
    try:
        result = publisher.publish(exchange.name, message, mandatory=True)
    except CoreError as exc:
        raise HTTPError(400, f"{_AMQP_ERRORS.get(exc.kind, '406 PRECONDITION_FAILED')} - {exc.text}") from None
    if result.refused:
        # RabbitMQ's answer to the nack its test-publish gets (e.g. x-overflow reject-publish).
        raise HTTPError(400, "rejected Unable to publish message. Check queue limits.")
    await wait_stored(publisher, result.outcome, result.replicating)
    return reply({"routed": result.routed})


# The AMQP channel error RabbitMQ's test-publish reports for each core refusal.
_AMQP_ERRORS = {
    "not_found": "404 NOT_FOUND",
    "access_refused": "403 ACCESS_REFUSED",
    "precondition_failed": "406 PRECONDITION_FAILED",
    "malformed": "501 FRAME_ERROR",
}


# --- queues ----------------------------------------------------------------------------


def queue_info(server: HTTPServer, vhost: VirtualHost, queue: Queue) -> dict[str, Any]:
    ready = queue.message_count
    unacked = queue.unacked_count
    rates = server.sampler.queue_rates(queue)
    stats: dict[str, Any] = {}
    for key, value, rate in zip(
        ("publish", "deliver_get", "ack", "redeliver"),
        (queue.publish_count, queue.deliver_count, queue.ack_count, queue.redeliver_count),
        rates,
        strict=True,
    ):
        stats[key] = value
        stats[f"{key}_details"] = {"rate": round(rate, 2)}
    failure = _store_failure(server.core, queue.store)
    info: dict[str, Any] = {
        "name": queue.name,
        "vhost": vhost.name,
        "type": queue.settings.queue_type,
        "durable": queue.durable,
        "auto_delete": queue.auto_delete,
        "exclusive": queue.exclusive,
        "owner_pid_details": _owner(queue),
        "arguments": queue.arguments,
        "node": node_name(),
        # "running" unless the queue's store has a sticky write failure (full disk, I/O
        # error): then it still delivers but refuses publishes until storage recovers.
        "state": "running" if failure is None else "failed",
        **_queue_policy_fields(queue),
        "messages": ready + unacked,
        "messages_ready": ready,
        "messages_unacknowledged": unacked,
        "message_bytes_ready": queue.store.ready_bytes,
        # Baedal's own: what the length limit dropped or refused (x-overflow).
        "messages_dropped": getattr(queue, "dropped_count", 0),
        "consumers": len(queue.consumers),
        # consumer_capacity / consumer_utilisation are left out: RabbitMQ measures the
        # share of time the queue could deliver at once, which Baedal does not track.
        "single_active_consumer_tag": getattr(queue.consumers[0], "tag", None)
        if queue.consumers and queue.settings.single_active_consumer
        else None,
        "message_stats": stats,
    }
    stream_info = getattr(queue, "stream_info", None)
    if stream_info is not None:
        # A stream (core/stream.py): its "messages" are the records retained, all of
        # them readable (RabbitMQ counts them as ready too); RabbitMQ's committed_offset
        # at the top level, Baedal's offsets, size, segments, retention and readers
        # under "stream".
        details = stream_info()
        info["messages"] = info["messages_ready"] = details["messages"]
        info["committed_offset"] = details["committed_offset"]
        info["stream"] = details
    if failure is not None:
        info["storage_error"] = failure
    return info


def _store_failure(core: BrokerCore, store: Any) -> str | None:
    """Why a queue's store (or one of its priority levels) cannot write, if it cannot:
    its sticky write failure, or the storage engine holding it as failed until its
    retry resets it."""
    failed_stores = getattr(core.storage, "failed_stores", ())
    for level in getattr(store, "levels", (store,)):
        segment_store = getattr(level, "paged_store", level)  # transient: its overflow log
        failure = getattr(segment_store, "failure", None)
        if failure is not None:
            return str(failure)
        if segment_store is not None and segment_store in failed_stores:
            return "a write failed; publishes are refused until the store recovers"
    return None


def _owner(queue: Queue) -> dict[str, Any] | None:
    owner = queue.exclusive_owner
    if owner is None:
        return None
    peer = getattr(owner, "peer", None) or ("", 0)
    return {"name": getattr(owner, "name", ""), "peer_host": peer[0], "peer_port": peer[1]}


async def list_queues(request: web.Request) -> web.Response:
    server = server_of(request)
    return reply(
        [queue_info(server, v, q) for v in _vhosts_in_scope(request) for q in v.queues.values()]
    )


async def get_queue(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    return reply(queue_info(server_of(request), vhost, _queue(request, vhost)))


def declare_queue(
    core: BrokerCore, user: User | None, vhost: VirtualHost, name: str, body: dict[str, Any]
) -> bool:
    check_name(name, "queue")
    if name.startswith("amq."):
        raise HTTPError(
            403, f"queue name '{name}' contains reserved prefix 'amq.*'", "access_refused"
        )
    durable = _bool_field(body, "durable", True)
    auto_delete = _bool_field(body, "auto_delete", False)
    if body.get("exclusive", False) is not False:
        raise bad_request(
            "exclusive queues belong to a connection and cannot be declared over HTTP"
        )
    arguments = check_table(body.get("arguments"), "arguments")
    check_permission(core, user, vhost.name, "configure", name)
    existing = vhost.queues.get(name)
    try:
        vhost.declare_queue(name, durable=durable, auto_delete=auto_delete, arguments=arguments)
    except CoreError as exc:
        raise from_core(exc) from None
    return existing is None


async def put_queue(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    body = await read_object(request, required=False)
    created = declare_queue(_core(request), _user(request), vhost, request.match_info["name"], body)
    return web.Response(status=201) if created else no_content()


async def delete_queue(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    queue = _queue(request, vhost)
    check_permission(_core(request), _user(request), vhost.name, "configure", queue.name)
    try:
        vhost.delete_queue(
            queue,
            if_unused=query_bool(request, "if-unused"),
            if_empty=query_bool(request, "if-empty"),
        )
    except CoreError as exc:
        raise from_core(exc) from None
    return no_content()


async def purge_queue(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    queue = _queue(request, vhost)
    check_permission(_core(request), _user(request), vhost.name, "read", queue.name)
    try:
        queue.purge()
    except CoreError as exc:  # a stream cannot be purged
        raise from_core(exc) from None
    return no_content()


_ACK_MODES = (
    "ack_requeue_true",
    "ack_requeue_false",
    "reject_requeue_true",
    "reject_requeue_false",
)


async def get_messages(request: web.Request) -> web.Response:
    """POST /api/queues/{vhost}/{name}/get: RabbitMQ's "Get messages" (basic.get)."""
    vhost = _vhost(request)
    queue = _queue(request, vhost)
    body = await read_object(request)
    count = body.get("count", 1)
    require_type(count, int, "count")
    if not 1 <= count <= 1000:
        raise bad_request("count must be between 1 and 1000")
    ackmode = body.get(
        "ackmode", body.get("requeue") is False and "ack_requeue_false" or "ack_requeue_true"
    )
    if ackmode not in _ACK_MODES:
        raise bad_request(f"ackmode must be one of {', '.join(_ACK_MODES)}")
    encoding = body.get("encoding", "auto")
    if encoding not in ("auto", "base64"):
        raise bad_request("encoding must be 'auto' or 'base64'")
    truncate = body.get("truncate")
    if truncate is not None:
        require_type(truncate, int, "truncate")
        if truncate < 0:
            raise bad_request("truncate must not be negative")
    check_permission(_core(request), _user(request), vhost.name, "read", queue.name)
    if queue.exclusive:
        raise HTTPError(
            409,
            f"queue '{queue.name}' in vhost '{vhost.name}' is exclusive to a connection",
            "resource_locked",
        )
    taken: list[QueueEntry] = []
    result = []
    for _ in range(count):
        try:
            entry = queue.get(no_ack=False)
        except CoreError as exc:  # a stream is read by consumers, not by get
            raise from_core(exc) from None
        if entry is None:
            break
        message = entry.message
        assert message is not None
        redelivered = entry.delivery_count > 0
        entry.delivery_count += 1
        taken.append(entry)
        item = encode_payload(message.body, encoding, truncate)
        item.update(
            {
                "redelivered": redelivered,
                "exchange": message.exchange,
                "routing_key": message.routing_key,
                "message_count": queue.message_count,
                "properties": message_properties(message),
            }
        )
        result.append(item)
    if ackmode in ("ack_requeue_true", "reject_requeue_true"):
        queue.requeue(taken)
    elif ackmode == "ack_requeue_false":
        for entry in taken:
            queue.ack(entry)
    else:
        for entry in taken:
            queue.reject(entry, False)
    return reply(result)


# --- bindings --------------------------------------------------------------------------


def properties_key(routing_key: str, arguments: dict[str, Any]) -> str:
    """RabbitMQ's binding ``properties_key``: the routing key, or ``~`` when empty, plus a
    hash of the arguments when there are any."""
    if not arguments:
        return routing_key or "~"
    digest = hashlib.sha256(
        json.dumps(arguments, sort_keys=True, default=str).encode()
    ).hexdigest()[:22]
    return f"{routing_key}~{digest}"


def binding_info(vhost: VirtualHost, binding: Any) -> dict[str, Any]:
    destination = binding.destination
    return {
        "source": binding.source,
        "vhost": vhost.name,
        "destination": destination.name,
        "destination_type": "queue" if destination.is_queue else "exchange",
        "routing_key": binding.routing_key,
        "arguments": binding.arguments,
        "properties_key": properties_key(binding.routing_key, binding.arguments),
    }


async def list_bindings(request: web.Request) -> web.Response:
    return reply([binding_info(v, b) for v in _vhosts_in_scope(request) for b in v.bindings()])


def _binding_ends(request: web.Request) -> tuple[VirtualHost, Exchange, Any]:
    vhost = _vhost(request)
    source = _exchange(request, vhost, "source")
    if request.match_info["kind"] == "q":
        destination: Any = _queue(request, vhost, "destination")
    else:
        destination = _exchange(request, vhost, "destination")
    return vhost, source, destination


async def list_bindings_between(request: web.Request) -> web.Response:
    vhost, source, destination = _binding_ends(request)
    return reply(
        [binding_info(vhost, b) for b in source.bindings.values() if b.destination is destination]
    )


async def list_queue_bindings(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    queue = _queue(request, vhost)
    return reply([binding_info(vhost, b) for b in vhost.bindings() if b.destination is queue])


async def list_exchange_bindings(request: web.Request) -> web.Response:
    vhost = _vhost(request)
    exchange = _exchange(request, vhost)
    if request.match_info["direction"] == "source":
        found = list(exchange.bindings.values())
    else:
        found = [b for b in vhost.bindings() if b.destination is exchange]
    return reply([binding_info(vhost, b) for b in found])


def bind(
    core: BrokerCore,
    user: User | None,
    vhost: VirtualHost,
    source: Exchange,
    destination: Any,
    body: dict[str, Any],
) -> str:
    routing_key = body.get("routing_key", "")
    require_type(routing_key, str, "routing_key")
    check_name(routing_key, "routing key", allow_empty=True)
    arguments = check_table(body.get("arguments"), "arguments")
    check_permission(core, user, vhost.name, "write", destination.name)
    check_permission(core, user, vhost.name, "read", source.name)
    try:
        vhost.bind(source.name, destination, routing_key, arguments)
    except CoreError as exc:
        raise from_core(exc) from None
    return properties_key(routing_key, arguments)


async def post_binding(request: web.Request) -> web.Response:
    vhost, source, destination = _binding_ends(request)
    body = await read_object(request, required=False)
    key = bind(_core(request), _user(request), vhost, source, destination, body)
    location = f"{request.path_qs.rstrip('/')}/{quote(key, safe='')}"
    return web.Response(status=201, headers={"Location": location})


def _find_binding(request: web.Request) -> tuple[VirtualHost, Exchange, Any, Any]:
    vhost, source, destination = _binding_ends(request)
    props = request.match_info["props"]
    for binding in source.bindings.values():
        if (
            binding.destination is destination
            and properties_key(binding.routing_key, binding.arguments) == props
        ):
            return vhost, source, destination, binding
    raise not_found(f"no binding '{props}' from '{source.name}' to '{destination.name}'")


async def get_binding(request: web.Request) -> web.Response:
    vhost, _source, _destination, binding = _find_binding(request)
    return reply(binding_info(vhost, binding))


async def delete_binding(request: web.Request) -> web.Response:
    vhost, source, destination, binding = _find_binding(request)
    core = _core(request)
    check_permission(core, _user(request), vhost.name, "write", destination.name)
    check_permission(core, _user(request), vhost.name, "read", source.name)
    try:
        vhost.unbind(source.name, destination, binding.routing_key, binding.arguments)
    except CoreError as exc:
        raise from_core(exc) from None
    return no_content()


# --- connections, channels, consumers --------------------------------------------------


def other_connections(broker: Any) -> list[Any]:
    """Connections kept outside ``core.connections``: MQTT (its server's set, once past
    CONNECT) and in-process sessions.  Each has ``describe()`` and ``force_close``."""
    found: list[Any] = []
    mqtt = getattr(broker, "mqtt", None)
    if mqtt is not None:
        found.extend(c for c in list(mqtt.connections) if c.session is not None and not c.closed)
    if getattr(broker.settings, "inproc_name", None):
        from ...transport import inproc

        found.extend(inproc.sessions_of(broker))
    return found


def connection_info(connection: Any) -> dict[str, Any]:
    describe = getattr(connection, "describe", None)
    if describe is not None:  # MQTT, in-process: they say what they are
        return {"node": node_name(), **describe()}
    peer = connection.peer or ("", 0)
    sock = (
        connection.transport.get_extra_info("sockname")
        if connection.transport is not None
        else None
    )
    vhost = connection.vhost.name if connection.vhost is not None else None
    return {
        "name": connection.name,
        "node": node_name(),
        "type": "network",
        "protocol": getattr(connection, "protocol", "AMQP 0-9-1"),  # STOMP: "STOMP 1.2"
        "peer_host": peer[0],
        "peer_port": peer[1],
        "host": sock[0] if sock else "",
        "port": sock[1] if sock else 0,
        "user": connection.username,
        "vhost": vhost,
        "channels": len(connection.channels),
        "channel_max": connection.channel_max,
        "frame_max": connection.frame_max,
        "timeout": connection.heartbeat,
        # running / flow (reading held back: output over its bound, or for a queue's
        # consumers) / blocking / blocked (alarm), as RabbitMQ; handshake states as is.
        "state": connection.flow_state if connection.state == "open" else connection.state,
        "client_properties": connection.client_properties,
        "recv_oct": connection.recv_bytes,
        "send_oct": connection.send_bytes,
        # Bytes owed to the peer: queued in the connection plus the transport's buffer
        # (RabbitMQ's send_pend is the socket's queue); compared with the output bound.
        "send_pend": connection.output_pending(),
        "connected_at": int(
            (time.time() - (connection.broker.now() - connection.connected_at)) * 1000
        ),
        "ssl": connection.transport is not None
        and connection.transport.get_extra_info("sslcontext") is not None,
        "auth_mechanism": connection.auth_mechanism,
    }


def _visible_connections(request: web.Request) -> list[Any]:
    core = _core(request)
    user = _user(request)
    found = []
    connections = list(core.connections.values()) + other_connections(server_of(request).broker)
    for connection in connections:
        if (
            getattr(connection, "vhost", None) is None
            and user is not None
            and "administrator" not in user.tags
        ):
            continue
        vhost_name = connection.vhost.name if connection.vhost is not None else None
        if "vhost" in request.match_info and vhost_name != request.match_info["vhost"]:
            continue
        if (
            user is not None
            and vhost_name is not None
            and not can_see_vhost(core, user, vhost_name)
        ):
            continue
        if (
            user is not None
            and not set(user.tags) & {"administrator", "monitoring"}
            and connection.username != user.name
        ):
            continue
        found.append(connection)
    return found


async def list_connections(request: web.Request) -> web.Response:
    if "vhost" in request.match_info:
        _vhost(request)
    return reply([connection_info(c) for c in _visible_connections(request)])


def _connection(request: web.Request) -> Any:
    name = request.match_info["connection"]
    for connection in _visible_connections(request):
        if connection.name == name:
            return connection
    raise not_found(f"no connection '{name}'")


async def get_connection(request: web.Request) -> web.Response:
    return reply(connection_info(_connection(request)))


async def delete_connection(request: web.Request) -> web.Response:
    connection = _connection(request)
    reason = request.headers.get("X-Reason", "Closed via management plugin")
    connection.force_close(reason[:200])
    return no_content()


def channel_info(server: HTTPServer, connection: Any, channel: Any) -> dict[str, Any]:
    peer = connection.peer or ("", 0)
    published, delivered = channel_counts(channel)
    publish_rate, deliver_rate = server.sampler.channel_rates(channel)
    return {
        "name": f"{connection.name} ({channel.number})",
        "number": channel.number,
        "node": node_name(),
        "connection_details": {"name": connection.name, "peer_host": peer[0], "peer_port": peer[1]},
        "vhost": connection.vhost.name if connection.vhost is not None else None,
        "user": connection.username,
        "consumer_count": len(channel.consumers),
        "messages_unacknowledged": channel.unacked_count,
        "prefetch_count": channel.prefetch_count,
        "global_prefetch_count": channel.global_prefetch,
        "confirm": channel.confirm_mode,
        "transactional": channel.tx_mode,
        "state": "closing"
        if channel.closing
        else ("flow" if not channel.flow_active else "running"),
        "message_stats": {
            "publish": published,
            "publish_details": {"rate": round(publish_rate, 2)},
            "deliver_get": delivered,
            "deliver_get_details": {"rate": round(deliver_rate, 2)},
        },
    }


async def list_channels(request: web.Request) -> web.Response:
    if "vhost" in request.match_info:
        _vhost(request)
    return reply(
        [
            channel_info(server_of(request), c, ch)
            for c in _visible_connections(request)
            for ch in list(getattr(c, "channels", {}).values())  # MQTT, inproc: none
        ]
    )


async def list_connection_channels(request: web.Request) -> web.Response:
    connection = _connection(request)
    server = server_of(request)
    channels = getattr(connection, "channels", {})  # MQTT and in-process: none
    return reply([channel_info(server, connection, ch) for ch in list(channels.values())])


def consumer_info(vhost: VirtualHost, queue: Queue, consumer: Any) -> dict[str, Any]:
    channel = getattr(consumer, "channel", None)
    # Single active consumer: the queue serves only its first consumer; the others wait
    # (RabbitMQ's activity_status single_active / waiting; up without the argument).
    if queue.settings.single_active_consumer:
        active = bool(queue.consumers) and queue.consumers[0] is consumer
        status = "single_active" if active else "waiting"
    else:
        active, status = True, "up"
    info: dict[str, Any] = {
        "consumer_tag": consumer.tag,
        "queue": {"name": queue.name, "vhost": vhost.name},
        "ack_required": not consumer.no_ack,
        "exclusive": consumer.exclusive,
        "prefetch_count": getattr(consumer, "prefetch", 0),
        "priority": consumer.priority,
        "active": active,
        "activity_status": status,
        "arguments": getattr(consumer, "arguments", {}) or {},
    }
    connection = getattr(channel, "connection", None)
    if channel is not None and hasattr(channel, "number") and connection is not None:
        peer = connection.peer or ("", 0)
        info["channel_details"] = {
            "name": f"{connection.name} ({channel.number})",
            "number": channel.number,
            "connection_name": connection.name,
            "peer_host": peer[0],
            "peer_port": peer[1],
            "user": connection.username,
        }
    else:
        info["channel_details"] = {
            "name": getattr(consumer, "description", "http"),
            "connection_name": "http",
        }
    return info


async def list_consumers(request: web.Request) -> web.Response:
    return reply(
        [
            consumer_info(v, q, c)
            for v in _vhosts_in_scope(request)
            for q in list(v.queues.values())
            for c in list(q.consumers)
        ]
    )


# --- policies and operator policies --------------------------------------------------


def _policy_name(policy: Policy | None) -> str | None:
    return policy.name if policy is not None else None


def _queue_policy_fields(queue: Queue) -> dict[str, Any]:
    """RabbitMQ's queue fields for policies (names, or null when none applies)."""
    policy = queue.policy
    operator = queue.operator_policy
    return {
        "policy": _policy_name(policy),
        "operator_policy": _policy_name(operator),
        "effective_policy_definition": effective_definition(policy, operator),
    }


def _policy_table(vhost: VirtualHost, operator: bool) -> dict[str, Policy]:
    return vhost.operator_policies if operator else vhost.policies


def _can_set_policies(user: User | None, operator: bool) -> None:
    """RabbitMQ: policies, even reading them, need policymaker (or administrator);
    operator policies need administrator (the route already requires it)."""
    if user is None or operator:
        return
    if not {"administrator", "policymaker"} & set(user.tags):
        raise HTTPError(403, f"user '{user.name}' may not set policies", "not_authorised")


def make_policy(vhost: str, name: str, body: dict[str, Any], operator: bool) -> Policy:
    """A validated policy from a management API body; 400 with RabbitMQ's reason."""
    check_name(name, "policy")
    if "pattern" not in body:
        raise bad_request('Validation failed\n\nKey <<"pattern">> not found in policy\n')
    if "definition" not in body:
        raise bad_request('Validation failed\n\nKey <<"definition">> not found in policy\n')
    try:
        return Policy(
            vhost,
            name,
            body["pattern"],
            body["definition"],
            apply_to=body.get("apply-to", "all"),
            priority=body.get("priority", 0),
            operator=operator,
        )
    except PolicyError as exc:
        raise bad_request(f"Validation failed\n\n{exc}\n") from None


def _policy_handlers(operator: bool) -> tuple[Any, Any, Any, Any]:
    what = "operator policy" if operator else "policy"

    async def list_(request: web.Request) -> web.Response:
        _can_set_policies(_user(request), operator)
        return reply(
            [
                p.to_json()
                for v in _vhosts_in_scope(request)
                for p in sorted(_policy_table(v, operator).values(), key=lambda p: p.name)
            ]
        )

    async def get(request: web.Request) -> web.Response:
        vhost = _vhost(request)
        _can_set_policies(_user(request), operator)
        policy = _policy_table(vhost, operator).get(request.match_info["name"])
        if policy is None:
            raise not_found(f"no {what} '{request.match_info['name']}' in vhost '{vhost.name}'")
        return reply(policy.to_json())

    async def put(request: web.Request) -> web.Response:
        vhost = _vhost(request)
        _can_set_policies(_user(request), operator)
        body = await read_object(request)
        created = vhost.set_policy(make_policy(vhost.name, request.match_info["name"], body, operator))
        return web.Response(status=201) if created else no_content()

    async def delete(request: web.Request) -> web.Response:
        vhost = _vhost(request)
        _can_set_policies(_user(request), operator)
        try:
            vhost.clear_policy(request.match_info["name"], operator)
        except CoreError as exc:
            raise from_core(exc) from None
        return no_content()

    return list_, get, put, delete


list_policies, get_policy, put_policy, delete_policy = _policy_handlers(False)
(
    list_operator_policies,
    get_operator_policy,
    put_operator_policy,
    delete_operator_policy,
) = _policy_handlers(True)


# --- topic permissions -----------------------------------------------------------------


def topic_permission_info(user: str, vhost: str, permission: Any) -> dict[str, Any]:
    return {
        "user": user,
        "vhost": vhost,
        "exchange": permission.exchange,
        "write": permission.write,
        "read": permission.read,
    }


async def list_topic_permissions(request: web.Request) -> web.Response:
    core = _core(request)
    user = request.match_info.get("user")
    vhost = request.match_info.get("vhost")
    if user is not None and user not in core.users:
        raise not_found(f"no user '{user}'")
    if vhost is not None and vhost not in core.vhosts:
        raise not_found(f"no vhost '{vhost}'")
    items = [
        topic_permission_info(u, v, p)
        for (u, v), table in core.topic_permissions.items()
        if (user is None or u == user) and (vhost is None or v == vhost)
        for p in table.values()
    ]
    if user is not None and vhost is not None and not items:
        # GET /api/topic-permissions/{vhost}/{user} with nothing set is 404 in RabbitMQ
        raise not_found(f"no topic permissions for user '{user}' in vhost '{vhost}'")
    return reply(items)


def apply_topic_permission(core: BrokerCore, user: str, vhost: str, body: dict[str, Any]) -> bool:
    """Set one topic permission from a body; True when it is new."""
    if user not in core.users:
        raise not_found(f"no user '{user}'")
    if vhost not in core.vhosts:
        raise not_found(f"no vhost '{vhost}'")
    exchange = body.get("exchange")
    if exchange is None:
        raise bad_request("field 'exchange' is required")
    require_type(exchange, str, "exchange")
    patterns = []
    for kind in ("write", "read"):
        pattern = body.get(kind, "")
        require_type(pattern, str, kind)
        patterns.append(pattern)
    created = exchange not in core.topic_permissions.get((user, vhost), {})
    try:
        core.set_topic_permission(user, vhost, exchange, *patterns)
    except (re.error, RecursionError, OverflowError) as exc:
        raise bad_request(f"invalid regular expression: {exc}") from None
    return created


async def put_topic_permission(request: web.Request) -> web.Response:
    body = await read_object(request)
    core = _core(request)
    created = apply_topic_permission(
        core, request.match_info["user"], request.match_info["vhost"], body
    )
    return web.Response(status=201) if created else no_content()


async def delete_topic_permission(request: web.Request) -> web.Response:
    """All of the user's topic permissions in the vhost, or ``?exchange=`` only that one."""
    core = _core(request)
    user, vhost = request.match_info["user"], request.match_info["vhost"]
    if not core.clear_topic_permission(user, vhost, request.query.get("exchange")):
        raise not_found(f"no topic permissions for user '{user}' in vhost '{vhost}'")
    return no_content()


# --- definitions -----------------------------------------------------------------------


def export_definitions(core: BrokerCore) -> dict[str, Any]:
    queues, exchanges, bindings = [], [], []
    for vhost in core.vhosts.values():
        for queue in vhost.queues.values():
            if queue.durable and not queue.exclusive:
                queues.append(
                    {
                        "name": queue.name,
                        "vhost": vhost.name,
                        "durable": True,
                        "auto_delete": queue.auto_delete,
                        "arguments": queue.arguments,
                    }
                )
        for exchange in vhost.exchanges.values():
            if exchange.durable and exchange.name and not exchange.name.startswith("amq."):
                exchanges.append(
                    {
                        "name": exchange.name,
                        "vhost": vhost.name,
                        "type": exchange.type,
                        "durable": True,
                        "auto_delete": exchange.auto_delete,
                        "internal": exchange.internal,
                        "arguments": exchange.arguments,
                    }
                )
        for binding in vhost.bindings():
            source = vhost.exchanges.get(binding.source)
            if (
                binding.source
                and source is not None
                and source.durable
                and binding.destination.durable
            ):
                info = binding_info(vhost, binding)
                info.pop("properties_key")
                bindings.append(info)
    return {
        "rabbit_version": core.version,
        "rabbitmq_version": core.version,
        "product_name": "Baedal",
        "product_version": _baedal_version(),
        "users": [
            {k: v for k, v in user_info(u).items() if k != "limits"}
            # Baedal's addition (RabbitMQ ignores it): SCRAM needs these to round-trip.
            | ({"scram_credentials": credentials_to_json(u.scram)} if u.scram else {})
            for u in core.users.values()
        ],
        "vhosts": [
            {"name": name, "limits": [], "metadata": {"description": "", "tags": []}}
            for name in core.vhosts
        ],
        "permissions": [permission_info(u, v, p) for (u, v), p in core.permissions.items()],
        "topic_permissions": [
            topic_permission_info(u, v, p)
            for (u, v), table in core.topic_permissions.items()
            for p in table.values()
        ],
        "parameters": [
            {"vhost": vhost, "component": component, "name": name, "value": value}
            for (vhost, component, name), value in core.parameters.items()
        ]
        + [
            {
                "vhost": vhost.name,
                "component": "operator_policy",
                "name": p.name,
                "value": {k: v for k, v in p.to_json().items() if k not in ("vhost", "name")},
            }
            for vhost in core.vhosts.values()
            for p in vhost.operator_policies.values()
        ],
        "global_parameters": [
            {"name": name, "value": value} for name, value in core.global_parameters.items()
        ],
        "policies": [p.to_json() for v in core.vhosts.values() for p in v.policies.values()],
        "queues": queues,
        "exchanges": exchanges,
        "bindings": bindings,
    }


async def get_definitions(request: web.Request) -> web.Response:
    return reply(export_definitions(_core(request)))


def _list_of_objects(body: dict[str, Any], key: str) -> list[dict[str, Any]]:
    items = body.get(key, [])
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise bad_request(f"'{key}' must be an array of objects")
    return items


def _field(item: dict[str, Any], key: str, kind: type, what: str) -> Any:
    if key not in item:
        raise bad_request(f"{what} is missing '{key}'")
    return require_type(item[key], kind, f"{what}.{key}")


DEFINITION_SECTIONS = (
    "users",
    "vhosts",
    "permissions",
    "topic_permissions",
    "parameters",
    "global_parameters",
    "policies",
    "exchanges",
    "queues",
    "bindings",
)
DEFINITION_KEYS = frozenset(DEFINITION_SECTIONS) | {
    "rabbit_version",
    "rabbitmq_version",
    "product_name",
    "product_version",
}


def import_definitions(core: BrokerCore, body: dict[str, Any]) -> None:
    """Apply a RabbitMQ definitions document; validated entirely before anything changes
    where the shape allows it, then applied in dependency order."""
    unknown = sorted(set(body) - DEFINITION_KEYS)
    if unknown:
        # Refused rather than dropped: a section Baedal does not know would be lost.
        raise bad_request(f"unknown top-level definitions content: {', '.join(unknown)}")
    sections = {key: _list_of_objects(body, key) for key in DEFINITION_SECTIONS}
    for item in sections["vhosts"]:
        check_name(_field(item, "name", str, "vhost"), "vhost")
    for item in sections["users"]:
        check_name(_field(item, "name", str, "user"), "user")
        try:
            credentials_from_json(item.get("scram_credentials", {}))
        except CredentialFormatError as exc:
            raise bad_request(f"user {item['name']!r}: scram_credentials: {exc}") from None
    for item in sections["queues"] + sections["exchanges"]:
        check_name(_field(item, "name", str, "queue/exchange"), "queue/exchange", allow_empty=False)
        _field(item, "vhost", str, "queue/exchange")
    for item in sections["bindings"]:
        for key in ("source", "vhost", "destination", "destination_type"):
            _field(item, key, str, "binding")
        if item["destination_type"] not in ("queue", "exchange"):
            raise bad_request("binding.destination_type must be 'queue' or 'exchange'")
    for item in sections["permissions"]:
        for key in ("user", "vhost"):
            _field(item, key, str, "permission")
    for item in sections["topic_permissions"]:
        for key in ("user", "vhost", "exchange", "write", "read"):
            _field(item, key, str, "topic permission")
        for key in ("write", "read"):
            try:
                re.compile(item[key].replace("{username}", "u").replace("{vhost}", "v"))
            except (re.error, RecursionError, OverflowError) as exc:
                raise bad_request(f"invalid regular expression in topic permission: {exc}") from None
    policies: list[Policy] = []
    for item in sections["policies"]:
        vhost_name = _field(item, "vhost", str, "policy")
        policies.append(make_policy(vhost_name, _field(item, "name", str, "policy"), item, False))
    parameters: list[tuple[str, str, str, Any]] = []
    for item in sections["parameters"]:
        vhost_name = _field(item, "vhost", str, "parameter")
        component = _field(item, "component", str, "parameter")
        name = _field(item, "name", str, "parameter")
        if "value" not in item:
            raise bad_request("parameter is missing 'value'")
        if component == "operator_policy":
            value = require_type(item["value"], dict, "parameter.value")
            policies.append(make_policy(vhost_name, name, value, True))
        else:
            # Kept and exported again, not enforced (vhost-limits, federation, shovels).
            parameters.append((vhost_name, component, name, item["value"]))
    for item in sections["global_parameters"]:
        _field(item, "name", str, "global parameter")
        if "value" not in item:
            raise bad_request("global parameter is missing 'value'")
    known_vhosts = set(core.vhosts) | {i["name"] for i in sections["vhosts"]}
    known_users = set(core.users) | {i["name"] for i in sections["users"]}
    for item in (
        sections["queues"]
        + sections["exchanges"]
        + sections["bindings"]
        + sections["permissions"]
        + sections["topic_permissions"]
        + [p.to_json() for p in policies]
        + [{"vhost": p[0]} for p in parameters]
    ):
        if item["vhost"] not in known_vhosts:
            raise bad_request(f"vhost '{item['vhost']}' is neither defined nor in the document")
    for item in sections["permissions"] + sections["topic_permissions"]:
        if item["user"] not in known_users:
            raise bad_request(f"user '{item['user']}' is neither defined nor in the document")

    for item in sections["vhosts"]:
        core.add_vhost(item["name"])
    for item in sections["users"]:
        _apply_user(core, item["name"], item)
    for item in sections["permissions"]:
        _apply_permission(core, item["user"], item["vhost"], item)
    for item in sections["topic_permissions"]:
        apply_topic_permission(core, item["user"], item["vhost"], item)
    for item in sections["global_parameters"]:
        core.set_global_parameter(item["name"], item["value"])
    for vhost_name, component, name, value in parameters:
        core.set_parameter(vhost_name, component, name, value)
    for policy in policies:
        core.vhosts[policy.vhost].set_policy(policy)
    for item in sections["exchanges"]:
        declare_exchange(
            core,
            None,
            core.vhosts[item["vhost"]],
            item["name"],
            {
                k: v
                for k, v in item.items()
                if k in ("type", "durable", "auto_delete", "internal", "arguments")
            },
        )
    for item in sections["queues"]:
        declare_queue(
            core,
            None,
            core.vhosts[item["vhost"]],
            item["name"],
            {k: v for k, v in item.items() if k in ("durable", "auto_delete", "arguments")},
        )
    for item in sections["bindings"]:
        vhost = core.vhosts[item["vhost"]]
        source = vhost.exchanges.get(item["source"])
        if source is None:
            raise bad_request(
                f"binding source exchange '{item['source']}' does not exist in vhost '{vhost.name}'"
            )
        pool: dict[str, Any] = (
            vhost.queues if item["destination_type"] == "queue" else vhost.exchanges
        )  # type: ignore[assignment]
        destination = pool.get(item["destination"])
        if destination is None:
            raise bad_request(
                f"binding destination '{item['destination']}' does not exist in vhost '{vhost.name}'"
            )
        bind(core, None, vhost, source, destination, item)


async def post_definitions(request: web.Request) -> web.Response:
    body = await read_object(request)
    import_definitions(_core(request), body)
    return no_content()
