"""Disk-first storage: the segment log, ack files, the group-commit syncer, the durable
queue store, and the SQLite definitions store.  See ``queue_store`` for the theory of
operation."""

from .definitions import DefinitionsStore
from .queue_store import SegmentStore
from .segment import StorageError
from .syncer import Syncer

__all__ = ["DefinitionsStore", "SegmentStore", "StorageError", "Syncer"]
