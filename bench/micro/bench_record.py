"""Micro-benchmark: the persistent publish → record path, and back.

For each of N messages of 1 KB with typical properties (content type, delivery-mode 2,
message id, timestamp, three headers; ``--minimal``: delivery-mode 2 only), as an AMQP
publish creates them:

* encode: the record payload written to the segment (``encode_record``);
* decode: the message read back from the payload (recovery, or a body paged out);
* deliver: the AMQP properties block of the read-back message, as a delivery needs it.

The same script runs on the code before the neutral record (the record stored the AMQP
block: encode and deliver only copy it) and after (the record stores neutral fields: the
publish's block is decoded once on encode, and a read-back message has its block
encoded once on its first AMQP delivery)::

    PYTHONPATH=src .venv/bin/python bench/micro/bench_record.py
    PYTHONPATH=/path/to/old/src .venv/bin/python bench/micro/bench_record.py
    valgrind --tool=callgrind --callgrind-out-file=/tmp/cg.rec \\
        .venv/bin/python bench/micro/bench_record.py --records 20000 --quiet
    # minus a --records 0 run, divided by 20000; --until encode|decode counts the
    # phases cumulatively
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from typing import Any

from baedal.core.message import Message

try:
    from baedal.protocols.amqp.properties import (
        AmqpExtension,
        BasicProperties,
        encode_properties,
        wire_extension,
    )
    from baedal.storage.record import decode_record, encode_record

    LAYOUT = "neutral record (version 2)"

    def published(block: bytes, body: bytes) -> Message:
        return Message("", "orders", body, True, 0, None, 0.0, AmqpExtension(block))

    def wire_block(message: Message) -> bytes:
        return wire_extension(message).properties  # type: ignore[return-value]

except ImportError:  # the code before issue 10: the record held the AMQP block
    from baedal.core.properties import BasicProperties, encode_properties  # type: ignore
    from baedal.storage.queue_store import decode_record, encode_record  # type: ignore

    LAYOUT = "AMQP properties block (legacy)"

    def published(block: bytes, body: bytes) -> Message:
        return Message("", "orders", block, body, True)  # type: ignore[arg-type]

    def wire_block(message: Message) -> bytes:
        return message.properties  # type: ignore[attr-defined]


def typical_block() -> bytes:
    return encode_properties(
        BasicProperties(
            content_type="application/json",
            delivery_mode=2,
            message_id="3f2a9c1e-6b1d-4c36-9a51-1c8e2f7d0b42",
            timestamp=1700000000,
            headers={"trace-id": "a1b2c3d4e5f60718", "retries": 0, "source": "checkout"},
        )
    )


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=20_000)
    parser.add_argument(
        "--until",
        choices=("encode", "decode", "deliver"),
        default="deliver",
        help="stop after this phase (for counting each phase's instructions)",
    )
    parser.add_argument(
        "--minimal", action="store_true", help="delivery-mode 2 only (no neutral field)"
    )
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args()
    block = encode_properties(BasicProperties(delivery_mode=2)) if args.minimal else typical_block()
    body = b"x" * 1024
    count = args.records
    # Each publish makes its own message (fields undecoded), as the AMQP channel does.
    messages = [published(block, body) for _ in range(count)]
    payloads: list[bytes] = []
    decoded: list[Message] = []

    def encode() -> None:
        payloads.extend(encode_record(message, None) for message in messages)

    def decode() -> None:
        decoded.extend(decode_record(payload)[0] for payload in payloads)

    def deliver() -> None:
        for message in decoded:
            wire_block(message)

    phases = [encode, decode, deliver]
    phases = phases[: ("encode", "decode", "deliver").index(args.until) + 1]
    times = [timed(phase) for phase in phases]
    if args.quiet or not count:
        return
    size = len(payloads[0])
    kind = "delivery-mode only" if args.minimal else "typical properties"
    print(f"{LAYOUT}, {kind}: {count} records of a 1 KB body, {size} bytes each")
    for name, seconds in zip(("encode", "decode", "deliver"), times, strict=False):
        print(f"  {name:8} {seconds / count * 1e6:6.2f} us per record")
    print(f"  total    {sum(times) / count * 1e6:6.2f} us per record")


if __name__ == "__main__":
    main()
