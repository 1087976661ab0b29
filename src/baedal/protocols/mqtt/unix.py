"""MQTT on a Unix socket: the TCP listener's connection class, told its peer is local.

``MQTTConnection.connection_made`` keeps ``peername`` as the transport gives it, which on
a Unix socket is ``''``: no host, so the loopback rule (``loopback_users``: guest only
from this machine) would refuse guest although the client is on this machine by
definition.  This subclass changes nothing but that: after the ordinary
``connection_made`` it records ``LOCAL_PEER``, as AMQP, STOMP and Kafka do on their Unix
sockets (transport/address.py).  Authentication, limits and everything else are the
TCP listener's.  (A subclass rather than an edit of server.py so the MQTT server keeps
one ``connection_made`` for TCP; it can fold into it as ``peer_address(transport)``.)
"""

from __future__ import annotations

import asyncio

from ...transport.address import LOCAL_PEER
from .server import MQTTConnection

__all__ = ["UnixMQTTConnection"]


class UnixMQTTConnection(MQTTConnection):
    __slots__ = ()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self.peer = LOCAL_PEER
