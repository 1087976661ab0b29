"""Memory per idle connection: open N connections (one channel each) and watch the broker's RSS.

    .venv/bin/python bench/idle_connections.py --uri amqp://guest:guest@127.0.0.1:5673/ -n 10000
    .venv/bin/python bench/idle_connections.py --port 5672 --pid 2640 -n 5000 --json

The broker's PID is found from its listening port when not given (psutil), and its RSS is
summed over its process tree.  Connections are opened by ``--clients`` processes (each
with its file-descriptor limit raised to the hard limit; a process holds one socket per
connection) at most ``--concurrency`` handshakes at a time each, with the perf tool's
client.  Once every connection is open the script waits ``--settle`` seconds, samples the
RSS, and reports ``(RSS with N open − RSS before) / N``; then everything is closed and the
RSS is sampled once more (what the broker gives back).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import resource
import sys
import time
from typing import Any
from urllib.parse import urlparse

import psutil

from baedal.perf.client import AMQPError, Connection, parse_uri
from baedal.perf.worker import new_event_loop


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def broker_pid(port: int) -> int:
    for conn in psutil.net_connections("tcp"):
        if (
            conn.status == psutil.CONN_LISTEN
            and conn.laddr
            and conn.laddr.port == port
            and conn.pid
        ):
            return conn.pid
    return 0


def broker_fd_headroom(pid: int) -> int | None:
    """Descriptors the broker can still open (soft limit − open − a margin); None if unknown.

    Read from /proc (prlimit on another user's process needs CAP_SYS_RESOURCE).
    """
    try:
        with open(f"/proc/{pid}/limits") as limits:
            line = next(x for x in limits if x.startswith("Max open files"))
        soft = line.split()[3]
        if soft == "unlimited":
            return 1 << 30
        open_now = len(os.listdir(f"/proc/{pid}/fd"))
        return int(soft) - open_now - 100
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def tree_rss(pid: int) -> int:
    try:
        root = psutil.Process(pid)
        total = 0
        for p in [root, *root.children(recursive=True)]:
            try:
                total += p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
        return total
    except psutil.NoSuchProcess:
        return 0


def client_process(uri: str, count: int, concurrency: int, pipe: Any) -> None:
    """Open ``count`` connections, report, hold them until told to close."""
    limit = raise_fd_limit(count + 64)
    if limit < count + 16:
        pipe.send(
            (
                "error",
                f"file-descriptor limit {limit} is too low for {count} connections per process",
            )
        )
        return

    async def main() -> None:
        address = parse_uri(uri)
        gate = asyncio.Semaphore(concurrency)
        connections: list[Connection] = []
        errors: list[str] = []

        async def open_one(i: int) -> None:
            async with gate:
                connection = Connection(f"idle {i}")
                try:
                    await connection.open(address, heartbeat=0, timeout=60)
                    connections.append(connection)
                except (AMQPError, OSError, TimeoutError) as exc:
                    errors.append(str(exc) or type(exc).__name__)
                    if connection.transport is not None:
                        connection.transport.close()

        await asyncio.gather(*(open_one(i) for i in range(count)))
        pipe.send(("open", len(connections), errors[:5], len(errors)))
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, pipe.recv)  # "close"
        for start in range(0, len(connections), 500):
            await asyncio.gather(
                *(c.close(timeout=10) for c in connections[start : start + 500]),
                return_exceptions=True,
            )
        pipe.send(("closed",))

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        runner.run(main())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uri", default="amqp://guest:guest@127.0.0.1:5672/")
    parser.add_argument(
        "--port", type=int, help="shorthand for --uri amqp://guest:guest@127.0.0.1:PORT/"
    )
    parser.add_argument("-n", "--connections", type=int, default=10_000)
    parser.add_argument(
        "--pid", type=int, default=0, help="broker PID (default: the process listening on the port)"
    )
    parser.add_argument(
        "--clients",
        type=int,
        default=0,
        help="client processes (default: one per 4,000 connections)",
    )
    parser.add_argument(
        "--concurrency", type=int, default=200, help="handshakes in flight per client process"
    )
    parser.add_argument(
        "--settle", type=float, default=5.0, help="seconds to wait before sampling the RSS"
    )
    parser.add_argument("--json", action="store_true", help="print the result as one JSON line")
    parser.add_argument(
        "--force",
        action="store_true",
        help="open the connections even beyond the broker's fd limit",
    )
    args = parser.parse_args(argv)
    if args.port:
        args.uri = f"amqp://guest:guest@127.0.0.1:{args.port}/"
    port = urlparse(args.uri).port or 5672
    pid = args.pid or broker_pid(port)
    if not pid:
        print(f"cannot find the broker's PID for port {port}; pass --pid", file=sys.stderr)
        return 2
    headroom = broker_fd_headroom(pid)
    if headroom is None and not args.force:
        print(
            f"cannot read the broker's (pid {pid}) file-descriptor limit; pass --force to go ahead",
            file=sys.stderr,
        )
        return 2
    if headroom is not None and args.connections > headroom and not args.force:
        # RabbitMQ with Debian's default soft limit of 1024 descriptors runs out of them
        # and its Mnesia dies with it (seen here): refuse instead of breaking the broker.
        print(
            f"the broker (pid {pid}) can open about {headroom} more files (RLIMIT_NOFILE); "
            f"{args.connections} connections would exhaust it. Raise its limit or pass --force.",
            file=sys.stderr,
        )
        return 2
    clients = args.clients or max(1, -(-args.connections // 4000))
    shares = [
        args.connections // clients + (1 if i < args.connections % clients else 0)
        for i in range(clients)
    ]

    rss_before = tree_rss(pid)
    context = multiprocessing.get_context("spawn")
    pipes, processes = [], []
    t0 = time.monotonic()
    for share in shares:
        parent_end, child_end = context.Pipe()
        process = context.Process(
            target=client_process, args=(args.uri, share, args.concurrency, child_end), daemon=True
        )
        process.start()
        child_end.close()
        pipes.append(parent_end)
        processes.append(process)
    opened, failures, sample_errors = 0, 0, []
    for pipe in pipes:
        message = pipe.recv()
        if message[0] == "error":
            sample_errors.append(message[1])
            continue
        opened += message[1]
        failures += message[3]
        sample_errors += message[2]
    open_s = time.monotonic() - t0
    time.sleep(args.settle)
    rss_open = tree_rss(pid)
    for pipe in pipes:
        try:
            pipe.send("close")
        except OSError:
            pass
    for pipe in pipes:
        try:
            pipe.recv()
        except (EOFError, OSError):
            pass
    for process in processes:
        process.join(30)
    time.sleep(args.settle)
    rss_after = tree_rss(pid)
    result = {
        "uri": str(parse_uri(args.uri)),
        "broker_pid": pid,
        "requested": args.connections,
        "opened": opened,
        "failed": failures,
        "errors": sample_errors,
        "open_s": round(open_s, 2),
        "rss_before_mb": round(rss_before / 2**20, 1),
        "rss_open_mb": round(rss_open / 2**20, 1),
        "rss_after_close_mb": round(rss_after / 2**20, 1),
        "bytes_per_connection": round((rss_open - rss_before) / opened) if opened else None,
    }
    if args.json:
        print(json.dumps(result))
    else:
        print(
            f"{opened:,} of {args.connections:,} connections open in {result['open_s']} s"
            f" ({failures} failed{': ' + sample_errors[0] if sample_errors else ''})\n"
            f"broker RSS {result['rss_before_mb']} MB before, {result['rss_open_mb']} MB with them open,"
            f" {result['rss_after_close_mb']} MB after closing\n"
            f"≈ {(result['bytes_per_connection'] or 0) / 1024:.1f} KiB per idle connection (with one channel)"
        )
    return 0 if opened == args.connections else 1


if __name__ == "__main__":
    sys.exit(main())
