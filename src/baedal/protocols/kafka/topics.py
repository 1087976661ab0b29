"""Topic registry: topic name -> partitions -> StreamLog.

SEAM: this class stands in for the protocol-neutral core's StreamQueue (issue 10),
which is being built in parallel.  When it lands, a Kafka topic partition becomes a
stream in a vhost and this registry is replaced by a lookup in the core; keep it small
and keep every Kafka handler going through it (``partition``/``create``/``topics``).

Layout: ``<data_dir>/kafka/<topic>-<partition>/`` is one ``StreamLog`` (Kafka's own
directory naming).  At start-up every such directory is opened, which runs the stream
log's recovery.  Appends are group-committed through the broker's ``Syncer``.

Each partition also tracks ``durable_offset``: the offset up to which an fsync has
covered the log (Kafka's high watermark on a single node, given Baedal's
fsync-before-ack promise).  Consumers are only served below it, so no consumer can see
a record that a crash could still take back, and long-polling fetches wait on it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ...storage.stream_log import StreamLog
from ...storage.syncer import Syncer

log = logging.getLogger("baedal.kafka")

# Kafka's legal topic names (Topic.java: [a-zA-Z0-9._-], at most 249 characters).
_LEGAL_TOPIC = re.compile(r"[a-zA-Z0-9._-]{1,249}")
_PARTITION_DIR = re.compile(r"(.+)-(\d+)")


class Partition:
    __slots__ = ("topic", "index", "log", "durable_offset", "_waiters")

    def __init__(self, topic: str, index: int, stream: StreamLog) -> None:
        self.topic = topic
        self.index = index
        self.log = stream
        # Everything recovered at open was on disk; from then on the syncer moves it.
        self.durable_offset = stream.next_offset
        self._waiters: list[Callable[[], Any]] = []

    def add_waiter(self, callback: Callable[[], Any]) -> None:
        """Call ``callback`` once, the next time ``durable_offset`` advances."""
        self._waiters.append(callback)

    def remove_waiter(self, callback: Callable[[], Any]) -> None:
        try:
            self._waiters.remove(callback)
        except ValueError:
            pass

    def advance(self, offset: int) -> None:
        if offset <= self.durable_offset:
            return
        self.durable_offset = offset
        waiters, self._waiters = self._waiters, []
        for callback in waiters:
            callback()


def legal_topic_name(name: str) -> bool:
    return bool(_LEGAL_TOPIC.fullmatch(name)) and name not in (".", "..")


class TopicRegistry:
    def __init__(
        self,
        directory: Path,
        syncer: Syncer,
        *,
        segment_bytes: int = 64 * 1024 * 1024,
    ) -> None:
        self.directory = directory
        self.syncer = syncer
        self.segment_bytes = segment_bytes
        self._topics: dict[str, list[Partition]] = {}

    def open(self) -> None:
        """Open (and so recover) every partition found under the directory."""
        self.directory.mkdir(parents=True, exist_ok=True)
        found: dict[str, dict[int, Path]] = {}
        for path in sorted(self.directory.iterdir()):
            match = _PARTITION_DIR.fullmatch(path.name)
            if path.is_dir() and match and legal_topic_name(match.group(1)):
                found.setdefault(match.group(1), {})[int(match.group(2))] = path
        for topic, partitions in found.items():
            count = max(partitions) + 1
            self._topics[topic] = [self._open_partition(topic, i) for i in range(count)]
            lost = sum(p.log.recovery.lost_bytes for p in self._topics[topic])
            if lost:
                log.warning("kafka topic %s: recovery dropped %d byte(s)", topic, lost)

    def _open_partition(self, topic: str, index: int) -> Partition:
        stream = StreamLog.open(
            self.directory / f"{topic}-{index}",
            syncer=self.syncer,
            max_segment_bytes=self.segment_bytes,
        )
        return Partition(topic, index, stream)

    def topics(self) -> dict[str, list[Partition]]:
        return self._topics

    def get(self, topic: str) -> list[Partition] | None:
        return self._topics.get(topic)

    def partition(self, topic: str, index: int) -> Partition | None:
        partitions = self._topics.get(topic)
        if partitions is None or not 0 <= index < len(partitions):
            return None
        return partitions[index]

    def create(self, topic: str, partitions: int) -> list[Partition]:
        if not legal_topic_name(topic):
            raise ValueError(f"illegal topic name {topic!r}")
        existing = self._topics.get(topic)
        if existing is not None:
            return existing
        created = [self._open_partition(topic, i) for i in range(partitions)]
        # The new directories must survive a crash before anyone is told they exist.
        for partition in created:
            partition.log.sync()
        self._topics[topic] = created
        log.info("kafka topic %s created with %d partition(s)", topic, partitions)
        return created

    def delete(self, topic: str) -> bool:
        """Close and remove every partition of ``topic``; False if there is none."""
        partitions = self._topics.pop(topic, None)
        if partitions is None:
            return False
        for partition in partitions:
            partition.log.close()
            shutil.rmtree(partition.log.directory, ignore_errors=True)
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)  # the removal must not come back after a crash
        finally:
            os.close(fd)
        log.info("kafka topic %s deleted", topic)
        return True

    def close(self) -> None:
        for partitions in self._topics.values():
            for partition in partitions:
                partition.log.close()
        self._topics.clear()
