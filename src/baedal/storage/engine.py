"""Wires the storage layer into the broker core.

* one ``Syncer`` per broker (group commit for every durable queue and ack file);
* one ``StreamLog`` per stream (``x-queue-type: stream``, core/stream.py) under
  ``<data_dir>/streams/<digest of vhost and name>``, appended through the same
  ``Syncer``; recovery truncates a torn tail and reports it (logged at start-up);
* one ``SegmentStore`` per durable queue (a priority queue too: one log, see
  core/priority.py) under
  ``<data_dir>/queues/<digest of vhost and name>``;
* the ``DefinitionsStore`` (SQLite) for vhosts, users, permissions and durable
  exchanges, queues and bindings, loaded at start-up before any listener opens;
* write-failure handling: a failed append raises the disk alarm (publishers are
  blocked, the failed publish is nacked), and the store's writer is reset once free
  space is back; a failed fsync is fatal and stops the broker.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.scram import CredentialFormatError, credentials_from_json, credentials_to_json
from .definitions import DefinitionsStore
from .memory import disk_free_bytes
from .paged_store import PagedStore
from .queue_store import SegmentStore
from .segment import SEGMENT_VERSION, StorageError
from .stream_log import StreamLog
from .syncer import Syncer

if TYPE_CHECKING:
    from ..config import Settings
    from ..core.broker import BrokerCore

log = logging.getLogger("baedal.storage")


def queue_directory_name(vhost: str, queue: str) -> str:
    return hashlib.sha256(f"{vhost}\x00{queue}".encode()).hexdigest()[:32]


class StorageEngine:
    def __init__(self, core: BrokerCore, settings: Settings, on_fatal: Any = None) -> None:
        self.core = core
        self.settings = settings
        self.data_dir = Path(settings.data_dir)
        self.queues_dir = self.data_dir / "queues"
        self.streams_dir = self.data_dir / "streams"
        self.streams: dict[tuple[str, str], StreamLog] = {}
        self.transient_dir = self.data_dir / "transient"
        self._transient_counter = 0
        self.syncer: Syncer | None = None
        self.definitions: DefinitionsStore | None = None
        self.stores: dict[tuple[str, str, int | None], SegmentStore] = {}
        self.failed_stores: set[SegmentStore] = set()
        # Write-behind counters of deleted stores (written, skipped), so /metrics' totals
        # never go down.
        self.deleted_deferred = [0, 0]
        self._loading = False
        self._on_fatal = on_fatal
        self._retry_handle: Any = None
        self.recovery_seconds = 0.0
        self.recovered_messages = 0
        self.recovery_report: dict[str, Any] = {}

    # --- start-up ----------------------------------------------------------------------

    def open(self) -> None:
        self.queues_dir.mkdir(parents=True, exist_ok=True)
        self.streams_dir.mkdir(parents=True, exist_ok=True)
        # Paged-out transient messages do not survive a restart (as in RabbitMQ).
        shutil.rmtree(self.transient_dir, ignore_errors=True)
        self.syncer = Syncer(
            on_fatal=self._fatal,
            loop=self.core.loop,
            hold=max(0.0, self.settings.sync_hold_ms) / 1000,
        )
        self.definitions = DefinitionsStore(self.data_dir / "definitions.sqlite3")
        started = time.monotonic()
        self.core.storage = self
        self._loading = True
        try:
            self._load()
        finally:
            self._loading = False
        self._remove_orphans()
        self.recovery_seconds = time.monotonic() - started
        self.recovery_report = self._recovery_report()
        report = self.recovery_report
        log.log(
            logging.WARNING if report["unclean_stores"] or report["lost_bytes"] else logging.INFO,
            "recovery: %d durable queue(s), %d message(s) (%d body bytes) recovered in %.2fs; "
            "%d store(s) after an unclean shutdown; %d byte(s) of torn tail truncated, "
            "%d damaged byte(s) skipped, %d byte(s) of unreadable segments dropped; "
            "%d stream(s), %d byte(s) dropped from damaged stream tails",
            report["queues"],
            report["messages"],
            report["message_bytes"],
            report["seconds"],
            report["unclean_stores"],
            report["truncated_bytes"],
            report["damaged_bytes"],
            report["dropped_bytes"],
            report["streams"],
            report["stream_lost_bytes"],
        )

    def _recovery_report(self) -> dict[str, Any]:
        """Totals of what every durable store found when it opened (see RecoveryStats)."""
        report: dict[str, Any] = {
            "queues": len({(key[0], key[1]) for key in self.stores}),
            "messages": 0,
            "message_bytes": 0,
            "unclean_stores": 0,
            "truncated_bytes": 0,
            "damaged_bytes": 0,
            "dropped_bytes": 0,
        }
        for store in self.stores.values():
            stats = store.recovery
            report["messages"] += stats.messages
            report["message_bytes"] += stats.message_bytes
            report["unclean_stores"] += not stats.clean
            report["truncated_bytes"] += stats.truncated_bytes
            report["damaged_bytes"] += stats.damaged_bytes
            report["dropped_bytes"] += stats.dropped_bytes
        stream_lost = 0
        for log_ in self.streams.values():
            stream_lost += log_.recovery.lost_bytes
        report["streams"] = len(self.streams)
        report["stream_lost_bytes"] = stream_lost
        report["lost_bytes"] = (
            report["truncated_bytes"] + report["damaged_bytes"] + report["dropped_bytes"] + stream_lost
        )
        report["seconds"] = round(self.recovery_seconds, 3)
        return report

    def _load(self) -> None:
        core = self.core
        defs = self.definitions
        assert defs is not None
        data = defs.load()
        if not data["vhosts"] and not data["users"]:
            # First start: persist the defaults the core created.
            with defs.transaction():
                for vhost in core.vhosts:
                    defs.put_vhost(vhost)
                for user in core.users.values():
                    defs.put_user(user.name, user.password_hash, user.tags, credentials_to_json(user.scram))
                for (user, vhost), perm in core.permissions.items():
                    defs.put_permission(user, vhost, perm.configure, perm.write, perm.read)
            return
        core.users.clear()
        core.permissions.clear()
        for item in data["vhosts"]:
            core.add_vhost(item["name"])
        for name in [v for v in core.vhosts if v not in {i["name"] for i in data["vhosts"]}]:
            del core.vhosts[name]
        for item in data["users"]:
            try:
                scram = credentials_from_json(item.get("scram_credentials", {}))
            except CredentialFormatError as exc:
                log.warning("user %s: stored SCRAM credentials ignored: %s", item["name"], exc)
                scram = {}
            core.add_user(item["name"], None, item["tags"], password_hash=item["password_hash"], scram=scram)
        for item in data["permissions"]:
            core.set_permission(item["user"], item["vhost"], item["configure"], item["write"], item["read"])
        self._load_policies(data)
        for item in data["exchanges"]:
            vhost = core.vhosts.get(item["vhost"])
            if vhost is None or item["name"] in vhost.exchanges:
                continue
            vhost.declare_exchange(
                item["name"],
                item["type"],
                durable=True,
                auto_delete=item["auto_delete"],
                internal=item["internal"],
                arguments=item["arguments"],
            )
        for item in data["queues"]:
            vhost = core.vhosts.get(item["vhost"])
            if vhost is None:
                continue
            queue, _ = vhost.declare_queue(
                item["name"], durable=True, auto_delete=item["auto_delete"], arguments=item["arguments"], check_type=False
            )
            self.recovered_messages += queue.message_count
        for item in data["bindings"]:
            vhost = core.vhosts.get(item["vhost"])
            if vhost is None:
                continue
            if item["destination_kind"] == "queue":
                destination: Any = vhost.queues.get(item["destination"])
            else:
                destination = vhost.exchanges.get(item["destination"])
            if destination is None or item["source"] not in vhost.exchanges:
                continue
            vhost.bind(item["source"], destination, item["routing_key"], item["arguments"])

    def _load_policies(self, data: dict[str, Any]) -> None:
        """Policies, topic permissions and parameters; before exchanges and queues, so
        those are declared with their policies already in force."""
        from ..core.policy import Policy

        core = self.core
        for item in data.get("policies", []):
            vhost = core.vhosts.get(item["vhost"])
            if vhost is None:
                continue
            table = vhost.operator_policies if item["operator"] else vhost.policies
            table[item["name"]] = Policy(
                item["vhost"],
                item["name"],
                item["pattern"],
                item["definition"],
                apply_to=item["apply-to"],
                priority=item["priority"],
                operator=item["operator"],
            )
        for item in data.get("topic_permissions", []):
            core.set_topic_permission(item["user"], item["vhost"], item["exchange"], item["write"], item["read"])
        for item in data.get("parameters", []):
            core.set_parameter(item["vhost"], item["component"], item["name"], item["value"])
        for item in data.get("global_parameters", []):
            core.set_global_parameter(item["name"], item["value"])

    def _remove_orphans(self) -> None:
        """Stores of queues that no longer exist (exclusive or deleted while down)."""
        known_streams = {queue_directory_name(k[0], k[1]) for k in self.streams}
        for path in self.streams_dir.iterdir():
            if path.name not in known_streams:
                log.info("removing stream %s that no longer exists", path.name)
                shutil.rmtree(path, ignore_errors=True)
        known = {queue_directory_name(k[0], k[1]) for k in self.stores}
        for path in self.queues_dir.iterdir():
            if path.name not in known:
                log.info("removing store %s of a queue that no longer exists", path.name)
                shutil.rmtree(path, ignore_errors=True)

    # --- stores ------------------------------------------------------------------------

    def queue_store(self, vhost: str, queue: str, level: int | None) -> SegmentStore:
        assert self.syncer is not None
        directory = self.queues_dir / queue_directory_name(vhost, queue)
        if level is not None:
            directory = directory / f"priority-{level}"
        store = SegmentStore.open(directory, self.syncer, segment_bytes=self.settings.segment_bytes)
        if level is None:
            self._migrate_priority_levels(store)
        self.stores[(vhost, queue, level)] = store
        return store

    def _migrate_priority_levels(self, store: SegmentStore) -> None:
        """Fold a priority queue written by an older Baedal (one store per level, in
        ``priority-N`` subdirectories) into the queue's one log, then remove them.

        The messages are copied (priority is in each record), the log is synced, and
        only then are the old directories deleted: a crash in between recovers both and
        at worst delivers a message twice, which the redelivered flag covers.
        """
        old = sorted(store.directory.glob("priority-*"))
        if not old:
            return
        assert self.syncer is not None
        copied = 0
        for path in old:
            level = SegmentStore.open(path, self.syncer, segment_bytes=self.settings.segment_bytes)
            while (entry := level.shift()) is not None:
                assert entry.message is not None
                store.append(entry.message, entry.expires_at)
                copied += 1
            level.close(clean=False)
        self.syncer.sync_now()
        for path in old:
            shutil.rmtree(path, ignore_errors=True)
        log.warning(
            "store %s: folded %d message(s) from %d per-priority store(s) into one log",
            store.directory,
            copied,
            len(old),
        )

    def stream_log(self, vhost: str, name: str, settings: Any) -> StreamLog:
        """Open (recovering) or create a stream's log; ``settings`` is core/stream.py's
        ``StreamSettings``.  What recovery dropped is logged here and counted in the
        start-up recovery report."""
        assert self.syncer is not None
        directory = self.streams_dir / queue_directory_name(vhost, name)
        options: dict[str, Any] = {"max_bytes": settings.max_bytes, "max_age": settings.max_age}
        if settings.max_segment_bytes:
            options["max_segment_bytes"] = settings.max_segment_bytes
        stream = StreamLog.open(directory, syncer=self.syncer, **options)
        report = stream.recovery
        for truncation in report.truncations:
            log.warning(
                "stream '%s' in vhost '%s': %s truncated at %d, %d byte(s) dropped (%s)",
                name, vhost, truncation.segment.name, truncation.position,
                truncation.truncated_bytes, truncation.reason,
            )
        for removed in report.removed_segments:
            log.warning(
                "stream '%s' in vhost '%s': segment %s removed, %d byte(s) (%s)",
                name, vhost, removed.segment.name, removed.size, removed.reason,
            )
        self.streams[(vhost, name)] = stream
        return stream

    def stream_deleted(self, vhost: str, name: str) -> None:
        stream = self.streams.pop((vhost, name), None)
        if stream is not None:
            try:
                stream.close()
            except OSError as exc:
                log.error("closing stream %s: %s", stream.directory, exc)
        shutil.rmtree(self.streams_dir / queue_directory_name(vhost, name), ignore_errors=True)

    def transient_store(self, vhost: str, queue: str, level: int | None) -> PagedStore:
        """A non-durable queue's store: memory first, paged out to disk past a budget."""
        self._transient_counter += 1
        directory = self.transient_dir / f"{queue_directory_name(vhost, queue)}-{self._transient_counter}"
        if level is not None:
            directory = directory / f"priority-{level}"
        syncer = self.syncer
        segment_bytes = self.settings.segment_bytes

        # A transient queue's pages are a spill file, not the log: never fsynced, never
        # recovered (deleted at start), so they keep the cheaper version-1 records, whose
        # read-back costs ~0.6x the queue log's batch decode (S1/S2/S4 page when behind).
        def open_paged(path: Path) -> SegmentStore:
            return SegmentStore.open(  # type: ignore[arg-type]
                path, syncer, segment_bytes=segment_bytes, segment_version=SEGMENT_VERSION
            )

        return PagedStore(directory, open_paged)

    def transient_log_opener(self, vhost: str, queue: str) -> Callable[[], SegmentStore]:
        """For a transient priority queue: opens its one private log on first need."""
        self._transient_counter += 1
        directory = self.transient_dir / f"{queue_directory_name(vhost, queue)}-{self._transient_counter}"
        syncer = self.syncer
        segment_bytes = self.settings.segment_bytes

        def open_log() -> SegmentStore:  # a spill file too: version-1 records (see above)
            return SegmentStore.open(  # type: ignore[arg-type]
                directory, syncer, segment_bytes=segment_bytes, segment_version=SEGMENT_VERSION
            )

        return open_log

    def store_deleted(self, vhost: str, queue: str) -> None:
        for key in [k for k in self.stores if k[0] == vhost and k[1] == queue]:
            store = self.stores.pop(key)
            self.failed_stores.discard(store)
            self.deleted_deferred[0] += store.deferred_written
            self.deleted_deferred[1] += store.deferred_skipped
        directory = self.queues_dir / queue_directory_name(vhost, queue)
        shutil.rmtree(directory, ignore_errors=True)

    # --- definitions -------------------------------------------------------------------

    def definitions_changed(self, kind: str, vhost: Any, obj: Any) -> None:
        if self._loading and kind not in ("queue-deleted",):
            return
        defs = self.definitions
        if defs is None:
            return
        if kind == "vhost":
            defs.put_vhost(vhost.name)
        elif kind == "vhost-deleted":
            defs.delete_vhost(vhost.name)
            for key in [k for k in self.stores if k[0] == vhost.name]:
                self.store_deleted(key[0], key[1])
            for stream_key in [k for k in self.streams if k[0] == vhost.name]:
                self.stream_deleted(*stream_key)
        elif kind == "user":
            defs.put_user(obj.name, obj.password_hash, obj.tags, credentials_to_json(obj.scram))
        elif kind == "user-deleted":
            defs.delete_user(obj)
        elif kind == "permission":
            user, vhost_name, configure, write, read = obj
            if user in self.core.users and vhost_name in self.core.vhosts:
                defs.put_permission(user, vhost_name, configure, write, read)
        elif kind == "permission-deleted":
            defs.delete_permission(*obj)
        elif kind == "exchange":
            defs.put_exchange(vhost.name, obj.name, obj.type, obj.durable, obj.auto_delete, obj.internal, obj.arguments)
        elif kind == "exchange-deleted":
            defs.delete_exchange(vhost.name, obj.name)
        elif kind == "queue":
            if not obj.exclusive:
                defs.put_queue(vhost.name, obj.name, True, obj.auto_delete, obj.arguments)
        elif kind == "queue-deleted":
            defs.delete_queue(vhost.name, obj.name)
            self.store_deleted(vhost.name, obj.name)
        elif kind == "policy":
            defs.put_policy(vhost.name, obj.name, obj.operator, obj.pattern, obj.apply_to, obj.priority, obj.definition)
        elif kind == "policy-deleted":
            defs.delete_policy(vhost.name, obj.name, obj.operator)
        elif kind == "topic-permission":
            user, vhost_name, exchange, write, read = obj
            if user in self.core.users and vhost_name in self.core.vhosts:
                defs.put_topic_permission(user, vhost_name, exchange, write, read)
        elif kind == "topic-permission-deleted":
            defs.delete_topic_permission(*obj)
        elif kind == "parameter":
            defs.put_parameter(*obj)
        elif kind == "global-parameter":
            defs.put_global_parameter(*obj)
        elif kind in ("binding", "binding-deleted"):
            source, destination, routing_key, arguments = obj
            if getattr(destination, "exclusive", False):
                return
            dest_kind = "queue" if destination.is_queue else "exchange"
            if kind == "binding":
                defs.put_binding(vhost.name, source.name, destination.name, dest_kind, routing_key, arguments)
            else:
                defs.delete_binding(vhost.name, source.name, destination.name, dest_kind, routing_key, arguments)

    # --- sync --------------------------------------------------------------------------

    def after_sync(self, callback: Any, on_error: Any = None) -> None:
        assert self.syncer is not None

        def failed(exc: BaseException) -> None:
            # A buffered write failed at flush time (the usual ENOSPC case: appends only
            # buffer).  Find the stores it left sticky-failed so they get the same
            # alarm-and-recover treatment as a failed append, then let the caller nack.
            self._flush_failed(exc)
            if on_error is not None:
                on_error(exc)

        self.syncer.after_sync(callback, failed)

    def _flush_failed(self, exc: BaseException) -> None:
        failed = [store for store in self.stores.values() if store.failure is not None]
        for store in failed:
            self.write_failed(store, exc)
        if not failed:
            self.write_failed(None, exc)

    @property
    def healthy(self) -> bool:
        """False while some store cannot write (the disk alarm must stay up)."""
        return not self.failed_stores

    def request_sync(self) -> None:
        assert self.syncer is not None
        self.syncer.after_sync(_noop)

    # --- failures ----------------------------------------------------------------------

    def write_failed(self, store: Any, exc: BaseException) -> None:
        """An append failed (ENOSPC, EIO): block publishers until the store recovers."""
        if isinstance(store, PagedStore):
            store = store.paged_store
        elif getattr(store, "log_store", None) is not None:  # a priority queue's one log
            store = store.log_store
        if isinstance(store, SegmentStore):
            if store not in self.failed_stores:
                log.error("write to %s failed: %s; publishers blocked until it recovers", store.directory, exc)
            self.failed_stores.add(store)
        self.core.set_alarm("disk", True)
        if self._retry_handle is None:
            self._retry_handle = self.core.call_later(1.0, self._retry_failed)

    def _retry_failed(self) -> None:
        self._retry_handle = None
        if disk_free_bytes(self.data_dir) < self.settings.disk_free_limit:
            self._retry_handle = self.core.call_later(1.0, self._retry_failed)
            return
        for store in list(self.failed_stores):
            try:
                lost = store.reset_failed_writer()
            except (OSError, StorageError) as exc:
                log.warning("store %s not recovered yet: %s", store.directory, exc)
                continue
            if lost:
                log.warning("store %s: %d unconfirmed record(s) lost with the failed write", store.directory, lost)
            self.failed_stores.discard(store)
        if self.failed_stores:
            self._retry_handle = self.core.call_later(1.0, self._retry_failed)
        else:
            log.info("storage recovered; publishers unblocked")
            self.core.set_alarm("disk", False)

    def _fatal(self, exc: BaseException) -> None:
        log.critical("fsync failed (%s): stopping the broker rather than confirm unsynced data", exc)
        if self._on_fatal is not None:
            self._on_fatal(exc)
        else:
            for conn in list(self.core.connections.values()):
                conn.force_close("storage failure: fsync failed")

    # --- shutdown ----------------------------------------------------------------------

    async def close(self) -> None:
        if self._retry_handle is not None:
            self._retry_handle.cancel()
        # After a failed fsync nothing may claim a clean shutdown (see syncer.py).
        clean = self.syncer is None or self.syncer.failure is None
        for store in list(self.stores.values()):
            try:
                store.close(clean)
            except OSError as exc:
                log.error("closing store %s: %s", store.directory, exc)
        self.stores.clear()
        for stream in list(self.streams.values()):
            try:
                stream.close()
            except OSError as exc:
                log.error("closing stream %s: %s", stream.directory, exc)
        self.streams.clear()
        if self.syncer is not None:
            # let a job in flight finish
            for _ in range(100):
                if not self.syncer.busy:
                    break
                await asyncio.sleep(0.01)
            self.syncer.close()
        if self.definitions is not None:
            self.definitions.close()
        shutil.rmtree(self.transient_dir, ignore_errors=True)


def _noop() -> None:
    pass
