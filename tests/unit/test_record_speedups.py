"""The compiled record loop (baedal/_speedups/_records.c) against the Python loop it
replaces: the same rows for every batch, the same error (type and message) for every
damaged one, since the C code hands anything it does not decode back to Python.

Skipped when the extension is not built (``python setup.py build_ext --inplace``) or
disabled with ``BAEDAL_NO_SPEEDUPS``; the stream tests then run on the Python loop.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal._speedups import load
from baedal.storage import record_batch
from baedal.storage.record_batch import (
    BATCH_HEADER_SIZE,
    Record,
    RecordBatchError,
    decode_rows,
    encode_batch,
    encode_headers,
)

pytestmark = pytest.mark.skipif(
    load("_records") is None, reason="C speed-ups not built or disabled (BAEDAL_NO_SPEEDUPS)"
)

SLOW_OK = settings(suppress_health_check=[HealthCheck.too_slow], deadline=None)


def _both(data: bytes) -> tuple[Any, Any]:
    """(C outcome, Python outcome): the rows, or the error's (type, message)."""
    outcomes = []
    saved = record_batch._speedup
    for speedup in (saved, None):
        record_batch._speedup = speedup
        try:
            outcomes.append(decode_rows(data, check_crc=False))
        except RecordBatchError as exc:
            outcomes.append((type(exc), str(exc)))
        finally:
            record_batch._speedup = saved
    return outcomes[0], outcomes[1]


names = st.sampled_from(["x-baedal-exchange", "content-type", "", "é", "k" * 70]) | st.text(max_size=8)
header_lists = st.lists(st.tuples(names, st.none() | st.binary(max_size=30)), max_size=4)
records = st.lists(
    st.tuples(
        st.none() | st.binary(max_size=300),  # value
        st.none() | st.binary(max_size=20),  # key
        header_lists,
        st.none() | st.integers(-(2**62), 2**62),  # timestamp
        st.integers(0, 255),  # attributes
        st.booleans(),  # the previous record's headers again
    ),
    min_size=1,
    max_size=30,
)


def _batch(drawn: list[tuple[Any, ...]], base: int, encoded_headers: bool) -> bytes:
    batch = []
    previous: Any = []
    for value, key, headers, timestamp, attributes, again in drawn:
        if again:
            headers = previous
        previous = headers
        batch.append(
            Record(value, key, encode_headers(headers) if encoded_headers else headers, timestamp, attributes)
        )
    return bytes(encode_batch(batch, base, now_ms=1_700_000_000_000))


@SLOW_OK
@given(records, st.integers(0, 2**62), st.booleans())
def test_the_c_loop_decodes_every_batch_as_the_python_loop(
    drawn: list[tuple[Any, ...]], base: int, encoded_headers: bool
) -> None:
    data = _batch(drawn, base, encoded_headers)
    fast, slow = _both(data)
    assert fast == slow
    assert isinstance(fast, list) and len(fast) == len(drawn)
    # shared headers lists where the header bytes repeat, as in Python
    assert [row[4] is fast[i - 1][4] for i, row in enumerate(fast) if i] == [
        row[4] is slow[i - 1][4] for i, row in enumerate(slow) if i
    ]


@SLOW_OK
@given(records, st.data())
def test_a_damaged_batch_gets_the_python_answer(drawn: list[tuple[Any, ...]], data: st.DataObject) -> None:
    batch = bytearray(_batch(drawn, 5, False))
    for _ in range(data.draw(st.integers(1, 4))):
        position = data.draw(st.integers(BATCH_HEADER_SIZE, len(batch) - 1))
        batch[position] = data.draw(st.integers(0, 255))
    fast, slow = _both(bytes(batch))
    assert fast == slow


@pytest.mark.parametrize(
    "record",
    [
        # a 10-byte timestamp delta with bits past 64 (Python's ints hold it; C hands back)
        b"\xff" * 9 + b"\x7f",
        # a header name that is not UTF-8
        None,
    ],
)
def test_inputs_outside_64_bits_or_utf8_are_left_to_python(record: bytes | None) -> None:
    good = bytearray(_batch([(b"v", None, [("n", b"x")], 1000, 0, False)], 0, False))
    if record is None:
        index = bytes(good).index(b"\x02n")  # name length 1 (zig-zag 2), then the name
        good[index + 1] = 0xFF
    else:
        # replace the timestamp delta (after length and attributes) with the long varint
        body = bytearray(good[BATCH_HEADER_SIZE:])
        rest = body[3:]  # the record: length, attributes, delta (one byte), ...
        new_record = body[1:2] + record + rest
        new_record = bytes([len(new_record) * 2]) + new_record
        good = good[:BATCH_HEADER_SIZE] + new_record
        good[8:12] = (len(good) - 12).to_bytes(4, "big")
    fast, slow = _both(bytes(good))
    assert fast == slow
    if record is not None:  # Python decodes it: a timestamp no int64 holds
        assert isinstance(slow, list) and abs(slow[0][1]) > 2**64


def test_byte_identical_header_sections_share_one_list() -> None:
    headers = encode_headers([("x-baedal-exchange", b"")])
    rows = decode_rows(bytes(encode_batch([Record(b"v", b"k", headers, 5)] * 50, 0, now_ms=1)))
    assert all(row[4] is rows[0][4] for row in rows)
    assert rows[0][4] == [("x-baedal-exchange", b"")]
