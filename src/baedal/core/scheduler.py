"""Scheduled delivery: messages held until a due time, then published as if sent then.

Two ways in, one mechanism:

* ActiveMQ Artemis' ``_AMQ_SCHED_DELIVERY`` (absolute due time, ms since the epoch; one
  delivery), on a publish from any protocol.
* ActiveMQ's headers, on a publish from any protocol (they arrive as neutral headers):
  ``AMQ_SCHEDULED_DELAY`` (ms before the first delivery), ``AMQ_SCHEDULED_PERIOD`` (ms
  between repeats), ``AMQ_SCHEDULED_REPEAT`` (repeats after the first delivery, so
  ``repeat=9`` delivers ten times, as in ActiveMQ; negative: until cancelled) and
  ``AMQ_SCHEDULED_CRON`` (a 5-field cron expression, evaluated in UTC; each cron firing
  starts a series of ``1 + repeat`` deliveries, the first after ``delay``, then every
  ``period``, as ActiveMQ documents).  The delivered copies carry the same headers
  minus the scheduling headers, plus ``scheduledJobId`` (the id the
  management API lists and cancels), so a consumer that re-publishes a copy does not
  schedule it again.
* RabbitMQ's delayed-message exchange (``x-delayed-message``, core/exchange.py): a
  publish to one with an ``x-delay`` header greater than zero is held ``x-delay`` ms,
  then routed by the exchange's ``x-delayed-type``.  The copy delivered has ``x-delay``
  negated, as the plugin does (``swap_delay_header``), so it is not delayed again on its
  way through another delayed exchange.

Theory of operation
-------------------
The publish path (core/publish.py) spots the headers in ``Publisher.admit`` (only for a
message that has headers: the AMQP fast path never gets there) and hands a
``ScheduleRequest`` to ``deliver``, which calls ``Scheduler.schedule`` instead of
routing.  ``schedule`` appends the job to the schedule store and returns whether the
publisher's confirm must wait for an fsync, exactly as for a persistent message reaching
a durable queue; so a confirm is sent only once the job is on disk.

Memory does not grow with the number of waiting jobs.  The store
(storage/schedule_buckets.py) keeps every job on disk in a log per *bucket* of due
time (10 s), with a small summary per bucket (live jobs per vhost).  This scheduler holds
in memory only the *window*: the jobs of the buckets whose time span starts within
``LOAD_AHEAD`` seconds, as a heap of (due, seq, bucket, envelope bytes).  A bucket
comes into the window a slice of ``LOAD_BATCH`` records per callback, so reading it never
stalls the loop for long.  A job published into a bucket already in the window goes
straight onto the heap too; one published further ahead is only appended to its
bucket's log.  Jobs that repeat (period/repeat/cron) live in their own log, always in
the window (they are few and keep their id while they move through time).

One timer (``loop.call_later``) is armed for the earlier of the next due job and the
next bucket to load: never a task or timer per message, and no fixed poll.  When it
fires, every job due by then is published through the one publish path
(``Publisher.deliver``, routing as of that moment: bindings added or removed since the
publish count, as in the plugin), at most ``FIRE_BATCH`` per callback (the rest continue
with ``call_soon``).  Firing decodes the binary envelope once (one ``struct`` unpack and
the message record).  Fired jobs are tombstoned in their buckets every 25 ms,
in one batch, after the fsync covering their deliveries (``after_sync``): a crash in
between delivers at least once rather than losing.  A repeating job is appended again
with its next due time and its old record tombstoned the same way.  A bucket whose jobs
are all done and settled, and whose span is over, is deleted whole.

A job's id is ``<bucket>-<seq>`` (``r-<seq>`` for a recurring job), so the management
API's look-up and cancel read that one bucket, and nothing maps ids to jobs in memory.
A cancel is a tombstone; the job's heap entry, if it has one, goes stale and is skipped
when popped (lazy deletion).  Listing walks the buckets in due order, skipping whole
buckets by their counts, and reads only those the page falls in.

Due times are wall-clock (``clock``, seconds since the epoch) so they keep their meaning
across a restart.  At start-up the store reads bucket summaries, not jobs (a bucket
written after its last summary checkpoint, i.e. before a kill -9, is re-scanned alone);
overdue buckets come into the window one at a time and fire at once, in due order.
``clock`` can be replaced (tests use a fake clock and call ``wake()``); the timer then
re-checks the head against the clock whenever it fires.

Routability cannot be known when a scheduled message is published (the plugin's README
says the same of its mandatory flag).  Baedal does not send ``basic.return`` for a
scheduled publish (RabbitMQ's plugin returns *every* mandatory delayed publish as
``NO_ROUTE`` even when it is delivered later, its issue #7): the publish is accepted
by the schedule and confirmed once stored.  A message that finds no queue when it fires
goes to the exchange's alternate exchange if it has one, otherwise it is dropped and
counted (``unroutable`` and ``Scheduler.dropped``); a target exchange deleted meanwhile
drops it likewise.
"""

from __future__ import annotations

import heapq
import logging
import struct
import time
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ..storage.record import body_size, decode_record, encode_record
from ..storage.schedule_buckets import (
    BUCKET_SECONDS,
    KIND_ACTIVEMQ,
    KIND_X_DELAY,
    KINDS,
    RECURRING,
    RECURRING_COMPACT_MIN,
    Bucket,
    JobRecord,
    decode_job,
    encode_job,
    job_due,
    job_seq,
    walk_records,
)
from .message import Message
from .vhost import CoreError

if TYPE_CHECKING:
    from .broker import BrokerCore
    from .exchange import Exchange

log = logging.getLogger("baedal.scheduler")

AMQ_SCHEDULED_DELAY = "AMQ_SCHEDULED_DELAY"
AMQ_SCHEDULED_PERIOD = "AMQ_SCHEDULED_PERIOD"
AMQ_SCHEDULED_REPEAT = "AMQ_SCHEDULED_REPEAT"
AMQ_SCHEDULED_CRON = "AMQ_SCHEDULED_CRON"
# ActiveMQ Artemis: one property, the absolute delivery time in ms since the epoch.
AMQ_SCHED_DELIVERY = "_AMQ_SCHED_DELIVERY"
AMQ_HEADERS = (AMQ_SCHEDULED_DELAY, AMQ_SCHEDULED_PERIOD, AMQ_SCHEDULED_REPEAT, AMQ_SCHEDULED_CRON, AMQ_SCHED_DELIVERY)
JOB_ID_HEADER = "scheduledJobId"  # ActiveMQ's reserved name for the job id
X_DELAY = "x-delay"
DELAYED_EXCHANGE_TYPE = "x-delayed-message"
# Any of these in a message's headers sends the publish through ``request_for``.
SCHEDULE_HEADERS = frozenset((*AMQ_HEADERS, X_DELAY))

# Jobs published per timer callback before yielding to the loop (STYLE habit 7).
FIRE_BATCH = 500
# A bucket is read into the window this long before its time span starts, a slice of
# ``LOAD_BATCH`` records per callback, so that reading 17k jobs (a 10 s bucket at
# 1,700/s) is spread over the seconds before they are due instead of one long stall.
# (2,000 records took 20-90 ms a slice on a loaded 2-core VM: the firing error showed
# it at every bucket load; 500 keep a slice to a few ms.)
LOAD_AHEAD = 5.0
LOAD_BATCH = 500
# After downtime, overdue buckets are loaded one at a time while the window holds fewer
# than this many jobs: a backlog is worked off without all of it in memory at once.
WINDOW_BACKLOG = 50_000
# Fired jobs are tombstoned in batches handed to the syncer this often (see
# ``_settle_after_sync``).
SETTLE_INTERVAL = 0.025
# The shortest time between two timer ticks (see ``_arm``).
TICK_FLOOR = 0.005
_DUE_SEQ = struct.Struct("<dQ")  # the first two envelope fields


class ScheduleRequest(list):  # type: ignore[type-arg]
    """What ``Publisher.admit`` hands to ``deliver`` for a message to schedule.

    A list so it travels in ``deliver``'s ``extra_keys`` argument (its items are the
    CC/BCC routing keys, usually none): every adapter already passes that argument from
    ``admit`` to ``deliver`` untouched, and ``deliver`` only looks at its class on the
    path that is already slow (extra keys present), so the fast path pays nothing.
    """

    __slots__ = ("kind", "delay_ms", "period_ms", "repeat", "cron", "at")

    def __init__(
        self, kind: str, delay_ms: int, period_ms: int = 0, repeat: int = 0, cron: str | None = None,
        at: float | None = None,
    ) -> None:
        super().__init__()
        self.kind = kind  # "activemq" or "x-delay"
        self.delay_ms = delay_ms
        self.period_ms = period_ms
        self.repeat = repeat
        self.cron = cron
        self.at = at  # an absolute due time (Artemis' _AMQ_SCHED_DELIVERY), epoch seconds


def _integer(headers: Mapping[str, Any], name: str) -> int | None:
    """A numeric header as an int: AMQP sends numbers, STOMP and HTTP often strings."""
    value = headers.get(name)
    if value is None:
        return None
    if isinstance(value, bool):
        raise CoreError("precondition_failed", f"invalid {name} header: {value!r} is not a number")
    if isinstance(value, int):
        return value
    if isinstance(value, (float, Decimal)):
        return int(value)  # truncated, as the plugin does for floats
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("utf-8", "replace")
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            try:
                return int(float(value))
            except ValueError:
                pass
    raise CoreError("precondition_failed", f"invalid {name} header: {value!r} is not a number")


def cron_after(expression: str, after: float) -> float:
    """The first time strictly after ``after`` (epoch seconds) that the cron expression
    names, evaluated in UTC."""
    from croniter import croniter

    start = datetime.fromtimestamp(after, UTC)
    return float(croniter(expression, start).get_next(float))


def check_cron(expression: Any) -> str:
    if isinstance(expression, (bytes, bytearray)):
        expression = bytes(expression).decode("utf-8", "replace")
    if not isinstance(expression, str):
        raise CoreError("precondition_failed", f"invalid {AMQ_SCHEDULED_CRON} header: {expression!r}")
    from croniter import croniter

    expression = expression.strip()
    if len(expression.split()) != 5 or not croniter.is_valid(expression):
        raise CoreError(
            "precondition_failed",
            f"invalid {AMQ_SCHEDULED_CRON} header: {expression!r} is not a 5-field cron expression",
        )
    return expression


def request_for(headers: Mapping[str, Any], exchange: Exchange) -> ScheduleRequest | None:
    """The schedule a message's headers ask for, or None to deliver it now.

    Raises ``CoreError`` (``precondition_failed``) for a header that does not parse; the
    publish is refused rather than silently delivered at the wrong time.
    """
    if AMQ_SCHED_DELIVERY in headers:
        at_ms = _integer(headers, AMQ_SCHED_DELIVERY)
        assert at_ms is not None
        return ScheduleRequest("activemq", 0, at=at_ms / 1000.0)
    if AMQ_SCHEDULED_DELAY in headers or AMQ_SCHEDULED_PERIOD in headers or AMQ_SCHEDULED_REPEAT in headers or AMQ_SCHEDULED_CRON in headers:
        delay = max(0, _integer(headers, AMQ_SCHEDULED_DELAY) or 0)
        period = max(0, _integer(headers, AMQ_SCHEDULED_PERIOD) or 0)
        repeat = _integer(headers, AMQ_SCHEDULED_REPEAT) or 0
        cron_value = headers.get(AMQ_SCHEDULED_CRON)
        cron = check_cron(cron_value) if cron_value is not None else None
        if repeat < 0:
            repeat = -1
            if period <= 0:
                raise CoreError(
                    "precondition_failed",
                    f"{AMQ_SCHEDULED_REPEAT} < 0 (repeat until cancelled) needs a positive {AMQ_SCHEDULED_PERIOD}",
                )
        if cron is None and delay == 0 and repeat == 0:
            return None  # nothing to wait for: an ordinary publish
        return ScheduleRequest("activemq", delay, period, repeat, cron)
    if exchange.type == DELAYED_EXCHANGE_TYPE and X_DELAY in headers:
        try:
            delay = _integer(headers, X_DELAY)
        except CoreError:
            return None  # the plugin routes a non-numeric x-delay at once
        if delay is None or delay <= 0:
            return None  # "negative or absent: now"
        return ScheduleRequest("x-delay", delay)
    return None


def job_id_for(index: int, seq: int) -> str:
    """A job's id names where it lives: its bucket (``r`` for the recurring log) and its
    sequence, so a cancel or a look-up reads one bucket, never an index of every job."""
    return f"r-{seq:x}" if index == RECURRING else f"{index:x}-{seq:x}"


def parse_job_id(job_id: str) -> tuple[int, int] | None:
    where, _, seq = job_id.partition("-")
    try:
        return (RECURRING if where == "r" else int(where, 16)), int(seq, 16)
    except ValueError:
        return None


class Scheduler:
    """The broker's scheduled messages (see the module docstring)."""

    def __init__(self, core: BrokerCore, store: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.store = store
        self.clock = clock
        # The near window: (due, seq, bucket, envelope payload) for every job of a loaded
        # bucket; an entry whose seq is no longer in ``bucket.live`` is stale (lazy delete).
        self._heap: list[tuple[float, int, Bucket, bytes]] = []
        # Buckets with jobs on disk and none in memory, by index (a min-heap).
        self._unloaded: list[int] = []
        # Buckets being read into the window a slice per callback:
        # [bucket, its log's bytes, where the next record starts, tombstoned offsets].
        self._loading: list[list[Any]] = []
        self._recurring_vhosts: dict[int, str] = {}  # recurring seq -> vhost
        self._timer: Any = None
        self._timer_due: float | None = None
        self._last_tick = 0.0
        self._publishers: dict[str, Any] = {}
        self._pending: set[Callable[[], None]] = set()  # tombstone writes waiting for an fsync
        self._unsettled: dict[Bucket, list[int]] = {}  # fired, not yet handed to the syncer
        self._settle_timer: Any = None
        self._window: list[Bucket] = []  # loaded buckets (not the recurring log)
        self._closed = False
        # Counters (metrics, tests).
        self.scheduled = 0
        self.fired = 0
        # Fired deliveries whose tombstone is not yet written (waiting for the settle
        # timer or for the fsync covering the delivery): a kill -9 now fires them again.
        self.settling = 0
        self.dropped = 0
        self.cancelled = 0
        self.loaded_buckets = 0

    # --- start-up ----------------------------------------------------------------------

    def recover(self) -> int:
        """Arm the schedule from the store's bucket summaries (no job is read, except the
        recurring ones, which live in memory); returns how many jobs wait."""
        store = self.store
        for index in store.buckets:
            heapq.heappush(self._unloaded, index)
        self._load_recurring()
        if store.migrated:
            self._migrate(store.migrated)
            store.finish_migration()
        total = self.count()
        if total:
            log.info("scheduler: %d scheduled message(s) recovered", total)
        return total

    def _load_recurring(self) -> None:
        bucket = self.store.recurring
        latest: dict[int, tuple[int, bytes]] = {}
        stale: list[int] = []
        for offset, payload in self.store.records(bucket):
            seq = job_seq(payload)
            if seq in latest:  # a rewrite whose old record's tombstone a crash prevented
                stale.append(latest[seq][0])
            latest[seq] = (offset, payload)
        self.store.tombstone(bucket, stale)
        bucket.live = {}
        for seq, (offset, payload) in latest.items():
            job = decode_job(payload)
            bucket.live[seq] = offset
            self._recurring_vhosts[seq] = job.vhost
            heapq.heappush(self._heap, (job.due, seq, bucket, payload))

    def _migrate(self, legacy_jobs: list[Any]) -> None:
        """Rewrite jobs of the first layout (storage/schedule_store.py) as envelopes."""
        for stored in legacy_jobs:
            state, message = stored.state, stored.message
            kind = KIND_X_DELAY if state.get("kind") == "x-delay" else KIND_ACTIVEMQ
            repeat_left = int(state.get("repeat_left", 0) or 0)
            cron = state.get("cron") or None
            recurring = repeat_left != 0 or cron is not None
            self._store_job(
                state.get("vhost", "/"), state.get("exchange", ""), message, kind, stored.due,
                int(state.get("delay", 0) or 0), int(state.get("period", 0) or 0),
                int(state.get("repeat", 0) or 0), repeat_left, cron, state.get("cron_next"),
                list(state.get("extra") or ()), recurring, self.clock(), int(state.get("fired", 0) or 0),
            )
        log.info("scheduler: %d job(s) migrated from the legacy schedule log", len(legacy_jobs))

    def start(self) -> None:
        self._arm()

    def close(self, clean: bool = True) -> None:
        """Stop the timer and close the store.  Tombstones still waiting for an fsync are
        written now (the store's close syncs them with everything else); after a failed
        fsync (``clean=False``) they are not, so those jobs fire again after restart."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._settle_timer is not None:
            self._settle_timer.cancel()
            self._settle_timer = None
        if clean:
            settled, self._unsettled = self._unsettled, {}
            for bucket, offsets in settled.items():  # the store's close syncs them
                bucket.pending -= 1
                self.settling -= len(offsets)
                self.store.tombstone(bucket, offsets)
            for settle in list(self._pending):
                settle()  # each takes itself out of the set: the syncer's later call is a no-op
        self._pending.clear()
        self.store.close(clean)

    # --- scheduling (the publish path) -------------------------------------------------

    def schedule(self, vhost: str, exchange: Exchange, message: Message, request: ScheduleRequest) -> bool:
        """Store a job for ``message``; returns True when the store is durable (the
        confirm waits for the fsync).  Raises ``OSError`` when the store cannot write."""
        now = self.clock()
        cron_next = cron_after(request.cron, now) if request.cron else None
        if request.at is not None:
            due = request.at  # in the past: fires at once, as Artemis does
        else:
            due = (cron_next if cron_next is not None else now) + request.delay_ms / 1000.0
        recurring = request.repeat != 0 or request.cron is not None
        kind = KIND_ACTIVEMQ if request.kind == "activemq" else KIND_X_DELAY
        self._store_job(
            vhost, exchange.name, message, kind, due, request.delay_ms, request.period_ms, request.repeat,
            request.repeat, request.cron, cron_next, list(request), recurring, now, 0,
        )
        self.scheduled += 1
        return self.store.durable

    def _store_job(
        self, vhost: str, exchange: str, message: Message, kind: int, due: float, delay: int, period: int,
        repeat: int, repeat_left: int, cron: str | None, cron_next: float | None, extra: list[str],
        recurring: bool, now: float, fired: int,
    ) -> None:
        store = self.store
        # A job already overdue goes to the current bucket (never to one already
        # emptied and deleted); its due time stays exact in the envelope.
        index = RECURRING if recurring else int(max(due, now) // BUCKET_SECONDS)
        bucket = store.bucket_for(index)
        if index == RECURRING and bucket.live is None:
            self._load_recurring()  # a scheduler made without ``recover`` (tools, tests)
        if bucket.live is None and bucket.records == 0:
            if index * BUCKET_SECONDS - LOAD_AHEAD <= now:
                bucket.live = {}  # a new bucket already in the window: nothing to read
                self._window.append(bucket)
            else:
                heapq.heappush(self._unloaded, index)  # loaded when its time comes
        seq = store.next_seq()
        headers = dict(message.headers or {})
        if kind == KIND_ACTIVEMQ:
            for name in AMQ_HEADERS:
                headers.pop(name, None)
            headers[JOB_ID_HEADER] = job_id_for(index, seq)
        else:
            headers[X_DELAY] = -delay
        # published_at 0: a stream stamps the copy with the time it fires, not this one.
        message = message.derive(headers=headers, published_at=0.0)
        job = JobRecord(
            due, seq, kind, delay, period, repeat, repeat_left, fired, cron_next, now, vhost, exchange,
            message.routing_key, cron, extra,
        )
        payload = encode_job(job, encode_record(message, None))
        offset = store.append(bucket, payload, vhost, seq)
        live = bucket.live
        if live is not None:  # in the window (or the recurring log): straight to the heap
            live[seq] = offset
            if recurring:
                self._recurring_vhosts[seq] = vhost
            heapq.heappush(self._heap, (due, seq, bucket, payload))
            if self._timer_due is None or due < self._timer_due:
                self._arm()
        else:
            store.maybe_checkpoint(bucket)
            if self._timer_due is None or index * BUCKET_SECONDS - LOAD_AHEAD < self._timer_due:
                self._arm()

    # --- management --------------------------------------------------------------------

    def count(self, vhost: str | Collection[str] | None = None) -> int:
        recurring = self._recurring_vhosts
        if vhost is None:
            extra = len(recurring)
        elif isinstance(vhost, str):
            extra = sum(1 for name in recurring.values() if name == vhost)
        else:
            extra = sum(1 for name in recurring.values() if name in vhost)
        return self.store.count(vhost) + extra

    def list(
        self, vhost: str | Collection[str] | None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total, one page of jobs in due order) for a vhost, a set of vhosts, or every
        vhost (None).  Whole buckets before the page are skipped by their counts; only
        the buckets the page falls in are read from disk."""
        selection = vhost

        def chosen(name: str) -> bool:
            if selection is None:
                return True
            if isinstance(selection, str):
                return name == selection
            return name in selection

        store = self.store
        recurring: dict[int, list[bytes]] = {}
        bucket = store.recurring
        for seq, where in list((bucket.live or {}).items()):
            if chosen(self._recurring_vhosts.get(seq, "")):
                payload = store.read(bucket, where)
                if payload is not None:
                    recurring.setdefault(int(job_due(payload) // BUCKET_SECONDS), []).append(payload)
        total = store.count(selection) + sum(len(group) for group in recurring.values())
        skip = offset
        page: list[dict[str, Any]] = []
        for index in sorted({*store.buckets, *recurring}):
            if len(page) >= limit:
                break
            one = store.buckets.get(index)
            size = (one.count_in(selection) if one is not None else 0) + len(recurring.get(index, ()))
            if skip >= size:
                skip -= size
                continue
            payloads = list(recurring.get(index, ()))
            if one is not None and one.count_in(selection):
                payloads.extend(p for _o, p in store.records(one))
            jobs = [(job, payload) for payload in payloads if chosen((job := decode_job(payload)).vhost)]
            jobs.sort(key=lambda pair: (pair[0].due, pair[0].seq))
            taken = jobs[skip : skip + limit - len(page)]
            skip = 0
            page.extend(self.describe(job, index, payload) for job, payload in taken)
        return total, page

    def describe(self, job: JobRecord, index: int, payload: bytes) -> dict[str, Any]:
        try:
            size = body_size(payload, job.message_at)
        except Exception:  # a listing must not fail on one odd record
            size = 0
        if job.seq in self._recurring_vhosts:
            index = RECURRING
        return {
            "id": job_id_for(index, job.seq),
            "vhost": job.vhost,
            "due": round(job.due * 1000),
            "due_at": datetime.fromtimestamp(job.due, UTC).isoformat(timespec="milliseconds"),
            "exchange": job.exchange,
            "routing_key": job.routing_key,
            "size": size,
            "kind": KINDS[job.kind],
            "delay": job.delay,
            "period": job.period,
            "repeat": job.repeat,
            "repeat_left": job.repeat_left,
            "cron": job.cron,
            "fired": job.fired,
        }

    def _find(self, vhost: str, job_id: str) -> tuple[Bucket, int, JobRecord, bytes] | None:
        """(bucket, offset, envelope, payload) of a waiting job, reading one bucket at most."""
        where = parse_job_id(job_id)
        if where is None:
            return None
        index, seq = where
        store = self.store
        bucket = store.recurring if index == RECURRING else store.buckets.get(index)
        if bucket is None:
            return None
        if bucket.live is not None:
            offset = bucket.live.get(seq)
            payload = store.read(bucket, offset) if offset is not None else None
        else:
            payload = None
            for where, candidate in store.records(bucket):
                if job_seq(candidate) == seq:
                    offset, payload = where, candidate
                    break
        if payload is None:
            return None
        job = decode_job(payload)
        if job.vhost != vhost:
            return None
        return bucket, offset, job, payload  # type: ignore[return-value]

    def get(self, vhost: str, job_id: str) -> dict[str, Any] | None:
        found = self._find(vhost, job_id)
        if found is None:
            return None
        bucket, _offset, job, payload = found
        return self.describe(job, bucket.index, payload)

    def cancel(self, vhost: str, job_id: str) -> bool:
        """Cancel a job: a tombstone in its bucket (its heap entry, if any, goes stale and
        is skipped).  False if unknown."""
        found = self._find(vhost, job_id)
        if found is None:
            return False
        bucket, offset, job, _payload = found
        self._cancel(bucket, offset, job)
        self.core.request_sync()
        return True

    def _cancel(self, bucket: Bucket, offset: int, job: JobRecord) -> None:
        vhost = job.vhost
        if bucket.live is not None:
            bucket.live.pop(job.seq, None)
        if bucket.index == RECURRING:
            self._recurring_vhosts.pop(job.seq, None)
        else:
            bucket.vhosts[vhost] = bucket.vhosts.get(vhost, 1) - 1
        self.store.tombstone(bucket, [offset])
        self.cancelled += 1
        self._maybe_drop(bucket)

    def vhost_deleted(self, vhost: str) -> None:
        store = self.store
        for bucket in [*store.buckets.values(), store.recurring]:
            if bucket.index != RECURRING and not bucket.vhosts.get(vhost):
                continue
            for offset, payload in store.records(bucket):
                job = decode_job(payload)
                if job.vhost == vhost:
                    self._cancel(bucket, offset, job)
        self.core.request_sync()

    # --- the timer ---------------------------------------------------------------------

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Read time from ``clock`` from now on (tests: a fake clock) and re-arm the timer,
        whose due time was in the old clock's terms."""
        self.clock = clock
        self._arm()

    def wake(self) -> None:
        """Fire whatever is due by ``clock()`` now and re-arm (fake clocks in tests)."""
        for _ in range(1_000_000):  # bounded: each round fires or loads something
            self._tick()
            now = self.clock()
            if self._closed or not (
                self._loading
                or (self._heap and self._heap[0][0] <= now)
                or (self._unloaded and self._unloaded[0] * BUCKET_SECONDS - LOAD_AHEAD <= now)
            ):
                break

    def _arm(self) -> None:
        """One timer, for the earlier of the next due job and the next bucket to load."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_due = None
        if self._closed or self.core.loop is None:
            return
        if self._loading:
            self._timer_due = self.clock()
            self._timer = self.core.loop.call_soon(self._tick)
            return
        heap = self._heap
        while heap and heap[0][1] not in heap[0][2].live:  # type: ignore[operator]
            heapq.heappop(heap)  # stale: cancelled
        due = heap[0][0] if heap else None
        if self._unloaded:
            load_at = self._unloaded[0] * BUCKET_SECONDS - LOAD_AHEAD
            due = load_at if due is None else min(due, load_at)
        if due is None:
            return
        self._timer_due = due
        now = self.clock()
        # Dense due times (1,700/s is one every 0.6 ms) share a tick: at most one per
        # TICK_FLOOR, so each tick's fsync, tombstone write and socket writes serve a
        # handful of jobs instead of one, for at most TICK_FLOOR of added lateness.
        delay = max(due - now, self._last_tick + TICK_FLOOR - now, 0.0)
        self._timer = self.core.loop.call_later(delay, self._tick)

    def _tick(self) -> None:
        """The timer: start loading buckets coming into the window, load a slice, fire
        what is due (at most ``FIRE_BATCH``), and re-arm (``call_soon`` while work is
        left, so one huge backlog cannot starve the loop)."""
        self._timer = None
        self._timer_due = None
        if self._closed:
            return
        now = self.clock()
        self._start_loading(now)
        limit = now
        if self._loading:
            # Jobs of a bucket still being read may be due before what the heap holds:
            # fire only what comes before that bucket, so firing stays in due order.
            limit = min(limit, min(item[0].index for item in self._loading) * BUCKET_SECONDS - 1e-6)
        fired = self.fired
        more = self._fire_due(limit)  # first: what is due does not wait for a load slice
        if self.fired != fired:
            self._last_tick = now  # the floor spaces ticks that fired, not the ones that found nothing
        if self._closed:
            return
        if self._loading:
            self._load_slice()
            more = more or bool(self._heap and self._heap[0][0] <= self.clock())
        for bucket in self._window:
            if not bucket.live:
                self._maybe_drop(bucket)
        if more and self.core.loop is not None:
            self._timer_due = now
            self._timer = self.core.loop.call_soon(self._tick)
        else:
            self._arm()

    def _start_loading(self, now: float) -> None:
        unloaded = self._unloaded
        store = self.store
        while unloaded and unloaded[0] * BUCKET_SECONDS - LOAD_AHEAD <= now:
            index = unloaded[0]
            overdue = (index + 1) * BUCKET_SECONDS <= now
            if overdue and (self._loading or len(self._heap) >= WINDOW_BACKLOG):
                break  # a backlog after downtime: one bucket at a time, as the heap drains
            heapq.heappop(unloaded)
            bucket = store.buckets.get(index)
            if bucket is None or bucket.live is not None:
                continue
            data, dead = store.read_all(bucket)  # one read; walked a slice per callback
            bucket.live = {}
            self._window.append(bucket)
            self.loaded_buckets += 1
            self._loading.append([bucket, data, 0, dead])

    def _load_slice(self) -> None:
        """Walk up to ``LOAD_BATCH`` records of the buckets being loaded onto the heap."""
        budget = LOAD_BATCH
        heap = self._heap
        push = heapq.heappush
        unpack = _DUE_SEQ.unpack_from
        while self._loading and budget > 0:
            item = self._loading[0]
            bucket, data, start, dead = item
            wanted = budget
            records, end = walk_records(data, start, wanted)
            live = bucket.live
            for offset, payload in records:
                if offset not in dead:
                    due, seq = unpack(payload)
                    live[seq] = offset
                    push(heap, (due, seq, bucket, payload))
            budget -= len(records)
            if len(records) < wanted or end >= len(data):
                self._loading.pop(0)  # the whole log read (a torn tail stops it too)
                self._maybe_drop(bucket)
            else:
                item[2] = end

    def _fire_due(self, limit: float) -> bool:
        """Publish every job due by ``limit``, up to ``FIRE_BATCH``; True if more are due.
        Their tombstones are written in one go after the fsync covering the deliveries."""
        heap = self._heap
        pop = heapq.heappop
        settled: dict[Bucket, list[int]] = {}
        fired = 0
        while heap and heap[0][0] <= limit:
            due, seq, bucket, payload = pop(heap)
            live = bucket.live
            offset = live.get(seq)  # type: ignore[union-attr]
            if offset is None:
                continue  # cancelled
            try:
                job = decode_job(payload)
                self._publish(job, payload)
                self.fired += 1
                if bucket.index == RECURRING:
                    self._repeat(job, payload, bucket, seq, due)
                else:
                    del live[seq]  # type: ignore[union-attr]
                    bucket.vhosts[job.vhost] = bucket.vhosts.get(job.vhost, 1) - 1
            except Exception:  # one bad job must not stop the others
                log.exception("scheduler: job %s failed to fire", job_id_for(bucket.index, seq))
                live.pop(seq, None)  # type: ignore[union-attr]
                self._recurring_vhosts.pop(seq, None)
            settled.setdefault(bucket, []).append(offset)
            fired += 1
            if fired >= FIRE_BATCH:
                break
        if settled:
            self._settle_after_sync(settled)
        return bool(heap and heap[0][0] <= limit)

    def _repeat(self, job: JobRecord, payload: bytes, bucket: Bucket, seq: int, due: float) -> None:
        """Rewrite a recurring job with its next due time (or end it)."""
        job.fired += 1
        next_due = self._next_due(job, due, self.clock())
        if next_due is None:
            del bucket.live[seq]  # type: ignore[union-attr]
            self._recurring_vhosts.pop(seq, None)
            return
        job.due = next_due
        new_payload = encode_job(job, memoryview(payload)[job.message_at :])
        bucket.live[seq] = self.store.append(bucket, new_payload, job.vhost, seq)  # type: ignore[index]
        heapq.heappush(self._heap, (next_due, seq, bucket, new_payload))

    def _settle_after_sync(self, settled: dict[Bucket, list[int]]) -> None:
        """Collect fired jobs to tombstone; the batch is handed to the syncer every
        ``SETTLE_INTERVAL`` (not per tick: at most 40 fsync requests a second from
        firing instead of one per tick; a kill -9 re-fires at most the last 25 ms)."""
        unsettled = self._unsettled
        for bucket, offsets in settled.items():
            self.settling += len(offsets)
            known = unsettled.get(bucket)
            if known is None:
                unsettled[bucket] = offsets
                bucket.pending += 1
            else:
                known.extend(offsets)
        loop = self.core.loop
        if loop is None or self.core.storage is None:
            self._flush_unsettled()
        elif self._settle_timer is None:
            self._settle_timer = loop.call_later(SETTLE_INTERVAL, self._flush_unsettled)

    def _flush_unsettled(self) -> None:
        """Tombstone the collected jobs once the fsync covering their deliveries (and
        rewrites) is done: a crash before then delivers again, never loses."""
        self._settle_timer = None
        settled, self._unsettled = self._unsettled, {}
        if not settled:
            return
        store = self.store
        pending = self._pending

        def settle() -> None:
            if settle not in pending and self.core.storage is not None:
                return  # already run (at close)
            pending.discard(settle)
            for bucket, offsets in settled.items():
                bucket.pending -= 1
                self.settling -= len(offsets)
                store.tombstone(bucket, offsets)
                store.maybe_checkpoint(bucket)
                self._maybe_drop(bucket)
                if (
                    bucket.index == RECURRING and bucket.pending == 0
                    and bucket.records > 2 * len(bucket.live or ()) + RECURRING_COMPACT_MIN
                ):
                    store.compact_recurring()

        def failed(exc: BaseException) -> None:
            pending.discard(settle)  # no tombstone: the jobs fire again after a restart
            for bucket, offsets in settled.items():
                bucket.pending -= 1
                self.settling -= len(offsets)

        if self.core.after_sync(settle, failed):
            pending.add(settle)
        else:
            settle()

    def _maybe_drop(self, bucket: Bucket) -> None:
        """Delete a loaded bucket's files once every job in it is done and settled and no
        new job can land in it (its time span is over)."""
        if (
            bucket.index != RECURRING and bucket.live is not None and not bucket.live and bucket.pending == 0
            and not bucket.deleted and (bucket.index + 1) * BUCKET_SECONDS <= self.clock()
            and not any(item[0] is bucket for item in self._loading)
        ):
            self.store.drop(bucket)
            self._window = [other for other in self._window if other is not bucket]

    @staticmethod
    def _next_due(job: JobRecord, due: float, now: float) -> float | None:
        repeat_left = job.repeat_left
        period = job.period / 1000.0
        if repeat_left != 0:
            if repeat_left > 0:
                job.repeat_left = repeat_left - 1
                return due + period
            # Until cancelled: after downtime, skip the missed periods (deliver once now,
            # then keep the phase) instead of a burst of every one of them.
            next_due = due + period
            if next_due < now:
                next_due += ((now - next_due) // period + 1) * period
            return next_due
        if job.cron:
            cron_next = cron_after(job.cron, max(job.cron_next or now, now))
            job.cron_next = cron_next
            job.repeat_left = job.repeat
            return cron_next + job.delay / 1000.0
        return None

    def _publish(self, job: JobRecord, payload: bytes) -> None:
        core = self.core
        vhost = core.vhosts.get(job.vhost)
        exchange = vhost.exchanges.get(job.exchange) if vhost is not None else None
        if vhost is None or exchange is None:
            self.dropped += 1
            core.counters["unroutable"] += 1
            log.warning(
                "scheduler: job %s dropped: exchange '%s' in vhost '%s' no longer exists",
                job.seq, job.exchange, job.vhost,
            )
            return
        publisher = self._publishers.get(vhost.name)
        if publisher is None or publisher.vhost is not vhost:
            from .publish import Publisher

            publisher = self._publishers[vhost.name] = Publisher(core, vhost, "", None)
        message, _expires = decode_record(payload[job.message_at :])
        outcome = publisher.deliver(exchange, message, job.extra or None, False)
        publisher.take_replicating()
        if outcome & 1:  # UNROUTABLE
            self.dropped += 1

