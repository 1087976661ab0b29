"""The queue log's batch decode (``storage/queue_log.decode_message``) under Hypothesis,
with the compiled read side (``baedal/_speedups``) and without it: any message
round-trips, and a damaged batch (a byte changed past the CRC, which the decoder trusts,
or cut anywhere) either decodes or raises ``RecordBatchError``, never anything else, and
the same way on both paths."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal.core.message import Message, StoredExtension
from baedal.core.properties import DecodeError
from baedal.storage import queue_log
from baedal.storage.record_batch import RecordBatchError

text = st.text(max_size=12)
messages = st.builds(
    Message.build,
    text,
    text,
    st.binary(max_size=300),
    persistent=st.booleans(),
    priority=st.integers(0, 255),
    expiration_ms=st.none() | st.integers(0, 2**40),
    published_at=st.floats(0, 2e9, allow_nan=False),
    extension=st.none() | st.builds(StoredExtension, st.just("x"), st.binary(max_size=8)),
    headers=st.none() | st.dictionaries(text, st.integers(-(2**31), 2**31) | text, max_size=3),
    content_type=st.none() | text,
    message_id=st.none() | text,
    timestamp=st.none() | st.integers(0, 2**40),
) | st.builds(  # the common record: the exchange header alone
    Message,
    text,
    text,
    st.binary(max_size=300),
    st.just(True),
    st.just(0),
    st.just(None),
    st.floats(0, 2e9, allow_nan=False),
)
FUZZ = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def batch_of(message: Message, expires_at: float | None) -> bytes:
    rest, crc = queue_log.encode_message(message, expires_at)
    return queue_log.BATCH_PREFIX.pack(1 << 32 | 16, len(rest) + 9, -1, 2, crc) + rest


def decode(batch: bytes, compiled: bool) -> Any:
    """decode_message's message as comparable fields, or the RecordBatchError."""
    saved = queue_log._decode_common
    if not compiled:
        queue_log._decode_common = None
    try:
        message, expires_at = queue_log.decode_message(batch)
    except RecordBatchError as exc:
        return type(exc)
    finally:
        queue_log._decode_common = saved
    try:
        fields = message.field_values()
        headers = message.headers
    except DecodeError:  # typed headers decode lazily: a damaged table is their error
        fields = headers = DecodeError
    return (
        message.exchange,
        message.routing_key,
        bytes(message.body),
        message.persistent,
        message.priority,
        message.expiration_ms,
        message.published_at,
        fields,
        headers,
        expires_at,
    )


@pytest.mark.parametrize("compiled", [True, False], ids=["c", "python"])
@FUZZ
@given(messages, st.none() | st.floats(0, 1e10, allow_nan=False))
def test_every_message_round_trips(compiled: bool, message: Message, expires_at: float | None) -> None:
    try:
        batch = batch_of(message, expires_at)
    except ValueError:  # a header the typed map cannot hold
        return
    got = decode(batch, compiled)
    assert got[:7] == (
        message.exchange,
        message.routing_key,
        message.body,
        message.persistent,
        message.priority,
        message.expiration_ms,
        int(message.published_at * 1000) / 1000.0,
    )
    assert got[-1] == expires_at


@FUZZ
@given(messages, st.data())
def test_a_damaged_batch_decodes_or_raises_record_batch_error_alike_on_both_paths(
    message: Message, data: st.DataObject
) -> None:
    try:
        batch = batch_of(message, data.draw(st.none() | st.just(1.5e9)))
    except ValueError:
        return
    changed = bytearray(batch)
    for _ in range(data.draw(st.integers(1, 3))):
        changed[data.draw(st.integers(21, len(batch) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(batch) - 1))
    for damaged in (bytes(changed), batch[:cut]):
        outcomes = [decode(damaged, compiled) for compiled in (True, False)]
        assert outcomes[0] == outcomes[1]
