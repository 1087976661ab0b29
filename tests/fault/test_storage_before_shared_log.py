"""A storage directory written by main's code before the segment-file layer was shared
(``tests/fixtures/storage-before-shared-log.tar.gz``, see
``tests/fixtures/storage_before_shared_log.py``) recovers with every message, and the
current code writes on after it.

Covers what the shared layer (``storage/segment_files.py``) now does for both logs:
listing and naming segment and ack files, truncating a torn tail, reading records back
with ``pread``, the clean-shutdown marker and crash redelivery flags, and a stream's
segments, indexes and offsets.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

from baedal.core.message import Message
from baedal.storage.queue_store import SegmentStore
from baedal.storage.record_batch import Record
from baedal.storage.stream_log import StreamLog
from baedal.storage.syncer import Syncer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import storage_before_shared_log as fixture  # noqa: E402

pytestmark = pytest.mark.timeout(60)

ARCHIVE = Path(__file__).resolve().parents[1] / "fixtures" / "storage-before-shared-log.tar.gz"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "storage"


def drain(store: SegmentStore) -> list[tuple[Message, int]]:
    out = []
    while (entry := store.shift()) is not None:
        assert entry.message is not None
        out.append((entry.message, entry.delivery_count))
        store.settle(entry)
    return out


def test_a_cleanly_closed_queue_recovers_every_unacked_message_and_field(storage: Path) -> None:
    syncer = Syncer()
    store = SegmentStore.open(storage / "queue-clean", syncer, segment_bytes=4096)
    try:
        assert store.recovery.clean
        assert store.recovery.truncated_bytes == store.recovery.damaged_bytes == 0
        expected = range(fixture.CLEAN_SETTLED, fixture.CLEAN_MESSAGES)
        assert store.ready_count == len(expected)
        got = drain(store)
    finally:
        store.close()
    assert len(got) == len(expected)  # the transient messages are gone
    for (message, delivery_count), i in zip(got, expected, strict=True):
        fields = fixture.clean_message(i)
        assert message.persistent
        assert bytes(message.body) == fields["body"]
        assert (message.exchange, message.routing_key) == (fields["exchange"], fields["routing_key"])
        assert message.priority == fields["priority"]
        assert dict(message.headers) == fields["headers"]
        assert message.content_type == fields["content_type"]
        assert message.correlation_id == fields["correlation_id"]
        assert message.message_id == fields["message_id"]
        assert message.timestamp == fields["timestamp"]
        # Only the ones delivered before the clean shutdown come back flagged.
        redelivered = i < fixture.CLEAN_SETTLED + fixture.CLEAN_DELIVERED
        assert delivery_count == (1 if redelivered else 0), i


def test_a_crashed_queue_loses_only_its_torn_tail_and_flags_everything(storage: Path) -> None:
    directory = storage / "queue-crashed"
    newest = max(directory.glob("*.seg"))
    size_before = newest.stat().st_size
    store = SegmentStore.open(directory, Syncer(), segment_bytes=4096)
    try:
        assert not store.recovery.clean
        assert store.recovery.truncated_bytes == len(fixture.TORN_TAIL)
        assert newest.stat().st_size == size_before - len(fixture.TORN_TAIL)
        got = drain(store)
    finally:
        store.close()
    assert [bytes(message.body) for message, _ in got] == fixture.crash_survivors()
    assert all(count == 1 for _, count in got)  # after a crash any may have been delivered


def test_the_queue_takes_new_writes_after_the_old_files_and_keeps_both(storage: Path) -> None:
    directory = storage / "queue-clean"
    syncer = Syncer()
    store = SegmentStore.open(directory, syncer, segment_bytes=4096)
    old_segments = sorted(p.name for p in directory.glob("*.seg"))
    for i in range(50):
        store.append(Message.build("", "q", f"new-{i}".encode() * 10, persistent=True), None)
    syncer.sync_now()
    store.close()
    new_segments = sorted(p.name for p in directory.glob("*.seg"))
    assert new_segments[: len(old_segments)] == old_segments
    assert len(new_segments) > len(old_segments)
    store = SegmentStore.open(directory, syncer, segment_bytes=4096)
    try:
        bodies = [bytes(message.body) for message, _ in drain(store)]
    finally:
        store.close()
    old = [
        fixture.clean_message(i)["body"]
        for i in range(fixture.CLEAN_SETTLED, fixture.CLEAN_MESSAGES)
    ]
    assert bodies == old + [f"new-{i}".encode() * 10 for i in range(50)]


def test_the_stream_recovers_every_record_at_its_offset(storage: Path) -> None:
    stream = StreamLog.open(storage / "stream", max_segment_bytes=2048, index_interval_bytes=256)
    try:
        assert stream.recovery.clean and not stream.recovery.rebuilt_indexes
        total = fixture.STREAM_BATCHES * fixture.STREAM_BATCH_RECORDS
        assert (stream.first_offset, stream.next_offset) == (0, total)
        assert stream.segment_count == 6
        reader = stream.reader("first")
        records: list[Record] = []
        while batch := reader.read_records(4096):
            records += batch
        expected = [
            fixture.stream_record(batch, record)
            for batch in range(fixture.STREAM_BATCHES)
            for record in range(fixture.STREAM_BATCH_RECORDS)
        ]
        assert [r.offset for r in records] == list(range(total))
        assert [(r.key, r.value, list(r.headers), r.timestamp) for r in records] == expected
        # Lookups through the old indexes, at a segment boundary and inside one.
        for offset in (21, 22, 63, 119):
            assert stream.reader(offset).read_records(1)[0].key == expected[offset][0]
        assert stream.offset_for_timestamp(expected[64][3]) == 64
        # And it appends on from where the old code stopped.
        result = stream.append([Record(b"after", key=b"new")])
        assert result.base_offset == total
    finally:
        stream.close()
    stream = StreamLog.open(storage / "stream", max_segment_bytes=2048, index_interval_bytes=256)
    try:
        assert stream.recovery.clean
        last = stream.reader(total).read_records()
        assert [(r.offset, r.value) for r in last] == [(total, b"after")]
    finally:
        stream.close()
