"""Shared pieces for the baedal.client tests: a broker reachable over all three
transports, and a broker subprocess that can be killed and restarted."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from baedal import Broker

TRANSPORTS = ("inproc", "ipc", "tcp")


class Endpoints:
    def __init__(self, broker: Broker, name: str, ipc_path: str) -> None:
        self.broker = broker
        self.name = name
        self.ipc_path = ipc_path

    def url(self, transport: str) -> str:
        if transport == "inproc":
            return f"inproc://{self.name}"
        if transport == "ipc":
            return f"ipc://{self.ipc_path}"
        return f"tcp://127.0.0.1:{self.broker.port}"


def running_broker(data_dir: Path, name: str) -> Iterator[Endpoints]:
    """A broker in its own thread with inproc, ipc (a socket file) and tcp."""
    socket_dir = tempfile.mkdtemp(prefix="bdc-", dir="/tmp")
    ipc_path = os.path.join(socket_dir, "amqp.sock")
    broker = Broker(port=0, data_dir=data_dir, inproc_name=name, unix_socket=ipc_path, http_port=0)
    broker.start_in_thread()
    try:
        yield Endpoints(broker, name, ipc_path)
    finally:
        broker.stop_thread()
        try:
            os.rmdir(socket_dir)
        except OSError:
            pass


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class BrokerProcess:
    """``baedal serve`` in a subprocess on a fixed port and socket (restartable)."""

    def __init__(self, data_dir: Path, socket_path: str) -> None:
        self.data_dir = data_dir
        self.socket_path = socket_path
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
        self.process = subprocess.Popen(
            [
                sys.executable, "-m", "baedal", "serve",
                "--port", str(self.port),
                "--data-dir", str(self.data_dir),
                "--unix-socket", self.socket_path,
                "--http-port", "off",
                "--kafka-port", "off",
                "--log-level", "warning",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                output = self.process.stdout.read().decode() if self.process.stdout else ""
                raise RuntimeError(f"broker exited: {output}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.05)
        raise TimeoutError("broker did not start")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        process, self.process = self.process, None
        if process is None:
            return
        process.send_signal(sig)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(10)
        if process.stdout:
            process.stdout.close()
