"""Broker RSS while one consumer reads a large stream from ``first``.

    PYTHONPATH=src .venv/bin/python bench/stream_rss.py --size 10G [--body 65536] \\
        [--data-dir DIR] [--keep] [--json docs/results/....jsonl]

The claim measured (issue 10, "What must not get worse"): reading a 10 GB stream from
``first`` keeps the broker's RSS under 100 MB; a stream's size never drives memory.

How:

1. Start ``python -m baedal serve`` (a subprocess, as users run it) on a fresh data
   directory, declare a durable stream, stop the broker with SIGKILL.
2. Fill the stream's directory to ``--size`` *offline*, with the broker's own code:
   ``StreamLog`` and ``message_to_record`` (the record an AMQP persistent publish of the
   same body is stored as).  Writing 10 GB through AMQP would take this shared 2-core
   machine tens of minutes and measure the publish path, which is not the point; the
   bytes on disk are the same.  ``fill_seconds`` is reported for the curious.
3. Restart the broker (this is also the start-up over a 10 GB stream: its time and RSS
   are reported), note the idle RSS, then read every message from ``first`` with
   ``bench/stream_reader.py`` (a separate process; prefetch ``--prefetch``, multiple
   acks) while a thread samples the broker's RSS with psutil every 50 ms.
4. Report baseline, peak and the peak over each quarter of the read (memory that grows
   with the amount read shows as rising quarters), throughput in MB/s, and delete the
   data unless ``--keep``.

``tests/fault/test_stream_rss.py`` runs the same at 300 MB and asserts the bound.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_kill9 import BrokerProcess, connect  # noqa: E402  (the subprocess broker helper)

from baedal.core.message import Message  # noqa: E402
from baedal.core.stream import message_to_record  # noqa: E402
from baedal.storage.engine import queue_directory_name  # noqa: E402
from baedal.storage.record_batch import Record  # noqa: E402
from baedal.storage.stream_log import StreamLog  # noqa: E402

STREAM = "rss-stream"
SEGMENT_BYTES = 100_000_000
BATCH_BYTES = 1 << 20  # records per appended batch: about 1 MB, as the broker batches a turn


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


class RssSampler(threading.Thread):
    """Samples a process's RSS (psutil) every ``interval`` s until stopped."""

    def __init__(self, pid: int, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.interval = interval
        self.samples: list[tuple[float, int]] = []  # (monotonic time, RSS bytes)
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.is_set():
            with contextlib.suppress(psutil.Error):
                self.samples.append((time.monotonic(), self.process.memory_info().rss))
            self.stopping.wait(self.interval)

    def stop(self) -> list[tuple[float, int]]:
        self.stopping.set()
        self.join(5)
        return self.samples


def declare(port: int, name: str) -> None:
    with contextlib.closing(connect(port)) as conn:
        conn.channel().queue_declare(
            name,
            durable=True,
            arguments={"x-queue-type": "stream", "x-stream-max-segment-size-bytes": SEGMENT_BYTES},
        )


def fill(directory: Path, total_bytes: int, body_size: int, name: str) -> int:
    """Append ``total_bytes`` of bodies to the stream in ``directory``; returns the count."""
    log = StreamLog.open(directory, max_segment_bytes=SEGMENT_BYTES)
    try:
        count = max(total_bytes // body_size, 1)
        per_batch = max(BATCH_BYTES // body_size, 1)
        body = os.urandom(body_size)  # incompressible, though nothing compresses here
        written = 0
        while written < count:
            n = min(per_batch, count - written)
            records = []
            for _ in range(n):
                key, value, headers, timestamp = message_to_record(
                    Message.build("", name, body, persistent=True, published_at=time.time())
                )
                records.append(Record(value, key, headers, timestamp))
            log.append(records)
            written += n
        log.sync()
        return count
    finally:
        log.close()


def read(port: int, name: str, count: int, prefetch: int, timeout: float) -> dict[str, Any]:
    """Run bench/stream_reader.py in its own process; its JSON result."""
    command = [
        sys.executable,
        str(Path(__file__).resolve().parent / "stream_reader.py"),
        "--uri", f"amqp://guest:guest@127.0.0.1:{port}/",
        "--queue", name,
        "--count", str(count),
        "--prefetch", str(prefetch),
        "--ack-every", str(max(prefetch // 2, 1)),
        "--timeout", str(timeout),
    ]  # fmt: skip
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=timeout + 30, check=False
    )
    if done.returncode != 0:
        raise RuntimeError(f"stream_reader failed: {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def measure(
    size: int, body: int, prefetch: int = 100, data_dir: Path | None = None, timeout: float = 1800.0
) -> dict[str, Any]:
    """Steps 1-3 of the module docstring; the caller deletes ``data_dir``."""
    own = data_dir is None
    base = Path(tempfile.mkdtemp(prefix="stream-rss-")) if own else data_dir
    assert base is not None
    (base / "data").mkdir(parents=True, exist_ok=True)
    broker = BrokerProcess(base / "data", base / "broker.log")
    try:
        broker.start()
        declare(broker.port, STREAM)
        broker.kill()
        directory = base / "data" / "streams" / queue_directory_name("/", STREAM)
        started = time.monotonic()
        count = fill(directory, size, body, STREAM)
        fill_seconds = time.monotonic() - started
        on_disk = sum(p.stat().st_size for p in directory.glob("*.log"))

        start_seconds = broker.start()
        assert broker.process is not None
        pid = broker.process.pid
        time.sleep(1.0)  # let start-up settle before the baseline
        baseline = psutil.Process(pid).memory_info().rss
        sampler = RssSampler(pid)
        sampler.start()
        began = time.monotonic()
        try:
            result = read(broker.port, STREAM, count, prefetch, timeout)
        finally:
            samples = sampler.stop()
        ended = time.monotonic()
        if result["messages"] != count:
            raise RuntimeError(f"read {result['messages']} of {count} messages")
        quarter = (ended - began) / 4
        quarters = [
            max(
                (rss for t, rss in samples if began + i * quarter <= t < began + (i + 1) * quarter),
                default=0,
            )
            for i in range(4)
        ]
        return {
            "scenario": "rss-read",
            "broker": "baedal",
            "stream_bytes": on_disk,
            "messages": count,
            "body": body,
            "prefetch": prefetch,
            "fill_seconds": fill_seconds,
            "start_seconds": start_seconds,
            "rss_baseline": baseline,
            "rss_peak": max(rss for _t, rss in samples),
            "rss_quarters": quarters,
            "samples": len(samples),
            "seconds": result["seconds"],
            "rate": result["rate"],
            "mb_per_s": on_disk / result["seconds"] / 1e6,
            "host": platform.node(),
            "cpus": os.cpu_count(),
        }
    finally:
        broker.kill()
        if own:
            shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--size", default="10G", help="stream size, e.g. 300M, 10G")
    parser.add_argument("--body", type=int, default=65536, help="body bytes per message")
    parser.add_argument("--prefetch", type=int, default=100)
    parser.add_argument("--data-dir", type=Path, default=None, help="default: a temp dir")
    parser.add_argument("--keep", action="store_true", help="keep --data-dir afterwards")
    parser.add_argument("--json", default=None, help="append the result as a JSON line here")
    args = parser.parse_args()
    try:
        result = measure(parse_size(args.size), args.body, args.prefetch, args.data_dir)
    finally:
        if args.data_dir is not None and not args.keep:
            shutil.rmtree(args.data_dir, ignore_errors=True)
    mib = 2**20
    print(
        f"stream {result['stream_bytes'] / 1e9:.2f} GB ({result['messages']} x {args.body} B): "
        f"broker start {result['start_seconds']:.1f} s; read {result['seconds']:.1f} s "
        f"({result['mb_per_s']:.0f} MB/s, {result['rate']:.0f} msg/s); RSS baseline "
        f"{result['rss_baseline'] / mib:.1f} MiB, peak {result['rss_peak'] / mib:.1f} MiB, "
        f"per quarter {[round(q / mib, 1) for q in result['rss_quarters']]} MiB"
    )
    if args.json:
        with open(args.json, "a") as sink:
            sink.write(json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
