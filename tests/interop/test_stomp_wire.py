"""STOMP on the wire with raw sockets: handshake, escaping per version, NUL in bodies,
heart-beats both ways, limits and malformed input (ERROR, close, everyone else served).

Runs against the in-process Baedal, or RabbitMQ's STOMP plugin with
``BAEDAL_TEST_STOMP_URL``; tests where Baedal deliberately differs are ``baedal_only``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from stomp_support import RawClient, baedal_only, stomp_endpoint  # noqa: F401

pytestmark = pytest.mark.timeout(60)


def _roundtrip(client: RawClient, queue: str, headers: list[tuple[str, str]], body: bytes, version: str) -> Any:
    client.send_frame("SUBSCRIBE", [("destination", f"/queue/{queue}"), ("id", "s"), ("receipt", "r")], version=version)
    assert client.next_frame().command == "RECEIPT"
    client.send_frame("SEND", [("destination", f"/queue/{queue}"), *headers], body, version=version)
    message = client.next_frame()
    assert message.command == "MESSAGE", message
    return message


def test_connected_frame_has_version_session_server_and_mirrored_heart_beat(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        connected = client.connect("1.2", heart_beat="1000,2000")
        assert connected.get("version") == "1.2"
        assert connected.get("session")
        assert connected.get("server")
        assert connected.get("heart-beat") == "2000,1000"
    finally:
        client.close()


def test_stomp_command_connects_like_connect_and_versions_are_negotiated(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.send(b"STOMP\naccept-version:1.0,1.1\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
        assert client.next_frame().get("version") == "1.1"
    finally:
        client.close()


def test_version_mismatch_is_an_error_listing_supported_versions(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.send(b"CONNECT\naccept-version:2.0\nhost:/\n\n\x00")
        error = client.next_frame()
        assert error.command == "ERROR"
        assert error.get("version") == "1.0,1.1,1.2"
    finally:
        client.close()


def test_bad_login_and_unknown_vhost_are_refused(stomp_endpoint: Any) -> None:  # noqa: F811
    for headers in (b"host:/\nlogin:guest\npasscode:wrong\n", b"host:no-such-vhost\nlogin:guest\npasscode:guest\n"):
        client = RawClient(stomp_endpoint)
        try:
            client.send(b"CONNECT\naccept-version:1.2\n" + headers + b"\n\x00")
            error = client.next_frame()
            assert error.command == "ERROR"
            assert error.get("message") == "Bad CONNECT"
        finally:
            client.close()


@baedal_only("RabbitMQ 3.10 keeps the socket open after a refused CONNECT; the spec says close")
def test_refused_connect_closes_the_connection(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.send(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:wrong\n\n\x00")
        assert client.next_frame().command == "ERROR"
        client.wait_closed()
    finally:
        client.close()


@pytest.mark.parametrize(
    ("version", "wire_value", "expected"),
    [
        ("1.2", "a\\cb\\nc\\\\d\\re", "a:b\nc\\d\re"),
        ("1.1", "a\\cb\\nc\\\\d", "a:b\nc\\d"),
        ("1.0", "a\\cb\\n", "a\\cb\\n"),  # no escaping in 1.0: the bytes are the value
    ],
    ids=["1.2", "1.1", "1.0"],  # (test names end up in queue names)
)
def test_header_escaping_round_trips_per_version(
    stomp_endpoint: Any, unique: Callable[[str], str], version: str, wire_value: str, expected: str  # noqa: F811
) -> None:
    client = RawClient(stomp_endpoint, version)
    queue = unique("escape")
    try:
        client.connect(version)
        client.send_frame("SUBSCRIBE", [("destination", f"/queue/{queue}"), ("id", "s"), ("receipt", "r")], version=version)
        assert client.next_frame().command == "RECEIPT"
        # Sent as raw bytes so the client side does no escaping of its own.
        client.send(f"SEND\ndestination:/queue/{queue}\nfancy:{wire_value}\n\nx\x00".encode())
        message = client.next_frame()
        assert message.get("fancy") == expected  # the reader unescapes per version
        assert f"fancy:{wire_value}\n".encode() in client.raw_received  # and the server escaped it the same way
    finally:
        client.close()


def test_content_length_body_with_nul_bytes_arrives_intact(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    body = b"\x00binary\x00\x00data\x00"
    try:
        client.connect()
        message = _roundtrip(client, unique("nul"), [("content-length", str(len(body)))], body, "1.2")
        assert message.body == body
        assert message.get("content-length") == str(len(body))
    finally:
        client.close()


def test_server_sends_heart_beats_when_asked(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.connect("1.2", heart_beat="0,200")
        client.sock.settimeout(3)
        deadline = time.monotonic() + 3
        received = b""
        while received.count(b"\n") < 2 and time.monotonic() < deadline:
            received += client.sock.recv(100)
        assert received.count(b"\n") >= 2 and not received.strip(b"\r\n")
    finally:
        client.close()


def test_a_silent_peer_that_promised_heart_beats_is_disconnected(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.connect("1.2", heart_beat="300,0")
        started = time.monotonic()
        client.wait_closed(timeout=10)
        # Closed for silence: after the promised interval, within a generous margin.
        assert time.monotonic() - started >= 0.3
    finally:
        client.close()


def test_a_peer_sending_heart_beats_stays_connected(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.connect("1.2", heart_beat="200,0")
        for _ in range(10):  # 1.5 s, several times the promised interval
            client.send(b"\n")
            time.sleep(0.15)
        client.send(b"BEGIN\ntransaction:t\nreceipt:alive\n\n\x00")
        assert client.next_frame().get("receipt-id") == "alive"
    finally:
        client.close()


@baedal_only("RabbitMQ 3.10 has no frame size limit and would wait for the gigabyte")
def test_a_one_gigabyte_content_length_is_refused_before_any_body_arrives(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    client = RawClient(stomp_endpoint)
    try:
        client.connect()
        client.send(f"SEND\ndestination:/queue/{unique('big')}\ncontent-length:1073741824\nreceipt:r\n\n".encode())
        error = client.next_frame()
        assert error.command == "ERROR"
        assert "too large" in (error.get("message") or "").lower()
        client.wait_closed()
    finally:
        client.close()
    _still_serving(stomp_endpoint, unique)


@baedal_only("RabbitMQ 3.10's STOMP reader fails on a negative content-length: dropped, no ERROR")
def test_a_negative_content_length_is_an_error(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.connect()
        client.send(b"SEND\ndestination:/queue/x\ncontent-length:-1\n\n\x00")
        error = client.next_frame()
        assert error.command == "ERROR"
        assert "content-length" in error.get("message", "").lower()
        client.wait_closed()
    finally:
        client.close()
    _still_serving(stomp_endpoint, unique)


@baedal_only("RabbitMQ 3.10 has no header size limit")
def test_oversized_header_line_is_refused(stomp_endpoint: Any, unique: Callable[[str], str]) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.connect()
        client.send(b"SEND\ndestination:/queue/x\nhuge:" + b"a" * 20_000)
        error = client.next_frame()
        assert error.get("message") == "Header too long"
        client.wait_closed()
    finally:
        client.close()
    _still_serving(stomp_endpoint, unique)


@pytest.mark.parametrize(
    "garbage",
    [
        b"FROBNICATE\n\n\x00",
        b"SEND\ndestination:/queue/x\nno-colon-here\n\n\x00",
        b"SEND\ndestination:/queue/x\nbad:\\q\n\n\x00",
    ],
    ids=["unknown-command", "header-without-colon", "undefined-escape"],
)
def test_malformed_frame_gets_error_then_close_and_others_keep_working(
    stomp_endpoint: Any, unique: Callable[[str], str], garbage: bytes  # noqa: F811
) -> None:
    client = RawClient(stomp_endpoint)
    try:
        client.connect()
        client.send(garbage)
        if stomp_endpoint.broker is None:
            # RabbitMQ 3.10 answers an unknown command with ERROR and stays open, and
            # drops the socket without an ERROR for a bad header line or escape;
            # Baedal always says why and then closes, as the spec asks.
            try:
                assert client.next_frame().command == "ERROR"
            except ConnectionError:
                pass
        else:
            error = client.next_frame()
            assert error.command == "ERROR"
            assert error.get("message")
            client.wait_closed()
    finally:
        client.close()
    _still_serving(stomp_endpoint, unique)


@baedal_only("RabbitMQ 3.10 leaves receipt-id out of this ERROR (the spec says it should be there)")
def test_error_carries_the_receipt_id_of_the_failing_frame(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.connect()
        client.send(b"SUBSCRIBE\ndestination:/nowhere/x\nid:1\nreceipt:sub-1\n\n\x00")
        error = client.next_frame()
        assert error.command == "ERROR"
        assert error.get("receipt-id") == "sub-1"
    finally:
        client.close()


def test_frame_before_connect_is_an_error(stomp_endpoint: Any) -> None:  # noqa: F811
    client = RawClient(stomp_endpoint)
    try:
        client.send(b"SEND\ndestination:/queue/x\n\nhi\x00")
        assert client.next_frame().command == "ERROR"
        if stomp_endpoint.broker is not None:  # RabbitMQ 3.10 stays open after this ERROR
            client.wait_closed()
    finally:
        client.close()


def test_unacked_messages_return_to_the_queue_when_the_connection_drops(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    queue = unique("drop")
    client = RawClient(stomp_endpoint)
    client.connect()
    client.send_frame("SEND", [("destination", f"/queue/{queue}"), ("receipt", "s")], b"keep")
    assert client.next_frame().command == "RECEIPT"
    client.send_frame("SUBSCRIBE", [("destination", f"/queue/{queue}"), ("id", "s"), ("ack", "client")])
    assert client.next_frame().body == b"keep"
    client.close()  # no ACK, no DISCONNECT
    again = RawClient(stomp_endpoint)
    try:
        again.connect()
        again.send_frame("SUBSCRIBE", [("destination", f"/queue/{queue}"), ("id", "s")])
        message = again.next_frame()
        assert message.body == b"keep"
        assert message.get("redelivered") == "true"
    finally:
        again.close()


def _still_serving(endpoint: Any, unique: Callable[[str], str]) -> None:
    other = RawClient(endpoint)
    try:
        other.connect()
        message = _roundtrip(other, unique("alive"), [], b"still here", "1.2")
        assert message.body == b"still here"
    finally:
        other.close()


@baedal_only("reads the broker's own output bookkeeping")
def test_a_subscriber_that_stops_reading_is_not_buffered_without_bound(
    stomp_endpoint: Any, unique: Callable[[str], str]  # noqa: F811
) -> None:
    import pika

    from baedal.protocols.stomp.server import StompConnection
    from baedal_testing import wait_until

    broker = stomp_endpoint.broker
    queue = unique("slow")
    slow = RawClient(stomp_endpoint)
    slow.reader.max_body = 1 << 20
    try:
        amqp = pika.BlockingConnection(pika.URLParameters(stomp_endpoint.amqp_url))
        body = b"x" * 100_000
        channel = amqp.channel()
        channel.queue_declare(queue, durable=True)
        for _ in range(400):  # 40 MB for a peer that reads nothing
            channel.basic_publish("", queue, body)
        amqp.close()
        slow.connect()
        slow.send_frame("SUBSCRIBE", [("destination", f"/queue/{queue}"), ("id", "s")])

        def held() -> tuple[int, int]:
            connections = [c for c in broker.core.connections.values() if isinstance(c, StompConnection)]
            pending = max(c.output_pending() for c in connections)
            return pending, broker.core.vhosts["/"].queues[queue].message_count

        wait_until(lambda: broker.call(held)[0] > 1024 * 1024, what="deliveries to the slow peer")
        time.sleep(0.3)  # let the broker try to push more than the bound
        pending, ready = broker.call(held)
        assert pending <= 8 * 1024 * 1024 + 2 * len(body)  # max_connection_output, one frame over
        assert ready > 0
        received = 0
        while received < 400:  # reading again resumes deliveries: nothing lost
            frame = slow.next_frame(timeout=10)
            assert frame.command == "MESSAGE" and len(frame.body) == len(body)
            received += 1
    finally:
        slow.close()
