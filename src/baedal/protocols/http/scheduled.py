"""Management API for scheduled messages (core/scheduler.py): list, show, cancel.

ActiveMQ's console has a "Scheduled" tab that browses and deletes jobs; RabbitMQ's
delayed-message plugin shows only a count per exchange (``messages_delayed``).  These
endpoints give both kinds of job (``AMQ_SCHEDULED_*`` headers and ``x-delay`` on an
``x-delayed-message`` exchange) one listing, in due order, paginated the way the
management API paginates (``page`` from 1, ``page_size`` up to 500; the answer has
``items``, ``page``, ``page_size``, ``page_count``, ``item_count``, ``total_count``).

Listing is paginated from disk (core/scheduler.py): whole buckets of due time before the
page are skipped by their per-vhost counts, and only the buckets the page falls in are
read, so a page costs a bucket or two however many jobs wait.  A job id names its
bucket, so showing or cancelling one reads that bucket only.

Cancelling needs the ``configure`` permission on the job's target exchange (the same
check as deleting that exchange would need); a job that has just fired for the last
time is gone, and its id answers 404.
"""

from __future__ import annotations

import math
from typing import Any

from aiohttp import web

from .auth import Access, check_permission, visible_vhosts
from .errors import HTTPError, not_found
from .routes import (
    MAX_PAGE_SIZE,
    Route,
    no_content,
    page_params,
    page_schema,
    query_number,
    reply,
    server_of,
)

JOB: dict[str, Any] = {
    "type": "object",
    "properties": {
        "id": {"type": "string"},
        "vhost": {"type": "string"},
        "due": {"type": "integer", "description": "due time, ms since the epoch"},
        "due_at": {"type": "string", "description": "due time, ISO 8601 UTC"},
        "exchange": {"type": "string"},
        "routing_key": {"type": "string"},
        "size": {"type": "integer", "description": "body bytes"},
        "kind": {"type": "string", "enum": ["activemq", "x-delay"]},
        "delay": {"type": "integer"},
        "period": {"type": "integer"},
        "repeat": {"type": "integer", "description": "repeats after the first (-1: until cancelled)"},
        "repeat_left": {"type": "integer"},
        "cron": {"type": ["string", "null"]},
        "fired": {"type": "integer"},
    },
    "required": ["id", "vhost", "due", "exchange", "routing_key", "size", "repeat", "repeat_left"],
}
PAGE: dict[str, Any] = page_schema(JOB)
PAGE_PARAMS = page_params("Jobs")


def _scheduler(request: web.Request) -> Any:
    scheduler = getattr(server_of(request).core, "scheduler", None)
    if scheduler is None:
        raise HTTPError(404, "scheduled delivery is not enabled")
    return scheduler


def _page(request: web.Request, scheduler: Any, vhosts: list[str] | None) -> dict[str, Any]:
    page = int(query_number(request, "page", 1, 1, 1_000_000_000))
    page_size = int(query_number(request, "page_size", 100, 1, MAX_PAGE_SIZE))
    offset = (page - 1) * page_size
    selection: str | set[str] | None = None
    if vhosts is not None:
        selection = vhosts[0] if len(vhosts) == 1 else set(vhosts)
    total, items = scheduler.list(selection, offset, page_size)
    return {
        "items": items,
        "page": page,
        "page_size": page_size,
        "page_count": max(1, math.ceil(total / page_size)),
        "item_count": len(items),
        "total_count": total,
        "filtered_count": total,
    }


async def list_all(request: web.Request) -> web.Response:
    scheduler = _scheduler(request)
    core = server_of(request).core
    user = request.get("user")
    visible = visible_vhosts(core, user)
    everything = len(visible) == len(core.vhosts)
    return reply(_page(request, scheduler, None if everything else visible))


async def list_vhost(request: web.Request) -> web.Response:
    vhost = request.match_info["vhost"]
    if vhost not in server_of(request).core.vhosts:
        raise not_found(f"no vhost '{vhost}'")
    return reply(_page(request, _scheduler(request), [vhost]))


async def get_job(request: web.Request) -> web.Response:
    job = _scheduler(request).get(request.match_info["vhost"], request.match_info["id"])
    if job is None:
        raise not_found(f"no scheduled message '{request.match_info['id']}'")
    return reply(job)


async def cancel_job(request: web.Request) -> web.Response:
    scheduler = _scheduler(request)
    vhost = request.match_info["vhost"]
    job_id = request.match_info["id"]
    job = scheduler.get(vhost, job_id)
    if job is None:
        raise not_found(f"no scheduled message '{job_id}'")
    check_permission(server_of(request).core, request.get("user"), vhost, "configure", job["exchange"] or "amq.default")
    if not scheduler.cancel(vhost, job_id):
        raise not_found(f"no scheduled message '{job_id}'")
    return no_content()


ROUTES: list[Route] = [
    Route(
        "GET", "/api/scheduled", list_all, Access.READ,
        "Scheduled messages in every visible vhost, in due order", "scheduled",
        response=PAGE, params=PAGE_PARAMS, other_statuses=(400,),
    ),
    Route(
        "GET", "/api/scheduled/{vhost}", list_vhost, Access.READ,
        "Scheduled messages in one vhost, in due order", "scheduled",
        response=PAGE, params=PAGE_PARAMS, other_statuses=(400, 404),
    ),
    Route(
        "GET", "/api/scheduled/{vhost}/{id}", get_job, Access.READ,
        "One scheduled message", "scheduled", response=JOB, other_statuses=(404,),
    ),
    Route(
        "DELETE", "/api/scheduled/{vhost}/{id}", cancel_job, Access.MANAGE,
        "Cancel a scheduled message (every repetition)", "scheduled",
        status=204, other_statuses=(403, 404),
    ),
]
