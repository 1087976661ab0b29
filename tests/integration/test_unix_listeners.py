"""STOMP, MQTT and Kafka on Unix domain sockets (``--stomp-unix-socket``,
``--mqtt-unix-socket``, ``--kafka-unix-socket``; transport/unix.py), driven by the
clients that can use one: stomp.py (its Transport given a Unix socket), paho-mqtt 2.x
(``transport="unix"``), and raw Kafka requests encoded with kio (no Kafka client dials
anything but host:port, so the Kafka socket is for local tools).  The AMQP and HTTP
sockets are covered by test_client_ipc.py; the file-mode rule is the same code for all.
"""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp
import paho.mqtt.client as paho
import pytest
import stomp
import stomp.connect
import stomp.protocol
import stomp.transport
from test_kafka_wire import API_VERSIONS, RawKafka, build_batch, create_topic, fetch, produce

from baedal import Broker
from baedal.config import load_settings
from baedal.transport.unix import socket_address
from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(90)


def abstract_name() -> str:
    return f"@baedal-test-{uuid.uuid4().hex[:12]}"


# --- STOMP ------------------------------------------------------------------------------


class UnixStompTransport(stomp.transport.Transport):
    """stomp.py's own Transport, connecting to a Unix socket instead of host:port (its
    constructor only takes ``host_and_ports``; everything after the connect is its own)."""

    def __init__(self, address: str) -> None:
        super().__init__([("localhost", 0)], reconnect_attempts_max=1, vhost="/")
        self.address = address

    def attempt_connection(self) -> None:
        self.connection_error = False
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(socket_address(self.address))
        sock.settimeout(None)
        self.socket = sock
        self.current_host_and_port = ("localhost", 0)

    def is_connected(self) -> bool:
        # Its own checks getsockname()[1], a TCP port; a Unix socket's name is a path.
        return self.socket is not None and stomp.transport.BaseTransport.is_connected(self)


class UnixStompConnection(stomp.connect.StompConnection12):
    """``stomp.Connection12`` (its connect, disconnect, frames) over ``UnixStompTransport``."""

    def __init__(self, address: str) -> None:  # (its own builds a TCP Transport)
        transport = UnixStompTransport(address)
        stomp.connect.BaseConnection.__init__(self, transport)
        stomp.protocol.Protocol12.__init__(self, transport, (0, 0))


class Collector(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.errors: list[Any] = []
        self.receipts: set[str] = set()
        self.disconnected = threading.Event()

    def on_message(self, frame: Any) -> None:
        self.messages.append(frame)

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_receipt(self, frame: Any) -> None:
        self.receipts.add(frame.headers["receipt-id"])

    def on_disconnected(self) -> None:
        self.disconnected.set()


def test_stomp_py_sends_and_receives_over_a_unix_socket_path(tmp_path: Path, socket_dir: Path) -> None:
    address = str(socket_dir / "stomp.sock")
    with Broker(port=0, data_dir=tmp_path, stomp_unix_socket=address) as broker:
        assert f"stomp+unix:{address}" in broker.unix_sockets
        assert os.stat(address).st_mode & 0o777 == 0o660
        connection = UnixStompConnection(address)
        listener = Collector()
        connection.set_listener("collector", listener)
        connection.connect("guest", "guest", wait=True)  # guest: a Unix peer is local
        try:
            connection.subscribe("/queue/unix-stomp", id="1", ack="client-individual")
            connection.send("/queue/unix-stomp", "over a unix socket", receipt="sent")
            wait_until(lambda: "sent" in listener.receipts, what="the SEND receipt")
            wait_until(lambda: listener.messages, what="the MESSAGE")
            frame = listener.messages[0]
            assert frame.body == "over a unix socket"
            connection.ack(frame.headers["ack"])
            # The management side sees a Unix connection under RabbitMQ's naming.
            names = broker.call(lambda: [c.name for c in broker.stomp.connections()])
            assert names == [f"unix:{address}"]
        finally:
            connection.disconnect()
    assert not os.path.exists(address)


def raw_stomp(address: str, frames: bytes, until: bytes = b"\0") -> bytes:
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(socket_address(address))
        sock.sendall(frames)
        received = b""
        while until not in received:
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received


def test_stomp_frames_over_a_linux_abstract_name_and_the_same_authentication(tmp_path: Path) -> None:
    address = abstract_name()
    with Broker(port=0, data_dir=tmp_path, stomp_unix_socket=address):
        answer = raw_stomp(address, b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        assert answer.startswith(b"CONNECTED\n") and b"version:1.2" in answer
        refused = raw_stomp(address, b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:wrong\n\n\0")
        assert refused.startswith(b"ERROR\n")
        # Bad input is refused with the protocol's ERROR frame; the listener serves on.
        garbage = raw_stomp(address, b"NOT-A-COMMAND\n\n\0")
        assert garbage.startswith(b"ERROR\n")
        again = raw_stomp(address, b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0")
        assert again.startswith(b"CONNECTED\n")


# --- MQTT -------------------------------------------------------------------------------


def paho_unix_client(address: str, client_id: str, password: str = "guest") -> tuple[paho.Client, dict[str, Any]]:
    seen: dict[str, Any] = {"messages": [], "connack": None, "subscribed": False}
    client = paho.Client(paho.CallbackAPIVersion.VERSION2, client_id=client_id, transport="unix")
    client.username_pw_set("guest", password)
    client.on_connect = lambda c, u, flags, reason, props: seen.__setitem__("connack", reason)
    client.on_message = lambda c, u, message: seen["messages"].append(message)
    client.on_subscribe = lambda c, u, mid, reasons, props: seen.__setitem__("subscribed", True)
    client.connect(socket_address(address), keepalive=30)
    client.loop_start()
    return client, seen


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_paho_publishes_and_receives_over_a_unix_socket(tmp_path: Path, socket_dir: Path, kind: str) -> None:
    address = str(socket_dir / "mqtt.sock") if kind == "path" else abstract_name()
    # The TCP port off: a broker may serve MQTT on its Unix socket only.
    with Broker(port=0, data_dir=tmp_path, mqtt_port=None, mqtt_unix_socket=address) as broker:
        assert broker.mqtt_port is None and f"mqtt+unix:{address}" in broker.unix_sockets
        client, seen = paho_unix_client(address, "unix-paho")
        try:
            wait_until(lambda: seen["connack"] is not None, what="CONNACK")
            assert not seen["connack"].is_failure  # guest: a Unix peer is local
            client.subscribe("unix/topic", qos=1)
            wait_until(lambda: seen["subscribed"], what="SUBACK")
            client.publish("unix/topic", b"over a unix socket", qos=1).wait_for_publish(10)
            wait_until(lambda: seen["messages"], what="the PUBLISH back")
            assert seen["messages"][0].payload == b"over a unix socket"
        finally:
            client.disconnect()
            client.loop_stop()


def test_mqtt_unix_socket_refuses_a_wrong_password(tmp_path: Path, socket_dir: Path) -> None:
    address = str(socket_dir / "mqtt.sock")
    with Broker(port=0, data_dir=tmp_path, mqtt_unix_socket=address):
        client, seen = paho_unix_client(address, "unix-paho-bad", password="wrong")
        try:
            wait_until(lambda: seen["connack"] is not None, what="CONNACK")
            assert seen["connack"].is_failure
            assert seen["connack"].getName() == "Bad user name or password"  # 3.1.1 return code 4
        finally:
            client.disconnect()
            client.loop_stop()


# --- Kafka ------------------------------------------------------------------------------


class UnixRawKafka(RawKafka):
    """test_kafka_wire's raw kio connection, over a Unix socket."""

    def __init__(self, address: str) -> None:  # (RawKafka's takes a TCP port)
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(socket_address(address))
        self.correlation = 0


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_kafka_api_versions_metadata_produce_fetch_over_a_unix_socket(
    tmp_path: Path, socket_dir: Path, kind: str
) -> None:
    address = str(socket_dir / "kafka.sock") if kind == "path" else abstract_name()
    with Broker(port=0, data_dir=tmp_path, kafka_unix_socket=address) as broker:
        assert broker.kafka_port is not None and f"kafka+unix:{address}" in broker.unix_sockets
        client = UnixRawKafka(address)
        try:
            versions = client.request(API_VERSIONS, 3, client_software_name="t", client_software_version="1")
            assert versions.error_code.value == 0 and versions.api_keys
            create_topic(client, "unix-topic")  # Metadata with auto-creation
            batch = build_batch([b"one", b"two"])
            produced = produce(client, "unix-topic", batch)
            partition = produced.responses[0].partition_responses[0]
            assert partition.error_code.value == 0 and partition.base_offset == 0
            fetched = fetch(client, "unix-topic", 0).responses[0].partitions[0]
            assert fetched.error_code.value == 0 and fetched.high_watermark == 2
            assert b"one" in fetched.records and b"two" in fetched.records
            # A frame larger than the request bound closes this connection only.
            client.send_raw((1 << 30).to_bytes(4, "big"))
            wait_until(client.closed_by_peer, what="the oversized frame's close")
        finally:
            client.close()
        again = UnixRawKafka(address)
        try:
            assert fetch(again, "unix-topic", 0).responses[0].partitions[0].high_watermark == 2
        finally:
            again.close()


# --- file permissions, for every protocol -------------------------------------------------

# What each protocol's client says first, and how its answer starts: a refusal at
# connect() (EACCES) is reported as "refused", an answer to the greeting as "connected".
GREETINGS = {
    "stomp": (b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0", b"CONNECTED"),
    "mqtt": (
        bytes([0x10, 28, 0, 4]) + b"MQTT" + bytes([4, 0xC2, 0, 60, 0, 2]) + b"nb"
        + bytes([0, 5]) + b"guest" + bytes([0, 5]) + b"guest",
        bytes([0x20, 2, 0, 0]),
    ),
    "kafka": (bytes.fromhex("0000000c" "00120000" "00000007" "0002" "6e62"), bytes.fromhex("00000007")),
}

CONNECT_AS_NOBODY = textwrap.dedent(
    """
    import os, socket, sys
    os.setgid(65534); os.setuid(65534)
    greeting, expected = bytes.fromhex(sys.argv[2]), bytes.fromhex(sys.argv[3])
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(10)
    try:
        s.connect(sys.argv[1])
    except PermissionError:
        print("refused"); sys.exit(0)
    s.sendall(greeting)
    answer = b""
    while expected not in answer[: 4 + len(expected)]:
        chunk = s.recv(4096)
        if not chunk:
            break
        answer += chunk
    print("connected" if expected in answer[: 4 + len(expected)] else "odd %r" % answer)
    """
)


def connect_as_nobody(address: str, protocol: str) -> str:
    greeting, expected = GREETINGS[protocol]
    result = subprocess.run(
        [sys.executable, "-c", CONNECT_AS_NOBODY, address, greeting.hex(), expected.hex()],
        capture_output=True, text=True, timeout=30,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
@pytest.mark.parametrize("protocol", ["stomp", "mqtt", "kafka"])
def test_socket_file_mode_refuses_a_user_without_permission(tmp_path: Path, socket_dir: Path, protocol: str) -> None:
    closed = str(socket_dir / f"{protocol}-closed.sock")
    opened = str(socket_dir / f"{protocol}-open.sock")
    with Broker(port=0, data_dir=tmp_path / "a", **{f"{protocol}_unix_socket": closed}):
        assert connect_as_nobody(closed, protocol) == "refused"
    with Broker(port=0, data_dir=tmp_path / "b", unix_socket_mode=0o666, **{f"{protocol}_unix_socket": opened}):
        # Same directory, same user: only the mode differs, and now the protocol answers.
        assert connect_as_nobody(opened, protocol) == "connected"


# --- settings, management API, `baedal serve` -------------------------------------------


def test_unix_socket_settings_for_every_protocol_from_environment_and_flags() -> None:
    settings = load_settings(
        environ={"BAEDAL_STOMP_UNIX_SOCKET": "@s", "BAEDAL_MQTT_UNIX_SOCKET": "/tmp/m.sock",
                 "BAEDAL_KAFKA_UNIX_SOCKET": "@k"}
    )
    assert (settings.stomp_unix_socket, settings.mqtt_unix_socket, settings.kafka_unix_socket) == (
        "@s", "/tmp/m.sock", "@k"
    )
    flags = {"stomp_unix_socket": "/tmp/s.sock", "mqtt_unix_socket": "@m", "kafka_unix_socket": "/tmp/k.sock"}
    settings = load_settings(flags=flags, environ={})
    assert (settings.stomp_unix_socket, settings.mqtt_unix_socket, settings.kafka_unix_socket) == (
        "/tmp/s.sock", "@m", "/tmp/k.sock"
    )
    from baedal.cli import build_parser

    args = build_parser().parse_args(
        ["serve", "--stomp-unix-socket", "a", "--mqtt-unix-socket", "b", "--kafka-unix-socket", "c"]
    )
    assert (args.stomp_unix_socket, args.mqtt_unix_socket, args.kafka_unix_socket) == ("a", "b", "c")


async def test_management_overview_lists_every_listener(tmp_path: Path, socket_dir: Path) -> None:
    sockets = {p: str(socket_dir / f"{p}.sock") for p in ("amqp", "stomp", "mqtt", "kafka")}
    async with Broker(
        port=0, data_dir=tmp_path, http_port=0, unix_socket=sockets["amqp"], stomp_unix_socket=sockets["stomp"],
        mqtt_unix_socket=sockets["mqtt"], kafka_unix_socket=sockets["kafka"],
    ) as broker:
        async with aiohttp.ClientSession(auth=aiohttp.BasicAuth("guest", "guest")) as session:
            async with session.get(f"{broker.http_url}/api/overview") as response:
                assert response.status == 200
                listeners = (await response.json())["listeners"]
    tcp = {(row["protocol"], row["port"]) for row in listeners if "transport" not in row}
    assert {("amqp", broker.port), ("kafka", broker.kafka_port), ("stomp", broker.stomp_port),
            ("mqtt", broker.mqtt_port), ("http", broker.http_port)} <= tcp
    unix = {(row["protocol"], row["ip_address"]) for row in listeners if row.get("transport") == "unix"}
    assert unix == set(sockets.items())


def test_baedal_serve_reports_each_unix_socket_and_removes_them_on_sigterm(tmp_path: Path, socket_dir: Path) -> None:
    sockets = {p: str(socket_dir / f"{p}.sock") for p in ("stomp", "mqtt", "kafka")}
    env = {**os.environ, "BAEDAL_HTTP_PORT": "off"}
    command = [sys.executable, "-m", "baedal", "serve", "--port", "0", "--data-dir", str(tmp_path / "data"),
               "--kafka-port", "off", "--stomp-port", "off", "--mqtt-port", "off"]
    for protocol, address in sockets.items():
        command += [f"--{protocol}-unix-socket", address]
    stderr = tmp_path / "stderr.log"
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr.open("w"), text=True, env=env)
    try:
        assert process.stdout is not None
        lines = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line:
                break
            lines.append(line)
            if line.startswith("data directory"):
                break
        out = "".join(lines)
        for protocol, address in sockets.items():
            assert f"baedal listening on {protocol}+unix:{address}" in out, out
            assert os.path.exists(address)
        # The TCP listeners are off, the sockets serve: one STOMP login to prove it.
        assert raw_stomp(
            sockets["stomp"], b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\0"
        ).startswith(b"CONNECTED")
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
    log = stderr.read_text()
    for protocol, address in sockets.items():
        assert f"baedal listening on {protocol}+unix:{address}" in log
        assert not os.path.exists(address)


def test_a_unix_socket_that_is_taken_fails_the_start_and_leaves_the_other_broker_serving(
    tmp_path: Path, socket_dir: Path
) -> None:
    address = str(socket_dir / "taken.sock")
    with Broker(port=0, data_dir=tmp_path / "a", mqtt_unix_socket=address):
        second = Broker(port=0, data_dir=tmp_path / "b", mqtt_unix_socket=address)
        with pytest.raises(OSError, match="in use"):
            asyncio.run(_start_and_stop(second))
        client, seen = paho_unix_client(address, "still-served")
        try:
            wait_until(lambda: seen["connack"] is not None, what="CONNACK")
            assert not seen["connack"].is_failure
        finally:
            client.disconnect()
            client.loop_stop()


async def _start_and_stop(broker: Broker) -> None:
    try:
        await broker.start()
    finally:
        await broker.stop()
