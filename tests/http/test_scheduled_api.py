"""Scheduled messages in the management API, ``baedal ctl`` and ``/metrics``: listed in
due order with pagination, one shown, one cancelled (and then never delivered)."""

from __future__ import annotations

import json
import time
from typing import Any

import pika
import pytest
from httphelpers import Api, enc, poll_until

from baedal import ctl

pytestmark = pytest.mark.timeout(60)


def _publish(broker: Any, queue: str, delays_ms: list[int], headers: dict[str, Any] | None = None) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare(queue)
    for i, delay in enumerate(delays_ms):
        channel.basic_publish(
            "", queue, f"m{i}".encode(),
            pika.BasicProperties(headers={"AMQ_SCHEDULED_DELAY": delay, **(headers or {})}),
        )
    connection.close()


def test_list_is_in_due_order_and_paginated(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    _publish(http_broker, "later", [60_000 + 1000 * i for i in (4, 1, 3, 0, 2)])
    page = api.json("/api/scheduled/%2F?page=1&page_size=2")
    assert page["total_count"] == 5
    assert page["page_count"] == 3
    assert page["item_count"] == 2
    second = api.json("/api/scheduled/%2F?page=2&page_size=2")["items"]
    third = api.json("/api/scheduled/%2F?page=3&page_size=2")["items"]
    jobs = page["items"] + second + third
    assert [job["due"] for job in jobs] == sorted(job["due"] for job in jobs)
    first = jobs[0]
    assert first["exchange"] == "" and first["routing_key"] == "later"
    assert first["size"] == 2  # b"mN"
    assert first["repeat"] == 0 and first["kind"] == "activemq"
    assert first["due"] > time.time() * 1000 + 55_000
    assert api.json(f"/api/scheduled/%2F/{first['id']}")["id"] == first["id"]
    assert api.json("/api/scheduled")["total_count"] == 5
    assert api.get("/api/scheduled/%2F?page_size=0").status_code == 400
    assert api.get("/api/scheduled/nope").status_code == 404


def test_delete_cancels_a_job_and_it_is_never_delivered(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    _publish(http_broker, "soon", [300, 700])
    jobs = api.json("/api/scheduled/%2F")["items"]
    assert [job["routing_key"] for job in jobs] == ["soon", "soon"]
    response = api.delete(f"/api/scheduled/%2F/{jobs[0]['id']}")
    assert response.status_code == 204
    assert api.delete(f"/api/scheduled/%2F/{jobs[0]['id']}").status_code == 404
    assert api.get(f"/api/scheduled/%2F/{jobs[0]['id']}").status_code == 404
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    channel = connection.channel()
    got: list[bytes] = []

    def one() -> bool:
        method, _properties, body = channel.basic_get("soon", auto_ack=True)
        if method is not None:
            got.append(body)
        return bool(got)

    poll_until(one, 10)
    # The cancelled job was due first: it would have arrived before this one.
    assert got == [b"m1"]
    assert channel.basic_get("soon", auto_ack=True)[0] is None
    connection.close()
    assert api.json("/api/scheduled/%2F")["total_count"] == 0


def test_cancel_needs_a_management_user_with_configure_permission(http_broker: Any) -> None:
    admin = Api(http_broker.http_url)
    admin.put("/api/users/watcher", {"password": "pw", "tags": "monitoring"})
    admin.put("/api/permissions/%2F/watcher", {"configure": ".*", "write": ".*", "read": ".*"})
    admin.put("/api/users/limited", {"password": "pw", "tags": "management"})
    admin.put("/api/permissions/%2F/limited", {"configure": "^$", "write": ".*", "read": ".*"})
    _publish(http_broker, "guarded", [60_000])
    [job] = admin.json("/api/scheduled/%2F")["items"]
    watcher = Api(http_broker.http_url, ("watcher", "pw"))
    assert watcher.json("/api/scheduled/%2F")["total_count"] == 1
    assert watcher.delete(f"/api/scheduled/%2F/{job['id']}").status_code == 403
    limited = Api(http_broker.http_url, ("limited", "pw"))
    assert limited.delete(f"/api/scheduled/%2F/{job['id']}").status_code == 403
    assert admin.delete(f"/api/scheduled/%2F/{job['id']}").status_code == 204


def test_metrics_gauge_counts_scheduled_messages(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    _publish(http_broker, "metered", [60_000, 60_000, 60_000])
    text = api.get("/metrics").text
    assert "baedal_scheduled_messages 3.0" in text
    assert "baedal_scheduled_settling 0.0" in text  # nothing fired yet


def test_ctl_lists_and_cancels_scheduled_messages(http_broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
    _publish(
        http_broker, "by-ctl", [60_000],
        {"AMQ_SCHEDULED_PERIOD": 1000, "AMQ_SCHEDULED_REPEAT": 4},
    )
    url = http_broker.http_url
    assert ctl.main(["--url", url, "--json", "list_scheduled", "-p", "/"]) == 0
    page = json.loads(capsys.readouterr().out)
    [job] = page["items"]
    assert job["repeat_left"] == 4
    assert ctl.main(["--url", url, "list_scheduled"]) == 0
    table = capsys.readouterr().out
    assert job["id"] in table and "4 of 4 repeats left" in table
    assert ctl.main(["--url", url, "cancel_scheduled", job["id"]]) == 0
    capsys.readouterr()
    assert ctl.main(["--url", url, "cancel_scheduled", job["id"]]) == 1
    assert Api(url).json(f"/api/scheduled/{enc('/')}")["total_count"] == 0


def test_an_http_publish_with_amq_headers_is_scheduled_too(http_broker: Any) -> None:
    """The hook is in the one publish path: the management API's publish gets it too
    (and STOMP's SEND will, as ActiveMQ users send these headers as strings)."""
    api = Api(http_broker.http_url)
    api.put("/api/queues/%2F/via-http", {"durable": True})
    answer = api.post(
        "/api/exchanges/%2F/amq.default/publish",
        {
            "routing_key": "via-http",
            "payload": "hello",
            "payload_encoding": "string",
            "properties": {"delivery_mode": 2, "headers": {"AMQ_SCHEDULED_DELAY": "400"}},
        },
    )
    assert answer.status_code == 200 and answer.json() == {"routed": True}
    [job] = api.json("/api/scheduled/%2F")["items"]
    assert job["routing_key"] == "via-http"
    assert api.json("/api/queues/%2F/via-http")["messages"] == 0

    def delivered() -> Any:
        got = api.post("/api/queues/%2F/via-http/get", {"count": 1, "ackmode": "ack_requeue_false", "encoding": "auto"})
        items = got.json()
        return items if items else None

    [message] = poll_until(delivered, 10)
    assert message["payload"] == "hello"
    assert message["properties"]["headers"]["scheduledJobId"] == job["id"]
    assert "AMQ_SCHEDULED_DELAY" not in message["properties"]["headers"]


def test_deleting_a_vhost_cancels_its_scheduled_messages(http_broker: Any) -> None:
    api = Api(http_broker.http_url)
    api.put("/api/vhosts/doomed")
    api.put("/api/permissions/doomed/guest", {"configure": ".*", "write": ".*", "read": ".*"})
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url + "doomed"))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("q")
    channel.basic_publish("", "q", b"x", pika.BasicProperties(headers={"AMQ_SCHEDULED_DELAY": 60_000}))
    connection.close()
    _publish(http_broker, "stays", [60_000])
    assert api.json("/api/scheduled/doomed")["total_count"] == 1
    assert api.delete("/api/vhosts/doomed").status_code == 204
    listing = api.json("/api/scheduled")
    assert [job["vhost"] for job in listing["items"]] == ["/"]


def test_a_user_sees_only_the_scheduled_messages_of_vhosts_they_may_see(http_broker: Any) -> None:
    admin = Api(http_broker.http_url)
    for vhost in ("seen-a", "seen-b", "unseen"):
        admin.put(f"/api/vhosts/{vhost}")
        admin.put(f"/api/permissions/{vhost}/guest", {"configure": ".*", "write": ".*", "read": ".*"})
        connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url + vhost))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("q")
        channel.basic_publish("", "q", vhost.encode(), pika.BasicProperties(headers={"AMQ_SCHEDULED_DELAY": 60_000}))
        connection.close()
    admin.put("/api/users/partial", {"password": "pw", "tags": "management"})
    for vhost in ("seen-a", "seen-b"):
        admin.put(f"/api/permissions/{vhost}/partial", {"configure": ".*", "write": ".*", "read": ".*"})
    partial = Api(http_broker.http_url, ("partial", "pw"))
    listing = partial.json("/api/scheduled?page_size=1")
    assert listing["total_count"] == 2 and listing["page_count"] == 2
    both = listing["items"] + partial.json("/api/scheduled?page=2&page_size=1")["items"]
    assert sorted(job["vhost"] for job in both) == ["seen-a", "seen-b"]
    assert partial.get("/api/scheduled/unseen").status_code == 403
    assert admin.json("/api/scheduled")["total_count"] == 3
