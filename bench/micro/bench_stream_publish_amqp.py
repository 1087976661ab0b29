"""Micro-benchmark: the whole stream publish path with confirms, in one process.

AMQP decode → route → ``StreamQueue.publish`` → record batch append → group-committed
fsync → ``basic.ack``: one real ``AMQPConnection`` on a fake transport (as
``bench_pipeline.py``) in confirm mode, publishing ``--batch`` persistent messages of
``--size`` bytes per read into an ``x-queue-type: stream`` queue on the real storage
engine, waiting for every confirm of a read before the next.  No consumer.

    .venv/bin/python bench/micro/bench_stream_publish_amqp.py          # msg/s (noisy)
    PYTHONHASHSEED=0 valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.spa \\
        .venv/bin/python bench/micro/bench_stream_publish_amqp.py --messages 20000 --quiet
    # then subtract a run with --messages 0 (start-up) and divide by 20000

``--no-fsync`` replaces fsync with a no-op so the count is the broker's CPU work, not
the disk's (valgrind counts only instructions anyway; it keeps the run short).
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


class _WakingTransport(FakeTransport):
    """Resolves ``wrote`` on each write, so the bench can wait for confirms idly."""

    wrote: asyncio.Future[None] | None = None

    def _woken(self) -> None:
        if self.wrote is not None and not self.wrote.done():
            self.wrote.set_result(None)

    def write(self, data: bytes) -> None:
        super().write(data)
        self._woken()

    def writelines(self, chunks: list[bytes]) -> None:
        super().writelines(chunks)
        self._woken()


async def run(messages: int, batch: int, size: int, fsync: bool) -> float:
    settings = Settings(data_dir=Path(tempfile.mkdtemp(prefix="bench-stream-publish-")))
    core = BrokerCore(BrokerConfig(data_dir=settings.data_dir), asyncio.get_running_loop())
    storage = _open_storage(core, settings, lambda *args: None)
    if not fsync:
        storage.syncer.fsync_function = lambda fd: None
    server = AMQPServer(core)
    publisher = AMQPConnection(server)
    transport = _WakingTransport()
    publisher.connection_made(transport)
    publisher.data_received(
        handshake()
        + codec.method_frame(
            1, spec.QueueDeclare(queue="bench-stream", durable=True, arguments={"x-queue-type": "stream"})
        )
        + codec.method_frame(1, spec.ConfirmSelect())
    )
    channel = publisher.channels[1]
    props = encode_properties(BasicProperties(delivery_mode=2))
    one = b"".join(
        codec.content_frames(1, spec.BasicPublish(routing_key="bench-stream").encode(), props, b"x" * size, 131072)
    )
    chunk = one * batch
    await asyncio.sleep(0)
    started = time.perf_counter()
    sent = 0
    for _ in range(messages // batch):
        publisher.data_received(chunk)
        sent += batch
        while channel._confirmed_upto < sent:
            # Block in the loop (no spinning) until the broker writes: the confirms go
            # out after the syncer's job, which wakes the loop from its worker thread.
            transport.wrote = asyncio.get_running_loop().create_future()
            await transport.wrote
    elapsed = time.perf_counter() - started
    assert channel._confirmed_upto == sent, (channel._confirmed_upto, sent)
    await storage.close()
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=100, help="publishes per read")
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--fsync", action="store_true", help="really fsync (default: no-op fsync)")
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    elapsed = asyncio.run(run(args.messages, args.batch, args.size, args.fsync))
    if not args.quiet and args.messages:
        print(f"stream publish+confirm: {args.messages / elapsed:,.0f} msg/s  {elapsed / args.messages * 1e6:.2f} us each")


if __name__ == "__main__":
    main()
