"""``baedal ctl`` policy and topic-permission commands (rabbitmqctl's spelling) against a
live Baedal, through ``baedal.ctl.main``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from httphelpers import Api

from baedal import ctl


class Ctl:
    def __init__(self, broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = broker.http_url
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def __call__(self, *argv: str) -> int:
        self.capsys.readouterr()
        code = ctl.main(["--url", self.url, *argv])
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def json(self, *argv: str) -> Any:
        code = self("--json", *argv)
        assert code == 0, self.err
        return json.loads(self.out)


@pytest.fixture
def run(http_broker: Any, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(http_broker, capsys)


def test_set_list_clear_policy(run: Ctl, http_broker: Any) -> None:
    assert (
        run(
            "set_policy",
            "cap",
            "^orders\\.",
            '{"max-length": 100, "overflow": "reject-publish"}',
            "--priority",
            "7",
            "--apply-to",
            "queues",
        )
        == 0
    ), run.err
    assert "set policy 'cap'" in run.out
    assert run.json("list_policies") == [
        {
            "vhost": "/",
            "name": "cap",
            "pattern": "^orders\\.",
            "apply-to": "queues",
            "definition": {"max-length": 100, "overflow": "reject-publish"},
            "priority": 7,
        }
    ]
    assert run("list_policies") == 0
    assert "cap" in run.out and "^orders\\." in run.out and "reject-publish" in run.out
    assert run("list", "policies") == 0 and "cap" in run.out
    Api(http_broker.http_url).put("/api/queues/%2F/orders.eu", {})
    assert run.json("list", "queues")[0]["policy"] == "cap"
    assert run("clear_policy", "cap") == 0
    assert "cleared policy 'cap'" in run.out
    assert run.json("list_policies") == []
    assert run("clear_policy", "cap") == 1
    assert "404" in run.err or "no policy" in run.err


def test_policy_errors(run: Ctl) -> None:
    assert run("set_policy", "bad", ".*", '{"foo": 1}') == 1
    assert "are not recognised policy settings" in run.err
    assert run("set_policy", "bad", ".*", "not json") == 2
    assert "not JSON" in run.err
    assert run("set_policy", "bad", ".*", "[1]") == 2
    assert run("set_policy", "bad", ".*", '{"max-length": 1}', "--apply-to", "streams") == 2


def test_operator_policy_commands_and_vhost_option(run: Ctl) -> None:
    assert run("add", "vhost", "ops") == 0
    assert run("set_operator_policy", "limit", ".*", '{"max-length": 1000}', "-p", "ops") == 0
    assert "operator policy 'limit'" in run.out
    assert [p["name"] for p in run.json("list_operator_policies", "-p", "ops")] == ["limit"]
    assert run.json("list_operator_policies") == []  # default vhost /
    assert run.json("--vhost", "ops", "list_operator_policies")[0]["vhost"] == "ops"
    assert run.json("list_policies", "-p", "ops") == []
    assert run("set_operator_policy", "x", ".*", '{"overflow": "drop-head"}', "-p", "ops") == 1
    assert run("clear_operator_policy", "limit", "-p", "ops") == 0
    assert run.json("list_operator_policies", "-p", "ops") == []


def test_topic_permission_commands(run: Ctl) -> None:
    assert run("add", "user", "dave", "--password", "pw") == 0
    assert run("set_topic_permissions", "dave", "amq.topic", "^{username}\\.", "^r", "-p", "/") == 0
    assert "set topic permissions of 'dave'" in run.out
    assert run("set_topic_permissions", "dave", "events", "^w", ".*") == 0
    rows = run.json("list_topic_permissions")
    assert rows == [
        {
            "user": "dave",
            "vhost": "/",
            "exchange": "amq.topic",
            "write": "^{username}\\.",
            "read": "^r",
        },
        {"user": "dave", "vhost": "/", "exchange": "events", "write": "^w", "read": ".*"},
    ]
    assert run("list_topic_permissions") == 0 and "events" in run.out
    assert run("clear_topic_permissions", "dave", "events") == 0
    assert [r["exchange"] for r in run.json("list_topic_permissions")] == ["amq.topic"]
    assert run("clear_topic_permissions", "dave") == 0
    assert run.json("list_topic_permissions") == []
    assert run("set_topic_permissions", "nobody", "amq.topic", ".*", ".*") == 1


def test_export_import_carries_policies(run: Ctl, tmp_path: Path, http_broker: Any) -> None:
    assert run("set_policy", "ttl", "^t", '{"message-ttl": 1000}') == 0
    assert run("set_operator_policy", "op", ".*", '{"expires": 60000}') == 0
    path = tmp_path / "defs.json"
    assert run("export", str(path)) == 0
    assert "1 policies" in run.out
    exported = json.loads(path.read_text())
    assert [p["name"] for p in exported["policies"]] == ["ttl"]
    assert [p["name"] for p in exported["parameters"]] == ["op"]
    assert run("clear_policy", "ttl") == 0
    assert run("clear_operator_policy", "op") == 0
    assert run("import", str(path)) == 0
    assert [p["name"] for p in run.json("list_policies")] == ["ttl"]
    assert [p["name"] for p in run.json("list_operator_policies")] == ["op"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"policies": [], "shovels": []}))
    assert run("import", str(bad)) == 1
    assert "shovels" in run.err
