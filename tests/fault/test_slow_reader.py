"""A client that stops reading its socket must not make the broker buffer without bound.

Each test runs Baedal as a subprocess (so its RSS is the broker's alone) and drives it
with a raw-socket client (tests/integration/rawamqp.py) that keeps asking for output --
mandatory unroutable publishes (``basic.return``), a consumer on a deep queue
(``basic.deliver``), a ``basic.get`` loop (``get-ok``) -- and never reads.  The broker
must hold its memory (RSS growth <= 64 MB), show the connection in state ``flow`` while
its output is over the bound, keep serving other connections, and, once the client
reads again, deliver everything it owed in order and return to ``running``.

Better than RabbitMQ: RabbitMQ 3.10.8 measured here keeps reading such a publisher and
buffers its returns until the memory alarm (gigabytes), so these are not run against
it (``BAEDAL_TEST_AMQP_URL`` is ignored).  ``BAEDAL_SLOW_READER_SECONDS`` (default 20)
sets how long each client keeps sending.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import pika
import psutil
import pytest
import requests

from baedal_testing import wait_until

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "integration"))
import rawamqp  # noqa: E402

DURATION = float(os.environ.get("BAEDAL_SLOW_READER_SECONDS", "20"))
BODY_SIZE = 100 * 1024
RSS_GROWTH_LIMIT = 64 * 1024 * 1024
SMALL_BOUND = 1024 * 1024


@dataclass
class BrokerProcess:
    process: subprocess.Popen[str]
    port: int
    http_url: str

    @property
    def rss(self) -> int:
        return psutil.Process(self.process.pid).memory_info().rss

    def connections(self) -> list[dict]:
        response = requests.get(f"{self.http_url}/api/connections", auth=("guest", "guest"), timeout=10)
        response.raise_for_status()
        return response.json()

    def connection_named(self, name: str) -> dict:
        response = requests.get(
            f"{self.http_url}/api/connections/{quote(name, safe='')}", auth=("guest", "guest"), timeout=10
        )
        response.raise_for_status()
        return response.json()

    def connection_of(self, client: rawamqp.RawAMQP) -> dict | None:
        local = client.sock.getsockname()
        for info in self.connections():
            if info["peer_port"] == local[1]:
                return info
        return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    yield from _run_broker(tmp_path, {})


@pytest.fixture
def small_bound_broker(tmp_path: Path) -> Iterator[BrokerProcess]:
    yield from _run_broker(tmp_path, {"BAEDAL_MAX_CONNECTION_OUTPUT": str(SMALL_BOUND)})


def _run_broker(tmp_path: Path, env: dict[str, str]) -> Iterator[BrokerProcess]:
    port, http_port = _free_port(), _free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "baedal",
            "serve",
            "--port",
            str(port),
            "--http-port",
            str(http_port),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=(tmp_path / "stderr.log").open("w"),
        text=True,
        env={**os.environ, "BAEDAL_LOG_LEVEL": "warning", **env},
    )
    try:
        assert process.stdout is not None
        for _ in range(10):
            line = process.stdout.readline()
            if line.startswith("data directory") or not line:
                break
        yield BrokerProcess(process, port, f"http://127.0.0.1:{http_port}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- a raw client that can stop reading ----------------------------------------------


def _publish(channel: int, routing_key: str, body: bytes, mandatory: bool) -> bytes:
    return (
        rawamqp.basic_publish(channel, "", routing_key, mandatory=mandatory)
        + rawamqp.header_frame(channel, len(body))
        + rawamqp.body_frame(channel, body)
    )


def _body(sequence: int) -> bytes:
    return struct.pack("!Q", sequence) + b"x" * (BODY_SIZE - 8)


def _sequence(body: bytes) -> int:
    return struct.unpack("!Q", body[:8])[0]


def _read_body(client: rawamqp.RawAMQP) -> bytes:
    header = client.read_frame()
    assert header.type == rawamqp.FRAME_HEADER
    size = struct.unpack("!Q", header.payload[4:12])[0]
    body = b""
    while len(body) < size:
        part = client.read_frame()
        assert part.type == rawamqp.FRAME_BODY
        body += part.payload
    return body


def _stalled_client(broker: BrokerProcess, heartbeat: int = 0) -> rawamqp.RawAMQP:
    client = rawamqp.connect("127.0.0.1", broker.port, heartbeat=heartbeat)
    client.open_channel(1)
    # The sender blocks in sendall for as long as the broker does not read it; the
    # reader blocks until the broker sends.  Neither may wait forever.
    client.sock.settimeout(DURATION + 120)
    return client


class Sender(threading.Thread):
    """Sends ``make(i)`` for i = 0, 1, ... for ``DURATION`` seconds and never reads.
    Once the broker stops reading, it sits in ``sendall`` until the broker reads again."""

    def __init__(self, client: rawamqp.RawAMQP, make: Callable[[int], bytes]) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.make = make
        self.sent = 0
        self.error: BaseException | None = None
        self.deadline = time.monotonic() + DURATION

    def run(self) -> None:
        try:
            while time.monotonic() < self.deadline:
                self.client.send(self.make(self.sent))
                self.sent += 1
        except BaseException as exc:  # reported by the test
            self.error = exc

    def finished(self) -> bool:
        """Done sending (joined), so ``sent`` is final."""
        self.join(timeout=0)
        return not self.is_alive()


def _peak_rss_growth_until(deadline: float, broker: BrokerProcess, baseline: int) -> int:
    peak = 0
    while time.monotonic() < deadline:
        peak = max(peak, broker.rss - baseline)
        time.sleep(0.2)
    return peak


def _read_replies(client: rawamqp.RawAMQP, sender: Sender, handle: Callable[[rawamqp.Frame], None]) -> int:
    """Read the broker's answers (method frames, content read by ``handle``) until the
    sender is done and every request has been answered; returns the count."""
    answered = 0
    while not (sender.finished() and answered >= sender.sent):
        if not client.buf and not select.select([client.sock], [], [], 0.5)[0]:
            continue  # nothing yet: look at the sender again
        frame = client.read_method()
        handle(frame)
        answered += 1
    assert sender.error is None, sender.error
    return answered


def _other_connection_works(broker: BrokerProcess, name: str) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.port}/"))
    try:
        channel = connection.channel()
        channel.queue_declare(name)
        channel.basic_publish("", name, b"still served")
        got = wait_until(lambda: channel.basic_get(name, auto_ack=True)[2], what="the other connection's get")
        assert got == b"still served"
    finally:
        connection.close()


def _preload(broker: BrokerProcess, queue: str, count: int) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{broker.port}/"))
    try:
        channel = connection.channel()
        channel.queue_declare(queue)
        channel.confirm_delivery()
        for i in range(count):
            channel.basic_publish("", queue, _body(i))
    finally:
        connection.close()


def _state(broker: BrokerProcess, client: rawamqp.RawAMQP) -> str | None:
    info = broker.connection_of(client)
    return None if info is None else info["state"]


# --- the tests (better than RabbitMQ: not run against it, see the module docstring) ---


def test_publisher_of_unroutable_mandatory_messages_that_never_reads_is_paused_not_buffered(
    broker: BrokerProcess,
) -> None:
    client = _stalled_client(broker)
    baseline = broker.rss
    sender = Sender(client, lambda i: _publish(1, "no-such-queue.slow-reader", _body(i), mandatory=True))
    sender.start()
    try:
        wait_until(lambda: _state(broker, client) == "flow", timeout=DURATION, what="the stalled publisher in state flow")
        info = broker.connection_of(client)
        assert info is not None and info["send_pend"] > 0
        _other_connection_works(broker, "slow-reader.other")
        assert _state(broker, client) == "flow"
        peak = _peak_rss_growth_until(sender.deadline, broker, baseline)
        assert peak <= RSS_GROWTH_LIMIT, f"broker RSS grew by {peak / 2**20:.1f} MiB"
        assert _state(broker, client) == "flow"

        # Now read: every publish comes back, in order, and the connection runs again.
        returned: list[int] = []

        def on_return(frame: rawamqp.Frame) -> None:
            assert frame.method == (60, 50), frame.method
            returned.append(_sequence(_read_body(client)))

        _read_replies(client, sender, on_return)
        assert sender.sent > 0 and returned == list(range(sender.sent))
        wait_until(lambda: _state(broker, client) == "running", what="the publisher back to running")
    finally:
        client.close()


def test_basic_get_loop_that_never_reads_is_paused_not_buffered(broker: BrokerProcess) -> None:
    queue = "slow-reader.get"
    depth = 1200  # 120 MB: more than the RSS limit, had every get been answered at once
    _preload(broker, queue, depth)
    client = _stalled_client(broker)
    baseline = broker.rss
    get = rawamqp.method_frame(1, 60, 70, struct.pack("!H", 0) + rawamqp.shortstr(queue) + b"\x01")
    sender = Sender(client, lambda i: get)
    sender.start()
    try:
        wait_until(lambda: _state(broker, client) == "flow", timeout=DURATION, what="the stalled get loop in state flow")
        _other_connection_works(broker, "slow-reader.get-other")
        peak = _peak_rss_growth_until(sender.deadline, broker, baseline)
        assert peak <= RSS_GROWTH_LIMIT, f"broker RSS grew by {peak / 2**20:.1f} MiB"

        got: list[int] = []

        def on_reply(frame: rawamqp.Frame) -> None:
            if frame.method == (60, 72):  # get-empty once the queue ran dry
                return
            assert frame.method == (60, 71), frame.method
            got.append(_sequence(_read_body(client)))

        _read_replies(client, sender, on_reply)
        assert got == list(range(min(depth, sender.sent)))
        wait_until(lambda: _state(broker, client) == "running", what="the get loop back to running")
    finally:
        client.close()


def test_consumer_that_never_reads_a_deep_queue_holds_back_deliveries(broker: BrokerProcess) -> None:
    queue = "slow-reader.consume"
    depth = 1200
    _preload(broker, queue, depth)
    client = _stalled_client(broker)
    baseline = broker.rss
    no_ack = b"\x02"
    client.send(
        rawamqp.method_frame(
            1, 60, 20, struct.pack("!H", 0) + rawamqp.shortstr(queue) + rawamqp.shortstr("slow") + no_ack + rawamqp.table({})
        )
    )
    try:
        peak = _peak_rss_growth_until(time.monotonic() + DURATION, broker, baseline)
        assert peak <= RSS_GROWTH_LIMIT, f"broker RSS grew by {peak / 2**20:.1f} MiB"
        response = requests.get(f"{broker.http_url}/api/queues/%2F/{quote(queue)}", auth=("guest", "guest"), timeout=10)
        assert response.json()["messages_ready"] > 0, "every message left the queue for a client that reads nothing"
        _other_connection_works(broker, "slow-reader.consume-other")
        client.read_method((60, 21))  # consume-ok
        delivered = []
        for _ in range(depth):
            client.read_method((60, 60))
            delivered.append(_sequence(_read_body(client)))
        assert delivered == list(range(depth))
    finally:
        client.close()


def test_paused_connection_is_not_dropped_for_missed_heartbeats_and_can_be_closed(broker: BrokerProcess) -> None:
    """While the broker does not read a connection, the peer's silence is the broker's
    doing: no heartbeat timeout (RabbitMQ pauses its heartbeat monitor for a blocked
    reader too).  An operator's close still ends it although the peer reads nothing."""
    heartbeat = 1
    client = _stalled_client(broker, heartbeat=heartbeat)
    sender = Sender(client, lambda i: _publish(1, "no-such-queue.heartbeat", _body(i), mandatory=True))
    sender.start()
    try:
        wait_until(lambda: _state(broker, client) == "flow", timeout=DURATION, what="the stalled publisher in state flow")
        info = broker.connection_of(client)
        assert info is not None and info["timeout"] == heartbeat
        time.sleep(4 * heartbeat)  # two missed-heartbeat windows with nothing received
        assert _state(broker, client) == "flow"
        response = requests.delete(
            f"{broker.http_url}/api/connections/{quote(info['name'], safe='')}", auth=("guest", "guest"), timeout=10
        )
        assert response.status_code == 204
        # close-ok never comes (the client reads nothing): the broker drops it after its
        # close timeout instead of holding the unsent output for ever.
        wait_until(lambda: broker.connection_of(client) is None, timeout=15, what="the connection gone")
    finally:
        client.close()


def test_output_bound_is_configurable_and_holds_to_one_message(small_bound_broker: BrokerProcess) -> None:
    """With ``max_connection_output`` = 1 MiB (environment), what a stalled get loop is
    owed in the broker never passes the bound by more than the get-ok that crossed it."""
    broker = small_bound_broker
    queue = "slow-reader.small-bound"
    _preload(broker, queue, 200)
    client = _stalled_client(broker)
    get = rawamqp.method_frame(1, 60, 70, struct.pack("!H", 0) + rawamqp.shortstr(queue) + b"\x01")
    sender = Sender(client, lambda i: get)
    sender.deadline = time.monotonic() + 3
    sender.start()
    try:
        wait_until(lambda: _state(broker, client) == "flow", timeout=10, what="state flow")
        pending = []
        while time.monotonic() < sender.deadline:
            info = broker.connection_of(client)
            assert info is not None
            pending.append(info["send_pend"])
            time.sleep(0.05)
        assert max(pending) > 0
        assert max(pending) <= SMALL_BOUND + BODY_SIZE + 1024, max(pending)
        got: list[int] = []

        def on_reply(frame: rawamqp.Frame) -> None:
            if frame.method == (60, 71):
                got.append(_sequence(_read_body(client)))

        _read_replies(client, sender, on_reply)
        assert got == list(range(min(200, sender.sent)))
    finally:
        client.close()
