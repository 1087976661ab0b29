"""The first on-disk layout of scheduled messages, kept to read and migrate it.

Scheduled messages now live in time buckets (storage/schedule_buckets.py, which this
module re-exports as ``ScheduleStore`` and ``MemoryScheduleStore``).  A data directory
written before holds the layout below; ``BucketScheduleStore`` finds its segments at
open, reads every job through ``LegacyScheduleStore.read_all`` and rewrites it.

Theory of operation (the legacy layout)
-------------------
A scheduled message (``core/scheduler.py``) is stored as one record of an ordinary
``SegmentStore`` (``queue_store.py``) used in its externally ordered mode
(``take_index``): the store appends, reads back by position and settles; the scheduler
orders.  So scheduled messages get the same checksummed segments, torn-tail truncation,
separate ack files, whole-segment deletion and group-committed fsync as queue messages,
and nothing here re-implements any of it.

Each record is an *envelope*: a persistent ``Message`` whose record ``expires_at`` slot
holds the due time (wall clock, seconds since the epoch, like every stored deadline)
and whose body is::

    state_len:u32 | state (UTF-8 JSON) | the scheduled message's own record

``state`` is the job: id, vhost, target exchange and routing key, CC/BCC keys, the
repeat/period/cron state and what fired so far.  The inner record is
``storage/record.py``'s neutral message record (``encode_record``), so the scheduled
message comes back exactly as it was published, persistent or not (the envelope is
always persistent: a schedule survives a restart whatever the message's delivery mode,
as ActiveMQ's job store does).

A job that fires and repeats is rewritten as a new record (the log is append-only)
and the old one settled; a crash in between leaves two records with the same id, and
``recover`` keeps the later one (higher position) and settles the other.

"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Iterator
from typing import Any

from ..core.message import Message, QueueEntry
from .queue_store import SegmentStore
from .record import decode_record, encode_record
from .schedule_buckets import BucketScheduleStore as ScheduleStore
from .schedule_buckets import MemoryScheduleStore
from .syncer import Syncer

__all__ = ["LegacyScheduleStore", "MemoryScheduleStore", "ScheduleStore", "StoredJob"]

_STATE_LEN = struct.Struct("<I")


class StoredJob:
    """One job as read back: its position, due time, state dict and message (None when
    only the state was read, at recovery)."""

    __slots__ = ("position", "due", "state", "message")

    def __init__(self, position: int, due: float, state: dict[str, Any], message: Message | None) -> None:
        self.position = position
        self.due = due
        self.state = state
        self.message = message


def encode_envelope(state: dict[str, Any], message: Message, due: float) -> Message:
    inner = encode_record(message, None)
    state_bytes = json.dumps(state, separators=(",", ":")).encode()
    body = _STATE_LEN.pack(len(state_bytes)) + state_bytes + inner
    return Message(state.get("exchange", ""), state.get("routing_key", ""), body, True, 0, None, due)


def decode_state(envelope: Message) -> dict[str, Any]:
    """Only the job's state (recovery: the message itself is read when the job fires)."""
    body = envelope.body
    (state_len,) = _STATE_LEN.unpack_from(body)
    return json.loads(bytes(body[4 : 4 + state_len]))


def decode_envelope(envelope: Message) -> tuple[dict[str, Any], Message]:
    body = envelope.body
    (state_len,) = _STATE_LEN.unpack_from(body)
    state = json.loads(bytes(body[4 : 4 + state_len]))
    message, _ = decode_record(bytes(body[4 + state_len :]))
    return state, message


class LegacyScheduleStore:
    """Scheduled messages on a segment log (the legacy layout: see the module docstring)."""

    durable = True

    def __init__(self, directory: str | os.PathLike[str], syncer: Syncer, *, segment_bytes: int) -> None:
        self.log = SegmentStore.open(directory, syncer, segment_bytes=segment_bytes)
        self._positions = [position for position, _priority, _size in self.log.take_index(self)]

    def redelivered_positions(self) -> list[int]:
        return []  # nothing here is "delivered": the clean marker lists none

    def recover(self) -> Iterator[StoredJob]:
        """Every job recovered at open, in log order, one record read at a time, state
        only (``message`` None: bodies stay on disk until the job fires).

        Duplicate ids (a rewrite interrupted by a crash) are resolved by the caller,
        which keeps the later position and calls ``remove`` on the other.
        """
        positions, self._positions = self._positions, []
        for position in positions:
            entry = self.log.read(position)
            if entry is None or entry.message is None:
                continue
            yield StoredJob(position, float(entry.expires_at or 0.0), decode_state(entry.message), None)

    def read_all(self) -> Iterator[StoredJob]:
        """Every job with its message, the later record of a duplicated id only (a
        rewrite interrupted by a crash), for the migration to the bucket layout."""
        latest: dict[str, StoredJob] = {}
        for recovered in list(self.recover()):
            job_id = recovered.state.get("id")
            if not isinstance(job_id, str):
                continue
            earlier = latest.get(job_id)
            if earlier is None or earlier.position < recovered.position:
                latest[job_id] = recovered
        for recovered in sorted(latest.values(), key=lambda job: job.position):
            stored = self.read(recovered.position)
            if stored is not None:
                yield stored

    def write(self, state: dict[str, Any], message: Message, due: float) -> tuple[int, int]:
        """Append a job; returns (position, stored size).  Marks the log dirty in the
        syncer: ``after_sync`` then covers it (the publisher's confirm waits for it).
        Raises ``StorageError`` when the log cannot be written."""
        envelope = encode_envelope(state, message, due)
        entry = self.log.write(envelope, due)
        return entry.position, len(envelope.body)

    def read(self, position: int) -> StoredJob | None:
        entry = self.log.read(position)
        if entry is None or entry.message is None:
            return None
        state, message = decode_envelope(entry.message)
        return StoredJob(position, float(entry.expires_at or 0.0), state, message)

    def remove(self, position: int) -> None:
        """Settle a job's record (an ack entry; the segment goes once all are settled)."""
        self.log.settle(QueueEntry(position, None, 0))

    @property
    def failure(self) -> Any:
        return self.log.failure

    def close(self, clean: bool = True) -> None:
        self.log.close(clean)
