"""Message counters and rates for the management API and /metrics.

Theory of operation
-------------------
The core keeps plain integer counters on each queue (publish / deliver / ack /
redeliver) and exchange (publish), and a few broker-wide ones.  Nothing here runs per
message: a sampler reads every counter once per ``interval`` (5 s, RabbitMQ's default
``collect_statistics_interval``) and keeps the previous sample, so a rate is
``(now - previous) / elapsed``: O(1) per object per sample, O(objects) per tick.

Broker-wide totals are the sum over live objects plus the last sampled counts of
objects that have since been deleted (``retired``), so a total never goes backwards
when a queue is deleted (Prometheus would read that as a counter reset).  Counts made
by a queue between its last sample and its deletion are lost from the totals; that is
at most one interval's worth and is the price of not hooking the hot path.
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


class StatsSampler:
    def __init__(self, core: BrokerCore, interval: float = 5.0) -> None:
        self.core = core
        self.interval = interval
        # id(queue) -> (queue, counts at the last sample, rates)
        self._queues: dict[int, tuple[Any, tuple[int, ...], tuple[float, ...]]] = {}
        self._retired = [0, 0, 0, 0]
        self._exchange_retired = 0
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
        for key, (queue, counts, _rates) in self._queues.items():
            if key not in seen or seen[key][0] is not queue:
                for i, value in enumerate(counts):
                    self._retired[i] += value
        for key, (exchange, count, _rate) in self._exchanges.items():
            if key not in seen_exchanges or seen_exchanges[key][0] is not exchange:
                self._exchange_retired += count
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
        return {
            "publish": published + self._exchange_retired,
            "deliver_get": live[1] + self._retired[1],
            "ack": live[2] + self._retired[2],
            "redeliver": live[3] + self._retired[3],
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
