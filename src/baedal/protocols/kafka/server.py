"""Kafka listener: one ``asyncio.Protocol`` per connection and the API handlers.

Theory of operation
-------------------
A connection is an ``asyncio.BufferedProtocol``: the transport reads the socket
straight into the sans-IO ``RequestDecoder``'s buffer (``get_buffer`` /
``buffer_updated``: no ``bytes`` object per read, no concatenation), and the connection
handles each whole request in arrival order.  A Produce request's record batches are
views of that buffer, appended to the log (written to the segment file) before the
next read reuses the space.  Kafka promises that responses on one connection come back
in request order (protocol guide, "Network"), but some answers are not ready at once:
Produce with acks=1/all waits for the fsync that covers its batches, and Fetch may
long-poll.  So each request that gets an answer takes a *slot* in a FIFO; a handler
fills its slot now or later, and the connection writes the filled slots at the head of
the FIFO, all of them in one ``writelines`` per loop turn.  Produce with acks=0 takes no
slot: Kafka sends nothing back for it.

Bounds: the decoder holds about one request (``max_request_bytes``) plus one read.  A connection
stops reading (``pause_reading``) while it owes more than ``MAX_PENDING_SLOTS``
responses or more than ``max_output`` bytes are waiting in the transport, and while the
transport asked us to pause writing; it resumes when those drop.  The work per
``buffer_updated`` call is capped at ``MAX_REQUESTS_PER_CALLBACK``; the rest continues on
the next loop turn.

No task or future per request: Produce waits with ``Syncer.after_sync`` callbacks and
Fetch with one ``call_later`` timer plus a waiter on each partition it reads.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import struct
from collections import deque
from dataclasses import dataclass
from typing import Any

from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from ...core.stream import CommitHandle
from ...storage.record_batch import (
    BATCH_HEADER_SIZE,
    TRANSACTIONAL_MASK,
    RecordBatchError,
    batch_size_at,
    decode_header,
)
from ...storage.stream_log import FileRange, OffsetOutOfRange
from ...transport.address import is_loopback, peer_address
from . import admin
from .codec import (
    API_VERSIONS_KEY,
    DEFAULT_MAX_REQUEST_BYTES,
    KafkaProtocolError,
    Request,
    RequestDecoder,
    UnsupportedVersion,
    build,
    encode_fetch_response,
    encode_produce_response,
    encode_response,
    nested,
    schema,
)
from .groups import Group, GroupCoordinator
from .producers import ProducerTable
from .sasl import ScramError, ScramServer
from .topics import Partition, TopicError, TopicRegistry, legal_topic_name

log = logging.getLogger("baedal.kafka")

NODE_ID = 0
CLUSTER_ID = "baedal"
MAX_PENDING_SLOTS = 128
MAX_REQUESTS_PER_CALLBACK = 64
NO_THROTTLE = datetime.timedelta(0)

# The versions served (kafka-protocol.md §5, "Baedal v1 advertises").  Produce is
# advertised from 0 although only 3+ (RecordBatch v2) is decoded: older librdkafka
# turns compression off otherwise (§3.3); a v0-2 request closes the connection.
PRODUCE, FETCH, LIST_OFFSETS, METADATA = 0, 1, 2, 3
OFFSET_COMMIT, OFFSET_FETCH, FIND_COORDINATOR = 8, 9, 10
JOIN_GROUP, HEARTBEAT, LEAVE_GROUP, SYNC_GROUP = 11, 12, 13, 14
CREATE_TOPICS, DELETE_TOPICS, INIT_PRODUCER_ID = 19, 20, 22
CREATE_PARTITIONS = 37
ADVERTISED: dict[int, tuple[int, int]] = {
    PRODUCE: (0, 8),
    FETCH: (4, 11),
    LIST_OFFSETS: (1, 5),
    METADATA: (0, 8),
    OFFSET_COMMIT: (2, 7),
    OFFSET_FETCH: (1, 5),
    FIND_COORDINATOR: (0, 2),
    JOIN_GROUP: (0, 5),
    HEARTBEAT: (0, 3),
    LEAVE_GROUP: (0, 3),
    SYNC_GROUP: (0, 3),
    INIT_PRODUCER_ID: (0, 1),
    CREATE_TOPICS: (2, 4),
    DELETE_TOPICS: (1, 3),
    CREATE_PARTITIONS: (0, 1),
    API_VERSIONS_KEY: (0, 3),
    admin.DESCRIBE_CONFIGS: (0, 3),
    admin.INCREMENTAL_ALTER_CONFIGS: (0, 1),
    admin.LIST_GROUPS: (0, 2),
    admin.DESCRIBE_GROUPS: (0, 4),
    admin.DELETE_GROUPS: (0, 1),
    admin.DESCRIBE_CLUSTER: (0, 0),
    # Handshake v0 would be followed by raw SASL tokens outside Kafka framing; v1 wraps
    # them in SaslAuthenticate, which every current client uses.
    admin.SASL_HANDSHAKE: (1, 1),
    admin.SASL_AUTHENTICATE: (0, 1),
}
# Transactional APIs are decoded (answered INVALID_REQUEST) but not advertised.
DECODED: dict[int, tuple[int, int]] = {
    **ADVERTISED,
    PRODUCE: (3, 8),
    admin.ADD_PARTITIONS_TO_TXN: (0, 2),
    admin.ADD_OFFSETS_TO_TXN: (0, 2),
    admin.END_TXN: (0, 2),
    admin.TXN_OFFSET_COMMIT: (0, 2),
}
# What a connection may send before SASL authentication when kafka_sasl is on.
BEFORE_AUTHENTICATION = frozenset({API_VERSIONS_KEY, admin.SASL_HANDSHAKE, admin.SASL_AUTHENTICATE})
# Offered in SaslHandshake (KIP-84 names).  SCRAM works for users whose password was set
# through Baedal (core/scram.py); PLAIN for every user with a password.
SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
FAILED_AUTHENTICATION_CLOSE_DELAY = 0.1  # seconds; Kafka's default is 100 ms

# Per topic partition counters (KafkaServer.traffic), for /metrics and the management API.
# Records out are counted as consumers move past them: a fetch served as file ranges
# carries whole batches whose record counts are not read, so a connection's next fetch
# of the partition at a higher offset counts the records between the two offsets.
BYTES_IN, RECORDS_IN, BYTES_OUT, RECORDS_OUT = 0, 1, 2, 3

EARLIEST_TIMESTAMP = -2
LATEST_TIMESTAMP = -1

# Records per Fetch response on a connection that sends them with os.sendfile (plain
# TCP).  A response is sent with sendfile only while the socket takes it; what the
# socket buffer (a few MB on loopback) cannot hold is read into memory and queued on
# the transport (``write_direct``), i.e. copied twice.  librdkafka asks for up to
# max.partition.fetch.bytes (1 MiB by default, often raised to 10 MiB): at 10 MiB only
# ~47 % of a 100 MB topic went out by sendfile, at 1 MiB all of it, and kcat read it
# faster (131 vs 87 MB/s, same run).  Kafka allows answering less than asked (the
# client fetches again from where the answer ended); the first batch still goes out
# whole whatever its size (KIP-74).  The bound is shared by the partitions asked for
# (at least 64 KiB each).  On TLS every byte is copied anyway: no cap there.
SENDFILE_RESPONSE_BYTES = 1024 * 1024

# RecordBatch v2: producerId is the int64 at byte 43 (after baseOffset 8, batchLength 4,
# partitionLeaderEpoch 4, magic 1, crc 4, attributes 2, lastOffsetDelta 4,
# baseTimestamp 8, maxTimestamp 8).
PRODUCER_ID_OFFSET = 43
_PRODUCER_ID_AT = struct.Struct(">q").unpack_from


@dataclass
class KafkaConfig:
    advertised_host: str
    advertised_port: int
    auto_create_topics: bool = True
    num_partitions: int = 1
    max_message_bytes: int = 1_048_588  # Kafka's max.message.bytes default
    max_request_bytes: int = DEFAULT_MAX_REQUEST_BYTES
    max_output: int = 8 * 1024 * 1024
    sasl: bool = False  # require SASL (PLAIN or SCRAM, Baedal's users) before any other request
    loopback_users: tuple[str, ...] = ()


class KafkaServer:
    def __init__(
        self, registry: TopicRegistry, coordinator: GroupCoordinator, config: KafkaConfig
    ) -> None:
        self.registry = registry
        self.coordinator = coordinator
        self.config = config
        self.producers = ProducerTable()
        self.connections: set[KafkaConnection] = set()
        self._server: asyncio.base_events.Server | None = None
        # (topic, partition) -> [bytes in, records in, bytes out, records out]; bytes out
        # counts the record batches fetches sent, not the frame overhead.
        self._traffic: dict[tuple[str, int], list[int]] = {}
        self.sendfile_bytes = 0  # bytes fetches sent with os.sendfile (the rest: copied)

    def traffic(self, topic: str, index: int) -> list[int]:
        counters = self._traffic.get((topic, index))
        if counters is None:
            counters = self._traffic[(topic, index)] = [0, 0, 0, 0]
        return counters

    async def listen(self, host: str, port: int) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: KafkaConnection(self), host, port)
        bound: int = self._server.sockets[0].getsockname()[1]
        return bound

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for connection in list(self.connections):
            connection.abort()

    def close_storage(self) -> None:
        """Sync and close offsets and partitions (before the Syncer they use goes)."""
        self.coordinator.close()
        self.coordinator.offsets.close()
        self.registry.close()


class KafkaConnection(asyncio.BufferedProtocol):
    def __init__(self, server: KafkaServer) -> None:
        self.server = server
        self.registry = server.registry
        self.config = server.config
        self.decoder = RequestDecoder(DECODED, server.config.max_request_bytes)
        self.transport: asyncio.Transport | None = None
        self.loop = asyncio.get_event_loop()
        self._slots: deque[list[Any]] = deque()  # [bytes | None]
        self._flush_scheduled = False
        self._continue_scheduled = False
        self._writing_paused = False
        self._reading_paused = False
        self._fetches: set[_PendingFetch] = set()
        self.closed = False
        self._socket_fd: int | None = None  # for os.sendfile; None on TLS
        # (topic, partition) -> the offset this connection last fetched from (RECORDS_OUT)
        self.fetch_positions: dict[tuple[str, int], int] = {}
        self.authenticated = not server.config.sasl
        self.user: str | None = None
        self._sasl_mechanism: str | None = None
        self._scram: ScramServer | None = None
        self._close_timer: asyncio.TimerHandle | None = None  # after a failed SASL login
        self.peer_host = ""

    # -- transport callbacks ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        self.server.connections.add(self)
        self.peer_host = peer_address(transport)[0]  # "localhost" on a Unix socket
        sock = transport.get_extra_info("socket")
        if sock is not None and transport.get_extra_info("sslcontext") is None:
            self._socket_fd = sock.fileno()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.server.connections.discard(self)
        if self._close_timer is not None:
            self._close_timer.cancel()
        for fetch in list(self._fetches):
            fetch.cancel()
        for slot in self._slots:
            if isinstance(slot[0], FileResponse):
                _close_ranges(slot[0].parts)
        self._slots.clear()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.decoder.get_buffer(sizehint)

    def buffer_updated(self, nbytes: int) -> None:
        try:
            self.decoder.buffer_updated(nbytes)
        except KafkaProtocolError:  # the decoder failed before: we are closing
            return
        self._process()

    def data_received(self, data: bytes) -> None:
        """The same with a copy, for drivers that hold the bytes already (benchmarks)."""
        try:
            self.decoder.feed(data)
        except KafkaProtocolError:
            return
        self._process()

    def pause_writing(self) -> None:
        self._writing_paused = True
        self._update_reading()

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._update_reading()

    def abort(self) -> None:
        if self.transport is not None and (not self.closed or self._close_timer is not None):
            self.transport.abort()

    # -- request loop -----------------------------------------------------------------------

    def _process(self) -> None:
        self._continue_scheduled = False
        handled = 0
        while not self.closed and not self._reading_paused:
            if handled >= MAX_REQUESTS_PER_CALLBACK:
                if not self._continue_scheduled:
                    self._continue_scheduled = True
                    self.loop.call_soon(self._process)
                return
            try:
                request = self.decoder.next_request()
            except UnsupportedVersion as exc:
                if exc.api_key != API_VERSIONS_KEY:
                    self._protocol_error(exc)
                    return
                self._answer_unsupported_api_versions(exc.correlation_id)
                handled += 1
                continue
            except KafkaProtocolError as exc:
                self._protocol_error(exc)
                return
            if request is None:
                return
            handled += 1
            try:
                self._dispatch(request)
            except KafkaProtocolError as exc:
                self._protocol_error(exc)
                return
            except Exception as exc:
                # A bug of ours must not leave the client waiting for an answer that
                # never comes: Kafka closes the connection on an unexpected error too.
                log.exception("kafka request %d v%d failed", request.api_key, request.api_version)
                self._protocol_error(exc)
                return

    def _protocol_error(self, exc: Exception) -> None:
        # Kafka answers a request it cannot parse by closing the connection
        # (SocketServer: InvalidRequestException -> close); clients reconnect.
        log.info("kafka connection closed: %s", exc)
        self.closed = True
        if self.transport is not None:
            # Answers already due still go out (they were for good requests).
            self._flush()
            self.transport.close()

    def _dispatch(self, request: Request) -> None:
        key = request.api_key
        if not self.authenticated and key not in BEFORE_AUTHENTICATION:
            # Kafka closes a connection that skips SASL (SaslServerAuthenticator).
            raise KafkaProtocolError(f"api key {key} before SASL authentication")
        if key == PRODUCE:
            self._produce(request)
        elif key == FETCH:
            _PendingFetch(self, request, self.new_slot()).run()
        elif key == METADATA:
            self._reply(request, self._metadata(request))
        elif key == LIST_OFFSETS:
            self._reply(request, self._list_offsets(request))
        elif key == API_VERSIONS_KEY:
            self._reply(request, self._api_versions(request.api_version, ErrorCode.none))
        elif key == FIND_COORDINATOR:
            self._reply(request, self._find_coordinator(request))
        elif key == JOIN_GROUP:
            self._join_group(request)
        elif key == SYNC_GROUP:
            self._sync_group(request)
        elif key == HEARTBEAT:
            self._heartbeat(request)
        elif key == LEAVE_GROUP:
            self._leave_group(request)
        elif key == OFFSET_COMMIT:
            self._offset_commit(request)
        elif key == CREATE_TOPICS:
            self._reply(request, self._create_topics(request))
        elif key == DELETE_TOPICS:
            self._reply(request, self._delete_topics(request))
        elif key == CREATE_PARTITIONS:
            self._reply(request, self._create_partitions(request))
        elif key == admin.DESCRIBE_CONFIGS:
            self._reply(request, admin.describe_configs(self, request))
        elif key == admin.INCREMENTAL_ALTER_CONFIGS:
            self._reply(request, admin.incremental_alter_configs(self, request))
        elif key == admin.LIST_GROUPS:
            self._reply(request, admin.list_groups(self, request))
        elif key == admin.DESCRIBE_GROUPS:
            self._reply(request, admin.describe_groups(self, request))
        elif key == admin.DELETE_GROUPS:
            response, deleted = admin.delete_groups(self, request)
            data = encode_response(request.correlation_id, response)
            slot = self.new_slot()
            if deleted:  # the tombstones are on disk before the answer, like commits
                self.registry.syncer.after_sync(
                    lambda: self.fill(slot, data), lambda exc: self._protocol_error(exc)
                )
            else:
                self.fill(slot, data)
        elif key == admin.DESCRIBE_CLUSTER:
            self._reply(request, admin.describe_cluster(self, request, NODE_ID, CLUSTER_ID))
        elif key == admin.SASL_HANDSHAKE:
            self._sasl_handshake(request)
        elif key == admin.SASL_AUTHENTICATE:
            self._sasl_authenticate(request)
        elif key in admin.TRANSACTION_APIS:
            self._reply(request, admin.transaction_refused(request))
        elif key == INIT_PRODUCER_ID:
            self._reply(request, self._init_producer_id(request))
        elif key == OFFSET_FETCH:
            self._reply(request, self._offset_fetch(request))
        else:  # the decoder only lets through what DECODED lists
            raise KafkaProtocolError(f"no handler for api key {key}")

    # -- output -----------------------------------------------------------------------------

    def new_slot(self) -> list[Any]:
        slot: list[Any] = [None]
        self._slots.append(slot)
        self._update_reading()
        return slot

    def fill(self, slot: list[Any], data: bytes) -> None:
        if self.closed and self.transport is None:
            return
        slot[0] = data
        if self._slots and self._slots[0] is slot and not self._flush_scheduled:
            self._flush_scheduled = True
            self.loop.call_soon(self._flush)

    def _reply(self, request: Request, body: Any) -> None:
        self.fill(self.new_slot(), encode_response(request.correlation_id, body))

    def _flush(self) -> None:
        self._flush_scheduled = False
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        ready: list[bytes] = []
        slots = self._slots
        while slots and slots[0][0] is not None:
            data = slots.popleft()[0]
            if type(data) is bytes:
                ready.append(data)
                continue
            if ready:
                transport.writelines(ready)
                ready = []
            if not self._send_file_response(transport, data.parts):
                return
        if ready:
            transport.writelines(ready)
        self._update_reading()

    def _send_file_response(self, transport: asyncio.Transport, parts: list[Any]) -> bool:
        """Write a Fetch response whose records are file ranges, in its turn.

        When the transport has nothing buffered, everything before this response is in
        the kernel already, so the frame goes straight to the socket: header bytes with
        ``os.write``, records with ``os.sendfile`` (no copy through Python).  What the
        socket does not take now, and the whole response when the transport is still
        buffering (or on TLS), goes through ``transport.writelines`` after reading the
        ranges: later responses queue behind it, so the order is kept either way.
        """
        rest = parts
        try:
            fd = self._socket_fd
            if fd is not None and transport.get_write_buffer_size() == 0:
                rest, sent = write_direct(fd, parts)
                self.server.sendfile_bytes += sent
            else:
                rest = [_materialise(p) for p in parts]
        except OSError as exc:
            _close_ranges(parts)
            log.info("kafka connection lost while sending a fetch: %s", exc)
            self.closed = True
            transport.abort()
            return False
        _close_ranges(parts)
        if rest:
            transport.writelines(rest)
        return True

    def _update_reading(self) -> None:
        transport = self.transport
        if transport is None or self.closed:
            return
        busy = (
            self._writing_paused
            or len(self._slots) > MAX_PENDING_SLOTS
            or transport.get_write_buffer_size() > self.config.max_output
        )
        if busy and not self._reading_paused:
            self._reading_paused = True
            transport.pause_reading()
        elif not busy and self._reading_paused:
            self._reading_paused = False
            transport.resume_reading()
            if not self._continue_scheduled:
                self._continue_scheduled = True
                self.loop.call_soon(self._process)  # requests may be buffered already

    # -- ApiVersions --------------------------------------------------------------------------

    def _api_versions(self, version: int, error: ErrorCode) -> Any:
        cls = schema(API_VERSIONS_KEY, version, EntityType.response)
        entry = nested(cls, "api_keys")
        keys = tuple(
            build(entry, api_key=key, min_version=low, max_version=high)
            for key, (low, high) in sorted(ADVERTISED.items())
        )
        return build(cls, error_code=error, api_keys=keys, throttle_time=NO_THROTTLE)

    def _answer_unsupported_api_versions(self, correlation_id: int) -> None:
        # KIP-511: an ApiVersions request at a version we do not know gets
        # UNSUPPORTED_VERSION in the v0 format, still listing our ranges, so the client
        # retries at a version we serve (librdkafka, kafka-python 3 do).
        body = self._api_versions(0, ErrorCode.unsupported_version)
        self.fill(self.new_slot(), encode_response(correlation_id, body))

    # -- Metadata -----------------------------------------------------------------------------

    def _metadata(self, request: Request) -> Any:
        body = request.body
        version = request.api_version
        cls = schema(METADATA, version, EntityType.response)
        topic_cls = nested(cls, "topics")
        partition_cls = nested(topic_cls, "partitions")
        broker_cls = nested(cls, "brokers")
        registry = self.registry
        if body.topics is None or (version == 0 and not body.topics):
            # All topics: only those the user may see (Kafka leaves out the topics
            # without Describe permission).
            names = [name for name in registry.topics() if self.may_see(name)]
        else:
            names = [topic.name for topic in body.topics]
        # Before v4 the request has no flag: Kafka auto-creates (if configured).
        allow_create = getattr(body, "allow_auto_topic_creation", True)
        topics = []
        for name in names:
            if not self.may_see(name):  # a named topic: Kafka answers the error
                topics.append(build(
                    topic_cls, error_code=ErrorCode.topic_authorization_failed, name=name,
                    is_internal=False, partitions=(),
                ))
                continue
            partitions = registry.get(name)
            error = ErrorCode.none
            if partitions is None:
                if not legal_topic_name(name):
                    error = ErrorCode.invalid_topic_exception
                elif allow_create and self.config.auto_create_topics and not self.may("configure", name):
                    # Kafka: auto-creation needs Create; without it the answer is
                    # TOPIC_AUTHORIZATION_FAILED (KafkaApis.handleTopicMetadataRequest).
                    error = ErrorCode.topic_authorization_failed
                elif allow_create and self.config.auto_create_topics:
                    try:
                        partitions = registry.create(name, self.config.num_partitions)
                    except TopicError as exc:
                        log.warning("kafka: auto-creating topic %s failed: %s", name, exc)
                        error = ErrorCode.invalid_topic_exception
                else:
                    error = ErrorCode.unknown_topic_or_partition
            topics.append(
                build(
                    topic_cls,
                    error_code=error,
                    name=name,
                    is_internal=False,
                    partitions=tuple(
                        build(
                            partition_cls,
                            error_code=ErrorCode.none,
                            partition_index=p.index,
                            leader_id=NODE_ID,
                            # -1 until OffsetForLeaderEpoch exists (kafka-protocol.md §8)
                            leader_epoch=-1,
                            replica_nodes=(NODE_ID,),
                            isr_nodes=(NODE_ID,),
                            offline_replicas=(),
                        )
                        for p in partitions or ()
                    ),
                )
            )
        broker = build(
            broker_cls,
            node_id=NODE_ID,
            host=self.config.advertised_host,
            port=self.config.advertised_port,
            rack=None,
        )
        return build(
            cls,
            throttle_time=NO_THROTTLE,
            brokers=(broker,),
            cluster_id=CLUSTER_ID,
            controller_id=NODE_ID,
            topics=tuple(topics),
        )

    # -- Produce ------------------------------------------------------------------------------

    def _produce(self, request: Request) -> None:
        body = request.body  # codec.ProduceBody: records are views into the frame
        results: list[tuple[str, list[tuple[int, int, int, int]]]] = []
        appended: list[CommitHandle] = []
        failed = False
        registry = self.registry
        for topic in body.topic_data:
            partition_results: list[tuple[int, int, int, int]] = []
            for data in topic.partition_data:
                partition = registry.partition(topic.name, data.index)
                error, base = self._append(
                    partition, topic.name, data.index, data.records, appended
                )
                if error is not ErrorCode.none:
                    failed = True
                log_start = (
                    partition.log.first_offset
                    if partition is not None and error is ErrorCode.none
                    else -1  # as Kafka answers a failed partition
                )
                partition_results.append((data.index, error.value, base, log_start))
            results.append((topic.name, partition_results))

        if body.acks == 0:
            if failed:
                # No response exists to carry the error: Kafka closes the connection so
                # the client refreshes its metadata (KafkaApis.handleProduceRequest).
                raise KafkaProtocolError("acks=0 produce failed")
            return
        slot = self.new_slot()
        correlation_id, version = request.correlation_id, request.api_version

        def answer(storage_failed: bool = False) -> None:
            final = results
            if storage_failed:
                error = ErrorCode.kafka_storage_error.value
                final = [
                    (name, [(index, error, base, start) for index, _e, base, start in parts])
                    for name, parts in results
                ]
            self.fill(slot, encode_produce_response(correlation_id, version, final))

        # Baedal's durability promise: acks=1/all are answered only once the streams
        # committed the batches (fsynced; one node: the leader is the whole ISR).
        # One callback per partition written, not per record.
        if not appended:
            answer()
            return
        if len(appended) == 1:  # the common request: one partition
            appended[0].add_done_callback(lambda handle: answer(handle.exception() is not None))
            return
        waiting = [len(appended)]
        failure: list[BaseException] = []

        def done(handle: CommitHandle) -> None:
            exc = handle.exception()
            if exc is not None:
                failure.append(exc)
            waiting[0] -= 1
            if waiting[0] == 0:
                answer(bool(failure))

        for handle in appended:
            handle.add_done_callback(done)

    def _append(
        self,
        partition: Partition | None,
        topic: str,
        index: int,
        records: memoryview | None,
        appended: list[CommitHandle],
    ) -> tuple[ErrorCode, int]:
        if self.user is not None and not self.may("write", topic):
            return ErrorCode.topic_authorization_failed, -1
        if partition is None:
            return ErrorCode.unknown_topic_or_partition, -1
        if not records:
            return ErrorCode.corrupt_message, -1
        limit = partition.stream.arguments.get(
            admin.MAX_MESSAGE_BYTES_ARGUMENT, self.config.max_message_bytes
        )
        if len(records) > limit:
            return ErrorCode.message_too_large, -1
        try:
            if len(records) >= 12 and batch_size_at(records) != len(records):
                # Produce v3+ carries exactly one batch per partition (Kafka:
                # "Produce requests with magic v2 must contain exactly one batch").
                return ErrorCode.invalid_record, -1
            # Only an idempotent producer's batch needs its header here (sequence
            # checks before the append); the log validates every batch's header anyway.
            producer_id = (
                _PRODUCER_ID_AT(records, PRODUCER_ID_OFFSET)[0]
                if len(records) >= BATCH_HEADER_SIZE
                else -1
            )
            if producer_id >= 0:
                header = decode_header(records)
                epoch, sequence, count = header[10], header[11], header[12]
                producers = self.server.producers
                if header[5] & TRANSACTIONAL_MASK:
                    return ErrorCode.invalid_record, -1  # transactions are not served
                error, duplicate = producers.check(topic, index, producer_id, epoch, sequence, count)
                if error is not ErrorCode.none:
                    return error, -1
                if duplicate is not None:
                    # A retry of a batch already stored: same answer, nothing appended.
                    # It still waits for the fsync (the original may not be covered yet).
                    appended.append(partition.stream.commit_handle(partition.log.next_offset))
                    return ErrorCode.none, duplicate
            # The batch is validated (header, CRC, offsets) and appended as one unit,
            # its base offset rewritten in place in the request frame: no record is
            # decoded and the bytes are not copied again before the write.
            result, handle = partition.stream.append_batch(records)
            count = result.last_offset - result.base_offset + 1
            if producer_id >= 0:
                producers.appended(
                    topic, index, producer_id, epoch, sequence, count, result.base_offset
                )
        except RecordBatchError:
            return ErrorCode.corrupt_message, -1
        except OSError:
            log.exception("kafka append to %s-%d failed", topic, index)
            return ErrorCode.kafka_storage_error, -1
        appended.append(handle)
        counters = self.server.traffic(topic, index)
        counters[BYTES_IN] += len(records)
        counters[RECORDS_IN] += count
        return ErrorCode.none, result.base_offset

    # -- ListOffsets --------------------------------------------------------------------------

    def _list_offsets(self, request: Request) -> Any:
        cls = schema(LIST_OFFSETS, request.api_version, EntityType.response)
        topic_cls = nested(cls, "topics")
        partition_cls = nested(topic_cls, "partitions")
        topics = []
        for topic in request.body.topics:
            answers = []
            readable = self.may("read", topic.name)
            for asked in topic.partitions:
                partition = self.registry.partition(topic.name, asked.partition_index)
                error, offset, timestamp = ErrorCode.none, -1, -1
                if not readable:
                    error = ErrorCode.topic_authorization_failed
                elif partition is None:
                    error = ErrorCode.unknown_topic_or_partition
                elif asked.timestamp == EARLIEST_TIMESTAMP:
                    offset = partition.log.first_offset
                elif asked.timestamp == LATEST_TIMESTAMP:
                    offset = partition.durable_offset
                elif asked.timestamp < 0:
                    error = ErrorCode.unsupported_version  # e.g. -3 (max timestamp, v7+)
                else:
                    offset, timestamp = _offset_for_time(partition, asked.timestamp)
                answers.append(
                    build(
                        partition_cls,
                        partition_index=asked.partition_index,
                        error_code=error,
                        timestamp=timestamp,
                        offset=offset,
                        leader_epoch=-1,
                    )
                )
            topics.append(build(topic_cls, name=topic.name, partitions=tuple(answers)))
        return build(cls, throttle_time=NO_THROTTLE, topics=tuple(topics))

    # -- CreateTopics / DeleteTopics -----------------------------------------------------------

    def _create_topics(self, request: Request) -> Any:
        body = request.body
        cls = schema(CREATE_TOPICS, request.api_version, EntityType.response)
        result_cls = nested(cls, "topics")
        registry = self.registry
        results = []
        for topic in body.topics:
            error, message = ErrorCode.none, None
            partitions = topic.num_partitions if topic.num_partitions != -1 else self.config.num_partitions
            if not self.may("configure", topic.name):
                error, message = ErrorCode.topic_authorization_failed, "configure permission refused"
            elif registry.get(topic.name) is not None:
                error, message = ErrorCode.topic_already_exists, f"topic {topic.name!r} exists"
            elif not legal_topic_name(topic.name):
                error, message = ErrorCode.invalid_topic_exception, "illegal topic name"
            elif partitions < 1 or topic.assignments:
                error, message = ErrorCode.invalid_partitions, "partitions must be >= 1"
            elif topic.replication_factor not in (-1, 1):
                # One node: there is nobody to replicate to until clustering lands.
                error, message = ErrorCode.invalid_replication_factor, "single-node broker"
            else:
                try:
                    arguments = admin.config_changes_for_create(topic.configs)
                except admin.ConfigError as exc:
                    error, message = ErrorCode.invalid_config, str(exc)
                    arguments = None
                try:
                    if arguments is not None and not body.validate_only:
                        registry.create(topic.name, partitions, arguments)
                except TopicError as exc:
                    error = (
                        ErrorCode.topic_already_exists
                        if exc.reason == "exists"
                        else ErrorCode.invalid_topic_exception
                    )
                    message = str(exc)
            results.append(
                build(result_cls, name=topic.name, error_code=error, error_message=message)
            )
        return build(cls, throttle_time=NO_THROTTLE, topics=tuple(results))

    def _delete_topics(self, request: Request) -> Any:
        cls = schema(DELETE_TOPICS, request.api_version, EntityType.response)
        result_cls = nested(cls, "responses")
        results = []
        for name in request.body.topic_names:
            if not self.may("configure", name):
                results.append(build(result_cls, name=name, error_code=ErrorCode.topic_authorization_failed))
                continue
            deleted = self.registry.delete(name)
            error = ErrorCode.none if deleted else ErrorCode.unknown_topic_or_partition
            results.append(build(result_cls, name=name, error_code=error))
        return build(cls, throttle_time=NO_THROTTLE, responses=tuple(results))

    def _create_partitions(self, request: Request) -> Any:
        body = request.body
        cls = schema(CREATE_PARTITIONS, request.api_version, EntityType.response)
        result_cls = nested(cls, "results")
        results = []
        for topic in body.topics:
            error, message = ErrorCode.none, None
            current = self.registry.get(topic.name)
            if not self.may("configure", topic.name):
                error, message = ErrorCode.topic_authorization_failed, "configure permission refused"
            elif current is None:
                error, message = ErrorCode.unknown_topic_or_partition, f"no topic {topic.name!r}"
            elif topic.assignments:
                # One node: there is no placement to choose.
                error, message = ErrorCode.invalid_replica_assignment, "single-node broker"
            elif topic.count <= len(current):
                error = ErrorCode.invalid_partitions
                message = f"topic has {len(current)} partition(s); {topic.count} is not more"
            elif not body.validate_only:
                try:
                    self.registry.add_partitions(topic.name, topic.count)
                except TopicError as exc:
                    error, message = ErrorCode.invalid_partitions, str(exc)
            results.append(
                build(result_cls, name=topic.name, error_code=error, error_message=message)
            )
        return build(cls, throttle_time=NO_THROTTLE, results=tuple(results))

    # -- SASL and authorization --------------------------------------------------------------

    def may(self, kind: str, topic: str) -> bool:
        """RabbitMQ's permission model on a Kafka topic: the authenticated user's
        ``configure`` / ``write`` / ``read`` regex for the listener's vhost, searched in
        the topic name (which is also the name of its stream, or of its super stream's
        exchange).  A connection without SASL (``kafka_sasl`` off) may do everything,
        as before permissions existed here.  Looked up per request, so a permission
        changed or cleared applies to open connections at once."""
        if self.user is None:
            return True
        permission = self.registry.vhost.broker.permission(self.user, self.registry.vhost.name)
        return permission is not None and permission.allows(kind, topic)

    def may_see(self, topic: str) -> bool:
        # Kafka's Describe is implied by any other operation on the topic.
        return self.may("read", topic) or self.may("write", topic) or self.may("configure", topic)

    def may_write_somewhere(self) -> bool:
        if self.user is None:
            return True
        permission = self.registry.vhost.broker.permission(self.user, self.registry.vhost.name)
        return permission is not None and permission.write != ""

    def _sasl_handshake(self, request: Request) -> None:
        cls = schema(admin.SASL_HANDSHAKE, request.api_version, EntityType.response)
        mechanism = request.body.mechanism
        error = ErrorCode.none
        if mechanism not in SASL_MECHANISMS:
            error = ErrorCode.unsupported_sasl_mechanism
        elif self._sasl_mechanism is not None or self.user is not None:
            error = ErrorCode.illegal_sasl_state
        else:
            self._sasl_mechanism = mechanism
            if mechanism != "PLAIN":
                self._scram = ScramServer(mechanism, self._scram_credential(mechanism))
        self._reply(request, build(cls, error_code=error, mechanisms=SASL_MECHANISMS))

    def _close_after_failed_authentication(self, failure: str) -> None:
        """Send the SASL_AUTHENTICATION_FAILED answer, read nothing more, and close a
        moment later.  Kafka delays that close too (connection.failed.authentication.
        delay.ms, 100 ms by default): a client that sees the answer and the end of the
        stream in one read may drop the answer (kafka-python does) and report a plain
        disconnect instead of the refused login."""
        log.info("kafka SASL %s authentication failed: %s", self._sasl_mechanism, failure)
        self.closed = True
        transport = self.transport
        if transport is None:
            return
        self._flush()
        transport.pause_reading()
        self._close_timer = self.loop.call_later(FAILED_AUTHENTICATION_CLOSE_DELAY, transport.close)

    def _scram_credential(self, mechanism: str) -> Any:
        users = self.registry.vhost.broker.users

        def lookup(name: str) -> Any:
            user = users.get(name)
            return user.scram.get(mechanism) if user is not None else None

        return lookup

    def _sasl_authenticate(self, request: Request) -> None:
        """SASL PLAIN (RFC 4616: authzid NUL authcid NUL passwd) or one SCRAM step
        (``sasl.py``) against Baedal's users.  Once the credentials check out, the
        user must also pass the loopback-only rule AMQP applies (``loopback_users``)
        and have a permission on the listener's vhost (AMQP's connection.open check).
        Any failure is answered SASL_AUTHENTICATION_FAILED with a message and the
        connection closed, as Kafka does."""
        cls = schema(admin.SASL_AUTHENTICATE, request.api_version, EntityType.response)
        if self._sasl_mechanism is None or self.user is not None:
            self._reply(request, build(
                cls, error_code=ErrorCode.illegal_sasl_state,
                error_message="SaslHandshake first", auth_bytes=b"", session_lifetime=NO_THROTTLE,
            ))
            raise KafkaProtocolError("SaslAuthenticate out of order")
        name: str | None = None
        answer = b""
        failure = "Authentication failed: invalid credentials"
        if self._scram is not None:
            try:
                answer = self._scram.step(bytes(request.body.auth_bytes))
            except ScramError as exc:
                failure = str(exc)
            else:
                name = self._scram.username
                if name is None:  # server-first: the exchange goes on
                    self._reply(request, build(
                        cls, error_code=ErrorCode.none, error_message=None,
                        auth_bytes=answer, session_lifetime=NO_THROTTLE,
                    ))
                    return
        else:
            fields = bytes(request.body.auth_bytes).split(b"\0")
            if len(fields) == 3:
                _authzid, user_name, password = (f.decode("utf-8", "replace") for f in fields)
                user = self.registry.vhost.broker.authenticate(user_name, password)
                name = user.name if user is not None else None
        vhost = self.registry.vhost.name
        if name is not None:
            if name in self.config.loopback_users and not is_loopback(self.peer_host):
                failure = f"user {name!r} may only connect from localhost"
                name = None
            elif self.registry.vhost.broker.permission(name, vhost) is None:
                failure = f"access to vhost {vhost!r} refused for user {name!r}"
                name = None
        if name is None:
            self._reply(request, build(
                cls, error_code=ErrorCode.sasl_authentication_failed,
                error_message=failure, auth_bytes=b"", session_lifetime=NO_THROTTLE,
            ))
            self._close_after_failed_authentication(failure)
            return
        self.user = name
        self.authenticated = True
        self._scram = None
        self._reply(request, build(
            cls, error_code=ErrorCode.none, error_message=None, auth_bytes=answer, session_lifetime=NO_THROTTLE
        ))

    # -- InitProducerId ------------------------------------------------------------------------

    def _init_producer_id(self, request: Request) -> Any:
        cls = schema(INIT_PRODUCER_ID, request.api_version, EntityType.response)
        if request.body.transactional_id is not None:
            # Transactions are not served (issue 11): a clear error, never a hang.
            # librdkafka retries InitProducerId on INVALID_REQUEST for ever; an
            # authorization failure is fatal in every client (librdkafka, Java,
            # kafka-python), so a transactional producer stops at once.
            return build(
                cls,
                throttle_time=NO_THROTTLE,
                error_code=ErrorCode.transactional_id_authorization_failed,
                producer_id=-1,
                producer_epoch=-1,
            )
        if not self.may_write_somewhere():
            # Kafka 3.0+ (KIP-679) lets an idempotent producer in with Write on any
            # topic, else CLUSTER_AUTHORIZATION_FAILED.
            return build(
                cls,
                throttle_time=NO_THROTTLE,
                error_code=ErrorCode.cluster_authorization_failed,
                producer_id=-1,
                producer_epoch=-1,
            )
        return build(
            cls,
            throttle_time=NO_THROTTLE,
            error_code=ErrorCode.none,
            producer_id=self.server.producers.new_producer_id(),
            producer_epoch=0,
        )

    # -- groups -------------------------------------------------------------------------------

    def _find_coordinator(self, request: Request) -> Any:
        cls = schema(FIND_COORDINATOR, request.api_version, EntityType.response)
        return build(
            cls,
            throttle_time=NO_THROTTLE,
            error_code=ErrorCode.none,
            error_message=None,
            node_id=NODE_ID,  # one node coordinates every group
            host=self.config.advertised_host,
            port=self.config.advertised_port,
        )

    def _join_group(self, request: Request) -> None:
        body = request.body
        slot = self.new_slot()
        cls = schema(JOIN_GROUP, request.api_version, EntityType.response)
        member_cls = nested(cls, "members")
        session = body.session_timeout.total_seconds()
        rebalance = getattr(body, "rebalance_timeout", body.session_timeout).total_seconds()

        def answer(error: ErrorCode, group: Group | None, member_id: str) -> None:
            members: tuple[Any, ...] = ()
            if group is not None and group.leader == member_id:
                members = tuple(
                    build(
                        member_cls,
                        member_id=m.member_id,
                        group_instance_id=None,
                        metadata=group.metadata_for(m),
                    )
                    for m in group.members.values()
                )
            response = build(
                cls,
                throttle_time=NO_THROTTLE,
                error_code=error,
                generation_id=group.generation if group else -1,
                protocol_name=(group.protocol or "") if group else "",
                leader=(group.leader or "") if group else "",
                member_id=member_id,
                members=members,
            )
            self.fill(slot, encode_response(request.correlation_id, response))

        self.server.coordinator.group(body.group_id).join(
            body.member_id,
            request.client_id or "",
            body.protocol_type,
            [(p.name, bytes(p.metadata)) for p in body.protocols],
            session,
            rebalance,
            answer,
        )

    def _sync_group(self, request: Request) -> None:
        body = request.body
        slot = self.new_slot()
        cls = schema(SYNC_GROUP, request.api_version, EntityType.response)

        def answer(error: ErrorCode, assignment: bytes) -> None:
            response = build(
                cls, throttle_time=NO_THROTTLE, error_code=error, assignment=assignment
            )
            self.fill(slot, encode_response(request.correlation_id, response))

        assignments = {a.member_id: bytes(a.assignment) for a in body.assignments}
        group = self.server.coordinator.groups.get(body.group_id)
        if group is None:
            answer(ErrorCode.unknown_member_id, b"")
            return
        group.sync(body.member_id, body.generation_id, assignments, answer)

    def _heartbeat(self, request: Request) -> None:
        body = request.body
        group = self.server.coordinator.groups.get(body.group_id)
        error = (
            group.check(body.member_id, body.generation_id)
            if group is not None
            else ErrorCode.unknown_member_id
        )
        cls = schema(HEARTBEAT, request.api_version, EntityType.response)
        self._reply(request, build(cls, throttle_time=NO_THROTTLE, error_code=error))

    def _leave_group(self, request: Request) -> None:
        body = request.body
        cls = schema(LEAVE_GROUP, request.api_version, EntityType.response)
        group = self.server.coordinator.groups.get(body.group_id)
        if hasattr(body, "members"):  # v3+: a batch of members
            leaving = [m.member_id for m in body.members]
        else:
            leaving = [body.member_id]
        errors = [
            group.leave(member_id) if group is not None else ErrorCode.unknown_member_id
            for member_id in leaving
        ]
        response_member = nested(cls, "members") if hasattr(body, "members") else None
        members = tuple(
            build(response_member, member_id=m, group_instance_id=None, error_code=e)
            for m, e in zip(leaving, errors, strict=True)
        ) if response_member is not None else ()
        top = ErrorCode.none if hasattr(body, "members") else errors[0]
        self._reply(
            request, build(cls, throttle_time=NO_THROTTLE, error_code=top, members=members)
        )

    def _offset_commit(self, request: Request) -> None:
        body = request.body
        coordinator = self.server.coordinator
        group = coordinator.groups.get(body.group_id)
        generation = body.generation_id_or_member_epoch
        error = ErrorCode.none
        if group is not None and group.members:
            error = group.check(body.member_id, generation)
        elif generation >= 0:
            # A generation for a group that has no members: the member was dropped.
            error = ErrorCode.illegal_generation if group is not None else ErrorCode.unknown_member_id
        offsets = coordinator.offsets
        refused = {topic.name for topic in body.topics if not self.may("read", topic.name)}
        if error is ErrorCode.none:
            for topic in body.topics:
                if topic.name in refused:
                    continue
                for p in topic.partitions:
                    offsets.commit(
                        body.group_id, topic.name, p.partition_index, p.committed_offset,
                        p.committed_metadata,
                    )
        cls = schema(OFFSET_COMMIT, request.api_version, EntityType.response)
        topic_cls = nested(cls, "topics")
        partition_cls = nested(topic_cls, "partitions")
        response = build(
            cls,
            throttle_time=NO_THROTTLE,
            topics=tuple(
                build(
                    topic_cls,
                    name=topic.name,
                    partitions=tuple(
                        build(
                            partition_cls,
                            partition_index=p.partition_index,
                            error_code=(
                                ErrorCode.topic_authorization_failed if topic.name in refused else error
                            ),
                        )
                        for p in topic.partitions
                    ),
                )
                for topic in body.topics
            ),
        )
        data = encode_response(request.correlation_id, response)
        slot = self.new_slot()
        if error is ErrorCode.none:
            # Committed offsets are acknowledged once on disk, like produced records.
            self.registry.syncer.after_sync(
                lambda: self.fill(slot, data),
                lambda exc: self._protocol_error(exc),
            )
        else:
            self.fill(slot, data)

    def _offset_fetch(self, request: Request) -> Any:
        body = request.body
        offsets = self.server.coordinator.offsets
        cls = schema(OFFSET_FETCH, request.api_version, EntityType.response)
        topic_cls = nested(cls, "topics")
        partition_cls = nested(topic_cls, "partitions")
        if body.topics is None:  # v2+: every partition the group committed
            wanted = {
                topic: sorted(partitions)
                for topic, partitions in offsets.for_group(body.group_id).items()
                if self.may("read", topic)  # Kafka leaves out unauthorized topics here
            }
        else:
            wanted = {t.name: list(t.partition_indexes) for t in body.topics}
        topics = []
        for name, indexes in wanted.items():
            answers = []
            readable = self.may("read", name)
            for index in indexes:
                found = offsets.get(body.group_id, name, index) if readable else None
                offset, metadata = found if found is not None else (-1, "")
                answers.append(
                    build(
                        partition_cls,
                        partition_index=index,
                        committed_offset=offset,
                        committed_leader_epoch=-1,
                        metadata=metadata,
                        error_code=ErrorCode.none if readable else ErrorCode.topic_authorization_failed,
                    )
                )
            topics.append(build(topic_cls, name=name, partitions=tuple(answers)))
        return build(cls, throttle_time=NO_THROTTLE, topics=tuple(topics), error_code=ErrorCode.none)


def _offset_for_time(partition: Partition, timestamp_ms: int) -> tuple[int, int]:
    """(offset, its timestamp) of the first record at or after the time, else (-1, -1)."""
    offset = partition.log.offset_for_timestamp(timestamp_ms)
    if offset is None or offset >= partition.durable_offset:
        return -1, -1
    reader = partition.log.reader(offset)
    for record in reader.read_records(1, end_offset=partition.durable_offset):
        if record.offset == offset and record.timestamp is not None:
            return offset, record.timestamp
    return offset, timestamp_ms


class _PendingFetch:
    """One Fetch request until it is answered: now, when data arrives, or at max_wait."""

    __slots__ = (
        "connection",
        "request",
        "slot",
        "timer",
        "waiting",
        "done",
        "partition_cap",
        "min_bytes",
    )

    def __init__(self, connection: KafkaConnection, request: Request, slot: list[Any]) -> None:
        self.connection = connection
        self.request = request
        self.slot = slot
        self.timer: asyncio.TimerHandle | None = None
        self.waiting: list[Partition] = []
        self.done = False
        body = request.body
        self.partition_cap = body.max_bytes
        self.min_bytes = max(body.min_bytes, 1)
        if connection._socket_fd is not None:
            # SENDFILE_RESPONSE_BYTES, per partition so every partition asked for gets
            # its share (a bound on the whole answer would leave the later partitions
            # of a busy first one unserved).  A min_bytes above a share could then never
            # be met and every fetch would wait out max_wait; half a share is enough to
            # answer: an answer cut by the share holds at least that much unless the
            # batch after it is itself over half a share (then the wait is max_wait).
            asked = sum(len(topic.partitions) for topic in body.topics)
            self.partition_cap = max(SENDFILE_RESPONSE_BYTES // max(asked, 1), 64 * 1024)
            self.min_bytes = min(self.min_bytes, self.partition_cap // 2)

    def run(self) -> None:
        body = self.request.body
        wait_ms = int(body.max_wait.total_seconds() * 1000)
        size, response = self._collect()
        if size >= self.min_bytes or wait_ms <= 0 or response is None:
            self._answer(response)
            return
        _close_ranges(response)
        # Long poll: wake on any of our partitions advancing, or at max_wait.
        self.connection._fetches.add(self)
        self.timer = self.connection.loop.call_later(wait_ms / 1000, self._timeout)
        self._watch()

    def _watch(self) -> None:
        registry = self.connection.registry
        for topic in self.request.body.topics:
            for asked in topic.partitions:
                partition = registry.partition(topic.topic, asked.partition)
                if partition is not None:
                    partition.add_waiter(self._wake)
                    self.waiting.append(partition)

    def _unwatch(self) -> None:
        for partition in self.waiting:
            partition.remove_waiter(self._wake)
        self.waiting.clear()

    def _wake(self) -> None:
        if self.done:
            return
        self._unwatch()
        size, response = self._collect()
        if size >= self.min_bytes or response is None:
            self._finish(response)
        else:
            _close_ranges(response)
            self._watch()

    def _timeout(self) -> None:
        self.timer = None
        if not self.done:
            self._unwatch()
            self._finish(self._collect()[1])

    def cancel(self) -> None:
        self.done = True
        self._unwatch()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def _finish(self, response: Any) -> None:
        self.cancel()
        self.connection._fetches.discard(self)
        self._answer(response)

    def _answer(self, response: Any) -> None:
        self.done = True
        connection = self.connection
        if response is None:
            response = self._collect(force=True)[1]
        if connection.closed:
            _close_ranges(response)
            return
        connection.fill(self.slot, FileResponse(response))

    def _collect(self, force: bool = False) -> tuple[int, Any]:
        """(bytes of records found, response parts).  Parts None = an error: answer now.

        Records are the stream's committed batches as file ranges (``os.sendfile``
        when the connection writes them, see ``KafkaConnection._send_file_response``);
        whoever drops the parts closes the ranges.
        """
        request = self.request
        body = request.body
        registry = self.connection.registry
        budget = body.max_bytes
        partition_cap = self.partition_cap
        total = 0
        any_error = False
        topics: list[tuple[str, list[Any]]] = []
        for topic in body.topics:
            answers: list[Any] = []
            readable = self.connection.user is None or self.connection.may("read", topic.topic)
            for asked in topic.partitions:
                partition = registry.partition(topic.topic, asked.partition)
                error = ErrorCode.none
                chunks: list[Any] = []
                high_watermark = log_start = -1
                if not readable:
                    error = ErrorCode.topic_authorization_failed
                elif partition is None:
                    error = ErrorCode.unknown_topic_or_partition
                else:
                    stream = partition.stream
                    high_watermark = stream.committed_offset
                    log_start = stream.log.first_offset
                    offset = asked.fetch_offset
                    key = (topic.topic, asked.partition)
                    previous = self.connection.fetch_positions.get(key)
                    if previous is not None and previous < offset <= high_watermark:
                        self.connection.server.traffic(*key)[RECORDS_OUT] += offset - previous
                    self.connection.fetch_positions[key] = offset
                    if not log_start <= offset <= stream.log.next_offset:
                        error = ErrorCode.offset_out_of_range
                    elif offset < high_watermark and budget > 0:
                        # KIP-74: the first batch goes out whole even past the limits;
                        # a fetch inside a batch gets that whole batch (the client
                        # skips the records below its offset).
                        limit = min(asked.partition_max_bytes, budget, partition_cap)
                        try:
                            chunks = stream.committed_file_ranges(offset, limit)
                        except OffsetOutOfRange:  # retention ran meanwhile
                            error = ErrorCode.offset_out_of_range
                        size = sum(chunk.length for chunk in chunks)
                        budget -= size
                        total += size
                        self.connection.server.traffic(topic.topic, asked.partition)[BYTES_OUT] += size
                if error is not ErrorCode.none:
                    any_error = True
                answers.append((asked.partition, error.value, high_watermark, log_start, chunks))
            topics.append((topic.topic, answers))
        parts = encode_fetch_response(request.correlation_id, request.api_version, topics)
        if any_error and not force:
            _close_ranges(parts)
            return total, None
        return total, parts


class FileResponse:
    """A response whose parts include file ranges: written by ``_send_file_response``."""

    __slots__ = ("parts",)

    def __init__(self, parts: list[Any]) -> None:
        self.parts = parts


def _close_ranges(parts: list[Any] | None) -> None:
    for part in parts or ():
        if isinstance(part, FileRange):
            part.close()


def _materialise(part: Any) -> bytes:
    return part.read() if isinstance(part, FileRange) else part


def write_direct(fd: int, parts: list[Any]) -> tuple[list[Any], int]:
    """Write ``parts`` to the non-blocking socket ``fd`` (``os.sendfile`` for file
    ranges) until the kernel buffer is full; returns (what is left, as bytes; the
    bytes ``os.sendfile`` sent)."""
    by_sendfile = 0
    for i, part in enumerate(parts):
        if isinstance(part, FileRange):
            sent = 0
            while sent < part.length:
                try:
                    count = os.sendfile(fd, part.fd, part.position + sent, part.length - sent)
                except BlockingIOError:
                    break
                if count == 0:  # the file ended early: cannot happen for a kept range
                    raise OSError(f"sendfile: {part!r} ended at {sent}")
                sent += count
                by_sendfile += count
            if sent < part.length:
                rest = os.pread(part.fd, part.length - sent, part.position + sent)
                return [rest] + [_materialise(p) for p in parts[i + 1:]], by_sendfile
        else:
            view = memoryview(part)
            sent = 0
            while sent < len(view):
                try:
                    sent += os.write(fd, view[sent:])
                except BlockingIOError:
                    break
            if sent < len(view):
                return [bytes(view[sent:])] + [_materialise(p) for p in parts[i + 1:]], by_sendfile
    return [], by_sendfile
