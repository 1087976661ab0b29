"""Management and metrics fields say what is true, not a constant stand-in.

One test per field: the connection's negotiated auth mechanism, byte counters that
count every write, per-channel publish/deliver counts and rates, single-active-consumer
activity, queue state, fields Baedal cannot compute left out, the RabbitMQ version it
claims, and Prometheus totals that survive a queue's deletion.
"""

from __future__ import annotations

import struct
import sys
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import amqp
import pika
import pytest
import requests
from httphelpers import Api, enc, poll_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import rawamqp  # noqa: E402

AUTH = ("guest", "guest")


@pytest.fixture
def api(shared_http_broker: Any) -> Api:
    return Api(shared_http_broker.http_url)


@pytest.fixture
def fresh_api(http_broker: Any) -> Api:
    return Api(http_broker.http_url)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    return lambda prefix: f"{prefix}-{request.node.name[:40]}-{uuid.uuid4().hex[:8]}"


def _get(broker: Any, path: str) -> Any:
    response = requests.get(f"{broker.http_url}{path}", auth=AUTH, timeout=10)
    response.raise_for_status()
    return response.json()


def _connection_by_port(broker: Any, port: int) -> dict | None:
    for info in _get(broker, "/api/connections"):
        if info["peer_port"] == port:
            return info
    return None


class CountingSocket:
    """Wraps the raw client's socket and counts the bytes each way."""

    def __init__(self, sock: Any) -> None:
        self.sock = sock
        self.received = 0
        self.sent = 0

    def recv(self, size: int) -> bytes:
        data = self.sock.recv(size)
        self.received += len(data)
        return data

    def sendall(self, data: bytes) -> None:
        self.sock.sendall(data)
        self.sent += len(data)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sock, name)


def test_auth_mechanism_is_the_one_the_client_negotiated(shared_http_broker) -> None:
    port = int(shared_http_broker.amqp_url.rsplit(":", 1)[1].split("/")[0])
    plain = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    amqplain = amqp.Connection(f"127.0.0.1:{port}", userid="guest", password="guest", login_method="AMQPLAIN")
    amqplain.connect()
    try:
        plain_port = plain._impl._transport._sock.getsockname()[1]
        amqplain_port = amqplain.sock.getsockname()[1]
        infos = poll_until(
            lambda: (a := _connection_by_port(shared_http_broker, plain_port)) and (b := _connection_by_port(shared_http_broker, amqplain_port)) and (a, b)
        )
        assert infos[0]["auth_mechanism"] == "PLAIN"
        assert infos[1]["auth_mechanism"] == "AMQPLAIN"
    finally:
        plain.close()
        amqplain.close()


def test_send_and_recv_octets_count_every_byte_on_the_wire(shared_http_broker, name) -> None:
    port = int(shared_http_broker.amqp_url.rsplit(":", 1)[1].split("/")[0])
    queue = name("octets")
    client = rawamqp.RawAMQP("127.0.0.1", port)
    counting = CountingSocket(client.sock)
    client.sock = counting  # type: ignore[assignment]
    try:
        client.handshake()
        client.open_channel(1)
        client.send(rawamqp.queue_declare(1, queue, exclusive=True))
        client.read_method((50, 11))
        body = b"b" * 300_000  # bigger than frame_max: get-ok goes out as several frames
        for _ in range(3):
            client.send(
                rawamqp.basic_publish(1, "", queue)
                + rawamqp.header_frame(1, len(body))
                + rawamqp.body_frame(1, body[:131_000])
                + rawamqp.body_frame(1, body[131_000:262_000])
                + rawamqp.body_frame(1, body[262_000:])
            )
        get = rawamqp.method_frame(1, 60, 70, struct.pack("!H", 0) + rawamqp.shortstr(queue) + b"\x01")
        for _ in range(3):
            client.send(get)
            client.read_method((60, 71))
            header = client.read_frame()
            size = struct.unpack("!Q", header.payload[4:12])[0]
            got = 0
            while got < size:
                got += len(client.read_frame().payload)
        assert not client.buf
        info = poll_until(
            lambda: (c := _connection_by_port(shared_http_broker, counting.getsockname()[1])) and c["recv_oct"] == counting.sent and c
        )
        assert info["send_oct"] == counting.received
    finally:
        client.close()


def test_channel_message_stats_count_publishes_and_deliveries(shared_http_broker, name) -> None:
    sampler = shared_http_broker.http.sampler
    queue = name("chstats")
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        publisher = connection.channel()
        consumer = connection.channel()
        publisher.queue_declare(queue, exclusive=True)
        shared_http_broker.call(sampler.sample)
        for _ in range(7):
            publisher.basic_publish("", queue, b"m")
        for _ in range(4):
            poll_until(lambda: consumer.basic_get(queue, auto_ack=True)[0])
        shared_http_broker.call(sampler.sample)
        channels = {c["number"]: c for c in _get(shared_http_broker, f"/api/connections/{enc(_name_of(shared_http_broker, connection))}/channels")}
        assert channels[publisher.channel_number]["message_stats"]["publish"] == 7
        assert channels[publisher.channel_number]["message_stats"]["publish_details"]["rate"] > 0
        assert channels[publisher.channel_number]["message_stats"]["deliver_get"] == 0
        assert channels[consumer.channel_number]["message_stats"]["deliver_get"] == 4
        assert channels[consumer.channel_number]["message_stats"]["deliver_get_details"]["rate"] > 0
        assert channels[consumer.channel_number]["message_stats"]["publish"] == 0
    finally:
        connection.close()


def _name_of(broker: Any, connection: pika.BlockingConnection) -> str:
    port = connection._impl._transport._sock.getsockname()[1]
    info = poll_until(lambda: _connection_by_port(broker, port))
    return info["name"]


def test_single_active_consumer_standby_is_shown_waiting_until_it_takes_over(shared_http_broker, name) -> None:
    queue = name("sac")
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(queue, arguments={"x-single-active-consumer": True})
        first = channel.basic_consume(queue, lambda *a: None, consumer_tag="first")
        channel.basic_consume(queue, lambda *a: None, consumer_tag="second")
        plain_queue = name("plain")
        channel.queue_declare(plain_queue)
        channel.basic_consume(plain_queue, lambda *a: None, consumer_tag="plain")

        def consumers() -> dict[str, dict]:
            return {c["consumer_tag"]: c for c in _get(shared_http_broker, "/api/consumers/%2F") if c["queue"]["name"] in (queue, plain_queue)}

        found = poll_until(lambda: len(consumers()) == 3 and consumers())
        assert (found["first"]["active"], found["first"]["activity_status"]) == (True, "single_active")
        assert (found["second"]["active"], found["second"]["activity_status"]) == (False, "waiting")
        assert (found["plain"]["active"], found["plain"]["activity_status"]) == (True, "up")
        assert _get(shared_http_broker, f"/api/queues/%2F/{enc(queue)}")["single_active_consumer_tag"] == "first"
        channel.basic_cancel(first)
        after = poll_until(lambda: "first" not in (c := consumers()) and c)
        assert (after["second"]["active"], after["second"]["activity_status"]) == (True, "single_active")
    finally:
        connection.close()


def test_queue_state_is_running_and_fields_baedal_cannot_compute_are_left_out(shared_http_broker, api, name) -> None:
    queue = name("state")
    assert api.put(f"/api/queues/%2F/{enc(queue)}", {"durable": False}).status_code in (201, 204)
    info = api.json(f"/api/queues/%2F/{enc(queue)}")
    assert info["state"] == "running"
    assert "storage_error" not in info
    assert "consumer_capacity" not in info and "consumer_utilisation" not in info
    overview = api.json("/api/overview")
    assert "erlang_version" not in overview
    assert "run_queue" not in api.json("/api/nodes")[0]
    assert "user_who_performed_action" not in api.json("/api/exchanges/%2F/amq.direct")


def test_reported_rabbitmq_version_is_the_release_baedal_is_checked_against(shared_http_broker, api) -> None:
    overview = api.json("/api/overview")
    assert overview["rabbitmq_version"] == "3.10.8"
    assert overview["product_name"] == "Baedal"
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        properties = connection._impl.server_properties
        assert properties["product"] == "RabbitMQ" and properties["version"] == "3.10.8"
        assert "Baedal" in properties["platform"]
    finally:
        connection.close()


def _metric(broker: Any, metric: str) -> float:
    text = requests.get(f"{broker.http_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(metric + " "):
            return float(line.split()[1])
    raise AssertionError(f"{metric} not in /metrics")


def test_prometheus_totals_do_not_go_backwards_when_a_queue_or_exchange_is_deleted(http_broker, fresh_api, name) -> None:
    queue, exchange = name("gone"), name("gone-ex")
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    try:
        channel = connection.channel()
        channel.exchange_declare(exchange, "fanout")
        channel.queue_declare(queue)
        channel.queue_bind(queue, exchange)
        for _ in range(5):
            channel.basic_publish(exchange, "", b"m")
        for _ in range(5):
            method = poll_until(lambda: channel.basic_get(queue)[0])
            channel.basic_ack(method.delivery_tag)
    finally:
        connection.close()
    names = ("baedal_messages_published_total", "baedal_messages_delivered_total", "baedal_messages_acked_total")
    before = {m: _metric(http_broker, m) for m in names}
    assert before["baedal_messages_published_total"] >= 5 and before["baedal_messages_acked_total"] >= 5
    # Deleted with no sample in between: the totals must not fall back by what they held.
    assert fresh_api.delete(f"/api/queues/%2F/{enc(queue)}").status_code == 204
    assert fresh_api.delete(f"/api/exchanges/%2F/{enc(exchange)}").status_code == 204
    after = {m: _metric(http_broker, m) for m in names}
    assert after == before


def test_connection_state_under_an_alarm_is_blocked_for_publishers_and_blocking_for_others(http_broker) -> None:
    publisher = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    idle = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    try:
        publisher.channel().basic_publish("", "nowhere", b"m")
        publisher.process_data_events(0)
        ports = {
            "publisher": publisher._impl._transport._sock.getsockname()[1],
            "idle": idle._impl._transport._sock.getsockname()[1],
        }

        def states() -> dict[str, str | None]:
            return {k: (c := _connection_by_port(http_broker, p)) and c["state"] for k, p in ports.items()}

        poll_until(lambda: states() == {"publisher": "running", "idle": "running"})
        http_broker.call(http_broker.core.set_alarm, "memory", True)
        poll_until(lambda: states() == {"publisher": "blocked", "idle": "blocking"})
        http_broker.call(http_broker.core.set_alarm, "memory", False)
        poll_until(lambda: states() == {"publisher": "running", "idle": "running"})
    finally:
        publisher.close()
        idle.close()
