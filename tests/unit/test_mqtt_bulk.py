"""A read's run of PUBLISHes (and of PUBACKs) through the core in bulk does what the
packets one by one do.

The same scenario runs twice on a fresh broker core with the real storage engine: once
with every PUBLISH (and every subscriber PUBACK) in one read, which takes
``MQTTConnection._publish_run`` / ``Publisher.deliver_many`` / ``Queue.publish_many`` and
``Queue.ack_many``, and once with one packet per read, which takes the single path.
What the clients receive (packets, in order), the queues' state and counters, the
exchange's and the listener's counters must be equal.  The fallbacks (a queue with a
length limit and an overflow policy, a dead-letter exchange, a shared subscription with
two consumers, an oversized message in the middle of a run, no subscriber) are
scenarios of the same comparison, and a spy on ``Queue.publish_many`` shows which path
each one took.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest
from test_mqtt_fast_paths import RecordingTransport, start

from baedal.core.message import Message
from baedal.core.queue import Queue, QueueSettings
from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import (
    Ack,
    Connect,
    Parser,
    Publish,
    Subscribe,
    Subscription,
    encode,
)
from baedal.protocols.mqtt.server import MQTTConnection, MQTTServer


def _connect(server: MQTTServer, client_id: str, persistent: bool, version: int) -> tuple[MQTTConnection, RecordingTransport]:
    transport = RecordingTransport()
    conn = MQTTConnection(server)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(encode(Connect(client_id, clean_start=not persistent, keep_alive=0, version=version), version))
    assert transport.writes and transport.writes[-1][0] >> 4 == codec.CONNACK
    transport.writes.clear()
    return conn, transport


def _feed(conn: MQTTConnection, chunks: list[bytes], bulk: bool) -> None:
    if bulk:
        conn.data_received(b"".join(chunks))
    else:
        for chunk in chunks:
            conn.data_received(chunk)


def _queue_state(queue: Queue) -> tuple[Any, ...]:
    return (queue.publish_count, queue.deliver_count, queue.ack_count, queue.unacked_count,
            queue.redeliver_count, queue.dropped_count, queue.message_count)


def _scenario(tmp_path: Path, bulk: bool, *, qos: int = 1, version: int = 4, subscribers: int = 1,
              shared: bool = False, window: int | None = None, settings: dict[str, Any] | None = None,
              big_at: int | None = None, count: int = 40,
              sizes: tuple[int, ...] | None = None) -> tuple[Any, ...]:
    """``count`` PUBLISHes of QoS ``qos`` to t/x, then each subscriber acknowledges what
    it got (twice: the window refills in between)."""

    async def main() -> tuple[Any, ...]:
        core, storage, server = await start(tmp_path)
        if window is not None:
            server.config.max_inflight = window
        persistent = qos > 0
        subs = []
        for n in range(subscribers):
            conn, out = _connect(server, f"sub{n}", persistent, version)
            topic_filter = "$share/g/t/x" if shared else "t/x"
            conn.data_received(encode(Subscribe(1, [Subscription(topic_filter, qos)]), version))
            out.writes.clear()
            subs.append((conn, out))
        queues = [q for q in server.vhost.queues.values() if q.name.startswith("mqtt-")]
        if settings is not None:
            for queue in queues:
                queue.apply_settings(QueueSettings(settings))
        publisher, acks_out = _connect(server, "pub", persistent, version)
        # The first PUBLISH to a topic takes the single path (it fills the topic cache).
        publisher.data_received(encode(Publish("t/x", b"first", qos, packet_id=1 if qos else None), version))
        if big_at is not None:
            core.config.max_message_size = 1000
            publisher.publisher = None  # re-read the limit
        chunks = []
        for i in range(count):
            body = b"x" * 2000 if i == big_at else b"m%d" % i
            if sizes is not None:
                body = body.ljust(sizes[i % len(sizes)], b".")
            chunks.append(encode(Publish("t/x", body, qos, packet_id=100 + i if qos else None), version))
        _feed(publisher, chunks, bulk)
        await storage.syncer.synced()
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        received = []
        for _round in range(2):
            for conn, out in subs:
                data = b"".join(out.writes)
                out.writes.clear()
                packets = Parser(version=version).feed(data)
                received.append(packets)
                if qos and not conn.closed:
                    ids = [p.packet_id for p in packets if isinstance(p, Publish)]
                    _feed(conn, [encode(Ack(codec.PUBACK, i), version) for i in ids], bulk)
            await storage.syncer.synced()
            await asyncio.sleep(0)
        pubacks = Parser(version=version).feed(b"".join(acks_out.writes))
        exchange = server.vhost.exchanges["amq.topic"]
        outcome = (
            received,
            pubacks,
            publisher.closed,
            [_queue_state(q) for q in queues],
            exchange.publish_count,
            exchange.publish_out_count,
            dict(server.counters),
            core.counters["unroutable"],
            # (a closed connection's count is moot: a read that closed it never asks
            # for its fsync, whatever the path)
            None if publisher.closed else publisher.inbound_unacked,
            [sorted(conn.session_inflight()) for conn, _ in subs],
        )
        await server.close()
        await storage.close()
        return outcome

    return asyncio.run(main())


@pytest.fixture
def bulk_calls(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What each ``Queue.publish_many`` / ``Queue.ack_many`` call answered (a spy on the
    real methods: they still run)."""
    calls: list[Any] = []
    publish_many = Queue.publish_many
    ack_many = Queue.ack_many

    def spy_publish(self: Queue, messages: list[Message]) -> Any:
        result = publish_many(self, messages)
        calls.append(("publish_many", len(messages), result is not None))
        return result

    def spy_ack(self: Queue, entries: list[Any]) -> None:
        calls.append(("ack_many", len(entries), True))
        ack_many(self, entries)

    monkeypatch.setattr(Queue, "publish_many", spy_publish)
    monkeypatch.setattr(Queue, "ack_many", spy_ack)
    return calls


def _compare(tmp_path: Path, calls: list[Any], **kwargs: Any) -> tuple[Any, ...]:
    single = _scenario(tmp_path / "single", False, **kwargs)
    assert calls == []  # one packet per read never takes the bulk path
    bulk = _scenario(tmp_path / "bulk", True, **kwargs)
    assert bulk == single
    return bulk


def test_qos1_persistent_run_is_the_single_path(tmp_path: Path, bulk_calls: list[Any]) -> None:
    outcome = _compare(tmp_path, bulk_calls)
    received, pubacks = outcome[0], outcome[1]
    assert [p.payload for p in received[0]] == [b"first"] + [b"m%d" % i for i in range(40)]
    assert pubacks == [Ack(codec.PUBACK, 1)] + [Ack(codec.PUBACK, 100 + i) for i in range(40)]
    assert outcome[3] == [(41, 41, 41, 0, 0, 0, 0)]
    assert ("publish_many", 40, True) in bulk_calls and ("ack_many", 41, True) in bulk_calls


@pytest.mark.parametrize("qos", [0, 1])
def test_runs_of_every_packet_size_are_the_single_path(tmp_path: Path, bulk_calls: list[Any], qos: int) -> None:
    """One- and two-byte remaining lengths (``deliver_many`` packs those itself) and a
    longer one (``encode_publish``), mixed in one run."""
    outcome = _compare(tmp_path, bulk_calls, qos=qos, sizes=(3, 100, 126, 127, 200, 16000, 16384, 20000))
    payloads = [p.payload for p in outcome[0][0]]
    assert len(payloads) == 41 and {len(p) for p in payloads[1:]} == {3, 100, 126, 127, 200, 16000, 16384, 20000}


def test_qos0_memory_run_is_the_single_path(tmp_path: Path, bulk_calls: list[Any]) -> None:
    outcome = _compare(tmp_path, bulk_calls, qos=0)
    assert [p.payload for p in outcome[0][0]] == [b"first"] + [b"m%d" % i for i in range(40)]
    assert ("publish_many", 40, True) in bulk_calls


def test_small_window_keeps_order_and_redelivers_nothing(tmp_path: Path, bulk_calls: list[Any]) -> None:
    # 5 in flight at a time: the run waits in the durable queue, the bulk PUBACKs refill it.
    outcome = _compare(tmp_path, bulk_calls, window=5)
    first, second = outcome[0][0], outcome[0][1]
    assert [p.payload for p in first] == [b"first", b"m0", b"m1", b"m2", b"m3"]
    assert [p.payload for p in second] == [b"m%d" % i for i in range(4, 9)]
    assert not any(p.dup for p in first + second)


def test_two_subscribers_two_queues(tmp_path: Path, bulk_calls: list[Any]) -> None:
    outcome = _compare(tmp_path, bulk_calls, subscribers=2)
    assert len(outcome[3]) == 2 and outcome[5] == 2 * 41


def test_mqtt5_unroutable_run_gets_no_matching_subscribers(tmp_path: Path, bulk_calls: list[Any]) -> None:
    outcome = _compare(tmp_path, bulk_calls, version=5, subscribers=0)
    assert [a.reason_code for a in outcome[1]] == [codec.NO_MATCHING_SUBSCRIBERS] * 41
    assert outcome[7] == 41


def test_fallback_shared_subscription_with_two_consumers(tmp_path: Path, bulk_calls: list[Any]) -> None:
    outcome = _compare(tmp_path, bulk_calls, subscribers=2, shared=True)
    assert sum(len(packets) for packets in outcome[0]) == 41
    assert ("publish_many", 40, False) in bulk_calls  # refused: two consumers to choose from


@pytest.mark.parametrize("settings", [
    {"x-max-length": 10, "x-overflow": "reject-publish"},
    {"x-max-length": 10},  # drop-head
    {"x-dead-letter-exchange": "amq.direct"},
    {"x-message-ttl": 60000},
])
def test_fallback_queue_policies(tmp_path: Path, bulk_calls: list[Any], settings: dict[str, Any]) -> None:
    _compare(tmp_path, bulk_calls, window=3, settings=settings)
    assert bulk_calls and all(not taken for name, _, taken in bulk_calls if name == "publish_many")


def test_fallback_oversized_message_in_the_run(tmp_path: Path, bulk_calls: list[Any]) -> None:
    # 3.1.1 cannot refuse one PUBLISH: the connection closes at the 6th; the 5 before
    # it are delivered and acknowledged as one by one.
    outcome = _compare(tmp_path, bulk_calls, big_at=5)
    assert outcome[2] is True
    assert [p.payload for p in outcome[0][0]] == [b"first"] + [b"m%d" % i for i in range(5)]
    assert not any(name == "publish_many" for name, _, _ in bulk_calls)


def test_publish_many_is_publish_for_expiring_messages(tmp_path: Path) -> None:
    """Queue level: per-message TTL entries, a memory queue without consumers."""

    async def main() -> list[Any]:
        core, storage, server = await start(tmp_path)
        vhost = server.vhost
        states = []
        for bulk in (False, True):
            queue = vhost.declare_queue(f"q-{bulk}")[0]
            messages = [Message.build("", "k", b"b%d" % i, expiration_ms=(50000 if i % 2 else None))
                        for i in range(10)]
            if bulk:
                assert queue.publish_many(messages) == (10, None, None)
            else:
                for message in messages:
                    assert queue.publish(message) is True
            entries = []
            while (entry := queue.store.shift()) is not None:
                entries.append((entry.message.body, entry.expires_at is not None))
            states.append((entries, queue.publish_count, queue._expiry_timer is not None))
        await server.close()
        await storage.close()
        return states

    single, bulk = asyncio.run(main())
    assert single == bulk
    assert single[1] == 10
