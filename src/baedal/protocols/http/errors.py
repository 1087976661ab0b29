"""HTTP error answers: every client mistake is a 4xx with a JSON body.

The body is RabbitMQ's management shape, ``{"error": <symbol>, "reason": <text>}``, so
tooling written for RabbitMQ shows the reason.  ``HTTPError`` is what handlers raise;
``from_core`` translates the core's ``CoreError`` kinds the same way for every route.
A 500 only ever comes from the error middleware in ``server.py`` for a real bug.
"""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from ...core.vhost import CoreError

# CoreError.kind -> (HTTP status, error symbol).  precondition_failed is 400 as in
# RabbitMQ's management API (inequivalent arguments, if-empty, if-unused).
CORE_STATUS: dict[str, tuple[int, str]] = {
    "not_found": (404, "not_found"),
    "precondition_failed": (400, "bad_request"),
    "access_refused": (403, "access_refused"),
    "resource_locked": (409, "resource_locked"),
    "command_invalid": (400, "bad_request"),
    "not_allowed": (403, "not_allowed"),
}

STATUS_SYMBOL = {
    400: "bad_request",
    401: "not_authorized",
    403: "access_refused",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "unprocessable_entity",
    429: "too_many_requests",
    500: "internal_server_error",
    503: "service_unavailable",
}


class HTTPError(Exception):
    """A client-visible failure with its status and JSON answer."""

    def __init__(
        self,
        status: int,
        reason: str,
        error: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.error = error or STATUS_SYMBOL.get(status, "error")
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.error, self.reason, self.headers)


def error_response(
    status: int, error: str, reason: str, headers: dict[str, str] | None = None
) -> web.Response:
    body = json.dumps({"error": error, "reason": reason})
    return web.Response(status=status, text=body, content_type="application/json", headers=headers)


def from_core(exc: CoreError) -> HTTPError:
    status, symbol = CORE_STATUS.get(exc.kind, (400, "bad_request"))
    return HTTPError(status, exc.text, symbol)


def bad_request(reason: str) -> HTTPError:
    return HTTPError(400, reason)


def not_found(reason: str = "Object Not Found") -> HTTPError:
    return HTTPError(404, reason)


def require_type(value: Any, kind: type | tuple[type, ...], field: str) -> Any:
    """Validate one field of a JSON body (bool is not an int here)."""
    if isinstance(value, bool) and kind in (int, (int, float)):
        raise bad_request(f"field '{field}' must be {_kind_name(kind)}")
    if not isinstance(value, kind):
        raise bad_request(f"field '{field}' must be {_kind_name(kind)}")
    return value


def _kind_name(kind: type | tuple[type, ...]) -> str:
    names = {
        str: "a string",
        int: "an integer",
        bool: "a boolean",
        dict: "an object",
        list: "an array",
        float: "a number",
    }
    if isinstance(kind, tuple):
        return " or ".join(names.get(k, k.__name__) for k in kind)
    return names.get(kind, kind.__name__)
