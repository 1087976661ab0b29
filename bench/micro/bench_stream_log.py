"""Micro-benchmark: stream log append (1 KB records, batches of 100) and sequential reads.

    .venv/bin/python bench/micro/bench_stream_log.py                 # records/s (noisy)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.stream \\
        .venv/bin/python bench/micro/bench_stream_log.py --records 20000 --quiet
    # then subtract a run with --records 0 (start-up) and divide by the record count;
    # per phase: --phase append (minus --records 0), --phase read (minus --phase
    # append_batch), and so on

Phases, each timed separately:

* ``append``: ``StreamLog.append`` of neutral records (encode to RecordBatch v2 +
  buffered write + index upkeep).  No fsync: the syncer pays for durability once per
  group commit, not per append.
* ``append_batch``: the same bytes as ready-made batches (what a Kafka produce costs:
  CRC check + base-offset rewrite + write).
* ``read``: a reader from ``first`` over everything, whole batches with their CRC
  checked (what a Kafka fetch through user space would cost).
* ``read_records``: the same, decoded into records (what an AMQP delivery needs).

Segments roll at 64 MiB so a default run crosses several of them.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from baedal.storage.record_batch import Record, encode_batch
from baedal.storage.stream_log import StreamLog

SEGMENT_BYTES = 64 * 1024 * 1024


PHASES = ("append", "append_batch", "read", "read_records")


def run(records: int, batch: int, size: int, phases: tuple[str, ...], quiet: bool) -> None:
    value = b"x" * size
    batches = records // batch
    group = [Record(value, headers=[("content-type", b"application/octet-stream")])] * batch
    results: list[tuple[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="baedal-bench-stream-") as tmp:
        log = StreamLog.open(Path(tmp) / "a", max_segment_bytes=SEGMENT_BYTES)
        if "append" in phases:
            append = log.append
            start = time.perf_counter()
            for _ in range(batches):
                append(group)
            log.flush()
            results.append(("append", time.perf_counter() - start))

        if "append_batch" in phases or "append" not in phases:
            ready = [bytes(encode_batch(group)) for _ in range(min(batches, 64))]
            # The read phases alone (for callgrind) fill the log this cheaper way.
            raw = (
                log
                if "append" not in phases
                else StreamLog.open(Path(tmp) / "b", max_segment_bytes=SEGMENT_BYTES)
            )
            append_batch = raw.append_batch
            start = time.perf_counter()
            for i in range(batches):
                append_batch(bytearray(ready[i % len(ready)]))
            raw.flush()
            results.append(("append_batch", time.perf_counter() - start))
            if raw is not log:
                raw.close()

        if "read" in phases:
            reader = log.reader("first")
            read = reader.read
            count = 0
            start = time.perf_counter()
            while chunk := read(1024 * 1024):
                for item in chunk:
                    count += item.record_count
            results.append(("read", time.perf_counter() - start))
            assert count == batches * batch, count

        if "read_records" in phases:
            reader = log.reader("first")
            read_records = reader.read_records
            count = 0
            start = time.perf_counter()
            while decoded := read_records(1024 * 1024):
                count += len(decoded)
            results.append(("read_records", time.perf_counter() - start))
            assert count == batches * batch, count
        segments = log.segment_count
        log.close()
    if quiet or not batches:
        return
    total = batches * batch
    megabytes = total * size / 1e6
    print(f"{total:,} records of {size} B in batches of {batch}, {segments} segments")
    for name, seconds in results:
        print(f"  {name:<13} {total / seconds:>12,.0f} records/s {megabytes / seconds:>9,.1f} MB/s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--batch", type=int, default=100, help="records per append")
    parser.add_argument("--size", type=int, default=1024, help="value bytes per record")
    parser.add_argument(
        "--phase",
        action="append",
        choices=PHASES,
        help="run only these phases (repeatable); read phases alone fill the log with "
        "append_batch, so subtract an --phase append_batch run under callgrind",
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    run(args.records, args.batch, args.size, tuple(args.phase or PHASES), args.quiet)


if __name__ == "__main__":
    main()
