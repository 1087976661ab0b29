"""Operators see every protocol: AMQP (pika), STOMP (stomp.py), MQTT 3.1.1 and 5.0
(paho-mqtt) and the in-process client connected to one real Baedal at once appear in
``/api/connections`` with their protocol, an operator can close each of them (and each
client sees its protocol's way of being closed), ``/metrics`` counts per protocol, and
the MQTT endpoints show sessions and retained messages."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
import requests
import stomp
from httphelpers import Api, enc, poll_until

from baedal import Broker
from baedal.client import PUSH, Context

pytestmark = pytest.mark.timeout(120)

SRC = str(Path(__file__).resolve().parents[2] / "src")


def _broker(data_dir: Path, name: str) -> Broker:
    return Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir, inproc_name=name)


@pytest.fixture
def ops_broker(tmp_path: Path) -> Iterator[Broker]:
    with _broker(tmp_path / "data", f"ops-{os.getpid()}-{time.monotonic_ns()}") as broker:
        yield broker


class MQTTPeer:
    """A paho-mqtt client on its own network thread, recording what it sees."""

    def __init__(self, broker: Broker, client_id: str, *, v5: bool, clean: bool = True, websocket: bool = False) -> None:
        self.protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        self.client = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=client_id,
            protocol=self.protocol,
            clean_session=None if v5 else clean,
            transport="websockets" if websocket else "tcp",
        )
        if websocket:
            self.client.ws_set_options(path="/mqtt")
        self.client.username_pw_set("guest", "guest")
        self.client.reconnect_delay_set(min_delay=60, max_delay=120)  # stay closed when closed
        self.connected = threading.Event()
        self.disconnects: list[Any] = []
        self.messages: list[mqtt.MQTTMessage] = []
        self.client.on_connect = lambda c, u, f, rc, p: self.connected.set()
        self.client.on_disconnect = lambda c, u, f, rc, p: self.disconnects.append(rc)
        self.client.on_message = lambda c, u, m: self.messages.append(m)
        self.v5 = v5
        self.clean = clean
        self.port = broker.http_port if websocket else broker.mqtt_port

    def start(self) -> MQTTPeer:
        if self.v5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            if not self.clean:
                props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", self.port, keepalive=30, clean_start=self.clean, properties=props)
        else:
            self.client.connect("127.0.0.1", self.port, keepalive=30)
        self.client.loop_start()
        assert self.connected.wait(10), "MQTT CONNACK"
        return self

    def subscribe(self, topic: str, qos: int) -> None:
        done = threading.Event()
        self.client.on_subscribe = lambda *a: done.set()
        self.client.subscribe(topic, qos)
        assert done.wait(10), "SUBACK"

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> None:
        info = self.client.publish(topic, payload, qos=qos, retain=retain)
        info.wait_for_publish(10)

    def stop(self) -> None:
        try:
            self.client.disconnect()
        finally:
            self.client.loop_stop()


class StompListener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.errors: list[Any] = []
        self.messages: list[Any] = []
        self.disconnected = threading.Event()

    def on_error(self, frame: Any) -> None:
        self.errors.append(frame)

    def on_message(self, frame: Any) -> None:
        self.messages.append(frame)

    def on_disconnected(self) -> None:
        self.disconnected.set()


def _stomp(broker: Broker) -> tuple[Any, StompListener]:
    connection = stomp.Connection12([("127.0.0.1", broker.stomp_port)], heartbeats=(0, 0), vhost="/", reconnect_attempts_max=1)
    listener = StompListener()
    connection.set_listener("ops", listener)
    connection.connect("guest", "guest", wait=True, headers={"client-id": "ops-stomp"})
    return connection, listener


def _by_protocol(api: Api) -> dict[str, list[dict[str, Any]]]:
    found: dict[str, list[dict[str, Any]]] = {}
    for item in api.json("/api/connections"):
        found.setdefault(item["protocol"], []).append(item)
    return found


def _metric(text: str, name: str, labels: str = "") -> float:
    wanted = f"{name}{{{labels}}}" if labels else name
    for line in text.splitlines():
        if line.startswith(wanted + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{wanted} not in metrics")


def _metrics(broker: Broker) -> str:
    response = requests.get(broker.http_url + "/metrics", timeout=10)
    assert response.status_code == 200
    return response.text


def _close(api: Api, name: str) -> None:
    response = api.delete(f"/api/connections/{enc(name)}", headers={"X-Reason": "ops test"})
    assert response.status_code == 204, response.text


def test_every_protocol_is_listed_and_each_can_be_closed(ops_broker: Broker) -> None:
    api = Api(ops_broker.http_url)
    amqp = pika.BlockingConnection(pika.URLParameters(ops_broker.amqp_url))
    stomp_conn, stomp_events = _stomp(ops_broker)
    v5 = MQTTPeer(ops_broker, "ops-v5", v5=True).start()
    v3 = MQTTPeer(ops_broker, "ops-v3", v5=False, clean=False).start()
    ctx = Context(timeout=10)
    try:
        push = ctx.socket(PUSH, f"ops-inproc-{time.monotonic_ns()}").connect(f"inproc://{ops_broker.settings.inproc_name}")
        push.send(b"x")
        v5.subscribe("ops/a/+", 1)
        v5.subscribe("ops/b", 0)

        want = {"AMQP 0-9-1", "STOMP 1.2", "MQTT 5.0", "MQTT 3.1.1", "inproc"}
        listed = poll_until(lambda: (lambda p: p if want <= set(p) else None)(_by_protocol(api)))
        for protocol in want:
            assert len(listed[protocol]) == 1, (protocol, listed[protocol])
        mqtt5 = listed["MQTT 5.0"][0]
        assert mqtt5["client_id"] == "ops-v5"
        assert mqtt5["user"] == "guest" and mqtt5["vhost"] == "/"
        assert mqtt5["keep_alive"] == 30 and mqtt5["clean_session"] is True
        assert mqtt5["subscriptions"] == 2 and mqtt5["inflight"] == 0
        assert mqtt5["peer_host"] == "127.0.0.1" and mqtt5["port"] == ops_broker.mqtt_port
        assert mqtt5["recv_oct"] > 0 and mqtt5["send_oct"] > 0
        mqtt3 = listed["MQTT 3.1.1"][0]
        assert mqtt3["client_id"] == "ops-v3" and mqtt3["clean_session"] is False
        inproc = listed["inproc"][0]
        assert inproc["user"] == "guest" and inproc["type"] == "direct"
        assert inproc["published"] == 1
        assert listed["STOMP 1.2"][0]["client_properties"]["product"] == "ops-stomp"
        # One connection by name, and the vhost listing, as for AMQP.
        one = api.json(f"/api/connections/{enc(mqtt5['name'])}")
        assert one["protocol"] == "MQTT 5.0" and one["client_id"] == "ops-v5"
        assert {c["protocol"] for c in api.json("/api/vhosts/%2F/connections")} >= want
        assert api.json("/api/overview")["object_totals"]["connections"] == 5
        text = _metrics(ops_broker)
        for protocol, count in (("amqp", 1), ("stomp", 1), ("mqtt", 2), ("inproc", 1)):
            assert _metric(text, "baedal_connections", f'protocol="{protocol}"') == count, protocol
        # Channel listings hold AMQP's channels only, with every protocol connected.
        assert [c["connection_details"]["name"] for c in api.json("/api/channels")] == []
        assert api.json(f"/api/connections/{enc(mqtt5['name'])}/channels") == []
        assert api.json(f"/api/connections/{enc(inproc['name'])}/channels") == []

        # Close each from the API; each client learns it its protocol's way.
        _close(api, mqtt5["name"])
        poll_until(lambda: v5.disconnects)
        assert v5.disconnects[0] == 0x98  # MQTT 5.0: Administrative action
        _close(api, mqtt3["name"])
        poll_until(lambda: v3.disconnects)
        _close(api, listed["STOMP 1.2"][0]["name"])
        assert stomp_events.disconnected.wait(10)
        assert stomp_events.errors and stomp_events.errors[0].headers["message"] == "Connection closed"
        _close(api, listed["AMQP 0-9-1"][0]["name"])
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as closed:
            for _ in range(100):
                amqp.process_data_events(time_limit=0.1)
        assert closed.value.reply_code == 320
        _close(api, inproc["name"])
        gone = {mqtt5["name"], mqtt3["name"], inproc["name"], listed["STOMP 1.2"][0]["name"]}
        poll_until(lambda: not gone & {c["name"] for c in api.json("/api/connections")})
        # The closed sessions' state is right: the persistent 3.1.1 one is kept.
        sessions = {s["client_id"]: s for s in api.json("/api/mqtt/sessions")}
        assert "ops-v5" not in sessions
        assert sessions["ops-v3"]["connected"] is False and sessions["ops-v3"]["persistent"] is True
        assert api.delete(f"/api/connections/{enc(mqtt5['name'])}").status_code == 404
    finally:
        ctx.close()
        v5.stop()
        v3.stop()
        if stomp_conn.is_connected():
            stomp_conn.disconnect()
        if amqp.is_open:
            amqp.close()


def test_mqtt_over_websocket_is_listed_and_closable(ops_broker: Broker) -> None:
    api = Api(ops_broker.http_url)
    peer = MQTTPeer(ops_broker, "ops-ws", v5=True, websocket=True).start()
    try:
        (row,) = poll_until(lambda: api.json("/api/connections"))
        assert row["protocol"] == "Web MQTT 5.0" and row["client_id"] == "ops-ws"
        assert row["port"] == ops_broker.http_port
        assert api.json("/api/mqtt/sessions/ops-ws")["protocol"] == "Web MQTT 5.0"
        text = _metrics(ops_broker)
        assert _metric(text, "baedal_connections", 'protocol="mqtt"') == 1
        _close(api, row["name"])
        poll_until(lambda: peer.disconnects)
        assert peer.disconnects[0] == 0x98
        poll_until(lambda: api.json("/api/connections") == [])
    finally:
        peer.stop()


def test_metrics_count_per_protocol(ops_broker: Broker) -> None:
    before = _metrics(ops_broker)
    assert _metric(before, "baedal_connections", 'protocol="mqtt"') == 0
    subscriber = MQTTPeer(ops_broker, "ops-metrics-sub", v5=False).start()
    publisher = MQTTPeer(ops_broker, "ops-metrics-pub", v5=True).start()
    stomp_conn, stomp_events = _stomp(ops_broker)
    try:
        subscriber.subscribe("ops/metrics/#", 1)
        stomp_conn.subscribe("/topic/ops.metrics.#", id="s1", ack="auto")
        time.sleep(0)  # the SUBSCRIBE has no receipt: wait for it below through a delivery
        for i in range(5):
            publisher.publish(f"ops/metrics/{i}", b"m%d" % i, qos=1)
        publisher.publish("ops/retained/one", b"keep", qos=1, retain=True)
        poll_until(lambda: len(subscriber.messages) == 5 and len(stomp_events.messages) == 5)
        stomp_conn.send("/topic/ops.metrics.s", b"from stomp")
        poll_until(lambda: len(subscriber.messages) == 6)

        text = _metrics(ops_broker)
        assert _metric(text, "baedal_connections", 'protocol="mqtt"') == 2
        assert _metric(text, "baedal_connections", 'protocol="stomp"') == 1
        assert _metric(text, "baedal_connections", 'protocol="amqp"') == 0
        assert _metric(text, "baedal_protocol_messages_received_total", 'protocol="mqtt"') == 6
        assert _metric(text, "baedal_protocol_messages_delivered_total", 'protocol="mqtt"') == 6
        assert _metric(text, "baedal_protocol_messages_received_total", 'protocol="stomp"') == 1
        assert _metric(text, "baedal_protocol_messages_delivered_total", 'protocol="stomp"') == 6
        assert _metric(text, "baedal_mqtt_retained_messages") == 1
        assert _metric(text, "baedal_mqtt_sessions", 'state="connected"') == 2
    finally:
        subscriber.stop()
        publisher.stop()
        stomp_conn.disconnect()
    text = poll_until(
        lambda: (lambda t: t if _metric(t, "baedal_connections", 'protocol="mqtt"') == 0 else None)(_metrics(ops_broker))
    )
    assert _metric(text, "baedal_mqtt_sessions", 'state="connected"') == 0


def test_mqtt_sessions_and_retained_endpoints(tmp_path: Path) -> None:
    name = f"ops-r-{os.getpid()}-{time.monotonic_ns()}"
    with _broker(tmp_path / "data", name) as broker:
        api = Api(broker.http_url)
        peer = MQTTPeer(broker, "ops-persist", v5=True, clean=False).start()
        try:
            peer.subscribe("ops/+/t", 1)
            peer.subscribe("ops/q0", 0)
            for i in (3, 1, 2):
                peer.publish(f"ops/r/{i}", b"r" * i, qos=1, retain=True)
            session = api.json("/api/mqtt/sessions/ops-persist")
            assert session["connected"] is True and session["persistent"] is True
            assert session["expiry"] == 3600 and session["protocol"] == "MQTT 5.0"
            subs = {s["filter"]: s for s in session["subscriptions"]}
            assert subs["ops/+/t"]["qos"] == 1 and subs["ops/+/t"]["queue"] == "mqtt-subscription-ops-persistqos1"
            assert subs["ops/+/t"]["routing_key"] == "ops.*.t"
            assert subs["ops/q0"]["queue"] == "mqtt-subscription-ops-persistqos0"
            # A connected session is not deleted from under its client.
            assert api.delete("/api/mqtt/sessions/ops-persist").status_code == 409

            page = api.json("/api/mqtt/retained?page_size=2")
            assert page["total_count"] == 3 and page["page_count"] == 2
            assert [m["topic"] for m in page["items"]] == ["ops/r/1", "ops/r/2"]
            page2 = api.json("/api/mqtt/retained?page=2&page_size=2")
            assert [(m["topic"], m["size"], m["qos"]) for m in page2["items"]] == [("ops/r/3", 3, 1)]
            assert api.json(f"/api/mqtt/retained/{enc('ops/r/2')}")["size"] == 2
            assert api.delete(f"/api/mqtt/retained/{enc('ops/r/1')}").status_code == 204
            assert api.delete(f"/api/mqtt/retained/{enc('ops/r/1')}").status_code == 404
            assert api.get("/api/mqtt/retained?page_size=0").status_code == 400
        finally:
            peer.stop()
        poll_until(lambda: api.json("/api/mqtt/sessions/ops-persist")["connected"] is False)

    # After a restart: the persistent session is known from storage only, the cleared
    # retained message stays cleared.
    with _broker(tmp_path / "data", name) as broker:
        api = Api(broker.http_url)
        sessions = api.json("/api/mqtt/sessions")
        assert [s["client_id"] for s in sessions] == ["ops-persist"]
        assert sessions[0]["in_memory"] is False and sessions[0]["connected"] is False
        assert {s["filter"] for s in sessions[0]["subscriptions"]} == {"ops/+/t", "ops/q0"}
        assert [m["topic"] for m in api.json("/api/mqtt/retained")["items"]] == ["ops/r/2", "ops/r/3"]
        late = MQTTPeer(broker, "ops-late", v5=False).start()
        try:
            late.subscribe("ops/r/#", 0)
            poll_until(lambda: len(late.messages) == 2)
            assert sorted(m.topic for m in late.messages) == ["ops/r/2", "ops/r/3"]
        finally:
            late.stop()
        assert api.delete("/api/mqtt/sessions/ops-persist").status_code == 204
        assert api.get("/api/mqtt/sessions/ops-persist").status_code == 404
        queues = {q["name"] for q in api.json("/api/queues")}
        assert not {q for q in queues if q.startswith("mqtt-subscription-ops-persist")}
        assert api.get("/api/mqtt/sessions/nobody").status_code == 404


def test_mqtt_endpoints_need_a_user_who_sees_the_vhost(ops_broker: Broker) -> None:
    api = Api(ops_broker.http_url)
    assert api.put("/api/users/ops-mon", {"password": "pw", "tags": "monitoring"}).status_code in (201, 204)
    assert api.put("/api/users/ops-mgmt", {"password": "pw", "tags": "management"}).status_code in (201, 204)
    assert Api(ops_broker.http_url, ("ops-mon", "pw")).get("/api/mqtt/sessions").status_code == 200
    # management without a permission on "/" does not see the MQTT vhost
    assert Api(ops_broker.http_url, ("ops-mgmt", "pw")).get("/api/mqtt/retained").status_code == 404
    assert Api(ops_broker.http_url, None).get("/api/mqtt/sessions").status_code == 401


def _ctl(broker: Broker, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC)
    return subprocess.run(
        [sys.executable, "-m", "baedal", "ctl", "--url", broker.http_url, *args],
        capture_output=True, text=True, timeout=60, env=env,
    )


def test_ctl_shows_protocols_sessions_and_retained(ops_broker: Broker) -> None:
    peer = MQTTPeer(ops_broker, "ops-ctl", v5=False, clean=False).start()
    try:
        peer.subscribe("ops/ctl/#", 1)
        peer.publish("ops/ctl/r", b"retained", qos=1, retain=True)
        result = _ctl(ops_broker, "--json", "list_connections")
        assert result.returncode == 0, result.stderr
        rows = json.loads(result.stdout)
        assert [r["protocol"] for r in rows] == ["MQTT 3.1.1"]
        text = _ctl(ops_broker, "list", "connections")
        assert "MQTT 3.1.1" in text.stdout and "protocol" in text.stdout and "ops-ctl" in text.stdout
        sessions = _ctl(ops_broker, "--json", "list_mqtt_sessions")
        assert sessions.returncode == 0, sessions.stderr
        (row,) = json.loads(sessions.stdout)
        assert row["client_id"] == "ops-ctl" and row["connected"] is True
        assert [s["queue"] for s in row["subscriptions"]] == ["mqtt-subscription-ops-ctlqos1"]
        table = _ctl(ops_broker, "list_mqtt_sessions")
        assert "ops-ctl" in table.stdout and "ops/ctl/# (QoS 1) -> mqtt-subscription-ops-ctlqos1" in table.stdout
        retained = _ctl(ops_broker, "--json", "list_retained")
        assert retained.returncode == 0, retained.stderr
        assert [(m["topic"], m["size"], m["qos"]) for m in json.loads(retained.stdout)["items"]] == [("ops/ctl/r", 8, 1)]
        assert "ops/ctl/r" in _ctl(ops_broker, "list_retained").stdout
    finally:
        peer.stop()


def test_without_mqtt_ctl_says_so_and_metrics_still_answer(tmp_path: Path) -> None:
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=tmp_path, mqtt_port=None) as broker:
        result = _ctl(broker, "list_mqtt_sessions")
        assert result.returncode != 0
        assert "MQTT" in result.stderr
        text = _metrics(broker)  # the per-protocol families without an MQTT listener
        assert _metric(text, "baedal_connections", 'protocol="mqtt"') == 0
        assert "baedal_mqtt_retained_messages" not in text
