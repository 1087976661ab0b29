"""Producers and consumers, and the worker that runs a share of them in one event loop.

Theory of operation
-------------------
A run is split into *roles* (one AMQP connection each: a producer or a consumer).  The
supervisor (``runner``) hands each worker a list of roles; a worker is either its own
process (``process_main``, the default: the tool must not be the bottleneck, and one
Python process saturates one core) or a task in the supervisor's loop (``--processes 0``).

Worker ↔ supervisor protocol (the same messages whether a pipe or a direct call carries
them)::

    worker → ("ready", worker_id) | ("failed", worker_id, text)
    supervisor → ("go", t_go_ns)          every producer starts publishing
    worker → ("latency", worker_id, {µs: count})      once a second, deliveries since the last
    supervisor → ("stop",)                consumers ack what they hold, everyone closes
    worker → ("final", worker_id, [role results], cpu_seconds)

Live counters do not travel as messages: each role owns ``SLOTS`` integers in a shared
array (``counters``) that it overwrites as it goes, and the supervisor polls them.  Writes
are single aligned 64-bit stores of values that only grow, so no lock is needed.

Hot paths: a producer builds a batch of messages from its ``PublishTemplate`` (one
``bytes`` concatenation and one clock read per message) and writes the batch with one
``transport.write``, then yields to the loop once.  A consumer does its work in the
connection's ``on_deliveries`` hook, once per received chunk; there is no task or future
per message anywhere.
"""

from __future__ import annotations

import asyncio
import resource
import struct
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from ..protocols.amqp import spec
from .client import (
    STAMP,
    AMQPError,
    ClientFrameReader,
    Connection,
    PublishTemplate,
    ack_frame,
    parse_uri,
)
from .options import Settings

# Per-role slots in the shared counter array.
SLOTS = 4
COUNT = 0  # published (producer) / delivered (consumer)
CONFIRMED = 1  # producer: confirmed + nacked; consumer: acked
DONE = 2  # 1 once the role finished its work (producer: published and synced)
FAILED = 3  # 1 once the role failed

_STAMP_PACK = STAMP.pack
_STAMP_TIME_PACK = struct.Struct("<q").pack
_clock = time.monotonic_ns


@dataclass(frozen=True)
class Role:
    role_id: int  # index into the counter array (/ SLOTS)
    kind: str  # "producer" | "consumer"
    index: int  # producer or consumer number
    queue: str  # consumer: the queue it consumes; producer: the queue for the final sync


@dataclass(frozen=True)
class Plan:
    """Everything a worker needs, picklable."""

    settings: Settings
    exchange: str
    routing_key: str
    properties: bytes


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Producer:
    def __init__(self, plan: Plan, role: Role, counters: Any) -> None:
        self.plan = plan
        self.role = role
        self.counters = counters
        self.base = role.role_id * SLOTS
        self.connection = Connection(f"producer {role.index}")
        self.template: PublishTemplate | None = None
        self.published = 0
        self.confirmed = 0  # acks (the tags at or below _floor plus those in _above)
        self.nacked = 0
        self.returned = 0
        self._floor = 0
        self._above: set[int] = set()
        self._confirm_waiter: asyncio.Future[None] | None = None
        self.t_start = 0
        self.t_end = 0
        self.t_last_sent = 0
        self.error: str | None = None

    async def setup(self) -> None:
        settings = self.plan.settings
        connection = self.connection
        await connection.open(parse_uri(settings.uri), heartbeat=settings.heartbeat)
        if settings.confirm:
            await connection.call(spec.ConfirmSelect(), spec.ConfirmSelectOk)
        connection.on_method = self._on_method
        self.template = PublishTemplate(
            1,
            self.plan.exchange,
            self.plan.routing_key,
            self.plan.properties,
            settings.size,
            connection.frame_max,
        )

    # -- confirms -----------------------------------------------------------------------

    def _on_method(self, channel: int, method: spec.Method) -> None:
        if isinstance(method, spec.BasicAck | spec.BasicNack):
            settled = self._settle(method.delivery_tag, method.multiple)
            if isinstance(method, spec.BasicNack):
                self.nacked += settled
            else:
                self.confirmed += settled
            self.counters[self.base + CONFIRMED] = self.confirmed + self.nacked
            waiter = self._confirm_waiter
            if waiter is not None and not waiter.done():
                waiter.set_result(None)
        elif isinstance(method, spec.BasicReturn):
            self.returned += 1

    def _settle(self, tag: int, multiple: bool) -> int:
        """Mark ``tag`` (and with ``multiple`` every tag below it) settled; return how many were new."""
        floor = self._floor
        above = self._above
        if multiple:
            if tag <= floor:
                return 0
            settled_above = [t for t in above if t <= tag] if above else []
            for t in settled_above:
                above.discard(t)
            newly = tag - floor - len(settled_above)
            floor = tag
        else:
            if tag <= floor or tag in above:
                return 0
            newly = 1
            if tag == floor + 1:
                floor = tag
            else:
                above.add(tag)
        while floor + 1 in above:
            floor += 1
            above.discard(floor)
        self._floor = floor
        return newly

    @property
    def outstanding(self) -> int:
        return self.published - self.confirmed - self.nacked

    async def _wait_confirms(self) -> None:
        self._confirm_waiter = asyncio.get_running_loop().create_future()
        try:
            await self._confirm_waiter
        finally:
            self._confirm_waiter = None

    # -- publishing ---------------------------------------------------------------------

    async def run(self, t_go: int, stop: asyncio.Event) -> None:
        settings = self.plan.settings
        connection = self.connection
        template = self.template
        assert template is not None
        counters = self.counters
        slot = self.base + COUNT
        head, tail = template.head, template.tail
        stamp_size = template.stamp_size
        pack = _STAMP_PACK
        pack_time = _STAMP_TIME_PACK
        clock = _clock
        write = connection.write
        id_base = self.role.index << 48
        batch = settings.batch
        window = settings.confirm
        rate = settings.rate
        limit = settings.pmessages
        deadline = t_go + int(settings.time * 1e9) if settings.time else 0
        seq = 0
        sleep = asyncio.sleep
        self.t_start = t0 = clock()
        try:
            while not stop.is_set():
                if connection.error is not None:
                    raise connection.error
                n = batch
                if limit is not None:
                    n = min(n, limit - seq)
                    if n <= 0:
                        break
                if window:
                    space = window - (seq - self.confirmed - self.nacked)
                    if space <= 0:
                        await self._wait_confirms()
                        continue
                    if space < n:
                        n = space
                if rate:
                    now = clock()
                    due = int((now - t0) * rate / 1e9) + 1 - seq
                    if due <= 0:
                        # Sleep at least 1 ms: shorter sleeps spin (uvloop rounds timers to ms),
                        # the same trade as amqp-load's --tick-us.
                        await sleep(max(0.001, (t0 + (seq * 1e9) / rate - now) / 1e9))
                        if deadline and clock() >= deadline:
                            break
                        continue
                    if due < n:
                        n = due
                if stamp_size == 16:
                    frames = [head + pack(clock(), id_base | i) + tail for i in range(seq, seq + n)]
                elif stamp_size == 8:
                    frames = [head + pack_time(clock()) + tail for _ in range(n)]
                else:
                    frames = [head + tail] * n
                write(b"".join(frames))
                seq += n
                self.published = seq
                counters[slot] = seq
                if deadline and clock() >= deadline:
                    break
                if connection._can_write is not None:
                    await connection.drain()
                else:
                    await sleep(0)
            self.t_last_sent = clock()
            await self._finish(stop)
        except Exception as exc:  # any failure ends this producer and is reported, never swallowed
            self.error = str(exc) or type(exc).__name__
            counters[self.base + FAILED] = 1
        finally:
            self.published = seq
            counters[slot] = seq
            self.t_end = clock()
            counters[self.base + DONE] = 1

    async def _finish(self, stop: asyncio.Event) -> None:
        """Make sure the broker has taken every message before the clock stops."""
        connection = self.connection
        if self.plan.settings.confirm:
            while self.outstanding > 0 and not stop.is_set():
                if connection.error is not None:
                    raise connection.error
                await asyncio.wait_for(self._wait_confirms(), self.plan.settings.hard_timeout)
            return
        # A synchronous method on the same channel is answered only after every earlier
        # publish on that channel was handled (what amqp-load does too).
        if self.plan.exchange:
            await connection.call(
                spec.ExchangeDeclare(exchange=self.plan.exchange, passive=True),
                spec.ExchangeDeclareOk,
            )
        elif self.role.queue:
            await connection.call(
                spec.QueueDeclare(queue=self.role.queue, passive=True), spec.QueueDeclareOk
            )

    def result(self) -> dict[str, Any]:
        return {
            "kind": "producer",
            "index": self.role.index,
            "published": self.published,
            "confirmed": self.confirmed,
            "nacked": self.nacked,
            "returned": self.returned,
            "t_start": self.t_start,
            "t_end": self.t_end,
            "t_last_sent": self.t_last_sent,
            "error": self.error
            or (str(self.connection.error) if self.connection.error and not self.t_end else None),
        }


class Consumer:
    def __init__(self, plan: Plan, role: Role, counters: Any) -> None:
        self.plan = plan
        self.role = role
        self.counters = counters
        self.base = role.role_id * SLOTS
        self.connection = Connection(f"consumer {role.index}")
        settings = plan.settings
        self.manual_ack = not settings.auto_ack
        self.ack_every = max(1, settings.multi_ack_every)
        self.acked_tag = 0
        self.delivered = 0
        self.t_start = 0
        self.t_first = 0
        self.t_last = 0
        self.error: str | None = None

    async def setup(self) -> None:
        settings = self.plan.settings
        connection = self.connection
        await connection.open(parse_uri(settings.uri), heartbeat=settings.heartbeat)
        if self.manual_ack and settings.prefetch:
            await connection.call(spec.BasicQos(prefetch_count=settings.prefetch), spec.BasicQosOk)
        connection.on_deliveries = self._on_deliveries
        await connection.call(
            spec.BasicConsume(
                queue=self.role.queue,
                consumer_tag=f"baedal-perf-{self.role.index}",
                no_ack=settings.auto_ack,
            ),
            spec.BasicConsumeOk,
        )
        self.t_start = _clock()

    def _on_deliveries(self, reader: ClientFrameReader) -> None:
        now = _clock()
        if not self.t_first:
            self.t_first = now
        self.t_last = now
        self.delivered = reader.delivered
        self.counters[self.base + COUNT] = reader.delivered
        if self.manual_ack:
            last = reader.last_delivery_tag
            every = self.ack_every
            acked = self.acked_tag
            if last - acked >= every:
                # Delivery tags on a channel are consecutive, so "every N messages" is
                # "every N tags": one ack frame per N, all written at once.
                multiple = every > 1
                frames = []
                while last - acked >= every:
                    acked += every
                    frames.append(ack_frame(acked, multiple))
                self.connection.write(b"".join(frames))
                self.acked_tag = acked
                self.counters[self.base + CONFIRMED] = acked

    def take_latencies(self) -> list[int]:
        reader = self.connection.reader
        latencies = reader.latencies
        reader.latencies = []
        return latencies

    async def finish(self) -> None:
        """Ack what is held (so closing does not requeue it), then close."""
        reader = self.connection.reader
        if (
            self.manual_ack
            and reader.last_delivery_tag > self.acked_tag
            and self.connection.error is None
        ):
            self.connection.write(ack_frame(reader.last_delivery_tag, True))
            self.acked_tag = reader.last_delivery_tag
        self.counters[self.base + DONE] = 1

    def result(self) -> dict[str, Any]:
        reader = self.connection.reader
        return {
            "kind": "consumer",
            "index": self.role.index,
            "queue": self.role.queue,
            "received": reader.delivered,
            "redelivered": reader.redelivered,
            "unstamped": reader.unstamped,
            "t_start": self.t_start,
            "t_first": self.t_first,
            "t_last": self.t_last,
            "error": self.error,
        }


def coarsen(counts: Counter[int]) -> dict[int, int]:
    """Round latencies (µs) down to 3 significant binary digits' worth (as HdrHistogram keeps
    them: 1/2048 relative precision), so a second of deliveries is a few thousand keys."""
    out: dict[int, int] = {}
    get = out.get
    for value, count in counts.items():
        if value >= 2048:
            shift = value.bit_length() - 11
            value = (value >> shift) << shift
        out[value] = get(value, 0) + count
    return out


class Control:
    """The worker's side of the supervisor protocol (see the module docstring)."""

    def __init__(self, report: Callable[[tuple[Any, ...]], None]) -> None:
        self.report = report
        self.go = asyncio.Event()
        self.stop = asyncio.Event()
        self.t_go = 0

    def receive(self, message: tuple[Any, ...]) -> None:
        if message[0] == "go":
            self.t_go = message[1]
            self.go.set()
        elif message[0] == "stop":
            self.go.set()
            self.stop.set()


async def run_worker(
    worker_id: int, plan: Plan, roles: Sequence[Role], counters: Any, control: Control
) -> None:
    producers = [Producer(plan, r, counters) for r in roles if r.kind == "producer"]
    consumers = [Consumer(plan, r, counters) for r in roles if r.kind == "consumer"]
    everyone: list[Producer | Consumer] = [*producers, *consumers]
    try:
        await asyncio.gather(*(role.setup() for role in everyone))
    except (AMQPError, OSError, TimeoutError) as exc:
        control.report(("failed", worker_id, f"set-up: {exc or type(exc).__name__}"))
        await asyncio.gather(
            *(role.connection.close() for role in everyone), return_exceptions=True
        )
        return
    control.report(("ready", worker_id))
    await control.go.wait()
    tasks = [asyncio.ensure_future(p.run(control.t_go, control.stop)) for p in producers]

    def send_latencies() -> None:
        merged: list[int] = []
        for consumer in consumers:
            merged += consumer.take_latencies()
        if merged:
            control.report(("latency", worker_id, coarsen(Counter(merged))))

    async def watch_consumers() -> None:
        # Report just before each whole second after "go", when the supervisor prints.
        tick = control.t_go + 900_000_000
        while True:
            await asyncio.sleep(max(0.0, (tick - _clock()) / 1e9))
            tick += 1_000_000_000
            send_latencies()
            for consumer in consumers:
                if consumer.connection.error is not None and consumer.error is None:
                    consumer.error = str(consumer.connection.error)
                    counters[consumer.base + FAILED] = 1

    ticker = asyncio.ensure_future(watch_consumers()) if consumers else None
    await control.stop.wait()
    if ticker is not None:
        ticker.cancel()
    if tasks:
        # The producers stop themselves (time or count); a stop before that is an abort.
        await asyncio.wait(tasks, timeout=5.0)
        for task in tasks:
            task.cancel()
    for consumer in consumers:
        if consumer.connection.error is not None and consumer.error is None:
            consumer.error = str(consumer.connection.error)
        await consumer.finish()
    send_latencies()
    await asyncio.gather(*(role.connection.close() for role in everyone), return_exceptions=True)
    control.report(("final", worker_id, [role.result() for role in everyone], cpu_seconds()))


def new_event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


def process_main(
    worker_id: int, plan: Plan, roles: Sequence[Role], counters: Any, pipe: Any
) -> None:
    """Entry point of a worker process (multiprocessing, spawn context).

    The pipe is read by a thread with blocking ``recv``: handing its fd to the event
    loop (``add_reader``) would make it non-blocking, and a ``Connection.send`` of a
    message bigger than the pipe buffer then fails half-way with EAGAIN.
    """

    async def main() -> None:
        loop = asyncio.get_running_loop()
        control = Control(pipe.send)

        def read_pipe() -> None:
            while True:
                try:
                    message = pipe.recv()
                except (EOFError, OSError):
                    # The supervisor is gone: stop rather than publish forever.
                    loop.call_soon_threadsafe(control.receive, ("stop",))
                    return
                loop.call_soon_threadsafe(control.receive, message)
                if message[0] == "stop":
                    return

        threading.Thread(target=read_pipe, name="perf-control", daemon=True).start()
        await run_worker(worker_id, plan, roles, counters, control)

    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        try:
            runner.run(main())
        except KeyboardInterrupt:
            pass
        except Exception as exc:  # report, do not leave the supervisor waiting
            try:
                pipe.send(("failed", worker_id, f"worker crashed: {exc!r}"))
            except OSError:
                pass
