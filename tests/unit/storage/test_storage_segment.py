"""Segment files: records round-trip, reads by offset, and a failed write stays failed."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from baedal.storage import segment as segment_module
from baedal.storage.segment import SEGMENT_HEADER_SIZE, Segment, StorageError


def test_appended_records_read_back_by_offset(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    offsets = [segment.append(1, f"payload-{i}".encode() * (i + 1)) for i in range(50)]
    assert offsets[0] == SEGMENT_HEADER_SIZE
    for i, offset in enumerate(offsets):
        assert segment.read(offset) == (1, f"payload-{i}".encode() * (i + 1))
    segment.close()


def test_iter_records_walks_the_file_in_order_across_chunks(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    payloads = [bytes([i % 256]) * (i * 37 % 5000 + 1) for i in range(300)]
    for payload in payloads:
        segment.append(2, payload)
    got = [
        payload
        for _offset, _kind, payload in segment.iter_records(SEGMENT_HEADER_SIZE, chunk_bytes=4096)
    ]
    assert got == payloads
    segment.close()


def test_reads_see_records_still_in_the_write_buffer(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    offset = segment.append(1, b"not flushed yet")
    assert segment.written == SEGMENT_HEADER_SIZE  # still buffered
    assert segment.read(offset) == (1, b"not flushed yet")
    segment.close()


def test_has_room_respects_capacity_but_an_empty_segment_takes_any_record(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1, capacity=100)
    assert segment.has_room(10_000)
    segment.append(1, b"x" * 60)
    assert not segment.has_room(60)
    assert segment.has_room(5)  # 16 header + 69 + 14 = 99 <= 100
    segment.close()


def test_a_flipped_byte_is_caught_by_the_crc(tmp_path: Path) -> None:
    segment = Segment.create(tmp_path, 1)
    offset = segment.append(1, b"hello world")
    segment.flush()
    data = bytearray(segment.path.read_bytes())
    data[offset + 12] ^= 0xFF
    segment.path.write_bytes(bytes(data))
    with pytest.raises(StorageError):
        segment.read(offset)
    segment.close()


def test_a_failed_write_is_sticky_and_carries_the_errno(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment = Segment.create(tmp_path, 1)
    segment.append(1, b"a" * 100)
    segment.flush()
    good = segment.written

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module, "_write_fd", full_disk)
    segment.append(1, b"b" * 100)
    with pytest.raises(StorageError) as first:
        segment.flush()
    assert first.value.errno == errno.ENOSPC
    monkeypatch.undo()  # space is back, but the segment still refuses
    with pytest.raises(StorageError) as again:
        segment.append(1, b"c")
    assert again.value is first.value
    assert len(segment.lost_bytes()) == 9 + 100
    segment.truncate_to_last_good()
    assert segment.path.stat().st_size == good
    segment.append(1, b"d")
    segment.flush()
    segment.close()


def test_a_partial_write_is_truncated_back_to_the_last_whole_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    segment = Segment.create(tmp_path, 1)
    segment.append(1, b"a" * 100)
    segment.flush()
    good = segment.written
    real_write = segment_module._write_fd
    calls = []

    def half_then_fail(fd: int, data: bytes) -> int:
        calls.append(len(data))
        if len(calls) == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(segment_module, "_write_fd", half_then_fail)
    segment.append(1, b"b" * 100)
    with pytest.raises(StorageError):
        segment.flush()
    assert segment.path.stat().st_size > good
    monkeypatch.undo()
    segment.truncate_to_last_good()
    assert segment.path.stat().st_size == good
    segment.close()
