"""Shared helpers for the interop suites (client-library black-box tests).

Everything here works against any AMQP 0-9-1 broker reachable through the
``amqp_url`` fixture: RabbitMQ when ``BAEDAL_TEST_AMQP_URL`` is set, otherwise an
in-process Baedal.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator

import pika
import pika.exceptions

# The nine capability flags RabbitMQ advertises in connection.start.
RABBITMQ_CAPABILITIES = (
    "publisher_confirms",
    "exchange_exchange_bindings",
    "basic.nack",
    "consumer_cancel_notify",
    "connection.blocked",
    "consumer_priorities",
    "authentication_failure_close",
    "per_consumer_qos",
    "direct_reply_to",
)


def open_blocking(url: str) -> pika.BlockingConnection:
    params = pika.URLParameters(url)
    params.blocked_connection_timeout = 30
    params.socket_timeout = 10
    return pika.BlockingConnection(params)


def _socket_of(conn: pika.BlockingConnection) -> socket.socket | None:
    transport = getattr(conn._impl, "_transport", None)
    return getattr(transport, "_sock", None)


@contextlib.contextmanager
def watchdog(conn: pika.BlockingConnection, timeout: float) -> Iterator[None]:
    """Shut the connection's socket down if the block takes longer than timeout.

    pika's blocking calls (close() in particular) wait for the broker forever; in
    fixture teardown a hung broker would hang the whole run, past pytest-timeout.
    """
    sock = _socket_of(conn)

    def kill() -> None:
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def close_quietly(conn: pika.BlockingConnection, timeout: float = 5.0) -> None:
    if conn.is_open:
        with watchdog(conn, timeout), contextlib.suppress(Exception):
            conn.close()


@contextlib.contextmanager
def blocking_connection(url: str) -> Iterator[pika.BlockingConnection]:
    conn = open_blocking(url)
    try:
        yield conn
    finally:
        close_quietly(conn)


def pump_until(
    conn: pika.BlockingConnection, predicate: Callable[[], object], timeout: float = 5.0
) -> object:
    """Process I/O on a pika BlockingConnection until predicate() is truthy."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        conn.process_data_events(time_limit=0.02)


class Resources:
    """Records queues/exchanges a test creates and deletes them afterwards."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.queues: list[str] = []
        self.exchanges: list[str] = []

    def queue(self, name: str) -> str:
        self.queues.append(name)
        return name

    def exchange(self, name: str) -> str:
        self.exchanges.append(name)
        return name

    def cleanup(self) -> None:
        if not self.queues and not self.exchanges:
            return
        try:
            conn = open_blocking(self.url)
        except Exception:
            return
        try:
            with watchdog(conn, 10.0):
                self._delete_all(conn)
        except Exception:
            pass
        finally:
            close_quietly(conn)

    def _delete_all(self, conn: pika.BlockingConnection) -> None:
        ch = conn.channel()
        for kind, names in (("q", self.queues), ("x", self.exchanges)):
            for name in names:
                try:
                    if kind == "q":
                        ch.queue_delete(name)
                    else:
                        ch.exchange_delete(name)
                except pika.exceptions.ChannelClosed:
                    ch = conn.channel()


def queue_exists(url: str, name: str) -> bool:
    """Passive declare on a throw-away channel; False on 404."""
    with blocking_connection(url) as conn:
        ch = conn.channel()
        try:
            ch.queue_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            raise
        return True


def exchange_exists(url: str, name: str) -> bool:
    with blocking_connection(url) as conn:
        ch = conn.channel()
        try:
            ch.exchange_declare(name, passive=True)
        except pika.exceptions.ChannelClosedByBroker as e:
            if e.reply_code == 404:
                return False
            raise
        return True


def message_count(url: str, name: str) -> int:
    with blocking_connection(url) as conn:
        return conn.channel().queue_declare(name, passive=True).method.message_count
