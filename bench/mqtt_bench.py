"""Baedal's MQTT listener side by side with mosquitto, in one interleaved run.

    PYTHONPATH=src .venv/bin/python bench/mqtt_bench.py [--rounds 2] [--count 50000] \\
        [--fanout 1000] [--idle 10000] [--rate 1000] [--seconds 5] [--json results.jsonl]

Brokers (each started fresh for every round, in the order Baedal, mosquitto,
mosquitto-persist, so the machine's load falls on all of them alike):

* ``baedal``: ``python -m baedal serve`` subprocess (MQTT only; AMQP port needed by
  the CLI), data directory in a temporary directory.  QoS 1 rows use a persistent session
  (``clean_session`` false): the subscription is a durable queue and a QoS 1 PUBLISH is
  a persistent message, PUBACKed once it is on disk (group-committed fsync).
* ``baedal-asyncio`` (not in the default list): the same with ``BAEDAL_USE_UVLOOP=false``
  (the standard library's event loop; ``baedal`` runs on uvloop, the default).
* ``baedal-nolight`` (not in the default list): the same with ``--mqtt-light-transport
  off`` (MQTT connections on the event loop's transports instead of the light epoll
  transport, ``src/baedal/transport/epoll.py``, the default on Linux).
* ``baedal-base`` (not in the default list): ``baedal`` from the ``src`` directory given
  with ``--base-src`` (another commit), for a before/after comparison in one run.
* ``mosquitto``: ``/usr/sbin/mosquitto -c conf``: a listener on 127.0.0.1, anonymous
  allowed, ``max_queued_messages 0`` (unlimited; the default 1000 drops QoS 1 messages
  for a subscriber behind by more than that, which would make its throughput a count of
  drops) and **memory only** (no persistence).
* ``mosquitto-persist``: the same with ``persistence true``.  mosquitto writes its
  database at ``autosave_interval`` (default 1800 s) and at shutdown, not per message:
  a PUBACK from it does not mean the message is on disk.

Clients: a minimal raw-socket MQTT 3.1.1 client written for this bench (asyncio, no
paho): pipelined PUBLISH, PUBACKs read by a separate reader task, subscriber PUBACKs
written in one batch per read.  Publisher and subscribers run in separate processes
(``multiprocessing``); the CPU seconds each side used are recorded next to the broker's
so that a client-bound result shows.

Measurements:

* ``qos0`` / ``qos1``: one publisher, one subscriber, ``--count`` messages of
  ``--size`` bytes; msg/s from the first PUBLISH written to the last one received.
  QoS 1: at most ``--window`` PUBLISHes un-PUBACKed.
* ``fanout``: ``--fanout`` subscribers (QoS 0) of one topic spread over
  ``--fanout-procs`` processes; the publisher sends ``--fanout-messages`` messages;
  deliveries/s from the first PUBLISH to the last delivery anywhere.
* ``idle``: ``--idle`` clients connect (keep-alive 600 s) and stay idle; (broker RSS
  with them connected − RSS before) / clients, sampled after ``--settle`` seconds.  The
  fd limit is raised to the hard limit in the bench, its client processes and the broker.
* ``latency0`` / ``latency1``: one publisher at a fixed ``--rate`` for ``--seconds``
  (first 10 % dropped as warm-up); each payload carries its send time
  (``CLOCK_MONOTONIC``, shared by all processes); p50/p99/max publish-to-deliver.

The machine this is meant to run on is shared and loaded: every line records the load
average at its start.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import multiprocessing
import os
import platform
import resource
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
MOSQUITTO = "/usr/sbin/mosquitto"

# --- a minimal MQTT 3.1.1 client ---------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, SUBSCRIBE, SUBACK = 1, 2, 3, 4, 8, 9


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _str(s: str | bytes) -> bytes:
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _varint(len(body)) + body


def connect_packet(client_id: str, clean: bool, username: str | None, password: str | None,
                   keepalive: int = 600) -> bytes:
    flags = 0x02 if clean else 0
    payload = _str(client_id)
    if username is not None:
        flags |= 0x80
        payload += _str(username)
        if password is not None:
            flags |= 0x40
            payload += _str(password)
    return _packet(CONNECT << 4, _str("MQTT") + bytes([4, flags]) + struct.pack("!H", keepalive) + payload)


def publish_packet(topic: bytes, payload: bytes, qos: int, packet_id: int = 0) -> bytes:
    body = _str(topic) + (struct.pack("!H", packet_id) if qos else b"") + payload
    return _packet((PUBLISH << 4) | (qos << 1), body)


def subscribe_packet(packet_id: int, topic: str, qos: int) -> bytes:
    return _packet((SUBSCRIBE << 4) | 2, struct.pack("!H", packet_id) + _str(topic) + bytes([qos]))


class Packets:
    """Splits a byte stream into (first byte, body) pairs."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        buf = self.buffer
        buf += data
        out: list[tuple[int, bytes]] = []
        pos, end = 0, len(buf)
        while end - pos >= 2:
            length, shift, i, whole = 0, 0, pos + 1, False
            while i < end:
                byte = buf[i]
                i += 1
                length |= (byte & 0x7F) << shift
                shift += 7
                if not byte & 0x80:
                    whole = True
                    break
            if not whole or i + length > end:
                break
            out.append((buf[pos], bytes(buf[i:i + length])))
            pos = i + length
        del buf[:pos]
        return out


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer, self.packets = reader, writer, Packets()
        self.pending: list[tuple[int, bytes]] = []

    @classmethod
    async def open(cls, port: int, client_id: str, clean: bool, auth: tuple[str, str] | None) -> Conn:
        reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1 << 20)
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        user, pw = auth if auth else (None, None)
        writer.write(connect_packet(client_id, clean, user, pw))
        conn = cls(reader, writer)
        first, body = await conn.next()
        if first >> 4 != CONNACK or body[1] != 0:
            raise RuntimeError(f"CONNACK refused: {first:#x} {body!r}")
        return conn

    async def next(self) -> tuple[int, bytes]:
        while not self.pending:
            data = await self.reader.read(1 << 18)
            if not data:
                raise ConnectionError("closed by the broker")
            self.pending.extend(self.packets.feed(data))
        return self.pending.pop(0)

    async def subscribe(self, topic: str, qos: int) -> None:
        self.writer.write(subscribe_packet(1, topic, qos))
        first, body = await self.next()
        if first >> 4 != SUBACK or body[2] & 0x80:
            raise RuntimeError(f"SUBACK refused: {body!r}")

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.write(b"\xe0\x00")  # DISCONNECT
            self.writer.close()


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# --- subscriber processes ------------------------------------------------------------------


def subscriber_process(pipe: Any, port: int, ids: list[str], topic: str, qos: int, clean: bool,
                       auth: tuple[str, str] | None, expect: int, timeout: float,
                       latency: bool) -> None:
    """Connect ``ids``, subscribe, say "ready", then receive ``expect`` messages on each."""
    raise_fd_limit()

    async def main() -> dict[str, Any]:
        conns = []
        for i in range(0, len(ids), 100):  # 100 handshakes at a time
            conns += await asyncio.gather(*(Conn.open(port, cid, clean, auth) for cid in ids[i:i + 100]))
        await asyncio.gather(*(c.subscribe(topic, qos) for c in conns))
        pipe.send("ready")
        first: list[float] = []
        last: list[float] = []
        lat: list[float] = []
        got = [0]

        async def drain(conn: Conn) -> None:
            n, t_first = 0, 0.0
            while n < expect:
                data = await conn.reader.read(1 << 18)
                if not data:
                    raise ConnectionError("closed by the broker")
                now = time.monotonic()
                acks = []
                for head, body in conn.packets.feed(data):
                    if head >> 4 != PUBLISH:
                        continue
                    if not n:
                        t_first = now
                    n += 1
                    tlen = (body[0] << 8) | body[1]
                    if head & 0x06:
                        acks.append(b"\x40\x02" + body[2 + tlen:4 + tlen])
                        start = 4 + tlen
                    else:
                        start = 2 + tlen
                    if latency:
                        lat.append(now - struct.unpack_from("!d", body, start)[0])
                if acks:
                    conn.writer.write(b"".join(acks))
            first.append(t_first)
            last.append(time.monotonic())
            got[0] += n

        pipe.recv()  # "go"
        try:
            await asyncio.wait_for(asyncio.gather(*(drain(c) for c in conns)), timeout)
            complete = True
        except TimeoutError:
            complete = False
        for c in conns:
            c.close()
        await asyncio.sleep(0.1)
        return {"first": min(first) if first else None, "last": max(last) if last else None,
                "received": got[0], "complete": complete,
                "latencies": lat, "cpu": time.process_time()}

    try:
        result = asyncio.run(main())
    except Exception as exc:  # reported to the parent, which fails the cell
        result = {"error": repr(exc)}
    pipe.send(result)


class Subscribers:
    def __init__(self, procs: int, port: int, ids: list[str], topic: str, qos: int, clean: bool,
                 auth: tuple[str, str] | None, expect: int, timeout: float, latency: bool = False) -> None:
        ctx = multiprocessing.get_context("fork")
        self.pipes, self.procs = [], []
        per = (len(ids) + procs - 1) // procs
        for i in range(procs):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=subscriber_process, daemon=True,
                            args=(child, port, ids[i * per:(i + 1) * per], topic, qos, clean, auth,
                                  expect, timeout, latency))
            p.start()
            self.pipes.append(parent)
            self.procs.append(p)
        for pipe in self.pipes:
            if not pipe.poll(max(120.0, timeout)):
                raise RuntimeError("subscribers not ready")
            msg = pipe.recv()
            if msg != "ready":
                raise RuntimeError(f"subscriber failed: {msg}")

    def go(self) -> None:
        for pipe in self.pipes:
            pipe.send("go")

    def results(self, timeout: float) -> list[dict[str, Any]]:
        out = []
        for pipe in self.pipes:
            if not pipe.poll(timeout + 30):
                raise RuntimeError("no result from a subscriber process")
            out.append(pipe.recv())
        for p in self.procs:
            p.join(10)
            if p.is_alive():
                p.kill()
        for r in out:
            if "error" in r:
                raise RuntimeError(r["error"])
        return out


# --- publisher (this process) --------------------------------------------------------------


async def publish(port: int, auth: tuple[str, str] | None, topic: str, count: int, size: int, qos: int,
                  window: int, rate: float = 0.0) -> dict[str, Any]:
    cpu0 = time.process_time()
    conn = await Conn.open(port, f"bench-pub-{os.getpid()}-{time.monotonic_ns()}", True, auth)
    tb = topic.encode()
    pad = b"x" * max(0, size - 8)
    acked = [0]
    more = asyncio.Event()

    async def read_acks() -> None:
        while acked[0] < count:
            data = await conn.reader.read(1 << 18)
            if not data:
                raise ConnectionError("publisher closed by the broker")
            acked[0] += sum(1 for head, _ in conn.packets.feed(data) if head >> 4 == PUBACK)
            more.set()

    reader = asyncio.ensure_future(read_acks()) if qos else None
    start = time.monotonic()
    sent = 0
    if rate:
        while sent < count:
            target = start + sent / rate
            delay = target - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            pid = sent % 65535 + 1
            conn.writer.write(publish_packet(tb, struct.pack("!d", time.monotonic()) + pad, qos, pid))
            sent += 1
    else:
        while sent < count:
            if qos:
                while sent - acked[0] >= window:
                    more.clear()
                    await more.wait()
            batch = min(count - sent, 200 if not qos else window - (sent - acked[0]))
            stamp = struct.pack("!d", time.monotonic())
            conn.writer.write(b"".join(
                publish_packet(tb, stamp + pad, qos, (sent + i) % 65535 + 1) for i in range(batch)))
            sent += batch
            await conn.writer.drain()
    await conn.writer.drain()
    if reader is not None:
        await asyncio.wait_for(reader, 300)
    end = time.monotonic()
    conn.close()
    return {"start": start, "end": end, "cpu": time.process_time() - cpu0}


# --- brokers ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _raise_child_limit() -> None:
    raise_fd_limit()


class BrokerProcess:
    def __init__(self, kind: str, workdir: Path, profile: str | None = None, base_src: str | None = None) -> None:
        self.kind = kind
        self.port = free_port()
        work = workdir / f"{kind}-{self.port}"
        work.mkdir(parents=True)
        if kind.startswith("baedal"):
            prof = ["-m", "cProfile", "-o", f"{profile}/baedal-{self.port}.prof"] if profile else []
            self.http_port: int | None = free_port()  # /metrics: the storage counters
            command = [sys.executable, *prof, "-m", "baedal", "serve", "--port", str(free_port()),
                       "--mqtt-port", str(self.port), "--http-port", str(self.http_port),
                       "--kafka-port", "off",
                       "--stomp-port", "off", "--data-dir", str(work / "data"), "--log-level", "warning"]
            self.auth: tuple[str, str] | None = ("guest", "guest")
            env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
            if kind == "baedal-base":  # another checkout's code, for before/after in one run
                if not base_src:
                    raise RuntimeError("baedal-base needs --base-src")
                env["PYTHONPATH"] = base_src
            if kind == "baedal-asyncio":  # the standard library's loop instead of uvloop
                env["BAEDAL_USE_UVLOOP"] = "false"
            if kind == "baedal-nolight":  # the loop's transports, not the light epoll one
                command += ["--mqtt-light-transport", "off"]
        else:
            conf = work / "mosquitto.conf"
            lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "max_queued_messages 0",
                     "log_dest none"]
            if kind == "mosquitto-persist":
                lines += ["persistence true", f"persistence_location {work}/"]
            conf.write_text("\n".join(lines) + "\n")
            command = [MOSQUITTO, "-c", str(conf)]
            self.http_port = None
            self.auth = None
            env = dict(os.environ)
        self.log = open(work / "broker.log", "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(command, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=_raise_child_limit)
        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{kind} exited with {self.process.returncode}; see {work}/broker.log")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind} not listening")
            time.sleep(0.05)
        self.ps = psutil.Process(self.process.pid)

    def rss(self) -> int:
        return self.ps.memory_info().rss

    def cpu(self) -> float:
        t = self.ps.cpu_times()
        return t.user + t.system

    def storage_counters(self) -> dict[str, float]:
        """Baedal's ``baedal_storage_*`` counters from /metrics (fsync jobs, sync holds,
        write-behind writes and skips); empty for mosquitto or a Baedal without them."""
        if self.http_port is None:
            return {}
        import urllib.request

        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return {}
        found = {}
        for line in text.splitlines():
            if line.startswith("baedal_storage_") and "_created" not in line:
                name, _, value = line.rpartition(" ")
                found[name.removeprefix("baedal_storage_").removesuffix("_total")] = float(value)
        return found

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        self.log.close()


# --- measurements -------------------------------------------------------------------------


def _uid() -> str:
    return f"{os.getpid()}-{time.monotonic_ns() % 10**9}"


def pubsub(broker: BrokerProcess, qos: int, count: int, size: int, window: int) -> dict[str, Any]:
    topic = f"bench/{qos}/{_uid()}"
    durable = qos == 1
    subs = Subscribers(1, broker.port, [f"bench-sub-{_uid()}"], topic, qos, not durable, broker.auth,
                       count, timeout=600)
    storage0 = broker.storage_counters()
    cpu0 = broker.cpu()
    subs.go()
    pub = asyncio.run(publish(broker.port, broker.auth, topic, count, size, qos, window))
    res = subs.results(600)[0]
    cpu = broker.cpu() - cpu0
    if not res["complete"]:
        return {"error": "subscriber timed out", "sent": count}
    wall = res["last"] - pub["start"]
    storage = {name: int(value - storage0.get(name, 0))
               for name, value in broker.storage_counters().items()}
    return {"msgs": count, "wall_s": round(wall, 3), "msg_per_s": round(count / wall),
            "publish_rate": round(count / (pub["end"] - pub["start"])), "broker_cpu_s": round(cpu, 2),
            "publisher_cpu_s": round(pub["cpu"], 2), "subscriber_cpu_s": round(res["cpu"], 2),
            **({"storage": storage} if storage and qos else {})}


def fanout(broker: BrokerProcess, subscribers: int, messages: int, procs: int, size: int) -> dict[str, Any]:
    topic = f"fan/{_uid()}"
    ids = [f"fan-{_uid()}-{i}" for i in range(subscribers)]
    subs = Subscribers(procs, broker.port, ids, topic, 0, True, broker.auth, messages, timeout=600)
    cpu0 = broker.cpu()
    subs.go()
    pub = asyncio.run(publish(broker.port, broker.auth, topic, messages, size, 0, 0))
    results = subs.results(600)
    cpu = broker.cpu() - cpu0
    if not all(r["complete"] for r in results):
        return {"error": "a subscriber timed out"}
    last = max(r["last"] for r in results)
    deliveries = subscribers * messages
    wall = last - pub["start"]
    return {"subscribers": subscribers, "messages": messages, "deliveries": deliveries,
            "wall_s": round(wall, 3), "deliveries_per_s": round(deliveries / wall),
            "broker_cpu_s": round(cpu, 2), "subscriber_cpu_s": round(sum(r["cpu"] for r in results), 2)}


def idle_process(pipe: Any, port: int, ids: list[str], auth: tuple[str, str] | None) -> None:
    raise_fd_limit()

    async def main() -> None:
        conns: list[Conn] = []
        for i in range(0, len(ids), 200):
            conns += await asyncio.gather(*(Conn.open(port, cid, True, auth) for cid in ids[i:i + 200]))
        pipe.send(len(conns))
        await asyncio.get_running_loop().run_in_executor(None, pipe.recv)  # "close"
        for c in conns:
            c.close()
        await asyncio.sleep(0.5)

    try:
        asyncio.run(main())
    except Exception as exc:
        pipe.send(repr(exc))


def idle(broker: BrokerProcess, clients: int, procs: int, settle: float) -> dict[str, Any]:
    time.sleep(settle)
    before = broker.rss()
    ctx = multiprocessing.get_context("fork")
    per = (clients + procs - 1) // procs
    pipes, children = [], []
    start = time.monotonic()
    for i in range(procs):
        parent, child = ctx.Pipe()
        ids = [f"idle-{_uid()}-{i}-{j}" for j in range(min(per, clients - i * per))]
        p = ctx.Process(target=idle_process, args=(child, broker.port, ids, broker.auth), daemon=True)
        p.start()
        pipes.append(parent)
        children.append(p)
    opened, errors = 0, []
    for pipe in pipes:
        if not pipe.poll(600):
            errors.append("timeout")
            continue
        msg = pipe.recv()
        if isinstance(msg, int):
            opened += msg
        else:
            errors.append(msg)
    connect_s = time.monotonic() - start
    time.sleep(settle)
    during = broker.rss()
    for pipe in pipes:
        with contextlib.suppress(Exception):
            pipe.send("close")
    for p in children:
        p.join(60)
        if p.is_alive():
            p.kill()
    time.sleep(settle)
    after = broker.rss()
    out = {"clients": opened, "connect_s": round(connect_s, 2), "rss_before_mib": round(before / 2**20, 1),
           "rss_with_clients_mib": round(during / 2**20, 1), "rss_after_close_mib": round(after / 2**20, 1),
           "bytes_per_client": round((during - before) / opened) if opened else None}
    if errors:
        out["errors"] = errors[:3]
    return out


def latency(broker: BrokerProcess, qos: int, rate: float, seconds: float, size: int) -> dict[str, Any]:
    topic = f"lat/{qos}/{_uid()}"
    count = int(rate * seconds)
    subs = Subscribers(1, broker.port, [f"lat-sub-{_uid()}"], topic, qos, qos == 0, broker.auth, count,
                       timeout=seconds + 120, latency=True)
    subs.go()
    pub = asyncio.run(publish(broker.port, broker.auth, topic, count, size, qos, 0, rate=rate))
    res = subs.results(seconds + 120)[0]
    if not res["complete"]:
        return {"error": "subscriber timed out"}
    lat = sorted(res["latencies"][count // 10:])

    def pct(p: float) -> float:
        return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1e3, 3)

    return {"rate": rate, "msgs": count, "achieved_rate": round(count / (pub["end"] - pub["start"])),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "max_ms": round(lat[-1] * 1e3, 3)}


# --- driver -------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    mosq = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.splitlines()
    sys.path.insert(0, str(ROOT / "src"))
    from baedal import __version__

    return {"python": platform.python_version(), "cpus": os.cpu_count(), "kernel": platform.release(),
            "baedal": __version__, "mosquitto": mosq[0] if mosq else "?",
            "fd_limit": raise_fd_limit(), "client": "raw-socket asyncio MQTT 3.1.1 (bench/mqtt_bench.py)"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--brokers", default="baedal,mosquitto,mosquitto-persist")
    parser.add_argument("--tests", default="idle,qos0,qos1,fanout,latency0,latency1")
    parser.add_argument("--count", type=int, default=50_000)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--window", type=int, default=1000)
    parser.add_argument("--fanout", type=int, default=1000)
    parser.add_argument("--fanout-messages", type=int, default=100)
    parser.add_argument("--fanout-procs", type=int, default=2)
    parser.add_argument("--idle", type=int, default=10_000)
    parser.add_argument("--idle-procs", type=int, default=4)
    parser.add_argument("--settle", type=float, default=3.0)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--json", help="append one JSON line per measurement to this file")
    parser.add_argument("--profile", help="run Baedal under cProfile, writing baedal-PORT.prof here")
    parser.add_argument("--base-src", help="the src directory the baedal-base broker runs (e.g. an "
                        "exported main: git archive main src | tar -x -C /tmp/main)")
    args = parser.parse_args()
    if not shutil.which(MOSQUITTO) and any(b.startswith("mosquitto") for b in args.brokers.split(",")):
        print(f"{MOSQUITTO} not found", file=sys.stderr)
        return 2
    info = machine()
    print(json.dumps(info))
    tests: dict[str, Callable[[BrokerProcess], dict[str, Any]]] = {
        "qos0": lambda b: pubsub(b, 0, args.count, args.size, args.window),
        "qos1": lambda b: pubsub(b, 1, args.count, args.size, args.window),
        "fanout": lambda b: fanout(b, args.fanout, args.fanout_messages, args.fanout_procs, args.size),
        "idle": lambda b: idle(b, args.idle, args.idle_procs, args.settle),
        "latency0": lambda b: latency(b, 0, args.rate, args.seconds, args.size),
        "latency1": lambda b: latency(b, 1, args.rate, args.seconds, args.size),
    }
    with tempfile.TemporaryDirectory(prefix="mqtt-bench-") as tmp:
        for rnd in range(1, args.rounds + 1):
            for kind in args.brokers.split(","):
                broker = BrokerProcess(kind, Path(tmp), args.profile, args.base_src)
                try:
                    for name in args.tests.split(","):
                        load = os.getloadavg()[0]
                        try:
                            result = tests[name](broker)
                        except Exception as exc:  # one failed cell must not lose the others
                            result = {"error": repr(exc)}
                        line = {"round": rnd, "broker": kind, "test": name, "load1": round(load, 2),
                                "broker_rss_mib": round(broker.rss() / 2**20, 1), **result}
                        print(json.dumps(line), flush=True)
                        if args.json:
                            with open(args.json, "a") as f:
                                f.write(json.dumps({**line, "machine": info}) + "\n")
                finally:
                    broker.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
