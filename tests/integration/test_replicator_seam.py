"""The clustering seam (cluster/replicator.py) sees every append and every settle of a
durable queue, with the reason, and a confirm waits for the replicator's handle.

A spy replicator stands in for the future etcd-backed one; the broker is real and is
driven with pika, a raw AMQP client and HTTP.
"""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pika.exceptions
import pytest
import requests
from rawamqp import FRAME_BODY, FRAME_HEADER, connect, frame, method_frame, shortstr

from baedal import Broker
from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(60)

PERSISTENT = pika.BasicProperties(delivery_mode=2)


class SpyReplicator:
    """Records every call; with ``hold`` set, ``appended`` returns a pending future."""

    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.hold = False
        self.handles: list[asyncio.Future[None]] = []

    def appended(self, queue: Any, entry: Any) -> asyncio.Future[None] | None:
        self.events.append(("appended", queue.name, entry.position))
        if not self.hold:
            return None
        handle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handles.append(handle)
        return handle

    def appended_records(
        self, stream: Any, base_offset: int, last_offset: int
    ) -> asyncio.Future[None] | None:
        self.events.append(("appended_records", stream.name, base_offset, last_offset))
        if not self.hold:
            return None
        handle: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.handles.append(handle)
        return handle

    def settled(self, queue: Any, entry: Any, reason: str) -> None:
        self.events.append(("settled", queue.name, reason))

    def cleared(self, queue: Any, reason: str, count: int) -> None:
        self.events.append(("cleared", queue.name, reason, count))

    def of(self, *queues: str) -> list[tuple[Any, ...]]:
        return [e for e in self.events if e[1] in queues]


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    with Broker(port=0, http_port=0, data_dir=tmp_path) as running:
        yield running


@pytest.fixture
def spy(broker: Broker) -> SpyReplicator:
    replicator = SpyReplicator()
    broker.call(lambda: setattr(broker.core, "replicator", replicator))
    return replicator


@pytest.fixture
def channel(broker: Broker) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
    try:
        yield connection.channel()
    finally:
        if connection.is_open:
            connection.close()


def kinds(events: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    """Events without entry positions (those are checked separately)."""
    return [e[:2] if e[0] == "appended" else e for e in events]


# --- every settle, with its reason ----------------------------------------------------------


def test_appends_and_acks_of_durable_queues_are_seen_but_not_transient_queues(spy, channel):
    channel.confirm_delivery()
    channel.queue_declare("replicated", durable=True)
    transient = channel.queue_declare("", exclusive=True).method.queue
    for body in (b"1", b"2"):
        channel.basic_publish("", "replicated", body, PERSISTENT)
        channel.basic_publish("", transient, body, PERSISTENT)
    method, _, _ = channel.basic_get("replicated")
    channel.basic_ack(method.delivery_tag)
    channel.basic_get(transient, auto_ack=True)
    channel.queue_delete("replicated")
    assert kinds(spy.events) == [
        ("appended", "replicated"),
        ("appended", "replicated"),
        ("settled", "replicated", "acked"),
        ("cleared", "replicated", "deleted", 1),
    ]
    positions = [e[2] for e in spy.events if e[0] == "appended"]
    assert positions == sorted(positions) and len(set(positions)) == 2


def test_no_ack_deliveries_are_settled_as_auto_acked(spy, channel):
    channel.queue_declare("auto", durable=True)
    channel.basic_publish("", "auto", b"1", PERSISTENT)
    channel.basic_publish("", "auto", b"2", PERSISTENT)
    assert channel.basic_get("auto", auto_ack=True)[2] == b"1"
    received = []
    channel.basic_consume("auto", lambda _c, _m, _p, body: received.append(body), auto_ack=True)
    channel.connection.process_data_events(time_limit=0)
    wait_until(lambda: channel.connection.process_data_events(0.05) or received, what="delivery")
    assert kinds(spy.of("auto"))[2:] == [
        ("settled", "auto", "auto_acked"),
        ("settled", "auto", "auto_acked"),
    ]


def test_reject_without_requeue_is_settled_as_rejected_and_with_requeue_is_not(spy, channel):
    channel.queue_declare("rejects", durable=True)
    channel.basic_publish("", "rejects", b"1", PERSISTENT)
    method, _, _ = channel.basic_get("rejects")
    channel.basic_reject(method.delivery_tag, requeue=True)
    method, _, _ = channel.basic_get("rejects")
    channel.basic_nack(method.delivery_tag, requeue=False)
    channel.queue_declare("rejects", passive=True)  # a round trip: the nack is handled
    assert kinds(spy.of("rejects")) == [
        ("appended", "rejects"),
        ("settled", "rejects", "rejected"),
    ]


def test_expired_messages_are_settled_as_expired_without_any_client(spy, channel):
    channel.queue_declare("ttl", durable=True)
    channel.basic_publish(
        "", "ttl", b"short", pika.BasicProperties(delivery_mode=2, expiration="20")
    )
    wait_until(lambda: ("settled", "ttl", "expired") in spy.events, what="expiry reported")


def test_max_length_drops_are_settled_as_maxlen(spy, channel):
    channel.queue_declare("bounded", durable=True, arguments={"x-max-length": 1})
    channel.basic_publish("", "bounded", b"old", PERSISTENT)
    channel.basic_publish("", "bounded", b"new", PERSISTENT)
    channel.queue_declare("bounded", durable=True, arguments={"x-max-length": 1})
    assert kinds(spy.of("bounded")) == [
        ("appended", "bounded"),
        ("appended", "bounded"),
        ("settled", "bounded", "maxlen"),
    ]


def test_delivery_limit_drops_are_settled_as_delivery_limit(spy, channel):
    arguments = {"x-queue-type": "quorum", "x-delivery-limit": 0}
    channel.queue_declare("limited", durable=True, arguments=arguments)
    channel.basic_publish("", "limited", b"poison", PERSISTENT)
    method, _, _ = channel.basic_get("limited")
    channel.basic_reject(method.delivery_tag, requeue=True)
    assert channel.basic_get("limited") == (None, None, None)
    assert kinds(spy.of("limited")) == [
        ("appended", "limited"),
        ("settled", "limited", "delivery_limit"),
    ]


def test_a_dead_lettered_copy_is_appended_before_the_original_is_settled(spy, channel):
    channel.queue_declare("graveyard", durable=True)
    channel.queue_declare(
        "mortal",
        durable=True,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": "graveyard"},
    )
    channel.basic_publish("", "mortal", b"m", PERSISTENT)
    method, _, _ = channel.basic_get("mortal")
    channel.basic_reject(method.delivery_tag, requeue=False)
    assert channel.basic_get("graveyard", auto_ack=True)[2] == b"m"
    assert kinds(spy.of("mortal", "graveyard")) == [
        ("appended", "mortal"),
        ("appended", "graveyard"),
        ("settled", "mortal", "rejected"),
        ("settled", "graveyard", "auto_acked"),
    ]


def test_purge_and_delete_are_reported_once_with_the_count(spy, channel):
    channel.queue_declare("purged", durable=True)
    for i in range(3):
        channel.basic_publish("", "purged", b"%d" % i, PERSISTENT)
    assert channel.queue_purge("purged").method.message_count == 3
    channel.basic_publish("", "purged", b"again", PERSISTENT)
    channel.basic_publish("", "purged", b"again", PERSISTENT)
    assert channel.queue_delete("purged").method.message_count == 2
    assert kinds(spy.of("purged")) == [("appended", "purged")] * 3 + [
        ("cleared", "purged", "purged", 3)
    ] + [("appended", "purged")] * 2 + [("cleared", "purged", "deleted", 2)]


# --- confirms wait for the replicator's handle ------------------------------------------------


def _synced_after_now(broker: Broker) -> threading.Event:
    """Set once an fsync covering everything written so far has completed (after_sync
    callbacks run in order, so the channel's own sync callback has run by then)."""
    done = threading.Event()
    broker.call(lambda: broker.core.after_sync(done.set))
    return done


def _release(broker: Broker, spy: SpyReplicator, error: BaseException | None = None) -> None:
    def run() -> None:
        for handle in spy.handles:
            if error is None:
                handle.set_result(None)
            else:
                handle.set_exception(error)

    broker.call(run)


def _raw_confirming_publisher(broker: Broker) -> Any:
    client = connect("127.0.0.1", broker.port)
    client.open_channel(1)
    client.send(method_frame(1, 85, 10, b"\x00"))  # confirm.select
    client.read_method((85, 11))
    return client


def _raw_persistent_publish(client: Any, exchange: str, routing_key: str, body: bytes) -> None:
    publish = struct.pack("!H", 0) + shortstr(exchange) + shortstr(routing_key) + b"\x00"
    header = struct.pack("!HHQH", 60, 0, len(body), 0x1000) + b"\x02"  # delivery-mode 2
    client.send(
        method_frame(1, 60, 40, publish)
        + frame(FRAME_HEADER, 1, header)
        + frame(FRAME_BODY, 1, body)
    )


def _assert_no_frame(client: Any) -> None:
    client.sock.settimeout(0.5)
    with pytest.raises(socket.timeout):
        client.read_frame()
    client.sock.settimeout(10)


def test_a_confirm_waits_for_the_replication_handle_after_the_fsync(broker, spy, channel):
    channel.queue_declare("held", durable=True)
    spy.hold = True
    client = _raw_confirming_publisher(broker)
    try:
        _raw_persistent_publish(client, "", "held", b"held")
        wait_until(lambda: spy.handles, what="the append reached the replicator")
        assert _synced_after_now(broker).wait(10), "fsync"
        _assert_no_frame(client)  # fsynced, but not replicated: no basic.ack yet
        _release(broker, spy)
        ack = client.read_method((60, 80))
        delivery_tag, multiple = struct.unpack("!QB", ack.payload[4:13])
        assert (delivery_tag, multiple) == (1, 0)
    finally:
        client.close()


def test_a_fanned_out_publish_is_confirmed_once_every_queue_has_replicated(broker, spy, channel):
    channel.exchange_declare("fan", "fanout")
    for queue in ("left", "right"):
        channel.queue_declare(queue, durable=True)
        channel.queue_bind(queue, "fan")
    spy.hold = True
    client = _raw_confirming_publisher(broker)
    try:
        _raw_persistent_publish(client, "fan", "", b"both")
        wait_until(lambda: len(spy.handles) == 2, what="both appends reached the replicator")
        assert _synced_after_now(broker).wait(10), "fsync"
        broker.call(lambda: spy.handles[0].set_result(None))
        _assert_no_frame(client)  # one queue of two replicated: still no ack
        broker.call(lambda: spy.handles[1].set_result(None))
        ack = client.read_method((60, 80))
        assert struct.unpack("!QB", ack.payload[4:13]) == (1, 0)
    finally:
        client.close()


def test_a_failed_replication_is_a_nack(broker, spy, channel):
    spy.hold = True
    channel.confirm_delivery()
    channel.queue_declare("lost", durable=True)
    outcome: dict[str, BaseException | None] = {}

    def publish() -> None:
        try:
            channel.basic_publish("", "lost", b"x", PERSISTENT)
            outcome["error"] = None
        except pika.exceptions.NackError as exc:
            outcome["error"] = exc

    def fail_when_held() -> None:
        wait_until(lambda: spy.handles, what="the append reached the replicator")
        _release(broker, spy, RuntimeError("quorum lost"))

    # pika's blocking channel stays on this thread (waiting inside basic_publish for
    # the confirm); the replicator's answer comes from another.
    failer = threading.Thread(target=fail_when_held)
    failer.start()
    publish()
    failer.join(10)
    assert isinstance(outcome["error"], pika.exceptions.NackError)


def test_tx_commit_waits_for_the_replication_handle(broker, spy, channel):
    spy.hold = True
    channel.queue_declare("tx", durable=True)
    channel.tx_select()
    channel.basic_publish("", "tx", b"in-tx", PERSISTENT)
    seen: dict[str, bool] = {}

    def release_when_held() -> None:
        wait_until(lambda: spy.handles, what="commit routed the message")
        seen["synced"] = _synced_after_now(broker).wait(10)
        seen["committed_before_release"] = committed
        _release(broker, spy)

    committed = False
    releaser = threading.Thread(target=release_when_held)
    releaser.start()
    channel.tx_commit()  # returns only once commit-ok arrived
    committed = True
    releaser.join(10)
    assert seen == {"synced": True, "committed_before_release": False}


def test_an_http_publish_answers_only_once_replicated(broker, spy):
    spy.hold = True
    base = broker.http_url
    assert requests.put(f"{base}/api/queues/%2F/web", json={"durable": True}, auth=("guest", "guest")).status_code == 201
    answer: dict[str, Any] = {}

    def publish() -> None:
        answer["response"] = requests.post(
            f"{base}/api/rest/%2F/queues/web/messages",
            data=json.dumps({"payload": "w"}),
            headers={"Content-Type": "application/vnd.baedal.envelope+json"},
            auth=("guest", "guest"),
            timeout=10,
        )

    worker = threading.Thread(target=publish)
    worker.start()
    wait_until(lambda: spy.handles, what="the append reached the replicator")
    assert _synced_after_now(broker).wait(10)
    worker.join(0.3)
    assert worker.is_alive() and "response" not in answer
    _release(broker, spy)
    worker.join(10)
    assert answer["response"].status_code == 201


# --- streams: one call per appended batch, confirms and readers wait for its handle ---------

STREAM = {"x-queue-type": "stream"}


def test_a_stream_reports_each_appended_batch_with_contiguous_offsets(broker, spy, channel):
    channel.queue_declare("batched", durable=True, arguments=STREAM)
    client = _raw_confirming_publisher(broker)
    try:
        # Twenty publishes in one write: one read, one loop turn, so far fewer batches
        # than records (one per turn is the point of batching).
        publish = b""
        for i in range(20):
            body = b"%d" % i
            publish += (
                method_frame(1, 60, 40, struct.pack("!H", 0) + shortstr("") + shortstr("batched") + b"\x00")
                + frame(FRAME_HEADER, 1, struct.pack("!HHQH", 60, 0, len(body), 0x1000) + b"\x02")
                + frame(FRAME_BODY, 1, body)
            )
        client.sock.sendall(publish)
        acked = 0
        while acked < 20:
            ack = client.read_method((60, 80))
            tag, multiple = struct.unpack("!QB", ack.payload[4:13])
            acked = tag if multiple else acked + 1
    finally:
        client.close()
    batches = [e[2:] for e in spy.of("batched") if e[0] == "appended_records"]
    assert batches[0][0] == 0 and batches[-1][1] == 19
    assert all(later[0] == earlier[1] + 1 for earlier, later in zip(batches, batches[1:], strict=False))
    assert len(batches) < 20, batches


def test_a_stream_confirm_and_its_readers_wait_for_the_replication_handle(broker, spy, channel):
    channel.queue_declare("held-stream", durable=True, arguments=STREAM)
    spy.hold = True
    client = _raw_confirming_publisher(broker)

    def committed() -> int:
        return broker.call(lambda: broker.core.vhosts["/"].queues["held-stream"].committed_offset)

    try:
        _raw_persistent_publish(client, "", "held-stream", b"held")
        wait_until(lambda: spy.handles, what="the batch reached the replicator")
        assert _synced_after_now(broker).wait(10), "fsync"
        _assert_no_frame(client)  # fsynced, but not replicated: no basic.ack yet
        assert committed() == 0  # and no reader may see it
        _release(broker, spy)
        ack = client.read_method((60, 80))
        assert struct.unpack("!QB", ack.payload[4:13]) == (1, 0)
        assert committed() == 1
    finally:
        client.close()
    assert [e for e in spy.of("held-stream") if e[0] == "appended_records"] == [
        ("appended_records", "held-stream", 0, 0)
    ]


def test_a_failed_stream_replication_is_a_nack(broker, spy, channel):
    channel.queue_declare("lost-stream", durable=True, arguments=STREAM)
    spy.hold = True
    client = _raw_confirming_publisher(broker)
    try:
        _raw_persistent_publish(client, "", "lost-stream", b"x")
        wait_until(lambda: spy.handles, what="the batch reached the replicator")
        _release(broker, spy, RuntimeError("quorum lost"))
        nack = client.read_method((60, 120))
        assert struct.unpack("!Q", nack.payload[4:12]) == (1,)
    finally:
        client.close()


def test_stream_retention_is_reported_as_cleared(spy, channel):
    channel.confirm_delivery()
    channel.queue_declare(
        "retained",
        durable=True,
        arguments={
            **STREAM,
            "x-max-length-bytes": 3000,
            "x-stream-max-segment-size-bytes": 1000,
        },
    )
    for _ in range(40):
        channel.basic_publish("", "retained", b"x" * 200, PERSISTENT)
    cleared = [e for e in spy.of("retained") if e[0] == "cleared"]
    assert cleared, spy.of("retained")
    assert all(e[2] == "retention" and e[3] > 0 for e in cleared)
    appended = sum(e[3] - e[2] + 1 for e in spy.of("retained") if e[0] == "appended_records")
    assert appended == 40
    assert channel.queue_declare("retained", passive=True).method.message_count == 40 - sum(
        e[3] for e in cleared
    )
