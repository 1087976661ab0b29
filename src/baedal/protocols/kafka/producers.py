"""Idempotent producers: producer ids and per-partition sequence checks.

Kafka's rule (KIP-98, ``ProducerStateManager``): a batch from producer id P with epoch E
carries the sequence number of its first record.  Per (P, partition) the broker keeps
the last few batches it appended; a batch identical to one of them (same epoch, first
and last sequence) is a retry and gets the original base offset without being stored
again; a batch whose first sequence is not the last one plus 1 is OUT_OF_ORDER_SEQUENCE;
an older epoch is INVALID_PRODUCER_EPOCH.  A newer epoch starts afresh.

Limits of this slice (stated so nobody relies on more): the state is in memory only, so
after a restart the first batch of a known producer is accepted whatever its sequence
(Kafka rebuilds producer state from the log's snapshot files); producer ids are drawn
from the wall clock at start-up (milliseconds * 1024 + a counter) so they do not repeat
across restarts unless the clock goes back.
"""

from __future__ import annotations

import time
from collections import deque

from kio.schema.errors import ErrorCode

# Kafka keeps the last 5 batches per producer and partition (max.in.flight for
# idempotent producers is 5, so any retry is among them).
REMEMBERED_BATCHES = 5
SEQUENCE_WRAP = 2**31


class _ProducerPartition:
    __slots__ = ("epoch", "batches")

    def __init__(self, epoch: int) -> None:
        self.epoch = epoch
        self.batches: deque[tuple[int, int, int]] = deque(maxlen=REMEMBERED_BATCHES)


class ProducerTable:
    def __init__(self) -> None:
        self._next_id = int(time.time() * 1000) * 1024
        self._state: dict[tuple[int, str, int], _ProducerPartition] = {}

    def new_producer_id(self) -> int:
        self._next_id += 1
        return self._next_id

    def check(
        self, topic: str, partition: int, producer_id: int, epoch: int, first: int, count: int
    ) -> tuple[ErrorCode, int | None]:
        """(error, base offset of an identical earlier batch) for a batch about to append."""
        state = self._state.get((producer_id, topic, partition))
        if state is None or epoch > state.epoch:
            return ErrorCode.none, None
        if epoch < state.epoch:
            return ErrorCode.invalid_producer_epoch, None
        last = (first + count - 1) % SEQUENCE_WRAP
        for batch_first, batch_last, base_offset in state.batches:
            if batch_first == first and batch_last == last:
                return ErrorCode.none, base_offset  # a retry: answer as the first time
        if state.batches and first != (state.batches[-1][1] + 1) % SEQUENCE_WRAP:
            return ErrorCode.out_of_order_sequence_number, None
        return ErrorCode.none, None

    def appended(
        self,
        topic: str,
        partition: int,
        producer_id: int,
        epoch: int,
        first: int,
        count: int,
        base_offset: int,
    ) -> None:
        key = (producer_id, topic, partition)
        state = self._state.get(key)
        if state is None or epoch > state.epoch:
            state = self._state[key] = _ProducerPartition(epoch)
        state.batches.append((first, (first + count - 1) % SEQUENCE_WRAP, base_offset))
