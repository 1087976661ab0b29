"""inproc:// with the broker on the caller's own event loop: every hand-over is a
function call (no thread hop); also a client that connects before the broker exists,
and sync sockets in threads reaching a broker that runs on another loop."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from baedal import Broker
from baedal.client import PUB, PULL, PUSH, REP, REQ, SUB, AsyncContext, Context
from baedal.core.message import Message

pytestmark = pytest.mark.timeout(60)


async def test_all_patterns_on_the_brokers_own_loop(tmp_path: Path) -> None:
    name = f"loop-{os.getpid()}"
    async with Broker(port=0, data_dir=tmp_path, inproc_name=name) as broker, AsyncContext(timeout=5) as ctx:
        url = f"inproc://{name}"
        push = await ctx.socket(PUSH, "jobs").connect(url)
        pull = await ctx.socket(PULL, "jobs").connect(url)
        assert push.link.same_loop  # type: ignore[union-attr]
        body = b"x" * 1024
        await push.send(body)
        delivered = await pull.recv(timeout=5)
        assert delivered is body, "the body object itself is handed over: no copy, no codec"

        pub = await ctx.socket(PUB, "events").connect(url)
        sub = await ctx.socket(SUB, "events").connect(url)
        await sub.subscribe("user")
        await pub.send(b"signed up", topic="user.42")
        assert await sub.recv_multipart(timeout=5) == [b"user.42", b"signed up"]

        rep = await ctx.socket(REP, "echo").connect(url)
        req = await ctx.socket(REQ, "echo").connect(url)

        async def serve() -> None:
            for _ in range(3):
                await rep.send(await rep.recv(timeout=5))

        server = asyncio.create_task(serve())
        assert await asyncio.gather(*(req.request(b"%d" % i, timeout=5) for i in range(3))) == [b"0", b"1", b"2"]
        await server

        # The same queues serve everyone else: a message published through the core's
        # publish path by another adapter reaches the inproc puller.
        queue = broker.core.vhosts["/"].queues["jobs"]
        queue.publish(Message("", "jobs", b"from another protocol"))
        assert await pull.recv(timeout=5) == b"from another protocol"


async def test_connect_before_the_broker_exists(tmp_path: Path) -> None:
    name = f"later-{os.getpid()}"
    async with AsyncContext(timeout=10) as ctx:
        pull = ctx.socket(PULL, "early")
        connecting = asyncio.create_task(pull.connect(f"inproc://{name}"))
        await asyncio.sleep(0.1)
        assert not connecting.done()
        async with Broker(port=0, data_dir=tmp_path, inproc_name=name):
            await connecting
            push = await ctx.socket(PUSH, "early").connect(f"inproc://{name}")
            await push.send(b"found you")
            assert await pull.recv(timeout=5) == b"found you"
            await ctx.close()


async def test_sync_sockets_in_threads_reach_a_broker_on_another_loop(tmp_path: Path) -> None:
    name = f"threads-{os.getpid()}"
    async with Broker(port=0, data_dir=tmp_path, inproc_name=name):

        def in_thread() -> list[bytes]:
            with Context(timeout=10) as ctx:
                push = ctx.socket(PUSH, "t").connect(f"inproc://{name}")
                pull = ctx.socket(PULL, "t").connect(f"inproc://{name}")
                for i in range(100):
                    push.send(b"%d" % i)
                return [pull.recv(timeout=10) for _ in range(100)]

        assert await asyncio.to_thread(in_thread) == [b"%d" % i for i in range(100)]


def test_two_brokers_cannot_share_an_inproc_name(tmp_path: Path) -> None:
    name = f"taken-{os.getpid()}"
    with Broker(port=0, data_dir=tmp_path / "a", inproc_name=name):
        with pytest.raises(ValueError, match="already registered"):
            Broker(port=0, data_dir=tmp_path / "b", inproc_name=name).start_in_thread()


def test_a_sync_socket_on_a_stopped_in_process_broker_says_so(tmp_path: Path) -> None:
    from baedal.client import ClientError

    name = f"stopped-{os.getpid()}"
    broker = Broker(port=0, data_dir=tmp_path, inproc_name=name)
    broker.start_in_thread()
    with Context(timeout=5) as ctx:
        pull = ctx.socket(PULL, "gone").connect(f"inproc://{name}")
        with pytest.raises(TimeoutError):
            pull.recv(timeout=0.2)
        broker.stop_thread()
        with pytest.raises(ClientError):
            pull.recv()  # no timeout: must not hang on the dead loop


def test_a_client_loop_that_ends_without_closing_its_socket_does_not_hurt_the_broker(tmp_path: Path) -> None:
    name = f"abandoned-{os.getpid()}"
    with Broker(port=0, data_dir=tmp_path, inproc_name=name) as broker:

        async def careless() -> None:
            ctx = AsyncContext(timeout=5)
            pull = await ctx.socket(PULL, "orphan", prefetch=1).connect(f"inproc://{name}")
            assert pull.link is not None and not pull.link.same_loop
            # returns with the socket open; asyncio.run closes this loop

        asyncio.run(careless())
        with Context(timeout=10) as ctx:
            push = ctx.socket(PUSH, "orphan").connect(f"inproc://{name}")
            push.send(b"for nobody")  # delivered to the orphan consumer first ...
            pull = ctx.socket(PULL, "orphan").connect(f"inproc://{name}")
            assert pull.recv(timeout=10) == b"for nobody"  # ... and given back
        queue = broker.call(lambda: broker.core.vhosts["/"].queues["orphan"])
        assert queue.consumers == []  # the orphan session was closed, the others left
