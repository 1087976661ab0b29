"""STOMP over WebSocket at ``/ws`` on the HTTP port, driven by aiohttp's WebSocket client
speaking STOMP frames; the management API's view of STOMP connections; the listener's
settings (ephemeral port when embedded, ``off``, default port in use).
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiohttp
import pytest
import stomp_support

from baedal import Broker
from baedal.config import load_settings
from baedal.protocols.stomp.codec import SERVER_COMMANDS, Frame, FrameReader, encode_frame

pytestmark = [
    pytest.mark.timeout(60),
    pytest.mark.skipif(stomp_support.EXTERNAL_STOMP is not None, reason="in-process Baedal only"),
]


@pytest.fixture
async def broker(tmp_path: Path) -> AsyncIterator[Broker]:
    instance = Broker(host="127.0.0.1", port=0, http_port=0, data_dir=tmp_path, kafka_port=None)
    await instance.start()
    try:
        yield instance
    finally:
        await asyncio.wait_for(instance.stop(), 30)


class WebStomp:
    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.reader = FrameReader(commands=SERVER_COMMANDS)
        self.frames: list[Frame] = []

    async def send(self, command: str, headers: list[tuple[str, str]], body: bytes = b"") -> None:
        await self.ws.send_str(encode_frame(command, headers, body).decode())

    async def next_frame(self, timeout: float = 5.0) -> Frame:
        async with asyncio.timeout(timeout):
            while not self.frames:
                message = await self.ws.receive()
                if message.type == aiohttp.WSMsgType.TEXT:
                    self.frames.extend(self.reader.feed(message.data.encode()))
                elif message.type == aiohttp.WSMsgType.BINARY:
                    self.frames.extend(self.reader.feed(message.data))
                else:
                    raise ConnectionError(f"websocket {message.type.name}")
        return self.frames.pop(0)


async def _connect(session: aiohttp.ClientSession, broker: Broker, protocol: str = "v12.stomp") -> WebStomp:
    ws = await session.ws_connect(f"{broker.http_url}/ws", protocols=[protocol])
    assert ws.protocol == protocol
    client = WebStomp(ws)
    version = protocol[1] + "." + protocol[2]
    await client.send("CONNECT", [("accept-version", version), ("host", "/"), ("login", "guest"), ("passcode", "guest")])
    connected = await client.next_frame()
    assert connected.command == "CONNECTED"
    assert connected.get("version") == version
    return client


@pytest.mark.parametrize("protocol", ["v10.stomp", "v11.stomp", "v12.stomp"])
async def test_websocket_send_and_subscribe_one_frame_per_message(broker: Broker, protocol: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = await _connect(session, broker, protocol)
        await client.send("SUBSCRIBE", [("destination", "/queue/ws-q"), ("id", "s"), ("receipt", "r")])
        assert (await client.next_frame()).get("receipt-id") == "r"
        await client.send("SEND", [("destination", "/queue/ws-q"), ("content-type", "text/plain")], b"over ws")
        message = await client.next_frame()
        assert message.command == "MESSAGE"
        assert message.body == b"over ws"
        assert message.get("content-type") == "text/plain"
        await client.ws.close()


async def test_websocket_frames_split_across_messages_and_batched_in_one(broker: Broker) -> None:
    async with aiohttp.ClientSession() as session:
        client = await _connect(session, broker)
        frame = encode_frame("SUBSCRIBE", [("destination", "/queue/ws-split"), ("id", "s"), ("receipt", "r")])
        for i in range(0, len(frame), 7):  # a frame in pieces
            await client.ws.send_bytes(frame[i : i + 7])
        assert (await client.next_frame()).get("receipt-id") == "r"
        destination = ("destination", "/queue/ws-split")
        two = encode_frame("SEND", [destination], b"one") + b"\n" + encode_frame(
            "SEND", [destination, ("content-length", "4")], b"\x00two"
        )
        await client.ws.send_bytes(two)  # two frames in one message, a NUL in the second body
        bodies = [(await client.next_frame()).body, (await client.next_frame()).body]
        assert bodies == [b"one", b"\x00two"]
        await client.ws.close()


async def test_websocket_protocol_error_gets_error_then_close(broker: Broker) -> None:
    async with aiohttp.ClientSession() as session:
        client = await _connect(session, broker)
        await client.ws.send_str("BOGUS\n\n\x00")
        error = await client.next_frame()
        assert error.command == "ERROR"
        with pytest.raises(ConnectionError):
            await client.next_frame()
        # The broker serves the next client.
        other = await _connect(session, broker)
        await other.ws.close()


async def test_management_api_lists_stomp_connections_with_their_protocol(broker: Broker) -> None:
    async with aiohttp.ClientSession(
        headers={"Authorization": aiohttp.encode_basic_auth("guest", "guest")}
    ) as session:
        web_client = await _connect(session, broker)
        reader, writer = await asyncio.open_connection("127.0.0.1", broker.stomp_port)
        writer.write(b"CONNECT\naccept-version:1.1\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
        await reader.readuntil(b"\x00")

        async def protocols() -> list[str]:
            async with session.get(f"{broker.http_url}/api/connections") as response:
                assert response.status == 200
                return sorted(c["protocol"] for c in await response.json())

        for _ in range(100):
            found = await protocols()
            if "STOMP 1.1" in found and "Web STOMP 1.2" in found:
                break
            await asyncio.sleep(0.05)
        assert "STOMP 1.1" in found and "Web STOMP 1.2" in found
        writer.close()
        await web_client.ws.close()


async def test_embedded_broker_gets_an_ephemeral_stomp_port_and_off_disables_it(tmp_path: Path) -> None:
    instance = Broker(host="127.0.0.1", port=0, data_dir=tmp_path / "a", kafka_port=None)
    await instance.start()
    try:
        assert instance.stomp_port not in (None, 0, 61613)
    finally:
        await instance.stop()
    settings = load_settings(None, {"port": 0, "data_dir": str(tmp_path / "b"), "http_port": "off"}, {"BAEDAL_STOMP_PORT": "off"})
    assert settings.stomp_port is None
    instance = Broker(settings, kafka_port=None)
    await instance.start()
    try:
        assert instance.stomp_port is None
    finally:
        await instance.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def test_default_stomp_port_in_use_turns_the_listener_off_but_an_explicit_one_is_fatal(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, unique: Callable[[str], str]
) -> None:
    blocker = socket.socket()
    blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        blocker.bind(("127.0.0.1", 61613))
        blocker.listen()
    except OSError as exc:
        if exc.errno != errno.EADDRINUSE:
            raise
        # Something else holds 61613 already: just as good for this test.
    try:
        instance = Broker(host="127.0.0.1", port=_free_port(), data_dir=tmp_path / "a", kafka_port=None)
        with caplog.at_level(logging.WARNING, logger="baedal"):
            await instance.start()
        try:
            assert instance.stomp_port is None
            assert "default port 61613 is in use" in caplog.text
        finally:
            await instance.stop()
        held = socket.socket()
        held.bind(("127.0.0.1", 0))
        held.listen()
        try:
            explicit = Broker(
                host="127.0.0.1",
                port=0,
                data_dir=tmp_path / "b",
                kafka_port=None,
                stomp_port=held.getsockname()[1],
            )
            with pytest.raises(OSError):
                await explicit.start()
            await explicit.stop()
        finally:
            held.close()
    finally:
        blocker.close()


async def test_stomp_over_tls_with_the_configured_certificate(tmp_path: Path) -> None:
    import ssl

    trustme = pytest.importorskip("trustme")
    ca = trustme.CA()
    cert = ca.issue_cert("localhost", "127.0.0.1")
    cert_file, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.cert_chain_pems[0].write_to_path(str(cert_file))
    for pem in cert.cert_chain_pems[1:]:
        pem.write_to_path(str(cert_file), append=True)
    cert.private_key_pem.write_to_path(str(key_file))
    instance = Broker(
        host="127.0.0.1",
        port=0,
        tls_port=0,
        stomp_tls_port=0,
        tls_cert=str(cert_file),
        tls_key=str(key_file),
        data_dir=tmp_path / "d",
        kafka_port=None,
    )
    await instance.start()
    try:
        assert instance.stomp_tls_port
        context = ssl.create_default_context()
        ca.configure_trust(context)
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", instance.stomp_tls_port, ssl=context, server_hostname="localhost"
        )
        writer.write(b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00")
        assert (await asyncio.wait_for(reader.readuntil(b"\x00"), 5)).startswith(b"CONNECTED\n")
        writer.close()
    finally:
        await instance.stop()


async def test_frames_pipelined_behind_a_1_0_connect_are_read_as_1_0(broker: Broker) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", broker.stomp_port)
    try:
        # One write: CONNECT (no accept-version: 1.0), SUBSCRIBE, then a SEND whose header
        # holds a backslash sequence that 1.0 keeps as is (1.2 would call it an error).
        writer.write(
            b"CONNECT\nlogin:guest\npasscode:guest\n\n\x00"
            b"SUBSCRIBE\ndestination:/queue/pipelined-10\nid:s\n\n\x00"
            b"SEND\ndestination:/queue/pipelined-10\npath:C:\\temp\n\nhi\x00"
        )
        frames = FrameReader(commands=SERVER_COMMANDS, version="1.0")
        got: list[Frame] = []
        while len(got) < 2:
            got += frames.feed(await asyncio.wait_for(reader.read(65536), 5))
        assert got[0].command == "CONNECTED" and got[0].get("version") == "1.0"
        assert got[1].command == "MESSAGE" and got[1].get("path") == "C:\\temp"
    finally:
        writer.close()


async def test_an_unacked_delivery_past_consumer_timeout_closes_the_connection_and_requeues(tmp_path: Path) -> None:
    instance = Broker(host="127.0.0.1", port=0, data_dir=tmp_path, kafka_port=None, consumer_timeout=300)
    await instance.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", instance.stomp_port)
        frames = FrameReader(commands=SERVER_COMMANDS)
        writer.write(
            b"CONNECT\naccept-version:1.2\nhost:/\nlogin:guest\npasscode:guest\n\n\x00"
            b"SEND\ndestination:/queue/slow-acker\n\nhold\x00"
            b"SUBSCRIBE\ndestination:/queue/slow-acker\nid:s\nack:client\n\n\x00"
        )
        got: list[Frame] = []
        async with asyncio.timeout(10):
            while True:
                data = await reader.read(65536)
                if not data:
                    break  # closed by the broker
                got += frames.feed(data)
        assert [f.command for f in got] == ["CONNECTED", "MESSAGE", "ERROR"]
        assert "timed out" in (got[-1].get("message") or "")
        queue = instance.core.vhosts["/"].queues["slow-acker"]
        assert queue.message_count == 1  # back in the queue for the next consumer
        writer.close()
    finally:
        await instance.stop()
