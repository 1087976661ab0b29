"""Bad input and limits over raw sockets: the offending connection is closed (after a
DISCONNECT with a reason code in 5.0), everyone else keeps being served, and nothing
stored is damaged."""

from __future__ import annotations

import socket
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import Target, baedal_only, differs_from_mosquitto, start_target, wait_until

from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import Connect, Parser, Publish, Subscribe, Subscription, encode

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path)


def open_raw(target: Target, version: int = 4, client_id: str = "") -> socket.socket:
    sock = socket.create_connection((target.host, target.port), 10)
    connect = Connect(client_id or f"raw-{id(sock):x}", version=version)
    if target.username is not None:
        connect.username, connect.password = target.username, (target.password or "").encode()
    sock.sendall(encode(connect, version))
    parser = Parser(version=version)
    packets = read_packets(sock, parser)
    assert packets and isinstance(packets[0], codec.Connack) and packets[0].reason_code == 0
    return sock


def read_packets(sock: socket.socket, parser: Parser, timeout: float = 5.0) -> list[codec.Packet]:
    sock.settimeout(timeout)
    try:
        data = sock.recv(65536)
    except (TimeoutError, ConnectionResetError):
        return []
    return parser.feed(data) if data else []


def closed_after(sock: socket.socket, version: int) -> list[codec.Packet]:
    """Everything the broker sent before closing; fails if it does not close."""
    parser = Parser(version=version)
    seen: list[codec.Packet] = []
    sock.settimeout(5)
    while True:
        try:
            data = sock.recv(65536)
        except ConnectionResetError:
            return seen
        except TimeoutError:
            raise AssertionError("the broker did not close the connection") from None
        if not data:
            return seen
        seen.extend(parser.feed(data))


BAD_PACKETS = {
    "qos3": b"\x36\x07\x00\x03a/b\x00\x01",
    "reserved_flag_on_subscribe": b"\x80\x08\x00\x01\x00\x03a/b\x00",
    "invalid_utf8_topic": b"\x30\x05\x00\x03a\xff\xfe",
    "second_connect": encode(Connect("again"), 4),
    "five_byte_remaining_length": b"\x30\xff\xff\xff\xff\x7f",
    "truncated_fields": b"\x82\x03\x00\x01\x00",
    "reserved_type_0": b"\x00\x00",
    "wildcard_in_publish_topic": b"\x30\x05\x00\x03a/+",
}


@pytest.mark.parametrize("name", sorted(BAD_PACKETS))
@pytest.mark.parametrize("version", [4, 5])
def test_bad_packet_closes_only_that_connection(target: Target, name: str, version: int) -> None:
    bystander = target.client(version=4)
    bystander.subscribe("ok/+", 1)
    bad = open_raw(target, version)
    bad.sendall(BAD_PACKETS[name])
    sent = closed_after(bad, version)
    if version == 5 and target.broker is not None:
        assert sent and isinstance(sent[-1], codec.Disconnect) and sent[-1].reason_code >= 0x80
    bad.close()
    pub = target.client()
    pub.publish("ok/1", b"still served", 1)
    assert bystander.wait_messages(1)[0].payload == b"still served"
    pub.disconnect()
    bystander.disconnect()


@differs_from_mosquitto("no packet size limit by default: it waits for the 200 MB body")
def test_oversized_remaining_length_refused_before_reading(target: Target) -> None:
    bad = open_raw(target, 5)
    # announces 200 MB and sends nothing more: refused from the header alone
    bad.sendall(b"\x30\x80\x80\x80\x60")
    sent = closed_after(bad, 5)
    if target.broker is not None:
        assert sent and sent[-1].reason_code == codec.PACKET_TOO_LARGE  # type: ignore[attr-defined]
    bad.close()


def test_connect_must_come_first(target: Target) -> None:
    sock = socket.create_connection((target.host, target.port), 10)
    sock.sendall(encode(Publish("a", b"x"), 4))
    closed_after(sock, 4)
    sock.close()


def test_unsupported_protocol_level(target: Target) -> None:
    sock = socket.create_connection((target.host, target.port), 10)
    body = b"\x00\x04MQTT\x07\x02\x00\x3c\x00\x01x"
    sock.sendall(b"\x10" + bytes([len(body)]) + body)
    sent = closed_after(sock, 4)
    assert sent == [codec.Connack(False, codec.V3_UNACCEPTABLE_PROTOCOL)]
    sock.close()


@baedal_only
def test_overlong_client_id_rejected(target: Target) -> None:
    sock = socket.create_connection((target.host, target.port), 10)
    sock.sendall(encode(Connect("x" * 300, username="guest", password=b"guest"), 4))
    sent = closed_after(sock, 4)
    assert sent == [codec.Connack(False, codec.V3_IDENTIFIER_REJECTED)]
    sock.close()


@baedal_only
def test_topic_limits_and_subscription_count(target: Target) -> None:
    broker = target.broker
    config = broker.mqtt.config
    broker.call(lambda: setattr(config, "max_topic_levels", 4))
    broker.call(lambda: setattr(config, "max_subscriptions", 2))
    sock = open_raw(target, 5)
    parser = Parser(version=5)
    sock.sendall(encode(Subscribe(1, [Subscription("a/b", 0), Subscription("a/b/c/d/e", 0),
                                      Subscription("c", 0), Subscription("d", 0)]), 5))
    suback = read_packets(sock, parser)[0]
    assert isinstance(suback, codec.Suback)
    assert suback.reason_codes == [0, codec.TOPIC_FILTER_INVALID, 0, codec.QUOTA_EXCEEDED]
    sock.sendall(encode(Publish("a/b/c/d/e", b"deep", 0), 5))
    sent = closed_after(sock, 5)
    assert sent and sent[-1].reason_code == codec.TOPIC_NAME_INVALID  # type: ignore[attr-defined]
    sock.close()


@baedal_only
def test_receive_maximum_exceeded_closes(target: Target) -> None:
    target.broker.call(lambda: setattr(target.broker.mqtt.config, "receive_maximum", 1))
    sock = open_raw(target, 5)
    # QoS 2 PUBLISHes never released with PUBREL: the second exceeds the maximum of 1
    sock.sendall(encode(Publish("rm/x", b"1", 2, packet_id=1), 5) + encode(Publish("rm/x", b"2", 2, packet_id=2), 5))
    sent = closed_after(sock, 5)
    assert sent and sent[-1].reason_code == codec.RECEIVE_MAXIMUM_EXCEEDED  # type: ignore[attr-defined]
    sock.close()


@differs_from_mosquitto("did not close a silent keep-alive=1 client within 5 s")
def test_keep_alive_expiry_closes_and_sends_will(target: Target) -> None:
    watcher = target.client()
    watcher.subscribe("ka/will", 1)
    sock = socket.create_connection((target.host, target.port), 10)
    connect = Connect("ka-silent", keep_alive=1, will=codec.Will("ka/will", b"timed out", 1))
    if target.username is not None:
        connect.username, connect.password = target.username, (target.password or "").encode()
    sock.sendall(encode(connect, 4))
    closed_after_silence = closed_after(sock, 4)  # 1.5 s of silence
    assert isinstance(closed_after_silence[0], codec.Connack)
    assert watcher.wait_messages(1)[0].payload == b"timed out"
    sock.close()
    watcher.disconnect()


@baedal_only
def test_stored_state_intact_after_bad_input(target: Target) -> None:
    keeper = target.client("bad-input-keeper", clean=False)
    keeper.subscribe("keep/#", 1)
    keeper.disconnect()
    pub = target.client()
    pub.publish("keep/1", b"before", 1)
    for data in BAD_PACKETS.values():
        bad = open_raw(target, 4)
        bad.sendall(data)
        closed_after(bad, 4)
        bad.close()
    pub.publish("keep/2", b"after", 1)
    keeper = target.client("bad-input-keeper", clean=False)
    wait_until(lambda: len(keeper.messages) >= 2, 10, "both queued messages")
    assert keeper.payloads() == [b"before", b"after"]
    keeper.disconnect()
    pub.disconnect()
    assert struct  # (struct kept for hand-built packets)


@pytest.fixture
def alarm_target(tmp_path: Path) -> Iterator[Target]:
    # no resource checks after the first: the test raises and clears the alarm itself
    yield from start_target(tmp_path / "alarm", alarm_check_interval=3600)


@baedal_only
def test_resource_alarm_stops_reading_publishers(alarm_target: Target) -> None:
    from mqtt_helpers import quiet

    target = alarm_target
    core = target.broker.core
    sub = target.client()
    sub.subscribe("alarm/t", 1)
    pub = target.client()
    target.broker.call(lambda: core.set_alarm("memory", True))
    pub.publish("alarm/t", b"read before the pause", 1)  # this read triggers it
    mid = pub.publish("alarm/t", b"held", 1, wait=False)
    quiet(0.5)
    assert mid not in pub.acked and sub.payloads() == [b"read before the pause"]
    target.broker.call(lambda: core.set_alarm("memory", False))
    wait_until(lambda: mid in pub.acked, 10, "PUBACK once the alarm clears")
    sub.wait_messages(2)
    pub.disconnect()
    sub.disconnect()
