"""Micro-benchmark: the whole hot path, publish → route → enqueue → deliver, in one process.

Two real ``AMQPConnection`` objects on fake transports (no sockets, no other process):
a publisher feeding batches of ``basic.publish`` frames as one read each, and an
auto-ack consumer on the same queue.  Everything between the bytes in and the bytes out
is the broker's own code, so ``valgrind --tool=callgrind`` gives a repeatable
instructions-per-message figure for comparing commits:

    .venv/bin/python bench/micro/bench_pipeline.py                    # msg/s (noisy)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.pipe \\
        .venv/bin/python bench/micro/bench_pipeline.py --messages 20000 --quiet
    # then subtract a run with --messages 0 (start-up) and divide by 20000

``--persistent``: a durable queue on the real storage engine in a temporary data
directory, delivery-mode 2 publishes (each message gets a record written to a segment;
fsyncs are group-committed by the syncer thread as in the broker), so the record
encode is in the count.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from baedal.core.broker import BrokerConfig, BrokerCore
from baedal.protocols.amqp import codec, spec
from baedal.protocols.amqp.connection import AMQPConnection

try:
    from baedal.protocols.amqp.properties import BasicProperties, encode_properties
except ImportError:  # before issue 10 (the neutral message): runs on older commits too
    from baedal.core.properties import BasicProperties, encode_properties  # type: ignore[no-redef]
from baedal.protocols.amqp.server import AMQPServer


class FakeTransport:
    """Just enough of an asyncio transport; counts what the broker writes."""

    def __init__(self) -> None:
        self.written = 0
        self.closed = False

    def get_extra_info(self, name: str) -> object:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0  # everything "sent" at once

    def write(self, data: bytes) -> None:
        self.written += len(data)

    def writelines(self, chunks: list[bytes]) -> None:
        for chunk in chunks:
            self.written += len(chunk)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close

    def is_closing(self) -> bool:
        return self.closed


def handshake() -> bytes:
    return b"".join(
        [
            codec.PROTOCOL_HEADER,
            codec.method_frame(
                0, spec.ConnectionStartOk(client_properties={}, mechanism="PLAIN", response=b"\x00guest\x00guest", locale="en_US")
            ),
            codec.method_frame(0, spec.ConnectionTuneOk(channel_max=16, frame_max=131072, heartbeat=0)),
            codec.method_frame(0, spec.ConnectionOpen(virtual_host="/")),
            codec.method_frame(1, spec.ChannelOpen()),
        ]
    )


async def run(messages: int, batch: int, size: int, persistent: bool = False) -> tuple[float, int]:
    storage = None
    if persistent:
        import tempfile
        from pathlib import Path

        from baedal.app import _open_storage
        from baedal.config import Settings

        settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-pipeline-")))
        core = BrokerCore(BrokerConfig(data_dir=settings.data_dir), asyncio.get_running_loop())
        storage = _open_storage(core, settings, lambda *args: None)
    else:
        core = BrokerCore(BrokerConfig(), asyncio.get_running_loop())
    server = AMQPServer(core)
    consumer_transport = FakeTransport()
    consumer = AMQPConnection(server)
    consumer.connection_made(consumer_transport)
    consumer.data_received(
        handshake()
        + codec.method_frame(1, spec.QueueDeclare(queue="bench", durable=persistent))
        + codec.method_frame(1, spec.BasicConsume(queue="bench", consumer_tag="c", no_ack=True))
    )
    publisher = AMQPConnection(server)
    publisher.connection_made(FakeTransport())
    publisher.data_received(handshake())
    props = encode_properties(BasicProperties(delivery_mode=2 if persistent else 1))
    one = b"".join(codec.content_frames(1, spec.BasicPublish(routing_key="bench").encode(), props, b"x" * size, 131072))
    chunk = one * batch
    await asyncio.sleep(0)
    before = consumer_transport.written
    started = time.perf_counter()
    for _ in range(messages // batch):
        publisher.data_received(chunk)
        while publisher._pending_events:  # the work cap hands the rest to later callbacks
            await asyncio.sleep(0)
        await asyncio.sleep(0)  # let the consumer's flush run
    elapsed = time.perf_counter() - started
    if storage is not None:
        await storage.close()
    return elapsed, consumer_transport.written - before


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=1000, help="publishes per read")
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--quiet", action="store_true")
    parser.add_argument("--persistent", action="store_true", help="durable queue, delivery-mode 2, real storage")
    args = parser.parse_args()
    elapsed, delivered_bytes = asyncio.run(run(args.messages, args.batch, args.size, args.persistent))
    if not args.quiet and args.messages:
        print(
            f"publish→deliver: {args.messages / elapsed:,.0f} msg/s  {elapsed / args.messages * 1e6:.2f} us each, "
            f"{delivered_bytes / args.messages:.0f} bytes delivered per message"
        )


if __name__ == "__main__":
    main()
