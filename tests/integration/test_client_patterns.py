"""baedal.client: every pattern over every transport (inproc, ipc, tcp), asyncio and
sync, against a real Baedal.  The in-process broker runs in its own thread here (the
cross-thread inproc path); test_client_inproc_loop covers a broker on the test's loop."""

from __future__ import annotations

import asyncio
import os
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
import requests
from clientkit import TRANSPORTS, Endpoints, running_broker

from baedal.client import (
    PUB,
    PULL,
    PUSH,
    REP,
    REQ,
    SUB,
    AsyncContext,
    ClientError,
    Context,
    parse_endpoint,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture(scope="module")
def endpoints(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Endpoints]:
    yield from running_broker(tmp_path_factory.mktemp("client-patterns"), f"patterns-{os.getpid()}")


@pytest.fixture
def unique(unique):  # noqa: F811  (names AMQP clients accept: no brackets)
    return lambda prefix="q": unique(prefix).replace("[", "-").replace("]", "")


@pytest.fixture(params=TRANSPORTS)
def url(request: pytest.FixtureRequest, endpoints: Endpoints) -> str:
    return endpoints.url(request.param)


def test_urls_parse_into_transports() -> None:
    assert parse_endpoint("inproc://jobs").address == "jobs"
    assert parse_endpoint("ipc:///run/b.sock").address == "/run/b.sock"
    assert parse_endpoint("ipc://@abstract").address == "@abstract"
    tcp = parse_endpoint("tcp://u:p%40ss@example.org:5673/v%2Fh")
    assert (tcp.address, tcp.port, tcp.user, tcp.password, tcp.vhost) == ("example.org", 5673, "u", "p@ss", "v/h")
    for bad in ("jobs", "udp://x:1", "inproc://", "tcp://:5672"):
        with pytest.raises(ValueError):
            parse_endpoint(bad)


async def test_push_pull_competing_pullers_share_the_work_exactly_once(url: str, unique) -> None:
    name = unique("work")
    async with AsyncContext(timeout=10) as ctx:
        push = await ctx.socket(PUSH, name).connect(url)
        pullers = [await ctx.socket(PULL, name, prefetch=1).connect(url) for _ in range(2)]
        for i in range(40):
            await push.send(b"job-%d" % i)
        got: dict[int, list[bytes]] = {0: [], 1: []}

        async def work(i: int) -> None:
            while True:
                try:
                    got[i].append(await pullers[i].recv(timeout=1.0))
                except TimeoutError:
                    return
                await asyncio.sleep(0.001)  # a little work, so both get a share

        await asyncio.gather(work(0), work(1))
    everything = sorted(got[0] + got[1])
    assert everything == sorted(b"job-%d" % i for i in range(40))
    assert got[0] and got[1], "both pullers got work"


async def test_push_before_any_puller_exists_waits_in_the_queue(url: str, unique) -> None:
    name = unique("early")
    async with AsyncContext(timeout=10) as ctx:
        push = await ctx.socket(PUSH, name).bind(url)
        await push.send(b"waiting")
        pull = await ctx.socket(PULL, name).connect(url)
        assert await pull.recv(timeout=5) == b"waiting"


async def test_multipart_messages_keep_their_parts(url: str, unique) -> None:
    name = unique("multi")
    async with AsyncContext(timeout=10) as ctx:
        push = await ctx.socket(PUSH, name).connect(url)
        pull = await ctx.socket(PULL, name).connect(url)
        await push.send([b"header", b"", b"\x00binary\xff"])
        await push.send(b"single")
        assert await pull.recv_multipart(timeout=5) == [b"header", b"", b"\x00binary\xff"]
        assert await pull.recv_multipart(timeout=5) == [b"single"]


async def test_unacked_message_goes_to_another_puller_when_the_first_leaves_without_ack(url: str, unique) -> None:
    name = unique("crash")
    async with AsyncContext(timeout=10) as ctx:
        push = await ctx.socket(PUSH, name).connect(url)
        first = await ctx.socket(PULL, name, prefetch=1).connect(url)
        await push.send(b"task")
        assert await first.recv(timeout=5) == b"task"
        # The puller's link dies without acknowledging (what a crash looks like to the
        # broker; test_client_faults kills a real process).
        assert first.link is not None
        await first.link.close()
        first.link = None
        second = await ctx.socket(PULL, name).connect(url)
        delivery = await second.recv_delivery(timeout=5)
        assert delivery.body == b"task" and delivery.redelivered


async def test_pub_sub_fans_out_with_word_prefix_filters(url: str, unique) -> None:
    name = unique("news")
    async with AsyncContext(timeout=10) as ctx:
        pub = await ctx.socket(PUB, name).bind(url)
        weather = ctx.socket(SUB, name)
        await weather.subscribe("weather")  # before connect: bound at connect
        await weather.connect(url)
        everything = await ctx.socket(SUB, name).connect(url)
        await everything.subscribe("")
        await pub.send(b"sunny", topic="weather.seoul")
        await pub.send(b"goal", topic="sport.football")
        await pub.send(b"not weather", topic="weatherman")
        await pub.send_multipart([b"weather", b"rain", b"10mm"])
        assert await weather.recv_multipart(timeout=5) == [b"weather.seoul", b"sunny"]
        assert await weather.recv_multipart(timeout=5) == [b"weather", b"rain", b"10mm"]
        with pytest.raises(TimeoutError):
            await weather.recv(timeout=0.3)
        received = [await everything.recv(timeout=5) for _ in range(4)]
        assert received == [b"sunny", b"goal", b"not weather", b"rain10mm"]
        await weather.unsubscribe("weather")
        await pub.send(b"more", topic="weather.busan")
        assert await everything.recv(timeout=5) == b"more"
        with pytest.raises(TimeoutError):
            await weather.recv(timeout=0.3)


async def test_req_rep_many_requesters_and_repliers(url: str, unique) -> None:
    name = unique("rpc")
    async with AsyncContext(timeout=10) as ctx:
        repliers = [await ctx.socket(REP, name).bind(url) for _ in range(3)]
        served: Counter[int] = Counter()

        async def serve(i: int) -> None:
            rep = repliers[i]
            while True:
                try:
                    request = await rep.recv(timeout=1.5)
                except TimeoutError:
                    return
                served[i] += 1
                await rep.send(b"re:" + request)

        servers = [asyncio.create_task(serve(i)) for i in range(3)]
        requesters = [await ctx.socket(REQ, name).connect(url) for _ in range(4)]

        async def ask(r: int) -> list[bytes]:
            # Several requests in flight on one socket: replies matched by correlation id.
            return list(
                await asyncio.gather(*(requesters[r].request(b"%d-%d" % (r, k), timeout=10) for k in range(10)))
            )

        answers = await asyncio.gather(*(ask(r) for r in range(4)))
        for r, replies in enumerate(answers):
            assert replies == [b"re:%d-%d" % (r, k) for k in range(10)]
        # ZeroMQ's strict alternation on one REQ socket.
        await requesters[0].send(b"alternating")
        assert await requesters[0].recv(timeout=10) == b"re:alternating"
        with pytest.raises(ClientError):
            await requesters[0].recv(timeout=1)  # nothing sent
        await asyncio.gather(*servers)
    assert sum(served.values()) == 41
    assert len([i for i in served if served[i]]) >= 2, "the work was shared"


async def test_request_times_out_without_a_replier(url: str, unique) -> None:
    async with AsyncContext(timeout=10) as ctx:
        req = await ctx.socket(REQ, unique("nobody")).connect(url)
        with pytest.raises(TimeoutError):
            await req.request(b"hello?", timeout=0.3)


def test_sync_sockets_in_threads(url: str, unique) -> None:
    jobs, rpc = unique("sync-jobs"), unique("sync-rpc")
    with Context(timeout=10) as ctx:
        push = ctx.socket(PUSH, jobs).connect(url)
        rep = ctx.socket(REP, rpc).bind(url)

        def replier() -> None:
            for _ in range(5):
                rep.send(rep.recv(timeout=10) * 2)

        thread = threading.Thread(target=replier)
        thread.start()
        with ctx.socket(REQ, rpc).connect(url) as req:
            assert [req.request(b"%d" % i, timeout=10) for i in range(5)] == [b"%d%d" % (i, i) for i in range(5)]
        thread.join(10)
        with ctx.socket(PULL, jobs).connect(url) as pull:
            for i in range(10):
                push.send(b"%d" % i)
            assert [pull.recv(timeout=10) for _ in range(10)] == [b"%d" % i for i in range(10)]


async def test_durable_push_pull_survives_in_a_durable_queue(url: str, unique, endpoints: Endpoints) -> None:
    name = unique("durable")
    async with AsyncContext(timeout=10) as ctx:
        push = await ctx.socket(PUSH, name, durable=True).connect(url)
        await push.send(b"kept")  # returns once stored (fsync'ed)
        queue = endpoints.broker.call(lambda: endpoints.broker.core.vhosts["/"].queues[name])
        assert queue.durable and queue.message_count == 1
        pull = await ctx.socket(PULL, name, durable=True).connect(url)
        assert await pull.recv(timeout=5) == b"kept"


async def test_pattern_objects_are_ordinary_queues_and_exchanges_in_the_management_api(endpoints: Endpoints, unique) -> None:
    jobs, news = unique("mgmt-jobs"), unique("mgmt-news")
    url = endpoints.url("inproc")
    async with AsyncContext(timeout=10) as ctx:
        await ctx.socket(PUSH, jobs).connect(url)
        sub = await ctx.socket(SUB, news, hwm=7).connect(url)
        await sub.subscribe("a.b")
        base = endpoints.broker.http_url
        auth = ("guest", "guest")
        queues = await asyncio.to_thread(requests.get, f"{base}/api/queues", auth=auth, timeout=10)
        by_name = {q["name"]: q for q in queues.json()}
        assert jobs in by_name
        assert by_name[sub.queue_name]["arguments"]["x-max-length"] == 7
        exchange = await asyncio.to_thread(requests.get, f"{base}/api/exchanges/%2F/{news}", auth=auth, timeout=10)
        assert exchange.json()["type"] == "topic"
        bindings = await asyncio.to_thread(
            requests.get, f"{base}/api/exchanges/%2F/{news}/bindings/source", auth=auth, timeout=10
        )
        assert [b["routing_key"] for b in bindings.json()] == ["a.b.#"]
        consumers = await asyncio.to_thread(requests.get, f"{base}/api/consumers", auth=auth, timeout=10)
        mine = [c for c in consumers.json() if c["queue"]["name"] == sub.queue_name]
        assert len(mine) == 1 and mine[0]["channel_details"]["name"].startswith("inproc://")
        assert mine[0]["prefetch_count"] == 64 and mine[0]["ack_required"]


async def test_a_socket_that_disagrees_with_the_existing_queue_gets_the_brokers_refusal(url: str, unique) -> None:
    name = unique("mismatch")
    async with AsyncContext(timeout=5) as ctx:
        await ctx.socket(PUSH, name, durable=True).connect(url)
        with pytest.raises(ClientError, match="inequivalent arg 'durable'"):
            await ctx.socket(PULL, name).connect(url)  # not durable: 406 from the broker
        # The first socket and the broker carry on.
        pull = await ctx.socket(PULL, name, durable=True).connect(url)
        push = ctx.sockets[0]
        await push.send(b"still fine")
        assert await pull.recv(timeout=5) == b"still fine"


def test_leaving_a_with_block_by_an_exception_gives_the_message_back(url: str, unique) -> None:
    name = unique("failed-work")
    with Context(timeout=10) as ctx:
        ctx.socket(PUSH, name).connect(url).send(b"fragile")
        with pytest.raises(ZeroDivisionError):
            with ctx.socket(PULL, name).connect(url) as pull:
                assert pull.recv(timeout=5) == b"fragile"
                raise ZeroDivisionError("the work fails")
        with ctx.socket(PULL, name).connect(url) as again:
            delivery = again.recv_delivery(timeout=5)
            assert delivery.body == b"fragile" and delivery.redelivered
        with ctx.socket(PULL, name).connect(url) as last:
            with pytest.raises(TimeoutError):  # acknowledged by the clean exit above
                last.recv(timeout=0.3)
