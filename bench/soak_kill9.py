"""Kill -9 soak: SIGKILL a busy broker again and again; no confirmed message may be lost.

Theory of operation
-------------------
One data directory and one durable queue live for the whole soak.  Each round:

1. the broker (``python -m baedal serve``, a real subprocess) is running;
2. publishers (pika, publisher confirms, ``delivery_mode=2``) and a consumer (manual
   acks, holding a few deliveries unacked on purpose) run in threads; every body starts
   with a unique id ``r<round>-p<publisher>-<n>``;
3. at a random moment (``random.Random(seed)``) the broker gets SIGKILL;
4. it is started again on the same data directory, must accept connections and serve a
   probe publish/get, and the queue is drained (``basic.get``, then acked).

What the client knows at the moment of the kill, and what that allows afterwards:

* *confirmed* (``basic_publish`` returned after ``basic.ack``): the message was fsynced.
  Unless the consumer *tried* to ack it, it must be in the queue after the restart.
  A consumer ack may or may not have reached the broker (or its disk) before the kill,
  so an ack-attempted message may be gone or may come back: both are correct.
* *delivered* before the kill and drained again afterwards: ``redelivered`` must be set
  (AMQP 0-9-1 basic.deliver: "this message may have been previously delivered").
* nothing may appear that was never published (no phantom), and one drain returns
  each id at most once.  Unconfirmed publishes may be present or absent.

Messages acked while draining may also come back in a *later* round (that ack's fsync
can be cut short by the next kill, which at-least-once allows); they must then be
flagged redelivered.

``tests/fault/test_kill9.py`` runs 20 rounds of this as a test; this script runs many
more with a progress bar::

    python bench/soak_kill9.py --rounds 200 [--seed 1234] [--data-dir DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pika
import pika.exceptions

QUEUE = "soak.kill9"
PUBLISHERS = 3
START_TIMEOUT = 20.0
CLIENT_ERRORS = (pika.exceptions.AMQPError, OSError)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class BrokerProcess:
    """``python -m baedal serve`` on a fixed data directory; restarted on a fresh port."""

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None
        self.port = 0

    def start(self) -> float:
        """Start and wait until it accepts connections; return the seconds that took."""
        self.port = free_port()
        started = time.monotonic()
        with open(self.log_path, "ab") as log:
            log.write(f"--- start on port {self.port} ---\n".encode())
            log.flush()
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "baedal",
                    "serve",
                    "--port",
                    str(self.port),
                    "--data-dir",
                    str(self.data_dir),
                    "--http-port",
                    "off",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = started + START_TIMEOUT
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"broker exited with {self.process.returncode} during start-up (log: {self.log_path})"
                )
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), 0.2),
            ):
                return time.monotonic() - started
            if time.monotonic() > deadline:
                self.kill()
                raise RuntimeError(f"broker not accepting connections after {START_TIMEOUT}s")
            time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)
        self.process = None


def connect(port: int) -> pika.BlockingConnection:
    return pika.BlockingConnection(
        pika.ConnectionParameters(
            "127.0.0.1",
            port,
            connection_attempts=1,
            socket_timeout=5,
            blocked_connection_timeout=10,
        )
    )


def message_id(body: bytes) -> str:
    return body.split(b"|", 1)[0].decode()


@dataclass
class RoundReport:
    round: int
    seed: int
    kill_after: float = 0.0
    restart_seconds: float = 0.0
    attempted: set[str] = field(default_factory=set)
    confirmed: set[str] = field(default_factory=set)
    nacked: set[str] = field(default_factory=set)
    received: set[str] = field(default_factory=set)  # delivered to the consumer before the kill
    ack_attempted: set[str] = field(default_factory=set)
    drained: dict[str, bool] = field(default_factory=dict)  # id -> redelivered
    lost: set[str] = field(default_factory=set)
    not_redelivered: set[str] = field(default_factory=set)
    phantom: set[str] = field(default_factory=set)
    duplicates: set[str] = field(default_factory=set)
    errors: list[str] = field(default_factory=list)

    @property
    def problems(self) -> list[str]:
        out = list(self.errors)
        if self.lost:
            out.append(f"{len(self.lost)} confirmed message(s) lost: {sorted(self.lost)[:10]}")
        if self.not_redelivered:
            out.append(
                f"{len(self.not_redelivered)} message(s) delivered before the kill came back "
                f"without redelivered: {sorted(self.not_redelivered)[:10]}"
            )
        if self.phantom:
            out.append(
                f"{len(self.phantom)} never-published id(s) drained: {sorted(self.phantom)[:10]}"
            )
        if self.duplicates:
            out.append(
                f"{len(self.duplicates)} id(s) drained twice: {sorted(self.duplicates)[:10]}"
            )
        return out

    def summary(self) -> str:
        return (
            f"round {self.round} seed {self.seed}: kill after {self.kill_after:.2f}s, "
            f"{len(self.confirmed)}/{len(self.attempted)} confirmed, {len(self.received)} received, "
            f"{len(self.ack_attempted)} acks sent, {len(self.drained)} drained "
            f"({sum(self.drained.values())} redelivered), restart {self.restart_seconds:.2f}s"
        )


class Kill9Soak:
    """State kept across rounds: the broker process and every id ever published/delivered."""

    def __init__(self, data_dir: Path, log_path: Path | None = None) -> None:
        self.data_dir = data_dir
        self.broker = BrokerProcess(data_dir, log_path or data_dir.parent / f"{data_dir.name}.log")
        self.ever_published: set[str] = set()
        self.ever_delivered: set[str] = set()  # delivered by any broker life (consumer or drain)

    def close(self) -> None:
        self.broker.kill()

    def run_round(self, round_index: int, seed: int) -> RoundReport:
        report = RoundReport(round_index, seed)
        rng = random.Random(seed)
        if self.broker.process is None:
            self.broker.start()
        port = self.broker.port
        with contextlib.closing(connect(port)) as conn:
            conn.channel().queue_declare(QUEUE, durable=True)

        killed = threading.Event()
        first_confirm = threading.Event()
        lock = threading.Lock()

        def workload_error(who: str, exc: BaseException) -> None:
            if not killed.is_set():
                with lock:
                    report.errors.append(f"{who} failed before the kill: {exc!r}")

        def publisher(number: int, prng: random.Random) -> None:
            try:
                conn = connect(port)
                channel = conn.channel()
                channel.confirm_delivery()
                properties = pika.BasicProperties(delivery_mode=2)
                n = 0
                while not killed.is_set():
                    mid = f"r{round_index}-p{number}-{n}"
                    n += 1
                    body = mid.encode() + b"|" + b"x" * prng.choice((0, 10, 100, 1000, 5000))
                    report.attempted.add(mid)
                    try:
                        channel.basic_publish("", QUEUE, body, properties)
                    except pika.exceptions.NackError:
                        report.nacked.add(mid)
                        continue
                    report.confirmed.add(mid)
                    first_confirm.set()
            except CLIENT_ERRORS as exc:
                workload_error(f"publisher {number}", exc)

        def consumer(prng: random.Random) -> None:
            try:
                conn = connect(port)
                channel = conn.channel()
                channel.basic_qos(prefetch_count=prng.choice((1, 10, 100, 500)))
                hold = prng.choice((0.0, 0.02, 0.1))  # share of deliveries left unacked
                for method, _props, body in channel.consume(QUEUE, inactivity_timeout=0.05):
                    if killed.is_set():
                        break
                    if method is None:
                        continue
                    mid = message_id(body)
                    report.received.add(mid)
                    if prng.random() >= hold:
                        report.ack_attempted.add(mid)
                        channel.basic_ack(method.delivery_tag)
            except CLIENT_ERRORS as exc:
                workload_error("consumer", exc)

        threads = [
            threading.Thread(target=publisher, args=(i, random.Random(rng.random())), daemon=True)
            for i in range(PUBLISHERS)
        ]
        if rng.random() < 0.8:
            threads.append(
                threading.Thread(target=consumer, args=(random.Random(rng.random()),), daemon=True)
            )
        for thread in threads:
            thread.start()
        load_started = time.monotonic()
        if not first_confirm.wait(10):
            report.errors.append("no publish was confirmed within 10s")
        time.sleep(rng.uniform(0.0, 1.0))
        report.kill_after = time.monotonic() - load_started
        killed.set()
        self.broker.kill()
        for thread in threads:
            thread.join(15)
            if thread.is_alive():
                report.errors.append(f"{thread.name} still running 15s after the kill")
        self.ever_published |= report.attempted
        self.ever_delivered |= report.received

        try:
            report.restart_seconds = self.broker.start()
            self._drain(report)
            self._probe(report)
        except CLIENT_ERRORS + (RuntimeError,) as exc:
            report.errors.append(f"broker does not serve after the restart: {exc!r}")
            return report

        report.lost = report.confirmed - report.ack_attempted - report.drained.keys()
        report.not_redelivered = {
            mid
            for mid, redelivered in report.drained.items()
            if mid in self.ever_delivered and not redelivered
        }
        report.phantom = report.drained.keys() - self.ever_published
        self.ever_delivered |= report.drained.keys()
        return report

    def _drain(self, report: RoundReport) -> None:
        with contextlib.closing(connect(self.broker.port)) as conn:
            channel = conn.channel()
            channel.queue_declare(QUEUE, durable=True)
            last_tag = 0
            while True:
                method, _props, body = channel.basic_get(QUEUE, auto_ack=False)
                if method is None:
                    break
                mid = message_id(body)
                if mid in report.drained:
                    report.duplicates.add(mid)
                report.drained[mid] = bool(method.redelivered)
                last_tag = method.delivery_tag
            if last_tag:
                channel.basic_ack(last_tag, multiple=True)
            # a synchronous round trip after the ack: it has been applied
            left = channel.queue_declare(QUEUE, durable=True, passive=True).method.message_count
            if left:
                report.errors.append(f"{left} message(s) still in the queue after draining it")

    def _probe(self, report: RoundReport) -> None:
        """The restarted broker serves: a confirmed publish comes straight back."""
        probe = f"probe-{report.round}-{report.seed}"
        with contextlib.closing(connect(self.broker.port)) as conn:
            channel = conn.channel()
            channel.confirm_delivery()
            name = channel.queue_declare("", exclusive=True).method.queue
            channel.basic_publish("", name, probe.encode(), pika.BasicProperties(delivery_mode=2))
            method, _props, body = channel.basic_get(name, auto_ack=True)
            if method is None or body != probe.encode():
                report.errors.append(
                    f"probe message not served after the restart: {method!r} {body!r}"
                )


def run_soak(
    rounds: int,
    seed: int,
    data_dir: Path,
    on_round: Callable[[RoundReport], Any] | None = None,
) -> list[RoundReport]:
    soak = Kill9Soak(data_dir)
    reports = []
    try:
        for i in range(rounds):
            report = soak.run_round(i, seed + i)
            reports.append(report)
            if on_round is not None:
                on_round(report)
    finally:
        soak.close()
    return reports


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument(
        "--seed", type=int, default=None, help="round i uses seed + i (default: random)"
    )
    parser.add_argument(
        "--data-dir", type=Path, default=None, help="default: a fresh temporary directory"
    )
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.randrange(2**31)

    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
    from rich.table import Table

    console = Console()
    console.print(f"kill -9 soak: {args.rounds} rounds, seed {seed} (repeat with --seed {seed})")
    with contextlib.ExitStack() as stack:
        if args.data_dir is None:
            data_dir = (
                Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="baedal-kill9-")))
                / "data"
            )
        else:
            data_dir = args.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        failed: list[RoundReport] = []
        with Progress(
            TextColumn("[bold]kill -9"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("{task.fields[status]}"),
            TimeElapsedColumn(),
            console=console,
        ) as progress:
            task = progress.add_task("soak", total=args.rounds, status="")

            def on_round(report: RoundReport) -> None:
                if report.problems:
                    failed.append(report)
                    progress.console.print(f"[red]FAIL[/] {report.summary()}")
                    for problem in report.problems:
                        progress.console.print(f"    {problem}")
                progress.update(
                    task,
                    advance=1,
                    status=f"{len(failed)} failed; last restart {report.restart_seconds:.2f}s",
                )

            reports = run_soak(args.rounds, seed, data_dir, on_round)

    restarts = [r.restart_seconds for r in reports if r.restart_seconds]
    table = Table(title=f"kill -9 soak, seed {seed}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    rows = [
        ("rounds (kills)", len(reports)),
        ("rounds with problems", len(failed)),
        ("publishes attempted", sum(len(r.attempted) for r in reports)),
        ("publishes confirmed", sum(len(r.confirmed) for r in reports)),
        ("publishes nacked", sum(len(r.nacked) for r in reports)),
        ("delivered before a kill", sum(len(r.received) for r in reports)),
        ("drained after a restart", sum(len(r.drained) for r in reports)),
        ("  of them redelivered", sum(sum(r.drained.values()) for r in reports)),
        ("confirmed messages lost", sum(len(r.lost) for r in reports)),
        ("restart seconds p50", f"{statistics.median(restarts):.2f}" if restarts else "-"),
        ("restart seconds max", f"{max(restarts):.2f}" if restarts else "-"),
    ]
    for name, value in rows:
        table.add_row(name, str(value))
    console.print(table)
    for report in failed:
        console.print(f"[red]{report.summary()}[/]: " + "; ".join(report.problems))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
