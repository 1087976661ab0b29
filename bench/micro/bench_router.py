"""Micro-benchmark: routing (direct, fanout, topic with cache, headers).

.venv/bin/python bench/micro/bench_router.py
valgrind --tool=callgrind .venv/bin/python bench/micro/bench_router.py --iterations 20000 --quiet
"""

from __future__ import annotations

import argparse
import time

from baedal.core.broker import BrokerCore
from baedal.core.message import Message
from baedal.protocols.amqp.properties import AmqpExtension, BasicProperties, encode_properties


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    core = BrokerCore()
    vhost = core.vhosts["/"]
    for i in range(100):
        queue, _ = vhost.declare_queue(f"q{i}")
        vhost.bind("amq.direct", queue, f"key.{i}", {})
        vhost.bind("amq.topic", queue, f"orders.{i % 10}.*", {})
        vhost.bind("amq.headers", queue, "", {"x-match": "all", "shard": i % 10})
    for i in range(4):
        vhost.bind("amq.fanout", vhost.queues[f"q{i}"], "", {})
    headers_props = encode_properties(BasicProperties(headers={"shard": 3}))
    cases = {
        "default exchange": (vhost.default_exchange, Message("", "q7", b"x")),
        "direct": (
            vhost.exchanges["amq.direct"],
            Message("amq.direct", "key.42", b"x"),
        ),
        "fanout (4 queues)": (
            vhost.exchanges["amq.fanout"],
            Message("amq.fanout", "", b"x"),
        ),
        "topic (cached)": (
            vhost.exchanges["amq.topic"],
            Message("amq.topic", "orders.3.eu", b"x"),
        ),
        "headers (100 bindings)": (
            vhost.exchanges["amq.headers"],
            Message("amq.headers", "", b"x", extension=AmqpExtension(headers_props)),
        ),
    }
    for name, (exchange, message) in cases.items():
        route = vhost.route
        n = args.iterations if "headers" not in name else args.iterations // 20
        started = time.perf_counter()
        for _ in range(n):
            found = route(exchange, message)
        elapsed = time.perf_counter() - started
        if not args.quiet:
            print(f"{name:24s} {n / elapsed:>12,.0f} routes/s  -> {len(found)} queue(s)")


if __name__ == "__main__":
    main()
