"""The alarm helpers return plausible numbers."""

from __future__ import annotations

from pathlib import Path

from baedal.storage.memory import disk_free_bytes, rss_bytes, total_memory_bytes


def test_rss_grows_when_we_allocate() -> None:
    before = rss_bytes()
    block = bytearray(64 * 1024 * 1024)
    block[::4096] = b"x" * len(block[::4096])
    assert rss_bytes() > before + 32 * 1024 * 1024
    assert 0 < before < total_memory_bytes()


def test_disk_free_is_positive(tmp_path: Path) -> None:
    assert disk_free_bytes(tmp_path) > 0
