"""Hypothesis against baedal.client's AMQP connection (client/amqp.py): whatever bytes a
"broker" sends, fed whole, one byte at a time or in random chunks, the client either
keeps going or closes itself; it never raises out of ``data_received``, every waiting
request ends (with a result or an error), and the three feeds end in the same state."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from baedal.client.amqp import AMQPClientConnection
from baedal.protocols.amqp import spec
from baedal.protocols.amqp.codec import content_frames, method_frame


class FakeTransport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.closing = False

    def write(self, data: bytes) -> None:
        self.written.append(bytes(data))

    def writelines(self, data: list[bytes]) -> None:  # type: ignore[override]
        self.written.extend(bytes(d) for d in data)

    def close(self) -> None:
        self.closing = True

    def is_closing(self) -> bool:
        return self.closing

    def get_extra_info(self, name: str, default: object = None) -> object:
        return default


def server_frames() -> st.SearchStrategy[bytes]:
    """Plausible broker output: the handshake, answers, deliveries, closes, junk."""
    valid = st.sampled_from(
        [
            method_frame(0, spec.ConnectionStart(0, 9, {}, "PLAIN", "en_US")),
            method_frame(0, spec.ConnectionTune(2047, 131072, 0)),
            method_frame(0, spec.ConnectionOpenOk("")),
            method_frame(1, spec.ChannelOpenOk("")),
            method_frame(1, spec.QueueDeclareOk("q", 0, 0)),
            method_frame(1, spec.BasicConsumeOk("bc-1-1")),
            method_frame(1, spec.BasicAck(1, True)),
            method_frame(1, spec.BasicCancel("bc-1-1", True)),
            method_frame(1, spec.ChannelClose(406, "PRECONDITION_FAILED", 50, 10)),
            method_frame(0, spec.ConnectionClose(320, "CONNECTION_FORCED", 0, 0)),
            b"".join(
                content_frames(1, spec.BasicDeliver("bc-1-1", 1, False, "", "q").encode(), b"\x00\x00", b"body", 131072)
            ),
            b"\x08\x00\x00\x00\x00\x00\x00\xce",  # heartbeat
        ]
    )
    junk = st.binary(min_size=1, max_size=40)
    header = st.builds(lambda t, c, n: struct.pack(">BHI", t, c, n), st.integers(0, 9), st.integers(0, 3), st.integers(0, 1 << 32 - 1))
    return st.lists(st.one_of(valid, valid, junk, header), min_size=1, max_size=12).map(b"".join)


def run(data: bytes, chunks: list[int]) -> tuple[bool, list[str]]:
    loop = asyncio.new_event_loop()
    try:
        connection = AMQPClientConnection(loop, "guest", "guest", "/")
        connection.connection_made(FakeTransport())
        # Two requests waiting on channel 1, as a socket setting up would have.
        connection.channels[1] = type(connection.channels[0])(1)
        waiting = [loop.create_future(), loop.create_future()]
        connection.channels[1].waiting.extend([((spec.QueueDeclareOk,), waiting[0]), ((spec.BasicConsumeOk,), waiting[1])])
        connection.channels[1].consumers["bc-1-1"] = lambda method, block, body: None
        pos = 0
        for size in chunks:
            if pos >= len(data):
                break
            connection.data_received(data[pos : pos + size])
            pos += size
        if pos < len(data):
            connection.data_received(data[pos:])
        outcomes = []
        for future in waiting:
            if not future.done():
                outcomes.append("pending")
            elif future.exception() is not None:
                outcomes.append(type(future.exception()).__name__)
            else:
                outcomes.append("ok")
        if connection.closed.done():
            # Closed: nothing may stay pending.
            assert "pending" not in outcomes
        return connection.closed.done(), outcomes
    finally:
        loop.close()


@settings(max_examples=300, deadline=None)
@given(server_frames(), st.lists(st.integers(1, 17), max_size=50))
def test_client_connection_survives_any_broker_output(data: bytes, chunks: list[int]) -> None:
    whole = run(data, [len(data)])
    byte_by_byte = run(data, [1] * len(data))
    chunked = run(data, chunks)
    assert whole == byte_by_byte == chunked
