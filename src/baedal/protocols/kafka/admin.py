"""Kafka's admin and group-management APIs, mapped onto streams and the group table.

Topic configs are the stream's own settings, so AMQP, policies and Kafka see one value:

===================  ========================================  ============================
Kafka config         stream argument                           Kafka default when unset
===================  ========================================  ============================
retention.ms         ``x-max-age`` (``"<seconds>s"``; -1 =     -1 (forever)
                     unset; rounded up to whole seconds)
retention.bytes      ``x-max-length-bytes`` (-1 = unset)       -1 (no limit)
segment.bytes        ``x-stream-max-segment-size-bytes``       the stream log's segment size
max.message.bytes    ``x-kafka-max-message-bytes`` (a          the ``kafka_max_message_bytes``
                     Kafka-only argument, ignored by AMQP)     setting
cleanup.policy       none: only ``delete`` exists              delete (``compact`` is
                                                               INVALID_CONFIG)
===================  ========================================  ============================

A policy that sets ``max-age``/``max-length-bytes``/``stream-max-segment-size-bytes``
wins over the argument (core/stream.py), so DescribeConfigs reports the *effective*
value, with source TOPIC_CONFIG when an argument is set and DEFAULT_CONFIG otherwise.
A change is applied to every partition stream of the topic and stored with the queue
definition (it survives a restart).

Transactions are not served.  InitProducerId with a transactional id answers
TRANSACTIONAL_ID_AUTHORIZATION_FAILED, the one error every client treats as fatal there
(librdkafka retries INVALID_REQUEST for ever), so a transactional producer fails at once
with a clear error instead of hanging.  The other transactional APIs are decoded but not
advertised, and answer INVALID_REQUEST.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from kio.schema.errors import ErrorCode
from kio.static.constants import EntityType

from .codec import build, nested, schema

if TYPE_CHECKING:
    from .server import KafkaConnection
    from .topics import Partition

DESCRIBE_GROUPS, LIST_GROUPS, SASL_HANDSHAKE = 15, 16, 17
ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT = 24, 25, 26, 28
DESCRIBE_CONFIGS, SASL_AUTHENTICATE, DELETE_GROUPS = 32, 36, 42
INCREMENTAL_ALTER_CONFIGS, DESCRIBE_CLUSTER = 44, 60
TRANSACTION_APIS = (ADD_PARTITIONS_TO_TXN, ADD_OFFSETS_TO_TXN, END_TXN, TXN_OFFSET_COMMIT)

TOPIC_RESOURCE, BROKER_RESOURCE = 2, 4
CONFIG_SOURCE_TOPIC, CONFIG_SOURCE_DEFAULT = 1, 5
CONFIG_TYPE_STRING, CONFIG_TYPE_INT, CONFIG_TYPE_LONG, CONFIG_TYPE_LIST = 2, 3, 5, 7
SET, DELETE = 0, 1
MAX_MESSAGE_BYTES_ARGUMENT = "x-kafka-max-message-bytes"
NO_THROTTLE = 0

# name -> (stream argument or None, config type)
TOPIC_CONFIGS: dict[str, tuple[str | None, int]] = {
    "retention.ms": ("x-max-age", CONFIG_TYPE_LONG),
    "retention.bytes": ("x-max-length-bytes", CONFIG_TYPE_LONG),
    "segment.bytes": ("x-stream-max-segment-size-bytes", CONFIG_TYPE_INT),
    "max.message.bytes": (MAX_MESSAGE_BYTES_ARGUMENT, CONFIG_TYPE_INT),
    "cleanup.policy": (None, CONFIG_TYPE_LIST),
}
# Read-only facts a client may ask about (Kafka's names and what Baedal does).
FIXED_CONFIGS = {
    "message.timestamp.type": "CreateTime",
    "min.insync.replicas": "1",
    "compression.type": "producer",
}


class ConfigError(ValueError):
    pass


def _throttle() -> Any:
    import datetime

    return datetime.timedelta(0)


def topic_config_values(connection: KafkaConnection, partitions: list[Partition]) -> dict[str, tuple[str, bool]]:
    """name -> (effective value, set on the topic)."""
    stream = partitions[0].stream
    arguments = stream.arguments
    settings = stream.stream_settings
    max_age = settings.max_age
    max_bytes = settings.max_bytes
    max_message = arguments.get(MAX_MESSAGE_BYTES_ARGUMENT, connection.config.max_message_bytes)
    return {
        "retention.ms": (str(max_age * 1000 if max_age is not None else -1), "x-max-age" in arguments),
        "retention.bytes": (
            str(max_bytes if max_bytes is not None else -1),
            "x-max-length-bytes" in arguments,
        ),
        "segment.bytes": (
            str(stream.log.max_segment_bytes),
            "x-stream-max-segment-size-bytes" in arguments,
        ),
        "max.message.bytes": (str(max_message), MAX_MESSAGE_BYTES_ARGUMENT in arguments),
        "cleanup.policy": ("delete", False),
    }


def argument_for(name: str, value: str | None) -> tuple[str | None, Any]:
    """(stream argument, its value or None to remove) for a Kafka config being set."""
    if name not in TOPIC_CONFIGS:
        raise ConfigError(f"unknown or read-only topic config {name!r}")
    argument, _type = TOPIC_CONFIGS[name]
    if name == "cleanup.policy":
        if value is not None and value.strip() != "delete":
            raise ConfigError("cleanup.policy: only 'delete' is supported (streams are not compacted)")
        return None, None
    if value is None:
        return argument, None
    try:
        number = int(value)
    except ValueError:
        raise ConfigError(f"{name}: {value!r} is not an integer") from None
    if name in ("retention.ms", "retention.bytes") and number == -1:
        return argument, None
    if number < (1 if name != "retention.bytes" else 0):
        raise ConfigError(f"{name}: {number} is out of range")
    if name == "retention.ms":
        return argument, f"{math.ceil(number / 1000)}s"
    return argument, number


def apply_topic_arguments(partitions: list[Partition], changes: dict[str, Any]) -> None:
    """Set (value) or remove (None) stream arguments on every partition stream."""
    for partition in partitions:
        stream = partition.stream
        arguments = dict(stream.arguments)
        for key, value in changes.items():
            if value is None:
                arguments.pop(key, None)
            else:
                arguments[key] = value
        stream.arguments = arguments
        stream._apply_stream_policy()  # retention and segment size, policy still wins
        stream.vhost.broker.definitions_changed("queue", stream.vhost, stream)


# --- DescribeConfigs / IncrementalAlterConfigs -----------------------------------------


def describe_configs(connection: KafkaConnection, request: Any) -> Any:
    body = request.body
    cls = schema(DESCRIBE_CONFIGS, request.api_version, EntityType.response)
    result_cls = nested(cls, "results")
    config_cls = nested(result_cls, "configs")
    results = []
    for resource in body.resources:
        error, message, configs = ErrorCode.none, None, []
        wanted = set(resource.configuration_keys) if resource.configuration_keys is not None else None
        if resource.resource_type == TOPIC_RESOURCE:
            partitions = connection.registry.get(resource.resource_name)
            if not connection.may_see(resource.resource_name):
                error, message = ErrorCode.topic_authorization_failed, "no permission on the topic"
            elif partitions is None:
                error, message = ErrorCode.unknown_topic_or_partition, "no such topic"
            else:
                values = {
                    name: (value, explicit, False, TOPIC_CONFIGS[name][1])
                    for name, (value, explicit) in topic_config_values(connection, partitions).items()
                }
                for name, value in FIXED_CONFIGS.items():
                    values[name] = (value, False, True, CONFIG_TYPE_STRING)
                for name, (value, explicit, read_only, config_type) in values.items():
                    if wanted is not None and name not in wanted:
                        continue
                    configs.append(
                        build(
                            config_cls,
                            name=name,
                            value=value,
                            read_only=read_only,
                            is_default=not explicit,
                            config_source=CONFIG_SOURCE_TOPIC if explicit else CONFIG_SOURCE_DEFAULT,
                            is_sensitive=False,
                            synonyms=(),
                            config_type=config_type,
                            documentation=None,
                        )
                    )
        elif resource.resource_type == BROKER_RESOURCE:
            pass  # no broker configs are exposed: an empty list, as for an unset broker
        else:
            error, message = ErrorCode.invalid_request, "only topic and broker resources"
        results.append(
            build(
                result_cls,
                error_code=error,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
                configs=tuple(configs),
            )
        )
    return build(cls, throttle_time=_throttle(), results=tuple(results))


def incremental_alter_configs(connection: KafkaConnection, request: Any) -> Any:
    body = request.body
    cls = schema(INCREMENTAL_ALTER_CONFIGS, request.api_version, EntityType.response)
    result_cls = nested(cls, "responses")
    results = []
    for resource in body.resources:
        error, message = ErrorCode.none, None
        partitions = None
        if resource.resource_type != TOPIC_RESOURCE:
            error, message = ErrorCode.invalid_request, "only topic configs can be altered"
        elif not connection.may("configure", resource.resource_name):
            error, message = ErrorCode.topic_authorization_failed, "configure permission refused"
        else:
            partitions = connection.registry.get(resource.resource_name)
            if partitions is None:
                error, message = ErrorCode.unknown_topic_or_partition, "no such topic"
        changes: dict[str, Any] = {}
        if partitions is not None:
            try:
                for config in resource.configs:
                    if config.config_operation == SET:
                        argument, value = argument_for(config.name, config.value)
                    elif config.config_operation == DELETE:
                        argument, value = argument_for(config.name, None)
                    else:  # APPEND / SUBTRACT: only for list configs; cleanup.policy is fixed
                        raise ConfigError(f"operation {config.config_operation} on {config.name}")
                    if argument is not None:
                        changes[argument] = value
            except ConfigError as exc:
                error, message = ErrorCode.invalid_config, str(exc)
            if error is ErrorCode.none and changes and not body.validate_only:
                apply_topic_arguments(partitions, changes)
        results.append(
            build(
                result_cls,
                error_code=error,
                error_message=message,
                resource_type=resource.resource_type,
                resource_name=resource.resource_name,
            )
        )
    return build(cls, throttle_time=_throttle(), responses=tuple(results))


def config_changes_for_create(configs: Any) -> dict[str, Any]:
    """CreateTopics' configs as stream arguments (raises ``ConfigError``)."""
    changes: dict[str, Any] = {}
    for config in configs or ():
        argument, value = argument_for(config.name, config.value)
        if argument is not None and value is not None:
            changes[argument] = value
    return changes


# --- groups ------------------------------------------------------------------------------


def list_groups(connection: KafkaConnection, request: Any) -> Any:
    cls = schema(LIST_GROUPS, request.api_version, EntityType.response)
    group_cls = nested(cls, "groups")
    coordinator = connection.server.coordinator
    names = set(coordinator.groups) | {group for group, _t, _p in coordinator.offsets.committed}
    groups = []
    for name in sorted(names):
        group = coordinator.groups.get(name)
        groups.append(
            build(group_cls, group_id=name, protocol_type=group.protocol_type if group else "consumer")
        )
    return build(cls, throttle_time=_throttle(), error_code=ErrorCode.none, groups=tuple(groups))


def describe_groups(connection: KafkaConnection, request: Any) -> Any:
    cls = schema(DESCRIBE_GROUPS, request.api_version, EntityType.response)
    group_cls = nested(cls, "groups")
    member_cls = nested(group_cls, "members")
    coordinator = connection.server.coordinator
    described = []
    for name in request.body.groups:
        group = coordinator.groups.get(name)
        members: tuple[Any, ...] = ()
        state, protocol_type, protocol = "Dead", "", ""
        if group is not None:
            state = group.state.value
            protocol_type = group.protocol_type
            protocol = group.protocol or ""
            members = tuple(
                build(
                    member_cls,
                    member_id=m.member_id,
                    group_instance_id=None,
                    client_id=m.client_id,
                    client_host=getattr(m, "client_host", ""),
                    member_metadata=group.metadata_for(m) if group.protocol else b"",
                    member_assignment=m.assignment,
                )
                for m in group.members.values()
            )
            if not group.members:
                state = "Empty"
        elif any(owner == name for owner, _t, _p in coordinator.offsets.committed):
            state, protocol_type = "Empty", "consumer"
        described.append(
            build(
                group_cls,
                error_code=ErrorCode.none,
                group_id=name,
                group_state=state,
                protocol_type=protocol_type,
                protocol_data=protocol,
                members=members,
                authorized_operations=-2147483648,
            )
        )
    return build(cls, throttle_time=_throttle(), groups=tuple(described))


def delete_groups(connection: KafkaConnection, request: Any) -> tuple[Any, bool]:
    """(response, whether anything was deleted: then the answer waits for the fsync)."""
    cls = schema(DELETE_GROUPS, request.api_version, EntityType.response)
    result_cls = nested(cls, "results")
    coordinator = connection.server.coordinator
    results = []
    deleted = False
    for name in request.body.groups_names:
        group = coordinator.groups.get(name)
        has_offsets = any(owner == name for owner, _t, _p in coordinator.offsets.committed)
        if group is not None and group.members:
            error = ErrorCode.non_empty_group
        elif group is None and not has_offsets:
            error = ErrorCode.group_id_not_found
        else:
            error = ErrorCode.none
            coordinator.groups.pop(name, None)
            coordinator.offsets.delete_group(name)
            deleted = True
        results.append(build(result_cls, group_id=name, error_code=error))
    return build(cls, throttle_time=_throttle(), results=tuple(results)), deleted


# --- cluster, transactions ----------------------------------------------------------------


def describe_cluster(connection: KafkaConnection, request: Any, node_id: int, cluster_id: str) -> Any:
    cls = schema(DESCRIBE_CLUSTER, request.api_version, EntityType.response)
    broker_cls = nested(cls, "brokers")
    config = connection.config
    return build(
        cls,
        throttle_time=_throttle(),
        error_code=ErrorCode.none,
        error_message=None,
        cluster_id=cluster_id,
        controller_id=node_id,
        brokers=(
            build(
                broker_cls,
                broker_id=node_id,
                host=config.advertised_host,
                port=config.advertised_port,
                rack=None,
            ),
        ),
        cluster_authorized_operations=-2147483648,
    )


def transaction_refused(request: Any) -> Any:
    """Any transactional API: INVALID_REQUEST in every error field (not served)."""
    key = request.api_key
    cls = schema(key, request.api_version, EntityType.response)
    error = ErrorCode.invalid_request
    body = request.body
    if key == ADD_PARTITIONS_TO_TXN:
        topic_cls = nested(cls, "results_by_topic_v3_and_below")
        partition_cls = nested(topic_cls, "results_by_partition")
        return build(
            cls,
            throttle_time=_throttle(),
            results_by_topic_v3_and_below=tuple(
                build(
                    topic_cls,
                    name=topic.name,
                    results_by_partition=tuple(
                        build(partition_cls, partition_index=p, partition_error_code=error)
                        for p in topic.partitions
                    ),
                )
                for topic in body.v3_and_below_topics
            ),
        )
    if key == TXN_OFFSET_COMMIT:
        topic_cls = nested(cls, "topics")
        partition_cls = nested(topic_cls, "partitions")
        return build(
            cls,
            throttle_time=_throttle(),
            topics=tuple(
                build(
                    topic_cls,
                    name=topic.name,
                    partitions=tuple(
                        build(partition_cls, partition_index=p.partition_index, error_code=error)
                        for p in topic.partitions
                    ),
                )
                for topic in body.topics
            ),
        )
    return build(cls, throttle_time=_throttle(), error_code=error)
