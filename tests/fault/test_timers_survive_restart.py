"""Message TTL, per-message expiration and x-expires keep working across a restart,
with no client touching the queues afterwards (issue 9 item 5).

Deadlines are persisted as wall-clock time, so a TTL + dead-letter "delay queue" keeps
delivering after a reboot, and a deadline that passed while the broker was down is
honoured right at recovery.  RabbitMQ 3.10.8 (checked on a node restarted with
``rabbitmqctl stop_app``/``start_app``) behaves the same: messages published with a
12 s expiration, node down from 5.3 s to 11.4 s, reached the dead-letter queue 12.0 s
after publishing; a durable queue with ``x-expires`` 15 s, idle for 15 s before the
restart, was deleted about 15 s after the node started again (its idle lease restarts at
recovery).  These tests restart Baedal itself, so they do not run against RabbitMQ.
"""

from __future__ import annotations

import os
import re
import signal
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pika
import pytest

from baedal import Broker
from baedal.core.message import Message
from baedal.storage import record
from baedal.storage.queue_store import decode_record, encode_record
from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(90)

PERSISTENT = 2


def _channel(broker: Broker) -> tuple[pika.BlockingConnection, Any]:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    return connection, channel


def _declare_delay_queue(channel: Any, source: str, dead: str, ttl_ms: int | None) -> None:
    channel.queue_declare(dead, durable=True)
    arguments: dict[str, Any] = {"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dead}
    if ttl_ms is not None:
        arguments["x-message-ttl"] = ttl_ms
    channel.queue_declare(source, durable=True, arguments=arguments)


def _ready(broker: Broker, queue: str) -> int:
    """Ready count read inside the broker (no AMQP client touches the queue)."""
    return broker.call(lambda: broker.core.vhosts["/"].queues[queue].message_count)


def _drain(broker: Broker, queue: str) -> list[tuple[bytes, Any]]:
    connection, channel = _channel(broker)
    got = []
    while True:
        method, properties, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            break
        got.append((body, properties.headers))
    connection.close()
    return got


def test_per_message_expiration_dead_letters_on_time_after_restart(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection, channel = _channel(broker)
        _declare_delay_queue(channel, "delayed", "due", ttl_ms=None)
        published_at = time.time()
        for i in range(5):
            channel.basic_publish(
                "",
                "delayed",
                f"m{i}".encode(),
                pika.BasicProperties(delivery_mode=PERSISTENT, expiration="4000"),
            )
        connection.close()

    with Broker(port=0, data_dir=tmp_path) as broker:
        assert _ready(broker, "delayed") == 5  # still waiting: not expired early
        wait_until(lambda: _ready(broker, "due") == 5, timeout=10, what="dead-lettered after restart")
        arrived = time.time()
        assert arrived - published_at >= 4.0  # the deadline held across the restart
        assert _ready(broker, "delayed") == 0
        got = _drain(broker, "due")
        assert [body for body, _ in got] == [b"m0", b"m1", b"m2", b"m3", b"m4"]
        for _, headers in got:
            assert headers["x-death"][0]["reason"] == "expired"
            assert headers["x-death"][0]["queue"] == "delayed"
            assert headers["x-death"][0]["original-expiration"] == "4000"


def test_ttl_delay_queue_keeps_delivering_to_the_dead_letter_queue_after_restart(
    tmp_path: Path,
) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection, channel = _channel(broker)
        _declare_delay_queue(channel, "retry.later", "retry.now", ttl_ms=1500)
        for i in range(3):
            channel.basic_publish(
                "", "retry.later", f"before-{i}".encode(), pika.BasicProperties(delivery_mode=PERSISTENT)
            )
        connection.close()

    with Broker(port=0, data_dir=tmp_path) as broker:
        wait_until(lambda: _ready(broker, "retry.now") == 3, timeout=10, what="pre-restart batch")
        # The delay queue still works for new messages, and hands them over in order.
        connection, channel = _channel(broker)
        for i in range(3):
            channel.basic_publish(
                "", "retry.later", f"after-{i}".encode(), pika.BasicProperties(delivery_mode=PERSISTENT)
            )
        connection.close()
        wait_until(lambda: _ready(broker, "retry.now") == 6, timeout=10, what="post-restart batch")
        got = [body for body, _ in _drain(broker, "retry.now")]
        assert got == [b"before-0", b"before-1", b"before-2", b"after-0", b"after-1", b"after-2"]


def test_queue_with_x_expires_is_deleted_after_restart_without_a_client(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection, channel = _channel(broker)
        channel.queue_declare("lease", durable=True, arguments={"x-expires": 2000})
        channel.queue_declare("keeper", durable=True)
        connection.close()

    def exists(broker: Broker, name: str) -> bool:
        return broker.call(lambda: name in broker.core.vhosts["/"].queues)

    started = time.monotonic()  # before recovery arms the lease
    with Broker(port=0, data_dir=tmp_path) as broker:
        # As RabbitMQ: the idle lease restarts when the queue is recovered.
        assert exists(broker, "lease")
        wait_until(lambda: not exists(broker, "lease"), timeout=10, what="x-expires after restart")
        assert time.monotonic() - started >= 2.0
        assert exists(broker, "keeper")

    with Broker(port=0, data_dir=tmp_path) as broker:  # the deletion was persisted
        assert not exists(broker, "lease")
        assert exists(broker, "keeper")


def test_deadline_passed_while_down_is_dead_lettered_at_recovery_in_order(
    tmp_path: Path,
) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection, channel = _channel(broker)
        _declare_delay_queue(channel, "overdue", "late", ttl_ms=None)
        for i in range(4):
            channel.basic_publish(
                "",
                "overdue",
                f"o{i}".encode(),
                pika.BasicProperties(delivery_mode=PERSISTENT, expiration="5000"),
            )
        deadline = time.time() + 5.0
        connection.close()
    # The broker is down past every deadline.
    wait_until(lambda: time.time() > deadline + 0.2, timeout=10, what="deadline passes")

    with Broker(port=0, data_dir=tmp_path) as broker:
        # Expired at once on recovery: well before a TTL restarted at recovery (5 s) ends.
        wait_until(lambda: _ready(broker, "late") == 4, timeout=3, what="expired at recovery")
        assert _ready(broker, "overdue") == 0
        got = _drain(broker, "late")
        assert [body for body, _ in got] == [b"o0", b"o1", b"o2", b"o3"]
        assert all(headers["x-death"][0]["reason"] == "expired" for _, headers in got)


def test_unexpired_messages_behind_the_overdue_ones_keep_their_own_deadline(
    tmp_path: Path,
) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection, channel = _channel(broker)
        _declare_delay_queue(channel, "mixed", "mixed.dead", ttl_ms=None)
        channel.basic_publish(
            "", "mixed", b"soon", pika.BasicProperties(delivery_mode=PERSISTENT, expiration="500")
        )
        channel.basic_publish(
            "", "mixed", b"later", pika.BasicProperties(delivery_mode=PERSISTENT, expiration="60000")
        )
        soon_deadline = time.time() + 0.5
        connection.close()
    # down past the first deadline only
    wait_until(lambda: time.time() > soon_deadline + 0.1, timeout=5, what="first deadline")

    with Broker(port=0, data_dir=tmp_path) as broker:
        wait_until(lambda: _ready(broker, "mixed.dead") == 1, timeout=5, what="overdue one")
        assert _ready(broker, "mixed") == 1  # 'later' is not due for a minute
        assert [body for body, _ in _drain(broker, "mixed.dead")] == [b"soon"]


# --- the record format: deadlines are wall-clock, older records are re-based -----------


# The record layout before the neutral record (Baedal 0.1.0 .. issue 9), see storage/record.py.
_LEGACY_META = struct.Struct("<BBHHIQdd")


def _legacy(message: Message, monotonic_deadline: float) -> bytes:
    """``message`` as the code before wall-clock deadlines wrote it (no properties)."""
    flags = (
        (1 if message.persistent else 0)
        | (0 if message.expiration_ms is None else 2)
        | 4  # a deadline, on the event loop's monotonic clock (no wall-clock flag 8)
    )
    meta = _LEGACY_META.pack(
        flags, message.priority, 0, len(message.routing_key), 2,
        message.expiration_ms or 0, 0.0, monotonic_deadline,
    )
    return meta + message.routing_key.encode() + b"\x00\x00" + message.body


def test_records_store_wall_clock_deadlines() -> None:
    deadline = time.time() + 30
    payload = encode_record(Message("", "q", b"x"), deadline)
    message, expires_at = decode_record(payload)
    assert expires_at == deadline
    version, flags = struct.unpack_from("<BB", payload)
    assert version == record.VERSION and flags & record.FLAG_EXPIRES_AT


def test_legacy_record_deadline_is_rebased_on_the_same_boot() -> None:
    message = Message("", "q", b"x", True, 0, 10_000)
    payload = _legacy(message, time.monotonic() + 4.0)
    _message, expires_at = decode_record(payload)
    assert expires_at is not None
    assert abs(expires_at - (time.time() + 4.0)) < 0.5


def test_legacy_record_from_another_boot_gets_its_ttl_again() -> None:
    # A deadline further away than the TTL can only come from another boot's clock.
    message = Message("", "q", b"x", True)
    payload = _legacy(message, time.monotonic() + 1e6)
    _message, expires_at = decode_record(payload, queue_ttl_ms=2000)
    assert expires_at is not None
    assert abs(expires_at - (time.time() + 2.0)) < 0.5


def test_legacy_record_already_past_expires_now() -> None:
    message = Message("", "q", b"x", True, 0, 10_000)
    payload = _legacy(message, time.monotonic() - 5.0)
    _message, expires_at = decode_record(payload)
    assert expires_at is not None
    assert expires_at <= time.time()


# --- after a crash: the broker process is killed (SIGKILL), not shut down ------------------


class _ServerProcess:
    """``baedal serve`` in a subprocess on a free port."""

    def __init__(self, data_dir: Path) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        self.process = subprocess.Popen(
            [sys.executable, "-m", "baedal", "serve", "--port", "0", "--http-port", "off",
             "--data-dir", str(data_dir), "--log-level", "warning"],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            env=env,
            text=True,
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        match = re.search(r"amqp://[^:]+:(\d+)", line)
        assert match, f"no listening line from baedal serve: {line!r}"
        self.url = f"amqp://guest:guest@127.0.0.1:{match.group(1)}/"

    def kill(self) -> None:
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(10)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


def test_delay_queue_keeps_delivering_after_the_broker_is_killed(tmp_path: Path) -> None:
    server = _ServerProcess(tmp_path)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(server.url))
        channel = connection.channel()
        channel.confirm_delivery()
        _declare_delay_queue(channel, "crash.delay", "crash.due", ttl_ms=2000)
        published_at = time.time()  # before the first publish: every deadline is later
        for i in range(5):
            channel.basic_publish(
                "", "crash.delay", f"c{i}".encode(), pika.BasicProperties(delivery_mode=PERSISTENT)
            )
        connection.close()
    finally:
        server.kill()

    server = _ServerProcess(tmp_path)
    try:
        connection = pika.BlockingConnection(pika.URLParameters(server.url))
        channel = connection.channel()

        def due() -> int:
            # A passive declare of the dead-letter queue only: the delay queue is untouched.
            return channel.queue_declare("crash.due", durable=True, passive=True).method.message_count

        wait_until(lambda: due() == 5, timeout=15, what="dead-lettered after the crash")
        assert time.time() - published_at >= 2.0
        got = []
        while True:
            method, _props, body = channel.basic_get("crash.due", auto_ack=True)
            if method is None:
                break
            got.append(body)
        assert got == [b"c0", b"c1", b"c2", b"c3", b"c4"]
        connection.close()
    finally:
        server.stop()


def test_priority_delay_queue_dead_letters_after_restart(tmp_path: Path) -> None:
    """A durable priority queue keeps one log and an in-memory index rebuilt at start-up;
    its recovered deadlines must arm the expiry timer too (found when merging the
    one-log priority store with wall-clock deadlines)."""
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection, channel = _channel(broker)
        channel.queue_declare("prio.due", durable=True)
        channel.queue_declare(
            "prio.delayed",
            durable=True,
            arguments={
                "x-max-priority": 10,
                "x-message-ttl": 2000,
                "x-dead-letter-exchange": "",
                "x-dead-letter-routing-key": "prio.due",
            },
        )
        for i in range(4):
            channel.basic_publish(
                "",
                "prio.delayed",
                f"p{i}".encode(),
                pika.BasicProperties(delivery_mode=PERSISTENT, priority=i),
            )
        connection.close()

    with Broker(port=0, data_dir=tmp_path) as broker:
        wait_until(lambda: _ready(broker, "prio.due") == 4, timeout=10, what="dead-lettered after restart")
        assert _ready(broker, "prio.delayed") == 0
        got = _drain(broker, "prio.due")
        assert sorted(body for body, _ in got) == [b"p0", b"p1", b"p2", b"p3"]
        assert all(headers["x-death"][0]["reason"] == "expired" for _, headers in got)
