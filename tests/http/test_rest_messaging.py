"""REST messaging: publish, leased long poll, idempotent ack/nack, expiry, WebSocket."""

from __future__ import annotations

import json
import os
import socket
import time

import aiohttp
import pika
import pytest
from httphelpers import GUEST, Api, enc, poll_until


@pytest.fixture
def api(shared_http_broker):
    return Api(shared_http_broker.http_url)


@pytest.fixture
def queue(api, request):
    name = f"rest.{request.node.name[:40]}.{os.getpid()}.{time.monotonic_ns()}"
    assert api.put(f"/api/queues/%2F/{enc(name)}", {"durable": True}).status_code == 201
    yield name
    api.delete(f"/api/queues/%2F/{enc(name)}")


AUTH = {"Authorization": aiohttp.BasicAuth(*GUEST).encode()}


def messages_url(queue: str) -> str:
    return f"/api/rest/%2F/queues/{enc(queue)}/messages"


def depth(api: Api, queue: str) -> tuple[int, int]:
    info = api.json(f"/api/queues/%2F/{enc(queue)}")
    return info["messages_ready"], info["messages_unacknowledged"]


def test_publish_keeps_content_type_and_headers_and_pika_sees_them(shared_http_broker, api, queue):
    response = api.post(
        messages_url(queue),
        data=b'{"a": 1}',
        headers={"Content-Type": "application/json", "X-Baedal-Header-Trace": "t-1"},
    )
    assert response.status_code == 201
    message_id = response.json()["message_id"]
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        method, props, body = connection.channel().basic_get(queue, auto_ack=True)
    finally:
        connection.close()
    assert body == b'{"a": 1}'
    assert props.content_type == "application/json" and props.headers == {"Trace": "t-1"}
    assert props.message_id == message_id and props.delivery_mode == 2


def test_publish_json_envelope_with_base64_payload(api, queue):
    envelope = {
        "payload": "AAEC",
        "payload_encoding": "base64",
        "headers": {"n": 7},
        "properties": {"correlation_id": "c"},
    }
    response = api.post(
        messages_url(queue),
        data=json.dumps(envelope),
        headers={"Content-Type": "application/vnd.baedal.envelope+json"},
    )
    assert response.status_code == 201
    leased = api.get(messages_url(queue) + "/next?wait=2")
    assert leased.status_code == 200 and leased.content == b"\x00\x01\x02"
    assert (
        leased.headers["X-Baedal-Header-n"] == "7"
        and leased.headers["X-Baedal-Correlation-Id"] == "c"
    )


def test_publish_to_a_missing_queue_is_404(api):
    response = api.post(messages_url("no-such-queue"), data=b"x")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_idempotency_key_publishes_once_and_replays_the_answer(api, queue):
    headers = {"Idempotency-Key": "order-42", "Content-Type": "text/plain"}
    first = api.post(messages_url(queue), data=b"once", headers=headers)
    second = api.post(messages_url(queue), data=b"once", headers=headers)
    assert first.status_code == second.status_code == 201
    assert first.json()["message_id"] == second.json()["message_id"]
    assert second.headers["Idempotent-Replayed"] == "true"
    assert depth(api, queue) == (1, 0)
    conflict = api.post(messages_url(queue), data=b"different", headers=headers)
    assert conflict.status_code == 422 and conflict.json()["error"] == "idempotency_key_reused"


def test_long_poll_leases_the_message_as_unacked_and_ack_is_idempotent(api, queue):
    api.post(messages_url(queue), data=b"hello", headers={"Content-Type": "text/plain"})
    leased = api.get(messages_url(queue) + "/next?wait=5&lease=30")
    assert leased.status_code == 200 and leased.content == b"hello"
    assert leased.headers["Content-Type"].startswith("text/plain")
    assert leased.headers["X-Baedal-Redelivered"] == "false"
    assert depth(api, queue) == (0, 1)
    ack_url = leased.headers["X-Baedal-Ack-URL"]
    first, second = api.post(ack_url), api.post(ack_url)
    assert first.status_code == second.status_code == 200
    assert first.json()["outcome"] == "ack" and second.json()["replayed"] is True
    assert depth(api, queue) == (0, 0)
    assert api.post(leased.headers["X-Baedal-Nack-URL"]).status_code == 409


def test_unknown_lease_is_404_json(api, queue):
    response = api.post(f"/api/rest/%2F/queues/{enc(queue)}/leases/nope/ack")
    assert response.status_code == 404 and response.json()["error"] == "not_found"


def test_nack_with_requeue_returns_the_message_redelivered(api, queue):
    api.post(messages_url(queue), data=b"again")
    leased = api.get(messages_url(queue) + "/next?wait=5")
    nack = api.post(leased.headers["X-Baedal-Nack-URL"] + "?requeue=true")
    assert nack.status_code == 200 and nack.json()["outcome"] == "requeue"
    assert (
        api.post(leased.headers["X-Baedal-Nack-URL"] + "?requeue=true").json()["replayed"] is True
    )
    again = api.get(messages_url(queue) + "/next?wait=5")
    assert again.content == b"again" and again.headers["X-Baedal-Redelivered"] == "true"
    api.post(again.headers["X-Baedal-Nack-URL"] + "?requeue=false")
    assert depth(api, queue) == (0, 0)


def test_long_poll_times_out_with_204(api, queue):
    started = time.monotonic()
    response = api.get(messages_url(queue) + "/next?wait=0.3")
    assert response.status_code == 204 and time.monotonic() - started < 3
    assert api.json(f"/api/queues/%2F/{enc(queue)}")["consumers"] == 0


def test_long_poll_is_woken_by_a_publish(api, queue):
    import threading

    result = {}
    poller = threading.Thread(
        target=lambda: result.setdefault("r", api.get(messages_url(queue) + "/next?wait=10"))
    )
    poller.start()
    poll_until(lambda: api.json(f"/api/queues/%2F/{enc(queue)}")["consumers"] == 1)
    Api(api.base).post(messages_url(queue), data=b"wake")
    poller.join(10)
    assert result["r"].status_code == 200 and result["r"].content == b"wake"


def test_unacked_lease_expires_back_to_the_queue_redelivered(api, queue):
    api.post(messages_url(queue), data=b"expire-me")
    leased = api.get(messages_url(queue) + "/next?wait=5&lease=1")
    assert leased.status_code == 200
    poll_until(lambda: depth(api, queue) == (1, 0), timeout=5)
    late = api.post(leased.headers["X-Baedal-Ack-URL"])
    assert late.status_code == 404 and late.json()["error"] == "lease_expired"
    again = api.get(messages_url(queue) + "/next?wait=5")
    assert again.content == b"expire-me" and again.headers["X-Baedal-Redelivered"] == "true"


def _raw_get(base: str, path: str) -> socket.socket:
    import base64
    from urllib.parse import urlparse

    url = urlparse(base)
    sock = socket.create_connection((url.hostname, url.port), timeout=5)
    token = base64.b64encode(b"%s:%s" % (GUEST[0].encode(), GUEST[1].encode())).decode()
    sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode())
    return sock


def test_client_disconnect_while_waiting_loses_nothing(api, queue):
    sock = _raw_get(api.base, messages_url(queue) + "/next?wait=30&lease=30")
    poll_until(lambda: api.json(f"/api/queues/%2F/{enc(queue)}")["consumers"] == 1)
    sock.close()
    poll_until(lambda: api.json(f"/api/queues/%2F/{enc(queue)}")["consumers"] == 0)
    api.post(messages_url(queue), data=b"kept")
    assert depth(api, queue) == (1, 0)


def test_client_disconnect_after_the_message_was_sent_returns_it_on_expiry(api, queue):
    api.post(messages_url(queue), data=b"in-flight")
    sock = _raw_get(api.base, messages_url(queue) + "/next?wait=5&lease=1")
    poll_until(lambda: depth(api, queue) == (0, 1))  # leased to this client
    sock.close()  # without reading the response: the lease must bring the message back
    poll_until(lambda: depth(api, queue) == (1, 0), timeout=5)
    again = api.get(messages_url(queue) + "/next?wait=5")
    assert again.content == b"in-flight" and again.headers["X-Baedal-Redelivered"] == "true"


def test_lease_bound_per_client_answers_429(shared_http_broker, api, queue):
    manager = shared_http_broker.http.leases
    shared_http_broker.call(setattr, manager, "leases_per_client", 2)
    try:
        for body in (b"1", b"2", b"3"):
            api.post(messages_url(queue), data=body)
        headers = {"X-Baedal-Client-Id": "bounded"}
        assert api.get(messages_url(queue) + "/next?wait=1", headers=headers).status_code == 200
        assert api.get(messages_url(queue) + "/next?wait=1", headers=headers).status_code == 200
        refused = api.get(messages_url(queue) + "/next?wait=1", headers=headers)
        assert refused.status_code == 429 and refused.json()["error"] == "too_many_leases"
    finally:
        shared_http_broker.call(setattr, manager, "leases_per_client", 1000)


def test_body_over_max_message_size_is_413(shared_http_broker, api, queue):
    config = shared_http_broker.core.config
    shared_http_broker.call(setattr, config, "max_message_size", 1024)
    try:
        response = api.post(messages_url(queue), data=b"x" * 2048)
        assert response.status_code == 413 and response.json()["error"] == "payload_too_large"
    finally:
        shared_http_broker.call(setattr, config, "max_message_size", 128 * 1024 * 1024)


async def test_websocket_delivers_with_credit_and_acks(shared_http_broker, queue):
    api = Api(shared_http_broker.http_url)
    for i in range(5):
        api.post(messages_url(queue), data=f"m{i}".encode())
    url = shared_http_broker.http_url + f"/api/rest/%2F/queues/{enc(queue)}/ws?prefetch=2"
    async with aiohttp.ClientSession(headers=AUTH) as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        first = [await ws.receive_json(timeout=5) for _ in range(2)]
        assert [f["payload"] for f in first] == ["m0", "m1"]
        assert all(f["type"] == "message" and f["redelivered"] is False for f in first)
        assert depth(api, queue) == (3, 2)  # credit 2: nothing more until an ack
        await ws.send_json({"type": "ack", "lease_id": first[0]["lease_id"]})
        assert (await ws.receive_json(timeout=5)) == {
            "type": "settled",
            "lease_id": first[0]["lease_id"],
            "outcome": "ack",
            "replayed": False,
        }
        third = await ws.receive_json(timeout=5)
        assert third["payload"] == "m2"
        await ws.send_json({"type": "ack", "lease_id": first[0]["lease_id"]})
        assert (await ws.receive_json(timeout=5))["replayed"] is True
        await ws.send_str("not json")
        assert (await ws.receive_json(timeout=5))["type"] == "error"
    # disconnect: the two outstanding leases (m1, m2) go back, in order, redelivered
    poll_until(lambda: depth(api, queue) == (4, 0))
    got = api.post(
        f"/api/queues/%2F/{enc(queue)}/get",
        {"count": 4, "ackmode": "ack_requeue_false", "encoding": "auto"},
    ).json()
    assert [m["payload"] for m in got] == ["m1", "m2", "m3", "m4"]
    assert [m["redelivered"] for m in got] == [True, True, False, False]


async def test_websocket_is_told_when_its_queue_is_deleted(shared_http_broker, queue):
    api = Api(shared_http_broker.http_url)
    url = shared_http_broker.http_url + f"/api/rest/%2F/queues/{enc(queue)}/ws"
    async with aiohttp.ClientSession(headers=AUTH) as session, session.ws_connect(url) as ws:
        assert (await ws.receive_json(timeout=5))["type"] == "subscribed"
        api.delete(f"/api/queues/%2F/{enc(queue)}")
        assert (await ws.receive_json(timeout=5))["type"] == "cancelled"
        closed = await ws.receive(timeout=5)
        assert closed.type in (
            aiohttp.WSMsgType.CLOSE,
            aiohttp.WSMsgType.CLOSED,
            aiohttp.WSMsgType.CLOSING,
        )
