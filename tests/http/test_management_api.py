"""Management API: the RabbitMQ-compatible paths and the fields tooling reads."""

from __future__ import annotations

import base64
import hashlib
import os

import pika
import pika.exceptions
import pytest
from httphelpers import Api, enc, poll_until


@pytest.fixture
def api(shared_http_broker):
    return Api(shared_http_broker.http_url)


@pytest.fixture
def name(request):
    counter = iter(range(1000))
    return lambda prefix="q": f"{prefix}.{request.node.name[:40]}.{os.getpid()}.{next(counter)}"


def test_overview_has_the_fields_rabbitmq_tooling_reads(api):
    overview = api.json("/api/overview")
    assert overview["rabbitmq_version"]
    assert overview["product_name"] == "Baedal"
    assert overview["node"].startswith("baedal@")
    for key in ("publish", "deliver_get", "ack", "confirm", "redeliver"):
        assert isinstance(overview["message_stats"][key], int)
        assert isinstance(overview["message_stats"][f"{key}_details"]["rate"], float)
    assert set(overview["queue_totals"]) >= {
        "messages",
        "messages_ready",
        "messages_unacknowledged",
    }
    assert set(overview["object_totals"]) == {
        "connections",
        "channels",
        "exchanges",
        "queues",
        "consumers",
    }
    assert overview["alarms"] == []


def test_nodes_report_memory_disk_and_alarms(api):
    (node,) = api.json("/api/nodes")
    for key in ("mem_used", "mem_limit", "disk_free", "disk_free_limit", "uptime", "fd_used"):
        assert isinstance(node[key], int), key
    assert node["mem_alarm"] is False and node["disk_free_alarm"] is False
    assert api.json(f"/api/nodes/{enc(node['name'])}")["name"] == node["name"]


def test_queue_declare_list_get_and_delete(api, name):
    queue = name()
    assert (
        api.put(
            f"/api/queues/%2F/{enc(queue)}", {"durable": True, "arguments": {"x-max-length": 10}}
        ).status_code
        == 201
    )
    assert (
        api.put(
            f"/api/queues/%2F/{enc(queue)}", {"durable": True, "arguments": {"x-max-length": 10}}
        ).status_code
        == 204
    )
    info = api.json(f"/api/queues/%2F/{enc(queue)}")
    assert info["name"] == queue and info["vhost"] == "/" and info["durable"] is True
    assert info["arguments"] == {"x-max-length": 10}
    assert {
        "auto_delete",
        "exclusive",
        "messages",
        "messages_ready",
        "messages_unacknowledged",
        "consumers",
    } <= set(info)
    assert set(info["message_stats"]) >= {
        "publish",
        "publish_details",
        "deliver_get",
        "ack",
        "redeliver_details",
    }
    assert queue in [q["name"] for q in api.json("/api/queues")]
    assert queue in [q["name"] for q in api.json("/api/queues/%2F")]
    assert api.delete(f"/api/queues/%2F/{enc(queue)}").status_code == 204
    assert api.get(f"/api/queues/%2F/{enc(queue)}").status_code == 404


def test_inequivalent_redeclare_is_400_with_reason(api, name):
    queue = name()
    api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": False})
    response = api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": True})
    assert response.status_code == 400
    assert "inequivalent arg 'durable'" in response.json()["reason"]


def test_queue_delete_if_empty_refuses_a_queue_with_messages(api, name):
    queue = name()
    api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": False})
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": queue, "payload": "x", "properties": {}},
    )
    response = api.delete(f"/api/queues/%2F/{enc(queue)}?if-empty=true")
    assert response.status_code == 400 and response.json()["error"] == "bad_request"
    assert api.delete(f"/api/queues/%2F/{enc(queue)}/contents").status_code == 204
    assert api.json(f"/api/queues/%2F/{enc(queue)}")["messages"] == 0
    assert api.delete(f"/api/queues/%2F/{enc(queue)}?if-empty=true").status_code == 204


def test_publish_and_get_messages_round_trip_with_properties(api, name):
    queue = name()
    api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": False})
    props = {
        "content_type": "text/plain",
        "headers": {"k": "v", "n": 3},
        "delivery_mode": 1,
        "correlation_id": "c1",
    }
    routed = api.post(
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": queue, "payload": "héllo", "properties": props},
    )
    assert routed.json() == {"routed": True}
    binary = base64.b64encode(b"\xff\x00\x01").decode()
    api.post(
        "/api/exchanges/%2F/amq.default/publish",
        {"routing_key": queue, "payload": binary, "payload_encoding": "base64", "properties": {}},
    )
    got = api.post(
        f"/api/queues/%2F/{enc(queue)}/get",
        {"count": 5, "ackmode": "ack_requeue_true", "encoding": "auto"},
    ).json()
    assert [m["payload_encoding"] for m in got] == ["string", "base64"]
    first = got[0]
    assert first["payload"] == "héllo" and first["payload_bytes"] == len("héllo".encode())
    assert (
        first["redelivered"] is False and first["exchange"] == "" and first["routing_key"] == queue
    )
    assert (
        first["properties"]["headers"] == {"k": "v", "n": 3}
        and first["properties"]["correlation_id"] == "c1"
    )
    assert first["message_count"] == 1
    # requeued: the next get sees them again, flagged redelivered; ack_requeue_false removes them
    again = api.post(
        f"/api/queues/%2F/{enc(queue)}/get",
        {"count": 5, "ackmode": "ack_requeue_false", "encoding": "base64", "truncate": 2},
    ).json()
    assert [m["redelivered"] for m in again] == [True, True]
    assert again[0]["payload"] == base64.b64encode("héllo".encode()[:2]).decode()
    assert api.json(f"/api/queues/%2F/{enc(queue)}")["messages"] == 0


def test_publish_to_unbound_key_is_not_routed(api):
    response = api.post(
        "/api/exchanges/%2F/amq.direct/publish",
        {"routing_key": "nobody-listens", "payload": "x", "properties": {}},
    )
    assert response.json() == {"routed": False}


def test_exchanges_and_bindings(api, name):
    exchange, queue = name("ex"), name()
    assert (
        api.put(
            f"/api/exchanges/%2F/{enc(exchange)}", {"type": "topic", "durable": True}
        ).status_code
        == 201
    )
    api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": True})
    info = api.json(f"/api/exchanges/%2F/{enc(exchange)}")
    assert {k: info[k] for k in ("type", "durable", "auto_delete", "internal", "arguments")} == {
        "type": "topic",
        "durable": True,
        "auto_delete": False,
        "internal": False,
        "arguments": {},
    }
    created = api.post(
        f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}",
        {"routing_key": "a.*", "arguments": {}},
    )
    assert (
        created.status_code == 201
        and created.headers["Location"].endswith("/a.%2A")
        or created.headers["Location"].endswith("/a.*")
    )
    bindings = api.json(f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}")
    assert [
        (b["source"], b["destination"], b["destination_type"], b["routing_key"]) for b in bindings
    ] == [(exchange, queue, "queue", "a.*")]
    assert api.post(
        f"/api/exchanges/%2F/{enc(exchange)}/publish",
        {"routing_key": "a.b", "payload": "x", "properties": {}},
    ).json() == {"routed": True}
    assert api.json(f"/api/queues/%2F/{enc(queue)}/bindings")[-1]["routing_key"] == "a.*"
    assert api.delete(f"/api/exchanges/%2F/{enc(exchange)}?if-unused=true").status_code == 400
    props = bindings[0]["properties_key"]
    assert (
        api.delete(f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}/{enc(props)}").status_code
        == 204
    )
    assert api.json(f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}") == []
    assert api.delete(f"/api/exchanges/%2F/{enc(exchange)}?if-unused=true").status_code == 204


def test_binding_with_arguments_gets_a_distinct_properties_key(api, name):
    exchange, queue = name("hx"), name()
    api.put(f"/api/exchanges/%2F/{enc(exchange)}", {"type": "headers", "durable": False})
    api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": False})
    api.post(
        f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}",
        {"routing_key": "", "arguments": {"x-match": "all", "a": 1}},
    )
    api.post(
        f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}", {"routing_key": "", "arguments": {}}
    )
    keys = sorted(
        b["properties_key"] for b in api.json(f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}")
    )
    assert keys[0] == "~" and keys[1].startswith("~") and len(keys[1]) > 1


def test_vhosts_users_and_permissions(api, name):
    vhost, user = name("vh"), name("user")
    assert api.put(f"/api/vhosts/{enc(vhost)}").status_code == 201
    assert vhost in [v["name"] for v in api.json("/api/vhosts")]
    assert (
        api.put(f"/api/users/{enc(user)}", {"password": "s3cret", "tags": "management"}).status_code
        == 201
    )
    info = api.json(f"/api/users/{enc(user)}")
    assert "password" not in info and info["hashing_algorithm"] == "rabbit_password_hashing_sha256"
    raw = base64.b64decode(info["password_hash"])
    assert hashlib.sha256(raw[:4] + b"s3cret").digest() == raw[4:]
    assert info["tags"] == ["management"]
    assert (
        api.put(
            f"/api/permissions/{enc(vhost)}/{enc(user)}",
            {"configure": "^x", "write": ".*", "read": ".*"},
        ).status_code
        == 201
    )
    assert api.json(f"/api/permissions/{enc(vhost)}/{enc(user)}")["configure"] == "^x"
    assert (
        api.put(
            f"/api/permissions/{enc(vhost)}/{enc(user)}",
            {"configure": "(", "write": "", "read": ""},
        ).status_code
        == 400
    )
    assert api.delete(f"/api/permissions/{enc(vhost)}/{enc(user)}").status_code == 204
    assert api.delete(f"/api/users/{enc(user)}").status_code == 204
    assert api.delete(f"/api/vhosts/{enc(vhost)}").status_code == 204
    assert api.get(f"/api/vhosts/{enc(vhost)}").status_code == 404


def test_connections_channels_consumers_and_forced_close(shared_http_broker, api, name):
    queue = name()
    connection = pika.BlockingConnection(
        pika.URLParameters(
            shared_http_broker.amqp_url + "?client_properties={'connection_name':'probe'}"
        )
    )
    try:
        channel = connection.channel()
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_consume(queue, lambda *a: None)
        found = poll_until(
            lambda: [
                c
                for c in api.json("/api/connections")
                if c["channels"] >= 1 and c["user"] == "guest"
            ]
        )
        info = found[-1]
        assert {
            "name",
            "peer_host",
            "peer_port",
            "vhost",
            "state",
            "client_properties",
            "recv_oct",
            "send_oct",
        } <= set(info)
        assert info["vhost"] == "/" and info["state"] == "running"
        channels = api.json("/api/channels")
        assert any(
            c["connection_details"]["name"] == info["name"] and c["consumer_count"] == 1
            for c in channels
        )
        consumers = [c for c in api.json("/api/consumers") if c["queue"]["name"] == queue]
        assert consumers and consumers[0]["channel_details"]["connection_name"] == info["name"]
        response = api.delete(
            f"/api/connections/{enc(info['name'])}", headers={"X-Reason": "maintenance"}
        )
        assert response.status_code == 204
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            connection.process_data_events(time_limit=5)
            connection.process_data_events(time_limit=5)
        assert closed.value.reply_code == 320 and "maintenance" in closed.value.reply_text
    finally:
        if connection.is_open:
            connection.close()
    assert api.delete("/api/connections/no-such-connection").status_code == 404


def test_overview_counts_traffic_from_pika(shared_http_broker, api, name):
    queue = name()
    before = api.json("/api/overview")["message_stats"]
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(queue)
        for _ in range(3):
            channel.basic_publish("", queue, b"m")
        for _ in range(3):
            method, _props, _body = channel.basic_get(queue)
            channel.basic_ack(method.delivery_tag)
        after = poll_until(
            lambda: (
                (s := api.json("/api/overview")["message_stats"])["ack"] >= before["ack"] + 3 and s
            )
        )
        assert after["publish"] >= before["publish"] + 3
        assert after["deliver_get"] >= before["deliver_get"] + 3
        assert after["confirm"] >= before["confirm"] + 3
        stats = api.json(f"/api/queues/%2F/{enc(queue)}")["message_stats"]
        assert (stats["publish"], stats["deliver_get"], stats["ack"]) == (3, 3, 3)
    finally:
        connection.close()


def test_definitions_export_and_import_round_trip(shared_http_broker, api, name):
    vhost, user, exchange, queue = name("dvh"), name("duser"), name("dex"), name("dq")
    document = {
        "rabbit_version": "3.13.7",
        "users": [
            {
                "name": user,
                "password_hash": base64.b64encode(
                    b"salt" + hashlib.sha256(b"saltpw").digest()
                ).decode(),
                "hashing_algorithm": "rabbit_password_hashing_sha256",
                "tags": ["monitoring"],
            }
        ],
        "vhosts": [{"name": vhost}],
        "permissions": [
            {"user": user, "vhost": vhost, "configure": ".*", "write": ".*", "read": ".*"}
        ],
        "exchanges": [
            {
                "name": exchange,
                "vhost": vhost,
                "type": "fanout",
                "durable": True,
                "auto_delete": False,
                "internal": False,
                "arguments": {},
            }
        ],
        "queues": [
            {
                "name": queue,
                "vhost": vhost,
                "durable": True,
                "auto_delete": False,
                "arguments": {"x-queue-type": "classic"},
            }
        ],
        "bindings": [
            {
                "source": exchange,
                "vhost": vhost,
                "destination": queue,
                "destination_type": "queue",
                "routing_key": "",
                "arguments": {},
            }
        ],
    }
    assert api.post("/api/definitions", document).status_code == 204
    exported = api.json("/api/definitions")
    assert exported["rabbit_version"]
    assert {"name": vhost} in [{"name": v["name"]} for v in exported["vhosts"]]
    exported_user = next(u for u in exported["users"] if u["name"] == user)
    assert exported_user["password_hash"] == document["users"][0]["password_hash"]
    assert exported_user["hashing_algorithm"] == "rabbit_password_hashing_sha256" and exported_user[
        "tags"
    ] == ["monitoring"]
    assert any(q["name"] == queue and q["vhost"] == vhost for q in exported["queues"])
    assert any(e["name"] == exchange and e["type"] == "fanout" for e in exported["exchanges"])
    assert any(b["source"] == exchange and b["destination"] == queue for b in exported["bindings"])
    assert Api(shared_http_broker.http_url, (user, "pw")).get("/api/overview").status_code == 200
    assert api.delete(f"/api/vhosts/{enc(vhost)}").status_code == 204


def test_definitions_import_rejects_bad_documents_without_a_500(api):
    for bad in (
        {"queues": "nope"},
        {"queues": [{"name": "q"}]},
        {"bindings": [{"source": "a", "vhost": "/", "destination": "b", "destination_type": "x"}]},
        {"queues": [{"name": "q", "vhost": "no-such-vhost"}]},
    ):
        response = api.post("/api/definitions", bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.json()["error"] == "bad_request"


def test_rates_come_from_sampled_counters(shared_http_broker, api, name):
    queue = name()
    api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": False})
    sampler = shared_http_broker.http.sampler
    shared_http_broker.call(sampler.sample)
    for _ in range(5):
        api.post(
            "/api/exchanges/%2F/amq.default/publish",
            {"routing_key": queue, "payload": "x", "properties": {}},
        )
    shared_http_broker.call(sampler.sample)
    rate = api.json(f"/api/queues/%2F/{enc(queue)}")["message_stats"]["publish_details"]["rate"]
    assert rate > 0
    assert api.json("/api/overview")["message_stats"]["publish_details"]["rate"] > 0
