"""Operators see Kafka: /api/kafka/topics, /api/kafka/groups, /metrics and
``baedal ctl kafka`` against a broker that kafka-python produced to and consumed from."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.admin import KafkaAdminClient, NewTopic

from baedal import ctl
from baedal.app import Broker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, http_port=0, data_dir=tmp_path) as running:
        yield running


def get(broker: Broker, path: str) -> Any:
    response = requests.get(broker.http_url + path, auth=("guest", "guest"), timeout=10)
    response.raise_for_status()
    return response.json() if "json" in response.headers["Content-Type"] else response.text


def test_topics_groups_lag_and_metrics_are_visible(broker: Broker, capsys: pytest.CaptureFixture[str]) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    admin.create_topics([NewTopic("seen", 2, 1)])
    admin.close()
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    for i in range(10):
        producer.send("seen", value=b"record-%d" % i, partition=i % 2)
    producer.flush()
    producer.close()
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, group_id="watchers", enable_auto_commit=False,
        auto_offset_reset="earliest",
    )
    consumer.assign([TopicPartition("seen", 0), TopicPartition("seen", 1)])
    got = 0
    for _ in range(50):
        got += sum(len(r) for r in consumer.poll(timeout_ms=200).values())
        if got >= 10:
            break
    assert got == 10
    for _ in range(3):  # the next fetches (from offset 5) count the records as out
        assert not consumer.poll(timeout_ms=200)
    # Commit partition 0 fully and partition 1 two records short: lag 2.
    from kafka.structs import OffsetAndMetadata

    consumer.commit({
        TopicPartition("seen", 0): OffsetAndMetadata(5, "", -1),
        TopicPartition("seen", 1): OffsetAndMetadata(3, "", -1),
    })
    consumer.close()

    topics = {t["name"]: t for t in get(broker, "/api/kafka/topics")}
    seen = topics["seen"]
    assert seen["vhost"] == "/"
    assert [(p["partition"], p["stream"], p["first_offset"], p["high_watermark"], p["records_in"])
            for p in seen["partitions"]] == [(0, "seen-0", 0, 5, 5), (1, "seen-1", 0, 5, 5)]
    assert all(p["bytes_in"] > 0 and p["bytes_out"] >= p["bytes_in"] for p in seen["partitions"])
    assert all(p["bytes_on_disk"] > 0 for p in seen["partitions"])
    # The consumer fetched past all five records of each partition.
    assert [p["records_out"] for p in seen["partitions"]] == [5, 5]

    groups = {g["group_id"]: g for g in get(broker, "/api/kafka/groups")}
    watchers = groups["watchers"]
    assert [(o["topic"], o["partition"], o["committed_offset"], o["lag"]) for o in watchers["offsets"]] == [
        ("seen", 0, 5, 0), ("seen", 1, 3, 2),
    ]
    assert watchers["lag"] == 2
    assert get(broker, "/api/kafka/groups/watchers")["group_id"] == "watchers"
    missing = requests.get(broker.http_url + "/api/kafka/topics/nope", auth=("guest", "guest"), timeout=10)
    assert missing.status_code == 404

    metrics = get(broker, "/metrics")
    assert 'baedal_kafka_partition_records_in_total{partition="1",topic="seen"} 5.0' in metrics
    assert 'baedal_kafka_group_lag{group="watchers",partition="1",topic="seen"} 2.0' in metrics
    assert 'baedal_kafka_partition_high_watermark{partition="0",topic="seen"} 5.0' in metrics

    capsys.readouterr()
    assert ctl.main(["--url", broker.http_url, "--json", "kafka", "groups"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed[0]["group_id"] == "watchers"
    assert ctl.main(["--url", broker.http_url, "kafka", "topics"]) == 0
    table = capsys.readouterr().out
    assert "seen-1" in table


def test_a_live_group_shows_its_members_and_their_assignments(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    assert bootstrap is not None
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    producer.send("live", value=b"x").get(10)
    producer.close()
    consumer = KafkaConsumer(
        "live", bootstrap_servers=bootstrap, group_id="live-group", client_id="the-member",
        auto_offset_reset="earliest", heartbeat_interval_ms=200, session_timeout_ms=6000,
    )
    try:
        deadline = time.monotonic() + 30  # an upper bound: the loop ends at the assignment
        while not consumer.assignment() and time.monotonic() < deadline:
            consumer.poll(timeout_ms=200)
        assert consumer.assignment(), "no assignment within 30 s"
        group = get(broker, "/api/kafka/groups/live-group")
        assert group["state"] == "Stable"
        assert [(m["client_id"], m["assignment"]) for m in group["members"]] == [
            ("the-member", [{"topic": "live", "partitions": [0]}])
        ]
    finally:
        consumer.close()
