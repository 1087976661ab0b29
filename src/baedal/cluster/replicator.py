"""The clustering seam: every durable append and ack goes through a ``Replicator``.

Today a broker is one node and ``LocalReplicator`` does nothing.  When Baedal nodes
cluster (membership, placement and leader election in etcd, never a home-made
consensus), the queue leader's replicator ships each appended record to its followers
and holds the publisher confirm until a quorum has it; acks travel the same way.  The
core calls it at exactly these two points so that change does not reach into queues.
"""

from __future__ import annotations

from typing import Any, Protocol


class Replicator(Protocol):
    def appended(self, queue: Any, entry: Any) -> None:
        """A message was appended to a durable queue's log."""

    def settled(self, queue: Any, entry: Any) -> None:
        """A durable queue's entry was acked, dropped or dead-lettered for good."""


class LocalReplicator:
    """Single node: nothing to replicate."""

    def appended(self, queue: Any, entry: Any) -> None:
        pass

    def settled(self, queue: Any, entry: Any) -> None:
        pass
