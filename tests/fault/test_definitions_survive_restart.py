"""Durable definitions (vhosts, users, permissions, exchanges, queues, bindings) survive a
restart; transient ones do not, as in RabbitMQ."""

from __future__ import annotations

from pathlib import Path

import pika
import pika.exceptions
import pytest

from baedal import Broker

pytestmark = pytest.mark.timeout(60)


def _connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def test_durable_topology_users_and_permissions_come_back_after_restart(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        core = broker.core

        def setup() -> None:
            core.add_vhost("orders")
            core.add_user("alice", "s3cret", ["management"])
            core.set_permission("alice", "orders", "^alice\\.", ".*", ".*")
            core.set_permission("guest", "orders")

        broker.call(setup)
        url = broker.amqp_url.rstrip("/") + "/orders"
        connection = _connect(url)
        channel = connection.channel()
        channel.exchange_declare("events", "topic", durable=True)
        channel.exchange_declare("audit", "fanout", durable=True)
        channel.exchange_declare("scratch", "direct", durable=False)
        channel.queue_declare(
            "billing",
            durable=True,
            arguments={"x-max-length": 100, "x-dead-letter-exchange": "audit"},
        )
        channel.queue_declare("temporary", durable=False)
        channel.queue_bind("billing", "events", "invoice.*")
        channel.exchange_bind("audit", "events", "#")
        channel.queue_bind("billing", "audit")
        connection.close()

    with Broker(port=0, data_dir=tmp_path) as broker:
        snapshot = broker.call(
            lambda: {
                "vhosts": sorted(broker.core.vhosts),
                "users": sorted(broker.core.users),
                "alice_tags": broker.core.users["alice"].tags,
                "alice_perm": broker.core.permissions[("alice", "orders")].configure,
                "exchanges": sorted(
                    n
                    for n in broker.core.vhosts["orders"].exchanges
                    if not n.startswith("amq.") and n
                ),
                "queues": sorted(broker.core.vhosts["orders"].queues),
                "billing_args": broker.core.vhosts["orders"].queues["billing"].arguments,
            }
        )
        assert snapshot["vhosts"] == ["/", "orders"]
        assert snapshot["users"] == ["alice", "guest"]
        assert snapshot["alice_tags"] == ["management"]
        assert snapshot["alice_perm"] == "^alice\\."
        assert snapshot["exchanges"] == ["audit", "events"]  # 'scratch' was transient
        assert snapshot["queues"] == ["billing"]  # 'temporary' was transient
        assert snapshot["billing_args"] == {"x-max-length": 100, "x-dead-letter-exchange": "audit"}
        assert broker.core.authenticate("alice", "s3cret") is not None
        assert broker.core.authenticate("alice", "wrong") is None

        url = broker.amqp_url.rstrip("/") + "/orders"
        connection = _connect(url)
        channel = connection.channel()
        channel.confirm_delivery()
        # queue binding and the exchange-to-exchange binding both route again
        channel.basic_publish(
            "events", "invoice.paid", b"direct", pika.BasicProperties(delivery_mode=2)
        )
        channel.basic_publish(
            "events", "other.thing", b"via e2e", pika.BasicProperties(delivery_mode=2)
        )
        bodies = []
        while True:
            method, _props, body = channel.basic_get("billing", auto_ack=True)
            if method is None:
                break
            bodies.append(body)
        # one copy per queue even when two binding paths reach it (as RabbitMQ)
        assert sorted(bodies) == [b"direct", b"via e2e"]
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            connection.channel().queue_declare("temporary", passive=True)
        assert info.value.reply_code == 404
        connection.close()


def test_deleting_a_durable_queue_removes_it_and_its_messages_for_good(tmp_path: Path) -> None:
    with Broker(port=0, data_dir=tmp_path) as broker:
        connection = _connect(broker.amqp_url)
        channel = connection.channel()
        channel.confirm_delivery()
        channel.queue_declare("gone", durable=True)
        channel.basic_publish("", "gone", b"x", pika.BasicProperties(delivery_mode=2))
        channel.queue_delete("gone")
        connection.close()
    with Broker(port=0, data_dir=tmp_path) as broker:
        assert broker.call(lambda: "gone" not in broker.core.vhosts["/"].queues)
        assert not any((tmp_path / "queues").iterdir())
