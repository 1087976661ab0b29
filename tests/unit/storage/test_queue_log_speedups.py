"""The queue log's compiled read side (``baedal/_speedups/_records.c``) against the
Python code it speeds up: CRC-32C, the batch header check, the recovery scan's walk and
the common record's in-place decode.  The Python code is the reference: every C function
hands back (None) what it does not accept, so for any input, intact, damaged or
arbitrary, the outcome must be the Python one: the same value, or the same error type
(and, for the header check, the same message).

Skipped when the extension is not built (``python setup.py build_ext --inplace``) or is
disabled by ``BAEDAL_NO_SPEEDUPS``; the rest of the storage suite then runs on the
Python code alone.
"""

from __future__ import annotations

import shutil
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import crc32c
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from baedal._speedups import load
from baedal.core.message import Message, StoredExtension
from baedal.storage import queue_log, record_batch
from baedal.storage.queue_store import SegmentStore, _ScanResult
from baedal.storage.record_batch import RecordBatchError
from baedal.storage.segment import SEGMENT_HEADER_SIZE
from baedal.storage.syncer import Syncer

speedups = load("_records")
pytestmark = pytest.mark.skipif(
    speedups is None, reason="C speed-ups not built or disabled (BAEDAL_NO_SPEEDUPS)"
)

FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@contextmanager
def without(module: Any, name: str) -> Iterator[None]:
    """``module.name`` (a compiled function) set to None: the Python code alone."""
    saved = getattr(module, name)
    setattr(module, name, None)
    try:
        yield
    finally:
        setattr(module, name, saved)


def outcome(call: Callable[[], Any]) -> Any:
    """The value, or the raised error's type and message."""
    try:
        return call()
    except Exception as exc:  # the comparison is the point: any type must match
        return (type(exc), str(exc))


# -- batch header check ----------------------------------------------------------------------


def queue_batch(message: Message, position: int, expires_at: float | None = None) -> bytes:
    rest, crc = queue_log.encode_message(message, expires_at)
    return queue_log.BATCH_PREFIX.pack(position, len(rest) + 9, -1, 2, crc) + rest


def check_both(data: Any, pos: int, max_bytes: int) -> None:
    for name in ("check_batch", "decode_header"):
        function = getattr(record_batch, name)
        fast = outcome(lambda: function(data, pos, max_bytes))  # noqa: B023
        with without(record_batch, "_batch_header"):
            slow = outcome(lambda: function(data, pos, max_bytes))  # noqa: B023
        assert fast == slow, name


@FUZZ
@given(
    st.binary(max_size=200),
    st.lists(st.tuples(st.integers(0, 400), st.integers(0, 255)), max_size=4),
    st.integers(-2, 80),
    st.sampled_from([49, 61, 100, 1 << 30]),
    st.sampled_from(["bytes", "bytearray", "memoryview"]),
)
def test_the_header_check_answers_as_the_python_one(
    body: bytes, damage: list[tuple[int, int]], pos: int, max_bytes: int, kind: str
) -> None:
    data = bytearray(bytes(max(pos, 0)) + queue_batch(Message("ex", "k", body, True), 5))
    for at, value in damage:
        if at < len(data):
            data[at] = value
    wrapped: Any = {"bytes": bytes, "bytearray": bytearray, "memoryview": memoryview}[kind](data)
    check_both(wrapped, pos, max_bytes)


@FUZZ
@given(st.binary(min_size=0, max_size=120), st.integers(0, 5))
def test_the_header_check_of_arbitrary_bytes_answers_as_the_python_one(
    data: bytes, pos: int
) -> None:
    # a magic 2 at 16 + pos reaches the later checks more often
    if len(data) > pos + 16 and data[pos + 16] % 3 == 0:
        data = data[: pos + 16] + b"\x02" + data[pos + 17 :]
    check_both(data, pos, 1 << 20)


def test_unusual_arguments_are_left_to_python() -> None:
    batch = queue_batch(Message("ex", "k", b"v", True), 0)
    check_both(memoryview(batch).cast("H") if len(batch) % 2 == 0 else memoryview(batch), 0, 1 << 20)
    check_both(batch, 1 << 70, 1 << 20)  # a position past 64 bits
    check_both(batch, 0, 1 << 70)  # a limit past 64 bits
    released = memoryview(batch)
    released.release()
    check_both(released, 0, 1 << 20)
    fields, size = record_batch.check_batch(batch, 0, 1 << 20)
    assert size == len(batch) and fields[0] == 0 and fields[3] == 2


def zigzag(value: int) -> bytes:
    return bytes(record_batch._varint(value))


@st.composite
def crafted_batches(draw: st.DrawFn, position: int = 0) -> bytes:
    """A batch whose header fields and record start are drawn near the boundaries of
    every check (count, lastOffsetDelta, magic, length, position, long varints), with a
    correct CRC most of the time, so the checks after the CRC are reached."""
    key_length = draw(st.sampled_from([-1, 0, 3, -2, 200]) | st.integers(-(2**63), 2**63 - 1))
    record = b"".join(
        (
            draw(st.sampled_from([b"\x10", b"\xff" * 9 + b"\x7f", b"\x80"])),
            b"\x00",
            zigzag(draw(st.sampled_from([0, 1, -1, 2**40]))),
            zigzag(draw(st.sampled_from([0, 1, 70]))),
            zigzag(key_length),
            b"k" * max(0, min(key_length, 5)),
            draw(st.sampled_from([b"\x06", b"\x07", b"\x01", b"\xff" * 9 + b"\x7f", b"\x80\x10"])),
            draw(st.binary(max_size=6)),
        )
    )
    tail = struct.pack(
        ">hiqqqhii",
        draw(st.sampled_from([0, 0x4000, 0x2000, 0x6000, -1, 0x0008])),
        draw(st.sampled_from([0, 1, -1])),
        draw(st.sampled_from([0, 1_700_000_000_000, -1])),
        draw(st.sampled_from([0, -1])),
        -1,
        -1,
        -1,
        draw(st.sampled_from([1, 1, 0, 2, -1])),
    ) + record
    crc = crc32c.crc32c(tail) if draw(st.integers(0, 9)) else draw(st.integers(0, 2**32 - 1))
    length = len(tail) + 9 + draw(st.sampled_from([0, 0, 0, 1, -1, 1 << 30, -(1 << 31)]))
    magic = draw(st.sampled_from([2, 2, 2, 1, -1]))
    base = position if draw(st.integers(0, 5)) else draw(st.integers(-(2**63), 2**63 - 1))
    return struct.pack(">qiibI", base, max(-(2**31), min(length, 2**31 - 1)), -1, magic, crc) + tail


@FUZZ
@given(crafted_batches(), st.sampled_from([61, 100, 1 << 30]))
def test_crafted_headers_are_checked_as_the_python_code_checks_them(
    batch: bytes, max_bytes: int
) -> None:
    check_both(batch, 0, max_bytes)
    check_both(b"xyz" + batch, 3, max_bytes)


# -- the common record -----------------------------------------------------------------------


def describe(result: tuple[Message, float | None]) -> tuple[Any, ...]:
    message, expires_at = result
    return (
        message.exchange,
        message.routing_key,
        bytes(message.body),
        type(message.body),
        message.persistent,
        message.priority,
        message.expiration_ms,
        message.published_at,
        repr(message.extension),
        outcome(message.field_values),
        outcome(lambda: message.headers),
        expires_at,
    )


def decode_both(batch: bytes) -> tuple[Any, Any]:
    fast = outcome(lambda: describe(queue_log.decode_message(batch)))
    with without(queue_log, "_decode_common"):
        slow = outcome(lambda: describe(queue_log.decode_message(batch)))
    return fast, slow


keys = st.sampled_from(["", "q", "k" * 63, "k" * 64, "ключ", "a.b.c"]) | st.text(max_size=70)
exchanges = st.sampled_from(["", "amq.direct", "e" * 200]) | st.text(max_size=12)
bodies = st.binary(max_size=300) | st.sampled_from([0, 63, 64, 8191, 8192, 70_000]).map(
    lambda n: b"b" * n
)
timestamps = st.sampled_from([0.0, 1_700_000_000.25, 0.001]) | st.integers(0, 2**53).map(
    lambda ms: ms / 1000
)


@FUZZ
@given(exchanges, keys, bodies, timestamps, st.integers(0, 2**40))
def test_the_common_record_decodes_as_the_python_code_reads_it(
    exchange: str, key: str, body: bytes, published: float, position: int
) -> None:
    message = Message(exchange, key, body, persistent=True, published_at=published)
    batch = queue_batch(message, position)
    fast, slow = decode_both(batch)
    assert fast == slow
    assert fast[:3] == (exchange, key, body) and fast[4] is True
    assert fast[7] == int(published * 1000) / 1000.0


@FUZZ
@given(
    exchanges,
    keys,
    bodies,
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), min_size=1, max_size=3),
)
def test_a_damaged_common_record_gets_the_python_answer(
    exchange: str, key: str, body: bytes, damage: list[tuple[int, int]]
) -> None:
    batch = bytearray(queue_batch(Message(exchange, key, body, True), 16))
    queue_log.decode_message(bytes(batch))  # its section is known from here on
    for at, value in damage:
        at = 21 + at % (len(batch) - 21)  # past the CRC: decode_message trusts it
        batch[at] = value
    fast, slow = decode_both(bytes(batch))
    assert fast == slow
    if isinstance(fast, tuple) and len(fast) == 2:  # an error: only the codec's own
        assert issubclass(fast[0], RecordBatchError), fast


@FUZZ
@given(st.binary(max_size=300))
def test_arbitrary_bytes_decode_as_the_python_code_decodes_them(data: bytes) -> None:
    # Often shaped like a common record: attributes 0, a known section at the end.
    section = queue_log._SECTIONS.get("amq.direct") or next(iter(queue_log._EXCHANGES), b"\x00")
    for candidate in (data, data[:21] + b"\x00\x00" + data[23:] + section):
        fast, slow = decode_both(candidate)
        assert fast == slow
        if isinstance(fast, tuple) and len(fast) == 2:
            assert issubclass(fast[0], RecordBatchError), fast


def test_other_records_still_take_the_general_path() -> None:
    messages = [
        (Message("ex", "q", b"transient", persistent=False), None),
        (Message("ex", "q", b"deadline", persistent=True), 2_000_000_000.5),
        (Message("ex", "q", b"prio", persistent=True, priority=3), None),
        (Message("amq.topic", "a.b", b"ext", True, 0, None, 1.5, StoredExtension("t", b"x")), None),
        (Message.build("ex", "q", b"h", persistent=True, headers={"a": 1}), None),
    ]
    for message, expires_at in messages:
        batch = queue_batch(message, 1 << 32 | 16, expires_at)
        assert speedups.decode_common(batch, queue_log._EXCHANGES) is None
        fast, slow = decode_both(batch)
        assert fast == slow and fast[2] == message.body and fast[-1] == expires_at


def raw_varint(value: int) -> bytes:
    """An unsigned varint (no zig-zag): odd values are zig-zag negatives."""
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


@st.composite
def common_like_batches(draw: st.DrawFn) -> bytes:
    """Bytes shaped like the common record with at most one field off what the
    in-place read accepts (so each check is what decides): the attributes, deltas,
    record length, key or value length (odd = negative, long forms), the section (cut,
    extended, missing)."""
    known = queue_log._SECTIONS.get("amq.direct")
    if known is None:
        queue_log.decode_message(queue_batch(Message("amq.direct", "k", b"v", True), 0))
        known = queue_log._SECTIONS["amq.direct"]
    key = draw(st.binary(max_size=3) | st.binary(max_size=70))
    value = draw(st.binary(max_size=3) | st.binary(max_size=200))
    parts = {
        "attributes": b"\x00\x00",
        "record": b"\x00\x00\x00",
        "key length": b"\x01" if not key and draw(st.booleans()) else raw_varint(2 * len(key)),
        "value length": raw_varint(2 * len(value)),
        "section": known,
    }
    off = draw(st.sampled_from([None, "length", *parts]))
    if off is not None and off != "length":
        parts[off] = draw(
            {
                "attributes": st.binary(min_size=2, max_size=2),
                "record": st.binary(min_size=3, max_size=3),
                "key length": st.sampled_from(
                    [raw_varint(2 * len(key) + 1), b"\x80\x01", raw_varint(2 * len(key) + 2)]
                ),
                "value length": st.sampled_from(
                    [
                        raw_varint(2 * len(value) + 1),
                        raw_varint(2 * len(value) + 2),
                        b"\x80\x80\x01",
                    ]
                ),
                "section": st.sampled_from([known[:-1], known + b"x", b"", b"\x00"]),
            }[off]
        )
    body = (
        parts["record"] + parts["key length"] + key + parts["value length"] + value + parts["section"]
    )
    length = zigzag(len(body))
    if off == "length":
        length = draw(st.sampled_from([b"\x80\x01", b"\x80\x80\x01", b"\x00", zigzag(len(body) + 1)]))
    tail = struct.pack(">iqqqhii", 0, 1_700_000_000_123, 0, -1, -1, -1, 1)
    return bytes(21) + parts["attributes"] + tail + length + body


@FUZZ
@given(common_like_batches())
def test_records_shaped_like_the_common_one_decode_as_the_python_code_decodes_them(
    batch: bytes,
) -> None:
    fast, slow = decode_both(batch)
    assert fast == slow
    if isinstance(fast, tuple) and len(fast) == 2:
        assert issubclass(fast[0], RecordBatchError), fast


# -- the recovery scan -----------------------------------------------------------------------


def scan_both(data: bytes, segment_id: int) -> tuple[tuple[Any, ...], tuple[Any, ...]]:
    results = []
    for compiled in (True, False):
        result = _ScanResult()
        if compiled:
            queue_log.scan_batches(Path("x.seg"), data, segment_id, result)
        else:
            with without(queue_log, "_scan_intact"):
                queue_log.scan_batches(Path("x.seg"), data, segment_id, result)
        results.append(
            (
                list(result.persistent.items()),
                result.transient,
                result.damaged,
                result.valid_size,
                result.deadlines,
            )
        )
    return results[0], results[1]


_SEGMENTS: dict[str, bytes] = {}


def mixed_segment() -> bytes:
    """A segment of every kind of batch: common, keyed, transient, with a deadline,
    typed headers, bodies across the varint sizes."""
    if "mixed" not in _SEGMENTS:
        tmp = Path(tempfile.mkdtemp(prefix="baedal-mixed-"))
        syncer = Syncer()
        store = SegmentStore.open(tmp, syncer, segment_bytes=1 << 22)
        for i in range(40):
            store.append(Message("ex", "k" * (i % 3), b"c" * (i * 37 % 300), True), None)
            store.append(Message("ex", "q", b"t", persistent=False), None)
            store.append(Message("ex", "", b"d" * i, True), 1_900_000_000.0 + i)
            store.append(Message.build("e2", "q", b"h" * 9000, persistent=True, headers={"n": i}), None)
        syncer.sync_now()
        store.close()
        _SEGMENTS["mixed"] = (tmp / "0000000001.seg").read_bytes()
        shutil.rmtree(tmp)
    return _SEGMENTS["mixed"]


def test_the_scan_of_an_intact_segment_files_every_batch_as_python() -> None:
    data = mixed_segment()
    fast, slow = scan_both(data, 1)
    assert fast == slow
    assert len(fast[0]) == 120 and len(fast[1]) == 40 and fast[4] is True
    assert fast[3] == len(data)


@FUZZ
@given(
    st.lists(
        st.tuples(st.integers(0, 1 << 20), st.binary(min_size=1, max_size=20)),
        min_size=1,
        max_size=4,
    ),
    st.integers(0, 1 << 20) | st.none(),
)
def test_the_scan_of_a_damaged_segment_gives_the_python_result(
    damage: list[tuple[int, bytes]], cut: int | None
) -> None:
    data = bytearray(mixed_segment())
    for at, raw in damage:
        at = SEGMENT_HEADER_SIZE + at % (len(data) - SEGMENT_HEADER_SIZE)
        data[at : at + len(raw)] = raw[: len(data) - at]
    if cut is not None:
        del data[SEGMENT_HEADER_SIZE + cut % (len(data) - SEGMENT_HEADER_SIZE) :]
    fast, slow = scan_both(bytes(data), 1)
    assert fast == slow


@FUZZ
@given(st.binary(max_size=1500), st.integers(0, 3))
def test_the_scan_of_arbitrary_bytes_gives_the_python_result(data: bytes, segment_id: int) -> None:
    fast, slow = scan_both(bytes(SEGMENT_HEADER_SIZE) + data, segment_id)
    assert fast == slow


def test_the_scan_leaves_long_varints_and_odd_lengths_to_python() -> None:
    """A CRC-valid batch whose record starts with varints C does not read (over 64 bits,
    a key past the record) is filed (or refused) by the Python code, with the same
    result."""
    position = 1 << 32 | SEGMENT_HEADER_SIZE
    for record in (
        b"\xff" * 9 + b"\x7f" + b"\x00\x00\x00\x01\x02",  # record length: 10 bytes, > 64 bits
        b"\x10\x00\x00\x00\x7e\x02",  # key length 63, past the record
        b"\x10\x00\x00\x00\x03\x02\x00",  # key length -2: Python files it (no skip)
        b"\x10\x00\x00\x00\x01" + b"\xff" * 9 + b"\x7f",  # value length past 64 bits
    ):
        tail = struct.pack(">hiqqqhii", 0, 0, 0, 0, -1, -1, -1, 1) + record
        batch = struct.pack(">qiibI", position, len(tail) + 9, -1, 2, crc32c.crc32c(tail)) + tail
        fast, slow = scan_both(bytes(SEGMENT_HEADER_SIZE) + batch, 1)
        assert fast == slow


@FUZZ
@given(st.lists(st.integers(0, 3), min_size=1, max_size=4), st.data())
def test_the_scan_of_crafted_batches_gives_the_python_result(
    kinds: list[int], data: st.DataObject
) -> None:
    """Batches at their own positions (or not), with header fields and record starts
    near every check: C files exactly what Python files, and stops where it stops."""
    segment = bytearray(SEGMENT_HEADER_SIZE)
    for kind in kinds:
        position = 1 << 32 | len(segment)
        if kind == 0:  # an ordinary message batch, as the store writes it
            segment += queue_batch(Message("ex", "k", b"v" * 70, True), position)
        else:
            segment += data.draw(crafted_batches(position))
    fast, slow = scan_both(bytes(segment), 1)
    assert fast == slow


def one_batch(position: int, **changes: int) -> bytes:
    """A CRC-valid batch of one record (key "k", value "abc") with header fields changed."""
    fields = {"attributes": 0, "last_delta": 0, "count": 1, "magic": 2, "length": 0, "base": position}
    fields.update(changes)
    tail = struct.pack(
        ">hiqqqhii", fields["attributes"], fields["last_delta"], 0, 0, -1, -1, -1, fields["count"]
    ) + b"\x12\x00\x00\x00\x02k\x06abc\x00"
    length = len(tail) + 9 + fields["length"]
    return struct.pack(">qiibI", fields["base"], length, -1, fields["magic"], crc32c.crc32c(tail)) + tail


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"attributes": 0x4000},
        {"attributes": 0x2000},
        {"attributes": -1},
        {"count": 2},
        {"count": 0},
        {"count": -1},
        {"last_delta": 1},
        {"last_delta": -1},
        {"magic": 1},
        {"length": 1},
        {"length": -1},
        {"base": 12345},
    ],
    ids=repr,
)
def test_every_header_check_of_the_scan_is_the_python_one(changes: dict[str, int]) -> None:
    position = 1 << 32 | SEGMENT_HEADER_SIZE
    good = one_batch(position + 200)  # a later intact batch to resync at
    first = one_batch(position, **changes)
    data = bytearray(SEGMENT_HEADER_SIZE) + first
    data += bytes(200 - len(first)) + good if len(first) <= 200 else b""
    fast, slow = scan_both(bytes(data), 1)
    assert fast == slow
    accepted = SEGMENT_HEADER_SIZE in dict(fast[0]) or SEGMENT_HEADER_SIZE in fast[1]
    assert accepted == (set(changes) <= {"attributes"}), fast
