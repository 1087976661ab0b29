"""Scheduled delivery under load: firing error and broker memory (issue 12 item 6).

Starts ``baedal serve`` in a subprocess, publishes ``--messages`` persistent messages
with ``_AMQ_SCHED_DELIVERY`` (absolute due times) so their due times are spread evenly over ``--spread``
seconds starting ``--lead`` seconds from now (all published before the first is due),
consumes them with an auto-ack consumer on another connection, and reports:

* firing error: receive time minus due time, per message (includes the broker's
  routing and the delivery to the consumer: an upper bound on the timer's own error);
* broker RSS sampled every second: at start, after publishing, peak while firing, end;
* how many arrived, and whether any arrived twice.

    .venv/bin/python bench/scheduled_firing.py --messages 50000 --spread 60

The issue's target run is ``--messages 1000000 --spread 600`` (memory flat, p99 under
50 ms); on a 2-core machine shared with other work, smaller runs are what fit.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pika
import psutil

QUEUE = "bench.scheduled"
STAMP = struct.Struct("<dI")


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-m", "baedal", "serve", "--port", "0", "--http-port", "off",
         "--kafka-port", "off", "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"amqp://[^:]+:(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"baedal serve did not start: {line!r}")
    return process, f"amqp://guest:guest@127.0.0.1:{match.group(1)}/"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=50_000)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which due times are spread")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds before the first is due (default: estimated)")
    parser.add_argument("--size", type=int, default=64, help="body bytes")
    args = parser.parse_args()
    lead = args.lead or max(10.0, args.messages / 1000.0)  # room to publish them all first

    with tempfile.TemporaryDirectory(prefix="baedal-sched-bench-") as data_dir:
        process, url = _start(Path(data_dir))
        broker = psutil.Process(process.pid)
        rss: list[tuple[float, int]] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss.append((time.time(), broker.memory_info().rss))
                stop.wait(1.0)

        errors: list[float] = []
        seen: set[int] = set()
        duplicates = 0

        def consume() -> None:
            nonlocal duplicates
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.basic_qos(prefetch_count=1000)
            for _method, _properties, body in channel.consume(QUEUE, auto_ack=True, inactivity_timeout=1.0):
                if body is not None:
                    due, index = STAMP.unpack_from(body)
                    errors.append(time.time() - due)
                    if index in seen:
                        duplicates += 1
                    seen.add(index)
                if stop.is_set() or len(errors) >= args.messages:
                    break
            connection.close()

        try:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.queue_declare(QUEUE, durable=True)
            threading.Thread(target=sample, daemon=True).start()
            consumer = threading.Thread(target=consume, daemon=True)
            consumer.start()
            rss_start = broker.memory_info().rss
            first_due = time.time() + lead
            step = args.spread / max(1, args.messages - 1)
            padding = b"x" * max(0, args.size - STAMP.size)
            published = time.monotonic()
            for i in range(args.messages):
                due = first_due + i * step
                # Artemis' absolute due time: a relative delay would be measured from when
                # the broker reads the publish, which lags the client under a burst.
                channel.basic_publish(
                    "", QUEUE, STAMP.pack(due, i) + padding,
                    pika.BasicProperties(delivery_mode=2, headers={"_AMQ_SCHED_DELIVERY": round(due * 1000)}),
                )
            connection.close()
            publish_seconds = time.monotonic() - published
            late_publish = time.time() > first_due
            rss_published = broker.memory_info().rss
            deadline = first_due + args.spread + 60
            while len(errors) < args.messages and time.time() < deadline:
                time.sleep(0.5)
            stop.set()
            consumer.join(10)
        finally:
            stop.set()
            process.terminate()
            process.wait(30)

    firing = [value for t, value in rss if t >= first_due]
    print(f"messages {args.messages} ({args.size} B), due over {args.spread:.0f} s starting {lead:.0f} s after start")
    print(f"published in {publish_seconds:.1f} s ({args.messages / publish_seconds:,.0f}/s, no confirms)"
          + ("  WARNING: publishing overran the first due time" if late_publish else ""))
    print(f"received {len(errors)}, duplicates {duplicates}")
    if errors:
        ordered = sorted(errors)

        def pct(p: float) -> float:
            return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000

        print(
            f"firing error (receive - due) ms: min {ordered[0] * 1000:.1f}  p50 {pct(50):.1f}  "
            f"p99 {pct(99):.1f}  p99.9 {pct(99.9):.1f}  max {ordered[-1] * 1000:.1f}  "
            f"mean {statistics.fmean(ordered) * 1000:.1f}"
        )
    mib = 1024 * 1024
    print(
        f"broker RSS MiB: start {rss_start / mib:.0f}, after publishing {rss_published / mib:.0f}, "
        f"peak while firing {max(firing, default=0) / mib:.0f}, last {rss[-1][1] / mib if rss else 0:.0f}"
    )


if __name__ == "__main__":
    main()
