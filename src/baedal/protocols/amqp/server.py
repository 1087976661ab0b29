"""The AMQP listener: creates connections and keeps the direct reply-to registry."""

from __future__ import annotations

import asyncio
import os
import ssl
from typing import TYPE_CHECKING

from ...transport.unix import UnixListener, listen_unix
from .connection import AMQPConnection

if TYPE_CHECKING:
    from ...core.broker import BrokerCore
    from .channel import Channel


class AMQPServer:
    def __init__(self, broker: BrokerCore) -> None:
        self.broker = broker
        self.servers: list[asyncio.AbstractServer] = []
        self._reply_channels: dict[str, Channel] = {}

    async def listen(self, host: str, port: int, ssl_context: ssl.SSLContext | None = None) -> int:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(lambda: AMQPConnection(self), host, port, ssl=ssl_context, backlog=1024)
        self.servers.append(server)
        sockets = server.sockets or []
        return sockets[0].getsockname()[1] if sockets else port

    async def listen_unix(self, address: str, mode: int) -> UnixListener:
        """Also serve AMQP on a Unix socket (a path or ``@name``; transport/unix.py)."""
        listener = await listen_unix(lambda: AMQPConnection(self), address, mode=mode)
        self.servers.append(listener.server)
        return listener

    # --- direct reply-to -------------------------------------------------------------

    def register_reply_to(self, channel: Channel) -> str:
        token = os.urandom(18).hex()
        self._reply_channels[token] = channel
        return token

    def unregister_reply_to(self, token: str | None) -> None:
        if token is not None:
            self._reply_channels.pop(token, None)

    def reply_to_channel(self, token: str) -> Channel | None:
        return self._reply_channels.get(token)

    def reply_to_alive(self, token: str) -> bool:
        return token in self._reply_channels

    async def close(self, reason: str = "broker shutdown") -> None:
        for server in self.servers:
            server.close()
        for conn in list(self.broker.connections.values()):
            if isinstance(conn, AMQPConnection):
                conn.force_close(reason)
        for server in self.servers:
            try:
                await asyncio.wait_for(server.wait_closed(), 2.0)
            except TimeoutError:
                pass
        # Give clients a moment to answer close-ok, then drop what is left.
        for _ in range(20):
            if not any(isinstance(c, AMQPConnection) for c in self.broker.connections.values()):
                break
            await asyncio.sleep(0.05)
        for conn in list(self.broker.connections.values()):
            if isinstance(conn, AMQPConnection) and conn.transport is not None:
                conn.transport.abort()
