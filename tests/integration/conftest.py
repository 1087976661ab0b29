"""Fixtures shared by the integration tests."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture
def socket_dir() -> Iterator[Path]:
    """A directory for Unix socket files (test_client_ipc.py, test_unix_listeners.py):
    short (sun_path is 108 bytes) and searchable by everyone, so a refusal in the
    permission tests comes from the socket file's mode, not from its directory."""
    path = Path(tempfile.mkdtemp(prefix="bd-", dir="/tmp"))
    path.chmod(0o755)
    yield path
    for child in path.iterdir():
        child.unlink()
    path.rmdir()
