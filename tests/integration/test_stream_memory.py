"""Reading a large stream from ``first`` keeps the broker's RSS flat: a stream's size
never drives memory (issue 10: 10 GB under 100 MB is the benchmark's figure,
bench/stream_bench.py; here 300 MB with a bound of 60 MB of growth).

The broker is a subprocess so its RSS is its own.  Restarts Baedal itself, so it does
not run against RabbitMQ.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pika
import pytest

from baedal_testing import wait_until

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="measures Baedal's own process"),
]

STREAM_BYTES = 300 * 1024 * 1024
BODY = 64 * 1024
MAX_GROWTH = 60 * 1024 * 1024


def _load_soak_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "soak_kill9.py"
    spec = importlib.util.spec_from_file_location("soak_kill9", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


soak_kill9 = _load_soak_module()


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def test_reading_a_300mb_stream_from_first_keeps_rss_flat(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    broker = soak_kill9.BrokerProcess(data_dir, tmp_path / "broker.log")
    broker.start()
    try:
        pid = broker.process.pid
        count = STREAM_BYTES // BODY
        body = b"m" * BODY
        with contextlib.closing(soak_kill9.connect(broker.port)) as conn:
            channel = conn.channel()
            channel.queue_declare(
                "big", durable=True,
                arguments={"x-queue-type": "stream", "x-stream-max-segment-size-bytes": 50_000_000},
            )
            channel.confirm_delivery()  # one confirm per message: the publisher keeps pace
            for _ in range(count):
                channel.basic_publish("", "big", body, pika.BasicProperties(delivery_mode=2))
        baseline = rss_bytes(pid)

        peak = baseline
        received = 0
        with contextlib.closing(soak_kill9.connect(broker.port)) as conn:
            channel = conn.channel()
            channel.basic_qos(prefetch_count=20)

            def on_message(ch: Any, method: Any, properties: Any, payload: bytes) -> None:
                nonlocal received
                received += 1
                ch.basic_ack(method.delivery_tag)

            channel.basic_consume("big", on_message, arguments={"x-stream-offset": "first"})

            def progress() -> bool:
                nonlocal peak
                conn.process_data_events(0.05)
                peak = max(peak, rss_bytes(pid))
                return received >= count

            wait_until(progress, timeout=240, what=f"{count} messages read from first")
        growth = peak - baseline
        print(f"RSS baseline {baseline / 2**20:.1f} MiB, peak {peak / 2**20:.1f} MiB while reading "
              f"{STREAM_BYTES / 2**20:.0f} MiB from first")
        assert growth < MAX_GROWTH, f"RSS grew by {growth / 2**20:.1f} MiB reading the stream"
    finally:
        broker.kill()
