"""Helpers for the MQTT interop suites: a broker to talk to and a paho-mqtt client that
records what it receives.

The suites run against an in-process Baedal by default.  ``BAEDAL_TEST_MQTT_URL=host:port``
runs them against another broker (mosquitto: ``mosquitto -p PORT``) to check that a
behaviour matches the broker MQTT users know; tests of Baedal-only things (AMQP
cross-protocol, the management API, limits) skip there.
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from baedal_testing import wait_until

EXTERNAL_MQTT = os.environ.get("BAEDAL_TEST_MQTT_URL")

__all__ = ["EXTERNAL_MQTT", "Target", "Client", "Properties", "PacketTypes", "wait_until", "baedal_only",
           "differs_from_mosquitto"]

baedal_only = pytest.mark.skipif(bool(EXTERNAL_MQTT), reason="Baedal-specific behaviour")


def differs_from_mosquitto(reason: str) -> pytest.MarkDecorator:
    """A behaviour checked against mosquitto 2.0.11 (Debian 12) that it does not share;
    ``reason`` records what mosquitto does instead."""
    return pytest.mark.skipif(bool(EXTERNAL_MQTT), reason=f"mosquitto 2.0.11 differs: {reason}")


@dataclass
class Target:
    host: str
    port: int
    username: str | None
    password: str | None
    broker: Any  # the in-process baedal.Broker, or None for an external broker

    def client(self, client_id: str | None = None, *, version: int = 4, **kwargs: Any) -> Client:
        return Client(self, client_id or f"t-{uuid.uuid4().hex[:10]}", version=version, **kwargs)


def start_target(tmp_path: Any, **settings: Any) -> Iterator[Target]:
    if EXTERNAL_MQTT:
        host, _, port = EXTERNAL_MQTT.rpartition(":")
        yield Target(host or "127.0.0.1", int(port), None, None, None)
        return
    from baedal import Broker

    broker = Broker(host="127.0.0.1", port=0, data_dir=tmp_path, **settings)
    broker.start_in_thread()
    try:
        yield Target("127.0.0.1", broker.mqtt_port, "guest", "guest", broker)
    finally:
        broker.stop_thread()


class Client:
    """A paho-mqtt client on its own network thread; ``messages`` is what arrived."""

    def __init__(self, target: Target, client_id: str, *, version: int = 4, clean: bool = True,
                 keepalive: int = 60, will: tuple[str, bytes, int, bool] | None = None,
                 session_expiry: int | None = None, connect: bool = True,
                 connect_properties: Properties | None = None, username: str | None = ...,  # type: ignore[assignment]
                 password: str | None = ...,  # type: ignore[assignment]
                 will_properties: Properties | None = None) -> None:
        self.target = target
        self.client_id = client_id
        self.version = version
        protocol = paho.MQTTv5 if version == 5 else paho.MQTTv311
        if version == 5:
            self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol)
        else:
            self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                    protocol=protocol, clean_session=clean)
        self.clean = clean
        user = target.username if username is ... else username
        pw = target.password if password is ... else password
        if user is not None:
            self.paho.username_pw_set(user, pw)
        if will is not None:
            self.paho.will_set(*will, properties=will_properties)
        self.keepalive = keepalive
        self.session_expiry = session_expiry
        self.connect_properties = connect_properties
        self.messages: list[paho.MQTTMessage] = []
        self.lock = threading.Lock()
        self.connack: tuple[bool, int, Any] | None = None
        self.disconnected: Any = None
        self.subacks: dict[int, list[Any]] = {}
        self.acked: set[int] = set()
        self.paho.on_connect = self._on_connect
        self.paho.on_message = self._on_message
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_publish = self._on_publish
        if connect:
            self.connect()

    # callbacks (paho's network thread)
    def _on_connect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.connack = (bool(flags.session_present), reason.value, properties)

    def _on_message(self, client: Any, userdata: Any, message: paho.MQTTMessage) -> None:
        with self.lock:
            self.messages.append(message)

    def _on_subscribe(self, client: Any, userdata: Any, mid: int, reasons: Any, properties: Any) -> None:
        self.subacks[mid] = [r.value for r in reasons]

    def _on_disconnect(self, client: Any, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        self.disconnected = (reason.value, properties)

    def _on_publish(self, client: Any, userdata: Any, mid: int, reason: Any, properties: Any) -> None:
        with self.lock:
            self.acked.add(mid)

    def connect(self, wait: bool = True) -> tuple[bool, int, Any] | None:
        self.connack = None
        self.disconnected = None
        kwargs: dict[str, Any] = {}
        if self.version == 5:
            props = self.connect_properties or Properties(PacketTypes.CONNECT)
            if self.session_expiry is not None:
                props.SessionExpiryInterval = self.session_expiry
            kwargs["properties"] = props
            kwargs["clean_start"] = self.clean
        self.paho.connect(self.target.host, self.target.port, self.keepalive, **kwargs)
        self.paho.loop_start()
        if wait:
            wait_until(lambda: self.connack is not None or self.disconnected is not None, 10, "CONNACK")
        return self.connack

    def subscribe(self, topic: str, qos: int = 0, **kwargs: Any) -> list[Any]:
        if self.version == 5 and "options" not in kwargs:
            from paho.mqtt.subscribeoptions import SubscribeOptions

            kwargs["options"] = SubscribeOptions(qos=qos)
            result, mid = self.paho.subscribe(topic, **kwargs)
        elif "options" in kwargs:
            result, mid = self.paho.subscribe(topic, **kwargs)
        else:
            result, mid = self.paho.subscribe(topic, qos, **kwargs)
        assert result == 0
        wait_until(lambda: mid in self.subacks, 10, f"SUBACK for {topic}")
        return self.subacks[mid]

    def publish(self, topic: str, payload: bytes | str, qos: int = 0, retain: bool = False,
                properties: Properties | None = None, wait: bool = True) -> int:
        info = self.paho.publish(topic, payload, qos, retain, properties=properties)
        if wait and qos:
            wait_until(lambda: info.mid in self.acked, 10, f"ack of {topic}")
        return info.mid

    def wait_messages(self, count: int, timeout: float = 10.0) -> list[paho.MQTTMessage]:
        wait_until(lambda: len(self.messages) >= count, timeout,
                   f"{count} messages at {self.client_id} (have {len(self.messages)})")
        with self.lock:
            return list(self.messages)

    def payloads(self) -> list[bytes]:
        with self.lock:
            return [m.payload for m in self.messages]

    def disconnect(self) -> None:
        self.paho.disconnect()
        self.paho.loop_stop()

    def drop(self) -> None:
        """Go away without DISCONNECT (an unclean close: the will is published)."""
        sock = self.paho.socket()
        self.paho.loop_stop()
        if sock is not None:
            sock.close()


def quiet(seconds: float = 0.3) -> None:
    """For the few checks that something does *not* arrive: give it time to."""
    time.sleep(seconds)
