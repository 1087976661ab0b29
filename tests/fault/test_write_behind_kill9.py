"""kill -9 under write-behind: every confirmed (AMQP) or PUBACKed (MQTT) message was
either delivered and acked before the kill or is delivered after the restart.

Durable queues defer the write of a persistent message until the next sync job and
never write one that is consumed and acked before it (queue_store.py, "Write-behind");
a confirm is sent once the covering fsync is done, or the message was settled before
it.  This drives exactly that race with real clients against a broker subprocess:

* AMQP: three pika publishers with publisher confirms (``basic_publish`` returns once
  confirmed) into one durable queue, and one pika consumer acking each delivery as it
  arrives (prefetch 200);
* MQTT: two paho QoS 1 publishers (50 in flight each) and one persistent-session
  subscriber (clean_session false, QoS 1) online the whole time, PUBACKing as it goes,
  plus a second persistent session that subscribed and went away (its queue gets the
  same messages and writes them all: nobody settles them);

then SIGKILL mid-run, a restart on the same data directory, and both consumers resume.
A message the client saw delivered before the kill may also come back (its ack may not
have reached the disk, or the broker); one that was confirmed and never delivered must.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pika
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from baedal_testing import wait_until

QUEUE = "wb-kill9-amqp"
TOPIC = "wbkill9/data"
SUBSCRIBER = "wb-kill9-subscriber"
OFFLINE_SUBSCRIBER = "wb-kill9-offline-subscriber"
AMQP_PUBLISHERS = 3
MQTT_PUBLISHERS = 2
MQTT_PER_PUBLISHER = 3000
KILL_AFTER_AMQP = 300
KILL_AFTER_MQTT = 1500
PERSISTENT = pika.BasicProperties(delivery_mode=2)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Broker:
    """A ``baedal serve`` subprocess on ephemeral ports, killed with SIGKILL."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.amqp_port = 0
        self.mqtt_port = 0
        self.log = data_dir.parent / "broker.log"

    def start(self) -> None:
        self.amqp_port, self.mqtt_port = free_port(), free_port()
        command = [
            sys.executable, "-m", "baedal", "serve", "--port", str(self.amqp_port),
            "--data-dir", str(self.data_dir), "--http-port", "off", "--kafka-port", "off",
            "--stomp-port", "off", "--mqtt-port", str(self.mqtt_port),
        ]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"broker exited during start-up (log {self.log})")
            with contextlib.suppress(OSError):
                with socket.create_connection(("127.0.0.1", self.amqp_port), 0.2):
                    pass
                with socket.create_connection(("127.0.0.1", self.mqtt_port), 0.2):
                    return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("broker not listening after 30s")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None

    def amqp(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(
            pika.ConnectionParameters("127.0.0.1", self.amqp_port, heartbeat=0)
        )

    def mqtt(
        self, client_id: str, clean: bool, inflight: int | None = None, into: list[str] | None = None
    ) -> paho.Client:
        """A connected paho client; ``into`` collects the payloads it receives (set before
        CONNECT: a resumed session's messages arrive right after the CONNACK)."""
        client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
        client.username_pw_set("guest", "guest")
        if into is not None:
            client.on_message = lambda _c, _u, m: into.append(m.payload.decode())
        if inflight is not None:
            client.max_inflight_messages_set(inflight)
            client.max_queued_messages_set(0)
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.connect("127.0.0.1", self.mqtt_port, 60)
        client.loop_start()
        if not connected.wait(10):
            raise AssertionError(f"{client_id}: no CONNACK")
        return client


class AmqpPublisher(threading.Thread):
    """Publishes with confirms until stopped or the broker goes; keeps what was confirmed."""

    def __init__(self, broker: Broker, index: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.broker, self.index, self.stop = broker, index, stop
        self.confirmed: list[str] = []

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the kill ends it
            connection = self.broker.amqp()
            channel = connection.channel()
            channel.confirm_delivery()
            seq = 0
            while not self.stop.is_set():
                body = f"a{self.index}-{seq}"
                channel.basic_publish("", QUEUE, body.encode(), PERSISTENT)  # raises on nack
                self.confirmed.append(body)
                seq += 1


class AmqpConsumer(threading.Thread):
    """Acks every delivery at once; keeps what it acked (before the kill)."""

    def __init__(self, broker: Broker) -> None:
        super().__init__(daemon=True)
        self.broker = broker
        self.acked: list[str] = []
        self.ready = threading.Event()

    def run(self) -> None:
        with contextlib.suppress(Exception):  # the kill ends it
            connection = self.broker.amqp()
            channel = connection.channel()
            channel.basic_qos(prefetch_count=200)

            def on_message(ch, method, _properties, body: bytes) -> None:  # type: ignore[no-untyped-def]
                ch.basic_ack(method.delivery_tag)
                self.acked.append(body.decode())

            channel.basic_consume(QUEUE, on_message)
            self.ready.set()
            channel.start_consuming()


def drain_amqp(broker: Broker) -> list[str]:
    """Everything the queue delivers after the restart, until 2 s pass with nothing new."""
    got: list[str] = []
    connection = broker.amqp()
    try:
        channel = connection.channel()
        channel.basic_qos(prefetch_count=500)

        def on_message(ch, method, _properties, body: bytes) -> None:  # type: ignore[no-untyped-def]
            got.append(body.decode())
            ch.basic_ack(method.delivery_tag)

        channel.basic_consume(QUEUE, on_message)
        last = -1
        while len(got) != last:
            last = len(got)
            connection.process_data_events(time_limit=2)
    finally:
        with contextlib.suppress(Exception):
            connection.close()
    return got


@pytest.mark.timeout(240)
def test_kill9_under_write_behind_loses_no_confirmed_or_pubacked_message(tmp_path: Path) -> None:
    broker = Broker(tmp_path / "data")
    broker.start()
    clients: list[paho.Client] = []
    try:
        setup = broker.amqp()
        setup.channel().queue_declare(QUEUE, durable=True)
        setup.close()
        # MQTT: a persistent session that subscribes and goes away ...
        offline = broker.mqtt(OFFLINE_SUBSCRIBER, clean=False)
        offline_subscribed = threading.Event()
        offline.on_subscribe = lambda *args: offline_subscribed.set()
        offline.subscribe(TOPIC, 1)
        assert offline_subscribed.wait(10)
        offline.disconnect()
        offline.loop_stop()
        # ... and one online throughout (paho PUBACKs after on_message returns)
        mqtt_before: list[str] = []
        subscriber = broker.mqtt(SUBSCRIBER, clean=False, into=mqtt_before)
        clients.append(subscriber)
        subscribed = threading.Event()
        subscriber.on_subscribe = lambda *args: subscribed.set()
        subscriber.subscribe(TOPIC, 1)
        assert subscribed.wait(10)
        # AMQP consumer and publishers
        stop = threading.Event()
        consumer = AmqpConsumer(broker)
        consumer.start()
        assert consumer.ready.wait(10)
        publishers = [AmqpPublisher(broker, i, stop) for i in range(AMQP_PUBLISHERS)]
        for publisher in publishers:
            publisher.start()
        # MQTT publishers: paho's callback thread holds its lock in on_publish, so only
        # the acknowledged ids are kept there; they are mapped to payloads afterwards
        acked_mids: list[set[int]] = []
        mid_payloads: list[dict[int, str]] = []
        for p in range(MQTT_PUBLISHERS):
            mids: set[int] = set()
            acked_mids.append(mids)
            publisher_client = broker.mqtt(f"wb-kill9-pub-{p}", clean=True, inflight=50)
            clients.append(publisher_client)
            publisher_client.on_publish = lambda _c, _u, mid, _rc, _props, mids=mids: mids.add(mid)
            payloads: dict[int, str] = {}
            mid_payloads.append(payloads)
            for seq in range(MQTT_PER_PUBLISHER):
                payload = f"m{p}-{seq}"
                payloads[publisher_client.publish(TOPIC, payload.encode(), 1).mid] = payload

        def amqp_confirmed() -> int:
            return sum(len(publisher.confirmed) for publisher in publishers)

        wait_until(
            lambda: amqp_confirmed() >= KILL_AFTER_AMQP
            and sum(len(m) for m in acked_mids) >= KILL_AFTER_MQTT,
            120,
            "confirms and PUBACKs before the kill",
        )
        broker.kill()
        stop.set()
        for c in clients:
            c.loop_stop()
        clients.clear()
        for publisher in publishers:
            publisher.join(10)
        consumer.join(10)
        confirmed = {body for publisher in publishers for body in publisher.confirmed}
        acked_before = set(consumer.acked)
        pubacked = {
            payloads[mid]
            for mids, payloads in zip(acked_mids, mid_payloads, strict=True)
            for mid in set(mids)
        }
        delivered_before = set(mqtt_before)
        # the race was really run: deliveries and acks happened while publishing
        assert len(confirmed) >= KILL_AFTER_AMQP and acked_before & confirmed
        assert len(pubacked) >= KILL_AFTER_MQTT and delivered_before & pubacked

        broker.start()
        mqtt_after: list[str] = []
        subscriber = broker.mqtt(SUBSCRIBER, clean=False, into=mqtt_after)  # the session resumes
        clients.append(subscriber)
        offline_after: list[str] = []
        offline = broker.mqtt(OFFLINE_SUBSCRIBER, clean=False, into=offline_after)
        clients.append(offline)
        amqp_after = set(drain_amqp(broker))
        # Poll until both sessions hold every PUBACKed message (or 60 s: the asserts
        # below then name what is missing).
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and (
            pubacked - delivered_before - set(mqtt_after) or pubacked - set(offline_after)
        ):
            time.sleep(0.1)
        lost_amqp = confirmed - acked_before - amqp_after
        lost_mqtt = pubacked - delivered_before - set(mqtt_after)
        lost_offline = pubacked - set(offline_after)
        print(
            f"AMQP confirmed {len(confirmed)}, acked before {len(acked_before)}, after {len(amqp_after)};"
            f" MQTT PUBACKed {len(pubacked)}, delivered before {len(delivered_before)},"
            f" after {len(set(mqtt_after))}; offline session after {len(set(offline_after))}"
        )
        assert not lost_amqp, f"{len(lost_amqp)} confirmed AMQP messages lost: {sorted(lost_amqp)[:10]}"
        assert not lost_mqtt, f"{len(lost_mqtt)} PUBACKed MQTT messages lost: {sorted(lost_mqtt)[:10]}"
        assert not lost_offline, f"offline session lost {len(lost_offline)}: {sorted(lost_offline)[:10]}"
    finally:
        for c in clients:
            with contextlib.suppress(Exception):
                c.loop_stop()
        broker.kill()
