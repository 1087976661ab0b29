"""The broker core: virtual hosts, users and permissions, stores, alarms.

The core never awaits a socket; protocol adapters call into it and it calls back into
them through the ``Consumer`` protocol.  Timers go through ``call_later`` / ``call_soon``
on the broker's event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .scram import ScramCredential, derive_all
from .store import MemoryStore
from .vhost import CoreError, VirtualHost

log = logging.getLogger("baedal.core")


def hash_password(password: str, salt: bytes | None = None) -> str:
    """RabbitMQ's rabbit_password_hashing_sha256 format, so definitions move both ways."""
    salt = salt if salt is not None else os.urandom(4)
    digest = hashlib.sha256(salt + password.encode("utf-8")).digest()
    return base64.b64encode(salt + digest).decode("ascii")


def check_password(password: str, password_hash: str) -> bool:
    try:
        raw = base64.b64decode(password_hash)
    except ValueError:
        return False
    if len(raw) != 36:
        return False
    return hashlib.sha256(raw[:4] + password.encode("utf-8")).digest() == raw[4:]


@dataclass
class User:
    name: str
    password_hash: str
    tags: list[str] = field(default_factory=list)
    # SCRAM credentials by mechanism (core/scram.py); empty when the password was only
    # ever given as a hash.
    scram: dict[str, ScramCredential] = field(default_factory=dict)


@dataclass
class Permission:
    configure: str = ".*"
    write: str = ".*"
    read: str = ".*"

    def __post_init__(self) -> None:
        self._compiled = {k: re.compile(getattr(self, k)) for k in ("configure", "write", "read")}

    def allows(self, kind: str, resource: str) -> bool:
        pattern = getattr(self, kind)
        if pattern == ".*":
            return True
        if pattern == "":
            return False
        # RabbitMQ runs an unanchored regex search (re:run), so anchors are the user's job.
        return self._compiled[kind].search(resource) is not None


class TopicPermission:
    """A user's topic permission on one exchange in one vhost (RabbitMQ's
    topic_permission): regexes searched in routing keys, after ``{username}`` and
    ``{vhost}`` are replaced by the user's name and the vhost's."""

    __slots__ = ("exchange", "write", "read", "_compiled")

    def __init__(self, user: str, vhost: str, exchange: str, write: str = ".*", read: str = ".*") -> None:
        self.exchange = exchange
        self.write = write
        self.read = read
        self._compiled: dict[str, re.Pattern[str]] = {}
        for kind, pattern in (("write", write), ("read", read)):
            # RabbitMQ: an empty pattern becomes ^$ (only the empty key); variables are
            # expanded before the regex is compiled (once, here: the per-user cache).
            expanded = pattern.replace("{username}", user).replace("{vhost}", vhost)
            self._compiled[kind] = re.compile(expanded or "^$")

    def allows(self, kind: str, routing_key: str) -> bool:
        return self._compiled[kind].search(routing_key) is not None


@dataclass
class BrokerConfig:
    data_dir: Path = Path("./baedal-data")
    max_message_size: int = 128 * 1024 * 1024
    frame_max: int = 131072
    channel_max: int = 2047
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    max_connection_output: int = 8 * 1024 * 1024  # per-connection output bound (bytes)
    default_user: str = "guest"
    default_pass: str = "guest"
    loopback_users: tuple[str, ...] = ("guest",)
    memory_high_watermark: float = 0.4  # fraction of total memory (or absolute bytes if > 1)
    disk_free_limit: int = 50 * 1024 * 1024
    durable_store: bool = True  # durable queues on the segment log (False: memory only)
    segment_bytes: int = 8 * 1024 * 1024
    # Delivery acknowledgement timeout in ms (RabbitMQ's consumer_timeout, same default
    # of 30 minutes); None disables it.  Queues and consumers may override it with the
    # ``x-consumer-timeout`` argument.
    consumer_timeout: int | None = 1_800_000


# How often unacked deliveries are checked against their acknowledgement timeout: at
# most once a second (RabbitMQ checks once per channel tick, every 60 s by default),
# more often when a timeout in use is shorter than two ticks.
ACK_CHECK_INTERVAL = 1.0
ACK_CHECK_MIN_INTERVAL = 0.05


class BrokerCore:
    """The protocol-neutral broker core; one per process (or per embedded instance)."""

    # What clients sniff for feature decisions (kombu's basic.qos semantics, see
    # reference §9.2): the RabbitMQ release Baedal's behaviour is checked against, and
    # no other -- its 3.x answers are the ones the tests compare with.
    product = "RabbitMQ"
    version = "3.10.8"

    def __init__(self, config: BrokerConfig | None = None, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.config = config or BrokerConfig()
        self.loop = loop
        self.vhosts: dict[str, VirtualHost] = {}
        self.users: dict[str, User] = {}
        self.permissions: dict[tuple[str, str], Permission] = {}
        # (user, vhost) -> exchange -> TopicPermission.  Empty for almost every broker,
        # so the publish path tests it before anything else.
        self.topic_permissions: dict[tuple[str, str], dict[str, TopicPermission]] = {}
        # Runtime parameters other than operator policies (which live on the vhost), kept
        # so definitions round-trip: (vhost, component, name) -> value; and global ones.
        self.parameters: dict[tuple[str, str, str], Any] = {}
        self.global_parameters: dict[str, Any] = {}
        self.connections: dict[int, Any] = {}
        self.alarms: set[str] = set()
        self.alarm_listeners: list[Callable[[set[str]], None]] = []
        self.storage: Any = None  # baedal.storage wiring (durable stores, definitions, syncer)
        from ..cluster.replicator import LocalReplicator

        self.replicator: Any = LocalReplicator()  # the clustering seam (cluster/replicator.py)
        self.started_at = time.time()
        # Broker-wide event counters.  Per-message totals (published, delivered, acked,
        # redelivered) live on each queue and exchange and are summed when read, so the
        # hot path touches no shared dict.
        self.counters: dict[str, int] = {
            "confirmed": 0,
            "returned": 0,
            "unroutable": 0,
            "connections_opened": 0,
            "connections_closed": 0,
            "channels_opened": 0,
            "channels_closed": 0,
        }
        # What deleted queues and exchanges had counted, so broker-wide totals (live
        # objects' counts plus these) never go backwards: Prometheus reads a counter that
        # falls as a reset.
        self.retired = {"publish": 0, "queue_publish": 0, "deliver_get": 0, "ack": 0, "redeliver": 0}
        # Sessions whose unacked deliveries are subject to the acknowledgement timeout
        # (AMQP channels); each has ``check_ack_timeout(now)``.  One broker-wide timer
        # walks them, so the check costs nothing per message and one callback per tick.
        self._ack_watchers: dict[int, Any] = {}
        self._ack_check_handle: Any = None
        self._ack_check_interval = ACK_CHECK_INTERVAL
        self.note_ack_timeout(self.config.consumer_timeout)
        self.add_vhost("/")
        self.add_user(self.config.default_user, self.config.default_pass, ["administrator"])
        self.set_permission(self.config.default_user, "/")

    # --- clock and scheduling ----------------------------------------------------------

    def now(self) -> float:
        """Monotonic time for in-memory timeouts (heartbeats, ack timeouts)."""
        loop = self.loop
        return loop.time() if loop is not None else time.monotonic()

    @staticmethod
    def wall_time() -> float:
        """Wall-clock time (seconds since the epoch) for anything persisted, such as
        message deadlines: unlike ``now()`` it keeps its meaning across a restart."""
        return time.time()

    # --- delivery acknowledgement timeout --------------------------------------------

    def note_ack_timeout(self, timeout_ms: int | None) -> None:
        """A timeout in use (broker, queue or consumer): tick often enough for it."""
        if timeout_ms:
            interval = max(ACK_CHECK_MIN_INTERVAL, timeout_ms / 2000.0)
            if interval < self._ack_check_interval:
                self._ack_check_interval = interval

    def watch_ack_timeouts(self, session: Any) -> None:
        self._ack_watchers[id(session)] = session
        if self._ack_check_handle is None and self.loop is not None:
            self._ack_check_handle = self.loop.call_later(
                self._ack_check_interval, self._check_ack_timeouts
            )

    def unwatch_ack_timeouts(self, session: Any) -> None:
        self._ack_watchers.pop(id(session), None)

    def _check_ack_timeouts(self) -> None:
        self._ack_check_handle = None
        watchers = self._ack_watchers
        if not watchers:
            return  # re-armed by the next watch_ack_timeouts
        now = self.now()
        for session in list(watchers.values()):
            try:
                session.check_ack_timeout(now)
            except Exception:  # one broken session must not stop the checks for all
                log.exception("acknowledgement timeout check failed for %r", session)
        if watchers and self.loop is not None and not self.loop.is_closed():
            self._ack_check_handle = self.loop.call_later(
                self._ack_check_interval, self._check_ack_timeouts
            )

    def call_soon(self, callback: Callable[[], None]) -> Any:
        assert self.loop is not None
        return self.loop.call_soon(callback)

    def call_later(self, delay: float, callback: Callable[[], None]) -> Any:
        if self.loop is None:
            self.loop = asyncio.get_event_loop()
        return self.loop.call_later(delay, callback)

    # --- vhosts, users, permissions -----------------------------------------------------

    def add_vhost(self, name: str) -> VirtualHost:
        vhost = self.vhosts.get(name)
        if vhost is None:
            vhost = self.vhosts[name] = VirtualHost(self, name)
            self.definitions_changed("vhost", vhost, None)
        return vhost

    def delete_vhost(self, name: str) -> None:
        vhost = self.vhosts.pop(name, None)
        if vhost is None:
            raise CoreError("not_found", f"no vhost '{name}'")
        for queue in list(vhost.queues.values()):
            vhost.delete_queue(queue)
        for exchange in vhost.exchanges.values():  # after the queues: auto-deletes retire their own
            self.retire_counts(exchange)
        for key in [k for k in self.permissions if k[1] == name]:
            del self.permissions[key]
        for key in [k for k in self.topic_permissions if k[1] == name]:
            del self.topic_permissions[key]
        for key in [k for k in self.parameters if k[0] == name]:
            del self.parameters[key]
        scheduler = getattr(self, "scheduler", None)
        if scheduler is not None:  # its scheduled messages go with it (core/scheduler.py)
            scheduler.vhost_deleted(name)
        for conn in list(self.connections.values()):
            if getattr(conn, "vhost", None) is vhost:
                conn.force_close(f"vhost '{name}' is deleted")
        self.definitions_changed("vhost-deleted", vhost, None)

    def add_user(
        self,
        name: str,
        password: str | None,
        tags: list[str] | None = None,
        *,
        password_hash: str | None = None,
        scram: dict[str, ScramCredential] | None = None,
    ) -> User:
        """A password sets both the hash and fresh SCRAM credentials; a bare hash comes
        with the SCRAM credentials given (none by default: they cannot be derived)."""
        if password_hash is None:
            password_hash = hash_password(password) if password is not None else ""
        if scram is None:
            scram = derive_all(password) if password is not None else {}
        user = User(name, password_hash, list(tags or []), dict(scram))
        self.users[name] = user
        self.definitions_changed("user", None, user)
        return user

    def delete_user(self, name: str) -> None:
        if self.users.pop(name, None) is None:
            raise CoreError("not_found", f"no user '{name}'")
        for key in [k for k in self.permissions if k[0] == name]:
            del self.permissions[key]
        for key in [k for k in self.topic_permissions if k[0] == name]:
            del self.topic_permissions[key]
        self.definitions_changed("user-deleted", None, name)

    def set_permission(self, user: str, vhost: str, configure: str = ".*", write: str = ".*", read: str = ".*") -> None:
        self.permissions[(user, vhost)] = Permission(configure, write, read)
        self.definitions_changed("permission", None, (user, vhost, configure, write, read))

    def clear_permission(self, user: str, vhost: str) -> None:
        self.permissions.pop((user, vhost), None)
        self.definitions_changed("permission-deleted", None, (user, vhost))

    def set_topic_permission(self, user: str, vhost: str, exchange: str, write: str = ".*", read: str = ".*") -> None:
        """Raises re.error for a pattern that does not compile (after expansion)."""
        permission = TopicPermission(user, vhost, exchange, write, read)
        self.topic_permissions.setdefault((user, vhost), {})[exchange] = permission
        self.definitions_changed("topic-permission", None, (user, vhost, exchange, write, read))

    def clear_topic_permission(self, user: str, vhost: str, exchange: str | None = None) -> bool:
        """Clear one exchange's topic permission, or all of them (exchange None)."""
        table = self.topic_permissions.get((user, vhost))
        if not table or (exchange is not None and exchange not in table):
            return False
        if exchange is None:
            table.clear()
        else:
            del table[exchange]
        if not table:
            del self.topic_permissions[(user, vhost)]
        self.definitions_changed("topic-permission-deleted", None, (user, vhost, exchange))
        return True

    def topic_permission_allows(self, user: str, vhost: str, exchange: str, routing_key: str, kind: str) -> bool:
        """RabbitMQ's topic authorisation (publish: ``write``; queue.bind: ``read``): no
        topic permission for the exchange means allowed.  Callers check this only for
        topic exchanges."""
        table = self.topic_permissions.get((user, vhost))
        if table is None:
            return True
        permission = table.get(exchange)
        return permission is None or permission.allows(kind, routing_key)

    def set_parameter(self, vhost: str, component: str, name: str, value: Any) -> None:
        self.parameters[(vhost, component, name)] = value
        self.definitions_changed("parameter", None, (vhost, component, name, value))

    def set_global_parameter(self, name: str, value: Any) -> None:
        self.global_parameters[name] = value
        self.definitions_changed("global-parameter", None, (name, value))

    def authenticate(self, username: str, password: str) -> User | None:
        user = self.users.get(username)
        if user is None or not user.password_hash or not check_password(password, user.password_hash):
            return None
        return user

    def permission(self, user: str, vhost: str) -> Permission | None:
        return self.permissions.get((user, vhost))

    def retire_counts(self, obj: Any) -> None:
        """A queue or exchange is being deleted: keep its message counts in the totals."""
        retired = self.retired
        if getattr(obj, "is_queue", False):
            retired["queue_publish"] += obj.publish_count
            retired["deliver_get"] += obj.deliver_count
            retired["ack"] += obj.ack_count
            retired["redeliver"] += obj.redeliver_count
        else:
            retired["publish"] += obj.publish_count

    # --- stores and persistence ----------------------------------------------------------

    def make_store(self, vhost: str, queue: str, durable: bool, arguments: dict[str, Any]) -> Any:
        from .queue import PriorityStore, QueueSettings

        settings = QueueSettings(arguments)  # validates before touching the disk
        storage = self.storage
        if settings.max_priority:
            # One log whatever x-max-priority is (not one store per level): see priority.py.
            if storage is None:
                return PriorityStore(settings.max_priority)
            if durable:
                return PriorityStore(settings.max_priority, log=storage.queue_store(vhost, queue, None))
            return PriorityStore(settings.max_priority, open_log=storage.transient_log_opener(vhost, queue))
        if storage is None:
            return MemoryStore()
        if durable:
            return storage.queue_store(vhost, queue, None)
        return storage.transient_store(vhost, queue, None)

    def definitions_changed(self, kind: str, vhost: VirtualHost | None, obj: Any) -> None:
        if self.storage is not None:
            self.storage.definitions_changed(kind, vhost, obj)

    def request_sync(self) -> None:
        if self.storage is not None:
            self.storage.request_sync()

    def after_sync(self, callback: Callable[[], None], on_error: Callable[[BaseException], None] | None = None) -> bool:
        """Run ``callback`` after the next fsync covering every write so far.

        Returns False when there is no disk store (the caller may act at once).
        """
        if self.storage is None:
            return False
        self.storage.after_sync(callback, on_error)
        return True

    def write_failed(self, store: Any, exc: BaseException) -> None:
        """A store could not write (full disk, I/O error): alarm and let storage recover."""
        if self.storage is not None:
            self.storage.write_failed(store, exc)
        else:
            self.set_alarm("disk", True)

    # --- alarms ------------------------------------------------------------------------

    def set_alarm(self, name: str, active: bool) -> None:
        before = set(self.alarms)
        if active:
            self.alarms.add(name)
        else:
            self.alarms.discard(name)
        if before != self.alarms:
            log.warning("resource alarm %s %s; active alarms: %s", name, "set" if active else "cleared", sorted(self.alarms) or "none")
            for listener in list(self.alarm_listeners):
                listener(set(self.alarms))

    @property
    def alarm_reason(self) -> str:
        mem = "memory" in self.alarms
        disk = "disk" in self.alarms
        if mem and disk:
            return "low on memory & disk"
        return "low on memory" if mem else "low on disk"
