"""Fixtures for the HTTP side: a real Baedal with its HTTP listener on a free port.

``http_broker`` is a ``baedal.Broker`` started in its thread-backed mode; use
``http_broker.http_url`` as the base URL (``guest``/``guest`` is an administrator and
may log in from localhost), ``http_broker.amqp_url`` for pika, and
``http_broker.call(fn)`` to run something on the broker's loop.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from httphelpers import poll_until

__all__ = ["poll_until"]


def _start(data_dir: Path) -> Any:
    from baedal import Broker

    return Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir)


@pytest.fixture
def http_broker(tmp_path: Path) -> Iterator[Any]:
    """A fresh broker per test (starts in well under a second)."""
    with _start(tmp_path / "baedal-data") as broker:
        yield broker


@pytest.fixture(scope="module")
def shared_http_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """One broker for a whole module, for tests that only read or use unique names."""
    with _start(tmp_path_factory.mktemp("baedal-http")) as broker:
        yield broker
