"""Celery with a real worker (solo pool, in a thread) over the broker under test.

Broker = ``amqp_url``, result backend = ``rpc://`` (results travel back over AMQP).
Validated against RabbitMQ 3.10.
"""

from __future__ import annotations

import contextlib

import pytest
from celery import Celery, chain, chord, group
from celery.contrib.testing.worker import start_worker
from helpers import Resources

pytestmark = [
    pytest.mark.timeout(60),
    # every test builds a fresh app registering the same task names
    pytest.mark.filterwarnings("ignore::celery.exceptions.DuplicateTaskNameWarning"),
]

RESULT_TIMEOUT = 15


def make_app(amqp_url: str, queue: str) -> Celery:
    app = Celery("baedal_interop", broker=amqp_url, backend="rpc://", set_as_current=False)
    app.conf.update(
        task_default_queue=queue,
        task_default_exchange=queue,
        task_default_routing_key=queue,
        broker_connection_retry_on_startup=True,
        broker_heartbeat=0,
        worker_prefetch_multiplier=1,
        worker_hijack_root_logger=False,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        # rpc:// reply queues get x-expires from this; the worker thread's own reply
        # queue (declared when a task publishes a retry/next step) expires on its own
        result_expires=30,
    )

    @app.task(name="t.add")
    def add(x, y):
        return x + y

    @app.task(name="t.tsum")
    def tsum(values):
        return sum(values)

    @app.task(name="t.retry_once", bind=True, max_retries=3)
    def retry_once(self, value):
        if self.request.retries == 0:
            raise self.retry(countdown=0)
        return {"value": value, "retries": self.request.retries}

    @app.task(name="t.boom")
    def boom(message):
        raise ValueError(message)

    @app.task(name="t.headers", bind=True)
    def headers(self):
        return {
            "routing_key": self.request.delivery_info.get("routing_key"),
            "exchange": self.request.delivery_info.get("exchange"),
            "redelivered": self.request.delivery_info.get("redelivered"),
        }

    return app


@pytest.fixture
def app(amqp_url, unique):
    queue = unique("celery")
    app = make_app(amqp_url, queue)
    # start_worker pings through a task registered by this module
    app.loader.import_module("celery.contrib.testing.tasks")
    with start_worker(app, pool="solo", concurrency=1, perform_ping_check=True, loglevel="error"):
        yield app
    res = Resources(amqp_url)
    res.queue(queue)
    res.exchange(queue)
    res.queue(app.backend.binding.name)  # the rpc:// reply queue (x-expires is a day)
    res.cleanup()
    with contextlib.suppress(Exception):
        app.close()


def task(app, name):
    return app.tasks[name]


def test_worker_runs_a_task_and_returns_its_result(app):
    result = task(app, "t.add").delay(2, 3)
    assert result.get(timeout=RESULT_TIMEOUT) == 5
    assert result.successful()
    assert result.state == "SUCCESS"


def test_many_tasks_all_complete_with_their_own_results(app):
    results = [task(app, "t.add").delay(i, 100) for i in range(20)]
    assert [r.get(timeout=RESULT_TIMEOUT) for r in results] == [i + 100 for i in range(20)]


def test_task_that_retries_once_then_succeeds(app):
    result = task(app, "t.retry_once").delay("ok")
    assert result.get(timeout=RESULT_TIMEOUT) == {"value": "ok", "retries": 1}


def test_task_that_raises_returns_the_error(app):
    result = task(app, "t.boom").delay("kaput")
    with pytest.raises(ValueError, match="kaput"):
        result.get(timeout=RESULT_TIMEOUT)
    assert result.failed()
    assert result.state == "FAILURE"
    assert isinstance(result.result, ValueError)


def test_task_sees_delivery_info_from_the_broker(app):
    info = task(app, "t.headers").delay().get(timeout=RESULT_TIMEOUT)
    queue = app.conf.task_default_queue
    # Celery publishes to the default exchange with the queue name as routing key
    assert info == {"routing_key": queue, "exchange": "", "redelivered": False}


def test_group_collects_every_result_in_order(app):
    add = task(app, "t.add")
    result = group(add.s(i, i) for i in range(6)).apply_async()
    assert result.get(timeout=RESULT_TIMEOUT) == [0, 2, 4, 6, 8, 10]


def test_chain_feeds_each_result_into_the_next_task(app):
    add = task(app, "t.add")
    result = chain(add.s(1, 2), add.s(10), add.s(100)).apply_async()
    assert result.get(timeout=RESULT_TIMEOUT) == 113


def test_chord_is_refused_client_side_by_the_rpc_backend(app):
    # chords need a backend that can count results; "rpc://" cannot (a Celery limit,
    # not a broker one), so the chord never reaches the broker
    add, tsum = task(app, "t.add"), task(app, "t.tsum")
    with pytest.raises(NotImplementedError, match="does not support chords"):
        chord(add.s(i, i) for i in range(4))(tsum.s())
