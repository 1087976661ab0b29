"""Policies set over the HTTP API change a stream's retention and segment size
(``max-length-bytes``, ``max-age``, ``stream-max-segment-size-bytes``).

As in RabbitMQ 3.10's rabbit_stream_queue (``policy_precedence``), the policy's value
wins over the stream's ``x-`` argument; removing the policy restores the argument.
``rabbitmqctl set_policy`` on RabbitMQ 3.10.8 refuses ``{"max-age": "1x"}`` with
``<<"1x">> is not a valid max age`` (a number there crashes its validator; we answer it
the same way instead).
"""

from __future__ import annotations

from typing import Any

import pika
from httphelpers import Api, poll_until

SMALL_SEGMENTS = {"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 1000}


def _fill(broker: Any, name: str, arguments: dict[str, Any], count: int = 40) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.queue_declare(name, durable=True, arguments=arguments)
    channel.confirm_delivery()
    for i in range(count):
        channel.basic_publish("", name, b"%03d|" % i + b"." * 300, pika.BasicProperties(delivery_mode=2))
    connection.close()


def _stream(api: Api, name: str) -> dict[str, Any]:
    return api.json(f"/api/queues/%2F/{name}")["stream"]


def _set_policy(api: Api, name: str, pattern: str, definition: dict[str, Any]) -> None:
    r = api.put(f"/api/policies/%2F/{name}", {"pattern": pattern, "definition": definition, "apply-to": "queues"})
    assert r.status_code in (201, 204), r.text


def test_a_max_length_bytes_policy_trims_an_existing_stream_and_wins_over_its_argument(
    http_broker: Any,
) -> None:
    api = Api(http_broker.http_url)
    _fill(http_broker, "pol-bytes", {**SMALL_SEGMENTS, "x-max-length-bytes": 1_000_000})
    before = _stream(api, "pol-bytes")
    assert before["first_offset"] == 0 and before["messages"] == 40 and before["segments"] > 5
    _set_policy(api, "trim", "^pol-bytes$", {"max-length-bytes": 3000})
    poll_until(lambda: _stream(api, "pol-bytes")["max_length_bytes"] == 3000)
    after = _stream(api, "pol-bytes")
    assert after["first_offset"] > 0 and after["messages"] < 40
    assert after["bytes_on_disk"] <= 3000 + 1000  # whole segments: at most one over
    assert after["segments_removed_by_retention"] > 0
    assert api.delete("/api/policies/%2F/trim").status_code == 204
    poll_until(lambda: _stream(api, "pol-bytes")["max_length_bytes"] == 1_000_000)


def test_a_max_age_policy_removes_old_segments_and_a_new_stream_takes_the_policy(
    http_broker: Any,
) -> None:
    api = Api(http_broker.http_url)
    _set_policy(api, "age", "^pol-age", {"max-age": "1s", "stream-max-segment-size-bytes": 1000})
    _fill(http_broker, "pol-age", {"x-queue-type": "stream"})  # declared after the policy
    stream = _stream(api, "pol-age")
    assert stream["max_age"] == "1s" and stream["max_segment_size_bytes"] == 1000
    assert stream["segments"] > 5  # the policy's segment size, not the 500 MB default
    # every sealed segment is older than a second after a while; the active one stays
    poll_until(lambda: _stream(api, "pol-age")["segments"] == 1, timeout=15)
    assert _stream(api, "pol-age")["first_offset"] > 0


def test_an_invalid_max_age_policy_is_refused_with_rabbitmqs_reason(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    for value, shown in (("1x", '<<"1x">>'), (5, "5")):
        r = api.put(
            "/api/policies/%2F/bad-age",
            {"pattern": "^s$", "definition": {"max-age": value}, "apply-to": "queues"},
        )
        assert r.status_code == 400
        assert r.json()["reason"] == f"Validation failed\n\n{shown} is not a valid max age\n"
