"""baedal.client under failure: a puller process killed mid-work, a slow subscriber at
its high-water mark, a durable subscriber away, and a broker restarted under clients."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from clientkit import BrokerProcess, Endpoints, running_broker

from baedal import Broker
from baedal.client import PUB, PULL, PUSH, REP, REQ, SUB, AsyncContext, Context

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    yield from running_broker(tmp_path_factory.mktemp("client-faults"), f"faults-{os.getpid()}")


@pytest.fixture
def unique(unique):  # noqa: F811  (names AMQP clients accept: no brackets)
    return lambda prefix="q": unique(prefix).replace("[", "-").replace("]", "")


PULLER = textwrap.dedent(
    """
    import sys, time
    from baedal.client import Context, PULL
    ctx = Context(timeout=10)
    pull = ctx.socket(PULL, sys.argv[2], prefetch=1).connect(sys.argv[1])
    print(pull.recv(timeout=10).decode(), flush=True)
    time.sleep(60)  # "working" when it is killed
    """
)


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_a_puller_killed_mid_work_its_message_goes_to_another(transport: str, endpoints: Endpoints, unique) -> None:
    name = unique("killed")
    url = endpoints.url(transport)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    with Context(timeout=10) as ctx:
        push = ctx.socket(PUSH, name).connect(url)
        worker = subprocess.Popen(
            [sys.executable, "-c", PULLER, url, name], env=env, stdout=subprocess.PIPE, text=True
        )
        try:
            push.send(b"the only job")
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "the only job"
            survivor = ctx.socket(PULL, name).connect(url)
            with pytest.raises(TimeoutError):
                survivor.recv(timeout=0.3)  # the job is taken, not duplicated
            worker.send_signal(signal.SIGKILL)
            worker.wait(10)
            delivery = survivor.recv_delivery(timeout=10)
            assert delivery.body == b"the only job" and delivery.redelivered
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait(10)
            if worker.stdout:
                worker.stdout.close()


def _metric(endpoints: Endpoints, queue: str, name: str) -> float:
    text = requests.get(f"{endpoints.broker.http_url}/metrics", timeout=10).text
    for line in text.splitlines():
        if line.startswith(name) and f'queue="{queue}"' in line:
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} for {queue} not in /metrics")


@pytest.mark.parametrize("transport", ["inproc", "tcp"])
@pytest.mark.parametrize("overflow", ["drop-newest", "drop-oldest"])
async def test_a_slow_subscriber_at_its_high_water_mark_drops_by_its_policy(
    transport: str, overflow: str, endpoints: Endpoints, unique
) -> None:
    name = unique("hwm")
    url = endpoints.url(transport)
    async with AsyncContext(timeout=10) as ctx:
        pub = await ctx.socket(PUB, name).bind(url)
        slow = await ctx.socket(SUB, name, hwm=5, prefetch=1, overflow=overflow).connect(url)
        await slow.subscribe("")
        fast = await ctx.socket(SUB, name).connect(url)  # default hwm 1000: gets all
        await fast.subscribe("")
        for i in range(50):
            await pub.send(b"%d" % i, topic="tick")
        assert [await fast.recv(timeout=5) for _ in range(50)] == [b"%d" % i for i in range(50)]
        # The slow one holds one delivery in hand (prefetch 1) and five in its queue.
        received = [await slow.recv(timeout=5) for _ in range(6)]
        with pytest.raises(TimeoutError):
            await slow.recv(timeout=0.3)
        if overflow == "drop-newest":
            assert received == [b"%d" % i for i in range(6)]
        else:
            assert received == [b"0"] + [b"%d" % i for i in range(45, 50)]
        queue_name = slow.queue_name
        assert queue_name is not None
        dropped = await asyncio.to_thread(_metric, endpoints, queue_name, "baedal_queue_messages_dropped")
        assert dropped == 44
        info = await asyncio.to_thread(
            requests.get, f"{endpoints.broker.http_url}/api/queues/%2F/{queue_name}", auth=("guest", "guest"), timeout=10
        )
        assert info.json()["messages_dropped"] == 44


async def test_a_durable_subscriber_keeps_everything_while_away(endpoints: Endpoints, unique) -> None:
    name = unique("durable-sub")
    url = endpoints.url("inproc")
    async with AsyncContext(timeout=10) as ctx:
        pub = await ctx.socket(PUB, name).bind(url)
        sub = await ctx.socket(SUB, name, subscriber="auditor", hwm=3).connect(url)
        await sub.subscribe("orders")
        await sub.close()  # away
        for i in range(20):
            await pub.send(b"%d" % i, topic="orders.new")
        back = await ctx.socket(SUB, name, subscriber="auditor").connect(url)
        assert [await back.recv(timeout=5) for _ in range(20)] == [b"%d" % i for i in range(20)]


@pytest.mark.parametrize("transport", ["ipc", "tcp"])
def test_clients_reconnect_after_a_broker_restart(transport: str, tmp_path: Path) -> None:
    socket_dir = tempfile.mkdtemp(prefix="bdr-", dir="/tmp")
    broker = BrokerProcess(tmp_path / "data", os.path.join(socket_dir, "amqp.sock"))
    broker.start()
    url = f"ipc://{broker.socket_path}" if transport == "ipc" else f"tcp://127.0.0.1:{broker.port}"
    try:
        with Context(timeout=30) as ctx:
            push = ctx.socket(PUSH, "restart-jobs", durable=True).connect(url)
            pull = ctx.socket(PULL, "restart-jobs", durable=True).connect(url)
            rep = ctx.socket(REP, "restart-rpc").connect(url)
            req = ctx.socket(REQ, "restart-rpc").connect(url)
            push.send(b"before")
            assert pull.recv(timeout=10) == b"before"
            pull.ack()
            push.send(b"stored before the restart")
            broker.stop()
            broker.start()
            push.send(b"after")  # waits for the reconnect, then goes through
            got: list[bytes] = []
            while not {b"after", b"stored before the restart"} <= set(got):
                got.append(pull.recv(timeout=20))
            # At least once: the ack of "before" travels on its own, and if the broker
            # was already closing connections when it arrived, "before" comes back once.
            assert sorted(set(got)) in (
                [b"after", b"stored before the restart"],
                [b"after", b"before", b"stored before the restart"],
            )
            assert len(got) == len(set(got))

            import threading

            def serve() -> None:
                rep.send(rep.recv(timeout=20) + b"!")

            thread = threading.Thread(target=serve)
            thread.start()
            assert req.request(b"still there", timeout=20) == b"still there!"
            thread.join(10)
    finally:
        broker.stop()
        os.rmdir(socket_dir) if not os.listdir(socket_dir) else None


async def test_inproc_clients_reconnect_when_the_broker_restarts_under_the_same_name(tmp_path: Path) -> None:
    name = f"restart-{os.getpid()}"
    broker = Broker(port=0, data_dir=tmp_path, inproc_name=name)
    await broker.start()
    try:
        async with AsyncContext(timeout=10) as ctx:
            push = await ctx.socket(PUSH, "jobs", durable=True).connect(f"inproc://{name}")
            pull = await ctx.socket(PULL, "jobs", durable=True).connect(f"inproc://{name}")
            await push.send(b"one")
            assert await pull.recv(timeout=5) == b"one"
            pull.ack()
            await push.send(b"two")
            await broker.stop()
            broker = Broker(port=0, data_dir=tmp_path, inproc_name=name)
            await broker.start()
            await push.send(b"three")
            assert sorted([await pull.recv(timeout=10), await pull.recv(timeout=10)]) == [b"three", b"two"]
    finally:
        await broker.stop()
