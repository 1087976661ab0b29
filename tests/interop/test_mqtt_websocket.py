"""MQTT over WebSocket on the HTTP port (``/mqtt``, subprotocol ``mqtt``) with paho's
websockets transport: the same broker, meeting TCP clients."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
import requests
from mqtt_helpers import EXTERNAL_MQTT, Target, start_target, wait_until
from paho.mqtt.enums import CallbackAPIVersion

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(bool(EXTERNAL_MQTT), reason="mosquitto -p serves no WebSocket listener"),
]


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path, http_port=0)


def ws_client(target: Target, version: int = paho.MQTTv311) -> tuple[paho.Client, list[paho.MQTTMessage]]:
    got: list[paho.MQTTMessage] = []
    connected: list[int] = []
    client = paho.Client(CallbackAPIVersion.VERSION2, transport="websockets", protocol=version)
    client.ws_set_options(path="/mqtt")
    client.username_pw_set("guest", "guest")
    client.on_message = lambda c, u, m: got.append(m)
    client.on_connect = lambda c, u, f, rc, p: connected.append(rc.value)
    client.connect("127.0.0.1", target.broker.http_port, 30)
    client.loop_start()
    wait_until(lambda: connected, 10, "CONNACK over WebSocket")
    assert connected == [0]
    return client, got


@pytest.mark.parametrize("version", [paho.MQTTv311, paho.MQTTv5])
def test_websocket_client_meets_tcp_client(target: Target, version: int) -> None:
    ws, ws_got = ws_client(target, version)
    subscribed: list[int] = []
    ws.on_subscribe = lambda *a: subscribed.append(1)
    ws.subscribe("ws/in", 1)
    wait_until(lambda: subscribed, 10, "SUBACK over WebSocket")
    tcp = target.client()
    tcp.subscribe("ws/out", 1)
    for i in range(50):
        tcp.publish("ws/in", f"to-ws-{i}", 1)
    ws.publish("ws/out", b"from-ws", 1)
    wait_until(lambda: len(ws_got) >= 50, 10, "50 messages over WebSocket")
    assert [m.payload for m in ws_got] == [f"to-ws-{i}".encode() for i in range(50)]
    assert tcp.wait_messages(1)[0].payload == b"from-ws"
    ws.disconnect()
    ws.loop_stop()
    tcp.disconnect()


def test_plain_get_is_refused(target: Target) -> None:
    answer = requests.get(f"http://127.0.0.1:{target.broker.http_port}/mqtt", timeout=10)
    assert answer.status_code == 400
