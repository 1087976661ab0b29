"""The clustering seam: every durable append and every settle goes through a ``Replicator``.

Today a broker is one node and ``LocalReplicator`` does nothing.  When Baedal nodes
cluster (membership, placement and leader election in etcd, never a home-made
consensus), the queue leader's replicator ships each appended record to its followers
and holds the publisher confirm until a quorum has it; settles travel the same way so
followers drop what the leader dropped.  The core calls it at exactly these points, so
that change does not reach into queues:

* ``appended(queue, entry)`` after a message is appended to a durable queue's log.  It
  returns ``None`` when the write is already as replicated as it will be (the local
  case: zero cost), or a *replication handle*: an object with
  ``add_done_callback(fn)`` (``fn(handle)`` is called once, on the event loop) and
  ``exception()`` (``None`` on success) -- an ``asyncio.Future`` is one.  Whoever
  confirms the publish (``core/publish.py``: the AMQP channel's confirms, ``tx.commit``,
  the HTTP 201) waits for the fsync *and* the handle; a failed handle is a nack.
  With write-behind (``storage/queue_store.py``) the entry's ``position`` may still be
  provisional here (``>= PENDING_BASE``): the record gets its real position, or is
  never written because it was settled first, in a later sync job's
  ``write_deferred`` (held a few ms for consumers' acks: ``storage/syncer.py``).  A
  replicating implementation ships the entry's message (identity: the entry object,
  or the position once the hook has run) and treats a ``settled`` that arrives first
  as cancelling it, as the local store does.  Its handle is what keeps a confirm from
  early release: a confirm whose handle is not done waits for it, whatever the store.
* ``settled(queue, entry, reason)`` when one entry leaves a durable queue for good, with
  the reason (the ``SETTLE_REASONS`` below).  ``DEAD_LETTERED`` is not a reason of its
  own: an entry that expired, overflowed, was rejected or hit its delivery limit is
  settled with that cause, and its dead-lettered copy shows up as an ``appended`` on the
  dead-letter queue (reported *before* the source's settle, so a follower never holds
  neither copy).
* ``appended_records(stream, base_offset, last_offset)`` after a batch of records is
  appended to a stream's log (``core/stream.py``: one batch per loop turn).  Returns
  ``None`` or a replication handle, as ``appended``; the stream's confirms for those
  records wait for it, and its readers see them only once it is done (the stream's
  ``committed_offset``, Kafka's high watermark).
* ``cleared(queue, reason, count)`` when every ready entry leaves at once: a purge
  (``PURGED``) or the deletion of a queue that still held messages (``DELETED``).  One
  call, not one per entry, because a purge of a deep durable queue deletes whole
  segment files without reading them; in a replicated log a purge is one command too
  (RabbitMQ's quorum queues replicate ``purge`` as a single Raft command).  A stream's
  retention deleting its oldest segments is reported the same way (``RETENTION``,
  ``count`` = records removed).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

# Why an entry left a durable queue (``settled``) or every entry did (``cleared``).
ACKED = "acked"  # basic.ack, REST ack
AUTO_ACKED = "auto_acked"  # delivered to a no-ack consumer / basic.get no-ack
REJECTED = "rejected"  # basic.reject / basic.nack with requeue=false (dead-lettered if DLX)
EXPIRED = "expired"  # per-message or per-queue TTL (dead-lettered if DLX)
MAXLEN = "maxlen"  # x-max-length / x-max-length-bytes drop-head (dead-lettered if DLX)
DELIVERY_LIMIT = "delivery_limit"  # quorum x-delivery-limit (dead-lettered if DLX)
PURGED = "purged"  # queue.purge: every ready entry
DELETED = "deleted"  # queue.delete with messages in it: every entry
RETENTION = "retention"  # a stream's oldest segments deleted (max-length-bytes, max-age)
SETTLE_REASONS = (ACKED, AUTO_ACKED, REJECTED, EXPIRED, MAXLEN, DELIVERY_LIMIT)
CLEAR_REASONS = (PURGED, DELETED, RETENTION)


class ReplicationHandle(Protocol):
    """What ``appended`` may return while a write is not yet replicated."""

    def add_done_callback(self, fn: Callable[[Any], object], /) -> None: ...
    def exception(self) -> BaseException | None: ...


class Replicator(Protocol):
    def appended(self, queue: Any, entry: Any) -> ReplicationHandle | None:
        """A message was appended to a durable queue's log."""

    def appended_records(
        self, stream: Any, base_offset: int, last_offset: int
    ) -> ReplicationHandle | None:
        """A batch of records (offsets base..last) was appended to a stream's log."""

    def settled(self, queue: Any, entry: Any, reason: str) -> None:
        """A durable queue's entry left it for good (``SETTLE_REASONS``)."""

    def cleared(self, queue: Any, reason: str, count: int) -> None:
        """Every ready entry of a durable queue left it at once (``CLEAR_REASONS``)."""


class LocalReplicator:
    """Single node: nothing to replicate; every append is already as safe as it gets."""

    def appended(self, queue: Any, entry: Any) -> None:
        return None

    def appended_records(self, stream: Any, base_offset: int, last_offset: int) -> None:
        return None

    def settled(self, queue: Any, entry: Any, reason: str) -> None:
        pass

    def cleared(self, queue: Any, reason: str, count: int) -> None:
        pass


def replication_failure(handle: ReplicationHandle) -> BaseException | None:
    """A finished handle's failure (a cancelled future counts as one), or None."""
    try:
        return handle.exception()
    except BaseException as exc:  # asyncio.CancelledError from a cancelled future
        return exc
