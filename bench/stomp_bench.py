"""STOMP 1 producer / 1 consumer: Baedal side by side with RabbitMQ's STOMP plugin.

    PYTHONPATH=src .venv/bin/python bench/stomp_bench.py --rabbitmq 127.0.0.1:61633 \\
        [--rounds 3] [--count 20000] [--persistent-count 10000] [--size 1024] [--json out.jsonl]

Each trial: one durable ``/queue/`` per trial (declared by the SUBSCRIBE), one consumer
process and one producer process, each a raw-socket STOMP 1.2 client (stomp.py costs
more CPU per frame than either broker, so it would measure itself):

* the consumer subscribes with ``ack:client`` and ``prefetch-count:1000`` (both brokers
  honour it), waits for the SUBSCRIBE's RECEIPT, and then counts MESSAGE frames by
  their terminating NUL (the body is 1 KB of ``x``, heart-beats are off, so every NUL
  ends one MESSAGE); every 250 messages it sends one cumulative ACK naming the last
  complete ``ack`` header it has read;
* the producer pipelines SEND frames (built once; written 100 at a time with one
  ``sendall``), ``persistent:true`` in the persistent mode, and asks for a RECEIPT on
  the last one only.  Both brokers flow-control a fast producer by not reading its
  socket, so the pipeline stays bounded by TCP;
* throughput = messages / (last message received − first SEND written), both on the
  monotonic clock shared by the processes.

The broker's CPU per message is its process CPU time (user + system, psutil, children
included) over the trial divided by the count.  Rounds interleave the brokers (the order
alternates per round) and the modes, so a change in machine load hits both; the load
average is recorded with every trial.

Baedal runs as a ``baedal serve`` subprocess (default settings, a temporary data
directory, fsync on); RabbitMQ is a node the caller started with ``rabbitmq_stomp``
(``--rabbitmq host:port``; its pid is the process psutil finds listening on that
port, or ``--rabbitmq-pid``).  See docs/benchmarks.md for how that node is started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))

from baedal import __version__  # noqa: E402

ACK_EVERY = 250
PREFETCH = 1000
BATCH = 100


def _connect(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.sendall(
        b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\nheart-beat:0,0\n\n\x00"
    )
    reply = b""
    while b"\x00" not in reply:
        data = sock.recv(4096)
        if not data:
            raise ConnectionError("closed during CONNECT")
        reply += data
    if not reply.startswith(b"CONNECTED"):
        raise ConnectionError(reply.decode(errors="replace"))
    return sock


def _wait_for(sock: socket.socket, marker: bytes) -> None:
    seen = b""
    while marker not in seen:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError(f"closed before {marker!r}")
        if b"ERROR" in data:
            raise ConnectionError(data.decode(errors="replace"))
        seen = (seen + data)[-4096:]


def consumer(host: str, port: int, queue: str, count: int, ready: Any, result: Any) -> None:
    sock = _connect(host, port)
    sock.sendall(
        f"SUBSCRIBE\nid:0\ndestination:/queue/{queue}\nack:client\nprefetch-count:{PREFETCH}\n"
        f"receipt:sub\n\n\x00".encode()
    )
    _wait_for(sock, b"receipt-id:sub")
    ready.set()
    received = 0
    next_ack = ACK_EVERY
    last_ack_id = b""
    first = 0.0
    tail = b""  # the end of the previous chunk, for an ack header split across reads
    while received < count:
        data = sock.recv(1 << 20)
        if not data:
            raise ConnectionError("closed by the broker")
        if not first:
            first = time.monotonic()
        received += data.count(b"\x00")
        if received >= next_ack or received >= count:
            window = tail + data
            at = window.rfind(b"\nack:")
            end = window.find(b"\n", at + 5) if at >= 0 else -1
            while at >= 0 and end < 0:  # the last one is cut: take the one before
                at = window.rfind(b"\nack:", 0, at)
                end = window.find(b"\n", at + 5) if at >= 0 else -1
            if at >= 0 and window[at + 5:end] != last_ack_id:
                last_ack_id = window[at + 5:end]
                sock.sendall(b"ACK\nid:" + last_ack_id + b"\n\n\x00")
                next_ack = received + ACK_EVERY
        tail = data[-256:]
    done = time.monotonic()
    sock.sendall(b"DISCONNECT\nreceipt:bye\n\n\x00")
    with contextlib.suppress(OSError, ConnectionError):
        _wait_for(sock, b"receipt-id:bye")
    sock.close()
    result.put({"received": received, "first_received": first, "last_received": done})


def producer(host: str, port: int, queue: str, count: int, size: int, persistent: bool, result: Any) -> None:
    sock = _connect(host, port)
    body = b"x" * size
    head = f"SEND\ndestination:/queue/{queue}\n".encode()
    if persistent:
        head += b"persistent:true\n"
    frame = head + f"content-length:{size}\n\n".encode() + body + b"\x00"
    batch = frame * BATCH
    last = head + f"receipt:done\ncontent-length:{size}\n\n".encode() + body + b"\x00"
    start = time.monotonic()
    full, rest = divmod(count - 1, BATCH)
    for _ in range(full):
        sock.sendall(batch)
    sock.sendall(frame * rest + last)
    written = time.monotonic()
    _wait_for(sock, b"receipt-id:done")
    receipted = time.monotonic()
    sock.sendall(b"DISCONNECT\n\n\x00")
    sock.close()
    result.put({"start": start, "written": written, "receipted": receipted})


def _cpu(pid: int) -> float:
    process = psutil.Process(pid)
    total = sum(process.cpu_times()[:2])
    for child in process.children(recursive=True):
        with contextlib.suppress(psutil.Error):
            total += sum(child.cpu_times()[:2])
    return total


def trial(name: str, host: str, port: int, pid: int, count: int, size: int, persistent: bool) -> dict[str, Any]:
    queue = f"stomp-bench-{name}-{'p' if persistent else 't'}-{os.getpid()}-{time.monotonic_ns()}"
    context = multiprocessing.get_context("fork")
    ready = context.Event()
    results: Any = context.Queue()
    load_before = os.getloadavg()[0]
    consume = context.Process(target=consumer, args=(host, port, queue, count, ready, results))
    consume.start()
    if not ready.wait(60):
        consume.kill()
        raise RuntimeError(f"{name}: the consumer did not subscribe")
    cpu_before = _cpu(pid)
    produce = context.Process(target=producer, args=(host, port, queue, count, size, persistent, results))
    produce.start()
    got: dict[str, Any] = {}
    for _ in range(2):
        got.update(results.get(timeout=600))
    produce.join(30)
    consume.join(30)
    cpu = _cpu(pid) - cpu_before
    seconds = got["last_received"] - got["start"]
    return {
        "broker": name,
        "mode": "persistent" if persistent else "transient",
        "count": count,
        "size": size,
        "seconds": round(seconds, 3),
        "msg_per_s": round(count / seconds),
        "producer_receipt_s": round(got["receipted"] - got["start"], 3),
        "broker_cpu_s": round(cpu, 3),
        "broker_cpu_us_per_msg": round(cpu / count * 1e6, 1),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_baedal(data_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    port = _free_port()
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    process = subprocess.Popen(
        [sys.executable, "-m", "baedal", "serve", "--port", str(_free_port()), "--data-dir", str(data_dir),
         "--http-port", "off", "--kafka-port", "off", "--mqtt-port", "off", "--stomp-port", str(port),
         "--log-level", "warning"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    deadline = time.monotonic() + 30
    while True:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return process, port
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError("baedal serve did not start")
        time.sleep(0.05)


def listener_pid(port: int) -> int:
    """The pid of the process listening on ``port`` (the RabbitMQ node's beam.smp)."""
    for connection in psutil.net_connections(kind="tcp"):
        if connection.status == psutil.CONN_LISTEN and connection.laddr.port == port and connection.pid:
            return int(connection.pid)
    raise RuntimeError(f"no process listening on port {port}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rabbitmq", default="127.0.0.1:61633", help="host:port of RabbitMQ's STOMP listener")
    parser.add_argument("--rabbitmq-pid", type=int)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--count", type=int, default=20000, help="messages per transient trial")
    parser.add_argument("--persistent-count", type=int, default=10000, help="messages per persistent trial")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--json", type=Path, help="append one JSON line per trial here")
    args = parser.parse_args()
    rabbit_host, _, rabbit_port = args.rabbitmq.rpartition(":")
    rabbit_pid = args.rabbitmq_pid or listener_pid(int(rabbit_port))
    meta = {
        "machine": f"{platform.machine()} {os.cpu_count()} cpu, {platform.platform()}",
        "python": platform.python_version(),
        "baedal": __version__,
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    print(json.dumps(meta))
    with tempfile.TemporaryDirectory(prefix="stomp-bench-") as tmp:
        process, port = start_baedal(Path(tmp))
        targets = {"baedal": ("127.0.0.1", port, process.pid), "rabbitmq": (rabbit_host, int(rabbit_port), rabbit_pid)}
        rows = []
        try:
            for number in range(args.rounds):
                order = ["baedal", "rabbitmq"] if number % 2 == 0 else ["rabbitmq", "baedal"]
                for persistent in (False, True):
                    count = args.persistent_count if persistent else args.count
                    for name in order:
                        host, target_port, pid = targets[name]
                        row = trial(name, host, target_port, pid, count, args.size, persistent)
                        row.update(round=number, **meta)
                        rows.append(row)
                        print(json.dumps(row), flush=True)
                        if args.json:
                            with open(args.json, "a") as out:
                                out.write(json.dumps(row) + "\n")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
    for mode in ("transient", "persistent"):
        mine = [r["msg_per_s"] for r in rows if r["mode"] == mode and r["broker"] == "baedal"]
        theirs = [r["msg_per_s"] for r in rows if r["mode"] == mode and r["broker"] == "rabbitmq"]
        ratio = sorted(mine)[len(mine) // 2] / sorted(theirs)[len(theirs) // 2]
        print(f"{mode}: baedal {mine} msg/s, rabbitmq {theirs} msg/s, median ratio {ratio:.2f}x")


if __name__ == "__main__":
    main()
