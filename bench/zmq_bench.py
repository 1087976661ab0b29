"""baedal.client side by side with pyzmq: push/pull and req/rep over inproc, ipc, tcp.

    PYTHONPATH=src .venv/bin/python bench/zmq_bench.py [--count 20000] [--requests 2000] \\
        [--sizes 16,1024] [--transports inproc,ipc,tcp] [--json results.jsonl]

What is measured (each cell in one process run, pyzmq and Baedal interleaved):

* **push/pull throughput**: one pusher sends ``--count`` messages as fast as it can, one
  puller receives them; msg/s from the first send to the last receive.
* **req/rep round trip**: one requester sends ``--requests`` requests one at a time
  (after 10 % warm-up), one replier echoes them; p50 / p99 of the round trip in µs
  (HdrHistogram) and the resulting requests/s.

pyzmq: PUSH/PULL and REQ/REP sockets of one ``zmq.Context``, the receiving side in a
second thread (pyzmq releases the GIL in send/recv), ``inproc://``, ``ipc://`` (a socket
file) and ``tcp://127.0.0.1``.  ZeroMQ has no broker: nothing is stored, nothing is
acknowledged.

Baedal: the asyncio API (``AsyncContext``).  ``inproc``: the broker runs on the
benchmark's own event loop with both sockets (messages handed over as objects: the
path the issue's goal is about).  ``ipc``/``tcp``: a ``baedal serve`` subprocess
(``--unix-socket``), both sockets in this process (``client/amqp.py``).  Every message
goes through a queue and is acknowledged.  ``durable`` rows: a durable queue, persistent
messages and ``send`` waiting until the broker has fsync'ed them (64 sends in flight,
so group commit applies); REQ/REP has no durable mode (replies are transient by design).

Machine load matters: the machine this ran on is shared (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from hdrh.histogram import HdrHistogram

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from baedal import Broker, __version__  # noqa: E402
from baedal.client import PULL, PUSH, REP, REQ, AsyncContext  # noqa: E402


def histogram() -> HdrHistogram:
    return HdrHistogram(1, 60_000_000, 3)  # 1 µs .. 60 s


# --- pyzmq --------------------------------------------------------------------------------


def zmq_push_pull(transport: str, size: int, count: int, workdir: Path) -> float:
    import zmq

    ctx = zmq.Context()
    address = _zmq_address(transport, workdir, "pp")
    pull = ctx.socket(zmq.PULL)
    bound = _zmq_bind(pull, address)
    push = ctx.socket(zmq.PUSH)
    push.connect(bound)
    body = b"x" * size
    done = threading.Event()

    def receive() -> None:
        for _ in range(count):
            pull.recv()
        done.set()

    thread = threading.Thread(target=receive)
    push.send(body)  # connection established before timing
    pull.recv()
    thread.start()
    started = time.perf_counter()
    for _ in range(count):
        push.send(body)
    done.wait()
    elapsed = time.perf_counter() - started
    thread.join()
    push.close(0)
    pull.close(0)
    ctx.term()
    return count / elapsed


def zmq_req_rep(transport: str, size: int, requests: int, workdir: Path) -> HdrHistogram:
    import zmq

    ctx = zmq.Context()
    address = _zmq_address(transport, workdir, "rr")
    rep = ctx.socket(zmq.REP)
    bound = _zmq_bind(rep, address)
    req = ctx.socket(zmq.REQ)
    req.connect(bound)
    body = b"x" * size
    warmup = requests // 10
    total = warmup + requests

    def serve() -> None:
        for _ in range(total):
            rep.send(rep.recv())

    thread = threading.Thread(target=serve)
    thread.start()
    latencies = histogram()
    for i in range(total):
        started = time.perf_counter_ns()
        req.send(body)
        req.recv()
        if i >= warmup:
            latencies.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
    thread.join()
    req.close(0)
    rep.close(0)
    ctx.term()
    return latencies


def _zmq_address(transport: str, workdir: Path, name: str) -> str:
    if transport == "inproc":
        return f"inproc://{name}-{os.getpid()}"
    if transport == "ipc":
        return f"ipc://{workdir}/{name}.zmq"
    return "tcp://127.0.0.1:*"


def _zmq_bind(sock: Any, address: str) -> str:
    sock.bind(address)
    return sock.getsockopt_string(__import__("zmq").LAST_ENDPOINT)


# --- Baedal --------------------------------------------------------------------------------


class BrokerProcess:
    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.socket_path = str(workdir / "amqp.sock")
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.process = subprocess.Popen(
            [sys.executable, "-m", "baedal", "serve", "--port", str(self.port), "--data-dir",
             str(self.workdir / "data"), "--unix-socket", self.socket_path, "--http-port", "off",
             "--kafka-port", "off", "--log-level", "warning"],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                time.sleep(0.1)
        raise TimeoutError("broker did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGTERM)
            self.process.wait(30)
            self.process = None

    def url(self, transport: str) -> str:
        return f"ipc://{self.socket_path}" if transport == "ipc" else f"tcp://127.0.0.1:{self.port}"


async def baedal_push_pull(url: str, size: int, count: int, durable: bool, queue: str) -> float:
    async with AsyncContext(timeout=60) as ctx:
        push = await ctx.socket(PUSH, queue, durable=durable).connect(url)
        pull = await ctx.socket(PULL, queue, durable=durable, prefetch=256).connect(url)
        body = b"x" * size
        await push.send(body)  # warm: queue and consumer in place
        await pull.recv()

        async def produce() -> None:
            if durable:  # 64 confirmed sends in flight (group commit)
                for start in range(0, count, 64):
                    await asyncio.gather(*(push.send(body) for _ in range(min(64, count - start))))
            else:
                for _ in range(count):
                    await push.send(body)

        started = time.perf_counter()
        producer = asyncio.create_task(produce())
        for _ in range(count):
            await pull.recv()
        elapsed = time.perf_counter() - started
        await producer
        pull.ack()
        return count / elapsed


async def baedal_req_rep(url: str, size: int, requests: int, queue: str) -> HdrHistogram:
    async with AsyncContext(timeout=60) as ctx:
        rep = await ctx.socket(REP, queue).connect(url)
        req = await ctx.socket(REQ, queue).connect(url)
        body = b"x" * size
        warmup = requests // 10
        total = warmup + requests

        async def serve() -> None:
            for _ in range(total):
                await rep.send(await rep.recv())

        server = asyncio.create_task(serve())
        latencies = histogram()
        cpu = histogram()
        for i in range(total):
            started = time.perf_counter_ns()
            cpu_started = time.thread_time_ns()
            await req.request(body)
            if i >= warmup:
                latencies.record_value(max(1, (time.perf_counter_ns() - started) // 1000))
                cpu.record_value(max(1, (time.thread_time_ns() - cpu_started) // 1000))
        await server
        # inproc: requester, broker and replier share this thread, so the thread's CPU
        # time per round trip is the work itself, without the time the OS gave other
        # processes meanwhile (the machine is shared: see docs/benchmarks.md).
        latencies.cpu = cpu  # type: ignore[attr-defined]
        return latencies


async def baedal_inproc(workdir: Path, fn: Any, *args: Any) -> Any:
    name = f"bench-{os.getpid()}-{time.monotonic_ns()}"
    async with Broker(port=0, data_dir=workdir / f"inproc-{name}", inproc_name=name, kafka_port=None):
        return await fn(f"inproc://{name}", *args)


# --- the run -------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=20000, help="push/pull messages per cell")
    parser.add_argument("--requests", type=int, default=2000, help="req/rep round trips per cell")
    parser.add_argument("--sizes", default="16,1024")
    parser.add_argument("--transports", default="inproc,ipc,tcp")
    parser.add_argument("--json", help="append one JSON line per measurement")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    transports = args.transports.split(",")
    try:
        import zmq
    except ImportError:
        print("pyzmq is not installed (pip install baedal[bench])", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.install()
        loop_name = "uvloop"
    except ImportError:
        loop_name = "asyncio"
    workdir = Path(tempfile.mkdtemp(prefix="zb-", dir="/tmp"))
    broker = BrokerProcess(workdir)
    if any(t in ("ipc", "tcp") for t in transports):
        broker.start()
    rows: list[dict[str, Any]] = []
    print(
        f"baedal {__version__}, pyzmq {zmq.__version__} (libzmq {zmq.zmq_version()}), Python "
        f"{platform.python_version()} ({loop_name}), {platform.machine()} x{os.cpu_count()}",
        flush=True,
    )
    try:
        for transport in transports:
            for size in sizes:
                for system in ("pyzmq", "baedal", "baedal durable"):
                    queue = f"zb.{transport}.{size}.{system.replace(' ', '-')}.{time.monotonic_ns()}"
                    if system == "pyzmq":
                        rate = zmq_push_pull(transport, size, args.count * 5, workdir)
                        latencies: HdrHistogram | None = zmq_req_rep(transport, size, args.requests, workdir)
                    else:
                        durable = system == "baedal durable"
                        if transport == "inproc":
                            rate = asyncio.run(baedal_inproc(workdir, baedal_push_pull, size, args.count, durable, queue))
                            latencies = None if durable else asyncio.run(
                                baedal_inproc(workdir, baedal_req_rep, size, args.requests, queue + ".rpc")
                            )
                        else:
                            url = broker.url(transport)
                            rate = asyncio.run(baedal_push_pull(url, size, args.count, durable, queue))
                            latencies = None if durable else asyncio.run(
                                baedal_req_rep(url, size, args.requests, queue + ".rpc")
                            )
                    row: dict[str, Any] = {
                        "transport": transport,
                        "size": size,
                        "system": system,
                        "push_pull_msg_s": round(rate),
                    }
                    if latencies is not None:
                        row["rtt_p50_us"] = latencies.get_value_at_percentile(50)
                        row["rtt_p99_us"] = latencies.get_value_at_percentile(99)
                        row["req_s"] = round(1e6 / max(1.0, latencies.get_mean_value()))
                        cpu = getattr(latencies, "cpu", None)
                        if cpu is not None and transport == "inproc":
                            row["cpu_p50_us"] = cpu.get_value_at_percentile(50)
                            row["cpu_p99_us"] = cpu.get_value_at_percentile(99)
                    rows.append(row)
                    print(_format(row), flush=True)
                    if args.json:
                        with open(args.json, "a") as fh:
                            fh.write(json.dumps({"bench": "zmq", **row}) + "\n")
    finally:
        broker.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print("| transport | size | system | push/pull msg/s | req/rep p50 µs | p99 µs | req/s |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print(
            f"| {row['transport']} | {row['size']} B | {row['system']} | {row['push_pull_msg_s']:,} | "
            f"{row.get('rtt_p50_us', '—')} | {row.get('rtt_p99_us', '—')} | "
            f"{format(row['req_s'], ',') if 'req_s' in row else '—'} |"
        )
    return 0


def _format(row: dict[str, Any]) -> str:
    text = f"{row['transport']:6} {row['size']:5} B {row['system']:15} push/pull {row['push_pull_msg_s']:>9,} msg/s"
    if "rtt_p50_us" in row:
        text += f"  req/rep p50 {row['rtt_p50_us']:>6} µs p99 {row['rtt_p99_us']:>6} µs"
    if "cpu_p99_us" in row:
        text += f" (thread CPU p50 {row['cpu_p50_us']} µs p99 {row['cpu_p99_us']} µs)"
    return text


if __name__ == "__main__":
    sys.exit(main())
