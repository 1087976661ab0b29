"""Micro-benchmark: the Kafka listener's Produce handling, in-process, per MB.

    PYTHONPATH=src .venv/bin/python bench/micro/bench_kafka_produce.py     # MB/s (noisy)
    PYTHONPATH=src PYTHONHASHSEED=0 valgrind --tool=callgrind \\
        --callgrind-out-file=/tmp/cg.kp .venv/bin/python \\
        bench/micro/bench_kafka_produce.py --quiet --requests 400
    # subtract a run with --requests 0 (start-up), divide by the MB produced

A real ``baedal.app.Broker`` (Kafka listener on an ephemeral port, data in a temp dir)
runs in this process's event loop; one ``KafkaConnection`` is driven without a socket:
its transport is a stand-in that counts what the connection writes.  Each request is
what librdkafka sends with ``batch.size=65536`` and 1 KB values: Produce v7, acks=all,
one partition, one uncompressed RecordBatch of ``--records`` 1 KB records (63 by
default: a 64 KB batch).  ``--in-flight`` requests are delivered back to back
(librdkafka pipelines them) the way the event loop reads a socket into the
connection's ``asyncio.BufferedProtocol`` buffer (``get_buffer``, copy, as
``recv_into`` would, ``buffer_updated``), then the loop runs until every response is
written; the
syncer's fsync is a no-op unless ``--fsync`` (so the count is the broker's CPU, not
the disk's).  Request bytes are built before the measured part; what is counted is
decode -> validate -> append -> group commit -> response, plus the copy of the request
bytes into the connection's buffer, which stands for the kernel's copy in
``recv_into`` (about 1 instruction per byte).

``bench_kafka_fetch.py`` measures the Fetch side the same way (and reuses this file's
broker and transport stand-ins).
"""

from __future__ import annotations

import argparse
import asyncio
import io
import os
import struct
import tempfile
import time
from pathlib import Path
from typing import Any

from kio.index import load_payload_module
from kio.serial import entity_writer
from kio.static.constants import EntityType

from baedal.app import Broker
from baedal.protocols.kafka.server import KafkaConnection
from baedal.storage.record_batch import Record, encode_batch

PRODUCE = 0
TOPIC = "bench"


class CountingTransport:
    """What ``KafkaConnection`` needs from an asyncio transport; counts the output.

    ``sink_fd`` (a descriptor open on /dev/null) stands in for the socket, so the
    connection's ``os.sendfile`` path runs as it does on a plain TCP connection.
    """

    def __init__(self, sink_fd: int | None = None) -> None:
        self.written = 0
        self.closing = False
        self._sink = _Socket(sink_fd) if sink_fd is not None else None
        self.connection: KafkaConnection | None = None
        # Set once the connection owes no answer (see ``answered``).
        self.idle: asyncio.Future[None] | None = None

    def write(self, data: bytes) -> None:
        self.writelines([data])

    def writelines(self, parts: list[Any]) -> None:
        for part in parts:
            self.written += len(part)
        idle = self.idle
        if idle is not None and self.connection is not None and not self.connection._slots:
            self.idle = None
            idle.set_result(None)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "socket":
            return self._sink
        if name == "peername":
            return ("127.0.0.1", 1)
        return default

    def is_closing(self) -> bool:
        return self.closing

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closing = True

    def abort(self) -> None:
        self.closing = True


class _Socket:
    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd


def kio_frame(api_key: int, version: int, correlation_id: int, **values: Any) -> bytes:
    """A whole request frame (size, header v1, body) encoded with kio."""
    module = load_payload_module(api_key, version, EntityType.request)
    cls = next(
        v
        for v in vars(module).values()
        if isinstance(v, type) and getattr(v, "__type__", None) is EntityType.request
    )
    body = cls(**values)
    out = io.BytesIO()
    client = b"rdkafka"
    out.write(struct.pack(">hhih", api_key, version, correlation_id, len(client)) + client)
    entity_writer(cls)(out, body)
    data = out.getvalue()
    return struct.pack(">i", len(data)) + data


def produce_frame(correlation_id: int, batch: bytes, topic: str = TOPIC) -> bytes:
    module = load_payload_module(PRODUCE, 7, EntityType.request)
    topic_cls = module.TopicProduceData
    partition_cls = module.PartitionProduceData
    import datetime

    return kio_frame(
        PRODUCE,
        7,
        correlation_id,
        transactional_id=None,
        acks=-1,
        timeout=datetime.timedelta(milliseconds=30000),
        topic_data=(
            topic_cls(name=topic, partition_data=(partition_cls(index=0, records=batch),)),
        ),
    )


def one_batch(records: int, value_size: int) -> bytes:
    value = os.urandom(value_size)
    now = int(time.time() * 1000)
    return bytes(encode_batch([Record(value, None, (), now)] * records, 0, now_ms=now))


async def start_broker(data_dir: Path, fsync: bool) -> Broker:
    broker = Broker(
        data_dir=data_dir,
        port=0,
        kafka_port=0,
        http_port=None,
        stomp_port=None,
        mqtt_port=None,
    )
    await broker.start()
    if not fsync:
        broker.storage.syncer.fsync_function = lambda fd: None
    broker.kafka.registry.create(TOPIC, 1)
    return broker


def connect(
    broker: Broker, sink_fd: int | None = None
) -> tuple[KafkaConnection, CountingTransport]:
    connection = KafkaConnection(broker.kafka)
    transport = CountingTransport(sink_fd)
    connection.connection_made(transport)  # type: ignore[arg-type]
    transport.connection = connection
    return connection, transport


def deliver(connection: KafkaConnection, data: bytes) -> None:
    """``data`` as the event loop's socket reads would hand it over: into the buffer
    ``get_buffer`` offers (as much as fits per read), then ``buffer_updated``."""
    view = memoryview(data)
    done = 0
    while done < len(view):
        target = connection.get_buffer(-1)
        count = min(len(target), len(view) - done)
        target[:count] = view[done : done + count]
        connection.buffer_updated(count)
        done += count


async def answered(connection: KafkaConnection, transport: CountingTransport) -> None:
    """Until every request fed so far is answered and written.

    Waits on a future, not by spinning: the syncer's fsync thread needs the GIL to hand
    its result back, and a loop spinning on ``sleep(0)`` would keep it up to the
    interpreter's switch interval (5 ms) each time.
    """
    if connection._slots:
        transport.idle = asyncio.get_running_loop().create_future()
        await transport.idle


async def run(requests: int, in_flight: int, records: int, fsync: bool) -> tuple[int, float]:
    batch = one_batch(records, 1024)
    # One frame delivered again and again (the correlation id repeats, which the server
    # does not mind), so building requests costs nothing per request.
    frame = produce_frame(1, batch)
    with tempfile.TemporaryDirectory(prefix="baedal-bench-kp-") as tmp:
        broker = await start_broker(Path(tmp), fsync)
        try:
            connection, transport = connect(broker)
            started = time.perf_counter()
            for first in range(0, requests, in_flight):
                count = min(in_flight, requests - first)
                deliver(connection, frame * count if count > 1 else frame)
                await answered(connection, transport)
            elapsed = time.perf_counter() - started
            partition = broker.kafka.registry.partition(TOPIC, 0)
            assert partition is not None
            assert partition.durable_offset == requests * records, partition.durable_offset
            connection.connection_lost(None)
        finally:
            await broker.stop()
    return requests * len(batch), elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--in-flight", type=int, default=4)
    parser.add_argument("--records", type=int, default=63, help="1 KB records per batch")
    parser.add_argument("--fsync", action="store_true", help="really fsync (default: no-op)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    produced, elapsed = asyncio.run(run(args.requests, args.in_flight, args.records, args.fsync))
    if not args.quiet and args.requests:
        print(
            f"{args.requests} produce requests ({produced / 1e6:.1f} MB, {args.in_flight} in "
            f"flight): {produced / elapsed / 1e6:.0f} MB/s, "
            f"{elapsed / args.requests * 1e6:.1f} us per request"
        )


if __name__ == "__main__":
    main()
