"""Micro-benchmark: the Kafka listener's Fetch handling, in-process, per MB read.

    PYTHONPATH=src .venv/bin/python bench/micro/bench_kafka_fetch.py       # MB/s (noisy)
    PYTHONPATH=src PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg.kf .venv/bin/python \\
        bench/micro/bench_kafka_fetch.py --quiet --fetches 200
    # subtract a run with --fetches 0 (start-up and the topic's set-up), divide by MB

The same in-process broker and connection as ``bench_kafka_produce.py``.  Set-up (the
same in both runs): ``--mb`` of 64 KB batches of 1 KB records appended to the topic and
synced.  Then ``--fetches`` Fetch v11 requests as librdkafka sends them (one partition,
``max_bytes`` 50 MB, ``partition_max_bytes`` ``--partition-max-kb``), each from where the
previous answer ended, wrapping to the start at the end of the topic.  The connection's
"socket" is /dev/null, so the records go out with ``os.sendfile`` as on a TCP
connection whose buffer has room: what is counted is decode -> locate the offset ->
file ranges -> response head -> sendfile.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import os
import tempfile
import time
from pathlib import Path

from bench_kafka_produce import TOPIC, connect, kio_frame, one_batch, start_broker
from kio.index import load_payload_module
from kio.static.constants import EntityType

FETCH = 1


def fetch_frame(correlation_id: int, offset: int, partition_max_bytes: int) -> bytes:
    m = load_payload_module(FETCH, 11, EntityType.request)
    return kio_frame(
        FETCH,
        11,
        correlation_id,
        replica_id=-1,
        max_wait=datetime.timedelta(milliseconds=500),
        min_bytes=1,
        max_bytes=52_428_800,
        isolation_level=0,
        session_id=0,
        session_epoch=-1,
        topics=(
            m.FetchTopic(
                topic=TOPIC,
                partitions=(
                    m.FetchPartition(
                        partition=0,
                        current_leader_epoch=-1,
                        fetch_offset=offset,
                        log_start_offset=-1,
                        partition_max_bytes=partition_max_bytes,
                    ),
                ),
            ),
        ),
        forgotten_topics_data=(),
        rack_id="",
    )


async def run(megabytes: int, fetches: int, partition_max_bytes: int) -> tuple[int, float]:
    records = 63
    batch = one_batch(records, 1024)
    batches = max(megabytes * 10**6 // len(batch), 1)
    with tempfile.TemporaryDirectory(prefix="baedal-bench-kf-") as tmp:
        broker = await start_broker(Path(tmp), fsync=False)
        sink = os.open(os.devnull, os.O_WRONLY)
        try:
            partition = broker.kafka.registry.partition(TOPIC, 0)
            assert partition is not None
            stream = partition.stream
            for _ in range(batches):
                stream.append_batch(bytearray(batch))
            end = batches * records
            while partition.durable_offset < end:  # committed after a covering fsync
                await broker.storage.syncer.synced()
                await asyncio.sleep(0)
            assert partition.durable_offset == end, partition.durable_offset
            # Frames for every offset a fetch can start at, built before measuring.
            per_fetch = max(partition_max_bytes // len(batch), 1) * records
            starts = list(range(0, end, per_fetch))
            frames = {o: fetch_frame(i, o, partition_max_bytes) for i, o in enumerate(starts)}
            connection, _transport = connect(broker, sink)
            sent_before = broker.kafka.sendfile_bytes
            out = broker.kafka.traffic(TOPIC, 0)
            bytes_before = out[2]
            started = time.perf_counter()
            for i in range(fetches):
                connection.data_received(frames[starts[i % len(starts)]])
                while connection._slots or connection._flush_scheduled:
                    await asyncio.sleep(0)  # no thread involved: spinning is fine here
            elapsed = time.perf_counter() - started
            read = out[2] - bytes_before
            assert broker.kafka.sendfile_bytes - sent_before == read, "not all by sendfile"
            assert fetches == 0 or read > 0
            connection.connection_lost(None)
        finally:
            os.close(sink)
            await broker.stop()
    return read, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=64, help="topic size (set-up)")
    parser.add_argument("--fetches", type=int, default=1000)
    parser.add_argument("--partition-max-kb", type=int, default=1024)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    read, elapsed = asyncio.run(run(args.mb, args.fetches, args.partition_max_kb * 1024))
    if not args.quiet and args.fetches:
        print(
            f"{args.fetches} fetches ({read / 1e6:.1f} MB, partition max "
            f"{args.partition_max_kb} KB): {read / elapsed / 1e6:.0f} MB/s, "
            f"{elapsed / args.fetches * 1e6:.1f} us per fetch"
        )


if __name__ == "__main__":
    main()
