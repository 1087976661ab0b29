"""What policies, operator policies and topic permissions do to real traffic (pika).

Every test runs against Baedal and, with ``BAEDAL_TEST_AMQP_URL`` set, against RabbitMQ
3.10.8: there policies, users and topic permissions are set with ``rabbitmqctl`` under
names unique to the test and removed afterwards.  On Baedal the same calls go to the
core on the broker's loop (the HTTP API is tested in tests/http/test_policies.py).

RabbitMQ applies a policy change to running queues asynchronously, so counts are polled.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable, Iterator
from typing import Any

import pika
import pika.exceptions
import pytest

from baedal_testing import wait_until

EXTERNAL_URL = os.environ.get("BAEDAL_TEST_AMQP_URL")


class Admin:
    """set/clear policies, users and topic permissions on whichever broker runs."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.undo: list[Callable[[], None]] = []

    def _ctl(self, *args: str) -> None:
        result = subprocess.run(["rabbitmqctl", *args], capture_output=True, text=True, timeout=60)
        assert result.returncode == 0, result.stdout + result.stderr

    def _core(self, fn: Callable[[Any], Any]) -> Any:
        return self.broker.call(lambda: fn(self.broker.core))

    def set_policy(
        self,
        name: str,
        pattern: str,
        definition: dict[str, Any],
        *,
        priority: int = 0,
        apply_to: str = "all",
        operator: bool = False,
    ) -> None:
        word = "operator_policy" if operator else "policy"
        if EXTERNAL_URL:
            self._ctl(
                f"set_{word}",
                "--priority",
                str(priority),
                "--apply-to",
                apply_to,
                name,
                pattern,
                json.dumps(definition),
            )
            self.undo.append(lambda: self._ctl(f"clear_{word}", name))
            return
        from baedal.core.policy import Policy

        policy = Policy(
            "/", name, pattern, definition, apply_to=apply_to, priority=priority, operator=operator
        )
        self._core(lambda core: core.vhosts["/"].set_policy(policy))

    def clear_policy(self, name: str, *, operator: bool = False) -> None:
        if EXTERNAL_URL:
            word = "operator_policy" if operator else "policy"
            self._ctl(f"clear_{word}", name)  # the cleanup's second clear fails harmlessly
            return
        self._core(lambda core: core.vhosts["/"].clear_policy(name, operator))

    def add_user(self, name: str, password: str) -> None:
        if EXTERNAL_URL:
            self._ctl("add_user", name, password)
            self.undo.append(lambda: self._ctl("delete_user", name))
            self._ctl("set_permissions", "-p", "/", name, ".*", ".*", ".*")
            return

        def add(core: Any) -> None:
            core.add_user(name, password, [])
            core.set_permission(name, "/")

        self._core(add)

    def set_topic_permissions(self, user: str, exchange: str, write: str, read: str) -> None:
        if EXTERNAL_URL:
            self._ctl("set_topic_permissions", "-p", "/", user, exchange, write, read)
            return
        self._core(lambda core: core.set_topic_permission(user, "/", exchange, write, read))

    def cleanup(self) -> None:
        for undo in reversed(self.undo):
            try:
                undo()
            except AssertionError:
                pass
        if not EXTERNAL_URL:

            def clear(core: Any) -> None:
                vhost = core.vhosts["/"]
                for name in list(vhost.policies):
                    vhost.clear_policy(name)
                for name in list(vhost.operator_policies):
                    vhost.clear_policy(name, True)

            self._core(clear)


@pytest.fixture
def admin(session_broker: Any) -> Iterator[Admin]:
    helper = Admin(session_broker)
    yield helper
    helper.cleanup()


@pytest.fixture
def channel(amqp_url: str) -> Iterator[Any]:
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    yield connection.channel()
    if connection.is_open:
        connection.close()


def count(channel: Any, queue: str) -> int:
    return channel.queue_declare(queue, passive=True).method.message_count


def wait_count(channel: Any, queue: str, expected: int) -> None:
    wait_until(lambda: count(channel, queue) == expected, what=f"{queue} holds {expected}")


def bodies(channel: Any, queue: str) -> list[bytes]:
    out = []
    while True:
        method, _props, body = channel.basic_get(queue, auto_ack=True)
        if method is None:
            return out
        out.append(body)


def publish(channel: Any, queue: str, n: int, start: int = 0) -> None:
    for i in range(start, start + n):
        channel.basic_publish("", queue, str(i).encode())


def pattern_for(prefix: str) -> str:
    return "^" + re.escape(prefix)


def test_max_length_applies_to_an_existing_and_a_new_queue(
    admin: Admin, channel: Any, unique: Any
) -> None:
    prefix = unique("pol-len")
    old = prefix + ".old"
    channel.queue_declare(old, auto_delete=False)
    publish(channel, old, 6)
    wait_count(channel, old, 6)
    admin.set_policy(unique("p"), pattern_for(prefix), {"max-length": 3}, apply_to="queues")
    wait_count(channel, old, 3)  # drop-head at once: the oldest went
    assert bodies(channel, old) == [b"3", b"4", b"5"]
    new = prefix + ".new"
    channel.queue_declare(new)
    publish(channel, new, 5)
    wait_count(channel, new, 3)
    assert bodies(channel, new) == [b"2", b"3", b"4"]
    channel.queue_delete(old)
    channel.queue_delete(new)


def test_message_ttl_and_dead_lettering_from_a_policy(
    admin: Admin, channel: Any, unique: Any
) -> None:
    prefix = unique("pol-ttl")
    work, dead = prefix + ".work", unique("pol-dead")
    channel.queue_declare(work)
    channel.queue_declare(dead)
    admin.set_policy(
        unique("p"),
        pattern_for(prefix),
        {"message-ttl": 50, "dead-letter-exchange": "", "dead-letter-routing-key": dead},
        apply_to="queues",
    )

    # the policy reaches the queue asynchronously on RabbitMQ: publish until one dies
    def died() -> bool:
        publish(channel, work, 1)
        return count(channel, dead) > 0

    wait_until(died, what="a message dead-lettered by the policy's TTL")
    method, props, body = channel.basic_get(dead, auto_ack=True)
    assert method is not None
    assert props.headers["x-death"][0]["reason"] == "expired"
    assert props.headers["x-death"][0]["queue"] == work
    wait_count(channel, work, 0)
    channel.queue_delete(work)
    channel.queue_delete(dead)


def test_numeric_limits_take_the_lower_value_arguments_win_the_others(
    admin: Admin, channel: Any, unique: Any
) -> None:
    """RabbitMQ 3.10.8 answered exactly this: x-max-length 5 with a policy of 3 keeps
    3, x-max-length 2 keeps 2, and x-overflow reject-publish beats the policy's
    drop-head (the first three stay)."""
    prefix = unique("pol-prec")
    a, b, c = prefix + ".a", prefix + ".b", prefix + ".c"
    channel.queue_declare(a, arguments={"x-max-length": 5})
    channel.queue_declare(b, arguments={"x-max-length": 2})
    channel.queue_declare(c, arguments={"x-overflow": "reject-publish"})
    admin.set_policy(unique("p"), pattern_for(prefix), {"max-length": 3, "overflow": "drop-head"})
    # wait for the policy to reach the queues (RabbitMQ) before filling them
    publish(channel, a, 5)
    wait_count(channel, a, 3)
    publish(channel, b, 6)
    wait_count(channel, b, 2)
    publish(channel, c, 6)
    wait_count(channel, c, 3)
    assert bodies(channel, c) == [b"0", b"1", b"2"]  # reject-publish: the newest were refused
    assert bodies(channel, b) == [b"4", b"5"]
    for q in (a, b, c):
        channel.queue_delete(q)


def test_changing_and_clearing_a_policy_reapplies(admin: Admin, channel: Any, unique: Any) -> None:
    prefix = unique("pol-chg")
    queue = prefix + ".q"
    name = unique("p")
    channel.queue_declare(queue)
    admin.set_policy(name, pattern_for(prefix), {"max-length": 5})
    publish(channel, queue, 8)
    wait_count(channel, queue, 5)
    admin.set_policy(name, pattern_for(prefix), {"max-length": 2})
    wait_count(channel, queue, 2)
    admin.clear_policy(name)

    # without a policy the queue grows again; poll because RabbitMQ applies it later
    def grown() -> bool:
        publish(channel, queue, 1, 100)
        return count(channel, queue) > 3

    wait_until(grown, what="the queue is no longer capped")
    channel.queue_delete(queue)


def test_operator_policy_caps_user_policy_and_arguments(
    admin: Admin, channel: Any, unique: Any
) -> None:
    prefix = unique("pol-op")
    queue = prefix + ".q"
    channel.queue_declare(queue, arguments={"x-max-length": 100})
    admin.set_policy(unique("p"), pattern_for(prefix), {"max-length": 10}, priority=5)
    admin.set_policy(unique("o"), pattern_for(prefix), {"max-length": 3}, operator=True)
    publish(channel, queue, 12)
    wait_count(channel, queue, 3)
    channel.queue_delete(queue)


def test_alternate_exchange_from_a_policy(admin: Admin, channel: Any, unique: Any) -> None:
    prefix = unique("pol-ae")
    exchange, alternate = prefix + ".in", unique("pol-ae-target")
    catch = unique("pol-ae-q")
    channel.exchange_declare(exchange, "direct")
    channel.exchange_declare(alternate, "fanout")
    channel.queue_declare(catch)
    channel.queue_bind(catch, alternate)
    admin.set_policy(
        unique("p"), pattern_for(prefix), {"alternate-exchange": alternate}, apply_to="exchanges"
    )

    def caught() -> bool:
        channel.basic_publish(exchange, "nobody-bound", b"x")
        return count(channel, catch) > 0

    wait_until(caught, what="unroutable message reached the policy's alternate exchange")
    channel.exchange_delete(exchange)
    channel.exchange_delete(alternate)
    channel.queue_delete(catch)


def test_topic_permissions_on_publish_and_bind(admin: Admin, amqp_url: str, unique: Any) -> None:
    user = unique("tpuser").replace(".", "-")[:60]
    admin.add_user(user, "pw")
    admin.set_topic_permissions(user, "amq.topic", "^{username}\\.", "^allowed\\.")
    host = amqp_url.rsplit("@", 1)[1]
    connection = pika.BlockingConnection(pika.URLParameters(f"amqp://{user}:pw@{host}"))
    try:
        channel = connection.channel()
        channel.basic_publish("amq.topic", f"{user}.ok", b"x")  # {username} expanded
        other = unique("tp-direct")
        channel.exchange_declare(other, "direct")
        channel.basic_publish(other, "anything", b"x")  # not a topic exchange: no check
        queue = channel.queue_declare("", exclusive=True).method.queue
        channel.queue_bind(queue, "amq.topic", "allowed.#")
        channel.queue_bind(queue, other, "not-checked")
        channel.exchange_delete(other)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.queue_bind(queue, "amq.topic", "secret.#")
        assert info.value.reply_code == 403
        assert info.value.reply_text == (
            f"ACCESS_REFUSED - access to topic 'secret.#' in exchange 'amq.topic' in vhost '/' refused for user '{user}'"
        )
        channel = connection.channel()
        # exchange-to-exchange bindings from a topic exchange are checked the same way
        target = unique("tp-target")
        channel.exchange_declare(target, "fanout")
        channel.exchange_bind(target, "amq.topic", "allowed.x")
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.exchange_bind(target, "amq.topic", "secret.x")
        assert info.value.reply_code == 403
        channel = connection.channel()
        channel.exchange_delete(target)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.basic_publish("amq.topic", "someone.else", b"x")
            channel.queue_declare(queue, passive=True)
        assert info.value.reply_code == 403
        assert info.value.reply_text == (
            f"ACCESS_REFUSED - access to topic 'someone.else' in exchange 'amq.topic' in vhost '/' refused for user '{user}'"
        )
    finally:
        if connection.is_open:
            connection.close()
    if not EXTERNAL_URL:
        admin._core(lambda core: core.delete_user(user))


def test_delivery_limit_from_a_policy_on_a_quorum_queue(
    admin: Admin, channel: Any, unique: Any
) -> None:
    prefix = unique("pol-dl")
    queue, dead = prefix + ".q", unique("pol-dl-dead")
    channel.queue_declare(queue, durable=True, arguments={"x-queue-type": "quorum"})
    channel.queue_declare(dead)
    admin.set_policy(
        unique("p"),
        pattern_for(prefix),
        {"delivery-limit": 1, "dead-letter-exchange": "", "dead-letter-routing-key": dead},
        apply_to="queues",
    )
    channel.basic_publish("", queue, b"poison")

    def bounced() -> bool:
        method, _props, _body = channel.basic_get(queue)
        if method is not None:
            channel.basic_nack(method.delivery_tag, requeue=True)
        return count(channel, dead) == 1

    wait_until(bounced, what="the message is dead-lettered past the policy's delivery limit")
    method, props, body = channel.basic_get(dead, auto_ack=True)
    assert body == b"poison"
    assert props.headers["x-death"][0]["reason"] == "delivery_limit"
    wait_count(channel, queue, 0)
    channel.queue_delete(queue)
    channel.queue_delete(dead)


def test_a_policy_ttl_lower_than_the_argument_wins(admin: Admin, channel: Any, unique: Any) -> None:
    """RabbitMQ 3.10.8: x-message-ttl 600000 with a policy message-ttl of 50 expires in
    50 ms (the lower wins; the argument does not shield the queue from the policy)."""
    prefix = unique("pol-ttlmin")
    queue = prefix + ".q"
    channel.queue_declare(queue, arguments={"x-message-ttl": 600_000})
    admin.set_policy(unique("p"), pattern_for(prefix), {"message-ttl": 50})

    def expired() -> bool:
        channel.basic_publish("", queue, b"x")
        return wait_empty(channel, queue)

    wait_until(expired, timeout=10, what="a message expired by the policy's lower TTL")
    channel.queue_delete(queue)


def wait_empty(channel: Any, queue: str) -> bool:
    try:
        wait_until(lambda: count(channel, queue) == 0, timeout=1)
    except AssertionError:
        return False
    return True


def test_expires_from_a_policy_deletes_an_existing_idle_queue(
    admin: Admin, channel: Any, unique: Any
) -> None:
    prefix = unique("pol-exp")
    queue = prefix + ".q"
    channel.queue_declare(queue)
    admin.set_policy(unique("p"), pattern_for(prefix), {"expires": 200}, apply_to="queues")

    def gone() -> bool:
        try:
            channel.queue_declare(queue, passive=True)
        except pika.exceptions.ChannelClosedByBroker as exc:
            assert exc.reply_code == 404
            return True
        return False

    try:
        # poll slower than the lease: a passive declare renews it on RabbitMQ
        wait_until(gone, timeout=10, interval=0.5, what="the idle queue expired under the policy")
    finally:
        # passive declare of a missing queue closed the channel; nothing else to clean
        pass
