"""The light epoll transport (transport/epoll.py) with real sockets: through the MQTT
listener that uses it by default, and on its own with a tiny protocol for what the
MQTT server never does (many events in one poll, a connection closed by another one's
read, a peer that never reads).  Linux only (``select.epoll``)."""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from baedal import Broker
from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import (
    Connect,
    Packet,
    Parser,
    Publish,
    Subscribe,
    Subscription,
    Will,
    encode,
)
from baedal.transport import epoll
from baedal_testing import wait_until

pytestmark = [
    pytest.mark.timeout(120),
    pytest.mark.skipif(not epoll.available(), reason="the light transport needs select.epoll (Linux)"),
]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    broker = Broker(host="127.0.0.1", port=0, data_dir=tmp_path, max_connection_output=256 * 1024)
    broker.start_in_thread()
    try:
        yield broker
    finally:
        broker.stop_thread()


class Client:
    def __init__(self, port: int, client_id: str, will: Will | None = None, connect: bool = True) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=20)
        self.parser = Parser(version=4)
        self.pending: list[Packet] = []
        if connect:
            self.sock.sendall(encode(Connect(client_id, username="guest", password=b"guest", will=will)))
            assert isinstance(self.next(), codec.Connack)

    def next(self) -> Packet:
        while not self.pending:
            data = self.sock.recv(1 << 16)
            assert data, "closed by the broker"
            self.pending.extend(self.parser.feed(data))
        return self.pending.pop(0)

    def subscribe(self, topic: str, qos: int = 0) -> None:
        self.sock.sendall(encode(Subscribe(1, [Subscription(topic, qos)])))
        assert isinstance(self.next(), codec.Suback)


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def mqtt_listener(broker: Broker) -> epoll.EpollListener:
    (listener,) = [s for s in broker.mqtt._servers if isinstance(s, epoll.EpollListener)]
    return listener


def test_plain_tcp_mqtt_connections_use_the_light_transport(broker: Broker) -> None:
    client = Client(broker.mqtt_port, "uses-epoll")
    wait_until(lambda: len(broker.mqtt.connections) == 1, 5, "connected")
    (conn,) = broker.mqtt.connections
    assert isinstance(conn.transport, epoll.EpollTransport)
    assert conn.peer == client.sock.getsockname()
    assert conn.transport.get_extra_info("sockname") == client.sock.getpeername()
    client.sock.close()


def test_the_setting_off_serves_with_the_event_loops_transports(tmp_path: Path) -> None:
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path, mqtt_light_transport=False) as broker:
        client = Client(broker.mqtt_port, "uses-asyncio")
        wait_until(lambda: len(broker.mqtt.connections) == 1, 5, "connected")
        (conn,) = broker.mqtt.connections
        assert not isinstance(conn.transport, epoll.EpollTransport)
        assert not any(isinstance(s, epoll.EpollListener) for s in broker.mqtt._servers)
        client.sock.close()


def test_a_client_sending_byte_by_byte_is_understood(broker: Broker) -> None:
    sub = Client(broker.mqtt_port, "bytes-sub")
    sub.subscribe("bytes/t")
    pub = Client(broker.mqtt_port, "bytes-pub", connect=False)
    pub.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    data = encode(Connect("bytes-pub", username="guest", password=b"guest")) + encode(
        Publish("bytes/t", b"one byte at a time", 0))
    for i in range(len(data)):
        pub.sock.send(data[i:i + 1])
    assert isinstance(pub.next(), codec.Connack)
    got = sub.next()
    assert isinstance(got, Publish) and got.payload == b"one byte at a time"


def _will_watcher(broker: Broker, topic: str) -> Client:
    watcher = Client(broker.mqtt_port, f"watch-{topic.replace('/', '-')}")
    watcher.subscribe(topic)
    return watcher


def test_a_client_gone_mid_packet_is_torn_down_and_its_will_sent(broker: Broker) -> None:
    watcher = _will_watcher(broker, "will/mid")
    client = Client(broker.mqtt_port, "mid-packet", will=Will("will/mid", b"gone mid packet"))
    client.sock.sendall(encode(Publish("mid/t", b"x" * 1000, 0))[:200])  # part of a PUBLISH
    client.sock.close()
    got = watcher.next()
    assert isinstance(got, Publish) and got.payload == b"gone mid packet"
    wait_until(lambda: len(broker.mqtt.connections) == 1, 5, "only the watcher left")


def test_half_close_is_an_unclean_disconnect(broker: Broker) -> None:
    watcher = _will_watcher(broker, "will/half")
    client = Client(broker.mqtt_port, "half-close", will=Will("will/half", b"half closed"))
    client.sock.shutdown(socket.SHUT_WR)
    got = watcher.next()
    assert isinstance(got, Publish) and got.payload == b"half closed"
    assert client.sock.recv(10) == b""  # and the broker closed its side
    client.sock.close()


def test_abrupt_reset_is_an_unclean_disconnect(broker: Broker) -> None:
    watcher = _will_watcher(broker, "will/rst")
    client = Client(broker.mqtt_port, "reset", will=Will("will/rst", b"reset"))
    client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client.sock.close()  # RST, not FIN
    got = watcher.next()
    assert isinstance(got, Publish) and got.payload == b"reset"
    wait_until(lambda: mqtt_listener(broker).transports == 1, 5, "only the watcher's transport left")


def test_a_subscriber_that_never_reads_holds_bounded_output(broker: Broker) -> None:
    slow = Client(broker.mqtt_port, "never-reads")
    slow.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
    slow.subscribe("flood/t")
    pub = Client(broker.mqtt_port, "flooder")
    body = b"y" * 8192
    (conn,) = [c for c in list(broker.mqtt.connections) if c.client_id == "never-reads"]
    for _ in range(200):  # 1.6 MB at QoS 0 into a connection limited to 256 KiB
        pub.sock.sendall(b"".join(encode(Publish("flood/t", body, 0)) for _ in range(10)))
        if not conn.can_send:
            break
    wait_until(lambda: not conn.can_send, 10, "the transport paused the writer")
    # The transport's buffer: at most the high-water mark plus one flush batch.
    assert conn.transport.get_write_buffer_size() <= 256 * 1024 + 64 * 1024 + 2 * len(body)
    # ...and everyone else is still served.
    other = Client(broker.mqtt_port, "other-sub")
    other.subscribe("other/t")
    pub.sock.sendall(encode(Publish("other/t", b"still served", 0)))
    got = other.next()
    assert isinstance(got, Publish) and got.payload == b"still served"
    slow.sock.close()
    wait_until(lambda: "never-reads" not in {c.client_id for c in broker.mqtt.connections}, 10, "closed")


def test_two_thousand_connections_opened_and_closed_leak_no_descriptor(broker: Broker) -> None:
    listener = mqtt_listener(broker)
    Client(broker.mqtt_port, "warm").sock.close()
    wait_until(lambda: listener.transports == 0, 5, "warm-up closed")
    before = open_fds()
    for round_ in range(20):
        batch = [Client(broker.mqtt_port, f"churn-{round_}-{i}") for i in range(100)]
        for i, client in enumerate(batch):
            if i % 3 == 0:
                client.sock.sendall(encode(codec.Disconnect()))
            if i % 3 == 1:
                client.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            client.sock.close()
    wait_until(lambda: listener.transports == 0 and not broker.mqtt.connections, 20, "all closed")
    # The client sockets are closed here too, so the count is the broker's own.
    assert open_fds() <= before, (before, open_fds())
    assert sum(len(b) for b in broker.mqtt._due.values()) == 0


def test_broker_stop_with_connections_open_closes_them_all(tmp_path: Path) -> None:
    broker = Broker(host="127.0.0.1", port=0, data_dir=tmp_path)
    broker.start_in_thread()
    try:
        before = open_fds()
        clients = [Client(broker.mqtt_port, f"open-{i}") for i in range(50)]
        silent = Client(broker.mqtt_port, "silent-reader")
        silent.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        listener = mqtt_listener(broker)
        assert listener.transports == 51
    finally:
        broker.stop_thread()
    for client in [*clients, silent]:
        assert client.sock.recv(1 << 16) == b""  # EOF: the broker closed it
        client.sock.close()
    assert listener.transports == 0
    assert open_fds() <= before - 1  # the listener's epoll and sockets are gone too


# --- the transport on its own --------------------------------------------------------------


class Recorder(asyncio.Protocol):
    """Records what the transport tells it; a read of b"kill N" aborts connection N."""

    registry: list[Recorder] = []

    def __init__(self) -> None:
        self.transport: Any = None
        self.received = bytearray()
        self.lost: list[BaseException | None] = []
        self.paused = 0
        self.resumed = 0
        Recorder.registry.append(self)

    def connection_made(self, transport: Any) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        if data.startswith(b"kill "):
            victim = Recorder.registry[int(data[5:])]
            victim.transport.abort()

    def eof_received(self) -> bool | None:
        return None

    def pause_writing(self) -> None:
        self.paused += 1

    def resume_writing(self) -> None:
        self.resumed += 1

    def connection_lost(self, exc: BaseException | None) -> None:
        self.lost.append(exc)


def test_a_connection_closed_by_another_ones_read_in_the_same_poll() -> None:
    async def main() -> None:
        Recorder.registry = []
        listener = await epoll.EpollListener.create(Recorder, "127.0.0.1", 0)
        socks = [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(3)]
        await _until(lambda: len(Recorder.registry) == 3)
        # Order by accept (registry index) so "kill N" names the right one.
        peers = {r.transport.get_extra_info("peername"): i for i, r in enumerate(Recorder.registry)}
        by_index = sorted(socks, key=lambda s: peers[s.getsockname()])
        # All three readable before the loop runs: one epoll batch.
        by_index[1].sendall(b"late data for 1")
        by_index[0].sendall(b"kill 1")
        by_index[2].sendall(b"kill 1")  # a second close of the same: nothing more happens
        await _until(lambda: Recorder.registry[1].lost and Recorder.registry[2].received)
        await asyncio.sleep(0.05)
        assert Recorder.registry[1].lost == [None]  # connection_lost exactly once
        assert by_index[1].recv(10) == b""
        assert listener.transports == 2
        for sock in socks:
            sock.close()
        await _until(lambda: listener.transports == 0)
        assert [len(r.lost) for r in Recorder.registry] == [1, 1, 1]
        listener.close()
        await listener.wait_closed()

    asyncio.run(main())


def test_many_events_in_one_poll_are_all_served() -> None:
    async def main() -> None:
        Recorder.registry = []
        listener = await epoll.EpollListener.create(Recorder, "127.0.0.1", 0)
        # Connected from another thread: the loop must keep accepting past the backlog.
        socks = await asyncio.get_running_loop().run_in_executor(
            None, lambda: [socket.create_connection(("127.0.0.1", listener.port)) for _ in range(300)])
        await _until(lambda: len(Recorder.registry) == 300)
        for i, sock in enumerate(socks):
            sock.sendall(b"%d;" % i)
        await _until(lambda: all(r.received for r in Recorder.registry))
        assert sorted(int(r.received[:-1]) for r in Recorder.registry) == list(range(300))
        for sock in socks:
            sock.close()
        await _until(lambda: listener.transports == 0)
        assert all(r.lost == [None] for r in Recorder.registry)
        await listener.wait_closed()

    asyncio.run(main())


def test_writes_to_a_peer_that_never_reads_pause_then_resume_the_protocol() -> None:
    async def main() -> None:
        Recorder.registry = []
        listener = await epoll.EpollListener.create(Recorder, "127.0.0.1", 0)
        sock = socket.create_connection(("127.0.0.1", listener.port))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
        await _until(lambda: len(Recorder.registry) == 1)
        protocol = Recorder.registry[0]
        transport = protocol.transport
        transport.set_write_buffer_limits(high=64 * 1024)
        chunk = b"z" * 16384
        total = 0
        while not protocol.paused:
            transport.write(chunk)
            total += len(chunk)
            assert total < 64 * 1024 * 1024, "never paused"
        assert transport.get_write_buffer_size() > 64 * 1024
        assert transport.get_write_buffer_size() <= 64 * 1024 + len(chunk)
        # The peer reads everything: the buffer drains and the protocol resumes.
        reader = threading.Thread(target=_read_exactly, args=(sock, total))
        reader.start()
        await _until(lambda: protocol.resumed == 1 and transport.get_write_buffer_size() == 0, 20)
        await asyncio.get_running_loop().run_in_executor(None, reader.join)
        # A close with output pending waits for it; an abort does not.
        transport.close()
        assert transport.is_closing()
        await _until(lambda: protocol.lost == [None])
        sock.close()
        await listener.wait_closed()

    asyncio.run(main())


def test_a_write_to_a_reset_peer_reports_the_error() -> None:
    async def main() -> None:
        Recorder.registry = []
        listener = await epoll.EpollListener.create(Recorder, "127.0.0.1", 0)
        sock = socket.create_connection(("127.0.0.1", listener.port))
        await _until(lambda: len(Recorder.registry) == 1)
        protocol = Recorder.registry[0]
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
        await _until(lambda: protocol.lost)
        assert len(protocol.lost) == 1
        assert protocol.lost[0] is None or isinstance(protocol.lost[0], ConnectionError)
        protocol.transport.write(b"after the end")  # ignored, no second connection_lost
        await asyncio.sleep(0.01)
        assert len(protocol.lost) == 1
        await listener.wait_closed()

    asyncio.run(main())


def _read_exactly(sock: socket.socket, count: int) -> None:
    while count > 0:
        data = sock.recv(min(count, 1 << 16))
        if not data:
            raise AssertionError("closed early")
        count -= len(data)


async def _until(predicate: Any, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("timed out waiting")
        await asyncio.sleep(0.005)
