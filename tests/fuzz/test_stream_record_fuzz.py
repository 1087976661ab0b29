"""Hypothesis against the stream's batch decoder and the stream log itself.

* ``BatchDecoder`` / ``decode_records``: random bytes, and valid batches that were then
  damaged (flipped bytes, cuts, inserted garbage; also damage with the CRC fixed up, so
  the record decoder itself meets the garbage, and damaged gzip payloads), only ever
  give batches or ``RecordBatchError``.  Fed whole, one byte at a time and in random
  chunks, the outcome (the batches and the error) is the same.
* Round trips: records → ``encode_batch`` → ``decode_records`` give the records back.
* ``StreamLog`` against a naive model (a list of batches): random batch sizes, segment
  sizes and index intervals; every offset and timestamp lookup and every read from
  ``first`` agrees with the model, before and after a reopen.
"""

from __future__ import annotations

import gzip
import struct
import tempfile
from pathlib import Path

import crc32c
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal.storage.record_batch import (
    BATCH_HEADER_SIZE,
    BatchDecoder,
    Record,
    RecordBatchError,
    decode_records,
    encode_batch,
    iter_batches,
)
from baedal.storage.stream_log import StreamLog

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MAX_BATCH = 1 << 16

headers = st.lists(st.tuples(st.text(max_size=8), st.none() | st.binary(max_size=16)), max_size=3)
records = st.builds(
    Record,
    value=st.none() | st.binary(max_size=120),
    key=st.none() | st.binary(max_size=12),
    headers=headers,
    timestamp=st.integers(min_value=0, max_value=2**42),
    attributes=st.integers(min_value=0, max_value=255),
)
record_lists = st.lists(records, min_size=1, max_size=6)


def fix_crc(batch: bytearray) -> None:
    struct.pack_into(">I", batch, 17, crc32c.crc32c(bytes(batch[21:])))


def gzip_batch(batch: bytearray) -> bytearray:
    """The same records, gzip-compressed the way a Kafka producer sends them."""
    compressed = bytearray(batch[:BATCH_HEADER_SIZE]) + gzip.compress(
        bytes(batch[BATCH_HEADER_SIZE:])
    )
    struct.pack_into(">i", compressed, 8, len(compressed) - 12)
    struct.pack_into(">h", compressed, 21, struct.unpack_from(">h", batch, 21)[0] | 1)
    fix_crc(compressed)
    return compressed


def outcome(chunks: list[bytes]) -> tuple[list[object], str | None]:
    """Everything a decoder produces from these chunks, and how it ends."""
    decoder = BatchDecoder(max_batch_bytes=MAX_BATCH)
    produced: list[object] = []
    try:
        for chunk in chunks:
            decoder.feed(chunk)
            while (item := decoder.next_batch()) is not None:
                batch, decoded = item
                assert decoder.buffered <= MAX_BATCH + len(chunk)
                produced.append(
                    (
                        batch.base_offset,
                        batch.last_offset,
                        bytes(batch.data),
                        [(r.offset, r.timestamp, r.key, r.value, list(r.headers)) for r in decoded],
                    )
                )
        decoder.close()
    except RecordBatchError as exc:
        # Sticky: the decoder keeps answering with the same error.
        try:
            decoder.next_batch()
        except RecordBatchError as again:
            assert again is exc
        else:
            raise AssertionError("error was not sticky") from None
        return produced, f"{type(exc).__name__}: {exc}"
    return produced, None


def split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in points:
        pieces.append(data[start:point])
        start = point
    pieces.append(data[start:])
    return pieces


def assert_same_outcome(data: bytes, cuts: list[int]) -> tuple[list[object], str | None]:
    whole = outcome([data])
    assert outcome([data[i : i + 1] for i in range(len(data))]) == whole
    assert outcome(split(data, cuts)) == whole
    # The one-shot helpers agree with the decoder about validity.
    try:
        decoded = [decode_records(bytes(b.data)) for b in iter_batches(data, MAX_BATCH)]
    except RecordBatchError:
        assert whole[1] is not None
    else:
        assert len(decoded) >= len(whole[0])
    return whole


@st.composite
def valid_stream(draw: st.DrawFn) -> bytes:
    out = bytearray()
    offset = draw(st.integers(min_value=0, max_value=2**40))
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        batch_records = draw(record_lists)
        batch = encode_batch(batch_records, offset, now_ms=0)
        if draw(st.booleans()):
            batch = gzip_batch(batch)
        out += batch
        offset += len(batch_records)
    return bytes(out)


cuts = st.lists(st.integers(min_value=0, max_value=4000), max_size=8)


@FUZZ
@given(st.binary(max_size=600), cuts)
def test_random_bytes_only_ever_raise_the_decoders_error(data: bytes, cut: list[int]) -> None:
    assert_same_outcome(data, cut)
    try:
        decode_records(data)
    except RecordBatchError:
        pass


@FUZZ
@given(valid_stream(), cuts)
def test_valid_batches_decode_the_same_whole_and_chunked(data: bytes, cut: list[int]) -> None:
    produced, error = assert_same_outcome(data, cut)
    assert error is None and produced


@FUZZ
@given(valid_stream(), st.data(), cuts)
def test_damaged_batches_only_ever_raise_the_decoders_error(
    data: bytes, draw: st.DataObject, cut: list[int]
) -> None:
    damaged = bytearray(data)
    kind = draw.draw(st.sampled_from(["flip", "cut", "insert", "flip-fixed-crc"]))
    at = draw.draw(st.integers(min_value=0, max_value=len(damaged) - 1))
    if kind == "flip":
        damaged[at] ^= draw.draw(st.integers(min_value=1, max_value=255))
    elif kind == "cut":
        del damaged[at:]
    elif kind == "insert":
        damaged[at:at] = draw.draw(st.binary(min_size=1, max_size=20))
    else:
        # Damage inside the first batch, then make its CRC right again: now the header
        # checks and the record decoder are what must catch it.
        first_size = struct.unpack_from(">i", damaged, 8)[0] + 12
        at = draw.draw(st.integers(min_value=21, max_value=first_size - 1))
        damaged[at] ^= draw.draw(st.integers(min_value=1, max_value=255))
        first = damaged[:first_size]
        fix_crc(first)
        damaged[:first_size] = first
    assert_same_outcome(bytes(damaged), cut)


@FUZZ
@given(record_lists, st.integers(min_value=0, max_value=2**50))
def test_records_round_trip_through_a_batch(batch_records: list[Record], base: int) -> None:
    batch = encode_batch(batch_records, base, now_ms=0)
    for data in (batch, gzip_batch(batch)):
        decoded = decode_records(bytes(data))
        assert [r.offset for r in decoded] == list(range(base, base + len(batch_records)))
        for original, back in zip(batch_records, decoded, strict=True):
            assert (back.key, back.value, list(back.headers), back.timestamp) == (
                original.key,
                original.value,
                list(original.headers),
                original.timestamp,
            )
            assert back.attributes == original.attributes


# -- the log against a model ------------------------------------------------------------------


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    counts=st.lists(st.integers(min_value=1, max_value=9), min_size=1, max_size=40),
    value_size=st.integers(min_value=0, max_value=300),
    segment_bytes=st.integers(min_value=200, max_value=6000),
    interval=st.sampled_from([1, 64, 512, 4096]),
    probes=st.lists(st.integers(min_value=0, max_value=400), max_size=15),
    ordered=st.booleans(),
    stamps=st.lists(st.integers(min_value=1000, max_value=1400), min_size=40, max_size=40),
)
def test_the_log_agrees_with_a_list_of_batches(
    counts: list[int],
    value_size: int,
    segment_bytes: int,
    interval: int,
    probes: list[int],
    ordered: bool,
    stamps: list[int],
) -> None:
    # Timestamps either grow (arrival time) or jump around (Kafka CreateTime).
    model: list[tuple[int, int, int]] = []  # (base offset, last offset, timestamp)
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp) / "s"
        log = StreamLog.open(
            directory, max_segment_bytes=segment_bytes, index_interval_bytes=interval
        )
        offset = 0
        for i, count in enumerate(counts):
            timestamp = 1000 + 10 * i if ordered else stamps[i]
            log.append([Record(b"v" * value_size, timestamp=timestamp) for _ in range(count)])
            model.append((offset, offset + count - 1, timestamp))
            offset += count
        for round_ in range(2):
            assert (log.first_offset, log.next_offset) == (0, offset)
            assert log.last_batch_offset == model[-1][0]
            read = []
            reader = log.reader("first")
            while batches := reader.read(max(segment_bytes // 3, 1)):
                read.extend((b.base_offset, b.last_offset, b.max_timestamp) for b in batches)
            assert read == model
            for probe in probes:
                target = probe % (offset + 1)
                batches = log.reader(target).read(1)
                expected = [m for m in model if m[0] <= target <= m[1]]
                assert [(b.base_offset, b.last_offset) for b in batches] == [
                    m[:2] for m in expected
                ]
                stamp = 995 + probe
                by_time = [m for m in model if m[2] >= stamp]
                got = log.reader(timestamp=stamp).read(1)
                assert [b.base_offset for b in got] == [m[0] for m in by_time[:1]]
                assert log.offset_for_timestamp(stamp) == (by_time[0][0] if by_time else None)
            log.close()
            if round_ == 0:
                log = StreamLog.open(
                    directory, max_segment_bytes=segment_bytes, index_interval_bytes=interval
                )
                assert log.recovery.clean and not log.recovery.rebuilt_indexes
