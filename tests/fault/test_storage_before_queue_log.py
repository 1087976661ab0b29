"""A storage directory written by main's code before durable queues moved onto the
stream's batch format (``tests/fixtures/storage-before-queue-log.tar.gz``, see
``tests/fixtures/storage_before_queue_log.py``) recovers with every message, and the
current code writes on after it in the new format.

Covers the version-1 reader kept for old segments (read until drained): acked records
skipped through the old ack files, transient records dropped, wall-clock deadlines
(future and past) returned unchanged, every neutral field, the clean-shutdown marker's
redelivery flags, a crash's torn tail; then old and new segments side by side, acks
in both, and the old files deleted once settled.
"""

from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

from baedal.core.message import Message
from baedal.storage.queue_store import SegmentStore
from baedal.storage.segment import QUEUE_LOG_VERSION, SEGMENT_HEADER, SEGMENT_VERSION
from baedal.storage.syncer import Syncer

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import storage_before_queue_log as fixture  # noqa: E402

pytestmark = pytest.mark.timeout(60)

ARCHIVE = Path(__file__).resolve().parents[1] / "fixtures" / "storage-before-queue-log.tar.gz"


@pytest.fixture
def storage(tmp_path: Path) -> Path:
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "storage"


def segment_versions(directory: Path) -> dict[str, int]:
    return {
        path.name: SEGMENT_HEADER.unpack(path.read_bytes()[: SEGMENT_HEADER.size])[1]
        for path in sorted(directory.glob("*.seg"))
    }


def drain(store: SegmentStore, settle: bool = True) -> list[tuple[Message, float | None, int]]:
    out = []
    while (entry := store.shift()) is not None:
        assert entry.message is not None
        out.append((entry.message, entry.expires_at, entry.delivery_count))
        if settle:
            store.settle(entry)
    return out


def check_message(message: Message, expires_at: float | None, i: int) -> None:
    fields = fixture.message_fields(i)
    assert message.persistent
    assert bytes(message.body) == fields["body"]
    assert (message.exchange, message.routing_key) == (fields["exchange"], fields["routing_key"])
    assert message.priority == fields["priority"]
    assert message.expiration_ms == fields["expiration_ms"]
    assert dict(message.headers) == fields["headers"]
    for name in ("content_type", "content_encoding", "correlation_id", "reply_to", "message_id", "user_id", "timestamp"):
        assert getattr(message, name) == fields[name], name
    assert expires_at == fixture.deadline(i)


def test_the_fixture_is_in_the_old_format(storage: Path) -> None:
    for directory in ("queue-clean", "queue-crashed"):
        versions = segment_versions(storage / directory)
        assert versions and set(versions.values()) == {SEGMENT_VERSION}
        assert list((storage / directory).glob("*.ack"))


def test_a_cleanly_closed_old_queue_recovers_every_unacked_message_field_and_deadline(
    storage: Path,
) -> None:
    store = SegmentStore.open(storage / "queue-clean", Syncer(), segment_bytes=4096)
    try:
        assert store.recovery.clean
        assert store.recovery.truncated_bytes == store.recovery.damaged_bytes == 0
        assert store.recovered_deadlines
        expected = fixture.survivors()
        assert store.ready_count == len(expected)
        got = drain(store)
    finally:
        store.close()
    assert len(got) == len(expected)  # acked and transient records are gone
    for (message, expires_at, delivery_count), i in zip(got, expected, strict=True):
        check_message(message, expires_at, i)
        # Only the ones delivered before the clean shutdown come back flagged.
        assert delivery_count == (1 if i in expected[: fixture.DELIVERED] else 0), i


def test_a_crashed_old_queue_loses_only_its_torn_tail_and_flags_everything(storage: Path) -> None:
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
    expected = fixture.survivors()
    assert len(got) == len(expected)
    for (message, expires_at, delivery_count), i in zip(got, expected, strict=True):
        check_message(message, expires_at, i)
        assert delivery_count == 1  # after a crash any may have been delivered


def test_new_writes_go_to_new_format_segments_after_the_old_ones(storage: Path) -> None:
    directory = storage / "queue-clean"
    old = segment_versions(directory)
    syncer = Syncer()
    store = SegmentStore.open(directory, syncer, segment_bytes=4096)
    new_bodies = [f"new-{i}".encode() * 10 for i in range(60)]
    for i, body in enumerate(new_bodies):
        store.append(Message.build("x", "q", body, persistent=True, priority=i % 2), None)
        if i % 10 == 0:
            store.append(Message.build("", "q", b"transient", persistent=False), None)
    # Everything delivered (old, then new, transient ones included), nothing acked.
    got = drain(store, settle=False)
    assert [bytes(m.body) for m, _, _ in got if m.persistent][-len(new_bodies) :] == new_bodies
    syncer.sync_now()
    store.close()
    versions = segment_versions(directory)
    for name, version in old.items():
        assert versions[name] == version
    new = {name: version for name, version in versions.items() if name not in old}
    assert new and set(new.values()) == {QUEUE_LOG_VERSION}
    # Reopen: everything comes back (it was delivered, never acked), old then new.
    store = SegmentStore.open(directory, syncer, segment_bytes=4096)
    try:
        old_expected = fixture.survivors()
        entries = []
        while (entry := store.shift()) is not None:
            entries.append(entry)
        bodies = [bytes(entry.message.body) for entry in entries]  # type: ignore[union-attr]
        assert bodies == [fixture.message_fields(i)["body"] for i in old_expected] + new_bodies
        for entry, i in zip(entries, old_expected, strict=False):
            check_message(entry.message, entry.expires_at, i)  # type: ignore[arg-type]
        assert [entry.message.priority for entry in entries[len(old_expected) :]] == [  # type: ignore[union-attr]
            i % 2 for i in range(60)
        ]
        # Settle every old one and every third new one, then crash (no close).
        keep = []
        for n, entry in enumerate(entries):
            if n < len(old_expected) or (n - len(old_expected)) % 3 == 0:
                store.settle(entry)
            else:
                keep.append(bytes(entry.message.body))  # type: ignore[union-attr]
        syncer.sync_now()
        # Every old-format segment is settled and deleted; only new ones remain.
        assert set(segment_versions(directory).values()) == {QUEUE_LOG_VERSION}
    finally:
        store._release_files()  # a crash: no clean marker
    store = SegmentStore.open(directory, syncer, segment_bytes=4096)
    try:
        assert not store.recovery.clean
        assert [bytes(m.body) for m, _, _ in drain(store)] == keep
    finally:
        store.close()
