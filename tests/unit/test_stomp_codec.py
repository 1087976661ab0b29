"""The STOMP codec's rules, one per test (protocols/stomp/codec.py)."""

from __future__ import annotations

import pytest

from baedal.protocols.stomp.codec import (
    SERVER_COMMANDS,
    Frame,
    FrameReader,
    StompError,
    encode_frame,
    negotiate_version,
    parse_heart_beat,
)


def test_frame_with_lf_and_crlf_line_ends_and_heart_beats_between_frames() -> None:
    reader = FrameReader()
    data = b"\n\r\nSEND\r\ndestination:/queue/a\r\n\r\nhello\x00\n\nBEGIN\ntransaction:t\n\n\x00\r\n"
    frames = reader.feed(data)
    assert frames == [
        Frame("SEND", [("destination", "/queue/a")], b"hello"),
        Frame("BEGIN", [("transaction", "t")], b""),
    ]


def test_content_length_body_may_contain_nul() -> None:
    reader = FrameReader()
    frames = reader.feed(b"SEND\ndestination:/queue/a\ncontent-length:5\n\na\x00b\x00c\x00")
    assert frames[0].body == b"a\x00b\x00c"


def test_body_longer_than_content_length_is_an_error() -> None:
    with pytest.raises(StompError, match="content-length"):
        FrameReader().feed(b"SEND\ncontent-length:1\n\nab\x00")


def test_repeated_header_first_wins_but_all_are_kept() -> None:
    frame = FrameReader().feed(b"SEND\nfoo:1\nfoo:2\n\n\x00")[0]
    assert frame.get("foo") == "1"
    assert frame.headers == [("foo", "1"), ("foo", "2")]


@pytest.mark.parametrize(
    ("version", "raw", "value"),
    [
        ("1.2", b"a\\nb\\cc\\\\d\\re", "a\nb:c\\d\re"),
        ("1.1", b"a\\nb\\cc\\\\d", "a\nb:c\\d"),
        ("1.0", b"a\\nb\\c", "a\\nb\\c"),  # 1.0 has no escaping
    ],
)
def test_header_unescaping_per_version(version: str, raw: bytes, value: str) -> None:
    frame = FrameReader(version=version).feed(b"SEND\nx:" + raw + b"\n\n\x00")[0]
    assert frame.get("x") == value


def test_carriage_return_escape_is_undefined_in_1_1() -> None:
    with pytest.raises(StompError, match="undefined escape"):
        FrameReader(version="1.1").feed(b"SEND\nx:a\\rb\n\n\x00")


def test_undefined_escape_is_fatal() -> None:
    with pytest.raises(StompError, match="undefined escape"):
        FrameReader().feed(b"SEND\nx:a\\tb\n\n\x00")


def test_connect_headers_are_not_unescaped() -> None:
    frame = FrameReader().feed(b"CONNECT\npasscode:a\\tb\n\n\x00")[0]
    assert frame.get("passcode") == "a\\tb"


@pytest.mark.parametrize("version", ["1.1", "1.2"])
def test_encode_escapes_and_reader_restores(version: str) -> None:
    value = "x:y\nz\\w"
    data = encode_frame("MESSAGE", [("h", value)], b"b", version)
    reader = FrameReader(commands=SERVER_COMMANDS, version=version)
    assert reader.feed(data)[0].get("h") == value


def test_negative_or_non_decimal_content_length_is_refused() -> None:
    for value in (b"-1", b"+5", b" 5", b"0x10", b""):
        with pytest.raises(StompError, match="content-length"):
            FrameReader().feed(b"SEND\ncontent-length:" + value + b"\n\n")


def test_huge_content_length_is_refused_before_the_body_arrives() -> None:
    reader = FrameReader(max_body=1024)
    with pytest.raises(StompError, match="Frame too large"):
        reader.feed(b"SEND\ncontent-length:1073741824\n\n")
    assert reader.buffered == 0


def test_body_without_content_length_is_bounded() -> None:
    reader = FrameReader(max_body=100)
    reader.feed(b"SEND\n\n" + b"x" * 100)
    with pytest.raises(StompError, match="Frame too large"):
        reader.feed(b"x")


def test_header_line_limit_applies_before_its_end_arrives() -> None:
    reader = FrameReader(max_header_line=50)
    with pytest.raises(StompError, match="Header too long"):
        reader.feed(b"SEND\nx:" + b"a" * 60)


def test_header_count_and_total_limits() -> None:
    with pytest.raises(StompError, match="Too many headers"):
        FrameReader(max_headers=3).feed(b"SEND\n" + b"a:1\n" * 4 + b"\n\x00")
    with pytest.raises(StompError, match="Headers too large"):
        FrameReader(max_header_bytes=100).feed(b"SEND\n" + b"abcdefgh:1\n" * 20)


def test_unknown_command_and_header_without_colon_are_errors() -> None:
    with pytest.raises(StompError, match="Invalid command"):
        FrameReader().feed(b"FROB\n\n\x00")
    with pytest.raises(StompError, match="no ':'"):
        FrameReader().feed(b"SEND\nnocolon\n\n\x00")


def test_body_on_a_frame_that_must_not_have_one_is_an_error() -> None:
    with pytest.raises(StompError, match="must not have a body"):
        FrameReader().feed(b"SUBSCRIBE\nid:1\n\nxyz\x00")


def test_errors_are_sticky_and_earlier_frames_are_handed_over() -> None:
    reader = FrameReader()
    with pytest.raises(StompError) as info:
        reader.feed(b"BEGIN\ntransaction:a\n\n\x00FROB\n\n\x00")
    assert [f.command for f in info.value.frames] == ["BEGIN"]  # type: ignore[attr-defined]
    with pytest.raises(StompError):
        reader.feed(b"BEGIN\ntransaction:b\n\n\x00")


def test_version_negotiation_and_heart_beat() -> None:
    assert negotiate_version(None) == "1.0"
    assert negotiate_version("1.0,1.1,1.2") == "1.2"
    assert negotiate_version("1.1,1.0") == "1.1"
    assert negotiate_version("2.0") is None
    assert parse_heart_beat("10,20") == (10, 20)
    assert parse_heart_beat(None) == (0, 0)
    with pytest.raises(StompError):
        parse_heart_beat("x,1")


def test_reader_pauses_after_connect_so_the_version_applies_to_what_follows() -> None:
    reader = FrameReader()
    frames = reader.feed(b"CONNECT\naccept-version:1.0\n\n\x00SEND\nx:a\\tb\n\n\x00")
    assert [f.command for f in frames] == ["CONNECT"]
    reader.version = "1.0"
    assert reader.feed(b"")[0].get("x") == "a\\tb"
