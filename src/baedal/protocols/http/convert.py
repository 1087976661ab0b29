"""Translations between JSON and the core's message shapes.

Message properties travel in RabbitMQ's management-API shape (AMQP's property names,
``BasicProperties``), because that is what the HTTP API promises; a published message
is still built from neutral fields (``message_from_properties``: only AMQP-only values
such as ``type`` ride in an AMQP extension), and a message is read back from whatever
it holds (``message_properties``).

Used by the management API (``/api/queues/.../get``, ``/api/exchanges/.../publish``)
and by REST messaging.  Everything a client sends is validated here, before the core
sees it, so a bad value is a 400 and never a half-applied change or a 500.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from ...core.message import Message, parse_expiration
from ...core.properties import encode_table
from ..amqp.properties import (
    PROPERTY_NAMES,
    BasicProperties,
    encode_properties,
    message_from_properties,
    properties_of,
)
from .errors import bad_request

_STRING_PROPERTIES = frozenset(
    {
        "content_type",
        "content_encoding",
        "correlation_id",
        "reply_to",
        "expiration",
        "message_id",
        "type",
        "user_id",
        "app_id",
        "cluster_id",
    }
)
MAX_NAME_BYTES = 255  # AMQP short string


def check_name(name: Any, what: str, *, allow_empty: bool = False) -> str:
    """Queue, exchange, vhost and user names travel as AMQP short strings."""
    if not isinstance(name, str):
        raise bad_request(f"{what} name must be a string")
    if not name and not allow_empty:
        raise bad_request(f"{what} name must not be empty")
    try:
        raw = name.encode("utf-8")
    except UnicodeEncodeError:
        raise bad_request(f"{what} name is not valid UTF-8") from None
    if len(raw) > MAX_NAME_BYTES:
        raise bad_request(f"{what} name is longer than {MAX_NAME_BYTES} bytes")
    return name


def check_table(value: Any, what: str) -> dict[str, Any]:
    """An arguments / headers object that can be stored as an AMQP field table."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise bad_request(f"{what} must be an object")
    try:
        encode_table(value)
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad_request(f"{what} cannot be encoded: {exc}") from None
    return value


def properties_from_json(value: Any) -> BasicProperties:
    if value is None:
        return BasicProperties()
    if not isinstance(value, dict):
        raise bad_request("properties must be an object")
    fields: dict[str, Any] = {}
    for key, item in value.items():
        if key not in PROPERTY_NAMES:
            raise bad_request(f"unknown property '{key}'")
        if item is None:
            continue
        if key in _STRING_PROPERTIES:
            if not isinstance(item, str):
                raise bad_request(f"property '{key}' must be a string")
            if key == "expiration":
                try:
                    parse_expiration(item)
                except ValueError:
                    raise bad_request(f"invalid expiration '{item}'") from None
        elif key == "headers":
            item = check_table(item, "headers")
        elif key in ("delivery_mode", "priority"):
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item <= 255:
                raise bad_request(f"property '{key}' must be an integer 0-255")
        elif key == "timestamp":
            if isinstance(item, bool) or not isinstance(item, int) or not 0 <= item < 2**64:
                raise bad_request("property 'timestamp' must be a non-negative integer")
        fields[key] = item
    props = BasicProperties(**fields)
    try:
        encode_properties(props)
    except (ValueError, TypeError, OverflowError) as exc:
        raise bad_request(f"properties cannot be encoded: {exc}") from None
    return props


def message_properties(message: Message) -> dict[str, Any]:
    """The JSON properties of any message (from AMQP, HTTP or a record)."""
    return properties_to_json(properties_of(message))


def properties_to_json(props: BasicProperties) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in PROPERTY_NAMES:
        value = getattr(props, name)
        if value is not None:
            out[name] = int(value) if name == "timestamp" else value
    return out


def decode_payload(payload: Any, encoding: Any) -> bytes:
    if not isinstance(payload, str):
        raise bad_request("payload must be a string")
    if encoding in (None, "string"):
        try:
            return payload.encode("utf-8")
        except UnicodeEncodeError:
            raise bad_request("payload is not valid UTF-8") from None
    if encoding == "base64":
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError):
            raise bad_request("payload is not valid base64") from None
    raise bad_request("payload_encoding must be 'string' or 'base64'")


def encode_payload(body: bytes, mode: str = "auto", truncate: int | None = None) -> dict[str, Any]:
    """RabbitMQ's get-messages shape: payload, payload_bytes, payload_encoding."""
    shown = body if truncate is None else body[:truncate]
    if mode == "auto":
        try:
            return {
                "payload": shown.decode("utf-8"),
                "payload_bytes": len(body),
                "payload_encoding": "string",
            }
        except UnicodeDecodeError:
            pass
    return {
        "payload": base64.b64encode(shown).decode("ascii"),
        "payload_bytes": len(body),
        "payload_encoding": "base64",
    }


def make_message(exchange: str, routing_key: str, props: BasicProperties, body: bytes) -> Message:
    expiration = props.expiration
    return message_from_properties(
        exchange,
        routing_key,
        props,
        body,
        parse_expiration(expiration) if expiration is not None else None,
    )
