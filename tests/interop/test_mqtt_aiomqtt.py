"""aiomqtt (asyncio, over paho) against the broker: QoS 1 round trip with MQTT 5.0
properties, a retained message, and a persistent session across a reconnect.

Runs against another broker with ``BAEDAL_TEST_MQTT_URL=host:port``."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import aiomqtt
import pytest
from mqtt_helpers import PacketTypes, Properties, Target, start_target

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def target(tmp_path: Path) -> Iterator[Target]:
    yield from start_target(tmp_path)


def client(target: Target, **kwargs: object) -> aiomqtt.Client:
    return aiomqtt.Client(target.host, target.port, username=target.username,
                          password=target.password, **kwargs)  # type: ignore[arg-type]


async def next_message(c: aiomqtt.Client) -> aiomqtt.Message:
    async def first() -> aiomqtt.Message:
        async for message in c.messages:
            return message
        raise AssertionError("no message")

    return await asyncio.wait_for(first(), 10)


async def test_qos1_round_trip_with_v5_properties(target: Target) -> None:
    async with client(target, protocol=aiomqtt.ProtocolVersion.V5) as sub, \
            client(target, protocol=aiomqtt.ProtocolVersion.V5) as pub:
        await sub.subscribe("aio/+/x", qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("trace", "abc")]
        props.ContentType = "text/plain"
        await pub.publish("aio/1/x", b"hello", qos=1, properties=props)
        message = await next_message(sub)
        assert str(message.topic) == "aio/1/x" and message.payload == b"hello"
        assert message.qos == 1
        assert ("trace", "abc") in message.properties.UserProperty
        assert message.properties.ContentType == "text/plain"


async def test_retained_and_persistent_session(target: Target) -> None:
    identifier = f"aio-{uuid.uuid4().hex[:8]}"
    async with client(target) as pub:
        await pub.publish("aio/state", b"on", qos=1, retain=True)
    async with client(target, identifier=identifier, clean_session=False) as sub:
        await sub.subscribe("aio/#", qos=1)
        retained = await next_message(sub)
        assert retained.payload == b"on" and retained.retain
    async with client(target) as pub:
        await pub.publish("aio/queued", b"while away", qos=1)
        await pub.publish("aio/state", b"", qos=1, retain=True)
    async with client(target, identifier=identifier, clean_session=False) as sub:
        message = await next_message(sub)
        assert message.payload == b"while away"
