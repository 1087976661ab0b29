"""Facts about peer addresses that every protocol adapter needs the same way.

A connection's peer is ``(host, port)``.  On TCP it is what ``peername`` says; on a Unix
socket (transport/unix.py) the kernel gives no host at all (``peername`` is ``''`` for an
unnamed client), so the peer is reported as ``LOCAL_PEER``: the client is on this machine
by definition, the socket file's permissions decided who could reach it, and the
loopback rule below then treats it as the loopback peer it is (AMQP's connection does
the same inline; STOMP, MQTT and Kafka use ``peer_address``).
"""

from __future__ import annotations

import ipaddress
import socket
from typing import Any

__all__ = ["LOCAL_PEER", "connection_name", "is_loopback", "peer_address"]

LOCAL_PEER = ("localhost", 0)


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


def peer_address(transport: Any) -> tuple[str, int]:
    """The peer of ``transport`` as ``(host, port)``: ``LOCAL_PEER`` on a Unix socket
    (also a WebSocket carried by the HTTP side's Unix socket), ``("", 0)`` when unknown.
    Decided by the socket's family, never by an empty host, so a TCP peer whose address
    could not be read is not mistaken for a local one."""
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and len(peer) >= 2:
        return (str(peer[0]), int(peer[1]))
    sock = transport.get_extra_info("socket")
    if sock is not None and getattr(sock, "family", None) == socket.AF_UNIX:
        return LOCAL_PEER
    return ("", 0)


def connection_name(peer: tuple[str, int], local: Any) -> str:
    """RabbitMQ's connection name, ``"peer:port -> local:port"``; on a Unix socket
    ``"unix:/path"`` or ``"unix:@name"`` (the local address is then a path, or bytes
    starting with NUL for a Linux abstract name), as AMQP names it."""
    if isinstance(local, tuple):
        return f"{peer[0]}:{peer[1]} -> {local[0]}:{local[1]}"
    if isinstance(local, bytes):
        local = local.decode("utf-8", "replace")
    if isinstance(local, str):
        from .unix import listening_path  # (bound under a temporary name, then renamed)

        return "unix:" + listening_path(local).replace("\0", "@", 1)
    return f"{peer[0]}:{peer[1]}"
