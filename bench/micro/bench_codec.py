"""Micro-benchmark: the AMQP hot path codec (decode publish, encode deliver).

    .venv/bin/python bench/micro/bench_codec.py            # ops/s (noisy machine: compare ratios)
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.out \\
        .venv/bin/python bench/micro/bench_codec.py --iterations 20000 --quiet
    callgrind_annotate /tmp/cg.out | head                    # instructions: repeatable across commits
"""

from __future__ import annotations

import argparse
import time

from baedal.protocols.amqp import codec, spec
from baedal.protocols.amqp.properties import BasicProperties, encode_properties


def publish_bytes(count: int, body: bytes) -> bytes:
    props = encode_properties(
        BasicProperties(content_type="application/octet-stream", delivery_mode=1)
    )
    method = spec.BasicPublish(exchange="", routing_key="bench.queue").encode()
    one = b"".join(codec.content_frames(1, method, props, body, 131072))
    return one * count


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--iterations", type=int, default=200_000)
    parser.add_argument("--size", type=int, default=16)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    body = b"x" * args.size
    batch = 1000  # publishes per feed(), like one socket read
    data = publish_bytes(batch, body)
    rounds = max(1, args.iterations // batch)

    reader = codec.FrameReader()
    reader.feed(codec.PROTOCOL_HEADER)
    started = time.perf_counter()
    events = 0
    for _ in range(rounds):
        events += len(reader.feed(data))
    decode_s = time.perf_counter() - started

    tag = codec.encode_short_string("amq.ctag-bench")
    names = codec.encode_short_string("") + codec.encode_short_string("bench.queue")
    props = encode_properties(
        BasicProperties(content_type="application/octet-stream", delivery_mode=1)
    )
    started = time.perf_counter()
    for i in range(rounds * batch):
        codec.deliver_frames(1, tag, i, False, names, props, body, 131072)
    encode_s = time.perf_counter() - started
    total = rounds * batch
    assert events == total
    if not args.quiet:
        print(
            f"decode publish (method+header+body): {total / decode_s:,.0f}/s  {decode_s / total * 1e6:.2f} us each"
        )
        print(
            f"encode deliver (method+header+body): {total / encode_s:,.0f}/s  {encode_s / total * 1e6:.2f} us each"
        )


if __name__ == "__main__":
    main()
