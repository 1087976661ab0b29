"""``baedal ctl`` against a live Baedal: every command through ``baedal.ctl.main``.

Each test gets a fresh broker (``http_broker``), so names need not be unique.  Output is
read from capsys; ``--json`` answers are parsed rather than matching table text.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from httphelpers import poll_until

from baedal import ctl


class Ctl:
    """Runs ``baedal ctl --url <broker> ...`` in-process and keeps what it printed."""

    def __init__(self, broker: Any, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = broker.http_url
        self.capsys = capsys
        self.out = ""
        self.err = ""

    def __call__(self, *argv: str, url: str | None = None) -> int:
        self.capsys.readouterr()
        code = ctl.main(["--url", url or self.url, *argv])
        captured = self.capsys.readouterr()
        self.out, self.err = captured.out, captured.err
        return code

    def json(self, *argv: str) -> Any:
        code = self("--json", *argv)
        assert code == 0, self.err
        return json.loads(self.out)

    def queue(self, name: str) -> dict[str, Any]:
        return next(q for q in self.json("list", "queues") if q["name"] == name)


@pytest.fixture
def run(http_broker: Any, capsys: pytest.CaptureFixture[str]) -> Ctl:
    return Ctl(http_broker, capsys)


def test_declare_queue_with_arguments_then_list_shows_it(run: Ctl) -> None:
    assert run("declare", "queue", "orders", "--durable", "--arg", "x-max-length=10") == 0
    assert "declared queue 'orders'" in run.out

    assert run("list", "queues") == 0
    assert "orders" in run.out

    queue = run.queue("orders")
    assert queue["durable"] is True
    assert queue["arguments"] == {"x-max-length": 10}  # read as JSON: a number, not "10"


def test_publish_get_purge_delete_round_trip(run: Ctl) -> None:
    assert run("declare", "queue", "work") == 0
    assert run("publish", "--routing-key", "work", "--body", "hello ctl") == 0
    assert "routed" in run.out
    poll_until(lambda: run.queue("work")["messages"] == 1)

    assert run("get", "work") == 0  # default ack mode requeues
    assert "hello ctl" in run.out
    messages = run.json("get", "work", "--count", "5")
    assert [m["payload"] for m in messages] == ["hello ctl"]
    assert messages[0]["routing_key"] == "work"
    poll_until(lambda: run.queue("work")["messages"] == 1)

    assert run("purge", "queue", "work") == 0
    assert "purged queue 'work'" in run.out
    poll_until(lambda: run.queue("work")["messages"] == 0)
    assert run("get", "work") == 0
    assert "is empty" in run.out

    assert run("delete", "queue", "work") == 0
    assert all(q["name"] != "work" for q in run.json("list", "queues"))


def test_get_with_ack_requeue_false_takes_the_message_away(run: Ctl) -> None:
    run("declare", "queue", "once")
    run("publish", "--routing-key", "once", "--body", "only once")
    messages = run.json("get", "once", "--ackmode", "ack_requeue_false")
    assert [m["payload"] for m in messages] == ["only once"]
    assert run.json("get", "once") == []


def test_publish_with_no_matching_binding_warns_not_routed(run: Ctl) -> None:
    assert run("declare", "exchange", "events", "--type", "topic") == 0
    assert run("publish", "--exchange", "events", "--routing-key", "a.b", "--body", "x") == 0
    assert "NOT routed" in run.err
    assert run.json("publish", "--exchange", "events", "--routing-key", "a", "--body", "x") == {
        "routed": False
    }


def test_declare_list_and_delete_exchange(run: Ctl) -> None:
    assert run("declare", "exchange", "audit", "--type", "fanout", "--durable") == 0
    exchanges = {x["name"]: x for x in run.json("list", "exchanges")}
    assert exchanges["audit"]["type"] == "fanout"
    assert exchanges["audit"]["durable"] is True
    assert run("list", "exchanges") == 0
    assert "audit" in run.out and "(AMQP default)" in run.out

    assert run("delete", "exchange", "audit") == 0
    assert "audit" not in {x["name"] for x in run.json("list", "exchanges")}


def test_bindings_and_vhosts_are_listed(run: Ctl) -> None:
    run("declare", "queue", "bound")
    bindings = run.json("list", "bindings")
    assert any(b["destination"] == "bound" and b["source"] == "" for b in bindings)
    assert run("list", "vhosts") == 0
    assert "/" in run.out


def test_unknown_queue_is_exit_1_with_the_api_reason(run: Ctl) -> None:
    assert run("delete", "queue", "no-such-queue") == 1
    assert "delete queue 'no-such-queue'" in run.err
    assert "404" in run.err


def test_wrong_password_is_exit_1_with_a_clear_message(run: Ctl) -> None:
    assert run("--password", "wrong", "list", "queues") == 1
    assert "authentication failed" in run.err


def test_unreachable_broker_is_exit_2(run: Ctl) -> None:
    assert run("list", "queues", url="http://127.0.0.1:9") == 2
    assert "cannot reach http://127.0.0.1:9" in run.err


def test_bad_command_lines_are_exit_2(run: Ctl) -> None:
    assert run("declare", "queue") == 2  # no name
    assert run("list", "nonsense") == 2
    assert run("declare", "queue", "q", "--arg", "no-equals-sign") == 2
    assert "KEY=VALUE" in run.err


def test_add_user_and_set_permissions(run: Ctl) -> None:
    assert run("add", "user", "alice", "--password", "s3cret", "--tags", "management") == 0
    users = {u["name"]: u for u in run.json("list", "users")}
    assert "alice" in users
    tags = users["alice"]["tags"]
    assert "management" in (tags if isinstance(tags, list) else tags.split(","))

    assert run("set", "permissions", "alice", "--configure", "^alice-.*", "--read", ".*") == 0
    [permission] = [p for p in run.json("list", "permissions") if p["user"] == "alice"]
    assert (
        permission["vhost"],
        permission["configure"],
        permission["write"],
        permission["read"],
    ) == (
        "/",
        "^alice-.*",
        ".*",
        ".*",
    )

    # The new user can log in with its password (and sees what a management user sees).
    assert run("--user", "alice", "--password", "s3cret", "list", "queues") == 0

    assert run("delete", "user", "alice") == 0
    assert "alice" not in {u["name"] for u in run.json("list", "users")}


def test_export_import_round_trip(run: Ctl, tmp_path: Path) -> None:
    run("declare", "queue", "kept", "--durable", "--arg", "x-message-ttl=60000")
    run("declare", "exchange", "kept-x", "--type", "direct", "--durable")
    run("add", "user", "bob", "--password", "pw")
    exported = tmp_path / "definitions.json"
    assert run("export", str(exported)) == 0
    assert "exported definitions" in run.out
    definitions = json.loads(exported.read_text())
    assert any(q["name"] == "kept" for q in definitions["queues"])

    run("delete", "queue", "kept")
    run("delete", "exchange", "kept-x")
    run("delete", "user", "bob")
    assert "kept" not in {q["name"] for q in run.json("list", "queues")}

    assert run("import", str(exported)) == 0
    queue = run.queue("kept")
    assert queue["durable"] is True
    assert queue["arguments"] == {"x-message-ttl": 60000}
    assert "kept-x" in {x["name"] for x in run.json("list", "exchanges")}
    assert "bob" in {u["name"] for u in run.json("list", "users")}


def test_import_of_a_file_that_is_not_json_is_exit_2(run: Ctl, tmp_path: Path) -> None:
    broken = tmp_path / "broken.json"
    broken.write_text("{ not json")
    assert run("import", str(broken)) == 2
    assert "is not JSON" in run.err


def test_close_connection_closes_a_pika_client(run: Ctl, http_broker: Any) -> None:
    pika = pytest.importorskip("pika")
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    try:
        connections = poll_until(lambda: run.json("list", "connections"))
        assert len(connections) == 1
        assert run("list", "connections") == 0
        assert "guest" in run.out

        assert run("close", "connection", connections[0]["name"], "--reason", "maintenance") == 0
        deadline = time.monotonic() + 10
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker, match="maintenance"):
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
        poll_until(lambda: run.json("list", "connections") == [])
    finally:
        if connection.is_open:
            connection.close()


def test_python_m_baedal_ctl_runs_as_a_subprocess(http_broker: Any) -> None:
    env_url = http_broker.http_url
    declared = subprocess.run(
        [sys.executable, "-m", "baedal", "ctl", "--url", env_url, "declare", "queue", "smoke"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert declared.returncode == 0, declared.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "baedal", "ctl", "--json", "list", "queues"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "BAEDAL_HTTP_URL": env_url},  # the URL from the environment
    )
    assert listed.returncode == 0, listed.stderr
    assert [q["name"] for q in json.loads(listed.stdout)] == ["smoke"]
