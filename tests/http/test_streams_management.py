"""Streams in the management API, ``/metrics`` and ``baedal ctl``: type, offsets,
messages, bytes on disk, segments, retention and readers (issue 10 section 2)."""

from __future__ import annotations

import json
from typing import Any

import pika
import pytest
from httphelpers import Api, enc, poll_until

from baedal import ctl

ARGUMENTS = {
    "x-queue-type": "stream",
    "x-max-length-bytes": 5_000_000,
    "x-max-age": "1h",
    "x-stream-max-segment-size-bytes": 4096,
}


def _stream_with_a_reader(broker: Any, name: str) -> tuple[pika.BlockingConnection, list[bytes]]:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.queue_declare(name, durable=True, arguments=ARGUMENTS)
    channel.confirm_delivery()
    for i in range(40):
        channel.basic_publish("", name, f"m{i}|".encode() + b"." * 300, pika.BasicProperties(delivery_mode=2))
    reader = connection.channel()
    reader.basic_qos(prefetch_count=5)
    got: list[bytes] = []
    reader.basic_consume(
        name,
        lambda ch, m, p, b: (got.append(b), ch.basic_ack(m.delivery_tag)),
        arguments={"x-stream-offset": "first"},
    )
    poll_until(lambda: connection.process_data_events(0.02) or len(got) >= 40)
    return connection, got


def test_api_queues_shows_stream_type_offsets_size_retention_and_readers(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    connection, got = _stream_with_a_reader(http_broker, "events")
    try:
        queue = api.json("/api/queues/%2F/events")
        assert queue["type"] == "stream" and queue["durable"] is True
        assert queue["messages"] == queue["messages_ready"] == 40
        assert queue["consumers"] == 1
        stream = queue["stream"]
        assert stream["first_offset"] == 0 and stream["last_offset"] == 39 and stream["next_offset"] == 40
        assert stream["committed_offset"] == 40 == queue["committed_offset"]
        assert stream["messages"] == 40
        assert stream["segments"] > 1  # 4 KB segments
        assert stream["bytes_on_disk"] > 40 * 300
        assert stream["max_length_bytes"] == 5_000_000 and stream["max_age"] == "1h"
        assert stream["max_segment_size_bytes"] == 4096
        assert stream["readers"] == 1
        [reader] = stream["reader_details"]
        assert reader["offset"] == 40 and reader["lag"] == 0 and reader["delivered"] == 40
        listed = [q for q in api.json("/api/queues") if q["name"] == "events"]
        assert listed and listed[0]["type"] == "stream"
    finally:
        connection.close()


def test_metrics_show_per_stream_bytes_and_offsets(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    connection, _got = _stream_with_a_reader(http_broker, "metered")
    try:
        text = api.get("/metrics").text
        labels = 'queue="metered",vhost="/"'
        lines = {line.split(" ")[0]: float(line.split(" ")[1]) for line in text.splitlines() if "metered" in line}
        assert lines[f"baedal_stream_next_offset{{{labels}}}"] == 40
        assert lines[f"baedal_stream_first_offset{{{labels}}}"] == 0
        assert lines[f"baedal_stream_readers{{{labels}}}"] == 1
        assert lines[f"baedal_stream_bytes_on_disk{{{labels}}}"] > 40 * 300
        assert lines[f"baedal_stream_segments{{{labels}}}"] > 1
    finally:
        connection.close()


def test_ctl_list_queues_shows_the_stream_type(http_broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    connection, _got = _stream_with_a_reader(http_broker, "listed")
    connection.close()
    assert ctl.main(["--url", http_broker.http_url, "list", "queues"]) == 0
    row = next(line for line in capsys.readouterr().out.splitlines() if "listed" in line)
    assert "stream" in row.split()
    assert ctl.main(["--url", http_broker.http_url, "--json", "list", "queues"]) == 0
    listed = next(q for q in json.loads(capsys.readouterr().out) if q["name"] == "listed")
    assert listed["type"] == "stream" and listed["stream"]["messages"] == 40


def test_http_get_and_purge_of_a_stream_are_refused(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    connection.channel().queue_declare("refusing", durable=True, arguments={"x-queue-type": "stream"})
    connection.close()
    got = api.post(f"/api/queues/%2F/{enc('refusing')}/get", {"count": 1, "ackmode": "ack_requeue_true", "encoding": "auto"})
    assert got.status_code >= 400 and "not supported by stream queues" in got.text
    purged = api.delete(f"/api/queues/%2F/{enc('refusing')}/contents")
    assert purged.status_code >= 400 and "not supported by stream queues" in purged.text
