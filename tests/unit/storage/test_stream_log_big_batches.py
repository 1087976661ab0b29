"""Big batches (a Kafka producer's 64 KiB) go from the caller's buffer straight to the
segment file (``_LogWriter.append``), rewritten in place when handed a writable view:
order with buffered batches, reads, and the sticky-failure rule must not change."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from baedal.storage import segment as segment_module
from baedal.storage.record_batch import Record, encode_batch
from baedal.storage.segment import StorageError
from baedal.storage.stream_log import DIRECT_WRITE_BYTES, StreamLog


def big_batch(tag: int, records: int = 40, value_bytes: int = 1024) -> bytes:
    values = [f"{tag}-{i}-".encode().ljust(value_bytes, b"v") for i in range(records)]
    data = bytes(encode_batch([Record(v, None, (), 1000 + tag) for v in values], 0))
    assert len(data) >= DIRECT_WRITE_BYTES
    return data


def small_batch(tag: int) -> bytes:
    return bytes(encode_batch([Record(f"small-{tag}".encode(), None, (), 1000 + tag)], 0))


def values(log: StreamLog) -> list[bytes]:
    reader = log.reader("first")
    out: list[bytes] = []
    while batch := reader.read_records(1 << 20):
        out.extend(record.value for record in batch)
    return out


def test_a_big_batch_is_in_the_file_at_once_and_after_what_was_buffered(tmp_path: Path) -> None:
    log = StreamLog.open(tmp_path / "s")
    log.append_batch(small_batch(0))  # buffered
    segment_file = log._segments[-1].path
    assert os.path.getsize(segment_file) == 0
    frame = bytearray(b"head" + big_batch(1) + b"tail")
    view = memoryview(frame)[4:-4]  # as the Kafka codec hands it: a slice of the frame
    result = log.append_batch(view)
    assert result.base_offset == 1 and result.last_offset == 40
    # Written without waiting for a flush, the buffered batch first.
    assert os.path.getsize(segment_file) == len(small_batch(0)) + len(view)
    # The base offset was rewritten in the caller's buffer, nowhere else.
    assert int.from_bytes(frame[4:12], "big") == 1
    log.append_batch(small_batch(2))
    log.sync()
    expected = [b"small-0"] + [f"1-{i}-".encode().ljust(1024, b"v") for i in range(40)]
    assert values(log) == [*expected, b"small-2"]
    log.close()
    reopened = StreamLog.open(tmp_path / "s")
    assert reopened.recovery.clean and reopened.next_offset == 42
    assert values(reopened) == [*expected, b"small-2"]
    reopened.close()


def test_a_read_only_batch_is_copied_not_refused(tmp_path: Path) -> None:
    log = StreamLog.open(tmp_path / "s")
    data = big_batch(7)
    log.append_batch(memoryview(data))  # read-only: rewritten in a copy
    assert int.from_bytes(data[:8], "big") == 0  # the caller's bytes are untouched
    assert len(log.reader("first").read(1 << 20)[0].records()) == 40
    log.close()


def test_a_failed_direct_write_is_sticky_and_loses_only_that_batch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = StreamLog.open(tmp_path / "s")
    log.append_batch(big_batch(0))
    writes = []

    def full_disk(fd: int, data: memoryview) -> int:
        writes.append(len(data))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module, "_write_fd", full_disk)
    with pytest.raises(StorageError) as failed:
        log.append_batch(big_batch(1))
    assert failed.value.errno == errno.ENOSPC and writes
    monkeypatch.undo()
    with pytest.raises(StorageError):  # sticky, small or big
        log.append_batch(small_batch(2))
    with pytest.raises(StorageError):
        log.append_batch(big_batch(3))
    log.close()
    reopened = StreamLog.open(tmp_path / "s")
    assert reopened.next_offset == 40 and reopened.recovery.clean
    assert values(reopened)[-1] == b"0-39-".ljust(1024, b"v")
    reopened.close()


def test_a_half_done_direct_write_is_cut_back_on_reopen(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    log = StreamLog.open(tmp_path / "s")
    log.append_batch(big_batch(0))
    real_write = segment_module._write_fd
    calls = [0]

    def half_then_fail(fd: int, data: memoryview) -> int:
        calls[0] += 1
        if calls[0] == 1:
            return real_write(fd, data[: len(data) // 2])
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(segment_module, "_write_fd", half_then_fail)
    with pytest.raises(StorageError):
        log.append_batch(big_batch(1))
    monkeypatch.undo()
    log.close()
    reopened = StreamLog.open(tmp_path / "s")
    # The torn half batch is truncated away; the first batch is whole.
    assert reopened.next_offset == 40
    assert not reopened.recovery.clean
    reopened.close()
