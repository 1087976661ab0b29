"""Group commit: one fsync job at a time, covering everything written before it started.

Theory of operation
-------------------
Writers (segments, ack files, the data directory) call ``mark_dirty(file)`` after they
buffer a write; whoever needs durability (publisher confirms) calls
``after_sync(callback)``.  The first of these in a loop turn schedules a job with
``call_soon`` so every publish handled in the same turn joins it.  A job:

1. on the loop thread, takes the whole dirty set and the callback list, and ``flush()``es
   each file (user-space buffer -> kernel; a plain write, cheap);
2. in a dedicated worker thread, fsyncs those descriptors;
3. back on the loop thread, runs the callbacks it took.  If anything was marked dirty or
   requested while it ran, the next job starts at once.

So the number of fsyncs adapts to load with no timer: one publisher gets one fsync per
message, a thousand concurrent ones share each fsync (LavinMQ, nats-server and
PostgreSQL's group commit work the same way).

Failure rules:

* A failed **fsync** is fatal.  After a failed fsync the kernel may have dropped the dirty
  pages and cleared the error ("fsyncgate", PostgreSQL 2018), so retrying could report
  success for data that is gone.  The syncer calls ``on_fatal(exc)`` (the broker
  closes its listeners, closes its stores without a clean-shutdown marker and exits
  with status 74, EX_IOERR, so a supervisor restarts it and recovery re-reads the
  log), drops every callback, and refuses to run any later one: a confirm is never
  sent for data that may not be on disk.
* A failed **flush** (a buffered write hitting ENOSPC, say) is not fatal: the file
  itself is now failed (sticky) and its owner reports that.  The callbacks of that job
  cannot be honoured, so each one's ``on_error(exc)`` runs instead (the broker nacks).

Writers that buffer *in memory* before writing at all (a stream batches the records
of a loop turn into one RecordBatch) register ``before_flush(hook)``: each job runs the
hooks first, on the loop thread, so what they write is in that job's dirty set and its
fsync covers every confirm registered before the job began.  A hook that raises
``StorageError`` fails the job's callbacks as a failed flush does.

Holding a job for consumers' acks (write-behind queue stores, ``defer``)
-----------------------------------------------------------------------
A write-behind store (``storage/queue_store.py``) keeps persistent messages in memory
until a job needs them written, and never writes one that a consumer acks first.  It
registers itself with ``defer(store)`` instead of a plain hook.  When a job is about to
start and some deferring store says ``worth_waiting()`` (a message it would write has
been handed to a consumer), the job is *held* for up to ``hold`` seconds, once
(PostgreSQL's ``commit_delay``; RabbitMQ's message store confirms on a timer too):

* At the start of the hold the job is *cut*: it takes the callbacks registered so far,
  and every deferring store notes which of its messages those cover (``cut()``: the
  ones appended so far).  Callbacks registered during the hold belong to the next job,
  and so do the messages appended meanwhile; each message gets its full hold.
* A store whose covered messages have all been settled during the hold ``release``s
  it; once every store that asked for the hold has, the job starts at once.
* The job then calls ``write_deferred(whole=False)``: each store writes only its
  covered messages still unsettled, and defers itself again for the rest.  Unheld jobs
  (and ``sync_now``) call ``write_deferred(whole=True)``.
* A job with nothing to fsync runs its callbacks on the loop thread at once, without
  the worker round trip.

So with a consumer that acks within the hold a confirmed persistent message costs no
write and no fsync at all.  A queue nobody consumes never holds a job.

Early release.  Deferred messages take their provisional positions from one counter
here (``next_pending``), so "every deferred message appended before this callback"
is "every pending position below the callback's mark".  A callback registered while
nothing was dirty and no job ran (everything written before it is on disk) is
*clean*; while no deferred message has been written since it was registered, it is
safe as soon as every store's oldest pending position is at or above its mark, that
is, when every deferred message before it has been settled.  Settles of deferred
messages (``settled_pending``) schedule one check per loop turn, which runs the
longest prefix of waiting callbacks that are safe, in order, without waiting for the
job: a publisher's confirm follows its consumer's ack instead of the whole hold.  A
deferred write (``note_deferred_write``) makes every callback registered so far wait
for its job, as before.

Without a running event loop (unit tests, tools, shutdown) nothing is scheduled;
``sync_now()`` does a whole job synchronously.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from .segment import StorageError

# Provisional positions of deferred messages: above every real queue position (a
# segment id stays far below 2**30), so they compare as the newest (queue_store.py).
PENDING_BASE = 1 << 62

__all__ = ["DEFAULT_HOLD", "PENDING_BASE", "Deferring", "Syncer", "SyncTarget"]

log = logging.getLogger("baedal.storage")

# How long a job may be held for consumers' acks ("Holding a job" above): long enough
# for a busy loop to read the acks of what it just delivered (1 ms was not, measured).
DEFAULT_HOLD = 0.005


class SyncTarget(Protocol):
    """Anything with a descriptor; ``flush()`` (optional) pushes user-space buffers."""

    def fileno(self) -> int: ...


class Deferring(Protocol):
    """A writer that holds messages in memory for the sync job ("Holding a job")."""

    def worth_waiting(self) -> bool: ...

    def cut(self) -> bool: ...

    def oldest_pending(self) -> int | None: ...

    def write_deferred(self, *, whole: bool) -> None: ...


Callback = Callable[[], Any]
ErrorCallback = Callable[[BaseException], Any]


def _fsync_all(fds: Iterable[int], fsync: Callable[[int], Any] | None = None) -> None:
    if fsync is None:
        fsync = os.fsync  # looked up per job so tests can monkeypatch os.fsync
    for fd in fds:
        fsync(fd)


class Syncer:
    """The one place that calls fsync.  All methods run on the event-loop thread."""

    def __init__(
        self,
        *,
        on_fatal: Callable[[BaseException], Any] | None = None,
        loop: asyncio.AbstractEventLoop | None = None,
        hold: float = DEFAULT_HOLD,
    ) -> None:
        self.on_fatal = on_fatal
        self._loop = loop
        self.hold = hold
        self._dirty: dict[int, Any] = {}  # id(target) -> target; insertion-ordered
        # (callback, on_error, mark): mark is the pending-position mark of a clean
        # callback ("Early release"), -1 for one that must wait for its job.
        self._callbacks: list[tuple[Callback, ErrorCallback | None, int]] = []
        self._before_flush: list[Callback] = []
        self._deferring: dict[Deferring, None] = {}  # insertion-ordered set
        # A held job ("Holding a job"): its timer, its callbacks, the stores it waits for.
        self._hold_handle: asyncio.TimerHandle | None = None
        self._held_callbacks: list[tuple[Callback, ErrorCallback | None, int]] | None = None
        self._held_for: set[Deferring] = set()
        # Early release: provisional positions of deferred messages (one counter for
        # every store), and whether a check is scheduled for this loop turn.
        self.next_pending = PENDING_BASE
        self._early_scheduled = False
        self._in_flight: dict[int, Any] = {}
        self._retired: list[tuple[Any, Callable[[], Any]]] = []
        self._scheduled = False
        self._running = False
        self._executor: ThreadPoolExecutor | None = None
        self.failure: BaseException | None = None
        # What the worker calls per descriptor; None means os.fsync.  Only the broker's
        # wiring (app.py) replaces it, for the documented test-only fault injection.
        self.fsync_function: Callable[[int], Any] | None = None
        # Counters for tests, metrics and benchmarks.
        self.fsync_jobs = 0
        self.callbacks_run = 0
        self.holds = 0  # jobs held for consumers' acks
        self.jobs = 0  # jobs started (with or without an fsync)
        self.jobs_without_fsync = 0  # jobs that found nothing to fsync
        self.released_early = 0  # callbacks run by early release, before their job

    # -- requests ----------------------------------------------------------------------

    def mark_dirty(self, target: Any) -> None:
        """``target`` (file object with fileno()/flush(), or an int fd) has unsynced writes."""
        key = id(target)
        if key not in self._dirty:
            self._dirty[key] = target
            if not self._scheduled and not self._running:
                self._kick()

    def after_sync(self, callback: Callback, on_error: ErrorCallback | None = None) -> None:
        """Run ``callback()`` on the loop once an fsync covering every earlier write is done.

        If that cannot happen because a buffered write failed, ``on_error(exc)`` runs
        instead.  After a fatal fsync failure neither ever runs.
        """
        if self.failure is not None:
            return
        clean = not self._dirty and not self._running and not self._before_flush
        self._callbacks.append((callback, on_error, self.next_pending if clean else -1))
        if not self._scheduled and not self._running:
            self._kick()

    def before_flush(self, hook: Callback) -> None:
        """Run ``hook()`` once, at the start of the next job, before it takes the dirty set.

        For writers that hold records in memory until then (one write per loop turn
        instead of one per record); the hook writes them and marks its files dirty.
        """
        self._before_flush.append(hook)
        if not self._scheduled and not self._running and self.failure is None:
            self._kick()

    def defer(self, store: Deferring) -> None:
        """``store`` holds messages for the next job ("Holding a job"): that job calls
        ``store.write_deferred(...)`` first.  Registered during a hold, the store is
        cut at once: what it holds now belongs to the job after the held one."""
        if store in self._deferring:
            return
        self._deferring[store] = None
        if self._hold_handle is not None:
            store.cut()
        elif not self._scheduled and not self._running and self.failure is None:
            self._kick()

    def release(self, store: Deferring) -> None:
        """Every message of ``store`` the held job covers was settled: stop waiting for
        it (the job starts once no store is waited for)."""
        held_for = self._held_for
        if store in held_for:
            held_for.discard(store)
            if not held_for and self._hold_handle is not None:
                self._hold_handle.cancel()
                self._hold_handle = None
                loop = self._running_loop()
                assert loop is not None  # a hold exists only on a loop
                loop.call_soon(self._start_job, loop)  # _scheduled stays True meanwhile

    def note_deferred_write(self) -> None:
        """A deferring store wrote deferred messages: every callback registered so far
        waits for its job (its fsync covers them)."""
        callbacks = self._callbacks
        for index, item in enumerate(callbacks):
            if item[2] >= 0:
                callbacks[index] = (item[0], item[1], -1)
        held = self._held_callbacks
        if held:
            for index, item in enumerate(held):
                if item[2] >= 0:
                    held[index] = (item[0], item[1], -1)

    def settled_pending(self) -> None:
        """A deferring store settled a deferred message: check for early release once
        this loop turn ("Early release")."""
        if self._early_scheduled or (not self._callbacks and not self._held_callbacks):
            return
        loop = self._running_loop()
        if loop is None:
            return
        self._early_scheduled = True
        loop.call_soon(self._release_early)

    def _release_early(self) -> None:
        self._early_scheduled = False
        if self.failure is not None:
            return
        oldest = self.next_pending
        for store in self._deferring:
            first = store.oldest_pending()
            if first is not None and first < oldest:
                oldest = first
        for callbacks in (self._held_callbacks, self._callbacks):
            if not callbacks:
                continue
            count = 0
            for _callback, _on_error, mark in callbacks:
                if mark < 0 or mark > oldest:
                    break
                count += 1
            if not count:
                return
            ready = callbacks[:count]
            del callbacks[:count]
            self.released_early += count
            self._run_callbacks(ready, None)
            if callbacks:
                return  # the rest must wait: keep the order

    @property
    def holding(self) -> bool:
        return self._hold_handle is not None

    def _end_hold(self, loop: asyncio.AbstractEventLoop) -> None:
        self._hold_handle = None
        self._start_job(loop)

    def forget(self, target: Any) -> None:
        """Drop ``target`` from the dirty set: its owner has synced it itself (close)."""
        self._dirty.pop(id(target), None)

    def retire(self, target: Any, close: Callable[[], Any]) -> None:
        """Call ``close()`` once ``target`` is neither dirty nor being fsynced.

        Closing a descriptor that a worker thread is about to fsync could fsync an
        unrelated file that reused the number; this defers the close past that job.
        """
        key = id(target)
        if key in self._dirty or key in self._in_flight:
            self._retired.append((target, close))
        else:
            close()

    @property
    def busy(self) -> bool:
        return self._running or self._has_work()

    def _has_work(self) -> bool:
        return bool(
            self._dirty
            or self._callbacks
            or self._before_flush
            or self._deferring
            or self._held_callbacks is not None
        )

    def synced(self) -> asyncio.Future[None]:
        """A future that resolves after the next covering fsync (convenience for awaiters)."""
        loop = self._loop or asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()

        def done() -> None:
            if not future.done():
                future.set_result(None)

        def failed(exc: BaseException) -> None:
            if not future.done():
                future.set_exception(exc)

        self.after_sync(done, failed)
        return future

    # -- scheduling --------------------------------------------------------------------

    def _running_loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop jobs run on; None without one (the caller drives ``sync_now()``)."""
        if self._loop is not None:
            return self._loop
        try:
            return asyncio.get_running_loop()
        except RuntimeError:
            return None

    def _kick(self) -> None:
        if self.failure is not None:
            return
        loop = self._running_loop()
        if loop is None:
            return  # no loop: the caller drives sync_now()
        self._scheduled = True
        loop.call_soon(self._start_job, loop)

    def _take_batch(
        self,
    ) -> tuple[
        dict[int, Any],
        list[tuple[Callback, ErrorCallback | None, int]],
        list[int],
        StorageError | None,
    ]:
        self.jobs += 1
        flush_error: StorageError | None = None
        held = self._held_callbacks
        if self._before_flush or self._deferring:
            flush_error = self._run_before_flush(whole=held is None)
        targets = self._dirty
        self._dirty = {}
        if held is not None:  # a held job: the callbacks of its cut
            callbacks = held
            self._held_callbacks = None
            self._held_for = set()
        else:
            callbacks = self._callbacks
            self._callbacks = []
        fds: list[int] = []
        for target in targets.values():
            if isinstance(target, int):
                fds.append(target)
                continue
            flush = getattr(target, "flush", None)
            if flush is not None:
                try:
                    flush()
                except StorageError as exc:
                    # The file is now failed (sticky); its owner reports the error on
                    # the next write.  Only the confirms are affected here.
                    flush_error = exc
                    continue
            fd = target.fileno()
            if fd >= 0:
                fds.append(fd)
        return targets, callbacks, fds, flush_error

    def _run_before_flush(self, whole: bool) -> StorageError | None:
        hooks = self._before_flush
        self._before_flush = []
        stores = self._deferring
        self._deferring = {}
        error: StorageError | None = None
        scheduled = self._scheduled
        self._scheduled = True  # their mark_dirty() joins this job, it must not kick another
        try:
            for store in stores:
                try:
                    store.write_deferred(whole=whole)
                except StorageError as exc:
                    error = exc
            for hook in hooks:
                try:
                    hook()
                except StorageError as exc:
                    error = exc
        finally:
            self._scheduled = scheduled
        return error

    def _start_job(self, loop: asyncio.AbstractEventLoop) -> None:
        self._scheduled = False
        if self._running or self.failure is not None:
            return
        if not self._has_work():
            self._close_retired()
            return
        if (
            self._held_callbacks is None
            and self._deferring
            and self.hold > 0
            and any(store.worth_waiting() for store in self._deferring)
        ):
            # Hold the job: cut it here (module docstring, "Holding a job").
            self.holds += 1
            self._held_callbacks = self._callbacks
            self._callbacks = []
            self._held_for = {store for store in self._deferring if store.cut()}
            self._scheduled = True  # requests in the meantime wait for the job after
            self._hold_handle = loop.call_later(self.hold, self._end_hold, loop)
            return
        targets, callbacks, fds, flush_error = self._take_batch()
        if not fds:
            # Nothing to fsync: every write before these callbacks is on disk already,
            # or was never needed (write-behind messages settled before their write).
            self.jobs_without_fsync += 1
            self._close_retired()
            self._running = True  # a callback's new requests only mark work for later
            try:
                self._run_callbacks(callbacks, flush_error)
            finally:
                self._running = False
            if self._has_work() and self.failure is None:
                self._kick()
            return
        self._running = True
        self._in_flight = targets
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="baedal-fsync")
        future = loop.run_in_executor(self._executor, _fsync_all, fds, self.fsync_function)
        future.add_done_callback(lambda done: self._job_done(done, loop, callbacks, flush_error))

    def _job_done(
        self,
        done: asyncio.Future[None],
        loop: asyncio.AbstractEventLoop,
        callbacks: list[tuple[Callback, ErrorCallback | None, int]],
        flush_error: StorageError | None,
    ) -> None:
        self._running = False
        self._in_flight = {}
        exc = done.exception() if not done.cancelled() else asyncio.CancelledError()
        if exc is not None:
            self._fatal(exc)
            return
        self.fsync_jobs += 1
        self._close_retired()
        self._run_callbacks(callbacks, flush_error)
        if self._has_work() and self.failure is None:
            self._start_job(loop)

    def _run_callbacks(
        self,
        callbacks: list[tuple[Callback, ErrorCallback | None, int]],
        flush_error: StorageError | None,
    ) -> None:
        for callback, on_error, _mark in callbacks:
            try:
                if flush_error is None:
                    callback()
                    self.callbacks_run += 1
                elif on_error is not None:
                    on_error(flush_error)
            except Exception:  # one bad callback must not starve the others
                log.exception("sync callback %r failed", callback)
        if flush_error is not None and callbacks:
            log.error(
                "write failed before fsync, %d durability callbacks failed: %s",
                len(callbacks),
                flush_error,
            )

    def _close_retired(self) -> None:
        if not self._retired:
            return
        keep = []
        for target, close in self._retired:
            key = id(target)
            if key in self._dirty or key in self._in_flight:
                keep.append((target, close))
            else:
                try:
                    close()
                except OSError:
                    log.exception("closing retired file %r failed", target)
        self._retired = keep

    def _fatal(self, exc: BaseException) -> None:
        self.failure = exc
        dropped = len(self._callbacks)
        self._callbacks.clear()
        self._dirty.clear()
        self._before_flush.clear()
        self._deferring.clear()
        self._cancel_hold()
        self._held_callbacks = None
        log.critical(
            "fsync failed, storage can no longer promise durability (%d callbacks dropped): %s",
            dropped,
            exc,
        )
        if self.on_fatal is not None:
            self.on_fatal(exc)

    # -- synchronous use ---------------------------------------------------------------

    def sync_now(self) -> None:
        """Flush and fsync everything dirty, then run the waiting callbacks, right here.

        For tests, tools and shutdown.  A failed fsync calls ``on_fatal`` and raises
        ``StorageError``.
        """
        if self.failure is not None:
            raise StorageError(
                getattr(self.failure, "errno", None), f"syncer failed earlier: {self.failure}"
            )
        if self._running:
            raise RuntimeError("sync_now() while an fsync job is running")
        if self._held_callbacks is not None:  # a held job: this is it, whole, and the next
            self._cancel_hold()
            self._callbacks = self._held_callbacks + self._callbacks
            self._held_callbacks = None
            self._held_for = set()
        _targets, callbacks, fds, flush_error = self._take_batch()
        try:
            _fsync_all(fds, self.fsync_function)
        except OSError as exc:
            self._fatal(exc)
            raise StorageError(exc.errno, f"fsync failed: {exc.strerror or exc}") from exc
        self.fsync_jobs += 1
        self._close_retired()
        self._run_callbacks(callbacks, flush_error)

    def _cancel_hold(self) -> None:
        if self._hold_handle is not None:
            self._hold_handle.cancel()
            self._hold_handle = None
            self._scheduled = False

    def close(self) -> None:
        """Stop the worker thread (after the job in flight, if any)."""
        self._cancel_hold()
        if self._executor is not None:
            self._executor.shutdown(wait=True)
            self._executor = None
