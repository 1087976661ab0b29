"""Command line of ``baedal perf`` and the standard scenario matrix S1–S6.

Flags follow RabbitMQ PerfTest where it has a short form (``-x`` producers, ``-y``
consumers, ``-s`` size, ``-r`` rate, ``-z`` time, ``-C``/``-D`` message counts, ``-c``
confirm window, ``-a`` auto-ack, ``-q`` prefetch, ``-A`` multi-ack-every, ``-t`` exchange
type, ``-e`` exchange, ``-u`` queue).  A ``--scenario`` presets a row of the matrix that
``shared/tools/amqp-load/run-amqp-bench.sh`` runs with the C tool; flags given explicitly
override the preset.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import dataclass, field, fields, replace
from typing import Any

from .client import parse_uri

EXCHANGE_TYPES = ("direct", "fanout", "topic", "headers")

# The matrix (same parameters as run-amqp-bench.sh, so results compare with amqp-load).
SCENARIOS: dict[str, dict[str, Any]] = {
    "S1": {"producers": 1, "consumers": 1, "size": 16, "auto_ack": True, "time": 10.0},
    "S2": {
        "producers": 1,
        "consumers": 1,
        "size": 16,
        "prefetch": 1000,
        "multi_ack_every": 100,
        "time": 10.0,
    },
    "S3": {
        "producers": 1,
        "consumers": 1,
        "size": 1024,
        "durable_queue": True,
        "persistent": True,
        "confirm": 1000,
        "prefetch": 1000,
        "multi_ack_every": 100,
        "time": 10.0,
    },
    # S4 runs in two phases (publish with no consumer, then drain); see runner.run_scenario_s4.
    "S4": {
        "producers": 1,
        "consumers": 0,
        "size": 16,
        "pmessages": 1_000_000,
        "prefetch": 1000,
        "multi_ack_every": 100,
        "idle": 10.0,
    },
    "S5": {
        "producers": 1,
        "consumers": 4,
        "queues": 4,
        "exchange_type": "fanout",
        "size": 16,
        "auto_ack": True,
        "time": 10.0,
    },
    "S6": {
        "producers": 1,
        "consumers": 1,
        "size": 16,
        "rate": 5000.0,
        "prefetch": 1000,
        "multi_ack_every": 100,
        "time": 10.0,
    },
}

SCENARIO_DESCRIPTIONS = {
    "S1": "1 producer + 1 consumer, transient, 16 B, auto-ack",
    "S2": "as S1, manual ack (multiple every 100), prefetch 1000",
    "S3": "durable queue, persistent 1 KB, confirms (window 1000), manual ack",
    "S4": "1,000,000 x 16 B published with no consumer, then drained",
    "S5": "fanout to 4 queues, one consumer each, 16 B, auto-ack",
    "S6": "fixed 5,000 msg/s, manual ack: publish -> deliver latency",
}


@dataclass
class Settings:
    uri: str = "amqp://guest:guest@127.0.0.1:5672/"
    producers: int = 1
    consumers: int = 1
    processes: int | None = None  # None = one per connection up to the CPU count; 0 = in-process
    size: int = 16
    rate: float = 0.0  # per producer, msg/s; 0 = unlimited
    time: float | None = None  # seconds of publishing (or consuming when there is no producer)
    pmessages: int | None = None  # per producer
    cmessages: int | None = None  # per consumer
    persistent: bool = False
    confirm: int = 0  # publisher confirm window; 0 = off
    auto_ack: bool = False
    prefetch: int = 0
    multi_ack_every: int = 1
    exchange_type: str | None = None  # None = default exchange for one queue, fanout for several
    exchange: str | None = None
    queue: str = "baedal-perf"
    queues: int = 1
    queue_args: dict[str, Any] = field(default_factory=dict)
    durable_queue: bool = False
    predeclared: bool = False
    keep_queues: bool = False
    batch: int = 200  # messages per write when unlimited
    idle: float = 5.0  # consumers give up this long after the last delivery once producers are done
    timeout: float | None = None  # hard limit for the whole run
    heartbeat: int = 0
    json: bool = False
    quiet: bool = False
    label: str = ""
    scenario: str | None = None

    @property
    def queue_names(self) -> list[str]:
        if self.queues == 1:
            return [self.queue]
        return [f"{self.queue}.{i}" for i in range(self.queues)]

    @property
    def hard_timeout(self) -> float:
        if self.timeout is not None:
            return self.timeout
        return (self.time + 60.0) if self.time else 300.0

    def worker_processes(self) -> int:
        if self.processes is not None:
            return self.processes
        connections = self.producers + self.consumers
        return max(1, min(connections, os.cpu_count() or 1))


class UsageError(ValueError):
    """Bad command line (exit status 2)."""


def _positive_int(text: str) -> int:
    value = int(text.replace("_", ""))
    if value < 0:
        raise argparse.ArgumentTypeError("must be >= 0")
    return value


def _json_table(text: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise argparse.ArgumentTypeError(f"not JSON: {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("must be a JSON object")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baedal perf",
        description="AMQP 0-9-1 load generator (in the spirit of RabbitMQ PerfTest); works against any broker.",
        epilog="scenarios: " + "; ".join(f"{k}: {v}" for k, v in SCENARIO_DESCRIPTIONS.items()),
    )
    # Every option defaults to None so a scenario preset can fill what was not given.
    add = parser.add_argument
    add("--uri", help="broker URI (amqp://guest:guest@127.0.0.1:5672/)")
    add(
        "--scenario",
        type=str.upper,
        choices=sorted(SCENARIOS),
        help="preset one row of the standard matrix",
    )
    add("-x", "--producers", type=_positive_int, help="producer connections (1)")
    add("-y", "--consumers", type=_positive_int, help="consumer connections (1)")
    add(
        "--processes",
        type=_positive_int,
        help="worker processes (default: one per connection up to the CPU count; 0 = run in this process)",
    )
    add(
        "-s",
        "--size",
        type=_positive_int,
        help="body size in bytes (16; >= 16 carries a send timestamp and id, >= 8 the timestamp)",
    )
    add("-r", "--rate", type=float, help="publish rate limit per producer, msg/s (0 = unlimited)")
    add("-z", "--time", type=float, help="seconds to publish (10 when no message count is given)")
    add("-C", "--pmessages", type=_positive_int, help="messages to publish, per producer")
    add("-D", "--cmessages", type=_positive_int, help="messages to consume, per consumer")
    add(
        "-f", "--persistent", action="store_true", default=None, help="publish with delivery_mode 2"
    )
    add(
        "-c",
        "--confirm",
        type=_positive_int,
        help="publisher confirms with at most N unconfirmed messages (0 = off)",
    )
    add("-a", "--auto-ack", action="store_true", default=None, help="consume with no-ack")
    add(
        "-q",
        "--prefetch",
        type=_positive_int,
        help="basic.qos prefetch count for manual ack (0 = unlimited)",
    )
    add(
        "-A",
        "--multi-ack-every",
        type=_positive_int,
        help="manual ack with multiple=true every N messages (1 = ack each one)",
    )
    add(
        "-t",
        "--exchange-type",
        choices=EXCHANGE_TYPES,
        help="publish to an exchange of this type (default: the default exchange for one queue, fanout for several)",
    )
    add("-e", "--exchange", help="exchange name (baedal-perf.<type>)")
    add("-u", "--queue", help="queue name (baedal-perf); with --queues N: NAME.0 .. NAME.N-1")
    add(
        "--queues",
        type=_positive_int,
        help="N queues, each bound to the exchange and each with its own consumer(s)",
    )
    add(
        "--queue-args",
        type=_json_table,
        help='queue.declare arguments as JSON, e.g. \'{"x-queue-type": "quorum"}\'',
    )
    add(
        "--durable-queue",
        action="store_true",
        default=None,
        help="declare durable queues (and exchange)",
    )
    add(
        "--predeclared",
        action="store_true",
        default=None,
        help="do not declare, delete or bind anything: the topology exists",
    )
    add(
        "--keep-queues",
        action="store_true",
        default=None,
        help="do not delete the queues at the end",
    )
    add("--batch", type=_positive_int, help="messages per socket write when unlimited (200)")
    add(
        "--idle",
        type=float,
        help="stop consuming this many seconds after the last delivery once producers are done (5)",
    )
    add("--timeout", type=float, help="hard limit for the run in seconds (time + 60, or 300)")
    add("--heartbeat", type=_positive_int, help="heartbeat seconds to negotiate (0 = off)")
    add(
        "--json",
        action="store_true",
        default=None,
        help="print the result as one JSON line on stdout (the table goes to stderr)",
    )
    add("--quiet", action="store_true", default=None, help="no per-second progress line")
    add("--label", help="copied into the JSON result")
    return parser


def resolve(namespace: argparse.Namespace) -> Settings:
    """Defaults, then the scenario preset, then the flags given explicitly."""
    values: dict[str, Any] = {}
    scenario = namespace.scenario
    if scenario:
        values.update(SCENARIOS[scenario])
        values["queue"] = f"baedal-perf-{scenario.lower()}"
        values["label"] = scenario
    known = {f.name for f in fields(Settings)}
    for key, value in vars(namespace).items():
        if value is not None and key in known:
            values[key] = value
    settings = Settings(**values)
    validate(settings)
    return settings


def validate(settings: Settings) -> None:
    try:
        parse_uri(settings.uri)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if settings.producers == 0 and settings.consumers == 0:
        raise UsageError("nothing to do: no producers and no consumers")
    if settings.queues < 1:
        raise UsageError("--queues must be at least 1")
    if settings.consumers and settings.consumers < settings.queues:
        raise UsageError(
            f"{settings.queues} queues need at least {settings.queues} consumers (one per queue)"
        )
    if settings.rate < 0:
        raise UsageError("--rate must be >= 0")
    if settings.time is not None and settings.time <= 0:
        raise UsageError("--time must be > 0")
    if settings.prefetch > 65535:
        raise UsageError("--prefetch must fit in 16 bits (<= 65535)")
    if settings.multi_ack_every < 1:
        settings.multi_ack_every = 1
    if settings.prefetch and settings.multi_ack_every > settings.prefetch:
        # Acking less often than the prefetch window would stall the consumer for good.
        settings.multi_ack_every = settings.prefetch
    if settings.batch < 1:
        settings.batch = 1
    if settings.exchange_type is None and settings.queues > 1:
        settings.exchange_type = "fanout"
    if settings.producers and settings.time is None and settings.pmessages is None:
        settings.time = 10.0
    if not settings.producers and settings.time is None and settings.cmessages is None:
        settings.time = 10.0
    if settings.scenario and settings.scenario not in SCENARIOS:
        raise UsageError(f"unknown scenario {settings.scenario}")


def parse_args(argv: list[str] | None) -> Settings:
    parser = build_parser()
    namespace = parser.parse_args(argv)
    return resolve(namespace)


def with_changes(settings: Settings, **changes: Any) -> Settings:
    return replace(settings, **changes)
