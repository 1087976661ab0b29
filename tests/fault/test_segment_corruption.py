"""Corrupted segments: a torn tail is cut, a damaged record costs only itself, and the log says so."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from baedal.core.message import Message
from baedal.storage.queue_log import BATCH_PREFIX, encode_message
from baedal.storage.queue_store import SegmentStore
from baedal.storage.segment import SEGMENT_HEADER_SIZE
from baedal.storage.syncer import Syncer


def fill(path: Path, count: int, size: int = 100, segment_bytes: int = 1 << 20) -> list[int]:
    syncer = Syncer()
    store = SegmentStore.open(path, syncer, segment_bytes=segment_bytes, read_ahead=4)
    entries = [
        store.append(
            Message("", "q", f"m{i}".encode().ljust(size, b"."), persistent=True), None
        )
        for i in range(count)
    ]
    syncer.sync_now()
    # simulate a crash: no close(), the files stay as written
    return [entry.position for entry in entries]  # (final once written: write-behind)


def recovered_bodies(path: Path) -> list[bytes]:
    store = SegmentStore.open(path, Syncer(), read_ahead=4)
    out = []
    while (entry := store.shift()) is not None:
        out.append(entry.message.body.rstrip(b"."))  # type: ignore[union-attr]
    return out


def only_segment(path: Path) -> Path:
    [segment] = sorted(path.glob("*.seg"))
    return segment


def test_a_torn_tail_is_truncated_and_earlier_records_survive(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(tmp_path, 10)
    segment = only_segment(tmp_path)
    size = segment.stat().st_size
    with open(segment, "r+b") as file:
        file.truncate(size - 30)  # the last record was half written
    with caplog.at_level(logging.WARNING, logger="baedal.storage"):
        assert recovered_bodies(tmp_path) == [f"m{i}".encode() for i in range(9)]
    assert "torn tail" in caplog.text and segment.name in caplog.text
    # one batch per message: the 21 bytes before the CRC'd part, then the rest
    record_size = BATCH_PREFIX.size + len(
        encode_message(Message("", "q", b"." * 100, persistent=True), None)[0]
    )
    assert segment.stat().st_size == SEGMENT_HEADER_SIZE + 9 * record_size


def test_a_partial_record_header_at_the_end_is_dropped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(tmp_path, 5)
    segment = only_segment(tmp_path)
    with open(segment, "ab") as file:
        file.write(b"\x10\x00\x00")
    with caplog.at_level(logging.WARNING, logger="baedal.storage"):
        assert len(recovered_bodies(tmp_path)) == 5
    assert "partial batch header" in caplog.text


@pytest.mark.parametrize("where", ["payload", "crc", "kind", "length"])
def test_a_flipped_byte_in_the_middle_drops_only_the_damaged_record(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, where: str
) -> None:
    positions = fill(tmp_path, 20)
    segment = only_segment(tmp_path)
    damaged_offset = positions[7] & 0xFFFFFFFF
    shift = {"payload": 60, "crc": 5, "kind": 8, "length": 2}[where]
    data = bytearray(segment.read_bytes())
    data[damaged_offset + shift] ^= 0x5A
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="baedal.storage"):
        survivors = recovered_bodies(tmp_path)
    assert survivors == [f"m{i}".encode() for i in range(20) if i != 7]
    warnings = [
        record.getMessage() for record in caplog.records if record.levelno >= logging.WARNING
    ]
    assert any(
        segment.name in text and f"offset {damaged_offset}" in text and "damaged" in text
        for text in warnings
    ), warnings


def test_several_damaged_records_across_segments_each_cost_only_themselves(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    positions = fill(tmp_path, 200, segment_bytes=4096)
    damaged = {13, 57, 58, 140}
    for index in damaged:
        position = positions[index]
        path = tmp_path / f"{position >> 32:010d}.seg"
        data = bytearray(path.read_bytes())
        data[(position & 0xFFFFFFFF) + 50] ^= 0xFF
        path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="baedal.storage"):
        survivors = recovered_bodies(tmp_path)
    assert survivors == [f"m{i}".encode() for i in range(200) if i not in damaged]
    import re

    counts = [re.search(r"(\d+) damaged record", record.getMessage()) for record in caplog.records]
    assert sum(int(match.group(1)) for match in counts if match) == len(damaged)
    assert any(
        "2 damaged record(s)" in record.getMessage() for record in caplog.records
    )  # 57 and 58


def test_damage_is_still_skipped_after_acks_and_a_second_restart(tmp_path: Path) -> None:
    positions = fill(tmp_path, 10)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[(positions[2] & 0xFFFFFFFF) + 40] ^= 1
    segment.write_bytes(bytes(data))
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, read_ahead=2)
    first = store.shift()
    store.settle(first)  # type: ignore[arg-type]
    syncer.sync_now()
    store.close()
    assert recovered_bodies(tmp_path) == [f"m{i}".encode() for i in range(1, 10) if i != 2]


def test_a_segment_with_a_bad_header_is_dropped_and_reported(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fill(tmp_path, 3)
    segment = only_segment(tmp_path)
    data = bytearray(segment.read_bytes())
    data[0:8] = b"GARBAGE!"
    segment.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="baedal.storage"):
        assert recovered_bodies(tmp_path) == []
    assert "bad segment header" in caplog.text
