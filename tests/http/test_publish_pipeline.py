"""HTTP publishes take the same publish path as AMQP ones (core/publish.py).

Both HTTP ways in -- the management API's test-publish
(``POST /api/exchanges/{vhost}/{name}/publish``) and REST messaging
(``POST /api/rest/{vhost}/queues/{queue}/messages``) -- get AMQP's checks and effects:
user-id validation, CC/BCC, mandatory returns as ``routed: false``, alternate exchanges,
overflow refusals, answers only once stored (the HTTP form of a publisher confirm), and
the same counters.

What RabbitMQ 3.10.8's management plugin answers to test-publish (checked on a node
with ``rabbitmq_management``; it publishes mandatory with confirms over a channel of
the requesting user): a refused publish is 400 ``bad_request`` whose reason is the AMQP
channel error, e.g. ``"406 PRECONDITION_FAILED - user_id property set to 'bob' but
authenticated user was 'guest'"``; a nack is 400 ``"rejected Unable to publish message.
Check queue limits."``; an unroutable message is ``{"routed": false}``; BCC is removed
(an empty headers table stays).  Exchange ``publish_out`` counts one per queue reached.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from typing import Any

import pika
import pytest
from httphelpers import Api, enc, poll_until


@pytest.fixture
def api(shared_http_broker: Any) -> Api:
    return Api(shared_http_broker.http_url)


@pytest.fixture
def name(request: pytest.FixtureRequest) -> Callable[[str], str]:
    counter = iter(range(1000))
    return lambda prefix="q": f"{prefix}.{request.node.name[:40]}.{os.getpid()}.{next(counter)}"


def test_publish(api: Api, exchange: str, routing_key: str, **fields: Any) -> Any:
    body = {"routing_key": routing_key, "payload": "x", "payload_encoding": "string"}
    body.update(fields)
    body.setdefault("properties", {})
    return api.post(f"/api/exchanges/%2F/{enc(exchange or 'amq.default')}/publish", body)


test_publish.__test__ = False  # type: ignore[attr-defined]  # a helper, not a test


def rest_publish(api: Api, queue: str, envelope: dict[str, Any]) -> Any:
    return api.post(
        f"/api/rest/%2F/queues/{enc(queue)}/messages",
        data=__import__("json").dumps(envelope).encode(),
        headers={"Content-Type": "application/vnd.baedal.envelope+json"},
    )


def get_all(api: Api, queue: str) -> list[dict[str, Any]]:
    return api.post(
        f"/api/queues/%2F/{enc(queue)}/get",
        {"count": 100, "ackmode": "ack_requeue_false", "encoding": "auto"},
    ).json()


def declare(api: Api, queue: str, durable: bool = False, **arguments: Any) -> None:
    response = api.put(
        f"/api/queues/%2F/{enc(queue)}", {"durable": durable, "arguments": arguments}
    )
    assert response.status_code in (201, 204), response.text


def declare_exchange(api: Api, exchange: str, kind: str, **fields: Any) -> None:
    response = api.put(f"/api/exchanges/%2F/{enc(exchange)}", {"type": kind, **fields})
    assert response.status_code in (201, 204), response.text


def bind(api: Api, exchange: str, queue: str, key: str = "") -> None:
    response = api.post(
        f"/api/bindings/%2F/e/{enc(exchange)}/q/{enc(queue)}", {"routing_key": key}
    )
    assert response.status_code == 201, response.text


# --- user-id ---------------------------------------------------------------------------


def test_http_publish_with_another_users_user_id_is_refused_as_amqp_refuses_it(api, name):
    queue = name()
    declare(api, queue)
    response = test_publish(api, "", queue, properties={"user_id": "bob"})
    assert response.status_code == 400
    assert response.json() == {
        "error": "bad_request",
        "reason": "406 PRECONDITION_FAILED - user_id property set to 'bob' but authenticated user was 'guest'",
    }
    rest = rest_publish(api, queue, {"payload": "x", "properties": {"user_id": "bob"}})
    assert rest.status_code == 400
    assert "user_id property set to 'bob' but authenticated user was 'guest'" in rest.json()["reason"]
    assert get_all(api, queue) == []
    # The user's own name is fine.
    assert test_publish(api, "", queue, properties={"user_id": "guest"}).json() == {"routed": True}
    assert rest_publish(api, queue, {"payload": "y", "properties": {"user_id": "guest"}}).status_code == 201
    assert [m["properties"]["user_id"] for m in get_all(api, queue)] == ["guest", "guest"]


def test_an_impersonator_may_publish_with_any_user_id(api, shared_http_broker, name):
    queue = name()
    declare(api, queue)
    user = name("imp")
    api.put(f"/api/users/{enc(user)}", {"password": "pw", "tags": "impersonator,management"})
    api.put(f"/api/permissions/%2F/{enc(user)}", {"configure": ".*", "write": ".*", "read": ".*"})
    as_user = Api(shared_http_broker.http_url, (user, "pw"))
    assert test_publish(as_user, "", queue, properties={"user_id": "bob"}).json() == {"routed": True}
    assert [m["properties"]["user_id"] for m in get_all(api, queue)] == ["bob"]


# --- permissions and internal exchanges ---------------------------------------------------


def test_http_publish_needs_write_permission_on_the_exchange(api, shared_http_broker, name):
    queue = name()
    declare(api, queue)
    user = name("writer")
    api.put(f"/api/users/{enc(user)}", {"password": "pw", "tags": "management"})
    api.put(
        f"/api/permissions/%2F/{enc(user)}", {"configure": ".*", "write": "^nothing$", "read": ".*"}
    )
    as_user = Api(shared_http_broker.http_url, (user, "pw"))
    refused = test_publish(as_user, "", queue)
    assert refused.status_code == 400
    assert refused.json()["reason"] == (
        f"403 ACCESS_REFUSED - access to exchange 'amq.default' in vhost '/' refused for user '{user}'"
    )
    assert rest_publish(as_user, queue, {"payload": "x"}).status_code == 403
    assert get_all(api, queue) == []


def test_http_publish_to_an_internal_exchange_is_refused(api, name):
    exchange = name("internal")
    declare_exchange(api, exchange, "fanout", internal=True)
    response = test_publish(api, exchange, "")
    assert response.status_code == 400
    assert response.json()["reason"] == (
        f"403 ACCESS_REFUSED - cannot publish to internal exchange '{exchange}' in vhost '/'"
    )


# --- CC / BCC ------------------------------------------------------------------------------


def test_http_publish_honours_cc_and_bcc_and_removes_bcc(api, shared_http_broker, name):
    main, cc, bcc = name("main"), name("cc"), name("bcc")
    for queue in (main, cc, bcc):
        declare(api, queue)
    headers = {"CC": [cc], "BCC": [bcc], "other": "kept"}
    assert test_publish(api, "", main, properties={"headers": headers}).json() == {"routed": True}
    # REST messaging to `main` with a CC header reaches the CC queue too.
    assert rest_publish(api, main, {"payload": "rest", "headers": {"CC": [cc]}}).status_code == 201
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        channel = connection.channel()
        seen = {}
        for queue in (main, cc, bcc):
            bodies = []
            while True:
                method, props, body = channel.basic_get(queue, auto_ack=True)
                if method is None:
                    break
                bodies.append((body, props.headers))
            seen[queue] = bodies
    finally:
        connection.close()
    copy = (b"x", {"CC": [cc], "other": "kept"})
    assert seen[main] == [copy, (b"rest", {"CC": [cc]})]
    assert seen[cc] == [copy, (b"rest", {"CC": [cc]})]
    assert seen[bcc] == [copy]


def test_bcc_only_routes_and_leaves_an_empty_headers_table(api, name):
    hidden = name("bcc")
    declare(api, hidden)
    response = test_publish(api, "", name("nobody"), properties={"headers": {"BCC": [hidden]}})
    assert response.json() == {"routed": True}
    [message] = get_all(api, hidden)
    assert message["properties"]["headers"] == {}


# --- routing outcomes -----------------------------------------------------------------------


def test_unroutable_http_publish_is_routed_false_and_counted_as_returned(api, name):
    before = api.json("/api/overview")["message_stats"]["return_unroutable"]
    assert test_publish(api, "amq.direct", name("nobody")).json() == {"routed": False}
    after = api.json("/api/overview")["message_stats"]["return_unroutable"]
    assert after == before + 1


def test_http_publish_uses_the_alternate_exchange(api, name):
    source, alternate, caught = name("src"), name("ae"), name("caught")
    declare_exchange(api, alternate, "fanout")
    declare_exchange(api, source, "direct", arguments={"alternate-exchange": alternate})
    declare(api, caught)
    bind(api, alternate, caught)
    assert test_publish(api, source, "no-binding").json() == {"routed": True}
    assert [m["routing_key"] for m in get_all(api, caught)] == ["no-binding"]


def test_a_queue_refusing_the_message_is_a_nack_over_http(api, name):
    queue = name("full")
    declare(api, queue, **{"x-max-length": 1, "x-overflow": "reject-publish"})
    assert test_publish(api, "", queue).json() == {"routed": True}
    refused = test_publish(api, "", queue)
    assert refused.status_code == 400
    assert refused.json()["reason"] == "rejected Unable to publish message. Check queue limits."
    assert rest_publish(api, queue, {"payload": "x"}).status_code == 409
    assert len(get_all(api, queue)) == 1


# --- counters ------------------------------------------------------------------------------


def test_http_and_amqp_publishes_move_the_same_counters(api, shared_http_broker, name):
    exchange, first, second = name("fan"), name("one"), name("two")
    declare_exchange(api, exchange, "fanout")
    for queue in (first, second):
        declare(api, queue)
        bind(api, exchange, queue)
    assert test_publish(api, exchange, "").json() == {"routed": True}
    connection = pika.BlockingConnection(pika.URLParameters(shared_http_broker.amqp_url))
    try:
        connection.channel().basic_publish(exchange, "", b"amqp")
        def stats() -> dict[str, Any]:
            return api.json(f"/api/exchanges/%2F/{enc(exchange)}")["message_stats"]

        poll_until(lambda: stats()["publish_in"] == 2)
        # One message in, two queues reached, for each of the two publishes.
        assert (stats()["publish_in"], stats()["publish_out"]) == (2, 4)
        for queue in (first, second):
            assert api.json(f"/api/queues/%2F/{enc(queue)}")["message_stats"]["publish"] == 2
    finally:
        connection.close()


# --- confirms: an HTTP answer means stored ----------------------------------------------------


class HeldSyncs:
    """Stands in front of the broker's ``after_sync`` and holds the callbacks (the
    fsync itself still happens); ``release`` hands them to the real syncer."""

    def __init__(self, broker: Any) -> None:
        self.broker = broker
        self.real = broker.core.after_sync
        self.held: list[tuple[Any, Any]] = []

    def __call__(self, callback: Any, on_error: Any = None) -> bool:
        self.held.append((callback, on_error))
        return True

    def install(self) -> None:
        self.broker.call(lambda: setattr(self.broker.core, "after_sync", self))

    def release(self) -> None:
        def run() -> None:
            del self.broker.core.after_sync  # back to the class's method
            for callback, on_error in self.held:
                self.real(callback, on_error)
            self.held.clear()

        self.broker.call(run)


def test_http_publish_of_a_persistent_message_answers_only_after_the_fsync(http_broker):
    api = Api(http_broker.http_url)
    declare(api, "stored", durable=True)
    declare(api, "transient")
    syncs = HeldSyncs(http_broker)
    syncs.install()
    answers: dict[str, Any] = {}

    def publish(key: str, persistent: bool) -> None:
        properties = {"delivery_mode": 2} if persistent else {}
        answers[key] = test_publish(api, "", key, properties=properties)

    # A transient message, or one in a transient queue, does not wait for a disk.
    publish("transient", True)
    assert answers["transient"].json() == {"routed": True}
    waiting = threading.Thread(target=publish, args=("stored", True))
    waiting.start()
    poll_until(lambda: syncs.held, timeout=5)
    waiting.join(0.3)
    assert waiting.is_alive() and "stored" not in answers  # held: no fsync seen yet
    syncs.release()
    waiting.join(10)
    assert answers["stored"].json() == {"routed": True}
    # REST messaging is the same (persistent by default).
    syncs.install()
    rest = threading.Thread(
        target=lambda: answers.__setitem__("rest", rest_publish(api, "stored", {"payload": "r"}))
    )
    rest.start()
    poll_until(lambda: syncs.held, timeout=5)
    rest.join(0.3)
    assert rest.is_alive() and "rest" not in answers
    syncs.release()
    rest.join(10)
    assert answers["rest"].status_code == 201


def test_http_publish_is_refused_with_503_while_an_alarm_blocks_publishers(http_broker):
    api = Api(http_broker.http_url)
    declare(api, "blocked")
    http_broker.call(lambda: http_broker.core.set_alarm("memory", True))
    try:
        response = test_publish(api, "", "blocked")
        assert response.status_code == 503 and response.json()["error"] == "resource_alarm"
        assert rest_publish(api, "blocked", {"payload": "x"}).status_code == 503
    finally:
        http_broker.call(lambda: http_broker.core.set_alarm("memory", False))
    assert test_publish(api, "", "blocked").json() == {"routed": True}
