"""Policies, operator policies and topic permissions over the management API, and their
place in definitions (export, import, a RabbitMQ 3.10.8 export, restarts).

Validation reasons are RabbitMQ's: ``rabbitmqctl set_policy`` on 3.10.8 printed the same
lines (see tests/unit/test_policy.py for the full table).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pika
import pytest
from httphelpers import Api, poll_until

from baedal import Broker

DATA = Path(__file__).parent / "data"
RABBIT_EXPORT = DATA / "rabbitmq-3.10.8-policies.json"


@pytest.fixture
def api(http_broker: Any) -> Api:
    return Api(http_broker.http_url)


def _policy(pattern: str, definition: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"pattern": pattern, "definition": definition, **extra}


def test_policy_crud(api: Api) -> None:
    assert api.get("/api/policies").json() == []
    r = api.put(
        "/api/policies/%2F/limit",
        _policy("^orders\\.", {"max-length": 10}, priority=2, **{"apply-to": "queues"}),
    )
    assert r.status_code == 201, r.text
    expected = {
        "vhost": "/",
        "name": "limit",
        "pattern": "^orders\\.",
        "apply-to": "queues",
        "definition": {"max-length": 10},
        "priority": 2,
    }
    assert api.json("/api/policies/%2F/limit") == expected
    assert api.json("/api/policies/%2F") == [expected]
    assert api.json("/api/policies") == [expected]
    # defaults: apply-to all, priority 0; an update answers 204
    r = api.put("/api/policies/%2F/limit", _policy(".*", {"message-ttl": 5}))
    assert r.status_code == 204
    got = api.json("/api/policies/%2F/limit")
    assert (got["apply-to"], got["priority"], got["definition"]) == ("all", 0, {"message-ttl": 5})
    assert api.delete("/api/policies/%2F/limit").status_code == 204
    assert api.get("/api/policies/%2F/limit").status_code == 404
    assert api.delete("/api/policies/%2F/limit").status_code == 404
    assert api.get("/api/policies/nope").status_code == 404


def test_operator_policy_crud_is_separate_from_policies(api: Api) -> None:
    r = api.put("/api/operator-policies/%2F/cap", _policy(".*", {"max-length": 1000}))
    assert r.status_code == 201, r.text
    assert api.json("/api/policies") == []
    assert [p["name"] for p in api.json("/api/operator-policies")] == ["cap"]
    assert api.json("/api/operator-policies/%2F/cap")["definition"] == {"max-length": 1000}
    assert api.get("/api/policies/%2F/cap").status_code == 404
    assert api.delete("/api/operator-policies/%2F/cap").status_code == 204
    assert api.json("/api/operator-policies") == []


@pytest.mark.parametrize(
    ("path", "body", "reason"),
    [
        (
            "policies",
            _policy(".*", {"foo": 1}),
            'Validation failed\n\n[{<<"foo">>,1}] are not recognised policy settings\n',
        ),
        (
            "policies",
            _policy(".*", {"max-length": "x"}),
            'Validation failed\n\n<<"x">> is not a valid maximum length\n',
        ),
        (
            "policies",
            _policy(".*", {"max-length": 1}, **{"apply-to": "streams"}),
            "Validation failed\n\napply-to 'streams' unrecognised; should be 'queues', 'exchanges' or 'all'\n",
        ),
        ("policies", _policy(".*", {}), "Validation failed\n\nno policy provided\n"),
        (
            "operator-policies",
            _policy(".*", {"overflow": "drop-head"}),
            'Validation failed\n\n[{<<"overflow">>,<<"drop-head">>}] are not recognised policy settings\n',
        ),
        (
            "policies",
            {"definition": {"max-length": 1}},
            'Validation failed\n\nKey <<"pattern">> not found in policy\n',
        ),
    ],
)
def test_invalid_policies_are_400_with_rabbitmq_reason(
    api: Api, path: str, body: dict[str, Any], reason: str
) -> None:
    r = api.put(f"/api/{path}/%2F/bad", body)
    assert r.status_code == 400
    assert r.json() == {"error": "bad_request", "reason": reason}
    assert api.get(f"/api/{path}/%2F/bad").status_code == 404


def test_bad_types_are_400(api: Api) -> None:
    for body in (
        _policy(".*", {"max-length": 1}, priority="high"),
        _policy(5, {"max-length": 1}),
        _policy("[", {"max-length": 1}),
        _policy(".*", "max-length=1"),
    ):
        r = api.put("/api/policies/%2F/bad", body)
        assert r.status_code == 400, body
        assert r.json()["reason"].startswith("Validation failed")


def test_queue_and_exchange_fields_show_policies(http_broker: Any, api: Api) -> None:
    assert api.put("/api/queues/%2F/pol.q", {"arguments": {"x-max-length": 50}}).status_code == 201
    assert api.put("/api/exchanges/%2F/pol.x", {"type": "topic"}).status_code == 201
    queue = api.json("/api/queues/%2F/pol.q")
    assert (queue["policy"], queue["operator_policy"], queue["effective_policy_definition"]) == (
        None,
        None,
        {},
    )
    api.put(
        "/api/policies/%2F/p", _policy("^pol\\.", {"max-length": 20, "alternate-exchange": "ae"})
    )
    api.put("/api/operator-policies/%2F/o", _policy(".*", {"max-length": 5, "expires": 60000}))
    queue = api.json("/api/queues/%2F/pol.q")
    assert queue["policy"] == "p"
    assert queue["operator_policy"] == "o"
    assert queue["effective_policy_definition"] == {
        "max-length": 5,
        "alternate-exchange": "ae",
        "expires": 60000,
    }
    assert queue["arguments"] == {"x-max-length": 50}  # arguments are not rewritten
    assert api.json("/api/exchanges/%2F/pol.x")["policy"] == "p"
    api.delete("/api/policies/%2F/p")
    assert api.json("/api/exchanges/%2F/pol.x")["policy"] is None
    assert api.json("/api/queues/%2F/pol.q")["effective_policy_definition"] == {
        "max-length": 5,
        "expires": 60000,
    }


def test_policymaker_may_set_policies_management_may_not(http_broker: Any, api: Api) -> None:
    for name, tags in (("maker", "policymaker"), ("viewer", "management")):
        api.put(f"/api/users/{name}", {"password": "pw", "tags": tags})
        api.put(f"/api/permissions/%2F/{name}", {"configure": ".*", "write": ".*", "read": ".*"})
    maker = Api(http_broker.http_url, ("maker", "pw"))
    viewer = Api(http_broker.http_url, ("viewer", "pw"))
    assert maker.put("/api/policies/%2F/m", _policy(".*", {"max-length": 1})).status_code == 201
    assert viewer.put("/api/policies/%2F/v", _policy(".*", {"max-length": 1})).status_code == 403
    assert viewer.get("/api/policies").status_code == 403
    assert [p["name"] for p in maker.get("/api/policies/%2F").json()] == ["m"]
    assert (
        maker.put("/api/operator-policies/%2F/o", _policy(".*", {"max-length": 1})).status_code
        == 403
    )


# --- topic permissions ------------------------------------------------------------------


def test_topic_permission_crud(api: Api) -> None:
    api.put("/api/users/alice", {"password": "pw", "tags": ""})
    assert api.get("/api/topic-permissions/%2F/alice").status_code == 404
    body = {"exchange": "amq.topic", "write": "^{username}\\.", "read": ".*"}
    assert api.put("/api/topic-permissions/%2F/alice", body).status_code == 201
    assert api.put("/api/topic-permissions/%2F/alice", body).status_code == 204
    body2 = {"exchange": "events", "write": "^a", "read": "^b"}
    assert api.put("/api/topic-permissions/%2F/alice", body2).status_code == 201
    expected = [
        {"user": "alice", "vhost": "/", **body},
        {"user": "alice", "vhost": "/", **body2},
    ]
    assert api.json("/api/topic-permissions/%2F/alice") == expected
    assert api.json("/api/topic-permissions") == expected
    assert api.json("/api/users/alice/topic-permissions") == expected
    assert api.json("/api/vhosts/%2F/topic-permissions") == expected
    assert api.put("/api/topic-permissions/%2F/alice", {"write": ".*"}).status_code == 400
    assert (
        api.put("/api/topic-permissions/%2F/alice", {"exchange": "x", "write": "["}).status_code
        == 400
    )
    assert api.put("/api/topic-permissions/%2F/nobody", body).status_code == 404
    assert api.delete("/api/topic-permissions/%2F/alice?exchange=events").status_code == 204
    assert [p["exchange"] for p in api.json("/api/topic-permissions")] == ["amq.topic"]
    assert api.delete("/api/topic-permissions/%2F/alice").status_code == 204
    assert api.json("/api/topic-permissions") == []
    assert api.delete("/api/topic-permissions/%2F/alice").status_code == 404


def test_topic_permission_refuses_http_publish(http_broker: Any, api: Api) -> None:
    api.put(
        "/api/topic-permissions/%2F/guest",
        {"exchange": "amq.topic", "write": "^ok\\.", "read": ".*"},
    )
    ok = api.post("/api/exchanges/%2F/amq.topic/publish", {"routing_key": "ok.1", "payload": "x"})
    assert ok.status_code == 200
    refused = api.post(
        "/api/exchanges/%2F/amq.topic/publish", {"routing_key": "no.1", "payload": "x"}
    )
    # RabbitMQ's test-publish answers a channel error as 400 with the AMQP error text.
    assert refused.status_code == 400
    assert refused.json()["reason"] == (
        "403 ACCESS_REFUSED - access to topic 'no.1' in exchange 'amq.topic' in vhost '/'"
        " refused for user 'guest'"
    )


def test_deleting_user_or_vhost_drops_topic_permissions(api: Api) -> None:
    api.put("/api/vhosts/tp-vh", {})
    api.put("/api/users/bob", {"password": "pw", "tags": ""})
    api.put(
        "/api/topic-permissions/tp-vh/bob", {"exchange": "amq.topic", "write": ".*", "read": ".*"}
    )
    api.put(
        "/api/topic-permissions/%2F/bob", {"exchange": "amq.topic", "write": ".*", "read": ".*"}
    )
    api.delete("/api/vhosts/tp-vh")
    assert [p["vhost"] for p in api.json("/api/topic-permissions")] == ["/"]
    api.delete("/api/users/bob")
    assert api.json("/api/topic-permissions") == []


# --- definitions ------------------------------------------------------------------------


def _setup_everything(api: Api) -> None:
    api.put("/api/vhosts/defs-vh", {})
    api.put("/api/users/carol", {"password": "pw", "tags": "management"})
    api.put("/api/permissions/defs-vh/carol", {"configure": ".*", "write": ".*", "read": ".*"})
    api.put(
        "/api/topic-permissions/defs-vh/carol",
        {"exchange": "amq.topic", "write": "^{username}\\.", "read": "^r"},
    )
    api.put(
        "/api/policies/defs-vh/ttl",
        _policy(
            "^work",
            {"message-ttl": 60000, "dead-letter-exchange": "dlx"},
            priority=3,
            **{"apply-to": "queues"},
        ),
    )
    api.put(
        "/api/policies/defs-vh/ae",
        _policy("^in", {"alternate-exchange": "ae"}, **{"apply-to": "exchanges"}),
    )
    api.put("/api/operator-policies/defs-vh/cap", _policy(".*", {"max-length": 1000}, priority=1))
    api.put("/api/queues/defs-vh/work.1", {"durable": True})


def _policy_sections(defs: dict[str, Any]) -> dict[str, Any]:
    return {
        "policies": sorted(defs["policies"], key=lambda p: p["name"]),
        "parameters": sorted(defs["parameters"], key=lambda p: (p["component"], p["name"])),
        "topic_permissions": defs["topic_permissions"],
    }


def test_export_has_policies_operator_policies_and_topic_permissions(api: Api) -> None:
    _setup_everything(api)
    defs = api.json("/api/definitions")
    sections = _policy_sections(defs)
    assert [p["name"] for p in sections["policies"]] == ["ae", "ttl"]
    assert sections["policies"][1] == {
        "vhost": "defs-vh",
        "name": "ttl",
        "pattern": "^work",
        "apply-to": "queues",
        "definition": {"message-ttl": 60000, "dead-letter-exchange": "dlx"},
        "priority": 3,
    }
    # RabbitMQ exports operator policies as parameters of component operator_policy
    assert sections["parameters"] == [
        {
            "vhost": "defs-vh",
            "component": "operator_policy",
            "name": "cap",
            "value": {
                "pattern": ".*",
                "apply-to": "all",
                "definition": {"max-length": 1000},
                "priority": 1,
            },
        }
    ]
    assert sections["topic_permissions"] == [
        {
            "user": "carol",
            "vhost": "defs-vh",
            "exchange": "amq.topic",
            "write": "^{username}\\.",
            "read": "^r",
        }
    ]


def test_definitions_round_trip_into_a_fresh_broker(api: Api, tmp_path: Path) -> None:
    _setup_everything(api)
    exported = api.json("/api/definitions")
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=tmp_path / "other") as other:
        other_api = Api(other.http_url)
        r = other_api.post("/api/definitions", exported)
        assert r.status_code == 204, r.text
        again = other_api.json("/api/definitions")
        assert _policy_sections(again) == _policy_sections(exported)
        queue = other_api.json("/api/queues/defs-vh/work.1")
        assert queue["policy"] == "ttl"
        assert queue["operator_policy"] == "cap"


def test_import_refuses_unknown_top_level_content(api: Api) -> None:
    r = api.post("/api/definitions", {"vhosts": [{"name": "never"}], "federation_links": []})
    assert r.status_code == 400
    assert "federation_links" in r.json()["reason"]
    assert "never" not in [v["name"] for v in api.json("/api/vhosts")]  # nothing applied


def test_import_refuses_an_invalid_policy_before_changing_anything(api: Api) -> None:
    body = {
        "vhosts": [{"name": "half"}],
        "policies": [{"vhost": "half", "name": "p", "pattern": ".*", "definition": {"foo": 1}}],
    }
    r = api.post("/api/definitions", body)
    assert r.status_code == 400
    assert "are not recognised policy settings" in r.json()["reason"]
    assert "half" not in [v["name"] for v in api.json("/api/vhosts")]


def test_import_a_rabbitmq_3_10_export(http_broker: Any, api: Api) -> None:
    """The file came from ``rabbitmqctl export_definitions`` on RabbitMQ 3.10.8 after
    set_policy, set_operator_policy, set_topic_permissions and set_vhost_limits."""
    document = json.loads(RABBIT_EXPORT.read_text())
    r = api.post("/api/definitions", document)
    assert r.status_code == 204, r.text
    assert {p["name"] for p in api.json("/api/policies/pz-policy-vh")} == {"pzae", "pzpol"}
    assert api.json("/api/operator-policies/pz-policy-vh/pzop")["definition"] == {
        "max-length": 1000
    }
    queue = api.json("/api/queues/pz-policy-vh/pz-work")
    assert queue["policy"] == "pzpol"
    assert queue["operator_policy"] == "pzop"
    assert queue["effective_policy_definition"] == {
        "dead-letter-exchange": "dlx",
        "max-length": 10,  # min(policy 10, operator 1000)
        "message-ttl": 60000,
    }
    assert api.json("/api/exchanges/pz-policy-vh/pzx-in")["policy"] == "pzae"
    assert api.json("/api/topic-permissions/pz-policy-vh/pzuser") == [
        {
            "user": "pzuser",
            "vhost": "pz-policy-vh",
            "exchange": "amq.topic",
            "write": "^{username}\\.",
            "read": "^x",
        }
    ]
    # vhost-limits are kept and exported again (not enforced by Baedal)
    exported = api.json("/api/definitions")
    assert {
        "vhost": "pz-policy-vh",
        "component": "vhost-limits",
        "name": "limits",
        "value": {"max-connections": 50},
    } in exported["parameters"]
    # The exported user logs in with its RabbitMQ password hash; the queue is capped at
    # min(x-max-length 20, policy 10) and the topic permission is enforced.
    base = http_broker.amqp_url.rsplit("@", 1)[1].split("/", 1)[0]
    conn = pika.BlockingConnection(pika.URLParameters(f"amqp://pzuser:pzpass@{base}/pz-policy-vh"))
    try:
        channel = conn.channel()
        for i in range(15):
            channel.basic_publish("", "pz-work", str(i).encode())
        channel.basic_publish("amq.topic", "pzuser.fine", b"x")
        poll_until(lambda: api.json("/api/queues/pz-policy-vh/pz-work")["messages"] == 10)
        with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
            channel.basic_publish("amq.topic", "someone.else", b"x")
            channel.queue_declare("pz-work", passive=True)
        assert info.value.reply_code == 403
    finally:
        conn.close()


def test_policies_and_topic_permissions_survive_a_restart(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir) as broker:
        api = Api(broker.http_url)
        _setup_everything(api)
        api.put("/api/policies/%2F/transient-q", _policy("^tq", {"max-length": 1}))
        before = _policy_sections(api.json("/api/definitions"))
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir) as broker:
        api = Api(broker.http_url)
        after = _policy_sections(api.json("/api/definitions"))
        assert after == before
        queue = api.json("/api/queues/defs-vh/work.1")
        assert (queue["policy"], queue["operator_policy"]) == ("ttl", "cap")
        # a queue declared after the restart gets the persisted policy too
        api.put("/api/queues/%2F/tq1", {"durable": False})
        assert api.json("/api/queues/%2F/tq1")["policy"] == "transient-q"
        api.delete("/api/policies/defs-vh/ttl")
    with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir) as broker:
        api = Api(broker.http_url)
        assert [p["name"] for p in api.json("/api/policies/defs-vh")] == ["ae"]


def test_openapi_documents_the_new_paths(api: Api) -> None:
    paths = api.json("/api/openapi.json")["paths"]
    for path in (
        "/api/policies",
        "/api/policies/{vhost}/{name}",
        "/api/operator-policies/{vhost}/{name}",
        "/api/topic-permissions/{vhost}/{user}",
    ):
        assert path in paths
