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
routing.  ``schedule`` writes the job to the schedule store (storage/schedule_store.py:
a segment log, group-committed by the broker's one ``Syncer``) and returns whether the
publisher's confirm must wait for an fsync, exactly as for a persistent message reaching
a durable queue; so a confirm is sent only once the job is on disk.

Memory holds, per job, its id, vhost, due time, store position and size (``Job``), plus
a heap of (due, sequence, id).  Bodies stay on disk: a job is read back when it fires or
is listed.  One timer (``loop.call_later``) is armed for the earliest due time; never a
task or timer per message.  When it fires, every job due by then is published through
the one publish path (``Publisher.deliver``, routing as of that moment: bindings added or
removed since the publish count, as in the plugin), at most ``FIRE_BATCH`` per callback
(the rest continue with ``call_soon``, so one huge backlog cannot starve the loop).  A
repeating job is rewritten with its next due time; the old record is settled only after
the fsync covering the delivery (``after_sync``), so a crash in between delivers at
least once rather than losing a repetition.  A cancelled or rewritten job leaves a stale
heap entry that is skipped when popped (lazy deletion: cancel costs O(1)).

Due times are wall-clock (``clock``, seconds since the epoch) so they keep their meaning
across a restart; at start-up the store's records rebuild the heap and anything overdue
fires at once, in due order.  ``clock`` can be replaced (tests use a fake clock and call
``wake()``); the timer then re-checks the head against the clock whenever it fires.

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
import time
import uuid
from collections.abc import Callable, Collection, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

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
# The loop's monotonic timer and the wall clock are different clocks: a timer may fire
# a hair before the wall clock says a job is due.  Then the timer is re-armed for the
# rest (microseconds) rather than firing early: never before the due time.
EARLY_TOLERANCE = 0.0


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


class Job:
    """One scheduled job as memory keeps it: ids and times, never the body."""

    __slots__ = ("id", "vhost", "due", "position", "size")

    def __init__(self, job_id: str, vhost: str, due: float, position: int, size: int) -> None:
        self.id = job_id
        self.vhost = vhost
        self.due = due
        self.position = position
        self.size = size


class Scheduler:
    """The broker's scheduled messages (see the module docstring)."""

    def __init__(self, core: BrokerCore, store: Any, *, clock: Callable[[], float] = time.time) -> None:
        self.core = core
        self.store = store
        self.clock = clock
        self.jobs: dict[str, Job] = {}
        self._heap: list[tuple[float, int, str]] = []
        self._sequence = 0
        self._timer: Any = None
        self._timer_due: float | None = None
        self._publishers: dict[str, Any] = {}
        self._pending_settles: set[int] = set()
        self._closed = False
        # Counters (metrics, tests).
        self.scheduled = 0
        self.fired = 0
        self.dropped = 0
        self.cancelled = 0

    # --- start-up ----------------------------------------------------------------------

    def recover(self) -> int:
        """Rebuild the heap from the store; returns how many jobs came back.  Reads each
        job's state, not its message, and keeps only what a ``Job`` holds."""
        latest: dict[str, Job] = {}
        stale: list[int] = []
        for stored in self.store.recover():
            state = stored.state
            job_id = state.get("id")
            if not isinstance(job_id, str):
                stale.append(stored.position)
                continue
            earlier = latest.get(job_id)
            if earlier is not None:
                # A rewrite interrupted by a crash: the later record is the job.
                if earlier.position > stored.position:
                    stale.append(stored.position)
                    continue
                stale.append(earlier.position)
            latest[job_id] = Job(job_id, state.get("vhost", "/"), stored.due, stored.position, state.get("size", 0))
        for position in stale:
            self.store.remove(position)
        for job in latest.values():
            self.jobs[job.id] = job
            self._push(job)
        if latest:
            log.info("scheduler: %d scheduled message(s) recovered", len(latest))
        return len(latest)

    def start(self) -> None:
        self._arm()

    def close(self, clean: bool = True) -> None:
        """Stop the timer and close the store.  Settles still waiting for an fsync are
        done now (the store's close syncs them with everything else); after a failed
        fsync (``clean=False``) they are left, so the jobs fire again after restart."""
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if clean:
            for position in self._pending_settles:
                self.store.remove(position)
        self._pending_settles.clear()
        self.store.close(clean)

    # --- scheduling (the publish path) -------------------------------------------------

    def schedule(self, vhost: str, exchange: Exchange, message: Message, request: ScheduleRequest) -> bool:
        """Store a job for ``message``; returns True when the store is durable (the
        confirm waits for the fsync).  Raises ``OSError`` when the store cannot write."""
        now = self.clock()
        job_id = uuid.uuid4().hex
        headers = dict(message.headers or {})
        if request.kind == "activemq":
            for name in AMQ_HEADERS:
                headers.pop(name, None)
            headers[JOB_ID_HEADER] = job_id
        else:
            headers[X_DELAY] = -request.delay_ms
        # published_at 0: a stream stamps the copy with the time it fires, not this one.
        message = message.derive(headers=headers, published_at=0.0)
        cron_next = cron_after(request.cron, now) if request.cron else None
        if request.at is not None:
            due = request.at  # in the past: fires at once, as Artemis does
        else:
            due = (cron_next if cron_next is not None else now) + request.delay_ms / 1000.0
        state = {
            "id": job_id,
            "vhost": vhost,
            "exchange": exchange.name,
            "routing_key": message.routing_key,
            "extra": list(request),
            "kind": request.kind,
            "delay": request.delay_ms,
            "period": request.period_ms,
            "repeat": request.repeat,
            "repeat_left": request.repeat,
            "cron": request.cron,
            "cron_next": cron_next,
            "fired": 0,
            "created": now,
            "size": len(message.body),
        }
        position, _stored = self.store.write(state, message, due)
        job = Job(job_id, vhost, due, position, len(message.body))
        self.jobs[job_id] = job
        self.scheduled += 1
        self._push(job)
        if self._timer_due is None or due < self._timer_due:
            self._arm()
        return self.store.durable

    # --- management --------------------------------------------------------------------

    def count(self, vhost: str | None = None) -> int:
        if vhost is None:
            return len(self.jobs)
        return sum(1 for job in self.jobs.values() if job.vhost == vhost)

    def list(
        self, vhost: str | Collection[str] | None, offset: int = 0, limit: int = 100
    ) -> tuple[int, list[dict[str, Any]]]:
        """(total, one page of jobs in due order) for a vhost, a set of vhosts, or every
        vhost (None).  Only the page's jobs are read from the store."""
        if vhost is None:
            jobs: Collection[Job] = self.jobs.values()
        elif isinstance(vhost, str):
            jobs = [job for job in self.jobs.values() if job.vhost == vhost]
        else:
            jobs = [job for job in self.jobs.values() if job.vhost in vhost]
        page = heapq.nsmallest(offset + limit, jobs, key=lambda job: (job.due, job.id))[offset:]
        return len(jobs), [self.describe(job) for job in page]

    def describe(self, job: Job) -> dict[str, Any]:
        stored = self.store.read(job.position)
        state = stored.state if stored is not None else {}
        repeat_left = state.get("repeat_left", 0)
        return {
            "id": job.id,
            "vhost": job.vhost,
            "due": round(job.due * 1000),
            "due_at": datetime.fromtimestamp(job.due, UTC).isoformat(timespec="milliseconds"),
            "exchange": state.get("exchange", ""),
            "routing_key": state.get("routing_key", ""),
            "size": job.size,
            "kind": state.get("kind", ""),
            "delay": state.get("delay", 0),
            "period": state.get("period", 0),
            "repeat": state.get("repeat", 0),
            "repeat_left": repeat_left,
            "cron": state.get("cron"),
            "fired": state.get("fired", 0),
        }

    def get(self, vhost: str, job_id: str) -> dict[str, Any] | None:
        job = self.jobs.get(job_id)
        if job is None or job.vhost != vhost:
            return None
        return self.describe(job)

    def cancel(self, vhost: str, job_id: str) -> bool:
        """Remove a job; its heap entry goes stale and is skipped.  False if unknown."""
        job = self.jobs.get(job_id)
        if job is None or job.vhost != vhost:
            return False
        del self.jobs[job_id]
        self.store.remove(job.position)
        self.core.request_sync()
        self.cancelled += 1
        return True

    def vhost_deleted(self, vhost: str) -> None:
        for job in [job for job in self.jobs.values() if job.vhost == vhost]:
            self.cancel(vhost, job.id)

    # --- the timer ---------------------------------------------------------------------

    def set_clock(self, clock: Callable[[], float]) -> None:
        """Read time from ``clock`` from now on (tests: a fake clock) and re-arm the timer,
        whose due time was in the old clock's terms."""
        self.clock = clock
        self._arm()

    def wake(self) -> None:
        """Fire whatever is due by ``clock()`` now and re-arm (fake clocks in tests)."""
        self._fire_due()

    def _push(self, job: Job) -> None:
        self._sequence += 1
        heapq.heappush(self._heap, (job.due, self._sequence, job.id))

    def _arm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_due = None
        if self._closed:
            return
        heap = self._heap
        jobs = self.jobs
        while heap and (heap[0][2] not in jobs or jobs[heap[0][2]].due != heap[0][0]):
            heapq.heappop(heap)  # stale: cancelled or rewritten
        if not heap or self.core.loop is None:
            return
        due = heap[0][0]
        self._timer_due = due
        self._timer = self.core.loop.call_later(max(0.0, due - self.clock()), self._fire_due)

    def _fire_due(self) -> None:
        self._timer = None
        self._timer_due = None
        if self._closed:
            return
        now = self.clock()
        heap = self._heap
        jobs = self.jobs
        fired = 0
        while heap and heap[0][0] <= now + EARLY_TOLERANCE:
            due, _sequence, job_id = heapq.heappop(heap)
            job = jobs.get(job_id)
            if job is None or job.due != due:
                continue
            try:
                self._fire(job, now)
            except Exception:  # one bad job must not stop the others
                log.exception("scheduler: job %s failed to fire", job_id)
                jobs.pop(job_id, None)
            fired += 1
            if fired >= FIRE_BATCH and self.core.loop is not None:
                self._timer_due = now
                self._timer = self.core.loop.call_soon(self._fire_due)
                return
        self._arm()

    def _fire(self, job: Job, now: float) -> None:
        stored = self.store.read(job.position)
        if stored is None:  # lost with a failed write
            del self.jobs[job.id]
            return
        state = stored.state
        message = stored.message
        self._publish(state, message)
        self.fired += 1
        state["fired"] = state.get("fired", 0) + 1
        old_position = job.position
        next_due = self._next_due(state, job.due, now)
        if next_due is None:
            del self.jobs[job.id]
        else:
            job.position, _size = self.store.write(state, message, next_due)
            job.due = next_due
            self._push(job)
        self._settle_after_sync(old_position)

    def _settle_after_sync(self, position: int) -> None:
        """Settle a job's old record once the fsync covering the delivery it made (and
        its rewrite) is done: a crash before then delivers again, never loses."""
        store = self.store
        pending = self._pending_settles
        pending.add(position)

        def settle() -> None:
            if position in pending:
                pending.discard(position)
                store.remove(position)

        def failed(exc: BaseException) -> None:
            pending.discard(position)  # the record stays: the job fires again after restart

        if not self.core.after_sync(settle, failed):
            settle()

    @staticmethod
    def _next_due(state: dict[str, Any], due: float, now: float) -> float | None:
        repeat_left = state.get("repeat_left", 0)
        period = state.get("period", 0) / 1000.0
        if repeat_left != 0:
            if repeat_left > 0:
                state["repeat_left"] = repeat_left - 1
                return due + period
            # Until cancelled: after downtime, skip the missed periods (deliver once now,
            # then keep the phase) instead of a burst of every one of them.
            next_due = due + period
            if next_due < now:
                next_due += ((now - next_due) // period + 1) * period
            return next_due
        cron = state.get("cron")
        if cron:
            cron_next = cron_after(cron, max(state.get("cron_next") or now, now))
            state["cron_next"] = cron_next
            state["repeat_left"] = state.get("repeat", 0)
            return cron_next + state.get("delay", 0) / 1000.0
        return None

    def _publish(self, state: dict[str, Any], message: Message) -> None:
        core = self.core
        vhost = core.vhosts.get(state.get("vhost", "/"))
        exchange = vhost.exchanges.get(state.get("exchange", "")) if vhost is not None else None
        if vhost is None or exchange is None:
            self.dropped += 1
            core.counters["unroutable"] += 1
            log.warning(
                "scheduler: job %s dropped: exchange '%s' in vhost '%s' no longer exists",
                state.get("id"), state.get("exchange"), state.get("vhost"),
            )
            return
        publisher = self._publishers.get(vhost.name)
        if publisher is None or publisher.vhost is not vhost:
            from .publish import Publisher

            publisher = self._publishers[vhost.name] = Publisher(core, vhost, "", None)
        extra = state.get("extra") or None
        outcome = publisher.deliver(exchange, message, extra, False)
        publisher.take_replicating()
        if outcome & 1:  # UNROUTABLE
            self.dropped += 1

