"""The console's Scheduled page in headless Chromium: jobs listed in due order, paged,
and one cancelled with its button.  Same set-up as test_console_browser.py (Debian's
chromium driven by Playwright; skipped without it)."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest
from httphelpers import Api

CHROMIUM = Path(os.environ.get("BAEDAL_CHROMIUM", "/usr/bin/chromium"))
if not CHROMIUM.exists():
    pytest.skip(
        f"{CHROMIUM} is missing: install Debian's chromium (apt-get install -y chromium)",
        allow_module_level=True,
    )
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
expect = sync_api.expect

pytestmark = pytest.mark.timeout(120)
UI_TIMEOUT_MS = 15_000


@pytest.fixture
def page(tmp_path: Path, http_broker: Any) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            args=["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"],
            headless=True,
            viewport={"width": 1400, "height": 1000},
        )
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        try:
            page = context.new_page()
            page.on("dialog", lambda dialog: dialog.accept())
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            yield page
            assert not errors, f"JavaScript errors in the console: {errors}"
        finally:
            context.close()


def test_scheduled_page_lists_pages_and_cancels(page: Any, http_broker: Any) -> None:
    connection = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    channel = connection.channel()
    channel.confirm_delivery()
    channel.queue_declare("console-later")
    for i in range(55):  # more than one page of 50
        channel.basic_publish(
            "", "console-later", b"x" * (i + 1),
            pika.BasicProperties(headers={"AMQ_SCHEDULED_DELAY": 3_600_000 + i * 1000}),
        )
    connection.close()
    first = Api(http_broker.http_url).json("/api/scheduled/%2F?page_size=1")["items"][0]

    page.goto(f"{http_broker.http_url}/console/")
    page.get_by_test_id("login-user").fill("guest")
    page.get_by_test_id("login-password").fill("guest")
    page.get_by_test_id("login-submit").click()
    page.get_by_test_id("nav-scheduled").click()
    expect(page.get_by_test_id("view")).to_have_attribute("data-page", "scheduled")
    expect(page.get_by_test_id("scheduled-count")).to_have_text("(55)")
    rows = page.locator('[data-testid^="scheduled-row-"]')
    expect(rows).to_have_count(50)
    expect(rows.first).to_have_attribute("data-name", first["id"])  # due order
    expect(rows.first.locator('td[data-field="size"]')).to_have_text("1")
    page.get_by_test_id("scheduled-next").click()
    expect(rows).to_have_count(5)
    expect(page.get_by_test_id("scheduled-pager")).to_contain_text(re.compile(r"page 2 of 2"))
    page.get_by_test_id("scheduled-prev").click()
    expect(rows).to_have_count(50)
    page.get_by_test_id(f"scheduled-row-{first['id']}").get_by_test_id("scheduled-cancel").click()
    expect(page.get_by_test_id("scheduled-count")).to_have_text("(54)")
    expect(page.get_by_test_id(f"scheduled-row-{first['id']}")).to_have_count(0)
    assert Api(http_broker.http_url).get(f"/api/scheduled/%2F/{first['id']}").status_code == 404
