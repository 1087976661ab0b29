"""The console's Scheduled page in headless Chromium: jobs listed in due order, paged,
and one cancelled with its button.  Same set-up as test_console_browser.py (Debian's
chromium driven by Playwright; skipped without it)."""

from __future__ import annotations

import re
from typing import Any

import pika
import pytest
from httphelpers import Api

# The browser, page and expect of the console's own browser tests (module-level skip
# without Chromium/playwright comes with them).
from test_console_browser import browser_context, expect, page  # noqa: E402, F401  # fixtures used by name

pytestmark = pytest.mark.timeout(120)


def test_scheduled_page_lists_pages_and_cancels(page: Any, http_broker: Any) -> None:  # noqa: F811
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
