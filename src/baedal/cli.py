"""Command line: ``baedal serve``, ``baedal perf``, ``baedal ctl``."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
import time
from typing import Any

from . import __version__
from .config import load_settings


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


def setup_logging(level: str, fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _raise_fd_limit() -> None:
    """A broker holds one descriptor per connection: take the hard limit (as rabbitmq-server does)."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, ValueError, OSError):
        pass


def _serve(args: argparse.Namespace) -> int:
    flags = {
        "host": args.host,
        "port": args.port,
        "data_dir": args.data_dir,
        "log_level": args.log_level,
        "http_port": args.http_port,
        "http_host": args.http_host,
        "consumer_timeout": args.consumer_timeout,
        "sync_hold_ms": args.sync_hold_ms,
        "kafka_port": args.kafka_port,
        "mqtt_port": args.mqtt_port,
        "mqtt_light_transport": args.mqtt_light_transport,
        "kafka_advertised_host": args.kafka_advertised_host,
        "kafka_advertised_port": args.kafka_advertised_port,
        "stomp_port": args.stomp_port,
        "unix_socket": args.unix_socket,
        "unix_socket_mode": args.unix_socket_mode,
        "http_unix_socket": args.http_unix_socket,
        "stomp_unix_socket": args.stomp_unix_socket,
        "mqtt_unix_socket": args.mqtt_unix_socket,
        "kafka_unix_socket": args.kafka_unix_socket,
        "kafka_sasl": True if args.kafka_sasl else None,
    }
    settings = load_settings(args.config, flags)
    setup_logging(settings.log_level, settings.log_format)
    _raise_fd_limit()
    from .app import Broker, _new_loop

    broker = Broker(settings)
    loop = _new_loop(settings.use_uvloop)
    asyncio.set_event_loop(loop)

    async def main() -> None:
        started = time.monotonic()
        await broker.start()
        print(f"baedal {__version__} listening on amqp://{settings.host}:{broker.port}", flush=True)
        for address in broker.unix_sockets:
            print(f"baedal listening on {address}", flush=True)
        if broker.tls_port:
            print(f"baedal listening on amqps://{settings.host}:{broker.tls_port}", flush=True)
        if broker.kafka_bootstrap:
            print(f"baedal Kafka on {broker.kafka_bootstrap}", flush=True)
        if broker.stomp_port:
            print(f"baedal STOMP on {settings.host}:{broker.stomp_port}", flush=True)
        if broker.mqtt_port is not None:
            print(f"baedal MQTT on port {broker.mqtt_port}", flush=True)
        if broker.mqtt_tls_port is not None:
            print(f"baedal MQTT over TLS on port {broker.mqtt_tls_port}", flush=True)
        if broker.http_url:
            print(f"baedal HTTP on {broker.http_url}", flush=True)
        print(f"data directory {settings.data_dir.resolve()} (ready in {time.monotonic() - started:.2f}s)", flush=True)
        report = getattr(broker.storage, "recovery_report", None)
        if report:
            print(
                f"recovered {report['queues']} durable queue(s), {report['messages']} message(s); "
                f"{report['unclean_stores']} store(s) after an unclean shutdown, "
                f"{report['lost_bytes']} byte(s) of torn or damaged data dropped",
                flush=True,
            )
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        # Either a signal or the broker stopping itself (a fatal storage failure).
        signalled = loop.create_task(stop.wait())
        stopped = loop.create_task(broker.serve_forever())
        await asyncio.wait((signalled, stopped), return_when=asyncio.FIRST_COMPLETED)
        signalled.cancel()
        stopped.cancel()
        if stop.is_set():
            logging.getLogger("baedal").info("shutting down")
        await broker.stop()

    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    if broker.exit_status:
        logging.getLogger("baedal").critical(
            "exiting with status %d after a storage failure: %s", broker.exit_status, broker.failure
        )
    return broker.exit_status


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="baedal", description="Baedal message broker")
    parser.add_argument("--version", action="version", version=f"baedal {__version__}")
    sub = parser.add_subparsers(dest="command")
    serve = sub.add_parser("serve", help="run the broker")
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1; env BAEDAL_HOST)")
    serve.add_argument("--port", type=int, help="AMQP port (default 5672; env BAEDAL_PORT)")
    serve.add_argument("--data-dir", help="data directory (default ./baedal-data; env BAEDAL_DATA_DIR)")
    serve.add_argument("--config", help="TOML configuration file (env BAEDAL_CONFIG)")
    serve.add_argument("--log-level", help="debug, info, warning, error (env BAEDAL_LOG_LEVEL)")
    serve.add_argument("--http-port", help="HTTP port for the management API and console (default 15672, 'off' disables)")
    serve.add_argument("--http-host", help="HTTP address (default 127.0.0.1)")
    serve.add_argument(
        "--consumer-timeout",
        help="delivery acknowledgement timeout in ms (default 1800000; 'off' disables; "
        "env BAEDAL_CONSUMER_TIMEOUT)",
    )
    serve.add_argument(
        "--sync-hold-ms",
        help="ms a group commit may wait for consumers' acks, so a persistent message acked "
        "meanwhile is never written (default 5; 0 disables; env BAEDAL_SYNC_HOLD_MS)",
    )
    serve.add_argument(
        "--kafka-port", help="Kafka port (default 9092, 'off' disables; env BAEDAL_KAFKA_PORT)"
    )
    serve.add_argument(
        "--mqtt-port", help="MQTT port (default 1883, 'off' disables; env BAEDAL_MQTT_PORT)"
    )
    serve.add_argument(
        "--mqtt-light-transport",
        help="serve plain-TCP MQTT connections on the light epoll transport: on (default on "
        "Linux) or off (the event loop's transports; env BAEDAL_MQTT_LIGHT_TRANSPORT)",
    )
    serve.add_argument(
        "--kafka-advertised-host", help="host Kafka clients are told to connect to (default: --host)"
    )
    serve.add_argument(
        "--kafka-advertised-port", help="port Kafka clients are told to connect to (default: the Kafka port)"
    )
    serve.add_argument(
        "--stomp-port", help="STOMP port (default 61613, 'off' disables; env BAEDAL_STOMP_PORT)"
    )
    serve.add_argument(
        "--unix-socket",
        help="also serve AMQP on this Unix socket: a path, or @name for a Linux abstract "
        "name (env BAEDAL_UNIX_SOCKET)",
    )
    serve.add_argument(
        "--unix-socket-mode", help="permissions of the socket file, octal (default 0660)"
    )
    serve.add_argument("--http-unix-socket", help="also serve HTTP on this Unix socket")
    for protocol, name in (("stomp", "STOMP"), ("mqtt", "MQTT"), ("kafka", "Kafka (for local tools)")):
        serve.add_argument(
            f"--{protocol}-unix-socket",
            help=f"also serve {name} on this Unix socket: a path or @name, mode --unix-socket-mode "
            f"(env BAEDAL_{protocol.upper()}_UNIX_SOCKET)",
        )
    serve.add_argument(
        "--kafka-sasl", action="store_true",
        help="require SASL (PLAIN or SCRAM-SHA-256/512) with a Baedal user on the Kafka listener (env BAEDAL_KAFKA_SASL)",
    )
    serve.set_defaults(func=_serve)
    sub.add_parser("perf", help="AMQP load generator (baedal perf --help)", add_help=False)
    sub.add_parser("ctl", help="operate a running broker over HTTP (baedal ctl --help)", add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "perf":
        from .perf import main as perf_main

        return perf_main(argv[1:])
    if argv and argv[0] == "ctl":
        from .ctl import main as ctl_main

        return ctl_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        args = parser.parse_args(["serve", *argv])
    result: Any = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
