"""kill -9 with STOMP: every persistent SEND answered by a RECEIPT survives, and
scheduled SENDs pending at the crash fire after the restart.

A ``baedal serve`` subprocess (STOMP on a free port).  Each round:

1. a stomp.py producer sends ``TOTAL`` persistent messages (``persistent:true``), each
   with a ``receipt`` header, to a durable ``/queue/`` of the round, from a thread, at
   most ``WINDOW`` unreceipted at a time, while the test counts RECEIPTs (Baedal answers a persistent SEND's receipt only once
   the message is stored, like a publisher confirm);
2. before that, the round's ``SCHEDULED`` SENDs carrying ``AMQ_SCHEDULED_DELAY`` (each
   receipted) were sent, due a few seconds later, so they are pending at the crash;
3. the broker is killed with SIGKILL as soon as ``KILL_AFTER_RECEIPTS`` receipts arrived
   (more SENDs are in flight, unreceipted), then restarted on the same data directory;
4. a stomp.py consumer drains the round's queue: every receipted message must be there
   (an unreceipted one may or may not be: the client would resend it; a message seen
   twice is counted); every scheduled message fires exactly once after the restart.

The counts of each round are printed (``pytest -s``).  One queue per round, so what a
round consumed (acks are not synchronously durable, in RabbitMQ either) does not blur
the next round's count.  RabbitMQ's STOMP plugin has no ``AMQ_SCHEDULED_DELAY``, so this
runs against Baedal only.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import stomp

from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(150)

ROUNDS = 3
TOTAL = 1000
KILL_AFTER_RECEIPTS = 400
WINDOW = 50
SCHEDULED = 50
SCHEDULE_DELAY_MS = 4000  # fires after the restart (kill + start take well under this)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Broker:
    """``baedal serve`` in a subprocess, STOMP on a free port, killed with SIGKILL."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> None:
        self.port = _free_port()
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
        with open(self.data_dir / "broker.log", "ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "baedal", "serve", "--port", str(_free_port()),
                 "--data-dir", str(self.data_dir / "data"), "--http-port", "off",
                 "--kafka-port", "off", "--mqtt-port", "off", "--stomp-port", str(self.port),
                 "--log-level", "warning"],
                stdout=log, stderr=subprocess.STDOUT, env=env,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"baedal exited during start-up (see {self.data_dir / 'broker.log'})")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError("baedal not listening for STOMP after 30s")
            time.sleep(0.05)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


class _Listener(stomp.ConnectionListener):
    def __init__(self) -> None:
        self.receipts: set[str] = set()
        self.bodies: list[str] = []
        self.errors: list[str] = []

    def on_receipt(self, frame: Any) -> None:
        self.receipts.add(frame.headers["receipt-id"])

    def on_message(self, frame: Any) -> None:
        self.bodies.append(frame.body if isinstance(frame.body, str) else frame.body.decode())

    def on_error(self, frame: Any) -> None:
        self.errors.append(str(frame.body))


def _connect(broker: _Broker) -> tuple[Any, _Listener]:
    connection = stomp.Connection12([("127.0.0.1", broker.port)], vhost="/", reconnect_attempts_max=1)
    listener = _Listener()
    connection.set_listener("l", listener)
    connection.connect("guest", "guest", wait=True)
    return connection, listener


def _close(connection: Any) -> None:
    with contextlib.suppress(Exception):
        connection.disconnect()


def _drain(broker: _Broker, destination: str, expect: set[str], timeout: float) -> list[str]:
    """Everything the queue delivers: until ``expect`` is covered and 1 s passes quietly
    (or ``timeout``: then the assertions below say what is missing)."""
    connection, listener = _connect(broker)
    try:
        connection.subscribe(destination, id="drain", ack="auto")
        with contextlib.suppress(AssertionError):
            wait_until(lambda: expect <= set(listener.bodies), timeout, f"{destination} delivered")
        seen = -1
        while len(listener.bodies) != seen:
            seen = len(listener.bodies)
            time.sleep(1.0)
        assert not listener.errors, listener.errors
        return list(listener.bodies)
    finally:
        _close(connection)


def _round(broker: _Broker, number: int) -> dict[str, int]:
    queue = f"/queue/stomp.kill9.r{number}"
    scheduled_queue = f"/queue/stomp.kill9.scheduled.r{number}"
    broker.start()
    producer, listener = _connect(broker)
    # The scheduled ones first, each receipted (stored in the schedule log), due after the restart.
    for i in range(SCHEDULED):
        producer.send(
            scheduled_queue, f"s{number}-{i}", receipt=f"s-{i}",
            headers={"persistent": "true", "AMQ_SCHEDULED_DELAY": str(SCHEDULE_DELAY_MS + 10 * i)},
        )
    wait_until(lambda: len(listener.receipts) == SCHEDULED, 20, "the scheduled SENDs' receipts")
    scheduled_at = time.monotonic()
    listener.receipts.clear()
    sent: list[int] = []

    def produce() -> None:
        # stomp.py's send only writes to the socket: sends pipeline, receipts come back
        # on its receiver thread.  At most WINDOW SENDs are unreceipted (like MQTT's
        # in-flight window): without it every SEND is written, and stored, long before
        # stomp.py's receiver thread has read the receipts, and the kill would land after
        # the last one.  The kill ends this loop with a socket error.
        with contextlib.suppress(Exception):
            for i in range(TOTAL):
                while i - len(listener.receipts) >= WINDOW and broker.process is not None:
                    time.sleep(0.001)
                producer.send(queue, f"m{number}-{i}", receipt=f"m-{i}", headers={"persistent": "true"})
                sent.append(i)

    thread = threading.Thread(target=produce, daemon=True)
    thread.start()
    try:
        wait_until(lambda: len(listener.receipts) >= KILL_AFTER_RECEIPTS, 60, f"{KILL_AFTER_RECEIPTS} receipts")
    finally:
        broker.kill()
    receipted = {f"m{number}-{r.removeprefix('m-')}" for r in set(listener.receipts)}
    thread.join(10)
    _close(producer)
    killed_after = time.monotonic() - scheduled_at
    assert killed_after < SCHEDULE_DELAY_MS / 1000, "too slow: scheduled ones fell due before the kill"

    broker.start()
    got = _drain(broker, queue, receipted, 20)
    scheduled_expected = {f"s{number}-{i}" for i in range(SCHEDULED)}
    fired = _drain(broker, scheduled_queue, scheduled_expected, 20)
    broker.kill()
    return {
        "round": number,
        "sent": len(sent),
        "receipted": len(receipted),
        "received": len(set(got)),
        "lost": len(receipted - set(got)),
        "unreceipted_delivered": len(set(got) - receipted),
        "duplicates": len(got) - len(set(got)),
        "duplicates_of_receipted": sum(1 for b in set(got) if b in receipted and got.count(b) > 1),
        "scheduled": SCHEDULED,
        "killed_s_after_scheduling": round(killed_after, 2),
        "scheduled_fired": len(set(fired) & scheduled_expected),
        "scheduled_duplicates": len(fired) - len(set(fired)),
    }


def test_stomp_kill9_keeps_receipted_and_scheduled_sends(tmp_path: Path) -> None:
    broker = _Broker(tmp_path)
    results = []
    try:
        for number in range(ROUNDS):
            results.append(_round(broker, number))
            print(f"STOMP kill -9 round: {results[-1]}")
    finally:
        broker.kill()
    for result in results:
        assert result["receipted"] >= KILL_AFTER_RECEIPTS
        assert result["lost"] == 0, result
        assert result["scheduled_fired"] == SCHEDULED, result
        assert result["scheduled_duplicates"] == 0, result
        # the kill landed mid-stream: SENDs were still to be written
        assert result["sent"] < TOTAL, result
