"""Micro-benchmark: a deep durable queue read back from disk, and its recovery scan.

Fills one ``SegmentStore`` with N persistent messages (default 200k x 1 KB), closes it
cleanly, then in a fresh store object times, in CPU seconds (``time.process_time``):

* ``recover``: ``SegmentStore.open`` (every segment scanned, every CRC checked);
* ``read``: ``shift`` + ``settle`` of every message (each one read back from its
  segment: ``Segment.iter_records`` checks the batch, ``queue_log.decode_message``
  rebuilds the message).

``--shape common`` writes what an AMQP publish with only delivery-mode 2 becomes (the
queue log's common record: the exchange header alone); ``--shape typical`` a message
with a content type, a message id, a timestamp and three headers (the general decode).
One JSON line per run on stdout.

``--callgrind`` does the instruction counts in one command (valgrind needed): it
prepares a store of N and an empty one, then runs the phases under callgrind on copies
and prints instructions per message for ``recover`` and ``read``.  By hand: prepare a
store once, copy it per run (reading settles, which deletes segments) and subtract the
phase before::

    PYTHONPATH=src .venv/bin/python bench/micro/bench_queue_readback.py --prepare /tmp/rb
    cp -a /tmp/rb /tmp/rb1; PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/rb.recover.cg .venv/bin/python \\
        bench/micro/bench_queue_readback.py --store /tmp/rb1 --phase recover
    cp -a /tmp/rb /tmp/rb2; PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/rb.read.cg .venv/bin/python \\
        bench/micro/bench_queue_readback.py --store /tmp/rb2 --phase read
    # read per message = (read - recover) / N; recover per message = (recover - the
    # same on an empty store: --prepare with --count 0) / N

``BAEDAL_NO_SPEEDUPS=1`` measures the pure-Python decode.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from baedal._speedups import load as load_speedup
from baedal.core.message import Message
from baedal.storage.queue_store import SegmentStore
from baedal.storage.syncer import Syncer


def make_message(shape: str, body: bytes, n: int) -> Message:
    if shape == "common":
        return Message("amq.direct", "work", body, persistent=True)
    return Message.build(
        "amq.direct",
        "work",
        body,
        persistent=True,
        content_type="application/json",
        message_id=f"m-{n}",
        timestamp=1_700_000_000,
        headers={"trace": "abc", "attempt": 1, "tenant": "t-42"},
    )


def prepare(directory: Path, count: int, size: int, shape: str) -> float:
    """Fill a store at ``directory`` and close it cleanly; the wall seconds it took."""
    body = b"x" * size
    syncer = Syncer()
    start = time.perf_counter()
    store = SegmentStore.open(directory, syncer)
    for n in range(count):
        store.append(make_message(shape, body, n), None)
    syncer.sync_now()
    store.close()
    return time.perf_counter() - start


def measure(directory: Path, phase: str) -> dict[str, float | int]:
    cpu = time.process_time
    start = cpu()
    store = SegmentStore.open(directory, Syncer())
    recover = cpu() - start
    count = store.ready_count
    result: dict[str, float | int] = {"messages": count, "recover_cpu_s": round(recover, 4)}
    if phase == "read":
        shift = store.shift
        settle = store.settle
        read = 0
        start = cpu()
        while True:
            entry = shift()
            if entry is None:
                break
            settle(entry)
            read += 1
        elapsed = cpu() - start
        assert read == count, (read, count)
        result["read_cpu_s"] = round(elapsed, 4)
        if count:
            result["read_us_per_msg"] = round(elapsed / count * 1e6, 3)
    if count:
        result["recover_us_per_msg"] = round(recover / count * 1e6, 3)
    store.close()
    return result


def callgrind_total(out_file: Path) -> int:
    """The total ``Ir`` of a callgrind output file (its ``summary:``/``totals:`` line)."""
    for line in out_file.read_text().splitlines():
        if line.startswith(("summary:", "totals:")):
            return int(line.split()[1])
    raise ValueError(f"no totals in {out_file}")


def run_callgrind(args: argparse.Namespace) -> None:
    """Instructions per message of recover and read, each minus the phase before it."""
    root = Path(tempfile.mkdtemp(prefix="baedal-readback-cg-"))
    env = dict(os.environ, PYTHONHASHSEED="0")
    python = sys.executable
    script = str(Path(__file__).resolve())

    def run(store: Path, phase: str, name: str) -> int:
        copy = root / f"run-{name}"
        shutil.copytree(store, copy)
        out = root / f"{name}.cg"
        subprocess.run(
            [
                "valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", python, script,
                "--store", str(copy), "--phase", phase,
            ],
            env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        shutil.rmtree(copy)
        return callgrind_total(out)

    try:
        full = root / "full"
        empty = root / "empty"
        prepare(full, args.count, args.size, args.shape)
        prepare(empty, 0, args.size, args.shape)
        base = run(empty, "recover", "empty")
        recover = run(full, "recover", "recover")
        read = run(full, "read", "read")
        print(
            json.dumps(
                {
                    "bench": "queue_readback_callgrind",
                    "label": args.label,
                    "shape": args.shape,
                    "size": args.size,
                    "count": args.count,
                    "speedups": load_speedup("_records") is not None,
                    "recover_ir_per_msg": round((recover - base) / args.count),
                    "read_ir_per_msg": round((read - recover) / args.count),
                }
            )
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=1024, help="body bytes")
    parser.add_argument("--shape", choices=("common", "typical"), default="common")
    parser.add_argument("--prepare", type=Path, help="only fill a store here and stop")
    parser.add_argument("--store", type=Path, help="measure this prepared store (consumed)")
    parser.add_argument("--phase", choices=("recover", "read"), default="read")
    parser.add_argument("--label", default="")
    parser.add_argument(
        "--callgrind", action="store_true", help="instructions per message (runs valgrind)"
    )
    args = parser.parse_args()
    if args.callgrind:
        run_callgrind(args)
        return
    if args.prepare is not None:
        seconds = prepare(args.prepare, args.count, args.size, args.shape)
        print(
            json.dumps(
                {"prepared": str(args.prepare), "count": args.count, "fill_s": round(seconds, 2)}
            )
        )
        return
    root = None
    if args.store is None:
        root = Path(tempfile.mkdtemp(prefix="baedal-readback-"))
        directory = root / "q"
        prepare(directory, args.count, args.size, args.shape)
    else:
        directory = args.store
    try:
        result = measure(directory, args.phase)
    finally:
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)
    try:
        revision = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip()
    except OSError:
        revision = ""
    print(
        json.dumps(
            {
                "bench": "queue_readback",
                "label": args.label,
                "revision": revision,
                # a --store run measures whatever that store was prepared with
                "shape": args.shape if args.store is None else "prepared",
                "size": args.size if args.store is None else None,
                "phase": args.phase,
                "speedups": load_speedup("_records") is not None,
                "loadavg": round(os.getloadavg()[0], 2),
                **result,
            }
        )
    )


if __name__ == "__main__":
    main()
