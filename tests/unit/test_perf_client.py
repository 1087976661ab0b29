"""The load generator's client-side framing, its argument parsing and its bookkeeping (no broker)."""

from __future__ import annotations

import struct
from collections import Counter

import pytest

from baedal.perf.client import (
    STAMP,
    ClientFrameReader,
    PublishTemplate,
    ack_frame,
    parse_uri,
)
from baedal.perf.options import SCENARIOS, UsageError, parse_args
from baedal.perf.report import LatencyStats, percentile_of
from baedal.perf.runner import deal_roles, make_plan, make_roles, routing_for
from baedal.perf.worker import Producer, Role, coarsen
from baedal.protocols.amqp import codec, spec
from baedal.protocols.amqp.codec import ConnectionFault, ContentFrame, FrameReader, MethodFrame

NOW = 10_000_000_000


def delivery(
    tag: int, body: bytes, redelivered: bool = False, frame_max: int = 131072, channel: int = 1
) -> bytes:
    payload = codec.deliver_payload(
        codec.encode_short_string("ctag"),
        tag,
        redelivered,
        codec.encode_short_string(""),
        codec.encode_short_string("q"),
    )
    return b"".join(codec.content_frames(channel, payload, b"\x00\x00", body, frame_max))


def stamped_body(sent_ns: int, size: int = 16) -> bytes:
    return STAMP.pack(sent_ns, 7) + b"x" * (size - 16)


def feed_all(reader: ClientFrameReader, data: bytes, one_byte_at_a_time: bool) -> list:
    if not one_byte_at_a_time:
        return reader.feed(data, NOW)
    events = []
    for i in range(len(data)):
        events += reader.feed(data[i : i + 1], NOW)
    return events


# --- URIs ----------------------------------------------------------------------------------


def test_uri_with_everything_spelled_out():
    address = parse_uri("amqp://bob:s%40cret@broker.example:5673/prod")
    assert (
        address.host,
        address.port,
        address.username,
        address.password,
        address.virtual_host,
    ) == (
        "broker.example",
        5673,
        "bob",
        "s@cret",
        "prod",
    )
    assert not address.tls


def test_uri_defaults_to_guest_on_the_default_vhost():
    address = parse_uri("amqp://127.0.0.1")
    assert (address.port, address.username, address.password, address.virtual_host) == (
        5672,
        "guest",
        "guest",
        "/",
    )
    assert parse_uri("amqp://guest:guest@127.0.0.1:5672/").virtual_host == "/"
    assert parse_uri("amqp://h/%2f").virtual_host == "/"


def test_amqps_uri_means_tls_on_5671():
    address = parse_uri("amqps://h")
    assert address.tls and address.port == 5671


def test_uri_that_is_not_amqp_is_refused():
    with pytest.raises(ValueError):
        parse_uri("http://127.0.0.1:5672/")


# --- publish template ------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 4, 8, 16, 1024, 300_000])
def test_publish_template_frames_parse_as_one_publish_with_the_stamp_in_the_body(size):
    template = PublishTemplate(1, "ex", "rk", b"\x10\x00\x02", size, frame_max=131072)
    frames = template.message(123456789, 42)
    assert len(frames) == template.wire_size
    server = FrameReader(frame_max=131072)
    events = server.feed(codec.PROTOCOL_HEADER + frames)
    content = events[-1]
    assert isinstance(content, ContentFrame)
    assert content.method.exchange == "ex" and content.method.routing_key == "rk"
    assert content.properties == b"\x10\x00\x02"
    assert len(content.body) == size
    if size >= 16:
        assert STAMP.unpack_from(content.body) == (123456789, 42)
    elif size >= 8:
        assert struct.unpack_from("<q", content.body) == (123456789,)


def test_ack_frame_is_a_basic_ack_with_the_multiple_bit():
    server = FrameReader()
    events = server.feed(codec.PROTOCOL_HEADER + ack_frame(77, True) + ack_frame(78, False))
    assert [type(e).__name__ for e in events] == ["ProtocolHeader", "MethodFrame", "MethodFrame"]
    assert events[1].method == spec.BasicAck(77, True)
    assert events[2].method == spec.BasicAck(78, False)


# --- client frame reader ---------------------------------------------------------------------


@pytest.mark.parametrize("one_byte_at_a_time", [False, True])
def test_deliveries_are_counted_with_their_latency_and_last_tag(one_byte_at_a_time):
    reader = ClientFrameReader()
    data = b"".join(delivery(tag, stamped_body(NOW - tag * 1000)) for tag in range(1, 6))
    events = feed_all(reader, data, one_byte_at_a_time)
    assert events == []
    assert reader.delivered == 5
    assert reader.last_delivery_tag == 5
    assert reader.latencies == [1, 2, 3, 4, 5]
    assert reader.buffered == 0


@pytest.mark.parametrize("one_byte_at_a_time", [False, True])
def test_a_body_split_over_several_frames_is_one_delivery(one_byte_at_a_time):
    reader = ClientFrameReader(frame_max=4096)
    data = delivery(9, stamped_body(NOW - 5000, size=10_000), frame_max=4096)
    feed_all(reader, data, one_byte_at_a_time)
    assert (reader.delivered, reader.last_delivery_tag, reader.latencies) == (1, 9, [5])


def test_a_delivery_in_progress_is_not_ackable_yet():
    reader = ClientFrameReader()
    data = delivery(1, stamped_body(NOW)) + delivery(2, stamped_body(NOW))
    reader.feed(data[:-3], NOW)
    assert (reader.delivered, reader.last_delivery_tag) == (1, 1)
    reader.feed(data[-3:], NOW)
    assert (reader.delivered, reader.last_delivery_tag) == (2, 2)


def test_short_and_empty_bodies_count_as_unstamped_deliveries():
    reader = ClientFrameReader()
    reader.feed(delivery(1, b"") + delivery(2, b"abc") + delivery(3, b"12345678"), NOW)
    assert reader.delivered == 3
    assert reader.unstamped == 2
    assert len(reader.latencies) == 1


def test_redelivered_flag_is_counted():
    reader = ClientFrameReader()
    reader.feed(delivery(1, b"", redelivered=True) + delivery(2, b"", redelivered=False), NOW)
    assert reader.redelivered == 1


@pytest.mark.parametrize("one_byte_at_a_time", [False, True])
def test_other_methods_come_back_as_events_between_deliveries(one_byte_at_a_time):
    reader = ClientFrameReader()
    start = codec.method_frame(
        0, spec.ConnectionStart(server_properties={"product": "X"}, mechanisms=b"PLAIN AMQPLAIN")
    )
    ack = codec.method_frame(1, spec.BasicAck(10, True))
    data = start + delivery(1, stamped_body(NOW)) + ack + codec.heartbeat_frame()
    events = feed_all(reader, data, one_byte_at_a_time)
    assert isinstance(events[0], MethodFrame) and isinstance(events[0].method, spec.ConnectionStart)
    assert events[0].method.server_properties == {"product": "X"}
    assert events[1].method == spec.BasicAck(10, True)
    assert events[2] is codec.HEARTBEAT_EVENT
    assert reader.delivered == 1


def test_basic_return_is_assembled_with_its_body():
    reader = ClientFrameReader()
    method = spec.BasicReturn(312, "NO_ROUTE", "ex", "rk").encode()
    data = b"".join(codec.content_frames(1, method, b"\x00\x00", b"hello", 131072))
    (event,) = reader.feed(data, NOW)
    assert isinstance(event, ContentFrame)
    assert event.method.reply_code == 312 and event.body == b"hello"
    assert reader.delivered == 0


def test_bad_frame_end_is_a_frame_error_and_the_reader_stays_failed():
    reader = ClientFrameReader()
    broken = bytearray(codec.method_frame(1, spec.BasicAck(1, False)))
    broken[-1] = 0
    with pytest.raises(ConnectionFault) as failure:
        reader.feed(bytes(broken), NOW)
    assert failure.value.code == codec.FRAME_ERROR
    with pytest.raises(ConnectionFault):
        reader.feed(codec.heartbeat_frame(), NOW)


def test_body_frame_without_a_delivery_is_an_unexpected_frame():
    reader = ClientFrameReader()
    body = struct.pack(">BHI", 3, 1, 3) + b"abc\xce"
    with pytest.raises(ConnectionFault) as failure:
        reader.feed(body, NOW)
    assert failure.value.code == codec.UNEXPECTED_FRAME


def test_method_in_the_middle_of_a_delivery_is_an_unexpected_frame():
    reader = ClientFrameReader()
    data = delivery(1, stamped_body(NOW))
    header_end = data.index(b"\xce", 7) + 1  # end of the method frame
    with pytest.raises(ConnectionFault) as failure:
        reader.feed(data[:header_end] + codec.method_frame(1, spec.BasicAck(1, False)), NOW)
    assert failure.value.code == codec.UNEXPECTED_FRAME


def test_frame_larger_than_frame_max_is_refused():
    reader = ClientFrameReader(frame_max=4096)
    with pytest.raises(ConnectionFault) as failure:
        reader.feed(struct.pack(">BHI", 3, 1, 5000), NOW)
    assert failure.value.code == codec.FRAME_ERROR


# --- confirms bookkeeping --------------------------------------------------------------------


def make_producer() -> Producer:
    settings = parse_args(["-x", "1", "-y", "0", "-C", "10"])
    return Producer(make_plan(settings), Role(0, "producer", 0, "q"), [0] * 8)


def test_confirms_single_and_multiple_acks_are_each_counted_once():
    producer = make_producer()
    assert producer._settle(2, False) == 1  # out of order, above the floor
    assert producer._settle(1, False) == 1  # fills the gap: floor moves to 2
    assert producer._settle(2, False) == 0  # duplicate
    assert producer._settle(5, True) == 3  # 3, 4, 5
    assert producer._settle(7, False) == 1
    assert producer._settle(8, True) == 2  # 6 and 8 (7 was already settled)
    assert producer._floor == 8 and not producer._above


# --- options ---------------------------------------------------------------------------------


def test_scenario_presets_match_the_standard_matrix():
    s3 = parse_args(["--scenario", "s3"])
    assert (
        s3.size,
        s3.durable_queue,
        s3.persistent,
        s3.confirm,
        s3.prefetch,
        s3.multi_ack_every,
    ) == (
        1024,
        True,
        True,
        1000,
        1000,
        100,
    )
    s5 = parse_args(["--scenario", "S5"])
    assert (s5.queues, s5.consumers, s5.exchange_type, s5.auto_ack) == (4, 4, "fanout", True)
    assert parse_args(["--scenario", "S6"]).rate == 5000
    assert parse_args(["--scenario", "S4"]).pmessages == 1_000_000
    assert set(SCENARIOS) == {"S1", "S2", "S3", "S4", "S5", "S6"}


def test_explicit_flags_override_the_scenario():
    s1 = parse_args(["--scenario", "S1", "-z", "2", "--size", "100", "--uri", "amqp://h:5673/"])
    assert (s1.time, s1.size, s1.auto_ack, s1.uri) == (2, 100, True, "amqp://h:5673/")
    assert s1.queue == "baedal-perf-s1"


def test_plain_run_defaults_to_ten_seconds_one_producer_one_consumer():
    settings = parse_args([])
    assert (settings.producers, settings.consumers, settings.time, settings.queues) == (
        1,
        1,
        10.0,
        1,
    )
    assert settings.exchange_type is None and not settings.auto_ack


def test_several_queues_default_to_a_fanout_exchange():
    settings = parse_args(["--queues", "3", "-y", "3"])
    assert settings.exchange_type == "fanout"
    assert settings.queue_names == ["baedal-perf.0", "baedal-perf.1", "baedal-perf.2"]


def test_multi_ack_every_is_capped_at_the_prefetch_window():
    assert parse_args(["-q", "10", "-A", "100"]).multi_ack_every == 10


def test_queue_args_are_parsed_as_json():
    assert parse_args(["--queue-args", '{"x-queue-type": "quorum"}']).queue_args == {
        "x-queue-type": "quorum"
    }


@pytest.mark.parametrize(
    "argv",
    [
        ["-x", "0", "-y", "0"],
        ["--queues", "4", "-y", "2"],
        ["--uri", "http://x/"],
        ["--prefetch", "70000"],
    ],
)
def test_impossible_runs_are_usage_errors(argv):
    with pytest.raises(UsageError):
        parse_args(argv)


def test_bad_flags_exit_like_argparse():
    with pytest.raises(SystemExit):
        parse_args(["--queue-args", "[1, 2]"])
    with pytest.raises(SystemExit):
        parse_args(["--exchange-type", "x-delayed"])


def test_main_returns_2_on_a_bad_command_line(capsys):
    from baedal.perf import main

    assert main(["-x", "0", "-y", "0"]) == 2
    assert "nothing to do" in capsys.readouterr().err


# --- topology and roles ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kind, routing_key, has_headers",
    [
        ("direct", "perf", False),
        ("topic", "perf.load", False),
        ("fanout", "", False),
        ("headers", "", True),
    ],
)
def test_every_exchange_type_routes_to_every_queue(kind, routing_key, has_headers):
    settings = parse_args(["--exchange-type", kind, "--queues", "2", "-y", "2"])
    exchange, key, _, headers = routing_for(settings)
    assert exchange == f"baedal-perf.{kind}"
    assert key == routing_key
    assert (headers is not None) == has_headers


def test_one_queue_without_exchange_type_publishes_to_the_default_exchange():
    assert routing_for(parse_args(["-u", "q1"]))[:2] == ("", "q1")


def test_persistent_sets_delivery_mode_2():
    assert make_plan(parse_args(["--persistent"])).properties == b"\x10\x00\x02"
    assert make_plan(parse_args([])).properties == b"\x00\x00"


def test_roles_are_dealt_so_producers_and_consumers_do_not_share_a_process():
    settings = parse_args(["-x", "1", "-y", "1"])
    shares = deal_roles(make_roles(settings), 2)
    assert [[r.kind for r in share] for share in shares] == [["producer"], ["consumer"]]
    settings = parse_args(["--scenario", "S5"])
    roles = make_roles(settings)
    assert [r.queue for r in roles if r.kind == "consumer"] == [
        f"baedal-perf-s5.{i}" for i in range(4)
    ]
    assert sum(len(share) for share in deal_roles(roles, 2)) == 5
    assert len(deal_roles(roles, 0)) == 1


# --- latency statistics ----------------------------------------------------------------------


def test_coarsen_keeps_small_values_and_rounds_large_ones_to_hdr_precision():
    counts = coarsen(Counter({5: 1, 2047: 2, 1_000_001: 3, 1_000_002: 4}))
    assert counts[5] == 1 and counts[2047] == 2
    big = [k for k in counts if k > 2047]
    assert len(big) == 1 and counts[big[0]] == 7
    assert abs(big[0] - 1_000_001) / 1_000_001 < 1 / 1000


def test_latency_stats_percentiles_over_the_run_and_the_interval():
    stats = LatencyStats()
    stats.add({100: 98, 1000: 1, 5000: 1})
    p50, p99 = stats.take_interval()
    assert (p50, p99) == (100, 1000)
    assert stats.take_interval() == (None, None)
    summary = stats.summary()
    assert summary["count"] == 100
    assert summary["p50"] == 100 and 4990 <= summary["max"] <= 5010
    assert percentile_of({}, 50) is None
