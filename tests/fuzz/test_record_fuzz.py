"""The neutral record (storage/record.py) under Hypothesis: any message round-trips, and
a damaged version-2 payload -- cut anywhere or with a byte changed -- either decodes or
raises ``RecordError``, never anything else."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.core.message import Message
from baedal.core.properties import DecodeError, Timestamp
from baedal.storage.record import RecordError, decode_record, encode_record

text = st.text(max_size=20)
values = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**63 - 1),
        st.floats(allow_nan=False),
        text,
        st.binary(max_size=10),
        st.integers(0, 2**40).map(Timestamp),
        st.decimals(min_value=-1000, max_value=1000, places=2, allow_nan=False).map(Decimal),
    ),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(text, inner, max_size=3),
    max_leaves=8,
)
messages = st.builds(
    Message.build,
    text,
    text,
    st.binary(max_size=64),
    persistent=st.booleans(),
    priority=st.integers(0, 255),
    expiration_ms=st.none() | st.integers(0, 2**63 - 1),
    published_at=st.floats(allow_nan=False),
    headers=st.none() | st.dictionaries(text, values, max_size=4),
    content_type=st.none() | text,
    content_encoding=st.none() | text,
    correlation_id=st.none() | text,
    reply_to=st.none() | text,
    message_id=st.none() | text,
    user_id=st.none() | text,
    timestamp=st.none() | st.integers(0, 2**64 - 1),
)


def same(a: Message, b: Message) -> bool:
    return (
        (a.exchange, a.routing_key, a.body, a.persistent, a.priority, a.expiration_ms)
        == (b.exchange, b.routing_key, b.body, b.persistent, b.priority, b.expiration_ms)
        and a.published_at == b.published_at
        and a.fields() == b.fields()
    )


@settings(max_examples=200, deadline=None)
@given(messages, st.none() | st.floats(0, 1e10))
def test_every_message_round_trips(message: Message, expires_at: float | None) -> None:
    try:
        payload = encode_record(message, expires_at)
    except ValueError:  # a header the typed map cannot hold (e.g. a key > 255 bytes)
        return
    decoded, deadline = decode_record(payload)
    assert same(decoded, message) and deadline == expires_at


@settings(max_examples=200, deadline=None)
@given(messages, st.data())
def test_a_damaged_record_decodes_or_raises_record_error(message: Message, data: st.DataObject) -> None:
    try:
        payload = encode_record(message, None)
    except ValueError:
        return
    cut = data.draw(st.integers(1, len(payload)))
    changed = bytearray(payload)
    at = data.draw(st.integers(0, len(payload) - 1))
    changed[at] = data.draw(st.integers(0, 255))
    for damaged in (payload[:cut], bytes(changed)):
        if not damaged[0] & 0x80:
            continue  # now reads as a legacy record: its own layout, not this decoder's
        try:
            decoded, _ = decode_record(damaged)
        except RecordError:
            continue
        try:
            decoded.fields()  # headers are decoded lazily: DecodeError is theirs
        except DecodeError:
            pass
