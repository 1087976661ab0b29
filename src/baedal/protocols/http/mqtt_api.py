"""Management API for MQTT: sessions and retained messages (protocols/mqtt/).

MQTT connections themselves are listed with every other protocol's in
``/api/connections`` (``describe()`` on ``MQTTConnection``).  What has no AMQP
counterpart lives here:

* ``/api/mqtt/sessions``: every session the broker holds, live or not: the ones in the
  MQTT server's memory (connected, or disconnected and waiting for their expiry) and
  the persistent ones known only from storage after a restart (their durable
  ``mqtt-subscription-<client id>qos<N>`` queues and the session-state log), which are
  rebuilt the way a reconnect rebuilds them (``MQTTServer.restore_session``), without
  being kept.  Each shows its subscriptions with their QoS and the core queue each maps
  to, as RabbitMQ's MQTT plugin names them.
* ``DELETE /api/mqtt/sessions/{client_id}``: drop a disconnected persistent session (its
  queues, bindings and stored state); a connected one answers 409 (close the
  connection first, as mosquitto's dynamic-security plugin requires).
* ``/api/mqtt/retained``: the retained messages, sorted by topic, paginated as the
  management API paginates (``page`` from 1, ``page_size`` up to 500); ``DELETE
  /api/mqtt/retained/{topic}`` clears one exactly as an empty retained PUBLISH would
  (written to the retained log).  A topic is one path segment: its ``/`` are sent
  percent-encoded (``%2F``), as the vhost ``/`` is everywhere in this API.

All of it is in the MQTT vhost (``--mqtt-vhost``): reading needs a user who can see that
vhost, deleting needs ``configure`` on the queues or topic involved.
"""

from __future__ import annotations

import math
import time
from typing import Any

from aiohttp import web

from .auth import Access, check_permission, visible_vhosts
from .errors import HTTPError, not_found
from .routes import (
    MAX_PAGE_SIZE,
    Route,
    no_content,
    page_params,
    page_schema,
    query_number,
    reply,
    server_of,
)

SUBSCRIPTION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "filter": {"type": "string", "description": "the topic filter as subscribed ($share/... kept)"},
        "qos": {"type": "integer"},
        "queue": {"type": "string", "description": "the core queue it maps to"},
        "routing_key": {"type": "string", "description": "binding key on amq.topic"},
        "shared_group": {"type": ["string", "null"]},
        "no_local": {"type": "boolean"},
        "retain_as_published": {"type": "boolean"},
        "subscription_id": {"type": ["integer", "null"]},
    },
    "required": ["filter", "qos", "queue"],
}
SESSION: dict[str, Any] = {
    "type": "object",
    "properties": {
        "client_id": {"type": "string"},
        "vhost": {"type": "string"},
        "connected": {"type": "boolean"},
        "connection": {"type": ["string", "null"], "description": "its /api/connections name"},
        "persistent": {"type": "boolean"},
        "expiry": {"type": ["integer", "null"], "description": "session expiry interval, seconds (null: never)"},
        "in_memory": {"type": "boolean", "description": "false: known only from storage (after a restart)"},
        "inflight": {"type": "integer"},
        "subscriptions": {"type": "array", "items": SUBSCRIPTION},
    },
    "required": ["client_id", "connected", "persistent", "subscriptions"],
}
RETAINED: dict[str, Any] = {
    "type": "object",
    "properties": {
        "topic": {"type": "string"},
        "size": {"type": "integer", "description": "payload bytes"},
        "qos": {"type": "integer"},
        "stored_at": {"type": "integer", "description": "ms since the epoch"},
        "expires_in": {"type": ["integer", "null"], "description": "seconds left (MQTT 5.0 expiry)"},
    },
    "required": ["topic", "size", "qos"],
}
RETAINED_PAGE: dict[str, Any] = page_schema(RETAINED)
PAGE_PARAMS = page_params("Retained messages")

_QUEUE_PREFIX = "mqtt-subscription-"


def _mqtt(request: web.Request) -> Any:
    """The MQTT server, when its vhost is visible to the caller (404 otherwise)."""
    server = server_of(request)
    mqtt = getattr(server.broker, "mqtt", None)
    if mqtt is None:
        raise HTTPError(404, "the MQTT listener is not enabled")
    if mqtt.config.vhost not in visible_vhosts(server.core, request.get("user")):
        raise not_found(f"no access to the MQTT vhost '{mqtt.config.vhost}'")
    return mqtt


def _stored_client_ids(mqtt: Any) -> set[str]:
    """Client ids of persistent sessions known from storage (queues, session state)."""
    ids = set(mqtt.state.state) | set(mqtt.state.shares)
    vhost = mqtt.core.vhosts.get(mqtt.config.vhost)
    if vhost is not None:
        for name in list(vhost.queues):
            if name.startswith(_QUEUE_PREFIX) and name[-4:-1] == "qos" and name[-1] in "012":
                ids.add(name[len(_QUEUE_PREFIX):-4])
    return ids


def _session(mqtt: Any, client_id: str) -> tuple[Any, bool] | None:
    """(session, in memory) for ``client_id``, or None."""
    session = mqtt.sessions.get(client_id)
    if session is not None:
        return session, True
    if client_id not in _stored_client_ids(mqtt):
        return None
    session = mqtt.restore_session(client_id, mqtt.vhost)
    return (session, False) if session is not None else None


def session_info(mqtt: Any, session: Any, in_memory: bool) -> dict[str, Any]:
    connection = session.connection
    subscriptions = [
        {
            "filter": name,
            "qos": options.qos,
            "queue": options.queue_name,
            "routing_key": options.routing_key,
            "shared_group": options.group,
            "no_local": options.no_local,
            "retain_as_published": options.retain_as_published,
            "subscription_id": options.sub_id,
        }
        for name, options in sorted(session.subscriptions.items())
    ]
    return {
        "client_id": session.client_id,
        "vhost": mqtt.config.vhost,
        "connected": connection is not None,
        "connection": connection.name if connection is not None else None,
        "protocol": connection.protocol if connection is not None else None,
        "persistent": session.persistent,
        "expiry": session.expiry,
        "in_memory": in_memory,
        "inflight": len(session.inflight),
        "subscriptions": subscriptions,
    }


async def list_sessions(request: web.Request) -> web.Response:
    mqtt = _mqtt(request)
    found = [session_info(mqtt, s, True) for s in list(mqtt.sessions.values())]
    for client_id in sorted(_stored_client_ids(mqtt) - set(mqtt.sessions)):
        session = mqtt.restore_session(client_id, mqtt.vhost)
        if session is not None:
            found.append(session_info(mqtt, session, False))
    found.sort(key=lambda item: item["client_id"])
    return reply(found)


async def get_session(request: web.Request) -> web.Response:
    mqtt = _mqtt(request)
    client_id = request.match_info["client_id"]
    found = _session(mqtt, client_id)
    if found is None:
        raise not_found(f"no MQTT session '{client_id}'")
    return reply(session_info(mqtt, *found))


async def delete_session(request: web.Request) -> web.Response:
    mqtt = _mqtt(request)
    client_id = request.match_info["client_id"]
    found = _session(mqtt, client_id)
    if found is None:
        raise not_found(f"no MQTT session '{client_id}'")
    session = found[0]
    if session.connection is not None:
        raise HTTPError(409, f"MQTT session '{client_id}' is connected: close its connection first")
    core = server_of(request).core
    for qos in (0, 1, 2):
        check_permission(core, request.get("user"), mqtt.config.vhost, "configure", session.queue_name(qos))
    mqtt.discard_session(session, mqtt.vhost)
    return no_content()


def retained_info(message: Any, now: float) -> dict[str, Any]:
    return {
        "topic": message.topic,
        "size": len(message.payload),
        "qos": message.qos,
        "stored_at": int(message.stored_at * 1000),
        "expires_in": message.remaining_expiry(now),
    }


async def list_retained(request: web.Request) -> web.Response:
    mqtt = _mqtt(request)
    page = int(query_number(request, "page", 1, 1, 1_000_000_000))
    page_size = int(query_number(request, "page_size", 100, 1, MAX_PAGE_SIZE))
    now = time.time()
    messages = [m for m in list(mqtt.retained.messages.values()) if (m.remaining_expiry(now) or 1) > 0]
    messages.sort(key=lambda m: m.topic)
    total = len(messages)
    offset = (page - 1) * page_size
    items = [retained_info(m, now) for m in messages[offset:offset + page_size]]
    return reply({
        "items": items,
        "page": page,
        "page_size": page_size,
        "page_count": max(1, math.ceil(total / page_size)),
        "item_count": len(items),
        "total_count": total,
        "filtered_count": total,
    })


async def get_retained(request: web.Request) -> web.Response:
    mqtt = _mqtt(request)
    topic = request.match_info["topic"]
    message = mqtt.retained.messages.get(topic)
    if message is None:
        raise not_found(f"no retained message on '{topic}'")
    return reply(retained_info(message, time.time()))


async def delete_retained(request: web.Request) -> web.Response:
    mqtt = _mqtt(request)
    topic = request.match_info["topic"]
    if topic not in mqtt.retained.messages:
        raise not_found(f"no retained message on '{topic}'")
    check_permission(server_of(request).core, request.get("user"), mqtt.config.vhost, "configure", "amq.topic")
    mqtt.retained.set(topic, b"", 0, {})  # as an empty retained PUBLISH clears it
    return no_content()


ROUTES: list[Route] = [
    Route(
        "GET", "/api/mqtt/sessions", list_sessions, Access.READ,
        "MQTT sessions, connected or not (persistent ones too after a restart)", "mqtt",
        response={"type": "array", "items": SESSION}, other_statuses=(404,),
    ),
    Route(
        "GET", "/api/mqtt/sessions/{client_id}", get_session, Access.READ,
        "One MQTT session", "mqtt", response=SESSION, other_statuses=(404,),
    ),
    Route(
        "DELETE", "/api/mqtt/sessions/{client_id}", delete_session, Access.MANAGE,
        "Delete a disconnected MQTT session (its queues and stored state)", "mqtt",
        status=204, other_statuses=(403, 404, 409),
    ),
    Route(
        "GET", "/api/mqtt/retained", list_retained, Access.READ,
        "MQTT retained messages, by topic", "mqtt",
        response=RETAINED_PAGE, params=PAGE_PARAMS, other_statuses=(400, 404),
    ),
    Route(
        "GET", "/api/mqtt/retained/{topic}", get_retained, Access.READ,
        "One retained message", "mqtt", response=RETAINED, other_statuses=(404,),
    ),
    Route(
        "DELETE", "/api/mqtt/retained/{topic}", delete_retained, Access.MANAGE,
        "Clear a retained message (as an empty retained PUBLISH does)", "mqtt",
        status=204, other_statuses=(403, 404),
    ),
]
