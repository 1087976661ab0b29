"""The route table: one ``Route`` per endpoint, shared by the server and OpenAPI.

Each route names its handler, the access it needs (``auth.Access``), and the schemas
of its request and response bodies.  The server registers exactly these routes and
``openapi.py`` documents exactly these routes, so the document cannot drift from what
is served.
"""

from __future__ import annotations

import base64
import datetime
import decimal
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .auth import Access
from .errors import HTTPError, bad_request

if TYPE_CHECKING:
    from .server import HTTPServer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

SERVER: web.AppKey[HTTPServer] = web.AppKey("baedal_http_server", object)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Param:
    name: str
    schema: dict[str, Any]
    description: str = ""
    where: str = "query"  # query | header
    required: bool = False


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    access: Access
    summary: str
    tag: str
    request: dict[str, Any] | None = None  # JSON schema of the body
    request_content: str = "application/json"
    request_required: bool = True
    response: dict[str, Any] | None = None  # JSON schema of the success body
    response_content: str = "application/json"
    status: int = 200
    other_statuses: tuple[int, ...] = ()
    params: tuple[Param, ...] = ()
    fuzz: bool = True  # schemathesis may call it (long polls and sockets opt out)
    extra: dict[str, Any] = field(default_factory=dict)


# --- JSON in and out ------------------------------------------------------------------


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return base64.b64encode(raw).decode("ascii")
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def dumps(data: Any) -> str:
    return json.dumps(data, default=_default, allow_nan=False)


def reply(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        status=status, text=dumps(data), content_type="application/json", headers=headers
    )


def no_content() -> web.Response:
    return web.Response(status=204)


async def read_json(request: web.Request, *, required: bool = True) -> Any:
    """The JSON body; 400 when malformed, 413 (via aiohttp) past client_max_size."""
    raw = await request.read()
    if not raw.strip():
        if required:
            raise bad_request("a JSON body is required")
        return {}
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"malformed JSON: {exc}") from None


async def read_object(request: web.Request, *, required: bool = True) -> dict[str, Any]:
    body = await read_json(request, required=required)
    if not isinstance(body, dict):
        raise bad_request("the JSON body must be an object")
    return body


def server_of(request: web.Request) -> HTTPServer:
    return request.app[SERVER]


def query_bool(request: web.Request, name: str, default: bool = False) -> bool:
    value = request.query.get(name)
    if value is None:
        return default
    lowered = value.lower()
    if lowered in ("", "true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise bad_request(f"query parameter '{name}' must be true or false")


def query_number(
    request: web.Request, name: str, default: float, minimum: float, maximum: float
) -> float:
    value = request.query.get(name)
    if value is None:
        return default
    try:
        number = float(value)
    except ValueError:
        raise bad_request(f"query parameter '{name}' must be a number") from None
    if not minimum <= number <= maximum:  # also rejects nan
        raise HTTPError(
            400, f"query parameter '{name}' must be between {minimum:g} and {maximum:g}"
        )
    return number


MAX_PAGE_SIZE = 500  # the largest page a paginated listing answers


def page_schema(item: dict[str, Any]) -> dict[str, Any]:
    """The JSON schema of one page of a paginated listing of ``item``s (the shape the
    scheduled-message and MQTT retained listings answer)."""
    return {
        "type": "object",
        "properties": {
            "items": {"type": "array", "items": item},
            "page": {"type": "integer"},
            "page_size": {"type": "integer"},
            "page_count": {"type": "integer"},
            "item_count": {"type": "integer"},
            "total_count": {"type": "integer"},
        },
        "required": ["items", "page", "page_size", "page_count", "total_count"],
    }


def page_params(what: str) -> tuple[Param, Param]:
    """The ``page`` / ``page_size`` query parameters of a paginated listing."""
    return (
        Param("page", {"type": "integer", "minimum": 1}, "Page number, from 1"),
        Param("page_size", {"type": "integer", "minimum": 1, "maximum": MAX_PAGE_SIZE}, f"{what} per page (100)"),
    )
