"""Bar chart of the Baedal/RabbitMQ ratio per scenario from ``run_bench.py`` results.

    .venv/bin/python bench/plot.py bench-results/<stamp>/results.jsonl [more.jsonl ...] \
        --out docs/bench-ratio.png

Each bar is the median over repetitions; the thin line spans min..max of the per-rep
ratios (rep k on Baedal against rep k on RabbitMQ, which ran right after it).  Ratio > 1
means Baedal is ahead: consume rate for the throughput scenarios, inverse p99 latency for
S6.  S4 shows two bars, in (publish) and out (drain).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def load(paths: list[Path]) -> list[dict[str, Any]]:
    records = []
    for path in paths:
        for line in path.read_text().splitlines():
            line = line.strip()
            if line.startswith("{"):
                records.append(json.loads(line))
    return records


def metric(record: dict[str, Any], name: str) -> float | None:
    if name == "p99_inverse":
        p99 = (record.get("lat_us") or {}).get("p99")
        return 1.0 / p99 if p99 else None
    value = record.get(name)
    return float(value) if isinstance(value, int | float) and value > 0 else None


def ratios(records: list[dict[str, Any]]) -> list[tuple[str, float, float, float]]:
    """(label, median, min, max) of per-repetition Baedal/RabbitMQ ratios."""
    bars = []
    scenarios = list(dict.fromkeys(r["scenario"] for r in records))
    for scenario in scenarios:
        if scenario == "S6":
            measures = [("S6 latency", "p99_inverse")]
        elif scenario == "S4":
            measures = [("S4 in", "pub_rate"), ("S4 out", "recv_rate")]
        else:
            measures = [(scenario, "recv_rate")]
        for label, name in measures:
            per_rep = []
            reps = sorted({r["rep"] for r in records if r["scenario"] == scenario})
            for rep in reps:
                runs = {
                    r["target"]: r
                    for r in records
                    if r["scenario"] == scenario and r["rep"] == rep and r.get("ok")
                }
                if "baedal" in runs and "rabbitmq" in runs:
                    a, b = metric(runs["baedal"], name), metric(runs["rabbitmq"], name)
                    if a and b:
                        per_rep.append(a / b)
            if per_rep:
                bars.append((label, statistics.median(per_rep), min(per_rep), max(per_rep)))
    return bars


def plot(bars: list[tuple[str, float, float, float]], out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = [b[0] for b in bars]
    values = [b[1] for b in bars]
    low = [b[1] - b[2] for b in bars]
    high = [b[3] - b[1] for b in bars]
    colors = ["#2a9d8f" if v >= 1 else "#e76f51" for v in values]
    fig, ax = plt.subplots(figsize=(max(6, 1.1 * len(bars) + 2), 4.2))
    ax.bar(labels, values, color=colors, yerr=[low, high], capsize=4)
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--")
    for i, v in enumerate(values):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=9)
    ax.set_ylabel("Baedal / RabbitMQ (higher = Baedal ahead)")
    ax.set_title(title)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description="Plot Baedal/RabbitMQ ratios from run_bench.py results"
    )
    parser.add_argument("results", nargs="+", type=Path, help="results.jsonl file(s)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "bench-ratio.png")
    parser.add_argument(
        "--title", default="Baedal vs RabbitMQ, same machine, interleaved runs (median of reps)"
    )
    args = parser.parse_args(argv)
    bars = ratios(load(args.results))
    if not bars:
        print("no scenario has successful runs on both brokers", file=sys.stderr)
        return 1
    plot(bars, args.out, args.title)
    for label, value, low, high in bars:
        print(f"{label:12} {value:5.2f}  ({low:.2f}..{high:.2f})")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
