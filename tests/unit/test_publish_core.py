"""core/publish.py used the way a protocol adapter without AMQP will use it (Kafka, STOMP,
MQTT later): a real ``BrokerCore``, no protocol module anywhere."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from baedal.core.broker import BrokerCore
from baedal.core.message import Message
from baedal.core.properties import BasicProperties, encode_properties
from baedal.core.publish import NEEDS_SYNC, REFUSED, UNROUTABLE, Publisher
from baedal.core.vhost import CoreError

CORE = Path(__file__).parents[2] / "src" / "baedal" / "core"


def message(routing_key: str, exchange: str = "", **props: object) -> Message:
    properties = BasicProperties(**props)  # type: ignore[arg-type]
    return Message(
        exchange,
        routing_key,
        encode_properties(properties),
        b"body",
        persistent=properties.delivery_mode == 2,
    )


@pytest.fixture
def core() -> BrokerCore:
    return BrokerCore()


def publisher_for(core: BrokerCore, user: str = "guest") -> Publisher:
    return Publisher(core, core.vhosts["/"], user, core.permission(user, "/"))


def test_no_core_module_imports_a_protocol() -> None:
    for path in CORE.glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                assert "protocols" not in (node.module or ""), f"{path.name} imports {node.module}"


def test_publish_routes_enqueues_and_counts(core: BrokerCore) -> None:
    vhost = core.vhosts["/"]
    queue, _ = vhost.declare_queue("jobs")
    publisher = publisher_for(core)
    result = publisher.publish("", message("jobs"))
    assert result.routed and not result.refused and result.outcome == 0
    assert queue.message_count == 1 and queue.publish_count == 1
    assert vhost.default_exchange.publish_count == 1
    assert vhost.default_exchange.publish_out_count == 1
    assert publisher.publish_count == 1


def test_unroutable_is_an_outcome_not_an_error(core: BrokerCore) -> None:
    result = publisher_for(core).publish("amq.direct", message("nobody"), mandatory=True)
    assert result.outcome == UNROUTABLE and not result.routed
    assert core.counters["unroutable"] == 1 and core.counters["returned"] == 1


def test_refusals_are_core_errors_with_rabbitmqs_words(core: BrokerCore) -> None:
    core.vhosts["/"].declare_queue("jobs")
    publisher = publisher_for(core)
    with pytest.raises(CoreError) as missing:
        publisher.publish("no-such-exchange", message("jobs"))
    assert missing.value.kind == "not_found"
    with pytest.raises(CoreError) as forged:
        publisher.publish("", message("jobs", user_id="mallory"))
    assert forged.value.kind == "precondition_failed"
    assert forged.value.text == "user_id property set to 'mallory' but authenticated user was 'guest'"
    core.add_user("reader", "pw")
    core.set_permission("reader", "/", write="^only-this$")
    with pytest.raises(CoreError) as denied:
        publisher_for(core, "reader").publish("", message("jobs"))
    assert denied.value.kind == "access_refused"


def test_cc_bcc_and_overflow_and_durability_outcomes(core: BrokerCore) -> None:
    vhost = core.vhosts["/"]
    main, _ = vhost.declare_queue("main")
    copy, _ = vhost.declare_queue("copy")
    full, _ = vhost.declare_queue(
        "full", arguments={"x-max-length": 0, "x-overflow": "reject-publish"}
    )
    durable, _ = vhost.declare_queue("durable", durable=True)
    publisher = publisher_for(core)
    result = publisher.publish("", message("main", headers={"BCC": ["copy"], "k": 1}))
    assert result.routed and result.message.headers == {"k": 1}
    assert main.message_count == 1 and copy.message_count == 1
    assert publisher.publish("", message("full")).outcome == REFUSED
    persistent = publisher.publish("", message("durable", delivery_mode=2))
    assert persistent.outcome == NEEDS_SYNC and durable.message_count == 1
