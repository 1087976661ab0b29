"""The one loopback rule every protocol's login uses (guest only from this machine)."""

from __future__ import annotations

import socket
from typing import Any

import pytest

from baedal.transport.address import LOCAL_PEER, connection_name, is_loopback, peer_address


@pytest.mark.parametrize("host", ["127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1", "::1%lo", "localhost"])
def test_loopback_peers(host: str) -> None:
    assert is_loopback(host)


@pytest.mark.parametrize("host", ["10.0.0.1", "192.168.1.2", "::ffff:10.0.0.1", "2001:db8::1", "", "example.com"])
def test_other_peers(host: str) -> None:
    assert not is_loopback(host)


def test_a_unix_peer_is_local_by_its_socket_family_not_by_an_empty_host() -> None:
    # The Unix rule is decided by the socket's family, not by an empty peer host.
    class Transport:
        def __init__(self, extra: dict[str, Any]) -> None:
            self.extra = extra

        def get_extra_info(self, name: str, default: Any = None) -> Any:
            return self.extra.get(name, default)

    tcp = socket.socket()
    unix = socket.socket(socket.AF_UNIX)
    try:
        assert peer_address(Transport({"peername": ("10.0.0.1", 5), "socket": tcp})) == ("10.0.0.1", 5)
        assert peer_address(Transport({"peername": None, "socket": tcp})) == ("", 0)
        assert peer_address(Transport({"peername": "", "socket": unix})) == LOCAL_PEER
    finally:
        tcp.close()
        unix.close()


def test_connection_names_for_tcp_and_unix_sockets() -> None:
    assert connection_name(("127.0.0.1", 5000), ("127.0.0.1", 61613)) == "127.0.0.1:5000 -> 127.0.0.1:61613"
    assert connection_name(LOCAL_PEER, "/run/baedal/stomp.sock") == "unix:/run/baedal/stomp.sock"
    assert connection_name(LOCAL_PEER, b"\0baedal") == "unix:@baedal"
