"""A data directory written by Baedal 0.1.0 (commit 61b0588) recovers with every message
and every property intact, and survives being written again in the new record format.

``tests/fixtures/data-0.1.0.tar.gz`` was made by 0.1.0 itself
(``tests/fixtures/upgrade_0_1_0.py`` says what it holds and how to remake it): its records
store AMQP property blocks, the layout before the neutral record (``storage/record.py``).
"""

from __future__ import annotations

import datetime
import sys
import tarfile
from pathlib import Path
from typing import Any

import pika
import pytest

from baedal import Broker

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fixtures"))
import upgrade_0_1_0 as fixture  # noqa: E402

pytestmark = pytest.mark.timeout(90)

ARCHIVE = Path(__file__).resolve().parents[1] / "fixtures" / "data-0.1.0.tar.gz"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    with tarfile.open(ARCHIVE) as archive:
        archive.extractall(tmp_path, filter="data")
    return tmp_path / "data"


def get_all(channel: Any, queue: str) -> list[tuple[bytes, Any]]:
    out = []
    while True:
        method, props, body = channel.basic_get(queue)
        if method is None:
            return out
        out.append((body, props))
        channel.basic_ack(method.delivery_tag)


def assert_properties(props: Any, expected: dict[str, Any]) -> None:
    for name in (
        "content_type", "content_encoding", "headers", "delivery_mode", "priority",
        "correlation_id", "reply_to", "expiration", "message_id", "timestamp", "type",
        "user_id", "app_id", "cluster_id",
    ):
        assert getattr(props, name) == expected.get(name), name


def check_props_queue(channel: Any, queue: str) -> None:
    got = get_all(channel, queue)
    assert [body for body, _ in got] == [body for body, _ in fixture.PROPS_MESSAGES]
    for (_body, props), (_b, expected) in zip(got, fixture.PROPS_MESSAGES, strict=True):
        assert_properties(props, expected)


def test_a_0_1_0_data_directory_recovers_every_message_and_property(data_dir: Path) -> None:
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        check_props_queue(channel, fixture.PROPS_QUEUE)

        by_priority = sorted(
            enumerate(fixture.PRIORITY_MESSAGES), key=lambda item: (-item[1][1], item[0])
        )
        got = get_all(channel, fixture.PRIORITY_QUEUE)
        assert [body for body, _ in got] == [body for _, (body, _p) in by_priority]
        assert [props.priority for _, props in got] == [p for _, (_b, p) in by_priority]
        assert all(props.delivery_mode == 2 for _, props in got)

        [(body, props)] = get_all(channel, fixture.DEAD_QUEUE)
        assert body == fixture.DEAD_BODY
        assert props.correlation_id == "dead-1" and props.delivery_mode == 2
        headers = props.headers
        for name, value in fixture.DEAD_HEADERS.items():
            assert headers[name] == value
        [death] = headers["x-death"]
        assert death["count"] == 1 and death["reason"] == "rejected"
        assert death["queue"] == fixture.DLX_SOURCE_QUEUE and death["exchange"] == ""
        assert death["routing-keys"] == [fixture.DLX_SOURCE_QUEUE]
        assert isinstance(death["time"], datetime.datetime)
        assert headers["x-first-death-reason"] == "rejected"
        assert headers["x-first-death-queue"] == fixture.DLX_SOURCE_QUEUE
        assert headers["x-first-death-exchange"] == ""
        assert channel.queue_declare(fixture.DLX_SOURCE_QUEUE, passive=True).method.message_count == 0
        connection.close()


def test_recovered_messages_rewritten_in_the_new_format_survive_another_restart(
    data_dir: Path,
) -> None:
    moved = "upgrade.rewritten"
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(moved, durable=True)
        # Read the old records and publish them again: now neutral, version-2 records.
        for body, props in get_all(channel, fixture.PROPS_QUEUE):
            channel.basic_publish("", moved, body, props)
        connection.close()
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        check_props_queue(channel, moved)
        # Untouched legacy records are still read on the second boot too.
        assert len(get_all(channel, fixture.PRIORITY_QUEUE)) == len(fixture.PRIORITY_MESSAGES)
        connection.close()
