"""A data directory whose schedule was written in the first layout (one segment log with
JSON job state, ``<data_dir>/scheduled/*.seg``) starts on the bucketed store: its jobs
are migrated at start-up, the due one is delivered, the far one is listed with its due
time, and the old segments are gone.  The old layout is written by its own writer
(``LegacyScheduleStore``: the store the previous release shipped, kept to read it)."""

from __future__ import annotations

import time
from pathlib import Path

import pika

from baedal import Broker
from baedal.core.message import Message
from baedal.storage.schedule_store import LegacyScheduleStore
from baedal.storage.syncer import Syncer
from baedal_testing import wait_until


def _state(job_id: str, now: float) -> dict[str, object]:
    return {
        "id": job_id, "vhost": "/", "exchange": "", "routing_key": "upgraded", "extra": [], "kind": "activemq",
        "delay": 0, "period": 0, "repeat": 0, "repeat_left": 0, "cron": None, "cron_next": None, "fired": 0,
        "created": now, "size": 4,
    }


def test_a_schedule_in_the_first_layout_is_migrated_at_start_up_and_fires(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:  # the durable queue the jobs target
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        connection.channel().queue_declare("upgraded", durable=True)
        connection.close()
        directory = tmp_path / "scheduled"
    for path in directory.iterdir():  # a data directory from before: no bucket layout yet
        if path.is_dir():
            for child in path.iterdir():
                child.unlink()
            path.rmdir()
    now = time.time()
    legacy = LegacyScheduleStore(directory, Syncer(), segment_bytes=1 << 20)
    message = Message.build("", "upgraded", b"soon", persistent=True, headers={"scheduledJobId": "soon"})
    legacy.write(_state("soon", now), message, now + 0.5)
    message = Message.build("", "upgraded", b"late", persistent=True, headers={"scheduledJobId": "late"})
    legacy.write(_state("late", now), message, now + 3600)
    legacy.close(clean=False)

    with Broker(port=0, data_dir=tmp_path) as broker:
        assert not list(directory.glob("*.seg"))
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        got: list[bytes] = []

        def arrived() -> bool:
            _method, _properties, body = channel.basic_get("upgraded", auto_ack=True)
            if body is not None:
                got.append(body)
            return bool(got)

        wait_until(arrived, 10, "the migrated due job delivered")
        assert got == [b"soon"]
        [job] = broker.call(lambda: broker.core.scheduler.list("/", 0, 10)[1])
        assert job["due"] == round((now + 3600) * 1000) and job["routing_key"] == "upgraded"
        connection.close()
