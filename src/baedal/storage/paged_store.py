"""``PagedStore``: a transient queue's store that keeps memory bounded.

Theory of operation
-------------------
A transient queue normally lives in memory (``MemoryStore``): nothing touches the disk,
which is what a queue that is consumed as fast as it is fed wants.  When its ready
backlog passes ``memory_limit`` entries (or ``memory_bytes``), new appends *page out*
to a private ``SegmentStore`` of transient records (never fsynced, never acked on disk,
deleted at start-up), so a queue of a million unconsumed messages costs the disk, not
the memory.  Once the paged part has been consumed, appends go back to memory.

Order: every entry in memory is older than every paged entry while paging is on, so
``shift`` serves memory (its requeued heap, then its deque) before the paged store.
Positions keep the two apart: a ``SegmentStore`` position is ``segment << 32 | offset``
with ``segment >= 1``, memory positions stay below ``1 << 32``.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

from ..core.message import Message, QueueEntry
from ..core.store import MemoryStore
from .queue_store import SegmentStore

PAGED_POSITION = 1 << 32


class PagedStore(MemoryStore):
    __slots__ = ("_paged", "_open_paged", "_directory", "memory_limit", "memory_bytes", "_mem_count", "_mem_bytes")

    durable = False

    def __init__(
        self,
        directory: Path,
        open_paged: Callable[[Path], SegmentStore],
        memory_limit: int = 20_000,
        memory_bytes: int = 16 * 1024 * 1024,
    ) -> None:
        super().__init__()
        self._directory = directory
        self._open_paged = open_paged
        self._paged: SegmentStore | None = None
        self.memory_limit = memory_limit
        self.memory_bytes = memory_bytes
        self._mem_count = 0  # ready entries held in memory (ready_count covers both)
        self._mem_bytes = 0

    @property
    def paged_store(self) -> SegmentStore | None:
        return self._paged

    def append(self, message: Message, expires_at: float | None) -> QueueEntry:
        paged = self._paged
        if paged is None or not paged.ready_count:
            if self._mem_count < self.memory_limit and self._mem_bytes < self.memory_bytes:
                entry = MemoryStore.append(self, message, expires_at)
                self._mem_count += 1
                self._mem_bytes += entry.size
                return entry
            if paged is None:
                paged = self._paged = self._open_paged(self._directory)
        entry = paged.append(message, expires_at)
        self.ready_count += 1
        self.ready_bytes += entry.size
        return entry

    def shift(self) -> QueueEntry | None:
        if self._mem_count:
            entry = MemoryStore.shift(self)
            if entry is not None:
                self._mem_count -= 1
                self._mem_bytes -= entry.size
            return entry
        paged = self._paged
        if paged is None or not paged.ready_count:
            return None
        entry = paged.shift()
        if entry is not None:
            self.ready_count -= 1
            self.ready_bytes -= entry.size
        return entry

    def peek(self) -> QueueEntry | None:
        if self._mem_count:
            return MemoryStore.peek(self)
        paged = self._paged
        return paged.peek() if paged is not None and paged.ready_count else None

    def requeue(self, entries: list[QueueEntry]) -> None:
        memory = [e for e in entries if e.position < PAGED_POSITION]
        if memory:
            MemoryStore.requeue(self, memory)
            self._mem_count += len(memory)
            self._mem_bytes += sum(e.size for e in memory)
        if len(memory) != len(entries):
            paged = [e for e in entries if e.position >= PAGED_POSITION]
            assert self._paged is not None
            self._paged.requeue(paged)
            self.ready_count += len(paged)
            self.ready_bytes += sum(e.size for e in paged)

    def settle(self, entry: QueueEntry) -> None:
        if entry.position >= PAGED_POSITION and self._paged is not None:
            self._paged.settle(entry)
        else:
            entry.message = None

    def purge(self) -> int:
        count = self.ready_count
        MemoryStore.purge(self)
        self._mem_count = 0
        self._mem_bytes = 0
        if self._paged is not None:
            self._paged.purge()
        return count

    def close(self) -> None:
        if self._paged is not None:
            self._paged.delete()
            self._paged = None
        shutil.rmtree(self._directory, ignore_errors=True)

    def delete(self) -> None:
        MemoryStore.purge(self)
        self._mem_count = 0
        self._mem_bytes = 0
        self.close()
