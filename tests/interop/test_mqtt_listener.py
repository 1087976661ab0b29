"""The MQTT listener's settings: on by default on 1883, ``off`` disables it, an embedded
broker on port 0 takes an ephemeral MQTT port, and a taken *default* port turns the
listener off with a warning instead of failing the start."""

from __future__ import annotations

import contextlib
import errno
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from baedal import Broker
from baedal.config import load_settings

pytestmark = pytest.mark.timeout(60)


def test_settings() -> None:
    assert load_settings(environ={}).mqtt_port == 1883
    assert load_settings(environ={"BAEDAL_MQTT_PORT": "off"}).mqtt_port is None
    assert load_settings(flags={"mqtt_port": "11883"}, environ={}).mqtt_port == 11883
    assert load_settings(environ={"BAEDAL_MQTT_VHOST": "devices"}).mqtt_vhost == "devices"


def test_embedded_brokers_take_ephemeral_ports(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path / "a") as first, Broker(port=0, data_dir=tmp_path / "b") as second:
        assert first.mqtt_port and second.mqtt_port
        assert first.mqtt_port != second.mqtt_port != 1883
    with Broker(port=0, data_dir=tmp_path / "c", mqtt_port=None) as off:
        assert off.mqtt_port is None and off.mqtt is None


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_default_port_taken_turns_the_listener_off(tmp_path: Path) -> None:
    holder = socket.socket()
    try:
        holder.bind(("127.0.0.1", 1883))
        holder.listen()
    except OSError as exc:  # already taken by something else: the same situation
        assert exc.errno == errno.EADDRINUSE
    try:
        with Broker(port=free_port(), data_dir=tmp_path, kafka_port=None) as broker:
            assert broker.mqtt_port is None
    finally:
        holder.close()


def test_serve_flag(tmp_path: Path) -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "baedal", "serve", "--port", str(free_port()), "--data-dir",
         str(tmp_path), "--http-port", "off", "--kafka-port", "off", "--mqtt-port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    try:
        assert process.stdout is not None
        lines = []
        for line in process.stdout:
            lines.append(line.decode())
            if "data directory" in lines[-1]:
                break
        assert f"baedal MQTT on port {port}\n" in lines, lines
    finally:
        process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(10)
        if process.poll() is None:
            process.kill()


def test_mqtt_over_tls(tmp_path: Path) -> None:
    import ssl

    import paho.mqtt.client as paho
    from paho.mqtt.enums import CallbackAPIVersion

    from baedal_testing import wait_until

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file, ca_file = tmp_path / "cert.pem", tmp_path / "key.pem", tmp_path / "ca.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    ca.cert_pem.write_to_path(str(ca_file))
    with Broker(port=0, tls_port=0, tls_cert=str(cert_file), tls_key=str(key_file),
                data_dir=tmp_path / "d") as broker:
        assert broker.mqtt_tls_port and broker.mqtt_tls_port != broker.mqtt_port
        got: list[bytes] = []
        connected: list[int] = []
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id="tls-client")
        client.tls_set(ca_certs=str(ca_file), tls_version=ssl.PROTOCOL_TLS_CLIENT)
        client.username_pw_set("guest", "guest")
        client.on_connect = lambda c, u, f, rc, p: connected.append(rc.value)
        client.on_message = lambda c, u, m: got.append(m.payload)
        client.on_subscribe = lambda c, u, mid, rc, p: c.publish("tls/t", b"secret", 1)
        client.connect("localhost", broker.mqtt_tls_port, 30)
        client.loop_start()
        wait_until(lambda: connected, 10, "CONNACK over TLS")
        assert connected == [0]
        client.subscribe("tls/t", 1)
        wait_until(lambda: got, 10, "the message over TLS")
        assert got == [b"secret"]
        client.disconnect()
        client.loop_stop()
