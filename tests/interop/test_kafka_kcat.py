"""kcat (Debian's ``kcat``, librdkafka's command-line client) against Baedal: produce,
consume and metadata (-L).  Skipped when kcat is not installed (scripts/test.sh
installs it with apt-get when it can)."""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from baedal.app import Broker

KCAT = shutil.which("kcat") or shutil.which("kafkacat")
pytestmark = pytest.mark.skipif(KCAT is None, reason="kcat is not installed")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path) as running:
        yield running


def kcat(broker: Broker, *arguments: str, stdin: bytes = b"") -> str:
    assert KCAT is not None and broker.kafka_bootstrap is not None
    done = subprocess.run(
        [KCAT, "-b", broker.kafka_bootstrap, *arguments],
        input=stdin,
        capture_output=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr.decode(errors="replace")
    return done.stdout.decode()


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_kcat_produces_and_consumes_keys_values_and_headers(broker: Broker, codec: str) -> None:
    lines = b"".join(b"key-%d:value-%d\n" % (i, i) for i in range(20))
    kcat(broker, "-P", "-t", "kc", "-K:", "-H", "origin=kcat", "-z", codec, stdin=lines)
    out = kcat(broker, "-C", "-t", "kc", "-o", "beginning", "-e", "-f", "%k|%s|%h|%p|%o\\n")
    assert out.splitlines() == [f"key-{i}|value-{i}|origin=kcat|0|{i}" for i in range(20)]


def test_kcat_metadata_lists_this_broker_as_leader_of_every_partition(broker: Broker) -> None:
    kcat(broker, "-P", "-t", "listed", stdin=b"x\n")
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    try:  # a stream declared over AMQP is a topic too
        connection.channel().queue_declare("from-amqp", durable=True, arguments={"x-queue-type": "stream"})
    finally:
        connection.close()
    metadata = json.loads(kcat(broker, "-L", "-J"))
    assert metadata["controllerid"] == 0
    assert [b["id"] for b in metadata["brokers"]] == [0]
    topics = {t["topic"]: t for t in metadata["topics"]}
    assert {"listed", "from-amqp"} <= set(topics)
    partition = topics["listed"]["partitions"][0]
    assert (partition["partition"], partition["leader"]) == (0, 0)
    assert [r["id"] for r in partition["isrs"]] == [0]


def test_kcat_reads_what_amqp_published_to_the_stream(broker: Broker) -> None:
    connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("amqp-in", durable=True, arguments={"x-queue-type": "stream"})
        channel.basic_publish("", "amqp-in", b"hello from pika", pika.BasicProperties(content_type="text/plain"))
    finally:
        connection.close()
    out = kcat(broker, "-C", "-t", "amqp-in", "-o", "beginning", "-e", "-f", "%k|%s|%h\\n")
    key, value, headers = out.strip().split("|", 2)
    assert (key, value) == ("amqp-in", "hello from pika")
    assert "content-type=text/plain" in headers.split(",")
