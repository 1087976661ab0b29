"""Sans-IO Kafka request codec: bytes in, requests out; responses in, bytes out.

Theory of operation
-------------------
Every Kafka message is ``int32 size | payload`` (protocol guide, "Network").  A
``RequestDecoder`` holds one buffer that the socket is read into (``get_buffer`` /
``buffer_updated``, or ``feed`` for bytes already in hand) and ``next_request`` cuts
whole frames from it.  The size is checked before the frame is used: a negative size,
one of 2 GiB or more, or one above ``max_request_bytes`` (Kafka's
``socket.request.max.bytes``, 100 MiB by default) is a ``FrameTooLarge`` error and the
connection is closed — Kafka does the same (``InvalidReceiveException``); the buffer
grows with bytes that arrived, never with what a size field promises.

The request header is read by hand, the same way for every version: ``api_key int16,
api_version int16, correlation_id int32, client_id`` with an **int16** length even in
flexible headers (``RequestHeader.json``: "so that older brokers can read the header
of an ApiVersions request").  Only then do we know whether the header carries a tagged
field section (header v2 = flexible request versions) and which body schema applies;
the body is decoded by ``kio`` (generated from Kafka's message JSON), except Produce,
which is decoded by hand (``decode_produce``): it is the one request whose size grows
with the data, and kio copies each record batch into a ``bytes`` object (and its
generic reader costs more than the rest of the produce path).  The hand decoder gives
each partition's records as a ``memoryview`` into the request frame, itself a view of
the decoder's buffer: the log rewrites the batch's base offset in place and writes it
to the segment from there, so a produced batch is never copied in user space (the
kernel copies it into the buffer and from it into the page cache).  Produce responses are hand-encoded too
(``encode_produce_response``), as Fetch responses are (below).

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
from functools import cache, lru_cache
from typing import Any, Protocol

from kio.index import load_payload_module
from kio.serial import entity_reader, entity_writer
from kio.static.constants import EntityType

# Kafka's socket.request.max.bytes default.
DEFAULT_MAX_REQUEST_BYTES = 100 * 1024 * 1024
# The decoder's buffer (``RequestDecoder``): what an idle connection holds; the least
# room offered to one socket read; the size kept after a bigger frame was consumed (a
# producer's 64 KiB batches with a few pipelined requests fit).
INITIAL_BUFFER_BYTES = 16 * 1024
MIN_READ_BYTES = 4 * 1024
RETAINED_BUFFER_BYTES = 1024 * 1024
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
    body: Any  # the kio request dataclass (``ProduceBody`` for Produce)
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
    """Cuts size-prefixed frames from a byte stream and decodes their requests.

    Bytes arrive either straight from the socket (``get_buffer`` / ``buffer_updated``,
    the ``asyncio.BufferedProtocol`` pair: the kernel writes into this decoder's own
    buffer, no ``bytes`` object per read) or from ``feed`` (tests, fuzzers), which
    copies into the same buffer.  A frame is handed to ``_decode`` as a ``memoryview``
    of that buffer, so a produced batch reaches the log without a user-space copy.

    The buffer is one ``bytearray``: ``_start`` is the first unread byte, ``_end`` the
    end of what arrived.  It is never resized (views of it may still be alive in a
    traceback); to make room it is compacted (the unread tail moved to the front: at
    most one partial frame) or replaced by one twice as big.  It grows only when the
    bytes received and not yet taken fill a good part of it, never on a size field's
    promise alone, so a client cannot make it allocate 100 MiB by sending 4 bytes: it
    stays within a small multiple of what arrived (a request is at most
    ``max_request_bytes``), and goes back to ``INITIAL_BUFFER_BYTES`` once it is empty
    after holding more than ``RETAINED_BUFFER_BYTES``.

    Lifetime rule: a ``Request`` from ``next_request`` may point into the buffer (a
    Produce request's records) and is valid until the next ``get_buffer``/``feed`` call.
    The server handles each request before reading again; every other request body is
    decoded by kio from a copy, so it owns its bytes.
    """

    def __init__(
        self,
        supported: dict[int, tuple[int, int]],
        max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES,
    ) -> None:
        self.supported = supported  # api_key -> (min, max) version served
        self.max_request_bytes = min(max_request_bytes, MAX_FRAME)
        self._buffer = bytearray(INITIAL_BUFFER_BYTES)
        self._view = memoryview(self._buffer)
        self._start = 0
        self._end = 0
        self.failed: KafkaProtocolError | None = None

    @property
    def buffered(self) -> int:
        """Bytes received and not yet cut into requests."""
        return self._end - self._start

    @property
    def capacity(self) -> int:
        return len(self._buffer)

    def get_buffer(self, sizehint: int = -1) -> memoryview:
        """Where the next bytes go (``asyncio.BufferedProtocol.get_buffer``): at least
        ``MIN_READ_BYTES``.  Invalidates every request returned before (the space may
        be reused)."""
        start, end = self._start, self._end
        if start == end:
            start = end = self._start = self._end = 0
            if len(self._buffer) > RETAINED_BUFFER_BYTES:
                self._replace(INITIAL_BUFFER_BYTES, 0, 0)
        capacity = len(self._buffer)
        unread = end - start
        need = 0  # the whole frame under way, when its size is known (and legal)
        if unread >= 4:
            size = _SIZE.unpack_from(self._buffer, start)[0]
            if 0 <= size <= self.max_request_bytes:
                need = 4 + size
        if need and need <= unread:
            # A whole request waits: the connection paused or hit its per-callback cap
            # and the event loop reads once more before it notices.  Read only a little
            # ahead, so reading cannot outrun handling (offering all the room let one
            # pipelining producer pull ~450 MB into its buffer on a loaded machine).
            if capacity - end < MIN_READ_BYTES:
                if start:
                    self._compact(start, end)
                if capacity - self._end < MIN_READ_BYTES:
                    self._replace(
                        max(2 * capacity, unread + MIN_READ_BYTES), self._start, self._end
                    )
            return self._view[self._end : self._end + MIN_READ_BYTES]
        if capacity - end >= MIN_READ_BYTES and start + need <= capacity:
            return self._view[end:]  # room for a read, and the frame under way fits
        if need > capacity:
            # A frame bigger than the buffer.  Doubling only once received bytes fill
            # half of it keeps memory proportional to what arrived, whatever the size
            # field promises; until then there is room at the end (after compacting).
            if unread * 2 > capacity:
                self._replace(max(min(2 * capacity, need), unread + MIN_READ_BYTES), start, end)
            elif start:
                self._compact(start, end)
        elif start and unread * 8 > capacity and capacity < RETAINED_BUFFER_BYTES:
            # A partial frame big next to the buffer would be moved to the front again
            # and again (pipelined 64 KiB produce requests): up to RETAINED_BUFFER_BYTES,
            # a bigger buffer makes that a small share of the bytes.
            self._replace(2 * capacity, start, end)
        elif start:
            self._compact(start, end)
        if len(self._buffer) - self._end < MIN_READ_BYTES:  # a partial frame nearly fills it
            self._replace(2 * capacity, self._start, self._end)
        return self._view[self._end :]

    def _compact(self, start: int, end: int) -> None:
        self._view[: end - start] = self._view[start:end]  # memmove; no resize
        self._start, self._end = 0, end - start

    def _replace(self, capacity: int, start: int, end: int) -> None:
        buffer = bytearray(capacity)
        buffer[: end - start] = self._view[start:end]
        self._buffer = buffer
        self._view = memoryview(buffer)
        self._start, self._end = 0, end - start

    def buffer_updated(self, nbytes: int) -> None:
        """``nbytes`` were written at the start of the last ``get_buffer`` view."""
        if self.failed is not None:
            raise self.failed
        self._end += nbytes

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        if self.failed is not None:
            raise self.failed
        source = memoryview(data).cast("B")
        done = 0
        while done < len(source):
            target = self.get_buffer(len(source) - done)
            count = min(len(target), len(source) - done)
            target[:count] = source[done : done + count]
            self._end += count
            done += count

    def next_request(self) -> Request | None:
        """The next whole request, or None until more bytes come.  Errors are sticky."""
        if self.failed is not None:
            raise self.failed
        start = self._start
        available = self._end - start
        if available < 4:
            return None
        size = _SIZE.unpack_from(self._buffer, start)[0]
        if size < _HEADER.size or size > self.max_request_bytes:
            self.failed = FrameTooLarge(
                f"request size {size} outside [{_HEADER.size}, {self.max_request_bytes}]"
            )
            raise self.failed
        if available < 4 + size:
            return None
        self._start = start + 4 + size
        frame = self._view[start + 4 : start + 4 + size]
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

    def _decode(self, frame: memoryview) -> Request:
        api_key, api_version, correlation_id, client_id_length = _HEADER.unpack_from(frame, 0)
        position = _HEADER.size
        client_id: str | None = None
        if client_id_length >= 0:
            end = position + client_id_length
            if end > len(frame):
                raise KafkaProtocolError("truncated client_id")
            client_id = str(frame[position:end], "utf-8", "replace")
            position = end
        versions = self.supported.get(api_key)
        if versions is None:
            raise KafkaProtocolError(f"unknown api key {api_key}")
        if not versions[0] <= api_version <= versions[1]:
            raise UnsupportedVersion(api_key, api_version, correlation_id)
        if api_key == PRODUCE_KEY and api_version <= MAX_HAND_DECODED_PRODUCE:
            # v3-v8: header v1 (no tagged fields), body decoded by hand; no schema lookup.
            body = decode_produce(frame, position)
            return Request(api_key, api_version, correlation_id, client_id, body, len(frame) + 4)
        try:
            cls = schema(api_key, api_version, EntityType.request)
        except (LookupError, ImportError, ValueError):
            raise UnsupportedVersion(api_key, api_version, correlation_id) from None
        if cls.__flexible__:
            position = _skip_tagged_fields(frame, position)
        try:
            # A copy: kio takes read-only buffers only, and the body must not point
            # into the decoder's buffer, which the next read reuses.
            body, used = _reader(cls)(bytes(frame), position)
        except Exception as exc:  # kio raises several types for malformed input
            raise KafkaProtocolError(f"malformed {cls.__name__}: {exc}") from None
        if position + used != len(frame):
            raise KafkaProtocolError(
                f"{len(frame) - position - used} trailing bytes after {cls.__name__}"
            )
        return Request(api_key, api_version, correlation_id, client_id, body, len(frame) + 4)


# --- Produce, by hand ----------------------------------------------------------------------

PRODUCE_KEY = 0
# v3-v8: RecordBatch v2, not flexible (v9 brings compact fields; it is not served).
MAX_HAND_DECODED_PRODUCE = 8
_INT16_AT = struct.Struct(">h").unpack_from
_INT32_AT = struct.Struct(">i").unpack_from
_ACKS_TIMEOUT = struct.Struct(">hi")
_PARTITION_HEAD = struct.Struct(">ii")  # index, records length


class ProducePartition:
    """One ``partition_data`` entry: its records are a view into the request frame."""

    __slots__ = ("index", "records")

    def __init__(self, index: int, records: memoryview | None) -> None:
        self.index = index
        self.records = records


class ProduceTopic:
    __slots__ = ("name", "partition_data")

    def __init__(self, name: str, partition_data: list[ProducePartition]) -> None:
        self.name = name
        self.partition_data = partition_data


class ProduceBody:
    """A Produce request v3-v8 (the fields kio's ``ProduceRequest`` has, same names)."""

    __slots__ = ("transactional_id", "acks", "timeout_ms", "topic_data")

    def __init__(
        self,
        transactional_id: str | None,
        acks: int,
        timeout_ms: int,
        topic_data: list[ProduceTopic],
    ) -> None:
        self.transactional_id = transactional_id
        self.acks = acks
        self.timeout_ms = timeout_ms
        self.topic_data = topic_data


def decode_produce(frame: bytearray | memoryview, position: int) -> ProduceBody:
    """Produce v3-v8 body at ``position`` to the end of ``frame``.

    Layout (ProduceRequest.json, non-flexible versions): ``transactional_id`` nullable
    string (int16 length), ``acks`` int16, ``timeout_ms`` int32, then ``topic_data``:
    int32 count of (``name`` string, int32 count of (``index`` int32, ``records``
    nullable bytes with an int32 length)).  Every count and length is checked against
    the bytes left before anything is built from it, so a hostile count costs nothing.
    Raises ``KafkaProtocolError`` for anything malformed or trailing.
    """
    end = len(frame)
    try:
        length = _INT16_AT(frame, position)[0]
        position += 2
        transactional_id: str | None = None
        if length >= 0:
            if position + length > end:
                raise KafkaProtocolError("truncated transactional_id")
            transactional_id = str(frame[position : position + length], "utf-8")
            position += length
        elif length != -1:
            raise KafkaProtocolError(f"transactional_id length {length}")
        acks, timeout_ms = _ACKS_TIMEOUT.unpack_from(frame, position)
        position += 6
        topic_count = _INT32_AT(frame, position)[0]
        position += 4
        # A topic takes at least 6 bytes (name length + partition count).
        if topic_count < 0 or topic_count * 6 > end - position:
            raise KafkaProtocolError(f"topic_data count {topic_count}")
        view = memoryview(frame)
        topics: list[ProduceTopic] = []
        for _ in range(topic_count):
            length = _INT16_AT(frame, position)[0]
            position += 2
            if length < 0 or position + length > end:
                raise KafkaProtocolError(f"topic name length {length}")
            name = str(frame[position : position + length], "utf-8")
            position += length
            partition_count = _INT32_AT(frame, position)[0]
            position += 4
            # A partition takes at least 8 bytes (index + records length).
            if partition_count < 0 or partition_count * 8 > end - position:
                raise KafkaProtocolError(f"partition_data count {partition_count}")
            partitions: list[ProducePartition] = []
            for _ in range(partition_count):
                index, length = _PARTITION_HEAD.unpack_from(frame, position)
                position += 8
                records: memoryview | None = None
                if length >= 0:
                    if position + length > end:
                        raise KafkaProtocolError(f"records length {length} past the frame")
                    records = view[position : position + length]
                    position += length
                elif length != -1:
                    raise KafkaProtocolError(f"records length {length}")
                partitions.append(ProducePartition(index, records))
            topics.append(ProduceTopic(name, partitions))
    except struct.error:
        raise KafkaProtocolError("truncated ProduceRequest") from None
    except UnicodeDecodeError:
        raise KafkaProtocolError("ProduceRequest: a string is not UTF-8") from None
    if position != end:
        raise KafkaProtocolError(f"{end - position} trailing bytes after ProduceRequest")
    return ProduceBody(transactional_id, acks, timeout_ms, topics)


_PRODUCE_PARTITION = struct.Struct(">ihqq")  # index, error, base offset, log append time
_INT64 = struct.Struct(">q")
_V8_PARTITION_TAIL = b"\0\0\0\0\xff\xff"  # record_errors: empty; error_message: null


def encode_produce_response(
    correlation_id: int,
    version: int,
    topics: list[tuple[str, list[tuple[int, int, int, int]]]],
) -> bytes:
    """A whole Produce response frame v3-v8 (header v0).

    ``topics``: (name, [(partition index, error code, base offset, log start offset)]).
    Per partition: ``log_append_time`` is always -1 (create time; LogAppendTime topics
    are not served), ``log_start_offset`` from v5, and from v8 an empty
    ``record_errors`` and a null ``error_message``; ``throttle_time_ms`` last.
    """
    if not 3 <= version <= MAX_HAND_DECODED_PRODUCE:
        raise ValueError(f"produce v{version} is not hand-encoded")
    if len(topics) == 1 and len(topics[0][1]) == 1:
        # The common answer (a producer's request for one partition): a cached
        # template per (version, topic), four fields packed into it.
        name, ((index, error, base_offset, log_start),) = topics[0]
        head, size, topic, partition, tail = _single_partition_template(version, name)
        if version >= 5:
            packed = partition.pack(index, error, base_offset, -1, log_start)
        else:
            packed = partition.pack(index, error, base_offset, -1)
        return head.pack(size, correlation_id) + topic + packed + tail
    out = bytearray(_SIZE.size)
    out += _CORRELATION.pack(correlation_id)
    out += _INT32.pack(len(topics))
    for name, partitions in topics:
        encoded = name.encode()
        out += _INT16.pack(len(encoded))
        out += encoded
        out += _INT32.pack(len(partitions))
        for index, error, base_offset, log_start in partitions:
            out += _PRODUCE_PARTITION.pack(index, error, base_offset, -1)
            if version >= 5:
                out += _INT64.pack(log_start)
            if version >= 8:
                out += _V8_PARTITION_TAIL
    out += _INT32.pack(0)  # throttle_time_ms
    _SIZE.pack_into(out, 0, len(out) - 4)
    return bytes(out)


_SIZE_CORRELATION = struct.Struct(">ii")


@lru_cache(maxsize=1024)  # bounded: topic names come from clients
def _single_partition_template(
    version: int, name: str
) -> tuple[struct.Struct, int, bytes, struct.Struct, bytes]:
    """(size+correlation struct, frame size, topic part, partition struct, tail) of a
    Produce response for one partition of ``name`` (the layout of
    ``encode_produce_response``)."""
    encoded = name.encode()
    topic = _INT32.pack(1) + _INT16.pack(len(encoded)) + encoded + _INT32.pack(1)
    partition = struct.Struct(">ihqqq" if version >= 5 else ">ihqq")
    tail = (_V8_PARTITION_TAIL if version >= 8 else b"") + _INT32.pack(0)  # throttle
    size = _CORRELATION.size + len(topic) + partition.size + len(tail)
    return _SIZE_CORRELATION, size, topic, partition, tail


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
