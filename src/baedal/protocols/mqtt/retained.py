"""Retained messages: the last message published with RETAIN=1 on each topic, on disk.

Theory of operation
-------------------
One append-only file, ``<data dir>/mqtt/<vhost>/retained.jsonl``, one JSON line per
change: ``{"t": topic, "p": base64 payload, "q": qos, "x": properties, "at": wall
time}`` sets a topic's retained message, ``{"t": topic}`` clears it (an empty retained
payload).  A write is marked dirty on the broker's group-commit syncer
(storage/syncer.py), so the PUBACK/PUBREC of a retained publish waits for the same
fsync as the message's queues.  Opening replays the file (a line torn by a crash was
never acknowledged and is dropped) and rewrites it compacted, through a temporary
file renamed over the old one, so the file does not grow without bound across
restarts (the file itself: storage/jsonl.py, shared with sessionstate.py).

Matching a new subscription against retained topics is a scan; retained sets are
small next to subscription counts (mosquitto scans its retain tree the same way).
"""

from __future__ import annotations

import base64
import logging
import time
from pathlib import Path
from typing import Any

from ...storage.jsonl import JsonLinesFile
from .topics import matches

log = logging.getLogger("baedal.mqtt")


class Retained:
    __slots__ = ("topic", "payload", "qos", "properties", "stored_at")

    def __init__(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any],
                 stored_at: float) -> None:
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.properties = properties  # MQTT 5.0 publish properties, JSON-able
        self.stored_at = stored_at

    def remaining_expiry(self, now: float) -> int | None:
        """Seconds left of its message expiry interval (None: none; <= 0: expired)."""
        interval = self.properties.get("message_expiry_interval")
        if interval is None:
            return None
        return int(self.stored_at + interval - now)


def _props_to_json(properties: dict[str, Any]) -> dict[str, Any]:
    out = dict(properties)
    if "correlation_data" in out:
        out["correlation_data"] = base64.b64encode(out["correlation_data"]).decode()
    if "user_property" in out:
        out["user_property"] = [list(p) for p in out["user_property"]]
    return out


def _props_from_json(data: dict[str, Any]) -> dict[str, Any]:
    out = dict(data)
    if "correlation_data" in out:
        out["correlation_data"] = base64.b64decode(out["correlation_data"])
    if "user_property" in out:
        out["user_property"] = [tuple(p) for p in out["user_property"]]
    return out


class RetainedStore:
    def __init__(self, path: Path | None, syncer: Any) -> None:
        self.path = path
        self.syncer = syncer
        self.messages: dict[str, Retained] = {}
        self._file = JsonLinesFile(path, syncer, log, "mqtt retained")

    def open(self) -> None:
        self._file.open(self._apply, lambda: map(self._record, self.messages.values()))

    def _apply(self, record: dict[str, Any]) -> None:
        topic = record["t"]
        if "p" in record:
            self.messages[topic] = Retained(
                topic, base64.b64decode(record["p"]), int(record["q"]),
                _props_from_json(record.get("x") or {}), float(record["at"]),
            )
        else:
            self.messages.pop(topic, None)

    @staticmethod
    def _record(message: Retained) -> dict[str, Any]:
        return {
            "t": message.topic,
            "p": base64.b64encode(message.payload).decode(),
            "q": message.qos,
            "x": _props_to_json(message.properties),
            "at": message.stored_at,
        }

    def set(self, topic: str, payload: bytes, qos: int, properties: dict[str, Any]) -> bool:
        """Store (or, for an empty payload, clear) a topic's retained message; True when
        something was written that a confirm must wait for."""
        if not payload:
            if self.messages.pop(topic, None) is None:
                return False
            self._file.append({"t": topic})
            return True
        message = Retained(topic, payload, qos, properties, time.time())
        self.messages[topic] = message
        self._file.append(self._record(message))
        return True

    def matching(self, topic_filter: str) -> list[Retained]:
        now = time.time()
        found = []
        for message in list(self.messages.values()):
            left = message.remaining_expiry(now)
            if left is not None and left <= 0:
                continue
            if matches(topic_filter, message.topic):
                found.append(message)
        return found

    def close(self) -> None:
        self._file.close()
