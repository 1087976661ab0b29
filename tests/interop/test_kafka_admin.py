"""Kafka admin APIs, SASL and refused transactions, driven by confluent-kafka's
AdminClient (librdkafka) and kafka-python against a real Baedal."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

from baedal.app import Broker

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, data_dir=tmp_path) as running:
        yield running


def admin(broker: Broker) -> AdminClient:
    return AdminClient({"bootstrap.servers": broker.kafka_bootstrap})


def result(futures: dict[Any, Any]) -> dict[Any, Any]:
    return {key: future.result(timeout=15) for key, future in futures.items()}


def topic_configs(client: AdminClient, topic: str) -> dict[str, Any]:
    resource = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return result(client.describe_configs([resource]))[resource]


def test_topic_configs_are_the_stream_settings_and_can_be_altered(broker: Broker) -> None:
    client = admin(broker)
    result(client.create_topics([NewTopic("configured", 2, 1, config={"retention.ms": "3600000"})]))
    configs = topic_configs(client, "configured")
    assert configs["retention.ms"].value == "3600000"
    assert configs["retention.bytes"].value == "-1"
    assert configs["cleanup.policy"].value == "delete"
    assert configs["max.message.bytes"].value == "1048588"
    assert int(configs["segment.bytes"].value) > 0

    resource = ConfigResource(
        ConfigResource.Type.TOPIC,
        "configured",
        incremental_configs=[
            ConfigEntry("retention.bytes", "50000000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("max.message.bytes", "2000", incremental_operation=AlterConfigOpType.SET),
            ConfigEntry("retention.ms", None, incremental_operation=AlterConfigOpType.DELETE),
        ],
    )
    result(client.incremental_alter_configs([resource]))
    configs = topic_configs(client, "configured")
    assert configs["retention.bytes"].value == "50000000"
    assert configs["retention.ms"].value == "-1"
    assert configs["max.message.bytes"].value == "2000"

    def arguments() -> list[dict[str, Any]]:
        vhost = broker.core.vhosts["/"]
        return [dict(vhost.queues[f"configured-{i}"].arguments) for i in range(2)]

    for stream_arguments in broker.call(arguments):  # every partition stream
        assert stream_arguments["x-max-length-bytes"] == 50_000_000
        assert "x-max-age" not in stream_arguments
    # max.message.bytes is enforced per topic.
    producer = Producer({"bootstrap.servers": broker.kafka_bootstrap, "enable.idempotence": False})
    reports: list[Any] = []
    producer.produce("configured", value=b"x" * 5000, partition=0, on_delivery=lambda e, m: reports.append(e))
    producer.flush(15)
    assert reports and reports[0] is not None and reports[0].name() == "MSG_SIZE_TOO_LARGE"

    compact = ConfigResource(
        ConfigResource.Type.TOPIC,
        "configured",
        incremental_configs=[
            ConfigEntry("cleanup.policy", "compact", incremental_operation=AlterConfigOpType.SET)
        ],
    )
    with pytest.raises(KafkaException) as refused:
        result(client.incremental_alter_configs([compact]))
    assert refused.value.args[0].name() == "INVALID_CONFIG"


def test_altered_configs_survive_a_restart(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        client = admin(broker)
        result(client.create_topics([NewTopic("kept-config", 1, 1)]))
        resource = ConfigResource(
            ConfigResource.Type.TOPIC,
            "kept-config",
            incremental_configs=[
                ConfigEntry("retention.ms", "86400000", incremental_operation=AlterConfigOpType.SET)
            ],
        )
        result(client.incremental_alter_configs([resource]))
    with Broker(port=0, data_dir=tmp_path) as broker:
        client = admin(broker)
        assert topic_configs(client, "kept-config")["retention.ms"].value == "86400000"
        # and AMQP sees the same setting on the stream
        connection = pika.BlockingConnection(pika.ConnectionParameters("127.0.0.1", broker.port))
        try:
            connection.channel().queue_declare(
                "kept-config", durable=True, arguments={"x-queue-type": "stream", "x-max-age": "86400s"}
            )
        finally:
            connection.close()


def test_create_partitions_grows_a_topic_and_refuses_shrinking(broker: Broker) -> None:
    client = admin(broker)
    result(client.create_topics([NewTopic("growing", 2, 1)]))
    result(client.create_partitions([NewPartitions("growing", 5)]))
    metadata = client.list_topics("growing", timeout=10)
    assert sorted(metadata.topics["growing"].partitions) == [0, 1, 2, 3, 4]
    with pytest.raises(KafkaException) as refused:
        result(client.create_partitions([NewPartitions("growing", 3)]))
    assert refused.value.args[0].name() == "INVALID_PARTITIONS"


def test_groups_are_listed_described_and_deleted(broker: Broker) -> None:
    bootstrap = broker.kafka_bootstrap
    producer = Producer({"bootstrap.servers": bootstrap})
    for i in range(10):
        producer.produce("grouped", value=b"%d" % i)
    producer.flush(15)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "g-admin",
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
        }
    )
    consumer.subscribe(["grouped"])
    got = 0
    deadline = time.monotonic() + 20
    while got < 10 and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and not message.error():
            got += 1
    consumer.commit(asynchronous=False)
    client = admin(broker)
    listed = client.list_consumer_groups().result(timeout=15)
    assert "g-admin" in {g.group_id for g in listed.valid}
    described = result(client.describe_consumer_groups(["g-admin"]))["g-admin"]
    assert len(described.members) == 1
    assignment = described.members[0].assignment.topic_partitions
    assert [(tp.topic, tp.partition) for tp in assignment] == [("grouped", 0)]
    # A group with members cannot be deleted.
    with pytest.raises(KafkaException) as refused:
        result(client.delete_consumer_groups(["g-admin"]))
    assert refused.value.args[0].name() == "NON_EMPTY_GROUP"
    consumer.close()
    result(client.delete_consumer_groups(["g-admin"]))
    listed = client.list_consumer_groups().result(timeout=15)
    assert "g-admin" not in {g.group_id for g in listed.valid}
    # Its committed offsets went with it.
    fresh = Consumer({"bootstrap.servers": bootstrap, "group.id": "g-admin"})
    try:
        committed = fresh.committed([TopicPartition("grouped", 0)], timeout=10)
        assert committed[0].offset < 0
    finally:
        fresh.close()


def test_describe_cluster_names_this_broker_as_controller(broker: Broker) -> None:
    client = admin(broker)  # kept referenced: a collected client cancels its futures
    described = client.describe_cluster().result(timeout=15)
    assert described.cluster_id == "baedal"
    assert described.controller.id == 0
    host, port = broker.kafka_bootstrap.rsplit(":", 1)
    assert [(n.id, n.host, n.port) for n in described.nodes] == [(0, host, int(port))]


def test_a_transactional_producer_fails_at_once_instead_of_hanging(broker: Broker) -> None:
    producer = Producer({"bootstrap.servers": broker.kafka_bootstrap, "transactional.id": "tx-1"})
    started = time.monotonic()
    with pytest.raises(KafkaException) as refused:
        producer.init_transactions(20)
    assert time.monotonic() - started < 15  # an answer, not the timeout
    error = refused.value.args[0]
    assert error.fatal() and error.name() == "TRANSACTIONAL_ID_AUTHORIZATION_FAILED"


def test_sasl_plain_with_a_baedal_user_is_required_when_configured(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, kafka_sasl=True) as broker:
        broker.call(lambda: broker.core.add_user("kafka-user", "s3cret"))
        # Like AMQP, the user needs a permission on the listener's vhost (issue 11).
        broker.call(lambda: broker.core.set_permission("kafka-user", "/"))
        good = Producer(
            {
                "bootstrap.servers": broker.kafka_bootstrap,
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "kafka-user",
                "sasl.password": "s3cret",
            }
        )
        good.produce("secured", value=b"ok")
        assert good.flush(15) == 0
        errors: list[Any] = []
        bad = Producer(
            {
                "bootstrap.servers": broker.kafka_bootstrap,
                "security.protocol": "SASL_PLAINTEXT",
                "sasl.mechanism": "PLAIN",
                "sasl.username": "kafka-user",
                "sasl.password": "wrong",
                "error_cb": errors.append,
                "message.timeout.ms": 3000,
            }
        )
        bad.produce("secured", value=b"refused")
        bad.flush(5)
        assert any(e.name() == "_AUTHENTICATION" for e in errors)
        # Without SASL, a request is answered by closing the connection.
        from kafka import KafkaConsumer

        with pytest.raises(Exception):  # noqa: B017  # NoBrokersAvailable or a timeout
            KafkaConsumer(bootstrap_servers=broker.kafka_bootstrap, request_timeout_ms=3000,
                          api_version_auto_timeout_ms=3000).topics()
        # kafka-python with SASL PLAIN reads what was produced.
        consumer = KafkaConsumer(
            bootstrap_servers=broker.kafka_bootstrap,
            security_protocol="SASL_PLAINTEXT",
            sasl_mechanism="PLAIN",
            sasl_plain_username="kafka-user",
            sasl_plain_password="s3cret",
            auto_offset_reset="earliest",
            consumer_timeout_ms=10_000,
        )
        try:
            consumer.subscribe(["secured"])
            assert [r.value for r in consumer][:1] == [b"ok"]
        finally:
            consumer.close()
