"""Message counters and rates for the management API and /metrics.

Theory of operation
-------------------
The core keeps plain integer counters on each queue (publish / deliver / ack /
redeliver) and exchange (publish), and a few broker-wide ones.  Nothing here runs per
message: a sampler reads every counter once per ``interval`` (5 s, RabbitMQ's default
``collect_statistics_interval``) and keeps the previous sample, so a rate is
``(now - previous) / elapsed``: O(1) per object per sample, O(objects) per tick.

Broker-wide totals are the sum over live objects plus what deleted ones had counted
(``BrokerCore.retired``, added to when a queue or exchange is deleted, not per
message), so a total never goes backwards when a queue is deleted (Prometheus would
read that as a counter reset).

Channels are sampled the same way, from counters the AMQP channel keeps anyway:
``publish_count`` and the delivery-tag sequence (every deliver and get-ok takes one).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ...core.broker import BrokerCore
    from ...core.queue import Queue

QUEUE_FIELDS = ("publish", "deliver_get", "ack", "redeliver")
TOTAL_FIELDS = (
    "publish",
    "deliver_get",
    "ack",
    "redeliver",
    "confirm",
    "return_unroutable",
    "drop_unroutable",
)


def queue_counts(queue: Queue) -> tuple[int, int, int, int]:
    return (queue.publish_count, queue.deliver_count, queue.ack_count, queue.redeliver_count)


def channel_counts(channel: Any) -> tuple[int, int]:
    """(messages published, messages delivered or got) on an AMQP channel."""
    return (channel.publish_count, channel.next_delivery_tag - 1)


class StatsSampler:
    def __init__(self, core: BrokerCore, interval: float = 5.0) -> None:
        self.core = core
        self.interval = interval
        # id(queue) -> (queue, counts at the last sample, rates)
        self._queues: dict[int, tuple[Any, tuple[int, ...], tuple[float, ...]]] = {}
        # id(channel) -> (channel, (publish, deliver_get) at the last sample, rates)
        self._channels: dict[int, tuple[Any, tuple[int, int], tuple[float, float]]] = {}
        self._exchanges: dict[int, tuple[Any, int, float]] = {}
        self._previous_totals: dict[str, int] | None = None
        self._previous_at = time.monotonic()
        self.total_rates: dict[str, float] = dict.fromkeys(TOTAL_FIELDS, 0.0)
        self.queue_totals_rates: dict[str, float] = {
            "messages": 0.0,
            "messages_ready": 0.0,
            "messages_unacknowledged": 0.0,
        }
        self._previous_depths: tuple[int, int] | None = None
        self._task: asyncio.Task[None] | None = None

    # --- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.sample()
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.sample()

    # --- sampling ----------------------------------------------------------------------

    def sample(self) -> None:
        now = time.monotonic()
        elapsed = max(now - self._previous_at, 1e-6)
        self._previous_at = now
        seen: dict[int, tuple[Any, tuple[int, ...], tuple[float, ...]]] = {}
        seen_exchanges: dict[int, tuple[Any, int, float]] = {}
        for vhost in self.core.vhosts.values():
            for queue in vhost.queues.values():
                counts = queue_counts(queue)
                previous = self._queues.get(id(queue))
                if previous is not None and previous[0] is queue:
                    rates = tuple(
                        max(0, c - p) / elapsed for c, p in zip(counts, previous[1], strict=True)
                    )
                else:
                    rates = (0.0, 0.0, 0.0, 0.0)
                seen[id(queue)] = (queue, counts, rates)
            for exchange in vhost.exchanges.values():
                count = exchange.publish_count
                before = self._exchanges.get(id(exchange))
                rate = (
                    max(0, count - before[1]) / elapsed
                    if before is not None and before[0] is exchange
                    else 0.0
                )
                seen_exchanges[id(exchange)] = (exchange, count, rate)
        seen_channels: dict[int, tuple[Any, tuple[int, int], tuple[float, float]]] = {}
        for connection in self.core.connections.values():
            channels = getattr(connection, "channels", None)  # MQTT, STOMP...: none
            if not channels:
                continue
            for channel in channels.values():
                now_counts = channel_counts(channel)
                before_channel = self._channels.get(id(channel))
                if before_channel is not None and before_channel[0] is channel:
                    channel_rates = (
                        max(0, now_counts[0] - before_channel[1][0]) / elapsed,
                        max(0, now_counts[1] - before_channel[1][1]) / elapsed,
                    )
                else:
                    channel_rates = (0.0, 0.0)
                seen_channels[id(channel)] = (channel, now_counts, channel_rates)
        self._channels = seen_channels
        self._queues = seen
        self._exchanges = seen_exchanges
        totals = self.totals()
        if self._previous_totals is not None:
            self.total_rates = {
                k: max(0, totals[k] - self._previous_totals[k]) / elapsed for k in TOTAL_FIELDS
            }
        self._previous_totals = totals
        ready, unacked = self.depths()
        if self._previous_depths is not None:
            before_ready, before_unacked = self._previous_depths
            self.queue_totals_rates = {
                "messages": (ready + unacked - before_ready - before_unacked) / elapsed,
                "messages_ready": (ready - before_ready) / elapsed,
                "messages_unacknowledged": (unacked - before_unacked) / elapsed,
            }
        self._previous_depths = (ready, unacked)

    # --- readers -----------------------------------------------------------------------

    def queue_rates(self, queue: Queue) -> tuple[float, ...]:
        sampled = self._queues.get(id(queue))
        if sampled is None or sampled[0] is not queue:
            return (0.0, 0.0, 0.0, 0.0)
        return sampled[2]

    def channel_rates(self, channel: Any) -> tuple[float, float]:
        """(publish, deliver_get) per second on ``channel`` over the last interval."""
        sampled = self._channels.get(id(channel))
        if sampled is None or sampled[0] is not channel:
            return (0.0, 0.0)
        return sampled[2]

    def exchange_rate(self, exchange: Any) -> float:
        """Messages published to ``exchange`` per second over the last sample interval."""
        sampled = self._exchanges.get(id(exchange))
        if sampled is None or sampled[0] is not exchange:
            return 0.0
        return sampled[2]

    def totals(self) -> dict[str, int]:
        """Broker-wide monotonic counters (see the module docstring)."""
        live = [0, 0, 0, 0]
        published = 0
        for vhost in self.core.vhosts.values():
            for queue in vhost.queues.values():
                for i, value in enumerate(queue_counts(queue)):
                    live[i] += value
            for exchange in vhost.exchanges.values():
                published += exchange.publish_count
        counters = self.core.counters
        retired = self.core.retired
        return {
            "publish": published + retired["publish"],
            "deliver_get": live[1] + retired["deliver_get"],
            "ack": live[2] + retired["ack"],
            "redeliver": live[3] + retired["redeliver"],
            "confirm": counters.get("confirmed", 0),
            "return_unroutable": counters.get("returned", 0),
            "drop_unroutable": counters.get("unroutable", 0),
        }

    def depths(self) -> tuple[int, int]:
        ready = unacked = 0
        for vhost in self.core.vhosts.values():
            for queue in vhost.queues.values():
                ready += queue.message_count
                unacked += queue.unacked_count
        return ready, unacked
