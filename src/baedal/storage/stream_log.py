"""The stream log: an append-only, offset-addressed log read without destroying it.

Theory of operation
-------------------
A stream is a directory of segments, Kafka's layout (``kafka-protocol.md`` §10)::

    00000000000000000000.log        record batches, back to back, no file header
    00000000000000000000.index      sparse offset index   (see stream_index)
    00000000000000000000.timeindex  sparse time index
    00000000000000004711.log        the next segment starts at offset 4711 ...

Every batch is a Kafka RecordBatch v2 (``record_batch``; the module docstring there says
why that is the format for every protocol).  Offsets are 64-bit, dense and monotonic:
a batch of n records takes offsets ``base .. base + n - 1`` and the next batch starts at
``base + n``.  The last segment is the *active* one and the only one written.

Appending (``append`` for neutral records, ``append_batch`` for a Kafka batch as
received) rewrites the batch's base offset, buffers the bytes in the active segment's
``AppendOnlyFile`` and marks it dirty with the ``Syncer``: the same group commit that
serves durable queues flushes it on the loop thread and fsyncs it in the worker thread;
``syncer.after_sync(cb)`` after an append confirms it.  Without a syncer (tools, tests)
``sync()`` does it in place.  A segment rolls when the next batch would take it past
``max_segment_bytes`` (a single batch larger than that gets a segment of its own).

Retention (``apply_retention``, run after each roll and meant to be called on a timer
by the owner for age) deletes whole segments from the oldest, never the active one:
while the total size exceeds ``max_bytes`` (RabbitMQ's ``x-max-length-bytes``: an upper
bound, overshot by at most the active segment) and while the oldest segment's newest
timestamp is older than ``max_age`` (Kafka's rule: the segment's largest timestamp).

Reading: ``reader(start)`` gives an independent cursor.  ``start`` is an offset,
``"first"``, ``"last"`` (the first offset of the last batch: RabbitMQ's "last chunk"),
``"next"`` (only what is appended from now on), or ``timestamp=ms`` (the first batch
whose max timestamp is at or after it).  ``read(max_bytes)`` returns whole, CRC-checked
batches: at least one, even if it is larger than ``max_bytes``; a start inside a batch
returns that whole batch (Kafka's fetch semantics; ``read_records`` skips the records
below the start).  ``file_ranges`` returns the same bytes as descriptor ranges for
``os.sendfile``.  A reader holds a segment and a position, nothing per message, and the
log holds no state per reader.  Reads are ``os.pread`` of at most
``max(max_bytes, one batch)`` bytes: never a whole segment.

Offsets before the first retained one are "out of range": ``reader(offset)`` clamps
them to ``first_offset`` (RabbitMQ's behaviour) or raises ``OffsetOutOfRange`` with
``strict=True`` (what a Kafka adapter answers as OFFSET_OUT_OF_RANGE).  A reader whose
segment is deleted under it by retention continues at the new first offset and counts
the skipped records in ``reader.skipped``.

Recovery (``StreamLog.open``): every segment's tail is re-validated from its last index
entry to its end: each batch's CRC, its base offset (continuing the previous batch) and
its counts.  At the first bad batch the file is truncated and, as in Kafka's
``LogLoader``, every later segment is removed, since offsets after a hole would lie.
An index that is missing, not whole entries, not monotonic, or whose last entry does
not point at a valid batch is rebuilt from a full CRC scan of its segment.  Everything
dropped is in the returned ``RecoveryReport`` (and logged).  Scanning only tails keeps
opening cheap: per segment, its two index files (read whole, to check them: about
2.5 MB for a 500 MB segment, freed before the next) and one read of up to
``SCAN_CHUNK_BYTES`` plus at most one batch.  Damage before a sealed segment's last
index entry is not looked for at open; every read checks the CRC of what it returns,
so it surfaces there as a ``StorageError`` instead of wrong data.

Memory bound: per segment a small fixed object; the active segment's index entries
(``stream_index``); per reader one object.  Nothing grows with the number of records.
"""

from __future__ import annotations

import errno as errno_module
import logging
import os
import time
from bisect import bisect_right
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .record_batch import (
    BATCH_HEADER_SIZE,
    BATCH_OVERHEAD,
    DEFAULT_MAX_BATCH_BYTES,
    Batch,
    Record,
    RecordBatchError,
    batch_size_at,
    check_appendable,
    check_batch,
    decode_header,
    decode_records,
    decode_rows,
    encode_batch,
    set_base_offset,
)
from .segment import AppendOnlyFile, StorageError
from .segment_files import (
    FileRange,
    SegmentDirectory,
    SegmentNaming,
    SegmentReads,
    create_segment_file,
    open_segment_for_append,
    truncate_torn_tail,
)
from .stream_index import OFFSET_ENTRY, TIME_ENTRY, Appender, SparseIndex
from .syncer import Syncer

__all__ = [
    "AppendResult",
    "FileRange",
    "OffsetOutOfRange",
    "RecoveryReport",
    "RemovedSegment",
    "StreamLog",
    "StreamReader",
    "Truncation",
]

log = logging.getLogger("baedal.storage")

# RabbitMQ's default x-stream-max-segment-size-bytes is 500,000,000.
DEFAULT_MAX_SEGMENT_BYTES = 500_000_000
DEFAULT_INDEX_INTERVAL_BYTES = 4096  # Kafka's log.index.interval.bytes
DEFAULT_READ_BYTES = 1024 * 1024
# Bytes read per pread while validating or scanning headers: big enough that small
# batches cost one syscall per ~thousand, small enough to stay trivial in memory.
SCAN_CHUNK_BYTES = 256 * 1024
# Relative offsets in the index are u32 (Kafka: int32); roll before they overflow.
MAX_RELATIVE_OFFSET = 2**31 - 1
LOG_SUFFIX = ".log"
# Segment files are named by their base offset (Kafka's layout); the naming, creation,
# reads, sendfile ranges and torn-tail truncation are the layer shared with durable
# queues (``segment_files``).
LOG_NAMING = SegmentNaming(LOG_SUFFIX, 20)
INDEX_SUFFIX = ".index"
TIME_INDEX_SUFFIX = ".timeindex"

StartSpec = int | Literal["first", "last", "next"]


class OffsetOutOfRange(LookupError):
    """The offset is before the first retained offset or after the next one."""

    def __init__(self, offset: int, first: int, next_offset: int) -> None:
        super().__init__(f"offset {offset} outside [{first}, {next_offset}]")
        self.offset = offset
        self.first_offset = first
        self.next_offset = next_offset


@dataclass(frozen=True, slots=True)
class AppendResult:
    base_offset: int
    last_offset: int
    segment: int  # base offset of the segment that holds the batch
    position: int  # byte position of the batch in that segment's file
    size: int


@dataclass(frozen=True, slots=True)
class Truncation:
    segment: Path
    position: int  # the file now ends here
    truncated_bytes: int
    reason: str


@dataclass(frozen=True, slots=True)
class RemovedSegment:
    segment: Path
    first_offset: int
    next_offset: int  # -1 when recovery removed it (its contents were not trusted)
    size: int
    reason: str


@dataclass(slots=True)
class RecoveryReport:
    truncations: list[Truncation] = field(default_factory=list)
    removed_segments: list[RemovedSegment] = field(default_factory=list)
    rebuilt_indexes: list[Path] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.truncations and not self.removed_segments

    @property
    def lost_bytes(self) -> int:
        return sum(t.truncated_bytes for t in self.truncations) + sum(
            r.size for r in self.removed_segments
        )


class _LogWriter(Appender):
    """The active segment's writer; flushing it also flushes its two index files."""

    __slots__ = ("indexes",)

    def __init__(self, path: Path, fd: int, written: int, flush_bytes: int) -> None:
        super().__init__(path, fd, written, flush_bytes)
        self.indexes: tuple[SparseIndex, ...] = ()

    def flush(self) -> None:
        AppendOnlyFile.flush(self)
        for index in self.indexes:
            index.flush()


class _Segment(SegmentReads):
    """One segment: its files and a few numbers; the active one also has a writer.

    Reads (``read_fd``, ``pread``, ``file_range``) are the shared ``SegmentReads``.
    """

    __slots__ = (
        "base_offset",
        "path",
        "index",
        "time_index",
        "size",
        "next_offset",
        "max_timestamp",
        "last_batch_offset",
        "last_batch_position",
        "since_index",
        "writer",
        "_read_fd",
        "deleted",
    )

    def __init__(self, directory: Path, base_offset: int) -> None:
        self.base_offset = base_offset
        self.path = LOG_NAMING.path(directory, base_offset)
        self.index = SparseIndex(self.path.with_suffix(INDEX_SUFFIX), OFFSET_ENTRY)
        self.time_index = SparseIndex(self.path.with_suffix(TIME_INDEX_SUFFIX), TIME_ENTRY)
        self.size = 0
        self.next_offset = base_offset
        self.max_timestamp = -1
        self.last_batch_offset = -1  # base offset of the last batch, -1 when empty
        self.last_batch_position = -1
        self.since_index = 0  # bytes appended since the last index entry
        self.writer: _LogWriter | None = None
        self._read_fd = -1
        self.deleted = False

    def _flush_through(self, end: int) -> None:
        writer = self.writer
        if writer is not None and end > writer.written and writer.size > writer.written:
            writer.flush()

    def headers(
        self, position: int, end: int, chunk_bytes: int
    ) -> Iterator[tuple[int, tuple[int, ...]]]:
        """(position, header fields) of each batch from ``position`` to ``end``; no CRC.

        Reads ``chunk_bytes`` at a time (lookups scan about one index interval, so
        callers pass two intervals); a batch larger than the chunk costs one more pread.
        """
        chunk = b""
        chunk_start = position
        while position < end:
            offset = position - chunk_start
            if offset + BATCH_HEADER_SIZE > len(chunk):
                chunk_start = position
                chunk = self.pread(position, min(chunk_bytes, end - position))
                offset = 0
            try:
                fields = decode_header(chunk, offset)
            except RecordBatchError as exc:
                raise StorageError(
                    errno_module.EIO, f"damaged batch header at {position}: {exc}", self.path
                ) from None
            yield position, fields
            position += fields[1] + BATCH_OVERHEAD

    def close_files(self) -> None:
        self.release_reader()
        self.index.close()
        self.time_index.close()

    def __repr__(self) -> str:
        state = "active" if self.writer is not None else "sealed"
        return f"<_Segment {self.base_offset}..{self.next_offset} {state} {self.size}B>"


class StreamLog:
    """One stream on disk.  Not thread-safe: use it from the event-loop thread."""

    def __init__(
        self,
        directory: Path,
        *,
        syncer: Syncer | None = None,
        max_segment_bytes: int = DEFAULT_MAX_SEGMENT_BYTES,
        max_bytes: int | None = None,
        max_age: float | None = None,
        index_interval_bytes: int = DEFAULT_INDEX_INTERVAL_BYTES,
        max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES,
        flush_bytes: int = 64 * 1024,
        clock: Callable[[], float] = time.time,
    ) -> None:
        """Use ``StreamLog.open``; the constructor only stores settings."""
        self.directory = directory
        self.syncer = syncer
        # Called first by close(): the owner appends what it still holds in memory
        # (core/stream.py batches a loop turn's records).
        self.before_close: Callable[[], Any] | None = None
        self.max_segment_bytes = max_segment_bytes
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.index_interval_bytes = index_interval_bytes
        self._header_chunk = max(2 * index_interval_bytes, BATCH_HEADER_SIZE)
        self.max_batch_bytes = max_batch_bytes
        self.flush_bytes = flush_bytes
        self.clock = clock
        self._segments: list[_Segment] = []
        self._bases: list[int] = []  # base offsets of _segments, for bisect
        self._dir: SegmentDirectory | None = None
        self.recovery = RecoveryReport()
        self.removed_by_retention = 0  # segments, for metrics
        self.failure: StorageError | None = None
        self.closed = False

    # -- opening -------------------------------------------------------------------------

    @classmethod
    def open(cls, directory: str | os.PathLike[str], **settings: Any) -> StreamLog:
        """Open (creating if needed) and recover the stream in ``directory``.

        ``settings`` are the constructor's keywords.  What recovery dropped is in
        ``log.recovery``.
        """
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        stream = cls(path, **settings)
        stream._dir = SegmentDirectory(path)
        stream._recover()
        return stream

    def _recover(self) -> None:
        directory = self.directory
        bases: list[int] = []
        for entry in list(directory.iterdir()):
            name = entry.name
            if name.endswith(".tmp"):
                entry.unlink()  # an index rebuild that did not finish
            elif (base := LOG_NAMING.parse(name)) is not None:
                bases.append(base)
        bases.sort()
        for entry in list(directory.iterdir()):
            stem, _, suffix = entry.name.partition(".")
            if f".{suffix}" in (INDEX_SUFFIX, TIME_INDEX_SUFFIX) and stem.isdigit():
                if int(stem) not in bases:
                    entry.unlink()  # the log it indexed is gone (retention crashed midway)
        report = self.recovery
        expected: int | None = None
        for i, base in enumerate(bases):
            segment = _Segment(directory, base)
            if expected is not None and base != expected:
                self._remove_from(bases[i:], f"offset gap: expected a segment at {expected}")
                break
            last = i == len(bases) - 1
            truncated = self._recover_segment(segment, last)
            self._segments.append(segment)
            self._bases.append(base)
            expected = segment.next_offset
            if truncated and not last:
                self._remove_from(bases[i + 1 :], "follows a truncated segment")
                break
        if not self._segments:
            self._create_segment(0)
        else:
            self._activate(self._segments[-1])
        for truncation in report.truncations:
            log.warning(
                "stream %s: truncated %s at %d, %d bytes dropped: %s",
                directory,
                truncation.segment.name,
                truncation.position,
                truncation.truncated_bytes,
                truncation.reason,
            )
        for removed in report.removed_segments:
            log.warning(
                "stream %s: removed segment %s (from offset %d, %d bytes): %s",
                directory,
                removed.segment.name,
                removed.first_offset,
                removed.size,
                removed.reason,
            )
        if report.truncations or report.removed_segments or report.rebuilt_indexes:
            self._fsync_directory()

    def _remove_from(self, bases: list[int], reason: str) -> None:
        for base in bases:
            segment = _Segment(self.directory, base)
            size = segment.path.stat().st_size
            first = base
            try:
                # Best effort: what offsets were lost, from the first header if readable.
                if size >= BATCH_HEADER_SIZE:
                    first = decode_header(segment.pread(0, BATCH_HEADER_SIZE))[0]
            except (RecordBatchError, StorageError):
                pass
            segment.close_files()
            self.recovery.removed_segments.append(
                RemovedSegment(segment.path, first, -1, size, reason)
            )
            for path in (segment.path, segment.index.path, segment.time_index.path):
                path.unlink(missing_ok=True)

    def _recover_segment(self, segment: _Segment, last: bool) -> bool:
        """Validate ``segment``'s tail, truncate a bad one, repair its indexes.

        Returns whether the segment was truncated.
        """
        try:
            size = segment.path.stat().st_size
        except OSError as exc:
            raise StorageError(
                exc.errno, f"cannot stat segment: {exc.strerror}", segment.path
            ) from exc
        segment.size = size
        offsets = SparseIndex.read_entries(segment.index.path, OFFSET_ENTRY)
        times = SparseIndex.read_entries(segment.time_index.path, TIME_ENTRY)
        original = (offsets, times)
        reason = self._index_problem(offsets, times, size)
        if reason is None:
            assert offsets is not None and times is not None
            # Entries past the end of the file are from writes that never reached it.
            offsets = [entry for entry in offsets if entry[1] < size]
            start_relative, start_position = offsets[-1] if offsets else (0, 0)
            times = [entry for entry in times if entry[1] <= start_relative]
            max_timestamp = times[-1][0] if times else -1
            scan = self._scan(
                segment,
                start_position,
                segment.base_offset + start_relative,
                offsets,
                times,
                max_timestamp,
            )
            if start_position > 0 and scan.first_bad == start_position:
                # The batch the index points at is not there: the index cannot be trusted.
                reason = "last index entry does not point at a valid batch"
        if reason is not None:
            offsets, times = [], []
            scan = self._scan(segment, 0, segment.base_offset, offsets, times, -1)
            self.recovery.rebuilt_indexes.append(segment.index.path)
            log.info(
                "stream %s: rebuilding index of %s: %s", self.directory, segment.path.name, reason
            )
        assert offsets is not None and times is not None
        truncated = scan.first_bad < size
        if truncated:
            truncate_torn_tail(segment.path, scan.first_bad)
            self.recovery.truncations.append(
                Truncation(segment.path, scan.first_bad, size - scan.first_bad, scan.reason)
            )
            size = scan.first_bad
        segment.size = size
        segment.next_offset = scan.next_offset
        segment.max_timestamp = scan.max_timestamp
        segment.last_batch_offset = scan.last_batch_offset
        segment.last_batch_position = scan.last_batch_position
        segment.since_index = size - (offsets[-1][1] if offsets else 0)
        if (
            not last
            and scan.last_batch_offset >= 0
            and (not times or scan.max_timestamp > times[-1][0])
        ):
            # The final time entry a roll writes (see _roll), if the crash came first.
            times.append((scan.max_timestamp, scan.last_batch_offset - segment.base_offset))
        for index, entries, before in (
            (segment.index, offsets, original[0]),
            (segment.time_index, times, original[1]),
        ):
            if entries == before:
                index.open_existing(entries, writable=last)
            else:  # rewritten whole (tmp -> fsync -> rename); bounded by the interval rule
                index.rewrite(entries, writable=last)
        return truncated

    @staticmethod
    def _index_problem(
        offsets: list[tuple[int, int]] | None, times: list[tuple[int, int]] | None, size: int
    ) -> str | None:
        if offsets is None or times is None:
            return "index file missing or torn"
        for (a0, p0), (a1, p1) in zip(offsets, offsets[1:], strict=False):
            if a1 <= a0 or p1 <= p0:
                return "offset index not increasing"
        for (t0, a0), (t1, a1) in zip(times, times[1:], strict=False):
            if t1 < t0 or a1 < a0:
                return "time index not monotonic"
        if times and offsets and times[-1][1] < offsets[-1][0] and offsets[-1][1] < size:
            return "time index behind the offset index"
        return None

    class _Scan:
        __slots__ = (
            "first_bad",
            "reason",
            "next_offset",
            "max_timestamp",
            "last_batch_offset",
            "last_batch_position",
        )

    def _scan(
        self,
        segment: _Segment,
        position: int,
        expected_offset: int,
        offsets: list[tuple[int, int]],
        times: list[tuple[int, int]],
        max_timestamp: int,
    ) -> StreamLog._Scan:
        """CRC-check batches from ``position``; extend ``offsets``/``times`` as appends do.

        Reads ``SCAN_CHUNK_BYTES`` at a time (one batch at most beyond that).
        """
        base = segment.base_offset
        interval = self.index_interval_bytes
        since_index = position - (offsets[-1][1] if offsets else 0)
        result = StreamLog._Scan()
        result.reason = ""
        result.last_batch_offset = -1
        result.last_batch_position = -1
        if position > 0:
            # The batch at an index entry is known only by its offset until scanned.
            result.last_batch_offset = expected_offset
            result.last_batch_position = position
        while True:
            chunk = segment.pread(position, SCAN_CHUNK_BYTES)
            if not chunk:
                break
            pos = 0
            while pos < len(chunk):
                reason = ""
                if len(chunk) - pos < BATCH_OVERHEAD:
                    size = -1
                else:
                    size = batch_size_at(chunk, pos)
                if size < 0 or (len(chunk) - pos < size and size <= self.max_batch_bytes):
                    if pos > 0:
                        break  # read on from this batch
                    if size > 0 and len(chunk) < size:
                        bigger = segment.pread(position, size)
                        if len(bigger) == size:
                            chunk = bigger
                        else:
                            reason = f"torn batch: {len(bigger)} of {size} bytes"
                    else:
                        reason = f"torn batch header: {len(chunk)} bytes"
                if not reason:
                    try:
                        fields, size = check_batch(chunk, pos, self.max_batch_bytes)
                        check_appendable(fields)
                        if fields[0] != expected_offset:
                            raise RecordBatchError(
                                f"base offset {fields[0]}, expected {expected_offset}"
                            )
                        if fields[0] + fields[6] - base > MAX_RELATIVE_OFFSET:
                            raise RecordBatchError("offset beyond the segment's range")
                    except RecordBatchError as exc:
                        reason = str(exc)
                if reason:
                    result.first_bad = position + pos
                    result.reason = reason
                    result.next_offset = expected_offset
                    result.max_timestamp = max_timestamp
                    if result.last_batch_position == position + pos:
                        result.last_batch_offset = -1
                        result.last_batch_position = -1
                    return result
                batch_position = position + pos
                if since_index >= interval:
                    relative = fields[0] - base
                    offsets.append((relative, batch_position))
                    times.append((max(max_timestamp, fields[8]), relative))
                    since_index = 0
                if fields[8] > max_timestamp:
                    max_timestamp = fields[8]
                since_index += size
                result.last_batch_offset = fields[0]
                result.last_batch_position = batch_position
                expected_offset = fields[0] + fields[6] + 1
                pos += size
            position += pos
        result.first_bad = position
        result.next_offset = expected_offset
        result.max_timestamp = max_timestamp
        return result

    def _activate(self, segment: _Segment) -> None:
        """Open ``segment`` (already recovered) for appends."""
        for index in (segment.index, segment.time_index):
            if index.writer is None:
                # Recovered as a sealed segment, then every later one was removed.
                entries = SparseIndex.read_entries(index.path, index.entry)
                if entries is None:
                    raise StorageError(None, "index vanished during recovery", index.path)
                index.open_existing(entries, writable=True)
        fd = open_segment_for_append(segment.path)
        writer = _LogWriter(segment.path, fd, segment.size, self.flush_bytes)
        writer.indexes = (segment.index, segment.time_index)
        segment.writer = writer

    def _create_segment(self, base_offset: int) -> _Segment:
        segment = _Segment(self.directory, base_offset)
        fd = create_segment_file(segment.path)
        segment.index = SparseIndex.create(segment.index.path, OFFSET_ENTRY)
        segment.time_index = SparseIndex.create(segment.time_index.path, TIME_ENTRY)
        writer = _LogWriter(segment.path, fd, 0, self.flush_bytes)
        writer.indexes = (segment.index, segment.time_index)
        segment.writer = writer
        self._segments.append(segment)
        self._bases.append(base_offset)
        if self.syncer is not None and self._dir is not None:
            self.syncer.mark_dirty(self._dir)
        return segment

    # -- state ---------------------------------------------------------------------------

    @property
    def first_offset(self) -> int:
        """The oldest retained offset (== next_offset when the stream is empty)."""
        for segment in self._segments:
            if segment.size:
                return segment.base_offset
        return self._segments[-1].next_offset

    @property
    def next_offset(self) -> int:
        """The offset the next appended record gets."""
        return self._segments[-1].next_offset

    @property
    def last_offset(self) -> int:
        """The newest record's offset, or -1 when the stream holds none."""
        if self.first_offset == self.next_offset:
            return -1
        return self.next_offset - 1

    @property
    def last_batch_offset(self) -> int:
        """The first offset of the newest batch (RabbitMQ's ``last``), -1 when empty."""
        for segment in reversed(self._segments):
            if segment.last_batch_offset >= 0:
                return segment.last_batch_offset
        return -1

    @property
    def bytes_on_disk(self) -> int:
        return sum(segment.size for segment in self._segments)

    @property
    def segment_count(self) -> int:
        return len(self._segments)

    @property
    def message_count(self) -> int:
        return self.next_offset - self.first_offset

    def segment_bases(self) -> list[int]:
        return list(self._bases)

    # -- appending -----------------------------------------------------------------------

    def append(self, records: Sequence[Record]) -> AppendResult:
        """Append neutral records as one batch (records without a timestamp get now)."""
        batch = encode_batch(records, self.next_offset, now_ms=int(self.clock() * 1000))
        return self._append(batch, len(records), _max_timestamp(batch))

    def append_batch(self, data: bytes | bytearray) -> AppendResult:
        """Append one Kafka RecordBatch v2 as received; only its base offset is rewritten.

        A ``bytearray`` is rewritten in place (no copy).  Raises ``RecordBatchError``
        for a batch that is not whole, fails its CRC, or has non-dense offsets.
        """
        batch = data if isinstance(data, bytearray) else bytearray(data)
        fields, size = check_batch(batch, 0, self.max_batch_bytes)
        if size != len(batch):
            raise RecordBatchError(f"{len(batch) - size} bytes after the batch")
        check_appendable(fields)
        set_base_offset(batch, self.next_offset)
        return self._append(batch, fields[12], fields[8])

    def _append(self, batch: bytearray, count: int, max_timestamp: int) -> AppendResult:
        if self.failure is not None:
            raise self.failure
        if self.closed:
            raise StorageError(errno_module.EBADF, "append to a closed stream", self.directory)
        size = len(batch)
        if size > self.max_batch_bytes:
            raise RecordBatchError(f"batch of {size} bytes exceeds {self.max_batch_bytes}")
        segment = self._segments[-1]
        base_offset = segment.next_offset
        if segment.size and (
            segment.size + size > self.max_segment_bytes
            or base_offset + count - 1 - segment.base_offset > MAX_RELATIVE_OFFSET
        ):
            segment = self._roll()
        writer = segment.writer
        assert writer is not None
        position = segment.size
        if segment.since_index >= self.index_interval_bytes:
            relative = base_offset - segment.base_offset
            segment.index.append(relative, position)
            segment.time_index.append(max(segment.max_timestamp, max_timestamp), relative)
            segment.since_index = 0
        try:
            writer.append(batch)
        except StorageError as exc:
            # Sticky: what was buffered before this batch may be half written; offsets
            # handed out for it can no longer be promised.  Reopening recovers the log.
            self.failure = exc
            raise
        segment.since_index += size
        segment.size = position + size
        segment.next_offset = base_offset + count
        if max_timestamp > segment.max_timestamp:
            segment.max_timestamp = max_timestamp
        segment.last_batch_offset = base_offset
        segment.last_batch_position = position
        if self.syncer is not None:
            self.syncer.mark_dirty(writer)
        return AppendResult(
            base_offset, base_offset + count - 1, segment.base_offset, position, size
        )

    def _roll(self) -> _Segment:
        old = self._segments[-1]
        writer = old.writer
        assert writer is not None
        # Kafka's onBecomeInactiveSegment: a final time entry so the sealed segment's
        # newest timestamp is in its index (retention by age and time lookups use it).
        last_time = old.time_index.last()
        if old.last_batch_offset >= 0 and (last_time is None or old.max_timestamp > last_time[0]):
            old.time_index.append(old.max_timestamp, old.last_batch_offset - old.base_offset)
        writer.flush()
        old.index.seal()
        old.time_index.seal()
        old.writer = None
        index_writers = [w for w in (old.index.writer, old.time_index.writer) if w is not None]
        old.index.writer = None
        old.time_index.writer = None
        if self.syncer is not None:
            # Close each descriptor only after the fsync that covers it (Syncer.retire).
            for file in (writer, *index_writers):
                self.syncer.mark_dirty(file)
                self.syncer.retire(file, file.close)
        else:
            for file in (writer, *index_writers):
                os.fsync(file.fileno())
                file.close()
        segment = self._create_segment(old.next_offset)
        self.apply_retention()
        return segment

    # -- durability ----------------------------------------------------------------------

    def fileno(self) -> int:
        """The active segment's descriptor (with ``flush``: a ``Syncer`` target)."""
        writer = self._segments[-1].writer
        return writer.fileno() if writer is not None else -1

    def flush(self) -> None:
        """Hand buffered batches and index entries to the kernel (no fsync)."""
        writer = self._segments[-1].writer
        if writer is not None:
            writer.flush()

    def sync(self) -> None:
        """Flush and fsync the active segment, its indexes and the directory, here.

        For use without a ``Syncer`` (tools, tests, shutdown).
        """
        segment = self._segments[-1]
        self.flush()
        try:
            for file in (segment.writer, segment.index.writer, segment.time_index.writer):
                if file is not None:
                    os.fsync(file.fileno())
        except OSError as exc:
            raise StorageError(exc.errno, f"fsync failed: {exc.strerror}", self.directory) from exc
        self._fsync_directory()

    def _fsync_directory(self) -> None:
        if self._dir is not None:
            self._dir.fsync()

    def close(self) -> None:
        """Sync (when no write failed) and release every descriptor."""
        if self.closed:
            return
        before_close, self.before_close = self.before_close, None
        if before_close is not None and self.failure is None:
            before_close()
        try:
            if self.failure is None:
                if self.syncer is not None:
                    for file in self._active_files():
                        self.syncer.forget(file)
                    self.syncer.forget(self._dir)
                self.sync()
        finally:
            self.closed = True
            for segment in self._segments:
                if segment.writer is not None:
                    if self.syncer is not None:
                        self.syncer.retire(segment.writer, segment.writer.close)
                    else:
                        segment.writer.close()
                    segment.writer = None
                segment.close_files()
            if self._dir is not None:
                self._dir.close(self.syncer)
                self._dir = None

    def _active_files(self) -> list[Any]:
        segment = self._segments[-1]
        return [f for f in (segment.writer, segment.index.writer, segment.time_index.writer) if f]

    # -- retention -----------------------------------------------------------------------

    def apply_retention(self) -> list[RemovedSegment]:
        """Delete whole segments, oldest first, past ``max_bytes`` or ``max_age``.

        Never the active segment.  Runs after every roll; call it on a timer for age.
        """
        removed: list[RemovedSegment] = []
        max_bytes = self.max_bytes
        max_age_ms = None if self.max_age is None else self.max_age * 1000
        now_ms = self.clock() * 1000
        total = self.bytes_on_disk
        while len(self._segments) > 1:
            oldest = self._segments[0]
            if max_bytes is not None and total > max_bytes:
                reason = f"stream size {total} > max_bytes {max_bytes}"
            elif max_age_ms is not None and now_ms - oldest.max_timestamp > max_age_ms:
                reason = f"newest record older than max_age {self.max_age}s"
            else:
                break
            removed.append(self._delete_oldest(reason))
            total -= oldest.size
        return removed

    def _delete_oldest(self, reason: str) -> RemovedSegment:
        segment = self._segments.pop(0)
        self._bases.pop(0)
        segment.deleted = True
        # Log first: a crash between the unlinks leaves stray indexes, which open removes.
        for path in (segment.path, segment.index.path, segment.time_index.path):
            try:
                path.unlink()
            except FileNotFoundError:
                pass
            except OSError as exc:
                raise StorageError(exc.errno, f"cannot delete: {exc.strerror}", path) from exc
        segment.close_files()
        if self.syncer is not None and self._dir is not None:
            self.syncer.mark_dirty(self._dir)
        self.removed_by_retention += 1
        return RemovedSegment(
            segment.path, segment.base_offset, segment.next_offset, segment.size, reason
        )

    # -- lookups -------------------------------------------------------------------------

    def _segment_for(self, offset: int) -> _Segment:
        i = bisect_right(self._bases, offset) - 1
        return self._segments[max(i, 0)]

    def _segment_after(self, segment: _Segment) -> _Segment | None:
        i = bisect_right(self._bases, segment.base_offset)
        return self._segments[i] if i < len(self._segments) else None

    def _locate(self, offset: int) -> tuple[_Segment, int]:
        """(segment, position) of the batch holding ``offset`` (first <= offset <= next)."""
        segment = self._segment_for(offset)
        if offset >= segment.next_offset:
            if segment.writer is None:  # only an empty sealed segment; move on
                following = self._segment_after(segment)
                if following is not None:
                    return self._locate(max(offset, following.base_offset))
            return segment, segment.size
        entry = segment.index.search(0, offset - segment.base_offset)
        start = entry[1] if entry is not None else 0
        for position, fields in segment.headers(start, segment.size, self._header_chunk):
            if fields[0] + fields[6] >= offset:
                return segment, position
        raise StorageError(
            errno_module.EIO, f"offset {offset} not found in its segment", segment.path
        )

    def check_offset(self, offset: int) -> None:
        """Raise ``OffsetOutOfRange`` unless ``first_offset <= offset <= next_offset``."""
        first, next_offset = self.first_offset, self.next_offset
        if not first <= offset <= next_offset:
            raise OffsetOutOfRange(offset, first, next_offset)

    def _locate_time(self, timestamp_ms: int) -> tuple[_Segment, int, int]:
        """(segment, position, base offset) of the first batch with max timestamp >= t."""
        for segment in self._segments:
            if segment.max_timestamp < timestamp_ms or not segment.size:
                continue
            # The last entry strictly before t: every batch up to it is older than t.
            entry = segment.time_index.search(0, timestamp_ms, strict=True)
            start = 0
            if entry is not None:
                found = segment.index.search(0, entry[1])
                start = found[1] if found is not None else 0
            for position, fields in segment.headers(start, segment.size, self._header_chunk):
                if fields[8] >= timestamp_ms:
                    return segment, position, fields[0]
        last = self._segments[-1]
        return last, last.size, last.next_offset

    def offset_for_timestamp(self, timestamp_ms: int) -> int | None:
        """Kafka ListOffsets: the earliest offset whose record timestamp is >= t, or None."""
        segment, position, _base = self._locate_time(timestamp_ms)
        if position >= segment.size:
            return None
        size = batch_size_at(segment.pread(position, BATCH_OVERHEAD))
        for record in decode_records(segment.pread(position, size)):
            if record.timestamp is not None and record.timestamp >= timestamp_ms:
                return record.offset
        return None

    # -- reading -------------------------------------------------------------------------

    def reader(
        self,
        start: StartSpec = "next",
        *,
        timestamp: int | None = None,
        strict: bool = False,
        verify: bool = True,
    ) -> StreamReader:
        """A new cursor.  ``timestamp`` (ms since the epoch) overrides ``start``."""
        reader = StreamReader(self, verify)
        if timestamp is not None:
            reader.seek_timestamp(timestamp)
        else:
            reader.seek(start, strict=strict)
        return reader

    def file_ranges(self, offset: int, max_bytes: int) -> list[FileRange]:
        """Descriptor ranges of whole batches from the one holding ``offset``.

        At least the first batch (even if larger than ``max_bytes``), then as many
        whole batches as fit, across segments.  Raises ``OffsetOutOfRange`` for an
        offset outside ``[first_offset, next_offset]``.  Each range has its own
        duplicated descriptor, which the caller closes.
        """
        self.check_offset(offset)
        segment: _Segment | None
        segment, position = self._locate(offset)
        ranges: list[FileRange] = []
        budget = max_bytes
        while segment is not None:
            end = segment.size
            if position < end:
                stop = self._boundary(segment, position, min(end, position + budget))
                if stop == position:
                    if ranges:
                        break
                    stop = position + batch_size_at(segment.pread(position, BATCH_OVERHEAD))
                writer = segment.writer
                if writer is not None and stop > writer.written:
                    writer.flush()  # sendfile reads the file, not our buffer
                base = decode_header(segment.pread(position, BATCH_HEADER_SIZE))[0]
                ranges.append(
                    FileRange(
                        segment.path, os.dup(segment.read_fd()), position, stop - position, base
                    )
                )
                budget -= stop - position
                if stop < end or budget <= 0:
                    break
            segment = self._segment_after(segment)
            position = 0
        return ranges

    def _boundary(self, segment: _Segment, start: int, limit: int) -> int:
        """The end of the last whole batch in ``[start, limit]`` (``start`` if none fits)."""
        if limit >= segment.size:
            return segment.size
        entry = segment.index.search(1, limit)
        walk_from = start if entry is None or entry[1] < start else entry[1]
        stop = walk_from
        for position, fields in segment.headers(walk_from, segment.size, self._header_chunk):
            end = position + fields[1] + BATCH_OVERHEAD
            if end > limit:
                break
            stop = end
        return stop

    def __repr__(self) -> str:
        return (
            f"<StreamLog {self.directory} offsets {self.first_offset}..{self.next_offset} "
            f"{self.segment_count} segments {self.bytes_on_disk}B>"
        )


def _max_timestamp(batch: bytearray) -> int:
    return int.from_bytes(batch[35:43], "big", signed=True)


class StreamReader:
    """A cursor over a ``StreamLog``: a segment, a byte position and the next offset."""

    __slots__ = (
        "_log",
        "_segment",
        "_position",
        "next_offset",
        "start_offset",
        "verify",
        "skipped",
    )

    def __init__(self, stream: StreamLog, verify: bool = True) -> None:
        self._log = stream
        self._segment: _Segment | None = None
        self._position = 0
        self.next_offset = 0  # the offset after the last batch returned (or the start)
        self.start_offset = 0  # records below this are skipped by read_records
        self.verify = verify
        self.skipped = 0  # records lost to retention while this reader lagged

    def seek(self, start: StartSpec, *, strict: bool = False) -> None:
        stream = self._log
        if start == "first":
            offset = stream.first_offset
        elif start == "next":
            offset = stream.next_offset
        elif start == "last":
            offset = stream.last_batch_offset
            if offset < 0:
                offset = stream.next_offset
        elif isinstance(start, int) and not isinstance(start, bool):
            offset = start
            if strict:
                stream.check_offset(offset)
            offset = min(max(offset, stream.first_offset), stream.next_offset)
        else:
            raise ValueError(f"bad start {start!r}: an offset, 'first', 'last' or 'next'")
        self._segment, self._position = stream._locate(offset)
        self.next_offset = offset
        self.start_offset = offset

    def seek_timestamp(self, timestamp_ms: int) -> None:
        self._segment, self._position, offset = self._log._locate_time(timestamp_ms)
        self.next_offset = offset
        self.start_offset = offset

    @property
    def lag(self) -> int:
        """Records appended that this reader has not read yet."""
        return max(self._log.next_offset - self.next_offset, 0)

    def read(
        self, max_bytes: int = DEFAULT_READ_BYTES, end_offset: int | None = None
    ) -> list[Batch]:
        """Whole batches from the cursor on: at least one (if any), else <= max_bytes.

        ``end_offset`` stops before any batch starting at or after it (for example, the
        offset the last fsync covered).  An empty list means the reader is at the end.
        """
        stream = self._log
        segment = self._segment
        if segment is None or segment.deleted:
            self._relocate()
            segment = self._segment
        batches: list[Batch] = []
        budget = max_bytes
        verify = self.verify
        max_batch_bytes = stream.max_batch_bytes
        while segment is not None:
            position = self._position
            end = segment.size
            if position >= end:
                if segment.writer is not None:
                    break  # the active segment: at the end of the stream
                following = stream._segment_after(segment)
                if following is None:
                    break
                segment = self._segment = following
                self._position = 0
                continue
            want = min(max(budget, BATCH_OVERHEAD), end - position)
            data = segment.pread(position, want)
            if len(data) < BATCH_OVERHEAD:
                raise StorageError(errno_module.EIO, f"short read at {position}", segment.path)
            first_size = batch_size_at(data)
            if first_size > len(data):
                if batches:
                    break  # the next batch does not fit the budget
                if first_size > max_batch_bytes or position + first_size > end:
                    raise StorageError(
                        errno_module.EIO, f"bad batch length at {position}", segment.path
                    )
                data = segment.pread(position, first_size)
            view = memoryview(data)
            pos = 0
            available = len(data)
            while pos + BATCH_OVERHEAD <= available:
                size = batch_size_at(view, pos)
                if pos + size > available:
                    break
                try:
                    if verify:
                        fields, size = check_batch(view, pos, max_batch_bytes)
                    else:
                        fields = decode_header(view, pos, max_batch_bytes)
                except RecordBatchError as exc:
                    if batches:
                        # Hand out the good batches before the damage first; the next
                        # read starts at the damaged batch and raises there.
                        self._position = position + pos
                        return batches
                    raise StorageError(
                        errno_module.EIO, f"damaged batch at {position + pos}: {exc}", segment.path
                    ) from None
                if end_offset is not None and fields[0] >= end_offset:
                    self._position = position + pos
                    return batches
                batch = Batch(view[pos : pos + size], fields)
                batches.append(batch)
                self.next_offset = batch.last_offset + 1
                pos += size
            self._position = position + pos
            budget -= pos
            if budget <= 0:
                break
        return batches

    def read_records(
        self, max_bytes: int = DEFAULT_READ_BYTES, end_offset: int | None = None
    ) -> list[Record]:
        """``read`` then decode, dropping records below the start (the Kafka client's job)."""
        start = self.start_offset
        records = [
            record
            for batch in self.read(max_bytes, end_offset)
            for record in batch.records()
            if record.offset >= start
        ]
        return records

    def read_rows(
        self, max_bytes: int = DEFAULT_READ_BYTES, end_offset: int | None = None
    ) -> list[tuple[Any, ...]]:
        """``read_records`` as ``record_batch.decode_rows`` tuples (offset first), each
        batch decoded in one call without checking its CRC a second time (``read``
        has, unless this reader was made with ``verify=False``)."""
        start = self.start_offset
        rows: list[tuple[Any, ...]] = []
        for batch in self.read(max_bytes, end_offset):
            decoded = decode_rows(batch.data, check_crc=False)
            if batch.base_offset < start:
                decoded = [row for row in decoded if row[0] >= start]
            rows += decoded
        return rows

    def _relocate(self) -> None:
        """The segment under the reader was deleted: continue at the new first offset."""
        stream = self._log
        first = stream.first_offset
        if self.next_offset < first:
            self.skipped += first - self.next_offset
            self.next_offset = first
            self.start_offset = max(self.start_offset, first)
        self._segment, self._position = stream._locate(self.next_offset)

    def __repr__(self) -> str:
        return f"<StreamReader next={self.next_offset} lag={self.lag}>"
