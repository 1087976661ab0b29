"""Corruption inside a stream segment, not only at its tail: what a real broker does.

A broker subprocess gets a stream of several 64 KiB segments, is killed with SIGKILL,
and bytes are flipped inside a record of a batch on disk (the length fields stay intact,
so only the CRC can tell).  Two places, two behaviours; both follow Kafka:

* **In the part of a segment that recovery re-validates** (the tail after its last index
  entry; here the last batch of a sealed segment).  Recovery CRC-checks it, truncates the
  segment at the damaged batch, removes every later segment and reports both in the
  broker's log.  Every batch before the damage is kept and served; the records after it
  are gone, and new publishes continue at the truncated offset.  That is Kafka's
  ``LogLoader``/``LogSegment.recover`` rule: at the first invalid batch the log is cut and
  the following segments deleted, because once one batch is bad neither the framing nor
  the offsets after it can be trusted, and a stream must stay dense (a reader never
  sees a hole in offsets).
* **In the middle of a sealed segment** (before its last index entry).  Recovery does
  not look there: re-reading every byte of every segment at start-up would make opening
  a 10 GB stream cost a 10 GB scan, and Kafka also re-validates only what is above its
  recovery point.  Nothing on disk is changed.  The damage surfaces when a reader
  reaches it: every read checks the batch CRC, so a reader from ``first`` gets every
  record before the damaged batch, then stops there (the broker logs the damaged batch,
  with the stream and the file) instead of delivering wrong data or skipping silently;
  Kafka's consumer likewise stops with a CorruptRecordException at that offset.  A reader
  started after the damaged batch reads the rest, other streams are untouched, and
  publishing to the damaged stream goes on.

These restart Baedal itself, so they do not run against RabbitMQ.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

from baedal.storage.engine import queue_directory_name
from baedal.storage.record_batch import BATCH_HEADER_SIZE, BATCH_OVERHEAD, decode_header
from baedal_testing import wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(
        bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="restarts Baedal itself"
    ),
]

ARGUMENTS = {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 64 * 1024}
COUNT = 700
PADDING = b"p" * 300


def _load_soak_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak_kill9.py"
    spec = importlib.util.spec_from_file_location("soak_kill9", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak_kill9 = _load_soak_module()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Any]:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    process = soak_kill9.BrokerProcess(data_dir, tmp_path / "broker.log")
    process.start()
    try:
        yield process
    finally:
        process.kill()


def publish(port: int, name: str, bodies: list[bytes]) -> None:
    """Declare ``name`` as a stream and publish ``bodies`` with confirms."""
    with contextlib.closing(soak_kill9.connect(port)) as conn:
        channel = conn.channel()
        channel.queue_declare(name, durable=True, arguments=ARGUMENTS)
        channel.confirm_delivery()
        for body in bodies:
            channel.basic_publish("", name, body, pika.BasicProperties(delivery_mode=2))


def body(i: int) -> bytes:
    return f"m{i}|".encode() + PADDING


def read(
    port: int,
    name: str,
    offset: Any,
    expected: int,
    settle: float = 1.0,
    during: Callable[[], None] | None = None,
) -> list[tuple[int, bytes]]:
    """(offset, body) of what one consumer from ``offset`` gets: ``expected`` records, then
    ``settle`` seconds more to see that nothing else arrives (``during`` runs first, with
    the consumer still open)."""
    with contextlib.closing(soak_kill9.connect(port)) as conn:
        channel = conn.channel()
        channel.basic_qos(prefetch_count=100)
        got: list[tuple[int, bytes]] = []

        def on_message(ch: Any, method: Any, properties: Any, payload: bytes) -> None:
            got.append((properties.headers["x-stream-offset"], payload))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(name, on_message, arguments={"x-stream-offset": offset})
        wait_until(
            lambda: conn.process_data_events(0.02) or len(got) >= expected,
            timeout=30,
            what=f"{expected} records from {offset!r}",
        )
        if during is not None:
            during()
        until = time.monotonic() + settle
        while time.monotonic() < until:
            conn.process_data_events(0.05)
        return got


def batches(path: Path) -> list[tuple[int, int, int, int]]:
    """(position, size, base offset, last offset) of every batch in a segment file."""
    data = path.read_bytes()
    found, position = [], 0
    while position < len(data):
        fields = decode_header(data, position)
        size = fields[1] + BATCH_OVERHEAD
        found.append((position, size, fields[0], fields[0] + fields[6]))
        position += size
    return found


def flip_inside(path: Path, position: int) -> None:
    """Flip 8 bytes inside the records of the batch at ``position`` (lengths untouched)."""
    at = position + BATCH_HEADER_SIZE + 12
    with open(path, "r+b") as file:
        file.seek(at)
        damaged = bytes(b ^ 0xFF for b in file.read(8))
        file.seek(at)
        file.write(damaged)


def stream_dir(broker: Any, name: str) -> Path:
    return broker.data_dir / "streams" / queue_directory_name("/", name)


def test_damage_in_the_middle_of_a_sealed_segment_stops_readers_there_and_nothing_else(
    broker: Any,
) -> None:
    name, other = "mid-damage", "mid-damage-neighbour"
    publish(broker.port, name, [body(i) for i in range(COUNT)])
    publish(broker.port, other, [body(i) for i in range(COUNT)])
    broker.kill()

    segments = sorted(stream_dir(broker, name).glob("*.log"))
    assert len(segments) >= 3, "the test wants sealed segments before the active one"
    victim_file = segments[0]
    in_file = batches(victim_file)
    index_entries = (victim_file.with_suffix(".index")).stat().st_size // 8
    assert index_entries >= 2, "the middle must lie before the segment's last index entry"
    position, _size, victim_base, victim_last = in_file[len(in_file) // 2]
    before_bytes = {p.name: p.read_bytes() for p in stream_dir(broker, name).iterdir()}
    flip_inside(victim_file, position)
    damaged_bytes = victim_file.read_bytes()

    broker.start()
    # Nothing was cut or removed at start-up: the damage is below the re-validated tail.
    log_text = broker.log_path.read_text(errors="replace")
    assert f"stream '{name}'" not in log_text
    assert sorted(p.name for p in stream_dir(broker, name).iterdir()) == sorted(before_bytes)

    # A reader from first: every record before the damaged batch, in order, then nothing,
    # even while more is published (each publish retries the stuck reader).
    extra = [b"while-stuck-%d" % i for i in range(20)]
    got = read(
        broker.port, name, "first", victim_base, during=lambda: publish(broker.port, name, extra)
    )
    assert [offset for offset, _b in got] == list(range(victim_base))
    assert [payload for _o, payload in got] == [body(i) for i in range(victim_base)]
    report = [
        line
        for line in broker.log_path.read_text(errors="replace").splitlines()
        if "damaged batch" in line
    ]
    # Reported once, with the stream and the file, although retried on every publish.
    assert len(report) == 1, report
    assert name in report[0] and victim_file.name in report[0] and "CRC" in report[0]

    # A reader started after the damaged batch gets all the rest, the neighbour stream is
    # whole, and publishing to the damaged stream continues at the next offset.
    after = victim_last + 1
    got = read(broker.port, name, after, COUNT + len(extra) - after)
    assert got == [(i, body(i)) for i in range(after, COUNT)] + [
        (COUNT + i, payload) for i, payload in enumerate(extra)
    ]
    assert read(broker.port, other, "first", COUNT) == [(i, body(i)) for i in range(COUNT)]
    # The stored bytes were not rewritten: the damage is still there for an operator.
    assert victim_file.read_bytes()[: len(damaged_bytes)] == damaged_bytes


def test_damage_in_a_sealed_segments_tail_cuts_the_log_there_as_kafka_does(broker: Any) -> None:
    name = "tail-damage"
    publish(broker.port, name, [body(i) for i in range(COUNT)])
    broker.kill()

    directory = stream_dir(broker, name)
    segments = sorted(directory.glob("*.log"))
    assert len(segments) >= 3
    victim_file = segments[1]
    position, _size, victim_base, _last = batches(victim_file)[-1]  # after the last index entry
    flip_inside(victim_file, position)

    broker.start()
    log_text = broker.log_path.read_text(errors="replace")
    assert f"stream '{name}' in vhost '/'" in log_text
    assert f"{victim_file.name} truncated at {position}" in log_text and "CRC" in log_text
    for later in segments[2:]:
        assert f"segment {later.name} removed" in log_text
        assert not later.exists()
    assert victim_file.stat().st_size == position

    # Every batch before the damage, dense from 0; nothing after it.
    got = read(broker.port, name, "first", victim_base)
    assert got == [(i, body(i)) for i in range(victim_base)]
    # The log goes on from the cut: offsets stay dense, no reader ever sees a hole.
    publish(broker.port, name, [b"after-cut"])
    assert read(broker.port, name, victim_base, 1) == [(victim_base, b"after-cut")]
