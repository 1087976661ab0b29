"""The first schedule layout (storage/schedule_store.py ``LegacyScheduleStore``), kept to
migrate data directories written before the bucket layout: jobs come back with their due
times and messages, a rewrite interrupted by a crash leaves the later record, settled jobs
stay gone, a torn tail loses only the torn job.  (The migration itself:
test_schedule_buckets.py.)"""

from __future__ import annotations

from pathlib import Path

from baedal.core.message import Message
from baedal.storage.schedule_store import LegacyScheduleStore as ScheduleStore
from baedal.storage.syncer import Syncer

SEGMENT = 1 << 20


def _state(job_id: str, **extra: object) -> dict[str, object]:
    return {"id": job_id, "vhost": "/", "exchange": "", "routing_key": "q", "extra": [], "repeat_left": 0, **extra}


def _message(body: bytes, persistent: bool = False) -> Message:
    return Message.build("", "q", body, persistent=persistent, headers={"h": 1}, content_type="text/plain")


def test_jobs_come_back_with_due_time_state_and_the_message_as_published(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    store.write(_state("a", fired=2), _message(b"transient"), 1_800_000_000.5)
    store.write(_state("b"), _message(b"durable", persistent=True), 1_800_000_001.0)
    store.close(clean=False)  # as after kill -9: no clean marker

    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    jobs = list(store.recover())
    assert [(job.state["id"], job.due) for job in jobs] == [("a", 1_800_000_000.5), ("b", 1_800_000_001.0)]
    assert jobs[0].state["fired"] == 2
    assert all(job.message is None for job in jobs)  # recovery reads state only
    jobs = [store.read(job.position) for job in jobs]
    assert jobs[0].message.body == b"transient" and not jobs[0].message.persistent
    assert jobs[1].message.persistent
    assert jobs[1].message.headers == {"h": 1} and jobs[1].message.content_type == "text/plain"
    store.close()


def test_settled_jobs_stay_gone_and_the_later_of_two_records_wins(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    gone, _size = store.write(_state("gone"), _message(b"1"), 100.0)
    store.write(_state("twice", fired=0), _message(b"2"), 200.0)
    store.write(_state("twice", fired=1), _message(b"2"), 300.0)  # rewrite, old one not settled
    store.remove(gone)
    store.close(clean=False)

    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    [job] = store.read_all()  # what the migration reads: the later record of "twice"
    assert (job.state["id"], job.due, job.state["fired"]) == ("twice", 300.0, 1)
    assert job.message is not None and job.message.body == b"2"
    store.close()


def test_a_torn_tail_loses_only_the_torn_job(tmp_path: Path) -> None:
    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    store.write(_state("whole"), _message(b"w" * 100), 1.0)
    store.write(_state("torn"), _message(b"t" * 100), 2.0)
    store.close(clean=False)
    [segment] = sorted(tmp_path.glob("*.seg"))
    data = segment.read_bytes()
    segment.write_bytes(data[:-40])

    store = ScheduleStore(tmp_path, Syncer(), segment_bytes=SEGMENT)
    assert [job.state["id"] for job in store.recover()] == ["whole"]
    store.close()
