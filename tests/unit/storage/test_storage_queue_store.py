"""SegmentStore keeps the MessageStore contract, in bounded memory, and survives restarts."""

from __future__ import annotations

from pathlib import Path

import pytest

from baedal.core.message import Message, QueueEntry
from baedal.core.store import MemoryStore
from baedal.storage.queue_store import SegmentStore, decode_record, encode_record
from baedal.storage.syncer import Syncer


def message(i: int, persistent: bool = True, size: int = 0) -> Message:
    body = f"m{i}".encode().ljust(size, b".")
    return Message(
        "ex", f"key.{i}", body, persistent=persistent, published_at=float(i)
    )


def open_store(path: Path, syncer: Syncer | None = None, **options: int) -> SegmentStore:
    options.setdefault("segment_bytes", 4096)
    options.setdefault("read_ahead", 8)
    return SegmentStore.open(path, syncer or Syncer(), **options)


def drain(store: SegmentStore, settle: bool = True) -> list[QueueEntry]:
    out = []
    while (entry := store.shift()) is not None:
        out.append(entry)
        if settle:
            body = entry.message.body  # type: ignore[union-attr]
            store.settle(entry)
            entry.message = Message("", "", body)  # keep the body for assertions
    return out


def bodies(entries: list[QueueEntry]) -> list[bytes]:
    return [entry.message.body for entry in entries]  # type: ignore[union-attr]


def test_record_encoding_round_trips_every_message_field() -> None:
    original = Message.build(
        "amq.topic",
        "a.b.c",
        b"body" * 100,
        persistent=True,
        priority=7,
        expiration_ms=1500,
        published_at=1234.5,
        content_type="text/plain",
        headers={"k": 1},
    )
    decoded, expires_at = decode_record(encode_record(original, 99.25))
    assert (decoded.exchange, decoded.routing_key, decoded.body) == (
        "amq.topic",
        "a.b.c",
        b"body" * 100,
    )
    assert (decoded.persistent, decoded.priority, decoded.expiration_ms, decoded.published_at) == (
        True,
        7,
        1500,
        1234.5,
    )
    assert (decoded.content_type, decoded.headers) == ("text/plain", {"k": 1})
    assert expires_at == 99.25
    plain, none = decode_record(encode_record(Message("", "", b""), None))
    assert plain.expiration_ms is None and none is None and not plain.persistent


def test_entries_come_out_in_publish_order_across_segments_and_read_ahead(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(500):
        store.append(message(i, size=50), None)
    assert store.ready_count == 500
    assert store.ready_bytes == 500 * 50
    assert bodies(drain(store)) == [message(i, size=50).body for i in range(500)]
    assert store.ready_count == 0 and store.ready_bytes == 0
    assert store.shift() is None and store.peek() is None


def test_positions_strictly_increase(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    entries = [store.append(message(i), None) for i in range(300)]
    store.syncer.sync_now()  # (writes the deferred ones: positions are final from here)
    positions = [entry.position for entry in entries]
    assert positions == sorted(set(positions))


def test_peek_returns_the_entry_shift_returns_next(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(40):
        store.append(message(i), None)
    for _ in range(40):
        peeked = store.peek()
        assert peeked is store.shift()


def test_requeued_entries_come_first_lowest_position_first(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    reference = MemoryStore()
    for i in range(30):
        store.append(message(i), None)
        reference.append(message(i), None)
    taken = [store.shift() for _ in range(10)]
    reference_taken = [reference.shift() for _ in range(10)]
    store.requeue([taken[7], taken[2], taken[5]])
    reference.requeue([reference_taken[7], reference_taken[2], reference_taken[5]])
    assert store.ready_count == reference.ready_count == 23
    got = [store.shift().message.body for _ in range(23)]  # type: ignore[union-attr]
    expected = [reference.shift().message.body for _ in range(23)]  # type: ignore[union-attr]
    assert got == expected
    assert got[:4] == [b"m2", b"m5", b"m7", b"m10"]


def test_memory_holds_only_the_read_ahead_window(tmp_path: Path) -> None:
    store = open_store(tmp_path, read_ahead=16, segment_bytes=64 * 1024)
    for i in range(5000):
        store.append(message(i, size=100), None)
        assert len(store._ready) <= 16
    assert store._unloaded == 5000 - 16
    seen = 0
    while (entry := store.shift()) is not None:
        assert len(store._ready) <= 16
        assert entry.message.body.startswith(f"m{seen}.".encode())  # type: ignore[union-attr]
        store.settle(entry)
        seen += 1
    assert seen == 5000


def test_settling_every_record_deletes_sealed_segments_but_not_the_writer(tmp_path: Path) -> None:
    store = open_store(tmp_path, segment_bytes=2048)
    for i in range(200):
        store.append(message(i, size=100), None)
    assert len(list(tmp_path.glob("*.seg"))) > 5
    drain(store)
    assert len(list(tmp_path.glob("*.seg"))) == 1  # only the writer is left
    assert not list(tmp_path.glob("*.ack")) or len(list(tmp_path.glob("*.ack"))) == 1


def test_purge_settles_ready_entries_and_frees_their_segments(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer, segment_bytes=2048, read_ahead=4)
    for i in range(300):
        store.append(message(i, size=60), None)
    held = [store.shift() for _ in range(3)]  # delivered, not settled
    store.requeue([held[1]])
    assert store.purge() == 298
    assert store.ready_count == 0 and store.ready_bytes == 0 and store.shift() is None
    store.settle(held[0])
    store.settle(held[2])
    assert len(list(tmp_path.glob("*.seg"))) == 1
    store.append(message(1000), None)
    assert store.shift().message.body == b"m1000"  # type: ignore[union-attr]
    syncer.sync_now()
    store.close()
    reopened = open_store(tmp_path)
    assert reopened.ready_count == 1  # m1000, never settled


def test_a_requeued_entry_whose_message_was_dropped_is_read_back(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    for i in range(20):
        store.append(message(i), None)
    entry = store.shift()
    assert entry is not None
    entry.message = None
    store.requeue([entry])
    again = store.shift()
    assert again is entry and entry.message is not None and entry.message.body == b"m0"


def test_clean_restart_keeps_unacked_persistent_messages_and_flags_only_delivered_ones(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(100):
        store.append(message(i, persistent=i % 2 == 0, size=30), 1e12 if i == 4 else None)
    acked = [store.shift() for _ in range(10)]
    for entry in acked[:5]:
        store.settle(entry)
    delivered = acked[5:]
    for entry in delivered:
        entry.delivery_count = 1
    store.requeue(delivered)  # what the broker does before close
    syncer.sync_now()
    store.close()

    reopened = open_store(tmp_path)
    entries = drain(reopened)
    expected = [i for i in range(5, 100) if i % 2 == 0]
    assert [entry.message.body.rstrip(b".") for entry in entries] == [
        f"m{i}".encode() for i in expected
    ]  # type: ignore[union-attr]
    flagged = {entry.message.body.rstrip(b".") for entry in entries if entry.redelivered}  # type: ignore[union-attr]
    assert flagged == {b"m6", b"m8"}  # delivered-but-unacked persistent ones only
    assert reopened.ready_count == 0


def test_restart_after_a_crash_flags_every_recovered_entry_redelivered(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(50):
        store.append(message(i, persistent=i != 3), 77.0 if i == 10 else None)
    for _ in range(5):
        store.settle(store.shift())  # type: ignore[arg-type]
    syncer.sync_now()
    # no close(): the process died
    reopened = open_store(tmp_path, Syncer())
    assert reopened.ready_count == 45
    entries = drain(reopened, settle=False)
    assert [entry.message.body for entry in entries] == [f"m{i}".encode() for i in range(5, 50)]  # type: ignore[union-attr]
    assert all(entry.redelivered for entry in entries)
    assert entries[5].expires_at == 77.0 and entries[6].expires_at is None


def test_transient_messages_do_not_survive_a_restart(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(60):
        store.append(message(i, persistent=i % 3 == 0), None)
    syncer.sync_now()
    store.close()
    reopened = open_store(tmp_path)
    assert bodies(drain(reopened)) == [f"m{i}".encode() for i in range(0, 60, 3)]


def test_a_second_clean_restart_remembers_crash_redelivery_flags_not_yet_delivered(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer, read_ahead=2)
    for i in range(10):
        store.append(message(i), None)
    syncer.sync_now()
    crashed = open_store(tmp_path, Syncer(), read_ahead=2)  # the first one "crashed"
    first = crashed.shift()
    assert first is not None and first.redelivered
    crashed.settle(first)
    crashed.syncer.sync_now()
    crashed.close()
    again = open_store(tmp_path, read_ahead=2)
    entries = drain(again, settle=False)
    assert len(entries) == 9 and all(entry.redelivered for entry in entries)


def test_appends_after_recovery_go_to_a_new_segment_after_the_recovered_ones(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    entries = [store.append(message(i), None) for i in range(20)]
    syncer.sync_now()
    old = [entry.position for entry in entries]
    store.close()
    reopened = open_store(tmp_path)
    new = reopened.append(message(99), None).position
    assert new > max(old)
    assert bodies(drain(reopened))[-1] == b"m99"


def test_delete_removes_the_directory(tmp_path: Path) -> None:
    store = open_store(tmp_path / "q")
    store.append(message(1), None)
    store.delete()
    assert not (tmp_path / "q").exists()


@pytest.mark.parametrize("read_ahead", [1, 3, 1000])
def test_interleaved_publish_and_consume_match_the_memory_store(
    tmp_path: Path, read_ahead: int
) -> None:
    store = open_store(tmp_path, read_ahead=read_ahead, segment_bytes=1024)
    reference = MemoryStore()
    counter = 0
    import random

    rng = random.Random(read_ahead)
    held: list[tuple[QueueEntry, QueueEntry]] = []
    for _ in range(3000):
        action = rng.random()
        if action < 0.5:
            store.append(message(counter), None)
            reference.append(message(counter), None)
            counter += 1
        elif action < 0.8:
            a, b = store.shift(), reference.shift()
            assert (a is None) == (b is None)
            if a is not None and b is not None:
                assert a.message.body == b.message.body  # type: ignore[union-attr]
                held.append((a, b))
        elif action < 0.9 and held:
            a, b = held.pop(rng.randrange(len(held)))
            store.settle(a)
            reference.settle(b)
        elif held:
            batch = [held.pop() for _ in range(min(3, len(held)))]
            store.requeue([a for a, _ in batch])
            reference.requeue([b for _, b in batch])
        assert store.ready_count == reference.ready_count
        assert store.ready_bytes == reference.ready_bytes
