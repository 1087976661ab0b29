"""Micro-benchmark: ``StreamQueue.publish`` of small persistent messages, group-committed.

    .venv/bin/python bench/micro/bench_stream_publish.py               # messages/s (noisy)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.sp \\
        .venv/bin/python bench/micro/bench_stream_publish.py --messages 20000 --quiet
    # subtract a run with --messages 0 (start-up) and divide by the message count

Each "loop turn" publishes ``--per-turn`` messages, then runs the syncer's job
synchronously (``sync_now``: flush, fsync, callbacks), as the broker's event loop does
between turns.  ``--no-fsync`` replaces fsync with a no-op so the figure is the CPU cost
of publish -> record -> append, not the disk's.  The broker around the stream is a
minimal stand-in (this measures the stream, not routing or the AMQP codec).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path
from typing import Any

from baedal.cluster.replicator import LocalReplicator
from baedal.core.message import Message
from baedal.core.stream import StreamQueue
from baedal.storage.stream_log import StreamLog
from baedal.storage.syncer import Syncer


class _Broker:
    def __init__(self, syncer: Syncer) -> None:
        self.syncer = syncer
        self.replicator = LocalReplicator()
        self.storage = None

    def after_sync(self, callback: Any, on_error: Any = None) -> bool:
        self.syncer.after_sync(callback, on_error)
        return True

    def call_soon(self, callback: Any) -> None:
        callback()

    def call_later(self, delay: float, callback: Any) -> None:
        raise RuntimeError("no loop")

    def write_failed(self, store: Any, exc: BaseException) -> None:
        raise exc


class _VHost:
    name = "/"

    def __init__(self, broker: _Broker) -> None:
        self.broker = broker


def run(messages: int, per_turn: int, size: int, fsync: bool, quiet: bool) -> None:
    syncer = Syncer()
    if not fsync:
        syncer.fsync_function = lambda fd: None
    body = b"x" * size
    with tempfile.TemporaryDirectory(prefix="baedal-bench-sp-") as tmp:
        log = StreamLog.open(Path(tmp) / "s", syncer=syncer)
        stream = StreamQueue(_VHost(_Broker(syncer)), "s", log)  # type: ignore[arg-type]
        message = Message("", "s", body, persistent=True, published_at=time.time())
        publish = stream.publish
        start = time.perf_counter()
        done = 0
        while done < messages:
            for _ in range(min(per_turn, messages - done)):
                publish(message)
            done += per_turn
            syncer.sync_now()
        syncer.sync_now()  # the last turn's commit callback asked for one more
        elapsed = time.perf_counter() - start
        assert stream.committed_offset == messages, (stream.committed_offset, messages)
        log.close()
    if not quiet and messages:
        print(
            f"{messages} messages of {size} B, {per_turn} per turn: "
            f"{elapsed / messages * 1e6:.2f} us/message"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--per-turn", type=int, default=100)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--fsync", action="store_true", help="really fsync each turn")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    run(args.messages, args.per_turn, args.size, args.fsync, args.quiet)


if __name__ == "__main__":
    main()
