"""MQTT QoS 1 through a persistent session with a subscriber that keeps up: no message is
written or fsynced, and each run's PUBACKs go as soon as the subscriber has acked that
run (storage/syncer.py, "Holding a job" and "Early release"; protocols/mqtt/server.py,
``_RUN_MAX``).  A subscriber that does not ack gets every message written and fsynced
before the publisher's PUBACK, as before."""

from __future__ import annotations

import asyncio
from pathlib import Path

from test_mqtt_fast_paths import RecordingTransport, connection, start

from baedal.protocols.mqtt import codec
from baedal.protocols.mqtt.codec import Ack, Parser, Publish, Subscribe, Subscription, encode
from baedal.protocols.mqtt.server import _RUN_MAX, MQTTConnection


def _packets(transport: RecordingTransport) -> list[object]:
    data = b"".join(transport.writes)
    transport.writes.clear()
    return Parser(version=4).feed(data)


def _ack(conn: MQTTConnection, packets: list[object]) -> None:
    ids = [p.packet_id for p in packets if isinstance(p, Publish)]
    conn.data_received(b"".join(encode(Ack(codec.PUBACK, i)) for i in ids))


async def _turns(count: int = 5) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def test_a_subscriber_that_keeps_up_means_no_write_no_fsync_and_pubacks_per_run(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        core, storage, server = await start(tmp_path)
        storage.syncer.hold = 10.0  # only settles may end a hold in this test
        sub, sub_out = connection(server, "sub", persistent=True)
        sub.data_received(encode(Subscribe(1, [Subscription("t/x", 1)])))
        pub, pub_out = connection(server, "pub", persistent=True)
        pub.data_received(encode(Publish("t/x", b"first", 1, packet_id=1)))  # fills the topic cache
        await _turns()
        _ack(sub, _packets(sub_out))
        await storage.syncer.synced()
        _packets(pub_out)
        store = next(s for key, s in storage.stores.items() if key[1].startswith("mqtt-"))
        fsyncs, written = storage.syncer.fsync_jobs, store.deferred_written

        count = 2 * _RUN_MAX + 10
        pub.data_received(b"".join(
            encode(Publish("t/x", b"m%d" % i, 1, packet_id=100 + i)) for i in range(count)
        ))
        await _turns()
        delivered = _packets(sub_out)
        assert [p.payload for p in delivered] == [b"m%d" % i for i in range(count)]
        assert _packets(pub_out) == []  # no PUBACK before the subscriber's or an fsync

        _ack(sub, delivered[:_RUN_MAX])  # the first run acked: its PUBACKs go at once
        await _turns()
        assert _packets(pub_out) == [Ack(codec.PUBACK, 100 + i) for i in range(_RUN_MAX)]
        assert storage.syncer.holding and storage.syncer.released_early >= 1  # before the job
        _ack(sub, delivered[_RUN_MAX:])
        await _turns()
        assert _packets(pub_out) == [Ack(codec.PUBACK, 100 + i) for i in range(_RUN_MAX, count)]
        assert storage.syncer.fsync_jobs == fsyncs  # nothing to fsync...
        assert store.deferred_written == written  # ...because nothing was written
        await server.close()
        await storage.close()

    asyncio.run(main())


def test_a_subscriber_that_does_not_ack_gets_every_message_written_before_the_puback(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        core, storage, server = await start(tmp_path)
        storage.syncer.hold = 0.01
        sub, sub_out = connection(server, "sub", persistent=True)
        sub.data_received(encode(Subscribe(1, [Subscription("t/x", 1)])))
        pub, pub_out = connection(server, "pub", persistent=True)
        pub.data_received(encode(Publish("t/x", b"first", 1, packet_id=1)))
        pub.data_received(b"".join(
            encode(Publish("t/x", b"m%d" % i, 1, packet_id=100 + i)) for i in range(50)
        ))
        store = next(s for key, s in storage.stores.items() if key[1].startswith("mqtt-"))
        for _ in range(200):
            if len(_acks := Parser(version=4).feed(b"".join(pub_out.writes))) == 51:
                break
            await asyncio.sleep(0.01)
        assert _acks == [Ack(codec.PUBACK, 1)] + [Ack(codec.PUBACK, 100 + i) for i in range(50)]
        assert store.deferred_written == 51  # every one on disk before its PUBACK
        assert storage.syncer.fsync_jobs >= 1 and storage.syncer.released_early == 0
        delivered = [p for p in _packets(sub_out) if isinstance(p, Publish)]
        assert len(delivered) == 51  # delivered, still unacked
        await server.close()
        await storage.close()

    asyncio.run(main())
