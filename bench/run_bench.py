"""Scenarios S1–S6 against Baedal and RabbitMQ, interleaved, with broker CPU and memory.

    .venv/bin/python bench/run_bench.py                      # baedal perf as the load tool
    .venv/bin/python bench/run_bench.py --tool amqp-load     # the C reference tool
    REPS=3 .venv/bin/python bench/run_bench.py --scenarios "S1 S3" --duration 5

Baedal is started here as a subprocess (``python -m baedal serve --port P --data-dir D``)
and stopped at the end.  RabbitMQ is measured too when ``rabbitmq-server`` is installed:
one already listening on ``--rabbit-port`` is used as it is (and left running), otherwise
it is started with ``shared/tools/amqp-load/rabbitmq-start.sh`` and stopped afterwards.

Runs are interleaved (S1 on Baedal, S1 on RabbitMQ, S2 on Baedal, ...), so slow drift of
a shared machine hits both alike; compare ratios from one run, not figures from two.
For every run: the tool's rates and latency, the broker's CPU (its whole process tree,
from /proc via psutil, as % of one core) and max RSS (sampled every 0.2 s), and the load
tool's own CPU (``RUSAGE_CHILDREN`` around the tool, which counts every process it
waited for).  Results are JSON lines (``--out``); the table at the end shows medians and
the Baedal/RabbitMQ ratio per scenario.  ``bench/plot.py`` draws the ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
AMQP_LOAD_DIR = Path(os.environ.get("AMQP_LOAD_DIR", "/work/shared/tools/amqp-load"))
DEFAULT_AMQP_LOAD = (
    Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "amqp-load" / "amqp-load"
)
SCENARIOS = (
    "S1",
    "S2",
    "S3",
    "S5",
    "S6",
    "S4",
)  # S4 last: brokers keep the memory its backlog took


@dataclass
class Target:
    name: str
    port: int
    pid: int = 0
    process: subprocess.Popen[bytes] | None = None  # when started here
    stop_script: Path | None = None  # RabbitMQ started here
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return f"amqp://guest:guest@127.0.0.1:{self.port}/"


# --- brokers ---------------------------------------------------------------------------------


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def listening_pid(port: int) -> int:
    """PID of the process listening on ``port`` (0 when unknown)."""
    try:
        for conn in psutil.net_connections("tcp"):
            if (
                conn.status == psutil.CONN_LISTEN
                and conn.laddr
                and conn.laddr.port == port
                and conn.pid
            ):
                return conn.pid
    except (psutil.AccessDenied, PermissionError):
        pass
    return 0


def wait_for_port(
    port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while not port_open(port):
        if process is not None and process.poll() is not None:
            raise RuntimeError(
                f"broker exited with status {process.returncode} before listening on {port}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing listens on port {port} after {timeout:.0f} s")
        time.sleep(0.1)


def start_baedal(port: int, data_dir: Path, log: Path) -> Target:
    if port_open(port):
        raise RuntimeError(f"port {port} is taken; pick another with --baedal-port")
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        sys.executable,
        "-m",
        "baedal",
        "serve",
        "--port",
        str(port),
        "--data-dir",
        str(data_dir),
        "--http-port",
        "off",
    ]
    with open(log, "ab") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
    try:
        wait_for_port(port, 60.0, process)
    except RuntimeError:
        # An older CLI without --http-port: try once more without it.
        if process.poll() is None:
            raise
        command = command[:-2]
        with open(log, "ab") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, cwd=ROOT)
        wait_for_port(port, 60.0, process)
    return Target("baedal", port, process.pid, process=process)


def stop_baedal(target: Target) -> None:
    process = target.process
    if process is None or process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def start_rabbitmq(port: int) -> Target | None:
    if shutil.which("rabbitmq-server") is None:
        return None
    if port_open(port):
        pid = listening_pid(port)
        print(
            f"# using the RabbitMQ already listening on {port} (pid {pid or '?'}); it is left running",
            file=sys.stderr,
        )
        return Target("rabbitmq", port, pid)
    result = subprocess.run(
        [str(AMQP_LOAD_DIR / "rabbitmq-start.sh"), str(port)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if result.returncode != 0:
        print(f"# RabbitMQ did not start: {result.stderr.strip()}", file=sys.stderr)
        return None
    info: dict[str, Any] = {}
    for line in result.stdout.splitlines():
        if line.startswith("{"):
            info = json.loads(line)
    pid = int(info.get("pid") or 0) or listening_pid(port)
    return Target("rabbitmq", port, pid, stop_script=AMQP_LOAD_DIR / "rabbitmq-stop.sh", extra=info)


def stop_rabbitmq(target: Target) -> None:
    if target.stop_script is not None:
        subprocess.run([str(target.stop_script)], capture_output=True, timeout=120, check=False)


# --- measuring the broker ----------------------------------------------------------------------


def process_tree(pid: int) -> list[psutil.Process]:
    if not pid:
        return []
    try:
        root = psutil.Process(pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def tree_cpu(processes: list[psutil.Process]) -> float:
    total = 0.0
    for p in processes:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def tree_rss(processes: list[psutil.Process]) -> int:
    total = 0
    for p in processes:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            pass
    return total


class RssSampler(threading.Thread):
    def __init__(self, processes: list[psutil.Process], interval: float = 0.2) -> None:
        super().__init__(daemon=True)
        self.processes = processes
        self.interval = interval
        self.maximum = tree_rss(processes)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.maximum = max(self.maximum, tree_rss(self.processes))

    def stop(self) -> int:
        self._stop_event.set()
        self.join()
        self.maximum = max(self.maximum, tree_rss(self.processes))
        return self.maximum


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# --- the load tools ----------------------------------------------------------------------------


def perf_commands(scenario: str, target: Target, args: argparse.Namespace) -> list[list[str]]:
    command = [
        sys.executable,
        "-m",
        "baedal.perf",
        "--scenario",
        scenario,
        "--uri",
        target.uri,
        "--json",
        "--quiet",
    ]
    command += ["--queue", f"bench-{scenario.lower()}"]
    if scenario == "S4":
        command += ["--pmessages", str(args.s4_count)]
    else:
        command += ["--time", str(args.duration)]
    if scenario == "S6":
        command += ["--rate", str(args.s6_rate)]
    return [command]


def amqp_load_commands(scenario: str, target: Target, args: argparse.Namespace) -> list[list[str]]:
    """The same invocations as shared/tools/amqp-load/run-amqp-bench.sh."""
    base = [
        str(args.amqp_load),
        "-H",
        "127.0.0.1",
        "-P",
        str(target.port),
        "--timeout",
        str(args.timeout),
    ]
    q = ["-q", f"bench-{scenario.lower()}"]
    d = ["-d", str(args.duration)]
    if scenario == "S1":
        return [
            base + ["-m", "pubsub", *q, *d, "-s", "16", "--autoack", "--cleanup", "--label", "S1"]
        ]
    if scenario == "S2":
        return [
            base
            + [
                "-m",
                "pubsub",
                *q,
                *d,
                "-s",
                "16",
                "--prefetch",
                "1000",
                "--ack-every",
                "100",
                "--cleanup",
                "--label",
                "S2",
            ]
        ]
    if scenario == "S3":
        return [
            base
            + [
                "-m",
                "pubsub",
                *q,
                *d,
                "-s",
                "1024",
                "--durable",
                "--persistent",
                "--confirm",
                "1000",
            ]
            + ["--prefetch", "1000", "--ack-every", "100", "--cleanup", "--label", "S3"]
        ]
    if scenario == "S4":
        n = str(args.s4_count)
        return [
            base + ["-m", "publish", *q, "-n", n, "-s", "16", "--fresh", "--label", "S4-publish"],
            base
            + [
                "-m",
                "consume",
                *q,
                "-n",
                n,
                "--prefetch",
                "1000",
                "--ack-every",
                "100",
                "--idle",
                "10",
                "--cleanup",
                "--label",
                "S4-drain",
            ],
        ]
    if scenario == "S5":
        return [
            base
            + [
                "-m",
                "pubsub",
                *q,
                "--queues",
                "4",
                *d,
                "-s",
                "16",
                "--autoack",
                "--cleanup",
                "--label",
                "S5",
            ]
        ]
    if scenario == "S6":
        return [
            base
            + [
                "-m",
                "pubsub",
                *q,
                *d,
                "-s",
                "16",
                "-r",
                str(args.s6_rate),
                "--prefetch",
                "1000",
                "--ack-every",
                "100",
            ]
            + ["--cleanup", "--label", "S6"]
        ]
    raise ValueError(scenario)


def run_tool(command: list[str], timeout: float, log: Path) -> dict[str, Any]:
    try:
        with open(log, "ab") as err:
            done = subprocess.run(
                command, stdout=subprocess.PIPE, stderr=err, timeout=timeout, check=False, cwd=ROOT
            )
    except subprocess.TimeoutExpired:
        return {"ok": False, "errors": f"tool timed out after {timeout:.0f} s"}
    lines = [
        line for line in done.stdout.decode(errors="replace").splitlines() if line.startswith("{")
    ]
    if not lines:
        return {"ok": False, "errors": f"no JSON output (exit status {done.returncode})"}
    try:
        return json.loads(lines[-1])
    except json.JSONDecodeError as exc:
        return {"ok": False, "errors": f"bad JSON output: {exc}"}


def _tool_self_cpu(result: dict[str, Any]) -> dict[str, Any]:
    """The tool's own CPU figure for the measured phase (start-up excluded)."""
    if "tool_cpu_s" in result:
        return {"cpu_s": result.get("tool_cpu_s"), "cpu_pct": result.get("tool_cpu_pct")}
    cpu = (result.get("cpu_pub_s") or 0) + (result.get("cpu_cons_s") or 0)
    wall = result.get("wall_s") or 0
    return {"cpu_s": round(cpu, 3), "cpu_pct": round(100 * cpu / wall, 1) if wall else None}


def run_one(scenario: str, rep: int, target: Target, args: argparse.Namespace) -> dict[str, Any]:
    make = perf_commands if args.tool == "perf" else amqp_load_commands
    commands = make(scenario, target, args)
    processes = process_tree(target.pid)
    cpu0, tool0, t0 = tree_cpu(processes), children_cpu(), time.monotonic()
    rss_before = tree_rss(processes)
    sampler = RssSampler(processes)
    sampler.start()
    outputs = [run_tool(c, args.timeout + 60, args.out / "tools.log") for c in commands]
    rss_max = sampler.stop()
    wall = time.monotonic() - t0
    broker_cpu = tree_cpu(processes) - cpu0
    tool_cpu = children_cpu() - tool0
    record: dict[str, Any] = {
        "scenario": scenario,
        "rep": rep,
        "target": target.name,
        "port": target.port,
        "tool": args.tool,
    }
    if scenario == "S4" and len(outputs) == 2:  # amqp-load: two invocations
        publish, drain = outputs
        record.update(
            pub_rate=publish.get("pub_rate"),
            recv_rate=drain.get("recv_rate"),
            published=publish.get("published"),
            received=drain.get("received"),
            lat_us=None,
            ok=bool(publish.get("ok")) and bool(drain.get("ok")),
            errors="; ".join(e for e in (publish.get("errors"), drain.get("errors")) if e),
            phases={"publish": publish, "drain": drain},
        )
    else:
        result = outputs[0]
        record.update(tool_self=_tool_self_cpu(result))
        record.update(
            pub_rate=result.get("pub_rate"),
            recv_rate=result.get("recv_rate"),
            published=result.get("published"),
            received=result.get("received"),
            lat_us=result.get("lat_us"),
            ok=bool(result.get("ok")),
            errors=result.get("errors") or "",
        )
        if scenario == "S4":
            record["phases"] = result.get("phases")
    record.update(
        wall_s=round(wall, 3),
        broker_pid=target.pid,
        broker_cpu_s=round(broker_cpu, 2),
        broker_cpu_pct=round(100 * broker_cpu / wall, 1) if wall > 0 and processes else None,
        broker_rss_before_kb=rss_before // 1024,
        broker_rss_max_kb=rss_max // 1024,
        tool_cpu_s=round(tool_cpu, 2),
        tool_cpu_pct=round(100 * tool_cpu / wall, 1) if wall > 0 else None,
    )
    return record


# --- summary -----------------------------------------------------------------------------------


def median(values: list[float]) -> float | None:
    values = [v for v in values if isinstance(v, int | float)]
    return statistics.median(values) if values else None


def summarize(records: list[dict[str, Any]]) -> dict[str, dict[str, dict[str, Any]]]:
    """scenario → target → medians."""
    table: dict[str, dict[str, dict[str, Any]]] = {}
    for scenario in dict.fromkeys(r["scenario"] for r in records):
        for target in dict.fromkeys(r["target"] for r in records):
            runs = [
                r
                for r in records
                if r["scenario"] == scenario and r["target"] == target and r.get("ok")
            ]
            if not runs:
                continue
            table.setdefault(scenario, {})[target] = {
                "pub_rate": median([r.get("pub_rate") for r in runs]),
                "recv_rate": median([r.get("recv_rate") for r in runs]),
                "p50_us": median([(r.get("lat_us") or {}).get("p50") for r in runs]),
                "p99_us": median([(r.get("lat_us") or {}).get("p99") for r in runs]),
                "broker_cpu_pct": median([r.get("broker_cpu_pct") for r in runs]),
                "broker_rss_max_mb": median(
                    [(r.get("broker_rss_max_kb") or 0) / 1024 for r in runs]
                ),
                "tool_cpu_pct": median([r.get("tool_cpu_pct") for r in runs]),
                "runs": len(runs),
            }
    return table


def ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


def scenario_ratio(scenario: str, rows: dict[str, dict[str, Any]]) -> float | None:
    """Baedal/RabbitMQ, higher is better: throughput, or for S6 the inverse p99 latency."""
    baedal, rabbit = rows.get("baedal"), rows.get("rabbitmq")
    if not baedal or not rabbit:
        return None
    if scenario == "S6":
        return ratio(rabbit.get("p99_us"), baedal.get("p99_us"))
    return ratio(baedal.get("recv_rate"), rabbit.get("recv_rate"))


def print_table(table: dict[str, dict[str, dict[str, Any]]], stream: Any = sys.stdout) -> None:
    def fmt(value: Any, spec: str = ",.0f") -> str:
        return format(value, spec) if isinstance(value, int | float) else "-"

    header = f"{'scen':4} {'target':9} {'publish/s':>10} {'consume/s':>10} {'p50 µs':>9} {'p99 µs':>9} {'broker CPU%':>11} {'RSS MB':>7} {'tool CPU%':>9}  ratio"
    print(header, file=stream)
    print("-" * len(header), file=stream)
    for scenario, rows in table.items():
        r = scenario_ratio(scenario, rows)
        for i, (target, m) in enumerate(rows.items()):
            print(
                f"{scenario if i == 0 else '':4} {target:9} {fmt(m['pub_rate']):>10} {fmt(m['recv_rate']):>10} "
                f"{fmt(m['p50_us']):>9} {fmt(m['p99_us']):>9} {fmt(m['broker_cpu_pct']):>11} "
                f"{fmt(m['broker_rss_max_mb']):>7} {fmt(m['tool_cpu_pct']):>9}  "
                + (f"{r:.2f}" if i == 0 and r else ""),
                file=stream,
            )
    print(
        "ratio = Baedal / RabbitMQ consume rate (S6: RabbitMQ p99 / Baedal p99); > 1 means Baedal is ahead.",
        file=stream,
    )


# --- main --------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tool", choices=("perf", "amqp-load"), default="perf")
    parser.add_argument("--reps", type=int, default=int(os.environ.get("REPS", "3")))
    parser.add_argument(
        "--scenarios", default=os.environ.get("SCEN", " ".join(SCENARIOS)), help='e.g. "S1 S2"'
    )
    parser.add_argument("--duration", type=float, default=float(os.environ.get("DURATION", "10")))
    parser.add_argument("--s4-count", type=int, default=int(os.environ.get("S4_COUNT", "1000000")))
    parser.add_argument("--s6-rate", type=int, default=int(os.environ.get("S6_RATE", "5000")))
    parser.add_argument("--timeout", type=float, default=float(os.environ.get("TIMEOUT", "180")))
    parser.add_argument("--pause", type=float, default=float(os.environ.get("PAUSE", "2")))
    parser.add_argument("--baedal-port", type=int, default=5673)
    parser.add_argument(
        "--baedal-uri", help="measure an already running Baedal instead of starting one"
    )
    parser.add_argument("--baedal-pid", type=int, default=0, help="its PID (with --baedal-uri)")
    parser.add_argument(
        "--data-dir", type=Path, help="Baedal data directory (default: a fresh temporary one)"
    )
    parser.add_argument("--rabbit-port", type=int, default=5672)
    parser.add_argument("--no-rabbitmq", action="store_true", help="measure Baedal only")
    parser.add_argument(
        "--amqp-load", type=Path, default=Path(os.environ.get("AMQP_LOAD", DEFAULT_AMQP_LOAD))
    )
    parser.add_argument(
        "--out", type=Path, help="results directory (default bench-results/<stamp>)"
    )
    args = parser.parse_args(argv)
    args.scenarios = [s.upper() for s in args.scenarios.replace(",", " ").split()]
    if args.out is None:
        args.out = ROOT / "bench-results" / time.strftime("%Y%m%d-%H%M%S")
    args.out.mkdir(parents=True, exist_ok=True)
    return args


def ensure_amqp_load(path: Path) -> None:
    if path.exists():
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(["make", "-s", "-C", str(AMQP_LOAD_DIR), f"OUT={path}", str(path)], check=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.tool == "amqp-load":
        ensure_amqp_load(args.amqp_load)
    targets: list[Target] = []
    temporary: str | None = None
    try:
        if args.baedal_uri:
            from urllib.parse import urlparse

            port = urlparse(args.baedal_uri).port or 5672
            targets.append(Target("baedal", port, args.baedal_pid or listening_pid(port)))
        else:
            data_dir = args.data_dir
            if data_dir is None:
                temporary = tempfile.mkdtemp(prefix="baedal-bench-")
                data_dir = Path(temporary)
            targets.append(start_baedal(args.baedal_port, data_dir, args.out / "baedal.log"))
        if not args.no_rabbitmq:
            rabbit = start_rabbitmq(args.rabbit_port)
            if rabbit is not None:
                targets.append(rabbit)
        header = {
            "event": "bench_started",
            "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
            "tool": args.tool,
            "reps": args.reps,
            "duration": args.duration,
            "cpus": os.cpu_count(),
            "python": sys.version.split()[0],
            "targets": {t.name: {"port": t.port, "pid": t.pid} for t in targets},
        }
        print("# " + json.dumps(header), file=sys.stderr)
        (args.out / "header.json").write_text(json.dumps(header) + "\n")
        records: list[dict[str, Any]] = []
        results = args.out / "results.jsonl"
        with open(results, "a") as out:
            for scenario in args.scenarios:
                for rep in range(1, args.reps + 1):
                    for target in targets:
                        record = run_one(scenario, rep, target, args)
                        records.append(record)
                        out.write(json.dumps(record) + "\n")
                        out.flush()
                        lat = record.get("lat_us") or {}
                        print(
                            f"  {scenario} rep {rep} {target.name:9} pub {record.get('pub_rate')}/s recv {record.get('recv_rate')}/s"
                            f" p50 {lat.get('p50')} p99 {lat.get('p99')} µs broker {record.get('broker_cpu_pct')}%"
                            f" rss {record['broker_rss_max_kb'] / 1024:.0f} MB tool {record.get('tool_cpu_pct')}%"
                            f" {'ok' if record.get('ok') else 'ERR ' + str(record.get('errors'))}",
                            file=sys.stderr,
                        )
                        time.sleep(args.pause)
        table = summarize(records)
        print_table(table)
        (args.out / "summary.json").write_text(json.dumps(table, indent=2) + "\n")
        print(f"# raw results: {results}", file=sys.stderr)
        return 0 if all(r.get("ok") for r in records) else 1
    finally:
        for target in targets:
            if target.process is not None:
                stop_baedal(target)
            elif target.stop_script is not None:
                stop_rabbitmq(target)
        if temporary:
            shutil.rmtree(temporary, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
