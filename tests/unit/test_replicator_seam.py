"""The clustering seam is called on every durable append and settle (a spy stands in
for the future etcd-backed replicator)."""

from __future__ import annotations

from pathlib import Path

import pika

from baedal import Broker


class SpyReplicator:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, int]] = []

    def appended(self, queue, entry) -> None:
        self.events.append(("appended", queue.name, entry.position))

    def settled(self, queue, entry, reason) -> None:
        self.events.append(("settled", queue.name, entry.position))

    def cleared(self, queue, reason, count) -> None:
        self.events.append((reason, queue.name, count))


def test_replicator_sees_every_durable_append_and_ack_but_not_transient_queues(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        spy = SpyReplicator()
        broker.call(lambda: setattr(broker.core, "replicator", spy))
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("replicated", durable=True)
        channel.queue_declare("", exclusive=True)
        channel.basic_publish("", "replicated", b"1", pika.BasicProperties(delivery_mode=2))
        channel.basic_publish("", "replicated", b"2", pika.BasicProperties(delivery_mode=2))
        method, _, _ = channel.basic_get("replicated")
        channel.basic_ack(method.delivery_tag)
        channel.queue_delete("replicated")
        connection.close()
    kinds = [(kind, name) for kind, name, _ in spy.events]
    assert kinds == [
        ("appended", "replicated"),
        ("appended", "replicated"),
        ("settled", "replicated"),
        ("deleted", "replicated"),
    ]
    assert spy.events[-1] == ("deleted", "replicated", 1)
    appended = [pos for kind, _, pos in spy.events if kind == "appended"]
    assert appended == sorted(appended) and len(set(appended)) == 2
