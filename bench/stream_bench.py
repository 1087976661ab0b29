"""Streams over AMQP: Baedal vs RabbitMQ streams, interleaved in one run.

    PYTHONPATH=src .venv/bin/python bench/stream_bench.py \\
        [--rabbitmq-url amqp://guest:guest@127.0.0.1:5672/ | --rabbitmq-url off] \\
        [--baedal-url URL]          # default: start `python -m baedal serve` on a temp dir
        [--rounds 3] [--seconds 10] [--window 1000] [--size 1024] \\
        [--read-count 1000000] [--rss-bytes 10G --rss-body 65536] [--json results.jsonl]

Scenarios (each round runs every scenario on each broker in turn, so slow drifts of the
machine hit both alike):

(a) **publish**: 1 KB persistent messages with publisher confirms, at most ``--window``
    unconfirmed, into a fresh stream for ``--seconds``; confirmed msg/s.
(b) **read from first**: a fresh stream is filled with ``--read-count`` messages (not
    timed), then one consumer (``x-stream-offset: first``, prefetch 1000, acks with
    multiple=true every 500) reads them all; msg/s.
(c) **RSS while reading** (Baedal only, the broker this script starts; ``--rss-bytes``
    e.g. ``10G``; 0 skips): a stream of that size (``--rss-body`` bytes per message) is
    read from first while the broker's VmRSS is sampled; baseline and peak.

Both brokers are driven by the same clients: scenario (a) by ``baedal perf`` (the
repo's load tool, ``--queue-args`` declares the stream; ``--publish-client aiormq``
uses aiormq instead), (b) and (c) by aiormq (one connection, one channel), since they
need the ``x-stream-offset`` consumer argument that ``baedal perf`` does not send.
aiormq costs a task per message: on a small machine it is the bottleneck of (b) (about
5 k msg/s here with either broker), which understates the faster broker.  amqp-load
(~/.cache/amqp-load) cannot be used: it declares its queue without arguments, which a
stream refuses (406 inequivalent x-queue-type), and cannot pass ``x-stream-offset``.

A quick check that the script works (small sizes; no need for RabbitMQ)::

    PYTHONPATH=src .venv/bin/python bench/stream_bench.py --rabbitmq-url off \\
        --rounds 1 --seconds 2 --read-count 20000 --rss-bytes 50M

Results go to stdout as a table and, with ``--json``, one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import aiormq
from pamqp.commands import Basic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_kill9 import BrokerProcess  # noqa: E402  (the subprocess broker helper)

PERSISTENT = Basic.Properties(delivery_mode=2)


def parse_size(text: str) -> int:
    units = {"K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
    text = text.strip().upper().rstrip("B")
    if text and text[-1] in units:
        return int(float(text[:-1]) * units[text[-1]])
    return int(text)


def rss_of(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    return 0


async def declare_stream(channel: Any, name: str) -> None:
    await channel.queue_declare(
        name,
        durable=True,
        arguments={
            "x-queue-type": "stream",
            "x-max-length-bytes": 20_000_000_000,
            "x-stream-max-segment-size-bytes": 100_000_000,
        },
    )


async def publish(
    channel: Any, name: str, body: bytes, window: int, seconds: float | None, count: int | None
) -> tuple[int, float]:
    """Publish with confirms (at most ``window`` unconfirmed) for ``seconds`` or until
    ``count`` are confirmed; returns (confirmed, elapsed seconds)."""
    slots = asyncio.Semaphore(window)
    confirmed = 0
    failures = 0

    async def one() -> None:
        nonlocal confirmed, failures
        try:
            answer = await channel.basic_publish(body, routing_key=name, properties=PERSISTENT)
            if isinstance(answer, Basic.Ack):
                confirmed += 1
            else:
                failures += 1
        finally:
            slots.release()

    started = time.perf_counter()
    deadline = started + seconds if seconds else None
    sent = 0
    pending: set[asyncio.Task[None]] = set()
    while True:
        if deadline is not None and time.perf_counter() >= deadline:
            break
        if count is not None and sent >= count:
            break
        await slots.acquire()
        task = asyncio.ensure_future(one())
        pending.add(task)
        task.add_done_callback(pending.discard)
        sent += 1
    if pending:
        await asyncio.gather(*pending)
    elapsed = time.perf_counter() - started
    if failures:
        print(f"  warning: {failures} publish(es) nacked", file=sys.stderr)
    return confirmed, elapsed


async def read_from_first(channel: Any, name: str, count: int, sample_pid: int | None = None) -> dict[str, float]:
    """Consume ``count`` messages from first; msg/s (and RSS when ``sample_pid``)."""
    await channel.basic_qos(prefetch_count=1000)
    received = 0
    done = asyncio.get_running_loop().create_future()
    peak = baseline = rss_of(sample_pid) if sample_pid else 0

    async def on_message(message: Any) -> None:
        nonlocal received
        received += 1
        if received % 500 == 0 or received == count:
            await channel.basic_ack(message.delivery_tag, multiple=True)
        if received >= count and not done.done():
            done.set_result(None)

    async def sample() -> None:
        nonlocal peak
        while not done.done():
            peak = max(peak, rss_of(sample_pid))  # type: ignore[arg-type]
            await asyncio.sleep(0.2)

    sampler = asyncio.ensure_future(sample()) if sample_pid else None
    started = time.perf_counter()
    await channel.basic_consume(name, on_message, arguments={"x-stream-offset": "first"})
    await done
    elapsed = time.perf_counter() - started
    if sampler is not None:
        await sampler
    return {"messages": received, "seconds": elapsed, "rate": received / elapsed, "rss_baseline": baseline, "rss_peak": peak}


async def run_publish(url: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.publish_client == "perf":
        return await run_publish_perf(url, args)
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"bench-stream-{uuid.uuid4().hex[:8]}"
        await declare_stream(channel, name)
        confirmed, elapsed = await publish(channel, name, b"x" * args.size, args.window, args.seconds, None)
        await channel.queue_delete(name)
        return {"messages": confirmed, "seconds": elapsed, "rate": confirmed / elapsed}
    finally:
        await connection.close()


async def run_publish_perf(url: str, args: argparse.Namespace) -> dict[str, Any]:
    """Scenario (a) with ``baedal perf`` (the repo's load tool: hand-written frames, no
    task per message), which keeps the client from being the bottleneck."""
    name = f"bench-stream-{uuid.uuid4().hex[:8]}"
    queue_args = json.dumps(
        {"x-queue-type": "stream", "x-max-length-bytes": 20_000_000_000, "x-stream-max-segment-size-bytes": 100_000_000}
    )
    command = [
        sys.executable, "-m", "baedal.perf", "--uri", url, "-x", "1", "-y", "0",
        "-s", str(args.size), "-f", "-c", str(args.window), "--durable-queue",
        "--queue-args", queue_args, "-u", name, "-z", str(args.seconds), "--json", "--quiet",
    ]
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    try:
        result = json.loads(stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"baedal perf failed: {stderr.decode()[-500:]}") from None
    if not result.get("ok"):
        print(f"  warning: baedal perf reports a problem: {result.get('errors')}", file=sys.stderr)
    return {"messages": result["confirmed"], "seconds": result["pub_s"], "rate": result["pub_rate"]}


async def run_read(url: str, args: argparse.Namespace, count: int, body_size: int, pid: int | None) -> dict[str, Any]:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel(publisher_confirms=True)
        name = f"bench-stream-{uuid.uuid4().hex[:8]}"
        await declare_stream(channel, name)
        await publish(channel, name, b"r" * body_size, args.window, None, count)
        reader = await connection.channel()
        result = await read_from_first(reader, name, count, pid)
        await reader.close()
        await channel.queue_delete(name)
        return result
    finally:
        await connection.close()


def report(label: str, broker: str, result: dict[str, Any], sink: Any) -> None:
    line = {"scenario": label, "broker": broker, **result, "host": platform.node(), "cpus": os.cpu_count()}
    extra = ""
    if result.get("rss_peak"):
        extra = f"  RSS {result['rss_baseline'] / 2**20:.1f} -> peak {result['rss_peak'] / 2**20:.1f} MiB"
    print(f"{label:<18} {broker:<9} {result['messages']:>10} msgs {result['seconds']:8.2f} s {result['rate']:>10.0f} msg/s{extra}")
    if sink is not None:
        sink.write(json.dumps(line) + "\n")
        sink.flush()


async def main_async(args: argparse.Namespace) -> None:
    brokers: list[tuple[str, str, int | None]] = []
    process: BrokerProcess | None = None
    temp: tempfile.TemporaryDirectory[str] | None = None
    if args.baedal_url:
        brokers.append(("baedal", args.baedal_url, None))
    else:
        temp = tempfile.TemporaryDirectory(prefix="stream-bench-")
        data_dir = Path(temp.name) / "data"
        data_dir.mkdir()
        process = BrokerProcess(data_dir, Path(temp.name) / "broker.log")
        process.start()
        assert process.process is not None
        brokers.append(("baedal", f"amqp://guest:guest@127.0.0.1:{process.port}/", process.process.pid))
    if args.rabbitmq_url != "off":
        brokers.append(("rabbitmq", args.rabbitmq_url, None))
    sink = open(args.json, "a") if args.json else None  # noqa: SIM115
    try:
        for round_index in range(args.rounds):
            print(f"--- round {round_index + 1}/{args.rounds}")
            for name, url, _pid in brokers:
                report("publish", name, await run_publish(url, args), sink)
            if args.read_count:
                for name, url, _pid in brokers:
                    report("read-from-first", name, await run_read(url, args, args.read_count, args.size, None), sink)
        rss_bytes = parse_size(args.rss_bytes)
        if rss_bytes:
            for name, url, pid in brokers:
                if pid is None:
                    continue  # RSS only for the broker this script started
                count = max(rss_bytes // args.rss_body, 1)
                report("rss-read", name, await run_read(url, args, count, args.rss_body, pid), sink)
    finally:
        if sink is not None:
            sink.close()
        if process is not None:
            process.kill()
        if temp is not None:
            with contextlib.suppress(OSError):
                temp.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--baedal-url", default=None, help="a running Baedal (default: start one)")
    parser.add_argument("--rabbitmq-url", default="amqp://guest:guest@127.0.0.1:5672/", help="'off' to skip")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="publish duration per round")
    parser.add_argument("--window", type=int, default=1000, help="unconfirmed publishes at most")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--read-count", type=int, default=1_000_000, help="messages read from first (0 skips)")
    parser.add_argument("--rss-bytes", default="0", help="stream size for the RSS scenario, e.g. 10G (0 skips)")
    parser.add_argument("--rss-body", type=int, default=65536, help="body bytes in the RSS scenario")
    parser.add_argument(
        "--publish-client",
        choices=("perf", "aiormq"),
        default="perf",
        help="client for scenario (a): baedal perf (default) or aiormq",
    )
    parser.add_argument("--json", default=None, help="append one JSON line per measurement here")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
