"""Shared fixtures.

Every test talks to a real Baedal started in-process (``baedal.Broker`` run in a
background thread on a free port).  For checking a test against RabbitMQ itself, set
``BAEDAL_TEST_AMQP_URL=amqp://guest:guest@127.0.0.1:5672/`` and the fixtures use that
broker instead (the test then documents RabbitMQ's behaviour, which Baedal must match).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator

import pytest

EXTERNAL_URL = os.environ.get("BAEDAL_TEST_AMQP_URL")

if os.environ.get("BAEDAL_TEST_MQTT_LIGHT_TRANSPORT", "").lower() in ("0", "off", "false", "no"):
    # Run the MQTT suites on the event loop's transports instead of the light epoll
    # transport (the default): MQTTServer.listen asks epoll.available() each time.
    from baedal.transport import epoll as _epoll

    _epoll.available = lambda: False


@pytest.fixture(scope="session")
def session_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object | None]:
    if EXTERNAL_URL:
        yield None
        return
    from baedal import Broker

    data_dir = tmp_path_factory.mktemp("baedal-data")
    with Broker(host="127.0.0.1", port=0, data_dir=data_dir) as broker:
        yield broker


@pytest.fixture
def amqp_url(session_broker: object | None) -> str:
    """URL of a running broker shared by the whole session (queues must be unique per test)."""
    if EXTERNAL_URL:
        return EXTERNAL_URL
    return session_broker.amqp_url  # type: ignore[union-attr]


@pytest.fixture
def amqp_port(amqp_url: str) -> int:
    from urllib.parse import urlparse

    return urlparse(amqp_url).port or 5672


@pytest.fixture
def unique(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """unique('q') -> a queue/exchange name unique to this test."""
    counter = iter(range(1_000_000))

    def make(prefix: str = "q") -> str:
        return (
            f"{prefix}.{request.node.name[:60]}.{os.getpid()}.{next(counter)}.{time.monotonic_ns()}"
        )

    return make


from baedal_testing import wait_until  # noqa: E402,F401  (re-exported for old imports)
