"""STOMP over WebSocket on the HTTP port at ``/ws`` (what stomp.js users expect, and
RabbitMQ's Web-STOMP path), subprotocols ``v10.stomp``, ``v11.stomp``, ``v12.stomp``.

The same ``StompConnection`` (server.py) and codec serve it: this module only gives the
connection an asyncio-transport-shaped object over an aiohttp ``WebSocketResponse``.

* In: each WebSocket message (text or binary) is fed to ``data_received`` as bytes, so a
  frame may come as one message (stomp.js) or split over several, or several frames in
  one message; the codec does not care.
* Out: the connection writes exactly one frame (or one heart-beat EOL) per ``write``
  (server.py, "I/O discipline"), and each becomes one WebSocket message: text when it is
  valid UTF-8 (what stomp.js expects by default), binary otherwise.
* Flow control: the bytes waiting for ``send_*`` are the transport's write buffer;
  past ``high`` the connection's ``pause_writing`` stops deliveries, below ``low``
  ``resume_writing`` restarts them, exactly as a socket transport would.  While the
  connection has paused reading, no further WebSocket message is read.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Any

from aiohttp import WSMsgType, web

from .server import StompConnection

log = logging.getLogger("baedal.stomp")

SUBPROTOCOLS = ("v12.stomp", "v11.stomp", "v10.stomp")
PATH = "/ws"


def add_routes(app: web.Application, broker: Any) -> None:
    """Register ``/ws`` on the HTTP server's application (one call in its route setup)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        return await serve(request, broker)

    app.router.add_get(PATH, handler)


class WebSocketTransport(asyncio.Transport):
    """The part of the asyncio transport interface ``StompConnection`` uses."""

    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        super().__init__()
        self.ws = ws
        self.request = request
        self.protocol: StompConnection | None = None
        self._outgoing: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._high = 1024 * 1024
        self._low = self._high // 4
        self._paused_protocol = False
        self._closing = False
        self._wake = asyncio.Event()
        self.reading = asyncio.Event()
        self.reading.set()
        self.writer = asyncio.get_running_loop().create_task(self._write_loop())

    # --- what StompConnection calls ----------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.request.transport
        if transport is None:
            return default
        return transport.get_extra_info(name, default)

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self._high = high
            self._low = low if low is not None else high // 4

    def get_write_buffer_size(self) -> int:
        return self._buffered

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        chunk = bytes(data)
        self._outgoing.append(chunk)
        self._buffered += len(chunk)
        self._wake.set()
        if not self._paused_protocol and self._buffered > self._high and self.protocol is not None:
            self._paused_protocol = True
            self.protocol.pause_writing()

    def writelines(self, chunks: Any) -> None:
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        self.reading.clear()

    def resume_reading(self) -> None:
        self.reading.set()

    def is_closing(self) -> bool:
        return self._closing

    def close(self) -> None:
        """Send what is queued, then close the WebSocket (which ends the read loop)."""
        self._closing = True
        self._wake.set()
        self.reading.set()

    def abort(self) -> None:
        self._closing = True
        self._outgoing.clear()
        self._buffered = 0
        self._wake.set()
        self.reading.set()

    # --- the writer ------------------------------------------------------------------

    async def _write_loop(self) -> None:
        ws = self.ws
        try:
            while True:
                while self._outgoing:
                    chunk = self._outgoing.popleft()
                    self._buffered -= len(chunk)
                    try:
                        text = chunk.decode("utf-8")
                    except UnicodeDecodeError:
                        await ws.send_bytes(chunk)
                    else:
                        await ws.send_str(text)
                    if self._paused_protocol and self._buffered <= self._low and self.protocol is not None:
                        self._paused_protocol = False
                        self.protocol.resume_writing()
                if self._closing:
                    break
                self._wake.clear()
                await self._wake.wait()
        except (ConnectionError, RuntimeError) as exc:  # the peer went away mid-send
            log.debug("web-stomp send failed: %s", exc)
        finally:
            self._closing = True
            if not ws.closed:
                await ws.close()


async def serve(request: web.Request, broker: Any) -> web.StreamResponse:
    server = getattr(broker, "stomp", None)
    if server is None:
        raise web.HTTPNotFound(text="STOMP is off on this broker")
    config = server.config
    ws = web.WebSocketResponse(
        protocols=SUBPROTOCOLS,
        autoping=True,
        # The codec enforces the real limits; this only stops aiohttp from assembling a
        # message larger than any legal frame.
        max_msg_size=config.max_body + config.max_header_bytes + 16,
    )
    await ws.prepare(request)
    transport = WebSocketTransport(ws, request)
    connection = StompConnection(server, websocket=True)
    transport.protocol = connection
    connection.connection_made(transport)
    try:
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                connection.data_received(message.data.encode("utf-8"))
            elif message.type == WSMsgType.BINARY:
                connection.data_received(message.data)
            else:
                break
            if transport.is_closing():
                break
            if not transport.reading.is_set():
                await transport.reading.wait()
    finally:
        connection.connection_lost(None)
        transport.close()
        try:
            await asyncio.wait_for(asyncio.shield(transport.writer), 5.0)
        except (TimeoutError, asyncio.CancelledError):
            transport.writer.cancel()
    return ws
