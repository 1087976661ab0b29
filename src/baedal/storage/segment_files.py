"""The segment-file layer shared by durable queues and streams.

Theory of operation
-------------------
Both logs on disk are a directory of append-only segment files named by a number, the
newest one written, the older ones only read and, one day, deleted whole:

* a durable queue (``queue_store.SegmentStore``): ``0000000001.seg``... (segment ids;
  ``segment.Segment`` is the record format, ``length | crc32c | kind | payload``), a
  sealed segment deleted once all its records are settled (acks in ``.ack`` files);
* a stream (``stream_log.StreamLog``): ``00000000000000004711.log``... (the base offset
  of the segment; Kafka RecordBatch v2 batches), sealed segments deleted by retention.

What does not depend on the record format lives here, once, and both use it:

* ``SegmentNaming``: how a segment number becomes a file name and back, and the sorted
  listing of a directory's segments (anything else is reported, never guessed at);
* ``SegmentDirectory``: the directory's descriptor, a ``Syncer`` target (creating,
  deleting or truncating a segment is durable only once the directory is fsynced);
* ``create_segment_file`` / ``open_segment_for_append``: the append descriptor of the
  segment being written (``O_APPEND``; a new one with ``O_EXCL`` so an existing file is
  never silently reused); the buffered, sticky-failing writer on top of it is
  ``segment.AppendOnlyFile``;
* ``truncate_torn_tail``: cut a file back to the end of its last intact record (what a
  crash in the middle of a write leaves) and fsync it, before anything is appended;
* ``SegmentReads``: reads of one segment with ``os.pread`` on a lazily opened read-only
  descriptor (never the writer's: reads must not move its position), flushing the
  writer's buffer first when the range reaches into it, and released while idle so
  thousands of sealed segments cost no descriptors;
* ``FileRange`` (``SegmentReads.file_range``): stored bytes as a descriptor range for
  ``os.sendfile``, with a duplicated descriptor so the range stays valid even if the
  segment is deleted under it.

What stays with each log is the part that depends on its record format: the scan that
finds where the intact records end (the queue steps over damage in the middle of a
segment, the stream cuts the log at the first bad batch, Kafka's rule, because its
offsets are dense), the roll rule, the indexes (stream) and the ack set (queue).
"""

from __future__ import annotations

import errno as errno_module
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .syncer import Syncer

__all__ = [
    "FileRange",
    "SegmentDirectory",
    "SegmentNaming",
    "SegmentReads",
    "StorageError",
    "create_segment_file",
    "open_segment_for_append",
    "truncate_torn_tail",
]


class StorageError(OSError):
    """A storage operation failed; ``errno`` is the original OS error number.

    It subclasses ``OSError`` so ``err.errno == errno.ENOSPC`` reads naturally, and so
    callers that already handle OSError keep working.
    """

    def __init__(
        self, errno: int | None, message: str, path: str | os.PathLike[str] | None = None
    ) -> None:
        super().__init__(errno if errno is not None else errno_module.EIO, message)
        self.path = None if path is None else str(path)

    def __str__(self) -> str:
        name = errno_module.errorcode.get(self.errno or 0, str(self.errno))
        where = f" ({self.path})" if self.path else ""
        return f"[{name}] {self.strerror}{where}"


class SegmentNaming:
    """Segment file names: a zero-padded number and a suffix (``0000000001.seg``)."""

    __slots__ = ("suffix", "digits")

    def __init__(self, suffix: str, digits: int) -> None:
        self.suffix = suffix
        self.digits = digits

    def path(self, directory: Path, number: int) -> Path:
        return directory / f"{number:0{self.digits}d}{self.suffix}"

    def parse(self, name: str) -> int | None:
        """The number in a segment file name, or None if ``name`` is not one."""
        if not name.endswith(self.suffix):
            return None
        stem = name[: -len(self.suffix)]
        return int(stem) if stem.isdigit() and stem.isascii() else None

    def list(self, directory: Path) -> tuple[list[int], list[Path]]:
        """(numbers of the segment files in ``directory`` in order, other ``*suffix``
        files that look like segments but are not named like one)."""
        numbers: list[int] = []
        strays: list[Path] = []
        for entry in directory.iterdir():
            name = entry.name
            if not name.endswith(self.suffix):
                continue
            number = self.parse(name)
            if number is None:
                strays.append(entry)
            else:
                numbers.append(number)
        numbers.sort()
        return numbers, strays


class SegmentDirectory:
    """A log's directory as a ``Syncer`` target: creating and deleting files needs its
    fsync to be durable."""

    __slots__ = ("fd", "_closing")

    def __init__(self, path: Path) -> None:
        self._closing = False
        try:
            self.fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot open directory: {exc.strerror}", path) from exc

    def fileno(self) -> int:
        return self.fd

    def fsync(self) -> None:
        os.fsync(self.fd)

    def close(self, syncer: Syncer | None = None) -> None:
        """Close the descriptor; with a ``syncer``, only once the directory is neither
        dirty nor being fsynced there (``Syncer.retire``; an owner that synced it itself
        calls ``syncer.forget`` first)."""
        fd = self.fd
        if fd < 0 or self._closing:
            return
        self._closing = True
        if syncer is not None:
            # The syncer reads fileno() when it starts a job: keep it valid until then.
            def close() -> None:
                self.fd = -1
                os.close(fd)

            syncer.retire(self, close)
        else:
            self.fd = -1
            os.close(fd)


def create_segment_file(path: Path) -> int:
    """The append descriptor of a new segment file (fails if the file exists)."""
    try:
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o644)
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot create segment: {exc.strerror}", path) from exc


def open_segment_for_append(path: Path) -> int:
    """The append descriptor of an existing (recovered) segment file."""
    try:
        return os.open(path, os.O_WRONLY | os.O_APPEND)
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot open segment: {exc.strerror}", path) from exc


def truncate_torn_tail(path: Path, size: int) -> None:
    """Cut ``path`` back to ``size`` bytes (the end of its last intact record) and fsync
    it, so nothing appended later follows a torn record."""
    try:
        fd = os.open(path, os.O_WRONLY)
        try:
            os.ftruncate(fd, size)
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        raise StorageError(exc.errno, f"cannot truncate: {exc.strerror}", path) from exc


class FileRange:
    """Bytes of one segment file for ``os.sendfile``: whole records, ``length`` bytes.

    ``fd`` is this range's own duplicate of the segment's descriptor, so it stays valid
    even if the segment is deleted; the caller closes it (``close()`` or ``with``).
    ``base_offset`` is the log's own address of the first record in the range (a
    stream's offset), for the caller's bookkeeping.
    """

    __slots__ = ("path", "fd", "position", "length", "base_offset")

    def __init__(self, path: Path, fd: int, position: int, length: int, base_offset: int) -> None:
        self.path = path
        self.fd = fd
        self.position = position
        self.length = length
        self.base_offset = base_offset  # of the first batch in the range

    def read(self) -> bytes:
        return os.pread(self.fd, self.length, self.position)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> FileRange:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"<FileRange {self.path.name} @{self.position} +{self.length}>"


class SegmentReads:
    """Reads of one segment file (a mixin: no slots of its own).

    The class using it has ``path`` and ``_read_fd`` (-1 until the first read) and
    implements ``_flush_through(end)``: hand buffered bytes below ``end`` to the kernel,
    since a read goes to the file and must see every byte appended before it.
    """

    __slots__ = ()

    path: Path
    _read_fd: int

    def _flush_through(self, end: int) -> None:
        raise NotImplementedError

    def read_fd(self) -> int:
        """The read-only descriptor, opened on first use."""
        if self._read_fd < 0:
            try:
                self._read_fd = os.open(self.path, os.O_RDONLY)
            except OSError as exc:
                raise StorageError(
                    exc.errno, f"cannot open segment: {exc.strerror}", self.path
                ) from exc
        return self._read_fd

    def release_reader(self) -> None:
        """Close the read descriptor (re-opened on demand) so idle segments hold no fds."""
        if self._read_fd >= 0:
            os.close(self._read_fd)
            self._read_fd = -1

    def pread(self, position: int, length: int) -> bytes:
        """Bytes at ``position`` (fewer at the end of the file); flushes first if they
        are still buffered."""
        self._flush_through(position + length)
        try:
            return os.pread(self.read_fd(), length, position)
        except OSError as exc:
            raise StorageError(exc.errno, f"read failed: {exc.strerror}", self.path) from exc

    def file_range(self, position: int, length: int, base_offset: int = -1) -> FileRange:
        """``length`` stored bytes at ``position`` as a ``FileRange`` for ``os.sendfile``
        (flushed first: sendfile reads the file, not the writer's buffer)."""
        self._flush_through(position + length)
        return FileRange(self.path, os.dup(self.read_fd()), position, length, base_offset)
