"""Broker-level features that need their own broker: TLS, heartbeats, timeouts, alarms,
the embedded asyncio mode and the command line."""

from __future__ import annotations

import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import pika
import pika.exceptions
import pytest

from baedal import Broker
from baedal.config import load_settings
from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(60)


def test_tls_listener_serves_amqps_with_the_configured_certificate(tmp_path: Path) -> None:
    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file = tmp_path / "cert.pem"
    key_file = tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    with Broker(
        port=0, tls_port=0, tls_cert=str(cert_file), tls_key=str(key_file), data_dir=tmp_path / "d"
    ) as broker:
        assert broker.tls_port
        context = ssl.create_default_context()
        ca.configure_trust(context)
        params = pika.ConnectionParameters(
            host="127.0.0.1",
            port=broker.tls_port,
            ssl_options=pika.SSLOptions(context, "localhost"),
            credentials=pika.PlainCredentials("guest", "guest"),
        )
        connection = pika.BlockingConnection(params)
        channel = connection.channel()
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.basic_publish("", queue, b"over tls")
        _method, _props, body = channel.basic_get(queue, auto_ack=True)
        assert body == b"over tls"
        connection.close()


def _raw_handshake(port: int, heartbeat: int) -> socket.socket:
    """Open a connection by hand and negotiate ``heartbeat``; never send anything after."""
    from baedal.protocols.amqp import codec, spec

    sock = socket.create_connection(("127.0.0.1", port), timeout=10)
    sock.sendall(codec.PROTOCOL_HEADER)
    reader = codec.FrameReader()
    reader._need_protocol_header = False  # client side: frames only

    def read_method() -> object:
        while True:
            data = sock.recv(65536)
            assert data, "connection closed during the handshake"
            for event in reader.feed(data):
                if isinstance(event, codec.MethodFrame):
                    return event.method

    read_method()  # start
    sock.sendall(
        codec.method_frame(
            0,
            spec.ConnectionStartOk(
                client_properties={},
                mechanism="PLAIN",
                response=b"\x00guest\x00guest",
                locale="en_US",
            ),
        )
    )
    read_method()  # tune
    sock.sendall(
        codec.method_frame(
            0, spec.ConnectionTuneOk(channel_max=16, frame_max=131072, heartbeat=heartbeat)
        )
    )
    sock.sendall(codec.method_frame(0, spec.ConnectionOpen(virtual_host="/")))
    assert isinstance(read_method(), spec.ConnectionOpenOk)
    return sock


def test_a_silent_peer_is_disconnected_after_two_missed_heartbeats(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        sock = _raw_handshake(broker.port, heartbeat=1)
        try:
            sock.settimeout(10)
            heartbeats = 0
            started = time.monotonic()
            while True:
                data = sock.recv(4096)
                if not data:
                    break
                heartbeats += data.count(b"\x08\x00\x00\x00\x00\x00\x00\xce")
            # the broker sent heartbeats while waiting, then dropped the dead peer
            assert heartbeats >= 1
            assert time.monotonic() - started < 8
            wait_until(lambda: broker.call(lambda: len(broker.core.connections)) == 0)
        finally:
            sock.close()


def test_a_client_that_never_finishes_the_handshake_is_dropped(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path, handshake_timeout=0.5) as broker:
        sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        sock.sendall(b"AMQP\x00\x00\x09\x01")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        assert data.startswith(b"\x01\x00\x00")  # connection.start, then the broker hung up
        sock.close()


def test_wrong_protocol_header_is_answered_with_ours_then_closed(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        sock = socket.create_connection(("127.0.0.1", broker.port), timeout=10)
        sock.sendall(b"HTTP/1.1 GET /\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(100)
            if not chunk:
                break
            data += chunk
        assert data == b"AMQP\x00\x00\x09\x01"
        sock.close()


def test_memory_alarm_blocks_publishers_with_a_reason_and_consumers_keep_draining(
    tmp_path: Path,
) -> None:
    with Broker(port=0, data_dir=tmp_path, alarm_check_interval=0.05) as broker:
        params = pika.URLParameters(broker.amqp_url)
        publisher = pika.BlockingConnection(params)
        consumer = pika.BlockingConnection(params)
        reasons: list[str] = []
        unblocked: list[bool] = []
        publisher.add_on_connection_blocked_callback(
            lambda _c, frame: reasons.append(frame.method.reason)
        )
        publisher.add_on_connection_unblocked_callback(lambda _c, _f: unblocked.append(True))
        pch = publisher.channel()
        queue = pch.queue_declare("alarm-q").method.queue
        for i in range(10):
            pch.basic_publish("", queue, b"before %d" % i)
        # Turn the memory limit down to one byte: the monitor raises the alarm.
        broker.call(lambda: setattr(broker.settings, "memory_high_watermark", 2.0))
        wait_until(lambda: (publisher.process_data_events(0.05), reasons)[1], timeout=10)
        assert reasons == ["low on memory"]
        # consumers on other connections keep receiving while publishers are blocked
        cch = consumer.channel()
        got = [cch.basic_get(queue, auto_ack=True)[2] for _ in range(10)]
        assert got == [b"before %d" % i for i in range(10)]
        broker.call(lambda: setattr(broker.settings, "memory_high_watermark", 0.99))
        wait_until(lambda: (publisher.process_data_events(0.05), unblocked)[1], timeout=10)
        pch.basic_publish("", queue, b"after")
        wait_until(lambda: cch.basic_get(queue, auto_ack=True)[2] == b"after", timeout=10)
        publisher.close()
        consumer.close()


async def test_embedded_broker_runs_inside_an_asyncio_program(tmp_path: Path) -> None:
    import aio_pika

    async with Broker(port=0, data_dir=tmp_path) as broker:
        connection = await aio_pika.connect(broker.amqp_url)
        async with connection:
            channel = await connection.channel()
            queue = await channel.declare_queue("embedded", auto_delete=True)
            await channel.default_exchange.publish(
                aio_pika.Message(b"in-process"), routing_key="embedded"
            )
            message = await queue.get(timeout=5)
            assert message.body == b"in-process"
            await message.ack()
    assert broker.amqp is None  # stopped cleanly


def test_settings_flags_beat_environment_beat_file(tmp_path: Path) -> None:
    config = tmp_path / "baedal.toml"
    config.write_text('port = 1111\nhost = "0.0.0.0"\nlog_level = "debug"\n')
    settings = load_settings(
        config, {"port": 3333}, {"BAEDAL_PORT": "2222", "BAEDAL_LOG_LEVEL": "warning"}
    )
    assert settings.port == 3333  # flag
    assert settings.log_level == "warning"  # environment over file
    assert settings.host == "0.0.0.0"  # file over default
    assert load_settings(None, {}, {}).data_dir == Path("./baedal-data")


def test_unknown_setting_in_the_config_file_is_an_error(tmp_path: Path) -> None:
    config = tmp_path / "baedal.toml"
    config.write_text("prot = 1\n")
    with pytest.raises(ValueError, match="unknown setting 'prot'"):
        load_settings(config, {}, {})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize(
    "entry", [["-m", "baedal", "serve"], ["-c", "from baedal.cli import main; main()", "serve"]]
)
def test_serve_prints_where_it_listens_and_stops_cleanly_on_sigterm(
    tmp_path: Path, entry: list[str]
) -> None:
    port = _free_port()
    env = {**os.environ, "BAEDAL_HTTP_PORT": "off"}
    process = subprocess.Popen(
        [sys.executable, *entry, "--port", str(port), "--data-dir", str(tmp_path / "data")],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("w"),
        text=True,
        env=env,
    )
    try:
        assert process.stdout is not None
        first = process.stdout.readline()
        assert f"listening on amqp://127.0.0.1:{port}" in first
        connection = pika.BlockingConnection(
            pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{port}/")
        )
        connection.channel().queue_declare("cli-durable", durable=True)
        connection.close()
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    assert (tmp_path / "data" / "definitions.sqlite3").exists()


def test_stopping_the_broker_closes_client_connections_with_320(tmp_path: Path) -> None:
    broker = Broker(port=0, data_dir=tmp_path).start_in_thread()
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    broker.stop_thread()
    with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as info:
        connection.channel()
        connection.process_data_events(1)
    assert info.value.reply_code == 320
