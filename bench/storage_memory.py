"""Fill one SegmentStore with N persistent 1 KB messages and report peak RSS.

    .venv/bin/python bench/storage_memory.py [--count N] [--dir PATH] [--keep]

Runs the real path: an asyncio loop, the group-commit ``Syncer`` with fsync in its
thread, confirm callbacks via ``after_sync``.  Then drains a sample from the head to
show reads come back from disk.  The claim under test: queue depth does not drive
memory (10 M x 1 KB must stay well under 200 MB RSS).
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import shutil
import tempfile
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from baedal.core.message import Message
from baedal.storage.memory import rss_bytes
from baedal.storage.queue_store import SegmentStore
from baedal.storage.syncer import Syncer

BATCH = 1000
MAX_UNCONFIRMED_BATCHES = 64  # like a publisher with a bounded confirm window


async def fill(directory: Path, count: int) -> None:
    fatal: list[BaseException] = []
    syncer = Syncer(on_fatal=fatal.append)
    store = SegmentStore.open(directory, syncer)
    body = b"x" * 1024
    confirmed = 0
    peak_rss = rss_bytes()
    in_flight: list[asyncio.Future[None]] = []

    start = time.perf_counter()
    columns = (
        TextColumn("publishing"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rss]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns) as progress:
        task = progress.add_task("fill", total=count, rss="")
        published = 0
        while published < count:
            n = min(BATCH, count - published)
            for i in range(n):
                store.append(
                    Message(
                        "",
                        "bench",
                        body,
                        persistent=True,
                        published_at=float(published + i),
                    ),
                    None,
                )
            published += n
            in_flight.append(syncer.synced())
            if len(in_flight) >= MAX_UNCONFIRMED_BATCHES:
                await in_flight.pop(0)
                confirmed += BATCH
            if published % (BATCH * 50) == 0 or published == count:
                peak_rss = max(peak_rss, rss_bytes())
                progress.update(task, completed=published, rss=f"RSS {peak_rss / 2**20:.0f} MiB")
            await asyncio.sleep(0)
        for future in in_flight:
            await future
    elapsed = time.perf_counter() - start
    if fatal:
        raise SystemExit(f"fsync failed: {fatal[0]}")

    segments = len(list(directory.glob("*.seg")))
    disk = sum(path.stat().st_size for path in directory.glob("*.seg"))
    peak_rss = max(peak_rss, rss_bytes())
    start_read = time.perf_counter()
    sample = min(count, 200_000)
    for _ in range(sample):
        entry = store.shift()
        assert entry is not None
        store.settle(entry)
    read_elapsed = time.perf_counter() - start_read
    peak_rss = max(peak_rss, rss_bytes())
    await syncer.synced()
    store.close()
    syncer.close()
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(
        f"messages:            {count:,} x 1 KB persistent, in {segments} segments ({disk / 2**30:.2f} GiB)"
    )
    print(
        f"publish (confirmed): {count / elapsed:,.0f} msg/s  ({elapsed:.1f} s, {syncer.fsync_jobs} fsync jobs)"
    )
    print(f"shift+settle head:   {sample / read_elapsed:,.0f} msg/s  ({sample:,} messages)")
    print(f"RSS sampled peak:    {peak_rss / 2**20:.1f} MiB")
    print(f"ru_maxrss:           {maxrss / 2**20:.1f} MiB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument(
        "--dir", type=Path, default=None, help="data directory (default: a temporary one)"
    )
    parser.add_argument("--keep", action="store_true", help="keep the data directory")
    args = parser.parse_args()
    directory = args.dir or Path(tempfile.mkdtemp(prefix="baedal-memory-"))
    try:
        asyncio.run(fill(directory, args.count))
    finally:
        if not args.keep:
            shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
