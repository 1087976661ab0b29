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

            def schedule() -> float:
                vhost = core.vhosts["/"]
                vhost.declare_queue("bench.q", durable=True)
                exchange = vhost.exchanges[""]
                publisher = Publisher(core, vhost, "guest", core.permission("guest", "/"))
                half = len(messages) // 2
                began = time.thread_time()  # CPU: the first half, without tracemalloc's cost
                for message in messages[:half]:
                    routed, extra = publisher.admit(exchange, message)
                    publisher.deliver(exchange, routed, extra, False)
                spent = time.thread_time() - began
                tracemalloc.start()  # memory: the second half
                before = tracemalloc.get_traced_memory()[0]
                for message in messages[half:]:
                    routed, extra = publisher.admit(exchange, message)
                    publisher.deliver(exchange, routed, extra, False)
                held = tracemalloc.get_traced_memory()[0] - before
                tracemalloc.stop()
                result["memory_bytes_per_waiting_job"] = round(held / (len(messages) - half))
                return spent * len(messages) / max(1, half)

            result["cpu_us_per_schedule"] = round(broker.call(schedule) / args.messages * 1e6, 1)
            broker.call(lambda: None)  # let the fsync and its callbacks run

            def fire() -> float:
                scheduler = core.scheduler
                later = start + 20.0
                queue = core.vhosts["/"].queues["bench.q"]
                began = time.thread_time()
                scheduler.set_clock(lambda: later)
                for _ in range(args.messages):  # older trees fire one batch per wake()
                    if queue.message_count >= args.messages:
                        break
                    scheduler.wake()
                return time.thread_time() - began

            result["cpu_us_per_fire"] = round(broker.call(fire) / args.messages * 1e6, 1)
            result["queued_after_firing"] = broker.call(lambda: core.vhosts["/"].queues["bench.q"].message_count)
            broker.call(lambda: core.scheduler.set_clock(time.time))

    # Start-up with a schedule of that size (all waiting), against an empty one.

    with tempfile.TemporaryDirectory(prefix="baedal-sched-micro-") as data_dir:
        with Broker(port=0, data_dir=Path(data_dir)) as broker:
            core = broker.core

            def fill() -> None:
                vhost = core.vhosts["/"]
                vhost.declare_queue("bench.q", durable=True)
                exchange = vhost.exchanges[""]
                publisher = Publisher(core, vhost, "guest", core.permission("guest", "/"))
                for message in messages:
                    routed, extra = publisher.admit(exchange, message)
                    publisher.deliver(exchange, routed, extra, False)

            broker.call(fill)
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
