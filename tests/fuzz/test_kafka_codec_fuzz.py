"""Hypothesis over the Kafka request decoder: whole, byte by byte and chunked input give
the same outcome; the only failure allowed is the protocol error; the buffer is bounded."""

from __future__ import annotations

import io
import struct

from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.metadata.v1.request import MetadataRequest, MetadataRequestTopic

from baedal.protocols.kafka.codec import KafkaProtocolError, RequestDecoder, UnsupportedVersion
from baedal.protocols.kafka.server import DECODED

MAX_REQUEST = 4096


def outcome(chunks: list[bytes]) -> tuple[list[tuple[int, int, int, object]], str | None]:
    decoder = RequestDecoder(DECODED, MAX_REQUEST)
    requests: list[tuple[int, int, int, object]] = []
    for chunk in chunks:
        try:
            decoder.feed(chunk)
            while True:
                try:
                    request = decoder.next_request()
                except UnsupportedVersion as exc:
                    if decoder.failed is not None:
                        raise
                    requests.append((exc.api_key, exc.api_version, exc.correlation_id, None))
                    continue
                if request is None:
                    break
                requests.append(
                    (request.api_key, request.api_version, request.correlation_id, request.body)
                )
        except KafkaProtocolError as exc:
            return requests, type(exc).__name__
        # Bounded: never more than one request plus its size prefix is buffered.
        assert decoder.buffered <= MAX_REQUEST + 4
    return requests, None


def metadata_frame(correlation: int, topics: list[str]) -> bytes:
    body = io.BytesIO()
    from kio.serial import entity_writer

    entity_writer(MetadataRequest)(
        body, MetadataRequest(topics=tuple(MetadataRequestTopic(name=t) for t in topics))
    )
    payload = struct.pack(">hhih", 3, 1, correlation, 2) + b"id" + body.getvalue()
    return struct.pack(">i", len(payload)) + payload


valid_frames = st.lists(
    st.builds(
        metadata_frame,
        st.integers(0, 2**31 - 1),
        st.lists(st.text("abc-._", min_size=1, max_size=10), max_size=4),
    ),
    max_size=4,
).map(b"".join)

noise = st.binary(max_size=300)


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    pieces, last = [], 0
    for point in points:
        pieces.append(data[last:point])
        last = point
    pieces.append(data[last:])
    return pieces


@settings(max_examples=300, deadline=None)
@given(valid_frames, noise, st.lists(st.integers(0, 10_000), max_size=8))
def test_whole_byte_by_byte_and_chunked_input_decode_the_same(
    prefix: bytes, tail: bytes, cuts: list[int]
) -> None:
    data = prefix + tail
    whole = outcome([data])
    assert outcome([data[i : i + 1] for i in range(len(data))]) == whole
    assert outcome(split(data, cuts)) == whole


@settings(max_examples=100, deadline=None)
@given(valid_frames)
def test_valid_metadata_requests_all_decode(data: bytes) -> None:
    requests, error = outcome([data])
    assert error is None
    assert all(api == 3 and version == 1 for api, version, _, _ in requests)
