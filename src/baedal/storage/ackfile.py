"""Per-segment ack files: which records of a segment are done for good.

Acks are kept out of the segment itself (the LavinMQ layout) so a segment is written
once, front to back, and never rewritten.  Each ack is one 8-byte entry::

    offset:u32 | crc32c(offset bytes):u32

Per-entry CRCs make every entry independently checkable, so a torn tail (a crash in the
middle of a write) costs at most the entry being written and a damaged entry costs only
itself.  An ack file is read back whole, as a set, only on recovery.

The file starts with an 8-byte header (magic ``BAEDALAK``, version) so a stray file in
the data directory is never mistaken for acks.
"""

from __future__ import annotations

import errno as errno_module
import logging
import os
import struct
from pathlib import Path

import crc32c

from . import segment as segment_module
from .segment import DEFAULT_FLUSH_BYTES, AppendOnlyFile, StorageError
from .segment_files import SegmentNaming

__all__ = ["ACK_NAMING", "AckFile", "ack_path", "load_acks"]

log = logging.getLogger("baedal.storage")

ACK_MAGIC = b"BAEDALAK"
ACK_HEADER_SIZE = len(ACK_MAGIC)
ACK_ENTRY = struct.Struct("<II")
_OFFSET = struct.Struct("<I")
ACK_ENTRY_SIZE = ACK_ENTRY.size


# One ack file per queue segment, named like it: ``0000000001.ack`` for ``0000000001.seg``.
ACK_NAMING = SegmentNaming(".ack", 10)


def ack_path(directory: Path, segment_id: int) -> Path:
    return ACK_NAMING.path(directory, segment_id)


def _entry(offset: int) -> bytes:
    raw = _OFFSET.pack(offset)
    return raw + _OFFSET.pack(crc32c.crc32c(raw))


class AckFile(AppendOnlyFile):
    """The append side of one segment's ack file."""

    __slots__ = ()

    @classmethod
    def open(cls, path: Path, flush_bytes: int = DEFAULT_FLUSH_BYTES) -> AckFile:
        """Open for appending, creating the file (with its header) when missing.

        An existing file with a torn tail is first cut back to a whole number of
        entries so new entries stay aligned.
        """
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            size = os.fstat(fd).st_size
        except OSError as exc:
            raise StorageError(exc.errno, f"cannot open ack file: {exc.strerror}", path) from exc
        try:
            if size < ACK_HEADER_SIZE:
                segment_module._truncate_fd(fd, 0)
                if segment_module._write_fd(fd, ACK_MAGIC) != ACK_HEADER_SIZE:
                    raise OSError(errno_module.ENOSPC, "short write of ack header")
                size = ACK_HEADER_SIZE
            else:
                aligned = (
                    ACK_HEADER_SIZE + (size - ACK_HEADER_SIZE) // ACK_ENTRY_SIZE * ACK_ENTRY_SIZE
                )
                if aligned != size:
                    segment_module._truncate_fd(fd, aligned)
                    size = aligned
            os.lseek(fd, size, os.SEEK_SET)
        except OSError as exc:
            os.close(fd)
            raise StorageError(
                exc.errno, f"cannot prepare ack file: {exc.strerror or exc}", path
            ) from exc
        return cls(path, fd, size, flush_bytes)

    def mark(self, offset: int) -> None:
        """Record that the record at ``offset`` is done.  Raises the sticky StorageError."""
        self._append(_entry(offset))

    def retry_lost(self) -> None:
        """After ``truncate_to_last_good``: re-append the acks a failed flush lost.

        Unlike lost messages, lost acks are still true, so they are written again
        rather than forgotten.
        """
        lost = self._lost
        self.truncate_to_last_good()
        if lost:
            self._append(lost)


def load_acks(path: Path) -> set[int]:
    """Every intact acked offset in the file; a torn or damaged entry is skipped and logged."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return set()
    if len(data) < ACK_HEADER_SIZE or data[:ACK_HEADER_SIZE] != ACK_MAGIC:
        log.warning(
            "ack file %s: bad header, ignoring %d bytes (acked messages may be redelivered)",
            path,
            len(data),
        )
        return set()
    acked: set[int] = set()
    damaged = 0
    end = len(data) - (len(data) - ACK_HEADER_SIZE) % ACK_ENTRY_SIZE
    compute = crc32c.crc32c
    for offset, crc in ACK_ENTRY.iter_unpack(memoryview(data)[ACK_HEADER_SIZE:end]):
        if compute(_OFFSET.pack(offset)) == crc:
            acked.add(offset)
        else:
            damaged += 1
    if damaged:
        log.warning(
            "ack file %s: dropped %d damaged ack entries (those messages may be redelivered)",
            path,
            damaged,
        )
    if end != len(data):
        log.info(
            "ack file %s: ignored torn tail of %d bytes at offset %d", path, len(data) - end, end
        )
    return acked
