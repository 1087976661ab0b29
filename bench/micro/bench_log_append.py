"""Micro-benchmark: segment appends/s and sequential + random reads/s for 16 B and 1 KB records.

    .venv/bin/python bench/micro/bench_log_append.py [--count N]

Appends are buffered writes only (no fsync: the syncer pays for durability, once per
group).  Also times the full ``SegmentStore.append`` path (encode + append + bookkeeping).
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from baedal.core.message import Message
from baedal.storage.queue_store import SegmentStore
from baedal.storage.segment import SEGMENT_HEADER_SIZE, Segment
from baedal.storage.syncer import Syncer


def bench(size: int, count: int, directory: Path) -> None:
    payload = b"x" * size
    segment = Segment.create(directory, size, capacity=1 << 31)
    append = segment.append
    start = time.perf_counter()
    offsets = [append(1, payload) for _ in range(count)]
    segment.flush()
    append_rate = count / (time.perf_counter() - start)

    start = time.perf_counter()
    read = sum(1 for _ in segment.iter_records(SEGMENT_HEADER_SIZE))
    sequential_rate = read / (time.perf_counter() - start)

    sample = random.Random(1).sample(offsets, min(count, 100_000))
    start = time.perf_counter()
    for offset in sample:
        segment.read(offset)
    random_rate = len(sample) / (time.perf_counter() - start)
    segment.close()

    syncer = Syncer()
    store = SegmentStore(directory / f"store-{size}", syncer, read_ahead=1024)
    message = Message("ex", "routing.key", payload, persistent=True)
    start = time.perf_counter()
    for _ in range(count):
        store.append(message, None)
    store_rate = count / (time.perf_counter() - start)
    start = time.perf_counter()
    shifted = 0
    while (entry := store.shift()) is not None:
        store.settle(entry)
        shifted += 1
    shift_rate = shifted / (time.perf_counter() - start)
    syncer.sync_now()
    store.close()
    print(
        f"{size:>5} B records: segment append {append_rate:>10,.0f}/s   sequential read {sequential_rate:>10,.0f}/s   "
        f"random read {random_rate:>9,.0f}/s   store append {store_rate:>9,.0f}/s   store shift+settle {shift_rate:>9,.0f}/s"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=500_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="baedal-bench-") as tmp:
        for size in (16, 1024):
            bench(size, args.count, Path(tmp))


if __name__ == "__main__":
    main()
