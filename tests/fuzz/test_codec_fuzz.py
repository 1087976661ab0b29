"""Hypothesis against the AMQP codec: hostile bytes only ever produce a protocol error.

* ``FrameReader``: a valid handshake prefix, then generated frames (valid methods,
  content sequences, heartbeats, random frames), then mutations of the whole stream
  (flipped bytes, cuts, inserted garbage).  Fed whole, one byte at a time and in random
  chunks, the only outcomes are events and ``ConnectionFault`` / ``ChannelFault``; all
  three feeds see the same events and faults; the reader never holds more than
  ``frame_max + 8`` bytes; a connection fault is sticky.
* Bodies larger than a small negotiated ``frame_max`` (4096), up to three times it, split
  into legal and oversized body frames: fed whole (the ``basic.publish`` fast path takes
  a publish + header + single body frame) and byte by byte (always the general path),
  the outcome is the same, and an oversized body frame is 501 on both paths.
* ``AMQPConnection`` over a fake transport: the same kind of input after a real login;
  the connection answers with frames, and a broken stream ends in ``connection.close``
  (never 541 INTERNAL_ERROR, never an exception) and, after close-ok, a closed transport.
* Round trips: every method class in ``spec.METHODS`` with generated arguments, and
  field tables with every RabbitMQ tag.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import struct
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from baedal.core.broker import BrokerConfig, BrokerCore
from baedal.core.properties import Timestamp, decode_table, encode_table
from baedal.protocols.amqp import codec, spec
from baedal.protocols.amqp.codec import (
    PROTOCOL_HEADER,
    ChannelFault,
    ConnectionFault,
    ContentFrame,
    FrameReader,
    Heartbeat,
    MethodFrame,
    ProtocolHeader,
    method_frame,
)
from baedal.protocols.amqp.connection import AMQPConnection
from baedal.protocols.amqp.server import AMQPServer

FRAME_MAX = 4096
CONNECTION_FRAME_MAX = 4096  # the smallest a client may negotiate (FRAME_MIN_SIZE, as RabbitMQ)
MAX_MESSAGE_SIZE = 2000
FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- argument kinds, read off each generated encoder -------------------------------------

_KIND_PATTERNS = (
    (re.compile(r"_H\.pack\(self\.(\w+)\)"), "short"),
    (re.compile(r"_I\.pack\(self\.(\w+)\)"), "long"),
    (re.compile(r"_Q\.pack\(self\.(\w+)\)"), "longlong"),
    (re.compile(r"_enc_sstr\(self\.(\w+)\)"), "shortstr"),
    (re.compile(r"_enc_lstr\(self\.(\w+)\)"), "longstr"),
    (re.compile(r"encode_table\(self\.(\w+)\)"), "table"),
    (re.compile(r"out\.append\(self\.(\w+)\)"), "octet"),
    (re.compile(r"if self\.(\w+) else 0"), "bit"),
)


def field_kinds(cls: type[spec.Method]) -> dict[str, str]:
    source = inspect.getsource(cls.encode)
    kinds = {}
    for pattern, kind in _KIND_PATTERNS:
        for name in pattern.findall(source):
            kinds[name] = kind
    missing = set(cls.FIELDS) - kinds.keys()
    assert not missing, f"{cls.NAME}: no kind found for {missing}"
    return kinds


METHOD_CLASSES = sorted(spec.METHODS.values(), key=lambda cls: cls.INDEX)
KINDS = {cls: field_kinds(cls) for cls in METHOD_CLASSES}

# --- field table values ---------------------------------------------------------------

short_text = st.text(max_size=20).filter(lambda s: len(s.encode("utf-8", "surrogateescape")) <= 255)
table_keys = st.text(st.characters(exclude_categories=("Cs",)), max_size=10)
plain_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=30)


@st.composite
def decimals(draw: st.DrawFn) -> Decimal:
    unscaled = draw(st.integers(-(2**31), 2**31 - 1))
    scale = draw(st.integers(0, 20))
    return Decimal(unscaled).scaleb(-scale)


# Values the encoder writes and the decoder gives back equal (floats as 'd', no NaN).
encodable_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(allow_nan=False),
    plain_text,
    st.binary(max_size=30),
    decimals(),
    st.integers(0, 2**64 - 1).map(Timestamp),
)
encodable_values = st.recursive(
    encodable_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(table_keys, inner, max_size=4),
    ),
    max_leaves=12,
)
encodable_tables = st.dictionaries(table_keys, encodable_values, max_size=6)


def _float32(value: float) -> float:
    return struct.unpack(">f", struct.pack(">f", value))[0]


# (wire bytes of one tagged value, the Python value it must decode to) for every tag
# RabbitMQ uses, plus the lenient 'L' and '\x00' of pamqp.
tagged_scalars = st.one_of(
    st.booleans().map(lambda v: (b"t" + bytes([v]), v)),
    st.integers(-128, 127).map(lambda v: (b"b" + struct.pack(">b", v), v)),
    st.integers(0, 255).map(lambda v: (b"B" + struct.pack(">B", v), v)),
    st.integers(-(2**15), 2**15 - 1).map(lambda v: (b"s" + struct.pack(">h", v), v)),
    st.integers(0, 2**16 - 1).map(lambda v: (b"u" + struct.pack(">H", v), v)),
    st.integers(-(2**31), 2**31 - 1).map(lambda v: (b"I" + struct.pack(">i", v), v)),
    st.integers(0, 2**32 - 1).map(lambda v: (b"i" + struct.pack(">I", v), v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: (b"l" + struct.pack(">q", v), v)),
    st.integers(-(2**63), 2**63 - 1).map(lambda v: (b"L" + struct.pack(">q", v), v)),
    st.floats(width=32, allow_nan=False).map(lambda v: (b"f" + struct.pack(">f", v), _float32(v))),
    st.floats(allow_nan=False).map(lambda v: (b"d" + struct.pack(">d", v), v)),
    st.tuples(st.integers(0, 20), st.integers(-(2**31), 2**31 - 1)).map(
        lambda sv: (b"D" + struct.pack(">Bi", *sv), Decimal(sv[1]).scaleb(-sv[0]))
    ),
    plain_text.map(lambda v: (b"S" + struct.pack(">I", len(v.encode())) + v.encode(), v)),
    st.binary(max_size=20).map(lambda v: (b"x" + struct.pack(">I", len(v)) + v, v)),
    st.integers(0, 2**64 - 1).map(lambda v: (b"T" + struct.pack(">Q", v), v)),
    st.just((b"V", None)),
    st.just((b"\x00", None)),
)


def _table_wire(items: list[tuple[str, tuple[bytes, Any]]]) -> tuple[bytes, dict[str, Any]]:
    body = b"".join(bytes([len(k.encode())]) + k.encode() + wire for k, (wire, _) in items)
    return struct.pack(">I", len(body)) + body, {k: value for k, (_, value) in items}


tagged_values = st.recursive(
    tagged_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4).map(
            lambda items: (
                b"A"
                + struct.pack(">I", sum(len(w) for w, _ in items))
                + b"".join(w for w, _ in items),
                [v for _, v in items],
            )
        ),
        st.lists(st.tuples(table_keys, inner), max_size=4, unique_by=lambda kv: kv[0]).map(
            lambda items: (lambda wire_value: (b"F" + wire_value[0], wire_value[1]))(
                _table_wire(items)
            )
        ),
    ),
    max_leaves=12,
)


# --- method arguments -----------------------------------------------------------------

_KIND_STRATEGIES: dict[str, st.SearchStrategy[Any]] = {
    "short": st.integers(0, 2**16 - 1),
    "long": st.integers(0, 2**32 - 1),
    "longlong": st.integers(0, 2**64 - 1),
    "shortstr": short_text,
    "longstr": st.binary(max_size=40),
    "table": encodable_tables,
    "octet": st.integers(0, 255),
    "bit": st.booleans(),
}


@st.composite
def methods(draw: st.DrawFn, classes: list[type[spec.Method]] = METHOD_CLASSES) -> spec.Method:
    cls = draw(st.sampled_from(classes))
    kinds = KINDS[cls]
    return cls(**{name: draw(_KIND_STRATEGIES[kinds[name]]) for name in cls.FIELDS})


def _normal(value: Any) -> Any:
    """Compare NaN-free values exactly; repr keeps Decimal/Timestamp/bytes distinct enough."""
    return repr(value)


@FUZZ
@given(methods())
def test_every_method_round_trips_through_encode_and_decode(method: spec.Method) -> None:
    payload = method.encode()
    assert struct.unpack_from(">I", payload)[0] == method.INDEX
    decoded = type(method).decode(memoryview(payload)[4:])
    assert decoded == method, f"{method!r} came back as {decoded!r}"


@FUZZ
@given(methods(), st.integers(0, 65535))
def test_every_method_round_trips_through_frames(method: spec.Method, channel: int) -> None:
    reader = FrameReader(frame_max=0, max_message_size=2**20)
    if isinstance(method, spec.BasicPublish):
        method.ticket = 0  # reserved-1: the hand-written publish fast path does not read it
    # Channel 0 carries no content: a content method there is passed on alone, as a
    # MethodFrame, for the connection to refuse (504, as RabbitMQ).
    with_content = method.HAS_CONTENT and channel != 0
    if with_content:
        data = b"".join(
            codec.content_frames(channel, method.encode(), b"\x00\x00", b"body", 0, method.CLASS_ID)
        )
    else:
        data = method_frame(channel, method)
    events = reader.feed(PROTOCOL_HEADER + data)
    assert isinstance(events[0], ProtocolHeader) and len(events) == 2
    assert events[1].channel == channel
    assert events[1].method == method
    assert type(events[1]) is (ContentFrame if with_content else MethodFrame)


@FUZZ
@given(encodable_tables)
def test_field_tables_round_trip(table: dict[str, Any]) -> None:
    wire = encode_table(table)
    decoded, end = decode_table(wire)
    assert end == len(wire)
    assert decoded == table
    assert _normal(decoded) == _normal(table)


@FUZZ
@given(st.lists(st.tuples(table_keys, tagged_values), max_size=6, unique_by=lambda kv: kv[0]))
def test_field_tables_with_every_rabbitmq_tag_decode_and_reencode(
    items: list[tuple[str, tuple[bytes, Any]]],
) -> None:
    wire, expected = _table_wire(items)
    decoded, end = decode_table(wire)
    assert end == len(wire)
    assert decoded == expected
    # what the broker decoded it can send on (normalised tags), unchanged in value
    again, _ = decode_table(encode_table(decoded))
    assert again == decoded


# --- hostile frame streams ----------------------------------------------------------------


def _frame(frame_type: int, channel: int, payload: bytes) -> bytes:
    return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + b"\xce"


channels = st.sampled_from([0, 1, 1, 1, 2, 3, 65535])
client_methods = [
    cls
    for cls in METHOD_CLASSES
    if cls.CLASS_ID in (20, 40, 50, 60, 85, 90) and not cls.NAME.endswith("-ok")
]


@st.composite
def content_sequences(draw: st.DrawFn) -> bytes:
    channel = draw(channels)
    body = draw(st.binary(max_size=MAX_MESSAGE_SIZE + 200))
    announced = draw(st.sampled_from([len(body), len(body), len(body) + 1, max(0, len(body) - 1)]))
    publish = spec.BasicPublish(
        exchange="", routing_key=draw(short_text), mandatory=draw(st.booleans())
    )
    properties = draw(
        st.sampled_from([b"\x00\x00", b"\x10\x00\x02", b"\x20\x00\x00\x00\x00\x00", b"\xff"])
    )
    out = [
        method_frame(channel, publish),
        _frame(2, channel, struct.pack(">HHQ", 60, 0, announced) + properties),
    ]
    chunk = draw(st.integers(1, 600))
    for start in range(0, len(body), chunk):
        out.append(_frame(3, channel, body[start : start + chunk]))
    return b"".join(out)


frames = st.one_of(
    st.tuples(channels, methods()).map(lambda cm: method_frame(*cm)),
    content_sequences(),
    channels.map(lambda ch: _frame(8, ch, b"")),
    st.tuples(st.integers(0, 255), channels, st.binary(max_size=60)).map(lambda t: _frame(*t)),
    st.tuples(channels, st.binary(max_size=40)).map(lambda cb: _frame(1, cb[0], cb[1])),
    st.tuples(channels, st.binary(max_size=20)).map(lambda cb: _frame(2, cb[0], cb[1])),
    st.tuples(channels, st.binary(max_size=40)).map(lambda cb: _frame(3, cb[0], cb[1])),
    # the largest legal frame (RabbitMQ: payload up to frame_max) and one byte more
    st.just(_frame(3, 1, b"x" * FRAME_MAX)),
    st.just(_frame(3, 1, b"x" * (FRAME_MAX + 1))),
)


@st.composite
def mutated(draw: st.DrawFn, data: bytes, start: int) -> bytes:
    """Flip, cut, insert: never inside the first ``start`` bytes (the handshake prefix)."""
    buf = bytearray(data)
    for _ in range(draw(st.integers(0, 3))):
        if len(buf) <= start:
            break
        where = draw(st.integers(start, len(buf) - 1))
        action = draw(st.sampled_from(["flip", "cut", "insert", "truncate"]))
        if action == "flip":
            buf[where] ^= draw(st.integers(1, 255))
        elif action == "cut":
            del buf[where : where + draw(st.integers(1, 8))]
        elif action == "insert":
            buf[where:where] = draw(st.binary(min_size=1, max_size=8))
        else:
            del buf[where:]
    return bytes(buf)


@st.composite
def frame_streams(draw: st.DrawFn, prefix: bytes = PROTOCOL_HEADER) -> bytes:
    body = b"".join(draw(st.lists(frames, max_size=12)))
    if draw(st.booleans()):
        return prefix + body
    return draw(mutated(prefix + body, len(prefix)))


def _event_key(event: Any) -> tuple[Any, ...]:
    if isinstance(event, ProtocolHeader):
        return ("header", event.data)
    if isinstance(event, Heartbeat):
        return ("heartbeat",)
    if isinstance(event, MethodFrame):
        return ("method", event.channel, repr(event.method))
    assert isinstance(event, ContentFrame), f"not an event: {event!r}"
    return ("content", event.channel, repr(event.method), event.properties, event.body)


def run_reader(
    pieces: Iterator[bytes] | list[bytes],
    max_message_size: int = MAX_MESSAGE_SIZE,
) -> list[tuple[Any, ...]]:
    """Feed pieces as the connection does; the outcome as a list of event/fault keys."""
    reader = FrameReader(frame_max=FRAME_MAX, max_message_size=max_message_size)
    outcome: list[tuple[Any, ...]] = []
    for piece in pieces:
        data = piece
        while True:
            try:
                events = reader.feed(data)
            except ChannelFault as exc:
                outcome.extend(_event_key(e) for e in exc.events)  # type: ignore[attr-defined]
                outcome.append(("channel-fault", exc.channel, exc.code))
                reader.discard_channel(exc.channel)
                data = b""  # the rest of this piece is in the reader; go on from there
                continue
            except ConnectionFault as exc:
                outcome.extend(_event_key(e) for e in exc.events)  # type: ignore[attr-defined]
                outcome.append(("connection-fault", exc.code))
                with pytest.raises(ConnectionFault) as again:  # sticky
                    reader.feed(b"\x08\x00\x00\x00\x00\x00\x00\xce")
                assert again.value is exc
                return outcome
            outcome.extend(_event_key(e) for e in events)
            assert reader.buffered <= FRAME_MAX + 8, f"{reader.buffered} bytes held"
            break
    return outcome


def _until_bad_header(outcome: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """After a wrong protocol header the connection is gone: what follows is moot (and
    depends on how many bytes came in the first read)."""
    for i, key in enumerate(outcome):
        if key[0] == "header" and key[1] != PROTOCOL_HEADER:
            return outcome[: i + 1]
    return outcome


def _chunks(data: bytes, sizes: list[int]) -> list[bytes]:
    out, pos, i = [], 0, 0
    while pos < len(data):
        size = sizes[i % len(sizes)] if sizes else len(data)
        out.append(data[pos : pos + size])
        pos += size
        i += 1
    return out


@FUZZ
@given(frame_streams(), st.lists(st.integers(1, 700), min_size=1, max_size=8))
def test_frame_reader_only_emits_events_or_protocol_faults_however_the_bytes_arrive(
    data: bytes, sizes: list[int]
) -> None:
    whole = run_reader([data])
    event(
        whole[-1][0] + (f" {whole[-1][-1]}" if "fault" in whole[-1][0] else "")
        if whole
        else "nothing"
    )
    one_byte_at_a_time = run_reader(data[i : i + 1] for i in range(len(data)))
    chunked = run_reader(_chunks(data, sizes))
    assert _until_bad_header(one_byte_at_a_time) == _until_bad_header(whole)
    assert _until_bad_header(chunked) == _until_bad_header(whole)


# --- bodies larger than a small frame_max: fast path and general path -------------------

LARGE_MESSAGE_SIZE = 3 * FRAME_MAX + 100  # so the bodies below are never 406 for size
# Body frame sizes around the limit: RabbitMQ takes a payload of up to frame_max bytes.
body_frame_sizes = st.one_of(
    st.sampled_from([FRAME_MAX - 8, FRAME_MAX - 1, FRAME_MAX, FRAME_MAX + 1, FRAME_MAX + 8]),
    st.integers(1, FRAME_MAX + 16),
)


@st.composite
def large_content(draw: st.DrawFn) -> tuple[bytes, int, list[int], int]:
    """publish + header + body frames for a body of up to 3 x frame_max.

    Returns (wire bytes, channel, body frame sizes, announced size).  Half the time the
    body is one frame (legal or not), which is what the fast path takes when the whole
    sequence is in one read.
    """
    channel = draw(st.sampled_from([1, 1, 2, 0]))
    size = draw(
        st.one_of(st.integers(0, 3 * FRAME_MAX), st.integers(FRAME_MAX - 16, 3 * FRAME_MAX))
    )
    body = bytes([draw(st.integers(0, 255))]) * size
    announced = draw(st.sampled_from([size, size, size, size + 1, max(0, size - 1)]))
    if draw(st.booleans()):
        sizes = [size] if size else []
    else:
        pattern = draw(st.lists(body_frame_sizes, min_size=1, max_size=4))
        sizes, left, i = [], size, 0
        while left > 0:
            sizes.append(min(pattern[i % len(pattern)], left))
            left -= sizes[-1]
            i += 1
    out = [
        # (a publish of 10 bytes or less, as with routing key "k", skips the fast path)
        method_frame(channel, spec.BasicPublish(routing_key=draw(st.sampled_from(["k", "key.1"])))),
        _frame(2, channel, struct.pack(">HHQ", 60, 0, announced) + b"\x00\x00"),
    ]
    pos = 0
    for n in sizes:
        out.append(_frame(3, channel, body[pos : pos + n]))
        pos += n
    return b"".join(out), channel, sizes, announced


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(large_content(), min_size=1, max_size=3),
    st.lists(st.integers(1, 5000), min_size=1, max_size=6),
)
def test_bodies_larger_than_frame_max_give_one_outcome_on_fast_and_general_paths(
    sequences: list[tuple[bytes, int, list[int], int]], sizes: list[int]
) -> None:
    data = PROTOCOL_HEADER + b"".join(wire for wire, *_ in sequences)
    whole = run_reader([data], LARGE_MESSAGE_SIZE)  # the fast path where it applies
    one_byte_at_a_time = run_reader(
        (data[i : i + 1] for i in range(len(data))), LARGE_MESSAGE_SIZE
    )  # never the fast path: it needs the whole sequence in the buffer
    chunked = run_reader(_chunks(data, sizes), LARGE_MESSAGE_SIZE)
    assert one_byte_at_a_time == whole
    assert chunked == whole
    # The first sequence against a plain model of RabbitMQ's rules.
    _, channel, frame_sizes, announced = sequences[0]
    first = whole[1:]  # after the protocol header
    event(f"{len(frame_sizes)} body frames, first outcome {first[0][0] if first else None}")
    if channel == 0:
        # a content method on channel 0 is passed on alone; its header is unexpected
        assert first[0][0] == "method" and first[1] == ("connection-fault", 505), first
    elif frame_sizes and frame_sizes[0] > FRAME_MAX:
        assert first == [("connection-fault", 501)], first  # oversized, fast path or not
    elif all(n <= FRAME_MAX for n in frame_sizes) and announced == sum(frame_sizes):
        assert first[0][0] == "content" and len(first[0][4]) == announced, first


def test_publish_fast_path_refuses_an_oversized_body_frame_like_the_general_path() -> None:
    publish = method_frame(
        1, spec.BasicPublish(routing_key="key.1")
    )  # long enough for the fast path
    for size, legal in (
        (FRAME_MAX - 8, True),
        (FRAME_MAX, True),
        (FRAME_MAX + 1, False),
        (3 * FRAME_MAX, False),
    ):
        header = _frame(2, 1, struct.pack(">HHQ", 60, 0, size) + b"\x00\x00")
        data = PROTOCOL_HEADER + publish + header + _frame(3, 1, b"b" * size)
        for pieces in ([data], [data[i : i + 1] for i in range(len(data))]):
            reader = FrameReader(frame_max=FRAME_MAX, max_message_size=LARGE_MESSAGE_SIZE)
            if legal:
                *_, content = [e for piece in pieces for e in reader.feed(piece)]
                assert isinstance(content, ContentFrame) and len(content.body) == size
                continue
            with pytest.raises(ConnectionFault) as fault:
                for piece in pieces:
                    reader.feed(piece)
            assert fault.value.code == 501
            # RabbitMQ 3.10: "FRAME_ERROR - type 3, all octets = <<>>: {frame_too_large,4097,4088}"
            assert fault.value.text == (
                f"type 3, all octets = <<>>: {{frame_too_large,{size},{FRAME_MAX - 8}}}"
            )


# --- a real connection over a fake transport ------------------------------------------------


class FakeTransport:
    """Records writes; knows whether it was closed, paused or aborted."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.reading = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        assert not self.closed, "write after close"
        self.data += data

    def writelines(self, lines: list[bytes]) -> None:
        for line in lines:
            self.write(line)

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        self.reading = False

    def resume_reading(self) -> None:
        self.reading = True


def server_frames(data: bytes) -> list[tuple[int, int, bytes]]:
    """Split what the broker wrote into (type, channel, payload); it must be well formed."""
    frames_out = []
    pos = 0
    if data.startswith(b"AMQP"):
        return [(-1, 0, data[:8])]
    while pos < len(data):
        frame_type, channel, size = struct.unpack_from(">BHI", data, pos)
        end = pos + 7 + size
        assert data[end] == 0xCE, f"the broker wrote a bad frame end at {end}"
        frames_out.append((frame_type, channel, data[pos + 7 : end]))
        pos = end + 1
    return frames_out


def _sasl_plain() -> bytes:
    return b"\x00guest\x00guest"


HANDSHAKE = (
    PROTOCOL_HEADER
    + method_frame(
        0,
        spec.ConnectionStartOk(
            client_properties={"capabilities": {"connection.blocked": True}},
            mechanism="PLAIN",
            response=_sasl_plain(),
            locale="en_US",
        ),
    )
    + method_frame(
        0, spec.ConnectionTuneOk(channel_max=16, frame_max=CONNECTION_FRAME_MAX, heartbeat=0)
    )
    + method_frame(0, spec.ConnectionOpen(virtual_host="/"))
    + method_frame(1, spec.ChannelOpen())
)

CLOSE_OK_FRAME = method_frame(0, spec.ConnectionCloseOk())

connection_frames = st.one_of(
    frames,
    st.tuples(channels, methods(client_methods)).map(lambda cm: method_frame(*cm)),
    st.tuples(st.sampled_from([1, 2]), methods(client_methods)).map(lambda cm: method_frame(*cm)),
)


@st.composite
def connection_streams(draw: st.DrawFn) -> bytes:
    body = b"".join(draw(st.lists(connection_frames, max_size=10)))
    if draw(st.booleans()):
        return HANDSHAKE + body
    return draw(mutated(HANDSHAKE + body, len(HANDSHAKE)))


@pytest.fixture(scope="module")
def event_loop_for_fuzz() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


class _InternalErrors(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.ERROR)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@FUZZ
@given(connection_streams(), st.lists(st.integers(1, 700), min_size=1, max_size=6))
def test_connection_answers_hostile_bytes_with_frames_and_closes_cleanly(
    event_loop_for_fuzz: asyncio.AbstractEventLoop, data: bytes, sizes: list[int]
) -> None:
    loop = event_loop_for_fuzz
    core = BrokerCore(
        BrokerConfig(
            frame_max=CONNECTION_FRAME_MAX, max_message_size=MAX_MESSAGE_SIZE, durable_store=False
        ),
        loop,
    )
    connection = AMQPConnection(AMQPServer(core))
    transport = FakeTransport()
    errors = _InternalErrors()
    logging.getLogger("baedal").addHandler(errors)
    try:
        connection.connection_made(transport)
        for piece in _chunks(data, sizes):
            if transport.closed:
                break
            connection.data_received(piece)  # must not raise
            loop.run_until_complete(asyncio.sleep(0))  # scheduled flushes
        written = server_frames(bytes(transport.data))
        closes = [
            spec.ConnectionClose.decode(memoryview(payload)[4:])
            for frame_type, channel, payload in written
            if frame_type == 1
            and channel == 0
            and payload[:4] == struct.pack(">I", spec.ConnectionClose.INDEX)
        ]
        assert all(close.reply_code != 541 for close in closes), f"internal error: {closes}"
        event(f"connection.close {closes[0].reply_code}" if closes else f"state {connection.state}")
        if closes:
            assert connection.state in ("closing", "closed")
            partial_frame = connection.reader.buffered
            if not transport.closed:  # the client's close-ok ends it
                connection.data_received(method_frame(0, spec.ConnectionCloseOk()))
            if not transport.closed:
                # After a framing error the stream has no trustworthy frame boundary, so
                # the reader stays failed and cannot see the close-ok; nor can it when the
                # close-ok only completes a partial frame.  The close timer (5 s, pending
                # on the loop) ends the connection.
                assert connection.reader.failed is not None or partial_frame, (
                    f"close-ok ignored on a sound stream: {data[len(HANDSHAKE) :]!r} in {sizes}, "
                    f"closes {closes}, state {connection.state}"
                )
                assert connection._close_handle is not None, "no close timer pending"
                connection._close_timeout()
            assert transport.closed, "connection.close sent but the transport stays open"
        elif transport.closed:
            # Closed without connection.close: a wrong protocol header (answered with
            # ours), or the client's own connection.close (answered with close-ok) or an
            # unsolicited close-ok.
            assert (
                written[-1][0] == -1
                or written[-1][2][:4] == struct.pack(">I", spec.ConnectionCloseOk.INDEX)
                or CLOSE_OK_FRAME in data
            ), f"transport closed without a close frame: {written[-3:]}"
        assert not errors.records, [r.getMessage() for r in errors.records]
    finally:
        logging.getLogger("baedal").removeHandler(errors)
        connection.connection_lost(None)


def _connected(loop: asyncio.AbstractEventLoop) -> tuple[AMQPConnection, FakeTransport]:
    config = BrokerConfig(frame_max=CONNECTION_FRAME_MAX, max_message_size=100, durable_store=False)
    connection = AMQPConnection(AMQPServer(BrokerCore(config, loop)))
    transport = FakeTransport()
    connection.connection_made(transport)
    connection.data_received(HANDSHAKE)
    return connection, transport


def test_many_channel_faults_in_one_read_are_each_answered_with_channel_close(
    event_loop_for_fuzz: asyncio.AbstractEventLoop,
) -> None:
    connection, transport = _connected(event_loop_for_fuzz)
    header = _frame(2, 1, struct.pack(">HHQ", 60, 0, 1000) + b"\x00\x00")  # > max_message_size
    close_ok = method_frame(1, spec.ChannelCloseOk())
    publish = method_frame(1, spec.BasicPublish(routing_key="q"))
    errors = _InternalErrors()
    logging.getLogger("baedal").addHandler(errors)
    try:
        before = len(transport.data)
        connection.data_received(
            (publish + header + close_ok + method_frame(1, spec.ChannelOpen())) * 1500
        )
    finally:
        logging.getLogger("baedal").removeHandler(errors)
        connection.connection_lost(None)
    written = server_frames(bytes(transport.data[before:]))
    channel_closes = [
        p for _, ch, p in written if ch == 1 and p[:4] == struct.pack(">I", spec.ChannelClose.INDEX)
    ]
    connection_closes = [p for _, ch, p in written if ch == 0]
    assert not connection_closes, spec.ConnectionClose.decode(memoryview(connection_closes[0])[4:])
    assert len(channel_closes) == 1500
    assert not errors.records
