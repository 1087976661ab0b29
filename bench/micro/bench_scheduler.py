"""Broker CPU per scheduled job: scheduling (``Publisher.admit`` + ``deliver`` into the
schedule) and firing (the timer publishing it into a durable queue), measured in-process
on the loop thread (``time.thread_time``: the fsync worker thread is not counted), plus
the memory held per waiting job (tracemalloc) and the start-up time with that schedule.

    PYTHONPATH=src .venv/bin/python bench/micro/bench_scheduler.py --messages 20000

Runs unchanged against older trees (the scheduler's ``set_clock``/``wake`` and the
publish path are the same), so before/after is one command per tree.  JSON line out.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
import tracemalloc
from pathlib import Path

from baedal import Broker
from baedal.core.message import Message
from baedal.core.publish import Publisher


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--far", type=float, default=3600.0, help="seconds ahead the jobs are due")
    args = parser.parse_args()
    result: dict[str, object] = {"bench": "scheduler_cost", "messages": args.messages}
    with tempfile.TemporaryDirectory(prefix="baedal-sched-micro-") as data_dir:
        with Broker(port=0, data_dir=Path(data_dir)) as broker:
            core = broker.core
            start = time.time() + args.far
            step = 10.0 / max(1, args.messages)  # due over 10 s, an hour from now
            messages = [
                Message.build(
                    "", "bench.q", b"x" * 64, persistent=True,
                    headers={"_AMQ_SCHED_DELIVERY": round((start + i * step) * 1000), "app": "a"},
                )
                for i in range(args.messages)
            ]

            vhost = core.vhosts["/"]
            broker.call(lambda: vhost.declare_queue("bench.q", durable=True))
            exchange = vhost.exchanges[""]
            publisher = Publisher(core, vhost, "guest", core.permission("guest", "/"))
            chunk = 5000  # per call on the loop thread (a call has a time limit)

            def schedule(part: list[Message]) -> float:
                began = time.thread_time()
                for message in part:
                    routed, extra = publisher.admit(exchange, message)
                    publisher.deliver(exchange, routed, extra, False)
                return time.thread_time() - began

            half = len(messages) // 2
            spent = 0.0  # CPU: the first half, without tracemalloc's cost
            for lo in range(0, half, chunk):
                spent += broker.call(schedule, messages[lo : min(half, lo + chunk)])
            tracemalloc.start()  # memory: the second half
            before = tracemalloc.get_traced_memory()[0]
            for lo in range(half, len(messages), chunk):
                broker.call(schedule, messages[lo : lo + chunk])
            held = tracemalloc.get_traced_memory()[0] - before
            tracemalloc.stop()
            result["memory_bytes_per_waiting_job"] = round(held / max(1, len(messages) - half))
            result["cpu_us_per_schedule"] = round(spent / max(1, half) * 1e6, 1)
            broker.call(lambda: None)  # let the fsync and its callbacks run
            queue = vhost.queues["bench.q"]
            later = start + 20.0
            broker.call(lambda: core.scheduler.set_clock(lambda: later))

            def fire() -> float:
                began = time.thread_time()
                target = min(args.messages, queue.message_count + chunk)
                for _ in range(args.messages):  # older trees fire one batch per wake()
                    if queue.message_count >= target:
                        break
                    core.scheduler.wake()
                return time.thread_time() - began

            spent = 0.0
            while broker.call(lambda: queue.message_count) < args.messages:
                spent += broker.call(fire)
            result["cpu_us_per_fire"] = round(spent / args.messages * 1e6, 1)
            result["queued_after_firing"] = broker.call(lambda: core.vhosts["/"].queues["bench.q"].message_count)
            broker.call(lambda: core.scheduler.set_clock(time.time))

    # Start-up with a schedule of that size (all waiting), against an empty one.

    with tempfile.TemporaryDirectory(prefix="baedal-sched-micro-") as data_dir:
        with Broker(port=0, data_dir=Path(data_dir)) as broker:
            core = broker.core

            vhost = core.vhosts["/"]
            broker.call(lambda: vhost.declare_queue("bench.q", durable=True))
            exchange = vhost.exchanges[""]
            publisher = Publisher(core, vhost, "guest", core.permission("guest", "/"))

            def fill(part: list[Message]) -> None:
                for message in part:
                    routed, extra = publisher.admit(exchange, message)
                    publisher.deliver(exchange, routed, extra, False)

            for lo in range(0, len(messages), chunk):
                broker.call(fill, messages[lo : lo + chunk])
        began = time.perf_counter()
        with Broker(port=0, data_dir=Path(data_dir)) as broker:
            result["startup_s_with_schedule"] = round(time.perf_counter() - began, 2)
            result["recovered"] = broker.call(lambda: broker.core.scheduler.count())
    with tempfile.TemporaryDirectory(prefix="baedal-sched-micro-") as data_dir:
        began = time.perf_counter()
        with Broker(port=0, data_dir=Path(data_dir)) as broker:
            result["startup_s_empty"] = round(time.perf_counter() - began, 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
