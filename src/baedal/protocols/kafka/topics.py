"""Kafka topics are core streams: topic name -> partitions -> ``StreamQueue``.

Theory of operation
-------------------
There is no Kafka-private storage.  Every topic partition is a ``core.stream.StreamQueue``
in one vhost (the ``kafka_vhost`` setting, "/" by default), so AMQP stream consumers read
what Kafka producers wrote, exchanges bound to the stream make AMQP publishes readable by
Kafka consumers, and the management API, policies, retention and recovery are the
stream's own.  This registry only *names* partitions; it holds no state of its own
beyond a cache that it re-validates on every lookup.

Naming (RabbitMQ's super streams, so the same layout reads the same on both brokers):

* A topic with one partition IS the stream of the same name: ``orders`` <-> stream
  ``orders``.  So every stream in the vhost (declared over AMQP with
  ``x-queue-type: stream``, or by the management API) is a one-partition Kafka topic.
* A topic with several partitions is a *super stream*: a durable direct exchange named
  after the topic whose bindings to streams carry ``x-stream-partition-order: <n>``
  (routing key ``"<n>"``).  Partition ``n`` is the bound stream with the n-th smallest
  order.  A topic created with ``P > 1`` partitions gets streams ``<topic>-0`` ..
  ``<topic>-<P-1>``, as ``rabbitmq-streams add_super_stream --partitions P`` names them.
* CreatePartitions grows a topic by adding streams ``<topic>-<n>`` with the next orders.
  Growing a one-partition topic keeps its stream ``<topic>`` as partition 0 (its data
  and offsets stay where they are) and declares the exchange around it; this is why the
  partition order comes from the binding argument and not from the stream's name.
* Streams that are partitions of a super stream are left out of the "all topics"
  listing (they show as partitions of their topic), but a Kafka client naming one
  directly gets it as a one-partition topic, just as RabbitMQ lets a stream client
  read one partition of a super stream.

``Partition.durable_offset`` is the stream's ``committed_offset``: Kafka's high
watermark.  Fetches are served below it and long polls wait on the stream's
``commit_waiters``.

Data written by the first Kafka slice under ``<data_dir>/kafka/<topic>-<n>/`` is not
migrated: that slice was never released (0.1.0, commit 61b0588, has no Kafka listener),
so only development data directories hold it; ``warn_unmigrated`` logs what is there.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...core.stream import StreamQueue
from ...core.vhost import CoreError, VirtualHost

log = logging.getLogger("baedal.kafka")

# Kafka's legal topic names (Topic.java: [a-zA-Z0-9._-], at most 249 characters).
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_OLD_PARTITION_DIR = re.compile(r"(.+)-(\d+)")
PARTITION_ORDER = "x-stream-partition-order"  # RabbitMQ super streams' binding argument
STREAM_ARGUMENTS = {"x-queue-type": "stream"}


class TopicError(Exception):
    """A topic operation the vhost refused; ``reason`` names the Kafka error."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # "exists", "invalid", "storage"


class Partition:
    """One topic partition: a view of one stream."""

    __slots__ = ("topic", "index", "stream")

    def __init__(self, topic: str, index: int, stream: StreamQueue) -> None:
        self.topic = topic
        self.index = index
        self.stream = stream

    @property
    def log(self) -> Any:
        return self.stream.log

    @property
    def durable_offset(self) -> int:
        return self.stream.committed_offset

    @property
    def valid(self) -> bool:
        return not self.stream.deleted

    def add_waiter(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once, the next time ``durable_offset`` advances."""
        self.stream.commit_waiters.append(callback)

    def remove_waiter(self, callback: Callable[[], Any]) -> None:
        try:
            self.stream.commit_waiters.remove(callback)
        except ValueError:
            pass


def legal_topic_name(name: str) -> bool:
    return bool(_LEGAL_TOPIC.fullmatch(name)) and name not in (".", "..")


def _is_stream(queue: Any) -> bool:
    return queue is not None and getattr(queue, "is_stream", False) and not queue.deleted


def _partition_streams(exchange: Any) -> list[StreamQueue]:
    """The streams bound to ``exchange`` as super-stream partitions, in partition order."""
    found: list[tuple[int, str, StreamQueue]] = []
    for binding in exchange.bindings.values():
        order = binding.arguments.get(PARTITION_ORDER)
        if isinstance(order, int) and not isinstance(order, bool) and _is_stream(binding.destination):
            found.append((order, binding.destination.name, binding.destination))
    found.sort(key=lambda item: (item[0], item[1]))
    return [stream for _order, _name, stream in found]


class TopicRegistry:
    def __init__(self, vhost: VirtualHost, syncer: Any) -> None:
        self.vhost = vhost
        self.syncer = syncer
        # topic -> (the exchange or stream it was derived from, bindings seen, partitions)
        self._cache: dict[str, tuple[Any, int, list[Partition]]] = {}

    def warn_unmigrated(self, old_directory: Path) -> None:
        if not old_directory.is_dir():
            return
        left = sorted(
            path.name
            for path in old_directory.iterdir()
            if path.is_dir() and _OLD_PARTITION_DIR.fullmatch(path.name)
        )
        if left:
            log.warning(
                "kafka: %d partition director%s under %s from an unreleased build are not "
                "migrated to streams and are ignored: %s",
                len(left), "y" if len(left) == 1 else "ies", old_directory, ", ".join(left[:10]),
            )

    # -- lookups ------------------------------------------------------------------------

    def get(self, topic: str) -> list[Partition] | None:
        vhost = self.vhost
        exchange = vhost.exchanges.get(topic)
        cached = self._cache.get(topic)
        if exchange is not None and exchange.bindings:
            if (
                cached is not None
                and cached[0] is exchange
                and cached[1] == len(exchange.bindings)
                and all(p.valid for p in cached[2])
            ):
                return cached[2]
            streams = _partition_streams(exchange)
            if streams:
                partitions = [Partition(topic, i, s) for i, s in enumerate(streams)]
                self._cache[topic] = (exchange, len(exchange.bindings), partitions)
                return partitions
        queue = vhost.queues.get(topic)
        if not _is_stream(queue):
            self._cache.pop(topic, None)
            return None
        if cached is not None and cached[0] is queue:
            return cached[2]
        partitions = [Partition(topic, 0, queue)]  # type: ignore[arg-type]
        self._cache[topic] = (queue, 0, partitions)
        return partitions

    def partition(self, topic: str, index: int) -> Partition | None:
        partitions = self.get(topic)
        if partitions is None or not 0 <= index < len(partitions):
            return None
        return partitions[index]

    def topics(self) -> dict[str, list[Partition]]:
        """Every topic: super streams, then the streams that are not their partitions."""
        vhost = self.vhost
        result: dict[str, list[Partition]] = {}
        members: set[str] = set()
        for name, exchange in vhost.exchanges.items():
            if name and exchange.bindings and legal_topic_name(name) and _partition_streams(exchange):
                partitions = self.get(name)
                if partitions is not None:
                    result[name] = partitions
                    members.update(p.stream.name for p in partitions)
        for name, queue in list(vhost.queues.items()):
            if name not in result and name not in members and _is_stream(queue) and legal_topic_name(name):
                found = self.get(name)
                if found is not None:
                    result[name] = found
        return result

    # -- changes ------------------------------------------------------------------------

    def create(
        self, topic: str, partitions: int, arguments: dict[str, Any] | None = None
    ) -> list[Partition]:
        """Declare the topic's streams (and exchange, for several partitions)."""
        if not legal_topic_name(topic):
            raise TopicError("invalid", f"illegal topic name {topic!r}")
        existing = self.get(topic)
        if existing is not None:
            return existing
        vhost = self.vhost
        stream_arguments = {**STREAM_ARGUMENTS, **(arguments or {})}
        if partitions == 1:
            if topic in vhost.queues:
                raise TopicError("exists", f"a non-stream queue named {topic!r} exists")
            self._declare_stream(topic, stream_arguments)
        else:
            names = [f"{topic}-{i}" for i in range(partitions)]
            self._check_free(topic, names)
            self._declare_exchange(topic)
            for order, name in enumerate(names):
                self._declare_partition(topic, name, order, stream_arguments)
        created = self.get(topic)
        assert created is not None
        log.info("kafka topic %s created with %d partition(s)", topic, partitions)
        return created

    def add_partitions(self, topic: str, total: int) -> list[Partition]:
        """Grow ``topic`` to ``total`` partitions (CreatePartitions)."""
        current = self.get(topic)
        if current is None:
            raise TopicError("unknown", f"no topic {topic!r}")
        if total <= len(current):
            raise TopicError(
                "invalid", f"topic {topic!r} has {len(current)} partition(s); {total} is not more"
            )
        vhost = self.vhost
        # New partitions copy the settings of partition 0 (retention, segment size).
        arguments = {**STREAM_ARGUMENTS, **_copyable(current[0].stream.arguments)}
        names = [f"{topic}-{i}" for i in range(len(current), total)]
        self._check_free(topic, names, allow_exchange=True)
        if len(current) == 1 and current[0].stream.name == topic:
            exchange = vhost.exchanges.get(topic)
            if exchange is not None and exchange.type != "direct":
                raise TopicError("invalid", f"exchange {topic!r} exists and is not direct")
            self._declare_exchange(topic)
            self._bind(topic, current[0].stream, 0)
            first_order = 1
        else:
            exchange = vhost.exchanges[topic]
            orders = [
                b.arguments[PARTITION_ORDER]
                for b in exchange.bindings.values()
                if isinstance(b.arguments.get(PARTITION_ORDER), int)
            ]
            first_order = max(orders) + 1
        for step, name in enumerate(names):
            self._declare_partition(topic, name, first_order + step, arguments)
        grown = self.get(topic)
        assert grown is not None
        log.info("kafka topic %s grown to %d partition(s)", topic, len(grown))
        return grown

    def delete(self, topic: str) -> bool:
        """Delete every stream of ``topic`` (and its exchange); False if there is none."""
        partitions = self.get(topic)
        if partitions is None:
            return False
        vhost = self.vhost
        for partition in partitions:
            vhost.delete_queue(partition.stream)  # type: ignore[arg-type]
        exchange = vhost.exchanges.get(topic)
        if exchange is not None and not exchange.bindings:
            try:
                vhost.delete_exchange(topic)
            except CoreError:
                pass
        self._cache.pop(topic, None)
        log.info("kafka topic %s deleted", topic)
        return True

    def close(self) -> None:
        """The streams belong to the core (storage closes them); drop the cache."""
        self._cache.clear()

    # -- helpers ------------------------------------------------------------------------

    def _check_free(self, topic: str, names: list[str], allow_exchange: bool = False) -> None:
        vhost = self.vhost
        if not allow_exchange and topic in vhost.exchanges:
            raise TopicError("exists", f"an exchange named {topic!r} exists")
        taken = [name for name in names if name in vhost.queues]
        if taken:
            raise TopicError("exists", f"queue(s) {', '.join(taken)} exist")
        for name in names:
            if not legal_topic_name(name):
                raise TopicError("invalid", f"illegal partition stream name {name!r}")

    def _declare_stream(self, name: str, arguments: dict[str, Any]) -> StreamQueue:
        try:
            queue, _created = self.vhost.declare_queue(name, durable=True, arguments=dict(arguments))
        except CoreError as exc:
            raise TopicError("invalid", str(exc)) from None
        return queue  # type: ignore[return-value]

    def _declare_exchange(self, topic: str) -> None:
        try:
            self.vhost.declare_exchange(topic, "direct", durable=True)
        except CoreError as exc:
            raise TopicError("invalid", str(exc)) from None

    def _bind(self, topic: str, stream: StreamQueue, order: int) -> None:
        self.vhost.bind(topic, stream, str(order), {PARTITION_ORDER: order})  # type: ignore[arg-type]

    def _declare_partition(
        self, topic: str, name: str, order: int, arguments: dict[str, Any]
    ) -> None:
        stream = self._declare_stream(name, arguments)
        self._bind(topic, stream, order)


def _copyable(arguments: dict[str, Any]) -> dict[str, Any]:
    return {
        key: value
        for key, value in arguments.items()
        if key in ("x-max-length-bytes", "x-max-age", "x-stream-max-segment-size-bytes")
    }
