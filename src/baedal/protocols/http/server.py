"""The HTTP side of Baedal: management API, REST messaging, metrics, console files.

Theory of operation
-------------------
One aiohttp application runs on the broker's own event loop, so handlers call the core
directly, like the AMQP adapter does; nothing here uses threads or locks.

* ``catalog.ROUTES`` is the single list of endpoints.  Each is registered through
  ``_guarded`` (authentication and tag check from ``auth``), and the same list is what
  ``/api/openapi.json`` documents.
* ``_error_middleware`` turns every failure into a JSON body: ``HTTPError`` and aiohttp's
  own 4xx (unknown route, wrong method, body over ``client_max_size``) keep their status;
  anything else is a bug, logged with its traceback and answered 500.
* ``StatsSampler`` reads counters every ``sample_interval`` seconds for rates.
* ``LeaseManager`` (``rest.py``) owns REST-messaging leases and WebSocket sessions;
  ``stop`` returns every lease to its queue before the listener closes.

Bounds: request bodies are capped at ``client_max_size`` (8 MiB) except REST publish,
which streams up to the broker's ``max_message_size``; the other bounds (leases per
client, idempotency window, WebSocket credit) are in ``rest.py``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from ..stomp import websocket as stomp_websocket
from .auth import Access, authorize
from .errors import STATUS_SYMBOL, HTTPError, error_response
from .routes import SERVER, Handler, Route
from .stats import StatsSampler

if TYPE_CHECKING:
    from ...app import Broker

log = logging.getLogger("baedal.http")

CLIENT_MAX_SIZE = 8 * 1024 * 1024
STATIC_DIR = Path(__file__).with_name("static")


class HTTPServer:
    def __init__(
        self,
        broker: Broker,
        *,
        sample_interval: float = 5.0,
        client_max_size: int = CLIENT_MAX_SIZE,
        static_dir: Path | None = None,
    ) -> None:
        from .rest import LeaseManager

        self.broker = broker
        assert broker.core is not None
        self.core = broker.core
        self.sampler = StatsSampler(self.core, sample_interval)
        self.leases = LeaseManager(self)
        self.static_dir = static_dir if static_dir is not None else STATIC_DIR
        self.host = ""
        self.port: int | None = None
        self.app = web.Application(middlewares=[_error_middleware], client_max_size=client_max_size)
        self.app[SERVER] = self
        self._runner: web.AppRunner | None = None
        self._register()

    # --- routes ------------------------------------------------------------------------

    def _register(self) -> None:
        from .catalog import ROUTES

        for route in ROUTES:
            self.app.router.add_route(route.method, route.path, _guarded(route))
        self.app.router.add_get("/", _redirect_to_console)
        self.app.router.add_get("/console", _redirect_to_console)
        self.app.router.add_get("/console/{path:.*}", self._console_file)
        stomp_websocket.add_routes(self.app, self.broker)  # STOMP over WebSocket at /ws
        __import__("baedal.protocols.mqtt.websocket", fromlist=["add_routes"]).add_routes(self.app)

    async def _console_file(self, request: web.Request) -> web.StreamResponse:
        root = self.static_dir
        if not root.is_dir():
            raise HTTPError(404, "the web console is not installed")
        relative = request.match_info["path"] or "index.html"
        try:
            path = (root / relative).resolve()
            path.relative_to(root.resolve())
        except (ValueError, OSError):
            raise HTTPError(404, "no such file") from None
        if path.is_dir():
            path = path / "index.html"
        if not path.is_file():
            raise HTTPError(404, "no such file")
        return web.FileResponse(path)

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self, host: str, port: int) -> int:
        # handler_cancellation: a long poll whose client went away is cancelled at once,
        # so its waiter leaves the queue instead of taking a message for nobody.
        self._runner = web.AppRunner(
            self.app, handler_cancellation=True, access_log=None, shutdown_timeout=2.0
        )
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        server = getattr(site, "_server", None)
        sockets = getattr(server, "sockets", None) or []
        self.host = host
        self.port = sockets[0].getsockname()[1] if sockets else port
        self.sampler.start()
        log.info("baedal HTTP listening on http://%s:%d", host, self.port)
        return self.port

    async def start_unix(self, sock: Any) -> None:
        """Also serve on a bound Unix socket (transport/unix.py); after ``start``."""
        assert self._runner is not None
        await web.SockSite(self._runner, sock).start()

    async def stop(self) -> None:
        self.leases.close()
        await self.sampler.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- helpers shared by the handlers ------------------------------------------------

    def resources(self) -> dict[str, int]:
        from ...storage import memory

        settings = self.broker.settings
        watermark = settings.memory_high_watermark
        try:
            total = memory.total_memory_bytes()
        except (OSError, ValueError):
            total = 0
        try:
            disk_free = memory.disk_free_bytes(settings.data_dir)
        except OSError:
            disk_free = -1
        return {
            "mem_used": memory.rss_bytes(),
            "mem_limit": int(watermark * total) if watermark <= 1 else int(watermark),
            "disk_free": disk_free,
        }


def _guarded(route: Route) -> Handler:
    handler = route.handler
    access = route.access

    async def guarded(request: web.Request) -> web.StreamResponse:
        server = request.app[SERVER]
        request["user"] = authorize(server.core, request, access)
        return await handler(request)

    guarded.__name__ = getattr(handler, "__name__", "handler")
    return guarded


async def _redirect_to_console(request: web.Request) -> web.StreamResponse:
    raise web.HTTPFound("/console/")


@web.middleware
async def _error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except HTTPError as exc:
        return exc.response()
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        symbol = STATUS_SYMBOL.get(exc.status, "error")
        headers = {
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")
        }
        return error_response(exc.status, symbol, exc.text or exc.reason, headers)
    except (asyncio.CancelledError, ConnectionResetError):
        raise
    except Exception:
        log.exception("internal error handling %s %s", request.method, request.path)
        return error_response(500, "internal_server_error", "internal error; see the broker log")


__all__ = ["HTTPServer", "Access", "Any"]
