"""Shared pieces of the STOMP suites (tests/interop/test_stomp_*.py).

The suites run against the in-process Baedal of the session (its ephemeral STOMP port),
or, with ``BAEDAL_TEST_STOMP_URL=host:port``, against another STOMP broker such as
RabbitMQ's STOMP plugin (its AMQP side then at ``BAEDAL_TEST_STOMP_AMQP_URL``, default
``amqp://guest:guest@127.0.0.1:5682/``).  Tests of behaviour where Baedal deliberately
differs from RabbitMQ are marked ``baedal_only`` and skipped there, with the reason.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import stomp

from baedal.protocols.stomp.codec import (
    SERVER_COMMANDS,
    Frame,
    FrameReader,
    StompError,
    encode_frame,
)

EXTERNAL_STOMP = os.environ.get("BAEDAL_TEST_STOMP_URL")
EXTERNAL_AMQP = os.environ.get("BAEDAL_TEST_STOMP_AMQP_URL", "amqp://guest:guest@127.0.0.1:5682/")


def baedal_only(reason: str) -> pytest.MarkDecorator:
    """Skip against another broker: ``reason`` says how that broker differs."""
    return pytest.mark.skipif(EXTERNAL_STOMP is not None, reason=f"Baedal-specific: {reason}")


@dataclass
class StompEndpoint:
    host: str
    port: int
    amqp_url: str
    broker: Any  # the in-process Baedal, or None for an external broker


@pytest.fixture
def stomp_endpoint(session_broker: Any) -> Iterator[StompEndpoint]:
    if EXTERNAL_STOMP:
        host, _, port = EXTERNAL_STOMP.rpartition(":")
        yield StompEndpoint(host or "127.0.0.1", int(port), EXTERNAL_AMQP, None)
        return
    if session_broker is None:
        pytest.skip("BAEDAL_TEST_AMQP_URL is set without BAEDAL_TEST_STOMP_URL")
    assert session_broker.stomp_port, "the embedded broker should listen for STOMP"
    yield StompEndpoint("127.0.0.1", session_broker.stomp_port, session_broker.amqp_url, session_broker)


class Collector(stomp.ConnectionListener):
    """Records what a stomp.py connection receives."""

    def __init__(self) -> None:
        self.messages: list[Any] = []
        self.errors: list[Any] = []
        self.receipts: list[str] = []
        self.disconnected = threading.Event()
        self.lock = threading.Lock()

    def on_message(self, frame: Any) -> None:
        with self.lock:
            self.messages.append(frame)

    def on_error(self, frame: Any) -> None:
        with self.lock:
            self.errors.append(frame)

    def on_receipt(self, frame: Any) -> None:
        with self.lock:
            self.receipts.append(frame.headers.get("receipt-id"))

    def on_disconnected(self) -> None:
        self.disconnected.set()

    def wait_messages(self, count: int, timeout: float = 5.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.messages) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"got {len(self.messages)} of {count} messages")
            time.sleep(0.01)
        return list(self.messages)

    def wait_receipt(self, receipt: str, timeout: float = 5.0) -> None:
        deadline = time.monotonic() + timeout
        while receipt not in self.receipts:
            if time.monotonic() > deadline:
                raise AssertionError(f"no RECEIPT {receipt}; errors: {[e.body for e in self.errors]}")
            time.sleep(0.01)


_CONNECTIONS = {"1.0": stomp.Connection10, "1.1": stomp.Connection11, "1.2": stomp.Connection12}


def connect(
    endpoint: StompEndpoint,
    version: str = "1.2",
    heartbeats: tuple[int, int] = (0, 0),
    **headers: Any,
) -> tuple[Any, Collector]:
    """A connected stomp.py client of ``version`` and its listener (vhost "/")."""
    kind = _CONNECTIONS[version]
    options: dict[str, Any] = {}
    if version != "1.0":  # stomp.py's 1.0 connection sends no host header
        options["heartbeats"] = heartbeats
        options["vhost"] = "/"
    connection = kind([(endpoint.host, endpoint.port)], **options)
    collector = Collector()
    connection.set_listener("collector", collector)
    connection.connect("guest", "guest", wait=True, headers=headers or None)
    return connection, collector


class RawClient:
    """A raw socket speaking STOMP bytes, reading server frames with Baedal's codec."""

    def __init__(self, endpoint: StompEndpoint, version: str = "1.2") -> None:
        self.sock = socket.create_connection((endpoint.host, endpoint.port), timeout=5)
        self.reader = FrameReader(commands=SERVER_COMMANDS, version=version, max_body=1 << 30)
        self.frames: list[Frame] = []
        self.raw_received = bytearray()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, command: str, headers: list[tuple[str, str]], body: bytes = b"", version: str = "1.2") -> None:
        self.send(encode_frame(command, headers, body, version))

    def connect(self, version: str = "1.2", heart_beat: str = "0,0") -> Frame:
        self.reader.version = version
        self.send_frame(
            "CONNECT",
            [("accept-version", version), ("host", "/"), ("login", "guest"), ("passcode", "guest"), ("heart-beat", heart_beat)],
        )
        frame = self.next_frame()
        assert frame.command == "CONNECTED", frame
        return frame

    def next_frame(self, timeout: float = 5.0) -> Frame:
        deadline = time.monotonic() + timeout
        while not self.frames:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError("no frame in time")
            self.sock.settimeout(remaining)
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("closed by the server")
            self.raw_received += data
            self.frames.extend(self.reader.feed(data))
        return self.frames.pop(0)

    def wait_closed(self, timeout: float = 5.0) -> bytes:
        """Read until the server closes; returns what arrived meanwhile."""
        deadline = time.monotonic() + timeout
        rest = b""
        while time.monotonic() < deadline:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except ConnectionResetError:
                return rest
            if not data:
                return rest
            rest += data
            try:
                self.frames.extend(self.reader.feed(data))
            except StompError:
                pass
        raise AssertionError("the server did not close the connection")

    def close(self) -> None:
        self.sock.close()


def disconnect(connection: Any) -> None:
    try:
        if connection.is_connected():
            connection.disconnect()
    except Exception:  # teardown: the server may already have closed it
        pass
