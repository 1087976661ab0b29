"""A small append-only JSON-lines file: replay, compact, append under group commit.

For state that is small and changes record by record (MQTT's retained messages and
QoS 2 session state): one JSON value per line, each line a change.  The owner keeps
the state in memory and says how a record changes it (``apply``) and what the live
state is as records (``snapshot``); this module does the file.

Theory of operation
-------------------
* ``open(apply, snapshot)`` replays the file through ``apply``.  A last line without
  its newline was torn by a crash while being written: its change was never
  acknowledged (acknowledgements wait for the fsync that covers a whole line), so it
  is dropped.  A line that does not parse, or that ``apply`` refuses (ValueError,
  KeyError, TypeError), ends the replay there: what follows it cannot be trusted to
  apply in order.  Both are logged.
* It then rewrites the file compacted, ``snapshot()`` only, through a temporary file:
  written, fsynced, renamed over the old one, directory fsynced.  So the file does not
  grow without bound across restarts, and a crash at any point leaves either the old
  file or the new one (STYLE.md habit 9).
* ``append(record)`` writes one line to the file held open for appending and marks it
  dirty on the broker's group-commit syncer (storage/syncer.py): whoever must not
  acknowledge before the change is on disk waits for that same fsync.
* ``close()`` fsyncs and hands the descriptor back to the syncer to close after any
  job still using it.

A line is ``json.dumps(record, separators=(",", ":"))`` plus ``\\n``: the format the
MQTT stores have always written, so their existing files load unchanged.  With no
path (no durable store) nothing is read or written.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["JsonLinesFile", "encode_line"]


def encode_line(record: Any) -> bytes:
    """One record as the file stores it: compact JSON and a newline."""
    return json.dumps(record, separators=(",", ":")).encode() + b"\n"


class JsonLinesFile:
    def __init__(self, path: Path | None, syncer: Any, logger: logging.Logger, what: str) -> None:
        self.path = path
        self.syncer = syncer
        self._log = logger
        self._what = what  # names the file in log lines ("mqtt retained")
        self._file: Any = None

    def open(self, apply: Callable[[Any], None], snapshot: Callable[[], Iterable[Any]]) -> None:
        path = self.path
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            self._replay(path, apply)
        temporary = path.with_suffix(".tmp")
        with open(temporary, "wb") as file:
            for record in snapshot():
                file.write(encode_line(record))
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
        self._file = open(path, "ab")  # noqa: SIM115  # held open for appends

    def _replay(self, path: Path, apply: Callable[[Any], None]) -> None:
        with open(path, "rb") as file:
            for line in file:
                if not line.endswith(b"\n"):
                    self._log.warning("%s: dropped a torn last line", self._what)
                    return
                try:
                    apply(json.loads(line))
                except (ValueError, KeyError, TypeError):
                    self._log.warning("%s: dropped an unreadable line", self._what)
                    return

    def append(self, record: Any) -> None:
        if self._file is None:
            return
        self._file.write(encode_line(record))
        self.syncer.mark_dirty(self._file)

    def close(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.flush()
            os.fsync(file.fileno())
            self.syncer.forget(file)
            # A sync job may be fsyncing this descriptor right now: close it after that
            # job (closing it under the worker could fsync whatever reuses the number).
            self.syncer.retire(file, file.close)
