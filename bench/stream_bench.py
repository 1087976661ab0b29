"""Streams over AMQP: Baedal vs RabbitMQ streams, interleaved in one run.

    PYTHONPATH=src .venv/bin/python bench/stream_bench.py \\
        [--rabbitmq-url amqp://guest:guest@127.0.0.1:5672/ | --rabbitmq-url off] \\
        [--baedal-url URL]          # default: start `python -m baedal serve` on a temp dir
        [--compare-url URL ...]     # other Baedal builds in the same interleaved run
        [--rounds 3] [--seconds 10] [--window 1000] [--size 1024] [--producers 1] \\
        [--read-count 1000000] [--prefetch 1000] [--json results.jsonl]

Scenarios (each round runs every scenario on each broker in turn, so slow drifts of the
machine hit both alike):

(a) **publish**: 1 KB persistent messages with publisher confirms, at most ``--window``
    unconfirmed per producer, into a fresh stream for ``--seconds``; confirmed msg/s.
(b) **read from first**: a fresh stream is filled with ``--read-count`` messages (the
    same publisher, not timed), then one consumer (``x-stream-offset: first``, prefetch
    ``--prefetch``, acks with multiple=true every prefetch/2) reads them all; msg/s from
    the basic.consume request to the last delivery.

Clients (the same for both brokers, each in its own process):

* ``--client c`` (the default): ``bench/tools/stream-load.c``, a small librabbitmq
  client (publish with confirms from pre-encoded frames; a stream reader counting
  deliveries), compiled on first use into ``~/.cache/stream-load/`` with ``cc`` (needs
  ``librabbitmq-dev``).  It costs about a third of the Python clients' CPU per message,
  which matters on a 2-vCPU machine where the broker needs the other core.  Without a
  compiler or the library the script warns and uses the Python clients below.
* ``--client python``, (a) and the fill of (b): ``baedal perf`` (the repo's load tool: pre-encoded frames,
  no object or task per message), ``--producers`` processes.  ``--publish-client
  aiormq`` uses aiormq in this process instead (slower; for a cross-check).
* (b): ``bench/stream_reader.py``, the same load-tool client as a single stream
  consumer (deliveries counted in the frame parser, acks once per received chunk).
  aiormq and pika build objects per delivery and top out near 5 k msg/s here, which
  would measure the client.  The C tool amqp-load cannot be used for either: it
  declares its queue without ``x-queue-type`` (a stream refuses that: 406
  inequivalent arg) and cannot send ``x-stream-offset``.

RSS while reading a large stream is ``bench/stream_rss.py``.

A quick check that the script works (small sizes; no need for RabbitMQ)::

    PYTHONPATH=src .venv/bin/python bench/stream_bench.py --rabbitmq-url off \\
        --rounds 1 --seconds 2 --read-count 20000

Results go to stdout as a table and, with ``--json``, one JSON line per measurement.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import aiormq
import psutil
from pamqp.commands import Basic

sys.path.insert(0, str(Path(__file__).resolve().parent))
from soak_kill9 import BrokerProcess  # noqa: E402  (the subprocess broker helper)

PERSISTENT = Basic.Properties(delivery_mode=2)


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


TOOL_SOURCE = Path(__file__).resolve().parent / "tools" / "stream-load.c"
TOOL_BINARY = Path.home() / ".cache" / "stream-load" / "stream-load"


def build_tool() -> Path | None:
    """Compile bench/tools/stream-load.c into ~/.cache (again when the source is newer);
    None, with a warning, when there is no compiler or librabbitmq."""
    if TOOL_BINARY.exists() and TOOL_BINARY.stat().st_mtime >= TOOL_SOURCE.stat().st_mtime:
        return TOOL_BINARY
    compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        print("  warning: no C compiler: using the Python clients", file=sys.stderr)
        return None
    libs = ["-lrabbitmq"]
    if shutil.which("pkg-config"):
        found = subprocess.run(["pkg-config", "--libs", "librabbitmq"], capture_output=True, text=True)
        if found.returncode == 0 and found.stdout.strip():
            libs = found.stdout.split()
    TOOL_BINARY.parent.mkdir(parents=True, exist_ok=True)
    built = subprocess.run(
        [compiler, "-O2", "-Wall", "-o", str(TOOL_BINARY), str(TOOL_SOURCE), *libs],
        capture_output=True,
        text=True,
    )
    if built.returncode != 0:
        print(
            "  warning: cannot build stream-load (apt-get install librabbitmq-dev?): "
            f"{built.stderr.strip()[-300:]}; using the Python clients",
            file=sys.stderr,
        )
        return None
    return TOOL_BINARY


async def run_tool(tool: Path, mode: str, url: str, name: str, *options: str) -> dict[str, Any]:
    """One run of the C client; its JSON line."""
    parsed = urlparse(url)
    command = [
        str(tool), mode, "--host", parsed.hostname or "127.0.0.1", "--port", str(parsed.port or 5672),
        "--user", parsed.username or "guest", "--password", parsed.password or "guest",
        "--vhost", (parsed.path[1:] if parsed.path and parsed.path != "/" else "/"), "--queue", name, *options,
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    try:
        result = json.loads(stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"stream-load {mode} failed: {stderr.decode()[-500:]}") from None
    if process.returncode:
        print(f"  warning: stream-load {mode}: {stderr.decode()[-300:]}", file=sys.stderr)
    result.pop("mode", None)
    result["client"] = "stream-load.c"
    return result


async def run_publish(url: str, args: argparse.Namespace) -> dict[str, Any]:
    if args.tool is not None:
        name = f"bench-stream-{uuid.uuid4().hex[:8]}"
        result = await run_tool(
            args.tool, "publish", url, name, "--declare", "--seconds", str(args.seconds),
            "--size", str(args.size), "--window", str(args.window),
        )  # fmt: skip
        await delete_queue(url, name)
        return result
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


async def run_publish_perf(
    url: str, args: argparse.Namespace, name: str | None = None, count: int | None = None
) -> dict[str, Any]:
    """Scenario (a) with ``baedal perf`` (the repo's load tool: hand-written frames, no
    task per message), which keeps the client from being the bottleneck.  With ``count``
    it publishes that many into ``name`` and keeps the stream (the fill of (b))."""
    keep = name is not None
    name = name or f"bench-stream-{uuid.uuid4().hex[:8]}"
    queue_args = json.dumps(
        {"x-queue-type": "stream", "x-max-length-bytes": 20_000_000_000, "x-stream-max-segment-size-bytes": 100_000_000}
    )
    command = [
        sys.executable, "-m", "baedal.perf", "--uri", url, "-x", str(args.producers), "-y", "0",
        "-s", str(args.size), "-f", "-c", str(args.window), "--durable-queue",
        "--queue-args", queue_args, "-u", name, "--json", "--quiet",
    ]  # fmt: skip
    if args.producers > 1:
        command += ["--processes", str(args.producers)]
    if count is not None:
        command += ["-C", str(-(-count // args.producers)), "--timeout", "1200"]
    else:
        command += ["-z", str(args.seconds)]
    if keep:
        command.append("--keep-queues")
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
    return {
        "messages": result["confirmed"],
        "seconds": result["pub_s"],
        "rate": result["pub_rate"],
        "client": "baedal-perf",
        "client_cpu_s": result.get("tool_cpu_s"),
    }


async def run_read(url: str, args: argparse.Namespace, count: int, pid: int | None = None) -> dict[str, Any]:
    """Scenario (b): fill a fresh stream with ``count`` messages (baedal perf, not timed),
    then read them all from first with bench/stream_reader.py in its own process."""
    name = f"bench-stream-{uuid.uuid4().hex[:8]}"
    tool = args.tool
    if tool is not None:
        filled = await run_tool(
            tool, "publish", url, name, "--declare", "--count", str(count), "--size", str(args.size),
            "--window", str(args.window),
        )  # fmt: skip
    else:
        filled = await run_publish_perf(url, args, name=name, count=count)
    if filled["messages"] < count:
        raise RuntimeError(f"fill confirmed only {filled['messages']} of {count}")
    if tool is not None:
        cpu_before = cpu_seconds(pid)
        result = await run_tool(
            tool, "read", url, name, "--count", str(count), "--prefetch", str(args.prefetch),
            "--ack-every", str(args.prefetch // 2),
        )  # fmt: skip
        add_cpu(result, cpu_before, cpu_seconds(pid))
        await delete_queue(url, name)
        return result
    cpu_before = cpu_seconds(pid)
    command = [
        sys.executable, str(Path(__file__).resolve().parent / "stream_reader.py"),
        "--uri", url, "--queue", name, "--count", str(filled["messages"]),
        "--prefetch", str(args.prefetch), "--ack-every", str(args.prefetch // 2),
    ]  # fmt: skip
    process = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await process.communicate()
    try:
        result = json.loads(stdout.decode().strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise RuntimeError(f"stream_reader failed: {stderr.decode()[-800:]}") from None
    result["client"] = "stream_reader.py"
    add_cpu(result, cpu_before, cpu_seconds(pid))
    await delete_queue(url, name)
    return result


async def delete_queue(url: str, name: str) -> None:
    connection = await aiormq.connect(url)
    try:
        channel = await connection.channel()
        await channel.queue_delete(name)
    finally:
        await connection.close()


def listening_pid(port: int) -> int | None:
    """The pid of the process listening on ``port`` (RabbitMQ's beam.smp), if visible."""
    for proc in psutil.process_iter(["name"]):
        try:
            for conn in proc.net_connections(kind="tcp"):
                if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == port:
                    return proc.pid
        except psutil.Error:
            continue
    return None


def cpu_seconds(pid: int | None) -> float | None:
    if pid is None:
        return None
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return None
    return times.user + times.system


def add_cpu(result: dict[str, Any], before: float | None, after: float | None) -> None:
    """Add the broker's CPU over a scenario: seconds, per message (µs) and cores used.

    CPU per message is the figure this shared, overloaded VM distorts least: throughput
    measures each process's share of two contended cores as much as its efficiency.
    RabbitMQ is shared with other engineers' tests, so its CPU figure is an upper bound.
    """
    if before is None or after is None or not result.get("messages"):
        return
    used = after - before
    result["broker_cpu_s"] = used
    result["broker_cpu_us"] = used / result["messages"] * 1e6
    result["broker_cores"] = used / result["seconds"]


async def with_cpu(pid: int | None, work: Any) -> dict[str, Any]:
    """Run ``work`` (scenario (a)) and ``add_cpu`` over it."""
    before = cpu_seconds(pid)
    result = await work
    add_cpu(result, before, cpu_seconds(pid))
    return result


def report(label: str, broker: str, result: dict[str, Any], sink: Any) -> None:
    line = {
        "scenario": label,
        "broker": broker,
        **result,
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg()[0],
    }
    extra = ""
    if "broker_cpu_us" in result:
        extra = f"  broker {result['broker_cpu_us']:.1f} µs CPU/msg, {result['broker_cores']:.2f} cores"
    if result.get("client_cpu_s") is not None and result.get("messages"):
        extra += f"  client {result['client_cpu_s'] / result['messages'] * 1e6:.1f} µs/msg"
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
    for url in args.compare_url:  # other Baedal builds (e.g. main), measured as baedal-2, ...
        brokers.append((f"baedal-{len(brokers) + 1}", url, listening_pid(urlparse(url).port or 5672)))
    if args.rabbitmq_url != "off":
        brokers.append(("rabbitmq", args.rabbitmq_url, listening_pid(urlparse(args.rabbitmq_url).port or 5672)))
    args.tool = build_tool() if args.client == "c" else None
    sink = open(args.json, "a") if args.json else None  # noqa: SIM115
    try:
        for round_index in range(args.rounds):
            print(f"--- round {round_index + 1}/{args.rounds}")
            for name, url, pid in brokers:
                report("publish", name, await with_cpu(pid, run_publish(url, args)), sink)
            if args.read_count:
                for name, url, pid in brokers:
                    report("read-from-first", name, await run_read(url, args, args.read_count, pid), sink)
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
    parser.add_argument(
        "--compare-url",
        action="append",
        default=[],
        help="another running Baedal to interleave (before/after a change); repeatable",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="publish duration per round")
    parser.add_argument("--window", type=int, default=1000, help="unconfirmed publishes at most")
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--read-count", type=int, default=1_000_000, help="messages read from first (0 skips)")
    parser.add_argument("--prefetch", type=int, default=1000, help="prefetch of the reader in (b)")
    parser.add_argument(
        "--producers", type=int, default=1, help="baedal perf producer processes in (a) and the fill of (b)"
    )
    parser.add_argument(
        "--client",
        choices=("c", "python"),
        default="c",
        help="c: bench/tools/stream-load.c for (a) and (b) (default); python: baedal perf and stream_reader.py",
    )
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
