"""HTTP basic authentication against the broker's users, and what each tag may do.

Tags follow RabbitMQ's management plugin:

* ``administrator`` – everything, every vhost.
* ``monitoring``    – read everything, every vhost (connections, nodes, all queues).
* ``management`` / ``policymaker`` – read, and manage objects, only in vhosts they
  have a permission on.
* no management tag – no management API (403); such a user may still use REST
  messaging on vhosts where its permissions allow.

``Access`` names what a route needs; the route table in ``routes.py`` gives one per
route and ``authorize`` checks it before the handler runs.
"""

from __future__ import annotations

import base64
import binascii
import enum
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from ...transport.address import is_loopback
from .errors import HTTPError

if TYPE_CHECKING:
    from ...core.broker import BrokerCore, User

READ_TAGS = frozenset({"administrator", "monitoring", "management", "policymaker"})
MANAGE_TAGS = frozenset({"administrator", "management", "policymaker"})
ALL_VHOST_TAGS = frozenset({"administrator", "monitoring"})

REALM = 'Basic realm="Baedal Management"'


class Access(enum.Enum):
    PUBLIC = "public"  # no credentials (metrics, OpenAPI, console files)
    READ = "read"  # any management tag
    MANAGE = "manage"  # administrator, or management/policymaker in a permitted vhost
    ADMIN = "admin"  # administrator only
    MESSAGING = "messaging"  # any user; vhost permissions checked by the handler


def unauthorized(reason: str) -> HTTPError:
    return HTTPError(401, reason, "not_authorized", {"WWW-Authenticate": REALM})


def authenticate(core: BrokerCore, request: web.Request) -> User:
    """The user named by the Authorization header, or 401."""
    header = request.headers.get("Authorization")
    if not header:
        raise unauthorized("credentials required")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        raise unauthorized("only HTTP basic authentication is supported")
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise unauthorized("malformed basic credentials") from None
    username, sep, password = decoded.partition(":")
    if not sep:
        raise unauthorized("malformed basic credentials")
    user = core.authenticate(username, password)
    if user is None:
        raise unauthorized("invalid credentials")
    if username in core.config.loopback_users and not (
        is_loopback(request.remote or "") or _over_unix_socket(request)
    ):
        # RabbitMQ's loopback_users: the default guest account only from localhost.
        raise unauthorized(f"user '{username}' can only connect via localhost")
    return user


def authorize(core: BrokerCore, request: web.Request, access: Access) -> User | None:
    if access is Access.PUBLIC:
        return None
    user = authenticate(core, request)
    tags = set(user.tags)
    if access is Access.READ and not tags & READ_TAGS:
        raise HTTPError(403, f"user '{user.name}' has no management tag", "not_authorised")
    if access is Access.MANAGE and not tags & MANAGE_TAGS:
        raise HTTPError(403, f"user '{user.name}' may not manage objects", "not_authorised")
    if access is Access.ADMIN and "administrator" not in tags:
        raise HTTPError(403, f"user '{user.name}' is not an administrator", "not_authorised")
    vhost = request.match_info.get("vhost")
    if (
        vhost is not None
        and access in (Access.READ, Access.MANAGE)
        and not can_see_vhost(core, user, vhost)
    ):
        raise HTTPError(
            403, f"access to vhost '{vhost}' refused for user '{user.name}'", "not_authorised"
        )
    return user


def can_see_vhost(core: BrokerCore, user: User, vhost: str) -> bool:
    if set(user.tags) & ALL_VHOST_TAGS:
        return True
    return (user.name, vhost) in core.permissions


def visible_vhosts(core: BrokerCore, user: User | None) -> list[str]:
    if user is None or set(user.tags) & ALL_VHOST_TAGS:
        return list(core.vhosts)
    return [name for name in core.vhosts if (user.name, name) in core.permissions]


def check_permission(
    core: BrokerCore, user: User | None, vhost: str, kind: str, resource: str
) -> None:
    """A resource permission (configure / write / read) as AMQP checks it.

    Administrators pass (they manage every vhost from the API); everybody else needs a
    matching permission on the vhost, exactly as on an AMQP channel.
    """
    if user is None or "administrator" in user.tags:
        return
    permission = core.permission(user.name, vhost)
    name = resource or "amq.default"
    if permission is None or not permission.allows(kind, name):
        raise HTTPError(
            403,
            f"{kind} access to '{name}' in vhost '{vhost}' refused for user '{user.name}'",
            "access_refused",
        )


def _over_unix_socket(request: web.Request) -> bool:
    """A request over a Unix socket (transport/unix.py) comes from this machine."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    return sock is not None and sock.family == socket.AF_UNIX
