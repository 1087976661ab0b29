"""Every HTTP endpoint, once: path, verb, handler, access, and body schemas.

``server.py`` registers these routes and ``openapi.py`` documents them, from this one
list.  Schemas describe what the handlers really accept and return; fields RabbitMQ
tooling reads are listed as required in responses.
"""

from __future__ import annotations

from typing import Any

from . import api, kafka, metrics, mqtt_api, openapi, rest, scheduled
from .auth import Access
from .routes import Param, Route

# --- schemas --------------------------------------------------------------------------

STRING: dict[str, Any] = {"type": "string"}
INTEGER: dict[str, Any] = {"type": "integer"}
BOOLEAN: dict[str, Any] = {"type": "boolean"}
TABLE: dict[str, Any] = {"type": "object", "description": "AMQP field table (arguments or headers)"}
RATE: dict[str, Any] = {
    "type": "object",
    "properties": {"rate": {"type": "number"}},
    "required": ["rate"],
}
NAME: dict[str, Any] = {"type": "string", "minLength": 1, "maxLength": 255}


def obj(
    properties: dict[str, Any], required: tuple[str, ...] = (), additional: bool = True
) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "object", "properties": properties}
    if required:
        schema["required"] = list(required)
    if not additional:
        schema["additionalProperties"] = False
    return schema


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


def stats(*keys: str) -> dict[str, Any]:
    props: dict[str, Any] = {}
    for key in keys:
        props[key] = INTEGER
        props[f"{key}_details"] = RATE
    return obj(props)


ERROR = obj({"error": STRING, "reason": STRING}, ("error", "reason"))
OVERVIEW = obj(
    {
        "rabbitmq_version": STRING,
        "management_version": STRING,
        "product_name": STRING,
        "product_version": STRING,
        "node": STRING,
        "cluster_name": STRING,
        "message_stats": stats(
            "publish",
            "deliver_get",
            "ack",
            "confirm",
            "redeliver",
            "return_unroutable",
            "drop_unroutable",
        ),
        "queue_totals": obj(
            {"messages": INTEGER, "messages_ready": INTEGER, "messages_unacknowledged": INTEGER},
            ("messages", "messages_ready", "messages_unacknowledged"),
        ),
        "object_totals": obj(
            {
                "connections": INTEGER,
                "channels": INTEGER,
                "exchanges": INTEGER,
                "queues": INTEGER,
                "consumers": INTEGER,
            },
            ("connections", "channels", "exchanges", "queues", "consumers"),
        ),
        "alarms": array(STRING),
        "listeners": array(obj({"protocol": STRING, "port": INTEGER})),
    },
    (
        "rabbitmq_version",
        "product_name",
        "node",
        "message_stats",
        "queue_totals",
        "object_totals",
        "alarms",
    ),
)
NODE = obj(
    {
        "name": STRING,
        "mem_used": INTEGER,
        "mem_limit": INTEGER,
        "mem_alarm": BOOLEAN,
        "disk_free": INTEGER,
        "disk_free_limit": INTEGER,
        "disk_free_alarm": BOOLEAN,
        "uptime": INTEGER,
        "fd_used": INTEGER,
        "fd_total": INTEGER,
        "running": BOOLEAN,
    },
    (
        "name",
        "mem_used",
        "mem_limit",
        "mem_alarm",
        "disk_free",
        "disk_free_limit",
        "disk_free_alarm",
        "uptime",
        "fd_used",
    ),
)
VHOST = obj(
    {
        "name": STRING,
        "messages": INTEGER,
        "messages_ready": INTEGER,
        "messages_unacknowledged": INTEGER,
        "tracing": BOOLEAN,
    },
    ("name", "messages", "messages_ready", "messages_unacknowledged"),
)
VHOST_PUT = obj(
    {
        "description": STRING,
        "tags": {"oneOf": [STRING, array(STRING)]},
        "default_queue_type": STRING,
    }
)
USER = obj(
    {"name": STRING, "password_hash": STRING, "hashing_algorithm": STRING, "tags": array(STRING)},
    ("name", "password_hash", "hashing_algorithm", "tags"),
)
TAGS = {"oneOf": [{"type": "string", "description": "comma-separated"}, array(STRING)]}
USER_PUT = obj(
    {
        "password": STRING,
        "password_hash": {
            "type": "string",
            "description": "base64(4-byte salt + SHA-256(salt + password)); empty disables password login",
        },
        "hashing_algorithm": {"type": "string", "enum": ["rabbit_password_hashing_sha256"]},
        "tags": TAGS,
        "scram_credentials": {
            "type": "object",
            "description": "Baedal: SCRAM credentials by mechanism (SCRAM-SHA-256, SCRAM-SHA-512), each "
            "{salt, iterations, stored_key, server_key} in base64, as GET /api/definitions exports "
            "them; used with password_hash (a password derives fresh ones)",
        },
    }
)
PERMISSION = obj(
    {"user": STRING, "vhost": STRING, "configure": STRING, "write": STRING, "read": STRING},
    ("user", "vhost", "configure", "write", "read"),
)
PERMISSION_PUT = obj({"configure": STRING, "write": STRING, "read": STRING})
TOPIC_PERMISSION = obj(
    {"user": STRING, "vhost": STRING, "exchange": STRING, "write": STRING, "read": STRING},
    ("user", "vhost", "exchange", "write", "read"),
)
TOPIC_PERMISSION_PUT = obj(
    {"exchange": STRING, "write": STRING, "read": STRING}, ("exchange",)
)
POLICY_DEFINITION = {
    "type": "object",
    "description": "Policy keys (max-length, message-ttl, dead-letter-exchange, ...)",
}
POLICY_PUT = obj(
    {
        "pattern": STRING,
        "definition": POLICY_DEFINITION,
        "priority": INTEGER,
        "apply-to": {"type": "string", "enum": ["queues", "exchanges", "all"]},
    },
    ("pattern", "definition"),
)
POLICY = obj(
    {"vhost": STRING, "name": STRING, **POLICY_PUT["properties"]},
    ("vhost", "name", "pattern", "definition", "priority", "apply-to"),
)
EXCHANGE_TYPE = {"type": "string", "enum": ["direct", "fanout", "topic", "headers"]}
EXCHANGE = obj(
    {
        "name": STRING,
        "vhost": STRING,
        "type": STRING,
        "durable": BOOLEAN,
        "auto_delete": BOOLEAN,
        "internal": BOOLEAN,
        "arguments": TABLE,
        "policy": {"type": ["string", "null"]},
    },
    ("name", "vhost", "type", "durable", "auto_delete", "internal", "arguments"),
)
EXCHANGE_PUT = obj(
    {
        "type": EXCHANGE_TYPE,
        "durable": BOOLEAN,
        "auto_delete": BOOLEAN,
        "internal": BOOLEAN,
        "arguments": TABLE,
    }
)
QUEUE = obj(
    {
        "name": STRING,
        "vhost": STRING,
        "type": STRING,
        "durable": BOOLEAN,
        "auto_delete": BOOLEAN,
        "exclusive": BOOLEAN,
        "arguments": TABLE,
        "messages": INTEGER,
        "messages_ready": INTEGER,
        "messages_unacknowledged": INTEGER,
        "consumers": INTEGER,
        "state": {
            "type": "string",
            "enum": ["running", "failed"],
            "description": "failed while the queue's store cannot write (see storage_error)",
        },
        "storage_error": STRING,
        "policy": {"type": ["string", "null"]},
        "operator_policy": {"type": ["string", "null"]},
        "effective_policy_definition": POLICY_DEFINITION,
        "message_stats": stats("publish", "deliver_get", "ack", "redeliver"),
        "committed_offset": {
            "type": "integer",
            "description": "streams only: records below this offset are on disk (fsynced) and readable",
        },
        "stream": {
            "type": "object",
            "description": "streams only (type: stream): offsets, size, segments, retention, readers",
            "properties": {
                "first_offset": INTEGER,
                "last_offset": INTEGER,
                "next_offset": INTEGER,
                "committed_offset": INTEGER,
                "messages": INTEGER,
                "bytes_on_disk": INTEGER,
                "segments": INTEGER,
                "max_length_bytes": {"type": ["integer", "null"]},
                "max_age": {"type": ["string", "null"]},
                "max_segment_size_bytes": INTEGER,
                "readers": INTEGER,
                "reader_details": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "consumer_tag": STRING,
                            "offset": INTEGER,
                            "lag": INTEGER,
                            "delivered": INTEGER,
                        },
                    },
                },
                "segments_removed_by_retention": INTEGER,
            },
        },
    },
    (
        "name",
        "vhost",
        "durable",
        "auto_delete",
        "exclusive",
        "arguments",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
        "message_stats",
    ),
)
QUEUE_PUT = obj(
    {
        "durable": BOOLEAN,
        "auto_delete": BOOLEAN,
        "exclusive": {"type": "boolean", "enum": [False]},
        "arguments": TABLE,
    }
)
BINDING = obj(
    {
        "source": STRING,
        "vhost": STRING,
        "destination": STRING,
        "destination_type": {"type": "string", "enum": ["queue", "exchange"]},
        "routing_key": STRING,
        "arguments": TABLE,
        "properties_key": STRING,
    },
    (
        "source",
        "vhost",
        "destination",
        "destination_type",
        "routing_key",
        "arguments",
        "properties_key",
    ),
)
BINDING_POST = obj({"routing_key": {"type": "string", "maxLength": 255}, "arguments": TABLE})
CONNECTION = obj(
    {
        "name": STRING,
        "peer_host": STRING,
        "peer_port": INTEGER,
        "user": STRING,
        "vhost": {"type": ["string", "null"]},
        "channels": INTEGER,
        "state": {
            "type": "string",
            "description": "running, flow (not read: output over max_connection_output or a "
            "queue's consumers are socket-bound), blocking/blocked (resource alarm), or a "
            "handshake state",
        },
        "client_properties": {"type": "object"},
        "recv_oct": INTEGER,
        "send_oct": INTEGER,
        "send_pend": {"type": "integer", "description": "bytes owed to the client, not yet sent"},
        "auth_mechanism": {"type": "string", "description": "as negotiated: PLAIN or AMQPLAIN"},
        "protocol": {
            "type": "string",
            "description": "AMQP 0-9-1, STOMP 1.x, Web STOMP 1.x, MQTT 3.1.1, MQTT 5.0, Web MQTT ..., inproc",
        },
        "client_id": {"type": "string", "description": "MQTT only: the client identifier"},
        "keep_alive": {"type": "integer", "description": "MQTT only: keep-alive in force, seconds"},
        "clean_session": {"type": "boolean", "description": "MQTT only"},
        "subscriptions": {"type": "integer", "description": "MQTT only: the session's subscriptions"},
        "inflight": {"type": "integer", "description": "MQTT only: QoS 1/2 deliveries awaiting the client"},
    },
    (
        "name",
        "peer_host",
        "peer_port",
        "user",
        "vhost",
        "channels",
        "state",
        "client_properties",
        "recv_oct",
        "send_oct",
    ),
)
CHANNEL = obj(
    {
        "name": STRING,
        "number": INTEGER,
        "connection_details": {"type": "object"},
        "consumer_count": INTEGER,
        "messages_unacknowledged": INTEGER,
        "message_stats": stats("publish", "deliver_get"),
    },
    ("name", "number", "connection_details", "consumer_count", "messages_unacknowledged"),
)
CONSUMER = obj(
    {
        "consumer_tag": STRING,
        "queue": obj({"name": STRING, "vhost": STRING}),
        "ack_required": BOOLEAN,
        "prefetch_count": INTEGER,
        "channel_details": {"type": "object"},
        "active": BOOLEAN,
        "activity_status": {"type": "string", "enum": ["up", "single_active", "waiting"]},
    },
    ("consumer_tag", "queue", "ack_required", "channel_details"),
)
PROPERTIES = obj(
    {
        "content_type": STRING,
        "content_encoding": STRING,
        "headers": TABLE,
        "delivery_mode": {"type": "integer", "minimum": 0, "maximum": 255},
        "priority": {"type": "integer", "minimum": 0, "maximum": 255},
        "correlation_id": STRING,
        "reply_to": STRING,
        "expiration": {"type": "string", "pattern": "^[0-9]+$"},
        "message_id": STRING,
        "timestamp": {"type": "integer", "minimum": 0},
        "type": STRING,
        "user_id": STRING,
        "app_id": STRING,
        "cluster_id": STRING,
    },
    additional=False,
)
GET_REQUEST = obj(
    {
        "count": {"type": "integer", "minimum": 1, "maximum": 1000},
        "ackmode": {
            "type": "string",
            "enum": [
                "ack_requeue_true",
                "ack_requeue_false",
                "reject_requeue_true",
                "reject_requeue_false",
            ],
        },
        "encoding": {"type": "string", "enum": ["auto", "base64"]},
        "truncate": {"type": "integer", "minimum": 0},
    }
)
GOT_MESSAGE = obj(
    {
        "payload": STRING,
        "payload_bytes": INTEGER,
        "payload_encoding": {"type": "string", "enum": ["string", "base64"]},
        "redelivered": BOOLEAN,
        "exchange": STRING,
        "routing_key": STRING,
        "message_count": INTEGER,
        "properties": PROPERTIES,
    },
    (
        "payload",
        "payload_bytes",
        "payload_encoding",
        "redelivered",
        "exchange",
        "routing_key",
        "message_count",
        "properties",
    ),
)
PAYLOAD_ENCODING = {"type": "string", "enum": ["string", "base64"]}
PUBLISH_REQUEST = obj(
    {
        "properties": PROPERTIES,
        "routing_key": {"type": "string", "maxLength": 255},
        "payload": STRING,
        "payload_encoding": PAYLOAD_ENCODING,
    }
)
DEFINITIONS = obj(
    {
        "rabbit_version": STRING,
        "users": array(obj({**USER_PUT["properties"], "name": STRING}, ("name",))),
        "vhosts": array(obj({"name": STRING}, ("name",))),
        "permissions": array(
            obj(
                {**PERMISSION_PUT["properties"], "user": STRING, "vhost": STRING}, ("user", "vhost")
            )
        ),
        "queues": array(
            obj({"name": STRING, "vhost": STRING, **QUEUE_PUT["properties"]}, ("name", "vhost"))
        ),
        "exchanges": array(
            obj({"name": STRING, "vhost": STRING, **EXCHANGE_PUT["properties"]}, ("name", "vhost"))
        ),
        "bindings": array(
            obj(
                {
                    "source": STRING,
                    "vhost": STRING,
                    "destination": STRING,
                    "destination_type": {"type": "string", "enum": ["queue", "exchange"]},
                    **BINDING_POST["properties"],
                },
                ("source", "vhost", "destination", "destination_type"),
            )
        ),
        "topic_permissions": array(TOPIC_PERMISSION),
        "policies": array(POLICY),
        "parameters": array(
            obj(
                {"vhost": STRING, "component": STRING, "name": STRING, "value": {}},
                ("vhost", "component", "name", "value"),
            )
        ),
        "global_parameters": array(obj({"name": STRING, "value": {}}, ("name", "value"))),
    }
)
ENVELOPE = obj(
    {
        "payload": STRING,
        "payload_encoding": PAYLOAD_ENCODING,
        "properties": PROPERTIES,
        "headers": TABLE,
    }
)
PUBLISHED = obj(
    {
        "message_id": STRING,
        "vhost": STRING,
        "queue": STRING,
        "persistent": BOOLEAN,
        "location": STRING,
    },
    ("message_id", "vhost", "queue", "persistent"),
)
SETTLED = obj(
    {
        "lease_id": STRING,
        "outcome": {"type": "string", "enum": ["ack", "requeue", "reject"]},
        "replayed": BOOLEAN,
    },
    ("lease_id", "outcome", "replayed"),
)
WHOAMI = obj({"name": STRING, "tags": array(STRING)}, ("name", "tags"))
HEALTH = obj({"status": STRING}, ("status",))

IF_UNUSED = Param(
    "if-unused", {"type": "string", "enum": ["true", "false"]}, "Only delete when unused"
)
IF_EMPTY = Param(
    "if-empty", {"type": "string", "enum": ["true", "false"]}, "Only delete when empty"
)
X_REASON = Param("X-Reason", STRING, "Close reason sent to the client", where="header")
WAIT = Param(
    "wait",
    {"type": "number", "minimum": 0, "maximum": rest.MAX_WAIT},
    "Seconds to wait for a message (long poll)",
)
LEASE = Param(
    "lease",
    {"type": "number", "minimum": 1, "maximum": rest.MAX_LEASE},
    "Seconds the message stays leased",
)
REQUEUE = Param(
    "requeue",
    {"type": "string", "enum": ["true", "false"]},
    "Requeue (default) or dead-letter/drop",
)
PREFETCH = Param(
    "prefetch",
    {"type": "integer", "minimum": 1, "maximum": rest.MAX_PREFETCH},
    "Credit: leases outstanding at once",
)
IDEMPOTENCY_KEY = Param(
    "Idempotency-Key",
    {"type": "string", "minLength": 1, "maxLength": 255},
    "Replays within 10 minutes return the first answer",
    where="header",
)
CLIENT_ID = Param(
    "X-Baedal-Client-Id",
    {"type": "string", "maxLength": 128},
    "Distinguishes clients of one user for lease bounds",
    where="header",
)

R, M, A, P, X = Access.READ, Access.MANAGE, Access.ADMIN, Access.PUBLIC, Access.MESSAGING

ROUTES: list[Route] = [
    Route(
        "GET",
        "/api/overview",
        api.overview,
        R,
        "Broker overview: versions, totals, rates, alarms",
        "overview",
        response=OVERVIEW,
    ),
    Route(
        "GET", "/api/whoami", api.whoami, R, "The authenticated user", "overview", response=WHOAMI
    ),
    Route(
        "GET",
        "/api/health/checks/alarms",
        api.health_alarms,
        R,
        "200 when no resource alarm is in effect, else 503",
        "overview",
        response=HEALTH,
        other_statuses=(503,),
    ),
    Route(
        "GET",
        "/api/nodes",
        api.nodes,
        R,
        "The node (Baedal runs one)",
        "nodes",
        response=array(NODE),
    ),
    Route("GET", "/api/nodes/{node}", api.node, R, "One node", "nodes", response=NODE),
    Route(
        "GET", "/api/vhosts", api.list_vhosts, R, "Virtual hosts", "vhosts", response=array(VHOST)
    ),
    Route(
        "GET", "/api/vhosts/{vhost}", api.get_vhost, R, "One virtual host", "vhosts", response=VHOST
    ),
    Route(
        "PUT",
        "/api/vhosts/{vhost}",
        api.put_vhost,
        A,
        "Create a virtual host",
        "vhosts",
        request=VHOST_PUT,
        request_required=False,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/vhosts/{vhost}",
        api.delete_vhost,
        A,
        "Delete a virtual host and everything in it",
        "vhosts",
        status=204,
    ),
    Route(
        "GET",
        "/api/vhosts/{vhost}/permissions",
        api.list_permissions,
        A,
        "Permissions in a virtual host",
        "permissions",
        response=array(PERMISSION),
    ),
    Route(
        "GET",
        "/api/users",
        api.list_users,
        A,
        "Users (password hashes only)",
        "users",
        response=array(USER),
    ),
    Route("GET", "/api/users/{user}", api.get_user, A, "One user", "users", response=USER),
    Route(
        "PUT",
        "/api/users/{user}",
        api.put_user,
        A,
        "Create or update a user",
        "users",
        request=USER_PUT,
        status=201,
        other_statuses=(204,),
    ),
    Route("DELETE", "/api/users/{user}", api.delete_user, A, "Delete a user", "users", status=204),
    Route(
        "GET",
        "/api/users/{user}/permissions",
        api.list_permissions,
        A,
        "A user's permissions",
        "permissions",
        response=array(PERMISSION),
    ),
    Route(
        "GET",
        "/api/permissions",
        api.list_permissions,
        A,
        "All permissions",
        "permissions",
        response=array(PERMISSION),
    ),
    Route(
        "GET",
        "/api/permissions/{vhost}/{user}",
        api.get_permission,
        A,
        "One permission",
        "permissions",
        response=PERMISSION,
    ),
    Route(
        "PUT",
        "/api/permissions/{vhost}/{user}",
        api.put_permission,
        A,
        "Grant a permission (regular expressions)",
        "permissions",
        request=PERMISSION_PUT,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/permissions/{vhost}/{user}",
        api.delete_permission,
        A,
        "Revoke a permission",
        "permissions",
        status=204,
    ),
    Route(
        "GET",
        "/api/exchanges",
        api.list_exchanges,
        R,
        "Exchanges in all visible vhosts",
        "exchanges",
        response=array(EXCHANGE),
    ),
    Route(
        "GET",
        "/api/exchanges/{vhost}",
        api.list_exchanges,
        R,
        "Exchanges in a vhost",
        "exchanges",
        response=array(EXCHANGE),
    ),
    Route(
        "GET",
        "/api/exchanges/{vhost}/{name}",
        api.get_exchange,
        R,
        "One exchange (amq.default is the default exchange)",
        "exchanges",
        response=EXCHANGE,
    ),
    Route(
        "PUT",
        "/api/exchanges/{vhost}/{name}",
        api.put_exchange,
        M,
        "Declare an exchange",
        "exchanges",
        request=EXCHANGE_PUT,
        request_required=False,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/exchanges/{vhost}/{name}",
        api.delete_exchange,
        M,
        "Delete an exchange",
        "exchanges",
        status=204,
        params=(IF_UNUSED,),
    ),
    Route(
        "GET",
        "/api/exchanges/{vhost}/{name}/bindings/{direction}",
        api.list_exchange_bindings,
        R,
        "Bindings where the exchange is the source or destination",
        "bindings",
        response=array(BINDING),
        extra={"direction": ["source", "destination"]},
    ),
    Route(
        "POST",
        "/api/exchanges/{vhost}/{name}/publish",
        api.publish,
        M,
        "Publish one message (testing); answers whether it was routed",
        "exchanges",
        request=PUBLISH_REQUEST,
        response=obj({"routed": BOOLEAN}, ("routed",)),
    ),
    Route(
        "GET",
        "/api/queues",
        api.list_queues,
        R,
        "Queues in all visible vhosts",
        "queues",
        response=array(QUEUE),
    ),
    Route(
        "GET",
        "/api/queues/{vhost}",
        api.list_queues,
        R,
        "Queues in a vhost",
        "queues",
        response=array(QUEUE),
    ),
    Route(
        "GET", "/api/queues/{vhost}/{name}", api.get_queue, R, "One queue", "queues", response=QUEUE
    ),
    Route(
        "PUT",
        "/api/queues/{vhost}/{name}",
        api.put_queue,
        M,
        "Declare a queue",
        "queues",
        request=QUEUE_PUT,
        request_required=False,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/queues/{vhost}/{name}",
        api.delete_queue,
        M,
        "Delete a queue",
        "queues",
        status=204,
        params=(IF_EMPTY, IF_UNUSED),
    ),
    Route(
        "DELETE",
        "/api/queues/{vhost}/{name}/contents",
        api.purge_queue,
        M,
        "Purge ready messages",
        "queues",
        status=204,
    ),
    Route(
        "GET",
        "/api/queues/{vhost}/{name}/bindings",
        api.list_queue_bindings,
        R,
        "Bindings of a queue",
        "bindings",
        response=array(BINDING),
    ),
    Route(
        "POST",
        "/api/queues/{vhost}/{name}/get",
        api.get_messages,
        M,
        "Get messages (basic.get), then ack or requeue them",
        "queues",
        request=GET_REQUEST,
        response=array(GOT_MESSAGE),
    ),
    Route(
        "GET",
        "/api/bindings",
        api.list_bindings,
        R,
        "Bindings in all visible vhosts",
        "bindings",
        response=array(BINDING),
    ),
    Route(
        "GET",
        "/api/bindings/{vhost}",
        api.list_bindings,
        R,
        "Bindings in a vhost",
        "bindings",
        response=array(BINDING),
    ),
    Route(
        "GET",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
        api.list_bindings_between,
        R,
        "Bindings from an exchange to a queue (q) or exchange (e)",
        "bindings",
        response=array(BINDING),
        extra={"kind": ["q", "e"]},
    ),
    Route(
        "POST",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}",
        api.post_binding,
        M,
        "Create a binding; Location names it by properties_key",
        "bindings",
        request=BINDING_POST,
        request_required=False,
        status=201,
        extra={"kind": ["q", "e"]},
    ),
    Route(
        "GET",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
        api.get_binding,
        R,
        "One binding by properties_key",
        "bindings",
        response=BINDING,
        extra={"kind": ["q", "e"]},
    ),
    Route(
        "DELETE",
        "/api/bindings/{vhost}/e/{source}/{kind}/{destination}/{props}",
        api.delete_binding,
        M,
        "Delete a binding by properties_key",
        "bindings",
        status=204,
        extra={"kind": ["q", "e"]},
    ),
    Route(
        "GET",
        "/api/connections",
        api.list_connections,
        R,
        "Client connections",
        "connections",
        response=array(CONNECTION),
    ),
    Route(
        "GET",
        "/api/vhosts/{vhost}/connections",
        api.list_connections,
        R,
        "Connections to a vhost",
        "connections",
        response=array(CONNECTION),
    ),
    Route(
        "GET",
        "/api/connections/{connection}",
        api.get_connection,
        R,
        "One connection",
        "connections",
        response=CONNECTION,
    ),
    Route(
        "DELETE",
        "/api/connections/{connection}",
        api.delete_connection,
        A,
        "Close a connection (320 CONNECTION_FORCED)",
        "connections",
        status=204,
        params=(X_REASON,),
    ),
    Route(
        "GET",
        "/api/connections/{connection}/channels",
        api.list_connection_channels,
        R,
        "Channels of a connection",
        "channels",
        response=array(CHANNEL),
    ),
    Route(
        "GET",
        "/api/channels",
        api.list_channels,
        R,
        "Channels",
        "channels",
        response=array(CHANNEL),
    ),
    Route(
        "GET",
        "/api/vhosts/{vhost}/channels",
        api.list_channels,
        R,
        "Channels in a vhost",
        "channels",
        response=array(CHANNEL),
    ),
    Route(
        "GET",
        "/api/consumers",
        api.list_consumers,
        R,
        "Consumers",
        "consumers",
        response=array(CONSUMER),
    ),
    Route(
        "GET",
        "/api/consumers/{vhost}",
        api.list_consumers,
        R,
        "Consumers in a vhost",
        "consumers",
        response=array(CONSUMER),
    ),
    Route(
        "GET",
        "/api/policies",
        api.list_policies,
        M,
        "All policies",
        "policies",
        response=array(POLICY),
    ),
    Route(
        "GET",
        "/api/policies/{vhost}",
        api.list_policies,
        M,
        "Policy in a vhost",
        "policies",
        response=array(POLICY),
    ),
    Route(
        "GET",
        "/api/policies/{vhost}/{name}",
        api.get_policy,
        M,
        "One policy",
        "policies",
        response=POLICY,
    ),
    Route(
        "PUT",
        "/api/policies/{vhost}/{name}",
        api.put_policy,
        M,
        "Set a policy (applied at once)",
        "policies",
        request=POLICY_PUT,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/policies/{vhost}/{name}",
        api.delete_policy,
        M,
        "Clear a policy",
        "policies",
        status=204,
    ),
    Route(
        "GET",
        "/api/operator-policies",
        api.list_operator_policies,
        A,
        "All operator policies",
        "policies",
        response=array(POLICY),
    ),
    Route(
        "GET",
        "/api/operator-policies/{vhost}",
        api.list_operator_policies,
        A,
        "Operator policies in a vhost",
        "policies",
        response=array(POLICY),
    ),
    Route(
        "GET",
        "/api/operator-policies/{vhost}/{name}",
        api.get_operator_policy,
        A,
        "One operator policy",
        "policies",
        response=POLICY,
    ),
    Route(
        "PUT",
        "/api/operator-policies/{vhost}/{name}",
        api.put_operator_policy,
        A,
        "Set a operator policy (applied at once)",
        "policies",
        request=POLICY_PUT,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/operator-policies/{vhost}/{name}",
        api.delete_operator_policy,
        A,
        "Clear a operator policy",
        "policies",
        status=204,
    ),
    Route(
        "GET",
        "/api/topic-permissions",
        api.list_topic_permissions,
        A,
        "All topic permissions",
        "permissions",
        response=array(TOPIC_PERMISSION),
    ),
    Route(
        "GET",
        "/api/vhosts/{vhost}/topic-permissions",
        api.list_topic_permissions,
        A,
        "Topic permissions in a vhost",
        "permissions",
        response=array(TOPIC_PERMISSION),
    ),
    Route(
        "GET",
        "/api/users/{user}/topic-permissions",
        api.list_topic_permissions,
        A,
        "A user's topic permissions",
        "permissions",
        response=array(TOPIC_PERMISSION),
    ),
    Route(
        "GET",
        "/api/topic-permissions/{vhost}/{user}",
        api.list_topic_permissions,
        A,
        "A user's topic permissions in a vhost",
        "permissions",
        response=array(TOPIC_PERMISSION),
    ),
    Route(
        "PUT",
        "/api/topic-permissions/{vhost}/{user}",
        api.put_topic_permission,
        A,
        "Set a topic permission (write/read regexes for one exchange)",
        "permissions",
        request=TOPIC_PERMISSION_PUT,
        status=201,
        other_statuses=(204,),
    ),
    Route(
        "DELETE",
        "/api/topic-permissions/{vhost}/{user}",
        api.delete_topic_permission,
        A,
        "Clear a user's topic permissions in a vhost",
        "permissions",
        status=204,
    ),
    Route(
        "GET",
        "/api/definitions",
        api.get_definitions,
        A,
        "Export definitions (RabbitMQ format)",
        "definitions",
        response=DEFINITIONS,
    ),
    Route(
        "POST",
        "/api/definitions",
        api.post_definitions,
        A,
        "Import definitions (RabbitMQ format)",
        "definitions",
        request=DEFINITIONS,
        status=204,
    ),
    Route(
        "POST",
        "/api/rest/{vhost}/queues/{queue}/messages",
        rest.publish_message,
        X,
        "Publish the request body to a queue; 201 once stored",
        "rest",
        request=ENVELOPE,
        request_content="rest-publish",
        response=PUBLISHED,
        status=201,
        other_statuses=(409, 413, 422, 503),
        params=(IDEMPOTENCY_KEY,),
    ),
    Route(
        "GET",
        "/api/rest/{vhost}/queues/{queue}/messages/next",
        rest.next_message,
        X,
        "Long poll: lease the next message (body = payload), 204 on timeout",
        "rest",
        response={"type": "string", "format": "binary"},
        response_content="application/octet-stream",
        other_statuses=(204, 409, 429),
        params=(WAIT, LEASE, CLIENT_ID),
        fuzz=False,
    ),
    Route(
        "POST",
        "/api/rest/{vhost}/queues/{queue}/leases/{lease}/ack",
        rest.ack_lease,
        X,
        "Acknowledge a lease (idempotent)",
        "rest",
        response=SETTLED,
        other_statuses=(409,),
    ),
    Route(
        "POST",
        "/api/rest/{vhost}/queues/{queue}/leases/{lease}/nack",
        rest.nack_lease,
        X,
        "Return (requeue=true) or reject a lease (idempotent)",
        "rest",
        response=SETTLED,
        other_statuses=(409,),
        params=(REQUEUE,),
    ),
    Route(
        "GET",
        "/api/rest/{vhost}/queues/{queue}/ws",
        rest.subscribe,
        X,
        "WebSocket subscription with leases and credit",
        "rest",
        status=101,
        params=(PREFETCH, LEASE, CLIENT_ID),
        fuzz=False,
    ),
    Route(
        "GET",
        "/metrics",
        metrics.metrics,
        P,
        "Prometheus metrics",
        "metrics",
        response=STRING,
        response_content="text/plain",
    ),
    Route(
        "GET",
        "/api/openapi.json",
        openapi.serve,
        P,
        "This document",
        "meta",
        response={"type": "object"},
    ),
]

ROUTES += scheduled.ROUTES  # scheduled messages (protocols/http/scheduled.py)
ROUTES += mqtt_api.ROUTES  # MQTT sessions and retained messages (protocols/http/mqtt_api.py)
# Kafka topics and groups (protocols/http/kafka.py).
ROUTES += kafka.ROUTES
