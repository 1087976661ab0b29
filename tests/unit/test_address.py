"""The one loopback rule every protocol's login uses (guest only from this machine)."""

from __future__ import annotations

import pytest

from baedal.transport.address import is_loopback


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "::1%lo", "localhost"])
def test_loopback_peers(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.2", "::ffff:10.0.0.1", "2001:db8::1", "", "example.com"])
def test_other_peers(host: str) -> None:
    assert not is_loopback(host)
