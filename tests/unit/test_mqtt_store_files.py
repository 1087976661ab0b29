"""The MQTT retained and session-state files (storage/jsonl.py under both): files
written in the format the stores have always used load, torn and unreadable lines are
dropped as before, and compaction writes the live state back byte for byte in that
format.  The lines below are what the stores wrote before they shared one module."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest

from baedal.protocols.mqtt.retained import RetainedStore
from baedal.protocols.mqtt.sessionstate import SessionStateStore
from baedal.storage.syncer import Syncer

RETAINED_C = (
    b'{"t":"c","p":"eA==","q":0,"x":{"message_expiry_interval":3600,"correlation_data":"Y29y",'
    b'"user_property":[["k","v"]]},"at":1700000001.0}\n'
)
RETAINED_D = b'{"t":"d","p":"eQ==","q":2,"x":{},"at":1700000002.0}\n'
RETAINED_FILE = (
    b'{"t":"a/b","p":"aGVsbG8=","q":1,"x":{},"at":1700000000.5}\n'
    + RETAINED_C
    + b'{"t":"a/b"}\n'  # an empty retained payload cleared a/b
    + RETAINED_D
    + b'{"t":"torn","p":"aGVs'  # the crash came mid-line: never acknowledged
)

SESSIONS_FILE = (
    b'["c1","in+",1]\n["c1","in+",5]\n["c1","out+",7]\n["c2","in+",3]\n'
    b'["c2","share+",["$share/g/t",1]]\n["c2","in-",3]\n["c3","in+",9]\n["c3","drop",0]\n'
    b'["c1","in-",1]\n["c4","in+",2'
)
SESSIONS_COMPACTED = b'["c1","in+",5]\n["c1","out+",7]\n["c2","share+",["$share/g/t",1]]\n'


@pytest.fixture
async def syncer() -> Syncer:
    running = Syncer(loop=asyncio.get_running_loop())
    yield running
    running.close()


async def test_an_existing_retained_file_loads_and_compacts_to_the_same_lines(
    tmp_path: Path, syncer: Syncer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "retained.jsonl"
    path.write_bytes(RETAINED_FILE)
    store = RetainedStore(path, syncer)
    with caplog.at_level(logging.WARNING, "baedal.mqtt"):
        store.open()
    assert "mqtt retained: dropped a torn last line" in caplog.text
    assert list(store.messages) == ["c", "d"]
    c = store.messages["c"]
    assert (c.payload, c.qos, c.stored_at) == (b"x", 0, 1700000001.0)
    assert c.properties == {
        "message_expiry_interval": 3600, "correlation_data": b"cor", "user_property": [("k", "v")]
    }
    assert path.read_bytes() == RETAINED_C + RETAINED_D
    # Appends go on in the same format, and a reopen sees them.
    assert store.set("c", b"", 0, {}) is True
    store.set("e", b"z", 1, {})
    store.close()
    lines = path.read_bytes().splitlines(keepends=True)
    assert lines[:3] == [RETAINED_C, RETAINED_D, b'{"t":"c"}\n'] and lines[3].startswith(b'{"t":"e","p":"eg==","q":1,"x":{},"at":')
    again = RetainedStore(path, syncer)
    again.open()
    assert list(again.messages) == ["d", "e"] and again.messages["e"].payload == b"z"
    again.close()


async def test_an_existing_session_state_file_loads_and_compacts_to_the_same_lines(
    tmp_path: Path, syncer: Syncer
) -> None:
    path = tmp_path / "sessions.jsonl"
    path.write_bytes(SESSIONS_FILE)
    store = SessionStateStore(path, syncer)
    store.open()
    assert store.get("c1") == ({5}, {7})
    assert store.get("c2") == (set(), set()) and store.shares == {"c2": {"$share/g/t": 1}}
    assert store.get("c3") == (set(), set()) and store.get("c4") == (set(), set())
    assert path.read_bytes() == SESSIONS_COMPACTED
    store.record("c1", "out-", 7)
    store.record("c9", "in+", 4)
    store.close()
    assert path.read_bytes() == SESSIONS_COMPACTED + b'["c1","out-",7]\n["c9","in+",4]\n'
    again = SessionStateStore(path, syncer)
    again.open()
    assert again.get("c1") == ({5}, set()) and again.get("c9") == ({4}, set())
    again.close()


async def test_an_unreadable_line_ends_the_replay_there(
    tmp_path: Path, syncer: Syncer, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "sessions.jsonl"
    path.write_bytes(b'["c1","in+",1]\n["c1","bogus",2]\n["c1","in+",3]\n')
    store = SessionStateStore(path, syncer)
    with caplog.at_level(logging.WARNING, "baedal.mqtt"):
        store.open()
    assert "mqtt session state: dropped an unreadable line" in caplog.text
    assert store.get("c1") == ({1}, set())
    store.close()
    assert path.read_bytes() == b'["c1","in+",1]\n'


def test_without_a_path_nothing_is_read_or_written(tmp_path: Path) -> None:
    store = RetainedStore(None, syncer=None)
    store.open()
    assert store.set("t", b"p", 0, {}) is True and list(store.messages) == ["t"]
    store.close()
    assert list(tmp_path.iterdir()) == []
