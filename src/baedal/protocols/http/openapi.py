"""GET /api/openapi.json: an OpenAPI 3.1 document generated from ``catalog.ROUTES``.

Generated, not hand-kept: the server registers exactly the routes listed in the
catalog, so every documented path exists and every served path is documented (the
console's static files aside).
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from aiohttp import web

from .auth import Access
from .routes import reply

if TYPE_CHECKING:
    from .routes import Route

_PATH_PARAM = re.compile(r"\{([^}:]+)\}")
_ERROR_REF = {"$ref": "#/components/schemas/Error"}
_DESCRIPTIONS = {
    200: "OK",
    201: "Created",
    204: "No content",
    101: "Switching protocols (WebSocket)",
    400: "Bad request",
    401: "Missing or wrong credentials",
    403: "Not permitted for this user",
    404: "No such object",
    409: "Conflict with the object's state",
    413: "Body too large",
    422: "Idempotency-Key reused with a different request",
    429: "Too many leases held",
    503: "Unavailable (resource alarm or storage failure)",
}
ENVELOPE_TYPE = "application/vnd.baedal.envelope+json"


def build_document(routes: list[Route], server_url: str | None = None) -> dict[str, Any]:
    from ... import __version__

    paths: dict[str, dict[str, Any]] = {}
    for route in routes:
        paths.setdefault(route.path, {})[route.method.lower()] = _operation(route)
    document: dict[str, Any] = {
        "openapi": "3.1.0",
        "info": {
            "title": "Baedal HTTP API",
            "version": __version__,
            "description": (
                "Management API compatible with RabbitMQ's management plugin (vhost names are "
                "URL-encoded in paths: '/' is %2F), REST messaging with leases, and Prometheus metrics. "
                "Every error is JSON: {error, reason}."
            ),
        },
        "paths": paths,
        "components": {
            "securitySchemes": {"basicAuth": {"type": "http", "scheme": "basic"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "properties": {"error": {"type": "string"}, "reason": {"type": "string"}},
                    "required": ["error", "reason"],
                }
            },
        },
    }
    if server_url:
        document["servers"] = [{"url": server_url}]
    return document


def _operation(route: Route) -> dict[str, Any]:
    operation: dict[str, Any] = {
        "operationId": f"{route.method.lower()}_{route.handler.__name__}_{_slug(route.path)}",
        "summary": route.summary,
        "tags": [route.tag],
    }
    if not route.fuzz:
        operation["x-baedal-long-running"] = True
    parameters = []
    for name in _PATH_PARAM.findall(route.path):
        schema: dict[str, Any] = {"type": "string", "minLength": 1}
        if name in route.extra:
            schema = {"type": "string", "enum": route.extra[name]}
        parameters.append({"name": name, "in": "path", "required": True, "schema": schema})
    for param in route.params:
        parameters.append(
            {
                "name": param.name,
                "in": param.where,
                "required": param.required,
                "schema": param.schema,
                "description": param.description,
            }
        )
    if parameters:
        operation["parameters"] = parameters
    if route.request is not None:
        if route.request_content == "rest-publish":
            content = {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
                "text/plain": {"schema": {"type": "string"}},
                ENVELOPE_TYPE: {"schema": route.request},
            }
        else:
            content = {route.request_content: {"schema": route.request}}
        operation["requestBody"] = {"required": route.request_required, "content": content}
    responses: dict[str, Any] = {}
    success: dict[str, Any] = {"description": _DESCRIPTIONS.get(route.status, "OK")}
    if route.response is not None and route.status not in (204, 101):
        success["content"] = {route.response_content: {"schema": route.response}}
    responses[str(route.status)] = success
    errors = {400, 404, *route.other_statuses}
    if route.access is not Access.PUBLIC:
        errors |= {401, 403}
    if route.request is not None:
        errors.add(413)
    for status in sorted(errors):
        if str(status) in responses:
            continue
        if status in (204, 201):
            responses[str(status)] = {"description": _DESCRIPTIONS[status]}
            continue
        responses[str(status)] = {
            "description": _DESCRIPTIONS.get(status, "Error"),
            "content": {"application/json": {"schema": _ERROR_REF}},
        }
    operation["responses"] = responses
    if route.access is not Access.PUBLIC:
        operation["security"] = [{"basicAuth": []}]
    return operation


def _slug(path: str) -> str:
    return re.sub(r"[^a-zA-Z0-9]+", "_", path).strip("_")


def document() -> dict[str, Any]:
    from .catalog import ROUTES

    return build_document(ROUTES)


async def serve(request: web.Request) -> web.Response:
    return reply(document())
