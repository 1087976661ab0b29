"""Write 1,000,000 persistent messages across 10 stores, then time their recovery.

    .venv/bin/python bench/storage_recovery.py [--count N] [--stores S] [--size BYTES]

Half of each store's messages are consumed and acked before the "crash" (no close), so
recovery does the real work: scan every segment, check every CRC, load the ack files,
and skip acked records.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from baedal.core.message import Message
from baedal.storage.memory import rss_bytes
from baedal.storage.queue_store import SegmentStore
from baedal.storage.syncer import Syncer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=1_000_000)
    parser.add_argument("--stores", type=int, default=10)
    parser.add_argument("--size", type=int, default=256, help="body bytes")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="baedal-recovery-"))
    per_store = args.count // args.stores
    body = b"r" * args.size
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    try:
        syncer = Syncer()
        with Progress(*columns) as progress:
            task = progress.add_task("writing", total=per_store * args.stores)
            for n in range(args.stores):
                store = SegmentStore.open(root / f"q{n}", syncer)
                for i in range(per_store):
                    store.append(Message("", f"q{n}", body, persistent=True), None)
                    if i % 10_000 == 9_999:
                        progress.advance(task, 10_000)
                for _ in range(per_store // 2):
                    store.settle(store.shift())  # type: ignore[arg-type]
                syncer.sync_now()
                # crash: no close(), no clean marker

            task = progress.add_task("recovering", total=args.stores)
            recovered = 0
            start = time.perf_counter()
            for n in range(args.stores):
                store = SegmentStore.open(root / f"q{n}", Syncer())
                recovered += store.ready_count
                progress.advance(task)
            elapsed = time.perf_counter() - start
        total_bytes = sum(path.stat().st_size for path in root.rglob("*.seg"))
        print(
            f"wrote {per_store * args.stores:,} x {args.size} B persistent messages in {args.stores} stores, acked half"
        )
        print(
            f"recovery: {elapsed:.2f} s for {total_bytes / 2**20:.0f} MiB of segments, {recovered:,} ready messages recovered"
        )
        print(
            f"          {per_store * args.stores / elapsed:,.0f} records/s, {total_bytes / 2**20 / elapsed:.0f} MiB/s; RSS now {rss_bytes() / 2**20:.0f} MiB"
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
