"""Sparse per-segment indexes of a stream: offset → file position, and time → offset.

Theory of operation
-------------------
Kafka's layout (``OffsetIndex.java``, ``TimeIndex.java``): next to each segment
``<base>.log`` sit

* ``<base>.index``: 8-byte entries ``relativeOffset:u32 | position:u32`` (big-endian),
  both strictly increasing;
* ``<base>.timeindex``: 12-byte entries ``maxTimestamp:i64 | relativeOffset:u32``, both
  non-decreasing; ``maxTimestamp`` is the largest timestamp of every batch up to and
  including the batch at ``relativeOffset``.

An entry is added for the batch that starts after at least ``index_interval_bytes``
(default 4 KiB, Kafka's ``log.index.interval.bytes``) were appended since the previous
entry, in both files at once, so a lookup lands within one interval of its target and
then scans batch headers forward.  A segment therefore has at most
``max_segment_bytes / index_interval_bytes + 2`` entries (the ``+2``: the first interval
and the final time entry written when the segment is sealed).

Memory: only the *active* segment keeps its entries in memory, in ``array``s as wide as
the file's fields: 8 + 12 bytes per interval, so about 2.4 MiB for a 500 MB segment at
4 KiB (RabbitMQ's default segment size and Kafka's default interval).  A sealed segment's
index lives only in its file and is binary-searched with ``os.pread`` (about
``log2(entries)`` reads of 8-12 bytes, a few microseconds), so a stream's size never
drives memory.  Lookups are rare (positioning a reader); sequential reads use no index.

Indexes are not checksummed and are never fsynced on their own path: the segment's
recovery (``stream_log``) checks them against the log and rebuilds them from it.
"""

from __future__ import annotations

import os
import struct
from array import array
from pathlib import Path

from .segment import AppendOnlyFile, StorageError

__all__ = ["OFFSET_ENTRY", "TIME_ENTRY", "Appender", "SparseIndex"]

OFFSET_ENTRY = struct.Struct(">II")  # relative offset, position
TIME_ENTRY = struct.Struct(">qI")  # max timestamp so far, relative offset


class Appender(AppendOnlyFile):
    """An ``AppendOnlyFile`` with a public ``append`` (buffered, sticky failure)."""

    __slots__ = ()

    def append(self, data: bytes | bytearray | memoryview) -> None:
        self._append(data)  # type: ignore[arg-type]

    @classmethod
    def open_append(cls, path: Path, create: bool = False) -> Appender:
        flags = os.O_WRONLY | os.O_APPEND | (os.O_CREAT | os.O_TRUNC if create else 0)
        try:
            fd = os.open(path, flags, 0o644)
            written = os.fstat(fd).st_size
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot open for append: {exc.strerror}", path) from exc
        return cls(path, fd, written, flush_bytes=64 * 1024)


class SparseIndex:
    """One index file of (first, second) integer pairs, both monotonic.

    ``first`` and ``second`` are the two fields of ``entry`` in file order: (relative
    offset, position) for the offset index, (timestamp, relative offset) for the time
    index.  While ``writer`` is set (the active segment) every entry is also in memory.
    """

    __slots__ = ("path", "entry", "count", "_firsts", "_seconds", "writer")

    def __init__(self, path: Path, entry: struct.Struct) -> None:
        self.path = path
        self.entry = entry
        self.count = 0
        self._firsts: array[int] | None = None
        self._seconds: array[int] | None = None
        self.writer: Appender | None = None

    # -- opening -------------------------------------------------------------------------

    def rewrite(self, entries: list[tuple[int, int]], writable: bool) -> None:
        """Write ``entries`` as the whole file (tmp → fsync → rename) and open it."""
        path = self.path
        tmp = path.with_name(path.name + ".tmp")
        entry = self.entry
        data = b"".join(entry.pack(a, b) for a, b in entries)
        try:
            with open(tmp, "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot write index: {exc.strerror}", path) from exc
        self.open_existing(entries, writable)

    def open_existing(self, entries: list[tuple[int, int]], writable: bool) -> None:
        """Adopt a file that holds exactly ``entries``; keep them in memory if writable."""
        self.count = len(entries)
        if writable:
            self._load_memory(entries)
            self.writer = Appender.open_append(self.path)

    @classmethod
    def create(cls, path: Path, entry: struct.Struct) -> SparseIndex:
        """A new, empty, writable index (no fsync here: the syncer or recovery covers it)."""
        index = cls(path, entry)
        index._load_memory([])
        index.writer = Appender.open_append(path, create=True)
        return index

    @classmethod
    def read_entries(cls, path: Path, entry: struct.Struct) -> list[tuple[int, int]] | None:
        """Every entry of an existing file, or None when missing or not whole entries.

        Bounded by the segment size / index interval (see the module docstring).
        """
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot read index: {exc.strerror}", path) from exc
        if len(data) % entry.size:
            return None
        return [tuple(pair) for pair in entry.iter_unpack(data)]  # type: ignore[misc]

    def _load_memory(self, entries: list[tuple[int, int]]) -> None:
        # Same widths as the file: ">II" -> two 4-byte arrays, ">qI" -> 8 + 4 bytes.
        first_type, second_type = self.entry.format[1:]
        self._firsts = array(first_type, (a for a, _ in entries))
        self._seconds = array(second_type, (b for _, b in entries))

    # -- writing -------------------------------------------------------------------------

    def append(self, first: int, second: int) -> None:
        writer = self.writer
        assert writer is not None and self._firsts is not None and self._seconds is not None
        writer.append(self.entry.pack(first, second))
        self._firsts.append(first)
        self._seconds.append(second)
        self.count += 1

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()

    def seal(self) -> None:
        """Stop appending: flush, drop the in-memory copy (lookups now read the file).

        The write descriptor stays with the caller (``writer``) until it is synced.
        """
        if self.writer is not None:
            self.writer.flush()
        self._firsts = None
        self._seconds = None

    # -- lookups -------------------------------------------------------------------------

    def last(self) -> tuple[int, int] | None:
        if self.count == 0:
            return None
        return self._entry(None, self.count - 1)

    def _entry(self, fd: int | None, i: int) -> tuple[int, int]:
        if self._firsts is not None and self._seconds is not None:
            return self._firsts[i], self._seconds[i]
        size = self.entry.size
        if fd is None:
            with open(self.path, "rb", buffering=0) as handle:
                data = os.pread(handle.fileno(), size, i * size)
        else:
            data = os.pread(fd, size, i * size)
        if len(data) != size:
            raise StorageError(None, f"index entry {i} missing", self.path)
        return self.entry.unpack(data)  # type: ignore[return-value]

    def search(self, field: int, target: int, strict: bool = False) -> tuple[int, int] | None:
        """The last entry whose ``field`` (0 or 1) is <= ``target`` (< with ``strict``)."""
        if self.count == 0:
            return None
        fd: int | None = None
        handle = None
        if self._firsts is None:
            try:
                handle = open(self.path, "rb", buffering=0)
            except OSError as exc:
                raise StorageError(
                    exc.errno, f"cannot read index: {exc.strerror}", self.path
                ) from exc
            fd = handle.fileno()
        try:
            low, high = 0, self.count  # invariant: entries < low qualify, >= high do not
            while low < high:
                middle = (low + high) // 2
                value = self._entry(fd, middle)[field]
                if value < target or (not strict and value == target):
                    low = middle + 1
                else:
                    high = middle
            return None if low == 0 else self._entry(fd, low - 1)
        finally:
            if handle is not None:
                handle.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
