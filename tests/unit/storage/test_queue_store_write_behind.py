"""Write-behind in ``SegmentStore``: a persistent message settled before the sync job that
would write it is never written; everything else reaches the disk in order, before the
fsync that confirms it (queue_store.py, "Write-behind")."""

from __future__ import annotations

import errno
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from baedal.core.message import Message, QueueEntry
from baedal.storage.ackfile import ACK_NAMING
from baedal.storage.queue_store import PENDING_BASE, SegmentStore
from baedal.storage.record_batch import iter_batches
from baedal.storage.segment import SEGMENT_HEADER_SIZE, StorageError
from baedal.storage.syncer import Syncer

if TYPE_CHECKING:
    from conftest import FullDisk  # tests/unit/storage/conftest.py: the ``disk`` fixture


def message(i: int, size: int = 100) -> Message:
    return Message("ex", "q", f"m{i}".encode().ljust(size, b"."), persistent=True)


def name(entry: QueueEntry) -> bytes:
    assert entry.message is not None
    return bytes(entry.message.body).rstrip(b".")


def open_store(path: Path, syncer: Syncer | None = None, **options: int) -> SegmentStore:
    options.setdefault("segment_bytes", 1 << 20)
    options.setdefault("read_ahead", 1000)
    return SegmentStore.open(path, syncer or Syncer(), **options)


def crash(store: SegmentStore) -> None:
    """What kill -9 leaves: whatever was handed to the kernel, no clean marker."""
    store._release_files()


def segment_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.glob("*.seg"))


def ack_files(path: Path) -> list[Path]:
    ids, _strays = ACK_NAMING.list(path)
    return ids


def recovered_names(path: Path) -> list[bytes]:
    store = open_store(path)
    out = []
    while (entry := store.shift()) is not None:
        out.append(name(entry))
    store.close()
    return out


def on_disk_offsets(path: Path) -> list[int]:
    """Every batch's baseOffset, in file order."""
    offsets = []
    for seg in sorted(path.glob("*.seg")):
        data = seg.read_bytes()
        for batch in iter_batches(memoryview(data)[SEGMENT_HEADER_SIZE:]):
            offsets.extend(record.offset for record in batch.records())
    return offsets


def test_a_message_settled_before_the_sync_job_is_never_written(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    store.append(message(0), None)
    syncer.sync_now()  # one written record: the writer segment exists
    size_before = segment_bytes(tmp_path)
    confirmed = []
    for i in range(1, 51):
        store.append(message(i), None)
        syncer.after_sync(lambda i=i: confirmed.append(i))
    first = store.shift()
    assert first is not None and name(first) == b"m0"
    delivered = [store.shift() for _ in range(50)]
    for entry in delivered:
        assert entry is not None and entry.position >= PENDING_BASE
        store.settle(entry)
    syncer.sync_now()
    assert confirmed == list(range(1, 51))  # settled = the broker's responsibility is done
    assert segment_bytes(tmp_path) == size_before  # not a byte written for them
    assert ack_files(tmp_path) == []  # and no ack entry
    assert (store.deferred_skipped, store.deferred_written) == (50, 1)
    crash(store)
    # m0 was delivered, never acked: it comes back; none of the 50 does
    assert recovered_names(tmp_path) == [b"m0"]


def test_a_pending_message_delivered_but_unacked_is_written_and_survives_a_crash(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(10):
        store.append(message(i), None)
    delivered = [store.shift() for _ in range(4)]  # out to a consumer, not acked
    store.settle(delivered[1])  # acked before the job: never written
    syncer.sync_now()
    assert store.deferred_written == 9 and store.deferred_skipped == 1
    assert all(entry is not None and entry.position < PENDING_BASE for entry in delivered[::2])
    crash(store)
    reopened = open_store(tmp_path)
    back = []
    while (entry := reopened.shift()) is not None:
        back.append((name(entry), entry.delivery_count))
    # unclean: every recovered entry may have been delivered before the crash
    assert back == [(f"m{i}".encode(), 1) for i in range(10) if i != 1]


def test_a_settle_after_the_write_goes_to_the_ack_file_as_before(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(5):
        store.append(message(i), None)
    syncer.sync_now()
    for _ in range(5):
        entry = store.shift()
        assert entry is not None
        store.settle(entry)
    syncer.sync_now()
    assert ack_files(tmp_path) == [1]
    crash(store)
    assert recovered_names(tmp_path) == []


def test_a_requeued_pending_entry_keeps_its_place_across_the_relabel(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(5):
        store.append(message(i), None)
    taken = [store.shift() for _ in range(3)]  # m0 m1 m2 out
    store.requeue([taken[2], taken[0]])  # (any order: the heap sorts by position)
    syncer.sync_now()  # relabels m0..m4 in place, m0 and m2 inside the requeue heap
    for i in range(5, 8):
        store.append(message(i), None)  # pending again, above every real position
    taken_again = store.shift()
    assert taken_again is not None and name(taken_again) == b"m0"
    store.requeue([taken_again])
    order = []
    while (entry := store.shift()) is not None:
        order.append(name(entry))
    assert order == [b"m0", b"m2", b"m3", b"m4", b"m5", b"m6", b"m7"]


def test_positions_after_the_relabel_increase_and_are_the_records_base_offsets(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer, segment_bytes=2048)
    entries = []
    never_written = set()
    for i in range(60):
        entries.append(store.append(message(i), None))
        if i % 7 == 3:
            shifted = store.shift()
            assert shifted is not None
            if i % 2:
                if shifted.position >= PENDING_BASE:
                    never_written.add(id(shifted))
                store.settle(shifted)  # settled while pending: never written
        if i % 20 == 19:
            syncer.sync_now()
    syncer.sync_now()
    assert never_written  # (the scenario does settle some before their write)
    written = [e for e in entries if id(e) not in never_written]
    positions = [e.position for e in written]
    assert positions == sorted(set(positions)) and positions[-1] < PENDING_BASE
    assert len({p >> 32 for p in positions}) > 1  # it rolled segments on the way
    assert on_disk_offsets(tmp_path) == positions
    assert store.deferred_written == len(written)
    assert store.deferred_skipped == 60 - len(written)


def test_an_append_past_the_window_writes_the_pending_ones_first(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer, read_ahead=4)
    entries = [store.append(message(i), None) for i in range(4)]  # the window: pending
    assert all(e.position >= PENDING_BASE for e in entries)
    entries += [store.append(message(i), None) for i in range(4, 10)]  # past it: written now
    assert all(e.position < PENDING_BASE for e in entries)  # the 4 first, in order
    assert [e.position for e in entries] == sorted(e.position for e in entries)
    transient = store.append(Message("ex", "q", b"t", persistent=False), None)
    syncer.sync_now()
    assert on_disk_offsets(tmp_path) == [e.position for e in [*entries, transient]]
    order = []
    while (entry := store.shift()) is not None:
        order.append(name(entry))
    assert order == [f"m{i}".encode() for i in range(10)] + [b"t"]


def test_purge_drops_pending_entries_without_writing_them(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(3):
        store.append(message(i), None)
    syncer.sync_now()
    for i in range(3, 10):
        store.append(message(i), None)
    size_before = segment_bytes(tmp_path)
    assert store.purge() == 10
    syncer.sync_now()
    assert segment_bytes(tmp_path) == size_before
    assert store.deferred_skipped == 7 and store.ready_count == 0
    store.append(message(99), None)
    syncer.sync_now()
    crash(store)
    assert recovered_names(tmp_path) == [b"m99"]


def test_close_writes_pending_entries_and_a_clean_restart_has_them_unflagged(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(5):
        store.append(message(i), None)
    store.close()  # no sync job ran: close writes them, then syncs
    syncer.sync_now()  # the hook the appends armed finds nothing left (the store is closed)
    reopened = open_store(tmp_path)
    assert reopened.recovery.clean
    back = []
    while (entry := reopened.shift()) is not None:
        back.append((name(entry), entry.delivery_count))
    assert back == [(f"m{i}".encode(), 0) for i in range(5)]


def test_delete_with_pending_entries_writes_nothing(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path / "q", syncer)
    store.append(message(0), None)
    store.delete()
    syncer.sync_now()
    assert not (tmp_path / "q").exists()


class Index:
    def __init__(self) -> None:
        self.positions: list[int] = []

    def redelivered_positions(self) -> list[int]:
        return []


def test_take_index_writes_pending_entries_and_hands_over_real_positions(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    for i in range(4):
        store.append(message(i), None)
    owner = Index()
    handed = list(store.take_index(owner))
    positions = [position for position, _priority, _size in handed]
    assert all(p < PENDING_BASE for p in positions)
    assert [name(store.read(p)) for p in positions] == [b"m0", b"m1", b"m2", b"m3"]  # type: ignore[arg-type]
    # the externally ordered mode never defers
    entry = store.write(message(4), None)
    assert entry.position < PENDING_BASE
    syncer.sync_now()
    assert on_disk_offsets(tmp_path) == [*positions, entry.position]


def test_a_selective_queue_can_force_the_pending_writes(tmp_path: Path) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    entries = [store.append(message(i), None) for i in range(3)]
    store.write_pending()
    assert all(e.position < PENDING_BASE for e in entries)
    syncer.sync_now()  # the hook has nothing left to write and raises nothing
    assert on_disk_offsets(tmp_path) == [e.position for e in entries]


def test_write_behind_off_writes_at_append_as_before(tmp_path: Path) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, write_behind=False)
    entry = store.append(message(0), None)
    assert entry.position < PENDING_BASE
    shifted = store.shift()
    assert shifted is entry
    store.settle(entry)
    syncer.sync_now()
    assert on_disk_offsets(tmp_path) == [entry.position] and ack_files(tmp_path) == [1]
    assert (store.deferred_written, store.deferred_skipped) == (0, 0)


# --- a write that fails in the hook ----------------------------------------------------


def test_a_write_failing_in_the_hook_fails_its_confirms_and_loses_nothing_confirmed(
    tmp_path: Path, disk: FullDisk
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    confirmed: list[int] = []
    failed: list[int] = []

    def publish(i: int) -> QueueEntry:
        entry = store.append(message(i, 500), None)  # deferred: it cannot fail here
        syncer.after_sync(lambda: confirmed.append(i), lambda exc: failed.append(i))
        return entry

    for i in range(100):
        publish(i)
    syncer.sync_now()
    assert confirmed == list(range(100))

    disk.full = True
    later = [publish(i) for i in range(100, 400)]  # 150 KB: the hook's writes overflow the buffer
    out = [store.shift() for _ in range(102)]  # m0, m1 and two of the failing ones delivered
    syncer.sync_now()  # the hook's write fails: every confirm of that job fails, none lies
    assert confirmed == list(range(100)) and failed == list(range(100, 400))
    assert store.failure is not None and store.failure.errno == errno.ENOSPC
    with pytest.raises(StorageError):  # after a failure, appends are synchronous again
        store.append(message(1000), None)
    for entry in out[100:]:
        store.settle(entry)  # type: ignore[arg-type]  # lost with the failed write: ignored
    assert all(e.position < PENDING_BASE for e in later)  # lost, but still in order

    disk.full = False
    store.reset_failed_writer()
    assert store.failure is None
    assert store.ready_count == 0  # the failed ones left the window; m0..m99 were shifted
    store.requeue([e for e in out[:100] if e is not None])
    for i in range(2000, 2005):
        publish(i)  # deferred again
    syncer.sync_now()
    assert confirmed == [*range(100), *range(2000, 2005)]
    assert store.deferred_written >= 105
    crash(store)
    assert recovered_names(tmp_path) == [f"m{i}".encode() for i in [*range(100), *range(2000, 2005)]]


def test_a_segment_that_cannot_be_created_in_the_hook_fails_the_job(
    tmp_path: Path, disk: FullDisk
) -> None:
    syncer = Syncer()
    store = open_store(tmp_path, syncer)
    failed: list[BaseException] = []
    entries = [store.append(message(i), None) for i in range(3)]
    syncer.after_sync(lambda: pytest.fail("confirmed a message that was never written"), failed.append)
    disk.full = True
    syncer.sync_now()
    assert len(failed) == 1 and getattr(failed[0], "errno", None) == errno.ENOSPC
    assert store.failure is failed[0]  # what tells the broker which store to block and retry
    delivered = store.shift()
    assert delivered is entries[0]
    store.settle(delivered)  # a record that was never written: ignored
    disk.full = False
    confirmed: list[int] = []
    store.append(message(10), None)  # the next write opens a fresh segment
    syncer.after_sync(lambda: confirmed.append(10))
    syncer.sync_now()
    assert confirmed == [10]
    crash(store)
    assert recovered_names(tmp_path) == [b"m10"]


def test_a_store_stays_under_the_shared_key_limit_of_instance_attributes(tmp_path: Path) -> None:
    """CPython 3.11 stops sharing an instance dict's keys at 30 attributes, and then every
    ``self.x`` read in append/shift/settle takes the slower hinted path (measured: +1.1 %
    instructions per message in bench_mqtt_pipeline.py).  New state goes into
    ``_WriteBehind`` (or a similar slotted helper) instead."""
    store = open_store(tmp_path)
    store.queue_ttl_ms = 1000  # (what the owning queue sets)
    assert len(vars(store)) < 30, sorted(vars(store))
