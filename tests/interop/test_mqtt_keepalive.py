"""Keep-alive and the CONNECT deadline without a timer per connection: the MQTT listener
sweeps its connections every ``KEEP_ALIVE_TICK`` (``MQTTServer.watch``), so a client
that keeps talking stays however long it is connected, a silent one is closed after
1.5 x its keep-alive (never before, at most one tick after plus the sweep lag), and a
socket that never sends CONNECT is closed after ``handshake_timeout``.  Raw sockets
with Baedal's codec; the closing times are bounds for "closed at all / not too early",
not speed figures.  Baedal only (mosquitto's keep-alive is checked in
test_mqtt_bad_input.py)."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from mqtt_helpers import EXTERNAL_MQTT, wait_until

from baedal import Broker
from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import Connect, Parser, encode
from baedal.protocols.mqtt.server import KEEP_ALIVE_TICK

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(bool(EXTERNAL_MQTT), reason="Baedal-specific (inspects the broker)"),
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(host="127.0.0.1", port=0, data_dir=tmp_path, handshake_timeout=1.0)
    broker.start_in_thread()
    try:
        yield broker
    finally:
        broker.stop_thread()


def connect(broker: Broker, client_id: str, keep_alive: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_port), 10)
    sock.sendall(encode(Connect(client_id, keep_alive=keep_alive, username="guest", password=b"guest")))
    parser = Parser(version=4)
    packets: list[codec.Packet] = []
    while not packets:
        data = sock.recv(4096)
        assert data, "closed by the broker"
        packets = parser.feed(data)
    assert isinstance(packets[0], codec.Connack) and packets[0].reason_code == 0
    return sock


def closed_within(sock: socket.socket, seconds: float) -> float:
    """Seconds until the broker closed ``sock`` (reading and dropping what it sends)."""
    started = time.monotonic()
    sock.settimeout(seconds)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        pytest.fail(f"not closed within {seconds} s")
    except ConnectionResetError:
        pass
    return time.monotonic() - started


def test_silent_client_is_closed_after_one_and_a_half_keep_alives_not_before(broker: Broker) -> None:
    sock = connect(broker, "ka-silent", keep_alive=1)
    # MQTT-3.1.2-24: 1.5 s of silence allowed; the sweep adds at most a tick and its lag.
    elapsed = closed_within(sock, 10)
    assert elapsed >= 1.5 - 0.05, elapsed
    sock.close()
    wait_until(lambda: not broker.mqtt.connections, 5, "the connection is gone")


def test_client_that_keeps_pinging_outlives_many_keep_alives(broker: Broker) -> None:
    sock = connect(broker, "ka-pinging", keep_alive=1)
    silent = connect(broker, "ka-witness", keep_alive=1)
    deadline = time.monotonic() + 4 * 1.5  # four times the allowed silence
    sock.settimeout(0.1)
    while time.monotonic() < deadline:
        sock.sendall(encode(codec.Pingreq()))
        assert sock.recv(16) == b"\xd0\x00"  # PINGRESP, still connected
        time.sleep(0.3)
    closed_within(silent, 1)  # the sweep did run meanwhile: the silent witness is gone
    assert any(c.client_id == "ka-pinging" for c in broker.mqtt.connections)
    sock.close()


def test_socket_that_never_sends_connect_is_closed_after_the_handshake_timeout(broker: Broker) -> None:
    sock = socket.create_connection(("127.0.0.1", broker.mqtt_port), 10)
    elapsed = closed_within(sock, 1.0 + 2 * KEEP_ALIVE_TICK + 5)
    assert elapsed >= 1.0 - 0.05, elapsed
    sock.close()


def test_keep_alive_zero_is_never_closed_for_silence(broker: Broker) -> None:
    sock = connect(broker, "ka-zero", keep_alive=0)
    witness = connect(broker, "ka-zero-witness", keep_alive=1)
    closed_within(witness, 10)  # the sweep ran past the witness's deadline
    sock.sendall(encode(codec.Pingreq()))
    sock.settimeout(5)
    assert sock.recv(16) == b"\xd0\x00"
    sock.close()


def test_closed_connections_leave_the_keep_alive_buckets_at_once(tmp_path: Path) -> None:
    """A closed connection is not kept (with its transport and session) until its next
    keep-alive or handshake check: churn of clients with a long keep-alive must not pile
    them up.  (The default 10 s handshake deadline: a check that came round would empty
    the buckets too, so this must not wait that long.)"""
    broker = Broker(host="127.0.0.1", port=0, data_dir=tmp_path, handshake_timeout=30.0)
    broker.start_in_thread()
    try:
        socks = [connect(broker, f"ka-churn-{i}", keep_alive=600) for i in range(20)]
        assert sum(len(b) for b in broker.mqtt._due.values()) == 20
        for sock in socks:
            sock.sendall(encode(codec.Disconnect()))
            sock.close()
        wait_until(lambda: not broker.mqtt.connections, 5, "all closed")
        wait_until(lambda: sum(len(b) for b in broker.mqtt._due.values()) == 0, 5, "none left in the buckets")
    finally:
        broker.stop_thread()
