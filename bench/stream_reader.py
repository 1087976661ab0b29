"""A fast stream reader for benchmarks: one consumer from an ``x-stream-offset``.

    PYTHONPATH=src .venv/bin/python bench/stream_reader.py --uri amqp://... --queue NAME \\
        --count 1000000 [--offset first] [--prefetch 1000] [--ack-every 500]

Prints one JSON line: ``{"messages", "seconds", "rate", "first_s", "client_cpu_s"}`` (seconds
from basic.consume to the last delivery; ``first_s`` to the first one).

Why not aiormq or pika: they build objects (and aiormq a task) per delivery, which at
1 KB bodies makes the client, not the broker, the limit (about 5 k msg/s here).  This
reader uses the load tool's client (``baedal.perf.client``): deliveries are counted in
the frame parser without being materialised, and acks (``multiple=true`` every
``--ack-every`` tags) are written once per received chunk.  It is the same client for
every broker measured, and runs in its own process, so it does not share a core with the
script that drives the benchmark.  The C tool amqp-load cannot be used here: it cannot
send the ``x-stream-offset`` consumer argument (without it a stream consumer starts at
``next``) and declares its queue without ``x-queue-type``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time
from typing import Any

from baedal.perf.client import ClientFrameReader, Connection, ack_frame, parse_uri
from baedal.protocols.amqp import spec


def parse_offset(text: str) -> Any:
    """``first``/``last``/``next``, or a number (an offset)."""
    return int(text) if text.lstrip("-").isdigit() else text


async def read_stream(
    uri: str,
    queue: str,
    count: int,
    offset: Any = "first",
    prefetch: int = 1000,
    ack_every: int = 500,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Consume ``count`` messages from ``offset``; throughput of that read."""
    connection = Connection("stream-reader")
    await connection.open(parse_uri(uri))
    done = asyncio.get_running_loop().create_future()
    state = {"acked": 0, "first": 0.0, "last": 0.0}
    ack_every = max(1, min(ack_every, prefetch))

    def on_deliveries(reader: ClientFrameReader) -> None:
        now = time.perf_counter()
        if not state["first"]:
            state["first"] = now
        state["last"] = now
        last = reader.last_delivery_tag
        acked = state["acked"]
        if last - acked >= ack_every or reader.delivered >= count:
            # Delivery tags on one channel are consecutive: one multiple-ack covers all.
            connection.write(ack_frame(last, True))
            state["acked"] = last
        if reader.delivered >= count and not done.done():
            done.set_result(None)

    try:
        await connection.call(spec.BasicQos(prefetch_count=prefetch), spec.BasicQosOk)
        connection.on_deliveries = on_deliveries
        # Timed from the consume request: deliveries may arrive before consume-ok is read.
        started = time.perf_counter()
        await connection.call(
            spec.BasicConsume(
                queue=queue, consumer_tag="stream-reader", arguments={"x-stream-offset": offset}
            ),
            spec.BasicConsumeOk,
        )
        await asyncio.wait_for(done, timeout)
        elapsed = state["last"] - started
        delivered = connection.reader.delivered
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return {
            # this process's CPU over its whole life: a client near 100 % of a core
            # would be the limit, not the broker
            "client_cpu_s": usage.ru_utime + usage.ru_stime,
            "messages": delivered,
            "seconds": elapsed,
            "rate": delivered / elapsed if elapsed > 0 else 0.0,
            "first_s": state["first"] - started,
        }
    finally:
        await connection.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--uri", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--count", type=int, required=True)
    parser.add_argument("--offset", type=parse_offset, default="first")
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--ack-every", type=int, default=500)
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    result = asyncio.run(
        read_stream(
            args.uri,
            args.queue,
            args.count,
            args.offset,
            args.prefetch,
            args.ack_every,
            args.timeout,
        )
    )
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
