"""Every protocol violation gets its answer, swept as tables (issue 9 item 3).

Every method of every class (from protocols/amqp/spec.py) sent on channel 0, every
``connection.*`` method sent on a non-zero channel, content frames on channel 0, frames
before the connection is open, and body frames around a small negotiated ``frame_max``.
Each row records what RabbitMQ 3.10.8 sends (checked by running this file with
``BAEDAL_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/``): the close's reply code,
its text, and the failing class and method ids.  Baedal must send the same.  Nothing may
be ignored or left waiting: after the frame under test the client sends ``basic.qos`` on
its open channel 1, so a violation the broker swallowed shows up as a ``qos-ok`` instead
of a close, and one it never answers as a timeout.  After each row an independent
connection, opened before the violation, must still be served.

Where RabbitMQ's text depends on the frame (``type 2, all octets = <<...>>``) the row
computes it the way RabbitMQ prints it (Erlang's ``~p`` of the first 16 payload bytes).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from urllib.parse import urlparse

import pytest
import rawamqp
from rawamqp import Outcome, RawAMQP, basic_publish, body_frame, frame, header_frame

from baedal.protocols.amqp import spec

pytestmark = pytest.mark.timeout(60)

S = spec
QOS = S.BasicQos(prefetch_count=0)


@dataclass(frozen=True)
class Expect:
    kind: str  # "connection" | "ok" (the reply on channel 0, for the legal methods)
    code: int = 0
    text: str = ""
    class_id: int = 0
    method_id: int = 0
    reply: tuple[int, int] | None = None  # for "ok": the reply's class/method ids


def closes(code: int, text: str, class_id: int = 0, method_id: int = 0) -> Expect:
    return Expect("connection", code, text, class_id, method_id)


@dataclass(frozen=True)
class Row:
    name: str
    data: bytes  # what the client sends (after the handshake and channel.open 1)
    expect: Expect
    frame_max: int | None = None  # tune-ok frame_max, if not the broker's offer
    before_open: bool = False  # send after tune-ok, before connection.open


def _snippet(frame_type: int, payload: bytes) -> str:
    """RabbitMQ's (Erlang ~p) rendering of a frame's first 16 bytes (ASCII-only here)."""
    data = payload[:16]
    label = "all" if len(payload) <= 16 else "first 16"
    if data and all(32 <= b < 127 and b not in b'"\\' for b in data):
        shown = f'<<"{data.decode()}">>'
    else:
        shown = "<<" + ",".join(map(str, data)) + ">>"
    return f"type {frame_type}, {label} octets = {shown}"


def method_bytes(channel: int, method: S.Method) -> bytes:
    return frame(rawamqp.FRAME_METHOD, channel, method.encode())


ALL_METHODS = sorted(spec.METHODS.values(), key=lambda m: (m.CLASS_ID, m.METHOD_ID))
CONNECTION_METHODS = [m for m in ALL_METHODS if m.CLASS_ID == 10]
RUNNING_504 = "CHANNEL_ERROR - unexpected method in connection state running"

# fmt: off
CHANNEL_ZERO = [
    # Every method on channel 0 of an open connection: only connection.close and
    # connection.update-secret are legal there; everything else, connection methods
    # included, is 504 naming the method.  RabbitMQ: connection.close 504.
    *[Row(f"{m.NAME} on channel 0", method_bytes(0, m()),
          closes(504, RUNNING_504, m.CLASS_ID, m.METHOD_ID))
      for m in ALL_METHODS if m not in (S.ConnectionClose, S.ConnectionUpdateSecret)],
    # the two legal ones, for completeness
    Row("connection.close on channel 0 (legal)", method_bytes(0, S.ConnectionClose(reply_code=200)),
        Expect("ok", reply=(10, 51))),  # RabbitMQ: close-ok
    Row("connection.update-secret on channel 0 (legal)", method_bytes(0, S.ConnectionUpdateSecret()),
        Expect("ok", reply=(10, 71))),  # RabbitMQ: update-secret-ok
    # basic.publish on channel 0 followed by its content, all in one write.
    Row("basic.publish + header + body on channel 0",
        basic_publish(0, "", "k") + header_frame(0, 3) + body_frame(0, b"abc"),
        closes(504, RUNNING_504, 60, 40)),  # RabbitMQ: 504 on the method
]

NON_ZERO_CHANNEL = [
    # connection.* on an open channel: RabbitMQ's 503 "unimplemented method".
    *[Row(f"{m.NAME} on open channel 1", method_bytes(1, m()),
          closes(503, "COMMAND_INVALID - unimplemented method", m.CLASS_ID, m.METHOD_ID))
      for m in CONNECTION_METHODS],
    # connection.* on a channel never opened: the channel check comes first (504).
    *[Row(f"{m.NAME} on unopened channel 3", method_bytes(3, m()),
          closes(504, "CHANNEL_ERROR - expected 'channel.open'", m.CLASS_ID, m.METHOD_ID))
      for m in CONNECTION_METHODS],
]

SERVER_ONLY = [
    m for m in ALL_METHODS
    if m.CLASS_ID != 10 and (m.NAME.endswith("-ok") or m in (S.BasicReturn, S.BasicDeliver, S.BasicGetEmpty))
]
OPEN_CHANNEL = [
    # Methods only a server sends, sent by the client on its open channel 1 (content
    # methods with an empty content header: RabbitMQ assembles the content first).
    # channel.close-ok is legal only on a channel the server is closing.
    *[Row(f"{m.NAME} on open channel 1", method_bytes(1, m()) + (header_frame(1, 0) if m.HAS_CONTENT else b""),
          closes(503, "COMMAND_INVALID - unimplemented method", m.CLASS_ID, m.METHOD_ID))
      for m in SERVER_ONLY],  # RabbitMQ: 503 "unimplemented method"
]

_HEADER = struct.pack("!HHQH", 60, 0, 3, 0)
CONTENT_ON_ZERO = [
    Row("content header on channel 0", frame(2, 0, _HEADER),
        closes(505, "UNEXPECTED_FRAME - " + _snippet(2, _HEADER))),  # RabbitMQ: 505
    Row("content body on channel 0", frame(3, 0, b"abc"),
        closes(505, "UNEXPECTED_FRAME - " + _snippet(3, b"abc"))),  # RabbitMQ: 505
    Row("content body of 20 bytes on channel 0", frame(3, 0, b"abcdefghijklmnopqrst"),
        closes(505, "UNEXPECTED_FRAME - " + _snippet(3, b"abcdefghijklmnopqrst"))),  # RabbitMQ: first 16 octets
    Row("content body of unprintable bytes on channel 0", frame(3, 0, bytes(range(5))),
        closes(505, "UNEXPECTED_FRAME - " + _snippet(3, bytes(range(5))))),  # RabbitMQ: <<0,1,2,3,4>>
    Row("empty content header on channel 0", frame(2, 0, b""),
        closes(501, "FRAME_ERROR - type 2, all octets = <<>>: unknown_frame")),  # RabbitMQ: unparsable
    Row("heartbeat with a payload on channel 0", frame(8, 0, b"xy"),
        closes(501, 'FRAME_ERROR - type 8, all octets = <<"xy">>: unknown_frame')),  # RabbitMQ: unparsable
    Row("heartbeat on channel 1", frame(8, 1, b""),
        closes(505, "UNEXPECTED_FRAME - type 8, all octets = <<>>")),  # RabbitMQ: 505
    Row("unknown frame type 9", frame(9, 0, b"abc"),
        closes(501, 'FRAME_ERROR - type 9, all octets = <<"abc">>: unknown_frame')),  # RabbitMQ: 501
    Row("content body on channel 1 without a method", frame(3, 1, b"abc"),
        closes(505, "UNEXPECTED_FRAME - expected method frame, got non method frame instead")),  # RabbitMQ: 505
]

BEFORE_OPEN = [
    # after tune-ok, before connection.open: RabbitMQ's state is "opening"
    Row("queue.declare on channel 0 before open", method_bytes(0, S.QueueDeclare()),
        closes(504, "CHANNEL_ERROR - unexpected method in connection state opening", 50, 10),
        before_open=True),  # RabbitMQ: 504
    Row("connection.tune-ok again before open", method_bytes(0, S.ConnectionTuneOk(frame_max=131072)),
        closes(504, "CHANNEL_ERROR - unexpected method in connection state opening", 10, 31),
        before_open=True),  # RabbitMQ: 504
    Row("channel.open on channel 1 before open", method_bytes(1, S.ChannelOpen()),
        closes(505, "UNEXPECTED_FRAME - " + _snippet(1, S.ChannelOpen().encode())),
        before_open=True),  # RabbitMQ: any frame on a channel is unexpected
]


def publish_bodies(sizes: list[int], announced: int | None = None) -> bytes:
    """basic.publish + header + one body frame per size, all in one write."""
    total = sum(sizes) if announced is None else announced
    data = basic_publish(1, "", "nowhere") + header_frame(1, total)
    return data + b"".join(body_frame(1, b"b" * n) for n in sizes)


def too_large(size: int, frame_max: int = 4096) -> Expect:
    return closes(501, f"FRAME_ERROR - type 3, all octets = <<>>: {{frame_too_large,{size},{frame_max - 8}}}")


OK_QOS = Expect("ok", reply=(60, 11))
# Body frames against a negotiated frame_max of 4096.  RabbitMQ refuses a frame whose
# payload is larger than frame_max (it allows the 8 bytes of frame overhead on top of
# frame_max - 8).  One body frame in the same write as its publish takes Baedal's
# publish fast path; several take the general path: both must answer alike.
FRAME_MAX = [
    Row("body frame of frame_max - 8 (fast path)", publish_bodies([4088]), OK_QOS, 4096),  # RabbitMQ: ok
    Row("body frame of frame_max (fast path)", publish_bodies([4096]), OK_QOS, 4096),  # RabbitMQ: ok
    Row("body frame of frame_max + 1 (fast path)", publish_bodies([4097]), too_large(4097), 4096),  # RabbitMQ: 501
    Row("body frame of 3 x frame_max (fast path)", publish_bodies([12288]), too_large(12288), 4096),  # RabbitMQ: 501
    Row("three legal body frames (general path)", publish_bodies([4088, 4088, 4000]), OK_QOS, 4096),  # RabbitMQ: ok
    Row("legal then oversized body frame (general path)", publish_bodies([4088, 4097]),
        too_large(4097), 4096),  # RabbitMQ: 501
    Row("oversized first of two body frames (general path)", publish_bodies([5000, 100]),
        too_large(5000), 4096),  # RabbitMQ: 501
]
# fmt: on

ALL_ROWS = (
    CHANNEL_ZERO + NON_ZERO_CHANNEL + OPEN_CHANNEL + CONTENT_ON_ZERO + BEFORE_OPEN + FRAME_MAX
)


def test_channel_flow_off_is_answered_with_flow_ok_not_refused(
    endpoint: tuple[str, int], session_broker: object | None
) -> None:
    if session_broker is None:
        pytest.skip(
            "deliberately different: RabbitMQ 3.10 answers channel.flow active=false with "
            "connection.close 540 'NOT_IMPLEMENTED - active=false'; Baedal implements the "
            "spec's client flow control (it stops deliveries on the channel) and answers flow-ok"
        )
    c = rawamqp.connect(*endpoint)
    try:
        c.open_channel(1)
        seen = c.call(1, S.ChannelFlow(active=False))
        assert seen.kind == "ok" and seen.reply.method == (20, 21), str(seen)
        assert c.call(1, QOS).kind == "ok"
    finally:
        c.close()


@pytest.fixture
def endpoint(amqp_url: str) -> tuple[str, int]:
    u = urlparse(amqp_url)
    return u.hostname or "127.0.0.1", u.port or 5672


@pytest.fixture
def bystander(endpoint: tuple[str, int]):
    """Another connection, open before the violation, that must still be served after it."""
    c = rawamqp.connect(*endpoint)
    c.open_channel(1)
    yield c
    c.close()


def answer(c: RawAMQP, row: Row) -> Outcome:
    if row.expect.kind == "ok" and row.expect.reply and row.expect.reply[0] == 10:
        return c.outcome(0)  # a reply on channel 0
    return c.outcome(1)


@pytest.mark.parametrize("row", ALL_ROWS, ids=[r.name for r in ALL_ROWS])
def test_protocol_violation_gets_rabbitmqs_answer(
    row: Row, endpoint: tuple[str, int], bystander: RawAMQP
) -> None:
    c = RawAMQP(*endpoint)
    try:
        kwargs = {"frame_max": row.frame_max} if row.frame_max else {}
        reply = c.handshake(open_vhost=not row.before_open, **kwargs)
        if not row.before_open:
            assert reply is not None and reply.method == (10, 41), reply
            c.open_channel(1)
        c.send(row.data)
        if not row.before_open:
            c.send(method_bytes(1, QOS))  # a swallowed violation shows up as qos-ok
        seen = answer(c, row)
        want = row.expect
        if want.kind == "ok":
            assert (seen.kind, seen.reply and seen.reply.method) == ("ok", want.reply), str(seen)
        else:
            observed = (seen.kind, seen.code, seen.text, seen.class_id, seen.method_id)
            assert observed == (want.kind, want.code, want.text, want.class_id, want.method_id), (
                f"OBSERVED {row.name}: {seen}"
            )
    finally:
        c.close()
    assert bystander.call(1, QOS).kind == "ok", "the broker stopped serving another connection"
