"""``SegmentStore``: a durable queue's ``MessageStore`` on the segment log, in bounded memory.

Theory of operation
-------------------
A store owns one directory of segment files (``NNNNNNNNNN.seg``) and their ack files
(``NNNNNNNNNN.ack``).  Every appended message becomes one record in the current writer
segment; its queue position is ``segment_id << 32 | offset``, so positions strictly
increase in publish order and are the records' addresses.  Segments are written in the
stream's format (``queue_log``: one RecordBatch v2 batch per message, ``baseOffset`` =
the position); segments of the old record format (version 1) are still recovered and
read until drained, never appended to.

Memory holds only:

* the **window** (``_ready``): up to ``read_ahead`` entries / ``read_ahead_bytes`` of
  loaded, ready entries, contiguous in position order, at the head of the queue;
* the **requeued** heap: delivered entries put back (bounded by the consumers' unacked
  limits, not by queue depth);
* the **cursor**: (segment, offset) of the first ready record *not* in the window, plus
  ``_unloaded``, how many ready records lie from there to the tail;
* per segment a few counters (records, settled), its ack file while it takes acks, and,
  only for recovered segments, a sorted ``array`` of offsets to skip.

An append goes straight into the window while nothing is unloaded and the window has
room (a short queue never reads the disk back).  Otherwise it only bumps ``_unloaded``:
the message lives on disk alone.  When the window runs dry ``shift``/``peek`` reload the
next ``read_ahead`` records sequentially from the cursor (one ``pread`` per 256 KiB).
So queue depth drives disk use, never memory: 10 million 1 KB messages cost the
window plus ~100 bytes per 8 MiB segment.

Invariants:

* Records before the cursor were loaded (delivered, requeued or in the window) or are
  to be skipped; records from the cursor on are ready unless in a segment's skip array
  or a damaged span.
* ``segment.records - segment.settled`` is how many records of a segment are not done;
  a sealed segment reaching zero is deleted with its ack file (LavinMQ's rule).  The
  writer segment is never deleted.
* ``ready_count`` = len(requeued) + len(window) + ``_unloaded``.

Durability: a persistent append marks the writer dirty in the ``Syncer``; a settle
writes an 8-byte ack entry (persistent records only: transient ones are dropped on
recovery anyway) and marks the ack file dirty.  The broker confirms a publish with
``syncer.after_sync(callback)`` after ``append``.

Recovery (construction): every segment is scanned and every CRC checked.  A torn tail
is truncated; a damaged record in the middle is skipped by scanning forward for the
next offset where a record's length and CRC check out (version 2: where a batch that
carries that very offset as its position checks out, ``queue_log``), so every intact
record after it survives.  Acked and transient records are skipped.  All of it is logged on
``baedal.storage`` (file, offset, count, reason).  After an unclean shutdown every
recovered entry comes back with ``delivery_count = 1`` (it may have been delivered
before the crash); ``close()`` writes ``clean-shutdown.json`` listing the entries that
really were delivered, and a clean restart flags only those.  The marker is deleted
(and the deletion synced) as the store opens, so a later crash is seen as unclean.

Expiry deadlines are stored as wall-clock time and come back unchanged, so TTLs hold
across restarts and reboots; the scan notes whether any record has one
(``recovered_deadlines``) so the owning queue arms its expiry timer at start-up.

Write failures (ENOSPC, EIO) are sticky: ``append`` raises ``StorageError`` until the
broker calls ``reset_failed_writer()``, which cuts the failed segment back to its last
whole write, forgets the records that were lost with the buffer, and lets the next
append start a fresh segment.

Write-behind (``write_behind=True``, the default)
-------------------------------------------------
A persistent message that goes straight into the window is not encoded or written by
``append``: its entry gets a *provisional* position (``PENDING_BASE`` + a counter, above
every real position and increasing) and joins ``_pending`` (provisional position ->
(entry, message as appended), in append order; ``None`` while nothing may be deferred).
The append that makes it non-empty registers the store with ``Syncer.defer(self)``;
the syncer calls ``write_deferred`` at the start of its next job, before it takes the
dirty set, and that encodes and writes every entry still pending, in append order,
relabelling each with its real position.  A ``settle`` that finds its entry still
pending just drops it: no record, no ack entry, no dirty mark (RabbitMQ's classic queue
store cancels the write of a message consumed and acked before the write happens in the
same way).  ``deferred_written`` and ``deferred_skipped`` count both outcomes.

The syncer may *hold* a job for consumers' acks (``Syncer`` docstring, "Holding a
job"): it asks ``worth_waiting()`` (a pending entry has been handed out: it is no longer
at the window's head), then ``cut()``s, and the store notes the first provisional
position the job does not cover (``_behind.cutoff``; the job took only the confirms
registered so far, which cover only the entries appended so far).  A settle that leaves
no covered entry pending ``release``s the hold; the held job's
``write_deferred(whole=False)`` writes only the covered entries still pending, and the
store defers itself again for the rest, which get their own hold.  A hold that did not
pay (more than half the covered entries still unsettled: a consumer slower than the
hold) makes the store sit out the next 1, 2, 4 ... 256 jobs before it asks again, so a
slow consumer costs its publishers' confirms a hold now and then, not on every job.

Why confirms stay correct: the broker registers ``after_sync`` after ``append``, so a
confirm lands in the job whose hook writes the message (or a later one); that job's
fsync covers the record, or the message was settled (delivered and acked) before it:
either way the broker has taken responsibility.  Why order stays correct: pending
entries are always the newest (only an append into the window with nothing unloaded
defers, and every write that must reach the disk in order, an append past the window,
a transient record, ``close``, ``take_index``, first writes the pending ones out
synchronously), so relabelling them in order to positions above every real one keeps
every comparison between entries (window order, the requeue heap) as it was.

A write that fails in the hook fails the job (``StorageError`` from the hook: each
confirm's ``on_error`` runs, the broker nacks and raises its disk alarm); the entries
not written are relabelled to *lost* positions (beyond the end of the failed segment,
still in order) and are then treated exactly like records lost with a failed buffer:
``reset_failed_writer`` drops them from the window, a settle of one is ignored.  After
a failure the store writes synchronously again (``append`` raises at once) until
``reset_failed_writer`` has run.  Priority queues (``take_index``), transient records,
version-1 segments (the engine's spill files) are never deferred.
"""

from __future__ import annotations

import bisect
import heapq
import json
import logging
import os
from array import array
from collections import deque
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Protocol

from baedal.core.message import Message, QueueEntry

from . import queue_log
from .ackfile import ACK_NAMING, AckFile, ack_path, load_acks
from .record import (
    MIN_RECORD_SIZE,
    body_size,
    decode_record,
    encode_record,
    record_has_deadline,
    record_priority,
)
from .record_batch import RecordBatchError
from .segment import (
    DEFAULT_SEGMENT_BYTES,
    QUEUE_LOG_VERSION,
    RECORD_HEADER,
    SEGMENT_HEADER,
    SEGMENT_HEADER_SIZE,
    SEGMENT_MAGIC,
    SEGMENT_NAMING,
    SEGMENT_VERSION,
    Segment,
    StorageError,
    record_crc,
    segment_path,
)
from .segment_files import SegmentDirectory, truncate_torn_tail
from .syncer import PENDING_BASE, Syncer  # (provisional positions: "Write-behind")

__all__ = [
    "KIND_PERSISTENT",
    "KIND_TRANSIENT",
    "RecoveryStats",
    "SegmentStore",
    "decode_record",
    "encode_record",
]

log = logging.getLogger("baedal.storage")

KIND_PERSISTENT = 1
KIND_TRANSIENT = 2
_VALID_KINDS = (KIND_PERSISTENT, KIND_TRANSIENT)

# Version-1 segments: the record payload (one message) is ``storage/record.py``'s
# neutral, versioned record.  Version 2: ``queue_log`` (the stream's batches).
_RECORD_HEADER_SIZE = RECORD_HEADER.size
_BATCH_PREFIX_SIZE = queue_log.BATCH_PREFIX.size
encode_message = queue_log.encode_message


def _decode_batch(batch: bytes, segment: Segment) -> tuple[Message, float | None]:
    """A version-2 batch's message; a record that does not decode (its CRC passed: a
    bug or a newer Baedal) is reported as the storage error it is for the queue."""
    try:
        return queue_log.decode_message(batch)
    except RecordBatchError as exc:
        raise StorageError(None, f"undecodable queue record: {exc}", segment.path) from exc

CLEAN_MARKER = "clean-shutdown.json"
DEFAULT_READ_AHEAD = 1024
DEFAULT_READ_AHEAD_BYTES = 8 * 1024 * 1024


class IndexOwner(Protocol):
    """What ``take_index`` needs from the object that orders a store's records."""

    def redelivered_positions(self) -> Iterable[int]: ...


class RecoveryStats:
    """What opening a store found: counts for the broker's recovery report."""

    __slots__ = ("clean", "messages", "message_bytes", "truncated_bytes", "damaged_bytes", "dropped_bytes")

    def __init__(self) -> None:
        self.clean = True  # a clean-shutdown marker was there (or the store was empty)
        self.messages = 0  # ready messages recovered
        self.message_bytes = 0
        self.truncated_bytes = 0  # torn tails cut off
        self.damaged_bytes = 0  # damaged spans stepped over in the middle of segments
        self.dropped_bytes = 0  # whole segment files with a bad header


class _SegmentInfo:
    """What the store remembers about one segment file."""

    __slots__ = ("segment", "ack", "records", "settled", "skip", "damaged")

    def __init__(self, segment: Segment) -> None:
        self.segment = segment
        self.ack: AckFile | None = None
        self.records = 0  # intact records in the file
        self.settled = 0  # of which done for good (acked, purged, or dropped on recovery)
        # Recovered segments only: sorted offsets of records that are not ready (acked
        # or transient before the restart), and damaged byte spans (start, resume).
        self.skip: array | None = None
        self.damaged: list[tuple[int, int]] | None = None


class _WriteBehind:
    """A store's write-behind state that append and settle seldom touch."""

    __slots__ = ("enabled", "error", "create_failure", "written", "skipped", "cutoff", "covered",
                 "cut_covered", "lost_past_cut", "backoff", "hold_again_at")

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        # A forced write failed outside the hook: the hook raises it in its job (whose
        # confirms cover the entries that were not written).
        self.error: StorageError | None = None
        self.create_failure: StorageError | None = None  # the last segment create failed
        self.written = 0
        self.skipped = 0
        # A held sync job covers the pending entries below ``cutoff`` (None: no cut);
        # ``covered``: how many of them are still pending.
        self.cutoff: int | None = None
        self.covered = 0
        self.cut_covered = 0  # ``covered`` at the cut
        self.lost_past_cut = False  # a failed write lost entries past a held job's cut
        # Holds that did not pay (most covered entries still unsettled when the held job
        # started: a slow consumer) back off: no hold before the syncer's job number
        # ``hold_again_at``; ``backoff`` doubles per miss (to 256 jobs), 0 after a hit.
        self.backoff = 0
        self.hold_again_at = 0


class SegmentStore:
    """A durable queue's messages on the segment log (see the module docstring)."""

    durable = True
    hands_out = True  # ``hand_out`` (the owning queue's direct hand-off to a consumer)

    def __init__(
        self,
        directory: str | os.PathLike[str],
        syncer: Syncer,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        read_ahead: int = DEFAULT_READ_AHEAD,
        read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
        segment_version: int = QUEUE_LOG_VERSION,
        write_behind: bool = True,
    ) -> None:
        """Open the store in ``directory``, recovering whatever is there (see ``open``).

        ``segment_version``: the format new segments are written in (recovered ones are
        read in whichever they have); 1, the old record format, only for tests and
        fixtures of older data.  ``write_behind``: defer the writes of persistent
        messages in the window until the next sync job (module docstring); version 2
        only."""
        if segment_version not in (SEGMENT_VERSION, QUEUE_LOG_VERSION):
            raise ValueError(f"unknown segment version {segment_version}")
        self._batches = segment_version == QUEUE_LOG_VERSION
        if not SEGMENT_HEADER_SIZE < segment_bytes < 1 << 32:
            raise ValueError("segment_bytes must fit a u32 offset")
        if read_ahead < 1:
            raise ValueError("read_ahead must be at least 1")
        self.directory = Path(directory)
        self.syncer = syncer
        self.segment_bytes = segment_bytes
        self.read_ahead = read_ahead
        self.read_ahead_bytes = read_ahead_bytes
        self.ready_count = 0
        self.ready_bytes = 0
        self._segments: dict[int, _SegmentInfo] = {}
        self._writer: Segment | None = None
        self._writer_info: _SegmentInfo | None = None
        self._next_segment_id = 1
        self._ready: deque[QueueEntry] = deque()
        self._window_bytes = 0
        self._requeued: list[QueueEntry] = []
        self._unloaded = 0
        self._cursor_segment = 0
        self._cursor_offset = SEGMENT_HEADER_SIZE
        self._redelivered_below = 0
        self._redelivered: set[int] = set()
        # Set by take_index(): another object (a priority queue's index) orders the
        # ready records; this store only writes, reads back by position and settles.
        self._index_owner: IndexOwner | None = None
        self._closed = False
        # Write-behind (module docstring).  ``_pending`` is also the one flag append
        # checks: None while nothing may be deferred (the setting, version 1, an index
        # owner, after a failure).  Only three attributes: a 30th instance attribute
        # would unshare the instance dict's keys and slow every attribute read of the
        # store (CPython 3.11's LOAD_ATTR specialisation), so the cold state is grouped.
        self._behind = _WriteBehind(write_behind and self._batches)
        self._pending: dict[int, tuple[QueueEntry, Message]] | None = (
            {} if self._behind.enabled else None
        )
        # What recovery found (read by the storage engine's start-up report).
        self.recovery = RecoveryStats()
        # Set by the owning queue before anything is read: its x-message-ttl, used only
        # to re-base deadlines of records from before wall-clock deadlines.
        self.queue_ttl_ms: int | None = None
        # Recovery found ready records with expiry deadlines: the queue must arm its
        # expiry timer at start-up, not wait for a client to touch it.
        self.recovered_deadlines = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._dir = SegmentDirectory(self.directory)
        self._recover()

    @classmethod
    def open(
        cls,
        directory: str | os.PathLike[str],
        syncer: Syncer,
        *,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
        read_ahead: int = DEFAULT_READ_AHEAD,
        read_ahead_bytes: int = DEFAULT_READ_AHEAD_BYTES,
        segment_version: int = QUEUE_LOG_VERSION,
        write_behind: bool = True,
    ) -> SegmentStore:
        """Open (creating or recovering) the store in ``directory``.

        Blocking: recovery reads every segment.  The broker runs it at startup, or in a
        thread for many queues (each store touches only its own directory).
        """
        return cls(
            directory,
            syncer,
            segment_bytes=segment_bytes,
            read_ahead=read_ahead,
            read_ahead_bytes=read_ahead_bytes,
            segment_version=segment_version,
            write_behind=write_behind,
        )

    # -- the MessageStore contract ------------------------------------------------------

    def append(self, message: Message, expires_at: float | None) -> QueueEntry:
        """Write ``message`` at the tail.  Raises ``StorageError`` if the writer failed.

        For a message past the read-ahead window the returned entry is not the object
        ``shift()`` hands out later (that one is re-read from disk); identity is the
        position.  A persistent message that goes into the window is written later, by
        the sync job's hook (module docstring, "Write-behind").
        """
        ready = self._ready
        pending = self._pending
        if pending is not None:
            if (
                message.persistent
                and not self._unloaded
                and len(ready) < self.read_ahead
                and self._window_bytes < self.read_ahead_bytes
            ):
                syncer = self.syncer
                position = syncer.next_pending  # one counter for every store (Syncer)
                if not pending:
                    # The first of a batch: the next sync job writes them.  (During a
                    # held job the syncer cuts us here: this entry is past the cut.)
                    syncer.defer(self)
                syncer.next_pending = position + 1
                size = len(message.body)
                entry = QueueEntry(position, message, size, expires_at)
                pending[position] = (entry, message)
                self.ready_count += 1
                self.ready_bytes += size
                ready.append(entry)
                self._window_bytes += size
                return entry
            if pending:
                self._flush_pending()  # the disk takes records in order: older ones first
        writer = self._writer
        if self._batches:
            rest, crc = encode_message(message, expires_at)
            if writer is None or not writer.has_room_for_batch(len(rest) + _BATCH_PREFIX_SIZE):
                writer = self._roll()
            offset = writer.append_batch(rest, crc)
        else:
            payload = encode_record(message, expires_at)
            if writer is None or not writer.has_room(len(payload)):
                writer = self._roll()
            offset = writer.append(
                KIND_PERSISTENT if message.persistent else KIND_TRANSIENT, payload
            )
        persistent = message.persistent
        self._writer_info.records += 1  # type: ignore[union-attr]
        if persistent:
            self.syncer.mark_dirty(writer)
        size = len(message.body)
        entry = QueueEntry(writer.segment_id << 32 | offset, message, size, expires_at)
        self.ready_count += 1
        self.ready_bytes += size
        if (
            not self._unloaded
            and len(ready) < self.read_ahead
            and self._window_bytes < self.read_ahead_bytes
        ):
            ready.append(entry)
            self._window_bytes += size
            self._cursor_segment = writer.segment_id
            self._cursor_offset = writer.size
        else:
            self._unloaded += 1
        return entry

    def hand_out(self, message: Message) -> QueueEntry:
        """``append`` and ``shift`` in one, for a message a consumer takes at once while
        nothing is ready (the caller checked ``ready_count == 0``; no expiry): a
        persistent message's write is deferred as for the window ("Write-behind"), and
        the entry never passes through the window.  Raises ``StorageError`` as
        ``append`` does (a write that could not be deferred)."""
        pending = self._pending
        if pending is not None and message.persistent:
            syncer = self.syncer
            position = syncer.next_pending
            if not pending:
                syncer.defer(self)  # (during a held job this entry is past the cut)
            syncer.next_pending = position + 1
            entry = QueueEntry(position, message, len(message.body))
            pending[position] = (entry, message)
            return entry
        entry = self.append(message, None)
        shifted = self.shift()
        assert shifted is entry, "hand_out with ready entries"
        return entry

    def hand_out_many(self, messages: list[Message]) -> list[QueueEntry] | None:
        """``hand_out`` of persistent messages, in order, in one loop; None (nothing
        done: ``hand_out`` them one by one) when writes cannot be deferred now."""
        pending = self._pending
        if pending is None:
            return None
        syncer = self.syncer
        position = syncer.next_pending
        if not pending:
            syncer.defer(self)  # (during a held job these entries are past the cut)
        entries = []
        for message in messages:
            entry = QueueEntry(position, message, len(message.body))
            pending[position] = (entry, message)
            entries.append(entry)
            position += 1
        syncer.next_pending = position
        return entries

    def shift(self) -> QueueEntry | None:
        """The next ready entry, message loaded (read back from disk past the window).

        A reload that reaches records still in the writer's buffer flushes it first, so
        this can raise the writer's sticky ``StorageError``; so can a damaged record.
        """
        if self._requeued:
            entry = heapq.heappop(self._requeued)
            if entry.message is None:
                self._reload(entry)
        else:
            ready = self._ready
            if not ready:
                if not self._unloaded:
                    return None
                self._fill()
                if not ready:
                    return None
            entry = ready.popleft()
            self._window_bytes -= entry.size
        self.ready_count -= 1
        self.ready_bytes -= entry.size
        return entry

    def peek(self) -> QueueEntry | None:
        if self._requeued:
            entry = self._requeued[0]
            if entry.message is None:
                self._reload(entry)
            return entry
        if not self._ready:
            if not self._unloaded:
                return None
            self._fill()
            if not self._ready:
                return None
        return self._ready[0]

    def requeue(self, entries: list[QueueEntry]) -> None:
        requeued = self._requeued
        for entry in entries:
            heapq.heappush(requeued, entry)
            self.ready_count += 1
            self.ready_bytes += entry.size

    def settle(self, entry: QueueEntry) -> None:
        """Mark ``entry`` done for good: an ack entry on disk, the segment freed when empty.

        The in-memory state is updated first, so if the ack write fails (the raised
        ``StorageError``) the queue is still consistent; only the on-disk ack is missing,
        which at worst redelivers the message after a crash.
        """
        message = entry.message
        entry.message = None
        position = entry.position
        if position >= PENDING_BASE:
            # Settled before its write: it is never written (module docstring).
            pending = self._pending
            if pending and pending.pop(position, None) is not None:
                behind = self._behind
                behind.skipped += 1
                if behind.cutoff is not None:
                    self._uncover(position)
                self.syncer.settled_pending()  # confirms may go now ("Early release")
            return
        info = self._segments.get(position >> 32)
        if info is None:
            return
        offset = position & 0xFFFFFFFF
        segment = info.segment
        if offset >= segment.size:
            return  # the record was lost with a failed write (see reset_failed_writer)
        info.settled += 1
        if info.settled >= info.records and segment is not self._writer:
            self._delete_segment(info)  # the whole file goes: no need to write the ack
            return
        if message is None or message.persistent:
            ack = info.ack
            if ack is None:
                ack = info.ack = AckFile.open(ack_path(self.directory, segment.segment_id))
                self.syncer.mark_dirty(self._dir)
            ack.mark(offset)
            self.syncer.mark_dirty(ack)

    def settle_many(self, entries: list[QueueEntry]) -> list[QueueEntry] | None:
        """``settle`` of the entries whose write is still deferred, in one loop (a
        subscriber's read of acks, ``Queue.ack_many``); returns the others, in order,
        for ``settle`` one by one (their ack entries may fail), or None if none."""
        rest: list[QueueEntry] | None = None
        pending = self._pending
        behind = self._behind
        cutoff = behind.cutoff
        skipped = 0
        for entry in entries:
            position = entry.position
            if position < PENDING_BASE:
                if rest is None:
                    rest = []
                rest.append(entry)
                continue
            entry.message = None
            if pending and pending.pop(position, None) is not None:
                skipped += 1
                if cutoff is not None and position < cutoff:  # _uncover, inline: per ack
                    behind.covered -= 1
                    if not behind.covered:
                        self.syncer.release(self)
        if skipped:
            behind.skipped += skipped
            self.syncer.settled_pending()  # confirms may go now ("Early release")
        return rest

    def purge(self) -> int:
        """Settle every ready entry; whole unread segments are deleted without acks."""
        count = self.ready_count
        for entry in self._requeued:
            self.settle(entry)
        self._requeued.clear()
        for entry in self._ready:
            self.settle(entry)
        self._ready.clear()
        self._window_bytes = 0
        while self._unloaded > 0:
            info = self._cursor_info()
            if info is None:
                break
            segment = info.segment
            if self._cursor_offset == SEGMENT_HEADER_SIZE and segment is not self._writer:
                # Nothing of this segment was ever loaded: everything not settled in it
                # is ready, and all of it goes.
                self._unloaded -= info.records - info.settled
                info.settled = info.records
                self._delete_segment(info)
                continue
            for _offset, next_offset, kind, _payload in self._records_from(
                info, self._cursor_offset
            ):
                self._cursor_offset = next_offset
                self._unloaded -= 1
                info.settled += 1
                if kind == KIND_PERSISTENT:
                    if info.ack is None:
                        info.ack = AckFile.open(ack_path(self.directory, segment.segment_id))
                    info.ack.mark(_offset)
            if info.ack is not None:
                self.syncer.mark_dirty(info.ack)
            self._cursor_offset = segment.size
            if info.settled >= info.records and segment is not self._writer:
                self._delete_segment(info)
        if self._unloaded:
            log.error(
                "store %s: purge left %d ready records unaccounted for",
                self.directory,
                self._unloaded,
            )
        self._unloaded = 0
        self._move_cursor_to_tail()
        self.ready_count = 0
        self.ready_bytes = 0
        return count

    def close(self, clean: bool = True) -> None:
        """Sync everything and write the clean-shutdown marker.

        Blocking (fsyncs on the calling thread): meant for shutdown.  Entries delivered
        and not yet acked should be requeued by the broker first so the marker can name
        them as redelivered.  ``clean=False`` (after a fatal fsync failure) writes no
        marker, so the next start treats the store as crashed: an fsync that succeeds
        after a failed one proves nothing (see syncer.py).
        """
        if self._closed:
            return
        write_marker = clean
        if self._pending:
            try:
                self._flush_pending()
            except StorageError as exc:
                write_marker = False  # the entries not written must not be listed as stored
                log.error("store %s: could not write deferred records at close: %s", self.directory, exc)
        self._closed = True
        files: list[Segment | AckFile] = []
        for info in self._segments.values():
            if info.segment.fileno() >= 0:  # a writer, or a sealed one not yet retired
                files.append(info.segment)
            if info.ack is not None:
                files.append(info.ack)
        clean = True
        for file in files:
            try:
                file.flush()
                if file.fileno() >= 0:
                    os.fsync(file.fileno())
            except OSError as exc:
                clean = False
                log.error(
                    "store %s: could not sync %s at close: %s", self.directory, file.path, exc
                )
        if clean and write_marker:
            try:
                self._write_clean_marker()
            except OSError as exc:
                log.error(
                    "store %s: could not write clean-shutdown marker: %s", self.directory, exc
                )
        self._release_files()

    def delete(self) -> None:
        """Close and remove every file of this store (the queue was deleted)."""
        self._closed = True
        self._pending = None  # never written: the queue and its messages are gone
        self._release_files()
        for path in self.directory.iterdir():
            if path.suffix in (".seg", ".ack", ".json", ".tmp"):
                path.unlink(missing_ok=True)
        try:
            self.directory.rmdir()
        except OSError:
            pass  # someone else's file in there: leave the directory

    # -- externally ordered use (priority queues) ----------------------------------------

    def take_index(self, owner: IndexOwner) -> Iterator[tuple[int, int, int]]:
        """Hand the ordering of ready records over to ``owner`` (a priority index).

        Yields (position, priority, body size) for every ready record recovered at open,
        in log order, reading the log sequentially once without keeping any body.  From
        then on the store keeps no ready state of its own: ``write`` appends, ``read``
        loads by position, ``settle`` works as always, and ``close`` asks the owner which
        positions were delivered (``redelivered_positions``) for the clean marker.
        """
        # The owner orders by real positions and reads back by them: no deferral.
        if self._pending:
            self._flush_pending()
        self._pending = None
        self._index_owner = owner
        window = list(self._ready)  # appended since recovery (a migration), all ready
        self._ready.clear()
        self._window_bytes = 0
        for entry in window:
            assert entry.message is not None
            yield entry.position, entry.message.priority, entry.size
        while self._unloaded > 0:
            info = self._cursor_info()
            if info is None:
                log.error("store %s: %d ready records missing from the log", self.directory, self._unloaded)
                break
            base = info.segment.segment_id << 32
            batches = info.segment.version == QUEUE_LOG_VERSION
            for offset, next_offset, _kind, payload in self._records_from(info, self._cursor_offset):
                self._cursor_offset = next_offset
                self._unloaded -= 1
                if batches:
                    message, _expires = _decode_batch(payload, info.segment)
                    yield base | offset, message.priority, len(message.body)
                else:
                    yield base | offset, record_priority(payload), body_size(payload)
            self._cursor_offset = info.segment.size
        self._unloaded = 0
        self.ready_count = 0
        self.ready_bytes = 0
        self._move_cursor_to_tail()

    def write(self, message: Message, expires_at: float | None) -> QueueEntry:
        """Append ``message`` for an external index: a record, no ready bookkeeping.

        The same record and durability as ``append`` (kept as its own few lines so the
        plain queue's append path gains no extra call).
        """
        writer = self._writer
        if self._batches:
            rest, crc = encode_message(message, expires_at)
            if writer is None or not writer.has_room_for_batch(len(rest) + _BATCH_PREFIX_SIZE):
                writer = self._roll()
            offset = writer.append_batch(rest, crc)
        else:
            payload = encode_record(message, expires_at)
            if writer is None or not writer.has_room(len(payload)):
                writer = self._roll()
            offset = writer.append(
                KIND_PERSISTENT if message.persistent else KIND_TRANSIENT, payload
            )
        persistent = message.persistent
        self._writer_info.records += 1  # type: ignore[union-attr]
        if persistent:
            self.syncer.mark_dirty(writer)
        return QueueEntry(writer.segment_id << 32 | offset, message, len(message.body), expires_at)

    def read(self, position: int) -> QueueEntry | None:
        """The entry at ``position`` with its message, or None if the record is gone
        (lost with a failed write, see ``reset_failed_writer``).  One pread pair."""
        info = self._segments.get(position >> 32)
        offset = position & 0xFFFFFFFF
        if info is None or offset >= info.segment.size:
            return None
        segment = info.segment
        _kind, payload = segment.read(offset)
        if segment.version == QUEUE_LOG_VERSION:
            message, expires_at = _decode_batch(payload, segment)
        else:
            message, expires_at = decode_record(payload)
        entry = QueueEntry(position, message, len(message.body), expires_at)
        redelivered = self._redelivered
        if position < self._redelivered_below or (redelivered and position in redelivered):
            entry.delivery_count = 1
            redelivered.discard(position)
        return entry

    # -- failure handling ---------------------------------------------------------------

    @property
    def failure(self) -> StorageError | None:
        """The sticky write failure, if any (writer first, then ack files)."""
        if self._writer is not None and self._writer.failure is not None:
            return self._writer.failure
        if self._behind.create_failure is not None:
            return self._behind.create_failure
        for info in self._segments.values():
            if info.ack is not None and info.ack.failure is not None:
                return info.ack.failure
        return None

    def reset_failed_writer(self) -> int:
        """Recover from a failed write once the cause (a full disk) is gone.

        The failed segment is truncated to its last whole write and sealed; the records
        that were only in its lost buffer are forgotten (their publishes were never
        confirmed: their ``after_sync`` ``on_error`` ran or their ``append`` raised); the
        next append opens a fresh segment.  Failed ack files re-append their lost acks.
        Entries already delivered from the lost records stay with their consumers; their
        settle is ignored.  Returns how many records were forgotten.  Raises
        ``StorageError`` if the truncation itself fails (the disk is still broken).
        """
        forgotten = 0
        self._behind.create_failure = None  # the next append tries a new segment again
        writer = self._writer
        info = self._writer_info
        if writer is not None and info is not None and writer.failure is not None:
            lost = writer.lost_bytes()
            writer.truncate_to_last_good()
            if writer.version == QUEUE_LOG_VERSION:
                sizes = queue_log.lost_body_sizes(lost)
            else:
                sizes = _lost_record_sizes(lost)
            forgotten = len(sizes)
            first_lost = writer.segment_id << 32 | writer.written
            info.records -= forgotten
            # The lost records are the newest: the unloaded tail first, then the window's.
            from_disk = min(forgotten, self._unloaded)
            self._unloaded -= from_disk
            self.ready_count -= from_disk
            self.ready_bytes -= sum(sizes[forgotten - from_disk :])
            ready = self._ready
            while ready and ready[-1].position >= first_lost:
                entry = ready.pop()
                self._window_bytes -= entry.size
                self.ready_count -= 1
                self.ready_bytes -= entry.size
            if not self._unloaded:
                self._cursor_segment = writer.segment_id
                self._cursor_offset = writer.size
            writer.writable = False
            self._writer = None
            self._writer_info = None
            self.syncer.retire(writer, writer.close_writer)
            if info.settled >= info.records:
                self._delete_segment(info)
            if forgotten:
                log.warning(
                    "store %s: segment %s: forgot %d records lost by the failed write at offset %d",
                    self.directory,
                    writer.path.name,
                    forgotten,
                    writer.written,
                )
        for other in self._segments.values():
            if other.ack is not None and other.ack.failure is not None:
                other.ack.retry_lost()
                self.syncer.mark_dirty(other.ack)
        self._resume_deferring()  # writes may be deferred again
        return forgotten

    # -- internals: writing -------------------------------------------------------------

    @property
    def write_behind(self) -> bool:
        """Whether this store defers writes (the setting; off for version 1 segments)."""
        return self._behind.enabled

    @property
    def deferred_written(self) -> int:
        """Deferred appends written by the hook (or forced out before something else)."""
        return self._behind.written

    @property
    def deferred_skipped(self) -> int:
        """Deferred appends settled before their write: never written."""
        return self._behind.skipped

    def _resume_deferring(self) -> None:
        if self._pending is None and self._behind.enabled and self._index_owner is None:
            self._pending = {}

    def write_pending(self) -> None:
        """Write every deferred record now (for callers that keep positions, such as a
        selective queue's memo of held positions).  A failure is not raised here: it
        fails the covering sync job's confirms, as a failed hook does."""
        if self._pending:
            try:
                self._flush_pending()
            except StorageError:
                pass  # stashed: the registered hook raises it in its job

    # -- the Syncer's Deferring protocol (module docstring, "Write-behind") -------------

    def worth_waiting(self) -> bool:
        """Whether a sync job should be held for consumers' acks: some pending entry has
        been handed out (it left the window's head), so its settle may make its write
        unneeded.  Pending entries are the window's newest and the window is consumed
        from its head, so looking at the head is enough."""
        pending = self._pending
        if not pending or self._closed or self.syncer.jobs < self._behind.hold_again_at:
            return False
        ready = self._ready
        if not ready:
            return True
        head = ready[0].position
        return head >= PENDING_BASE and head != next(iter(pending))

    def _uncover(self, position: int) -> None:
        """A deferred entry was settled while a held job covers the entries below
        ``_behind.cutoff``: the last covered one settled releases the hold."""
        behind = self._behind
        if position < behind.cutoff:  # type: ignore[operator]
            behind.covered -= 1
            if not behind.covered:
                self.syncer.release(self)  # the held job need not wait for us

    def oldest_pending(self) -> int | None:
        """The provisional position of the oldest deferred entry not settled yet."""
        pending = self._pending
        return next(iter(pending)) if pending else None

    def cut(self) -> bool:
        """A held job covers the entries pending now; true if it should wait for their
        settles (``worth_waiting``)."""
        behind = self._behind
        behind.cutoff = self.syncer.next_pending
        behind.covered = behind.cut_covered = len(self._pending) if self._pending else 0
        return behind.covered > 0 and self.worth_waiting()

    def write_deferred(self, *, whole: bool) -> None:
        """The sync job's hook: write what is pending (``whole``) or what the held job
        covers, deferring the rest to the next job (module docstring).

        Raises ``StorageError`` if a write failed (here or in a forced write since the
        last job), which fails this job's confirms; if entries past the cut were lost
        with it, the error is kept for the next job too (their confirms are there)."""
        behind = self._behind
        cutoff = None if whole else behind.cutoff
        if cutoff is not None and behind.cut_covered:
            # Did the hold pay?  (Module docstring: a slow consumer backs holds off.)
            if behind.covered * 2 > behind.cut_covered:
                behind.backoff = min(behind.backoff * 2 or 1, 256)
                behind.hold_again_at = self.syncer.jobs + behind.backoff
            else:
                behind.backoff = 0
            behind.cut_covered = 0
        error = behind.error
        behind.error = None
        if self._pending and not self._closed:
            try:
                self._flush_pending(cutoff)
            except StorageError as exc:
                error = exc
                behind.error = None
        behind.cutoff = None
        behind.covered = 0
        if error is not None:
            if behind.lost_past_cut:
                behind.lost_past_cut = False
                behind.error = error
                self.syncer.defer(self)
            raise error
        if self._pending:
            self.syncer.defer(self)  # the rest: the next job

    def _flush_pending(self, cutoff: int | None = None) -> None:
        """Encode and write every pending, unsettled entry (below ``cutoff``, if given)
        in append order, giving each its real position; the rest stay pending.  On a
        failure every entry not written becomes lost (``_lose_pending``), later appends
        are written synchronously, and the error is raised and stashed for the hook
        (whose job holds these entries' confirms)."""
        pending = self._pending
        assert pending is not None
        items = list(pending.values())
        count = len(items)
        behind = self._behind
        if cutoff is not None:
            while count and items[count - 1][0].position >= cutoff:
                count -= 1
            if not count:
                return  # nothing the held job covers is left: the rest stay as they are
            self._pending = (
                {item[0].position: item for item in items[count:]} if count < len(items) else {}
            )
        else:
            self._pending = {}
            if behind.covered:  # a forced write: a held job has nothing left to wait for
                behind.covered = 0
                self.syncer.release(self)
        if not count:
            return
        self.syncer.note_deferred_write()  # the confirms so far need this job's fsync
        writer = self._writer
        info = self._writer_info
        written = 0
        try:
            for entry, message in items[:count]:
                rest, crc = encode_message(message, entry.expires_at)
                if writer is None or not writer.has_room_for_batch(len(rest) + _BATCH_PREFIX_SIZE):
                    writer = self._roll()
                    info = self._writer_info
                offset = writer.append_batch(rest, crc)
                info.records += 1  # type: ignore[union-attr]
                entry.position = writer.segment_id << 32 | offset
                written += 1
        except StorageError as exc:
            self._behind.written += written
            self._pending = None  # synchronous writes (append raises) until a reset
            lost = [entry for entry, _message in items[written:]]
            if behind.cutoff is not None and lost and lost[-1].position >= behind.cutoff:
                behind.lost_past_cut = True  # their confirms are in the job after the held one
            behind.covered = 0
            self._lose_pending(lost)
            if written and self._writer is not None:
                self.syncer.mark_dirty(self._writer)
            self._behind.error = exc
            raise
        self._behind.written += written
        self.syncer.mark_dirty(writer)
        if not self._unloaded:
            self._cursor_segment = writer.segment_id  # type: ignore[union-attr]
            self._cursor_offset = writer.size  # type: ignore[union-attr]

    def _lose_pending(self, entries: list[QueueEntry]) -> None:
        """Entries whose deferred write failed: give them positions past the end of the
        failed (or last) segment, in order, above every real position so far and below
        every later one, so they sort where they were and are handled like records lost
        with a failed buffer (``reset_failed_writer`` drops them from the window, a
        settle ignores them)."""
        if not entries:
            return
        writer = self._writer
        segment_id = writer.segment_id if writer is not None else self._next_segment_id - 1
        base = segment_id << 32 | (0xFFFFFFFF - len(entries))
        for index, entry in enumerate(entries):
            entry.position = base + index
        log.error(
            "store %s: %d deferred record(s) could not be written (their publishes fail)",
            self.directory,
            len(entries),
        )

    def _roll(self) -> Segment:
        old = self._writer
        if old is not None:
            old.seal()  # may raise the sticky StorageError: the writer stays failed
            self._writer = None
            old_info = self._writer_info
            self._writer_info = None
            self.syncer.retire(old, old.close_writer)
            if old_info is not None and old_info.settled >= old_info.records:
                self._delete_segment(old_info)
        segment_id = self._next_segment_id
        try:
            segment = Segment.create(
                self.directory,
                segment_id,
                self.segment_bytes,
                version=QUEUE_LOG_VERSION if self._batches else SEGMENT_VERSION,
            )
        except StorageError as exc:
            # No writer to hold it: kept so ``failure`` reports it (a deferred write
            # fails in the sync job, where only ``failure`` tells the broker which
            # store to block and retry).
            self._behind.create_failure = exc
            raise
        self._behind.create_failure = None
        self._next_segment_id = segment_id + 1
        info = _SegmentInfo(segment)
        self._segments[segment_id] = info
        self._writer = segment
        self._writer_info = info
        self._resume_deferring()  # a fresh segment: a failed one is behind us
        if not self._unloaded:
            self._cursor_segment = segment_id
            self._cursor_offset = SEGMENT_HEADER_SIZE
        self.syncer.mark_dirty(segment)
        self.syncer.mark_dirty(self._dir)
        return segment

    def _delete_segment(self, info: _SegmentInfo) -> None:
        segment = info.segment
        segment_id = segment.segment_id
        del self._segments[segment_id]
        segment.path.unlink(missing_ok=True)
        ack_path(self.directory, segment_id).unlink(missing_ok=True)
        segment.release_reader()
        self.syncer.retire(segment, segment.close)
        if info.ack is not None:
            self.syncer.retire(info.ack, info.ack.close)

    # -- internals: reading -------------------------------------------------------------

    def _cursor_info(self) -> _SegmentInfo | None:
        """The segment at the cursor, moving the cursor on past finished/missing ones."""
        while True:
            info = self._segments.get(self._cursor_segment)
            if info is not None and self._cursor_offset < info.segment.size:
                return info
            if info is not None and info.segment is not self._writer:
                info.segment.release_reader()
            later = [
                segment_id for segment_id in self._segments if segment_id > self._cursor_segment
            ]
            if not later:
                return None
            self._cursor_segment = min(later)
            self._cursor_offset = SEGMENT_HEADER_SIZE

    def _records_from(
        self, info: _SegmentInfo, offset: int
    ) -> Iterator[tuple[int, int, int, bytes]]:
        """Ready records of ``info`` from ``offset``: (offset, next offset, kind, payload).

        Skips recovered acked/transient records and damaged spans.
        """
        segment = info.segment
        end = segment.size
        skip = info.skip
        damaged = info.damaged
        # A version-1 record's payload follows its 9-byte header; a batch is whole.
        overhead = _RECORD_HEADER_SIZE if segment.version == SEGMENT_VERSION else 0
        while offset < end:
            stop = end
            if damaged:
                jumped = False
                for start, resume in damaged:
                    if start == offset:
                        offset = resume
                        jumped = True
                        break
                    if start > offset:
                        stop = start
                        break
                if jumped:
                    continue
            for record_offset, kind, payload in segment.iter_records(offset, stop):
                next_offset = record_offset + overhead + len(payload)
                offset = next_offset
                if skip is not None:
                    index = bisect.bisect_left(skip, record_offset)
                    if index < len(skip) and skip[index] == record_offset:
                        continue
                yield record_offset, next_offset, kind, payload
            offset = max(offset, stop)

    def _fill(self) -> None:
        """Load up to ``read_ahead`` ready records from the cursor into the window."""
        ready = self._ready
        want = self.read_ahead
        budget = self.read_ahead_bytes
        loaded_bytes = 0
        below = self._redelivered_below
        redelivered = self._redelivered
        while want > 0 and self._unloaded > 0 and loaded_bytes < budget:
            info = self._cursor_info()
            if info is None:
                log.error(
                    "store %s: %d ready records missing from the log",
                    self.directory,
                    self._unloaded,
                )
                self.ready_count -= self._unloaded
                self._unloaded = 0
                break
            base = info.segment.segment_id << 32
            batches = info.segment.version == QUEUE_LOG_VERSION
            for offset, next_offset, _kind, payload in self._records_from(
                info, self._cursor_offset
            ):
                self._cursor_offset = next_offset
                message, expires_at = (
                    _decode_batch(payload, info.segment)
                    if batches
                    else decode_record(payload, self.queue_ttl_ms)
                )
                position = base | offset
                size = len(message.body)
                entry = QueueEntry(position, message, size, expires_at)
                if position < below or (redelivered and position in redelivered):
                    entry.delivery_count = 1
                    redelivered.discard(position)
                ready.append(entry)
                self._window_bytes += size
                loaded_bytes += size
                self._unloaded -= 1
                want -= 1
                if want == 0 or loaded_bytes >= budget or not self._unloaded:
                    break
            else:
                self._cursor_offset = info.segment.size

    def _reload(self, entry: QueueEntry) -> None:
        """Read a requeued entry's message back (the broker dropped it to save memory)."""
        info = self._segments.get(entry.position >> 32)
        if info is None:
            raise StorageError(
                None, f"message at position {entry.position:#x} is no longer stored", self.directory
            )
        segment = info.segment
        _kind, payload = segment.read(entry.position & 0xFFFFFFFF)
        if segment.version == QUEUE_LOG_VERSION:
            entry.message, _expires = _decode_batch(payload, segment)
        else:
            entry.message, _expires = decode_record(payload)

    def _move_cursor_to_tail(self) -> None:
        if self._writer is not None:
            self._cursor_segment = self._writer.segment_id
            self._cursor_offset = self._writer.size
        elif self._segments:
            last = max(self._segments)
            self._cursor_segment = last
            self._cursor_offset = self._segments[last].segment.size

    # -- internals: open / close --------------------------------------------------------

    def _recover(self) -> None:
        marker = self.directory / CLEAN_MARKER
        clean_state: dict | None = None
        if marker.exists():
            try:
                clean_state = json.loads(marker.read_text())
            except (OSError, ValueError) as exc:
                log.warning(
                    "store %s: unreadable clean-shutdown marker (%s), treating as unclean",
                    self.directory,
                    exc,
                )
            # From here on, a crash must be seen as unclean.
            marker.unlink()
            self._dir.fsync()
        seg_ids, strays = SEGMENT_NAMING.list(self.directory)
        for path in strays:
            log.warning("store %s: ignoring unexpected file %s", self.directory, path.name)
        ready_total = 0
        bytes_total = 0
        skipped_total = 0
        for segment_id in seg_ids:
            info, ready, ready_bytes, skipped = self._recover_segment(segment_id)
            skipped_total += skipped
            if info is not None:
                self._segments[segment_id] = info
                ready_total += ready
                bytes_total += ready_bytes
        live = set(self._segments)
        ack_ids, _strays = ACK_NAMING.list(self.directory)
        for segment_id in ack_ids:
            if segment_id not in live:
                ack_path(self.directory, segment_id).unlink()
        if seg_ids:
            self._next_segment_id = seg_ids[-1] + 1
        if clean_state is not None:
            self._next_segment_id = max(
                self._next_segment_id, int(clean_state.get("next_segment_id", 1))
            )
            self._redelivered_below = int(clean_state.get("redelivered_below", 0))
            self._redelivered = {int(p) for p in clean_state.get("redelivered", ())}
        else:
            # Unclean: any recovered entry may have been delivered before the crash.
            self._redelivered_below = self._next_segment_id << 32
        self.ready_count = ready_total
        self.ready_bytes = bytes_total
        self._unloaded = ready_total
        stats = self.recovery
        stats.clean = clean_state is not None or not seg_ids
        stats.messages = ready_total
        stats.message_bytes = bytes_total
        if self._segments:
            self._cursor_segment = min(self._segments)
        else:
            self._cursor_segment = self._next_segment_id
        self._cursor_offset = SEGMENT_HEADER_SIZE
        if seg_ids:
            log.info(
                "store %s: recovered %d ready messages (%d bytes) from %d segments, %d records skipped (acked or transient), %s shutdown",
                self.directory,
                ready_total,
                bytes_total,
                len(self._segments),
                skipped_total,
                "clean" if clean_state is not None else "unclean",
            )

    def _recover_segment(self, segment_id: int) -> tuple[_SegmentInfo | None, int, int, int]:
        """Scan one segment: (info or None if nothing left in it, ready, ready bytes, skipped)."""
        path = segment_path(self.directory, segment_id)
        data = path.read_bytes()
        magic, version = (
            SEGMENT_HEADER.unpack_from(data)[:2] if len(data) >= SEGMENT_HEADER_SIZE else (b"", 0)
        )
        if magic != SEGMENT_MAGIC or version not in (SEGMENT_VERSION, QUEUE_LOG_VERSION):
            log.error(
                "%s: bad segment header, dropping the whole file (%d bytes) at offset 0",
                path,
                len(data),
            )
            path.unlink()
            ack_path(self.directory, segment_id).unlink(missing_ok=True)
            self.recovery.dropped_bytes += len(data)
            return None, 0, 0, 0
        acked = load_acks(ack_path(self.directory, segment_id))
        if version == QUEUE_LOG_VERSION:
            scan = _ScanResult()
            queue_log.scan_batches(path, data, segment_id, scan)
        else:
            scan = _scan_records(path, data)
        self.recovery.damaged_bytes += sum(resume - start for start, resume in scan.damaged)
        if scan.valid_size < len(data):
            self.recovery.truncated_bytes += len(data) - scan.valid_size
            truncate_torn_tail(path, scan.valid_size)
        acked_persistent = [offset for offset in scan.persistent if offset in acked]
        skip = scan.transient + acked_persistent
        ready = len(scan.persistent) - len(acked_persistent)
        records = len(scan.persistent) + len(scan.transient)
        if ready == 0:
            path.unlink()
            ack_path(self.directory, segment_id).unlink(missing_ok=True)
            return None, 0, 0, records
        if scan.deadlines:
            self.recovered_deadlines = True
        ready_bytes = sum(scan.persistent.values()) - sum(
            scan.persistent[offset] for offset in acked_persistent
        )
        info = _SegmentInfo(Segment.open_sealed(path, segment_id, scan.valid_size, version))
        info.records = records
        info.settled = len(skip)
        if skip:
            skip.sort()
            info.skip = array("I", skip)
        if scan.damaged:
            info.damaged = scan.damaged
        return info, ready, ready_bytes, len(skip)

    def _write_clean_marker(self) -> None:
        redelivered = [entry.position for entry in self._requeued if entry.delivery_count > 0]
        redelivered.extend(entry.position for entry in self._ready if entry.delivery_count > 0)
        redelivered.extend(self._redelivered)
        cursor = self._cursor_segment << 32 | self._cursor_offset
        owner = self._index_owner
        if owner is not None:
            redelivered.extend(owner.redelivered_positions())
            # Unread positions below the mark may sit anywhere in the owner's index;
            # every later write is above it, so keeping the mark flags only those.
            below = self._redelivered_below
        else:
            # Recovered-after-crash entries not yet loaded keep their flag.
            below = self._redelivered_below if self._unloaded and cursor < self._redelivered_below else 0
        state = {
            "version": 1,
            "next_segment_id": self._next_segment_id,
            "redelivered_below": below,
            "redelivered": sorted(redelivered),
        }
        tmp = self.directory / (CLEAN_MARKER + ".tmp")
        with open(tmp, "w") as file:
            json.dump(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.directory / CLEAN_MARKER)
        self._dir.fsync()

    def _release_files(self) -> None:
        for info in self._segments.values():
            info.segment.release_reader()
            for file in (info.segment, info.ack):
                if file is None:
                    continue
                self.syncer.forget(file)
                self.syncer.retire(file, file.close)
        self.syncer.forget(self._dir)
        self._dir.close(self.syncer)
        self._segments.clear()
        self._writer = None
        self._writer_info = None
        self._pending = None
        self._ready.clear()
        self._requeued.clear()

    def __repr__(self) -> str:
        return f"<SegmentStore {self.directory} ready={self.ready_count} segments={len(self._segments)}>"


class _ScanResult:
    __slots__ = ("persistent", "transient", "damaged", "valid_size", "deadlines")

    def __init__(self) -> None:
        self.deadlines = False  # some persistent record has an expiry deadline
        self.persistent: dict[int, int] = {}  # offset -> body size
        self.transient: list[int] = []
        self.damaged: list[tuple[int, int]] = []
        self.valid_size = SEGMENT_HEADER_SIZE


def _record_ok(data: bytes, view: memoryview, pos: int, size: int) -> int:
    """The end of a valid record at ``pos``, or -1."""
    if pos + _RECORD_HEADER_SIZE > size:
        return -1
    length, crc, kind = RECORD_HEADER.unpack_from(data, pos)
    end = pos + _RECORD_HEADER_SIZE + length
    if kind not in _VALID_KINDS or end > size or length < MIN_RECORD_SIZE:
        return -1
    if record_crc(kind, view[pos + _RECORD_HEADER_SIZE : end]) != crc:
        return -1
    return end


_KIND_BYTES = tuple(bytes([kind]) for kind in _VALID_KINDS)


def _resync(data: bytes, view: memoryview, start: int, size: int) -> int:
    """The first offset >= ``start`` where an intact record begins, or -1.

    Only offsets whose kind byte is valid are tried (``bytes.find`` jumps between them),
    which keeps a scan over garbage fast.
    """
    search = start + 8  # the kind byte sits 8 bytes into a record
    while True:
        candidates = [
            found for found in (data.find(kind, search) for kind in _KIND_BYTES) if found >= 0
        ]
        if not candidates:
            return -1
        kind_at = min(candidates)
        pos = kind_at - 8
        if _record_ok(data, view, pos, size) >= 0:
            return pos
        search = kind_at + 1


def _scan_records(path: Path, data: bytes) -> _ScanResult:
    """Walk a segment's records, verifying each; log and step over damage."""
    result = _ScanResult()
    size = len(data)
    view = memoryview(data)
    pos = SEGMENT_HEADER_SIZE
    unpack_from = RECORD_HEADER.unpack_from
    persistent = result.persistent
    transient = result.transient
    while pos < size:
        if pos + _RECORD_HEADER_SIZE <= size:
            length, crc, kind = unpack_from(data, pos)
            end = pos + _RECORD_HEADER_SIZE + length
            if end <= size and kind in _VALID_KINDS and length >= MIN_RECORD_SIZE:
                payload = view[pos + _RECORD_HEADER_SIZE : end]
                if record_crc(kind, payload) == crc:
                    if kind == KIND_PERSISTENT:
                        persistent[pos] = body_size(payload)
                        if record_has_deadline(payload):
                            result.deadlines = True
                    else:
                        transient.append(pos)
                    pos = end
                    continue
                reason = "CRC mismatch"
            elif end > size:
                reason = f"record claims {length} bytes but only {size - pos - _RECORD_HEADER_SIZE} remain"
            else:
                reason = f"invalid record header (kind {kind}, length {length})"
        else:
            reason = f"partial record header ({size - pos} bytes)"
        resume = _resync(data, view, pos + 1, size)
        if resume < 0:
            log.warning(
                "%s: truncating torn tail at offset %d: dropped %d bytes (at most 1 record): %s",
                path,
                pos,
                size - pos,
                reason,
            )
            break
        damaged_records = _count_span_records(data, pos, resume)
        log.warning(
            "%s: dropped damaged data at offset %d: %d bytes, %s, resuming at the next intact record at %d: %s",
            path,
            pos,
            resume - pos,
            f"{damaged_records} damaged record(s)"
            if damaged_records
            else "1 or more damaged records",
            resume,
            reason,
        )
        result.damaged.append((pos, resume))
        pos = resume
    result.valid_size = pos
    return result


def _count_span_records(data: bytes, pos: int, resume: int) -> int:
    """How many records a damaged span held, if their length fields still chain exactly
    from ``pos`` to ``resume``; 0 when they do not (the count is then unknown)."""
    count = 0
    while pos < resume:
        if pos + _RECORD_HEADER_SIZE > resume:
            return 0
        pos += _RECORD_HEADER_SIZE + RECORD_HEADER.unpack_from(data, pos)[0]
        count += 1
    return count if pos == resume else 0


def _lost_record_sizes(lost: bytes) -> list[int]:
    """Body sizes of the whole records in a failed write buffer, in order."""
    sizes = []
    pos = 0
    view = memoryview(lost)
    while pos + _RECORD_HEADER_SIZE <= len(lost):
        length = RECORD_HEADER.unpack_from(lost, pos)[0]
        start = pos + _RECORD_HEADER_SIZE
        sizes.append(body_size(view[start : start + length]))
        pos = start + length
    return sizes
