"""GET /metrics: Prometheus text format, read from the core at scrape time.

A custom collector (no per-message instrumentation): every scrape walks the vhosts and
queues once and reads the plain counters the core already keeps, so the hot path pays
nothing for metrics.  Each HTTP server has its own ``CollectorRegistry`` so several
embedded brokers in one process do not collide.  No authentication by default, as with
RabbitMQ's ``rabbitmq_prometheus`` plugin; put it behind the network policy you use for
other exporters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .routes import server_of

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

    from .server import HTTPServer


class BrokerCollector(Collector):
    def __init__(self, server: HTTPServer) -> None:
        self.server = server

    def collect(self) -> Iterator[Metric]:
        server = self.server
        core = server.core
        labels = ["vhost", "queue"]
        ready = GaugeMetricFamily(
            "baedal_queue_messages_ready", "Messages ready for delivery", labels=labels
        )
        unacked = GaugeMetricFamily(
            "baedal_queue_messages_unacked",
            "Messages delivered and not yet acknowledged",
            labels=labels,
        )
        consumers = GaugeMetricFamily(
            "baedal_queue_consumers", "Consumers on the queue", labels=labels
        )
        ready_bytes = GaugeMetricFamily(
            "baedal_queue_messages_ready_bytes", "Body bytes of ready messages", labels=labels
        )
        published = CounterMetricFamily(
            "baedal_queue_messages_published", "Messages enqueued", labels=labels
        )
        delivered = CounterMetricFamily(
            "baedal_queue_messages_delivered", "Messages delivered (consume and get)", labels=labels
        )
        acked = CounterMetricFamily(
            "baedal_queue_messages_acked", "Messages acknowledged", labels=labels
        )
        redelivered = CounterMetricFamily(
            "baedal_queue_messages_redelivered", "Messages delivered again", labels=labels
        )
        dropped = CounterMetricFamily(
            "baedal_queue_messages_dropped",
            "Messages dropped or refused by the queue's length limit (x-overflow)",
            labels=labels,
        )
        # Streams (core/stream.py): size on disk, segments, offsets and readers.
        stream_bytes = GaugeMetricFamily(
            "baedal_stream_bytes_on_disk", "Bytes of the stream's segments on disk", labels=labels
        )
        stream_segments = GaugeMetricFamily(
            "baedal_stream_segments", "Segment files of the stream", labels=labels
        )
        stream_first = GaugeMetricFamily(
            "baedal_stream_first_offset", "Oldest retained offset of the stream", labels=labels
        )
        stream_committed = GaugeMetricFamily(
            "baedal_stream_committed_offset",
            "Offset after the last record covered by fsync (readers see records below it)",
            labels=labels,
        )
        stream_next = GaugeMetricFamily(
            "baedal_stream_next_offset", "Offset the next appended record gets", labels=labels
        )
        stream_readers = GaugeMetricFamily(
            "baedal_stream_readers", "Consumers reading the stream", labels=labels
        )
        queue_count = exchange_count = consumer_total = 0
        for vhost in list(core.vhosts.values()):
            exchange_count += len(vhost.exchanges)
            for queue in list(vhost.queues.values()):
                queue_count += 1
                consumer_total += len(queue.consumers)
                values = [vhost.name, queue.name]
                ready.add_metric(values, queue.message_count)
                unacked.add_metric(values, queue.unacked_count)
                consumers.add_metric(values, len(queue.consumers))
                ready_bytes.add_metric(values, queue.store.ready_bytes)
                published.add_metric(values, queue.publish_count)
                delivered.add_metric(values, queue.deliver_count)
                acked.add_metric(values, queue.ack_count)
                redelivered.add_metric(values, queue.redeliver_count)
                dropped.add_metric(values, getattr(queue, "dropped_count", 0))
                stream_info = getattr(queue, "stream_info", None)
                if stream_info is not None:
                    details = stream_info()
                    stream_bytes.add_metric(values, details["bytes_on_disk"])
                    stream_segments.add_metric(values, details["segments"])
                    stream_first.add_metric(values, details["first_offset"])
                    stream_committed.add_metric(values, details["committed_offset"])
                    stream_next.add_metric(values, details["next_offset"])
                    stream_readers.add_metric(values, details["readers"])
        yield from (
            stream_bytes,
            stream_segments,
            stream_first,
            stream_committed,
            stream_next,
            stream_readers,
            ready,
            unacked,
            consumers,
            ready_bytes,
            published,
            delivered,
            acked,
            redelivered,
            dropped,
        )

        channels = sum(len(getattr(c, "channels", {})) for c in list(core.connections.values()))
        yield from _protocol_families(server)
        yield _gauge("baedal_channels", "Open channels", channels)
        yield _gauge("baedal_consumers", "Consumers on all queues", consumer_total)
        yield _gauge("baedal_queues", "Queues", queue_count)
        yield _gauge("baedal_exchanges", "Exchanges", exchange_count)
        yield _gauge("baedal_vhosts", "Virtual hosts", len(core.vhosts))
        scheduler = getattr(core, "scheduler", None)
        if scheduler is not None:  # core/scheduler.py
            yield _gauge("baedal_scheduled_messages", "Scheduled messages waiting to fire", scheduler.count())
            yield CounterMetricFamily(
                "baedal_scheduled_fired", "Scheduled deliveries made", value=scheduler.fired
            )
            yield _gauge(
                "baedal_scheduled_settling",
                "Scheduled deliveries made whose tombstone is not written yet (a crash fires them again)",
                scheduler.settling,
            )
        yield from _storage_families(core)
        yield _gauge(
            "baedal_rest_leases",
            "Messages leased to REST and WebSocket clients",
            len(server.leases.leases),
        )

        totals = server.sampler.totals()
        counters = core.counters
        for name, help_text, value in (
            ("baedal_messages_published", "Messages published to exchanges", totals["publish"]),
            (
                "baedal_messages_delivered",
                "Messages delivered (consume and get)",
                totals["deliver_get"],
            ),
            ("baedal_messages_acked", "Messages acknowledged", totals["ack"]),
            ("baedal_messages_redelivered", "Messages delivered again", totals["redeliver"]),
            ("baedal_messages_confirmed", "Publisher confirms sent", counters.get("confirmed", 0)),
            (
                "baedal_messages_returned",
                "Mandatory messages returned as unroutable",
                counters.get("returned", 0),
            ),
            (
                "baedal_messages_unroutable",
                "Messages that matched no queue",
                counters.get("unroutable", 0),
            ),
            (
                "baedal_connections_opened",
                "Connections opened",
                counters.get("connections_opened", 0),
            ),
            (
                "baedal_connections_closed",
                "Connections closed",
                counters.get("connections_closed", 0),
            ),
            ("baedal_channels_opened", "Channels opened", counters.get("channels_opened", 0)),
            ("baedal_channels_closed", "Channels closed", counters.get("channels_closed", 0)),
        ):
            counter = CounterMetricFamily(name, help_text)
            counter.add_metric([], value)
            yield counter

        resources = server.resources()
        yield _gauge(
            "baedal_process_resident_memory_bytes",
            "Resident set size of the broker process",
            resources["mem_used"],
        )
        yield _gauge(
            "baedal_memory_limit_bytes", "Memory high watermark in bytes", resources["mem_limit"]
        )
        yield _gauge(
            "baedal_disk_free_bytes",
            "Free disk space where the data directory lives",
            resources["disk_free"],
        )
        yield _gauge(
            "baedal_disk_free_limit_bytes",
            "Disk free limit that raises the disk alarm",
            core.config.disk_free_limit,
        )
        alarm = GaugeMetricFamily(
            "baedal_alarm", "1 while a resource alarm blocks publishers", labels=["resource"]
        )
        for resource in ("memory", "disk"):
            alarm.add_metric([resource], 1 if resource in core.alarms else 0)
        yield alarm
        yield _gauge("baedal_uptime_seconds", "Seconds since the broker started", _uptime(core))


def _protocol_of(connection: object) -> str:
    """The ``protocol`` label: the protocol family, without its version."""
    text = str(getattr(connection, "protocol", "AMQP 0-9-1")).lower()
    for family in ("amqp", "stomp", "mqtt", "inproc"):
        if family in text:
            return family
    return text.split(" ")[0]


def _protocol_families(server: HTTPServer) -> Iterator[Metric]:
    """Connections per protocol, and what the MQTT and STOMP adapters count."""
    from .api import other_connections

    broker = server.broker
    by_protocol = dict.fromkeys(("amqp", "stomp", "mqtt", "inproc"), 0)
    for connection in list(server.core.connections.values()) + other_connections(broker):
        protocol = _protocol_of(connection)
        by_protocol[protocol] = by_protocol.get(protocol, 0) + 1
    connections = GaugeMetricFamily(
        "baedal_connections", "Open client connections, by protocol", labels=["protocol"]
    )
    for protocol, count in by_protocol.items():
        connections.add_metric([protocol], count)
    yield connections
    received = CounterMetricFamily(
        "baedal_protocol_messages_received",
        "Messages published by clients of a protocol adapter",
        labels=["protocol"],
    )
    delivered = CounterMetricFamily(
        "baedal_protocol_messages_delivered",
        "Messages delivered to clients of a protocol adapter",
        labels=["protocol"],
    )
    mqtt = getattr(broker, "mqtt", None)
    stomp = getattr(broker, "stomp", None)
    if mqtt is not None:
        received.add_metric(["mqtt"], mqtt.counters["publish_in"])
        delivered.add_metric(["mqtt"], mqtt.counters["publish_out"])
    if stomp is not None:
        received.add_metric(["stomp"], stomp.counters["received"])
        delivered.add_metric(["stomp"], stomp.counters["delivered"])
    yield received
    yield delivered
    if mqtt is not None:
        yield _gauge("baedal_mqtt_retained_messages", "MQTT retained messages", len(mqtt.retained.messages))
        sessions = GaugeMetricFamily(
            "baedal_mqtt_sessions", "MQTT sessions held in memory", labels=["state"]
        )
        connected = sum(1 for s in list(mqtt.sessions.values()) if s.connection is not None)
        sessions.add_metric(["connected"], connected)
        sessions.add_metric(["disconnected"], len(mqtt.sessions) - connected)
        yield sessions


def _gauge(name: str, help_text: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, help_text, value=value)


def _uptime(core: object) -> float:
    import time

    return time.time() - getattr(core, "started_at", time.time())


def registry_for(server: HTTPServer) -> CollectorRegistry:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(BrokerCollector(server))
    from .kafka import KafkaCollector

    registry.register(KafkaCollector(server))
    return registry


async def metrics(request: web.Request) -> web.Response:
    server = server_of(request)
    registry = getattr(server, "_metrics_registry", None)
    if registry is None:
        registry = server._metrics_registry = registry_for(server)  # type: ignore[attr-defined]
    body = generate_latest(registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def _storage_families(core: object) -> Iterator[Metric]:
    """The group commit and write-behind counters (``storage/syncer.py``,
    ``storage/queue_store.py``): how many confirms needed an fsync, and how many
    persistent messages were settled before they had to be written."""
    storage = getattr(core, "storage", None)
    syncer = getattr(storage, "syncer", None)
    if syncer is None:
        return
    for name, help_text, value in (
        ("baedal_storage_fsync_jobs", "Group-commit fsync jobs run", syncer.fsync_jobs),
        (
            "baedal_storage_sync_jobs_without_fsync",
            "Sync jobs that had nothing to fsync (their confirms were sent at once)",
            syncer.jobs_without_fsync,
        ),
        (
            "baedal_storage_sync_holds",
            "Sync jobs held briefly for consumers' acks (write-behind)",
            syncer.holds,
        ),
        (
            "baedal_storage_confirms_released_early",
            "Durability callbacks (confirms) run before their sync job: every deferred "
            "message before them was settled",
            syncer.released_early,
        ),
    ):
        yield CounterMetricFamily(name, help_text, value=value)
    stores = list(getattr(storage, "stores", {}).values())
    deleted = getattr(storage, "deleted_deferred", (0, 0))
    yield CounterMetricFamily(
        "baedal_storage_write_behind_written",
        "Persistent messages whose deferred write happened",
        value=deleted[0] + sum(store.deferred_written for store in stores),
    )
    yield CounterMetricFamily(
        "baedal_storage_write_behind_skipped",
        "Persistent messages settled before their deferred write: never written",
        value=deleted[1] + sum(store.deferred_skipped for store in stores),
    )
