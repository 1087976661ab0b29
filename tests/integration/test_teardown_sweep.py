"""Tolerant teardown, and the default / ``amq.*`` exchanges, swept as tables (issue 9 item 2).

Client libraries clean up in whatever order their users close things: they unbind from
queues and exchanges that are already gone, delete what is already deleted and cancel
consumers whose queue auto-deleted.  Each row below is one (operation, situation) pair;
the row records what RabbitMQ 3.10.8 answers (checked by running this file with
``BAEDAL_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/``) and Baedal must answer the
same:

* ``OK``: the method's ``-ok`` reply, and the channel stays usable;
* ``chan(code, text)``: channel.close with that code and text (names filled in), the
  failing method's class/method ids, and the connection stays usable;
* ``left``: what must (``queue q``) or must not (``no queue q``) exist afterwards.

Every row runs on its own raw AMQP connection (tests/integration/rawamqp.py), with a
second "admin" connection doing the setup, the after-checks and the cleanup.  Names
are unique per row: ``q``/``q2`` are queues, ``x``/``x2`` exchanges, ``tag`` a consumer
tag, ``amqx`` an unused name in the reserved ``amq.`` prefix.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlparse

import pytest
import rawamqp
from rawamqp import Outcome, RawAMQP

from baedal.protocols.amqp import spec
from baedal_testing import wait_until

pytestmark = pytest.mark.timeout(30)

S = spec
CAPABILITIES = {"consumer_cancel_notify": True, "publisher_confirms": True}


# ---------------------------------------------------------------- the row vocabulary


@dataclass(frozen=True)
class Expect:
    kind: str  # "ok" | "channel" | "connection"
    code: int = 0
    text: str = ""  # a template: {q}, {x}, ... are replaced by the row's names


OK = Expect("ok")


def chan(code: int, text: str) -> Expect:
    return Expect("channel", code, text)


@dataclass
class Names:
    q: str
    q2: str
    x: str
    x2: str
    tag: str
    amqx: str

    def fill(self, template: str) -> str:
        return template.format(**self.__dict__)


@dataclass
class Ctx:
    """The connection under test (channel 1 open) and an admin connection."""

    raw: RawAMQP
    admin: RawAMQP
    n: Names
    host: str
    port: int
    _channels: Any = field(default_factory=lambda: itertools.count(2))

    def admin_call(self, method: S.Method) -> Outcome:
        """Run ``method`` on a fresh admin channel (a failure closes only that channel)."""
        number = next(self._channels)
        self.admin.open_channel(number)
        result = self.admin.call(number, method)
        if result.kind == "ok":
            self.admin.send_method(number, S.ChannelClose(reply_code=200, reply_text=""))
            self.admin.outcome(number)
        return result

    def exists(self, kind: str, name: str) -> bool:
        if kind == "queue":
            probe: S.Method = S.QueueDeclare(queue=name, passive=True)
        else:
            probe = S.ExchangeDeclare(exchange=name, passive=True)
        result = self.admin_call(probe)
        assert result.kind in ("ok", "channel"), result
        return result.kind == "ok"


Step = Callable[[Ctx], None]


def must(result: Outcome) -> Outcome:
    assert result.kind == "ok", f"setup step failed: {result}"
    return result


# ---------------------------------------------------------------- setup steps


def queue(attr: str = "q", **flags: Any) -> Step:
    def step(c: Ctx) -> None:
        must(c.admin_call(S.QueueDeclare(queue=getattr(c.n, attr), **flags)))

    return step


def exchange(attr: str = "x", type_: str = "direct", **flags: Any) -> Step:
    def step(c: Ctx) -> None:
        must(c.admin_call(S.ExchangeDeclare(exchange=getattr(c.n, attr), type=type_, **flags)))

    return step


def bind(q: str = "q", x: str = "x", key: str = "k") -> Step:
    def step(c: Ctx) -> None:
        must(
            c.admin_call(
                S.QueueBind(queue=getattr(c.n, q), exchange=getattr(c.n, x), routing_key=key)
            )
        )

    return step


def bind_to_amq(q: str, amq_exchange: str, key: str = "k") -> Step:
    def step(c: Ctx) -> None:
        must(
            c.admin_call(S.QueueBind(queue=getattr(c.n, q), exchange=amq_exchange, routing_key=key))
        )

    return step


def xbind(destination: str = "x2", source: str = "x", key: str = "k") -> Step:
    def step(c: Ctx) -> None:
        must(
            c.admin_call(
                S.ExchangeBind(
                    destination=getattr(c.n, destination),
                    source=getattr(c.n, source),
                    routing_key=key,
                )
            )
        )

    return step


def xunbind(destination: str = "x2", source: str = "x", key: str = "k") -> Step:
    def step(c: Ctx) -> None:
        must(
            c.admin_call(
                S.ExchangeUnbind(
                    destination=getattr(c.n, destination),
                    source=getattr(c.n, source),
                    routing_key=key,
                )
            )
        )

    return step


def unbind(q: str = "q", x: str = "x", key: str = "k") -> Step:
    def step(c: Ctx) -> None:
        must(
            c.admin_call(
                S.QueueUnbind(queue=getattr(c.n, q), exchange=getattr(c.n, x), routing_key=key)
            )
        )

    return step


def message(q: str = "q") -> Step:
    """One message in the queue (confirmed, so it is there before the operation)."""

    def step(c: Ctx) -> None:
        name = getattr(c.n, q)
        number = next(c._channels)
        c.admin.open_channel(number)
        must(c.admin.call(number, S.ConfirmSelect()))
        c.admin.publish(number, "", name, b"m")
        assert c.admin.outcome(number).reply.method == (60, 80)  # basic.ack

    return step


def consume(q: str = "q") -> Step:
    """A consumer with tag ``tag`` on the channel under test."""

    def step(c: Ctx) -> None:
        must(c.raw.call(1, S.BasicConsume(queue=getattr(c.n, q), consumer_tag=c.n.tag)))

    return step


def cancel(c: Ctx) -> None:
    must(c.raw.call(1, S.BasicCancel(consumer_tag=c.n.tag)))


def gone(kind: str, attr: str) -> Step:
    def step(c: Ctx) -> None:
        name = getattr(c.n, attr)
        wait_until(lambda: not c.exists(kind, name), what=f"{kind} {name} to go away")

    return step


def auto_deleted_queue(c: Ctx) -> None:
    """Queue q declared auto-delete; its only consumer cancelled, so it deleted itself."""
    must(c.raw.call(1, S.QueueDeclare(queue=c.n.q, auto_delete=True)))
    consume()(c)
    cancel(c)
    gone("queue", "q")(c)


def auto_deleted_exchange(c: Ctx) -> None:
    """Exchange x declared auto-delete; its only binding removed, so it deleted itself."""
    queue()(c)
    exchange(auto_delete=True)(c)
    bind()(c)
    unbind()(c)
    gone("exchange", "x")(c)


def exclusive_of_closed_connection(c: Ctx) -> None:
    """Queue q was exclusive to another connection that has closed since."""
    other = rawamqp.connect(c.host, c.port)
    try:
        other.open_channel(1)
        must(other.call(1, S.QueueDeclare(queue=c.n.q, exclusive=True)))
        other.send_method(0, S.ConnectionClose(reply_code=200, reply_text="bye"))
        other.read_method((10, 51))
    finally:
        other.close()
    gone("queue", "q")(c)


def exclusive_of_live_connection(c: Ctx) -> None:
    """Queue q is exclusive to the admin connection, which stays open."""
    must(c.admin.call(1, S.QueueDeclare(queue=c.n.q, exclusive=True)))


def server_cancelled(c: Ctx) -> None:
    """The consumer's queue was deleted by someone else: the broker cancelled it."""
    queue()(c)
    consume()(c)
    must(c.admin_call(S.QueueDelete(queue=c.n.q)))
    # With consumer_cancel_notify the broker tells us; wait for that basic.cancel.
    deadline = time.monotonic() + 5
    while not any(f.method == (60, 30) for f in c.raw.unsolicited):
        assert time.monotonic() < deadline, "no server-sent basic.cancel"
        c.raw.unsolicited.append(c.raw.read_method())


# ---------------------------------------------------------------- the operations


def queue_unbind(q: str = "q", x: str = "x") -> Callable[[Names], S.Method]:
    return lambda n: S.QueueUnbind(
        queue=getattr(n, q, q), exchange=getattr(n, x, x), routing_key="k"
    )


def exchange_unbind(destination: str = "x2", source: str = "x") -> Callable[[Names], S.Method]:
    return lambda n: S.ExchangeUnbind(
        destination=getattr(n, destination, destination),
        source=getattr(n, source, source),
        routing_key="k",
    )


def queue_delete(**flags: bool) -> Callable[[Names], S.Method]:
    return lambda n: S.QueueDelete(queue=n.q, **flags)


def exchange_delete(name: str = "x", **flags: bool) -> Callable[[Names], S.Method]:
    return lambda n: S.ExchangeDelete(exchange=getattr(n, name, name), **flags)


def basic_cancel(n: Names) -> S.Method:
    return S.BasicCancel(consumer_tag=n.tag)


def queue_purge(n: Names) -> S.Method:
    return S.QueuePurge(queue=n.q)


# The -ok reply of each synchronous method (exchange.unbind-ok is 40/51, not 40/41).
REPLY_IDS = {
    cls.NAME[: -len("-ok")]: (cls.CLASS_ID, cls.METHOD_ID)
    for cls in spec.METHODS.values()
    if cls.NAME.endswith("-ok")
}


@dataclass(frozen=True)
class Row:
    op: str
    situation: str
    setup: tuple[Step, ...]
    method: Callable[[Names], S.Method]
    expect: Expect
    left: tuple[str, ...] = ()  # "queue q", "no exchange x", "exchange amq.direct" (literal)

    @property
    def id(self) -> str:
        return f"{self.op} | {self.situation}"


NO_QUEUE = "NOT_FOUND - no queue '{q}' in vhost '/'"
NO_EXCHANGE = "NOT_FOUND - no exchange '{x}' in vhost '/'"
LOCKED = (
    "RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'. "
    "It could be originally declared on another connection or the exclusive property value "
    "does not match that of the original declaration."
)

# fmt: off
TEARDOWN = [
    # queue.unbind: RabbitMQ 3.10 removes a binding idempotently: whatever end is
    # missing, the answer is unbind-ok (it does not even look the ends up first).
    Row("queue.unbind", "target queue missing", (exchange(),), queue_unbind(),
        OK, ("exchange x",)),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "source exchange missing", (queue(),), queue_unbind(),
        OK, ("queue q",)),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "queue and exchange missing", (), queue_unbind(),
        OK),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "binding missing", (queue(), exchange()), queue_unbind(),
        OK, ("queue q", "exchange x")),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "binding already removed", (queue(), exchange(), bind(), unbind()), queue_unbind(),
        OK, ("queue q", "exchange x")),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "binding missing, auto-delete exchange", (queue(), exchange(auto_delete=True)),
        queue_unbind(), OK, ("exchange x",)),  # RabbitMQ: ok, the exchange stays
    Row("queue.unbind", "last binding of an auto-delete exchange", (queue(), exchange(auto_delete=True), bind()),
        queue_unbind(), OK, ("no exchange x", "queue q")),  # RabbitMQ: ok, the exchange auto-deletes
    Row("queue.unbind", "exchange already auto-deleted (last binding removed)", (auto_deleted_exchange,),
        queue_unbind(), OK, ("queue q",)),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "queue already auto-deleted (last consumer cancelled)", (exchange(), auto_deleted_queue),
        queue_unbind(), OK, ("exchange x",)),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "exclusive queue of a closed connection", (exchange(), exclusive_of_closed_connection),
        queue_unbind(), OK, ("exchange x",)),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "exclusive queue of another open connection, no binding",
        (exchange(), exclusive_of_live_connection), queue_unbind(),
        OK, ("queue q",)),  # RabbitMQ: unbind-ok (nothing to remove, so no access check)
    Row("queue.unbind", "exclusive queue of another open connection, bound",
        (exchange(), exclusive_of_live_connection, bind()), queue_unbind(),
        chan(405, LOCKED), ("queue q",)),  # RabbitMQ: 405
    Row("queue.unbind", "binding from amq.direct missing", (queue(),), queue_unbind(x="amq.direct"),
        OK, ("queue q",)),  # RabbitMQ: unbind-ok
    Row("queue.unbind", "from the default exchange", (queue(),), queue_unbind(x=""),
        chan(403, "ACCESS_REFUSED - operation not permitted on the default exchange"),
        ("queue q",)),  # RabbitMQ: 403

    # exchange.unbind: idempotent as well.
    Row("exchange.unbind", "source exchange missing", (exchange("x2"),), exchange_unbind(),
        OK, ("exchange x2",)),  # RabbitMQ: unbind-ok
    Row("exchange.unbind", "destination exchange missing", (exchange(),), exchange_unbind(),
        OK, ("exchange x",)),  # RabbitMQ: unbind-ok
    Row("exchange.unbind", "both exchanges missing", (), exchange_unbind(),
        OK),  # RabbitMQ: unbind-ok
    Row("exchange.unbind", "binding missing", (exchange(), exchange("x2")), exchange_unbind(),
        OK, ("exchange x", "exchange x2")),  # RabbitMQ: unbind-ok
    Row("exchange.unbind", "binding already removed", (exchange(), exchange("x2"), xbind(), xunbind()),
        exchange_unbind(), OK, ("exchange x", "exchange x2")),  # RabbitMQ: unbind-ok
    Row("exchange.unbind", "source already auto-deleted (last binding removed)",
        (exchange("x2"), auto_deleted_exchange), exchange_unbind(),
        OK, ("exchange x2",)),  # RabbitMQ: unbind-ok
    Row("exchange.unbind", "from the default exchange", (exchange("x2"),), exchange_unbind(source=""),
        chan(403, "ACCESS_REFUSED - operation not permitted on the default exchange")),  # RabbitMQ: 403
    Row("exchange.unbind", "to the default exchange", (exchange(),), exchange_unbind(destination=""),
        chan(403, "ACCESS_REFUSED - operation not permitted on the default exchange")),  # RabbitMQ: 403
    Row("exchange.unbind", "binding from amq.fanout missing", (exchange("x2"),),
        exchange_unbind(source="amq.fanout"), OK, ("exchange x2",)),  # RabbitMQ: unbind-ok

    # queue.delete: a queue that is not there is already deleted.
    *[Row(f"queue.delete{label}", situation, setup, queue_delete(**flags), OK, ("no queue q",))
      for label, flags in (("", {}), (" if-unused", {"if_unused": True}), (" if-empty", {"if_empty": True}))
      for situation, setup in (
          ("target queue missing", ()),
          ("queue already auto-deleted (last consumer cancelled)", (auto_deleted_queue,)),
          ("exclusive queue of a closed connection", (exclusive_of_closed_connection,)),
      )],  # RabbitMQ: delete-ok, message count 0
    Row("queue.delete", "exclusive queue of another open connection", (exclusive_of_live_connection,),
        queue_delete(), chan(405, LOCKED), ("queue q",)),  # RabbitMQ: 405, the queue stays
    Row("queue.delete if-unused", "queue has a consumer", (queue(), consume()), queue_delete(if_unused=True),
        chan(406, "PRECONDITION_FAILED - queue '{q}' in vhost '/' in use"), ("queue q",)),  # RabbitMQ: 406
    Row("queue.delete if-empty", "queue has a message", (queue(), message()), queue_delete(if_empty=True),
        chan(406, "PRECONDITION_FAILED - queue '{q}' in vhost '/' not empty"), ("queue q",)),  # RabbitMQ: 406
    Row("queue.delete", "its binding is the last of an auto-delete exchange",
        (queue(), exchange(auto_delete=True), bind()), queue_delete(),
        OK, ("no queue q", "no exchange x")),  # RabbitMQ: delete-ok, the exchange auto-deletes too
    Row("queue.delete", "queue has a consumer on this channel", (queue(), consume()), queue_delete(),
        OK, ("no queue q",)),  # RabbitMQ: delete-ok (and a server-sent basic.cancel first)

    # exchange.delete
    *[Row(f"exchange.delete{label}", situation, setup, exchange_delete(**flags), OK, ("no exchange x",))
      for label, flags in (("", {}), (" if-unused", {"if_unused": True}))
      for situation, setup in (
          ("exchange missing", ()),
          ("exchange already auto-deleted (last binding removed)", (auto_deleted_exchange,)),
      )],  # RabbitMQ: delete-ok
    Row("exchange.delete if-unused", "exchange is the source of a binding", (queue(), exchange(), bind()),
        exchange_delete(if_unused=True), chan(406, "PRECONDITION_FAILED - exchange '{x}' in vhost '/' in use"),
        ("exchange x",)),  # RabbitMQ: 406
    Row("exchange.delete if-unused", "exchange is only a binding's destination",
        (exchange(), exchange("x2"), xbind("x", "x2")), exchange_delete(if_unused=True),
        OK, ("no exchange x", "exchange x2")),  # RabbitMQ: only bindings *from* it count
    Row("exchange.delete", "the only destination of an auto-delete exchange",
        (exchange(auto_delete=True), exchange("x2"), xbind("x2", "x")), exchange_delete("x2"),
        OK, ("no exchange x2", "no exchange x")),  # RabbitMQ: delete-ok, the source auto-deletes
    Row("exchange.delete", "exchange is the source of a binding", (queue(), exchange(), bind()),
        exchange_delete(), OK, ("no exchange x", "queue q")),  # RabbitMQ: delete-ok

    # basic.cancel: an unknown consumer tag is fine.
    Row("basic.cancel", "consumer tag unknown", (), basic_cancel, OK),  # RabbitMQ: cancel-ok
    Row("basic.cancel", "consumer already cancelled", (queue(), consume(), cancel), basic_cancel,
        OK, ("queue q",)),  # RabbitMQ: cancel-ok
    Row("basic.cancel", "queue already auto-deleted (last consumer cancelled)", (auto_deleted_queue,),
        basic_cancel, OK),  # RabbitMQ: cancel-ok
    Row("basic.cancel", "consumer whose queue was deleted (server-cancelled)", (server_cancelled,),
        basic_cancel, OK, ("no queue q",)),  # RabbitMQ: cancel-ok

    # queue.purge: needs the queue.
    Row("queue.purge", "target queue missing", (), queue_purge, chan(404, NO_QUEUE)),  # RabbitMQ: 404
    Row("queue.purge", "queue already auto-deleted (last consumer cancelled)", (auto_deleted_queue,),
        queue_purge, chan(404, NO_QUEUE)),  # RabbitMQ: 404
    Row("queue.purge", "exclusive queue of a closed connection", (exclusive_of_closed_connection,),
        queue_purge, chan(404, NO_QUEUE)),  # RabbitMQ: 404
    Row("queue.purge", "exclusive queue of another open connection", (exclusive_of_live_connection,),
        queue_purge, chan(405, LOCKED), ("queue q",)),  # RabbitMQ: 405
]
# fmt: on


# ---------------------------------------------------------------- the default exchange and amq.*


def x_declare(name: str, type_: str = "direct", **flags: Any) -> Callable[[Names], S.Method]:
    return lambda n: S.ExchangeDeclare(exchange=getattr(n, name, name), type=type_, **flags)


def q_bind(x: str, q: str = "q") -> Callable[[Names], S.Method]:
    return lambda n: S.QueueBind(queue=getattr(n, q, q), exchange=getattr(n, x, x), routing_key="k")


def x_bind(destination: str, source: str) -> Callable[[Names], S.Method]:
    return lambda n: S.ExchangeBind(
        destination=getattr(n, destination, destination),
        source=getattr(n, source, source),
        routing_key="k",
    )


def q_declare(name: str, **flags: Any) -> Callable[[Names], S.Method]:
    return lambda n: S.QueueDeclare(queue=getattr(n, name, name), **flags)


def publish_to(name: str) -> Callable[[Names], S.Method]:
    return lambda n: S.BasicPublish(exchange=getattr(n, name, name), routing_key="k")


DEFAULT_403 = chan(403, "ACCESS_REFUSED - operation not permitted on the default exchange")
RESERVED_X = chan(403, "ACCESS_REFUSED - exchange name '{amqx}' contains reserved prefix 'amq.*'")
RESERVED_Q = chan(403, "ACCESS_REFUSED - queue name '{amqx}' contains reserved prefix 'amq.*'")
NO_AMQX = chan(404, "NOT_FOUND - no exchange '{amqx}' in vhost '/'")
# (name, type) of every exchange RabbitMQ 3.10 predeclares in a vhost, all durable;
# amq.rabbitmq.trace is also internal.
PREDECLARED = (
    ("amq.direct", "direct"), ("amq.fanout", "fanout"), ("amq.topic", "topic"),
    ("amq.headers", "headers"), ("amq.match", "headers"), ("amq.rabbitmq.trace", "topic"),
)  # fmt: skip


def delete_refused(name: str) -> Expect:
    return chan(
        403, f"ACCESS_REFUSED - deletion of system exchange '{name}' in vhost '/' not allowed"
    )


# fmt: off
RESERVED = [
    # exchange.declare of the default exchange: refused, active or passive.
    Row("exchange.declare", "default exchange, active", (), x_declare("", durable=True), DEFAULT_403),  # RabbitMQ: 403
    Row("exchange.declare", "default exchange, passive", (), x_declare("", passive=True), DEFAULT_403),  # RabbitMQ: 403
    # exchange.declare of a predeclared amq.* exchange: an existing exchange is checked
    # for equivalence like any other; the reserved-prefix rule only stops *new* names.
    *[Row("exchange.declare", f"{name}, active, matching", (), x_declare(name, type_, durable=True,
                                                                          internal=name == "amq.rabbitmq.trace"),
          OK) for name, type_ in PREDECLARED],  # RabbitMQ: declare-ok
    *[Row("exchange.declare", f"{name}, passive", (), x_declare(name, passive=True), OK)
      for name, _ in PREDECLARED],  # RabbitMQ: declare-ok
    *[Row("exchange.declare", f"{name}, active, not durable", (), x_declare(name, type_),
          chan(406, f"PRECONDITION_FAILED - inequivalent arg 'durable' for exchange '{name}' in vhost '/': "
                    "received 'false' but current is 'true'"))
      for name, type_ in PREDECLARED if name != "amq.rabbitmq.trace"],  # RabbitMQ: 406 durable
    Row("exchange.declare", "amq.direct, active, type fanout", (), x_declare("amq.direct", "fanout", durable=True),
        chan(406, "PRECONDITION_FAILED - inequivalent arg 'type' for exchange 'amq.direct' in vhost '/': "
                  "received 'fanout' but current is 'direct'")),  # RabbitMQ: 406 type
    Row("exchange.declare", "amq.topic, active, auto-delete", (), x_declare("amq.topic", "topic", durable=True,
                                                                            auto_delete=True),
        chan(406, "PRECONDITION_FAILED - inequivalent arg 'auto_delete' for exchange 'amq.topic' in vhost '/': "
                  "received 'true' but current is 'false'")),  # RabbitMQ: 406 auto_delete
    Row("exchange.declare", "amq.rabbitmq.trace, active, not internal", (),
        x_declare("amq.rabbitmq.trace", "topic", durable=True),
        chan(406, "PRECONDITION_FAILED - inequivalent arg 'internal' for exchange 'amq.rabbitmq.trace' in "
                  "vhost '/': received 'false' but current is 'true'")),  # RabbitMQ: 406 internal
    Row("exchange.declare", "amq.direct, active, unknown type", (), x_declare("amq.direct", "no-such-type", durable=True),
        Expect("connection", 503, "COMMAND_INVALID - unknown exchange type 'no-such-type'")),  # RabbitMQ: 503, type first
    Row("exchange.declare", "amq.direct, passive, another type and flags", (),
        x_declare("amq.direct", "fanout", passive=True, auto_delete=True), OK),  # RabbitMQ: passive ignores them
    Row("exchange.declare", "user exchange, passive, another type", (exchange(),),
        x_declare("x", "topic", passive=True), OK),  # RabbitMQ: declare-ok
    Row("exchange.declare", "amq.rabbitmq.log (not in 3.10), passive", (), x_declare("amq.rabbitmq.log", passive=True),
        chan(404, "NOT_FOUND - no exchange 'amq.rabbitmq.log' in vhost '/'")),  # RabbitMQ: 404
    Row("exchange.declare", "new amq.* name, active", (), x_declare("amqx"), RESERVED_X,
        ("no exchange amqx",)),  # RabbitMQ: 403 reserved prefix
    Row("exchange.declare", "new amq.* name, passive", (), x_declare("amqx", passive=True), NO_AMQX),  # RabbitMQ: 404

    # exchange.delete of the default and amq.* exchanges.
    Row("exchange.delete", "default exchange", (), exchange_delete(""), DEFAULT_403),  # RabbitMQ: 403
    *[Row("exchange.delete", name, (), exchange_delete(name), delete_refused(name), (f"exchange {name}",))
      for name, _ in PREDECLARED],  # RabbitMQ: 403, the exchange stays
    Row("exchange.delete if-unused", "amq.fanout", (), exchange_delete("amq.fanout", if_unused=True),
        delete_refused("amq.fanout")),  # RabbitMQ: 403
    Row("exchange.delete", "new amq.* name (missing)", (), exchange_delete("amqx"),
        delete_refused("{amqx}")),  # RabbitMQ: 403 for any amq.* name

    # queue.bind / exchange.bind to and from the default exchange and amq.*.
    Row("queue.bind", "to the default exchange", (queue(),), q_bind(""), DEFAULT_403),  # RabbitMQ: 403
    Row("queue.bind", "missing queue to the default exchange", (), q_bind(""), DEFAULT_403),  # RabbitMQ: 403 first
    *[Row("queue.bind", f"to {name}", (queue(),), q_bind(name), OK) for name, _ in PREDECLARED],  # RabbitMQ: bind-ok
    Row("queue.bind", "to a missing amq.* exchange", (queue(),), q_bind("amqx"), NO_AMQX),  # RabbitMQ: 404
    Row("exchange.bind", "from the default exchange", (exchange(),), x_bind("x", ""), DEFAULT_403),  # RabbitMQ: 403
    Row("exchange.bind", "to the default exchange", (exchange(),), x_bind("", "x"), DEFAULT_403),  # RabbitMQ: 403
    Row("exchange.bind", "from amq.fanout", (exchange("x2"),), x_bind("x2", "amq.fanout"), OK),  # RabbitMQ: bind-ok
    Row("exchange.bind", "to amq.direct", (exchange(),), x_bind("amq.direct", "x"), OK),  # RabbitMQ: bind-ok
    Row("exchange.bind", "from a missing amq.* exchange", (exchange("x2"),), x_bind("x2", "amqx"),
        NO_AMQX),  # RabbitMQ: 404

    # queue.declare of an amq.* name.
    Row("queue.declare", "new amq.* name, active", (), q_declare("amqx"), RESERVED_Q, ("no queue amqx",)),  # RabbitMQ: 403
    Row("queue.declare", "new amq.* name, passive", (), q_declare("amqx", passive=True),
        chan(404, "NOT_FOUND - no queue '{amqx}' in vhost '/'")),  # RabbitMQ: 404

    # an empty queue name with no queue declared on the channel yet
    Row("queue.delete", "empty name, nothing declared on the channel", (), lambda n: S.QueueDelete(queue=""),
        chan(404, "NOT_FOUND - no previously declared queue")),  # RabbitMQ: 404
    Row("queue.purge", "empty name, nothing declared on the channel", (), lambda n: S.QueuePurge(queue=""),
        chan(404, "NOT_FOUND - no previously declared queue")),  # RabbitMQ: 404
    Row("queue.unbind", "empty name, nothing declared on the channel", (), queue_unbind(q="", x="amq.direct"),
        chan(404, "NOT_FOUND - no previously declared queue")),  # RabbitMQ: 404

    # publishing to a missing exchange, amq.* or not
    Row("basic.publish", "missing exchange", (), publish_to("x"), chan(404, NO_EXCHANGE)),  # RabbitMQ: 404
    Row("basic.publish", "missing amq.* exchange", (), publish_to("amqx"), NO_AMQX),  # RabbitMQ: 404
    Row("basic.publish", "amq.rabbitmq.trace (internal)", (), publish_to("amq.rabbitmq.trace"),
        chan(403, "ACCESS_REFUSED - cannot publish to internal exchange 'amq.rabbitmq.trace' in vhost '/'")),  # RabbitMQ: 403
    Row("basic.publish", "default exchange, no such queue", (), publish_to(""), OK),  # RabbitMQ: dropped, ok
    Row("basic.publish", "amq.direct", (), publish_to("amq.direct"), OK),  # RabbitMQ: ok
]
# fmt: on


# ---------------------------------------------------------------- the runner


@pytest.fixture
def endpoint(amqp_url: str) -> tuple[str, int]:
    u = urlparse(amqp_url)
    return u.hostname or "127.0.0.1", u.port or 5672


_serial = itertools.count()


def make_names(label: str) -> Names:
    base = f"sweep.{os.getpid()}.{next(_serial)}.{time.monotonic_ns()}"
    return Names(
        q=f"{base}.q", q2=f"{base}.q2", x=f"{base}.x", x2=f"{base}.x2",
        tag=f"{base}.tag", amqx=f"amq.{base}.x",
    )  # fmt: skip


def run_row(
    endpoint: tuple[str, int],
    setup: tuple[Step, ...],
    method: Callable[[Names], S.Method],
    expect: Expect,
    left: tuple[str, ...],
    label: str,
) -> None:
    host, port = endpoint
    n = make_names(label)
    admin = rawamqp.connect(host, port, capabilities=CAPABILITIES)
    admin.open_channel(1)
    raw = rawamqp.connect(host, port, capabilities=CAPABILITIES)
    raw.open_channel(1)
    c = Ctx(raw, admin, n, host, port)
    try:
        for step in setup:
            step(c)
        request = method(n)
        if request.HAS_CONTENT:
            # basic.publish has no reply: follow it with basic.qos, whose qos-ok says the
            # publish was accepted (a refused one closes the channel first).
            raw.publish(1, request.exchange, request.routing_key, b"sweep")
            request_for_reply: S.Method = S.BasicQos(prefetch_count=0)
            seen = raw.call(1, request_for_reply, skip=((60, 30),))
        else:
            request_for_reply = request
            seen = raw.call(1, request, skip=((60, 30),))  # a server-sent basic.cancel is no reply
        observed = (seen.kind, seen.code, seen.text)
        wanted = (expect.kind, expect.code, n.fill(expect.text))
        assert observed == wanted, f"OBSERVED {label}: {seen}"
        if seen.kind == "ok":
            assert seen.reply.method == REPLY_IDS[request_for_reply.NAME], seen
            # the channel is still usable
            assert raw.call(1, S.BasicQos(prefetch_count=0)).kind == "ok"
        elif seen.kind == "channel":
            assert (seen.class_id, seen.method_id) == (request.CLASS_ID, request.METHOD_ID), seen
            # the connection is still usable
            raw.open_channel(2)
            assert raw.call(2, S.BasicQos(prefetch_count=0)).kind == "ok"
        elif seen.kind == "connection":
            assert (seen.class_id, seen.method_id) == (request.CLASS_ID, request.METHOD_ID), seen
            # the broker still serves other connections
            assert c.exists("exchange", "amq.direct")
        for item in left:
            words = item.split()
            wanted_present = words[0] != "no"
            kind, attr = words[-2], words[-1]
            assert c.exists(kind, getattr(n, attr, attr)) == wanted_present, (
                f"{label}: expected {item}"
            )
    finally:
        raw.close()
        with contextlib.suppress(Exception):
            for name in (n.q, n.q2):
                c.admin_call(S.QueueDelete(queue=name))
            for name in (n.x, n.x2):
                c.admin_call(S.ExchangeDelete(exchange=name))
        admin.close()


@pytest.mark.parametrize("row", TEARDOWN, ids=[r.id for r in TEARDOWN])
def test_teardown_answers_like_rabbitmq(row: Row, endpoint: tuple[str, int]) -> None:
    run_row(endpoint, row.setup, row.method, row.expect, row.left, row.id)


@pytest.mark.parametrize("row", RESERVED, ids=[r.id for r in RESERVED])
def test_default_and_amq_exchanges_answer_like_rabbitmq(
    row: Row, endpoint: tuple[str, int]
) -> None:
    run_row(endpoint, row.setup, row.method, row.expect, row.left, row.id)
