"""The whole broker in one object: core + storage + protocol listeners.

Embedded use (the in-process mode people know from ZeroMQ and ActiveMQ's ``vm://``)::

    async with Broker(port=0) as broker:        # inside asyncio
        url = broker.amqp_url

    with Broker(port=0) as broker:              # synchronous code: runs in a thread
        url = broker.amqp_url
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from .config import Settings
from .core.broker import BrokerConfig, BrokerCore
from .protocols.amqp.connection import AMQPConnection
from .protocols.amqp.server import AMQPServer

log = logging.getLogger("baedal")

# Exit status after a fatal storage failure (a failed fsync): sysexits.h EX_IOERR, "an
# error occurred while doing I/O on some file".  Any non-zero status makes systemd
# (Restart=on-failure), Docker (--restart on-failure) or Kubernetes restart the broker;
# this one also tells an operator reading the status that it was the disk, not a bug
# (EX_SOFTWARE, 70) or a bad configuration (EX_CONFIG, 78).
EXIT_STORAGE_FAILURE = 74

# Test-only fault injection, off unless this variable is set.  ``fsync-after:N`` makes
# the storage syncer's first N fsync calls succeed and every later one fail with EIO, so
# tests/fault/test_fsync_failure.py can drive the fatal-fsync path in a real broker
# process (containers offer no device-mapper "error" target to make a disk fail for
# real).  It is read here, in the wiring, and handed to the syncer; storage code never
# reads the environment.
FAULT_INJECT_ENV = "BAEDAL_FAULT_INJECT"


class Broker:
    def __init__(self, settings: Settings | None = None, **overrides: Any) -> None:
        if settings is None:
            settings = Settings(**{"http_port": None, **overrides}) if overrides else Settings(http_port=None)
        elif overrides:
            settings = Settings(**{**settings.__dict__, **overrides})
        if not isinstance(settings.data_dir, Path):
            settings.data_dir = Path(settings.data_dir)
        self.settings = settings
        self.core: BrokerCore | None = None
        self.amqp: AMQPServer | None = None
        self.http: Any = None
        self.storage: Any = None
        self.port: int = settings.port
        self.tls_port: int | None = None
        self.http_port: int | None = None
        self.kafka: Any = None
        self.kafka_port: int | None = None
        self.stomp: Any = None
        self.stomp_port: int | None = None
        self.stomp_tls_port: int | None = None
        self._kafka_syncer: Any = None
        self.mqtt: Any = None
        self.mqtt_port: int | None = None
        self.mqtt_tls_port: int | None = None
        self._mqtt_syncer: Any = None
        # Unix-socket listeners (transport/unix.py) and what clients connect to.
        self._unix_listeners: list[Any] = []
        self.unix_sockets: list[str] = []
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopped: asyncio.Event | None = None
        self._monitor: asyncio.Task[None] | None = None
        self._stopping: asyncio.Task[None] | None = None
        # Set when storage failed fatally; the process should exit with exit_status.
        self.failure: BaseException | None = None

    # --- addresses ---------------------------------------------------------------------

    @property
    def amqp_url(self) -> str:
        host = self.settings.host if self.settings.host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"amqp://{self.settings.default_user}:{self.settings.default_pass}@{host}:{self.port}/"

    @property
    def http_url(self) -> str | None:
        if self.http_port is None:
            return None
        host = self.settings.http_host if self.settings.http_host not in ("0.0.0.0", "::", "") else "127.0.0.1"
        return f"http://{host}:{self.http_port}"

    @property
    def kafka_bootstrap(self) -> str | None:
        """``host:port`` for Kafka clients' bootstrap servers, or None when off."""
        if self.kafka_port is None:
            return None
        return f"{_connect_host(self.settings.host)}:{self.kafka_port}"

    # --- lifecycle ---------------------------------------------------------------------

    async def start(self) -> None:
        s = self.settings
        if s.inproc_name:  # refuse a taken name before opening anything
            from .transport import inproc

            inproc.check_free(s.inproc_name, self)
        loop = asyncio.get_running_loop()
        self._loop = loop
        self._stopped = asyncio.Event()
        config = BrokerConfig(
            data_dir=s.data_dir,
            max_message_size=s.max_message_size,
            frame_max=s.frame_max,
            channel_max=s.channel_max,
            heartbeat=s.heartbeat,
            handshake_timeout=s.handshake_timeout,
            max_connection_output=s.max_connection_output,
            default_user=s.default_user,
            default_pass=s.default_pass,
            loopback_users=tuple(s.loopback_users),
            memory_high_watermark=s.memory_high_watermark,
            disk_free_limit=s.disk_free_limit,
            durable_store=s.durable_store,
            segment_bytes=s.segment_bytes,
            consumer_timeout=s.consumer_timeout,
        )
        self.core = core = BrokerCore(config, loop)
        s.data_dir.mkdir(parents=True, exist_ok=True)
        if s.durable_store:
            self.storage = _open_storage(core, s, self._storage_fatal)
            fault = _fault_injection(os.environ.get(FAULT_INJECT_ENV))
            if fault is not None and self.storage is not None:
                self.storage.syncer.fsync_function = fault
        _open_scheduler(core, s, self.storage)
        self.amqp = amqp = AMQPServer(core)
        port = await self._listen("amqp", lambda port: amqp.listen(s.host, port), s.port, announce=False)
        assert port is not None  # AMQP has no default to give up: a failure is fatal
        self.port = port
        tls = self._tls_context()
        if tls is not None:
            self.tls_port = await self._listen("amqps", lambda port: amqp.listen(s.host, port, tls), s.tls_port)
        if s.unix_socket:
            await self._listen_unix("amqp", lambda: AMQPConnection(amqp), s.unix_socket)
        if s.kafka_port is not None or s.kafka_unix_socket:
            await self._start_kafka(loop)
        if s.stomp_port is not None or s.stomp_unix_socket:
            await self._start_stomp()
        if s.mqtt_port is not None or s.mqtt_unix_socket:
            await self._start_mqtt(loop)
        if s.http_port is not None:
            self.http = _open_http(self)
            if self.http is not None:
                self.http_port = await self.http.start(s.http_host, s.http_port)
                if s.http_unix_socket:
                    from .transport.unix import bind_unix

                    sock = bind_unix(s.http_unix_socket, s.unix_socket_mode)
                    await self.http.start_unix(sock)
                    self._unix_listeners.append(_BoundSocketFile(s.http_unix_socket))
                    self.unix_sockets.append(f"http+unix:{s.http_unix_socket}")
                    log.info("baedal listening on http+unix:%s", s.http_unix_socket)
        if s.inproc_name:
            from .transport import inproc

            inproc.register(s.inproc_name, self)
        self._monitor = loop.create_task(self._watch_resources())
        log.info("baedal listening on amqp://%s:%d", s.host, self.port)

    # --- listeners: one way to start each, for every protocol --------------------------

    async def _listen(
        self,
        scheme: str,
        listen: Callable[[int], Awaitable[int]],
        port: int | None,
        *,
        default: int | None = None,
        announce: bool = True,
    ) -> int | None:
        """Start one TCP (or TLS) listener with ``listen(port)`` and return its port.

        ``default`` is the protocol's well-known port (Kafka 9092, STOMP 61613, MQTT
        1883, MQTT/TLS 8883), and only it may be given up: an embedded broker on an
        ephemeral AMQP port (``port=0``) takes an ephemeral port instead, so tests never
        collide on it, and when the default port is taken the listener is turned off
        with a warning (None) rather than fail the start: an AMQP-only user, or a second
        broker on this machine, must not fail because something else owns 1883.  A port
        asked for explicitly that cannot be bound is fatal, as for AMQP.
        """
        wanted = port
        if port is None:
            return None
        if default is not None and port == default and self.settings.port == 0:
            port = 0
        try:
            bound = await listen(port)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE or default is None or wanted != default:
                raise
            log.warning("%s listener off: default port %d is in use (%s)", scheme, default, exc)
            return None
        if announce:
            log.info("baedal listening on %s://%s:%d", scheme, self.settings.host, bound)
        return bound

    async def _listen_unix(self, scheme: str, factory: Callable[[], asyncio.BaseProtocol], address: str) -> None:
        """Also serve ``factory()`` connections on the Unix socket ``address`` (a path or
        ``@name``; transport/unix.py): the TCP listener's connection class, so the same
        authentication, behind the file's ``unix_socket_mode``.  Failing to bind is
        fatal (an address asked for explicitly), as for a TCP port."""
        from .transport.unix import listen_unix

        listener = await listen_unix(factory, address, mode=self.settings.unix_socket_mode)
        self._unix_listeners.append(listener)
        self.unix_sockets.append(f"{scheme}+unix:{address}")
        log.info("baedal listening on %s+unix:%s", scheme, address)

    def _tls_context(self) -> ssl.SSLContext | None:
        """The server TLS context for every TLS listener, or None without cert and key."""
        s = self.settings
        if not (s.tls_cert and s.tls_key):
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(s.tls_cert, s.tls_key)
        return context

    def listeners(self) -> list[dict[str, Any]]:
        """What this broker listens on, for the management API (``/api/overview``):
        RabbitMQ's protocol names (``amqp``, ``amqp/ssl``, ``mqtt/ssl`` ...), and for a
        Unix socket its path or ``@name`` as the address, port 0, ``"transport": "unix"``."""
        s = self.settings
        rows: list[dict[str, Any]] = []
        for protocol, port in (
            ("amqp", self.port),
            ("amqp/ssl", self.tls_port),
            ("kafka", self.kafka_port if self.kafka is not None else None),
            ("stomp", self.stomp_port),
            ("stomp/ssl", self.stomp_tls_port),
            ("mqtt", self.mqtt_port),
            ("mqtt/ssl", self.mqtt_tls_port),
        ):
            if port is not None:
                rows.append({"protocol": protocol, "ip_address": s.host, "port": port})
        for entry in self.unix_sockets:
            scheme, _, address = entry.partition("+unix:")
            rows.append({"protocol": scheme, "ip_address": address, "port": 0, "transport": "unix"})
        return rows

    async def _start_kafka(self, loop: asyncio.AbstractEventLoop) -> None:
        from .protocols.kafka.groups import GroupCoordinator, OffsetStore
        from .protocols.kafka.server import KafkaConfig, KafkaConnection, KafkaServer
        from .protocols.kafka.topics import TopicRegistry

        s = self.settings
        syncer = getattr(self.storage, "syncer", None)
        if syncer is None or self.core is None:
            # Topics are streams, and streams live in the durable store.
            log.warning("kafka listener off: Kafka topics need the durable store (durable_store)")
            return
        vhost = self.core.vhosts.get(s.kafka_vhost)
        if vhost is None:
            raise ValueError(f"kafka_vhost {s.kafka_vhost!r}: no such vhost")
        registry = TopicRegistry(vhost, syncer)
        registry.warn_unmigrated(s.data_dir / "kafka")
        offsets = OffsetStore(s.data_dir / "kafka" / "__consumer_offsets.jsonl", syncer)
        offsets.open()
        config = KafkaConfig(
            advertised_host=s.kafka_advertised_host or _connect_host(s.host),
            advertised_port=0,
            auto_create_topics=s.auto_create_topics,
            num_partitions=s.num_partitions,
            max_message_bytes=s.kafka_max_message_bytes,
            max_output=s.max_connection_output,
            sasl=s.kafka_sasl,
            loopback_users=tuple(s.loopback_users),
        )
        server = KafkaServer(registry, GroupCoordinator(offsets, loop), config)
        try:
            self.kafka_port = await self._listen(
                "kafka", lambda port: server.listen(s.host, port), s.kafka_port, default=9092
            )
            if self.kafka_port is None and not s.kafka_unix_socket:
                server.close_storage()
                return
            if s.kafka_unix_socket:
                # For local tools: Kafka clients (librdkafka, kafka-python, the JVM
                # client) only dial host:port, and Metadata still advertises the TCP
                # listener, so a client would leave the socket after bootstrap.
                await self._listen_unix("kafka", lambda: KafkaConnection(server), s.kafka_unix_socket)
        except BaseException:
            await server.close()  # (a listener that is up; nothing when none is)
            server.close_storage()
            raise
        self.kafka = server
        config.advertised_port = s.kafka_advertised_port or self.kafka_port or 0

    async def _start_stomp(self) -> None:
        from .protocols.stomp.server import StompConfig, StompConnection, StompServer

        s = self.settings
        assert self.core is not None
        config = StompConfig(
            max_headers=s.stomp_max_headers,
            max_header_line=s.stomp_max_header_line,
            max_header_bytes=s.stomp_max_header_bytes,
            max_body=s.max_message_size,
            max_output=s.max_connection_output,
            handshake_timeout=s.handshake_timeout,
            loopback_users=tuple(s.loopback_users),
            default_user=s.default_user,
            default_pass=s.default_pass,
        )
        server = StompServer(self.core, config)
        self.stomp_port = await self._listen(
            "stomp", lambda port: server.listen(s.host, port), s.stomp_port, default=61613
        )
        if self.stomp_port is None and not s.stomp_unix_socket:
            return
        self.stomp = server  # from here on stop() closes it, whatever fails below
        tls = self._tls_context()
        if tls is not None and self.stomp_port is not None:
            self.stomp_tls_port = await self._listen(
                "stomps", lambda port: server.listen(s.host, port, tls), s.stomp_tls_port
            )
        if s.stomp_unix_socket:
            await self._listen_unix("stomp", lambda: StompConnection(server), s.stomp_unix_socket)

    async def _start_mqtt(self, loop: asyncio.AbstractEventLoop) -> None:
        from .protocols.mqtt.retained import RetainedStore
        from .protocols.mqtt.server import MQTTConfig, MQTTServer
        from .protocols.mqtt.sessionstate import SessionStateStore
        from .protocols.mqtt.unix import UnixMQTTConnection
        from .storage.syncer import Syncer

        s = self.settings
        assert self.core is not None
        syncer = getattr(self.storage, "syncer", None)
        if syncer is None:  # no durable engine: the retained store still group-commits
            syncer = self._mqtt_syncer = Syncer(on_fatal=self._storage_fatal, loop=loop)
        retained = RetainedStore(
            s.data_dir / "mqtt" / "retained.jsonl" if s.durable_store else None, syncer
        )
        retained.open()
        state = SessionStateStore(
            s.data_dir / "mqtt" / "sessions.jsonl" if s.durable_store else None, syncer
        )
        state.open()
        config = MQTTConfig(
            vhost=s.mqtt_vhost,
            allow_anonymous=s.mqtt_allow_anonymous,
            max_packet_size=s.mqtt_max_packet_size,
            max_keep_alive=s.mqtt_max_keep_alive,
            handshake_timeout=s.handshake_timeout,
            max_output=s.max_connection_output,
            light_transport=s.mqtt_light_transport,
        )
        server = MQTTServer(self.core, config, retained, state)

        try:
            self.mqtt_port = await self._listen(
                "mqtt", lambda port: server.listen(s.host, port), s.mqtt_port, default=1883
            )
        except BaseException:
            retained.close()
            state.close()
            raise
        if self.mqtt_port is None and not s.mqtt_unix_socket:
            retained.close()
            state.close()
            return
        self.mqtt = server  # from here on stop() closes it (and its stores)
        tls = self._tls_context()
        if tls is not None and self.mqtt_port is not None:
            self.mqtt_tls_port = await self._listen(
                "mqtts", lambda port: server.listen(s.host, port, tls), s.mqtt_tls_port, default=8883
            )
        if s.mqtt_unix_socket:
            await self._listen_unix("mqtt", lambda: UnixMQTTConnection(server), s.mqtt_unix_socket)

    @property
    def exit_status(self) -> int:
        """What a process running this broker should exit with once it has stopped."""
        return EXIT_STORAGE_FAILURE if self.failure is not None else 0

    def _storage_fatal(self, exc: BaseException) -> None:
        if self.failure is not None:
            return
        self.failure = exc
        log.critical(
            "stopping: storage failure (%s); closing listeners, then exiting with status %d",
            exc,
            EXIT_STORAGE_FAILURE,
        )
        if self._loop is not None and self._stopping is None:
            self._stopping = self._loop.create_task(self.stop())

    async def _watch_resources(self) -> None:
        try:
            from .storage import memory
        except ImportError:
            return
        s = self.settings
        core = self.core
        assert core is not None
        total = memory.total_memory_bytes()
        while True:
            watermark = s.memory_high_watermark  # re-read: operators may change it live
            limit = int(watermark * total) if watermark <= 1 else int(watermark)
            try:
                core.set_alarm("memory", memory.rss_bytes() > limit)
                low_disk = memory.disk_free_bytes(s.data_dir) < s.disk_free_limit
                # A store whose write failed keeps the alarm up until it has recovered,
                # whatever statvfs says (EDQUOT, EIO, a limit of 0).
                failing = self.storage is not None and not self.storage.healthy
                core.set_alarm("disk", low_disk or failing)
            except OSError:
                log.exception("resource check failed")
            await asyncio.sleep(s.alarm_check_interval)

    async def stop(self) -> None:
        stopping = self._stopping
        if stopping is not None and stopping is not asyncio.current_task():
            await asyncio.shield(stopping)  # the fatal-failure stop is under way
            return
        if self._monitor is not None:
            self._monitor.cancel()
            self._monitor = None
        # Unix sockets first: no new connection arrives while each protocol closes its
        # own (their servers below close the connections these listeners accepted).
        for listener in self._unix_listeners:
            listener.close()  # removes the socket file
        self._unix_listeners.clear()
        self.unix_sockets.clear()
        if self.settings.inproc_name:
            from .transport import inproc

            await inproc.unregister(self.settings.inproc_name, self)
        if self.http is not None:
            await self.http.stop()
            self.http = None
        if self.amqp is not None:
            await self.amqp.close("storage failure" if self.failure is not None else "broker shutdown")
            self.amqp = None
            log.info("listeners closed")
        if self.stomp is not None:
            await self.stomp.close("storage failure" if self.failure is not None else "broker shutdown")
            self.stomp = None
        if self.mqtt is not None:
            await self.mqtt.close()  # closes its retained store before the syncer goes
            self.mqtt = None
        if self._mqtt_syncer is not None:
            self._mqtt_syncer.close()
            self._mqtt_syncer = None
        if self.kafka is not None:
            await self.kafka.close()
            self.kafka.close_storage()  # before the syncer it uses goes away
            self.kafka = None
        kafka_syncer = self._kafka_syncer
        if kafka_syncer is not None:
            kafka_syncer.close()
            self._kafka_syncer = None
        scheduler = getattr(self.core, "scheduler", None)
        if scheduler is not None:
            syncer = getattr(self.storage, "syncer", None)
            # before the syncer its log uses goes away; no clean marker after a failed fsync
            scheduler.close(clean=syncer is None or syncer.failure is None)
        if self.storage is not None:
            await self.storage.close()
            self.storage = None
        if self._stopped is not None:
            self._stopped.set()

    async def serve_forever(self) -> None:
        assert self._stopped is not None
        await self._stopped.wait()

    async def __aenter__(self) -> Broker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # --- thread-backed mode ------------------------------------------------------------

    def start_in_thread(self, timeout: float = 30.0) -> Broker:
        started = threading.Event()
        failure: list[BaseException] = []

        def run() -> None:
            loop = _new_loop(self.settings.use_uvloop)
            asyncio.set_event_loop(loop)

            async def main() -> None:
                try:
                    await self.start()
                except BaseException as exc:
                    failure.append(exc)
                    started.set()
                    return
                started.set()
                await self.serve_forever()

            try:
                loop.run_until_complete(main())
            finally:
                loop.close()

        self._thread = threading.Thread(target=run, name="baedal-broker", daemon=True)
        self._thread.start()
        if not started.wait(timeout):
            raise TimeoutError("broker did not start in time")
        if failure:
            raise failure[0]
        return self

    def stop_thread(self, timeout: float = 30.0) -> None:
        if self._thread is None or self._loop is None:
            return
        future = asyncio.run_coroutine_threadsafe(self.stop(), self._loop)
        future.result(timeout)
        self._thread.join(timeout)
        self._thread = None

    def call(self, fn: Any, *args: Any) -> Any:
        """Run ``fn(*args)`` on the broker's loop thread and return its result (tests, tools)."""
        assert self._loop is not None
        if self._thread is None:
            return fn(*args)

        async def run() -> Any:
            return fn(*args)

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(30)

    def __enter__(self) -> Broker:
        return self.start_in_thread()

    def __exit__(self, *exc: object) -> None:
        self.stop_thread()


def _connect_host(host: str) -> str:
    """An address clients can connect to for a listen address (IPv4 for a wildcard:
    librdkafka may resolve ``localhost`` to ``::1``)."""
    return host if host not in ("0.0.0.0", "::", "") else "127.0.0.1"


class _BoundSocketFile:
    """The HTTP side's Unix socket file, removed at stop (aiohttp closes the socket)."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._inode = None if address.startswith("@") else os.lstat(address).st_ino

    def close(self) -> None:
        if self._inode is None:
            return
        from .transport.unix import forget_renamed

        forget_renamed(os.path.abspath(self.address))
        try:
            if os.lstat(self.address).st_ino == self._inode:
                os.unlink(self.address)
        except FileNotFoundError:
            pass


def _new_loop(use_uvloop: bool) -> asyncio.AbstractEventLoop:
    if use_uvloop:
        try:
            import uvloop

            return uvloop.new_event_loop()
        except ImportError:
            pass
    return asyncio.new_event_loop()


def _fault_injection(spec: str | None) -> Callable[[int], None] | None:
    """The fsync replacement ``BAEDAL_FAULT_INJECT`` asks for (tests only; see above)."""
    if not spec:
        return None
    kind, _, count = spec.partition(":")
    if kind != "fsync-after" or not count.isdigit():
        raise ValueError(f"{FAULT_INJECT_ENV}={spec!r}: expected fsync-after:<count>")
    healthy = [int(count)]

    def fsync(fd: int) -> None:
        # Runs on the syncer's single worker thread: the counter needs no lock.
        if healthy[0] <= 0:
            raise OSError(errno.EIO, f"fsync failed ({FAULT_INJECT_ENV}={spec})")
        healthy[0] -= 1
        os.fsync(fd)

    log.warning("%s=%s: fault injection is on (tests only)", FAULT_INJECT_ENV, spec)
    return fsync


def _open_storage(core: BrokerCore, settings: Settings, on_fatal: Any) -> Any:
    try:
        from .storage.engine import StorageEngine
    except ImportError:
        log.warning("durable storage engine not available; durable queues are kept in memory")
        return None
    engine = StorageEngine(core, settings, on_fatal)
    engine.open()
    core.storage = engine
    return engine


def _open_scheduler(core: BrokerCore, settings: Settings, storage: Any) -> None:
    """Scheduled delivery (core/scheduler.py): its log under ``<data_dir>/scheduled``
    on the storage engine's syncer, or in memory without durable storage; jobs found
    on disk are re-armed now, overdue ones fire as soon as the loop runs."""
    from .core.scheduler import Scheduler
    from .storage.schedule_store import MemoryScheduleStore, ScheduleStore

    syncer = getattr(storage, "syncer", None)
    if syncer is not None:
        store: Any = ScheduleStore(settings.data_dir / "scheduled", syncer, segment_bytes=settings.segment_bytes)
    else:
        store = MemoryScheduleStore()
    scheduler = Scheduler(core, store)
    core.scheduler = scheduler  # type: ignore[attr-defined]
    scheduler.recover()
    scheduler.start()


def _open_http(broker: Broker) -> Any:
    try:
        from .protocols.http.server import HTTPServer
    except ImportError:
        log.warning("HTTP side not available")
        return None
    return HTTPServer(broker)
