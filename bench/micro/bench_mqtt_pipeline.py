"""Micro-benchmark: the MQTT hot path, PUBLISH in → route → enqueue → deliver → PUBACK.

Two real ``MQTTConnection`` objects on fake transports (no sockets, no other process):
a publisher whose reads are batches of ``--batch`` PUBLISH packets, and a subscriber of
the same topic whose PUBACKs (QoS 1) are fed back as one read per batch.  Everything
between the bytes in and the bytes out is the broker's own code, so
``valgrind --tool=callgrind`` gives a repeatable instructions-per-message figure:

    PYTHONPATH=src .venv/bin/python bench/micro/bench_mqtt_pipeline.py --qos 1   # msg/s (noisy)
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.mqtt \\
        .venv/bin/python bench/micro/bench_mqtt_pipeline.py --qos 1 --messages 20000 --quiet
    # then subtract the same with --messages 0 (start-up) and divide by 20000

``--qos 0``: a clean session subscribing with QoS 0, QoS 0 PUBLISHes (in memory).
``--qos 1``: both clients with persistent sessions (``clean_session`` false), QoS 1
PUBLISHes and a QoS 1 subscription: a durable queue on the real storage engine in a
temporary data directory, each message a record, the PUBACK sent after the
group-committed fsync (the syncer thread), as ``bench/mqtt_bench.py --tests qos1``.
The bench waits for every PUBACK of a batch (on ``Syncer.synced()``: the loop blocks
in its ``select`` while the fsync thread works, so the wait costs next to no
instructions and the count does not depend on the disk's speed) before the next batch.

``--consumer fast`` (the default): the subscriber's PUBACKs are fed back before the
publisher's are awaited, as a subscriber that keeps up does; the sync job held for them
(storage/syncer.py, "Holding a job") then writes and fsyncs nothing.  ``--consumer
slow``: the publisher's PUBACKs are awaited first (every record written and fsynced:
the figure before the hold existed, and the path of a consumer slower than the hold).

The bench's own share (building the input once, scanning the subscriber's output for
packet ids, the PUBACK bytes) is included and the same on every commit.
"""

from __future__ import annotations

import argparse
import asyncio
import struct
import tempfile
import time
from pathlib import Path

from baedal.app import _open_storage
from baedal.config import Settings
from baedal.core.broker import BrokerConfig, BrokerCore
from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.retained import RetainedStore
from baedal.protocols.mqtt.server import MQTTConfig, MQTTConnection, MQTTServer
from baedal.protocols.mqtt.sessionstate import SessionStateStore

_PACKET_ID = struct.Struct(">H")


class FakeTransport:
    """Just enough of an asyncio transport; keeps what the broker writes."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.chunks: list[bytes] = []
        self.written = 0
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.written += len(data)
        if self.keep:
            self.chunks.append(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.write(chunk)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed


def publish_ids(data: bytes) -> tuple[int, list[int]]:
    """(PUBLISH packets, packet ids of the QoS > 0 ones) in a stream of whole packets."""
    count = 0
    ids: list[int] = []
    pos = 0
    size = len(data)
    while pos < size:
        first = data[pos]
        remaining = 0
        shift = 0
        i = pos + 1
        while True:
            b = data[i]
            remaining |= (b & 0x7F) << shift
            i += 1
            if not b & 0x80:
                break
            shift += 7
        if first >> 4 == codec.PUBLISH:
            count += 1
            if first & 6:
                topic_length = _PACKET_ID.unpack_from(data, i)[0]
                ids.append(_PACKET_ID.unpack_from(data, i + 2 + topic_length)[0])
        pos = i + remaining
    return count, ids


async def run(messages: int, batch: int, size: int, qos: int, fast: bool = True) -> tuple[float, int]:
    loop = asyncio.get_running_loop()
    data_dir = Path(tempfile.mkdtemp(prefix="bench-mqtt-pipeline-"))
    settings = Settings(data_dir=data_dir)
    core = BrokerCore(BrokerConfig(data_dir=data_dir), loop)
    storage = _open_storage(core, settings, lambda *args: None)
    retained = RetainedStore(data_dir / "mqtt" / "retained.jsonl", storage.syncer)
    retained.open()
    state = SessionStateStore(data_dir / "mqtt" / "sessions.jsonl", storage.syncer)
    state.open()
    server = MQTTServer(core, MQTTConfig(allow_anonymous=True), retained, state)
    persistent = qos > 0

    subscriber_transport = FakeTransport(keep=True)
    subscriber = MQTTConnection(server)
    subscriber.connection_made(subscriber_transport)
    subscriber.data_received(
        codec.encode(codec.Connect("bench-sub", clean_start=not persistent, keep_alive=0))
        + codec.encode(codec.Subscribe(1, [codec.Subscription("bench/t", qos)]))
    )
    publisher = MQTTConnection(server)
    publisher.connection_made(FakeTransport())
    publisher.data_received(codec.encode(codec.Connect("bench-pub", clean_start=not persistent, keep_alive=0)))
    payload = b"x" * size
    chunk = b"".join(
        codec.encode(codec.Publish("bench/t", payload, qos, packet_id=(i + 1) if qos else None))
        for i in range(batch)
    )
    await asyncio.sleep(0)
    subscriber_transport.chunks.clear()
    delivered = 0
    started = time.perf_counter()

    def consume() -> int:
        out = b"".join(subscriber_transport.chunks)
        subscriber_transport.chunks.clear()
        count, ids = publish_ids(out)
        if ids:
            subscriber.data_received(b"".join(b"\x40\x02" + _PACKET_ID.pack(i) for i in ids))
        return count

    for _ in range(messages // batch):
        publisher.data_received(chunk)
        if fast:
            await asyncio.sleep(0)  # the subscriber's output flush
            delivered += consume()
        while publisher.inbound_unacked:  # the PUBACKs wait for the fsync (syncer thread)
            await storage.syncer.synced()  # a wait in the loop's select, not a poll
        if not fast:
            await asyncio.sleep(0)  # the subscriber's output flush
            delivered += consume()
    elapsed = time.perf_counter() - started
    server_closed = server.close()
    await server_closed
    await storage.close()
    return elapsed, delivered


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=200, help="PUBLISH packets per read")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--qos", type=int, choices=(0, 1), default=1)
    parser.add_argument("--consumer", choices=("fast", "slow"), default="fast",
                        help="subscriber PUBACKs before (fast) or after (slow) the publisher's")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    elapsed, delivered = asyncio.run(
        run(args.messages, args.batch, args.size, args.qos, args.consumer == "fast")
    )
    if delivered != args.messages // args.batch * args.batch:
        raise SystemExit(f"delivered {delivered} of {args.messages} messages")
    if not args.quiet and args.messages:
        print(f"QoS {args.qos} publish→deliver: {args.messages / elapsed:,.0f} msg/s  "
              f"{elapsed / args.messages * 1e6:.2f} us each")


if __name__ == "__main__":
    main()
