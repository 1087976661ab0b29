"""The segment-file layer that durable queues and streams share (``segment_files``).

Both logs name, create, read, truncate and sync their segment files through the same
code; these tests drive that code directly and through both owners (a real
``SegmentStore`` and a real ``StreamLog`` in a temporary directory), so a change to the
shared layer that breaks either log fails here.
"""

from __future__ import annotations

import errno
import os
import socket
import threading
from pathlib import Path

import pytest

from baedal.core.message import Message
from baedal.storage.ackfile import ACK_NAMING, ack_path
from baedal.storage.queue_store import SegmentStore
from baedal.storage.record_batch import Record, batch_size_at, decode_records
from baedal.storage.segment import (
    SEGMENT_HEADER_SIZE,
    SEGMENT_NAMING,
    Segment,
    segment_path,
)
from baedal.storage.segment import StorageError as SegmentStorageError
from baedal.storage.segment_files import (
    FileRange,
    SegmentDirectory,
    SegmentNaming,
    SegmentReads,
    StorageError,
    create_segment_file,
    open_segment_for_append,
    truncate_torn_tail,
)
from baedal.storage.stream_log import LOG_NAMING, StreamLog
from baedal.storage.stream_log import FileRange as StreamFileRange
from baedal.storage.syncer import Syncer


def test_storage_error_and_file_range_are_one_class_wherever_imported() -> None:
    # Callers catch ``segment.StorageError`` and test ``stream_log.FileRange``: moving
    # them into the shared module must not make a second class.
    assert SegmentStorageError is StorageError
    assert StreamFileRange is FileRange


def test_naming_round_trips_and_lists_in_numeric_order(tmp_path: Path) -> None:
    naming = SegmentNaming(".seg", 10)
    for number in (12, 3, 1_000_000, 0):
        path = naming.path(tmp_path, number)
        assert naming.parse(path.name) == number
        path.write_bytes(b"")
    (tmp_path / "not-a-number.seg").write_bytes(b"")
    (tmp_path / "0000000007.ack").write_bytes(b"")  # another suffix: not listed at all
    (tmp_path / "٣.seg").write_bytes(b"")  # a non-ASCII digit is not a segment number
    numbers, strays = naming.list(tmp_path)
    assert numbers == [0, 3, 12, 1_000_000]
    assert sorted(p.name for p in strays) == ["not-a-number.seg", "٣.seg"]
    assert naming.parse("0000000001.seg.tmp") is None
    assert naming.parse(".seg") is None


def test_both_logs_name_their_files_through_the_shared_naming(tmp_path: Path) -> None:
    assert segment_path(tmp_path, 7).name == "0000000007.seg" == SEGMENT_NAMING.path(tmp_path, 7).name
    assert ack_path(tmp_path, 7).name == "0000000007.ack" == ACK_NAMING.path(tmp_path, 7).name
    assert LOG_NAMING.path(tmp_path, 4711).name == "00000000000000004711.log"


def test_create_refuses_an_existing_file_and_open_for_append_appends(tmp_path: Path) -> None:
    path = tmp_path / "0000000001.seg"
    fd = create_segment_file(path)
    os.write(fd, b"abc")
    os.close(fd)
    with pytest.raises(StorageError) as caught:
        create_segment_file(path)
    assert caught.value.errno == errno.EEXIST
    fd = open_segment_for_append(path)
    os.lseek(fd, 0, os.SEEK_SET)  # O_APPEND: writes still go to the end
    os.write(fd, b"def")
    os.close(fd)
    assert path.read_bytes() == b"abcdef"
    with pytest.raises(StorageError) as caught:
        open_segment_for_append(tmp_path / "missing.seg")
    assert caught.value.errno == errno.ENOENT


def test_truncate_torn_tail_cuts_the_file_back(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    path.write_bytes(b"0123456789")
    truncate_torn_tail(path, 4)
    assert path.read_bytes() == b"0123"
    with pytest.raises(StorageError):
        truncate_torn_tail(tmp_path / "missing.log", 0)


def test_directory_close_through_the_syncer_waits_for_its_fsync(tmp_path: Path) -> None:
    directory = SegmentDirectory(tmp_path)
    syncer = Syncer()
    syncer.mark_dirty(directory)
    directory.close(syncer)
    directory.close(syncer)  # twice is harmless: one close, never a reused fd closed
    fd = directory.fd
    assert fd >= 0  # still dirty: not closed before the fsync that covers it
    os.fstat(fd)
    done = threading.Event()
    syncer.after_sync(done.set)
    syncer.sync_now()
    assert done.is_set()
    assert directory.fd == -1
    with pytest.raises(OSError):
        os.fstat(fd)


def test_queue_segments_and_stream_segments_read_through_the_shared_reads(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    assert isinstance(segment, SegmentReads)
    offset = segment.append(1, b"still buffered")
    # pread flushes the writer's buffer first, through the shared read path.
    assert segment.pread(offset + 9, 14) == b"still buffered"
    segment.release_reader()
    assert segment.read(offset) == (1, b"still buffered")
    segment.close()

    stream = StreamLog.open(tmp_path / "stream")
    try:
        stream.append([Record(b"v", key=b"k")])
        active = stream._segments[-1]
        assert isinstance(active, SegmentReads)
        assert active.pread(0, 10)  # buffered batch flushed and read back
    finally:
        stream.close()


def test_a_queue_segment_serves_records_as_a_sendfile_range(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    first = segment.append(1, b"alpha")
    second = segment.append(2, b"bravo" * 100)
    end = segment.size
    with segment.file_range(first, end - first) as stored:  # flushes the buffer first
        segment.close()
        segment.path.unlink()  # the range keeps its own descriptor
        left, right = socket.socketpair()
        try:
            sent = 0
            while sent < stored.length:
                sent += os.sendfile(
                    left.fileno(), stored.fd, stored.position + sent, stored.length - sent
                )
            received = b""
            while len(received) < stored.length:
                received += right.recv(65536)
        finally:
            left.close()
            right.close()
    assert stored.fd == -1
    assert len(received) == end - first
    # The bytes are the records as stored: header + payload, back to back.
    assert received[9:14] == b"alpha"
    assert received[second - first + 9 :] == b"bravo" * 100


def test_a_stream_file_range_is_the_same_class_and_reads_whole_batches(tmp_path: Path) -> None:
    stream = StreamLog.open(tmp_path)
    try:
        for i in range(3):
            stream.append([Record(f"value-{i}".encode())])
        ranges = stream.file_ranges(0, 1 << 20)
        assert all(isinstance(r, FileRange) for r in ranges)
        values = []
        for part in ranges:
            data = part.read()
            while data:  # whole batches back to back
                size = batch_size_at(data)
                values += [record.value for record in decode_records(data[:size])]
                data = data[size:]
        assert values == [b"value-0", b"value-1", b"value-2"]
        for part in ranges:
            part.close()
    finally:
        stream.close()


def test_queue_recovery_truncates_a_torn_tail_and_lists_segments_by_number(tmp_path: Path) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=4096)
    for i in range(40):
        store.append(Message.build("", "q", f"message-{i}".encode() * 20, persistent=True), None)
    store.close()
    numbers, _ = SEGMENT_NAMING.list(tmp_path)
    assert len(numbers) > 2
    last = segment_path(tmp_path, numbers[-1])
    whole = last.stat().st_size
    with open(last, "ab") as file:
        file.write(b"\x10\x00\x00\x00torn")  # a record header cut off by a crash
    (tmp_path / "junk.seg").write_bytes(b"not a segment")  # named wrong: left alone
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=4096)
    try:
        assert last.stat().st_size == whole
        assert store.recovery.truncated_bytes == 8
        bodies = []
        while (entry := store.shift()) is not None:
            assert entry.message is not None
            bodies.append(bytes(entry.message.body))
            store.settle(entry)
        assert bodies == [f"message-{i}".encode() * 20 for i in range(40)]
    finally:
        store.close()
    assert (tmp_path / "junk.seg").exists()
    assert SEGMENT_HEADER_SIZE == 16
