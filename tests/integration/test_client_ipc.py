"""IPC: the AMQP listener on a Unix domain socket (transport/unix.py), driven by
aio-pika (over aiormq's transport factory) and raw sockets."""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import aio_pika
import pytest

from baedal import Broker
from baedal.config import load_settings
from baedal.transport.unix import UnixTransportFactory

pytestmark = pytest.mark.timeout(60)


async def unix_connection(address: str, user: str = "guest", password: str = "guest") -> aio_pika.abc.AbstractConnection:
    """aio-pika over a Unix socket: its Connection with aiormq's ``transport_factory``."""
    connection = aio_pika.Connection(aio_pika.connection.make_url(f"amqp://{user}:{password}@localhost/"))
    connection.kwargs["transport_factory"] = UnixTransportFactory(address)
    await connection.connect(timeout=10)
    return connection


async def roundtrip(address: str, queue_name: str) -> bytes:
    connection = await unix_connection(address)
    async with connection:
        channel = await connection.channel()
        queue = await channel.declare_queue(queue_name, auto_delete=True)
        await channel.default_exchange.publish(aio_pika.Message(b"over a unix socket"), routing_key=queue_name)
        message = await queue.get(timeout=5)
        await message.ack()
        return message.body


async def test_aio_pika_publishes_and_gets_over_a_unix_socket_path(tmp_path: Path, socket_dir: Path) -> None:
    address = str(socket_dir / "amqp.sock")
    async with Broker(port=0, data_dir=tmp_path, unix_socket=address) as broker:
        assert stat.S_IMODE(os.stat(address).st_mode) == 0o660
        assert await roundtrip(address, "ipc-path") == b"over a unix socket"
        names = [c.name for c in broker.core.connections.values()]
        assert names == [] or all(n.startswith("unix:") for n in names)
    assert not os.path.exists(address), "the socket file is removed at stop"


async def test_aio_pika_over_a_linux_abstract_name(tmp_path: Path) -> None:
    address = f"@baedal-test-{os.getpid()}"
    async with Broker(port=0, data_dir=tmp_path, unix_socket=address):
        assert await roundtrip(address, "ipc-abstract") == b"over a unix socket"
    with pytest.raises(ConnectionRefusedError):  # the kernel freed the name
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect("\0" + address[1:])
        finally:
            probe.close()


async def test_unix_socket_still_authenticates(tmp_path: Path, socket_dir: Path) -> None:
    address = str(socket_dir / "auth.sock")
    async with Broker(port=0, data_dir=tmp_path, unix_socket=address):
        with pytest.raises(Exception) as caught:
            await unix_connection(address, password="wrong")
        assert "ACCESS_REFUSED" in repr(caught.value) or "403" in repr(caught.value) or "Authentication" in repr(caught.value)


CONNECT_AS_NOBODY = textwrap.dedent(
    """
    import os, socket, sys
    os.setgid(65534); os.setuid(65534)
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(sys.argv[1])
    except PermissionError:
        print("refused"); sys.exit(0)
    s.sendall(b"AMQP\\x00\\x00\\x09\\x01")
    print("connected" if s.recv(7)[:1] == b"\\x01" else "odd")
    """
)


def connect_as_nobody(address: str) -> str:
    result = subprocess.run(
        [sys.executable, "-c", CONNECT_AS_NOBODY, address], capture_output=True, text=True, timeout=20
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
async def test_socket_file_mode_refuses_a_user_without_permission(tmp_path: Path, socket_dir: Path) -> None:
    closed = str(socket_dir / "closed.sock")
    opened = str(socket_dir / "open.sock")
    async with Broker(port=0, data_dir=tmp_path / "a", unix_socket=closed):
        assert await asyncio.to_thread(connect_as_nobody, closed) == "refused"
    async with Broker(port=0, data_dir=tmp_path / "b", unix_socket=opened, unix_socket_mode=0o666):
        # Same directory, same user: only the mode differs, and now the handshake starts.
        assert await asyncio.to_thread(connect_as_nobody, opened) == "connected"


async def test_stale_socket_file_is_replaced_but_a_live_one_is_not(tmp_path: Path, socket_dir: Path) -> None:
    address = str(socket_dir / "stale.sock")
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(address)
    stale.close()  # the file stays, nobody listens: what a killed broker leaves
    assert os.path.exists(address)
    async with Broker(port=0, data_dir=tmp_path / "a", unix_socket=address):
        assert await roundtrip(address, "ipc-stale") == b"over a unix socket"
        second = Broker(port=0, data_dir=tmp_path / "b", unix_socket=address)
        with pytest.raises(OSError, match="in use"):
            await second.start()
        await second.stop()
        # The first broker still serves on its file.
        assert await roundtrip(address, "ipc-stale-2") == b"over a unix socket"


async def test_a_path_that_is_not_a_socket_is_never_removed(tmp_path: Path, socket_dir: Path) -> None:
    address = socket_dir / "data.txt"
    address.write_text("precious")
    broker = Broker(port=0, data_dir=tmp_path, unix_socket=str(address))
    with pytest.raises(OSError, match="not a socket"):
        await broker.start()
    await broker.stop()
    assert address.read_text() == "precious"


async def test_http_api_over_a_unix_socket(tmp_path: Path, socket_dir: Path) -> None:
    import aiohttp

    address = str(socket_dir / "http.sock")
    async with Broker(port=0, data_dir=tmp_path, http_port=0, http_unix_socket=address):
        connector = aiohttp.UnixConnector(path=address)
        async with aiohttp.ClientSession(connector=connector) as session:
            async with session.get("http://localhost/api/overview", auth=aiohttp.BasicAuth("guest", "guest")) as response:
                assert response.status == 200
                assert "rabbitmq_version" in await response.json()
    assert not os.path.exists(address)


def test_unix_socket_settings_from_environment_and_flags() -> None:
    settings = load_settings(environ={"BAEDAL_UNIX_SOCKET": "@env", "BAEDAL_UNIX_SOCKET_MODE": "0600"})
    assert settings.unix_socket == "@env" and settings.unix_socket_mode == 0o600
    settings = load_settings(flags={"unix_socket": "/tmp/x.sock", "unix_socket_mode": "0666"}, environ={})
    assert settings.unix_socket == "/tmp/x.sock" and settings.unix_socket_mode == 0o666
    assert load_settings(environ={}).unix_socket_mode == 0o660


async def test_garbage_on_the_unix_socket_gets_the_protocol_header_and_others_carry_on(
    tmp_path: Path, socket_dir: Path
) -> None:
    address = str(socket_dir / "garbage.sock")
    async with Broker(port=0, data_dir=tmp_path, unix_socket=address):
        reader, writer = await asyncio.open_unix_connection(address)
        writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        await writer.drain()
        answer = await asyncio.wait_for(reader.read(64), 10)
        assert answer == b"AMQP\x00\x00\x09\x01"  # AMQP 0-9-1 §4.2.2: the header, then close
        assert await asyncio.wait_for(reader.read(64), 10) == b""
        writer.close()
        assert await roundtrip(address, "ipc-after-garbage") == b"over a unix socket"
