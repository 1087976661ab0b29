"""``DefinitionsStore``: vhosts, users, permissions, exchanges, queues, bindings, policies,
topic permissions and runtime parameters in SQLite.

Definitions change rarely and must never be half-applied, so they live in a small
transactional store rather than in the message log: SQLite (stdlib) in WAL mode with
``synchronous=FULL``, one transaction per change (or per ``transaction()`` block).
Argument tables (which may hold bytes, Decimal, nested tables and arrays) are stored as
AMQP field-table BLOBs via ``core.properties.encode_table`` so every value round-trips
exactly as a client sent it.

All calls are blocking but short (one small transaction); the broker calls them on
declare/delete, which are rare compared with publishes.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from baedal.core.properties import decode_table, encode_table

__all__ = ["DefinitionsStore"]

# The policy, topic-permission, parameter and SCRAM-credential tables were added without
# a version bump: they are created IF NOT EXISTS, so a version-1 file simply gains them
# (its users then have no SCRAM credentials: core/scram.py).
_SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vhosts (
    name TEXT PRIMARY KEY
);
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    password_hash TEXT NOT NULL,
    tags TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS permissions (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    configure TEXT NOT NULL,
    write TEXT NOT NULL,
    read TEXT NOT NULL,
    PRIMARY KEY (user, vhost)
);
CREATE TABLE IF NOT EXISTS exchanges (
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    type TEXT NOT NULL,
    durable INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL,
    internal INTEGER NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (vhost, name)
);
CREATE TABLE IF NOT EXISTS queues (
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    durable INTEGER NOT NULL,
    auto_delete INTEGER NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (vhost, name)
);
CREATE TABLE IF NOT EXISTS bindings (
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    source TEXT NOT NULL,
    destination TEXT NOT NULL,
    destination_kind TEXT NOT NULL CHECK (destination_kind IN ('queue', 'exchange')),
    routing_key TEXT NOT NULL,
    arguments BLOB NOT NULL,
    PRIMARY KEY (vhost, source, destination, destination_kind, routing_key, arguments)
);
CREATE TABLE IF NOT EXISTS policies (
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    name TEXT NOT NULL,
    operator INTEGER NOT NULL,
    pattern TEXT NOT NULL,
    apply_to TEXT NOT NULL,
    priority INTEGER NOT NULL,
    definition TEXT NOT NULL,
    PRIMARY KEY (vhost, name, operator)
);
CREATE TABLE IF NOT EXISTS topic_permissions (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    exchange TEXT NOT NULL,
    write TEXT NOT NULL,
    read TEXT NOT NULL,
    PRIMARY KEY (user, vhost, exchange)
);
CREATE TABLE IF NOT EXISTS parameters (
    vhost TEXT NOT NULL REFERENCES vhosts(name) ON DELETE CASCADE,
    component TEXT NOT NULL,
    name TEXT NOT NULL,
    value TEXT NOT NULL,
    PRIMARY KEY (vhost, component, name)
);
CREATE TABLE IF NOT EXISTS user_scram_credentials (
    user TEXT NOT NULL REFERENCES users(name) ON DELETE CASCADE,
    mechanism TEXT NOT NULL,
    credential TEXT NOT NULL,
    PRIMARY KEY (user, mechanism)
);
CREATE TABLE IF NOT EXISTS global_parameters (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


def _encode_arguments(arguments: dict[str, Any] | None) -> bytes:
    return encode_table(arguments or {})


def _decode_arguments(blob: bytes) -> dict[str, Any]:
    return decode_table(blob)[0]


class DefinitionsStore:
    """The broker's definitions, one SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so a change is exactly
        # one transaction and transaction() can group several.
        self._db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._depth = 0
        # CREATE ... IF NOT EXISTS is idempotent; executescript runs in its own transaction.
        self._db.executescript("BEGIN;" + _SCHEMA + "COMMIT;")
        with self.transaction():
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version == 0:
                self._db.execute(f"PRAGMA user_version={_SCHEMA_VERSION}")
            elif version != _SCHEMA_VERSION:
                raise RuntimeError(
                    f"{self.path}: definitions schema version {version}, expected {_SCHEMA_VERSION}"
                )

    # -- transactions ------------------------------------------------------------------

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group changes atomically; nested blocks join the outermost transaction."""
        if self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._db.execute("BEGIN IMMEDIATE")
        self._depth = 1
        try:
            yield
        except BaseException:
            self._depth = 0
            self._db.execute("ROLLBACK")
            raise
        self._depth = 0
        self._db.execute("COMMIT")

    def _change(self, sql: str, params: tuple[Any, ...]) -> None:
        with self.transaction():
            self._db.execute(sql, params)

    # -- reading -----------------------------------------------------------------------

    def load(self) -> dict[str, list[dict[str, Any]]]:
        """Everything, as plain dicts: keys vhosts, users, permissions, exchanges, queues, bindings."""
        db = self._db
        scram: dict[str, dict[str, Any]] = {}
        for user, mechanism, credential in db.execute(
            "SELECT user, mechanism, credential FROM user_scram_credentials"
        ):
            scram.setdefault(user, {})[mechanism] = json.loads(credential)
        return {
            "vhosts": [
                {"name": name} for (name,) in db.execute("SELECT name FROM vhosts ORDER BY name")
            ],
            "users": [
                {
                    "name": name,
                    "password_hash": password_hash,
                    "tags": [t for t in tags.split(",") if t],
                    # only for users that have them (a hash-only user has none)
                    **({"scram_credentials": scram[name]} if name in scram else {}),
                }
                for name, password_hash, tags in db.execute(
                    "SELECT name, password_hash, tags FROM users ORDER BY name"
                )
            ],
            "permissions": [
                {"user": user, "vhost": vhost, "configure": configure, "write": write, "read": read}
                for user, vhost, configure, write, read in db.execute(
                    "SELECT user, vhost, configure, write, read FROM permissions ORDER BY user, vhost"
                )
            ],
            "exchanges": [
                {
                    "vhost": vhost,
                    "name": name,
                    "type": kind,
                    "durable": bool(durable),
                    "auto_delete": bool(auto_delete),
                    "internal": bool(internal),
                    "arguments": _decode_arguments(arguments),
                }
                for vhost, name, kind, durable, auto_delete, internal, arguments in db.execute(
                    "SELECT vhost, name, type, durable, auto_delete, internal, arguments FROM exchanges ORDER BY vhost, name"
                )
            ],
            "queues": [
                {
                    "vhost": vhost,
                    "name": name,
                    "durable": bool(durable),
                    "auto_delete": bool(auto_delete),
                    "exclusive": False,
                    "arguments": _decode_arguments(arguments),
                }
                for vhost, name, durable, auto_delete, arguments in db.execute(
                    "SELECT vhost, name, durable, auto_delete, arguments FROM queues ORDER BY vhost, name"
                )
            ],
            "bindings": [
                {
                    "vhost": vhost,
                    "source": source,
                    "destination": destination,
                    "destination_kind": kind,
                    "routing_key": routing_key,
                    "arguments": _decode_arguments(arguments),
                }
                for vhost, source, destination, kind, routing_key, arguments in db.execute(
                    "SELECT vhost, source, destination, destination_kind, routing_key, arguments FROM bindings ORDER BY rowid"
                )
            ],
            "policies": [
                {
                    "vhost": vhost,
                    "name": name,
                    "operator": bool(operator),
                    "pattern": pattern,
                    "apply-to": apply_to,
                    "priority": priority,
                    "definition": json.loads(definition),
                }
                for vhost, name, operator, pattern, apply_to, priority, definition in db.execute(
                    "SELECT vhost, name, operator, pattern, apply_to, priority, definition FROM policies ORDER BY vhost, name"
                )
            ],
            "topic_permissions": [
                {"user": user, "vhost": vhost, "exchange": exchange, "write": write, "read": read}
                for user, vhost, exchange, write, read in db.execute(
                    "SELECT user, vhost, exchange, write, read FROM topic_permissions ORDER BY user, vhost, exchange"
                )
            ],
            "parameters": [
                {"vhost": vhost, "component": component, "name": name, "value": json.loads(value)}
                for vhost, component, name, value in db.execute(
                    "SELECT vhost, component, name, value FROM parameters ORDER BY vhost, component, name"
                )
            ],
            "global_parameters": [
                {"name": name, "value": json.loads(value)}
                for name, value in db.execute("SELECT name, value FROM global_parameters ORDER BY name")
            ],
        }

    # -- vhosts ------------------------------------------------------------------------

    def put_vhost(self, name: str) -> None:
        self._change("INSERT OR IGNORE INTO vhosts (name) VALUES (?)", (name,))

    def delete_vhost(self, name: str) -> None:
        """Delete a vhost and (cascade) its permissions, exchanges, queues and bindings."""
        self._change("DELETE FROM vhosts WHERE name = ?", (name,))

    # -- users and permissions ---------------------------------------------------------

    def put_user(
        self,
        name: str,
        password_hash: str,
        tags: list[str] | tuple[str, ...] = (),
        scram_credentials: dict[str, dict[str, Any]] | None = None,
    ) -> None:
        """Insert or replace a user; its SCRAM credentials (``core.scram``'s JSON form,
        by mechanism) replace the stored ones, so a new password never leaves stale
        credentials behind."""
        with self.transaction():
            self._db.execute(
                "INSERT INTO users (name, password_hash, tags) VALUES (?, ?, ?) "
                "ON CONFLICT(name) DO UPDATE SET password_hash = excluded.password_hash, tags = excluded.tags",
                (name, password_hash, ",".join(tags)),
            )
            self._db.execute("DELETE FROM user_scram_credentials WHERE user = ?", (name,))
            for mechanism, credential in sorted((scram_credentials or {}).items()):
                self._db.execute(
                    "INSERT INTO user_scram_credentials (user, mechanism, credential) VALUES (?, ?, ?)",
                    (name, mechanism, json.dumps(credential, sort_keys=True)),
                )

    def delete_user(self, name: str) -> None:
        """Delete a user and (cascade) its permissions."""
        self._change("DELETE FROM users WHERE name = ?", (name,))

    def put_permission(self, user: str, vhost: str, configure: str, write: str, read: str) -> None:
        self._change(
            "INSERT OR REPLACE INTO permissions (user, vhost, configure, write, read) VALUES (?, ?, ?, ?, ?)",
            (user, vhost, configure, write, read),
        )

    def delete_permission(self, user: str, vhost: str) -> None:
        self._change("DELETE FROM permissions WHERE user = ? AND vhost = ?", (user, vhost))

    # -- exchanges ---------------------------------------------------------------------

    def put_exchange(
        self,
        vhost: str,
        name: str,
        type: str,
        durable: bool = True,
        auto_delete: bool = False,
        internal: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._change(
            "INSERT OR REPLACE INTO exchanges (vhost, name, type, durable, auto_delete, internal, arguments) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                vhost,
                name,
                type,
                int(durable),
                int(auto_delete),
                int(internal),
                _encode_arguments(arguments),
            ),
        )

    def delete_exchange(self, vhost: str, name: str) -> None:
        """Delete an exchange and every binding from or to it."""
        with self.transaction():
            self._db.execute("DELETE FROM exchanges WHERE vhost = ? AND name = ?", (vhost, name))
            self._db.execute(
                "DELETE FROM bindings WHERE vhost = ? AND (source = ? OR (destination = ? AND destination_kind = 'exchange'))",
                (vhost, name, name),
            )

    # -- queues ------------------------------------------------------------------------

    def put_queue(
        self,
        vhost: str,
        name: str,
        durable: bool = True,
        auto_delete: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Store a queue.  Exclusive queues die with their connection, so none is stored."""
        self._change(
            "INSERT OR REPLACE INTO queues (vhost, name, durable, auto_delete, arguments) VALUES (?, ?, ?, ?, ?)",
            (vhost, name, int(durable), int(auto_delete), _encode_arguments(arguments)),
        )

    def delete_queue(self, vhost: str, name: str) -> None:
        """Delete a queue and every binding to it."""
        with self.transaction():
            self._db.execute("DELETE FROM queues WHERE vhost = ? AND name = ?", (vhost, name))
            self._db.execute(
                "DELETE FROM bindings WHERE vhost = ? AND destination = ? AND destination_kind = 'queue'",
                (vhost, name),
            )

    # -- bindings ----------------------------------------------------------------------

    def put_binding(
        self,
        vhost: str,
        source: str,
        destination: str,
        destination_kind: str,
        routing_key: str,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._change(
            "INSERT OR IGNORE INTO bindings (vhost, source, destination, destination_kind, routing_key, arguments) "
            "VALUES (?, ?, ?, ?, ?, ?)",
            (
                vhost,
                source,
                destination,
                destination_kind,
                routing_key,
                _encode_arguments(arguments),
            ),
        )

    def delete_binding(
        self,
        vhost: str,
        source: str,
        destination: str,
        destination_kind: str,
        routing_key: str,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._change(
            "DELETE FROM bindings WHERE vhost = ? AND source = ? AND destination = ? AND destination_kind = ? "
            "AND routing_key = ? AND arguments = ?",
            (
                vhost,
                source,
                destination,
                destination_kind,
                routing_key,
                _encode_arguments(arguments),
            ),
        )

    # -- policies, topic permissions, parameters ----------------------------------------

    def put_policy(
        self,
        vhost: str,
        name: str,
        operator: bool,
        pattern: str,
        apply_to: str,
        priority: int,
        definition: dict[str, Any],
    ) -> None:
        self._change(
            "INSERT OR REPLACE INTO policies (vhost, name, operator, pattern, apply_to, priority, definition) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (vhost, name, int(operator), pattern, apply_to, priority, json.dumps(definition)),
        )

    def delete_policy(self, vhost: str, name: str, operator: bool) -> None:
        self._change(
            "DELETE FROM policies WHERE vhost = ? AND name = ? AND operator = ?",
            (vhost, name, int(operator)),
        )

    def put_topic_permission(self, user: str, vhost: str, exchange: str, write: str, read: str) -> None:
        self._change(
            "INSERT OR REPLACE INTO topic_permissions (user, vhost, exchange, write, read) VALUES (?, ?, ?, ?, ?)",
            (user, vhost, exchange, write, read),
        )

    def delete_topic_permission(self, user: str, vhost: str, exchange: str | None = None) -> None:
        """One exchange's topic permission, or (exchange None) all of the user's in the vhost."""
        if exchange is None:
            self._change("DELETE FROM topic_permissions WHERE user = ? AND vhost = ?", (user, vhost))
        else:
            self._change(
                "DELETE FROM topic_permissions WHERE user = ? AND vhost = ? AND exchange = ?",
                (user, vhost, exchange),
            )

    def put_parameter(self, vhost: str, component: str, name: str, value: Any) -> None:
        self._change(
            "INSERT OR REPLACE INTO parameters (vhost, component, name, value) VALUES (?, ?, ?, ?)",
            (vhost, component, name, json.dumps(value)),
        )

    def put_global_parameter(self, name: str, value: Any) -> None:
        self._change(
            "INSERT OR REPLACE INTO global_parameters (name, value) VALUES (?, ?)",
            (name, json.dumps(value)),
        )

    def close(self) -> None:
        self._db.close()
