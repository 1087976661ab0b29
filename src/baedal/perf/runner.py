"""The supervisor: topology, workers, the stop decision, and the numbers of a run.

Theory of operation
-------------------
1. ``declare_topology`` (one set-up connection): the exchange if any, each queue deleted
   and declared afresh (a backlog left by an earlier run would distort this one), bound
   so that *every* queue receives *every* message — so the expected number of deliveries
   is ``published × queues`` whatever the exchange type.
2. Roles (one connection each) are dealt to workers, producers and consumers interleaved
   so that with two processes on S1 the producer and the consumer get one each.
3. Every worker connects and reports ``ready``; then one ``go`` starts all producers at
   once, so set-up time never counts.
4. The supervisor polls the shared counters every 50 ms: progress once a second, and the
   stop decision — producers all done and every expected delivery counted, or no
   delivery for ``--idle`` seconds after that (the rest are reported lost), or a role
   failed, or the hard timeout passed.
5. ``stop``: consumers ack what they hold and every worker sends its final numbers.

Rates follow amqp-load so the two tools' numbers compare: publish rate = published /
(last producer end − first producer start), where a producer ends only after the broker
has confirmed (``--confirm``) or answered a synchronous method behind its last publish;
consume rate = received / (last delivery − first producer start), or from the first
consume-ok when nothing is published.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sys
import threading
import time
from array import array
from typing import Any, TextIO

from ..protocols.amqp import spec
from ..protocols.amqp.properties import BasicProperties, encode_properties
from . import report
from .client import AMQPError, Connection, parse_uri
from .options import Settings, with_changes
from .worker import (
    COUNT,
    DONE,
    FAILED,
    SLOTS,
    Control,
    Plan,
    Role,
    cpu_seconds,
    new_event_loop,
    process_main,
    run_worker,
)

POLL_SECONDS = 0.05
READY_TIMEOUT = 60.0
FINAL_TIMEOUT = 30.0

HEADERS_MATCH = {"baedal-perf": "load"}


def routing_for(
    settings: Settings,
) -> tuple[str, str, dict[str, Any] | None, dict[str, Any] | None]:
    """(exchange, publish routing key, binding arguments, message headers)."""
    kind = settings.exchange_type
    if kind is None:
        return "", settings.queue_names[0], None, None
    exchange = settings.exchange if settings.exchange is not None else f"baedal-perf.{kind}"
    if kind == "direct":
        return exchange, "perf", None, None
    if kind == "topic":
        return exchange, "perf.load", None, None
    if kind == "headers":
        return exchange, "", {"x-match": "all", **HEADERS_MATCH}, dict(HEADERS_MATCH)
    return exchange, "", None, None  # fanout


def binding_key(settings: Settings) -> str:
    return {"direct": "perf", "topic": "perf.#"}.get(settings.exchange_type or "", "")


def make_plan(settings: Settings) -> Plan:
    exchange, routing_key, _, headers = routing_for(settings)
    properties = encode_properties(
        BasicProperties(delivery_mode=2 if settings.persistent else None, headers=headers)
    )
    return Plan(
        settings=settings, exchange=exchange, routing_key=routing_key, properties=properties
    )


async def declare_topology(settings: Settings) -> None:
    exchange, _, binding_arguments, _ = routing_for(settings)
    connection = Connection("set-up")
    await connection.open(parse_uri(settings.uri))
    try:
        if exchange:
            await connection.call(
                spec.ExchangeDeclare(
                    exchange=exchange, type=settings.exchange_type, durable=settings.durable_queue
                ),
                spec.ExchangeDeclareOk,
            )
        for queue in settings.queue_names:
            await connection.call(spec.QueueDelete(queue=queue), spec.QueueDeleteOk)
            await connection.call(
                spec.QueueDeclare(
                    queue=queue, durable=settings.durable_queue, arguments=dict(settings.queue_args)
                ),
                spec.QueueDeclareOk,
            )
            if exchange:
                await connection.call(
                    spec.QueueBind(
                        queue=queue,
                        exchange=exchange,
                        routing_key=binding_key(settings),
                        arguments=binding_arguments or {},
                    ),
                    spec.QueueBindOk,
                )
    finally:
        await connection.close()


async def delete_topology(settings: Settings) -> None:
    exchange, _, _, _ = routing_for(settings)
    connection = Connection("clean-up")
    await connection.open(parse_uri(settings.uri))
    try:
        for queue in settings.queue_names:
            await connection.call(spec.QueueDelete(queue=queue), spec.QueueDeleteOk)
        if exchange and settings.exchange is None:
            await connection.call(spec.ExchangeDelete(exchange=exchange), spec.ExchangeDeleteOk)
    finally:
        await connection.close()


def make_roles(settings: Settings) -> list[Role]:
    queues = settings.queue_names
    roles = [Role(i, "producer", i, queues[0]) for i in range(settings.producers)]
    roles += [
        Role(settings.producers + i, "consumer", i, queues[i % len(queues)])
        for i in range(settings.consumers)
    ]
    return roles


def deal_roles(roles: list[Role], workers: int) -> list[list[Role]]:
    """Interleave producers and consumers, then deal round-robin to ``workers``."""
    producers = [r for r in roles if r.kind == "producer"]
    consumers = [r for r in roles if r.kind == "consumer"]
    order: list[Role] = []
    for i in range(max(len(producers), len(consumers))):
        if i < len(producers):
            order.append(producers[i])
        if i < len(consumers):
            order.append(consumers[i])
    count = max(1, workers)
    return [share for share in (order[w::count] for w in range(count)) if share]


class Supervisor:
    def __init__(self, settings: Settings, progress: TextIO | None = sys.stderr) -> None:
        self.settings = settings
        self.progress = None if settings.quiet else progress
        self.plan = make_plan(settings)
        self.roles = make_roles(settings)
        self.latency = report.LatencyStats()
        self.ready: set[int] = set()
        self.finals: dict[int, tuple[list[dict[str, Any]], float]] = {}
        self.failures: list[str] = []
        self._changed: asyncio.Event | None = None

    # -- messages from workers ------------------------------------------------------------

    def on_message(self, message: tuple[Any, ...]) -> None:
        kind = message[0]
        if kind == "latency":
            self.latency.add(message[2])
        elif kind == "ready":
            self.ready.add(message[1])
        elif kind == "failed":
            self.failures.append(f"worker {message[1]}: {message[2]}")
        elif kind == "final":
            self.finals[message[1]] = (message[2], message[3])
        if self._changed is not None:
            self._changed.set()

    async def _wait_for(self, predicate: Any, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not predicate():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            assert self._changed is not None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(remaining, 0.25))
            except TimeoutError:
                pass
        return True

    # -- the run ------------------------------------------------------------------------

    async def run(self) -> dict[str, Any]:
        settings = self.settings
        loop = asyncio.get_running_loop()
        self._changed = asyncio.Event()
        n_workers = settings.worker_processes()
        shares = deal_roles(self.roles, n_workers)
        slots = len(self.roles) * SLOTS
        processes: list[Any] = []
        pipes: list[Any] = []
        local_controls: list[Control] = []
        local_tasks: list[asyncio.Future[None]] = []
        if n_workers == 0:
            counters: Any = array("q", [0] * slots)
            for worker_id, share in enumerate(shares):
                control = Control(self.on_message)
                local_controls.append(control)
                local_tasks.append(
                    asyncio.ensure_future(
                        run_worker(worker_id, self.plan, share, counters, control)
                    )
                )
        else:
            context = multiprocessing.get_context("spawn")
            counters = context.RawArray("q", slots)
            for worker_id, share in enumerate(shares):
                parent_end, child_end = context.Pipe()
                process = context.Process(
                    target=process_main,
                    args=(worker_id, self.plan, share, counters, child_end),
                    name=f"baedal-perf-worker-{worker_id}",
                    daemon=True,
                )
                process.start()
                child_end.close()
                processes.append(process)
                pipes.append(parent_end)
                threading.Thread(
                    target=self._read_pipe,
                    args=(loop, parent_end, worker_id),
                    name=f"perf-pipe-{worker_id}",
                    daemon=True,
                ).start()

        def send(message: tuple[Any, ...]) -> None:
            for control in local_controls:
                control.receive(message)
            for pipe in pipes:
                try:
                    pipe.send(message)
                except OSError:
                    pass

        errors: list[str] = []
        t_go = t_stop = time.monotonic_ns()
        cpu_before = cpu_seconds()
        try:
            all_ready = await self._wait_for(
                lambda: (
                    len(self.ready) == len(shares)
                    or bool(self.failures)
                    or self._workers_died(processes)
                ),
                READY_TIMEOUT,
            )
            if not all_ready:
                errors.append("workers did not get ready in time")
            if self.failures or not all_ready or self._workers_died(processes):
                errors.extend(self.failures)
                send(("stop",))
            else:
                t_go = time.monotonic_ns()
                cpu_before = cpu_seconds()
                send(("go", t_go))
                errors.extend(await self._supervise(counters, t_go, processes))
                send(("stop",))
            t_stop = time.monotonic_ns()
            got_all = await self._wait_for(
                lambda: len(self.finals) == len(self.ready), FINAL_TIMEOUT
            )
            if not got_all:
                errors.append("some workers sent no final report")
            errors.extend(f for f in self.failures if f not in errors)
        finally:
            if local_tasks:
                await asyncio.wait(local_tasks, timeout=FINAL_TIMEOUT)
            for process in processes:
                await loop.run_in_executor(None, process.join, 5.0)
                if process.is_alive():
                    process.terminate()
            for pipe in pipes:
                pipe.close()
        supervisor_cpu = cpu_seconds() - cpu_before
        return self._result(t_go, t_stop, errors, supervisor_cpu, local=n_workers == 0)

    def _read_pipe(self, loop: asyncio.AbstractEventLoop, pipe: Any, worker_id: int) -> None:
        """Thread: blocking reads of one worker's pipe, handed to the loop.

        (Not ``add_reader``: the loop would make the fd non-blocking and a large message
        could then be read half-way, see ``worker.process_main``.)
        """
        while True:
            try:
                message = pipe.recv()
            except (EOFError, OSError):
                break
            try:
                loop.call_soon_threadsafe(self.on_message, message)
            except RuntimeError:  # the loop is closed: the run is over
                return
            if message[0] == "final":
                return
        try:
            loop.call_soon_threadsafe(self._worker_gone, worker_id)
        except RuntimeError:
            pass

    def _worker_gone(self, worker_id: int) -> None:
        if worker_id not in self.finals:
            self.failures.append(f"worker {worker_id} exited without a final report")
        if self._changed is not None:
            self._changed.set()

    @staticmethod
    def _workers_died(processes: list[Any]) -> bool:
        return any(p.exitcode is not None for p in processes)

    async def _supervise(self, counters: Any, t_go: int, processes: list[Any]) -> list[str]:
        """Poll the counters: progress once a second, and decide when the run is over."""
        settings = self.settings
        producers = [r.role_id * SLOTS for r in self.roles if r.kind == "producer"]
        consumers = [r.role_id * SLOTS for r in self.roles if r.kind == "consumer"]
        every_role = [r.role_id * SLOTS for r in self.roles]
        hard_deadline = t_go + int(settings.hard_timeout * 1e9)
        idle_ns = int(settings.idle * 1e9)
        next_tick = t_go + 1_000_000_000
        tick_at, tick_published, tick_delivered = t_go, 0, 0
        previous_delivered = 0
        last_activity = t_go
        producers_done_at = 0
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = time.monotonic_ns()
            snapshot = counters[:]
            published = sum(snapshot[base + COUNT] for base in producers)
            delivered = sum(snapshot[base + COUNT] for base in consumers)
            if delivered != previous_delivered:
                previous_delivered = delivered
                last_activity = now
            if now >= next_tick:
                seconds = (now - tick_at) / 1e9
                self._print_progress(
                    (now - t_go) / 1e9,
                    (published - tick_published) / seconds,
                    (delivered - tick_delivered) / seconds,
                    published,
                    delivered,
                )
                tick_at, tick_published, tick_delivered = now, published, delivered
                next_tick += 1_000_000_000
            if any(snapshot[base + FAILED] for base in every_role):
                return []  # the roles' own errors are in their results
            if self.failures or self._workers_died(processes):
                return []
            if now > hard_deadline:
                return [f"hard timeout after {settings.hard_timeout:.0f} s"]
            consumers_reached_count = bool(settings.cmessages) and all(
                snapshot[base + COUNT] >= settings.cmessages for base in consumers
            )
            if producers:
                if not all(snapshot[base + DONE] for base in producers):
                    continue
                if not producers_done_at:
                    producers_done_at = now
                if (
                    not consumers
                    or delivered >= published * settings.queues
                    or consumers_reached_count
                ):
                    return []
                if now - max(last_activity, producers_done_at) > idle_ns:
                    return []
            else:
                if settings.time and now - t_go >= settings.time * 1e9:
                    return []
                if consumers_reached_count or now - last_activity > idle_ns:
                    return []

    def _print_progress(
        self,
        elapsed: float,
        publish_rate: float,
        consume_rate: float,
        published: int,
        delivered: int,
    ) -> None:
        p50, p99 = self.latency.take_interval()
        if self.progress is None:
            return
        backlog = None
        if self.settings.producers and self.settings.consumers:
            backlog = max(0, published * self.settings.queues - delivered)
        self.progress.write(
            report.progress_line(elapsed, publish_rate, consume_rate, p50, p99, backlog) + "\n"
        )
        self.progress.flush()

    # -- numbers ------------------------------------------------------------------------

    def _result(
        self, t_go: int, t_stop: int, errors: list[str], supervisor_cpu: float, local: bool
    ) -> dict[str, Any]:
        settings = self.settings
        roles: list[dict[str, Any]] = []
        worker_cpu = 0.0
        for results, cpu in self.finals.values():
            roles.extend(results)
            worker_cpu += cpu
        producers = [r for r in roles if r["kind"] == "producer"]
        consumers = [r for r in roles if r["kind"] == "consumer"]
        for r in roles:
            if r.get("error"):
                errors.append(f"{r['kind']} {r['index']}: {r['error']}")
        published = sum(r["published"] for r in producers)
        confirmed = sum(r["confirmed"] for r in producers)
        nacked = sum(r["nacked"] for r in producers)
        returned = sum(r["returned"] for r in producers)
        received = sum(r["received"] for r in consumers)
        starts = [r["t_start"] for r in producers if r["t_start"]]
        ends = [r["t_end"] for r in producers if r["t_end"]]
        p_start = min(starts) if starts else 0
        p_end = max(ends) if ends else 0
        pub_s = (p_end - p_start) / 1e9 if p_start and p_end > p_start else 0.0
        lasts = [r["t_last"] for r in consumers if r["t_last"]]
        c_last = max(lasts) if lasts else 0
        if producers:
            c0 = p_start
        else:
            consumer_starts = [r["t_start"] for r in consumers if r["t_start"]]
            c0 = min(consumer_starts) if consumer_starts else 0
        recv_s = (c_last - c0) / 1e9 if c0 and c_last > c0 else 0.0
        sent = [r["t_last_sent"] for r in producers if r["t_last_sent"]]
        drain_s = (c_last - max(sent)) / 1e9 if sent and c_last > max(sent) else 0.0
        lost = 0
        if producers and consumers:
            lost = published * settings.queues - received
            if settings.cmessages and received >= settings.cmessages * len(consumers):
                lost = 0
            if lost > 0:
                errors.append(f"{lost} messages not delivered")
            elif lost < 0:
                errors.append(f"{-lost} extra deliveries")
        if nacked:
            errors.append(f"{nacked} publishes nacked")
        if returned:
            errors.append(f"{returned} publishes returned unroutable")
        wall_s = (t_stop - t_go) / 1e9
        tool_cpu = supervisor_cpu if local else supervisor_cpu + worker_cpu
        address = parse_uri(settings.uri)
        return {
            "tool": "baedal-perf",
            "label": settings.label,
            "scenario": settings.scenario,
            "uri": str(address),
            "producers": settings.producers,
            "consumers": settings.consumers,
            "processes": settings.worker_processes(),
            "queues": settings.queues,
            "exchange_type": settings.exchange_type,
            "size": settings.size,
            "persistent": settings.persistent,
            "durable": settings.durable_queue,
            "confirm": settings.confirm,
            "auto_ack": settings.auto_ack,
            "prefetch": settings.prefetch,
            "multi_ack_every": settings.multi_ack_every,
            "rate_limit": settings.rate,
            "time": settings.time,
            "pmessages": settings.pmessages,
            "cmessages": settings.cmessages,
            "published": published,
            "confirmed": confirmed,
            "nacked": nacked,
            "returned": returned,
            "pub_s": round(pub_s, 3),
            "pub_rate": round(published / pub_s) if pub_s else 0,
            "received": received,
            "recv_s": round(recv_s, 3),
            "recv_rate": round(received / recv_s) if recv_s else 0,
            "drain_s": round(drain_s, 3),
            "lost": lost,
            "redelivered": sum(r["redelivered"] for r in consumers),
            "lat_us": self.latency.summary(),
            "tool_cpu_s": round(tool_cpu, 3),
            "tool_cpu_pct": round(100.0 * tool_cpu / wall_s, 1) if wall_s > 0 else None,
            "wall_s": round(wall_s, 3),
            "ok": not errors,
            "errors": "; ".join(dict.fromkeys(errors)),
        }


async def run_phase(
    settings: Settings, declare: bool, cleanup: bool, progress: TextIO | None = sys.stderr
) -> dict[str, Any]:
    if declare:
        await declare_topology(settings)
    try:
        result = await Supervisor(settings, progress).run()
    finally:
        if cleanup:
            try:
                await delete_topology(settings)
            except (AMQPError, OSError, TimeoutError) as exc:
                if progress is not None:
                    progress.write(f"clean-up failed: {exc}\n")
    return result


async def run_settings(settings: Settings, progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    if settings.scenario == "S4":
        return await run_scenario_s4(settings, progress)
    declare = not settings.predeclared
    cleanup = (
        declare and not settings.keep_queues and settings.producers > 0 and settings.consumers > 0
    )
    return await run_phase(settings, declare, cleanup, progress)


async def run_scenario_s4(settings: Settings, progress: TextIO | None) -> dict[str, Any]:
    """S4: publish N with no consumer (queue kept), then drain it; in and out rates apart."""
    count = (settings.pmessages or 1_000_000) * max(1, settings.producers)
    publish = with_changes(
        settings,
        consumers=0,
        cmessages=None,
        time=None,
        label=f"{settings.label}-publish".strip("-"),
    )
    if progress is not None and not settings.quiet:
        progress.write(f"S4 phase 1: publish {count:,} messages, no consumer\n")
    first = await run_phase(
        publish, declare=not settings.predeclared, cleanup=False, progress=progress
    )
    drain = with_changes(
        settings,
        producers=0,
        consumers=max(1, settings.consumers),
        cmessages=-(-count // max(1, settings.consumers)),
        time=None,
        label=f"{settings.label}-drain".strip("-"),
    )
    if progress is not None and not settings.quiet:
        progress.write(f"S4 phase 2: drain {count:,} messages\n")
    second = await run_phase(
        drain,
        declare=False,
        cleanup=not settings.keep_queues and not settings.predeclared,
        progress=progress,
    )
    lost = first["published"] - second["received"]
    errors = [e for e in (first["errors"], second["errors"]) if e]
    if lost > 0:
        errors.append(f"{lost} messages not drained")
    return {
        "tool": "baedal-perf",
        "label": settings.label,
        "scenario": "S4",
        "uri": first["uri"],
        "phases": {"publish": first, "drain": second},
        "published": first["published"],
        "received": second["received"],
        "pub_rate": first["pub_rate"],
        "recv_rate": second["recv_rate"],
        "lost": lost,
        "lat_us": None,
        "tool_cpu_s": round(first["tool_cpu_s"] + second["tool_cpu_s"], 3),
        "tool_cpu_pct": round(
            100.0
            * (first["tool_cpu_s"] + second["tool_cpu_s"])
            / max(1e-9, first["wall_s"] + second["wall_s"]),
            1,
        ),
        "wall_s": round(first["wall_s"] + second["wall_s"], 3),
        "ok": not errors,
        "errors": "; ".join(errors),
    }


def run(settings: Settings, progress: TextIO | None = sys.stderr) -> dict[str, Any]:
    """Run synchronously (own event loop, uvloop when available)."""
    with asyncio.Runner(loop_factory=new_event_loop) as runner:
        return runner.run(run_settings(settings, progress))
