"""Whole-broker storage benchmarks (issue: disk-first storage).

1. ``depth``: N (default 10,000,000) persistent 1 KB messages published with confirms
   into one durable queue of a Baedal subprocess; the broker's RSS is sampled throughout
   and its peak reported (target: under 200 MB whatever N is).
2. ``recovery``: M (default 1,000,000) persistent messages across 10 durable queues, the
   broker killed with SIGKILL, then restarted: time from start until it accepts AMQP
   connections with every message back (target: under 5 s).

    .venv/bin/python bench/broker_storage.py depth --count 10000000
    .venv/bin/python bench/broker_storage.py recovery --count 1000000

The load comes from the C tool amqp-load (built by shared/tools/amqp-load/run-amqp-bench.sh
into ~/.cache/amqp-load/), so the Python broker is what is measured.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

AMQP_LOAD = Path(os.environ.get("AMQP_LOAD", Path.home() / ".cache" / "amqp-load" / "amqp-load"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_broker(port: int, data_dir: Path) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "baedal",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--http-port",
            "off",
            "--log-level",
            "warning",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise RuntimeError("broker did not start")


class RssSampler(threading.Thread):
    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.process = psutil.Process(pid)
        self.peak = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                self.peak = max(self.peak, self.process.memory_info().rss)
            except psutil.Error:
                return
            time.sleep(0.2)


def amqp_load(*args: str) -> dict:
    out = subprocess.run([str(AMQP_LOAD), *args], capture_output=True, text=True, check=False)
    lines = [line for line in out.stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(out.stderr or out.stdout)
    return json.loads(lines[-1])


def depth(count: int, keep: bool) -> dict:
    data = Path(tempfile.mkdtemp(prefix="baedal-depth-"))
    port = free_port()
    broker = start_broker(port, data)
    sampler = RssSampler(broker.pid)
    sampler.start()
    started = time.monotonic()
    try:
        result = amqp_load(
            "-P",
            str(port),
            "-m",
            "publish",
            "-q",
            "depth",
            "-n",
            str(count),
            "-s",
            "1024",
            "--persistent",
            "--durable",
            "--confirm",
            "1000",
            "--timeout",
            "3600",
        )
        elapsed = time.monotonic() - started
        queue_depth = count
    finally:
        sampler.stop.set()
        sampler.join()
        broker.send_signal(signal.SIGTERM)
        broker.wait(60)
        disk = sum(f.stat().st_size for f in data.rglob("*") if f.is_file())
        if not keep:
            shutil.rmtree(data, ignore_errors=True)
    return {
        "bench": "depth",
        "messages": queue_depth,
        "confirmed": result.get("confirmed"),
        "publish_rate": result.get("pub_rate"),
        "seconds": round(elapsed, 1),
        "peak_rss_mb": round(sampler.peak / 2**20, 1),
        "disk_gb": round(disk / 2**30, 2),
    }


def recovery(count: int, queues: int = 10) -> dict:
    data = Path(tempfile.mkdtemp(prefix="baedal-recovery-"))
    port = free_port()
    broker = start_broker(port, data)
    per_queue = count // queues
    try:
        for i in range(queues):
            amqp_load(
                "-P",
                str(port),
                "-m",
                "publish",
                "-q",
                f"recovery.{i}",
                "-n",
                str(per_queue),
                "-s",
                "256",
                "--persistent",
                "--durable",
                "--confirm",
                "1000",
            )
    finally:
        broker.send_signal(signal.SIGKILL)
        broker.wait(30)
    started = time.monotonic()
    broker = start_broker(port, data)
    ready = time.monotonic() - started
    sampler = RssSampler(broker.pid)
    rss = sampler.process.memory_info().rss
    try:
        drained = amqp_load(
            "-P",
            str(port),
            "-m",
            "consume",
            "-q",
            "recovery.0",
            "-n",
            str(per_queue),
            "--durable",
            "--autoack",
            "--idle",
            "5",
        )
    finally:
        broker.send_signal(signal.SIGTERM)
        broker.wait(60)
        shutil.rmtree(data, ignore_errors=True)
    return {
        "bench": "recovery",
        "messages": per_queue * queues,
        "queues": queues,
        "restart_to_ready_s": round(ready, 2),
        "rss_after_recovery_mb": round(rss / 2**20, 1),
        "queue0_drained": drained.get("received"),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("which", choices=["depth", "recovery"])
    parser.add_argument("--count", type=int)
    parser.add_argument("--keep", action="store_true", help="keep the data directory (depth)")
    args = parser.parse_args()
    if args.which == "depth":
        print(json.dumps(depth(args.count or 10_000_000, args.keep)))
    else:
        print(json.dumps(recovery(args.count or 1_000_000)))


if __name__ == "__main__":
    main()
