"""The web console in a real headless Chromium, clicking through against a live Baedal.

Chromium is Debian's package (``apt-get install -y chromium``) driven by Playwright's
Python API; Playwright's own browser download is not used.  Without /usr/bin/chromium
the module is skipped.

Every page visited is saved to ``test-artifacts/screenshots/`` (gitignored) so a run
leaves pictures of what the console looked like.  Waiting is always Playwright's
auto-retrying ``expect`` (the console polls the API every few seconds): no sleeps.
"""

from __future__ import annotations

import itertools
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = Path(os.environ.get("BAEDAL_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOTS = Path(__file__).resolve().parents[2] / "test-artifacts" / "screenshots"
# Long enough for a couple of console poll ticks (3 s each) on a slow CI machine.
UI_TIMEOUT_MS = 15_000

if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium) "
        "to run the browser tests",
        allow_module_level=True,
    )
sync_api = pytest.importorskip(
    "playwright.sync_api", reason="the playwright package is not installed"
)
expect = sync_api.expect

_names = itertools.count()


def unique_name(prefix: str) -> str:
    return f"{prefix}-{os.getpid()}-{next(_names)}"


@pytest.fixture(scope="module")
def browser_context(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    user_data_dir = tmp_path_factory.mktemp("chromium-profile")
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(user_data_dir),
            executable_path=str(CHROMIUM),
            args=CHROMIUM_ARGS,
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser_context: Any, http_broker: Any) -> Iterator[Any]:
    page = browser_context.new_page()
    page.on("dialog", lambda dialog: dialog.accept())  # "Delete queue ...?" confirmations
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    page.close()
    assert not errors, f"JavaScript errors in the console: {errors}"


@pytest.fixture
def console(page: Any, http_broker: Any) -> Any:
    """A page logged in to the console as guest, showing the Overview."""
    log_in(page, http_broker.http_url, "guest", "guest")
    expect(page.get_by_test_id("nav-overview")).to_have_class(re.compile(r"\bactive\b"))
    return page


def log_in(page: Any, base_url: str, user: str, password: str) -> None:
    page.goto(f"{base_url}/console/")
    page.get_by_test_id("login-user").fill(user)
    page.get_by_test_id("login-password").fill(password)
    page.get_by_test_id("login-submit").click()


def screenshot(page: Any, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def go_to(page: Any, nav: str) -> None:
    page.get_by_test_id(f"nav-{nav}").click()
    expect(page.get_by_test_id("view")).to_have_attribute("data-page", nav)


def queue_cell(page: Any, queue: str, field: str) -> Any:
    return page.get_by_test_id(f"queue-row-{queue}").locator(f'td[data-field="{field}"]')


def test_wrong_password_keeps_the_login_form_with_an_error(page: Any, http_broker: Any) -> None:
    log_in(page, http_broker.http_url, "guest", "not-the-password")
    expect(page.get_by_test_id("login-error")).to_contain_text("Login failed")
    expect(page.get_by_test_id("login")).to_be_visible()
    screenshot(page, "00-login-failed")


def test_overview_shows_totals_a_rate_chart_and_no_alarms(console: Any) -> None:
    expect(console.get_by_test_id("total-queues")).to_be_visible()
    expect(console.get_by_test_id("total-connections").locator(".value")).to_have_text(
        re.compile(r"^\d[\d,]*$")
    )
    expect(console.get_by_test_id("total-messages").locator(".value")).to_have_text(
        re.compile(r"^\d[\d,]*$")
    )
    # The chart is drawn once the first sample is in; two samples make a line.
    expect(console.get_by_test_id("chart-rates")).to_have_attribute(
        "data-samples", re.compile("[2-9]|\\d\\d")
    )
    chart_width = console.get_by_test_id("chart-queued").evaluate("canvas => canvas.width")
    assert chart_width > 100
    expect(console.get_by_test_id("alarm-none")).to_be_visible()
    screenshot(console, "01-overview")


def test_queue_lifecycle_declare_publish_get_purge_delete(console: Any) -> None:
    queue = unique_name("console-q")
    payload = f"hello from the console {queue}"

    go_to(console, "queues")
    console.get_by_test_id("declare-queue-name").fill(queue)
    console.get_by_test_id("declare-queue-durable").uncheck()
    console.get_by_test_id("declare-queue-submit").click()
    expect(console.get_by_test_id("declare-queue-result")).to_have_text(f"Queue {queue} declared.")
    expect(queue_cell(console, queue, "messages")).to_have_text("0")
    screenshot(console, "02-queues-declared")

    go_to(console, "exchanges")
    expect(console.get_by_test_id("exchange-row-amq.default")).to_be_visible()
    console.get_by_test_id("publish-exchange").select_option("")  # (AMQP default)
    console.get_by_test_id("publish-routing-key").fill(queue)
    console.get_by_test_id("publish-payload").fill(payload)
    console.get_by_test_id("publish-submit").click()
    expect(console.get_by_test_id("publish-result")).to_have_text("Message published and routed.")
    screenshot(console, "03-exchanges-published")

    go_to(console, "queues")
    expect(queue_cell(console, queue, "messages")).to_have_text("1")
    expect(queue_cell(console, queue, "messages_ready")).to_have_text("1")
    screenshot(console, "04-queues-depth-1")

    console.get_by_test_id(f"queue-link-{queue}").click()
    expect(console.get_by_test_id("queue-detail-name")).to_have_text(queue)
    expect(console.get_by_test_id("queue-detail-messages")).to_have_text("1")
    console.get_by_test_id("get-submit").click()  # default ack mode requeues the message
    expect(console.get_by_test_id("get-result")).to_have_text("Got 1 message.")
    expect(console.get_by_test_id("message-payload")).to_have_text(payload)
    screenshot(console, "05-queue-detail-get")

    console.get_by_test_id("queue-detail-purge").click()
    expect(console.get_by_test_id("queue-detail-messages")).to_have_text("0")
    console.get_by_test_id("get-submit").click()
    expect(console.get_by_test_id("get-result")).to_have_text("The queue is empty.")

    console.get_by_test_id("queue-detail-delete").click()
    expect(console.get_by_test_id("view")).to_have_attribute("data-page", "queues")
    expect(console.get_by_test_id("queues-table")).to_be_visible()
    expect(console.get_by_test_id(f"queue-row-{queue}")).to_have_count(0)
    screenshot(console, "06-queues-deleted")


def test_purge_and_delete_buttons_in_the_queue_table(console: Any) -> None:
    queue = unique_name("console-table-q")
    go_to(console, "queues")
    console.get_by_test_id("declare-queue-name").fill(queue)
    console.get_by_test_id("declare-queue-submit").click()
    expect(queue_cell(console, queue, "messages")).to_have_text("0")
    console.get_by_test_id(f"queue-link-{queue}").click()
    console.get_by_test_id("queue-publish-payload").fill("one")
    console.get_by_test_id("queue-publish-submit").click()
    expect(console.get_by_test_id("queue-publish-result")).to_have_text(
        "Message published and routed."
    )
    go_to(console, "queues")
    expect(queue_cell(console, queue, "messages")).to_have_text("1")
    console.get_by_test_id(f"queue-purge-{queue}").click()
    expect(queue_cell(console, queue, "messages")).to_have_text("0")
    console.get_by_test_id(f"queue-delete-{queue}").click()
    expect(console.get_by_test_id(f"queue-row-{queue}")).to_have_count(0)


def test_exchange_declare_bind_and_delete(console: Any) -> None:
    exchange = unique_name("console-x")
    queue = unique_name("console-bound-q")
    go_to(console, "exchanges")
    console.get_by_test_id("declare-exchange-name").fill(exchange)
    console.get_by_test_id("declare-exchange-type").select_option("fanout")
    console.get_by_test_id("declare-exchange-submit").click()
    expect(console.get_by_test_id(f"exchange-row-{exchange}")).to_contain_text("fanout")

    go_to(console, "queues")
    console.get_by_test_id("declare-queue-name").fill(queue)
    console.get_by_test_id("declare-queue-submit").click()
    expect(queue_cell(console, queue, "messages")).to_have_text("0")

    go_to(console, "bindings")
    console.get_by_test_id("bind-source").fill(exchange)
    console.get_by_test_id("bind-destination").fill(queue)
    console.get_by_test_id("bind-submit").click()
    expect(console.get_by_test_id(f"binding-row-{exchange}:{queue}:")).to_be_visible()
    screenshot(console, "07-bindings")

    go_to(console, "exchanges")
    console.get_by_test_id(f"exchange-publish-{exchange}").click()
    console.get_by_test_id("publish-payload").fill("fanned out")
    console.get_by_test_id("publish-submit").click()
    expect(console.get_by_test_id("publish-result")).to_have_text("Message published and routed.")
    console.get_by_test_id(f"exchange-delete-{exchange}").click()
    expect(console.get_by_test_id(f"exchange-row-{exchange}")).to_have_count(0)

    go_to(console, "queues")
    expect(queue_cell(console, queue, "messages")).to_have_text("1")
    console.get_by_test_id(f"queue-delete-{queue}").click()
    expect(console.get_by_test_id(f"queue-row-{queue}")).to_have_count(0)


def test_policies_page_sets_lists_and_clears_policies(console: Any, http_broker: Any) -> None:
    import requests

    name = unique_name("console-pol")
    queue = unique_name("console-pol-q")
    requests.put(
        f"{http_broker.http_url}/api/queues/%2F/{queue}",
        json={},
        auth=("guest", "guest"),
        timeout=10,
    ).raise_for_status()
    go_to(console, "policies")
    expect(console.get_by_test_id("policies-table")).to_contain_text("No policies.")
    console.get_by_test_id("policy-name").fill(name)
    console.get_by_test_id("policy-pattern").fill("^console-pol-q")
    console.get_by_test_id("policy-apply-to").select_option("queues")
    console.get_by_test_id("policy-priority").fill("4")
    console.get_by_test_id("policy-definition").fill("max-length=7\ndead-letter-exchange=dlx")
    console.get_by_test_id("policy-submit").click()
    expect(console.get_by_test_id("policy-result")).to_have_text(f"Set policy {name}.")
    row = console.get_by_test_id(f"policy-row-/:{name}")
    expect(row.locator('td[data-field="definition"]')).to_contain_text("max-length: 7")
    expect(row.locator('td[data-field="apply-to"]')).to_have_text("queues")
    expect(row.locator('td[data-field="priority"]')).to_have_text("4")
    queue_info = requests.get(
        f"{http_broker.http_url}/api/queues/%2F/{queue}", auth=("guest", "guest"), timeout=10
    ).json()
    assert queue_info["policy"] == name
    assert queue_info["effective_policy_definition"] == {
        "max-length": 7,
        "dead-letter-exchange": "dlx",
    }

    # an operator policy through the same form, and a refused definition shows its reason
    console.get_by_test_id("policy-kind").select_option("operator")
    console.get_by_test_id("policy-name").fill(name + "-op")
    console.get_by_test_id("policy-definition").fill("max-length=3")
    console.get_by_test_id("policy-submit").click()
    expect(console.get_by_test_id(f"operator-policy-row-/:{name}-op")).to_be_visible()
    console.get_by_test_id("policy-definition").fill("overflow=drop-head")
    console.get_by_test_id("policy-submit").click()
    expect(console.get_by_test_id("policy-result")).to_contain_text(
        "are not recognised policy settings"
    )
    screenshot(console, "08-policies")

    console.goto(f"{http_broker.http_url}/console/#/queues/%2F/{queue}")
    expect(console.get_by_test_id("queue-detail-policy")).to_have_text(name)
    expect(console.get_by_test_id("queue-detail-operator_policy")).to_have_text(name + "-op")
    expect(console.get_by_test_id("queue-detail-effective_policy_definition")).to_contain_text(
        '"max-length":3'
    )
    go_to(console, "policies")
    console.get_by_test_id(f"policy-row-/:{name}").get_by_test_id("delete-policy").click()
    expect(console.get_by_test_id(f"policy-row-/:{name}")).to_have_count(0)
    console.get_by_test_id(f"operator-policy-row-/:{name}-op").get_by_test_id(
        "delete-policy"
    ).click()
    expect(console.get_by_test_id(f"operator-policy-row-/:{name}-op")).to_have_count(0)


def test_connections_page_lists_a_pika_connection_and_closes_it(
    console: Any, http_broker: Any
) -> None:
    pika = pytest.importorskip("pika")
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    try:
        channel = connection.channel()
        queue = unique_name("console-consumer-q")
        channel.queue_declare(queue, auto_delete=True)
        channel.basic_consume(queue, lambda *args: None)
        # pika does not expose its socket; the local port tells its row apart.
        local_port = connection._impl._transport._sock.getsockname()[1]

        go_to(console, "overview")
        expect(console.get_by_test_id("total-connections").locator(".value")).to_have_text("1")
        expect(console.get_by_test_id("total-consumers").locator(".value")).to_have_text("1")
        screenshot(console, "08-overview-with-a-client")

        go_to(console, "channels")
        expect(console.get_by_test_id("channels-table")).to_contain_text(f":{local_port}")
        expect(console.get_by_test_id("consumers-table")).to_contain_text(queue)
        screenshot(console, "09-channels")

        go_to(console, "connections")
        row = (
            console.get_by_test_id("connections-table")
            .locator("tbody tr")
            .filter(has_text=f":{local_port}")
        )
        expect(row).to_have_count(1)
        expect(row.locator('td[data-field="client"]')).to_contain_text(re.compile("pika", re.I))
        expect(row.locator('td[data-field="user"]')).to_have_text("guest")
        screenshot(console, "10-connections")
        row.get_by_test_id("connection-close").click()

        # The broker really closed it: pika hears connection.close (and answers close-ok,
        # which the broker waits for before it forgets the connection).
        deadline = time.monotonic() + UI_TIMEOUT_MS / 1000
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker, match="320"):
            while time.monotonic() < deadline:
                connection.process_data_events(time_limit=0.1)
        expect(row).to_have_count(0)
        screenshot(console, "11-connections-closed")
    finally:
        if connection.is_open:
            connection.close()


def test_logout_returns_to_the_login_form(console: Any) -> None:
    console.get_by_test_id("logout").click()
    expect(console.get_by_test_id("login")).to_be_visible()
    assert console.evaluate("sessionStorage.getItem('baedal.auth')") is None


def test_queue_page_of_a_stream_shows_offsets_size_retention_and_readers(console: Any, http_broker: Any) -> None:
    import pika

    name = unique_name("console-stream")
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    try:
        channel = connection.channel()
        channel.queue_declare(
            name,
            durable=True,
            arguments={"x-queue-type": "stream", "x-max-length-bytes": 1_000_000, "x-max-age": "7D"},
        )
        channel.confirm_delivery()
        for i in range(3):
            channel.basic_publish("", name, f"s{i}".encode(), pika.BasicProperties(delivery_mode=2))
        reader = connection.channel()
        reader.basic_qos(prefetch_count=10)
        reader.basic_consume(name, lambda ch, m, p, b: ch.basic_ack(m.delivery_tag), arguments={"x-stream-offset": "first"})
        connection.process_data_events(0.2)
        console.goto(f"{http_broker.http_url}/console/#/queues/%2F/{name}")
        expect(console.get_by_test_id("queue-detail-type")).to_have_text("stream")
        expect(console.get_by_test_id("queue-detail-messages")).to_have_text("3")
        expect(console.get_by_test_id("queue-detail-first_offset")).to_have_text("0")
        expect(console.get_by_test_id("queue-detail-last_offset")).to_have_text("2")
        expect(console.get_by_test_id("queue-detail-segments")).to_have_text("1")
        expect(console.get_by_test_id("queue-detail-max_length_bytes")).to_have_text("1,000,000")
        expect(console.get_by_test_id("queue-detail-max_age")).to_have_text("7D")
        expect(console.get_by_test_id("queue-detail-readers")).to_have_text("1")
        screenshot(console, "10-stream-detail")
    finally:
        connection.close()
