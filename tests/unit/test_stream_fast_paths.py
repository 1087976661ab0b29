"""The stream's fast paths give exactly what the general paths give.

* publish: a record whose header section was encoded once (``encode_headers``) is the
  same bytes as one encoded from the header list; a batch built record by record
  (``RecordBuilder``, what ``StreamQueue.publish`` uses) is the bytes ``encode_batch``
  gives for the same records;
* read: ``decode_rows`` is ``decode_records`` as tuples; ``record_to_message``'s
  shortcut for the exchange-only record equals the general mapping; the AMQP stream
  consumer's packed block equals ``encode_block`` + ``with_stream_offset``.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal.core.message import NO_FIELDS, Message, QueueEntry
from baedal.core.stream import EXCHANGE_HEADER, message_to_record, record_to_message
from baedal.protocols.amqp.channel import AMQPStreamConsumer, Channel, with_stream_offset
from baedal.protocols.amqp.properties import (
    AmqpExtension,
    BasicProperties,
    decode_properties,
    encode_block,
    encode_properties,
)
from baedal.storage import record_batch
from baedal.storage.record_batch import (
    Record,
    RecordBatchError,
    RecordBuilder,
    check_batch,
    decode_records,
    decode_rows,
    encode_batch,
    encode_headers,
)

header_lists = st.lists(
    st.tuples(
        st.text(max_size=40) | st.just("k" * 3000),
        st.none() | st.binary(max_size=40) | st.just(b"v" * 2100),
    ),
    max_size=5,
)


@settings(suppress_health_check=[HealthCheck.too_slow])  # a loaded 2-vCPU machine
@given(header_lists, st.binary(max_size=300), st.none() | st.binary(max_size=20))
def test_pre_encoded_headers_encode_to_the_same_batch(
    headers: list[tuple[str, bytes | None]], value: bytes, key: bytes | None
) -> None:
    listed = encode_batch([Record(value, key, headers, 1000)] * 3, 7, now_ms=5)
    encoded = encode_batch([Record(value, key, encode_headers(headers), 1000)] * 3, 7, now_ms=5)
    assert encoded == listed
    assert [r.headers for r in decode_records(bytes(encoded))] == [headers] * 3


@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=60)
@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=20) | st.just(b"k" * 2100),
            st.binary(max_size=300) | st.just(b"v" * 2100),
            header_lists,
            # timestamps that go back (a clock step), jump past one varint byte, repeat
            st.integers(min_value=1_700_000_000_000 - 5000, max_value=1_700_000_000_000 + 5000),
        ),
        min_size=1,
        max_size=30,
    ),
    st.integers(min_value=0, max_value=2**40),
)
def test_a_batch_built_record_by_record_is_encode_batch(
    rows: list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]], int]], base: int
) -> None:
    builder = RecordBuilder()
    for key, value, headers, timestamp in rows:
        builder.add(key, value, encode_headers(headers), timestamp)
    built = builder.finish(base)
    expected = encode_batch([Record(v, k, h, t) for k, v, h, t in rows], base, now_ms=1)
    assert built == expected
    check_batch(built, 0, 1 << 30)  # CRC and header valid
    decoded = decode_records(bytes(built))
    assert [(r.key, r.value, r.headers, r.timestamp, r.offset) for r in decoded] == [
        (k, v, h, t, base + i) for i, (k, v, h, t) in enumerate(rows)
    ]


@pytest.mark.skipif(record_batch._append_record is None, reason="C speed-ups not built")
@settings(suppress_health_check=[HealthCheck.too_slow], max_examples=80)
@given(
    st.lists(
        st.tuples(
            st.none() | st.binary(max_size=20) | st.just(b"k" * 2100) | st.just(b""),
            st.binary(max_size=300) | st.just(b"v" * 70000),
            header_lists,
            st.integers(min_value=-(2**40), max_value=2**40),  # deltas of any sign and size
        ),
        min_size=1,
        max_size=20,
    )
)
def test_the_c_record_encoder_builds_the_python_bytes(
    rows: list[tuple[bytes | None, bytes, list[tuple[str, bytes | None]], int]],
) -> None:
    """RecordBuilder.add through ``_records.append_record`` and through its Python code
    give the same batch, the same size and count."""
    built = []
    for encoder in (record_batch._append_record, None):
        saved = record_batch._append_record
        record_batch._append_record = encoder
        try:
            builder = RecordBuilder()
            for key, value, headers, timestamp in rows:
                builder.add(key, value, encode_headers(headers), timestamp)
            built.append((bytes(builder.finish(3)), builder.size, builder.count))
        finally:
            record_batch._append_record = saved
    assert built[0] == built[1]


def test_the_c_record_encoder_hands_back_what_it_does_not_take() -> None:
    append_record = record_batch._append_record
    if append_record is None:
        pytest.skip("C speed-ups not built")
    pieces: list[Any] = []
    assert append_record(pieces, None, bytearray(b"v"), b"\x00", 0, 0) is None
    assert append_record(pieces, "k", b"v", b"\x00", 0, 0) is None
    assert append_record(pieces, None, b"v", b"\x00", 2**70, 0) is None
    assert pieces == []
    # and the builder then encodes it in Python, to the same bytes as encode_batch
    builder = RecordBuilder()
    builder.add(None, bytearray(b"v"), encode_headers(()), 5)  # type: ignore[arg-type]
    assert bytes(builder.finish()) == bytes(encode_batch([Record(b"v", None, [], 5)], 0, now_ms=1))


def test_a_builder_past_2048_records_keeps_offset_deltas() -> None:
    builder = RecordBuilder()
    for i in range(2100):
        builder.add(None, b"%d" % i, encode_headers(()), 1000)
    records = decode_records(bytes(builder.finish(5)))
    assert [r.offset for r in records] == list(range(5, 2105))
    assert records[-1].value == b"2099"
    with pytest.raises(ValueError):
        RecordBuilder().finish()


def _batch() -> bytearray:
    records = [
        Record(b"v%d" % i, b"k" if i % 2 else None, [(EXCHANGE_HEADER, b"ex"), ("h", None)], 1000 + i * 300)
        for i in range(200)  # offset deltas and timestamp deltas past one varint byte
    ]
    return encode_batch(records, 40, now_ms=1)


def test_rows_are_the_records_as_tuples() -> None:
    data = bytes(_batch())
    records = decode_records(data)
    rows = decode_rows(data)
    assert rows == [
        (r.offset, r.timestamp, r.key, r.value, r.headers, r.attributes) for r in records
    ]
    assert rows[-1][0] == 239 and rows[-1][1] == 1000 + 199 * 300


def test_rows_without_crc_check_still_refuse_bad_records() -> None:
    data = _batch()
    data[23] ^= 0xFF  # lastOffsetDelta's top byte: negative, a bad header either way
    with pytest.raises(RecordBatchError):
        decode_rows(bytes(data))
    with pytest.raises(RecordBatchError):
        decode_rows(bytes(data), check_crc=False)
    for position in range(61, 120):  # damage inside the first records
        damaged = _batch()
        damaged[position] ^= 0x41
        with pytest.raises(RecordBatchError):
            decode_rows(bytes(damaged))  # the CRC notices
        try:  # without it: decoded or refused, but only ever with the codec's error
            decode_rows(bytes(damaged), check_crc=False)
        except RecordBatchError:
            pass


def _general(key: bytes | None, value: bytes, raw: bytes, timestamp_ms: int) -> Message:
    # The general loop, reached by adding a header the loop ignores on its own merits:
    # an unknown plain header becomes an application header, so compare the rest.
    return record_to_message(key, value, [(EXCHANGE_HEADER, raw), ("x", b"1")], timestamp_ms)


@pytest.mark.parametrize("exchange", ["", "shop", "é"])
@pytest.mark.parametrize("key", [None, b"orders.new"])
def test_the_exchange_only_record_reads_back_as_the_general_mapping_says(
    exchange: str, key: bytes | None
) -> None:
    message = Message(exchange, (key or b"").decode(), b"body", True, extension=AmqpExtension(b"\x10\x00\x02"))
    record_key, value, headers, timestamp_ms = message_to_record(message)
    assert record_key == key and [name for name, _v in headers] == [EXCHANGE_HEADER]
    fast = record_to_message(record_key, value, headers, timestamp_ms)
    general = _general(record_key, value, headers[0][1], timestamp_ms)
    for name in ("exchange", "routing_key", "body", "persistent", "priority", "expiration_ms", "published_at"):
        assert getattr(fast, name) == getattr(general, name), name
    assert fast.field_values() is NO_FIELDS and fast.extension is None
    assert encode_block(fast) == encode_properties(BasicProperties(delivery_mode=2))


@pytest.mark.parametrize(
    "properties",
    [
        None,
        BasicProperties(),
        BasicProperties(delivery_mode=2),
        BasicProperties(delivery_mode=1),
        BasicProperties(delivery_mode=2, content_type="text/plain"),
        BasicProperties(delivery_mode=2, type="t"),  # AMQP-only: leftovers
        BasicProperties(delivery_mode=2, headers={"h": 1}),
        BasicProperties(app_id="a"),
    ],
)
def test_plain_is_no_fields_and_no_leftovers(properties: BasicProperties | None) -> None:
    """``Extension.plain`` (the stream publish's one-call test) answers what the two
    general questions answer, on a fresh message, and leaves the same state behind."""
    block = None if properties is None else encode_properties(properties)

    def fresh() -> Message:
        return Message("ex", "rk", b"b", True, extension=AmqpExtension(block))

    general = fresh()
    expected = general.field_values() is NO_FIELDS and not general.extension.leftovers()  # type: ignore[union-attr]
    message = fresh()
    assert message.extension.plain(message) is expected  # type: ignore[union-attr]
    assert message.field_values() == general.field_values()
    assert message.extension.leftovers() == general.extension.leftovers()  # type: ignore[union-attr]
    assert expected is (block in (None, b"\x00\x00", b"\x10\x00\x02"))


class _Channel:
    """Just what ``AMQPStreamConsumer.deliver`` hands its delivery to."""

    connection = None

    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send_delivery(self, consumer: Any, queue: Any, entry: QueueEntry) -> None:
        extension = entry.message.extension  # type: ignore[union-attr]
        self.sent.append((extension.properties, extension.wire_names))


@pytest.mark.parametrize("persistent", [True, False])
@pytest.mark.parametrize("offset", [0, 255, 2**40])
def test_the_packed_offset_block_is_the_spliced_block(persistent: bool, offset: int) -> None:
    channel = _Channel()
    consumer = AMQPStreamConsumer("c", None, channel, False, False, 0, 10, {})  # type: ignore[arg-type]
    for exchange, routing_key in [("", "s"), ("", "s"), ("ex", "s"), ("ex", "t")]:
        message = Message(exchange, routing_key, b"b", persistent)
        message.adopt_fields(NO_FIELDS)
        expected = with_stream_offset(encode_block(message), offset)
        consumer.deliver(None, QueueEntry(offset, message, 1))  # type: ignore[arg-type]
        block, names = channel.sent[-1]
        assert block == expected
        assert decode_properties(block).headers == {"x-stream-offset": offset}
        assert names == bytes((len(exchange),)) + exchange.encode() + bytes((len(routing_key),)) + routing_key.encode()


# --- the batch path: records straight to frames (AMQPStreamConsumer.deliver_rows) -----------


class _Connection:
    def __init__(self, frame_max: int) -> None:
        self.frame_max = frame_max
        self.out: list[bytes] = []
        self.writes = 0
        self.write_paused = False

    def write(self, data: bytes) -> None:
        self.out.append(data)
        self.writes += 1

    def write_many(self, frames: list[bytes]) -> None:
        self.out.extend(frames)
        self.writes += 1


class _RealChannel:
    """The state ``Channel.send_delivery`` and ``deliver_rows`` use, with the real
    ``send_delivery`` (so the general path is the channel's own code)."""

    def __init__(self, number: int, frame_max: int) -> None:
        self.number = number
        self.connection = _Connection(frame_max)
        self.next_delivery_tag = 1
        self.unacked: dict[int, Any] = {}
        self.unacked_count = 0
        self.global_prefetch = 0
        self.can_send = True

    def send_delivery(self, consumer: Any, queue: Any, entry: QueueEntry) -> None:
        Channel.send_delivery(self, consumer, queue, entry)  # type: ignore[arg-type]


def _general_delivery(consumer: AMQPStreamConsumer, row: tuple[Any, ...]) -> None:
    """What ``StreamQueue._drain_cursor`` does with a record the batch path leaves."""
    offset, timestamp, key, value, headers, _attributes = row
    message = record_to_message(key, value, headers, timestamp)
    consumer.deliver(None, QueueEntry(offset, message, len(message.body)))  # type: ignore[arg-type]


def _mixed_rows() -> list[tuple[Any, ...]]:
    records = []
    for i in range(40):
        shape = i % 8
        headers: list[tuple[str, bytes | None]] = [(EXCHANGE_HEADER, b"shop" if i % 3 else b"")]
        value = b"v%d" % i * (i + 1)
        if shape == 3:
            headers.append(("content-type", b"text/plain"))  # not the common record
        elif shape == 5:
            value = b""  # no body frame
        elif shape == 6:
            value = b"L" * 5000  # more than one body frame at frame_max 4096
        elif shape == 7:
            headers = [("k", b"from kafka")]  # no exchange header
        records.append(Record(value, b"key.%d" % (i % 2) if i % 4 else None, headers, 1000 + i))
    return decode_rows(bytes(encode_batch(records, 1000, now_ms=1)))


@pytest.mark.parametrize("frame_max", [4096, 131072])
@pytest.mark.parametrize("step", [1, 3, 40])
def test_the_batch_path_writes_what_the_general_path_writes(frame_max: int, step: int) -> None:
    rows = _mixed_rows()
    general_channel = _RealChannel(3, frame_max)
    general = AMQPStreamConsumer("ctag", None, general_channel, False, False, 0, 1000, {})  # type: ignore[arg-type]
    for row in rows:
        _general_delivery(general, row)
    batch_channel = _RealChannel(3, frame_max)
    batch = AMQPStreamConsumer("ctag", None, batch_channel, False, False, 0, 1000, {})  # type: ignore[arg-type]
    index = 0
    while index < len(rows):  # as the stream's drain loop: batch first, else one general
        taken = batch.deliver_rows(None, rows, index, min(len(rows), index + step))  # type: ignore[arg-type]
        if taken:
            index += taken
            continue
        _general_delivery(batch, rows[index])
        index += 1
    assert b"".join(batch_channel.connection.out) == b"".join(general_channel.connection.out)
    assert batch_channel.next_delivery_tag == general_channel.next_delivery_tag == len(rows) + 1
    assert sorted(batch_channel.unacked) == sorted(general_channel.unacked) == list(range(1, len(rows) + 1))
    assert batch.unacked == general.unacked == batch_channel.unacked_count == len(rows)
    if step == 40:  # a run of common records is one write
        assert batch_channel.connection.writes < general_channel.connection.writes


def test_the_batch_path_takes_no_more_than_the_credit() -> None:
    rows = [row for row in _mixed_rows() if len(row[4]) == 1 and row[4][0][0] == EXCHANGE_HEADER and row[3]]
    rows = [row for row in rows if len(row[3]) < 4000]
    channel = _RealChannel(1, 131072)
    consumer = AMQPStreamConsumer("c", None, channel, False, False, 0, 5, {})  # type: ignore[arg-type]
    assert consumer.deliver_rows(None, rows, 0, len(rows)) == 5  # type: ignore[arg-type]
    assert consumer.deliver_rows(None, rows, 5, len(rows)) == 0  # type: ignore[arg-type]
    consumer.unacked = 2  # three settled
    channel.global_prefetch = 6  # the channel-wide bound is tighter: 6 - 5
    assert consumer.deliver_rows(None, rows, 5, len(rows)) == 1  # type: ignore[arg-type]
    channel.global_prefetch = 0
    channel.can_send = False
    assert consumer.deliver_rows(None, rows, 6, len(rows)) == 0  # type: ignore[arg-type]
    assert channel.next_delivery_tag == 7
