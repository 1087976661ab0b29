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
file (a torn last line was never acknowledged) and rewrites it compacted.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

log = logging.getLogger("baedal.mqtt")


class SessionStateStore:
    def __init__(self, path: Path | None, syncer: Any) -> None:
        self.path = path
        self.syncer = syncer
        self.state: dict[str, tuple[set[int], set[int]]] = {}  # client id -> (in, out)
        self.shares: dict[str, dict[str, int]] = {}  # client id -> {$share filter: qos}
        self._file: Any = None

    def open(self) -> None:
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            with open(path, "rb") as file:
                for line in file:
                    if not line.endswith(b"\n"):
                        break  # torn by a crash: never acknowledged
                    try:
                        client_id, op, value = json.loads(line)
                        self._apply(str(client_id), str(op), value)
                    except (ValueError, TypeError):
                        log.warning("mqtt session state: dropped an unreadable line")
                        break
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            for client_id, (inbound, outbound) in self.state.items():
                for packet_id in sorted(inbound):
                    file.write(self._line(client_id, "in+", packet_id))
                for packet_id in sorted(outbound):
                    file.write(self._line(client_id, "out+", packet_id))
            for client_id, shares in self.shares.items():
                for topic_filter, qos in shares.items():
                    file.write(self._line(client_id, "share+", [topic_filter, qos]))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._file = open(path, "ab")  # noqa: SIM115  # held open for appends

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

    @staticmethod
    def _line(client_id: str, op: str, value: Any) -> bytes:
        return json.dumps([client_id, op, value], separators=(",", ":")).encode() + b"\n"

    def record(self, client_id: str, op: str, value: Any = 0) -> None:
        if op == "drop" and client_id not in self.state and client_id not in self.shares:
            return
        self._apply(client_id, op, value)
        if self._file is not None:
            self._file.write(self._line(client_id, op, value))
            self.syncer.mark_dirty(self._file)

    def get(self, client_id: str) -> tuple[set[int], set[int]]:
        inbound, outbound = self.state.get(client_id, (set(), set()))
        return set(inbound), set(outbound)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.flush()
            os.fsync(file.fileno())
            self.syncer.forget(file)
            # A sync job may be fsyncing this descriptor right now: close it after that
            # job (closing it under the worker could fsync whatever reuses the number).
            self.syncer.retire(file, file.close)
