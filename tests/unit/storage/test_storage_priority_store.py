"""PriorityStore: one log for every priority level, the order in a bounded index.

Against a real SegmentStore on disk (durable) and a real transient log (paged out past a
small memory budget): highest priority first, FIFO within a level, requeued entries back
in place, no more than the budget of bodies in memory, and a reopened durable store
rebuilds the same order from the log alone.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from baedal.core.message import Message, QueueEntry
from baedal.core.priority import LOG_POSITION, PriorityStore
from baedal.storage.queue_store import SegmentStore
from baedal.storage.syncer import Syncer

MAX = 255


def message(number: int, priority: int, persistent: bool = True) -> Message:
    return Message("", "q", f"{number}".encode(), persistent=persistent, priority=priority)


def expected_order(published: list[tuple[int, int]], max_priority: int = MAX) -> list[bytes]:
    """RabbitMQ's order: highest (capped) priority first, publish order within one."""
    ranked = sorted(published, key=lambda item: (-min(item[1], max_priority), item[0]))
    return [f"{number}".encode() for number, _ in ranked]


def take_all(store: PriorityStore, settle: bool = True, limit: int = -1) -> list[QueueEntry]:
    out = []
    while len(out) != limit and (entry := store.shift()) is not None:
        assert entry.message is not None
        out.append(entry)
        if settle:
            body = entry.message.body
            store.settle(entry)
            entry.message = Message("", "", body)
    return out


def bodies(entries: list[QueueEntry]) -> list[bytes]:
    return [entry.message.body for entry in entries]  # type: ignore[union-attr]


def publish_many(store: PriorityStore, count: int, seed: int = 7) -> list[tuple[int, int]]:
    rng = random.Random(seed)
    published = []
    for number in range(count):
        priority = rng.randrange(0, 300) if number % 5 else rng.choice((0, MAX))
        store.append(message(number, min(priority, 255)), None)
        published.append((number, min(priority, 255)))
    return published


def durable(path: Path, syncer: Syncer, **options: int) -> PriorityStore:
    log = SegmentStore.open(path, syncer, segment_bytes=64 * 1024, read_ahead=32, read_ahead_bytes=1 << 20)
    return PriorityStore(MAX, log=log, **options)


def test_durable_priority_queue_uses_one_log_and_bounded_memory(tmp_path: Path) -> None:
    syncer = Syncer()
    store = durable(tmp_path / "q", syncer)
    published = publish_many(store, 3000)
    syncer.sync_now()
    assert store.levels > 200
    assert store.ready_count == 3000
    # Every level in one directory of segment files, no per-level anything.
    assert not [p for p in (tmp_path / "q").iterdir() if p.is_dir()]
    # At most the read-ahead budget of messages is held in memory.
    assert store._loaded_count <= 32
    got = take_all(store)
    assert bodies(got) == expected_order(published)
    assert store.ready_count == 0 and store.ready_bytes == 0 and store.levels == 0


def test_durable_priority_queue_reopens_in_the_same_order(tmp_path: Path) -> None:
    syncer = Syncer()
    store = durable(tmp_path / "q", syncer)
    published = publish_many(store, 2000)
    first = take_all(store, limit=100)  # consume (and ack) the first hundred
    delivered = store.shift()  # one delivered and requeued before the shutdown
    assert delivered is not None
    delivered.delivery_count = 1
    store.requeue([delivered])
    syncer.sync_now()
    store.log_store.close()

    reopened = durable(tmp_path / "q", syncer)
    assert reopened.ready_count == 1900
    assert reopened._loaded_count == 0  # nothing loaded until asked for
    rest = take_all(reopened)
    assert bodies(first) + bodies(rest) == expected_order(published)
    assert rest[0].redelivered and not any(entry.redelivered for entry in rest[1:])


def test_requeued_entries_go_back_to_their_place_in_their_level(tmp_path: Path) -> None:
    store = durable(tmp_path / "q", Syncer())
    for number, priority in enumerate([1, 1, 5, 5, 9]):
        store.append(message(number, priority), None)
    a, b, c = store.shift(), store.shift(), store.shift()  # 4 (p9), 2 and 3 (p5)
    store.requeue([c, a])  # type: ignore[list-item]
    assert bodies(take_all(store)) == [b"4", b"3", b"0", b"1"]
    assert b is not None and b.message is not None and b.message.body == b"2"


def test_transient_priority_queue_pages_out_to_one_log_past_its_budget(tmp_path: Path) -> None:
    opened: list[SegmentStore] = []

    def open_log() -> SegmentStore:
        log = SegmentStore.open(tmp_path / "transient", Syncer(), segment_bytes=64 * 1024)
        opened.append(log)
        return log

    store = PriorityStore(MAX, open_log=open_log, memory_limit=50, memory_bytes=1 << 20)
    small = PriorityStore(MAX, open_log=open_log, memory_limit=50, memory_bytes=1 << 20)
    for number in range(40):
        small.append(message(number, number % 3, persistent=False), None)
    assert not opened  # under the budget: memory only, no file at all

    published = publish_many(store, 1000)
    assert len(opened) == 1  # one log for every level
    assert store._loaded_count <= 50
    got = take_all(store)
    assert bodies(got) == expected_order(published)
    assert any(entry.position >= LOG_POSITION for entry in got)
    store.delete()
    assert not (tmp_path / "transient").exists()


def test_purge_settles_loaded_and_unloaded_entries(tmp_path: Path) -> None:
    syncer = Syncer()
    store = durable(tmp_path / "q", syncer)
    publish_many(store, 500)
    assert store.purge() == 500
    assert store.ready_count == 0 and store.shift() is None
    syncer.sync_now()
    store.log_store.close()
    assert durable(tmp_path / "q", syncer).ready_count == 0


@pytest.mark.parametrize("max_priority", [1, 10])
def test_priorities_above_the_maximum_count_as_the_maximum(max_priority: int) -> None:
    store = PriorityStore(max_priority)  # no storage: memory only
    published = [(n, p) for n, p in enumerate([0, 200, max_priority, 3, 255, 0])]
    for number, priority in published:
        store.append(message(number, priority, persistent=False), None)
    assert bodies(take_all(store)) == expected_order(published, max_priority)
