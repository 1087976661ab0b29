"""The Kafka listener's wiring: ``baedal serve --kafka-port``, settings, embedded ports."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer

from baedal.app import Broker
from baedal.config import load_settings

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_kafka_port_setting_accepts_off_and_numbers_from_env_and_flags() -> None:
    assert load_settings(environ={}).kafka_port == 9092
    assert load_settings(environ={"BAEDAL_KAFKA_PORT": "off"}).kafka_port is None
    assert load_settings(environ={"BAEDAL_KAFKA_PORT": "0"}).kafka_port == 0
    assert load_settings(flags={"kafka_port": "19092"}, environ={}).kafka_port == 19092
    settings = load_settings(
        environ={"BAEDAL_AUTO_CREATE_TOPICS": "false", "BAEDAL_NUM_PARTITIONS": "4"}
    )
    assert (settings.auto_create_topics, settings.num_partitions) == (False, 4)


def test_embedded_broker_on_port_0_takes_an_ephemeral_kafka_port(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path / "a") as first, Broker(
        port=0, data_dir=tmp_path / "b"
    ) as second:
        assert first.kafka_port and second.kafka_port
        assert first.kafka_port != second.kafka_port != 9092
        assert first.kafka_bootstrap == f"127.0.0.1:{first.kafka_port}"


def test_kafka_off_opens_no_listener(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, kafka_port=None) as broker:
        assert broker.kafka_port is None and broker.kafka_bootstrap is None


def test_serve_with_kafka_port_and_advertised_address(tmp_path: Path) -> None:
    kafka_port, advertised_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "baedal", "serve", "--port", "0", "--http-port", "off",
            "--data-dir", str(tmp_path), "--kafka-port", str(kafka_port),
            "--kafka-advertised-host", "127.0.0.1",
            "--kafka-advertised-port", str(advertised_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line)
            if line.startswith("data directory"):
                break
        assert f"baedal Kafka on 127.0.0.1:{kafka_port}\n" in lines
        # Metadata tells clients the advertised port, not the listening one.
        consumer = KafkaConsumer(bootstrap_servers=f"127.0.0.1:{kafka_port}")
        try:
            brokers = consumer._client.cluster.brokers()
            assert {(b.host, b.port) for b in brokers} == {("127.0.0.1", advertised_port)}
        finally:
            consumer.close()
    finally:
        process.terminate()
        process.wait(30)


def test_serve_kafka_round_trip_through_the_cli(tmp_path: Path) -> None:
    kafka_port = _free_port()
    process = subprocess.Popen(
        [
            sys.executable, "-m", "baedal", "serve", "--port", "0", "--http-port", "off",
            "--data-dir", str(tmp_path), "--kafka-port", str(kafka_port),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if line.startswith("data directory"):
                break
        bootstrap = f"127.0.0.1:{kafka_port}"
        producer = KafkaProducer(bootstrap_servers=bootstrap, enable_idempotence=False)
        assert producer.send("cli", value=b"hello").get(timeout=10).offset == 0
        producer.close()
        consumer = KafkaConsumer(
            "cli", bootstrap_servers=bootstrap, auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        try:
            assert next(iter(consumer)).value == b"hello"
        finally:
            consumer.close()
    finally:
        process.terminate()
        assert process.wait(30) == 0


def test_partition_directories_of_the_unreleased_first_slice_are_reported_not_migrated(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    old = tmp_path / "kafka" / "orders-0"
    old.mkdir(parents=True)
    (old / "00000000000000000000.log").write_bytes(b"old slice data")
    with caplog.at_level("WARNING", logger="baedal.kafka"), Broker(port=0, data_dir=tmp_path) as broker:
        assert broker.kafka_port is not None
        topics = broker.call(lambda: list(broker.kafka.registry.topics()))
    assert topics == []  # not served as a topic
    assert any("not migrated" in r.getMessage() and "orders-0" in r.getMessage() for r in caplog.records)
    assert (old / "00000000000000000000.log").read_bytes() == b"old slice data"  # left alone


def test_kafka_stays_off_without_the_durable_store(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, durable_store=False) as broker:
        assert broker.kafka_port is None  # topics are streams, and streams need the store
