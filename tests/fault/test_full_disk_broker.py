"""A whole broker on a 4 MiB tmpfs: a full disk never costs a confirmed message.

The storage-level test (``test_full_disk.py``) injects ENOSPC into the write seam; here
the disk really fills.  The broker runs in-process (``baedal.Broker`` in thread mode)
with its data directory on a tmpfs mounted for the test (we run as root; the tests skip
with the reason when mounting is not possible).  A filler file we create takes most of
the space, so freeing space is one ``unlink``.

Two ways to meet a full disk (``storage/engine.py``):

* the free-space alarm: free bytes under ``disk_free_limit`` raise the ``disk`` alarm,
  publishers get ``connection.blocked`` and are no longer read; consumers go on;
* a failed write (``disk_free_limit=0``, so the alarm cannot see it coming): the append
  raises ENOSPC, the publish is nacked, the alarm goes up, and ``_retry_failed`` resets
  the store once there is room again.

Either way: every confirmed message is readable afterwards (also after a restart), and
once space is back the broker recovers by itself: new publishes are confirmed.
"""

from __future__ import annotations

import os
import queue
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from baedal import Broker
from baedal_testing import wait_until

QUEUE = "full-disk"
BODY_PADDING = b"x" * 8000
TMPFS_SIZE = "8m"


@pytest.fixture
def tiny_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mount_point = tmp_path / "tiny-disk"
    mount_point.mkdir()
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_SIZE}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        pytest.skip(
            f"cannot mount a {TMPFS_SIZE} tmpfs: {result.stderr.strip() or result.returncode}"
        )
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


@pytest.fixture
def start_broker(tiny_disk: Path) -> Iterator[Callable[..., Broker]]:
    """start_broker(disk_free_limit=N) -> a broker whose data directory is on the tiny disk."""
    running: list[Broker] = []

    def start(disk_free_limit: int, segment_bytes: int = 256 * 1024) -> Broker:
        broker = Broker(
            host="127.0.0.1",
            port=0,
            data_dir=tiny_disk / "data",
            disk_free_limit=disk_free_limit,
            alarm_check_interval=0.02,
            segment_bytes=segment_bytes,
        ).start_in_thread()
        running.append(broker)
        return broker

    yield start
    for broker in running:
        broker.stop_thread()


def free_bytes(path: Path) -> int:
    stat = os.statvfs(path)
    return stat.f_bavail * stat.f_frsize


def fill_disk(mount_point: Path, leave_free: int) -> Path:
    """A filler file that leaves about ``leave_free`` bytes; unlink it to free the space."""
    filler = mount_point / "filler"
    with open(filler, "wb") as file:
        file.write(b"\0" * max(0, free_bytes(mount_point) - leave_free))
    return filler


class Publisher(threading.Thread):
    """A pika publisher with confirms in its own thread, recording every outcome.

    A publish that is on the wire when the broker raises its alarm is not read (nor
    confirmed) until the alarm clears, so a blocking publish must not run on the test's
    thread.  The test sends commands and watches ``blocked``/``nacked``/``confirmed``.
    """

    def __init__(self, url: str) -> None:
        super().__init__(name="publisher", daemon=True)
        self.url = url
        self.blocked = False
        self.times_blocked = 0
        self.confirmed: list[int] = []
        self.nacked: list[int] = []
        self.halt = threading.Event()  # stop a publish_until_refused loop
        self.error: BaseException | None = None
        self._commands: queue.Queue[tuple[str, int, threading.Event]] = queue.Queue()
        self._next_id = 0
        self._connected = threading.Event()
        self.start()
        assert self._connected.wait(10), "publisher could not connect"
        if self.error is not None:
            raise self.error

    def run(self) -> None:
        try:
            connection = pika.BlockingConnection(pika.URLParameters(self.url))
            # On the underlying SelectConnection: BlockingConnection only dispatches
            # connection.blocked in process_data_events, not while basic_publish waits
            # for a confirm, and a publish in flight when the alarm goes up waits until
            # the alarm clears.
            connection._impl.add_on_connection_blocked_callback(self._on_blocked)
            connection._impl.add_on_connection_unblocked_callback(self._on_unblocked)
            channel = connection.channel()
            channel.queue_declare(QUEUE, durable=True)
            channel.confirm_delivery()
        except BaseException as exc:
            self.error = exc
            self._connected.set()
            return
        self._connected.set()
        done: threading.Event | None = None
        try:
            while True:
                try:
                    command, count, done = self._commands.get_nowait()
                except queue.Empty:
                    connection.process_data_events(0.02)
                    continue
                if command == "stop":
                    connection.close()
                    return
                if command == "until_refused":
                    for _ in range(count):
                        if self.halt.is_set() or not self._publish(channel):
                            break
                        connection.process_data_events(0)
                        if self.blocked:
                            break
                else:
                    for _ in range(count):
                        self._publish(channel)
                done.set()
                done = None
        except BaseException as exc:  # reported to the test by wait()
            self.error = exc
        finally:
            if done is not None:
                done.set()

    def _publish(self, channel: Any) -> bool:
        message_id = self._next_id
        self._next_id += 1
        body = f"{message_id}|".encode() + BODY_PADDING
        try:
            channel.basic_publish("", QUEUE, body, pika.BasicProperties(delivery_mode=2))
        except pika.exceptions.NackError:
            self.nacked.append(message_id)
            return False
        self.confirmed.append(message_id)
        return True

    def _on_blocked(self, *_: object) -> None:
        self.blocked = True
        self.times_blocked += 1

    def _on_unblocked(self, *_: object) -> None:
        self.blocked = False

    def send(self, command: str, count: int = 0) -> threading.Event:
        done = threading.Event()
        self._commands.put((command, count, done))
        return done

    def publish(self, count: int, timeout: float = 10.0) -> None:
        """``count`` publishes, waiting for each one's confirm or nack."""
        self.wait(self.send("publish", count), timeout)

    def wait(self, done: threading.Event, timeout: float = 10.0) -> None:
        assert done.wait(timeout), (
            f"publisher command not done in {timeout}s (blocked={self.blocked})"
        )
        if self.error is not None:
            raise self.error

    def close(self) -> None:
        self.halt.set()
        self.send("stop")
        self.join(10)


def drain(url: str) -> list[int]:
    """Every message id in the queue, in order (acked)."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        ids = []
        while True:
            method, _props, body = channel.basic_get(QUEUE, auto_ack=True)
            if method is None:
                return ids
            ids.append(int(body.split(b"|", 1)[0]))


def consume_some(url: str, count: int) -> list[int]:
    """A consumer on its own connection takes and acks ``count`` messages."""
    with pika.BlockingConnection(pika.URLParameters(url)) as connection:
        channel = connection.channel()
        ids = []
        for method, _props, body in channel.consume(QUEUE, inactivity_timeout=5):
            assert method is not None, (
                f"consumer starved after {len(ids)} messages while publishers are blocked"
            )
            ids.append(int(body.split(b"|", 1)[0]))
            channel.basic_ack(method.delivery_tag)
            if len(ids) == count:
                break
        channel.cancel()
        return ids


def publish_until_confirmed(publisher: Publisher, timeout: float = 10.0) -> None:
    """After space is freed: the broker must recover by itself within ``timeout``."""
    publisher.halt.clear()
    deadline = time.monotonic() + timeout
    while True:
        before = len(publisher.confirmed)
        publisher.publish(1)
        if len(publisher.confirmed) > before:
            return
        assert time.monotonic() < deadline, f"no publish confirmed {timeout}s after space was freed"
        time.sleep(0.1)


def fill_until_refused(publisher: Publisher, timeout: float = 30.0) -> None:
    """Publish until the broker nacks or blocks; stop there (an in-flight publish may hang)."""
    publisher.send("until_refused", 2000)
    wait_until(
        lambda: publisher.blocked or publisher.nacked or publisher.error,
        timeout,
        f"publisher refused on a full {TMPFS_SIZE} disk",
    )
    publisher.halt.set()
    if publisher.error is not None:
        raise publisher.error


def fill_until_nacked(publisher: Publisher) -> None:
    publisher.send("until_refused", 2000)
    wait_until(lambda: publisher.nacked or publisher.error, 30, "a nack on a full disk")
    publisher.halt.set()
    assert publisher.error is None, publisher.error


def test_disk_alarm_blocks_publishers_serves_consumers_and_clears_when_space_is_freed(
    tiny_disk: Path, start_broker: Callable[..., Broker]
) -> None:
    # 2 MB to go before the alarm and 2 MB more before ENOSPC: at tmpfs speed (~25 MB/s
    # of 8 KB publishes) the 20 ms free-space poll sees the limit long before the disk is full.
    broker = start_broker(disk_free_limit=2 * 1024 * 1024)
    filler = fill_disk(tiny_disk, leave_free=4 * 1024 * 1024)
    publisher = Publisher(broker.amqp_url)

    fill_until_refused(publisher)
    assert publisher.blocked, f"nacked {publisher.nacked} before the alarm blocked the publisher"
    assert not publisher.nacked
    assert "disk" in broker.call(lambda: set(broker.core.alarms))
    confirmed_while_full = list(publisher.confirmed)

    consumed = consume_some(broker.amqp_url, 10)
    assert consumed == confirmed_while_full[:10]
    time.sleep(0.2)  # ten alarm checks
    assert publisher.blocked, "consuming 80 KB must not lift an alarm that is 2 MB deep"

    filler.unlink()
    wait_until(lambda: not publisher.blocked, 10, "connection.unblocked after the space was freed")
    assert "disk" not in broker.call(lambda: set(broker.core.alarms))
    publisher.halt.clear()
    before = len(publisher.confirmed)
    publisher.publish(20)
    assert len(publisher.confirmed) == before + 20, f"nacked after recovery: {publisher.nacked}"
    publisher.close()

    remaining = drain(broker.amqp_url)
    lost = sorted(set(publisher.confirmed) - set(consumed) - set(remaining))
    assert not lost, f"confirmed messages lost: {lost[:20]}"
    assert remaining[-20:] == publisher.confirmed[-20:]


def test_enospc_nacks_the_publish_and_every_confirmed_message_survives_a_restart(
    tiny_disk: Path, start_broker: Callable[..., Broker]
) -> None:
    broker = start_broker(disk_free_limit=0)  # no early warning: the write itself fails
    filler = fill_disk(tiny_disk, leave_free=1024 * 1024)
    publisher = Publisher(broker.amqp_url)

    fill_until_nacked(publisher)
    assert free_bytes(tiny_disk) < 64 * 1024

    consumed = consume_some(broker.amqp_url, 5)
    assert consumed == publisher.confirmed[:5]

    filler.unlink()
    publish_until_confirmed(publisher)
    before = len(publisher.confirmed)
    publisher.publish(20)
    assert len(publisher.confirmed) == before + 20, f"nacked after recovery: {publisher.nacked}"
    publisher.close()

    broker.stop_thread()
    broker = start_broker(disk_free_limit=0)
    remaining = drain(broker.amqp_url)
    lost = sorted(set(publisher.confirmed) - set(consumed) - set(remaining))
    assert not lost, f"confirmed messages lost: {lost[:20]}"
    assert len(remaining) == len(set(remaining)), "a message came back twice"


def test_first_publish_after_space_is_freed_is_confirmed(
    tiny_disk: Path, start_broker: Callable[..., Broker]
) -> None:
    # One 8 MB segment: the disk fills inside it, so no segment roll-over (whose header
    # write fails in append, the path that does reach write_failed) can get there first.
    broker = start_broker(disk_free_limit=0, segment_bytes=8 * 1024 * 1024)
    filler = fill_disk(tiny_disk, leave_free=512 * 1024)
    publisher = Publisher(broker.amqp_url)
    fill_until_nacked(publisher)
    failed_stores = broker.call(lambda: len(broker.core.storage.failed_stores))

    filler.unlink()
    # StorageEngine retries failed stores every second; wait for that retry to succeed.
    wait_until(
        lambda: broker.call(
            lambda: not broker.core.storage.failed_stores and "disk" not in broker.core.alarms
        ),
        10,
        "the failed store recovered after space was freed",
    )
    publisher.halt.clear()
    publisher.publish(1)
    nacked = list(publisher.nacked)
    publisher.close()
    assert len(nacked) == 1, (
        f"nacked {nacked} although the store had recovered "
        f"(failed stores known to the engine after the first nack: {failed_stores})"
    )


def test_failed_write_keeps_the_disk_alarm_until_the_store_recovers(
    tiny_disk: Path, start_broker: Callable[..., Broker]
) -> None:
    broker = start_broker(disk_free_limit=0)
    fill_disk(tiny_disk, leave_free=512 * 1024)
    publisher = Publisher(broker.amqp_url)
    fill_until_nacked(publisher)
    publisher.halt.clear()
    publisher.publish(1)  # its append meets the sticky failure: write_failed, alarm up

    def state() -> tuple[int, set[str]]:
        return len(broker.core.storage.failed_stores), set(broker.core.alarms)

    # Several alarm checks (every 50 ms) pass, but not the first store reset (after 1 s).
    samples = []
    for _ in range(20):
        samples.append(broker.call(state))
        time.sleep(0.02)
    publisher.close()
    assert samples[0][0], "the failed store is not known to the engine"
    unguarded = [alarms for failed, alarms in samples if failed and "disk" not in alarms]
    assert not unguarded, f"{len(unguarded)}/{len(samples)} samples: store failed, no disk alarm"
