"""The bucketed schedule store (storage/schedule_buckets.py) driven by the real scheduler
(core/scheduler.py) on a real ``BrokerCore`` with a fake clock: what lives in memory and
what only on disk, bucket roll-over and deletion, recovery from summaries, tombstones,
torn tails, recurring jobs across a crash, and the migration of the first layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from baedal.core import scheduler as scheduler_module
from baedal.core.broker import BrokerCore
from baedal.core.message import Message
from baedal.core.scheduler import LOAD_AHEAD, Scheduler, ScheduleRequest, job_id_for, parse_job_id
from baedal.storage.schedule_buckets import (
    BUCKET_SECONDS,
    CHECKPOINT_EVENTS,
    RECURRING,
    JobRecord,
    MemoryScheduleStore,
    decode_job,
    encode_job,
)
from baedal.storage.schedule_store import LegacyScheduleStore, ScheduleStore
from baedal.storage.syncer import Syncer

SEGMENT = 1 << 20
T0 = 1_800_000_000.0  # a bucket boundary (a multiple of BUCKET_SECONDS)
BUCKET0 = int(T0 // BUCKET_SECONDS)


class Rig:
    """A core with queue ``q``, a scheduler on a store in ``directory``, a fake clock."""

    def __init__(self, directory: Path | None, now: float = T0) -> None:
        self.now = now
        self.core = BrokerCore()
        self.queue, _ = self.core.vhosts["/"].declare_queue("q")
        self.store: Any = ScheduleStore(directory, Syncer(), segment_bytes=SEGMENT) if directory else MemoryScheduleStore()
        self.scheduler = Scheduler(self.core, self.store, clock=lambda: self.now)
        self.scheduler.recover()

    def at(self, due: float, body: bytes = b"x", **request: Any) -> str:
        exchange = self.core.vhosts["/"].exchanges[""]
        message = Message.build("", "q", body, persistent=True, headers={"app": "h"})
        self.scheduler.schedule("/", exchange, message, ScheduleRequest("activemq", 0, at=due, **request))
        index = RECURRING if request else int(max(due, self.now) // BUCKET_SECONDS)
        return job_id_for(index, self.store._seq)  # the sequence the job just took

    def advance(self, to: float) -> list[bytes]:
        self.now = to
        self.scheduler.wake()
        return self.drain()

    def drain(self) -> list[bytes]:
        bodies = []
        while (entry := self.queue.get(True)) is not None:
            bodies.append(entry.message.body)
        return bodies

    def in_memory(self) -> set[int]:
        """Seqs of the jobs the scheduler holds in its window (live heap entries)."""
        return {seq for _due, seq, bucket, _p in self.scheduler._heap if seq in bucket.live}

    def close(self, clean: bool = True) -> None:
        self.scheduler.close(clean)


def bucket_files(directory: Path) -> list[str]:
    return sorted(path.name for path in (directory / "buckets").iterdir())


def test_a_job_far_in_the_future_stays_on_disk_only_until_its_bucket_comes_into_the_window(tmp_path: Path) -> None:
    rig = Rig(tmp_path)
    far = T0 + 30 * 86400  # a month ahead
    job_id = rig.at(far, b"later")
    index, seq = parse_job_id(job_id)  # type: ignore[misc]
    assert index == int(far // BUCKET_SECONDS)
    bucket = rig.store.buckets[index]
    assert bucket.live is None and seq not in rig.in_memory()  # only its bucket summary
    assert bucket.count == 1 and rig.scheduler.count() == 1
    assert f"{index:012d}.jobs" in bucket_files(tmp_path)
    assert rig.advance(far - LOAD_AHEAD - 1) == []
    assert bucket.live is None  # not yet in the window
    assert rig.advance(far - LOAD_AHEAD) == []  # loaded, not due
    assert bucket.live == {seq: 0} and seq in rig.in_memory()
    assert rig.advance(far) == [b"later"]
    assert rig.scheduler.count() == 0
    rig.close()


def test_jobs_roll_over_into_one_bucket_per_ten_seconds_and_emptied_buckets_are_deleted(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0 - 100)
    for i in range(30):  # 30 jobs due over 30 s: three buckets
        rig.at(T0 + i, b"%d" % i)
    assert sorted(rig.store.buckets) == [BUCKET0, BUCKET0 + 1, BUCKET0 + 2]
    assert [rig.store.buckets[b].count for b in sorted(rig.store.buckets)] == [10, 10, 10]
    assert not rig.in_memory()
    fired = rig.advance(T0 + 4.5)
    assert fired == [b"%d" % i for i in range(5)]  # in due order, none early
    assert rig.store.buckets[BUCKET0 + 1].live is None  # the next bucket is not read yet
    fired = rig.advance(T0 + 10)
    assert fired == [b"%d" % i for i in range(5, 11)]
    # Bucket 0 is empty, settled and its span is over: its files are gone.
    assert BUCKET0 not in rig.store.buckets
    assert not any(name.startswith(f"{BUCKET0:012d}") for name in bucket_files(tmp_path))
    assert rig.advance(T0 + 40) == [b"%d" % i for i in range(11, 30)]
    assert rig.store.buckets == {} and bucket_files(tmp_path) == []
    rig.close()


def test_recovery_after_a_clean_stop_reads_summaries_not_jobs(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    for i in range(200):  # 200 jobs over 20 buckets, all far ahead
        rig.at(T0 + 3600 + i, b"%d" % i)
    rig.close()
    rig = Rig(tmp_path, now=T0 + 1)
    assert rig.store.scanned_records == 0 and rig.store.scanned_buckets == 0
    assert rig.scheduler.count() == 200 and len(rig.store.buckets) == 20
    assert not rig.in_memory() and all(b.live is None for b in rig.store.buckets.values())
    assert rig.advance(T0 + 3600 + 199) == [b"%d" % i for i in range(200)]
    rig.close()


def test_recovery_after_a_crash_scans_only_the_buckets_written_since_their_checkpoint(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    for i in range(50):
        rig.at(T0 + 3600 + i, b"%d" % i)  # five buckets
    rig.close()  # clean: every bucket has a summary
    rig = Rig(tmp_path, now=T0)
    rig.at(T0 + 3600 + 0.5, b"late")  # one more job in the first bucket
    rig.close(clean=False)  # as after kill -9: no checkpoint
    rig = Rig(tmp_path, now=T0)
    assert rig.store.scanned_buckets == 1 and rig.store.scanned_records == 11
    assert rig.scheduler.count() == 51
    fired = rig.advance(T0 + 3700)
    assert fired[:2] == [b"0", b"late"] and len(fired) == 51
    rig.close()


def test_a_cancelled_job_leaves_a_tombstone_and_stays_cancelled_after_a_restart(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    keep = rig.at(T0 + 3600, b"keep")
    gone = rig.at(T0 + 3601, b"gone")
    index, _seq = parse_job_id(gone)  # type: ignore[misc]
    assert rig.scheduler.cancel("/", gone)
    assert not rig.scheduler.cancel("/", gone)
    assert (tmp_path / "buckets" / f"{index:012d}.gone").stat().st_size == 4  # one offset
    assert rig.store.buckets[index].live is None  # cancelled without loading the bucket
    assert [job["id"] for job in rig.scheduler.list("/")[1]] == [keep]
    rig.close(clean=False)
    rig = Rig(tmp_path, now=T0)
    assert rig.scheduler.count() == 1 and rig.scheduler.get("/", gone) is None
    assert rig.advance(T0 + 3700) == [b"keep"]
    rig.close()


def test_a_job_cancelled_inside_the_window_is_skipped_when_due(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    first = rig.at(T0 + 1, b"a")
    rig.at(T0 + 2, b"b")
    assert len(rig.in_memory()) == 2
    assert rig.scheduler.cancel("/", first)
    assert rig.advance(T0 + 5) == [b"b"]
    rig.close()


def test_listing_pages_in_due_order_across_buckets_and_recurring_jobs(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    for i in (35, 5, 25, 15):
        rig.at(T0 + i, b"%d" % i)
    rig.at(T0 + 20, b"r", period_ms=1000, repeat=2)
    total, page = rig.scheduler.list("/", 1, 3)
    assert total == 5
    assert [job["due"] for job in page] == [round((T0 + s) * 1000) for s in (15, 20, 25)]
    assert page[1]["id"].startswith("r-") and page[1]["repeat"] == 2
    assert rig.scheduler.list("other", 0, 10) == (0, [])
    assert rig.scheduler.get("/", page[0]["id"])["size"] == 2
    rig.close()


def test_a_torn_tail_in_a_bucket_loses_only_the_torn_job(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    rig.at(T0 + 3600, b"w" * 100)
    rig.at(T0 + 3601, b"t" * 100)
    rig.close(clean=False)
    [jobs] = (tmp_path / "buckets").glob("*.jobs")
    jobs.write_bytes(jobs.read_bytes()[:-40])
    rig = Rig(tmp_path, now=T0)
    assert rig.scheduler.count() == 1
    assert rig.advance(T0 + 3700) == [b"w" * 100]
    rig.close()


def test_a_recurring_job_rewritten_before_a_crash_comes_back_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    rig.at(T0 + 1, b"tick", period_ms=1000, repeat=-1)
    assert rig.advance(T0 + 1) == [b"tick"]  # fired and rewritten with its next due time
    rig.close(clean=False)
    # A crash before the old record's tombstone (written after the fsync) leaves both.
    [gone] = (tmp_path / "buckets").glob("recurring-*.gone")
    gone.unlink()
    rig = Rig(tmp_path, now=T0 + 1.5)
    assert rig.scheduler.count() == 1
    assert rig.advance(T0 + 2) == [b"tick"]  # once, not twice
    [job] = rig.scheduler.list("/")[1]
    assert job["fired"] == 2 and job["due"] == round((T0 + 3) * 1000)
    rig.close()
    # Opening compacts the recurring log to its live job.
    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    assert store.recurring.records == 1 and not list((tmp_path / "buckets").glob("recurring-*.gone"))
    assert len(list((tmp_path / "buckets").glob("recurring-*.jobs"))) == 1
    store.close()


def test_the_recurring_log_is_compacted_while_it_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scheduler_module, "RECURRING_COMPACT_MIN", 5)
    rig = Rig(tmp_path, now=T0)
    rig.at(T0 + 1, b"fast", period_ms=100, repeat=-1)
    rig.at(T0 + 3600, b"slow", period_ms=3_600_000, repeat=-1)
    fired = []
    for step in range(1, 101):  # 100 firings of "fast": 100 records appended
        fired += rig.advance(T0 + 1 + step / 10)
    assert fired == [b"fast"] * 101
    assert rig.store.recurring.records <= 2 * 2 + 5 + 1  # compacted on the way
    assert len(list((tmp_path / "buckets").glob("recurring-*.jobs"))) == 1
    rig.close(clean=False)
    rig = Rig(tmp_path, now=T0 + 11.05)
    assert sorted(job["repeat"] for job in rig.scheduler.list("/")[1]) == [-1, -1]
    assert rig.advance(T0 + 11.1) == [b"fast"]
    rig.close()


def test_a_bucket_larger_than_a_load_slice_comes_in_over_several_callbacks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scheduler_module, "LOAD_BATCH", 7)
    rig = Rig(tmp_path, now=T0)
    for i in range(50):
        rig.at(T0 + 3600 + (49 - i) / 10, b"%d" % (49 - i))
    rig.scheduler.cancel("/", job_id_for(BUCKET0 + 360, rig.store._seq))  # the one due first
    rig.now = T0 + 3600 - LOAD_AHEAD
    rig.scheduler._tick()
    bucket = rig.store.buckets[BUCKET0 + 360]
    assert len(bucket.live) == 7  # one slice so far
    assert rig.advance(T0 + 3610) == [b"%d" % i for i in range(1, 50)]
    rig.close()


def test_summaries_are_checkpointed_while_a_bucket_fills(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    for i in range(CHECKPOINT_EVENTS + 10):
        rig.at(T0 + 3600 + i / (CHECKPOINT_EVENTS + 10), b"")
    summary = json.loads((tmp_path / "buckets" / f"{BUCKET0 + 360:012d}.sum").read_bytes())
    assert summary["records"] == CHECKPOINT_EVENTS and summary["vhosts"] == {"/": CHECKPOINT_EVENTS}
    rig.close(clean=False)
    rig = Rig(tmp_path, now=T0)  # the checkpoint no longer matches the file: rescanned
    assert rig.store.scanned_records == CHECKPOINT_EVENTS + 10
    rig.close()


def test_an_overdue_backlog_after_downtime_fires_at_once_in_due_order(tmp_path: Path) -> None:
    rig = Rig(tmp_path, now=T0)
    for i in (40, 10, 30, 0, 20):
        rig.at(T0 + 60 + i, b"%d" % i)
    rig.close()
    rig = Rig(tmp_path, now=T0 + 3600)
    assert rig.advance(T0 + 3600) == [b"0", b"10", b"20", b"30", b"40"]
    assert bucket_files(tmp_path) == []
    rig.close()


def test_without_a_disk_the_same_scheduler_runs_on_the_memory_store() -> None:
    rig = Rig(None, now=T0)
    rig.at(T0 + 3600, b"far")
    rig.at(T0 + 1, b"near")
    assert rig.advance(T0 + 3600) == [b"near", b"far"]
    assert list(rig.store.buckets) == [int((T0 + 3600) // BUCKET_SECONDS)]  # its span is not over
    assert rig.advance(T0 + 3610) == [] and rig.store.buckets == {}
    rig.close()


# --- the upgrade from the first layout -------------------------------------------------


def _legacy_state(job_id: str, **extra: object) -> dict[str, object]:
    # What core/scheduler.py of the first layout wrote (the fields its recovery read).
    return {
        "id": job_id, "vhost": "/", "exchange": "", "routing_key": "q", "extra": [], "kind": "activemq",
        "delay": 0, "period": 0, "repeat": 0, "repeat_left": 0, "cron": None, "cron_next": None,
        "fired": 0, "created": T0, "size": 1, **extra,
    }


def write_legacy(directory: Path) -> None:
    """A ``scheduled`` directory in the first layout, written by its own writer (the
    code main shipped, kept as ``LegacyScheduleStore``): two one-shot jobs, a repeating
    job rewritten once before a crash (two records, the later wins), a settled job."""
    store = LegacyScheduleStore(directory, Syncer(), segment_bytes=SEGMENT)

    def message(body: bytes) -> Message:
        return Message.build("", "q", body, persistent=True, headers={"scheduledJobId": "old"})

    store.write(_legacy_state("one"), message(b"one"), T0 + 20)
    store.write(_legacy_state("two"), message(b"two"), T0 + 5)
    store.write(_legacy_state("rep", period=1000, repeat=3, repeat_left=3), message(b"rep"), T0 + 1)
    store.write(_legacy_state("rep", period=1000, repeat=3, repeat_left=2, fired=1), message(b"rep"), T0 + 2)
    gone, _size = store.write(_legacy_state("gone"), message(b"gone"), T0 + 3)
    store.remove(gone)
    store.close(clean=False)
    assert list(directory.glob("*.seg"))


@pytest.fixture
def legacy_data(tmp_path: Path) -> Path:
    write_legacy(tmp_path / "scheduled")
    return tmp_path / "scheduled"


def test_data_in_the_first_layout_is_migrated_and_fires_as_scheduled(legacy_data: Path) -> None:
    rig = Rig(legacy_data, now=T0)
    assert not list(legacy_data.glob("*.seg"))  # migrated, then the old segments deleted
    assert rig.scheduler.count() == 3
    jobs = rig.scheduler.list("/")[1]
    assert [(job["due"], job["repeat_left"]) for job in jobs] == [
        (round((T0 + 2) * 1000), 2), (round((T0 + 5) * 1000), 0), (round((T0 + 20) * 1000), 0),
    ]
    assert jobs[0]["id"].startswith("r-") and jobs[0]["fired"] == 1
    rig.close(clean=False)  # the migration itself was made durable
    rig = Rig(legacy_data, now=T0)
    assert rig.scheduler.count() == 3
    fired = rig.advance(T0 + 30)
    assert fired == [b"rep", b"rep", b"rep", b"two", b"one"]
    rig.close()


def test_a_crash_between_the_synced_migration_and_the_old_files_deletion_does_not_migrate_twice(
    legacy_data: Path,
) -> None:
    rig = Rig(legacy_data, now=T0)
    rig.close()
    write_legacy(legacy_data)  # the old files still there, as if the crash came before their deletion
    (legacy_data / "buckets" / "MIGRATED").touch()  # ... and after the migration was synced
    rig = Rig(legacy_data, now=T0)
    assert rig.scheduler.count() == 3 and not list(legacy_data.glob("*.seg"))
    assert not (legacy_data / "buckets" / "MIGRATED").exists()
    rig.close()


# --- the envelope ------------------------------------------------------------------------


@given(
    due=st.floats(0, 4e9, allow_nan=False), seq=st.integers(0, 2**64 - 1), kind=st.integers(0, 1),
    numbers=st.lists(st.integers(-(2**63), 2**63 - 1), min_size=4, max_size=4), fired=st.integers(0, 2**32 - 1),
    cron_next=st.none() | st.floats(0, 4e9), texts=st.lists(st.text(max_size=40), min_size=4, max_size=4),
    extra=st.lists(st.text(max_size=20), max_size=5), record=st.binary(max_size=64),
)
def test_the_envelope_round_trips(
    due: float, seq: int, kind: int, numbers: list[int], fired: int, cron_next: float | None,
    texts: list[str], extra: list[str], record: bytes,
) -> None:
    vhost, exchange, routing_key, cron = texts
    job = JobRecord(due, seq, kind, *numbers, fired, cron_next, due, vhost, exchange, routing_key, cron or None, extra)
    payload = encode_job(job, record)
    back = decode_job(payload)
    for name in JobRecord.__slots__[:-1]:
        assert getattr(back, name) == getattr(job, name), name
    assert payload[back.message_at :] == record


def test_recurring_ids_and_bucket_ids_parse_back() -> None:
    assert parse_job_id("r-ff") == (RECURRING, 255)
    assert parse_job_id("abc-1") == (0xABC, 1)
    assert parse_job_id("nonsense") is None and parse_job_id("") is None


def test_a_scheduler_made_without_recover_still_fires_recurring_jobs() -> None:
    core = BrokerCore()
    queue, _ = core.vhosts["/"].declare_queue("q")
    now = [T0]
    scheduler = Scheduler(core, MemoryScheduleStore(), clock=lambda: now[0])  # as publish.py's fallback
    message = Message.build("", "q", b"r", persistent=False)
    scheduler.schedule("/", core.vhosts["/"].exchanges[""], message, ScheduleRequest("activemq", 100, 100, 1))
    now[0] = T0 + 1
    scheduler.wake()
    assert [queue.get(True).message.body for _ in range(2)] == [b"r", b"r"]
