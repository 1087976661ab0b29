"""Append-only segment files: the log that holds a durable queue's messages.

Theory of operation
-------------------
A segment is one file: a 16-byte header (magic, version) followed by records::

    length:u32 | crc32c:u32 | kind:u8 | payload[length]

``length`` counts the payload only; the CRC covers ``kind + payload`` so a flipped kind
byte is caught too.  A record's offset in its file is its address (together with the
segment id it forms the queue position, see ``queue_store``).

Writes go to a user-space buffer (``bytearray``) and reach the kernel with ``os.write``
on the event-loop thread when the buffer passes ``flush_bytes`` or when the syncer
starts an fsync job (``flush()``).  Nothing here calls fsync: the ``Syncer`` does, in a
worker thread, for every file marked dirty.  Reads use ``os.pread`` on a separate
read-only descriptor so they never move the writer's file position; a read that reaches
into bytes still in the buffer flushes first.

A failed write is sticky (the nats-server rule): after an ``OSError`` the file refuses
every later write with the same ``StorageError`` (carrying the original errno) until the
owner calls ``truncate_to_last_good()``, which cuts the file back to the last byte that
is known to have been written whole.  What was in the buffer at the failure is handed
back by ``lost_bytes()`` so the owner can undo its bookkeeping for those records.

Two record formats live in segment files, told apart by the version in the header:

* version 1 (Baedal 0.1.0 up to issue 10's queue log): ``length | crc32c | kind |
  payload`` records as above, the payload ``record.py``'s neutral record.  Still read
  (``read``, ``iter_records``) until a store has drained them; no longer written by
  ``SegmentStore``.
* version 2 (``QUEUE_LOG_VERSION``): the stream's format, Kafka RecordBatch v2 batches
  (``record_batch``), one message per batch, whose ``baseOffset`` is the message's queue
  position (``segment_id << 32 | byte offset``); see ``queue_log`` for the record inside
  and the queue-only bits.  ``append_batch`` writes one; ``read`` and ``iter_records``
  return the whole batch as the payload and derive the kind from its attributes.

``AppendOnlyFile`` holds that buffered, sticky-failing writer (streams' segments and
indexes use it too); ``Segment`` adds the queue's record format, ``ackfile.AckFile`` adds
the ack format.  Naming, creation, reads by ``pread``, sendfile ranges, torn-tail
truncation and the directory's fsync are the segment-file layer that queues and streams
share: ``segment_files`` (``Segment`` reads through its ``SegmentReads``).
"""

from __future__ import annotations

import errno as errno_module
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import crc32c

from . import queue_log
from .record_batch import BATCH_OVERHEAD, RecordBatchError, check_batch
from .segment_files import (
    SegmentNaming,
    SegmentReads,
    StorageError,
    create_segment_file,
)

__all__ = [
    "DEFAULT_SEGMENT_BYTES",
    "RECORD_HEADER",
    "SEGMENT_HEADER_SIZE",
    "AppendOnlyFile",
    "Segment",
    "StorageError",
    "record_crc",
    "segment_path",
    "SEGMENT_NAMING",
]

DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
# 64 KiB: big enough that a burst of small publishes costs one write syscall per ~2500
# records, small enough that the bytes at risk before a flush stay trivial.
DEFAULT_FLUSH_BYTES = 64 * 1024

SEGMENT_MAGIC = b"BAEDALSG"
SEGMENT_VERSION = 1
# Segments of RecordBatch v2 batches (the stream's format): what SegmentStore writes.
QUEUE_LOG_VERSION = 2
_KNOWN_VERSIONS = (SEGMENT_VERSION, QUEUE_LOG_VERSION)
# magic(8) | version:u32 | reserved:u32
SEGMENT_HEADER = struct.Struct("<8sII")
SEGMENT_HEADER_SIZE = SEGMENT_HEADER.size  # 16
RECORD_HEADER = struct.Struct("<IIB")  # length, crc32c, kind
RECORD_HEADER_SIZE = RECORD_HEADER.size  # 9
# A record may not claim more than this; anything larger is corruption, not data.
MAX_RECORD_BYTES = 1 << 30

# CRC of the kind byte alone, per kind: the payload CRC continues from it, so a record
# costs one crc32c call over the payload and no concatenation.
_KIND_SEED = tuple(crc32c.crc32c(bytes([kind])) for kind in range(256))

# A version-2 batch's first 21 bytes (``queue_log``): baseOffset, batchLength (the rest
# + 9), partitionLeaderEpoch -1, magic 2, crc.
_PACK_BATCH_PREFIX = queue_log.BATCH_PREFIX.pack
assert queue_log.LENGTH_AFTER_PREFIX == 9 and queue_log.MAGIC == 2

# The one seam for fault injection: tests replace these to simulate ENOSPC / EIO.
_write_fd = os.write
_truncate_fd = os.ftruncate


def record_crc(kind: int, payload: bytes | memoryview) -> int:
    """crc32c over ``kind + payload`` (without building that concatenation)."""
    return crc32c.crc32c(payload, _KIND_SEED[kind])


# A queue's segment files: ``0000000001.seg``, numbered from 1 in write order.
SEGMENT_NAMING = SegmentNaming(".seg", 10)


def segment_path(directory: Path, segment_id: int) -> Path:
    return SEGMENT_NAMING.path(directory, segment_id)


class AppendOnlyFile:
    """A buffered, append-only file whose first write failure is permanent.

    ``written`` is the number of bytes known to be in the kernel (the file size at a
    record boundary); ``size`` adds what is still buffered.
    """

    __slots__ = ("path", "_fd", "_buffer", "written", "flush_bytes", "failure", "_lost", "closed")

    def __init__(
        self, path: Path, fd: int, written: int, flush_bytes: int = DEFAULT_FLUSH_BYTES
    ) -> None:
        self.path = path
        self._fd = fd
        self._buffer = bytearray()
        self.written = written
        self.flush_bytes = flush_bytes
        self.failure: StorageError | None = None
        self._lost = b""
        self.closed = False

    @property
    def size(self) -> int:
        return self.written + len(self._buffer)

    def fileno(self) -> int:
        return self._fd

    def _append(self, data: bytes) -> None:
        # Flush *before* adding when the record would overflow the buffer: if that flush
        # fails, this record was never accepted, and the lost buffer holds only records
        # the caller already counted (so it can undo exactly those).
        if self.failure is not None:
            raise self.failure
        buffer = self._buffer
        if len(buffer) + len(data) > self.flush_bytes and buffer:
            self.flush()
            buffer = self._buffer
        buffer += data

    def _append_pair(self, head: bytes, payload: bytes) -> None:
        if self.failure is not None:
            raise self.failure
        buffer = self._buffer
        if len(buffer) + len(head) + len(payload) > self.flush_bytes and buffer:
            self.flush()
            buffer = self._buffer
        buffer += head
        buffer += payload

    def flush(self) -> None:
        """Hand the buffer to the kernel (no fsync).  Raises the sticky StorageError."""
        if self.failure is not None:
            raise self.failure
        if self.closed:
            raise StorageError(errno_module.EBADF, "write to a closed file", self.path)
        buffer = self._buffer
        if not buffer:
            return
        view = memoryview(buffer)
        done = 0
        try:
            while done < len(view):
                done += _write_fd(self._fd, view[done:])
        except OSError as exc:
            view.release()
            self.failure = StorageError(
                exc.errno, f"write failed: {exc.strerror or exc}", self.path
            )
            # Bytes that may be half on disk: the owner truncates back to `written`.
            self._lost = bytes(buffer)
            # A new buffer rather than clear(): the traceback may still hold a slice
            # of the old one, and an exported bytearray cannot be resized.
            self._buffer = bytearray()
            raise self.failure from exc
        view.release()
        self.written += done
        buffer.clear()

    def lost_bytes(self) -> bytes:
        """The buffered bytes that a failed flush did not (fully) write."""
        return self._lost

    def truncate_to_last_good(self) -> None:
        """Cut the file back to the last whole write and clear the sticky failure.

        Only after this may the file (or, for a segment, its successor) take writes again.
        """
        try:
            _truncate_fd(self._fd, self.written)
            os.lseek(self._fd, self.written, os.SEEK_SET)
        except OSError as exc:
            raise StorageError(
                exc.errno, f"truncate failed: {exc.strerror or exc}", self.path
            ) from exc
        self.failure = None
        self._lost = b""

    def close(self) -> None:
        """Flush (unless already failed) and close the descriptor.

        Callers that may have the descriptor queued in the ``Syncer`` hand this method
        to ``Syncer.retire`` instead of calling it, so an fsync in flight never meets a
        closed (or worse, reused) descriptor number.
        """
        if self.closed:
            return
        try:
            if self.failure is None and self._fd >= 0:
                self.flush()
        finally:
            self.closed = True
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


class Segment(AppendOnlyFile, SegmentReads):
    """One segment file: appends while it is the writer, reads by offset always."""

    __slots__ = ("segment_id", "capacity", "_read_fd", "writable", "version")

    def __init__(
        self,
        path: Path,
        segment_id: int,
        fd: int,
        written: int,
        capacity: int,
        writable: bool,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        version: int = SEGMENT_VERSION,
    ) -> None:
        super().__init__(path, fd, written, flush_bytes)
        self.segment_id = segment_id
        self.capacity = capacity
        self.writable = writable
        self._read_fd = -1
        self.version = version

    # -- creation --------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        directory: Path,
        segment_id: int,
        capacity: int = DEFAULT_SEGMENT_BYTES,
        flush_bytes: int = DEFAULT_FLUSH_BYTES,
        version: int = SEGMENT_VERSION,
    ) -> Segment:
        """Create a new, empty segment; the header is written (not synced) at once."""
        if version not in _KNOWN_VERSIONS:
            raise ValueError(f"unknown segment version {version}")
        path = segment_path(directory, segment_id)
        fd = create_segment_file(path)
        header = SEGMENT_HEADER.pack(SEGMENT_MAGIC, version, 0)
        try:
            written = _write_fd(fd, header)
            if written != len(header):
                raise OSError(errno_module.ENOSPC, "short write of segment header")
        except OSError as exc:
            os.close(fd)
            try:
                os.unlink(path)
            except OSError:
                pass
            raise StorageError(
                exc.errno, f"cannot write segment header: {exc.strerror or exc}", path
            ) from exc
        return cls(
            path, segment_id, fd, SEGMENT_HEADER_SIZE, capacity, True, flush_bytes, version
        )

    @classmethod
    def open_sealed(
        cls, path: Path, segment_id: int, size: int, version: int = SEGMENT_VERSION
    ) -> Segment:
        """Open an existing segment read-only (recovered segments never take appends)."""
        # No write descriptor: a recovered segment costs a file descriptor only while
        # something reads it (see ``_reader``), so thousands of segments stay cheap.
        return cls(path, segment_id, -1, size, size, False, DEFAULT_FLUSH_BYTES, version)

    # -- writing ---------------------------------------------------------------------

    def has_room(self, payload_length: int) -> bool:
        """Whether a record of this payload fits; an empty segment takes any record."""
        size = self.size
        return (
            size + RECORD_HEADER_SIZE + payload_length <= self.capacity
            or size == SEGMENT_HEADER_SIZE
        )

    def append(self, kind: int, payload: bytes) -> int:
        """Buffer one record; return its offset.  Raises the sticky StorageError."""
        offset = self.written + len(self._buffer)
        self._append_pair(
            RECORD_HEADER.pack(len(payload), crc32c.crc32c(payload, _KIND_SEED[kind]), kind),
            payload,
        )
        return offset

    def has_room_for_batch(self, batch_size: int) -> bool:
        """Whether a whole batch of ``batch_size`` bytes fits (version 2); an empty
        segment takes any batch."""
        size = self.size
        return size + batch_size <= self.capacity or size == SEGMENT_HEADER_SIZE

    def append_batch(self, rest: bytes, crc: int) -> int:
        """Buffer one batch (version 2) whose bytes after the first 21 are ``rest``
        (``queue_log.encode_message``) and whose CRC is ``crc``; its ``baseOffset`` is
        this segment's position for it.  Return its byte offset.  Raises the sticky
        StorageError."""
        offset = self.written + len(self._buffer)
        self._append_pair(
            _PACK_BATCH_PREFIX(self.segment_id << 32 | offset, len(rest) + 9, -1, 2, crc), rest
        )
        return offset

    def seal(self) -> None:
        """Stop taking appends (flushes the buffer).  The write fd stays open until
        ``close_writer`` (normally run by ``Syncer.retire`` after the covering fsync)."""
        if self.writable:
            self.writable = False
            self.flush()

    def close_writer(self) -> None:
        """Close the write descriptor of a sealed segment; reads keep working."""
        if self._fd >= 0:
            if self.failure is None:
                self.flush()
            os.close(self._fd)
            self._fd = -1

    # -- reading ---------------------------------------------------------------------

    # ``read_fd``, ``pread``, ``release_reader`` and ``file_range`` are the shared
    # ``SegmentReads``; this is the one thing they need from the writer.

    def _flush_through(self, end: int) -> None:
        if end > self.written and self._buffer:
            self.flush()

    def read(self, offset: int) -> tuple[int, bytes]:
        """The record at ``offset`` as (kind, payload), CRC-checked."""
        # The shared ``pread`` inlined for the two reads: this is a priority queue's
        # read by position.  ``written`` always ends at a record boundary, so a record
        # that starts below it is in the kernel whole.
        if offset >= self.written and self._buffer:
            self.flush()
        if self.version != SEGMENT_VERSION:
            return self._read_batch(offset)
        fd = self._read_fd
        if fd < 0:
            fd = self.read_fd()
        try:
            head = os.pread(fd, RECORD_HEADER_SIZE, offset)
            if len(head) < RECORD_HEADER_SIZE:
                raise StorageError(errno_module.EIO, f"no record at offset {offset}", self.path)
            length, crc, kind = RECORD_HEADER.unpack(head)
            payload = os.pread(fd, length, offset + RECORD_HEADER_SIZE)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(exc.errno, f"read failed: {exc.strerror}", self.path) from exc
        if len(payload) != length or crc32c.crc32c(payload, _KIND_SEED[kind]) != crc:
            raise StorageError(errno_module.EIO, f"damaged record at offset {offset}", self.path)
        return kind, payload

    def _read_batch(self, offset: int) -> tuple[int, bytes]:
        """Version 2: (kind, the whole batch) at ``offset``, CRC and position checked."""
        fd = self._read_fd
        if fd < 0:
            fd = self.read_fd()
        try:
            head = os.pread(fd, BATCH_OVERHEAD, offset)
            if len(head) < BATCH_OVERHEAD:
                raise StorageError(errno_module.EIO, f"no batch at offset {offset}", self.path)
            length = queue_log.BATCH_LENGTH.unpack(head)[1]
            if not 0 < length <= MAX_RECORD_BYTES:
                raise StorageError(errno_module.EIO, f"damaged batch at offset {offset}", self.path)
            batch = os.pread(fd, length + BATCH_OVERHEAD, offset)
        except StorageError:
            raise
        except OSError as exc:
            raise StorageError(exc.errno, f"read failed: {exc.strerror}", self.path) from exc
        try:
            fields, _size = check_batch(batch, 0, MAX_RECORD_BYTES)
        except RecordBatchError:
            fields = None
        if fields is None or fields[0] != self.segment_id << 32 | offset:
            raise StorageError(errno_module.EIO, f"damaged batch at offset {offset}", self.path)
        return queue_log.kind_of(fields[5]), batch

    def _iter_batches(
        self, offset: int, end: int, chunk_bytes: int
    ) -> Iterator[tuple[int, int, bytes]]:
        """Version 2 ``iter_records``: (offset, kind, whole batch), CRC-checked."""
        base = self.segment_id << 32
        length_of = queue_log.BATCH_LENGTH.unpack_from
        kind_of = queue_log.kind_of
        while offset < end:
            chunk = self.pread(offset, max(chunk_bytes, BATCH_OVERHEAD))
            view = memoryview(chunk)
            pos = 0
            available = len(chunk)
            while offset < end:
                if pos + BATCH_OVERHEAD > available:
                    break
                length = length_of(chunk, pos)[1]
                if length < queue_log.MIN_BATCH_LENGTH:
                    raise StorageError(
                        errno_module.EIO, f"damaged batch at offset {offset}", self.path
                    )
                stop = pos + BATCH_OVERHEAD + length
                if stop > available:
                    if pos == 0:
                        # A batch larger than the chunk: read it whole.
                        kind, batch = self._read_batch(offset)
                        yield offset, kind, batch
                        offset += len(batch)
                    break
                try:
                    fields, _size = check_batch(view, pos, MAX_RECORD_BYTES)
                except RecordBatchError:
                    fields = None
                if fields is None or fields[0] != base | offset:
                    raise StorageError(
                        errno_module.EIO, f"damaged batch at offset {offset}", self.path
                    )
                yield offset, kind_of(fields[5]), chunk[pos:stop]
                offset += stop - pos
                pos = stop
            if available == 0:
                raise StorageError(
                    errno_module.EIO, f"unexpected end of segment at {offset}", self.path
                )

    def record_end(self, offset: int, payload: bytes | memoryview) -> int:
        """Where the record (version 1) or batch (version 2) at ``offset`` whose payload
        ``read``/``iter_records`` returned as ``payload`` ends."""
        if self.version == SEGMENT_VERSION:
            return offset + RECORD_HEADER_SIZE + len(payload)
        return offset + len(payload)

    def iter_records(
        self, offset: int, end: int | None = None, chunk_bytes: int = 256 * 1024
    ) -> Iterator[tuple[int, int, bytes]]:
        """Yield (offset, kind, payload) sequentially from ``offset`` up to ``end``
        (version 2: the payload is the whole batch).

        Reads ``chunk_bytes`` at a time (one pread per chunk, not per record) and checks
        every CRC; a damaged record raises StorageError.
        """
        if end is None:
            end = self.size
        if self.version != SEGMENT_VERSION:
            yield from self._iter_batches(offset, end, chunk_bytes)
            return
        unpack_from = RECORD_HEADER.unpack_from
        seeds = _KIND_SEED
        compute = crc32c.crc32c
        while offset < end:
            chunk = self.pread(offset, max(chunk_bytes, RECORD_HEADER_SIZE))
            view = memoryview(chunk)
            pos = 0
            available = len(chunk)
            while offset < end:
                if pos + RECORD_HEADER_SIZE > available:
                    break
                length, crc, kind = unpack_from(chunk, pos)
                stop = pos + RECORD_HEADER_SIZE + length
                if stop > available:
                    if pos == 0:
                        # A record larger than the chunk: read it whole.
                        kind, payload = self.read(offset)
                        yield offset, kind, payload
                        offset += RECORD_HEADER_SIZE + length
                    break
                payload = view[pos + RECORD_HEADER_SIZE : stop]
                if compute(payload, seeds[kind]) != crc:
                    raise StorageError(
                        errno_module.EIO, f"damaged record at offset {offset}", self.path
                    )
                yield offset, kind, bytes(payload)
                offset += stop - pos
                pos = stop
            if available == 0:
                raise StorageError(
                    errno_module.EIO, f"unexpected end of segment at {offset}", self.path
                )

    def close(self) -> None:
        self.release_reader()
        super().close()

    def is_closed_for_writes(self) -> bool:
        return self._fd < 0

    def __repr__(self) -> str:
        state = "writer" if self.writable else "sealed"
        return f"<Segment {self.segment_id} {state} {self.size}B>"
