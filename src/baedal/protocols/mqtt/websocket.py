"""MQTT over WebSocket on the HTTP port: ``GET /mqtt`` with subprotocol ``mqtt``.

The WebSocket carries the same byte stream as TCP (MQTT 6.0: binary frames, a packet
may span frames and a frame may hold several packets), so the handler feeds each
binary frame to an ordinary ``MQTTConnection`` (server.py) through a small transport
adapter: every session, QoS, retained and limit rule is the TCP listener's, with one
code path.  A text frame is a protocol violation (MQTT-6.0.0-1): the connection closes.

``WebSocketTransport`` gives the connection what it uses of an asyncio transport:
``write`` (queued and sent by one writer task, so the connection never awaits),
``close`` (after what is queued has gone), ``abort``, ``get_extra_info`` and
``set_write_buffer_limits``; past the limit the connection's ``pause_writing`` stops
deliveries until the queue has drained (the same output bound as TCP).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

from aiohttp import WSMsgType, web

from .server import MQTTConnection

PATH = "/mqtt"


class WebSocketTransport:
    def __init__(self, ws: web.WebSocketResponse, request: web.Request) -> None:
        self.ws = ws
        self.request = request
        self.protocol: MQTTConnection | None = None
        self._queue: list[bytes] = []
        self._queued = 0
        self._high = 8 * 1024 * 1024
        self._paused = False
        self._closing = False
        self._writer: asyncio.Task[None] | None = None

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        transport = self.request.transport
        return transport.get_extra_info(name, default) if transport is not None else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        if high is not None:
            self._high = high

    def write(self, data: bytes) -> None:
        if self._closing:
            return
        self._queue.append(data)
        self._queued += len(data)
        if self._queued > self._high and not self._paused and self.protocol is not None:
            self._paused = True
            self.protocol.pause_writing()
        if self._writer is None:
            self._writer = asyncio.get_running_loop().create_task(self._write_all())

    async def _write_all(self) -> None:
        try:
            while self._queue:
                data = b"".join(self._queue)
                self._queue.clear()
                self._queued = 0
                await self.ws.send_bytes(data)
                if self._paused and self.protocol is not None:
                    self._paused = False
                    self.protocol.resume_writing()
        except (ConnectionError, RuntimeError):
            self._queue.clear()
        finally:
            self._writer = None
            if self._closing:
                await self.ws.close()

    def close(self) -> None:
        if self._closing:
            return
        self._closing = True
        if self._writer is None:
            asyncio.get_running_loop().create_task(self.ws.close())

    def abort(self) -> None:
        self._queue.clear()
        self.close()

    def pause_reading(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.pause_reading()

    def resume_reading(self) -> None:
        transport = self.request.transport
        if transport is not None:
            transport.resume_reading()

    def is_closing(self) -> bool:
        return self._closing

    async def finish(self) -> None:
        writer = self._writer
        if writer is not None:
            with contextlib.suppress(Exception):
                await writer


async def mqtt_websocket(request: web.Request) -> web.StreamResponse:
    from ..http.routes import SERVER

    server = getattr(request.app[SERVER].broker, "mqtt", None)
    if server is None:
        raise web.HTTPNotFound(text="the MQTT listener is off")
    ws = web.WebSocketResponse(
        protocols=("mqtt",), max_msg_size=server.config.max_packet_size + 5, autoping=True
    )
    if not ws.can_prepare(request).ok:
        raise web.HTTPBadRequest(text="MQTT over WebSocket needs a WebSocket upgrade")
    await ws.prepare(request)
    transport = WebSocketTransport(ws, request)
    connection = MQTTConnection(server)
    transport.protocol = connection
    connection.connection_made(transport)  # type: ignore[arg-type]
    try:
        async for message in ws:
            if message.type == WSMsgType.BINARY:
                connection.data_received(message.data)
            else:  # text frames are not MQTT (MQTT-6.0.0-1); errors end it too
                connection.protocol_error(0x81, "a WebSocket frame that is not binary")
                break
            if connection.closed:
                break
    finally:
        connection.connection_lost(None)
        await transport.finish()
        if not ws.closed:
            await ws.close()
    return ws


def add_routes(app: web.Application) -> None:
    """Register ``GET /mqtt`` (called once from the HTTP server's route setup)."""
    app.router.add_get(PATH, mqtt_websocket)
