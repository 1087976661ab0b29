"""In-process brokers by name (``inproc://NAME``): registry only; sessions below."""
from __future__ import annotations

import asyncio
import threading
from typing import Any

_lock = threading.Lock()
_brokers: dict[str, Any] = {}


def register(name: str, broker: Any) -> None:
    with _lock:
        if name in _brokers and _brokers[name] is not broker:
            raise ValueError(f"inproc://{name} is already registered in this process")
        _brokers[name] = broker


async def unregister(name: str, broker: Any) -> None:
    with _lock:
        if _brokers.get(name) is broker:
            del _brokers[name]
    await asyncio.sleep(0)
