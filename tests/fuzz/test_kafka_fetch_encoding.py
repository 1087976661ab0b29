"""The hand-encoded Fetch response (``codec.encode_fetch_response``, written around file
ranges for ``os.sendfile``) is byte for byte what the kio-generated encoder writes for
the same response, at every version served (v4-v11), for any topics, partitions, error
codes, offsets and records, whether the records are bytes or file-range stand-ins."""

from __future__ import annotations

import datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from baedal.protocols.kafka.codec import (
    build,
    encode_fetch_response,
    encode_response,
    nested,
    schema,
)

FETCH = 1


class FakeRange:
    """What the encoder sees of a ``storage.stream_log.FileRange``: its length."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.length = len(data)


offsets = st.integers(min_value=-1, max_value=2**62)
partition = st.tuples(
    st.integers(min_value=0, max_value=2**31 - 1),
    st.sampled_from([0, 1, 3, 6]),
    offsets,
    offsets,
    st.lists(st.binary(max_size=64), max_size=3),
    st.booleans(),
)
topics = st.lists(
    st.tuples(st.text(alphabet="abcxyz.-_0123456789", min_size=1, max_size=20), st.lists(partition, max_size=4)),
    max_size=3,
)


@settings(max_examples=300, deadline=None)
@given(version=st.integers(min_value=4, max_value=11), correlation=st.integers(0, 2**31 - 1), answer=topics)
def test_hand_encoded_fetch_response_matches_the_generated_encoder(
    version: int, correlation: int, answer: list
) -> None:
    cls = schema(FETCH, version, EntityType.response)
    topic_cls = nested(cls, "responses")
    partition_cls = nested(topic_cls, "partitions")
    expected_topics = []
    ours = []
    for name, partitions in answer:
        expected_partitions = []
        our_partitions = []
        for index, error, high, start, chunks, as_ranges in partitions:
            records = b"".join(chunks)
            expected_partitions.append(
                build(
                    partition_cls,
                    partition_index=index,
                    error_code=ErrorCode(error),
                    high_watermark=high,
                    last_stable_offset=high,
                    log_start_offset=start,
                    aborted_transactions=None,
                    preferred_read_replica=-1,
                    records=records,
                )
            )
            parts = [FakeRange(c) for c in chunks] if as_ranges else list(chunks)
            our_partitions.append((index, error, high, start, parts))
        expected_topics.append(build(topic_cls, topic=name, partitions=tuple(expected_partitions)))
        ours.append((name, our_partitions))
    expected = encode_response(
        correlation,
        build(
            cls,
            throttle_time=datetime.timedelta(0),
            error_code=ErrorCode.none,
            session_id=0,
            responses=tuple(expected_topics),
        ),
    )
    encoded = b"".join(
        part.data if isinstance(part, FakeRange) else part
        for part in encode_fetch_response(correlation, version, ours)
    )
    assert encoded == expected
