"""The two functions that map a (protocol-neutral) message onto a stream record and
back, and the AMQP adapter's splice of the ``x-stream-offset`` header into a properties
block."""

from __future__ import annotations

from decimal import Decimal

import pytest

from baedal.core.message import Message
from baedal.core.properties import Timestamp
from baedal.core.stream import (
    EXCHANGE_HEADER,
    TYPED_HEADERS_HEADER,
    message_to_record,
    parse_interval,
    record_to_message,
    start_from_argument,
)
from baedal.protocols.amqp.channel import with_stream_offset
from baedal.protocols.amqp.properties import (
    AmqpExtension,
    BasicProperties,
    decode_properties,
    encode_properties,
    wire_extension,
)

TYPED_HEADERS = {
    "small": 7,
    "big": 2**40,
    "text": "héllo",
    "flag": True,
    "when": Timestamp(1_700_000_000),
    "price": Decimal("12.50"),
    "nested": {"a": [1, "two", None]},
    "raw": b"\x00\x01",
}


def _message(props: BasicProperties, routing_key: str = "orders.new", exchange: str = "shop") -> Message:
    """A message as the AMQP adapter makes it from a publish: flags, and the raw block
    in its extension."""
    block = encode_properties(props)
    return Message(
        exchange, routing_key, b"body", props.delivery_mode == 2, props.priority or 0,
        extension=AmqpExtension(block),
    )


def _block(message: Message) -> bytes:
    block = wire_extension(message).properties
    assert block is not None
    return block


def test_an_amqp_message_comes_back_exactly_as_published() -> None:
    props = BasicProperties(
        content_type="application/json", headers=TYPED_HEADERS, delivery_mode=2, priority=3,
        correlation_id="c-1", reply_to="replies", message_id="m-1", timestamp=Timestamp(1234),
        type="created", app_id="shop",
    )
    message = _message(props)
    key, value, headers, timestamp_ms = message_to_record(message)
    assert key == b"orders.new" and value == b"body" and timestamp_ms > 0
    back = record_to_message(key, value, headers, timestamp_ms)
    # every typed value, byte for byte, rebuilt from neutral fields + AMQP leftovers
    assert _block(back) == encode_properties(props)
    assert (back.exchange, back.routing_key, back.body) == ("shop", "orders.new", b"body")
    assert back.persistent and back.priority == 3


def test_neutral_headers_describe_the_message_for_other_protocols() -> None:
    props = BasicProperties(content_type="text/plain", message_id="m-9", headers={"n": 5, "s": "x"}, delivery_mode=2)
    _key, _value, headers, _ts = message_to_record(_message(props))
    named = dict(headers)
    assert named[EXCHANGE_HEADER] == b"shop"
    assert named["content-type"] == b"text/plain" and named["message-id"] == b"m-9"
    assert named["n"] == b"5" and named["s"] == b"x"
    assert TYPED_HEADERS_HEADER in named
    # nothing AMQP-shaped: no properties block among the headers
    assert not any(name.startswith("x-baedal-") and "amqp-prop" in name for name in named)


def test_a_message_with_delivery_mode_alone_costs_one_header() -> None:
    _key, _value, headers, _ts = message_to_record(_message(BasicProperties(delivery_mode=2)))
    assert [name for name, _v in headers] == [EXCHANGE_HEADER]


def test_amqp_only_properties_travel_as_the_amqp_leftovers() -> None:
    message = _message(BasicProperties(delivery_mode=2, type="created", app_id="shop"))
    _key, _value, headers, _ts = message_to_record(message)
    assert [name for name, _v in headers] == [EXCHANGE_HEADER, "x-baedal-ext-amqp"]


def test_a_transient_message_reads_back_transient() -> None:
    message = _message(BasicProperties(content_type="x"))
    back = record_to_message(*message_to_record(message))
    assert not back.persistent
    assert _block(back) == encode_properties(BasicProperties(content_type="x"))


def test_a_neutral_message_round_trips_without_any_amqp_part() -> None:
    message = Message.build(
        "ex", "k", b"v", persistent=True, headers={"a": 1, "b": "c"}, content_type="t", correlation_id="c",
        timestamp=99,
    )
    back = record_to_message(*message_to_record(message))
    assert back.extension is None
    assert back.fields() == message.fields()


def test_a_record_from_another_protocol_reads_back_with_amqp_properties() -> None:
    headers = [("content-type", b"text/plain"), ("message-id", b"k-1"), ("trace", b"abc"), ("priority", b"4")]
    message = record_to_message(b"topic-key", b"payload", headers, 1_700_000_000_000)
    assert message.content_type == "text/plain" and message.headers == {"trace": "abc"}
    props = decode_properties(_block(message))
    assert props.content_type == "text/plain" and props.message_id == "k-1" and props.priority == 4
    assert props.headers == {"trace": "abc"}
    assert (message.exchange, message.routing_key, message.body) == ("", "topic-key", b"payload")
    assert message.published_at == 1_700_000_000


@pytest.mark.parametrize(
    "props",
    [
        BasicProperties(),
        BasicProperties(delivery_mode=2),
        BasicProperties(content_type="text/plain", content_encoding="gzip", delivery_mode=2),
        BasicProperties(content_type="a", headers={"x": 1, "y": "z"}, message_id="m"),
        BasicProperties(headers={}),
    ],
)
def test_x_stream_offset_is_spliced_into_any_properties_block(props: BasicProperties) -> None:
    spliced = decode_properties(with_stream_offset(encode_properties(props), 2**33 + 5))
    assert spliced.headers == {**(props.headers or {}), "x-stream-offset": 2**33 + 5}
    for name in ("content_type", "content_encoding", "delivery_mode", "message_id"):
        assert getattr(spliced, name) == getattr(props, name)


@pytest.mark.parametrize(
    "text, seconds",
    [("7D", 7 * 86400), ("1h", 3600), ("30m", 1800), ("10s", 10), ("1Y", 365 * 86400), ("1M", 30 * 86400)],
)
def test_rabbitmq_intervals(text: str, seconds: int) -> None:
    assert parse_interval(text) == seconds


@pytest.mark.parametrize("text", ["0s", "1d", "1x", "h", "", "-1h", "1.5h"])
def test_not_intervals(text: str) -> None:
    assert parse_interval(text) is None


def test_x_stream_offset_forms() -> None:
    assert start_from_argument(None) == ("next", None)
    assert start_from_argument("first") == ("first", None)
    assert start_from_argument(42) == (42, None)
    assert start_from_argument(-1) == (0, None)
    assert start_from_argument(Timestamp(1000)) == ("first", 1_000_000)
    assert start_from_argument("1h", now=10_000.0) == ("first", (10_000 - 3600) * 1000)
