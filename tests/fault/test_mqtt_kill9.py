"""kill -9 with MQTT: every PUBACKed QoS 1 message reaches the persistent session.

A broker subprocess; a subscriber with a persistent session (clean_session=False)
subscribes at QoS 1 and goes away; a paho publisher sends 1,000 QoS 1 messages and
counts PUBACKs; the broker is killed with SIGKILL *while* the publisher is still
sending (after a few hundred PUBACKs, so some PUBLISHes are in flight unacknowledged),
then restarted on the same data directory; the subscriber reconnects with
clean_session=False and must find its session and get every message that was
PUBACKed (messages that were not PUBACKed may or may not be there: the client would
resend them).  QoS 1 allows duplicates; the check is on the set.  A second persistent
subscriber stays connected while the publisher runs, acknowledging what it gets; after
the restart it resumes and must have every PUBACKed message too, and any message it got
twice must carry DUP on the later copy.

The same scenario runs against mosquitto for the record:
``python tests/fault/test_mqtt_kill9.py --mosquitto`` (and ``--baedal``) prints the
numbers (mosquitto's default persistence saves to disk every 30 minutes or on a clean
shutdown, so a kill -9 loses what came since).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

TOTAL = 1000
KILL_AFTER_ACKS = 600
TOPIC = "kill9/data"
SUBSCRIBER = "kill9-persistent-subscriber"
LIVE_SUBSCRIBER = "kill9-live-subscriber"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    def __init__(self, kind: str, data_dir: Path) -> None:
        self.kind = kind
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0
        self.log = data_dir / "broker.log"
        self.credentials: tuple[str, str] | None = ("guest", "guest") if kind == "baedal" else None

    def start(self) -> None:
        self.port = free_port()
        if self.kind == "baedal":
            command = [
                sys.executable, "-m", "baedal", "serve", "--port", str(free_port()),
                "--data-dir", str(self.data_dir / "data"), "--http-port", "off",
                "--kafka-port", "off", "--mqtt-port", str(self.port),
            ]
        else:
            config = self.data_dir / "mosquitto.conf"
            (self.data_dir / "mosq").mkdir(exist_ok=True)
            config.write_text(
                f"listener {self.port} 127.0.0.1\nallow_anonymous true\n"
                f"persistence true\npersistence_location {self.data_dir / 'mosq'}/\n"
            )
            command = ["mosquitto", "-c", str(config)]
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.kind} exited during start-up (log {self.log})")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"{self.kind} not listening after 30s")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


def client(broker: BrokerProcess, client_id: str, clean: bool) -> paho.Client:
    c = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=clean)
    if broker.credentials:
        c.username_pw_set(*broker.credentials)
    return c


def wait(predicate, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.01)


def connect_and_wait(c: paho.Client, broker: BrokerProcess) -> dict[str, object]:
    state: dict[str, object] = {}
    c.on_connect = lambda cl, ud, flags, rc, props: state.update(
        rc=rc.value, present=bool(flags.session_present)
    )
    c.connect("127.0.0.1", broker.port, 30)
    c.loop_start()
    wait(lambda: "rc" in state, 10, "CONNACK")
    return state


def run_scenario(kind: str, data_dir: Path) -> dict[str, int | bool]:
    broker = BrokerProcess(kind, data_dir)
    broker.start()
    try:
        # 1. the persistent subscriber subscribes and goes away
        sub = client(broker, SUBSCRIBER, clean=False)
        assert connect_and_wait(sub, broker)["rc"] == 0
        subscribed = threading.Event()
        sub.on_subscribe = lambda *a: subscribed.set()
        sub.subscribe(TOPIC, 1)
        assert subscribed.wait(10)
        sub.disconnect()
        sub.loop_stop()
        # ... and a second one stays connected, receiving (and PUBACKing) while it runs
        live_got: list[tuple[int, bool]] = []
        live = client(broker, LIVE_SUBSCRIBER, clean=False)
        live.on_message = lambda cl, ud, m: live_got.append((int(m.payload), bool(m.dup)))
        assert connect_and_wait(live, broker)["rc"] == 0
        live_subscribed = threading.Event()
        live.on_subscribe = lambda *a: live_subscribed.set()
        live.subscribe(TOPIC, 1)
        assert live_subscribed.wait(10)
        # 2. QoS 1 publisher, killed mid-stream
        # paho's callback thread holds paho's lock while it runs on_publish: record the
        # acknowledged message ids only, and map them to sequence numbers afterwards
        # (1,000 ids never wrap past 65,535).
        acked_mids: set[int] = set()
        mid_to_seq: dict[int, int] = {}
        pub = client(broker, "kill9-publisher", clean=True)
        pub.max_inflight_messages_set(50)
        pub.max_queued_messages_set(0)
        pub.on_publish = lambda cl, ud, mid, rc, props: acked_mids.add(mid)
        assert connect_and_wait(pub, broker)["rc"] == 0
        retained = pub.publish("kill9/retained", b"kept", 1, retain=True)
        wait(lambda: retained.mid in acked_mids, 10, "PUBACK of the retained message")
        for seq in range(TOTAL):
            mid_to_seq[pub.publish(TOPIC, f"{seq}".encode(), 1).mid] = seq
        wait(lambda: len(acked_mids) >= KILL_AFTER_ACKS, 60, f"{KILL_AFTER_ACKS} PUBACKs")
        broker.kill()
        pub.loop_stop()
        live.loop_stop()
        acked_before_kill = {mid_to_seq[mid] for mid in set(acked_mids) if mid in mid_to_seq}
        # 3. restart; the subscribers resume their sessions
        broker.start()
        live = client(broker, LIVE_SUBSCRIBER, clean=False)
        live.on_message = lambda cl, ud, m: live_got.append((int(m.payload), bool(m.dup)))
        connect_and_wait(live, broker)
        received: list[int] = []
        sub = client(broker, SUBSCRIBER, clean=False)
        sub.on_message = lambda cl, ud, m: received.append(int(m.payload))
        state = connect_and_wait(sub, broker)
        last = -1
        while True:  # until nothing new arrives for 2 s
            time.sleep(2)
            if len(received) == last:
                break
            last = len(received)
        sub.disconnect()
        sub.loop_stop()
        live.disconnect()
        live.loop_stop()
        copies: dict[int, list[bool]] = {}
        for seq, dup in live_got:
            copies.setdefault(seq, []).append(dup)
        # the retained message PUBACKed before the kill is there for a new subscriber
        retained_seen: list[bytes] = []
        late = client(broker, "kill9-late", clean=True)
        late.on_message = lambda cl, ud, m: retained_seen.append(m.payload)
        connect_and_wait(late, broker)
        late.subscribe("kill9/retained", 1)
        with contextlib.suppress(AssertionError):
            wait(lambda: bool(retained_seen), 5, "retained message")
        late.disconnect()
        late.loop_stop()
        lost = acked_before_kill - set(received)
        return {
            "acked": len(acked_before_kill),
            "received": len(set(received)),
            "duplicates": len(received) - len(set(received)),
            "lost": len(lost),
            "session_present": bool(state.get("present")),
            "retained_kept": retained_seen == [b"kept"],
            "live_lost": len(acked_before_kill - set(copies)),
            "live_duplicates": sum(len(c) - 1 for c in copies.values()),
            # a second copy must carry DUP (QoS 1 allows duplicates, flagged)
            "live_unflagged_duplicates": sum(1 for c in copies.values() for d in c[1:] if not d),
        }
    finally:
        broker.kill()


@pytest.mark.timeout(180)
def test_mqtt_kill9_loses_no_pubacked_message(tmp_path: Path) -> None:
    result = run_scenario("baedal", tmp_path)
    print(f"baedal kill -9: {result}")
    assert result["acked"] >= KILL_AFTER_ACKS
    assert result["session_present"], "the persistent session did not survive kill -9"
    assert result["lost"] == 0, result
    assert result["retained_kept"], result
    assert result["live_lost"] == 0, result
    assert result["live_unflagged_duplicates"] == 0, result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--mosquitto", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        kind = "mosquitto" if args.mosquitto else "baedal"
        os.environ.setdefault("PYTHONPATH", str(Path(__file__).resolve().parents[2] / "src"))
        print(kind, run_scenario(kind, Path(tmp)))
