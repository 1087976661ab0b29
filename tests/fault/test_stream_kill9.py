"""Streams survive SIGKILL and a damaged segment tail.

* kill -9 rounds: a publisher with confirms and a reader from ``first`` run against a
  stream in a real broker subprocess; at a random moment the broker gets SIGKILL.  After
  each restart the stream, read from ``first``, holds every confirmed message, in
  publish order, at dense offsets, and nothing that was never published; the reader
  never saw a record that the crash took back (readers see only fsynced records).  Rounds share
  one data directory, so each restart also recovers every earlier crash.
* corruption: bytes flipped in the tail of the last segment are truncated at start-up,
  reported in the broker's log, and the broker serves the records before the damage
  and appends after it.

These restart Baedal itself, so they do not run against RabbitMQ.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import random
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest

from baedal.storage.engine import queue_directory_name
from baedal_testing import wait_until

pytestmark = [
    pytest.mark.timeout(180),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="restarts Baedal itself"),
]

ROUNDS = 5
BASE_SEED = int(os.environ.get("BAEDAL_KILL9_SEED", random.randrange(2**31)))
STREAM = "kill9-stream"
ARGUMENTS = {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 64 * 1024}
CLIENT_ERRORS = (pika.exceptions.AMQPError, OSError)


def _load_soak_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak_kill9.py"
    spec = importlib.util.spec_from_file_location("soak_kill9", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak_kill9 = _load_soak_module()


def _declare(port: int, name: str = STREAM) -> None:
    with contextlib.closing(soak_kill9.connect(port)) as conn:
        conn.channel().queue_declare(name, durable=True, arguments=ARGUMENTS)


def read_all(port: int, name: str = STREAM) -> list[tuple[int, bytes]]:
    """(offset, body) of every record, read from ``first`` by a fresh consumer."""
    with contextlib.closing(soak_kill9.connect(port)) as conn:
        channel = conn.channel()
        total = channel.queue_declare(name, passive=True).method.message_count
        channel.basic_qos(prefetch_count=500)
        got: list[tuple[int, bytes]] = []

        def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
            got.append((properties.headers["x-stream-offset"], body))
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(name, on_message, arguments={"x-stream-offset": "first"})
        wait_until(
            lambda: conn.process_data_events(0.02) or len(got) >= total,
            timeout=30,
            what=f"{total} records read from first",
        )
        return got


class Publisher(threading.Thread):
    """Publishes ``r<round>-<n>`` with confirms until the broker goes away."""

    def __init__(self, port: int, round_index: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.round_index = round_index
        self.attempted: list[bytes] = []
        self.confirmed: list[bytes] = []

    def run(self) -> None:
        with contextlib.suppress(*CLIENT_ERRORS):
            conn = soak_kill9.connect(self.port)
            channel = conn.channel()
            channel.confirm_delivery()
            padding = b"." * 200
            n = 0
            while True:
                body = f"r{self.round_index}-{n}|".encode() + padding
                self.attempted.append(body)
                channel.basic_publish("", STREAM, body, pika.BasicProperties(delivery_mode=2))
                self.confirmed.append(body)
                n += 1


class Reader(threading.Thread):
    """Reads the stream from ``first`` while it is being written, until the kill."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.offsets: list[int] = []

    def run(self) -> None:
        with contextlib.suppress(*CLIENT_ERRORS):
            conn = soak_kill9.connect(self.port)
            channel = conn.channel()
            channel.basic_qos(prefetch_count=50)

            def on_message(ch: Any, method: Any, properties: Any, body: bytes) -> None:
                self.offsets.append(properties.headers["x-stream-offset"])
                ch.basic_ack(method.delivery_tag)

            channel.basic_consume(STREAM, on_message, arguments={"x-stream-offset": "first"})
            while True:
                conn.process_data_events(0.05)


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base = tmp_path_factory.mktemp("stream-kill9")
    data_dir = base / "data"
    data_dir.mkdir()
    process = soak_kill9.BrokerProcess(data_dir, base / "broker.log")
    process.start()
    _declare(process.port)
    yield process
    process.kill()


def test_kill9_rounds_lose_no_confirmed_stream_message(broker: Any) -> None:
    confirmed_so_far: list[bytes] = []
    attempted_so_far: set[bytes] = set()
    for round_index in range(ROUNDS):
        seed = BASE_SEED + round_index
        rng = random.Random(seed)
        publisher = Publisher(broker.port, round_index)
        reader = Reader(broker.port)
        publisher.start()
        reader.start()
        wait_until(lambda p=publisher: len(p.confirmed) >= 20, timeout=20, what="some confirms before the kill")
        time.sleep(rng.uniform(0.0, 0.5))  # the random moment of the kill
        broker.kill()
        publisher.join(10)
        reader.join(10)
        broker.start()
        confirmed_so_far += publisher.confirmed
        attempted_so_far.update(publisher.attempted)

        records = read_all(broker.port)
        where = f"round {round_index}, seed {seed} (BAEDAL_KILL9_SEED={BASE_SEED})"
        offsets = [offset for offset, _body in records]
        assert offsets == list(range(len(records))), f"{where}: offsets not dense from 0"
        bodies = [body for _offset, body in records]
        assert not set(bodies) - attempted_so_far, f"{where}: records never published"
        assert len(set(bodies)) == len(bodies), f"{where}: a record appears twice"
        # every confirmed message is there, in publish order (unconfirmed ones may sit
        # between them, or be missing)
        position = {body: i for i, body in enumerate(bodies)}
        missing = [b for b in confirmed_so_far if b not in position]
        assert not missing, f"{where}: {len(missing)} confirmed message(s) lost, first {missing[0]!r}"
        order = [position[b] for b in confirmed_so_far]
        assert order == sorted(order), f"{where}: confirmed messages out of order"
        # a reader only ever sees committed (fsynced) records: all of them survive
        assert reader.offsets == list(range(len(reader.offsets))), f"{where}: reader offsets not dense"
        assert len(reader.offsets) <= len(records), f"{where}: a reader saw a record the crash took back"
        print(
            f"{where}: {len(publisher.confirmed)} confirmed this round, {len(records)} records, "
            f"reader saw {len(reader.offsets)} before the kill"
        )


def test_a_damaged_segment_tail_is_truncated_reported_and_the_rest_served(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    log_path = tmp_path / "broker.log"
    process = soak_kill9.BrokerProcess(data_dir, log_path)
    process.start()
    try:
        name = "damaged-stream"
        _declare(process.port, name)
        with contextlib.closing(soak_kill9.connect(process.port)) as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            for i in range(200):
                channel.basic_publish("", name, f"d{i}|".encode() + b"x" * 300, pika.BasicProperties(delivery_mode=2))
        process.kill()

        directory = data_dir / "streams" / queue_directory_name("/", name)
        segments = sorted(directory.glob("*.log"))
        assert len(segments) >= 2, "the test wants a sealed segment and an active one"
        last = segments[-1]
        size = last.stat().st_size
        with open(last, "r+b") as file:  # flip bytes inside the last record batch
            file.seek(size - 40)
            damaged = bytes(b ^ 0xFF for b in file.read(8))
            file.seek(size - 40)
            file.write(damaged)

        process.start()
        log_text = log_path.read_text(errors="replace")
        assert f"stream '{name}' in vhost '/'" in log_text and "truncated" in log_text
        records = read_all(process.port, name)
        bodies = [body.split(b"|")[0].decode() for _offset, body in records]
        assert bodies == [f"d{i}" for i in range(199)], "all but the damaged last record"
        assert [offset for offset, _b in records] == list(range(199))

        with contextlib.closing(soak_kill9.connect(process.port)) as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            channel.basic_publish("", name, b"after|", pika.BasicProperties(delivery_mode=2))
        records = read_all(process.port, name)
        assert records[-1] == (199, b"after|")
    finally:
        process.kill()
