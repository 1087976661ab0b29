"""Ack files: entries load back as a set; a torn or damaged entry costs only itself."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from baedal.storage.ackfile import ACK_HEADER_SIZE, AckFile, load_acks


def test_marked_offsets_load_back_as_a_set(tmp_path: Path) -> None:
    path = tmp_path / "1.ack"
    ack = AckFile.open(path)
    for offset in (16, 100, 4000, 2**32 - 1):
        ack.mark(offset)
    ack.close()
    assert load_acks(path) == {16, 100, 4000, 2**32 - 1}


def test_a_missing_ack_file_means_nothing_is_acked(tmp_path: Path) -> None:
    assert load_acks(tmp_path / "nope.ack") == set()


def test_a_torn_tail_is_tolerated_and_reopening_realigns(tmp_path: Path) -> None:
    path = tmp_path / "1.ack"
    ack = AckFile.open(path)
    ack.mark(16)
    ack.mark(32)
    ack.close()
    with open(path, "ab") as file:
        file.write(b"\x01\x02\x03")  # a crash mid-entry
    assert load_acks(path) == {16, 32}
    ack = AckFile.open(path)
    ack.mark(48)
    ack.close()
    assert load_acks(path) == {16, 32, 48}


def test_a_damaged_entry_is_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "1.ack"
    ack = AckFile.open(path)
    for offset in (16, 32, 48):
        ack.mark(offset)
    ack.close()
    data = bytearray(path.read_bytes())
    data[ACK_HEADER_SIZE + 8] ^= 0x40  # first byte of the second entry
    path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="baedal.storage"):
        assert load_acks(path) == {16, 48}
    assert "dropped 1 damaged ack entries" in caplog.text
