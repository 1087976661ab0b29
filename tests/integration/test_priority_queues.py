"""Priority queues (``x-max-priority``), up to 255 levels, in RabbitMQ's order and in
bounded resources.

The order tests run against RabbitMQ too (``BAEDAL_TEST_AMQP_URL``): highest priority
first, publish order within a priority, a priority above the maximum counts as the
maximum, no priority counts as 0, and a requeued message goes back to its place in its
priority.  The resource tests (Baedal only: they look at its process and data directory)
check that 255 levels cost no more files or descriptors than one, and that a durable
priority queue's order and count survive a restart.
"""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from pathlib import Path

import pika
import pytest

from baedal import Broker
from baedal_testing import wait_until

baedal_only = pytest.mark.skipif(
    os.environ.get("BAEDAL_TEST_AMQP_URL") is not None, reason="inspects the Baedal process and its data directory"
)


def publish(channel, queue: str, published: list[tuple[int, int | None]], durable: bool) -> None:
    for number, priority in published:
        channel.basic_publish(
            "",
            queue,
            f"{number}".encode(),
            pika.BasicProperties(priority=priority, delivery_mode=2 if durable else 1),
        )


def expected(published: list[tuple[int, int | None]], max_priority: int) -> list[bytes]:
    ranked = sorted(published, key=lambda item: (-min(item[1] or 0, max_priority), item[0]))
    return [f"{number}".encode() for number, _ in ranked]


def get_all(channel, queue: str) -> list[bytes]:
    out = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def many_priorities(count: int, seed: int = 11) -> list[tuple[int, int | None]]:
    rng = random.Random(seed)
    published: list[tuple[int, int | None]] = []
    for number in range(count):
        roll = rng.random()
        priority = None if roll < 0.1 else (255 if roll < 0.2 else rng.randrange(0, 256))
        published.append((number, priority))
    return published


@pytest.mark.parametrize("durable", [True, False], ids=["durable", "transient"])
def test_255_levels_deliver_highest_priority_first_and_fifo_within_a_priority(
    amqp_url: str, unique: Callable[[str], str], durable: bool
) -> None:
    queue = unique("prio")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()  # every message is enqueued once basic_publish returns
    channel.queue_declare(queue, durable=durable, arguments={"x-max-priority": 255})
    published = many_priorities(600)
    publish(channel, queue, published, durable)
    try:
        assert channel.queue_declare(queue, passive=True).method.message_count == 600
        assert get_all(channel, queue) == expected(published, 255)
    finally:
        channel.queue_delete(queue)
        connection.close()


def test_priorities_above_the_maximum_count_as_the_maximum(
    amqp_url: str, unique: Callable[[str], str]
) -> None:
    queue = unique("prio-cap")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, arguments={"x-max-priority": 5})
    published = list(enumerate([0, 9, 5, None, 255, 4, 6, 0, 5]))
    publish(channel, queue, published, durable=False)
    try:
        assert get_all(channel, queue) == expected(published, 5)
    finally:
        channel.queue_delete(queue)
        connection.close()


def test_a_requeued_message_goes_back_to_its_place_in_its_priority(
    amqp_url: str, unique: Callable[[str], str]
) -> None:
    queue = unique("prio-requeue")
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue, durable=True, arguments={"x-max-priority": 10})
    published = list(enumerate([1, 1, 1, 7, 7, 3]))  # order: 3 4 5 0 1 2
    publish(channel, queue, published, durable=True)
    try:
        tags = [channel.basic_get(queue)[0].delivery_tag for _ in range(4)]  # 3 4 5 0
        channel.basic_nack(tags[1], requeue=True)  # "4" (priority 7)
        channel.basic_nack(tags[3], requeue=True)  # "0" (priority 1)
        channel.basic_ack(tags[2])
        channel.basic_ack(tags[0])
        assert get_all(channel, queue) == [b"4", b"0", b"1", b"2"]
    finally:
        channel.queue_delete(queue)
        connection.close()


def _queue_files(data_dir: Path) -> list[Path]:
    """Every file and directory of queue stores, durable and transient."""
    return [path for top in ("queues", "transient") for path in (data_dir / top).rglob("*")]


@baedal_only
def _descriptors_under(directory: Path) -> int:
    """Descriptors this process holds on files or directories below ``directory`` (the
    process-wide count also moves with sockets of other tests sharing the process)."""
    prefix = str(directory)
    count = 0
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        count += target.startswith(prefix)
    return count


def test_255_levels_open_no_more_files_than_one_level(tmp_path: Path) -> None:
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path / "data") as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        usage = {}
        for max_priority in (1, 255):
            before_fds = _descriptors_under(tmp_path / "data")
            before_files = len(_queue_files(tmp_path / "data"))
            for durable in (True, False):
                queue = f"levels-{max_priority}-{durable}"
                channel.queue_declare(queue, durable=durable, arguments={"x-max-priority": max_priority})
                publish(channel, queue, [(n, n % 256) for n in range(512)], durable)
            usage[max_priority] = (
                _descriptors_under(tmp_path / "data") - before_fds,
                len(_queue_files(tmp_path / "data")) - before_files,
            )
        connection.close()
        vhost = broker.core.vhosts["/"]  # type: ignore[union-attr]
        assert vhost.queues["levels-255-True"].store.levels == 256
    # One level or 255: the same descriptors and files (one segment log per durable queue,
    # nothing on disk for a short transient one).
    print("descriptors and files for x-max-priority 1 and 255:", usage)
    assert usage[255] == usage[1], usage
    assert usage[255][1] <= 3, usage  # the queue directory, its segment, its ack file at most


@baedal_only
def test_durable_priority_queue_keeps_order_and_count_across_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    published = many_priorities(3000)  # deeper than the 1024-entry read-ahead
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("restart-prio", durable=True, arguments={"x-max-priority": 255})
        publish(channel, "restart-prio", published, durable=True)
        # Two messages are out with a consumer when the broker stops: they come back,
        # in place, flagged redelivered.
        held = [channel.basic_get("restart-prio")[0] for _ in range(2)]
        assert all(m is not None for m in held)
        store = broker.core.vhosts["/"].queues["restart-prio"].store  # type: ignore[union-attr]
        assert store._loaded_count <= 1024  # bodies past the read-ahead stay on disk
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        store = broker.core.vhosts["/"].queues["restart-prio"].store  # type: ignore[union-attr]
        assert store.ready_count == 3000
        assert store._loaded_count == 0  # recovery rebuilt the index, not the bodies
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        order = expected(published, 255)
        first = [channel.basic_get("restart-prio", auto_ack=True) for _ in range(3)]
        assert [m.redelivered for m, _p, _b in first] == [True, True, False]
        got = [body for _m, _p, body in first] + get_all(channel, "restart-prio")
        assert got == order
        wait_until(lambda: store._loaded_count <= 1024, what="index only after draining")
        connection.close()


@baedal_only
def test_per_level_stores_of_an_older_baedal_are_folded_into_one_log(tmp_path: Path) -> None:
    from baedal.core.message import Message
    from baedal.storage.engine import queue_directory_name
    from baedal.storage.queue_store import SegmentStore
    from baedal.storage.syncer import Syncer

    data_dir = tmp_path / "data"
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        connection.channel().queue_declare("old-prio", durable=True, arguments={"x-max-priority": 9})
        connection.close()
    # What Baedal wrote before one log per queue: a store per level in priority-N.
    directory = data_dir / "queues" / queue_directory_name("/", "old-prio")
    published = []
    syncer = Syncer()
    for level in (0, 4, 9):
        old = SegmentStore.open(directory / f"priority-{level}", syncer)
        for n in range(3):
            number = level * 10 + n
            old.append(Message("", "old-prio", f"{number}".encode(), True, level), None)
            published.append((number, level))
        syncer.sync_now()
        old.close()
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        assert get_all(connection.channel(), "old-prio") == expected(published, 9)
        connection.close()
    assert not list(directory.glob("priority-*"))
