"""Settings: defaults < TOML file < environment (BAEDAL_*) < command-line flags."""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 5672
    data_dir: Path = Path("./baedal-data")
    log_level: str = "info"
    log_format: str = "text"  # text | json
    http_host: str = "127.0.0.1"
    http_port: int | None = 15672  # None disables the HTTP side
    tls_port: int = 5671
    tls_cert: str | None = None
    tls_key: str | None = None
    max_message_size: int = 128 * 1024 * 1024
    frame_max: int = 131072
    channel_max: int = 2047
    heartbeat: int = 60
    handshake_timeout: float = 10.0
    # Bytes a connection may owe its peer before it is no longer read (see
    # protocols/amqp/connection.py, "Output bound").
    max_connection_output: int = 8 * 1024 * 1024
    default_user: str = "guest"
    default_pass: str = "guest"
    loopback_users: list[str] = field(default_factory=lambda: ["guest"])
    memory_high_watermark: float = 0.4
    disk_free_limit: int = 50 * 1024 * 1024
    alarm_check_interval: float = 1.0
    durable_store: bool = True
    segment_bytes: int = 8 * 1024 * 1024
    # Group commit may hold a sync job this long for consumers' acks, so a persistent
    # message acked meanwhile is never written (storage/syncer.py, "Holding a job");
    # 0 turns the hold off.  At most this much is added to a publisher confirm.
    sync_hold_ms: float = 5.0
    use_uvloop: bool = True
    # Delivery acknowledgement timeout in ms (RabbitMQ's consumer_timeout); "off" or 0
    # disables it.
    consumer_timeout: int | None = 1_800_000
    # Kafka listener ("off" disables).  An embedded Broker with port=0 gets an ephemeral
    # Kafka port too (app.py).  The advertised address defaults to the listen address.
    kafka_port: int | None = 9092
    kafka_advertised_host: str | None = None
    kafka_advertised_port: int | None = None
    auto_create_topics: bool = True
    num_partitions: int = 1
    kafka_max_message_bytes: int = 1_048_588  # Kafka's max.message.bytes default
    # STOMP listener ("off" disables; an embedded Broker with port=0 gets an ephemeral
    # STOMP port).  TLS on stomp_tls_port when tls_cert/tls_key are set (off by default).
    # Frame limits are checked by the codec before allocating (protocols/stomp/codec.py);
    # the body bound is max_message_size.
    stomp_port: int | None = 61613
    stomp_tls_port: int | None = None
    stomp_max_headers: int = 1000
    stomp_max_header_line: int = 10 * 1024
    stomp_max_header_bytes: int = 64 * 1024
    # MQTT listener ("off" disables; an embedded Broker with port=0 gets an ephemeral
    # MQTT port too).  Clients log in as Baedal users into ``mqtt_vhost``; without a
    # user name only when ``mqtt_allow_anonymous`` (as the default user).
    mqtt_port: int | None = 1883
    mqtt_tls_port: int | None = 8883  # served when tls_cert and tls_key are set
    mqtt_vhost: str = "/"
    mqtt_allow_anonymous: bool = False
    mqtt_max_packet_size: int = 16 * 1024 * 1024
    mqtt_max_keep_alive: int = 0  # 0: clients' keep-alive stands; else Server Keep Alive
    # Plain-TCP MQTT connections on one epoll per listener instead of an event-loop
    # transport each (transport/epoll.py; Linux; ~1 KB less per idle client).  TLS,
    # WebSocket and Unix-socket listeners always use the loop's transports.
    mqtt_light_transport: bool = True
    # IPC (transport/unix.py): the AMQP listener also serves this Unix socket, a path or a
    # Linux abstract name "@name"; the file gets unix_socket_mode (octal in files, the
    # environment and flags: "0660").  http_unix_socket does the same for the HTTP side.
    unix_socket: str | None = None
    unix_socket_mode: int = 0o660
    http_unix_socket: str | None = None
    # The same for STOMP, MQTT and Kafka (same mode, same authentication as their TCP
    # listeners; each serves its Unix socket even when its TCP port is off).  Kafka
    # clients only dial host:port: the Kafka socket is for local tools.
    stomp_unix_socket: str | None = None
    mqtt_unix_socket: str | None = None
    kafka_unix_socket: str | None = None
    # In-process transport (transport/inproc.py): the name "inproc://NAME" reaches this
    # broker from the same process; None registers nothing.
    inproc_name: str | None = None
    # Kafka topics are streams in this vhost (protocols/kafka/topics.py).
    kafka_vhost: str = "/"
    # Require SASL (PLAIN, SCRAM-SHA-256/512, against Baedal's users) on the Kafka
    # listener; off, anonymous Kafka clients have full access to kafka_vhost.
    kafka_sasl: bool = False


_FIELDS = {f.name: f for f in fields(Settings)}


def _coerce(name: str, value: Any) -> Any:
    default = getattr(Settings(), name)
    if value is None:
        return None
    if name == "data_dir":
        return Path(value)
    if name in (
        "kafka_port", "kafka_advertised_port", "stomp_port", "stomp_tls_port", "mqtt_port", "mqtt_tls_port"
    ) and str(value).lower() in (
        "", "none", "off", "false"
    ):
        return None  # (port 0 stays 0: an ephemeral port)
    if name in ("http_port", "consumer_timeout") and str(value).lower() in (
        "", "none", "off", "0", "false"
    ):
        return None
    if name == "unix_socket_mode" and isinstance(value, str):
        return int(value, 8)
    if isinstance(default, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("1", "true", "yes", "on")
    if name == "consumer_timeout":
        return int(value) if int(value) > 0 else None
    if isinstance(default, int) or name in (
        "http_port", "kafka_port", "kafka_advertised_port", "stomp_port", "stomp_tls_port", "mqtt_port", "mqtt_tls_port"
    ):
        return int(value)
    if isinstance(default, float):
        return float(value)
    if isinstance(default, list):
        return value if isinstance(value, list) else [v for v in str(value).split(",") if v]
    return value


def load_settings(config_file: str | os.PathLike[str] | None = None, flags: dict[str, Any] | None = None, environ: dict[str, str] | None = None) -> Settings:
    environ = dict(os.environ) if environ is None else environ
    values: dict[str, Any] = {}
    config_file = config_file or environ.get("BAEDAL_CONFIG")
    if config_file:
        with open(config_file, "rb") as fh:
            data = tomllib.load(fh)
        data = {**data.get("baedal", {}), **{k: v for k, v in data.items() if k != "baedal"}}
        for key, value in data.items():
            key = key.replace("-", "_")
            if key not in _FIELDS:
                raise ValueError(f"{config_file}: unknown setting '{key}'")
            values[key] = _coerce(key, value)
    for name in _FIELDS:
        env = environ.get("BAEDAL_" + name.upper())
        if env is not None:
            values[name] = _coerce(name, env)
    for name, value in (flags or {}).items():
        if value is not None:
            values[name] = _coerce(name, value)
    return Settings(**values)
