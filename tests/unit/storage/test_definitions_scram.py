"""SCRAM credentials in the definitions store: stored with the user, replaced with it,
deleted with it, and a database without them (an older file) still loads."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from baedal.core.scram import credentials_from_json, credentials_to_json, derive_all
from baedal.storage.definitions import DefinitionsStore


def test_scram_credentials_round_trip_and_follow_the_user(tmp_path: Path) -> None:
    credentials = credentials_to_json(derive_all("pw"))
    store = DefinitionsStore(tmp_path / "defs.db")
    store.put_user("alice", "hash", ["x"], credentials)
    store.put_user("bob", "hash")
    store.close()
    store = DefinitionsStore(tmp_path / "defs.db")
    users = {u["name"]: u for u in store.load()["users"]}
    assert credentials_from_json(users["alice"]["scram_credentials"]) == credentials_from_json(credentials)
    assert "scram_credentials" not in users["bob"]
    # A new hash without credentials removes the old ones (they would accept the old password).
    store.put_user("alice", "new-hash", ["x"], None)
    assert "scram_credentials" not in store.load()["users"][0]
    store.put_user("alice", "new-hash", ["x"], credentials)
    store.delete_user("alice")
    store.put_user("alice", "hash")
    assert "scram_credentials" not in store.load()["users"][0]  # deleted with the user
    store.close()


def test_a_database_from_before_scram_loads_and_gains_the_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE vhosts (name TEXT PRIMARY KEY);"
        "CREATE TABLE users (name TEXT PRIMARY KEY, password_hash TEXT NOT NULL, tags TEXT NOT NULL DEFAULT '');"
        "INSERT INTO vhosts VALUES ('/');"
        "INSERT INTO users VALUES ('old', 'hash', 'administrator');"
    )
    db.commit()
    db.close()
    store = DefinitionsStore(path)
    assert store.load()["users"] == [{"name": "old", "password_hash": "hash", "tags": ["administrator"]}]
    store.put_user("old", "hash", ["administrator"], credentials_to_json(derive_all("pw")))
    assert set(store.load()["users"][0]["scram_credentials"]) == {"SCRAM-SHA-256", "SCRAM-SHA-512"}
    store.close()
