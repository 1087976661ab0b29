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
