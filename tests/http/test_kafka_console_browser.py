"""The console's Kafka page in headless Chromium (skipped without it, as the other
browser tests): topic partitions with their streams, groups with assignment and lag."""

from __future__ import annotations

from typing import Any

from test_console_browser import (  # noqa: F401  # fixtures used by name
    browser_context,
    console,
    expect,
    go_to,
    page,
    screenshot,
)


def test_kafka_page_shows_partitions_groups_committed_offsets_and_lag(console: Any, http_broker: Any) -> None:  # noqa: F811
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition
    from kafka.structs import OffsetAndMetadata

    bootstrap = http_broker.kafka_bootstrap
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=False)
    for i in range(4):
        producer.send("console-topic", value=b"%d" % i).get(10)
    producer.close()
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id="console-group", enable_auto_commit=False)
    try:
        consumer.commit({TopicPartition("console-topic", 0): OffsetAndMetadata(1, "", -1)})
    finally:
        consumer.close()
    go_to(console, "kafka")
    row = console.get_by_test_id("kafka-partition-row-console-topic-0")
    expect(row.locator('td[data-field="stream"]')).to_have_text("console-topic")
    expect(row.locator('td[data-field="high_watermark"]')).to_have_text("4")
    expect(row.locator('td[data-field="records_in"]')).to_have_text("4")
    group = console.get_by_test_id("kafka-group-row-console-group-console-topic-0")
    expect(group.locator('td[data-field="committed"]')).to_have_text("1")
    expect(group.locator('td[data-field="lag"]')).to_have_text("3")
    screenshot(console, "20-kafka")
