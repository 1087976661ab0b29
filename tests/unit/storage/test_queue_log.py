"""Durable queue segments in the stream's format (``storage/queue_log.py``).

A queue segment written now is RecordBatch v2 batches, one message per batch, whose
``baseOffset`` is the message's queue position; these tests pin the bytes (the same as
the stream's encoder gives for the stream's record of the message), the boundaries, and
what damage costs.  Since a batch holds one message, damage inside a batch costs exactly
that batch, which is exactly that one message: every intact batch before and after it
survives (the resync rule in ``queue_log``'s docstring).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal.core.message import Message, StoredExtension
from baedal.core.stream import message_to_record, record_to_message
from baedal.storage import queue_log
from baedal.storage.queue_store import SegmentStore
from baedal.storage.record_batch import Record, decode_records, encode_batch, iter_batches
from baedal.storage.segment import QUEUE_LOG_VERSION, SEGMENT_HEADER, SEGMENT_HEADER_SIZE
from baedal.storage.syncer import Syncer


def body(i: int, size: int = 40) -> bytes:
    return f"m{i}-".encode().ljust(size, b".")


def fill(path: Path, count: int, size: int = 40, segment_bytes: int = 1 << 20) -> list[int]:
    """``count`` persistent messages, synced, then "crashed" (no close)."""
    syncer = Syncer()
    store = SegmentStore.open(path, syncer, segment_bytes=segment_bytes, read_ahead=4)
    entries = [
        store.append(Message("ex", "q", body(i, size), persistent=True), None)
        for i in range(count)
    ]
    syncer.sync_now()  # (writes the deferred ones: positions are final from here)
    store._release_files()
    return [entry.position for entry in entries]


def recovered(
    path: Path, segment_bytes: int = 1 << 20
) -> tuple[list[int], list[bytes], SegmentStore]:
    store = SegmentStore.open(path, Syncer(), segment_bytes=segment_bytes, read_ahead=4)
    positions, bodies = [], []
    while (entry := store.shift()) is not None:
        positions.append(entry.position)
        bodies.append(bytes(entry.message.body))  # type: ignore[union-attr]
    store.close()
    return positions, bodies, store


def batch_spans(data: bytes) -> list[tuple[int, int]]:
    """(start, end) of every batch in a version-2 segment file's bytes."""
    spans = []
    for batch in iter_batches(memoryview(data)[SEGMENT_HEADER_SIZE:], queue_log.MAX_BATCH_BYTES):
        start = batch.base_offset & 0xFFFFFFFF
        spans.append((start, start + batch.size))
    return spans


MESSAGES = [
    Message("ex", "q", b"plain", persistent=True),
    Message("", "", b"", persistent=True),
    Message("amq.topic", "a.b", b"x" * 3000, persistent=True, published_at=1234.5),
    Message("ex", "q", b"transient", persistent=False),
    # A shared extension with leftovers (as MQTT's per-QoS one): the header-section cache.
    Message("amq.topic", "a.b", b"ext", True, 0, None, 1234.5, StoredExtension("test", b"\x01\x00ab")),
    Message.build(
        "amq.direct",
        "k",
        b"every field",
        persistent=True,
        priority=5,
        expiration_ms=60000,
        published_at=1_700_000_000.0,
        headers={"n": 1, "big": 1 << 40, "s": "v"},
        content_type="text/plain",
        content_encoding="gzip",
        correlation_id="c",
        reply_to="r",
        message_id="m",
        user_id="guest",
        timestamp=1_700_000_001,
    ),
]


@pytest.mark.parametrize("expires_at", [None, 1_900_000_000.123456, 0.1])
@pytest.mark.parametrize("index", range(len(MESSAGES)))
def test_a_queue_batch_is_the_stream_encoders_batch_of_the_streams_record(
    index: int, expires_at: float | None
) -> None:
    message = MESSAGES[index]
    queue_log._GENERAL_SECTIONS.clear()  # the first encode builds the section ...
    rest, crc = queue_log.encode_message(message, expires_at)
    # ... a second one of an equal message may take it from the cache: the same bytes.
    assert queue_log.encode_message(message, expires_at) == (rest, crc)
    position = 7 << 32 | 4096
    batch = queue_log.BATCH_PREFIX.pack(position, len(rest) + 9, -1, 2, crc) + rest
    key, value, headers, _arrival = message_to_record(message)
    # A queue keeps the message's own publish time (0 when the adapter set none), where
    # a stream stamps the arrival time: the only difference from the stream's record.
    timestamp = int(message.published_at * 1000)
    attributes = 0 if message.persistent else queue_log.ATTR_TRANSIENT
    if expires_at is not None:
        headers.append((queue_log.DEADLINE_HEADER, repr(expires_at).encode()))
        attributes |= queue_log.ATTR_DEADLINE
    expected = encode_batch(
        [Record(value, key, headers, timestamp)], position, attributes=attributes
    )
    assert batch == bytes(expected)
    # The stream's decoder reads it; the queue's gives the message and deadline back.
    [record] = decode_records(batch)
    assert record.offset == position and record.value == message.body
    decoded, deadline = queue_log.decode_message(batch)
    assert deadline == expires_at
    assert (decoded.exchange, decoded.routing_key, decoded.body) == (
        message.exchange,
        message.routing_key,
        message.body,
    )
    assert decoded.persistent == message.persistent
    assert decoded.published_at == message.published_at
    assert decoded.priority == message.priority
    assert decoded.expiration_ms == message.expiration_ms
    assert dict(decoded.headers or {}) == dict(message.headers or {})  # no deadline header
    for name in (
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "message_id",
        "user_id",
        "timestamp",
    ):
        assert getattr(decoded, name) == getattr(message, name)
    plain = record_to_message(record.key, record.value, record.headers, record.timestamp)
    assert plain.body == decoded.body


def test_a_store_writes_version_2_segments_that_the_stream_decoder_reads(tmp_path: Path) -> None:
    positions = fill(tmp_path, 30, segment_bytes=1024)
    segments = sorted(tmp_path.glob("*.seg"))
    assert len(segments) > 1
    seen = []
    for path in segments:
        data = path.read_bytes()
        assert SEGMENT_HEADER.unpack_from(data)[1] == QUEUE_LOG_VERSION
        for batch in iter_batches(memoryview(data)[SEGMENT_HEADER_SIZE:]):
            [record] = batch.records()
            seen.append((record.offset, record.value))
    assert seen == [(position, body(i)) for i, position in enumerate(positions)]
    assert positions == sorted(positions) and len(set(positions)) == len(positions)


@pytest.mark.parametrize("size", [0, 1, 63, 64, 2047, 2048, 2049, 70_000])
def test_body_sizes_at_varint_and_chunk_boundaries_round_trip(tmp_path: Path, size: int) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=4096, read_ahead=2)
    bodies = [bytes([65 + i]) * size for i in range(5)]
    for data in bodies:
        store.append(Message("", "", data, persistent=True), None)
    syncer.sync_now()
    store.close()
    _positions, got, _store = recovered(tmp_path, 4096)
    assert got == bodies


def test_a_batch_that_exactly_fills_a_segment_stays_in_it_and_one_byte_more_rolls(
    tmp_path: Path,
) -> None:
    message = Message("ex", "q", b"a" * 100, persistent=True, published_at=1.0)
    batch_size = queue_log.BATCH_PREFIX.size + len(queue_log.encode_message(message, None)[0])
    syncer = Syncer()
    store = SegmentStore.open(
        tmp_path, syncer, segment_bytes=SEGMENT_HEADER_SIZE + 3 * batch_size, read_ahead=2
    )
    entries = [store.append(message, None) for _ in range(4)]
    # A message larger than a whole segment goes alone into a fresh one.
    big = store.append(Message("ex", "q", b"b" * 10_000, persistent=True), None)
    syncer.sync_now()  # (writes the deferred ones: positions are final from here)
    positions = [entry.position for entry in entries]
    assert [p >> 32 for p in positions] == [1, 1, 1, 2]
    assert [p & 0xFFFFFFFF for p in positions[:3]] == [
        SEGMENT_HEADER_SIZE + n * batch_size for n in range(3)
    ]
    assert big.position >> 32 == 3
    store.close()
    assert (tmp_path / "0000000001.seg").stat().st_size == SEGMENT_HEADER_SIZE + 3 * batch_size
    _positions, got, _store = recovered(tmp_path, SEGMENT_HEADER_SIZE + 3 * batch_size)
    assert got == [b"a" * 100] * 4 + [b"b" * 10_000]


def test_a_torn_tail_anywhere_inside_the_last_batch_costs_only_that_batch(tmp_path: Path) -> None:
    template = tmp_path / "template"
    fill(template, 6)
    data = (template / "0000000001.seg").read_bytes()
    last_start, last_end = batch_spans(data)[-1]
    assert last_end == len(data)
    for cut in range(last_start + 1, last_end):
        directory = tmp_path / f"cut{cut}"
        directory.mkdir()
        (directory / "0000000001.seg").write_bytes(data[:cut])
        _positions, got, store = recovered(directory)
        assert got == [body(i) for i in range(5)], cut
        assert store.recovery.truncated_bytes == cut - last_start
        assert (directory / "0000000001.seg").stat().st_size == last_start


@pytest.mark.parametrize(
    "where", ["header length", "header crc", "attributes", "value", "last byte"]
)
def test_damage_in_the_middle_costs_exactly_the_damaged_batch(tmp_path: Path, where: str) -> None:
    """A flipped byte anywhere in batch 4 of 10 loses batch 4, which is message 4 and
    nothing else: the scan resyncs at batch 5 (its position and CRC check out)."""
    positions = fill(tmp_path, 10)
    path = tmp_path / "0000000001.seg"
    data = bytearray(path.read_bytes())
    start, end = batch_spans(bytes(data))[4]
    at = {
        "header length": start + 8,
        "header crc": start + 17,
        "attributes": start + 22,
        "value": start + 70,
        "last byte": end - 1,
    }[where]
    data[at] ^= 0x5A
    path.write_bytes(bytes(data))
    got_positions, got, store = recovered(tmp_path)
    assert got == [body(i) for i in range(10) if i != 4]
    assert got_positions == [p for i, p in enumerate(positions) if i != 4]
    assert store.recovery.damaged_bytes == end - start
    assert store.recovery.truncated_bytes == 0


def test_acks_settle_single_messages_and_a_fully_settled_segment_is_deleted(
    tmp_path: Path,
) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=1024, read_ahead=100)
    for i in range(40):
        store.append(Message("ex", "q", body(i), persistent=True), None)
    syncer.sync_now()  # written before they are consumed: the acks go to ack files
    entries = []
    while (entry := store.shift()) is not None:
        entries.append(entry)
    first_segment = [e for e in entries if e.position >> 32 == 1]
    assert 1 < len(first_segment) < len(entries)
    # Out of order: every odd one, then all of segment 1.
    for entry in entries[1::2]:
        store.settle(entry)
    for entry in first_segment[::2]:
        store.settle(entry)
    syncer.sync_now()
    assert not (tmp_path / "0000000001.seg").exists()
    assert not (tmp_path / "0000000001.ack").exists()
    store._release_files()  # crash
    _positions, got, _store = recovered(tmp_path, 1024)
    settled = {id(e) for e in entries[1::2]} | {id(e) for e in first_segment}
    assert got == [body(i) for i, e in enumerate(entries) if id(e) not in settled]


def test_transient_messages_and_deadlines_in_the_new_format(tmp_path: Path) -> None:
    syncer = Syncer()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=4096)
    store.append(Message("ex", "q", b"t", persistent=False), None)
    store.append(Message("ex", "q", b"p", persistent=True), 2_000_000_000.000123)
    store.append(Message("ex", "q", b"t2", persistent=False), 5.0)
    syncer.sync_now()
    store._release_files()
    store = SegmentStore.open(tmp_path, syncer, segment_bytes=4096)
    try:
        assert store.recovered_deadlines
        entry = store.shift()
        assert entry is not None and entry.message is not None
        assert (entry.message.body, entry.expires_at) == (b"p", 2_000_000_000.000123)
        assert queue_log.DEADLINE_HEADER not in (entry.message.headers or {})
        assert store.shift() is None
    finally:
        store.close()


# -- fuzz: random damage to a queue segment ------------------------------------------------

_COUNT = 24
_TEMPLATE: dict[str, object] = {}


def _template() -> tuple[bytes, list[int]]:
    if not _TEMPLATE:
        with tempfile.TemporaryDirectory() as directory:
            positions = fill(Path(directory), _COUNT, size=60)
            _TEMPLATE["data"] = (Path(directory) / "0000000001.seg").read_bytes()
            _TEMPLATE["positions"] = positions
    return _TEMPLATE["data"], _TEMPLATE["positions"]  # type: ignore[return-value]


_damage = st.lists(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, 1 << 16), st.integers(1, 255)),
        st.tuples(
            st.just("overwrite"), st.integers(0, 1 << 16), st.binary(min_size=1, max_size=80)
        ),
        st.tuples(st.just("truncate"), st.integers(0, 1 << 16), st.just(0)),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_damage)
def test_recovery_from_random_damage_returns_only_intact_batches_and_every_untouched_one(
    damage: list[tuple[str, int, object]],
) -> None:
    """Whatever the damage (flips, overwrites with arbitrary bytes, a cut), opening the
    store raises nothing, returns no message that was not written at that position, and
    keeps every message whose batch bytes were not touched (and lie before any cut)."""
    data, positions = _template()
    damaged = bytearray(data)
    touched: set[int] = set()
    for kind, at, what in damage:
        at = SEGMENT_HEADER_SIZE + at % (len(damaged) - SEGMENT_HEADER_SIZE + 1)
        if kind == "flip":
            if at < len(damaged):
                damaged[at] ^= what  # type: ignore[operator]
                touched.add(at)
        elif kind == "overwrite":
            raw: bytes = what  # type: ignore[assignment]
            raw = raw[: len(damaged) - at]
            damaged[at : at + len(raw)] = raw
            touched.update(range(at, at + len(raw)))
        else:
            del damaged[at:]
            touched.update(range(at, len(data)))
    expected = {position: body(i, 60) for i, position in enumerate(positions)}
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory)
        (path / "0000000001.seg").write_bytes(bytes(damaged))
        got_positions, got, _store = recovered(path)
        segment = path / "0000000001.seg"  # deleted when nothing ready is left in it
        assert not segment.exists() or os.path.getsize(segment) <= len(damaged)
    for position, value in zip(got_positions, got, strict=True):
        assert expected[position] == value
    spans = batch_spans(data)
    for (start, end), position in zip(spans, positions, strict=True):
        if not touched.intersection(range(start, end)):
            assert position in got_positions


@pytest.mark.parametrize("key", ["", "q", "k" * 31, "k" * 32, "k" * 63, "ключ"])
@pytest.mark.parametrize("size", [0, 1, 63, 64, 8191, 8192, 70_000])
def test_the_common_record_read_in_place_equals_the_general_decode(key: str, size: int) -> None:
    message = Message(
        "amq.direct",
        key,
        bytes(range(256)) * (size // 256) + b"z" * (size % 256),
        persistent=True,
        published_at=1_700_000_000.25,
    )
    rest, crc = queue_log.encode_message(message, None)
    batch = queue_log.BATCH_PREFIX.pack(1 << 32 | 16, len(rest) + 9, -1, 2, crc) + rest
    fast, _ = queue_log.decode_message(batch)
    saved = dict(queue_log._EXCHANGES)
    queue_log._EXCHANGES.clear()
    try:
        general, _ = queue_log.decode_message(batch)  # (and learns the section again)
    finally:
        queue_log._EXCHANGES.update(saved)
    for found in (fast, general):
        assert (found.exchange, found.routing_key, bytes(found.body)) == (
            "amq.direct",
            key,
            message.body,
        )
        assert (found.persistent, found.priority, found.expiration_ms) == (True, 0, None)
        assert found.published_at == 1_700_000_000.25
        assert found.headers is None or dict(found.headers) == {}
        assert found.field_values() == general.field_values()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=2000), st.integers(1, 5))
def test_the_scan_of_arbitrary_bytes_raises_nothing_and_keeps_only_checked_batches(
    data: bytes, segment_id: int
) -> None:
    from baedal.storage.queue_store import _ScanResult

    result = _ScanResult()
    raw = bytes(SEGMENT_HEADER_SIZE) + data
    queue_log.scan_batches(Path("fuzz.seg"), raw, segment_id, result)
    assert SEGMENT_HEADER_SIZE <= result.valid_size <= len(raw)
    for offset in list(result.persistent) + result.transient:
        assert not isinstance(
            queue_log._batch_at(raw, memoryview(raw), offset, segment_id << 32 | offset), str
        )
