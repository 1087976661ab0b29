"""Exchange publish rates come from the same 5 s sampler as queue rates."""

from __future__ import annotations

import pika
import requests


def test_exchange_publish_in_rate_reflects_recent_publishes(http_broker) -> None:
    sampler = http_broker.http.sampler
    http_broker.call(sampler.sample)
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    for _ in range(50):
        channel.basic_publish("amq.fanout", "", b"tick")
    connection.close()
    http_broker.call(sampler.sample)
    info = requests.get(
        f"{http_broker.http_url}/api/exchanges/%2F/amq.fanout", auth=("guest", "guest"), timeout=10
    ).json()
    assert info["message_stats"]["publish_in"] == 50
    assert info["message_stats"]["publish_in_details"]["rate"] > 0
    idle = requests.get(
        f"{http_broker.http_url}/api/exchanges/%2F/amq.direct", auth=("guest", "guest"), timeout=10
    ).json()
    assert idle["message_stats"]["publish_in_details"]["rate"] == 0
