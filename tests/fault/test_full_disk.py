"""A full disk: synced data is never lost, the store says why it stopped, and resumes after."""

from __future__ import annotations

import errno
from collections.abc import Iterator
from pathlib import Path

import pytest

from baedal.core.message import Message
from baedal.storage import segment as segment_module
from baedal.storage.queue_store import SegmentStore
from baedal.storage.segment import StorageError
from baedal.storage.syncer import Syncer


class FullDisk:
    """A fault-injecting layer over the storage write seam: ENOSPC while `full`."""

    def __init__(self) -> None:
        self.full = False
        self.real_write = segment_module._write_fd
        self.refused = 0

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            self.refused += 1
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real_write(fd, data)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[FullDisk]:
    fault = FullDisk()
    monkeypatch.setattr(segment_module, "_write_fd", fault.write)
    yield fault


def msg(i: int) -> Message:
    return Message("", "q", f"m{i}".encode().ljust(500, b"."), persistent=True)


def bodies(path: Path) -> list[bytes]:
    store = SegmentStore.open(path, Syncer())
    out = []
    while (entry := store.shift()) is not None:
        out.append(entry.message.body.rstrip(b"."))  # type: ignore[union-attr]
    return out


def test_full_disk_loses_no_synced_data_reports_enospc_and_resumes(
    tmp_path: Path, disk: FullDisk
) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=64 * 1024, read_ahead=4)
    confirmed: list[int] = []
    failed: list[BaseException] = []
    for i in range(300):
        store.append(msg(i), None)
        syncer.after_sync(lambda i=i: confirmed.append(i), failed.append)
    syncer.sync_now()
    assert confirmed == list(range(300))

    disk.full = True
    accepted = []
    with pytest.raises(StorageError) as raised:
        for i in range(300, 1000):
            store.append(msg(i), None)
            accepted.append(i)
            syncer.after_sync(lambda i=i: confirmed.append(i), failed.append)
    assert raised.value.errno == errno.ENOSPC
    assert "No space left" in str(raised.value) or "ENOSPC" in str(raised.value)
    assert store.failure is raised.value
    with pytest.raises(StorageError):  # sticky
        store.append(msg(5000), None)
    syncer.sync_now()  # the pending confirms cannot be honoured: they fail, never lie
    assert confirmed == list(range(300))
    assert len(failed) == len(accepted) and all(
        getattr(e, "errno", None) == errno.ENOSPC for e in failed
    )

    disk.full = False  # space returns
    forgotten = store.reset_failed_writer()
    assert forgotten == len(accepted)
    assert store.failure is None
    assert store.ready_count == 300
    for i in range(2000, 2010):
        store.append(msg(i), None)
        syncer.after_sync(lambda i=i: confirmed.append(i), failed.append)
    syncer.sync_now()
    assert confirmed == [*range(300), *range(2000, 2010)]
    assert [e.message.body.rstrip(b".") for e in [store.shift() for _ in range(310)]] == [  # type: ignore[union-attr]
        f"m{i}".encode() for i in [*range(300), *range(2000, 2010)]
    ]
    # and after a crash, exactly the confirmed messages are there
    assert bodies(tmp_path) == [f"m{i}".encode() for i in [*range(300), *range(2000, 2010)]]


def test_a_full_disk_during_a_segment_roll_can_be_retried(tmp_path: Path, disk: FullDisk) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=4096, read_ahead=4)
    for i in range(7):  # 7 x ~545 B: the segment is nearly full, all flushed below
        store.append(msg(i), None)
    syncer.sync_now()
    disk.full = True
    with pytest.raises(StorageError) as raised:
        for i in range(7, 20):
            store.append(msg(i), None)
    assert raised.value.errno == errno.ENOSPC
    disk.full = False
    store.reset_failed_writer()
    store.append(msg(100), None)
    syncer.sync_now()
    assert bodies(tmp_path) == [f"m{i}".encode() for i in [*range(7), 100]]


def test_a_full_disk_while_writing_acks_keeps_the_acks_for_later(
    tmp_path: Path, disk: FullDisk
) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=1 << 20, read_ahead=4)
    for i in range(20):
        store.append(msg(i), None)
    syncer.sync_now()
    entries = [store.shift() for _ in range(6)]
    store.settle(entries.pop(0))  # the ack file exists before the disk fills
    disk.full = True
    for entry in entries:
        store.settle(entry)  # type: ignore[arg-type]
    syncer.sync_now()  # the ack flush fails; acks have no confirms, nothing is fatal
    assert store.failure is not None and store.failure.errno == errno.ENOSPC
    disk.full = False
    store.reset_failed_writer()
    syncer.sync_now()
    store.close()
    assert bodies(tmp_path) == [f"m{i}".encode() for i in range(6, 20)]


def test_an_ack_file_that_cannot_be_created_raises_and_the_message_is_redelivered(
    tmp_path: Path, disk: FullDisk
) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=1 << 20, read_ahead=4)
    for i in range(3):
        store.append(msg(i), None)
    syncer.sync_now()
    entry = store.shift()
    disk.full = True
    with pytest.raises(StorageError) as raised:
        store.settle(entry)  # type: ignore[arg-type]
    assert raised.value.errno == errno.ENOSPC
    disk.full = False
    # at-least-once: the ack never reached the disk, so the message comes back
    assert bodies(tmp_path) == [b"m0", b"m1", b"m2"]
