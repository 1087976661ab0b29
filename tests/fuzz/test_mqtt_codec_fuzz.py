"""Hypothesis over the MQTT codec (protocols/mqtt/codec.py): valid packets round-trip
for both protocol versions; any byte stream fed whole, byte by byte or in random chunks
gives the same packets and the same error; the only error is ``MQTTError``; the buffer
never holds more than one allowed packet."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import (
    Ack,
    Connect,
    MQTTError,
    Parser,
    Publish,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    encode,
)

MAX_PACKET = 2048


def outcome(chunks: list[bytes], version: int | None) -> tuple[list[object], int | None]:
    parser = Parser(MAX_PACKET, version)
    packets: list[object] = []
    for chunk in chunks:
        try:
            packets.extend(parser.feed(chunk))
        except MQTTError as exc:
            packets.extend(exc.packets)
            return packets, exc.reason_code
        assert parser.buffered <= MAX_PACKET
    return packets, None


topic_text = st.text(
    st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00+#"), min_size=1, max_size=20
)
filter_text = st.one_of(topic_text, st.sampled_from(["#", "+", "a/+/b", "a/#", "$share/g/x/#"]))
user_props = st.lists(st.tuples(topic_text, topic_text), max_size=3)


@st.composite
def v5_publish_props(draw: st.DrawFn) -> dict[str, object]:
    props: dict[str, object] = {}
    if draw(st.booleans()):
        props["message_expiry_interval"] = draw(st.integers(0, 2**32 - 1))
    if draw(st.booleans()):
        props["content_type"] = draw(topic_text)
    if draw(st.booleans()):
        props["correlation_data"] = draw(st.binary(max_size=10))
    if draw(st.booleans()):
        props["response_topic"] = draw(topic_text)
    pairs = draw(user_props)
    if pairs:
        props["user_property"] = pairs
    return props


@st.composite
def packets(draw: st.DrawFn, version: int) -> object:
    kind = draw(st.sampled_from(["publish", "ack", "subscribe", "unsubscribe", "ping", "disconnect"]))
    props = draw(v5_publish_props()) if version == 5 else {}
    pid = draw(st.integers(1, 65535))
    if kind == "publish":
        qos = draw(st.integers(0, 2))
        return Publish(draw(topic_text), draw(st.binary(max_size=50)), qos, draw(st.booleans()),
                       draw(st.booleans()) if qos else False, pid if qos else None, props)
    if kind == "ack":
        kind_id = draw(st.sampled_from([codec.PUBACK, codec.PUBREC, codec.PUBREL, codec.PUBCOMP]))
        reason = draw(st.sampled_from([0, 0x10, 0x80, 0x92])) if version == 5 else 0
        return Ack(kind_id, pid, reason)
    if kind == "subscribe":
        subs = [
            Subscription(draw(filter_text), draw(st.integers(0, 2)),
                         *((draw(st.booleans()), draw(st.booleans()), draw(st.integers(0, 2)))
                           if version == 5 else ()))
            for _ in range(draw(st.integers(1, 3)))
        ]
        return Subscribe(pid, subs, {"subscription_identifier": [draw(st.integers(1, 1000))]}
                         if version == 5 and draw(st.booleans()) else {})
    if kind == "unsubscribe":
        return Unsubscribe(pid, draw(st.lists(filter_text, min_size=1, max_size=3)))
    if kind == "ping":
        return codec.Pingreq()
    return codec.Disconnect()


@st.composite
def connect(draw: st.DrawFn, version: int) -> Connect:
    will = None
    if draw(st.booleans()):
        will = Will(draw(topic_text), draw(st.binary(max_size=20)), draw(st.integers(0, 2)),
                    draw(st.booleans()), draw(v5_publish_props()) if version == 5 else {})
    username = draw(st.one_of(st.none(), topic_text))
    password = draw(st.binary(max_size=10)) if username is not None and draw(st.booleans()) else None
    props = {"session_expiry_interval": draw(st.integers(0, 2**32 - 1))} if version == 5 else {}
    return Connect(draw(st.text("abc123", max_size=23)), version=version,
                   clean_start=draw(st.booleans()), keep_alive=draw(st.integers(0, 65535)),
                   will=will, username=username, password=password, properties=props)


@st.composite
def session(draw: st.DrawFn) -> tuple[int, list[object]]:
    version = draw(st.sampled_from([4, 5]))
    return version, [draw(connect(version))] + draw(st.lists(packets(version), max_size=6))


@settings(max_examples=300, deadline=None)
@given(session())
def test_valid_streams_round_trip(data: tuple[int, list[object]]) -> None:
    version, sent = data
    wire = b"".join(encode(p, version) for p in sent)  # type: ignore[arg-type]
    got, error = outcome([wire], None)
    assert error is None
    assert got == sent


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    chunks, last = [], 0
    for p in points:
        chunks.append(data[last:p])
        last = p
    chunks.append(data[last:])
    return chunks


@settings(max_examples=500, deadline=None)
@given(session(), st.binary(max_size=60), st.integers(0, 400), st.lists(st.integers(0, 10_000), max_size=8))
def test_whole_bytewise_chunked_agree_on_damaged_streams(
    data: tuple[int, list[object]], garbage: bytes, at: int, cuts: list[int]
) -> None:
    version, sent = data
    wire = b"".join(encode(p, version) for p in sent)  # type: ignore[arg-type]
    at = at % (len(wire) + 1)
    damaged = wire[:at] + garbage + wire[at:]
    whole = outcome([damaged], None)
    bytewise = outcome([damaged[i:i + 1] for i in range(len(damaged))], None)
    chunked = outcome(split(damaged, cuts), None)
    assert whole == bytewise == chunked


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=300), st.sampled_from([None, 4, 5]))
def test_random_bytes_only_protocol_errors(data: bytes, version: int | None) -> None:
    whole = outcome([data], version)
    assert whole == outcome([data[i:i + 1] for i in range(len(data))], version)


def test_remaining_length_is_bounded_before_the_body_arrives() -> None:
    parser = Parser(1024)
    # PUBLISH announcing 2 MB: refused from its header alone.
    try:
        parser.feed(b"\x30\x80\x80\x80\x01")
    except MQTTError as exc:
        assert exc.reason_code == codec.PACKET_TOO_LARGE
    else:
        raise AssertionError("accepted an oversized remaining length")
    # A fifth remaining-length byte is malformed whatever the limit.
    parser = Parser()
    try:
        parser.feed(b"\x30\xff\xff\xff\xff")
    except MQTTError as exc:
        assert exc.reason_code == codec.MALFORMED_PACKET
    else:
        raise AssertionError("accepted a five-byte remaining length")


def test_grammar_errors_carry_reason_codes() -> None:
    def error_of(data: bytes, version: int | None = 4) -> int:
        try:
            Parser(version=version).feed(data)
        except MQTTError as exc:
            return exc.reason_code
        raise AssertionError(f"accepted {data!r}")

    assert error_of(b"\x36\x05\x00\x01a\x00\x01") == codec.MALFORMED_PACKET  # QoS 3
    assert error_of(b"\x80\x06\x00\x01\x00\x01a\x00") == codec.MALFORMED_PACKET  # SUBSCRIBE flags 0
    assert error_of(b"\x30\x04\x00\x02\xff\xfe") == codec.MALFORMED_PACKET  # invalid UTF-8 topic
    assert error_of(b"\x30\x03\x00\x01+") == codec.TOPIC_NAME_INVALID  # wildcard in a topic
    assert error_of(b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00") == codec.MALFORMED_PACKET
    assert error_of(b"\x10\x0c\x00\x04MQTT\x07\x02\x00\x3c\x00\x00", None) == codec.UNSUPPORTED_PROTOCOL_VERSION


def one_frame_outcome(first: int, body: bytes, version: int) -> tuple[object, int | None]:
    """What ``decode_packet`` (the general, bounds-checked decoder) makes of one frame."""
    try:
        return codec.decode_packet(first >> 4, first & 0x0F, body, version), None
    except MQTTError as exc:
        return None, exc.reason_code


@st.composite
def publish_like_bodies(draw: st.DrawFn, version: int) -> bytes:
    """PUBLISH bodies, valid and nearly valid: topic length and bytes (wildcards, bad
    UTF-8, U+0000, empty), packet id (0 too), a property block (empty or not), payload."""
    topic = draw(st.one_of(
        topic_text.map(lambda t: t.encode()),
        st.sampled_from([b"", b"a/+", b"#", b"\xff\xfe", b"a\x00b", b"$SYS/x"]),
    ))
    length = len(topic) if draw(st.integers(0, 9)) else draw(st.integers(0, 70))
    body = length.to_bytes(2, "big") + topic + draw(st.sampled_from([b"", b"\x00\x00", b"\x00\x01", b"\xff\xff"]))
    if version == 5:
        body += draw(st.sampled_from([b"", b"\x00", b"\x02\x23\x00\x05", b"\x05\x01"]))
    return body + draw(st.binary(max_size=20))


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([4, 5]), st.data())
def test_inline_publish_and_puback_decode_as_the_general_decoder_does(version: int, data: st.DataObject) -> None:
    """``Parser.feed`` decodes PUBLISH and plain PUBACK inline; for every flag byte and
    body it must give the packet or the error ``decode_packet`` gives (the topic cache
    included: the same frame fed twice)."""
    first = data.draw(st.one_of(st.integers(0x30, 0x3F), st.sampled_from([0x40, 0x41, 0x42, 0x50, 0x62])))
    if first >> 4 == codec.PUBLISH:
        body = data.draw(publish_like_bodies(version))
    else:
        body = data.draw(st.one_of(st.binary(min_size=2, max_size=2), st.binary(max_size=5)))
    frame = bytes((first,)) + codec.encode_varint(len(body)) + body
    expected_packet, expected_error = one_frame_outcome(first, body, version)
    parser = Parser(MAX_PACKET, version)
    for _ in range(2):
        try:
            got = parser.feed(frame)
        except MQTTError as exc:
            assert (None, exc.reason_code) == (expected_packet, expected_error)
            return
        assert expected_error is None and got == [expected_packet]


def feed_all(chunks: list[bytes], version: int, split: object) -> tuple[list[object], object, int]:
    """Packets, error (reason and text) and buffered bytes of ``Parser.feed`` over
    ``chunks``, with the compiled split (``codec._split``) as given (None: pure Python)."""
    saved = codec._split
    codec._split = split
    try:
        parser = Parser(MAX_PACKET, version)
        packets: list[object] = []
        for chunk in chunks:
            try:
                packets.extend(parser.feed(chunk))
            except MQTTError as exc:
                packets.extend(exc.packets)
                return packets, (exc.reason_code, exc.text), parser.buffered
        return packets, None, parser.buffered
    finally:
        codec._split = saved


@st.composite
def inline_frames(draw: st.DrawFn, version: int) -> bytes:
    """One frame of what the inline path (and its C twin) sees: PUBLISH-like frames
    valid and nearly valid, PUBACK-like frames, other packet types, oversized lengths."""
    first = draw(st.one_of(st.integers(0x30, 0x3F), st.sampled_from([0x40, 0x41, 0x50, 0x62, 0xC0, 0x00])))
    if first >> 4 == codec.PUBLISH:
        body = draw(publish_like_bodies(version))
        if draw(st.integers(0, 9)) == 0:
            body += b"p" * draw(st.integers(100, 3000))  # a two-byte length, or over MAX_PACKET
    else:
        body = draw(st.one_of(st.binary(min_size=2, max_size=2), st.binary(max_size=5)))
    frame = bytes((first,)) + codec.encode_varint(len(body)) + body
    if draw(st.integers(0, 19)) == 0:
        frame = bytes((first,)) + b"\xff\xff\xff\xff\x01"  # a fifth length byte
    return frame


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([4, 5]), st.data())
def test_compiled_split_gives_what_the_python_loop_gives(version: int, data: st.DataObject) -> None:
    """``_speedups/_mqtt.c`` takes over ``Parser.feed``'s inline loop: for any stream of
    frames (each topic usually seen twice, so both the cached and the uncached case run),
    fed whole or in chunks, the same packets, error and buffer as the Python loop."""
    compiled = codec._split
    if compiled is None:
        import pytest

        pytest.skip("the compiled split is not built (or BAEDAL_NO_SPEEDUPS is set)")
    frames = data.draw(st.lists(inline_frames(version), min_size=1, max_size=8))
    stream = b"".join(frame * data.draw(st.integers(1, 3)) for frame in frames)
    for chunks in ([stream], split(stream, data.draw(st.lists(st.integers(0, 10_000), max_size=6)))):
        assert feed_all(chunks, version, compiled) == feed_all(chunks, version, None)


def test_compiled_split_stops_where_python_must_decide() -> None:
    """A table of the cases the C loop leaves to Python (and the one it takes)."""
    compiled = codec._split
    if compiled is None:
        import pytest

        pytest.skip("the compiled split is not built (or BAEDAL_NO_SPEEDUPS is set)")
    topics = {b"a/b": "a/b"}
    cases = [
        (b"\x32\x09\x00\x03a/b\x00\x07hi", 11),  # cached topic, QoS 1: taken
        (b"\x30\x07\x00\x03a/bhi", 9),  # QoS 0: taken
        (b"\x40\x02\x00\x05", 4),  # PUBACK: taken
        (b"\x32\x09\x00\x03a/c\x00\x07hi", 0),  # topic not cached yet
        (b"\x32\x09\x00\x03a/b\x00\x00hi", 0),  # packet id 0
        (b"\x38\x07\x00\x03a/bhi", 0),  # DUP on QoS 0
        (b"\x36\x09\x00\x03a/b\x00\x07hi", 0),  # QoS 3
        (b"\x40\x02\x00\x00", 0),  # PUBACK id 0
        (b"\x40\x03\x00\x05\x00", 0),  # PUBACK with a reason code
        (b"\x32\x09\x00\x03a/b\x00\x07h", 0),  # incomplete
        (b"\x30\xff\xff\xff\xff\x01", 0),  # a fifth length byte
        (b"\xc0\x00", 0),  # PINGREQ
    ]
    for wire, taken in cases:
        got: list[object] = []
        assert compiled(wire, 0, 4, topics, MAX_PACKET, got.append, Publish, Ack) == taken, wire
        assert len(got) == (1 if taken else 0)
    got = []
    assert compiled(b"\x32\x09\x00\x03a/b\x00\x07hi", 0, 4, topics, 10, got.append, Publish, Ack) == 0  # too large
    assert compiled(b"\x40\x02\x00\x05", 0, 4, None, MAX_PACKET, got.append, Publish, Ack) == 4
    assert got == [Ack(codec.PUBACK, 5)]
