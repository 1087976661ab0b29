"""The hand-written Produce decoder and response encoder against kio (generated from
Kafka's message JSON): same fields for every request kio can encode, v3-v8; whole,
byte-by-byte and chunked input give the same outcome; truncated or padded bodies and
hostile counts end in the protocol error only, before anything is allocated from them."""

from __future__ import annotations

import datetime
import io
import struct
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from kio.index import load_payload_module
from kio.schema.errors import ErrorCode
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

from baedal.protocols.kafka.codec import (
    KafkaProtocolError,
    ProduceBody,
    RequestDecoder,
    UnsupportedVersion,
    encode_produce_response,
)
from baedal.protocols.kafka.server import DECODED

MAX_REQUEST = 64 * 1024
VERSIONS = st.integers(3, 8)


def module(version: int, kind: EntityType) -> Any:
    return load_payload_module(0, version, kind)


def produce_body(version: int, transactional_id: str | None, acks: int, timeout: int,
                 topics: list[tuple[str, list[tuple[int, bytes | None]]]]) -> bytes:  # fmt: skip
    m = module(version, EntityType.request)
    body = m.ProduceRequest(
        transactional_id=transactional_id,
        acks=acks,
        timeout=datetime.timedelta(milliseconds=timeout),
        topic_data=tuple(
            m.TopicProduceData(
                name=name,
                partition_data=tuple(
                    m.PartitionProduceData(index=index, records=records)
                    for index, records in partitions
                ),
            )
            for name, partitions in topics
        ),
    )
    out = io.BytesIO()
    entity_writer(m.ProduceRequest)(out, body)
    return out.getvalue()


def frame(version: int, correlation: int, body: bytes) -> bytes:
    payload = struct.pack(">hhih", 0, version, correlation, 2) + b"id" + body
    return struct.pack(">i", len(payload)) + payload


def normalised(body: Any) -> tuple[Any, ...]:
    """Hand-decoded and kio-decoded bodies as the same plain tuple."""
    timeout = (
        body.timeout_ms
        if isinstance(body, ProduceBody)
        else round(body.timeout / datetime.timedelta(milliseconds=1))
    )
    return (
        body.transactional_id,
        body.acks,
        timeout,
        tuple(
            (
                topic.name,
                tuple(
                    (p.index, None if p.records is None else bytes(p.records))
                    for p in topic.partition_data
                ),
            )
            for topic in body.topic_data
        ),
    )


names = st.text("abcXYZ019._-", min_size=1, max_size=12)
records = st.one_of(st.none(), st.binary(max_size=200))
topics = st.lists(
    st.tuples(names, st.lists(st.tuples(st.integers(0, 2**31 - 1), records), max_size=3)),
    max_size=3,
)
requests = st.tuples(
    VERSIONS,
    st.one_of(st.none(), st.text(max_size=8)),
    st.sampled_from([-1, 0, 1]),
    st.integers(0, 2**31 - 1),
    topics,
)


@settings(max_examples=300, deadline=None)
@given(requests)
def test_the_hand_decoder_reads_what_kio_reads(request: tuple[Any, ...]) -> None:
    version = request[0]
    body = produce_body(*request)
    decoder = RequestDecoder(DECODED, MAX_REQUEST)
    decoder.feed(frame(version, 7, body))
    decoded = decoder.next_request()
    assert decoded is not None and isinstance(decoded.body, ProduceBody)
    cls = module(version, EntityType.request).ProduceRequest
    expected, _ = entity_reader(cls)(body, 0)
    assert normalised(decoded.body) == normalised(expected)
    assert (decoded.api_key, decoded.api_version, decoded.correlation_id) == (0, version, 7)


def outcome(chunks: list[bytes]) -> tuple[list[Any], str | None]:
    decoder = RequestDecoder(DECODED, MAX_REQUEST)
    seen: list[Any] = []
    for chunk in chunks:
        try:
            decoder.feed(chunk)
            while True:
                try:
                    request = decoder.next_request()
                except UnsupportedVersion as exc:
                    if decoder.failed is not None:
                        raise
                    seen.append((exc.api_key, exc.api_version))
                    continue
                if request is None:
                    break
                body = request.body
                seen.append(normalised(body) if isinstance(body, ProduceBody) else repr(body))
        except KafkaProtocolError as exc:
            return seen, type(exc).__name__
        assert decoder.buffered <= MAX_REQUEST + 4
    return seen, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@settings(max_examples=150, deadline=None)
@given(
    st.lists(requests, min_size=1, max_size=3),
    st.binary(max_size=200),
    st.lists(st.integers(0, 100_000), max_size=8),
)
def test_whole_byte_by_byte_and_chunked_produce_input_decode_the_same(
    batch: list[tuple[Any, ...]], tail: bytes, cuts: list[int]
) -> None:
    data = b"".join(frame(r[0], i, produce_body(*r)) for i, r in enumerate(batch)) + tail
    whole = outcome([data])
    assert len(whole[0]) >= len(batch)
    assert outcome([data[i : i + 1] for i in range(len(data))]) == whole
    assert outcome(split(data, cuts)) == whole


@settings(max_examples=200, deadline=None)
@given(requests, st.data())
def test_a_cut_or_padded_produce_body_is_a_protocol_error(
    request: tuple[Any, ...], data: st.DataObject
) -> None:
    body = produce_body(*request)
    cut = data.draw(st.integers(0, len(body) - 1))
    for broken in (body[:cut], body + b"\0" * data.draw(st.integers(1, 9))):
        decoder = RequestDecoder(DECODED, MAX_REQUEST)
        decoder.feed(frame(request[0], 1, broken))
        try:
            decoder.next_request()
        except KafkaProtocolError:
            continue
        raise AssertionError(f"decoded a broken body ({len(broken)} of {len(body)} bytes)")


@settings(max_examples=200, deadline=None)
@given(VERSIONS, st.integers(-(2**31), 2**31 - 1), st.integers(-(2**31), 2**31 - 1))
def test_hostile_counts_and_lengths_are_refused_from_the_bytes_left(
    version: int, count: int, length: int
) -> None:
    # One topic "t" whose partition count, then records length, come from the fuzzer.
    head = struct.pack(">hhi", -1, -1, 1000) + struct.pack(">i", 1) + struct.pack(">h", 1) + b"t"
    for body in (
        head + struct.pack(">i", count),
        head + struct.pack(">i", 1) + struct.pack(">ii", 0, length) + b"x" * 8,
    ):
        decoder = RequestDecoder(DECODED, MAX_REQUEST)
        decoder.feed(frame(version, 1, body))
        try:
            request = decoder.next_request()
        except KafkaProtocolError:
            continue
        assert request is not None  # only a count/length that matches the bytes decodes
        partitions = request.body.topic_data[0].partition_data
        assert count == 0 or length in (-1, 8)
        assert all(p.records is None or len(p.records) == 8 for p in partitions)


@settings(max_examples=200, deadline=None)
@given(
    VERSIONS,
    st.integers(0, 2**31 - 1),
    st.lists(
        st.tuples(
            names,
            st.lists(
                st.tuples(
                    st.integers(0, 2**31 - 1),
                    st.sampled_from([ErrorCode.none, ErrorCode.corrupt_message,
                                     ErrorCode.kafka_storage_error]),
                    st.integers(-1, 2**62),
                    st.integers(-1, 2**62),
                ),
                max_size=3,
            ),
        ),
        max_size=3,
    ),
)  # fmt: skip
def test_the_hand_encoded_response_is_what_kio_reads(
    version: int, correlation: int, topics: list[tuple[str, list[tuple[Any, ...]]]]
) -> None:
    data = encode_produce_response(
        correlation,
        version,
        [(name, [(i, e.value, b, s) for i, e, b, s in parts]) for name, parts in topics],
    )
    size, got_correlation = struct.unpack_from(">ii", data, 0)
    assert size == len(data) - 4 and got_correlation == correlation
    cls = module(version, EntityType.response).ProduceResponse
    response, used = entity_reader(cls)(data[8:], 0)
    assert used == len(data) - 8
    assert response.throttle_time == datetime.timedelta(0)
    got = [
        (
            topic.name,
            [
                (
                    p.index,
                    p.error_code,
                    p.base_offset,
                    getattr(p, "log_start_offset", None),
                    p.log_append_time,
                    getattr(p, "record_errors", ()),
                    getattr(p, "error_message", None),
                )
                for p in topic.partition_responses
            ],
        )
        for topic in response.responses
    ]
    want = [
        (name, [(i, e, b, s if version >= 5 else None, None, (), None) for i, e, b, s in parts])
        for name, parts in topics
    ]
    assert got == want
