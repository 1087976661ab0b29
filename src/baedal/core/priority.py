"""``PriorityStore``: a priority queue (``x-max-priority``) on one store, in bounded memory.

Theory of operation
-------------------
A priority queue keeps every message, whatever its priority, in **one** log: the queue's
segment store when it is durable, a private transient segment store (opened only once
memory runs short) when it is not.  So ``x-max-priority: 255`` costs the same files and
descriptors as a plain queue: one directory, one writer, plus the segments' readers.

The order lives in memory, in an index that exists only for non-empty levels
(``_levels``: priority -> ``_Level``).  A level serves, in this order:

1. ``requeued``: a heap (by position) of entries that were delivered and came back.
   Bounded by what consumers held unacked (prefetch), not by queue depth;
2. ``loaded``: a deque of entries with their message in memory, oldest first;
3. the unloaded tail: ``positions`` / ``sizes``, two ``array('Q')`` (8 bytes each per
   message, no Python object per message) of records that live only in the log; read
   back a few at a time (``LOAD_BATCH``) when the level's ``loaded`` runs dry.

Within a level every ``loaded`` entry is older than every unloaded one (a level with an
unloaded tail appends to the tail), so each level is FIFO, and ``shift`` takes from the
highest non-empty level (``_top``): RabbitMQ's order, highest priority first, FIFO within
a priority, a priority above the maximum counting as the maximum.

Memory bound: the ``loaded`` entries of all levels together stay under ``memory_limit``
entries and ``memory_bytes`` body bytes (a durable queue takes its segment store's
read-ahead budget: 1024 entries / 8 MiB; a transient one 20 000 / 16 MiB, as
``PagedStore``).  Past it, a durable queue's messages are on disk only (they were written
anyway) and a transient queue's go to its private log.  What stays is 16 bytes of index
per unloaded message.  Without any storage (``durable_store = false``) there is no log
and every message stays in memory, as with ``MemoryStore``.

Positions: durable entries carry their log position (``segment << 32 | offset``).
Transient ones carry a counter below ``LOG_POSITION`` while they are in memory and a log
position (always ``>= LOG_POSITION``) once paged out.  While any paged entry is not yet
settled, every new transient message goes to the log too, so positions keep increasing
in publish order for every entry that can still meet another in a requeue heap.

Recovery (durable): the segment store recovers its records as always; ``take_index``
then streams (position, priority, size) of every ready record once, and the index is
rebuilt with all of them unloaded: start-up memory is the index, never the bodies.
"""

from __future__ import annotations

import heapq
from array import array
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from .message import Message, QueueEntry

__all__ = ["LOG_POSITION", "PriorityStore"]

LOG_POSITION = 1 << 32  # segment-store positions start here (segment ids start at 1)
LOAD_BATCH = 64  # unloaded records read back per refill of a level (one pread pair each)
TRANSIENT_MEMORY_LIMIT = 20_000
TRANSIENT_MEMORY_BYTES = 16 * 1024 * 1024
_COMPACT_AT = 4096  # drop the consumed head of a level's arrays past this many slots


class _Level:
    """One priority level's ready entries (see the module docstring)."""

    __slots__ = ("requeued", "loaded", "positions", "sizes", "head")

    def __init__(self) -> None:
        self.requeued: list[QueueEntry] = []
        self.loaded: deque[QueueEntry] = deque()
        self.positions = array("Q")
        self.sizes = array("Q")
        self.head = 0  # index of the first unconsumed slot in positions/sizes

    @property
    def unloaded(self) -> int:
        return len(self.positions) - self.head

    def empty(self) -> bool:
        return not self.requeued and not self.loaded and self.head == len(self.positions)

    def pop_unloaded(self) -> tuple[int, int]:
        head = self.head
        position, size = self.positions[head], self.sizes[head]
        head += 1
        if head == len(self.positions):
            del self.positions[:]
            del self.sizes[:]
            head = 0
        elif head >= _COMPACT_AT and head * 2 >= len(self.positions):
            del self.positions[:head]
            del self.sizes[:head]
            head = 0
        self.head = head
        return position, size


class PriorityStore:
    """A ``MessageStore`` for ``x-max-priority`` queues: one log, an in-memory index."""

    def __init__(
        self,
        max_priority: int,
        *,
        log: Any = None,
        open_log: Callable[[], Any] | None = None,
        memory_limit: int | None = None,
        memory_bytes: int | None = None,
    ) -> None:
        """``log``: the durable queue's segment store (every message is written to it).
        ``open_log``: for a transient queue, opens its private log on first need.
        Neither: no storage, everything in memory."""
        self.max_priority = max_priority
        self.durable = log is not None
        self._log = log
        self._open_log = open_log
        if log is not None:
            memory_limit = log.read_ahead if memory_limit is None else memory_limit
            memory_bytes = log.read_ahead_bytes if memory_bytes is None else memory_bytes
        elif open_log is not None:
            memory_limit = TRANSIENT_MEMORY_LIMIT if memory_limit is None else memory_limit
            memory_bytes = TRANSIENT_MEMORY_BYTES if memory_bytes is None else memory_bytes
        self.memory_limit = memory_limit
        self.memory_bytes = memory_bytes
        self._levels: dict[int, _Level] = {}
        self._top = -1  # highest non-empty level; -1 when nothing is ready
        self.ready_count = 0
        self.ready_bytes = 0
        self._loaded_count = 0  # entries in the levels' ``loaded`` deques
        self._loaded_bytes = 0
        self._next_position = 0  # transient in-memory entries
        self._log_outstanding = 0  # transient: paged entries not settled yet
        if log is not None:
            self._index_recovered(log.take_index(self))

    @property
    def log_store(self) -> Any:
        """The segment store under this queue, if one is open (storage failure handling)."""
        return self._log

    @property
    def levels(self) -> int:
        """How many priority levels hold ready entries right now (tests, management)."""
        return len(self._levels)

    # -- the MessageStore contract ------------------------------------------------------

    def append(self, message: Message, expires_at: float | None) -> QueueEntry:
        """Add at the tail of the message's level.  A failed log write raises the log's
        ``StorageError`` before anything here has changed."""
        number = message.priority
        if number > self.max_priority:
            number = self.max_priority
        level = self._levels.get(number)
        unloaded = level is not None and level.head < len(level.positions)
        size = len(message.body)
        log = self._log
        if self.durable:
            entry: QueueEntry = log.write(message, expires_at)
            keep = not unloaded and self._has_room()
        elif not self._log_outstanding and not unloaded and self._has_room():
            entry = QueueEntry(self._next_position, message, size, expires_at)
            self._next_position += 1
            keep = True
        else:
            if log is None:
                log = self._log = self._open_log()  # type: ignore[misc]
            entry = log.write(message, expires_at)
            self._log_outstanding += 1
            keep = False
        if level is None:
            level = self._levels[number] = _Level()
            if number > self._top:
                self._top = number
        if keep:
            self._keep(level, entry)
        else:
            level.positions.append(entry.position)
            level.sizes.append(size)
        self.ready_count += 1
        self.ready_bytes += size
        return entry

    def direct(self, message: Message) -> QueueEntry:
        """An entry handed straight to a consumer (transient queues only)."""
        position = self._next_position
        self._next_position = position + 1
        return QueueEntry(position, message, len(message.body))

    def shift(self) -> QueueEntry | None:
        while self._top >= 0:
            number = self._top
            level = self._levels[number]
            entry = self._take(level)
            if level.empty():
                self._drop_level(number)
            if entry is not None:
                return entry
        return None

    def peek(self) -> QueueEntry | None:
        while self._top >= 0:
            number = self._top
            level = self._levels[number]
            if level.requeued:
                return self._loaded_requeued(level)
            if not level.loaded and level.head < len(level.positions):
                self._load(level)
            if level.loaded:
                return level.loaded[0]
            self._drop_level(number)  # only lost records were left
        return None

    def requeue(self, entries: list[QueueEntry]) -> None:
        for entry in entries:
            message = entry.message
            if message is None:  # dropped to save memory: the log has it
                loaded = self._log.read(entry.position) if self._log is not None else None
                if loaded is None:
                    continue
                message = entry.message = loaded.message
            number = message.priority
            if number > self.max_priority:
                number = self.max_priority
            level = self._levels.get(number)
            if level is None:
                level = self._levels[number] = _Level()
            if number > self._top:
                self._top = number
            heapq.heappush(level.requeued, entry)
            self.ready_count += 1
            self.ready_bytes += entry.size

    def settle(self, entry: QueueEntry) -> None:
        log = self._log
        if self.durable:
            log.settle(entry)
        elif entry.position >= LOG_POSITION and log is not None:
            log.settle(entry)
            self._log_outstanding -= 1
        else:
            entry.message = None

    def purge(self) -> int:
        count = self.ready_count
        log = self._log
        for level in self._levels.values():
            for entry in level.requeued:
                self.settle(entry)
            for entry in level.loaded:
                self.settle(entry)
            if log is not None:
                for index in range(level.head, len(level.positions)):
                    self.settle(QueueEntry(level.positions[index], None, level.sizes[index]))
        self._levels.clear()
        self._top = -1
        self.ready_count = 0
        self.ready_bytes = 0
        self._loaded_count = 0
        self._loaded_bytes = 0
        return count

    def close(self) -> None:
        """A durable log is closed by the storage engine; a transient one goes away."""
        if not self.durable and self._log is not None:
            self._log.delete()
            self._log = None

    def delete(self) -> None:
        """The queue is gone: drop the index and the log's files (no per-message acks)."""
        self._levels.clear()
        self._top = -1
        self.ready_count = self.ready_bytes = 0
        self._loaded_count = self._loaded_bytes = 0
        if self._log is not None:
            self._log.delete()
            self._log = None

    # -- for the log's clean-shutdown marker (SegmentStore.take_index) --------------------

    def redelivered_positions(self) -> Iterator[int]:
        for level in self._levels.values():
            for entry in level.requeued:
                if entry.delivery_count:
                    yield entry.position
            for entry in level.loaded:
                if entry.delivery_count:
                    yield entry.position

    # -- internals ----------------------------------------------------------------------

    def _has_room(self) -> bool:
        limit = self.memory_limit
        return limit is None or (
            self._loaded_count < limit and self._loaded_bytes < self.memory_bytes  # type: ignore[operator]
        )

    def _keep(self, level: _Level, entry: QueueEntry) -> None:
        level.loaded.append(entry)
        self._loaded_count += 1
        self._loaded_bytes += entry.size

    def _take(self, level: _Level) -> QueueEntry | None:
        """Remove and return the level's next entry (None if only lost records were left)."""
        if level.requeued:
            entry = self._loaded_requeued(level)
            heapq.heappop(level.requeued)
        else:
            if not level.loaded:
                if level.head == len(level.positions):
                    return None
                self._load(level)
                if not level.loaded:
                    return None
            entry = level.loaded.popleft()
            self._loaded_count -= 1
            self._loaded_bytes -= entry.size
        self.ready_count -= 1
        self.ready_bytes -= entry.size
        return entry

    def _loaded_requeued(self, level: _Level) -> QueueEntry:
        entry = level.requeued[0]
        if entry.message is None and self._log is not None:
            loaded = self._log.read(entry.position)
            if loaded is not None:
                entry.message = loaded.message
        return entry

    def _load(self, level: _Level) -> None:
        """Read the next few unloaded records of ``level`` back from the log.

        At least one (so a full budget never stalls a level), at most ``LOAD_BATCH`` and
        what the memory budget has room for.  A record lost with a failed write (its
        publish was nacked) is dropped from the counts here.
        """
        log = self._log
        want = LOAD_BATCH
        if self.memory_limit is not None:
            want = max(1, min(want, self.memory_limit - self._loaded_count))
        while want > 0 and level.head < len(level.positions):
            position, size = level.pop_unloaded()
            entry = log.read(position)
            if entry is None:
                self.ready_count -= 1
                self.ready_bytes -= size
                if not self.durable:
                    self._log_outstanding -= 1
                continue
            self._keep(level, entry)
            want -= 1
            if self.memory_bytes is not None and self._loaded_bytes >= self.memory_bytes:
                break

    def _drop_level(self, number: int) -> None:
        del self._levels[number]
        if number == self._top:
            self._top = max(self._levels) if self._levels else -1

    def _index_recovered(self, records: Iterator[tuple[int, int, int]]) -> None:
        levels = self._levels
        top = self.max_priority
        count = 0
        total = 0
        for position, priority, size in records:
            number = priority if priority < top else top
            level = levels.get(number)
            if level is None:
                level = levels[number] = _Level()
            level.positions.append(position)
            level.sizes.append(size)
            count += 1
            total += size
        self.ready_count += count
        self.ready_bytes += total
        self._top = max(levels) if levels else -1
