"""How fast can the issue's Kafka producer go on this machine with *no broker at all*?

    PYTHONPATH=src .venv/bin/python bench/kafka_client_ceiling.py [--rounds 3] \\
        [--records 500000] [--disk-mb 1024] [--json docs/results/....jsonl]

Issue 11's produce goal is "confluent-kafka, 1 KB records, acks=all, linger.ms 5,
batch 64 KB: ≥ 60 % of the disk's sequential write (dd oflag=direct)". On a 2-vCPU
machine the producer shares the CPUs with the broker, so the first question is what the
producer itself can do. This measures, interleaved per round:

* **disk**: ``dd bs=1M oflag=direct conv=fsync`` of ``--disk-mb`` in a temporary
  directory (the same probe as ``bench/kafka_bench.py``), and 60 % of it: the goal.
* **enqueue-only, bench loop**: ``bench/kafka_bench.py``'s own ``produce_loop``
  (``produce(topic, value)`` per record, ``poll(0)`` every 10,000: the cheapest a
  Python program can call it) with the same producer settings, ``bootstrap.servers``
  pointing at a closed port.  Nothing is sent: librdkafka only copies each value into
  its queue.  This is the Python thread's cost per record and an upper bound on any
  produce rate this client reaches, whatever the broker.
* **enqueue-only, old loop**: the loop ``bench/kafka_bench.py`` used until 2026-12-03
  (``key=None`` and an ``on_delivery`` keyword per call, a callback every 1,000th
  record).

Both report MB/s of values and the process's CPU (every thread) per MB.  When even the
bench loop's MB/s is below 60 % of dd's write, the goal cannot be met by this client
on this machine, broker or no broker: the real run also needs librdkafka's broker
thread (batching, CRC-32C, socket writes) and the broker's own CPU on the same two
vCPUs.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from confluent_kafka import Producer, libversion, version

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kafka_bench import RECORD, disk, produce_loop, producer_config  # noqa: E402


def closed_port() -> int:
    """A local port nobody listens on (bound, then closed: connections are refused)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def enqueue(records: int, loop: str) -> dict[str, Any]:
    config = producer_config(f"127.0.0.1:{closed_port()}")
    # Room for every record: the loop must never wait for a send that cannot happen.
    config["queue.buffering.max.messages"] = records + 1
    config["queue.buffering.max.kbytes"] = (records * (RECORD + 512)) // 1024 + 1024
    config["log_level"] = 0
    producer = Producer(config)
    value = os.urandom(RECORD)
    topic = "ceiling"

    def delivered(_error: Any, _message: Any) -> None:
        pass

    cpu0 = _cpu()
    started = time.perf_counter()
    if loop == "bench":
        produce_loop(producer, topic, value, records, False)
    else:
        # The loop bench/kafka_bench.py used until 2026-12-03 (kept to show the cost).
        for i in range(records):
            producer.produce(
                topic,
                value,
                key=None,
                on_delivery=delivered if i % 1000 == 0 or i == records - 1 else None,
            )
            if i % 10000 == 0:
                producer.poll(0)
    elapsed = time.perf_counter() - started
    cpu = _cpu() - cpu0
    megabytes = records * RECORD / 1e6
    # purge() drops the queued records without waiting for a broker that is not there.
    producer.purge()
    producer.flush(0)
    return {
        "records": records,
        "seconds": round(elapsed, 3),
        "mb_per_s": round(megabytes / elapsed, 1),
        "cpu_s": round(cpu, 3),
        "cpu_ms_per_mb": round(cpu / megabytes * 1000, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--disk-mb", type=int, default=1024)
    parser.add_argument("--json", default=None, help="append JSON lines here")
    args = parser.parse_args()
    machine = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "confluent_kafka": version(),
        "librdkafka": libversion()[0],
    }
    sink = open(args.json, "a") if args.json else None  # noqa: SIM115
    work = Path(tempfile.mkdtemp(prefix="baedal-ceiling-"))
    try:
        for round_ in range(1, args.rounds + 1):
            lines: list[dict[str, Any]] = []
            probe = disk(work, args.disk_mb)
            goal = 0.6 * probe["write_mb_per_s"]
            lines.append({"scenario": "disk", **probe, "goal_60pct_mb_per_s": round(goal, 1)})
            for name, loop in (("enqueue-bench-loop", "bench"), ("enqueue-old-loop", "old")):
                result = enqueue(args.records, loop)
                result["share_of_disk_write"] = round(
                    result["mb_per_s"] / probe["write_mb_per_s"], 3
                )
                lines.append({"scenario": name, **result})
            load = os.getloadavg()[0]
            for line in lines:
                line.update({"round": round_, "load1": round(load, 2), "machine": machine})
                text = json.dumps(line)
                print(text, flush=True)
                if sink is not None:
                    sink.write(text + "\n")
                    sink.flush()
    finally:
        for path in work.iterdir():
            path.unlink()
        work.rmdir()
        if sink is not None:
            sink.close()


if __name__ == "__main__":
    main()
