"""Compressed Kafka batches decode for AMQP readers, bounded: snappy (xerial framing and
raw), lz4 frames and zstd frames inflate to their records, and a payload that would
inflate past the limit is refused with RecordBatchError before it is all allocated."""

from __future__ import annotations

import struct

import cramjam
import lz4.frame
import pytest
import zstandard

from baedal.storage.record_batch import RecordBatchError, _inflate

BIG = b"a" * 100_000


def xerial(data: bytes) -> bytes:
    block = bytes(cramjam.snappy.compress_raw(data))
    return b"\x82SNAPPY\x00" + struct.pack(">ii", 1, 1) + struct.pack(">i", len(block)) + block


PAYLOADS = {
    "snappy-xerial": (2, xerial(BIG)),
    "snappy-raw": (2, bytes(cramjam.snappy.compress_raw(BIG))),
    "lz4": (3, lz4.frame.compress(BIG)),
    "zstd": (4, zstandard.ZstdCompressor().compress(BIG)),
    "zstd-no-content-size": (4, zstandard.ZstdCompressor(write_content_size=False).compress(BIG)),
}


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_inflates_within_the_limit(name: str) -> None:
    codec, payload = PAYLOADS[name]
    assert _inflate(memoryview(payload), codec, len(BIG)) == BIG


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_payload_past_the_limit_is_refused(name: str) -> None:
    codec, payload = PAYLOADS[name]
    with pytest.raises(RecordBatchError, match="inflate past"):
        _inflate(memoryview(payload), codec, len(BIG) - 1)


@pytest.mark.parametrize("name", sorted(PAYLOADS))
def test_damaged_payload_is_a_record_batch_error(name: str) -> None:
    codec, payload = PAYLOADS[name]
    damaged = payload[: len(payload) // 2]
    with pytest.raises(RecordBatchError):
        _inflate(memoryview(damaged), codec, len(BIG))
