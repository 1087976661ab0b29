"""FrameReader, table by table: each protocol error with its reply code, and content
assembly across frames, fed whole and one byte at a time."""

from __future__ import annotations

import struct

import pytest

from baedal.protocols.amqp import spec
from baedal.protocols.amqp.codec import (
    PROTOCOL_HEADER,
    ChannelFault,
    ConnectionFault,
    ContentFrame,
    FrameReader,
    Heartbeat,
    MethodFrame,
    ProtocolHeader,
    content_frames,
    method_frame,
)

FRAME_MAX = 4096


def frame(frame_type: int, channel: int, payload: bytes, end: int = 0xCE) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + bytes([end])


def header(
    channel: int, body_size: int, properties: bytes = b"\x00\x00", class_id: int = 60
) -> bytes:
    return frame(2, channel, struct.pack(">HHQ", class_id, 0, body_size) + properties)


def body(channel: int, data: bytes) -> bytes:
    return frame(3, channel, data)


def publish(channel: int = 1, routing_key: str = "q") -> bytes:
    return method_frame(channel, spec.BasicPublish(routing_key=routing_key))


def reader() -> FrameReader:
    return FrameReader(frame_max=FRAME_MAX, max_message_size=1000)


def feed_whole(data: bytes) -> list[object]:
    return reader().feed(PROTOCOL_HEADER + data)


def feed_bytewise(data: bytes) -> list[object]:
    r = reader()
    events: list[object] = []
    for i, byte in enumerate(PROTOCOL_HEADER + data):
        events.extend(r.feed(bytes([byte])))
        assert r.buffered <= FRAME_MAX + 8, i
    return events


FEEDS = [pytest.param(feed_whole, id="whole"), pytest.param(feed_bytewise, id="byte-by-byte")]

ERRORS = [
    ("bad frame end", frame(1, 0, b"\x00\x0a\x00\x33", end=0x00), ConnectionFault, 501),
    ("frame larger than frame_max", struct.pack(">BHI", 3, 1, FRAME_MAX + 1), ConnectionFault, 501),
    ("unknown frame type", frame(7, 0, b""), ConnectionFault, 501),
    ("method frame shorter than its ids", frame(1, 1, b"\x00\x3c"), ConnectionFault, 501),
    (
        "method arguments cut short",
        frame(1, 1, struct.pack(">HH", 50, 10) + b"\x00"),
        ConnectionFault,
        501,
    ),
    ("unknown class", frame(1, 1, struct.pack(">HH", 999, 1)), ConnectionFault, 540),
    (
        "unknown method of a known class",
        frame(1, 1, struct.pack(">HH", 60, 99)),
        ConnectionFault,
        503,
    ),
    ("body without method", body(1, b"x"), ConnectionFault, 505),
    ("body without header", publish() + body(1, b"x"), ConnectionFault, 505),
    ("header without method", header(1, 1), ConnectionFault, 505),
    ("second header", publish() + header(1, 5) + header(1, 5), ConnectionFault, 505),
    ("method during content", publish() + header(1, 5) + publish(), ConnectionFault, 505),
    ("method before the header", publish() + publish(), ConnectionFault, 505),
    ("header of another class", publish() + header(1, 5, class_id=50), ConnectionFault, 505),
    (
        "header shorter than 14 bytes",
        publish() + frame(2, 1, b"\x00\x3c\x00\x00"),
        ConnectionFault,
        501,
    ),
    (
        "body larger than announced",
        publish() + header(1, 2) + body(1, b"xyz"),
        ConnectionFault,
        501,
    ),
    ("heartbeat on channel 1", frame(8, 1, b""), ConnectionFault, 505),
    ("message larger than max_message_size", publish() + header(1, 1001), ChannelFault, 406),
]


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize(
    ("data", "fault", "code"), [pytest.param(*case[1:], id=case[0]) for case in ERRORS]
)
def test_protocol_errors_carry_their_reply_code(feed, data: bytes, fault: type, code: int) -> None:
    with pytest.raises(fault) as raised:
        feed(data)
    assert type(raised.value) is fault
    assert raised.value.code == code
    assert raised.value.reply_text.startswith(
        {
            406: "PRECONDITION_FAILED",
            501: "FRAME_ERROR",
            503: "COMMAND_INVALID",
            505: "UNEXPECTED_FRAME",
            540: "NOT_IMPLEMENTED",
        }[code]
    )


def test_a_connection_fault_is_sticky() -> None:
    r = reader()
    with pytest.raises(ConnectionFault) as first:
        r.feed(PROTOCOL_HEADER + frame(8, 1, b""))
    with pytest.raises(ConnectionFault) as again:
        r.feed(frame(8, 0, b""))
    assert again.value is first.value


def test_events_before_a_connection_fault_are_handed_over_once() -> None:
    """Found by the connection fuzz: the sticky fault carried the events parsed before
    it, so a later read handed an already-handled publish to the connection again."""
    r = reader()
    publish = b"".join(content_frames(1, spec.BasicPublish(routing_key="q").encode(), b"\x00\x00", b"hi", FRAME_MAX))
    with pytest.raises(ConnectionFault) as first:
        r.feed(PROTOCOL_HEADER + publish + frame(8, 1, b""))
    assert [type(event) for event in first.value.events] == [ProtocolHeader, ContentFrame]  # type: ignore[attr-defined]
    with pytest.raises(ConnectionFault) as again:
        r.feed(publish)
    assert again.value is first.value
    assert again.value.events == []  # type: ignore[attr-defined]


def test_frame_too_large_is_refused_from_its_seven_byte_header_alone() -> None:
    r = reader()
    r.feed(PROTOCOL_HEADER)
    with pytest.raises(ConnectionFault) as raised:
        r.feed(struct.pack(">BHI", 3, 1, 10**9))
    assert raised.value.code == 501
    assert r.buffered <= FRAME_MAX + 8


def test_oversized_message_closes_only_its_channel_and_the_reader_goes_on() -> None:
    r = reader()
    data = (
        PROTOCOL_HEADER
        + method_frame(2, spec.BasicQos(prefetch_count=1))
        + publish(1)
        + header(1, 1001)
        + body(1, b"x" * 1001)  # of the refused message: dropped with the channel
        + method_frame(2, spec.BasicQos(prefetch_count=2))
        + method_frame(1, spec.ChannelCloseOk())
        + publish(1)
        + header(1, 3)
        + body(1, b"abc")
    )
    with pytest.raises(ChannelFault) as raised:
        r.feed(data)
    fault = raised.value
    assert (fault.code, fault.channel, fault.class_id, fault.method_id) == (406, 1, 60, 40)
    assert [type(e) for e in fault.events] == [ProtocolHeader, MethodFrame]  # type: ignore[attr-defined]
    r.discard_channel(1)  # what the connection does before reading on
    events = r.feed(b"")
    assert [type(e) for e in events] == [MethodFrame, MethodFrame, ContentFrame]
    assert events[0].method == spec.BasicQos(prefetch_count=2)
    assert isinstance(events[1].method, spec.ChannelCloseOk)
    assert events[2].body == b"abc"


@pytest.mark.parametrize("feed", FEEDS)
@pytest.mark.parametrize("size", [0, 1, FRAME_MAX - 8, FRAME_MAX - 7, 10_000])
def test_content_split_across_body_frames_is_assembled(feed, size: int) -> None:
    payload = bytes(i % 251 for i in range(size))
    method = spec.BasicPublish(exchange="x", routing_key="k", mandatory=True)
    frames = content_frames(3, method.encode(), b"\x10\x00\x02", payload, FRAME_MAX)
    r = FrameReader(frame_max=FRAME_MAX, max_message_size=1 << 20)
    data = PROTOCOL_HEADER + b"".join(bytes(f) for f in frames) + frame(8, 0, b"")
    events = (
        r.feed(data)
        if feed is feed_whole
        else [e for i in range(len(data)) for e in r.feed(data[i : i + 1])]
    )
    assert [type(e) for e in events] == [ProtocolHeader, ContentFrame, Heartbeat]
    content = events[1]
    assert content.channel == 3 and content.method == method
    assert content.properties == b"\x10\x00\x02"
    assert content.body == payload
    assert r.buffered == 0


def test_contents_interleave_across_channels() -> None:
    data = (
        publish(1, "one")
        + publish(2, "two")
        + header(2, 2)
        + header(1, 4)
        + body(1, b"ab")
        + body(2, b"xy")
        + body(1, b"cd")
    )
    events = feed_whole(data)[1:]
    assert [(e.channel, e.method.routing_key, e.body) for e in events] == [
        (2, "two", b"xy"),
        (1, "one", b"abcd"),
    ]


@pytest.mark.parametrize(
    ("first_bytes", "expected"),
    [
        (b"AMQP\x00\x00\x09\x01", PROTOCOL_HEADER),
        (b"AMQP\x01\x01\x00\x09", b"AMQP\x01\x01\x00\x09"),
        (b"HTTP/1.1", b"HTTP/1.1"),
    ],
)
def test_the_protocol_header_is_reported_as_sent(first_bytes: bytes, expected: bytes) -> None:
    events = FrameReader().feed(first_bytes)
    assert len(events) == 1 and isinstance(events[0], ProtocolHeader) and events[0].data == expected


def test_a_wrong_protocol_header_is_answered_before_eight_bytes() -> None:
    events = FrameReader().feed(b"GET")
    assert isinstance(events[0], ProtocolHeader) and events[0].data == b"GET"


def test_frames_closing_channel_are_ignored_except_close_and_close_ok() -> None:
    r = reader()
    r.feed(PROTOCOL_HEADER)
    r.discard_channel(1)
    events = r.feed(
        publish(1)
        + header(1, 5)
        + frame(3, 1, b"junk")
        + method_frame(1, spec.ChannelClose(reply_code=200, reply_text="bye"))
        + method_frame(1, spec.ChannelCloseOk())
        + method_frame(1, spec.ChannelOpen())
    )
    assert [type(e.method) for e in events] == [
        spec.ChannelClose,
        spec.ChannelCloseOk,
        spec.ChannelOpen,
    ]
