"""Scheduled delivery under load: firing error and broker memory (issue 12 item 6).

The issue's run: 1 M persistent messages with due times spread evenly over 10 minutes,
memory flat, firing error p99 under 50 ms::

    .venv/bin/python bench/scheduled_firing.py --messages 1000000 --spread 600

Smaller runs for a shared machine: ``--messages 100000 --spread 60``.

What it does:

1. Starts ``baedal serve`` in a subprocess (AMQP on an ephemeral port, every other
   listener off, a fresh data directory).
2. Calibrates the publish rate: ``--calibrate`` messages scheduled a day ahead on a
   separate queue (they stay on disk, never fire during the run), so that the firing
   window can start just after the real publishing ends.
3. Publishes ``--messages`` persistent messages (no confirms, one channel; by default
   pre-encoded frames on ``baedal perf``'s client with the due time spliced in, 256 per
   write: the client never waits, TCP backpressure paces it as fast as the broker takes
   them; ``--publisher pika`` for a BlockingConnection),
   each with an absolute due time (``_AMQ_SCHED_DELIVERY``, whole ms) spread evenly
   over ``--spread`` seconds starting ``lead`` seconds after publishing starts (lead =
   estimated publish time x 1.25 + 5 s, or ``--lead``).  A passive ``queue.declare``
   round trip then marks the end: the broker has handled every publish before it.
4. A consumer in *another process* (so the publisher's and sampler's Python never
   delays its receive timestamps) counts arrivals with auto-ack and records receive
   time minus due time for each.
5. Samples the broker's RSS and CPU time every second.

Output: a human summary and an RSS-over-time table on stderr, and one JSON line on
stdout: firing error (ms) min/p50/p90/p99/p99.9/max (and per slice of the window),
messages received / lost /
duplicated / early, RSS MiB at start / after publishing / peak while firing / end, the
RSS series (every ``--table-step`` seconds), broker CPU µs per job while publishing
(scheduling) and while firing, the load average, and whether publishing overran the
window start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import re
import struct
import subprocess
import sys
import tempfile
import threading
import time
from array import array
from pathlib import Path
from typing import Any

import pika
import psutil

QUEUE = "bench.scheduled"
CALIBRATION_QUEUE = "bench.scheduled.calibration"
STAMP = struct.Struct("<qI")  # due in ms since the epoch, index


def _start(data_dir: Path) -> tuple[subprocess.Popen[str], str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path))
    process = subprocess.Popen(
        [sys.executable, "-m", "baedal", "serve", "--port", "0", "--http-port", "off",
         "--kafka-port", "off", "--stomp-port", "off", "--mqtt-port", "off",
         "--data-dir", str(data_dir), "--log-level", "warning"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline()
    match = re.search(r"amqp://[^:]+:(\d+)", line)
    if not match:
        process.kill()
        raise SystemExit(f"baedal serve did not start: {line!r}")
    return process, f"amqp://guest:guest@127.0.0.1:{match.group(1)}/"


def _consume(url: str, expected: int, deadline: float, ready: Any, results: Any) -> None:
    """In a child process: receive until ``expected`` arrived or ``deadline`` passed;
    send back (errors as array('d') bytes, indexes as array('I') bytes)."""
    errors = array("d")
    indexes = array("I")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    channel.basic_qos(prefetch_count=2000)
    ready.set()
    now = time.time
    unpack = STAMP.unpack_from
    for _method, _properties, body in channel.consume(QUEUE, auto_ack=True, inactivity_timeout=1.0):
        if body is not None:
            received = now()
            due_ms, index = unpack(body)
            errors.append(received - due_ms / 1000.0)
            indexes.append(index)
        if len(errors) >= expected or now() > deadline:
            break
    connection.close()
    results.put((errors.tobytes(), indexes.tobytes()))


def _publish(channel: Any, queue: str, count: int, first_due: float, step: float, padding: bytes) -> None:
    publish = channel.basic_publish
    properties = pika.BasicProperties
    for i in range(count):
        due_ms = round((first_due + i * step) * 1000)
        publish(
            "", queue, STAMP.pack(due_ms, i) + padding,
            properties(delivery_mode=2, headers={"_AMQ_SCHED_DELIVERY": due_ms}),
        )
    channel.queue_declare(queue, passive=True)  # a round trip: every publish handled


SENTINEL = 0x5A5B5C5D5E5F6061  # a header value found and replaced in the pre-encoded frames
_DUE = struct.Struct(">q")  # an AMQP long-long field value ('l')


async def _publish_pipelined(url: str, queue: str, count: int, first_due: float, step: float, size: int) -> None:
    """The low-overhead publisher: ``baedal perf``'s client (handshake, pre-encoded
    frames) with the due-time header spliced into the frames per message, 256 messages
    per write, waiting only when the socket's buffer is full."""
    from baedal.perf.client import Connection, PublishTemplate, parse_uri
    from baedal.protocols.amqp import spec
    from baedal.protocols.amqp.properties import BasicProperties, encode_properties

    connection = Connection("scheduled-bench")
    await connection.open(parse_uri(url))
    properties = encode_properties(BasicProperties(delivery_mode=2, headers={"_AMQ_SCHED_DELIVERY": SENTINEL}))
    template = PublishTemplate(1, "", queue, properties, max(16, size), connection.frame_max)
    at = template.head.index(_DUE.pack(SENTINEL))
    before, after, tail = template.head[:at], template.head[at + 8 :], template.tail
    pack_due, pack_stamp = _DUE.pack, STAMP.pack
    pad = b"\0" * (16 - STAMP.size)
    batch: list[bytes] = []
    for i in range(count):
        due_ms = round((first_due + i * step) * 1000)
        batch.append(before + pack_due(due_ms) + after + pack_stamp(due_ms, i) + pad + tail)
        if len(batch) >= 256:
            connection.write(b"".join(batch))
            batch.clear()
            await connection.drain()
    connection.write(b"".join(batch))
    await connection.call(spec.QueueDeclare(queue=queue, passive=True), spec.QueueDeclareOk, channel=1)
    await connection.close()


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


def _percentile(ordered: list[float], p: float) -> float:
    return ordered[min(len(ordered) - 1, int(p / 100 * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--spread", type=float, default=60.0, help="seconds over which due times are spread")
    parser.add_argument("--lead", type=float, default=0.0, help="seconds from publish start to the first due time (default: calibrated)")
    parser.add_argument("--calibrate", type=int, default=5000, help="messages published to measure the rate")
    parser.add_argument("--size", type=int, default=64, help="body bytes")
    parser.add_argument(
        "--publisher", choices=("pipelined", "pika"), default="pipelined",
        help="pipelined: pre-encoded frames on baedal perf's client (default); pika: BlockingConnection",
    )
    parser.add_argument("--table-step", type=float, default=10.0, help="seconds between rows of the RSS table")
    args = parser.parse_args()
    padding = b"x" * max(0, args.size - STAMP.size)
    mib = 1024 * 1024

    with tempfile.TemporaryDirectory(prefix="baedal-sched-bench-") as data_dir:
        process, url = _start(Path(data_dir))
        broker = psutil.Process(process.pid)
        samples: list[tuple[float, int, float]] = []  # (time, rss, cpu seconds)
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                try:
                    samples.append((time.time(), broker.memory_info().rss, _cpu(broker)))
                except psutil.Error:
                    return
                stop.wait(1.0)

        consumer: Any = None
        try:
            connection = pika.BlockingConnection(pika.URLParameters(url))
            channel = connection.channel()
            channel.queue_declare(QUEUE, durable=True)
            channel.queue_declare(CALIBRATION_QUEUE, durable=True)
            threading.Thread(target=sample, daemon=True).start()
            time.sleep(1.0)
            rss_start = broker.memory_info().rss

            lead = args.lead
            def publish(queue: str, count: int, first: float, step: float) -> None:
                if args.publisher == "pika":
                    _publish(channel, queue, count, first, step, padding)
                else:
                    asyncio.run(_publish_pipelined(url, queue, count, first, step, args.size))

            if not lead:
                started = time.monotonic()
                publish(CALIBRATION_QUEUE, args.calibrate, time.time() + 86400, 0.0)
                rate = args.calibrate / (time.monotonic() - started)
                lead = args.messages / rate * 1.25 + 5.0
                print(f"calibration: {rate:,.0f} scheduled publishes/s -> lead {lead:.0f} s", file=sys.stderr)

            ready = multiprocessing.Event()
            results: Any = multiprocessing.Queue()
            publish_started = time.time()
            first_due = publish_started + lead
            step = args.spread / max(1, args.messages - 1)
            deadline = first_due + args.spread + 60
            consumer = multiprocessing.Process(
                target=_consume, args=(url, args.messages, deadline, ready, results), daemon=True
            )
            consumer.start()
            ready.wait(30)
            cpu_before = _cpu(broker)
            started = time.monotonic()
            publish(QUEUE, args.messages, first_due, step)
            publish_seconds = time.monotonic() - started
            published_at = time.time()
            cpu_published = _cpu(broker)
            rss_published = broker.memory_info().rss
            connection.close()
            print(
                f"published {args.messages:,} in {publish_seconds:.1f} s "
                f"({args.messages / publish_seconds:,.0f}/s); window starts in {first_due - published_at:.1f} s",
                file=sys.stderr,
            )
            errors_bytes, indexes_bytes = results.get(timeout=max(60.0, deadline - time.time() + 60))
            consumer.join(30)
            cpu_end = _cpu(broker)
            stop.set()
            time.sleep(0.1)
            load = os.getloadavg()
        finally:
            stop.set()
            if consumer is not None and consumer.is_alive():
                consumer.kill()
            process.terminate()
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()

    errors = array("d")
    errors.frombytes(errors_bytes)
    indexes = array("I")
    indexes.frombytes(indexes_bytes)
    distinct = len(set(indexes))
    ordered = sorted(errors)
    last_due = first_due + args.spread
    firing = [rss for t, rss, _cpu_s in samples if first_due <= t <= last_due + 5]
    result: dict[str, Any] = {
        "bench": "scheduled_firing",
        "messages": args.messages,
        "size": args.size,
        "spread_s": args.spread,
        "lead_s": round(lead, 1),
        "publish_s": round(publish_seconds, 1),
        "publish_rate": round(args.messages / publish_seconds),
        "publisher": args.publisher,
        "publish_overran_window": published_at > first_due,
        "received": len(errors),
        "lost": args.messages - distinct,
        "duplicates": len(errors) - distinct,
        "early": sum(1 for value in errors if value < 0),
        "broker_cpu_us_per_schedule": round((cpu_published - cpu_before) / args.messages * 1e6, 1),
        "broker_cpu_us_per_fire": round((cpu_end - cpu_published) / args.messages * 1e6, 1),
        "rss_mib": {
            "start": round(rss_start / mib, 1),
            "after_publishing": round(rss_published / mib, 1),
            "peak_firing": round(max(firing, default=0) / mib, 1),
            "end": round(samples[-1][1] / mib, 1) if samples else None,
        },
        "loadavg": [round(value, 2) for value in load],
    }
    if ordered:
        result["error_ms"] = {
            "min": round(ordered[0] * 1000, 2),
            "p50": round(_percentile(ordered, 50), 2),
            "p90": round(_percentile(ordered, 90), 2),
            "p99": round(_percentile(ordered, 99), 2),
            "p99.9": round(_percentile(ordered, 99.9), 2),
            "max": round(ordered[-1] * 1000, 2),
        }
    # Firing error by due time, one row per --table-step seconds of the window:
    # [seconds into the window, messages, p50 ms, p99 ms, max ms] (where lateness sits).
    slices: dict[int, list[float]] = {}
    first_due_ms = round(first_due * 1000)
    for value, index in zip(errors, indexes, strict=True):
        due_offset = (first_due_ms + round(index * step * 1000)) / 1000 - first_due
        slices.setdefault(max(0, int(due_offset // args.table_step)), []).append(value)
    result["error_series"] = [
        [round(key * args.table_step), len(values), round(_percentile(values, 50), 1),
         round(_percentile(values, 99), 1), round(values[-1] * 1000, 1)]
        for key, values in sorted((key, sorted(values)) for key, values in slices.items())
    ]
    # RSS over time, one row per --table-step seconds, relative to publish start.
    series = []
    next_at = publish_started
    for t, rss, _cpu_s in samples:
        if t >= next_at:
            phase = "publish" if t <= published_at else ("wait" if t < first_due else ("fire" if t <= last_due else "after"))
            series.append([round(t - publish_started), round(rss / mib, 1), phase])
            next_at = t + args.table_step
    result["rss_series"] = series
    print("t s | RSS MiB | phase", file=sys.stderr)
    for t, rss_mib, phase in series:
        print(f"{t:5d} | {rss_mib:7.1f} | {phase} {'#' * int(rss_mib / 4)}", file=sys.stderr)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
