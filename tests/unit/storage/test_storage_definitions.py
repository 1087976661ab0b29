"""DefinitionsStore: everything round-trips through SQLite, deletes cascade, transactions are atomic."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from baedal.storage.definitions import DefinitionsStore

ARGUMENTS = {
    "x-max-length": 10,
    "raw": b"\x00\xff",
    "rate": Decimal("1.25"),
    "nested": {"a": [1, "two", {"b": True}]},
}


def populated(path: Path) -> DefinitionsStore:
    store = DefinitionsStore(path)
    store.put_vhost("/")
    store.put_vhost("other")
    store.put_user("guest", "hash", ["administrator", "monitoring"])
    store.put_permission("guest", "/", ".*", ".*", ".*")
    store.put_permission("guest", "other", "", "^amq", ".*")
    store.put_exchange("/", "orders", "topic", arguments=ARGUMENTS)
    store.put_exchange("other", "x", "fanout")
    store.put_queue("/", "q1", arguments=ARGUMENTS)
    store.put_queue("/", "q2")
    store.put_queue("other", "q3")
    store.put_binding("/", "orders", "q1", "queue", "order.*", {"x-match": "all"})
    store.put_binding("/", "orders", "q2", "queue", "#")
    store.put_binding("/", "amq.topic", "orders", "exchange", "a.b")
    store.put_binding("other", "x", "q3", "queue", "")
    return store


def test_definitions_survive_reopening_with_arguments_intact(tmp_path: Path) -> None:
    populated(tmp_path / "defs.db").close()
    loaded = DefinitionsStore(tmp_path / "defs.db").load()
    assert [v["name"] for v in loaded["vhosts"]] == ["/", "other"]
    assert loaded["users"] == [
        {"name": "guest", "password_hash": "hash", "tags": ["administrator", "monitoring"]}
    ]
    assert len(loaded["permissions"]) == 2
    orders = next(e for e in loaded["exchanges"] if e["name"] == "orders")
    assert (
        orders["arguments"] == ARGUMENTS and orders["type"] == "topic" and orders["durable"] is True
    )
    q1 = next(q for q in loaded["queues"] if q["name"] == "q1")
    assert q1["arguments"] == ARGUMENTS and q1["exclusive"] is False
    assert len(loaded["bindings"]) == 4
    assert loaded["bindings"][0]["arguments"] == {"x-match": "all"}


def test_deleting_a_queue_deletes_its_bindings(tmp_path: Path) -> None:
    store = populated(tmp_path / "defs.db")
    store.delete_queue("/", "q1")
    loaded = store.load()
    assert "q1" not in {q["name"] for q in loaded["queues"]}
    assert all(b["destination"] != "q1" for b in loaded["bindings"])


def test_deleting_an_exchange_deletes_bindings_from_and_to_it(tmp_path: Path) -> None:
    store = populated(tmp_path / "defs.db")
    store.delete_exchange("/", "orders")
    loaded = store.load()
    assert [(b["vhost"], b["source"]) for b in loaded["bindings"]] == [("other", "x")]


def test_deleting_a_vhost_cascades_to_everything_in_it(tmp_path: Path) -> None:
    store = populated(tmp_path / "defs.db")
    store.delete_vhost("/")
    loaded = store.load()
    assert {q["vhost"] for q in loaded["queues"]} == {"other"}
    assert {e["vhost"] for e in loaded["exchanges"]} == {"other"}
    assert {b["vhost"] for b in loaded["bindings"]} == {"other"}
    assert [p["vhost"] for p in loaded["permissions"]] == ["other"]
    assert loaded["users"]  # users are not per vhost


def test_a_failed_transaction_changes_nothing(tmp_path: Path) -> None:
    store = populated(tmp_path / "defs.db")
    before = store.load()
    with pytest.raises(RuntimeError), store.transaction():
        store.delete_queue("/", "q1")
        store.put_queue("/", "q9")
        raise RuntimeError("boom")
    assert store.load() == before
    with store.transaction():
        store.delete_queue("/", "q1")
        store.put_queue("/", "q9")
    assert {q["name"] for q in store.load()["queues"]} == {"q2", "q3", "q9"}


def test_binding_delete_matches_arguments(tmp_path: Path) -> None:
    store = populated(tmp_path / "defs.db")
    store.delete_binding("/", "orders", "q1", "queue", "order.*")  # different arguments: no-op
    assert len(store.load()["bindings"]) == 4
    store.delete_binding("/", "orders", "q1", "queue", "order.*", {"x-match": "all"})
    assert len(store.load()["bindings"]) == 3
