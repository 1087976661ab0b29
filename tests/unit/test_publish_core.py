"""core/publish.py used the way a protocol adapter without AMQP will use it (Kafka, STOMP,
MQTT later): a real ``BrokerCore``, neutral messages, no protocol module anywhere; and
core/ and storage/ checked to stay protocol-neutral."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from baedal.core.broker import BrokerCore
from baedal.core.message import Message
from baedal.core.publish import NEEDS_SYNC, REFUSED, UNROUTABLE, Publisher
from baedal.core.vhost import CoreError

SRC = Path(__file__).parents[2] / "src" / "baedal"
CORE = SRC / "core"
NEUTRAL_PACKAGES = (SRC / "core", SRC / "storage")
# What handling an AMQP basic-properties block looks like: its codec's names, the
# message attributes that used to hold it, and its property-flag arithmetic.
AMQP_BLOCK_NAMES = {
    "BasicProperties",
    "decode_properties",
    "encode_properties",
    "scan_properties",
    "PROPERTY_NAMES",
    "decoded_properties",
    "with_properties",
    "wire_names",
    "USER_ID_FLAG",
    "HEADERS_FLAG",
    "AmqpExtension",
}


def message(routing_key: str, exchange: str = "", *, persistent: bool = False, **fields: object) -> Message:
    return Message.build(exchange, routing_key, b"body", persistent=persistent, **fields)  # type: ignore[arg-type]


@pytest.fixture
def core() -> BrokerCore:
    return BrokerCore()


def publisher_for(core: BrokerCore, user: str = "guest") -> Publisher:
    return Publisher(core, core.vhosts["/"], user, core.permission(user, "/"))


def neutral_modules() -> list[Path]:
    paths = [path for package in NEUTRAL_PACKAGES for path in sorted(package.glob("*.py"))]
    assert len(paths) > 20  # the globs found the packages
    return paths


def test_no_core_or_storage_module_imports_a_protocol() -> None:
    for path in neutral_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                module = node.module or ""
                assert "protocols" not in module, f"{path.name} imports {module}"
                assert not any("protocols" in alias.name for alias in node.names), path.name
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    assert "protocols" not in alias.name, f"{path.name} imports {alias.name}"


def test_no_core_or_storage_module_handles_an_amqp_properties_block() -> None:
    for path in neutral_modules():
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            name = None
            if isinstance(node, ast.Name):
                name = node.id
            elif isinstance(node, ast.Attribute):
                name = node.attr
                # Message.properties held the raw block; nothing neutral reads it.
                assert name != "properties", f"{path.name}:{node.lineno} reads .properties"
            elif isinstance(node, ast.alias):
                name = node.name
            assert name not in AMQP_BLOCK_NAMES, f"{path.name}:{getattr(node, 'lineno', '?')} uses {name}"


def test_a_neutral_message_decodes_nothing_and_derives_sharing_its_body() -> None:
    body = b"x" * 1000
    original = Message.build("ex", "rk", body, headers={"a": 1}, content_type="text/plain")
    assert original.extension is None and original.headers == {"a": 1}
    changed = original.derive(headers={"a": 2}, exchange="dlx")
    assert changed.body is body  # shared, never copied
    assert (changed.exchange, changed.routing_key, changed.headers) == ("dlx", "rk", {"a": 2})
    assert changed.content_type == "text/plain" and original.headers == {"a": 1}
    bare = Message("ex", "rk", body)  # the hot-path constructor: fields default to None
    assert bare.headers is None and bare.user_id is None and bare.timestamp is None
    with pytest.raises(AttributeError):
        bare.no_such_field  # noqa: B018


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
    persistent = publisher.publish("", message("durable", persistent=True))
    assert persistent.outcome == NEEDS_SYNC and durable.message_count == 1
