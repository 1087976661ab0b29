"""Latency statistics, the live progress line and the final summary (rich table / JSON).

Latencies arrive from the workers as ``{microseconds: count}`` maps (one per worker per
second).  They go into an HdrHistogram for the whole run (1 µs .. 1 h, 3 significant
digits) and into a plain counter for the current progress interval.
"""

from __future__ import annotations

import json
import sys
from collections import Counter
from typing import Any, TextIO

from hdrh.histogram import HdrHistogram

PERCENTILES = (("p50", 50.0), ("p75", 75.0), ("p95", 95.0), ("p99", 99.0), ("p999", 99.9))
HIGHEST_US = 3_600_000_000


class LatencyStats:
    def __init__(self) -> None:
        self.total = HdrHistogram(1, HIGHEST_US, 3)
        self.interval: Counter[int] = Counter()

    def add(self, counts: dict[int, int]) -> None:
        record = self.total.record_value
        for value, count in counts.items():
            record(min(max(value, 0), HIGHEST_US), count)
        self.interval.update(counts)

    def take_interval(self) -> tuple[int | None, int | None]:
        """p50 and p99 (µs) of what arrived since the last call."""
        counts, self.interval = self.interval, Counter()
        return percentile_of(counts, 50.0), percentile_of(counts, 99.0)

    def summary(self) -> dict[str, float] | None:
        if self.total.get_total_count() == 0:
            return None
        out: dict[str, float] = {
            name: float(self.total.get_value_at_percentile(p)) for name, p in PERCENTILES
        }
        out["max"] = float(self.total.get_max_value())
        out["min"] = float(self.total.get_min_value())
        out["mean"] = round(self.total.get_mean_value(), 1)
        out["count"] = self.total.get_total_count()
        return out


def percentile_of(counts: dict[int, int], percentile: float) -> int | None:
    total = sum(counts.values())
    if not total:
        return None
    rank = max(1, int(total * percentile / 100.0 + 0.5))
    seen = 0
    for value in sorted(counts):
        seen += counts[value]
        if seen >= rank:
            return value
    return max(counts)


def format_us(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 1_000_000:
        return f"{value / 1_000_000:.2f} s"
    if value >= 10_000:
        return f"{value / 1000:.0f} ms"
    if value >= 1000:
        return f"{value / 1000:.1f} ms"
    return f"{value:.0f} µs"


def progress_line(
    elapsed: float,
    publish_rate: float,
    consume_rate: float,
    p50: int | None,
    p99: int | None,
    backlog: int | None,
) -> str:
    line = f"{elapsed:6.0f}s  publish {publish_rate:>10,.0f} msg/s  consume {consume_rate:>10,.0f} msg/s"
    if p50 is not None:
        line += f"  latency p50 {format_us(p50):>8}  p99 {format_us(p99):>8}"
    if backlog is not None:
        line += f"  backlog {backlog:,}"
    return line


def _rate(value: Any) -> str:
    return f"{value:,.0f}" if isinstance(value, int | float) else "-"


def print_summary(result: dict[str, Any], stream: TextIO | None = None) -> None:
    """A rich table of one run (or of both phases of S4)."""
    from rich.console import Console
    from rich.table import Table

    console = Console(file=stream or sys.stdout, highlight=False)
    phases = result.get("phases")
    rows = list(phases.items()) if phases else [("run", result)]
    title = "baedal perf"
    if result.get("label"):
        title += f" — {result['label']}"
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name, _ in rows:
        table.add_column(name, justify="right")

    def add(label: str, key: str, fmt: Any = _rate) -> None:
        table.add_row(label, *(fmt(r.get(key)) for _, r in rows))

    add("published", "published")
    add("publish msg/s", "pub_rate")
    add("confirmed", "confirmed")
    add("received", "received")
    add("consume msg/s", "recv_rate")
    add("lost", "lost")
    for name, _ in (*PERCENTILES, ("max", 100.0)):
        table.add_row(
            f"latency {name}", *(format_us((r.get("lat_us") or {}).get(name)) for _, r in rows)
        )
    add("tool CPU %", "tool_cpu_pct", lambda v: f"{v:.0f}" if isinstance(v, int | float) else "-")
    add("wall s", "wall_s", lambda v: f"{v:.1f}" if isinstance(v, int | float) else "-")
    console.print(table)
    status = "ok" if result.get("ok") else f"FAILED: {result.get('errors')}"
    console.print(status)


def print_json(result: dict[str, Any], stream: TextIO | None = None) -> None:
    out = stream or sys.stdout
    out.write(json.dumps(result, sort_keys=False) + "\n")
    out.flush()
