"""STOMP over WebSocket from a real browser: headless Chromium runs stomp.js (the copy
RabbitMQ's ``rabbitmq_web_stomp_examples`` plugin ships, injected by the test from the
local disk, never a CDN) against Baedal's ``/ws``, and pika talks to the same queue.

Skipped without Debian's chromium, the playwright package, or a local stomp.js (set
``BAEDAL_STOMP_JS`` to another copy).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pika
import pytest

CHROMIUM = Path(os.environ.get("BAEDAL_CHROMIUM", "/usr/bin/chromium"))
_FOUND = sorted(glob.glob("/usr/lib/rabbitmq/lib/rabbitmq_server-*/plugins/rabbitmq_web_stomp_examples-*/priv/stomp.js"))
STOMP_JS = Path(os.environ.get("BAEDAL_STOMP_JS", _FOUND[-1] if _FOUND else "/nonexistent/stomp.js"))

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} is missing (apt-get install -y chromium)", allow_module_level=True)
if not STOMP_JS.exists():
    pytest.skip("no local stomp.js (set BAEDAL_STOMP_JS)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")

pytestmark = pytest.mark.timeout(90)


@pytest.fixture(scope="module")
def web_broker() -> Iterator[Any]:
    from baedal import Broker

    with tempfile.TemporaryDirectory() as data_dir:
        with Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir, kafka_port=None) as broker:
            yield broker


@pytest.fixture
def page(tmp_path: Path) -> Iterator[Any]:
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"], headless=True
        )
        try:
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.set_content("<html><body>stomp test</body></html>")
            page.add_script_tag(path=str(STOMP_JS))
            yield page
            assert not errors, f"JavaScript errors: {errors}"
        finally:
            browser.close()


_CLIENT = """
([url, queue]) => new Promise((resolve, reject) => {
  const ws = new WebSocket(url, ['v12.stomp', 'v11.stomp', 'v10.stomp']);
  const client = Stomp.over(ws);
  client.heartbeat.outgoing = 0;
  client.heartbeat.incoming = 0;
  client.debug = null;
  window.received = [];
  client.connect('guest', 'guest', (frame) => {
    window.stompVersion = frame.headers.version;
    client.subscribe('/queue/' + queue, (message) => {
      window.received.push({body: message.body, type: message.headers['content-type'],
                            colour: message.headers['colour']});
      message.ack();
    }, {ack: 'client-individual'});
    client.send('/queue/' + queue, {'content-type': 'text/plain', colour: 'green'}, 'hello from chromium');
    window.stompClient = client;
    resolve(true);
  }, (error) => reject(String(error)), '/');
})
"""


def test_stomp_js_in_chromium_sends_and_receives_over_ws_and_meets_pika(web_broker: Any, page: Any) -> None:
    url = web_broker.http_url.replace("http://", "ws://") + "/ws"
    page.evaluate(_CLIENT, [url, "browser-q"])
    page.wait_for_function("window.received.length >= 1", timeout=10_000)
    # This stomp.js (2013) offers accept-version 1.1,1.0: the highest common one wins.
    assert page.evaluate("window.stompVersion") == "1.1"
    first = page.evaluate("window.received[0]")
    assert first == {"body": "hello from chromium", "type": "text/plain", "colour": "green"}
    # An AMQP publisher reaches the browser's subscription, headers included.
    connection = pika.BlockingConnection(pika.URLParameters(web_broker.amqp_url))
    try:
        connection.channel().basic_publish(
            "", "browser-q", b"hello from pika", pika.BasicProperties(content_type="text/plain", headers={"colour": "blue"})
        )
    finally:
        connection.close()
    page.wait_for_function("window.received.length >= 2", timeout=10_000)
    assert page.evaluate("window.received[1]") == {"body": "hello from pika", "type": "text/plain", "colour": "blue"}
    page.evaluate("new Promise((resolve) => window.stompClient.disconnect(resolve))")
