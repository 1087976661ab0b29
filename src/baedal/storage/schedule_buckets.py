"""Where scheduled messages wait: append-only logs, one per bucket of due time.

Theory of operation
-------------------
A broker may hold millions of scheduled messages, due hours or months from now, while
only the ones due in the next seconds matter to the timer.  So memory must not grow
with the number of waiting jobs: the scheduler (core/scheduler.py) keeps in memory only
the jobs due within a near window, and this store keeps every job on disk in
*time-ordered* form, so that the window can be filled shortly before it is needed
without reading anything else.

Due time is cut into buckets of ``BUCKET_SECONDS`` (bucket ``i`` covers due times
``[i * BUCKET_SECONDS, (i + 1) * BUCKET_SECONDS)``).  Each bucket is three files in
``<directory>/buckets``:

* ``<i>.jobs``: the jobs, append-only, each record ``length:u32 | crc32:u32 | payload``
  (the payload is a compact binary *envelope*, below).  A job's identity within the
  store is (bucket, byte offset).
* ``<i>.gone``: tombstones, append-only ``offset:u32`` each, for jobs that fired or
  were cancelled.  A fired job's tombstone is written only after the fsync that covers
  its delivery (the scheduler arranges that), so a crash in between fires it again:
  at least once, never lost.
* ``<i>.sum``: the bucket's summary checkpoint, a little JSON: bytes and records of the
  ``.jobs`` file and bytes of the ``.gone`` file it covers, live jobs per vhost, the
  highest job sequence.  Written (tmp -> rename) every ``CHECKPOINT_EVENTS`` appends and
  tombstones and at a clean shutdown.

In memory, per bucket, only that summary (a ``Bucket``): so the store's memory grows with
the number of buckets (one per 10 s of due time that has jobs), not jobs.

Recovery reads the summaries, not the jobs.  A bucket whose files are exactly what its
summary describes is trusted as is; any other (written after its last checkpoint: a
kill -9) is scanned alone: records walked and CRC-checked, a torn tail truncated, its
tombstones applied.  So after a crash the work is bounded by what was written since the
last checkpoint of each bucket, and after a clean stop it is one small file per bucket.

Jobs that repeat (``AMQ_SCHEDULED_PERIOD``/``REPEAT``/``CRON``) live in one more log,
``recurring-<generation>.jobs`` (+ ``.gone``), always held in memory by the scheduler:
each firing appends the job with its next due time and tombstones the old record, so the
job keeps its id while it moves through time.  Recurring jobs are a catalogue (a few per
application), not a backlog.  The log is compacted (its live jobs written to the next
generation, fsynced, renamed into place, then the old generation deleted: a crash at
any point leaves one whole generation, the highest) when it is opened and whenever its
dead records outnumber the live ones by ``RECURRING_COMPACT_MIN``.

The envelope (``encode_job``/``decode_job``), binary so that firing decodes it with one
``struct`` unpack plus a few short strings::

    due:f64 | seq:u64 | kind:u8 | delay:i64 | period:i64 | repeat:i64 | repeat_left:i64
    | fired:u32 | cron_next:f64 (NaN: none) | created:f64
    | vhost | exchange | routing_key | cron      (each len:u16 | UTF-8)
    | extra count:u16 | (len:u16 | UTF-8) ...     (CC/BCC routing keys)
    | the scheduled message's neutral record (storage/record.py ``encode_record``)

Durability: appends are buffered and marked dirty in the broker's one ``Syncer``, so the
publisher confirm of a scheduled message waits for the group-committed fsync that covers
its job, exactly as for a persistent message in a durable queue.

The layout before this one (a single segment log with JSON state, ``LegacyScheduleStore``
in storage/schedule_store.py) is migrated when found: every job is rewritten here, the
new files fsynced, then the old segments deleted.

``MemoryScheduleStore`` is the same store with the files kept in memory (a broker
started without durable storage).
"""

from __future__ import annotations

import json
import logging
import math
import os
import struct
import zlib
from collections import OrderedDict
from pathlib import Path
from typing import Any

from .syncer import Syncer

__all__ = [
    "BUCKET_SECONDS",
    "RECURRING",
    "Bucket",
    "BucketScheduleStore",
    "JobRecord",
    "MemoryScheduleStore",
    "decode_job",
    "encode_job",
]

log = logging.getLogger("baedal.storage")

# Width of a bucket of due time.  Ten seconds: at 1,700 jobs/s (1 M over 10 minutes) a
# bucket holds ~17k jobs (a few MiB to load), and a year of sparse schedules is at most
# 3 M small summaries; shorter buckets mean more files, longer ones a larger window.
BUCKET_SECONDS = 10.0
RECURRING = -1  # the bucket index of the recurring-jobs log
RECURRING_COMPACT_MIN = 4096
MIGRATED_MARKER = "MIGRATED"  # the legacy layout was rewritten here and synced
# Summary checkpoint after this many appends + tombstones in a bucket (bounds the
# re-scan after a crash to the records written since).
CHECKPOINT_EVENTS = 4096
# Open append handles kept (least recently used closed first): a burst of publishes
# spread over months touches many buckets, and descriptors are a bounded resource.
MAX_OPEN_FILES = 64
WRITE_BUFFER = 1 << 16

_RECORD = struct.Struct("<II")  # length, crc32 of the payload
_HEAD = struct.Struct("<dQBqqqqIdd")
_SEQ = struct.Struct("<Q")
_SEQ_AT = 8  # the seq field's offset in the envelope (after due:f64)
_LEN = struct.Struct("<H")
_OFFSET = struct.Struct("<I")
KIND_ACTIVEMQ = 0
KIND_X_DELAY = 1
KINDS = ("activemq", "x-delay")
MAX_BUCKET_BYTES = (1 << 32) - 1  # offsets are u32 in tombstones


class StoreError(OSError):
    """The schedule store cannot be written or read back."""


class JobRecord:
    """A job's envelope fields (everything but the message)."""

    __slots__ = (
        "due", "seq", "kind", "delay", "period", "repeat", "repeat_left", "fired", "cron_next",
        "created", "vhost", "exchange", "routing_key", "cron", "extra", "message_at",
    )

    def __init__(
        self, due: float, seq: int, kind: int, delay: int, period: int, repeat: int, repeat_left: int,
        fired: int, cron_next: float | None, created: float, vhost: str, exchange: str, routing_key: str,
        cron: str | None, extra: list[str], message_at: int = 0,
    ) -> None:
        self.due = due
        self.seq = seq
        self.kind = kind
        self.delay = delay
        self.period = period
        self.repeat = repeat
        self.repeat_left = repeat_left
        self.fired = fired
        self.cron_next = cron_next
        self.created = created
        self.vhost = vhost
        self.exchange = exchange
        self.routing_key = routing_key
        self.cron = cron
        self.extra = extra
        self.message_at = message_at  # where the message record starts in the payload


def _string(value: str) -> bytes:
    data = value.encode()
    if len(data) > 0xFFFF:
        raise ValueError("schedule envelope string longer than 65535 bytes")
    return _LEN.pack(len(data)) + data


def encode_job(job: JobRecord, message_record: bytes | memoryview) -> bytes:
    """The envelope payload for ``job`` around an already encoded message record."""
    parts = [
        _HEAD.pack(
            job.due, job.seq, job.kind, job.delay, job.period, job.repeat, job.repeat_left, job.fired,
            math.nan if job.cron_next is None else job.cron_next, job.created,
        ),
        _string(job.vhost), _string(job.exchange), _string(job.routing_key), _string(job.cron or ""),
        _LEN.pack(len(job.extra)),
    ]
    parts.extend(_string(key) for key in job.extra)
    parts.append(message_record)
    return b"".join(parts)


def decode_job(payload: bytes) -> JobRecord:
    """The envelope's fields; the message record starts at ``message_at``."""
    due, seq, kind, delay, period, repeat, repeat_left, fired, cron_next, created = _HEAD.unpack_from(payload)
    pos = _HEAD.size
    strings = []
    for _ in range(4):
        (length,) = _LEN.unpack_from(payload, pos)
        pos += 2
        strings.append(payload[pos : pos + length].decode())
        pos += length
    (count,) = _LEN.unpack_from(payload, pos)
    pos += 2
    extra = []
    for _ in range(count):
        (length,) = _LEN.unpack_from(payload, pos)
        pos += 2
        extra.append(payload[pos : pos + length].decode())
        pos += length
    vhost, exchange, routing_key, cron = strings
    return JobRecord(
        due, seq, kind, delay, period, repeat, repeat_left, fired,
        None if cron_next != cron_next else cron_next, created,  # NaN: no cron
        vhost, exchange, routing_key, cron or None, extra, pos,
    )


def job_seq(payload: bytes) -> int:
    return _SEQ.unpack_from(payload, _SEQ_AT)[0]


def job_due(payload: bytes) -> float:
    return float(struct.unpack_from("<d", payload)[0])


def walk_records(data: bytes, start: int = 0, limit: int = -1) -> tuple[list[tuple[int, bytes]], int]:
    """The whole, CRC-correct records of a job log from ``start`` (at most ``limit``,
    all if negative): ([(offset, payload)], where the next record would start).  Stops
    at the first short or corrupt record (a torn tail: the log is append-only with one
    writer, so damage is only ever at the end)."""
    records = []
    pos = start
    size = len(data)
    head = _RECORD.size
    unpack = _RECORD.unpack_from
    crc32 = zlib.crc32
    while pos + head <= size and limit != 0:
        limit -= 1
        length, crc = unpack(data, pos)
        end = pos + head + length
        if end > size:
            break
        payload = data[pos + head : end]
        if crc32(payload) != crc or length < _HEAD.size:
            break
        records.append((pos, payload))
        pos = end
    return records, pos


class _DirectoryTarget:
    """The bucket directory's descriptor, as a ``Syncer`` target."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


class Bucket:
    """One bucket's summary, and while the scheduler holds it in its window, the map of
    its live jobs (``live``: seq -> offset)."""

    __slots__ = (
        "index", "size", "records", "gone_bytes", "vhosts", "max_seq", "live", "pending", "events",
        "deleted",
    )

    def __init__(self, index: int) -> None:
        self.index = index
        self.size = 0  # bytes in the .jobs log, buffered included
        self.records = 0  # records in the .jobs log (live and tombstoned)
        self.gone_bytes = 0  # bytes in the .gone file
        self.vhosts: dict[str, int] = {}  # live one-shot jobs per vhost
        self.max_seq = 0
        self.live: dict[int, int] | None = None  # loaded: seq -> offset
        self.pending = 0  # tombstones the scheduler will write after an fsync
        self.events = 0  # appends + tombstones since the last summary checkpoint
        self.deleted = False

    @property
    def count(self) -> int:
        return sum(self.vhosts.values())

    def count_in(self, selection: Any) -> int:
        if selection is None:
            return self.count
        if isinstance(selection, str):
            return self.vhosts.get(selection, 0)
        return sum(count for vhost, count in self.vhosts.items() if vhost in selection)

    def __repr__(self) -> str:
        return f"<Bucket {self.index} records={self.records} live={self.count} loaded={self.live is not None}>"


class BucketScheduleStore:
    """Scheduled jobs in time buckets on disk (see the module docstring)."""

    durable = True

    def __init__(
        self, directory: str | os.PathLike[str], syncer: Syncer | None, *, segment_bytes: int = 1 << 24
    ) -> None:
        self.directory = Path(directory)
        self.path = self.directory / "buckets"
        self.syncer = syncer
        self.buckets: dict[int, Bucket] = {}
        self.recurring = Bucket(RECURRING)
        self.failure: BaseException | None = None
        self._writers: OrderedDict[str, Any] = OrderedDict()
        self._seq = 0
        self._generation = 0  # of the recurring log
        self.migrated: list[Any] = []  # legacy jobs found at open (StoredJob), see _migrate_legacy
        # Counters (tests, start-up log): records walked at open, buckets scanned.
        self.scanned_records = 0
        self.scanned_buckets = 0
        self._prepare()
        self._recover()
        self._seq = max(self._seq, int(_now_us()))
        self._migrate_legacy(segment_bytes)

    # --- file primitives (MemoryScheduleStore replaces these) --------------------------

    def _prepare(self) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        # A new bucket file is durable only once its directory entry is: the directory
        # is fsynced with the next group commit after a file is created.
        self._directory = _DirectoryTarget(os.open(self.path, os.O_RDONLY))

    def _names(self) -> list[str]:
        return os.listdir(self.path)

    def _append_file(self, name: str, data: bytes) -> None:
        writers = self._writers
        handle = writers.get(name)
        if handle is None:
            path = self.path / name
            created = not path.exists()
            handle = writers[name] = open(path, "ab", buffering=WRITE_BUFFER)  # noqa: SIM115
            if created and self.syncer is not None:
                self.syncer.mark_dirty(self._directory)
            if len(writers) > MAX_OPEN_FILES:
                _old_name, old = writers.popitem(last=False)
                self._retire(old)
        else:
            writers.move_to_end(name)
        handle.write(data)
        if self.syncer is not None:
            self.syncer.mark_dirty(handle)

    def _retire(self, handle: Any) -> None:
        # Flushed now: a later handle on the same file must append after this data.
        handle.flush()
        if self.syncer is not None:
            self.syncer.retire(handle, handle.close)
        else:
            handle.close()

    def _flush_writer(self, name: str) -> None:
        handle = self._writers.get(name)
        if handle is not None:
            handle.flush()

    def _read_file(self, name: str) -> bytes:
        self._flush_writer(name)
        try:
            with open(self.path / name, "rb") as file:
                return file.read()
        except FileNotFoundError:
            return b""

    def _file_size(self, name: str) -> int:
        try:
            return os.stat(self.path / name).st_size
        except FileNotFoundError:
            return -1

    def _read_at(self, name: str, offset: int, size: int) -> bytes:
        self._flush_writer(name)
        with open(self.path / name, "rb") as file:
            file.seek(offset)
            return file.read(size)

    def _truncate(self, name: str, size: int) -> None:
        os.truncate(self.path / name, size)

    def _unlink(self, name: str) -> None:
        handle = self._writers.pop(name, None)
        if handle is not None:
            self._retire(handle)
        try:
            os.unlink(self.path / name)
        except FileNotFoundError:
            pass

    def _write_summary_file(self, name: str, data: bytes) -> None:
        tmp = self.path / (name + ".tmp")
        with open(tmp, "wb") as file:
            file.write(data)
        os.replace(tmp, self.path / name)

    def _read_summary_file(self, name: str) -> bytes | None:
        try:
            return (self.path / name).read_bytes()
        except FileNotFoundError:
            return None

    # --- names ---------------------------------------------------------------------------

    def _stem(self, index: int) -> str:
        return f"recurring-{self._generation:06d}" if index == RECURRING else f"{index:012d}"

    # --- recovery ------------------------------------------------------------------------

    def _recover(self) -> None:
        stems: set[str] = set()
        for name in self._names():
            stem, _, extension = name.partition(".")
            if extension == "jobs":
                stems.add(stem)
            elif extension.endswith("tmp"):
                self._unlink(name)  # an interrupted summary write: the old one stands
        generations = sorted(int(stem[10:]) for stem in stems if stem.startswith("recurring-"))
        if generations:
            self._generation = generations[-1]  # the highest is whole (renamed into place)
        stems = {stem for stem in stems if not stem.startswith("recurring-")}
        if generations:
            stems.add(self._stem(RECURRING))
        for name in self._names():  # files of a bucket or generation already gone
            stem, _, extension = name.partition(".")
            if extension in ("sum", "gone", "jobs") and stem not in stems:
                self._unlink(name)
        for stem in sorted(stems):
            index = RECURRING if stem.startswith("recurring-") else int(stem)
            bucket = self.recurring if index == RECURRING else Bucket(index)
            if index == RECURRING or not self._trust_summary(bucket):
                self._scan(bucket)
            if index == RECURRING:
                self._compact_recurring()
            elif bucket.count == 0:  # empty, or every job fired or cancelled
                self._drop_files(bucket)
                continue
            else:
                self.buckets[index] = bucket
            self._seq = max(self._seq, bucket.max_seq)
        if self.scanned_buckets:
            log.info(
                "schedule store: %d bucket(s) re-scanned (%d records) after an unclean stop",
                self.scanned_buckets, self.scanned_records,
            )

    def _trust_summary(self, bucket: Bucket) -> bool:
        stem = self._stem(bucket.index)
        raw = self._read_summary_file(stem + ".sum")
        if raw is None:
            return False
        try:
            summary = json.loads(raw)
            size, records, gone = int(summary["size"]), int(summary["records"]), int(summary["gone"])
            vhosts = {str(k): int(v) for k, v in summary["vhosts"].items()}
            max_seq = int(summary["max_seq"])
        except (ValueError, KeyError, TypeError, AttributeError):
            return False
        if self._file_size(stem + ".jobs") != size or max(0, self._file_size(stem + ".gone")) != gone:
            return False  # written after the checkpoint (or damaged): scan this bucket
        bucket.size, bucket.records, bucket.gone_bytes = size, records, gone
        bucket.vhosts = {vhost: count for vhost, count in vhosts.items() if count > 0}
        bucket.max_seq = max_seq
        return True

    def _scan(self, bucket: Bucket) -> None:
        """Rebuild one bucket's summary from its files, truncating a torn tail."""
        stem = self._stem(bucket.index)
        data = self._read_file(stem + ".jobs")
        records, end = walk_records(data)
        if end < len(data):
            log.warning(
                "schedule store: %s.jobs: %d byte(s) of torn or corrupt tail dropped", stem, len(data) - end
            )
            self._truncate(stem + ".jobs", end)
        dead = self._dead(bucket)
        vhosts: dict[str, int] = {}
        max_seq = 0
        for offset, payload in records:
            job = decode_job(payload)
            max_seq = max(max_seq, job.seq)
            if offset not in dead:
                vhosts[job.vhost] = vhosts.get(job.vhost, 0) + 1
        bucket.size, bucket.records = end, len(records)
        bucket.vhosts, bucket.max_seq = vhosts, max_seq
        bucket.events = CHECKPOINT_EVENTS  # checkpoint at the next chance
        self.scanned_buckets += 1
        self.scanned_records += len(records)

    def _dead(self, bucket: Bucket) -> set[int]:
        stem = self._stem(bucket.index)
        data = self._read_file(stem + ".gone")
        whole = len(data) - len(data) % 4
        bucket.gone_bytes = len(data)
        return {value for (value,) in _OFFSET.iter_unpack(data[:whole])}

    def _compact_recurring(self) -> None:
        """Rewrite the recurring log with its live jobs only (each firing of a recurring
        job appends a record): tmp -> fsync -> rename, then the tombstones go."""
        bucket = self.recurring
        records = self.records(bucket)
        latest = {job_seq(payload): payload for _offset, payload in records}  # later wins
        if bucket.records == len(latest) and bucket.gone_bytes == 0:
            return
        self._rewrite_recurring(list(latest.values()))

    def compact_recurring(self) -> None:
        """Runtime compaction: the live jobs (``recurring.live``) into the next generation;
        ``live`` is updated with their new offsets.  The caller makes sure no tombstone
        of this log is pending."""
        bucket = self.recurring
        live = bucket.live or {}
        alive = {offset: seq for seq, offset in live.items()}
        data = self._read_file(self._stem(RECURRING) + ".jobs")[: bucket.size]
        records, _end = walk_records(data)
        payloads = []
        offsets: dict[int, int] = {}
        position = 0
        for offset, payload in records:
            seq = alive.get(offset)
            if seq is not None:
                offsets[seq] = position
                position += _RECORD.size + len(payload)
                payloads.append(payload)
        try:
            self._rewrite_recurring(payloads)
        except OSError as exc:  # the old generation stands
            log.warning("schedule store: recurring log not compacted: %s", exc)
            return
        live.clear()
        live.update(offsets)

    def _rewrite_recurring(self, payloads: list[bytes]) -> None:
        bucket = self.recurring
        old = self._stem(RECURRING)
        new = f"recurring-{self._generation + 1:06d}"
        tmp = self.path / (new + ".jobs.tmp")
        data = b"".join(_RECORD.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        with open(tmp, "wb") as file:
            file.write(data)
            file.flush()
            os.fsync(file.fileno())
        os.replace(tmp, self.path / (new + ".jobs"))
        self._generation += 1
        for extension in (".jobs", ".gone"):
            self._unlink(old + extension)
        bucket.size, bucket.records, bucket.gone_bytes = len(data), len(payloads), 0

    def _migrate_legacy(self, segment_bytes: int) -> None:
        if (self.path / MIGRATED_MARKER).exists():
            self._delete_legacy()  # migrated and synced before a crash: only the deletes remain
            return
        if not any(name.endswith(".seg") for name in os.listdir(self.directory)):
            return
        from .schedule_store import LegacyScheduleStore

        legacy = LegacyScheduleStore(self.directory, self.syncer or Syncer(), segment_bytes=segment_bytes)
        self.migrated = list(legacy.read_all())
        legacy.close()
        # The caller (the scheduler) rewrites these through ``append``; ``finish_migration``
        # then fsyncs the new files and deletes the old segments.

    def finish_migration(self) -> None:
        """After the scheduler rewrote every legacy job: make them durable, then mark the
        migration done (so a crash while deleting the old files cannot migrate twice),
        then delete the old layout."""
        self.sync()
        os.fsync(self._directory.fileno())
        with open(self.path / MIGRATED_MARKER, "wb") as marker:
            os.fsync(marker.fileno())
        os.fsync(self._directory.fileno())
        self._delete_legacy()
        self.migrated = []

    def _delete_legacy(self) -> None:
        for name in os.listdir(self.directory):
            path = self.directory / name
            if path.is_file():
                path.unlink()
        (self.path / MIGRATED_MARKER).unlink(missing_ok=True)

    # --- the scheduler's operations ----------------------------------------------------

    def next_seq(self) -> int:
        """A job sequence, unique across restarts (seeded from the clock in µs and the
        highest sequence on disk, whichever is larger)."""
        self._seq += 1
        return self._seq

    def bucket_for(self, index: int) -> Bucket:
        if index == RECURRING:
            return self.recurring
        bucket = self.buckets.get(index)
        if bucket is None:
            bucket = self.buckets[index] = Bucket(index)
        return bucket

    def append(self, bucket: Bucket, payload: bytes, vhost: str, seq: int) -> int:
        """Append a job record; returns its offset.  Raises ``StoreError``."""
        if self.failure is not None:
            raise StoreError(f"schedule store failed earlier: {self.failure}")
        offset = bucket.size
        record = _RECORD.pack(len(payload), zlib.crc32(payload)) + payload
        if offset + len(record) > MAX_BUCKET_BYTES:
            raise StoreError("schedule bucket full (4 GiB)")
        try:
            self._append_file(self._stem(bucket.index) + ".jobs", record)
        except OSError as exc:
            self.failure = exc
            raise StoreError(f"schedule store write failed: {exc}") from exc
        bucket.size = offset + len(record)
        bucket.records += 1
        if bucket.index != RECURRING:
            vhosts = bucket.vhosts
            vhosts[vhost] = vhosts.get(vhost, 0) + 1
        if seq > bucket.max_seq:
            bucket.max_seq = seq
        bucket.events += 1
        return offset

    def tombstone(self, bucket: Bucket, offsets: list[int]) -> None:
        """Mark records gone (fired or cancelled).  The caller has already taken them
        out of the live counts."""
        if bucket.deleted or not offsets:
            return
        data = b"".join(_OFFSET.pack(offset) for offset in offsets)
        try:
            self._append_file(self._stem(bucket.index) + ".gone", data)
        except OSError as exc:  # the jobs fire again after a restart: at least once
            log.warning("schedule store: tombstones not written: %s", exc)
            return
        bucket.gone_bytes += len(data)
        bucket.events += len(offsets)

    def maybe_checkpoint(self, bucket: Bucket) -> None:
        if (
            bucket.events >= CHECKPOINT_EVENTS and bucket.pending == 0 and not bucket.deleted
            and bucket.index != RECURRING
        ):
            self.checkpoint(bucket)

    def checkpoint(self, bucket: Bucket) -> None:
        """Write the bucket's summary (only with no tombstone pending: the summary's
        counts must match the files it describes)."""
        stem = self._stem(bucket.index)
        self._flush_writer(stem + ".jobs")
        self._flush_writer(stem + ".gone")
        summary = {
            "size": bucket.size, "records": bucket.records, "gone": bucket.gone_bytes,
            "vhosts": bucket.vhosts, "max_seq": bucket.max_seq,
        }
        try:
            self._write_summary_file(stem + ".sum", json.dumps(summary, separators=(",", ":")).encode())
        except OSError as exc:  # only a slower recovery
            log.warning("schedule store: summary of bucket %s not written: %s", stem, exc)
            return
        bucket.events = 0

    def records(self, bucket: Bucket) -> list[tuple[int, bytes]]:
        """The bucket's live records (offset, payload), in log order, read from disk."""
        stem = self._stem(bucket.index)
        data = self._read_file(stem + ".jobs")[: bucket.size]
        records, _end = walk_records(data)
        if bucket.live is not None:  # loaded: tombstones may still be pending, live is exact
            alive = set(bucket.live.values())
            return [(offset, payload) for offset, payload in records if offset in alive]
        dead = self._dead(bucket)
        return [(offset, payload) for offset, payload in records if offset not in dead]

    def read_all(self, bucket: Bucket) -> tuple[bytes, set[int]]:
        """The bucket's whole log as written so far and its tombstoned offsets (the
        scheduler walks it when it loads the bucket into its window)."""
        stem = self._stem(bucket.index)
        return self._read_file(stem + ".jobs")[: bucket.size], self._dead(bucket)

    def read(self, bucket: Bucket, offset: int) -> bytes | None:
        stem = self._stem(bucket.index)
        head = self._read_at(stem + ".jobs", offset, _RECORD.size)
        if len(head) < _RECORD.size:
            return None
        length, crc = _RECORD.unpack(head)
        payload = self._read_at(stem + ".jobs", offset + _RECORD.size, length)
        if len(payload) != length or zlib.crc32(payload) != crc:
            return None
        return payload

    def drop(self, bucket: Bucket) -> None:
        """Delete an emptied bucket's files."""
        bucket.deleted = True
        if self.buckets.get(bucket.index) is bucket:
            del self.buckets[bucket.index]
        self._drop_files(bucket)

    def _drop_files(self, bucket: Bucket) -> None:
        stem = self._stem(bucket.index)
        for extension in (".sum", ".jobs", ".gone"):
            self._unlink(stem + extension)

    def count(self, selection: Any = None) -> int:
        return sum(bucket.count_in(selection) for bucket in self.buckets.values())

    def sync(self) -> None:
        for handle in self._writers.values():
            handle.flush()
            os.fsync(handle.fileno())

    def close(self, clean: bool = True) -> None:
        """Close every file; a clean close checkpoints every bucket first (so the next
        start reads summaries only).  After a failed fsync (``clean=False``) nothing
        more is written: the next start re-scans what the summaries do not cover."""
        if clean and self.failure is None:
            for bucket in [*self.buckets.values(), self.recurring]:
                if bucket.events and bucket.pending == 0 and bucket.index != RECURRING:
                    self.checkpoint(bucket)
        for handle in self._writers.values():
            try:
                handle.flush()
                if clean:
                    os.fsync(handle.fileno())
            except OSError as exc:
                log.warning("schedule store: close: %s", exc)
            if self.syncer is not None:
                # An fsync job may have this descriptor in flight: closed after it.
                self.syncer.forget(handle)
                self.syncer.retire(handle, handle.close)
            else:
                handle.close()
        self._writers.clear()
        if self.syncer is not None:
            self.syncer.forget(self._directory)
            self.syncer.retire(self._directory, self._directory.close)
        else:
            self._directory.close()


class MemoryScheduleStore(BucketScheduleStore):
    """The same store with its files in memory (a broker without durable storage)."""

    durable = False

    def __init__(self) -> None:
        self._files: dict[str, bytearray] = {}
        super().__init__(Path("."), None)

    def _prepare(self) -> None:
        pass

    def _names(self) -> list[str]:
        return list(self._files)

    def _append_file(self, name: str, data: bytes) -> None:
        self._files.setdefault(name, bytearray()).extend(data)

    def _flush_writer(self, name: str) -> None:
        pass

    def _read_file(self, name: str) -> bytes:
        return bytes(self._files.get(name, b""))

    def _file_size(self, name: str) -> int:
        data = self._files.get(name)
        return -1 if data is None else len(data)

    def _read_at(self, name: str, offset: int, size: int) -> bytes:
        return bytes(self._files.get(name, b"")[offset : offset + size])

    def _truncate(self, name: str, size: int) -> None:
        del self._files[name][size:]

    def _unlink(self, name: str) -> None:
        self._files.pop(name, None)

    def _write_summary_file(self, name: str, data: bytes) -> None:
        self._files[name] = bytearray(data)

    def _read_summary_file(self, name: str) -> bytes | None:
        data = self._files.get(name)
        return None if data is None else bytes(data)

    def _rewrite_recurring(self, payloads: list[bytes]) -> None:
        bucket = self.recurring
        data = b"".join(_RECORD.pack(len(p), zlib.crc32(p)) + p for p in payloads)
        old = self._stem(RECURRING)
        self._generation += 1
        self._files[self._stem(RECURRING) + ".jobs"] = bytearray(data)
        self._files.pop(old + ".jobs", None)
        self._files.pop(old + ".gone", None)
        bucket.size, bucket.records, bucket.gone_bytes = len(data), len(payloads), 0

    def _migrate_legacy(self, segment_bytes: int) -> None:
        pass

    def sync(self) -> None:
        pass

    def close(self, clean: bool = True) -> None:
        self._files.clear()


def _now_us() -> float:
    import time

    return time.time() * 1_000_000
