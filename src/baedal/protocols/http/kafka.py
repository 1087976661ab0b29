"""Kafka in the management API, the console and ``/metrics``.

``GET /api/kafka/topics`` (and ``/api/kafka/topics/{topic}``): every topic with its
partitions (the stream behind each, first and next offset, committed offset = high
watermark, bytes on disk, segments, bytes/records in, bytes out).

``GET /api/kafka/groups`` (and ``/api/kafka/groups/{group}``): every consumer group
(live in the coordinator or only known by committed offsets) with state, protocol,
members (client id, assigned partitions decoded from the consumer protocol's
assignment) and committed offsets with lag (high watermark - committed offset).

``/metrics`` gets ``KafkaCollector``: per topic/partition
``baedal_kafka_partition_{bytes_in,records_in,bytes_out,records_out}_total`` counters
(records out: counted when a connection's next fetch of the partition moves past them),
the
partition's offsets, and ``baedal_kafka_group_lag`` per group/topic/partition.

Everything is read on the broker's loop thread (the HTTP server runs on it), so the
numbers are a consistent snapshot.  With the Kafka listener off, the lists are empty.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from .auth import Access
from .errors import HTTPError
from .routes import SERVER, Route

if TYPE_CHECKING:
    from .server import HTTPServer

_INT16 = struct.Struct(">h")
_INT32 = struct.Struct(">i")
MAX_ASSIGNMENT_TOPICS = 10_000  # a bound for decoding a client-supplied assignment


def _kafka(server: HTTPServer) -> Any:
    return getattr(server.broker, "kafka", None)


def decode_assignment(data: bytes) -> list[dict[str, Any]]:
    """The consumer protocol's assignment (version, [topic, [partition]], user data)
    as ``[{"topic", "partitions"}]``; [] for bytes that are not one (another protocol)."""
    try:
        offset = 2  # version
        (count,) = _INT32.unpack_from(data, offset)
        offset += 4
        if not 0 <= count <= MAX_ASSIGNMENT_TOPICS:
            return []
        topics = []
        for _ in range(count):
            (length,) = _INT16.unpack_from(data, offset)
            offset += 2
            if length < 0 or offset + length > len(data):
                return []
            topic = bytes(data[offset:offset + length]).decode("utf-8", "replace")
            offset += length
            (partitions,) = _INT32.unpack_from(data, offset)
            offset += 4
            if partitions < 0 or offset + 4 * partitions > len(data):
                return []
            indexes = list(struct.unpack_from(f">{partitions}i", data, offset))
            offset += 4 * partitions
            topics.append({"topic": topic, "partitions": indexes})
        return topics
    except struct.error:
        return []


def topic_info(kafka: Any, name: str, partitions: list[Any]) -> dict[str, Any]:
    rows = []
    for partition in partitions:
        stream = partition.stream
        log = stream.log
        counters = kafka.traffic(name, partition.index)
        rows.append(
            {
                "partition": partition.index,
                "stream": stream.name,
                "first_offset": log.first_offset,
                "next_offset": log.next_offset,
                "high_watermark": stream.committed_offset,
                "messages": log.message_count,
                "bytes_on_disk": log.bytes_on_disk,
                "segments": log.segment_count,
                "bytes_in": counters[0],
                "records_in": counters[1],
                "bytes_out": counters[2],
                "records_out": counters[3],
            }
        )
    return {
        "name": name,
        "vhost": kafka.registry.vhost.name,
        "partitions": rows,
        "messages": sum(r["messages"] for r in rows),
        "bytes_on_disk": sum(r["bytes_on_disk"] for r in rows),
    }


def _high_watermark(kafka: Any, topic: str, index: int) -> int | None:
    partition = kafka.registry.partition(topic, index)
    return partition.stream.committed_offset if partition is not None else None


def group_info(kafka: Any, group_id: str) -> dict[str, Any]:
    coordinator = kafka.coordinator
    group = coordinator.groups.get(group_id)
    members = []
    if group is not None:
        for member in group.members.values():
            members.append(
                {
                    "member_id": member.member_id,
                    "client_id": member.client_id,
                    "assignment": decode_assignment(member.assignment),
                }
            )
    offsets = []
    total_lag = 0
    for topic, partitions in sorted(coordinator.offsets.for_group(group_id).items()):
        for index, (offset, metadata) in sorted(partitions.items()):
            high = _high_watermark(kafka, topic, index)
            lag = max(high - offset, 0) if high is not None and offset >= 0 else None
            total_lag += lag or 0
            offsets.append(
                {
                    "topic": topic,
                    "partition": index,
                    "committed_offset": offset,
                    "metadata": metadata,
                    "high_watermark": high,
                    "lag": lag,
                }
            )
    state = "Dead"
    if group is not None:
        state = group.state.value if group.members else "Empty"
    elif offsets:
        state = "Empty"
    return {
        "group_id": group_id,
        "state": state,
        "protocol_type": group.protocol_type if group is not None else "consumer",
        "protocol": (group.protocol or "") if group is not None else "",
        "generation": group.generation if group is not None else -1,
        "members": members,
        "offsets": offsets,
        "lag": total_lag,
    }


def _group_ids(kafka: Any) -> list[str]:
    coordinator = kafka.coordinator
    return sorted(set(coordinator.groups) | {g for g, _t, _p in coordinator.offsets.committed})


# --- handlers -------------------------------------------------------------------------------


async def list_topics(request: web.Request) -> web.Response:
    kafka = _kafka(request.app[SERVER])
    if kafka is None:
        return web.json_response([])
    topics = kafka.registry.topics()
    return web.json_response([topic_info(kafka, name, topics[name]) for name in sorted(topics)])


async def get_topic(request: web.Request) -> web.Response:
    kafka = _kafka(request.app[SERVER])
    name = request.match_info["topic"]
    partitions = kafka.registry.get(name) if kafka is not None else None
    if partitions is None:
        raise HTTPError(404, f"no Kafka topic '{name}'", "not_found")
    return web.json_response(topic_info(kafka, name, partitions))


async def list_groups(request: web.Request) -> web.Response:
    kafka = _kafka(request.app[SERVER])
    if kafka is None:
        return web.json_response([])
    return web.json_response([group_info(kafka, g) for g in _group_ids(kafka)])


async def get_group(request: web.Request) -> web.Response:
    kafka = _kafka(request.app[SERVER])
    group_id = request.match_info["group"]
    if kafka is None or group_id not in _group_ids(kafka):
        raise HTTPError(404, f"no Kafka consumer group '{group_id}'", "not_found")
    return web.json_response(group_info(kafka, group_id))


# --- schemas and routes -----------------------------------------------------------------------

_INT: dict[str, Any] = {"type": "integer"}
_STR: dict[str, Any] = {"type": "string"}
PARTITION = {
    "type": "object",
    "properties": {
        key: _INT
        for key in (
            "partition", "first_offset", "next_offset", "high_watermark", "messages",
            "bytes_on_disk", "segments", "bytes_in", "records_in", "bytes_out", "records_out",
        )
    }
    | {"stream": _STR},
    "required": ["partition", "stream", "first_offset", "high_watermark"],
}
TOPIC = {
    "type": "object",
    "properties": {
        "name": _STR,
        "vhost": _STR,
        "partitions": {"type": "array", "items": PARTITION},
        "messages": _INT,
        "bytes_on_disk": _INT,
    },
    "required": ["name", "vhost", "partitions"],
}
GROUP = {
    "type": "object",
    "properties": {
        "group_id": _STR,
        "state": _STR,
        "protocol_type": _STR,
        "protocol": _STR,
        "generation": _INT,
        "members": {"type": "array", "items": {"type": "object"}},
        "offsets": {"type": "array", "items": {"type": "object"}},
        "lag": _INT,
    },
    "required": ["group_id", "state", "members", "offsets"],
}

ROUTES: list[Route] = [
    Route("GET", "/api/kafka/topics", list_topics, Access.READ, "Kafka topics and partitions",
          "kafka", response={"type": "array", "items": TOPIC}),
    Route("GET", "/api/kafka/topics/{topic}", get_topic, Access.READ, "One Kafka topic", "kafka",
          response=TOPIC, other_statuses=(404,)),
    Route("GET", "/api/kafka/groups", list_groups, Access.READ,
          "Kafka consumer groups: members, assignments, committed offsets and lag", "kafka",
          response={"type": "array", "items": GROUP}),
    Route("GET", "/api/kafka/groups/{group}", get_group, Access.READ, "One Kafka consumer group",
          "kafka", response=GROUP, other_statuses=(404,)),
]


# --- /metrics ---------------------------------------------------------------------------------


class KafkaCollector:
    def __init__(self, server: HTTPServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Any]:
        kafka = _kafka(self.server)
        if kafka is None:
            return
        labels = ["topic", "partition"]
        counters = {
            "bytes_in": CounterMetricFamily(
                "baedal_kafka_partition_bytes_in", "Record batch bytes produced", labels=labels
            ),
            "records_in": CounterMetricFamily(
                "baedal_kafka_partition_records_in", "Records produced", labels=labels
            ),
            "bytes_out": CounterMetricFamily(
                "baedal_kafka_partition_bytes_out", "Record batch bytes fetched", labels=labels
            ),
            "records_out": CounterMetricFamily(
                "baedal_kafka_partition_records_out",
                "Records consumers fetched and moved past (counted at their next fetch)",
                labels=labels,
            ),
        }
        high = GaugeMetricFamily(
            "baedal_kafka_partition_high_watermark", "Committed (readable) end offset", labels=labels
        )
        first = GaugeMetricFamily(
            "baedal_kafka_partition_first_offset", "First retained offset", labels=labels
        )
        topics = kafka.registry.topics()
        for name in sorted(topics):
            info = topic_info(kafka, name, topics[name])
            for row in info["partitions"]:
                values = [name, str(row["partition"])]
                for key, family in counters.items():
                    family.add_metric(values, row[key])
                high.add_metric(values, row["high_watermark"])
                first.add_metric(values, row["first_offset"])
        yield from counters.values()
        yield high
        yield first
        lag = GaugeMetricFamily(
            "baedal_kafka_group_lag",
            "High watermark minus the group's committed offset",
            labels=["group", "topic", "partition"],
        )
        for group_id in _group_ids(kafka):
            for row in group_info(kafka, group_id)["offsets"]:
                if row["lag"] is not None:
                    lag.add_metric([group_id, row["topic"], str(row["partition"])], row["lag"])
        yield lag
