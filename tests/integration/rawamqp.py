"""A tiny raw-socket AMQP 0-9-1 client for provoking protocol errors.

Only what the reply-code tests need: the handshake, sending arbitrary frames
(well-formed or not) and reading frames until the broker closes a channel or the
connection.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"


# ---------------------------------------------------------------- encoding


def shortstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!B", len(b)) + b


def longstr(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!I", len(b)) + b


def table(d: dict) -> bytes:
    out = b""
    for k, v in d.items():
        out += shortstr(k)
        if isinstance(v, bool):
            out += b"t" + struct.pack("!B", int(v))
        elif isinstance(v, int):
            out += b"I" + struct.pack("!i", v)
        elif isinstance(v, dict):
            out += b"F" + table(v)
        else:
            out += b"S" + longstr(v)
    return struct.pack("!I", len(out)) + out


def frame(ftype: int, channel: int, payload: bytes, end: int = FRAME_END) -> bytes:
    return struct.pack("!BHI", ftype, channel, len(payload)) + payload + bytes([end])


def method_frame(channel: int, class_id: int, method_id: int, args: bytes = b"") -> bytes:
    return frame(FRAME_METHOD, channel, struct.pack("!HH", class_id, method_id) + args)


def header_frame(channel: int, body_size: int, class_id: int = 60, flags: int = 0) -> bytes:
    return frame(FRAME_HEADER, channel, struct.pack("!HHQH", class_id, 0, body_size, flags))


def body_frame(channel: int, body: bytes) -> bytes:
    return frame(FRAME_BODY, channel, body)


# Frequently used methods.
def channel_open(channel: int) -> bytes:
    return method_frame(channel, 20, 10, shortstr(""))


def basic_publish(
    channel: int,
    exchange: str = "",
    routing_key: str = "",
    mandatory: bool = False,
    immediate: bool = False,
) -> bytes:
    bits = (1 if mandatory else 0) | (2 if immediate else 0)
    args = struct.pack("!H", 0) + shortstr(exchange) + shortstr(routing_key) + bytes([bits])
    return method_frame(channel, 60, 40, args)


def queue_declare(channel: int, name: str = "", *, exclusive: bool = True) -> bytes:
    bits = 0x04 if exclusive else 0  # passive=1, durable=2, exclusive=4, auto_delete=8, nowait=16
    args = struct.pack("!H", 0) + shortstr(name) + bytes([bits]) + table({})
    return method_frame(channel, 50, 10, args)


# ---------------------------------------------------------------- decoding


@dataclass
class Frame:
    type: int
    channel: int
    payload: bytes

    @property
    def method(self) -> tuple[int, int]:
        return struct.unpack("!HH", self.payload[:4])


@dataclass
class Close:
    """A connection.close (channel 0) or channel.close received from the broker."""

    channel: int
    reply_code: int
    reply_text: str
    class_id: int
    method_id: int


class ConnectionDropped(Exception):
    """The broker closed the TCP connection without (further) frames."""


class RawAMQP:
    def __init__(self, host: str, port: int, timeout: float = 5.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.frame_max = 0
        self.channel_max = 0
        self.unsolicited: list[Frame] = []  # frames outcome() read past (e.g. basic.cancel)

    # -- I/O
    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _read_exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            try:
                chunk = self.sock.recv(65536)
            except ConnectionResetError as e:
                raise ConnectionDropped(f"connection reset by broker: {e}") from e
            if not chunk:
                raise ConnectionDropped(f"connection closed by broker; pending {self.buf!r}")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def read_frame(self) -> Frame:
        head = self._read_exact(7)
        ftype, channel, size = struct.unpack("!BHI", head)
        payload = self._read_exact(size)
        end = self._read_exact(1)
        assert end[0] == FRAME_END, f"bad frame end from broker: {end!r}"
        return Frame(ftype, channel, payload)

    def read_method(self, expect: tuple[int, int] | None = None) -> Frame:
        while True:
            f = self.read_frame()
            if f.type == FRAME_HEARTBEAT:
                continue
            if expect is not None:
                assert f.type == FRAME_METHOD and f.method == expect, (f, expect)
            return f

    def read_until_close(self, max_frames: int = 100) -> Close:
        """Read frames until a connection.close or channel.close arrives."""
        for _ in range(max_frames):
            f = self.read_frame()
            if f.type != FRAME_METHOD:
                continue
            if f.method in ((10, 50), (20, 40)):
                p = f.payload[4:]
                code = struct.unpack("!H", p[:2])[0]
                tlen = p[2]
                text = p[3 : 3 + tlen].decode()
                cid, mid = struct.unpack("!HH", p[3 + tlen : 7 + tlen])
                return Close(f.channel, code, text, cid, mid)
        raise AssertionError("no close received")

    def send_close_ok(self, channel: int = 0) -> None:
        if channel == 0:
            self.send(method_frame(0, 10, 51))
        else:
            self.send(method_frame(channel, 20, 41))

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- handshake
    def handshake(
        self,
        user: str = "guest",
        password: str = "guest",
        vhost: str = "/",
        *,
        channel_max: int | None = None,
        frame_max: int | None = None,
        heartbeat: int = 0,
        open_vhost: bool = True,
        capabilities: dict | None = None,
    ) -> Frame | None:
        """Run the handshake; returns the reply to connection.open (open-ok or close)."""
        self.send(PROTOCOL_HEADER)
        self.read_method((10, 10))  # connection.start
        client_props = {
            "product": "baedal-rawamqp",
            "capabilities": {"authentication_failure_close": True, **(capabilities or {})},
        }
        response = b"\x00" + user.encode() + b"\x00" + password.encode()
        start_ok = table(client_props) + shortstr("PLAIN") + longstr(response) + shortstr("en_US")
        self.send(method_frame(0, 10, 11, start_ok))
        tune = self.read_method((10, 30))
        srv_channel_max, srv_frame_max, _hb = struct.unpack("!HIH", tune.payload[4:12])
        self.channel_max = srv_channel_max if channel_max is None else channel_max
        self.frame_max = srv_frame_max if frame_max is None else frame_max
        self.send(
            method_frame(
                0, 10, 31, struct.pack("!HIH", self.channel_max, self.frame_max, heartbeat)
            )
        )
        if not open_vhost:
            return None
        self.send(method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        return self.read_method()

    def open_channel(self, channel: int = 1) -> None:
        self.send(channel_open(channel))
        self.read_method((20, 11))

    # -- typed methods (encoded with Baedal's generated spec tables: pure wire formats)
    def send_method(self, channel: int, method) -> None:  # noqa: ANN001 (a spec.Method)
        self.send(frame(FRAME_METHOD, channel, method.encode()))

    def outcome(self, channel: int, skip: tuple[tuple[int, int], ...] = ()) -> Outcome:
        """Read until the reply to a synchronous method on ``channel`` (or a close)."""
        while True:
            try:
                f = self.read_frame()
            except TimeoutError:
                return Outcome("timeout")  # the broker left us waiting
            except (ConnectionDropped, OSError) as e:
                return Outcome("dropped", text=str(e))
            if f.type != FRAME_METHOD:
                continue
            if f.method == (10, 50):
                c = _parse_close(f)
                self.send_close_ok(0)
                return Outcome("connection", c.reply_code, c.reply_text, c.class_id, c.method_id)
            if f.channel != channel or f.method in skip:
                self.unsolicited.append(f)
                continue
            if f.method == (20, 40):
                c = _parse_close(f)
                self.send_close_ok(channel)
                return Outcome("channel", c.reply_code, c.reply_text, c.class_id, c.method_id)
            return Outcome("ok", reply=f)

    def call(self, channel: int, method, skip: tuple[tuple[int, int], ...] = ()) -> Outcome:  # noqa: ANN001
        self.send_method(channel, method)
        return self.outcome(channel, skip)

    def publish(self, channel: int, exchange: str, routing_key: str, body: bytes) -> None:
        self.send(
            basic_publish(channel, exchange, routing_key)
            + header_frame(channel, len(body))
            + (body_frame(channel, body) if body else b"")
        )


@dataclass
class Outcome:
    """What the broker answered: ``ok`` (the reply frame), a ``channel`` or
    ``connection`` close (code, text, failing class/method), ``dropped`` (TCP closed
    without a close) or ``timeout`` (no answer at all)."""

    kind: str
    code: int = 0
    text: str = ""
    class_id: int = 0
    method_id: int = 0
    reply: Frame | None = None

    def __str__(self) -> str:
        if self.kind == "ok":
            return f"ok {self.reply.method if self.reply else ''}"
        if self.kind in ("dropped", "timeout"):
            return self.kind
        return f"{self.kind} {self.code} {self.text!r} ({self.class_id},{self.method_id})"


def _parse_close(f: Frame) -> Close:
    p = f.payload[4:]
    code = struct.unpack("!H", p[:2])[0]
    tlen = p[2]
    text = p[3 : 3 + tlen].decode()
    cid, mid = struct.unpack("!HH", p[3 + tlen : 7 + tlen])
    return Close(f.channel, code, text, cid, mid)


def connect(host: str, port: int, **handshake_kwargs) -> RawAMQP:
    """Connected and opened (connection.open-ok received) raw client."""
    c = RawAMQP(host, port)
    reply = c.handshake(**handshake_kwargs)
    assert reply is not None and reply.method == (10, 41), reply
    return c
