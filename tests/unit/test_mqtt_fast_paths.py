"""The MQTT listener's fast paths keep the general paths' meaning.

* A PUBLISH without properties becomes a message with lazy fields and a shared
  extension: its record, its headers (``x-mqtt-publish-qos``) and its extension read back
  as those of the general ``message_from_publish``.
* The PUBACKs of one read of a persistent session wait for one fsync that covers them
  all (the syncer's job count moved before any PUBACK was written), and leave in one
  write, in PUBLISH order.
* Deliveries are the bytes the codec's general ``encode`` makes.

A real in-process broker core with the real storage engine; the connections sit on a
transport that records what the broker writes (no sockets)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from baedal.app import _open_storage
from baedal.config import Settings
from baedal.core.broker import BrokerConfig, BrokerCore
from baedal.core.message import Message
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
from baedal.protocols.mqtt.retained import RetainedStore
from baedal.protocols.mqtt.server import (
    MQTTConfig,
    MQTTConnection,
    MQTTExtension,
    MQTTServer,
    message_from_publish,
)
from baedal.protocols.mqtt.sessionstate import SessionStateStore
from baedal.storage.record import decode_record, encode_record


class RecordingTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = False

    def get_extra_info(self, name: str) -> Any:
        return ("127.0.0.1", 40000) if name in ("peername", "sockname") else None

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass

    def get_write_buffer_size(self) -> int:
        return 0

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True

    abort = close


async def start(tmp_path: Path) -> tuple[BrokerCore, Any, MQTTServer]:
    core = BrokerCore(BrokerConfig(data_dir=tmp_path), asyncio.get_running_loop())
    storage = _open_storage(core, Settings(data_dir=tmp_path), lambda *args: None)
    retained = RetainedStore(tmp_path / "mqtt" / "retained.jsonl", storage.syncer)
    retained.open()
    state = SessionStateStore(tmp_path / "mqtt" / "sessions.jsonl", storage.syncer)
    state.open()
    return core, storage, MQTTServer(core, MQTTConfig(allow_anonymous=True), retained, state)


def connection(server: MQTTServer, client_id: str, persistent: bool) -> tuple[MQTTConnection, RecordingTransport]:
    transport = RecordingTransport()
    conn = MQTTConnection(server)
    conn.connection_made(transport)  # type: ignore[arg-type]
    conn.data_received(encode(Connect(client_id, clean_start=not persistent, keep_alive=0)))
    assert transport.writes and transport.writes[-1][0] >> 4 == codec.CONNACK
    transport.writes.clear()
    return conn, transport


def test_plain_publish_message_reads_back_as_the_general_one(tmp_path: Path) -> None:
    async def main() -> None:
        core, storage, server = await start(tmp_path)
        conn, _ = connection(server, "fast-publisher", persistent=True)
        for qos, retain in ((1, False), (1, True), (0, False), (2, False)):
            packet = Publish("a/b.c", b"payload", qos, retain, False, 7 if qos else None)
            fast = conn.plain_extension(qos, retain)
            assert conn.plain_extension(qos, retain) is fast  # shared per connection
            general = message_from_publish(packet, "a/b.c", "fast-publisher")
            message = Message("amq.topic", "a.b/c", b"payload", qos > 0, 0, None, general.published_at, fast)
            assert message.headers == general.headers == {"x-mqtt-publish-qos": qos}
            assert message.fields() == general.fields()
            for original in (message, general):
                back, _ = decode_record(encode_record(original, None))
                assert back.headers == {"x-mqtt-publish-qos": qos}
                assert back.content_type is None and back.correlation_id is None
                extension = back.extension
                assert isinstance(extension, MQTTExtension)
                assert (extension.qos, extension.retain, extension.client_id) == (qos, retain, "fast-publisher")
            assert encode_record(message, None) == encode_record(general, None)
        await server.close()
        await storage.close()

    asyncio.run(main())


def test_pubacks_of_one_read_wait_for_one_fsync_and_leave_in_one_write(tmp_path: Path) -> None:
    async def main() -> None:
        core, storage, server = await start(tmp_path)
        subscriber, _ = connection(server, "fast-sub", persistent=True)
        subscriber.data_received(encode(Subscribe(1, [Subscription("t/#", 1)])))
        publisher, out = connection(server, "fast-pub", persistent=True)
        await storage.syncer.synced()
        jobs = storage.syncer.fsync_jobs
        ids = list(range(1, 101))
        publisher.data_received(b"".join(encode(Publish("t/x", b"m%d" % i, 1, packet_id=i)) for i in ids))
        assert out.writes == []  # nothing is acknowledged before the fsync
        for _ in range(500):
            if out.writes:
                break
            await asyncio.sleep(0.01)
        assert storage.syncer.fsync_jobs > jobs
        assert len(out.writes) == 1  # one write for the whole read
        acks = Parser(version=4).feed(out.writes[0])
        assert acks == [Ack(codec.PUBACK, i) for i in ids]
        await server.close()
        await storage.close()

    asyncio.run(main())


def test_delivery_bytes_are_what_the_general_encoder_makes(tmp_path: Path) -> None:
    async def main() -> None:
        core, storage, server = await start(tmp_path)
        subscriber, received = connection(server, "bytes-sub", persistent=False)
        subscriber.data_received(encode(Subscribe(1, [Subscription("d/#", 1)])))
        received.writes.clear()
        publisher, _ = connection(server, "bytes-pub", persistent=False)
        body = b"x" * 300  # a remaining length of two bytes
        publisher.data_received(encode(Publish("d/one", b"small", 1, packet_id=5))
                                + encode(Publish("d/two", body, 0)))
        await asyncio.sleep(0)
        data = b"".join(received.writes)
        assert data == (encode(Publish("d/one", b"small", 1, False, False, 1))
                        + encode(Publish("d/two", body, 0)))
        await server.close()
        await storage.close()

    asyncio.run(main())


def _pubacks_outcome(tmp_path: Path, general: bool, ids: list[int]) -> tuple[Any, ...]:
    """A subscriber (in-flight window 3) of six QoS 1 messages on d/1 and one QoS 2 on
    d/2 (packet id 4) acknowledges ``ids`` in one read: through ``_received``'s inline
    PUBACK path, or (``general``) packet by packet through ``dispatch``/``on_ack``."""

    async def main() -> tuple[Any, ...]:
        core, storage, server = await start(tmp_path)
        server.config.max_inflight = 4
        subscriber, received = connection(server, "ack-sub", persistent=True)
        subscriber.data_received(encode(Subscribe(1, [Subscription("d/2", 2)])))
        publisher, _ = connection(server, "ack-pub", persistent=True)
        publisher.data_received(encode(Publish("d/2", b"two", 2, packet_id=1)))
        subscriber.data_received(encode(Subscribe(2, [Subscription("d/1", 1)])))
        publisher.data_received(b"".join(encode(Publish("d/1", b"m%d" % i, 1, packet_id=10 + i))
                                         for i in range(6)))
        await storage.syncer.synced()
        await asyncio.sleep(0)
        received.writes.clear()
        if general:
            subscriber._in_read = True
            for packet_id in ids:
                subscriber._dispatch_safely(Ack(codec.PUBACK, packet_id))
            subscriber.data_received(b"")  # the end-of-read drain
        else:
            subscriber.data_received(b"".join(encode(Ack(codec.PUBACK, i)) for i in ids))
        await asyncio.sleep(0)
        queue = server.vhost.queues["mqtt-subscription-ack-subqos1"]
        outcome = (b"".join(received.writes), subscriber.closed, sorted(subscriber.session_inflight()),
                   queue.unacked_count, queue.ack_count, queue.message_count)
        await server.close()
        await storage.close()
        return outcome

    return asyncio.run(main())


def test_inline_pubacks_do_what_on_ack_does(tmp_path: Path) -> None:
    # in flight before: 1 (QoS 2, d/2), 2 3 4 (QoS 1, d/1); 3 more QoS 1 messages queued
    cases = [
        [2, 3],  # two acks: two more deliveries, in one drain
        [2, 99, 2, 3, 4],  # an unknown id and a repeated one are ignored
        [2, 1, 3],  # a PUBACK for a QoS 2 delivery: protocol error, closed
    ]
    for n, ids in enumerate(cases):
        fast = _pubacks_outcome(tmp_path / f"fast{n}", False, ids)
        general = _pubacks_outcome(tmp_path / f"general{n}", True, ids)
        assert fast == general, ids
    # and the cases do what they say
    assert _pubacks_outcome(tmp_path / "check", False, [2, 3])[2] == [1, 4, 5, 6]
    assert _pubacks_outcome(tmp_path / "closed", False, [2, 1, 3])[1] is True
