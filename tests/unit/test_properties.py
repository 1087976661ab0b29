"""Basic properties blocks and field tables: encode/decode, the publish fast path
(``scan_properties``) against the full decode, and malformed input."""

from __future__ import annotations

import struct
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.core.properties import DecodeError, Timestamp, decode_table, encode_table
from baedal.protocols.amqp.properties import (
    PROPERTY_NAMES,
    BasicProperties,
    decode_properties,
    encode_properties,
    scan_properties,
)

short = st.text(st.characters(exclude_categories=("Cs",)), max_size=12).filter(
    lambda s: len(s.encode()) <= 255
)
header_tables = st.dictionaries(
    st.text(st.characters(exclude_categories=("Cs",)), max_size=6),
    st.one_of(
        st.integers(-(2**31), 2**31 - 1), short, st.booleans(), st.none(), st.binary(max_size=8)
    ),
    max_size=4,
)
properties = st.builds(
    BasicProperties,
    content_type=st.none() | short,
    content_encoding=st.none() | short,
    headers=st.none() | header_tables,
    delivery_mode=st.none() | st.integers(0, 255),
    priority=st.none() | st.integers(0, 255),
    correlation_id=st.none() | short,
    reply_to=st.none() | short,
    expiration=st.none() | st.text("0123456789", max_size=8),
    message_id=st.none() | short,
    timestamp=st.none() | st.integers(0, 2**64 - 1).map(Timestamp),
    type=st.none() | short,
    user_id=st.none() | short,
    app_id=st.none() | short,
    cluster_id=st.none() | short,
)


@settings(max_examples=300, deadline=None)
@given(properties)
def test_property_blocks_round_trip(props: BasicProperties) -> None:
    block = encode_properties(props)
    decoded = decode_properties(block)
    if props.headers == {}:
        # an empty table is still sent (flag set, four zero bytes) and comes back empty
        assert decoded.headers == {}
    assert decoded == props


@settings(max_examples=300, deadline=None)
@given(properties)
def test_scan_properties_agrees_with_the_full_decode(props: BasicProperties) -> None:
    block = encode_properties(props)
    full = decode_properties(block)
    assert scan_properties(block) == (full.delivery_mode or 0, full.priority or 0, full.expiration)


@settings(max_examples=300, deadline=None)
@given(properties, st.data())
def test_truncated_blocks_raise_decode_error_in_both_decoders(
    props: BasicProperties, data: st.DataObject
) -> None:
    block = encode_properties(props)
    if len(block) <= 2:
        return
    cut = block[: data.draw(st.integers(0, len(block) - 1))]
    with pytest.raises(DecodeError):
        decode_properties(cut)
    try:
        scan_properties(cut)
    except DecodeError:
        pass  # the fast path reads only what it needs: a cut past those fields is fine


FLAGS = {name: 1 << (15 - i) for i, name in enumerate(PROPERTY_NAMES)}


@pytest.mark.parametrize(
    ("block", "expected"),
    [
        (b"\x00\x00", BasicProperties()),
        (b"\x10\x00\x02", BasicProperties(delivery_mode=2)),
        (
            b"\x90\x00\x0atext/plain\x01",
            BasicProperties(content_type="text/plain", delivery_mode=1),
        ),
        (
            struct.pack(">H", FLAGS["headers"] | FLAGS["priority"])
            + encode_table({"a": 1})
            + b"\x05",
            BasicProperties(headers={"a": 1}, priority=5),
        ),
        (
            struct.pack(">H", FLAGS["expiration"] | FLAGS["reply_to"]) + b"\x02rt\x0560000",
            BasicProperties(reply_to="rt", expiration="60000"),
        ),
        (
            struct.pack(">H", FLAGS["timestamp"]) + struct.pack(">Q", 1700000000),
            BasicProperties(timestamp=1700000000),
        ),
    ],
    ids=[
        "empty",
        "persistent",
        "content-type",
        "headers-priority",
        "reply-to-expiration",
        "timestamp",
    ],
)
def test_property_blocks_decode_field_by_field(block: bytes, expected: BasicProperties) -> None:
    assert decode_properties(block) == expected
    assert encode_properties(expected) == block
    assert scan_properties(block) == (
        expected.delivery_mode or 0,
        expected.priority or 0,
        expected.expiration,
    )


@pytest.mark.parametrize(
    "block",
    [
        b"",
        b"\x80",
        b"\x00\x01",  # continuation flag
        b"\x00\x02",  # reserved bit
        b"\x80\x00\x05ab",  # short string runs past the end
        b"\x20\x00\x00\x00\x00\x09\x01a",  # table runs past the end
        b"\x10\x00\x02\x00",  # trailing byte
        struct.pack(">H", FLAGS["timestamp"]) + b"\x00\x01",
    ],
    ids=[
        "empty",
        "one-byte",
        "continuation",
        "reserved",
        "short-string",
        "table",
        "trailing",
        "timestamp",
    ],
)
def test_malformed_property_blocks_raise_decode_error(block: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_properties(block)


@pytest.mark.parametrize(
    ("wire", "value"),
    [
        (b"t\x01", True),
        (b"b\xff", -1),
        (b"B\xff", 255),
        (b"s\xff\xfe", -2),
        (b"u\xff\xfe", 65534),
        (b"I\xff\xff\xff\xff", -1),
        (b"i\xff\xff\xff\xff", 2**32 - 1),
        (b"l" + struct.pack(">q", -(2**40)), -(2**40)),
        (b"L" + struct.pack(">q", 2**40), 2**40),
        (b"f" + struct.pack(">f", 0.5), 0.5),
        (b"d" + struct.pack(">d", -2.25), -2.25),
        (b"D\x02" + struct.pack(">i", 12345), Decimal("123.45")),
        (b"S\x00\x00\x00\x03abc", "abc"),
        (b"S\x00\x00\x00\x01\xff", b"\xff"),  # not UTF-8: kept as bytes
        (b"x\x00\x00\x00\x02\x00\x01", b"\x00\x01"),
        (b"T" + struct.pack(">Q", 99), Timestamp(99)),
        (b"V", None),
        (b"\x00", None),
        (b"A\x00\x00\x00\x04b\x01t\x00", [1, False]),
        (b"F\x00\x00\x00\x06\x01kb\x07", None),  # replaced below: nested table
    ],
)
def test_every_rabbitmq_field_tag_decodes(wire: bytes, value: object) -> None:
    if wire.startswith(b"F"):
        wire = b"F" + struct.pack(">I", 4) + b"\x01kb\x07"
        value = {"k": 7}
    table_bytes = struct.pack(">I", 2 + len(wire)) + b"\x01v" + wire
    decoded, end = decode_table(table_bytes)
    assert end == len(table_bytes)
    assert decoded == {"v": value}
    assert type(decoded["v"]) is type(value)


@pytest.mark.parametrize(
    "wire",
    [
        b"\x00\x00\x00\x05\x01ab",  # key/value past the end
        b"\x00\x00\x00\x02\x01k",  # value missing
        b"\x00\x00\x00\x03\x01kZ",  # unknown tag
        b"\x00\x00\x00\x06\x01kI\x00\x00",  # int cut short
        b"\x00\x00\x00\x08\x01kA\x00\x00\x00\x09",  # array longer than the table
    ],
)
def test_malformed_field_tables_raise_decode_error(wire: bytes) -> None:
    with pytest.raises(DecodeError):
        decode_table(wire)


def test_deeply_nested_tables_are_refused_not_a_recursion_error() -> None:
    inner = encode_table({})
    for _ in range(200):
        inner = struct.pack(">I", len(inner) + 3) + b"\x01kF" + inner
    with pytest.raises(DecodeError):
        decode_table(inner)


def test_encode_table_normalises_and_refuses_what_it_cannot_send() -> None:
    assert decode_table(encode_table({"big": 2**40, "small": 1, "t": Timestamp(5)}))[0] == {
        "big": 2**40,
        "small": 1,
        "t": 5,
    }
    with pytest.raises(ValueError):
        encode_table({"too big": 2**64})
    with pytest.raises(ValueError):
        encode_table({"k" * 256: 1})
    with pytest.raises(ValueError):
        encode_table({"obj": object()})
