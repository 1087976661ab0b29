"""Shared by the storage unit tests: a disk that fills up on demand."""

from __future__ import annotations

import errno
from collections.abc import Iterator

import pytest

from baedal.storage import segment as segment_module


class FullDisk:
    """ENOSPC from the storage write seam while ``full``."""

    def __init__(self) -> None:
        self.full = False
        self.real_write = segment_module._write_fd

    def write(self, fd: int, data: bytes) -> int:
        if self.full:
            raise OSError(errno.ENOSPC, "No space left on device")
        return self.real_write(fd, data)


@pytest.fixture
def disk(monkeypatch: pytest.MonkeyPatch) -> Iterator[FullDisk]:
    fault = FullDisk()
    monkeypatch.setattr(segment_module, "_write_fd", fault.write)
    yield fault
