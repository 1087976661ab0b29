"""Authentication per tag, JSON errors for bad requests, and /metrics."""

from __future__ import annotations

import os
import time

import pika
import pytest
import requests
from httphelpers import Api, enc, poll_until


@pytest.fixture(scope="module")
def users(shared_http_broker):
    """One user per tag, each with permissions on '/' only, plus a vhost they cannot see."""
    admin = Api(shared_http_broker.http_url)
    admin.put("/api/vhosts/hidden")
    for name, tags in (
        ("admin2", "administrator"),
        ("mon", "monitoring"),
        ("mgmt", "management"),
        ("plain", ""),
    ):
        assert admin.put(f"/api/users/{name}", {"password": "pw", "tags": tags}).status_code in (
            201,
            204,
        )
        admin.put(f"/api/permissions/%2F/{name}", {"configure": ".*", "write": ".*", "read": ".*"})
    admin.put("/api/queues/hidden/secret", {"durable": False})
    return {
        name: Api(shared_http_broker.http_url, (name, "pw"))
        for name in ("admin2", "mon", "mgmt", "plain")
    }


def test_missing_or_wrong_credentials_are_401_with_www_authenticate(shared_http_broker):
    for auth in (None, ("guest", "wrong"), ("nobody", "x")):
        response = Api(shared_http_broker.http_url, auth).get("/api/overview")
        assert response.status_code == 401
        assert response.headers["WWW-Authenticate"].startswith("Basic")
        assert response.json()["error"] == "not_authorized"
    garbage = requests.get(
        shared_http_broker.http_url + "/api/overview",
        headers={"Authorization": "Basic !!!"},
        timeout=5,
    )
    assert garbage.status_code == 401


def test_user_without_management_tag_is_403_on_the_management_api(users):
    response = users["plain"].get("/api/overview")
    assert response.status_code == 403 and response.json()["error"] == "not_authorised"


def test_monitoring_reads_everything_but_cannot_change_anything(users):
    mon = users["mon"]
    assert mon.get("/api/overview").status_code == 200
    assert "hidden" in [v["name"] for v in mon.json("/api/vhosts")]
    assert mon.get("/api/queues/hidden/secret").status_code == 200
    assert mon.put("/api/queues/%2F/mon-q", {"durable": False}).status_code == 403
    assert mon.get("/api/users").status_code == 403


def test_management_sees_only_its_vhosts_and_may_manage_there(users):
    mgmt = users["mgmt"]
    assert [v["name"] for v in mgmt.json("/api/vhosts")] == ["/"]
    assert all(q["vhost"] == "/" for q in mgmt.json("/api/queues"))
    assert mgmt.get("/api/queues/hidden/secret").status_code == 403
    assert mgmt.put("/api/queues/%2F/mgmt-q", {"durable": False}).status_code == 201
    assert mgmt.delete("/api/queues/%2F/mgmt-q").status_code == 204
    assert mgmt.put("/api/vhosts/nope").status_code == 403
    assert mgmt.get("/api/definitions").status_code == 403


def test_administrator_may_do_everything(users):
    admin = users["admin2"]
    assert admin.get("/api/users").status_code == 200
    assert admin.put("/api/vhosts/admin2-vhost").status_code == 201
    assert admin.delete("/api/vhosts/admin2-vhost").status_code == 204


def test_rest_messaging_needs_only_a_user_with_permissions(users, shared_http_broker):
    Api(shared_http_broker.http_url).put("/api/queues/%2F/plain-q", {"durable": False})
    plain = users["plain"]
    assert plain.post("/api/rest/%2F/queues/plain-q/messages", data=b"x").status_code == 201
    assert plain.post("/api/rest/hidden/queues/secret/messages", data=b"x").status_code == 403


def test_guest_is_refused_from_a_non_loopback_address(shared_http_broker):
    # The HTTP side uses the one rule every protocol's login uses (transport/address.py).
    from baedal.protocols.http import auth
    from baedal.transport.address import is_loopback

    assert auth.is_loopback is is_loopback
    assert is_loopback("127.0.0.1") and is_loopback("::1") and not is_loopback("10.1.2.3")


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("PUT", "/api/queues/%2F/bad-json", b"{not json", 400),
        ("PUT", "/api/queues/%2F/bad-type", b'{"durable": "yes"}', 400),
        ("PUT", "/api/queues/%2F/bad-arg", b'{"arguments": {"x-max-length": "ten"}}', 400),
        ("PUT", "/api/queues/no-such-vhost/q", b"{}", 404),
        ("PUT", "/api/exchanges/%2F/bad-ex", b'{"type": "nonsense"}', 400),
        ("PUT", "/api/exchanges/%2F/amq.mine", b'{"type": "direct"}', 403),
        ("DELETE", "/api/exchanges/%2F/amq.direct", b"", 403),
        ("GET", "/api/exchanges/%2F/missing", b"", 404),
        ("POST", "/api/queues/%2F/missing/get", b'{"count": 1}', 404),
        ("POST", "/api/exchanges/%2F/amq.direct/publish", b'{"payload": 5}', 400),
        (
            "POST",
            "/api/exchanges/%2F/amq.direct/publish",
            b'{"payload": "!!", "payload_encoding": "base64"}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.direct/publish",
            b'{"payload": "x", "properties": {"priority": 900}}',
            400,
        ),
        (
            "POST",
            "/api/exchanges/%2F/amq.direct/publish",
            b'{"payload": "x", "properties": {"expiration": "soon"}}',
            400,
        ),
        ("PUT", "/api/users/someone", b'{"password_hash": "abc"}', 400),
        ("PUT", "/api/users/someone", b"[1, 2]", 400),
        ("PUT", "/api/permissions/%2F/no-such-user", b"{}", 404),
        ("GET", "/api/rest/%2F/queues/missing/messages/next?wait=abc", b"", 400),
        ("GET", "/api/no/such/endpoint", b"", 404),
        ("PATCH", "/api/overview", b"", 405),
    ],
)
def test_bad_requests_get_json_4xx(shared_http_broker, method, path, body, status):
    response = Api(shared_http_broker.http_url).session.request(
        method, shared_http_broker.http_url + path, data=body, timeout=5
    )
    assert response.status_code == status, response.text
    document = response.json()
    assert set(document) == {"error", "reason"} and document["reason"]


def test_body_over_client_max_size_is_413(shared_http_broker):
    response = Api(shared_http_broker.http_url).session.put(
        shared_http_broker.http_url + "/api/queues/%2F/huge",
        data=b"{" + b" " * (9 * 1024 * 1024) + b"}",
        timeout=10,
    )
    assert response.status_code == 413 and response.json()["error"] == "payload_too_large"


def test_exclusive_queue_of_a_connection_is_409_over_rest(shared_http_broker):
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        queue = connection.channel().queue_declare("", exclusive=True).method.queue
        response = Api(shared_http_broker.http_url).get(
            f"/api/rest/%2F/queues/{enc(queue)}/messages/next?wait=0"
        )
        assert response.status_code == 409 and response.json()["error"] == "resource_locked"
    finally:
        connection.close()


def _metric(text: str, name: str, labels: str = "") -> float:
    for line in text.splitlines():
        if line.startswith(name + (("{" + labels + "}") if labels else " ")) or (
            labels and line.startswith(name + "{") and labels in line
        ):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name}{{{labels}}} not in metrics")


def test_metrics_expose_queue_and_broker_state_without_auth(shared_http_broker):
    queue = f"metrics.{os.getpid()}.{time.monotonic_ns()}"
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue)
        for _ in range(4):
            channel.basic_publish("", queue, b"m")
        channel.basic_publish("amq.direct", "unroutable-key", b"m")
        method, _props, _body = channel.basic_get(queue)
        channel.basic_ack(method.delivery_tag)
        channel.basic_get(queue)  # stays unacked
        response = poll_until(
            lambda: (
                (r := requests.get(shared_http_broker.http_url + "/metrics", timeout=5))
                and f'queue="{queue}"' in r.text
                and r
            )
        )
        assert response.headers["Content-Type"].startswith("text/plain")
        text = response.text
        labels = f'queue="{queue}",vhost="/"'
        assert _metric(text, "baedal_queue_messages_ready", labels) == 2
        assert _metric(text, "baedal_queue_messages_unacked", labels) == 1
        assert _metric(text, "baedal_queue_messages_published_total", labels) == 4
        assert _metric(text, "baedal_queue_messages_delivered_total", labels) == 2
        assert _metric(text, "baedal_queue_messages_acked_total", labels) == 1
        assert _metric(text, "baedal_connections", 'protocol="amqp"') >= 1
        assert _metric(text, "baedal_channels") >= 1
        assert _metric(text, "baedal_messages_unroutable_total") >= 1
        for name in (
            "baedal_consumers",
            "baedal_messages_confirmed_total",
            "baedal_messages_redelivered_total",
            "baedal_messages_returned_total",
            "baedal_process_resident_memory_bytes",
            "baedal_disk_free_bytes",
        ):
            assert _metric(text, name) >= 0
        assert _metric(text, "baedal_alarm", 'resource="memory"') == 0
        assert _metric(text, "baedal_alarm", 'resource="disk"') == 0
    finally:
        connection.close()


def test_metrics_report_an_alarm(http_broker):
    # The broker's resource watcher raises the disk alarm once the limit exceeds free space.
    limit = http_broker.settings.disk_free_limit
    http_broker.settings.disk_free_limit = 1 << 62
    try:
        api = Api(http_broker.http_url)
        poll_until(lambda: api.json("/api/overview")["alarms"] == ["disk"])
        text = requests.get(http_broker.http_url + "/metrics", timeout=5).text
        assert _metric(text, "baedal_alarm", 'resource="disk"') == 1
        assert api.get("/api/health/checks/alarms").status_code == 503
        api.put("/api/queues/%2F/blocked", {"durable": False})
        blocked = api.post("/api/rest/%2F/queues/blocked/messages", data=b"x")
        assert blocked.status_code == 503 and blocked.headers["Retry-After"]
    finally:
        http_broker.settings.disk_free_limit = limit


def test_console_redirect_and_missing_files_are_json_404(shared_http_broker):
    response = requests.get(shared_http_broker.http_url + "/", allow_redirects=False, timeout=5)
    assert response.status_code == 302 and response.headers["Location"] == "/console/"
    missing = requests.get(shared_http_broker.http_url + "/console/../../etc/passwd", timeout=5)
    assert missing.status_code == 404
