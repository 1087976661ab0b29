"""Micro-benchmark: reading a stream from ``first`` with an AMQP stream consumer.

    .venv/bin/python bench/micro/bench_stream_read.py                   # msg/s (noisy)
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.sr \\
        .venv/bin/python bench/micro/bench_stream_read.py --messages 20000 --quiet
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.sr0 \\
        .venv/bin/python bench/micro/bench_stream_read.py --messages 20000 --quiet --no-read
    # (first - second) / 20000 = instructions per message read

A real ``BrokerCore`` with the real storage engine in a temporary data directory; a
stream is declared (``x-queue-type: stream``) and filled with ``--messages`` persistent
publishes over a real ``AMQPConnection`` on a fake transport (as
``bench_pipeline.py``), waiting for the syncer to commit them.  Then a second
connection consumes with ``x-stream-offset: first`` and a prefetch, acking (multiple)
once per loop turn, until every record is delivered.  ``--no-read`` stops after the
fill: subtracting that run leaves the read path alone (log read, record decode,
message, AMQP delivery frames, acks).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_pipeline import FakeTransport, handshake  # noqa: E402

from baedal.app import _open_storage  # noqa: E402
from baedal.config import Settings  # noqa: E402
from baedal.core.broker import BrokerConfig, BrokerCore  # noqa: E402
from baedal.protocols.amqp import codec, spec  # noqa: E402
from baedal.protocols.amqp.connection import AMQPConnection  # noqa: E402
from baedal.protocols.amqp.properties import BasicProperties, encode_properties  # noqa: E402
from baedal.protocols.amqp.server import AMQPServer  # noqa: E402

STREAM = "bench-stream"


async def run(messages: int, size: int, prefetch: int, read: bool) -> tuple[float, int]:
    with tempfile.TemporaryDirectory(prefix="bench-stream-read-") as tmp:
        settings = Settings(data_dir=Path(tmp))
        core = BrokerCore(BrokerConfig(data_dir=settings.data_dir), asyncio.get_running_loop())
        storage = _open_storage(core, settings, lambda *args: None)
        server = AMQPServer(core)
        publisher = AMQPConnection(server)
        publisher.connection_made(FakeTransport())
        publisher.data_received(
            handshake()
            + codec.method_frame(
                1,
                spec.QueueDeclare(queue=STREAM, durable=True, arguments={"x-queue-type": "stream"}),
            )
        )
        stream = core.vhosts["/"].queues[STREAM]
        props = encode_properties(BasicProperties(delivery_mode=2))
        one = b"".join(
            codec.content_frames(1, spec.BasicPublish(routing_key=STREAM).encode(), props, b"x" * size, 131072)
        )
        batch = 500
        done = 0
        while done < messages:
            n = min(batch, messages - done)
            publisher.data_received(one * n)
            done += n
            while publisher._pending_events:
                await asyncio.sleep(0)
            await asyncio.sleep(0)
        while stream.committed_offset < messages:
            await asyncio.sleep(0.001)
        elapsed = 0.0
        written = 0
        if read and messages:
            transport = FakeTransport()
            consumer = AMQPConnection(server)
            consumer.connection_made(transport)
            consumer.data_received(
                handshake()
                + codec.method_frame(1, spec.BasicQos(prefetch_count=prefetch))
                + codec.method_frame(
                    1,
                    spec.BasicConsume(
                        queue=STREAM, consumer_tag="c", arguments={"x-stream-offset": "first"}
                    ),
                )
            )
            channel = consumer.channels[1]
            started = time.perf_counter()
            while stream.deliver_count < messages:
                await asyncio.sleep(0)
                last = channel.next_delivery_tag - 1
                if channel.unacked_count:
                    consumer.data_received(
                        codec.method_frame(1, spec.BasicAck(delivery_tag=last, multiple=True))
                    )
            elapsed = time.perf_counter() - started
            written = transport.written
        await storage.close()
    return elapsed, written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=100)
    parser.add_argument("--prefetch", type=int, default=1000)
    parser.add_argument("--no-read", action="store_true", help="fill only (the run to subtract)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    elapsed, written = asyncio.run(run(args.messages, args.size, args.prefetch, not args.no_read))
    if not args.quiet and args.messages and not args.no_read:
        print(
            f"read from first: {args.messages / elapsed:,.0f} msg/s  {elapsed / args.messages * 1e6:.2f} us each, "
            f"{written / args.messages:.0f} bytes delivered per message"
        )


if __name__ == "__main__":
    main()
