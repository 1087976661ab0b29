"""QoS 2 handshake state of persistent sessions, on disk.

A persistent session's subscriptions and queued messages live in the core (durable
queues and bindings).  What the core does not hold is the middle of a QoS 2 exchange:

* inbound: packet ids whose PUBLISH was stored and PUBREC sent, awaiting PUBREL; if
  that is forgotten, the client's resent PUBLISH (DUP) is routed a second time;
* outbound: packet ids whose PUBREC came (the queue entry is settled) and PUBREL was
  sent, awaiting PUBCOMP; if that is forgotten, the PUBREL is never resent and a client
  that hands a QoS 2 message to its application on PUBREL (paho does) never gets it.

It also keeps a persistent session's *shared* subscriptions (``$share/<group>/<filter>``):
their queue belongs to the group, not to the session, so the session's own queues and
bindings cannot tell that it is a member.

One append-only JSON-lines file, ``<data dir>/mqtt/sessions.jsonl``: ``[client id,
op, packet id]`` with op ``in+``/``in-``/``out+``/``out-``, ``[client id, "share+",
[filter, qos]]`` / ``[client id, "share-", [filter, 0]]``, and ``[client id, "drop", 0]``
when a session ends.  Writes are marked dirty on the broker's group-commit syncer;
an ``in+`` is covered by the fsync the PUBREC already waits for.  Opening replays the
file (a torn last line was never acknowledged) and rewrites it compacted (the file
itself: storage/jsonl.py, shared with retained.py).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ...storage.jsonl import JsonLinesFile

log = logging.getLogger("baedal.mqtt")


class SessionStateStore:
    def __init__(self, path: Path | None, syncer: Any) -> None:
        self.path = path
        self.syncer = syncer
        self.state: dict[str, tuple[set[int], set[int]]] = {}  # client id -> (in, out)
        self.shares: dict[str, dict[str, int]] = {}  # client id -> {$share filter: qos}
        self._file = JsonLinesFile(path, syncer, log, "mqtt session state")

    def open(self) -> None:
        self._file.open(self._replay, self._snapshot)

    def _replay(self, record: Any) -> None:
        client_id, op, value = record
        self._apply(str(client_id), str(op), value)

    def _snapshot(self) -> Iterator[list[Any]]:
        for client_id, (inbound, outbound) in self.state.items():
            for packet_id in sorted(inbound):
                yield [client_id, "in+", packet_id]
            for packet_id in sorted(outbound):
                yield [client_id, "out+", packet_id]
        for client_id, shares in self.shares.items():
            for topic_filter, qos in shares.items():
                yield [client_id, "share+", [topic_filter, qos]]

    def _apply(self, client_id: str, op: str, value: Any) -> None:
        if op == "drop":
            self.state.pop(client_id, None)
            self.shares.pop(client_id, None)
            return
        if op in ("share+", "share-"):
            topic_filter, qos = str(value[0]), int(value[1])
            shares = self.shares.setdefault(client_id, {})
            if op == "share+":
                shares[topic_filter] = qos
            else:
                shares.pop(topic_filter, None)
            if not shares:
                del self.shares[client_id]
            return
        if op not in ("in+", "in-", "out+", "out-"):
            raise ValueError(f"unknown operation {op!r}")
        packet_id = int(value)
        inbound, outbound = self.state.setdefault(client_id, (set(), set()))
        target = inbound if op.startswith("in") else outbound
        if op.endswith("+"):
            target.add(packet_id)
        else:
            target.discard(packet_id)
        if not inbound and not outbound:
            del self.state[client_id]

    def record(self, client_id: str, op: str, value: Any = 0) -> None:
        if op == "drop" and client_id not in self.state and client_id not in self.shares:
            return
        self._apply(client_id, op, value)
        self._file.append([client_id, op, value])

    def get(self, client_id: str) -> tuple[set[int], set[int]]:
        inbound, outbound = self.state.get(client_id, (set(), set()))
        return set(inbound), set(outbound)

    def close(self) -> None:
        self._file.close()
