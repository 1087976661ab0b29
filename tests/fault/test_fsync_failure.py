"""A failed fsync ends the broker process with exit status 74 (EX_IOERR) after its
listeners close, no confirmed message is lost, and the next start reports what recovery
found.

The fsync failure is injected with ``BAEDAL_FAULT_INJECT=fsync-after:N`` (app.py: the
first N fsyncs succeed, every later one fails with EIO).  A real failing disk is not
available here: the container has no device-mapper (no ``dm-error`` target), and a FUSE
filesystem that fails fsync would need privileges CI does not have.  Everything else is
real: a ``baedal serve`` subprocess, pika publishing persistent messages with confirms.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pika
import pika.exceptions
import pytest
import requests

from baedal_testing import wait_until

SRC = Path(__file__).resolve().parents[2] / "src"
QUEUE = "fsync-failure"
HEALTHY_FSYNCS = 40


class BrokerProcess:
    """``python -m baedal serve`` on a free port, its stdout read line by line."""

    def __init__(
        self,
        data_dir: Path,
        log_path: Path,
        env: dict[str, str] | None = None,
        http_port: str = "off",
    ) -> None:
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(SRC), environment.get("PYTHONPATH", "")) if p
        )
        environment.update(env or {})
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "baedal", "serve", "--port", "0", "--http-port", http_port,
             "--data-dir", str(data_dir)],
            env=environment, stdout=subprocess.PIPE, stderr=self._log, text=True,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        match = wait_until(
            lambda: self._check_alive() and self._find(r"listening on amqp://[^:]+:(\d+)"),
            timeout=30, what="the broker prints its AMQP port",
        )
        self.port = int(match.group(1))  # type: ignore[union-attr]
        wait_until(lambda: self._find(r"\(ready in"), timeout=30, what="the broker is ready")

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def _check_alive(self) -> bool:
        assert self.process.poll() is None, f"broker exited: {self.log()}"
        return True

    def _find(self, pattern: str) -> re.Match[str] | None:
        for line in self.lines:
            match = re.search(pattern, line)
            if match:
                return match
        return None

    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text() + "".join(self.lines)

    def wait(self, timeout: float = 30) -> int:
        try:
            return self.process.wait(timeout)
        finally:
            self._reader.join(5)
            self._log.close()

    def terminate(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.wait()

    def connect(self) -> pika.BlockingConnection:
        return pika.BlockingConnection(
            pika.URLParameters(f"amqp://guest:guest@127.0.0.1:{self.port}/?heartbeat=0")
        )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_failed_fsync_exits_non_zero_after_closing_listeners_and_loses_no_confirmed_message(
    tmp_path: Path,
) -> None:
    data_dir = tmp_path / "data"
    broker = BrokerProcess(
        data_dir, tmp_path / "first.log", {"BAEDAL_FAULT_INJECT": f"fsync-after:{HEALTHY_FSYNCS}"}
    )
    confirmed: list[bytes] = []
    closed_by_broker: pika.exceptions.AMQPConnectionError | None = None
    try:
        connection = broker.connect()
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare(QUEUE, durable=True)
        persistent = pika.BasicProperties(delivery_mode=2)
        for number in range(10_000):
            body = f"message {number}".encode()
            try:
                channel.basic_publish("", QUEUE, body, persistent)
            except (pika.exceptions.AMQPConnectionError, pika.exceptions.AMQPChannelError) as exc:
                closed_by_broker = exc  # type: ignore[assignment]
                break
            confirmed.append(body)  # basic_publish returned: the broker confirmed it
        status = broker.wait(30)
    finally:
        if broker.process.poll() is None:
            broker.process.kill()
            broker.wait()
    log = broker.log()

    assert closed_by_broker is not None, "every publish was confirmed: the fault never fired"
    assert isinstance(closed_by_broker, pika.exceptions.ConnectionClosedByBroker), closed_by_broker
    assert closed_by_broker.reply_code == 320  # CONNECTION_FORCED, as a RabbitMQ shutdown
    assert status == 74, f"exit status {status}\n{log}"
    assert confirmed, "nothing was confirmed before the injected failure"
    # Listeners closed before the process exited, and nothing listens now.
    assert log.index("fsync failed") < log.index("listeners closed") < log.index("exiting with status 74 after"), log
    with pytest.raises(ConnectionRefusedError), socket.create_connection(("127.0.0.1", broker.port), 2):
        pass

    http_port = _free_port()
    restarted = BrokerProcess(data_dir, tmp_path / "second.log", http_port=str(http_port))
    try:
        overview = requests.get(
            f"http://127.0.0.1:{http_port}/api/overview", auth=("guest", "guest"), timeout=10
        ).json()
        recovery = overview["baedal_recovery"]
        assert recovery["queues"] == 1 and recovery["unclean_stores"] == 1, recovery
        assert recovery["messages"] >= len(confirmed), recovery
        report = wait_until(
            lambda: restarted._find(
                r"recovered (\d+) durable queue\(s\), (\d+) message\(s\); (\d+) store\(s\) after an unclean shutdown"
            ),
            what="the recovery summary on stdout",
        )
        assert int(report.group(1)) == 1
        assert int(report.group(2)) >= len(confirmed)
        assert int(report.group(3)) == 1, "a store closed after a failed fsync must count as unclean"
        assert "recovery: 1 durable queue(s)" in restarted.log()

        connection = restarted.connect()
        channel = connection.channel()
        bodies = []
        while True:
            method, _props, body = channel.basic_get(QUEUE, auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        connection.close()
    finally:
        status = restarted.terminate()
    assert status == 0, restarted.log()
    lost = [body for body in confirmed if body not in set(bodies)]
    assert not lost, f"{len(lost)} confirmed message(s) lost: {lost[:5]}"
    assert bodies[: len(confirmed)] == confirmed  # and in publish order
