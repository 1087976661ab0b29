"""Hypothesis against the STOMP codec (protocols/stomp/codec.py).

* Generated frames (valid ones with escaped headers, content-length bodies holding NULs,
  heart-beat EOLs between them, CRLF or LF line ends) and hostile mutations of the whole
  stream (flipped bytes, cuts, inserted garbage): fed whole, one byte at a time and in
  random chunks, the three feeds give the same frames and the same error, the only
  exception is ``StompError``, the buffer never exceeds its bound, and an error is sticky.
* Round trip: ``encode_frame`` then ``FrameReader.feed`` gives back the frame, for every
  version's escaping.
* Limits are enforced before the bytes they limit arrive.
"""

from __future__ import annotations

import asyncio
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal.protocols.stomp.codec import (
    CLIENT_COMMANDS,
    Frame,
    FrameReader,
    StompError,
    encode_frame,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LIMITS = {"max_headers": 8, "max_header_line": 200, "max_header_bytes": 600, "max_body": 300}

header_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=20
)
header_name = header_text.filter(lambda s: s != "content-length")


@st.composite
def frames(draw: st.DrawFn, version: str = "1.2") -> Frame:
    command = draw(st.sampled_from(sorted(CLIENT_COMMANDS)))
    if command in ("CONNECT", "STOMP") and version == "1.0":
        command = "SEND"
    headers = draw(st.lists(st.tuples(header_name, header_text), max_size=4))
    if version == "1.0" or command in ("CONNECT", "STOMP"):  # never escaped
        headers = [(n.replace("\n", " ").replace(":", "_").replace("\r", "_"), v.replace("\n", " ").replace("\r", "_")) for n, v in headers]
    elif version == "1.1":
        headers = [(n.replace("\r", "_"), v.replace("\r", "_")) for n, v in headers]
    body = draw(st.binary(max_size=40)) if command == "SEND" else b""
    if body:
        headers.append(("content-length", str(len(body))))
    return Frame(command, headers, body)


@st.composite
def streams(draw: st.DrawFn) -> bytes:
    parts = []
    for frame in draw(st.lists(frames(), max_size=5)):
        parts.append(draw(st.sampled_from([b"", b"\n", b"\r\n", b"\n\n"])))
        data = encode_frame(frame.command, frame.headers, frame.body)
        if draw(st.booleans()):
            # CRLF line ends in the head (1.2), the body left alone.
            head, sep, rest = data.partition(b"\n\n")
            data = head.replace(b"\n", b"\r\n") + b"\r\n\r\n" + rest
        parts.append(data)
    stream = b"".join(parts)
    mutation = draw(st.sampled_from(["none", "flip", "cut", "insert", "none"]))
    if stream and mutation == "flip":
        i = draw(st.integers(0, len(stream) - 1))
        stream = stream[:i] + bytes([draw(st.integers(0, 255))]) + stream[i + 1 :]
    elif stream and mutation == "cut":
        stream = stream[: draw(st.integers(0, len(stream)))]
    elif mutation == "insert":
        i = draw(st.integers(0, len(stream)))
        stream = stream[:i] + draw(st.binary(min_size=1, max_size=30)) + stream[i:]
    return stream


def run(chunks: list[bytes]) -> tuple[list[Frame], str | None]:
    reader = FrameReader(**LIMITS)
    out: list[Frame] = []
    bound = LIMITS["max_header_bytes"] + LIMITS["max_body"] + 2
    for chunk in chunks:
        try:
            frames = reader.feed(chunk)
            while frames and frames[-1].command in ("CONNECT", "STOMP"):
                out.extend(frames)  # the reader pauses after CONNECT (codec.py)
                frames = reader.feed(b"")
            out.extend(frames)
        except StompError as exc:
            out.extend(exc.frames)  # type: ignore[attr-defined]
            # Sticky: the reader stays broken.
            try:
                reader.feed(b"\n")
            except StompError as again:
                assert again is exc
            else:
                raise AssertionError("an errored reader accepted more input") from None
            return out, exc.message
        # Bounded: what it holds for an unfinished frame is at most one chunk past a limit.
        assert reader.buffered <= bound + len(chunk)
    return out, None


@FUZZ
@given(streams(), st.data())
def test_whole_bytewise_and_chunked_feeds_agree_and_only_raise_stomp_error(stream: bytes, data: st.DataObject) -> None:
    whole = run([stream])
    bytewise = run([stream[i : i + 1] for i in range(len(stream))])
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=8)))
    chunks = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
    chunked = run(chunks)
    assert whole == bytewise == chunked


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes_only_raise_stomp_error(stream: bytes) -> None:
    assert run([stream]) == run([stream[i : i + 1] for i in range(len(stream))])


@FUZZ
@given(st.sampled_from(["1.0", "1.1", "1.2"]).flatmap(lambda v: st.tuples(st.just(v), st.lists(frames(v), max_size=4))))
def test_encode_then_decode_round_trips_in_every_version(case: tuple[str, list[Frame]]) -> None:
    version, items = case
    reader = FrameReader(version=version)
    stream = b"".join(encode_frame(f.command, f.headers, f.body, version) for f in items)
    decoded = reader.feed(stream)
    while decoded and decoded[-1].command in ("CONNECT", "STOMP") and len(decoded) < len(items):
        decoded += reader.feed(b"")
    assert decoded == items


# --- the connection over a fake transport --------------------------------------------------


class FakeTransport:
    """Records writes; knows whether it was closed."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else default

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
        pass

    def resume_reading(self) -> None:
        pass


_DESTINATIONS = ["/queue/f", "/topic/a.b", "/exchange/amq.direct/k", "/amq/queue/f", "/temp-queue/t", "/reply-queue/f", "/bad/x", ""]


@st.composite
def sessions(draw: st.DrawFn) -> bytes:
    """A login, then frames with plausible and hostile headers, then mutations."""
    parts = [encode_frame("CONNECT", [("accept-version", draw(st.sampled_from(["1.0", "1.1", "1.2", "1.0,1.2", "9"]))), ("host", "/")])]
    for _ in range(draw(st.integers(0, 8))):
        command = draw(st.sampled_from(sorted(CLIENT_COMMANDS)))
        headers = [
            (name, draw(st.sampled_from(values)))
            for name, values in (
                ("destination", _DESTINATIONS),
                ("id", ["1", "2", "x"]),
                ("ack", ["auto", "client", "client-individual", "nope"]),
                ("transaction", ["t1", "t2"]),
                ("receipt", ["r"]),
                ("message-id", ["1", "2", "99"]),
                ("requeue", ["false", "true"]),
                ("prefetch-count", ["1", "-1", "x"]),
                ("durable", ["true"]),
                ("persistent", ["true"]),
                ("priority", ["5", "-3", "999999999999999999999"]),
                ("expiration", ["0", "10", "x"]),
                ("selector", ["a = 1"]),
                ("x-max-length", ["1", "x"]),
                ("reply-to", ["/temp-queue/r", "plain"]),
            )
            if draw(st.booleans())
        ]
        body = draw(st.binary(max_size=20)) if command == "SEND" else b""
        parts.append(encode_frame(command, headers, body))
    stream = b"".join(parts)
    if draw(st.booleans()) and stream:
        i = draw(st.integers(0, len(stream) - 1))
        stream = stream[:i] + draw(st.binary(min_size=1, max_size=8)) + stream[i + 1 :]
    return stream


@FUZZ
@given(sessions(), st.lists(st.integers(1, 200), min_size=1, max_size=5))
def test_connection_answers_hostile_frames_with_stomp_frames_and_never_an_internal_error(
    data: bytes, sizes: list[int]
) -> None:
    from baedal.core.broker import BrokerConfig, BrokerCore
    from baedal.protocols.stomp.codec import SERVER_COMMANDS
    from baedal.protocols.stomp.server import StompConfig, StompConnection, StompServer

    loop = asyncio.new_event_loop()
    try:
        core = BrokerCore(BrokerConfig(durable_store=False), loop)
        server = StompServer(core, StompConfig(max_body=1000))
        connection = StompConnection(server)
        transport = FakeTransport()
        connection.connection_made(transport)
        position = 0
        for size in sizes * (len(data) // max(1, sum(sizes)) + 1):
            if transport.closed or position >= len(data):
                break
            connection.data_received(data[position : position + size])  # must not raise
            position += size
            loop.run_until_complete(asyncio.sleep(0))
        connection.connection_lost(None)
        loop.run_until_complete(asyncio.sleep(0))
        # What the broker wrote is well-formed STOMP, and no ERROR says "Internal error".
        written = FrameReader(commands=SERVER_COMMANDS, max_body=1 << 20).feed(bytes(transport.data))
        assert all(f.get("message") != "Internal error" for f in written), [f.body for f in written]
        errors = [f for f in written if f.command == "ERROR"]
        if errors:
            assert written[-1].command == "ERROR" and transport.closed  # ERROR, then close
        # Nothing leaks: the connection is gone from the broker and owns no queue.
        assert connection.id not in core.connections
        assert not any(q.exclusive_owner is connection for v in core.vhosts.values() for q in v.queues.values())
    finally:
        loop.close()
