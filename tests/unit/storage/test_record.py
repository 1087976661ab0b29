"""storage/record.py: the neutral, versioned record -- every field round-trips, a
protocol's leftovers come back to its adapter, and legacy (0.1.0 .. issue 9) records
still decode, their AMQP properties block read only by the AMQP adapter."""

from __future__ import annotations

import struct
import time
from decimal import Decimal

import pytest

from baedal.core.message import Message, StoredExtension
from baedal.core.properties import Timestamp
from baedal.protocols.amqp.properties import (
    AmqpExtension,
    BasicProperties,
    encode_properties,
    properties_of,
)
from baedal.storage import record
from baedal.storage.record import (
    RecordError,
    body_size,
    decode_record,
    encode_record,
    record_has_deadline,
    record_priority,
)

HEADERS = {
    "s": "café",
    "i": -5,
    "l": 2**40,
    "t": True,
    "d": 2.5,
    "dec": Decimal("3.14"),
    "ts": Timestamp(1700000000),
    "x": b"\x00\xff",
    "a": [1, "two", [3]],
    "f": {"nested": {"n": 1}},
    "v": None,
}
_LEGACY_META = struct.Struct("<BBHHIQdd")


def legacy_record(block: bytes, body: bytes, *, flags: int = 1, priority: int = 0,
                  expiration: int = 0, expires_at: float = 0.0) -> bytes:
    """A record exactly as Baedal 0.1.0 .. issue 9 wrote it."""
    exchange, routing_key = b"ex", b"rk"
    meta = _LEGACY_META.pack(
        flags, priority, len(exchange), len(routing_key), len(block), expiration, 0.0, expires_at
    )
    return meta + exchange + routing_key + block + body


def test_every_neutral_field_round_trips() -> None:
    original = Message.build(
        "ex", "a.b", b"body", persistent=True, priority=9, expiration_ms=60_000,
        published_at=12.5, headers=HEADERS, content_type="application/json",
        content_encoding="gzip", correlation_id="c-1", reply_to="replies",
        message_id="m-1", user_id="guest", timestamp=1700000001,
    )
    payload = encode_record(original, 1e9)
    assert payload[0] == record.VERSION
    decoded, expires_at = decode_record(payload)
    assert decoded.fields() == original.fields()
    assert isinstance(decoded.headers["ts"], Timestamp)  # type: ignore[index]
    assert (decoded.persistent, decoded.priority, decoded.expiration_ms, decoded.published_at) == (
        True, 9, 60_000, 12.5,
    )
    assert decoded.body == b"body" and expires_at == 1e9
    assert decoded.extension is None
    assert body_size(payload) == 4 and record_priority(payload) == 9
    assert record_has_deadline(payload)


def test_no_headers_and_empty_headers_stay_apart() -> None:
    empty, _ = decode_record(encode_record(Message.build("", "q", b"", headers={}), None))
    none, _ = decode_record(encode_record(Message.build("", "q", b""), None))
    assert empty.headers == {} and none.headers is None


def test_a_message_without_fields_costs_no_fields_section() -> None:
    payload = encode_record(Message("", "q", b"x" * 10, True), None)
    assert len(payload) == struct.calcsize("<BBBHHIQdd") + 1 + 10
    assert not record_has_deadline(payload)


def test_amqp_leftovers_are_stored_tagged_and_given_back_to_the_adapter() -> None:
    block = encode_properties(
        BasicProperties(content_type="text/plain", delivery_mode=1, priority=0, type="t",
                        app_id="app", cluster_id="c", headers={"h": 1})
    )
    published = Message("ex", "rk", b"body", False, 0, None, 0.0, AmqpExtension(block))
    payload = encode_record(published, None)
    assert block not in payload  # neutral fields, not the AMQP block
    assert b"amqp" in payload
    decoded, _ = decode_record(payload)
    assert isinstance(decoded.extension, AmqpExtension) and decoded.extension.properties is None
    assert decoded.content_type == "text/plain" and decoded.headers == {"h": 1}
    assert properties_of(decoded) == properties_of(published)


def test_an_unknown_protocols_leftovers_survive_opaque() -> None:
    message = Message.build("", "q", b"", extension=StoredExtension("kafka", b"\x01\x02"))
    decoded, _ = decode_record(encode_record(message, None))
    assert isinstance(decoded.extension, StoredExtension)
    assert (decoded.extension.protocol, decoded.extension.data) == ("kafka", b"\x01\x02")


def test_legacy_record_decodes_its_properties_block_lazily_through_the_adapter() -> None:
    block = encode_properties(
        BasicProperties(content_type="text/plain", headers={"h": "v"}, delivery_mode=2,
                        priority=4, expiration="5000", type="kind")
    )
    payload = legacy_record(block, b"old body", flags=1 | 2, priority=4, expiration=5000)
    message, expires_at = decode_record(payload)
    assert expires_at is None
    assert isinstance(message.extension, AmqpExtension) and message.extension.properties == block
    assert (message.persistent, message.priority, message.expiration_ms) == (True, 4, 5000)
    assert message.headers == {"h": "v"} and message.content_type == "text/plain"
    assert properties_of(message).type == "kind"
    assert body_size(payload) == len(b"old body") and record_priority(payload) == 4


def test_legacy_record_with_a_wall_clock_deadline_keeps_it() -> None:
    deadline = time.time() + 100
    payload = legacy_record(b"\x10\x00\x02", b"x", flags=1 | 4 | 8, expires_at=deadline)
    _message, expires_at = decode_record(payload)
    assert expires_at == deadline and record_has_deadline(payload)


def test_a_record_of_an_unknown_version_is_refused() -> None:
    payload = bytearray(encode_record(Message("", "q", b"x"), None))
    payload[0] = 0x83
    with pytest.raises(RecordError):
        decode_record(bytes(payload))


def test_a_record_whose_fields_overrun_is_refused() -> None:
    payload = bytearray(encode_record(Message.build("", "q", b"x", content_type="t"), None))
    struct.pack_into("<I", payload, 7, 999)  # fields_len past the end
    with pytest.raises(RecordError):
        decode_record(bytes(payload))


def test_an_http_message_is_neutral_until_amqp_encodes_its_block_once() -> None:
    from baedal.protocols.amqp.properties import wire_extension
    from baedal.protocols.http.convert import make_message, properties_from_json

    props = properties_from_json({"content_type": "text/plain", "headers": {"a": 1}, "delivery_mode": 2})
    message = make_message("", "q", props, b"body")
    assert message.extension is None  # nothing AMQP-only: purely neutral
    assert message.headers == {"a": 1} and message.persistent
    first = wire_extension(message)
    assert message.extension is first and first.properties is not None
    assert wire_extension(message).properties is first.properties  # cached: a fan-out encodes once
    assert properties_of(message) == props
