"""The management API says when a queue's store has failed (a real full disk), and says
``running`` again once the store has recovered -- not a constant ``running``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from test_full_disk_broker import QUEUE, Publisher, fill_disk, fill_until_nacked, tiny_disk  # noqa: F401

from baedal import Broker
from baedal_testing import wait_until


@pytest.fixture
def broker(tiny_disk: Path) -> Iterator[Broker]:  # noqa: F811
    broker = Broker(
        host="127.0.0.1",
        port=0,
        http_port=0,
        data_dir=tiny_disk / "data",
        disk_free_limit=0,  # no alarm ahead of time: the write itself fails
        alarm_check_interval=0.02,
        segment_bytes=256 * 1024,
    ).start_in_thread()
    yield broker
    broker.stop_thread()


def _queue(broker: Broker) -> dict:
    return requests.get(f"{broker.http_url}/api/queues/%2F/{QUEUE}", auth=("guest", "guest"), timeout=10).json()


def test_queue_whose_store_failed_is_shown_failed_until_it_recovers(tiny_disk: Path, broker: Broker) -> None:  # noqa: F811
    filler = fill_disk(tiny_disk, leave_free=512 * 1024)
    publisher = Publisher(broker.amqp_url)
    try:
        fill_until_nacked(publisher)
        # The engine retries the store every second; the failed state lasts until then.
        info = wait_until(lambda: (q := _queue(broker))["state"] == "failed" and q, what="queue state failed", interval=0.005)
        assert info["storage_error"]
        filler.unlink()
        wait_until(lambda: _queue(broker)["state"] == "running", timeout=10, what="queue state running again")
        assert "storage_error" not in _queue(broker)
    finally:
        publisher.close()
