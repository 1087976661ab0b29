"""The MQTT listener's keep-alive buckets (``MQTTServer.watch`` / ``unwatch`` /
``_sweep``): a connection that leaves is removed lazily (amortised O(1); an identity
scan per close was quadratic under churn), the sweep never checks a connection that
left, a bucket never holds more closed connections than live ones, and a connection
booked twice for the same tick is checked once.  A real ``MQTTServer`` on a real core;
the connections are stand-ins with the two fields the sweep uses (no sockets needed to
exercise the bookkeeping)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from baedal.core.broker import BrokerConfig, BrokerCore
from baedal.protocols.mqtt.retained import RetainedStore
from baedal.protocols.mqtt.server import MQTTConfig, MQTTServer


class Watched:
    __slots__ = ("_due", "checks", "client_id")

    def __init__(self) -> None:
        self._due = 0
        self.checks = 0
        self.client_id = "stand-in"

    def check_idle(self) -> None:
        self.checks += 1


def make_server(tmp_path: Path, loop: asyncio.AbstractEventLoop) -> MQTTServer:
    core = BrokerCore(BrokerConfig(data_dir=tmp_path), loop)
    return MQTTServer(core, MQTTConfig(), RetainedStore(None, None))


def test_leaving_connections_are_never_checked_and_buckets_stay_bounded(tmp_path: Path) -> None:
    loop = asyncio.new_event_loop()
    try:
        server = make_server(tmp_path, loop)
        connections = [Watched() for _ in range(20_000)]
        for connection in connections:
            server.watch(connection, 3)  # all due in the same tick
        (due,) = server._due
        leaving, staying = connections[1::2], connections[::2]
        for i, connection in enumerate(reversed(leaving)):  # newest first: a scan's worst case
            server.unwatch(connection)
            if i % 997 == 0:
                bucket = server._due[due]
                live = sum(1 for c in bucket if c._due == due)
                assert len(bucket) - live <= live  # at most as many closed as live ones
        # Booked again for the same tick: listed twice, checked once.
        server.unwatch(staying[0])
        server.watch(staying[0], 3)
        for _ in range(3):
            server._sweep()
        assert all(c.checks == 1 for c in staying)
        assert all(c.checks == 0 for c in leaving)
        assert not server._due and not server._stale
        # Every one leaving empties the buckets without a sweep.
        for connection in staying:
            server.watch(connection, 5)
        for connection in staying:
            server.unwatch(connection)
        assert not server._due and not server._stale
        if server._sweeper is not None:
            server._sweeper.cancel()
    finally:
        loop.close()
