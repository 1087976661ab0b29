"""Facts about peer addresses that every protocol adapter needs the same way."""

from __future__ import annotations

import ipaddress

__all__ = ["is_loopback"]


def is_loopback(host: str) -> bool:
    """Whether a peer host (as ``get_extra_info("peername")[0]`` gives it) is this
    machine: loopback IPv4/IPv6, an IPv4-mapped loopback, or ``localhost``.  Users in
    ``loopback_users`` (RabbitMQ's rule: guest) may only log in from such a peer, on
    every protocol."""
    try:
        address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return host == "localhost"
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_loopback
