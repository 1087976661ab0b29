"""A stream on a full disk: records batched per loop turn that could not be written
are nacked, never confirmed; every confirmed record is there after a restart.

The data directory is on a small tmpfs (as ``test_full_disk_broker.py``), with
``disk_free_limit=0`` so the alarm cannot see the full disk coming: the write itself
fails (at the syncer's flush or at an append) and the confirms that job covers become
nacks.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pika
import pika.exceptions
import pytest

from baedal import Broker

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="fills Baedal's disk"),
]

STREAM = "full-stream"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip() or result.returncode}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def _broker(data: Path) -> Broker:
    return Broker(
        host="127.0.0.1", port=0, data_dir=data, disk_free_limit=0, alarm_check_interval=0.02
    ).start_in_thread()


def test_a_full_disk_nacks_unwritten_stream_records_and_keeps_every_confirmed_one(
    tiny_disk: Path,
) -> None:
    data = tiny_disk / "data"
    broker = _broker(data)
    confirmed: list[bytes] = []
    nacked = 0
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.queue_declare(STREAM, durable=True, arguments={"x-queue-type": "stream"})
        channel.confirm_delivery()
        stat = os.statvfs(tiny_disk)
        filler = tiny_disk / "filler"
        with open(filler, "wb") as file:  # leave about 1 MiB
            file.write(b"\0" * max(stat.f_bavail * stat.f_frsize - 1024 * 1024, 0))
        for i in range(400):  # 400 x 8 KB: about 3 MiB, three times what is left
            body = b"%04d|" % i + b"x" * 8000
            try:
                channel.basic_publish("", STREAM, body, pika.BasicProperties(delivery_mode=2))
                confirmed.append(body)
            except pika.exceptions.NackError:
                nacked += 1
            except pika.exceptions.AMQPError:
                break  # blocked or closed once the alarm is up: stop publishing
        if connection.is_open:
            connection.close()
    finally:
        broker.stop_thread()
    assert confirmed, "nothing was confirmed before the disk filled"
    assert nacked or len(confirmed) < 400, "the disk never filled"
    filler.unlink()

    broker = _broker(data)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.basic_qos(prefetch_count=100)
        got: list[bytes] = []
        for method, _props, body in channel.consume(
            STREAM, arguments={"x-stream-offset": "first"}, inactivity_timeout=3
        ):
            if method is None:
                break
            got.append(body)
            channel.basic_ack(method.delivery_tag)
        connection.close()
    finally:
        broker.stop_thread()
    missing = set(confirmed) - set(got)
    assert not missing, f"{len(missing)} confirmed record(s) lost"
