"""A message published over HTTP is built from neutral fields (no AMQP properties block
anywhere); delivered over AMQP, the adapter encodes a block from those fields and every
property arrives -- also after the message was stored as a neutral record and the broker
restarted."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pika
from httphelpers import Api, enc

from baedal import Broker

PROPERTIES: dict[str, Any] = {
    "content_type": "application/json",
    "content_encoding": "utf-8",
    "headers": {"s": "text", "n": 7, "flag": True, "list": [1, "x"], "map": {"k": "v"}},
    "delivery_mode": 2,
    "priority": 3,
    "correlation_id": "c-9",
    "reply_to": "replies",
    "expiration": "600000",
    "message_id": "m-9",
    "timestamp": 1700000000,
    "user_id": "guest",
}


def check(props: Any, expected: dict[str, Any]) -> None:
    for name, value in expected.items():
        assert getattr(props, name) == value, name


def test_an_http_publish_arrives_over_amqp_with_its_properties(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir) as broker:
        api = Api(broker.http_url)
        for queue in ("neutral.live", "neutral.stored"):
            assert api.put(f"/api/queues/%2F/{queue}", {"durable": True}).status_code in (201, 204)
            response = api.post(
                "/api/exchanges/%2F/amq.default/publish",
                {"routing_key": queue, "payload": "{}", "payload_encoding": "string",
                 "properties": PROPERTIES},
            )
            assert response.json() == {"routed": True}
        # REST messaging: the headers of its envelope are neutral headers too.
        response = api.post(
            f"/api/rest/%2F/queues/{enc('neutral.live')}/messages",
            data=json.dumps(
                {"payload": "rest", "headers": {"h": 1}, "properties": {"correlation_id": "r-1"}}
            ).encode(),
            headers={"Content-Type": "application/vnd.baedal.envelope+json"},
        )
        assert response.status_code in (200, 201, 202), response.text
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        method, props, body = channel.basic_get("neutral.live", auto_ack=True)
        assert body == b"{}"
        check(props, PROPERTIES)
        method, props, body = channel.basic_get("neutral.live", auto_ack=True)
        assert body == b"rest" and props.headers == {"h": 1} and props.correlation_id == "r-1"
        assert props.delivery_mode == 2 and props.message_id  # REST's defaults
        connection.close()
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        method, props, body = connection.channel().basic_get("neutral.stored", auto_ack=True)
        assert body == b"{}"
        check(props, PROPERTIES)
        connection.close()


def test_amqp_only_properties_published_over_http_reach_amqp_and_http_readers(
    shared_http_broker: Any,
) -> None:
    api = Api(shared_http_broker.http_url)
    queue = "neutral.amqp-only"
    assert api.put(f"/api/queues/%2F/{queue}", {"durable": False}).status_code in (201, 204)
    extras = {"type": "kind", "app_id": "app", "delivery_mode": 1, "priority": 0}
    for _ in range(2):
        api.post(
            "/api/exchanges/%2F/amq.default/publish",
            {"routing_key": queue, "payload": "x", "payload_encoding": "string", "properties": extras},
        )
    [item] = api.post(
        f"/api/queues/%2F/{queue}/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"}
    ).json()
    assert item["properties"] == extras
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    _method, props, _body = connection.channel().basic_get(queue, auto_ack=True)
    check(props, extras)
    assert props.timestamp is None and props.headers is None
    connection.close()
