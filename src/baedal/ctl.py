"""``baedal ctl``: operate a running broker over its HTTP management API.

The counterpart of ``rabbitmqctl`` / ``rabbitmqadmin``.  It speaks only the RabbitMQ
management API (``/api/...``), so it works the same against Baedal and RabbitMQ::

    baedal ctl list queues
    baedal ctl declare queue orders --durable --arg x-max-length=1000
    baedal ctl publish --exchange "" --routing-key orders --body hello
    baedal ctl get orders --count 5 --ackmode ack_requeue_false
    baedal ctl --json export definitions.json
    baedal ctl set_policy TTL "^orders\\." '{"message-ttl": 60000}' --priority 1 --apply-to queues
    baedal ctl set_topic_permissions alice amq.topic '^{username}\\.' '.*' -p /

Exit status (the same convention as ``baedal perf``): 0 when the command did what was
asked, 1 when the broker answered with an error (unknown queue, access refused, a
message published but routed nowhere is *not* an error), 2 on a bad command line or when
the broker cannot be reached at all.

The client uses only ``urllib`` so ``baedal ctl`` needs nothing beyond the standard
library and ``rich`` (already a dependency) on an operator's machine.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import sys
import urllib.error
import urllib.request
from typing import Any
from urllib.parse import quote

__all__ = ["main", "ManagementClient", "ManagementError", "BrokerUnreachable"]

DEFAULT_URL = "http://127.0.0.1:15672"
# The default exchange has the empty name; the management API spells it ``amq.default``
# in URL paths (RabbitMQ's rabbit_mgmt_util:id/2 maps it back to <<>>).
DEFAULT_EXCHANGE_IN_PATH = "amq.default"
ACK_MODES = ("ack_requeue_true", "ack_requeue_false", "reject_requeue_true", "reject_requeue_false")
LIST_KINDS = (
    "queues",
    "exchanges",
    "bindings",
    "connections",
    "channels",
    "consumers",
    "users",
    "vhosts",
    "permissions",
    "policies",
    "operator-policies",
    "topic-permissions",
)


class ManagementError(Exception):
    """The broker answered, with an HTTP error status (exit 1)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


class BrokerUnreachable(Exception):
    """No HTTP answer at all: refused, timed out, bad host (exit 2)."""


class UsageError(Exception):
    """A command line argparse accepts but that makes no sense (exit 2)."""


class ManagementClient:
    """Minimal blocking client for the management API (JSON in, JSON out)."""

    def __init__(self, url: str, user: str, password: str, timeout: float = 30.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout
        token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
        self._authorization = f"Basic {token}"

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
    ) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(self.url + path, data=data, method=method)
        request.add_header("Authorization", self._authorization)
        # No Accept header: RabbitMQ answers 406 to ``Accept: application/json`` on the
        # purge resource (DELETE .../contents has no JSON representation).
        if data is not None:
            request.add_header("Content-Type", "application/json")
        for name, value in (headers or {}).items():
            request.add_header(name, value)
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                raw = response.read()
        except urllib.error.HTTPError as exc:
            raise ManagementError(exc.code, _error_text(exc)) from None
        except urllib.error.URLError as exc:
            raise BrokerUnreachable(f"cannot reach {self.url}: {exc.reason}") from None
        except (TimeoutError, ConnectionError) as exc:
            raise BrokerUnreachable(f"cannot reach {self.url}: {exc}") from None
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except ValueError:
            raise ManagementError(200, f"{method} {path}: answer is not JSON") from None

    def get(self, path: str) -> Any:
        return self.request("GET", path)

    def put(self, path: str, body: Any) -> Any:
        return self.request("PUT", path, body)

    def post(self, path: str, body: Any) -> Any:
        return self.request("POST", path, body)

    def delete(self, path: str, headers: dict[str, str] | None = None) -> Any:
        return self.request("DELETE", path, headers=headers)


def _error_text(exc: urllib.error.HTTPError) -> str:
    """Turn RabbitMQ's ``{"error": "not_found", "reason": "Object Not Found"}`` into a line."""
    try:
        raw = exc.read()
    except OSError:
        raw = b""
    reason = ""
    error = ""
    try:
        payload = json.loads(raw)
        if isinstance(payload, dict):
            error = str(payload.get("error") or "")
            reason = payload.get("reason") or ""
            if not isinstance(reason, str):
                reason = json.dumps(reason)
    except ValueError:
        reason = raw.decode("utf-8", "replace").strip()[:200]
    if exc.code == 401:
        return "authentication failed (check --user/--password or BAEDAL_USER/BAEDAL_PASSWORD)"
    parts = [part for part in (error, reason) if part]
    text = ": ".join(parts) if parts else (exc.reason or "error")
    return f"HTTP {exc.code}: {text}"


def _segment(name: str) -> str:
    """Percent-encode one path segment: vhost ``/`` becomes ``%2F``."""
    return quote(name, safe="")


def _exchange_segment(name: str) -> str:
    return _segment(name or DEFAULT_EXCHANGE_IN_PATH)


# --- command line ----------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baedal ctl",
        description="Operate a running Baedal (or RabbitMQ) over the HTTP management API.",
    )
    parser.add_argument(
        "--url",
        default=os.environ.get("BAEDAL_HTTP_URL", DEFAULT_URL),
        help=f"management API base URL (default {DEFAULT_URL}; env BAEDAL_HTTP_URL)",
    )
    parser.add_argument(
        "--user", default=os.environ.get("BAEDAL_USER", "guest"), help="user (env BAEDAL_USER)"
    )
    parser.add_argument(
        "--password",
        default=os.environ.get("BAEDAL_PASSWORD", "guest"),
        help="password (env BAEDAL_PASSWORD)",
    )
    parser.add_argument("--vhost", default="/", help="virtual host (default /)")
    parser.add_argument(
        "--json", action="store_true", help="print the API's JSON instead of tables"
    )
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds per HTTP request")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    listing = sub.add_parser("list", help="list objects as a table")
    listing.add_argument("kind", choices=LIST_KINDS)
    listing.set_defaults(func=cmd_list)

    kafka = sub.add_parser("kafka", help="Kafka topic partitions or consumer groups (Baedal only)")
    kafka.add_argument("kind", choices=("topics", "groups"))
    kafka.set_defaults(func=cmd_kafka)

    declare = sub.add_parser("declare", help="declare a queue or an exchange")
    declare_sub = declare.add_subparsers(dest="kind", metavar="KIND")
    declare_sub.required = True
    queue = declare_sub.add_parser("queue", help="declare a queue")
    queue.add_argument("name")
    _add_declare_flags(queue)
    queue.set_defaults(func=cmd_declare_queue)
    exchange = declare_sub.add_parser("exchange", help="declare an exchange")
    exchange.add_argument("name")
    exchange.add_argument(
        "--type", required=True, help="direct, fanout, topic, headers (or a plugin type)"
    )
    exchange.add_argument("--internal", action="store_true", help="only other exchanges publish")
    _add_declare_flags(exchange)
    exchange.set_defaults(func=cmd_declare_exchange)

    delete = sub.add_parser("delete", help="delete a queue, an exchange, a user or a vhost")
    delete.add_argument("kind", choices=("queue", "exchange", "user", "vhost"))
    delete.add_argument("name")
    delete.add_argument("--if-unused", action="store_true", help="only without consumers/bindings")
    delete.add_argument("--if-empty", action="store_true", help="queue: only when it is empty")
    delete.set_defaults(func=cmd_delete)

    purge = sub.add_parser("purge", help="drop every ready message of a queue")
    purge.add_argument("kind", choices=("queue",))
    purge.add_argument("name")
    purge.set_defaults(func=cmd_purge)

    add = sub.add_parser("add", help="add a user or a vhost")
    add_sub = add.add_subparsers(dest="kind", metavar="KIND")
    add_sub.required = True
    user = add_sub.add_parser("user", help="add (or update) a user")
    user.add_argument("name")
    user.add_argument("--password", dest="new_password", required=True)
    user.add_argument(
        "--tags", default="", help="comma separated: administrator, monitoring, management"
    )
    user.set_defaults(func=cmd_add_user)
    vhost = add_sub.add_parser("vhost", help="add a virtual host")
    vhost.add_argument("name")
    vhost.set_defaults(func=cmd_add_vhost)

    setter = sub.add_parser("set", help="set permissions")
    set_sub = setter.add_subparsers(dest="kind", metavar="KIND")
    set_sub.required = True
    permissions = set_sub.add_parser("permissions", help="set a user's permissions on --vhost")
    # dest must not be "user": that is the global --user used to log in.
    permissions.add_argument("target_user", metavar="USER")
    permissions.add_argument("--configure", default=".*", help="regex (default .*)")
    permissions.add_argument("--write", default=".*", help="regex (default .*)")
    permissions.add_argument("--read", default=".*", help="regex (default .*)")
    permissions.set_defaults(func=cmd_set_permissions)

    export = sub.add_parser("export", help="save the broker's definitions to FILE ('-': stdout)")
    export.add_argument("file")
    export.set_defaults(func=cmd_export)
    importer = sub.add_parser("import", help="load definitions from FILE ('-': stdin)")
    importer.add_argument("file")
    importer.set_defaults(func=cmd_import)

    publish = sub.add_parser("publish", help="publish one message through the API")
    publish.add_argument("--exchange", default="", help="exchange ('' or omitted: the default)")
    publish.add_argument("--routing-key", default="", help="routing key")
    publish.add_argument("--body", required=True, help="payload text")
    publish.add_argument("--base64", action="store_true", help="--body is base64")
    publish.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="K=V",
        help="message property, e.g. content_type=text/plain, delivery_mode=2",
    )
    publish.add_argument(
        "--header", action="append", default=[], metavar="K=V", help="application header"
    )
    publish.set_defaults(func=cmd_publish)

    getter = sub.add_parser("get", help="fetch messages from a queue (requeued by default)")
    getter.add_argument("queue")
    getter.add_argument("--count", type=int, default=1)
    getter.add_argument("--ackmode", choices=ACK_MODES, default="ack_requeue_true")
    getter.add_argument("--encoding", choices=("auto", "base64"), default="auto")
    getter.add_argument("--truncate", type=int, default=None, help="cut payloads at N bytes")
    getter.set_defaults(func=cmd_get)

    _add_policy_commands(sub)

    close = sub.add_parser("close", help="close a client connection")
    close.add_argument("kind", choices=("connection",))
    close.add_argument("name", help="connection name as shown by 'list connections'")
    close.add_argument("--reason", default="closed by baedal ctl")
    close.set_defaults(func=cmd_close_connection)
    _add_scheduled_commands(sub)
    _add_protocol_commands(sub)
    return parser


def _add_protocol_commands(sub: Any) -> None:
    """rabbitmqctl-style names for what operators of MQTT (and every protocol) ask."""
    connections = sub.add_parser("list_connections", help="list connections of every protocol")
    connections.set_defaults(func=cmd_list, kind="connections")
    sessions = sub.add_parser("list_mqtt_sessions", help="list MQTT sessions, connected or not")
    sessions.set_defaults(func=cmd_list_mqtt_sessions)
    retained = sub.add_parser("list_retained", help="list MQTT retained messages, by topic")
    retained.add_argument("--page", type=int, default=1, help="page number, from 1")
    retained.add_argument("--page-size", type=int, default=100, help="messages per page (max 500)")
    retained.set_defaults(func=cmd_list_retained)


def _add_scheduled_commands(sub: Any) -> None:
    """Scheduled messages (``/api/scheduled``): list them in due order, cancel one."""
    lister = sub.add_parser("list_scheduled", help="list scheduled messages on --vhost, in due order")
    _vhost_option(lister)
    lister.add_argument("--page", type=int, default=1, help="page number, from 1")
    lister.add_argument("--page-size", type=int, default=100, help="messages per page (max 500)")
    lister.set_defaults(func=cmd_list_scheduled)
    cancel = sub.add_parser("cancel_scheduled", help="cancel a scheduled message by id")
    _vhost_option(cancel)
    cancel.add_argument("name", metavar="ID", help="the id shown by list_scheduled")
    cancel.set_defaults(func=cmd_cancel_scheduled)


def _vhost_option(parser: argparse.ArgumentParser) -> None:
    # rabbitmqctl's -p; SUPPRESS keeps the global --vhost when -p is not given.
    parser.add_argument(
        "-p", "--vhost", default=argparse.SUPPRESS, help="virtual host (as rabbitmqctl -p)"
    )


def _add_policy_commands(sub: Any) -> None:
    """rabbitmqctl's spelling: set_policy, clear_policy, list_policies, the operator
    variants, and set/clear/list_topic_permissions."""
    for operator in (False, True):
        word = "operator_policy" if operator else "policy"
        setter = sub.add_parser(
            f"set_{word}", help=f"set a {word.replace('_', ' ')} (rabbitmqctl set_{word})"
        )
        setter.add_argument("name")
        setter.add_argument("pattern", help="regular expression searched in names")
        setter.add_argument("definition", help='JSON object, e.g. \'{"max-length": 100}\'')
        setter.add_argument("--priority", type=int, default=0)
        setter.add_argument("--apply-to", choices=("queues", "exchanges", "all"), default="all")
        _vhost_option(setter)
        setter.set_defaults(func=cmd_set_policy, operator=operator)
        clear = sub.add_parser(f"clear_{word}", help=f"clear a {word.replace('_', ' ')}")
        clear.add_argument("name")
        _vhost_option(clear)
        clear.set_defaults(func=cmd_clear_policy, operator=operator)
        lister = sub.add_parser(
            "list_operator_policies" if operator else "list_policies",
            help=f"list {'operator ' if operator else ''}policies of --vhost",
        )
        _vhost_option(lister)
        lister.set_defaults(func=cmd_list, kind="operator-policies" if operator else "policies")
    topic = sub.add_parser(
        "set_topic_permissions", help="set a user's topic permission on one exchange"
    )
    topic.add_argument("target_user", metavar="USER")
    topic.add_argument("exchange")
    topic.add_argument("write", help="regex for routing keys on publish")
    topic.add_argument("read", help="regex for binding keys on queue.bind")
    _vhost_option(topic)
    topic.set_defaults(func=cmd_set_topic_permissions)
    clear_topic = sub.add_parser(
        "clear_topic_permissions", help="clear a user's topic permissions (one exchange or all)"
    )
    clear_topic.add_argument("target_user", metavar="USER")
    clear_topic.add_argument("exchange", nargs="?", default=None)
    _vhost_option(clear_topic)
    clear_topic.set_defaults(func=cmd_clear_topic_permissions)
    list_topic = sub.add_parser("list_topic_permissions", help="list topic permissions")
    _vhost_option(list_topic)
    list_topic.set_defaults(func=cmd_list, kind="topic-permissions")


def _add_declare_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--durable", action="store_true", help="survive a broker restart")
    parser.add_argument("--auto-delete", action="store_true", help="delete when last user leaves")
    parser.add_argument(
        "--arg",
        action="append",
        default=[],
        metavar="K=V",
        help="x-argument; V is read as JSON when it parses (x-max-length=10), else as text",
    )


def _key_values(pairs: list[str], what: str) -> dict[str, Any]:
    """``["x-max-length=10", "x-queue-type=quorum"]`` -> ``{"x-max-length": 10, ...}``."""
    result: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"{what} must look like KEY=VALUE, got {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        result[key] = value
    return result


# --- commands ----------------------------------------------------------------------------


class Context:
    def __init__(self, args: argparse.Namespace, client: ManagementClient, out: Output) -> None:
        self.args = args
        self.client = client
        self.out = out
        self.vhost = _segment(args.vhost)


def cmd_list(ctx: Context) -> int:
    kind = ctx.args.kind
    scoped = kind in (
        "queues",
        "exchanges",
        "bindings",
        "consumers",
        "policies",
        "operator-policies",
    )
    path = f"/api/{kind}/{ctx.vhost}" if scoped else f"/api/{kind}"
    if kind == "topic-permissions":
        path = f"/api/vhosts/{ctx.vhost}/topic-permissions"
    rows = ctx.client.get(path) or []
    if isinstance(rows, dict) and "items" in rows:  # a paginated answer
        rows = rows["items"]
    if ctx.args.json:
        ctx.out.json(rows)
        return 0
    columns = LIST_COLUMNS[kind]
    title = f"{kind} on vhost {ctx.args.vhost}" if scoped else kind
    ctx.out.table(
        title, [header for header, _ in columns], [[cell(r) for _, cell in columns] for r in rows]
    )
    return 0


def cmd_kafka(ctx: Context) -> int:
    """One row per topic partition (offsets, size, traffic) or per group partition
    (member, committed offset, lag), from ``/api/kafka/...``."""
    kind = ctx.args.kind
    data = ctx.client.get(f"/api/kafka/{kind}") or []
    if ctx.args.json:
        ctx.out.json(data)
        return 0
    rows: list[list[str]] = []
    if kind == "topics":
        headers = ["topic", "partition", "stream", "first", "high watermark", "bytes on disk",
                   "records in", "bytes in", "bytes out"]
        for topic in data:
            for p in topic["partitions"]:
                rows.append([str(v) for v in (
                    topic["name"], p["partition"], p["stream"], p["first_offset"], p["high_watermark"],
                    p["bytes_on_disk"], p["records_in"], p["bytes_in"], p["bytes_out"],
                )])
    else:
        headers = ["group", "state", "members", "topic", "partition", "member", "committed", "lag"]
        for group in data:
            owner = {
                (a["topic"], n): m["client_id"] or m["member_id"]
                for m in group["members"] for a in m["assignment"] for n in a["partitions"]
            }
            if not group["offsets"]:
                rows.append([group["group_id"], group["state"], str(len(group["members"])), "", "", "", "", ""])
            for o in group["offsets"]:
                rows.append([str(v) for v in (
                    group["group_id"], group["state"], len(group["members"]), o["topic"], o["partition"],
                    owner.get((o["topic"], o["partition"]), ""), o["committed_offset"],
                    "" if o["lag"] is None else o["lag"],
                )])
    ctx.out.table(f"kafka {kind}", headers, rows)
    return 0


def cmd_declare_queue(ctx: Context) -> int:
    args = ctx.args
    body = {
        "durable": args.durable,
        "auto_delete": args.auto_delete,
        "arguments": _key_values(args.arg, "--arg"),
    }
    ctx.client.put(f"/api/queues/{ctx.vhost}/{_segment(args.name)}", body)
    return ctx.out.done(f"declared queue {args.name!r} on vhost {args.vhost}")


def cmd_declare_exchange(ctx: Context) -> int:
    args = ctx.args
    body = {
        "type": args.type,
        "durable": args.durable,
        "auto_delete": args.auto_delete,
        "internal": args.internal,
        "arguments": _key_values(args.arg, "--arg"),
    }
    ctx.client.put(f"/api/exchanges/{ctx.vhost}/{_exchange_segment(args.name)}", body)
    return ctx.out.done(f"declared {args.type} exchange {args.name!r} on vhost {args.vhost}")


def cmd_delete(ctx: Context) -> int:
    args = ctx.args
    name = _segment(args.name)
    conditions = [c for c, on in (("if-unused", args.if_unused), ("if-empty", args.if_empty)) if on]
    query = ("?" + "&".join(f"{c}=true" for c in conditions)) if conditions else ""
    if args.kind == "queue":
        path = f"/api/queues/{ctx.vhost}/{name}{query}"
    elif args.kind == "exchange":
        path = f"/api/exchanges/{ctx.vhost}/{_exchange_segment(args.name)}{query}"
    elif args.kind == "user":
        path = f"/api/users/{name}"
    else:
        path = f"/api/vhosts/{name}"
    ctx.client.delete(path)
    return ctx.out.done(f"deleted {args.kind} {args.name!r}")


def cmd_purge(ctx: Context) -> int:
    name = ctx.args.name
    ctx.client.delete(f"/api/queues/{ctx.vhost}/{_segment(name)}/contents")
    return ctx.out.done(f"purged queue {name!r}")


def cmd_add_user(ctx: Context) -> int:
    args = ctx.args
    tags = ",".join(tag.strip() for tag in args.tags.split(",") if tag.strip())
    ctx.client.put(
        f"/api/users/{_segment(args.name)}", {"password": args.new_password, "tags": tags}
    )
    return ctx.out.done(f"added user {args.name!r}" + (f" with tags {tags}" if tags else ""))


def cmd_add_vhost(ctx: Context) -> int:
    ctx.client.put(f"/api/vhosts/{_segment(ctx.args.name)}", {})
    return ctx.out.done(f"added vhost {ctx.args.name!r}")


def cmd_set_permissions(ctx: Context) -> int:
    args = ctx.args
    body = {"configure": args.configure, "write": args.write, "read": args.read}
    ctx.client.put(f"/api/permissions/{ctx.vhost}/{_segment(args.target_user)}", body)
    return ctx.out.done(
        f"set permissions of {args.target_user!r} on vhost {args.vhost}: "
        f"configure={args.configure} write={args.write} read={args.read}"
    )


def cmd_set_policy(ctx: Context) -> int:
    args = ctx.args
    try:
        definition = json.loads(args.definition)
    except ValueError as exc:
        raise UsageError(f"the definition is not JSON: {exc}") from None
    if not isinstance(definition, dict):
        raise UsageError("the definition must be a JSON object")
    kind = "operator-policies" if args.operator else "policies"
    body = {
        "pattern": args.pattern,
        "definition": definition,
        "priority": args.priority,
        "apply-to": args.apply_to,
    }
    ctx.client.put(f"/api/{kind}/{ctx.vhost}/{_segment(args.name)}", body)
    what = "operator policy" if args.operator else "policy"
    return ctx.out.done(
        f"set {what} {args.name!r} for pattern {args.pattern!r} to {args.definition} "
        f"with priority {args.priority} applying to {args.apply_to} on vhost {args.vhost}"
    )


def cmd_clear_policy(ctx: Context) -> int:
    args = ctx.args
    kind = "operator-policies" if args.operator else "policies"
    ctx.client.delete(f"/api/{kind}/{ctx.vhost}/{_segment(args.name)}")
    what = "operator policy" if args.operator else "policy"
    return ctx.out.done(f"cleared {what} {args.name!r} on vhost {args.vhost}")


def cmd_set_topic_permissions(ctx: Context) -> int:
    args = ctx.args
    body = {"exchange": args.exchange, "write": args.write, "read": args.read}
    ctx.client.put(f"/api/topic-permissions/{ctx.vhost}/{_segment(args.target_user)}", body)
    return ctx.out.done(
        f"set topic permissions of {args.target_user!r} on exchange {args.exchange!r} "
        f"in vhost {args.vhost}: write={args.write} read={args.read}"
    )


def cmd_clear_topic_permissions(ctx: Context) -> int:
    args = ctx.args
    query = f"?exchange={quote(args.exchange, safe='')}" if args.exchange else ""
    ctx.client.delete(
        f"/api/topic-permissions/{ctx.vhost}/{_segment(args.target_user)}{query}"
    )
    scope = f"on exchange {args.exchange!r}" if args.exchange else "on every exchange"
    return ctx.out.done(
        f"cleared topic permissions of {args.target_user!r} {scope} in vhost {args.vhost}"
    )


def cmd_export(ctx: Context) -> int:
    definitions = ctx.client.get("/api/definitions")
    text = json.dumps(definitions, indent=2, sort_keys=True) + "\n"
    if ctx.args.file == "-":
        sys.stdout.write(text)
        return 0
    with open(ctx.args.file, "w", encoding="utf-8") as handle:
        handle.write(text)
    counts = ", ".join(
        f"{len(definitions.get(key) or [])} {key}"
        for key in ("queues", "exchanges", "bindings", "users", "vhosts", "policies")
    )
    return ctx.out.done(f"exported definitions to {ctx.args.file} ({counts})")


def cmd_import(ctx: Context) -> int:
    try:
        if ctx.args.file == "-":
            definitions = json.load(sys.stdin)
        else:
            with open(ctx.args.file, encoding="utf-8") as handle:
                definitions = json.load(handle)
    except OSError as exc:
        raise UsageError(f"cannot read {ctx.args.file}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise UsageError(f"{ctx.args.file} is not JSON: {exc}") from None
    if not isinstance(definitions, dict):
        raise UsageError(f"{ctx.args.file}: definitions must be a JSON object")
    ctx.client.post("/api/definitions", definitions)
    return ctx.out.done(f"imported definitions from {ctx.args.file}")


def cmd_publish(ctx: Context) -> int:
    args = ctx.args
    properties = _key_values(args.property, "--property")
    headers = _key_values(args.header, "--header")
    if headers:
        properties["headers"] = {**properties.get("headers", {}), **headers}
    body = {
        "properties": properties,
        "routing_key": args.routing_key,
        "payload": args.body,
        "payload_encoding": "base64" if args.base64 else "string",
    }
    answer = ctx.client.post(
        f"/api/exchanges/{ctx.vhost}/{_exchange_segment(args.exchange)}/publish", body
    )
    routed = bool((answer or {}).get("routed"))
    if args.json:
        ctx.out.json(answer)
        return 0
    exchange = args.exchange or "(AMQP default)"
    if routed:
        ctx.out.line(f"published to {exchange} with routing key {args.routing_key!r}: routed")
    else:
        ctx.out.warn(
            f"published to {exchange} with routing key {args.routing_key!r}, "
            "but no queue is bound to take it: NOT routed"
        )
    return 0


def cmd_get(ctx: Context) -> int:
    args = ctx.args
    if args.count < 1:
        raise UsageError("--count must be at least 1")
    body: dict[str, Any] = {"count": args.count, "ackmode": args.ackmode, "encoding": args.encoding}
    if args.truncate is not None:
        body["truncate"] = args.truncate
    messages = ctx.client.post(f"/api/queues/{ctx.vhost}/{_segment(args.queue)}/get", body) or []
    if args.json:
        ctx.out.json(messages)
        return 0
    if not messages:
        ctx.out.line(f"queue {args.queue!r} is empty")
        return 0
    rows = [
        [
            str(m.get("routing_key", "")),
            str(m.get("exchange", "")) or "(AMQP default)",
            str(m.get("message_count", "")),
            str(m.get("payload_bytes", "")),
            str(m.get("payload_encoding", "")),
            str(m.get("payload", "")),
            _yes(m.get("redelivered")),
        ]
        for m in messages
    ]
    headers = ["routing_key", "exchange", "left", "bytes", "encoding", "payload", "redelivered"]
    ctx.out.table(f"messages from {args.queue}", headers, rows)
    return 0


def cmd_close_connection(ctx: Context) -> int:
    name = ctx.args.name
    ctx.client.delete(f"/api/connections/{_segment(name)}", headers={"X-Reason": ctx.args.reason})
    return ctx.out.done(f"closed connection {name!r}")


def cmd_list_scheduled(ctx: Context) -> int:
    args = ctx.args
    page = ctx.client.get(f"/api/scheduled/{ctx.vhost}?page={args.page}&page_size={args.page_size}")
    if args.json:
        ctx.out.json(page)
        return 0
    rows = [
        [
            job["id"],
            job.get("due_at", ""),
            job["exchange"] or "(AMQP default)",
            job["routing_key"],
            str(job["size"]),
            _repeat_state(job),
        ]
        for job in page["items"]
    ]
    title = f"scheduled on vhost {args.vhost} (page {page['page']} of {page['page_count']}, {page['total_count']} in all)"
    ctx.out.table(title, ["id", "due", "exchange", "routing key", "size", "repeat"], rows)
    return 0


def cmd_list_mqtt_sessions(ctx: Context) -> int:
    sessions = ctx.client.get("/api/mqtt/sessions") or []
    if ctx.args.json:
        ctx.out.json(sessions)
        return 0
    rows = [
        [
            s["client_id"],
            "yes" if s["connected"] else "",
            "persistent" if s["persistent"] else "clean",
            "never" if s["persistent"] and s.get("expiry") is None else str(s.get("expiry") or 0),
            ", ".join(f"{sub['filter']} (QoS {sub['qos']}) -> {sub['queue']}" for sub in s["subscriptions"]),
            str(s.get("inflight", 0)),
        ]
        for s in sessions
    ]
    ctx.out.table("mqtt sessions", ["client id", "connected", "session", "expiry (s)", "subscriptions", "in flight"], rows)
    return 0


def cmd_list_retained(ctx: Context) -> int:
    args = ctx.args
    page = ctx.client.get(f"/api/mqtt/retained?page={args.page}&page_size={args.page_size}")
    if args.json:
        ctx.out.json(page)
        return 0
    rows = [[m["topic"], str(m["size"]), str(m["qos"])] for m in page["items"]]
    title = f"retained messages (page {page['page']} of {page['page_count']}, {page['total_count']} in all)"
    ctx.out.table(title, ["topic", "size", "qos"], rows)
    return 0


def _repeat_state(job: dict[str, Any]) -> str:
    parts = []
    if job.get("cron"):
        parts.append(f"cron {job['cron']}")
    repeat = job.get("repeat", 0)
    if repeat < 0:
        parts.append(f"every {job.get('period', 0)} ms until cancelled")
    elif repeat:
        parts.append(f"{job.get('repeat_left', 0)} of {repeat} repeats left, every {job.get('period', 0)} ms")
    if job.get("fired"):
        parts.append(f"fired {job['fired']}")
    return ", ".join(parts) or "once"


def cmd_cancel_scheduled(ctx: Context) -> int:
    job_id = ctx.args.name
    ctx.client.delete(f"/api/scheduled/{ctx.vhost}/{_segment(job_id)}")
    return ctx.out.done(f"cancelled scheduled message {job_id!r}")


# --- table columns -----------------------------------------------------------------------


def _yes(value: Any) -> str:
    return "yes" if value else ""


def _rate(row: dict[str, Any], stat: str) -> str:
    details = (row.get("message_stats") or {}).get(f"{stat}_details") or {}
    rate = details.get("rate")
    return "" if rate is None else f"{rate:.1f}/s"


def _field(*path: str, default: Any = "") -> Any:
    def get(row: dict[str, Any]) -> str:
        value: Any = row
        for key in path:
            if not isinstance(value, dict):
                return str(default)
            value = value.get(key)
        if value is None:
            return str(default)
        if isinstance(value, bool):
            return _yes(value)
        if isinstance(value, dict | list):
            return json.dumps(value) if value else ""
        return str(value)

    return get


def _queue_type(row: dict[str, Any]) -> str:
    return str(row.get("type") or (row.get("arguments") or {}).get("x-queue-type") or "classic")


def _tags(row: dict[str, Any]) -> str:
    tags = row.get("tags", "")
    return ",".join(tags) if isinstance(tags, list) else str(tags)


def _exchange_name(row: dict[str, Any]) -> str:
    return row.get("name") or "(AMQP default)"


LIST_COLUMNS: dict[str, list[tuple[str, Any]]] = {
    "queues": [
        ("name", _field("name")),
        ("type", _queue_type),
        ("durable", _field("durable")),
        ("messages", _field("messages", default=0)),
        ("ready", _field("messages_ready", default=0)),
        ("unacked", _field("messages_unacknowledged", default=0)),
        ("consumers", _field("consumers", default=0)),
        ("publish", lambda r: _rate(r, "publish")),
        ("deliver", lambda r: _rate(r, "deliver_get")),
    ],
    "exchanges": [
        ("name", _exchange_name),
        ("type", _field("type")),
        ("durable", _field("durable")),
        ("auto_delete", _field("auto_delete")),
        ("internal", _field("internal")),
        ("arguments", _field("arguments")),
    ],
    "bindings": [
        ("source", lambda r: r.get("source") or "(AMQP default)"),
        ("destination", _field("destination")),
        ("type", _field("destination_type")),
        ("routing_key", _field("routing_key")),
        ("arguments", _field("arguments")),
    ],
    "connections": [
        ("name", _field("name")),
        ("protocol", _field("protocol", default="AMQP 0-9-1")),  # RabbitMQ lists it too
        ("user", _field("user")),
        ("vhost", _field("vhost")),
        ("client", lambda r: str(r.get("client_id") or (r.get("client_properties") or {}).get("product", ""))),
        ("channels", _field("channels", default=0)),
        ("state", _field("state")),
    ],
    "channels": [
        ("name", _field("name")),
        ("user", _field("user")),
        ("vhost", _field("vhost")),
        ("consumers", _field("consumer_count", default=0)),
        ("unacked", _field("messages_unacknowledged", default=0)),
        ("prefetch", _field("prefetch_count", default=0)),
        ("state", _field("state")),
    ],
    "consumers": [
        ("queue", _field("queue", "name")),
        ("consumer_tag", _field("consumer_tag")),
        ("channel", _field("channel_details", "name")),
        ("ack_required", _field("ack_required")),
        ("prefetch", _field("prefetch_count", default=0)),
        ("exclusive", _field("exclusive")),
    ],
    "users": [("name", _field("name")), ("tags", _tags)],
    "vhosts": [
        ("name", _field("name")),
        ("messages", _field("messages", default=0)),
        ("description", _field("description")),
    ],
    "permissions": [
        ("user", _field("user")),
        ("vhost", _field("vhost")),
        ("configure", _field("configure")),
        ("write", _field("write")),
        ("read", _field("read")),
    ],
    "policies": [
        ("vhost", _field("vhost")),
        ("name", _field("name")),
        ("pattern", _field("pattern")),
        ("apply-to", _field("apply-to")),
        ("definition", lambda r: json.dumps(r.get("definition", {}), sort_keys=True)),
        ("priority", _field("priority")),
    ],
    "operator-policies": [
        ("vhost", _field("vhost")),
        ("name", _field("name")),
        ("pattern", _field("pattern")),
        ("apply-to", _field("apply-to")),
        ("definition", lambda r: json.dumps(r.get("definition", {}), sort_keys=True)),
        ("priority", _field("priority")),
    ],
    "topic-permissions": [
        ("user", _field("user")),
        ("vhost", _field("vhost")),
        ("exchange", _field("exchange")),
        ("write", _field("write")),
        ("read", _field("read")),
    ],
}


# --- output ------------------------------------------------------------------------------


class Output:
    """Tables and messages on stdout via rich; warnings and errors on stderr."""

    def __init__(self, as_json: bool) -> None:
        from rich.console import Console

        self.as_json = as_json
        # Pipes get a wide fixed width so names are never cut with an ellipsis in scripts
        # (rich's 80-column default for non-terminals would fold long queue names).
        self.console = Console(highlight=False, soft_wrap=False)
        if not self.console.is_terminal:
            self.console = Console(highlight=False, width=200, color_system=None)
        self.errors = Console(stderr=True, highlight=False)

    def json(self, value: Any) -> None:
        sys.stdout.write(json.dumps(value, indent=2, sort_keys=True) + "\n")

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def done(self, text: str) -> int:
        if self.as_json:
            self.json({"ok": True, "message": text})
        else:
            self.line(text)
        return 0

    def warn(self, text: str) -> None:
        self.errors.print(f"warning: {text}", markup=False)

    def table(self, title: str, headers: list[str], rows: list[list[str]]) -> None:
        from rich.table import Table

        table = Table(title=title, title_justify="left")
        for header in headers:
            table.add_column(header, overflow="fold")
        for row in rows:
            table.add_row(*row)
        self.console.print(table)
        if not rows:
            self.line(f"(no {title.split()[0]})")


def _describe(args: argparse.Namespace) -> str:
    """``delete queue 'orders'`` — what was being attempted, for an error line."""
    words = [args.command]
    kind = getattr(args, "kind", None)
    if kind:
        words.append(kind)
    for attribute in ("name", "queue", "target_user", "file"):
        value = getattr(args, attribute, None)
        if value is not None:
            words.append(repr(value))
            break
    if args.command == "publish":
        words.append(f"to exchange {args.exchange or '(AMQP default)'!r}")
    return " ".join(words)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    except SystemExit as exc:  # argparse: --help (0) or a bad command line (2)
        return exc.code if isinstance(exc.code, int) else 2
    client = ManagementClient(args.url, args.user, args.password, timeout=args.timeout)
    out = Output(args.json)
    try:
        return int(args.func(Context(args, client, out)))
    except UsageError as exc:
        sys.stderr.write(f"baedal ctl: {exc}\n")
        return 2
    except BrokerUnreachable as exc:
        sys.stderr.write(f"baedal ctl: {exc}\n")
        return 2
    except ManagementError as exc:
        sys.stderr.write(f"baedal ctl: {_describe(args)}: {exc}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("baedal ctl: interrupted\n")
        return 130
