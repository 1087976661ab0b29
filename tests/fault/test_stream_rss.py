"""Reading a large stream from ``first`` keeps the broker's RSS bounded.

The CI-sized version of ``bench/stream_rss.py`` (whose 10 GB result is in
docs/benchmarks.md): a broker subprocess, a 300 MB stream (64 KiB bodies, filled
offline with the broker's own ``StreamLog`` and record mapping), one consumer from
``first`` with prefetch 100 in its own process, and the broker's RSS sampled with psutil
every 50 ms.  The bounds are on memory only, never on time:

* peak RSS under 100 MiB (the issue's bound for 10 GB), and
* growth over the idle broker under 40 MiB: what a read may hold is the prefetch window
  (100 x 64 KiB = 6.4 MiB of bodies), the reader's read chunk and socket buffers, a few
  MiB of allocator slack; a broker that kept what it read, or mapped the stream, would
  grow by the stream's size (300 MB) and fail both.

The reader also has to get every message, so a broker that saves memory by losing
records fails too.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = [
    pytest.mark.timeout(300),
    pytest.mark.skipif(
        bool(os.environ.get("BAEDAL_TEST_AMQP_URL")), reason="measures Baedal's own process"
    ),
]

MIB = 1 << 20


def _load_bench_module() -> Any:
    path = Path(__file__).resolve().parents[2] / "bench" / "stream_rss.py"
    spec = importlib.util.spec_from_file_location("stream_rss", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_reading_300_mb_from_first_keeps_broker_rss_bounded(tmp_path: Path) -> None:
    stream_rss = _load_bench_module()
    result = stream_rss.measure(300 * 10**6, 65536, prefetch=100, data_dir=tmp_path, timeout=240)
    print(result)
    assert result["stream_bytes"] >= 300 * 10**6
    assert result["samples"] >= 3, "the sampler must have seen the read"
    peak, baseline = result["rss_peak"], result["rss_baseline"]
    assert peak < 100 * MIB, f"peak RSS {peak / MIB:.1f} MiB"
    assert peak - baseline < 40 * MIB, (
        f"RSS grew {(peak - baseline) / MIB:.1f} MiB while reading (baseline {baseline / MIB:.1f})"
    )
