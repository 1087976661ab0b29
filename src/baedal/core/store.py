"""What a queue needs from the place its messages live, and the in-memory implementation.

A queue never touches files: it talks to a ``MessageStore``.  Transient queues use
``MemoryStore`` below; durable queues use ``baedal.storage.queue_store.SegmentStore``,
which keeps the same contract on top of the segment log with bounded memory.

Contract (all calls on the event-loop thread, none blocks on I/O for long):

* ``append(message, expires_at) -> QueueEntry`` adds at the tail.  Positions strictly
  increase in append order.
* ``direct(message) -> QueueEntry`` (non-durable stores only) numbers an entry that goes
  straight to a consumer without ever being ready in the store.
* ``shift()`` removes and returns the next ready entry (its ``message`` loaded):
  requeued entries first, lowest position first, then the tail in order.
* ``peek()`` returns that same entry without removing it (for TTL at the head).
* ``requeue(entries)`` puts delivered-but-unsettled entries back as ready.
* ``settle(entry)`` marks an entry done for good (acked, dropped, dead-lettered).  Every
  appended entry is settled exactly once, unless the store is purged or deleted.
* ``purge()`` settles every ready entry and returns how many.
* ``ready_count`` / ``ready_bytes``: the ready (not delivered) entries.
* ``close()`` releases resources; ``delete()`` also removes what it stored.
"""

from __future__ import annotations

import heapq
from collections import deque
from typing import Protocol

from .message import Message, QueueEntry


class MessageStore(Protocol):
    durable: bool
    ready_count: int
    ready_bytes: int

    def append(self, message: Message, expires_at: float | None) -> QueueEntry: ...
    def direct(self, message: Message) -> QueueEntry: ...
    def shift(self) -> QueueEntry | None: ...
    def peek(self) -> QueueEntry | None: ...
    def requeue(self, entries: list[QueueEntry]) -> None: ...
    def settle(self, entry: QueueEntry) -> None: ...
    def purge(self) -> int: ...
    def close(self) -> None: ...
    def delete(self) -> None: ...


class MemoryStore:
    """Ready entries in a deque, requeued ones in a heap ordered by position."""

    durable = False

    __slots__ = ("_ready", "_requeued", "_next_position", "ready_count", "ready_bytes")

    def __init__(self) -> None:
        self._ready: deque[QueueEntry] = deque()
        self._requeued: list[QueueEntry] = []
        self._next_position = 0
        self.ready_count = 0
        self.ready_bytes = 0

    def append(self, message: Message, expires_at: float | None) -> QueueEntry:
        position = self._next_position
        self._next_position = position + 1
        size = len(message.body)
        entry = QueueEntry(position, message, size, expires_at)
        self._ready.append(entry)
        self.ready_count += 1
        self.ready_bytes += size
        return entry

    def direct(self, message: Message) -> QueueEntry:
        """An entry for a message handed straight to a consumer (never ready here)."""
        position = self._next_position
        self._next_position = position + 1
        return QueueEntry(position, message, len(message.body))

    def shift(self) -> QueueEntry | None:
        if self._requeued:
            entry = heapq.heappop(self._requeued)
        elif self._ready:
            entry = self._ready.popleft()
        else:
            return None
        self.ready_count -= 1
        self.ready_bytes -= entry.size
        return entry

    def peek(self) -> QueueEntry | None:
        if self._requeued:
            return self._requeued[0]
        if self._ready:
            return self._ready[0]
        return None

    def requeue(self, entries: list[QueueEntry]) -> None:
        for entry in entries:
            heapq.heappush(self._requeued, entry)
            self.ready_count += 1
            self.ready_bytes += entry.size

    def settle(self, entry: QueueEntry) -> None:
        entry.message = None

    def purge(self) -> int:
        count = self.ready_count
        self._ready.clear()
        self._requeued.clear()
        self.ready_count = 0
        self.ready_bytes = 0
        return count

    def close(self) -> None:
        pass

    def delete(self) -> None:
        self.purge()
