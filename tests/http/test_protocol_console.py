"""The console in headless Chromium with every protocol: the Connections page's protocol
column and filter, and the MQTT page (sessions with their queues, retained messages;
deleting a retained message and a disconnected session).  Same set-up as
test_scheduled_console.py (Debian's chromium driven by Playwright; skipped without it)."""

from __future__ import annotations

import threading
from typing import Any

import paho.mqtt.client as mqtt
import pika
import pytest
from httphelpers import Api, poll_until

# The browser, page and expect of the console's own browser tests (module-level skip
# without Chromium/playwright comes with them).
from test_console_browser import browser_context, expect, page  # noqa: E402, F401  # fixtures used by name

pytestmark = pytest.mark.timeout(120)


def _mqtt_client(broker: Any, client_id: str) -> Any:
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    client.username_pw_set("guest", "guest")
    connected = threading.Event()
    client.on_connect = lambda *a: connected.set()
    client.connect("127.0.0.1", broker.mqtt_port, keepalive=30)
    client.loop_start()
    assert connected.wait(10)
    return client


def test_connections_filter_and_mqtt_page(page: Any, http_broker: Any) -> None:  # noqa: F811
    api = Api(http_broker.http_url)
    amqp = pika.BlockingConnection(pika.URLParameters(http_broker.amqp_url))
    client = _mqtt_client(http_broker, "console-mqtt")
    try:
        subscribed = threading.Event()
        client.on_subscribe = lambda *a: subscribed.set()
        client.subscribe("console/+/in", 1)
        assert subscribed.wait(10)
        for topic in ("console/r/a", "console/r/b"):
            client.publish(topic, b"kept", qos=1, retain=True).wait_for_publish(10)
        poll_until(lambda: len(api.json("/api/connections")) == 2)

        page.goto(f"{http_broker.http_url}/console/")
        page.get_by_test_id("login-user").fill("guest")
        page.get_by_test_id("login-password").fill("guest")
        page.get_by_test_id("login-submit").click()
        page.get_by_test_id("nav-connections").click()
        expect(page.get_by_test_id("connections-count")).to_have_text("(2)")
        rows = page.locator('[data-testid^="connection-row-"]')
        expect(rows.locator('td[data-field="protocol"]')).to_have_text(["AMQP 0-9-1", "MQTT 3.1.1"], ignore_case=False)
        page.get_by_test_id("connections-protocol").select_option("mqtt")
        expect(page.get_by_test_id("connections-count")).to_have_text("(1)")
        expect(rows.locator('td[data-field="client"]')).to_have_text(["console-mqtt"])
        page.get_by_test_id("connections-protocol").select_option("amqp")
        expect(rows.locator('td[data-field="protocol"]')).to_have_text(["AMQP 0-9-1"])

        page.get_by_test_id("nav-mqtt").click()
        expect(page.get_by_test_id("view")).to_have_attribute("data-page", "mqtt")
        session = page.get_by_test_id("mqtt-session-row-console-mqtt")
        expect(session.locator('td[data-field="subscriptions"]')).to_have_text(
            "console/+/in (QoS 1) → mqtt-subscription-console-mqttqos1"
        )
        expect(session.locator('td[data-field="connected"]')).to_have_text("MQTT 3.1.1")
        expect(session.get_by_test_id("mqtt-session-delete")).to_have_count(0)  # connected
        expect(page.get_by_test_id("mqtt-retained-count")).to_have_text("(2)")
        page.get_by_test_id("mqtt-retained-row-console/r/a").get_by_test_id("mqtt-retained-delete").click()
        expect(page.get_by_test_id("mqtt-retained-count")).to_have_text("(1)")
        assert [m["topic"] for m in api.json("/api/mqtt/retained")["items"]] == ["console/r/b"]

        client.disconnect()
        client.loop_stop()
        expect(session.locator('td[data-field="connected"]')).to_have_text("no")
        session.get_by_test_id("mqtt-session-delete").click()
        expect(page.get_by_test_id("mqtt-session-count")).to_have_text("(0)")
        assert api.get("/api/mqtt/sessions/console-mqtt").status_code == 404
    finally:
        client.disconnect()
        client.loop_stop()
        if amqp.is_open:
            amqp.close()
