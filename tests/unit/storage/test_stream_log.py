"""The stream log: offsets, lookups at segment boundaries, retention, readers, recovery.

Every test drives a real ``StreamLog`` in a temporary directory; corruption is made by
editing the files on disk the way a crash or a bad disk would.
"""

from __future__ import annotations

import asyncio
import errno
import os
import signal
import socket
import subprocess
import sys
import threading
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import crc32c
import pytest

from baedal.storage import segment as segment_module
from baedal.storage import stream_log as stream_log_module
from baedal.storage.record_batch import (
    BATCH_HEADER_SIZE,
    MAGIC,
    BatchDecoder,
    Record,
    RecordBatchError,
    decode_records,
    encode_batch,
)
from baedal.storage.segment import StorageError
from baedal.storage.stream_log import OffsetOutOfRange, StreamLog
from baedal.storage.syncer import Syncer

RECORDS_PER_BATCH = 5
VALUE_BYTES = 100


class Clock:
    """An injected clock (seconds), moved by the test."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def batch_of(i: int, count: int = RECORDS_PER_BATCH) -> list[Record]:
    """Batch ``i``: records with recognisable values and timestamp 1000 * (i + 1) ms."""
    return [
        Record(
            f"b{i}-r{j}-".encode().ljust(VALUE_BYTES, b"."),
            key=f"k{j}".encode(),
            headers=[("batch", str(i).encode())],
            timestamp=1000 * (i + 1),
        )
        for j in range(count)
    ]


def fill(log: StreamLog, batches: int, start: int = 0) -> None:
    for i in range(start, start + batches):
        log.append(batch_of(i))


def drain(reader: stream_log_module.StreamReader, max_bytes: int = 4096) -> list[Record]:
    records: list[Record] = []
    while batch := reader.read_records(max_bytes):
        records.extend(batch)
    return records


def open_log(path: Path, **settings: object) -> StreamLog:
    settings.setdefault("max_segment_bytes", 8 * 1024)
    settings.setdefault("index_interval_bytes", 1024)
    return StreamLog.open(path, **settings)  # type: ignore[arg-type]


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[StreamLog]:
    log = open_log(tmp_path / "s")
    yield log
    log.close()


def batch_size() -> int:
    return len(encode_batch(batch_of(0)))


# -- appends and offsets -------------------------------------------------------------------


def test_appends_get_dense_monotonic_offsets_and_file_positions(stream: StreamLog) -> None:
    first = stream.append(batch_of(0))
    second = stream.append(batch_of(1, count=3))
    assert (first.base_offset, first.last_offset, first.position) == (0, 4, 0)
    assert (second.base_offset, second.last_offset) == (5, 7)
    assert second.position == first.size and second.segment == 0
    assert (stream.first_offset, stream.last_offset, stream.next_offset) == (0, 7, 8)
    assert stream.last_batch_offset == 5
    assert stream.message_count == 8


def test_an_empty_stream_reports_no_last_offset(stream: StreamLog) -> None:
    assert (stream.first_offset, stream.next_offset, stream.last_offset) == (0, 0, -1)
    assert stream.last_batch_offset == -1
    assert stream.reader("first").read() == []
    assert stream.reader("last").read() == []


def test_segments_roll_by_size_and_are_named_by_base_offset(stream: StreamLog) -> None:
    fill(stream, 40)
    stream.flush()
    bases = stream.segment_bases()
    assert len(bases) > 3
    names = sorted(p.name for p in stream.directory.glob("*.log"))
    assert names == [f"{base:020d}.log" for base in bases]
    for base, path in zip(bases, sorted(stream.directory.glob("*.log")), strict=True):
        assert path.stat().st_size <= 8 * 1024 or base == bases[-1]
        # Each segment starts with the batch whose base offset is its name.
        with open(path, "rb") as handle:
            assert int.from_bytes(handle.read(8), "big") == base
    assert stream.bytes_on_disk == sum(p.stat().st_size for p in stream.directory.glob("*.log"))


def test_a_batch_larger_than_a_segment_gets_a_segment_of_its_own(stream: StreamLog) -> None:
    fill(stream, 2)
    big = stream.append([Record(b"x" * 20_000)])
    assert big.position == 0 and big.segment == big.base_offset
    after = stream.append(batch_of(3))
    assert after.position == 0 and after.segment == after.base_offset
    assert stream.reader(big.base_offset).read_records(1)[0].value == b"x" * 20_000


def test_reopen_preserves_offsets_records_and_appends_continue(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 30)
    before = drain(log.reader("first"))
    bases = log.segment_bases()
    log.close()
    log = open_log(tmp_path / "s")
    assert log.recovery.clean and not log.recovery.rebuilt_indexes
    assert log.segment_bases() == bases
    assert (log.first_offset, log.next_offset) == (0, 30 * RECORDS_PER_BATCH)
    assert log.last_batch_offset == 29 * RECORDS_PER_BATCH
    assert drain(log.reader("first")) == before
    assert log.append(batch_of(30)).base_offset == 150
    log.close()


# -- offset lookup -------------------------------------------------------------------------


def test_offset_lookup_finds_the_batch_at_every_segment_boundary(stream: StreamLog) -> None:
    fill(stream, 40)
    bases = stream.segment_bases()
    targets = {0, stream.next_offset - 1}
    for base in bases[1:]:
        targets.update({base - 1, base, base + 1, base + RECORDS_PER_BATCH})
    for offset in sorted(targets):
        batches = stream.reader(offset).read(1)
        assert batches, offset
        first = batches[0]
        assert first.base_offset <= offset <= first.last_offset, offset
        # A start inside a batch returns the whole batch; read_records skips the head.
        assert stream.reader(offset).read_records(1)[0].offset == offset


def test_every_offset_is_found_in_a_log_with_uneven_batches(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_segment_bytes=4096, index_interval_bytes=256)
    sizes = [1, 7, 2, 13, 1, 1, 30, 4] * 6
    for i, count in enumerate(sizes):
        log.append(batch_of(i, count=count))
    for offset in range(log.next_offset):
        record = log.reader(offset).read_records(1)[0]
        assert record.offset == offset
    log.close()


def test_offsets_before_first_clamp_to_first_or_raise_when_strict(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_bytes=16 * 1024)
    fill(log, 60)
    first = log.first_offset
    assert first > 0
    assert log.reader(0).read_records(1)[0].offset == first
    with pytest.raises(OffsetOutOfRange) as error:
        log.reader(first - 1, strict=True)
    assert (error.value.first_offset, error.value.next_offset) == (first, log.next_offset)
    with pytest.raises(OffsetOutOfRange):
        log.reader(log.next_offset + 1, strict=True)
    # Past the end clamps to next: the reader waits for new records.
    reader = log.reader(log.next_offset + 100)
    assert reader.read() == []
    log.append(batch_of(99))
    assert [r.offset for r in reader.read_records()][0] == 300
    log.close()


# -- time lookup ---------------------------------------------------------------------------


def test_time_lookup_at_segment_boundaries(stream: StreamLog) -> None:
    fill(stream, 40)  # batch i has timestamp 1000 * (i + 1)
    bases = stream.segment_bases()
    for base in bases:
        i = base // RECORDS_PER_BATCH
        for timestamp, expected in (
            (1000 * (i + 1), base),  # exactly the first batch of the segment
            (1000 * (i + 1) - 1, base),  # just after the previous segment's last batch
            (1000 * (i + 1) + 1, base + RECORDS_PER_BATCH),  # just after it
        ):
            reader = stream.reader(timestamp=timestamp)
            assert reader.read(1)[0].base_offset == expected, (base, timestamp)
            assert stream.offset_for_timestamp(timestamp) == expected


def test_time_lookup_before_all_and_after_all(stream: StreamLog) -> None:
    fill(stream, 20)
    assert stream.reader(timestamp=0).read(1)[0].base_offset == 0
    late = stream.reader(timestamp=10**12)
    assert late.read() == [] and late.next_offset == stream.next_offset
    assert stream.offset_for_timestamp(10**12) is None
    stream.append(batch_of(10**6))
    assert late.read_records()[0].offset == 100


def test_time_lookup_returns_the_exact_record_inside_a_batch(stream: StreamLog) -> None:
    records = [Record(b"v", timestamp=t) for t in (100, 200, 300, 400)]
    stream.append(records)
    assert stream.offset_for_timestamp(250) == 2
    assert stream.reader(timestamp=250).read(1)[0].base_offset == 0  # the whole batch
    assert stream.offset_for_timestamp(401) is None


def test_time_lookup_survives_reopen_and_a_deleted_time_index(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 40)
    expected = {t: log.offset_for_timestamp(t) for t in range(500, 41_000, 700)}
    log.close()
    for path in (tmp_path / "s").glob("*.timeindex"):
        path.unlink()
    log = open_log(tmp_path / "s")
    assert len(log.recovery.rebuilt_indexes) == log.segment_count
    assert {t: log.offset_for_timestamp(t) for t in expected} == expected
    log.close()


# -- readers -------------------------------------------------------------------------------


def test_readers_start_at_first_last_next_offset_and_timestamp(stream: StreamLog) -> None:
    fill(stream, 10)
    assert stream.reader("first").read_records(1)[0].offset == 0
    last = stream.reader("last").read_records()
    assert [r.offset for r in last] == list(range(45, 50))  # the whole last batch
    next_reader = stream.reader("next")
    assert next_reader.read() == []
    assert stream.reader(23).read_records(1)[0].offset == 23
    assert stream.reader(timestamp=4000).read_records(1)[0].offset == 15
    stream.append(batch_of(10))
    assert [r.offset for r in next_reader.read_records()] == list(range(50, 55))
    assert stream.reader("last").read_records()[0].offset == 50


def test_last_is_the_start_of_the_last_batch_even_after_a_roll(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 13)  # ends in an active segment
    last_base = log.last_batch_offset
    log.close()
    log = open_log(tmp_path / "s")
    assert log.last_batch_offset == last_base
    assert log.reader("last").read_records()[0].offset == last_base
    log.close()


def test_many_readers_are_independent(stream: StreamLog) -> None:
    fill(stream, 30)
    readers = [stream.reader("first") for _ in range(5)] + [stream.reader(77)]
    seen: list[list[int]] = [[] for _ in readers]
    rounds = 0
    while rounds < 200:
        progressed = False
        for i, reader in enumerate(readers):
            # Different budgets per reader: each keeps its own position.
            got = reader.read_records(700 * (i + 1))
            seen[i].extend(r.offset for r in got)
            progressed |= bool(got)
        if not progressed:
            break
        rounds += 1
    for offsets in seen[:5]:
        assert offsets == list(range(150))
    assert seen[5] == list(range(77, 150))


def test_a_read_is_bounded_by_max_bytes_but_returns_at_least_one_whole_batch(
    stream: StreamLog,
) -> None:
    fill(stream, 3)
    huge = stream.append([Record(b"y" * 6000), Record(b"z" * 1000)])
    fill(stream, 20, start=3)
    size = batch_size()
    reader = stream.reader("first")
    batches = reader.read(3 * size + 10)
    assert [b.base_offset for b in batches] == [0, 5, 10]
    # The next batch alone exceeds the budget: it still comes back whole.
    batches = reader.read(100)
    assert len(batches) == 1 and batches[0].base_offset == huge.base_offset
    assert batches[0].size == huge.size
    assert [r.value[:1] for r in batches[0].records()] == [b"y", b"z"]
    total = 0
    while batches := reader.read(2500):
        assert sum(b.size for b in batches) <= 2500 or len(batches) == 1
        total += sum(b.record_count for b in batches)
    assert total == 20 * RECORDS_PER_BATCH


def test_reads_never_load_a_whole_segment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(tmp_path / "s", max_segment_bytes=256 * 1024)
    fill(log, 1500)
    log.flush()
    assert log.segment_count > 1
    sizes: list[int] = []
    real_pread = os.pread

    def recording_pread(fd: int, length: int, offset: int) -> bytes:
        sizes.append(length)
        return real_pread(fd, length, offset)

    monkeypatch.setattr(os, "pread", recording_pread)
    assert len(drain(log.reader("first"), max_bytes=16 * 1024)) == 7500
    log.reader(7000)
    log.reader(timestamp=1_400_000)
    assert sizes and max(sizes) <= 16 * 1024
    log.close()


def test_a_read_stops_before_end_offset_and_lag_counts_what_is_left(stream: StreamLog) -> None:
    fill(stream, 10)
    reader = stream.reader("first")
    assert reader.lag == 50
    # For example the offset the last fsync covered: nothing at or past it is returned.
    assert [b.base_offset for b in reader.read(1 << 20, end_offset=12)] == [0, 5, 10]
    assert reader.lag == 35
    assert reader.read(1 << 20, end_offset=15) == []
    assert [b.base_offset for b in reader.read(1 << 20)] == [15, 20, 25, 30, 35, 40, 45]
    assert reader.lag == 0


def test_memory_does_not_grow_with_the_number_of_records(tmp_path: Path) -> None:
    # One segment and no index entries: what is left is per-record state, if any.
    log = open_log(tmp_path / "s", max_segment_bytes=1 << 30, index_interval_bytes=1 << 30)
    reader = log.reader("first")
    tracemalloc.start()
    # Warm up first: CPython keeps up to 2000 freed small tuples on a free list, which
    # tracemalloc counts as still allocated.
    fill(log, 500)
    drain(reader)
    try:
        before = tracemalloc.take_snapshot()
        fill(log, 1000, start=500)
        assert len(drain(reader)) == 1000 * RECORDS_PER_BATCH
        after = tracemalloc.take_snapshot()
    finally:
        tracemalloc.stop()
    grown = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    # 5,000 records went through; the write buffer (64 KiB) may stay, nothing that
    # grows with the records (even one int per record would be over 150 KB).
    assert grown < 100 * 1024, grown
    log.close()


def test_a_reader_whose_segment_is_deleted_by_retention_continues_at_first(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path / "s", max_bytes=16 * 1024)
    fill(log, 5)
    lagging = log.reader("first")
    assert lagging.read_records(1)[0].offset == 0
    fill(log, 100, start=5)
    first = log.first_offset
    assert first > 25
    records = lagging.read_records()
    assert records[0].offset == first
    assert lagging.skipped == first - 5
    log.close()


def test_file_ranges_serve_the_same_bytes_as_reads_across_segments(stream: StreamLog) -> None:
    fill(stream, 40)
    offset = stream.segment_bases()[1] - 2  # inside the last batch of the first segment
    budget = 4 * batch_size()
    ranges = stream.file_ranges(offset, budget)
    try:
        assert len(ranges) == 2  # the range crosses into the second segment
        data = b"".join(r.read() for r in ranges)
        expected = stream.reader(offset).read(budget)
        assert len(expected) == 3
        assert data == b"".join(bytes(b.data) for b in expected)
        assert len(data) <= budget
        assert ranges[0].base_offset <= offset < ranges[1].base_offset
    finally:
        for file_range in ranges:
            file_range.close()


def test_file_ranges_go_out_with_sendfile_and_decode_as_kafka_batches(stream: StreamLog) -> None:
    fill(stream, 12)  # the last batches are still in the write buffer
    ranges = stream.file_ranges(17, 1 << 20)
    total = sum(file_range.length for file_range in ranges)
    assert total < 64 * 1024  # fits the socket buffer: send everything, then receive
    sender, receiver = socket.socketpair()
    received = bytearray()
    try:
        for file_range in ranges:
            sent = 0
            while sent < file_range.length:
                sent += os.sendfile(
                    sender.fileno(),
                    file_range.fd,
                    file_range.position + sent,
                    file_range.length - sent,
                )
        while len(received) < total:
            received += receiver.recv(1 << 16)
    finally:
        sender.close()
        receiver.close()
        for file_range in ranges:
            file_range.close()
    decoder = BatchDecoder()
    decoder.feed(received)
    offsets = []
    while (item := decoder.next_batch()) is not None:
        offsets.extend(record.offset for record in item[1])
    decoder.close()
    assert offsets == list(range(15, 60))  # from the batch holding 17 to the end


def test_file_ranges_hold_at_least_one_batch_and_survive_retention(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_bytes=16 * 1024)
    fill(log, 2)
    with log.file_ranges(0, 10)[0] as first:  # smaller than a batch: still the whole batch
        assert first.length == batch_size()
        fill(log, 100, start=2)
        assert log.first_offset > 0  # the segment is gone from the directory ...
        assert not first.path.exists()
        # ... but the range's own descriptor still reads it, for a sendfile in flight.
        assert decode_records(first.read())[0].value.startswith(b"b0-r0-")
    with pytest.raises(OffsetOutOfRange):
        log.file_ranges(0, 100)
    assert log.file_ranges(log.next_offset, 100) == []
    log.close()


# -- retention -----------------------------------------------------------------------------


def test_retention_by_size_deletes_whole_oldest_segments_never_the_active_one(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path / "s", max_bytes=20 * 1024)
    for i in range(200):
        log.append(batch_of(i))
        active = log.segment_bases()[-1]
        sealed = log.bytes_on_disk - log._segments[-1].size
        # Only whole segments go, so the sealed part alone stays within the limit.
        assert sealed <= 20 * 1024
        assert log.first_offset == log.segment_bases()[0]
        assert active == log.segment_bases()[-1]
    assert log.removed_by_retention > 0
    assert sorted(p.name for p in log.directory.glob("*.log")) == [
        f"{b:020d}.log" for b in log.segment_bases()
    ]
    assert not [p for p in log.directory.iterdir() if int(p.name.split(".")[0]) < log.first_offset]
    # A reader from first sees a dense tail up to the last record.
    offsets = [r.offset for r in drain(log.reader("first"))]
    assert offsets == list(range(log.first_offset, log.next_offset))
    log.close()


def test_a_single_huge_active_segment_is_never_deleted(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_bytes=1000)
    log.append([Record(b"x" * 5000)])
    assert log.apply_retention() == []
    assert log.segment_count == 1 and log.first_offset == 0
    log.close()


def test_retention_by_age_uses_each_segments_newest_timestamp(tmp_path: Path) -> None:
    clock = Clock()
    start_ms = int(clock.now * 1000)
    hour_ms = 3600 * 1000
    log = open_log(tmp_path / "s", max_age=3600, clock=clock)
    for _hour in range(5):
        for _ in range(30):  # several segments per hour; timestamps are arrival time
            log.append([Record(b"v" * 200) for _ in range(5)])
        clock.now += 3600
    # Now is 5 h after the start.  Rolls already dropped hours 0-2; hour 3 is exactly
    # 1 h older than the newest rolls saw, so it is only older than max_age now.
    assert log.first_offset > 0
    removed = log.apply_retention()
    assert removed and all("max_age" in r.reason for r in removed)
    timestamps = [r.timestamp for r in drain(log.reader("first"))]
    # Per-segment retention: the oldest survivor may hold hour-3 records next to hour-4
    # ones, but every surviving segment's newest record is within max_age ...
    assert set(timestamps) <= {start_ms + 3 * hour_ms, start_ms + 4 * hour_ms}
    assert all(s.max_timestamp == start_ms + 4 * hour_ms for s in log._segments)
    # ... and all of hour 4 is still there.
    assert timestamps.count(start_ms + 4 * hour_ms) == 150
    clock.now += 10 * 3600
    log.apply_retention()
    assert log.segment_count == 1  # the active segment stays, however old
    log.close()


# -- recovery ------------------------------------------------------------------------------


def test_a_torn_tail_is_truncated_and_reported(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 12)
    last = log.append(batch_of(12))
    path = log.directory / f"{last.segment:020d}.log"
    log.close()
    with open(path, "r+b") as handle:  # a crash in the middle of the last write
        handle.truncate(last.position + last.size // 2)
    log = open_log(tmp_path / "s")
    report = log.recovery
    assert len(report.truncations) == 1
    truncation = report.truncations[0]
    assert truncation.segment == path
    assert truncation.position == last.position
    assert truncation.truncated_bytes == last.size // 2
    assert "torn" in truncation.reason
    assert report.lost_bytes == last.size // 2
    assert log.next_offset == last.base_offset
    assert path.stat().st_size == last.position
    assert log.append(batch_of(12)).base_offset == last.base_offset
    assert [r.offset for r in drain(log.reader("first"))] == list(range(65))
    log.close()


def test_a_torn_header_of_a_few_bytes_is_truncated(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 3)
    log.close()
    path = tmp_path / "s" / f"{0:020d}.log"
    with open(path, "ab") as handle:
        handle.write(b"\x00\x00\x00")
    log = open_log(tmp_path / "s")
    assert log.recovery.truncations[0].truncated_bytes == 3
    assert log.next_offset == 15
    log.close()


def test_a_flipped_byte_in_the_last_segment_is_detected_and_cut_there(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 10)
    victim = log.append(batch_of(10))
    fill(log, 2, start=11)
    path = log.directory / f"{victim.segment:020d}.log"
    log.close()
    data = bytearray(path.read_bytes())
    data[victim.position + BATCH_HEADER_SIZE + 20] ^= 0x01  # inside a record value
    path.write_bytes(bytes(data))
    log = open_log(tmp_path / "s")
    (truncation,) = log.recovery.truncations
    assert truncation.position == victim.position and "CRC" in truncation.reason
    assert log.next_offset == victim.base_offset
    log.close()


def test_a_flipped_byte_in_an_older_segment_is_caught_by_the_reader(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 40)
    bases = log.segment_bases()
    log.close()
    path = tmp_path / "s" / f"{bases[0]:020d}.log"
    data = bytearray(path.read_bytes())
    data[BATCH_HEADER_SIZE + 5] ^= 0x40  # the first batch: far before any index entry
    path.write_bytes(bytes(data))
    log = open_log(tmp_path / "s")
    assert log.recovery.clean  # only tails are scanned at open ...
    with pytest.raises(StorageError, match="CRC"):
        log.reader("first").read()  # ... but no reader is ever given a damaged batch
    log.close()


def test_a_reader_gets_every_batch_before_a_damaged_one_then_stops_there(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 40)
    bases = log.segment_bases()
    log.close()
    path = tmp_path / "s" / f"{bases[0]:020d}.log"
    size = batch_size()
    data = bytearray(path.read_bytes())
    data[3 * size + BATCH_HEADER_SIZE + 5] ^= 0x40  # the fourth batch, offsets 15..19
    path.write_bytes(bytes(data))
    log = open_log(tmp_path / "s")
    reader = log.reader("first")
    # One read covers the damaged batch: the three good ones before it still come out.
    assert [b.base_offset for b in reader.read(1 << 20)] == [0, 5, 10]
    for _ in range(2):  # and the reader stays at the damage, it does not skip it
        with pytest.raises(StorageError, match="CRC"):
            reader.read(1 << 20)
        assert reader.next_offset == 15
    assert log.reader(20).read_records(1)[0].offset == 20
    log.close()


def test_a_bad_tail_in_a_sealed_segment_removes_every_later_segment(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 40)
    bases = log.segment_bases()
    log.close()
    path = tmp_path / "s" / f"{bases[1]:020d}.log"
    size = path.stat().st_size
    with open(path, "r+b") as handle:
        handle.truncate(size - 7)
    log = open_log(tmp_path / "s")
    report = log.recovery
    assert [t.segment for t in report.truncations] == [path]
    assert [r.segment.name for r in report.removed_segments] == [f"{b:020d}.log" for b in bases[2:]]
    assert log.segment_bases() == bases[:2]
    assert not list((tmp_path / "s").glob(f"{bases[2]:020d}.*"))
    offsets = [r.offset for r in drain(log.reader("first"))]
    assert offsets == list(range(log.next_offset))
    log.close()


def test_a_missing_middle_segment_is_a_gap_and_everything_after_it_is_removed(
    tmp_path: Path,
) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 40)
    bases = log.segment_bases()
    log.close()
    (tmp_path / "s" / f"{bases[1]:020d}.log").unlink()
    log = open_log(tmp_path / "s")
    removed = log.recovery.removed_segments
    assert [r.segment.name for r in removed] == [f"{b:020d}.log" for b in bases[2:]]
    assert all("gap" in r.reason for r in removed)
    assert log.segment_bases() == bases[:1]
    assert log.next_offset == bases[1]
    assert log.append(batch_of(0)).base_offset == bases[1]
    log.close()


def test_offsets_survive_retention_and_reopen(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_bytes=16 * 1024)
    fill(log, 80)
    first, next_offset = log.first_offset, log.next_offset
    assert first > 0
    log.close()
    log = open_log(tmp_path / "s", max_bytes=16 * 1024)
    assert (log.first_offset, log.next_offset) == (first, next_offset)
    assert log.reader("first").read_records(1)[0].offset == first
    log.close()


def test_an_index_is_rebuilt_identically_when_deleted(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 40)
    log.close()
    directory = tmp_path / "s"
    originals = {p.name: p.read_bytes() for p in directory.glob("*index")}
    assert any(originals.values())
    for path in directory.glob("*index"):
        path.unlink()
    log = open_log(tmp_path / "s")
    assert len(log.recovery.rebuilt_indexes) == log.segment_count
    assert log.recovery.clean
    assert {p.name: p.read_bytes() for p in directory.glob("*index")} == originals
    for offset in (0, 37, 123, 199):
        assert log.reader(offset).read_records(1)[0].offset == offset
    log.close()


def test_an_index_pointing_past_the_log_is_repaired(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_segment_bytes=1 << 20)
    fill(log, 20)
    keep = log.bytes_on_disk
    fill(log, 10, start=20)
    log.close()
    index = tmp_path / "s" / f"{0:020d}.index"
    log_file = tmp_path / "s" / f"{0:020d}.log"
    # The log lost its last 10 batches in the crash but the index kept its entries.
    with open(log_file, "r+b") as handle:
        handle.truncate(keep)
    log = open_log(tmp_path / "s", max_segment_bytes=1 << 20)
    assert log.recovery.clean  # the log itself ends on a batch boundary
    assert log.next_offset == 100
    entries = index.read_bytes()
    assert all(
        int.from_bytes(entries[i + 4 : i + 8], "big") < keep for i in range(0, len(entries), 8)
    )
    assert log.reader(99).read_records(1)[0].offset == 99
    log.close()


def test_a_garbage_index_is_rebuilt(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s", max_segment_bytes=1 << 20)
    fill(log, 30)
    log.close()
    index = tmp_path / "s" / f"{0:020d}.index"
    good = index.read_bytes()
    index.write_bytes(good[:-8] + (0x7FFF).to_bytes(4, "big") + (600).to_bytes(4, "big"))
    log = open_log(tmp_path / "s", max_segment_bytes=1 << 20)
    assert log.recovery.rebuilt_indexes == [index]
    assert index.read_bytes() == good
    log.close()


def test_stray_files_from_an_interrupted_deletion_are_removed(tmp_path: Path) -> None:
    log = open_log(tmp_path / "s")
    fill(log, 3)
    log.close()
    directory = tmp_path / "s"
    (directory / f"{999:020d}.index").write_bytes(b"")
    (directory / f"{0:020d}.index.tmp").write_bytes(b"junk")
    log = open_log(tmp_path / "s")
    assert sorted(p.name for p in directory.iterdir()) == [
        f"{0:020d}.index",
        f"{0:020d}.log",
        f"{0:020d}.timeindex",
    ]
    log.close()


def test_index_entries_are_bounded_by_segment_size_over_interval(stream: StreamLog) -> None:
    fill(stream, 60)
    stream.flush()
    for base in stream.segment_bases()[:-1]:
        index = stream.directory / f"{base:020d}.index"
        entries = index.stat().st_size // 8
        assert entries <= 8 * 1024 // 1024 + 2


# -- appends of raw Kafka batches -----------------------------------------------------------


def test_append_batch_stores_a_batch_byte_for_byte_with_its_offset_rewritten(
    stream: StreamLog,
) -> None:
    fill(stream, 2)
    raw = encode_batch([Record(b"a", timestamp=5), Record(b"b", timestamp=9)], base_offset=0)
    result = stream.append_batch(bytes(raw))
    (stored,) = stream.reader(result.base_offset).read(1)
    assert bytes(stored.data[8:]) == bytes(raw[8:])  # everything but baseOffset
    assert stored.base_offset == result.base_offset == 10
    assert [r.offset for r in stored.records()] == [10, 11]


@pytest.mark.parametrize(
    "damage",
    ["crc", "truncated", "trailing", "magic", "count"],
)
def test_append_batch_refuses_a_damaged_batch(stream: StreamLog, damage: str) -> None:
    raw = encode_batch([Record(b"a"), Record(b"b")])
    if damage == "crc":
        raw[-1] ^= 0xFF
    elif damage == "truncated":
        raw = raw[:-3]
    elif damage == "trailing":
        raw += b"\x00"
    elif damage == "magic":
        raw[16] = MAGIC + 1
    elif damage == "count":
        raw = encode_batch([Record(b"a"), Record(b"b")])
        raw[57:61] = (3).to_bytes(4, "big")  # recordsCount is under the CRC: fix it
        raw[17:21] = crc32c.crc32c(bytes(raw[21:])).to_bytes(4, "big")
    with pytest.raises(RecordBatchError):
        stream.append_batch(raw)
    assert stream.next_offset == 0


def test_a_real_kafka_python_batch_is_stored_and_decoded() -> None:
    default_records = pytest.importorskip("kafka.record.default_records")
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2,
        compression_type=0,
        is_transactional=0,
        producer_id=-1,
        producer_epoch=-1,
        base_sequence=-1,
        batch_size=1 << 20,
    )
    builder.append(0, 1_700_000_000_000, b"key-0", b"value-0", [("h1", b"x"), ("h2", None)])
    builder.append(1, 1_700_000_000_005, None, b"value-1", [])
    builder.append(2, 1_700_000_000_003, b"key-2", None, [])
    raw = bytes(builder.build())
    records = decode_records(raw)
    assert [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in records] == [
        (0, 1_700_000_000_000, b"key-0", b"value-0", [("h1", b"x"), ("h2", None)]),
        (1, 1_700_000_000_005, None, b"value-1", []),
        (2, 1_700_000_000_003, b"key-2", None, []),
    ]


def test_a_gzip_kafka_python_batch_is_stored_served_and_decoded(tmp_path: Path) -> None:
    default_records = pytest.importorskip("kafka.record.default_records")
    builder = default_records.DefaultRecordBatchBuilder(
        magic=2,
        compression_type=default_records.DefaultRecordBase.CODEC_GZIP,
        is_transactional=0,
        producer_id=7,
        producer_epoch=1,
        base_sequence=0,
        batch_size=1 << 20,
    )
    for i in range(50):
        builder.append(i, 1_700_000_000_000 + i, None, b"compressible " * 20, [])
    raw = bytes(builder.build())
    log = open_log(tmp_path / "s")
    log.append(batch_of(0))
    result = log.append_batch(raw)
    assert (result.base_offset, result.last_offset, result.size) == (5, 54, len(raw))
    (stored,) = log.reader(5).read(1)
    assert stored.producer_id == 7 and bytes(stored.data[8:]) == raw[8:]
    assert [r.offset for r in stored.records()] == list(range(5, 55))
    assert log.offset_for_timestamp(1_700_000_000_010) == 15
    log.close()


def test_batches_the_log_writes_are_read_by_kafka_python(stream: StreamLog) -> None:
    default_records = pytest.importorskip("kafka.record.default_records")
    fill(stream, 3)
    stream.append(
        [
            Record(b"body", key=b"k", headers=[("content-type", b"text/plain")], timestamp=42),
            Record(None, key=None, headers=[("null", None)], timestamp=40, attributes=0),
        ]
    )
    (stored,) = stream.reader(15).read(1)
    batch = default_records.DefaultRecordBatch(bytes(stored.data))
    assert batch.validate_crc()
    assert (batch.base_offset, batch.last_offset, batch.max_timestamp) == (15, 16, 42)
    assert [(r.offset, r.timestamp, r.key, r.value, r.headers) for r in batch] == [
        (15, 42, b"k", b"body", [("content-type", b"text/plain")]),
        (16, 40, None, None, [("null", None)]),
    ]


# -- durability hooks ------------------------------------------------------------------------


def test_appends_are_made_durable_by_the_shared_syncer(tmp_path: Path) -> None:
    syncer = Syncer()
    log = open_log(tmp_path / "s", syncer=syncer)
    confirmed: list[int] = []
    for i in range(30):  # rolls several times: retired writers are fsynced, then closed
        result = log.append(batch_of(i))
        syncer.after_sync(lambda offset=result.last_offset: confirmed.append(offset))
    assert syncer.busy and confirmed == []
    syncer.sync_now()
    assert confirmed == [i * RECORDS_PER_BATCH + 4 for i in range(30)]
    # The syncer flushed the buffered bytes: the file holds every batch.
    active = log.directory / f"{log.segment_bases()[-1]:020d}.log"
    assert active.stat().st_size == log._segments[-1].size
    log.close()
    syncer.close()


async def test_group_commit_runs_fsync_off_the_loop_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: set[str] = set()
    real_fsync = os.fsync

    def recording_fsync(fd: int) -> None:
        threads.add(threading.current_thread().name)
        real_fsync(fd)

    syncer = Syncer()
    log = open_log(tmp_path / "s", syncer=syncer)
    monkeypatch.setattr(os, "fsync", recording_fsync)
    futures = []
    for i in range(10):
        log.append(batch_of(i))
        futures.append(syncer.synced())
    await asyncio.wait_for(asyncio.gather(*futures), 10)
    assert threads and all(name.startswith("baedal-fsync") for name in threads)
    assert syncer.fsync_jobs <= 10
    monkeypatch.setattr(os, "fsync", real_fsync)
    log.close()
    syncer.close()


CRASH_WRITER = """
import asyncio, sys
from baedal.storage.record_batch import Record
from baedal.storage.stream_log import StreamLog
from baedal.storage.syncer import Syncer

async def main() -> None:
    syncer = Syncer()
    log = StreamLog.open(sys.argv[1], syncer=syncer, max_segment_bytes=32 * 1024,
                         index_interval_bytes=512)
    batch = 0
    while True:
        for _ in range(3):  # a few appends share each fsync (group commit)
            result = log.append([Record(b"%d-%d" % (batch, j) * 10) for j in range(4)])
            batch += 1
        await syncer.synced()
        print(result.last_offset, flush=True)

asyncio.run(main())
"""


def test_kill_9_while_appending_loses_nothing_that_was_synced(tmp_path: Path) -> None:
    directory = tmp_path / "s"
    env = {**os.environ, "PYTHONPATH": str(Path(stream_log_module.__file__).parents[2])}
    child = subprocess.Popen(
        [sys.executable, "-c", CRASH_WRITER, str(directory)],
        stdout=subprocess.PIPE,
        env=env,
    )
    assert child.stdout is not None
    synced = -1
    try:
        for line in child.stdout:
            synced = int(line)
            if synced >= 2000:  # several segments, many fsync rounds
                break
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait()
    assert synced >= 2000, "the writer died early"
    log = open_log(directory)
    assert log.next_offset > synced
    values = [(r.offset, r.value) for r in drain(log.reader("first"), max_bytes=1 << 20)]
    assert [offset for offset, _ in values] == list(range(log.next_offset))
    for offset, value in values:
        assert value == b"%d-%d" % (offset // 4, offset % 4) * 10
    log.close()


def test_a_failed_write_is_sticky(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = open_log(tmp_path / "s", flush_bytes=1)
    fill(log, 2)

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module, "_write_fd", full_disk)
    with pytest.raises(StorageError) as first:
        fill(log, 3, start=2)
    assert first.value.errno == errno.ENOSPC
    monkeypatch.undo()
    with pytest.raises(StorageError):
        log.append(batch_of(9))  # sticky: reopening is what recovers the log
    log.close()  # releases the descriptors without writing
    log = open_log(tmp_path / "s")
    # Batch 0 reached the file; batch 1 was in the buffer when the write failed (never
    # synced, so never confirmed) and is gone.
    assert log.next_offset == 5 and log.recovery.clean
    log.close()
