"""Sans-IO Kafka request codec: bytes in, requests out; responses in, bytes out.

Theory of operation
-------------------
Every Kafka message is ``int32 size | payload`` (protocol guide, "Network").  A
``RequestDecoder`` buffers what ``feed`` gives it and ``next_request`` cuts whole frames.
The size is checked before anything is buffered past it: a negative size, one of 2 GiB
or more, or one above ``max_request_bytes`` (Kafka's ``socket.request.max.bytes``,
100 MiB by default) is a ``FrameTooLarge`` error and the connection is closed — Kafka
does the same (``InvalidReceiveException``), so the buffer never grows past one request.

The request header is read by hand, the same way for every version: ``api_key int16,
api_version int16, correlation_id int32, client_id`` with an **int16** length even in
flexible headers (``RequestHeader.json``: "so that older brokers can read the header
of an ApiVersions request").  Only then do we know whether the header carries a tagged
field section (header v2 = flexible request versions) and which body schema applies;
the body is decoded by ``kio`` (generated from Kafka's message JSON).

Errors come in two families, as in h11: ``KafkaProtocolError`` means the peer broke the
protocol and the connection must close (Kafka closes on a malformed request, an
unknown API key or an unsupported version other than ApiVersions);
``UnsupportedVersion`` is the one case that has a wire answer (KIP-511: ApiVersions at
an unknown version gets UNSUPPORTED_VERSION in the v0 format).
"""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass, fields
from functools import cache
from typing import Any, Protocol

from kio.index import load_payload_module
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

# Kafka's socket.request.max.bytes default.
DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024
MAX_FRAME = 2**31 - 1

API_VERSIONS_KEY = 18

_SIZE = struct.Struct(">i")
_HEADER = struct.Struct(">hhih")  # api_key, api_version, correlation_id, client_id length
_CORRELATION = struct.Struct(">i")


class KafkaProtocolError(Exception):
    """The peer broke the protocol: close the connection (Kafka has no error reply)."""


class FrameTooLarge(KafkaProtocolError):
    pass


class UnsupportedVersion(KafkaProtocolError):
    """A request at a version this broker does not serve."""

    def __init__(self, api_key: int, api_version: int, correlation_id: int) -> None:
        super().__init__(f"api key {api_key} version {api_version} not supported")
        self.api_key = api_key
        self.api_version = api_version
        self.correlation_id = correlation_id


@dataclass(slots=True)
class Request:
    api_key: int
    api_version: int
    correlation_id: int
    client_id: str | None
    body: Any  # the kio request dataclass
    size: int  # bytes on the wire, for bounds and metrics


@cache
def schema(api_key: int, api_version: int, kind: EntityType) -> type[Any]:
    """The kio dataclass for (api, version, request|response); raises LookupError."""
    module = load_payload_module(api_key, api_version, kind)
    name = "Request" if kind is EntityType.request else "Response"
    for value in vars(module).values():
        if (
            isinstance(value, type)
            and getattr(value, "__type__", None) is kind
            and value.__name__.endswith(name)
        ):
            return value
    raise LookupError(f"no {name} class in {module.__name__}")


@cache
def _reader(cls: type[Any]) -> Any:
    return entity_reader(cls)


@cache
def _writer(cls: type[Any]) -> Any:
    return entity_writer(cls)


class RequestDecoder:
    """Cuts size-prefixed frames from a byte stream and decodes their requests."""

    def __init__(
        self,
        supported: dict[int, tuple[int, int]],
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.supported = supported  # api_key -> (min, max) version served
        self.max_request_bytes = min(max_request_bytes, MAX_FRAME)
        self._buffer = bytearray()
        self.failed: KafkaProtocolError | None = None

    @property
    def buffered(self) -> int:
        return len(self._buffer)

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.failed is not None:
            raise self.failed
        self._buffer += data

    def next_request(self) -> Request | None:
        """The next whole request, or None until more bytes come.  Errors are sticky."""
        if self.failed is not None:
            raise self.failed
        buffer = self._buffer
        if len(buffer) < 4:
            return None
        size = _SIZE.unpack_from(buffer, 0)[0]
        if size < _HEADER.size or size > self.max_request_bytes:
            self.failed = FrameTooLarge(
                f"request size {size} outside [{_HEADER.size}, {self.max_request_bytes}]"
            )
            raise self.failed
        if len(buffer) < 4 + size:
            return None
        frame = bytes(buffer[4 : 4 + size])
        del buffer[: 4 + size]
        try:
            return self._decode(frame)
        except UnsupportedVersion as exc:
            if exc.api_key == API_VERSIONS_KEY:
                raise  # answerable; the connection stays usable
            self.failed = exc
            raise
        except KafkaProtocolError as exc:
            self.failed = exc
            raise

    def _decode(self, frame: bytes) -> Request:
        api_key, api_version, correlation_id, client_id_length = _HEADER.unpack_from(frame, 0)
        position = _HEADER.size
        client_id: str | None = None
        if client_id_length >= 0:
            end = position + client_id_length
            if end > len(frame):
                raise KafkaProtocolError("truncated client_id")
            client_id = frame[position:end].decode("utf-8", "replace")
            position = end
        versions = self.supported.get(api_key)
        if versions is None:
            raise KafkaProtocolError(f"unknown api key {api_key}")
        if not versions[0] <= api_version <= versions[1]:
            raise UnsupportedVersion(api_key, api_version, correlation_id)
        try:
            cls = schema(api_key, api_version, EntityType.request)
        except (LookupError, ImportError, ValueError):
            raise UnsupportedVersion(api_key, api_version, correlation_id) from None
        if cls.__flexible__:
            position = _skip_tagged_fields(frame, position)
        try:
            body, used = _reader(cls)(frame, position)
        except Exception as exc:  # kio raises several types for malformed input
            raise KafkaProtocolError(f"malformed {cls.__name__}: {exc}") from None
        if position + used != len(frame):
            raise KafkaProtocolError(
                f"{len(frame) - position - used} trailing bytes after {cls.__name__}"
            )
        return Request(api_key, api_version, correlation_id, client_id, body, len(frame) + 4)


def _read_uvarint(data: bytes, position: int) -> tuple[int, int]:
    value = 0
    shift = 0
    while True:
        if position >= len(data):
            raise KafkaProtocolError("truncated varint")
        byte = data[position]
        position += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, position
        shift += 7
        if shift > 28:
            raise KafkaProtocolError("varint too long")


def _skip_tagged_fields(data: bytes, position: int) -> int:
    count, position = _read_uvarint(data, position)
    for _ in range(count):
        _tag, position = _read_uvarint(data, position)
        size, position = _read_uvarint(data, position)
        position += size
        if position > len(data):
            raise KafkaProtocolError("truncated tagged field")
    return position


def encode_response(correlation_id: int, body: Any) -> bytes:
    """A whole response frame: size, header (v0 or v1 per the body's schema), body."""
    out = io.BytesIO()
    out.write(b"\0\0\0\0")
    out.write(_CORRELATION.pack(correlation_id))
    header = type(body).__header_schema__
    if any(f.name == "tagged_fields" for f in fields(header)) or header.__flexible__:
        out.write(b"\0")  # response header v1: an empty tagged-field section
    _writer(type(body))(out, body)
    data = out.getbuffer()
    _SIZE.pack_into(data, 0, len(data) - 4)
    return bytes(data)


def build(cls: type[Any], **values: Any) -> Any:
    """An instance of a kio class from the values its version has (others dropped).

    One handler then serves every version: a field a version lacks is simply not set,
    a field it has and we did not give takes the schema default.
    """
    names = _field_names(cls)
    return cls(**{name: value for name, value in values.items() if name in names})


@cache
def _field_names(cls: type[Any]) -> frozenset[str]:
    return frozenset(f.name for f in fields(cls))


def nested(cls: type[Any], field_name: str) -> type[Any]:
    """The kio class of the items of ``cls.field_name`` (a tuple of entities)."""
    return _nested(cls, field_name)


@cache
def _nested(cls: type[Any], field_name: str) -> type[Any]:
    import typing

    hints = typing.get_type_hints(cls)
    hint = hints[field_name]
    for arg in typing.get_args(hint):
        if isinstance(arg, type):
            return arg
        for inner in typing.get_args(arg):
            if isinstance(inner, type):
                return inner
    if isinstance(hint, type):
        return hint
    raise LookupError(f"{cls.__name__}.{field_name} is not a nested entity")


# --- Fetch responses, hand-encoded so stored batches can go out as file ranges ---------

_FETCH_TOP = struct.Struct(">iihi")  # throttle_time_ms, error_code, session_id, #topics
_FETCH_PARTITION = struct.Struct(">ihqqqi")  # index, error, hw, lso, log start, aborted=-1
_INT32 = struct.Struct(">i")
_INT16 = struct.Struct(">h")


class Sized(Protocol):
    """A chunk of records that is not in memory (a file range): only its length."""

    length: int


FetchPartitionAnswer = tuple[int, int, int, int, list[Any]]  # index, error, hw, start, chunks


def encode_fetch_response(
    correlation_id: int,
    version: int,
    topics: list[tuple[str, list[FetchPartitionAnswer]]],
) -> list[Any]:
    """A Fetch response (v4-v11, the non-flexible versions served) as a list of parts:
    ``bytes``, and the caller's record chunks (``bytes`` or ``Sized`` file ranges) in
    place, so the records are never copied into the frame.  The frame size counts the
    chunks' lengths.  Partition fields per version: log_start_offset from v5,
    throttle_time/error/session_id top fields from v7, preferred_read_replica from v11;
    aborted_transactions is always null (no transactions are served)."""
    if not 4 <= version <= 11:
        raise ValueError(f"fetch v{version} is not hand-encoded")
    parts: list[Any] = [b""]  # the size and header, filled in last
    head = bytearray()
    if version >= 7:
        head += _FETCH_TOP.pack(0, 0, 0, len(topics))
    else:
        head += _INT32.pack(0) + _INT32.pack(len(topics))
    size = 4  # correlation id
    for name, partitions in topics:
        encoded = name.encode()
        head += _INT16.pack(len(encoded)) + encoded + _INT32.pack(len(partitions))
        for index, error, high_watermark, log_start, chunks in partitions:
            head += _INT32.pack(index) + _INT16.pack(error)
            head += struct.pack(">qq", high_watermark, high_watermark)  # hw, last stable
            if version >= 5:
                head += struct.pack(">q", log_start)
            head += _INT32.pack(-1)  # aborted_transactions: null
            if version >= 11:
                head += _INT32.pack(-1)  # preferred_read_replica: none
            length = 0
            for chunk in chunks:
                length += chunk.length if not isinstance(chunk, bytes | bytearray) else len(chunk)
            head += _INT32.pack(length)
            if chunks:
                parts.append(bytes(head))
                size += len(head)
                head = bytearray()
                parts.extend(chunks)
                size += length
    if head:
        parts.append(bytes(head))
        size += len(head)
    parts[0] = _SIZE.pack(size) + _CORRELATION.pack(correlation_id)
    return parts
