"""Kafka SASL SCRAM-SHA-256/512 and RabbitMQ-style permissions on the Kafka listener,
driven by confluent-kafka (librdkafka), kafka-python and aiokafka against a real Baedal,
plus raw kio requests where an exact error code is asserted."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.errors import KafkaError as AioKafkaError
from confluent_kafka import Consumer, Producer
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import KafkaError as PyKafkaError
from kafka.record.memory_records import MemoryRecordsBuilder

from baedal.app import Broker
from kafka_raw import RawKafka

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")

MECHANISMS = ["SCRAM-SHA-256", "SCRAM-SHA-512"]
PRODUCE, FETCH, LIST_OFFSETS, METADATA, OFFSET_COMMIT = 0, 1, 2, 3, 8
SASL_HANDSHAKE, CREATE_TOPICS, DELETE_TOPICS, SASL_AUTHENTICATE = 17, 19, 20, 36
TOPIC_AUTHORIZATION_FAILED, SASL_AUTHENTICATION_FAILED = 29, 58


def start_broker(data_dir: Path, **settings: Any) -> Broker:
    broker = Broker(host="127.0.0.1", port=0, http_port=0, data_dir=data_dir, kafka_sasl=True, **settings)
    broker.start_in_thread()
    return broker


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    running = start_broker(tmp_path)
    try:
        core = running.core
        assert core is not None
        running.call(lambda: core.add_user("alice", "alice-pw"))
        running.call(lambda: core.set_permission("alice", "/"))
        # May see, write, read and create only topics starting with "own-".
        running.call(lambda: core.add_user("limited", "limited-pw"))
        running.call(lambda: core.set_permission("limited", "/", "^own-", "^own-", "^own-"))
        running.call(lambda: core.add_user("stranger", "stranger-pw"))  # no permission on "/"
        yield running
    finally:
        running.stop_thread()


# -- confluent-kafka ---------------------------------------------------------------------


def confluent(broker: Broker, mechanism: str, user: str, password: str, **extra: Any) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.kafka_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanisms": mechanism,
        "sasl.username": user,
        "sasl.password": password,
        **extra,
    }


def confluent_round_trip(broker: Broker, mechanism: str, user: str, password: str, topic: str) -> list[bytes]:
    producer = Producer(confluent(broker, mechanism, user, password, acks="all"))
    for i in range(5):
        producer.produce(topic, key=b"k%d" % i, value=b"%s-%d" % (mechanism.encode(), i))
    assert producer.flush(15) == 0
    consumer = Consumer(
        confluent(broker, mechanism, user, password, **{"group.id": f"g-{topic}", "auto.offset.reset": "earliest"})
    )
    values: list[bytes] = []
    try:
        consumer.subscribe([topic])
        for _ in range(100):
            message = consumer.poll(0.5)
            if message is None:
                if len(values) == 5:
                    break
                continue
            assert message.error() is None, message.error()
            values.append(message.value())
            if len(values) == 5:
                break
    finally:
        consumer.close()
    return values


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_kafka_produces_and_consumes_with_scram(broker: Broker, mechanism: str) -> None:
    topic = f"confluent-{mechanism.lower()}"
    assert confluent_round_trip(broker, mechanism, "alice", "alice-pw", topic) == [
        b"%s-%d" % (mechanism.encode(), i) for i in range(5)
    ]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_confluent_kafka_with_a_wrong_scram_password_gets_an_authentication_error(
    broker: Broker, mechanism: str
) -> None:
    errors: list[Any] = []
    producer = Producer(
        confluent(broker, mechanism, "alice", "wrong", error_cb=errors.append, **{"message.timeout.ms": 3000})
    )
    producer.produce("refused", value=b"x")
    producer.flush(5)
    assert any(e.name() == "_AUTHENTICATION" for e in errors), errors
    assert any("invalid credentials" in e.str() for e in errors), errors


# -- kafka-python ------------------------------------------------------------------------


def kafka_python(broker: Broker, mechanism: str, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": broker.kafka_bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python_produces_and_consumes_with_scram(broker: Broker, mechanism: str) -> None:
    topic = f"kafka-python-{mechanism.lower()}"
    producer = KafkaProducer(acks="all", **kafka_python(broker, mechanism, "alice", "alice-pw"))
    try:
        for i in range(5):
            producer.send(topic, value=b"v%d" % i).get(timeout=15)
    finally:
        producer.close()
    consumer = KafkaConsumer(
        topic, auto_offset_reset="earliest", consumer_timeout_ms=10_000,
        **kafka_python(broker, mechanism, "alice", "alice-pw"),
    )
    try:
        values = [record.value for _, record in zip(range(5), consumer, strict=False)]
    finally:
        consumer.close()
    assert values == [b"v%d" % i for i in range(5)]


@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_kafka_python_with_a_wrong_scram_password_is_refused(
    broker: Broker, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    # kafka-python logs the broker's SaslAuthenticate error and, with no broker it can
    # authenticate to, gives up bootstrapping.
    with pytest.raises(PyKafkaError):
        KafkaProducer(bootstrap_timeout_ms=3000, **kafka_python(broker, mechanism, "alice", "wrong"))
    failures = [r.getMessage() for r in caplog.records if "SaslAuthenticationFailedError" in r.getMessage()
                or "invalid credentials" in r.getMessage()]
    assert failures and "invalid credentials" in failures[0]


def test_kafka_python_sees_topic_authorization_failed_for_a_topic_it_may_not_read(broker: Broker) -> None:
    from kafka.errors import TopicAuthorizationFailedError

    producer = KafkaProducer(acks="all", **kafka_python(broker, "SCRAM-SHA-512", "limited", "limited-pw"))
    try:
        producer.send("own-fine", value=b"ok").get(timeout=15)  # allowed by the regexes
        with pytest.raises(TopicAuthorizationFailedError):
            producer.send("forbidden", value=b"no").get(timeout=15)
    finally:
        producer.close(timeout=2)


# -- aiokafka ----------------------------------------------------------------------------


def aiokafka(broker: Broker, mechanism: str, user: str, password: str) -> dict[str, Any]:
    return {
        "bootstrap_servers": broker.kafka_bootstrap,
        "security_protocol": "SASL_PLAINTEXT",
        "sasl_mechanism": mechanism,
        "sasl_plain_username": user,
        "sasl_plain_password": password,
    }


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_aiokafka_produces_and_consumes_with_scram(tmp_path: Path, mechanism: str) -> None:
    async with Broker(port=0, data_dir=tmp_path, kafka_sasl=True) as broker:
        assert broker.core is not None
        broker.core.add_user("alice", "alice-pw")
        broker.core.set_permission("alice", "/")
        topic = f"aiokafka-{mechanism.lower()}"
        producer = AIOKafkaProducer(acks="all", **aiokafka(broker, mechanism, "alice", "alice-pw"))
        await producer.start()
        try:
            for i in range(5):
                await producer.send_and_wait(topic, b"a%d" % i)
        finally:
            await producer.stop()
        consumer = AIOKafkaConsumer(
            topic, auto_offset_reset="earliest", **aiokafka(broker, mechanism, "alice", "alice-pw")
        )
        await consumer.start()
        try:
            values: list[bytes] = []
            while len(values) < 5:
                batches = await consumer.getmany(timeout_ms=5000)
                assert batches, "no records within 5 s"
                for records in batches.values():
                    values.extend(r.value for r in records)
        finally:
            await consumer.stop()
        assert values == [b"a%d" % i for i in range(5)]


@pytest.mark.parametrize("mechanism", MECHANISMS)
async def test_aiokafka_with_a_wrong_scram_password_is_refused(
    tmp_path: Path, mechanism: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with Broker(port=0, data_dir=tmp_path, kafka_sasl=True) as broker:
        assert broker.core is not None
        broker.core.add_user("alice", "alice-pw")
        broker.core.set_permission("alice", "/")
        producer = AIOKafkaProducer(request_timeout_ms=5000, **aiokafka(broker, mechanism, "alice", "wrong"))
        with pytest.raises(AioKafkaError):
            await producer.start()
        await producer.stop()
        # aiokafka logs the broker's answer before giving up bootstrapping.
        assert any(
            "[Error 58] SaslAuthenticationFailed" in r.getMessage() and "invalid credentials" in r.getMessage()
            for r in caplog.records
        )


# -- users from the management API and definitions ------------------------------------------


def http(broker: Broker, method: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{broker.http_url}{path}", data=data, method=method)
    request.add_header("Authorization", "Basic " + base64.b64encode(b"guest:guest").decode())
    request.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(request, timeout=10) as response:
        payload = response.read()
    return json.loads(payload) if payload else None


def test_a_user_created_through_the_management_api_authenticates_with_scram(broker: Broker) -> None:
    http(broker, "PUT", "/api/users/bob", {"password": "bob-pw", "tags": ""})
    http(broker, "PUT", "/api/permissions/%2F/bob", {"configure": ".*", "write": ".*", "read": ".*"})
    assert confluent_round_trip(broker, "SCRAM-SHA-512", "bob", "bob-pw", "from-http")[:1] == [
        b"SCRAM-SHA-512-0"
    ]
    # A new password replaces the SCRAM credentials: the old one no longer works.
    http(broker, "PUT", "/api/users/bob", {"password": "bob-pw-2", "tags": ""})
    with ScramKafka(broker) as raw:
        assert raw.scram("SCRAM-SHA-256", "bob", "bob-pw") == SASL_AUTHENTICATION_FAILED
        assert raw.closed_by_peer()
    with ScramKafka(broker) as raw:
        assert raw.scram("SCRAM-SHA-256", "bob", "bob-pw-2") == 0


def test_definitions_export_and_import_carry_scram_credentials(broker: Broker, tmp_path: Path) -> None:
    exported = http(broker, "GET", "/api/definitions")
    alice = next(u for u in exported["users"] if u["name"] == "alice")
    assert set(alice["scram_credentials"]) == set(MECHANISMS)
    assert alice["scram_credentials"]["SCRAM-SHA-256"]["iterations"] == 4096
    other = start_broker(tmp_path / "other")
    try:
        http(other, "POST", "/api/definitions", exported)
        with ScramKafka(other) as raw:
            assert raw.scram("SCRAM-SHA-512", "alice", "alice-pw") == 0
        # A definitions file from before SCRAM (hash only): PLAIN works, SCRAM does not.
        old_style = {
            "users": [{k: v for k, v in u.items() if k != "scram_credentials"} | {"name": "legacy"}
                      for u in exported["users"] if u["name"] == "alice"],
            "permissions": [{"user": "legacy", "vhost": "/", "configure": ".*", "write": ".*", "read": ".*"}],
        }
        http(other, "POST", "/api/definitions", old_style)
        with ScramKafka(other) as raw:
            assert raw.plain("legacy", "alice-pw") == 0
        with ScramKafka(other) as raw:
            assert raw.scram("SCRAM-SHA-256", "legacy", "alice-pw") == SASL_AUTHENTICATION_FAILED
    finally:
        other.stop_thread()


def test_scram_credentials_survive_a_restart(tmp_path: Path) -> None:
    first = start_broker(tmp_path)
    try:
        assert first.core is not None
        first.call(lambda: first.core.add_user("carol", "carol-pw"))  # type: ignore[union-attr]
        first.call(lambda: first.core.set_permission("carol", "/"))  # type: ignore[union-attr]
    finally:
        first.stop_thread()
    second = start_broker(tmp_path)
    try:
        with ScramKafka(second) as raw:
            assert raw.scram("SCRAM-SHA-256", "carol", "carol-pw") == 0
    finally:
        second.stop_thread()


# -- raw requests: exact error codes --------------------------------------------------------


class ScramKafka(RawKafka):
    """The tests' raw Kafka connection (kio), with a SCRAM client written out here."""

    def __init__(self, broker: Broker) -> None:
        assert broker.kafka_port is not None
        super().__init__(broker.kafka_port)

    def __enter__(self) -> ScramKafka:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def authenticate(self, auth_bytes: bytes) -> Any:
        return self.request(SASL_AUTHENTICATE, 1, auth_bytes=auth_bytes)

    def handshake(self, mechanism: str) -> int:
        answer = self.request(SASL_HANDSHAKE, 1, mechanism=mechanism)
        assert set(answer.mechanisms) == {"PLAIN", *MECHANISMS}
        return int(answer.error_code.value)

    def plain(self, user: str, password: str) -> int:
        assert self.handshake("PLAIN") == 0
        return int(self.authenticate(b"\0%s\0%s" % (user.encode(), password.encode())).error_code.value)

    def scram(self, mechanism: str, user: str, password: str) -> int:
        """0 once the server's signature checked out, else the failing answer's code."""
        assert self.handshake(mechanism) == 0
        digest = {"SCRAM-SHA-256": "sha256", "SCRAM-SHA-512": "sha512"}[mechanism]
        bare = f"n={user},r=rawclientnonce42"
        answer = self.authenticate(f"n,,{bare}".encode())
        if answer.error_code.value:
            return int(answer.error_code.value)
        server_first = bytes(answer.auth_bytes).decode()
        fields = dict(part.split("=", 1) for part in server_first.split(","))
        assert fields["r"].startswith("rawclientnonce42") and len(fields["r"]) > 20
        salted = hashlib.pbkdf2_hmac(digest, password.encode(), base64.b64decode(fields["s"]), int(fields["i"]))
        client_key = hmac.digest(salted, b"Client Key", digest)
        without_proof = f"c=biws,r={fields['r']}"
        auth_message = f"{bare},{server_first},{without_proof}".encode()
        signature = hmac.digest(hashlib.new(digest, client_key).digest(), auth_message, digest)
        proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature, strict=True))).decode()
        self.last_client_final = f"{without_proof},p={proof}".encode()
        answer = self.authenticate(self.last_client_final)
        if answer.error_code.value:
            assert answer.error_message
            return int(answer.error_code.value)
        server_key = hmac.digest(salted, b"Server Key", digest)
        expected = b"v=" + base64.b64encode(hmac.digest(server_key, auth_message, digest))
        assert bytes(answer.auth_bytes) == expected  # the server knows the credential too
        return 0

    def metadata(self, topics: list[str] | None, create: bool = False) -> dict[str, int]:
        from kio.schema.metadata.v8.request import MetadataRequestTopic

        answer = self.request(
            METADATA, 8,
            topics=None if topics is None else tuple(MetadataRequestTopic(name=t) for t in topics),
            allow_auto_topic_creation=create,
            include_cluster_authorized_operations=False,
            include_topic_authorized_operations=False,
        )
        return {t.name: int(t.error_code.value) for t in answer.topics}

    def produce(self, topic: str, value: bytes) -> int:
        from kio.schema.produce.v8.request import PartitionProduceData, TopicProduceData

        builder = MemoryRecordsBuilder(2, 0, 1 << 20)
        builder.append(1_700_000_000_000, None, value, [])
        builder.close()
        answer = self.request(
            PRODUCE, 8, transactional_id=None, acks=-1, timeout=datetime.timedelta(seconds=5),
            topic_data=(TopicProduceData(
                name=topic, partition_data=(PartitionProduceData(index=0, records=bytes(builder.buffer())),),
            ),),
        )
        return int(answer.responses[0].partition_responses[0].error_code.value)

    def fetch(self, topic: str) -> int:
        from kio.schema.fetch.v11.request import FetchPartition, FetchTopic

        answer = self.request(
            FETCH, 11, max_wait=datetime.timedelta(0), min_bytes=1, max_bytes=1 << 20,
            isolation_level=0, session_id=0, session_epoch=-1,
            topics=(FetchTopic(topic=topic, partitions=(FetchPartition(
                partition=0, current_leader_epoch=-1, fetch_offset=0, log_start_offset=-1,
                partition_max_bytes=1 << 20,
            ),)),),
            forgotten_topics_data=(), rack_id="",
        )
        return int(answer.responses[0].partitions[0].error_code.value)

    def list_offsets(self, topic: str) -> int:
        from kio.schema.list_offsets.v5.request import ListOffsetsPartition, ListOffsetsTopic

        answer = self.request(
            LIST_OFFSETS, 5, replica_id=-1, isolation_level=0,
            topics=(ListOffsetsTopic(name=topic, partitions=(
                ListOffsetsPartition(partition_index=0, current_leader_epoch=-1, timestamp=-1),
            )),),
        )
        return int(answer.topics[0].partitions[0].error_code.value)

    def create_topic(self, topic: str) -> int:
        from kio.schema.create_topics.v4.request import CreatableTopic

        answer = self.request(
            CREATE_TOPICS, 4, timeout=datetime.timedelta(seconds=5), validate_only=False,
            topics=(CreatableTopic(name=topic, num_partitions=1, replication_factor=-1, assignments=(), configs=()),),
        )
        return int(answer.topics[0].error_code.value)

    def delete_topic(self, topic: str) -> int:
        answer = self.request(DELETE_TOPICS, 3, topic_names=(topic,), timeout=datetime.timedelta(seconds=5))
        return int(answer.responses[0].error_code.value)

    def describe_configs(self, topic: str) -> int:
        from kio.schema.describe_configs.v3.request import DescribeConfigsResource

        answer = self.request(
            32, 3, include_synonyms=False, include_documentation=False,
            resources=(DescribeConfigsResource(resource_type=2, resource_name=topic, configuration_keys=None),),
        )
        return int(answer.results[0].error_code.value)

    def alter_retention(self, topic: str) -> int:
        from kio.schema.incremental_alter_configs.v1.request import (
            AlterableConfig,
            AlterConfigsResource,
        )

        answer = self.request(
            44, 1, validate_only=False,
            resources=(AlterConfigsResource(resource_type=2, resource_name=topic, configs=(
                AlterableConfig(name="retention.ms", config_operation=0, value="3600000"),
            )),),
        )
        return int(answer.responses[0].error_code.value)

    def commit_offset(self, group: str, topic: str) -> int:
        from kio.schema.offset_commit.v7.request import (
            OffsetCommitRequestPartition,
            OffsetCommitRequestTopic,
        )

        answer = self.request(
            OFFSET_COMMIT, 7, group_id=group, generation_id_or_member_epoch=-1, member_id="",
            group_instance_id=None,
            topics=(OffsetCommitRequestTopic(name=topic, partitions=(OffsetCommitRequestPartition(
                partition_index=0, committed_offset=0, committed_leader_epoch=-1, committed_metadata="",
            ),)),),
        )
        return int(answer.topics[0].partitions[0].error_code.value)


def test_topic_permissions_map_to_kafka_authorization_errors(broker: Broker) -> None:
    with ScramKafka(broker) as alice:
        assert alice.scram("SCRAM-SHA-256", "alice", "alice-pw") == 0
        assert alice.create_topic("secret") == 0
        assert alice.produce("secret", b"classified") == 0
    with ScramKafka(broker) as limited:
        assert limited.scram("SCRAM-SHA-256", "limited", "limited-pw") == 0
        # configure: create/delete; write: produce; read: fetch, list offsets, commit.
        assert limited.create_topic("other") == TOPIC_AUTHORIZATION_FAILED
        assert limited.create_topic("own-topic") == 0
        assert limited.produce("secret", b"sneaky") == TOPIC_AUTHORIZATION_FAILED
        assert limited.produce("own-topic", b"mine") == 0
        assert limited.fetch("secret") == TOPIC_AUTHORIZATION_FAILED
        assert limited.fetch("own-topic") == 0
        assert limited.list_offsets("secret") == TOPIC_AUTHORIZATION_FAILED
        assert limited.list_offsets("own-topic") == 0
        assert limited.commit_offset("g", "secret") == TOPIC_AUTHORIZATION_FAILED
        assert limited.commit_offset("g", "own-topic") == 0
        assert limited.delete_topic("secret") == TOPIC_AUTHORIZATION_FAILED
        assert limited.describe_configs("secret") == TOPIC_AUTHORIZATION_FAILED
        assert limited.describe_configs("own-topic") == 0
        assert limited.alter_retention("secret") == TOPIC_AUTHORIZATION_FAILED
        assert limited.alter_retention("own-topic") == 0
        # Metadata: all topics lists only the visible ones; a named one answers the error,
        # and auto-creation without configure permission is refused the same way.
        assert limited.metadata(None) == {"own-topic": 0}
        assert limited.metadata(["secret", "own-topic"]) == {"secret": TOPIC_AUTHORIZATION_FAILED, "own-topic": 0}
        assert limited.metadata(["nothing-here"], create=True) == {"nothing-here": TOPIC_AUTHORIZATION_FAILED}
        # Permissions are read per request: cleared, they apply at once.
        broker.call(lambda: broker.core.set_permission("limited", "/", "", "", ""))  # type: ignore[union-attr]
        assert limited.produce("own-topic", b"late") == TOPIC_AUTHORIZATION_FAILED
    with ScramKafka(broker) as alice:  # nothing the refused requests tried was stored
        assert alice.scram("SCRAM-SHA-512", "alice", "alice-pw") == 0
        assert alice.metadata(None) == {"secret": 0, "own-topic": 0}
        assert alice.delete_topic("secret") == 0


def test_a_user_without_a_permission_on_the_kafka_vhost_fails_sasl(broker: Broker) -> None:
    for login in (lambda raw: raw.scram("SCRAM-SHA-256", "stranger", "stranger-pw"),
                  lambda raw: raw.plain("stranger", "stranger-pw")):
        with ScramKafka(broker) as raw:
            assert login(raw) == SASL_AUTHENTICATION_FAILED
            assert raw.closed_by_peer()


@pytest.mark.parametrize(
    "first, final",
    [
        (b"n,,n=alice,r=" + b"x" * 5000, None),  # too long
        (b"\xff\xfe garbage", None),  # malformed
        (b"n,,n=nobody,r=abc", b"c=biws,r=abcWRONG,p=AAAA"),  # unknown user, bad nonce
        (b"n,,n=alice,r=abc", b"c=biws,r=abc"),  # no proof
    ],
)
def test_bad_scram_messages_get_sasl_authentication_failed_and_the_connection_closes(
    broker: Broker, first: bytes, final: bytes | None
) -> None:
    with ScramKafka(broker) as raw:
        assert raw.handshake("SCRAM-SHA-256") == 0
        answer = raw.authenticate(first)
        if final is not None:
            assert answer.error_code.value == 0
            answer = raw.authenticate(final)
        assert answer.error_code.value == SASL_AUTHENTICATION_FAILED and answer.error_message
        assert raw.closed_by_peer()
    with ScramKafka(broker) as other:  # everyone else is still served
        assert other.scram("SCRAM-SHA-256", "alice", "alice-pw") == 0


def test_a_replayed_client_final_is_refused(broker: Broker) -> None:
    with ScramKafka(broker) as first:
        assert first.scram("SCRAM-SHA-256", "alice", "alice-pw") == 0
        captured = first.last_client_final
    with ScramKafka(broker) as replay:
        assert replay.handshake("SCRAM-SHA-256") == 0
        assert replay.authenticate(b"n,,n=alice,r=rawclientnonce42").error_code.value == 0
        answer = replay.authenticate(captured)  # the server nonce differs this time
        assert answer.error_code.value == SASL_AUTHENTICATION_FAILED
        assert replay.closed_by_peer()


def test_scram_works_without_kafka_sasl_required_and_then_permissions_apply(tmp_path: Path) -> None:
    """Anonymous connections (kafka_sasl off) keep full access; a connection that does
    authenticate gets its user's permissions."""
    broker = Broker(host="127.0.0.1", port=0, data_dir=tmp_path)
    broker.start_in_thread()
    try:
        broker.call(lambda: broker.core.add_user("limited", "limited-pw"))  # type: ignore[union-attr]
        broker.call(lambda: broker.core.set_permission("limited", "/", "^own-", "^own-", "^own-"))  # type: ignore[union-attr]
        with ScramKafka(broker) as anonymous:
            assert anonymous.create_topic("anything") == 0
            assert anonymous.produce("anything", b"x") == 0
        with ScramKafka(broker) as limited:
            assert limited.scram("SCRAM-SHA-512", "limited", "limited-pw") == 0
            assert limited.produce("anything", b"y") == TOPIC_AUTHORIZATION_FAILED
    finally:
        broker.stop_thread()


def test_malformed_scram_credentials_are_refused_by_the_management_api(broker: Broker) -> None:
    import urllib.error

    exported = http(broker, "GET", "/api/definitions")
    alice = next(u for u in exported["users"] if u["name"] == "alice")
    bad = {"password_hash": alice["password_hash"], "tags": "",
           "scram_credentials": {"SCRAM-SHA-256": {**alice["scram_credentials"]["SCRAM-SHA-256"], "iterations": 10**9}}}
    for path, body in (("/api/users/mallory", bad), ("/api/definitions", {"users": [bad | {"name": "mallory"}]})):
        with pytest.raises(urllib.error.HTTPError) as refused:
            http(broker, "PUT" if "users/" in path else "POST", path, body)
        assert refused.value.code == 400
    assert "mallory" not in {u["name"] for u in http(broker, "GET", "/api/users")}
    # The hash and credentials of a user can be set together, as an import does.
    http(broker, "PUT", "/api/users/alice2", {k: v for k, v in alice.items() if k != "name"})
    http(broker, "PUT", "/api/permissions/%2F/alice2", {"configure": ".*", "write": ".*", "read": ".*"})
    with ScramKafka(broker) as raw:
        assert raw.scram("SCRAM-SHA-512", "alice2", "alice-pw") == 0
