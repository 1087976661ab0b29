"""Kafka survives SIGKILL: nothing acknowledged is lost, committed offsets never run ahead.

Each round, against a real broker subprocess (``python -m baedal serve``):

* a confluent-kafka producer (acks=all) writes ``r<round>-<n>`` to partition n % 3 and
  counts its delivery reports: a record is *acknowledged* when its report has no error;
* a group consumer (classic protocol, manual commits) reads and commits synchronously
  after every few records, remembering what it consumed and what it committed;
* at a random moment the broker gets SIGKILL; it is restarted on the same data
  directory (rounds share it, so each restart also recovers the earlier crashes).

After each restart: every acknowledged record is in its partition, once, in the order
it was produced; the group's committed offset of each partition is at most the
partition's end, and every offset below it was consumed by the group (a commit never
covers what was not read).

These restart Baedal itself, so they do not run against another broker.
"""

from __future__ import annotations

import os
import random
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from baedal_testing import wait_until

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="restarts Baedal itself"),
]

ROUNDS = 3
BASE_SEED = int(os.environ.get("BAEDAL_KILL9_SEED", random.randrange(2**31)))
TOPIC = "kill9"
PARTITIONS = 3
GROUP = "kill9-group"
COMMIT_EVERY = 5


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class KafkaBrokerProcess:
    """``python -m baedal serve`` with a Kafka listener, on a fixed data directory."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        # The same Kafka port across restarts, as for a real broker: clients of a killed
        # broker reconnect to its successor (a consumer's close() needs its coordinator).
        self.kafka_port = free_port()

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.kafka_port}"

    def start(self) -> None:
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable, "-m", "baedal", "serve",
                    "--host", "127.0.0.1",
                    "--port", str(free_port()),
                    "--kafka-port", str(self.kafka_port),
                    "--data-dir", str(self.data_dir),
                    "--http-port", "off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
            )

        def accepting() -> bool:
            assert self.process is not None and self.process.poll() is None, self.log_path.read_text()
            try:
                socket.create_connection(("127.0.0.1", self.kafka_port), timeout=0.5).close()
                return True
            except OSError:
                return False

        wait_until(accepting, timeout=30, what="the Kafka listener", interval=0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()  # SIGKILL
            self.process.wait(10)
        self.process = None


class ProducerThread(threading.Thread):
    def __init__(self, bootstrap: str, round_index: int) -> None:
        super().__init__(daemon=True)
        self.round_index = round_index
        self.stop = threading.Event()
        self.producer = Producer(
            {
                "bootstrap.servers": bootstrap,
                "acks": "all",
                "linger.ms": 5,
                "message.timeout.ms": 4000,
                "reconnect.backoff.max.ms": 200,
            }
        )
        self.acknowledged: list[tuple[int, bytes]] = []  # (partition, value) in order
        self.failed = 0

    def _report(self, error: Any, message: Any) -> None:
        if error is None:
            self.acknowledged.append((message.partition(), message.value()))
        else:
            self.failed += 1

    def run(self) -> None:
        n = 0
        while not self.stop.is_set():
            value = f"r{self.round_index}-{n}".encode()
            try:
                self.producer.produce(TOPIC, value=value, partition=n % PARTITIONS, on_delivery=self._report)
            except BufferError:
                self.producer.poll(0.05)
                continue
            n += 1
            self.producer.poll(0)
            if n % 50 == 0:
                time.sleep(0.005)
        self.producer.flush(15)  # every report arrives: delivered, or failed by timeout


class ConsumerThread(threading.Thread):
    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True)
        self.stop = threading.Event()
        self.consumer = Consumer(
            {
                "bootstrap.servers": bootstrap,
                "group.id": GROUP,
                "auto.offset.reset": "earliest",
                "enable.auto.commit": False,
                "session.timeout.ms": 6000,
                "heartbeat.interval.ms": 500,
                "reconnect.backoff.max.ms": 200,
                "on_commit": self._committed,
            }
        )
        self.consumed: set[tuple[int, int]] = set()  # (partition, offset)
        self.committed: dict[int, int] = {}  # partition -> the last acknowledged commit

    def _committed(self, error: Any, partitions: list[TopicPartition]) -> None:
        # Asynchronous commits: a synchronous one would block for ever once the broker
        # is gone.  Only commits the broker answered without error are counted.
        if error is not None:
            return
        for tp in partitions:
            if tp.error is None and tp.offset >= 0:
                self.committed[tp.partition] = max(self.committed.get(tp.partition, 0), tp.offset)

    def run(self) -> None:
        consumer = self.consumer
        consumer.subscribe([TOPIC])
        pending: dict[int, int] = {}
        since_commit = 0
        while not self.stop.is_set():
            message = consumer.poll(0.1)
            if message is None or message.error():
                continue
            self.consumed.add((message.partition(), message.offset()))
            pending[message.partition()] = message.offset() + 1
            since_commit += 1
            if since_commit >= COMMIT_EVERY:
                offsets = [TopicPartition(TOPIC, p, o) for p, o in pending.items()]
                try:
                    consumer.commit(offsets=offsets, asynchronous=True)
                except KafkaException:
                    continue
                pending = {}
                since_commit = 0


def read_partitions(bootstrap: str) -> dict[int, list[tuple[int, bytes]]]:
    """(offset, value) of every record of every partition, read from the start."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "kill9-checker",
                         "enable.auto.commit": False, "enable.partition.eof": True})
    try:
        ends = {p: consumer.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=10)[1]
                for p in range(PARTITIONS)}
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        found: dict[int, list[tuple[int, bytes]]] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + 60
        while any(len(found[p]) < ends[p] for p in range(PARTITIONS)):
            assert time.monotonic() < deadline, {p: (len(found[p]), ends[p]) for p in found}
            message = consumer.poll(0.2)
            if message is None or message.error():
                continue
            found[message.partition()].append((message.offset(), message.value()))
        return found
    finally:
        consumer.close()


def committed_offsets(bootstrap: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": GROUP})
    try:
        answer = consumer.committed([TopicPartition(TOPIC, p) for p in range(PARTITIONS)], timeout=10)
        return {tp.partition: tp.offset for tp in answer}
    finally:
        consumer.close()


def test_kill9_rounds_lose_no_acknowledged_record_and_commits_never_run_ahead(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    broker = KafkaBrokerProcess(data_dir, tmp_path / "broker.log")
    broker.start()
    try:
        admin = AdminClient({"bootstrap.servers": broker.bootstrap})
        admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1)])[TOPIC].result(15)
        acknowledged: list[tuple[int, bytes]] = []
        consumed: set[tuple[int, int]] = set()
        for round_index in range(ROUNDS):
            seed = BASE_SEED + round_index
            rng = random.Random(seed)
            where = f"round {round_index}, seed {seed} (BAEDAL_KILL9_SEED={BASE_SEED})"
            producer = ProducerThread(broker.bootstrap, round_index)
            consumer = ConsumerThread(broker.bootstrap)
            producer.start()
            consumer.start()
            wait_until(lambda p=producer: len(p.acknowledged) >= 200, timeout=30, what="acks before the kill")
            wait_until(lambda c=consumer: c.committed, timeout=30, what="a commit before the kill")
            time.sleep(rng.uniform(0.0, 0.5))  # the random moment of the kill
            broker.kill()
            producer.stop.set()
            consumer.stop.set()
            producer.join(30)
            consumer.join(30)
            assert not producer.is_alive() and not consumer.is_alive(), where
            broker.start()
            consumer.consumer.close()  # leaves the group (its coordinator is back)
            acknowledged += producer.acknowledged
            consumed |= consumer.consumed

            stored = read_partitions(broker.bootstrap)
            for partition in range(PARTITIONS):
                values = [value for _offset, value in stored[partition]]
                offsets = [offset for offset, _value in stored[partition]]
                assert offsets == list(range(len(offsets))), f"{where}: p{partition} offsets not dense"
                position = {value: i for i, value in enumerate(values)}
                mine = [v for p, v in acknowledged if p == partition]
                missing = [v for v in mine if v not in position]
                assert not missing, f"{where}: {len(missing)} acknowledged record(s) lost, first {missing[0]!r}"
                assert len(set(mine)) == len(mine) and all(values.count(v) == 1 for v in mine[:50]), where
                order = [position[v] for v in mine]
                assert order == sorted(order), f"{where}: p{partition} acknowledged records out of order"
            committed = committed_offsets(broker.bootstrap)
            for partition, offset in committed.items():
                if offset < 0:
                    continue  # nothing committed on it yet
                assert offset <= len(stored[partition]), f"{where}: p{partition} commit past the end"
                unread = [o for o in range(offset) if (partition, o) not in consumed]
                assert not unread, f"{where}: p{partition} committed {offset} but {unread[:5]} never read"
            print(
                f"{where}: {len(producer.acknowledged)} acknowledged, {producer.failed} failed, "
                f"{len(consumer.consumed)} consumed, committed {committed}"
            )
    finally:
        broker.kill()
