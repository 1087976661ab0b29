"""Every AMQP reply code the broker can send, provoked on purpose.

Channel errors (4xx) close only the channel; connection errors (5xx) close the
connection.  Codes, texts and the failing method's class/method ids are RabbitMQ
3.10's (validated against it); after each error an independent connection must
still work.

Where RabbitMQ 3.10 does not send the textbook code, the test asserts what
RabbitMQ does and says so:

* 502 SYNTAX_ERROR: RabbitMQ only uses it for an unparsable SASL response, and
  errors before connection.tune are never sent on the wire: it waits 3 s and drops
  the TCP connection.  Undecodable method arguments are 501 FRAME_ERROR.
* a method on a channel that was never opened is 504 CHANNEL_ERROR
  "expected 'channel.open'", not 503; content frames out of order are 505.
* 503 COMMAND_INVALID is what a connection-class method sent on a non-zero
  channel gets ("unimplemented method").
* an unknown class/method id crashes RabbitMQ's reader: the TCP connection is
  dropped with no connection.close.
* a channel id above channel_max is accepted; 530 is sent when the *number* of
  open channels would exceed channel_max.
"""

from __future__ import annotations

import contextlib
import os
import socket
import struct
import threading
from urllib.parse import urlparse

import pika
import pika.exceptions
import pytest
import rawamqp
from pika import BasicProperties
from rawamqp import (
    ConnectionDropped,
    RawAMQP,
    basic_publish,
    body_frame,
    channel_open,
    frame,
    header_frame,
    method_frame,
    queue_declare,
    shortstr,
    table,
)

pytestmark = pytest.mark.timeout(30)

ChannelClosedByBroker = pika.exceptions.ChannelClosedByBroker
ConnectionClosedByBroker = pika.exceptions.ConnectionClosedByBroker


# ---------------------------------------------------------------- fixtures / helpers


def _params(url: str) -> pika.URLParameters:
    p = pika.URLParameters(url)
    p.socket_timeout = 10
    p.connection_attempts = 1
    return p


def close_quietly(c: pika.BlockingConnection, timeout: float = 5.0) -> None:
    """close(), but shut the socket down if the broker never sends close-ok."""
    if not c.is_open:
        return
    sock = getattr(getattr(c._impl, "_transport", None), "_sock", None)

    def kill() -> None:
        with contextlib.suppress(OSError, AttributeError):
            sock.shutdown(socket.SHUT_RDWR)

    timer = threading.Timer(timeout, kill)
    timer.daemon = True
    timer.start()
    try:
        with contextlib.suppress(Exception):
            c.close()
    finally:
        timer.cancel()


@pytest.fixture
def conn(amqp_url):
    c = pika.BlockingConnection(_params(amqp_url))
    yield c
    close_quietly(c)


@pytest.fixture
def host(amqp_url) -> str:
    return urlparse(amqp_url).hostname or "127.0.0.1"


@pytest.fixture
def raw(host, amqp_port):
    """A raw AMQP connection that completed the handshake and opened channel 1."""
    c = rawamqp.connect(host, amqp_port)
    c.open_channel(1)
    yield c
    c.close()


def assert_broker_still_works(url: str) -> None:
    """A fresh, independent connection can declare, publish and get."""
    c = pika.BlockingConnection(_params(url))
    try:
        ch = c.channel()
        ch.confirm_delivery()
        q = ch.queue_declare("", exclusive=True).method.queue
        ch.basic_publish("", q, b"still-alive")
        method, _, body = ch.basic_get(q, auto_ack=True)
        assert body == b"still-alive"
    finally:
        close_quietly(c)


def channel_error(call) -> ChannelClosedByBroker:
    with pytest.raises(ChannelClosedByBroker) as e:
        call()
    return e.value


def expect_close(c: RawAMQP) -> rawamqp.Close:
    close = c.read_until_close()
    assert close.channel == 0, f"expected a connection.close, got {close}"
    return close


# ================================================================ 403 ACCESS_REFUSED


def test_declaring_an_amq_prefixed_exchange_is_refused_with_403(conn, unique, amqp_url):
    ch = conn.channel()
    name = "amq." + unique("x")
    err = channel_error(lambda: ch.exchange_declare(name, "direct"))
    assert err.reply_code == 403
    assert err.reply_text == (
        f"ACCESS_REFUSED - exchange name '{name}' contains reserved prefix 'amq.*'"
    )
    assert conn.is_open and conn.channel().is_open
    assert_broker_still_works(amqp_url)


def test_declaring_an_amq_prefixed_queue_is_refused_with_403(conn, unique, amqp_url):
    name = "amq." + unique("q")
    err = channel_error(lambda: conn.channel().queue_declare(name))
    assert err.reply_code == 403
    assert (
        err.reply_text == f"ACCESS_REFUSED - queue name '{name}' contains reserved prefix 'amq.*'"
    )
    assert_broker_still_works(amqp_url)


def test_deleting_a_predeclared_exchange_is_refused_with_403(conn, amqp_url):
    err = channel_error(lambda: conn.channel().exchange_delete("amq.direct"))
    assert err.reply_code == 403
    assert err.reply_text.startswith("ACCESS_REFUSED - "), err.reply_text
    conn.channel().exchange_declare("amq.direct", passive=True)
    assert_broker_still_works(amqp_url)


def test_binding_to_the_default_exchange_is_refused_with_403(conn, amqp_url):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    err = channel_error(lambda: conn.channel().queue_bind(q, "", "other-key"))
    assert err.reply_code == 403
    assert err.reply_text == ("ACCESS_REFUSED - operation not permitted on the default exchange")
    assert_broker_still_works(amqp_url)


def test_publishing_to_an_internal_exchange_is_refused_with_403(conn, unique, amqp_url):
    x = unique("internal")
    ch = conn.channel()
    ch.exchange_declare(x, "fanout", internal=True)
    try:
        pub = conn.channel()
        pub.basic_publish(x, "", b"nope")
        err = channel_error(lambda: pub.queue_declare("", exclusive=True))
        assert err.reply_code == 403
        assert err.reply_text == (
            f"ACCESS_REFUSED - cannot publish to internal exchange '{x}' in vhost '/'"
        )
        assert (err.reply_code, ch.is_open) == (403, True)
    finally:
        ch.exchange_delete(x)
    assert_broker_still_works(amqp_url)


def test_bad_credentials_are_refused_with_403_connection_close(amqp_url):
    u = urlparse(amqp_url)
    bad = f"amqp://guest:wrong-password@{u.hostname}:{u.port or 5672}/"
    with pytest.raises(pika.exceptions.ProbableAuthenticationError) as e:
        pika.BlockingConnection(_params(bad))
    text = str(e.value)
    assert "403" in text
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism PLAIN" in text
    assert_broker_still_works(amqp_url)


# ================================================================ 404 NOT_FOUND


def test_publishing_to_a_missing_exchange_fails_with_404(conn, unique, amqp_url):
    x = unique("missing")
    ch = conn.channel()
    ch.basic_publish(x, "k", b"lost")
    err = channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no exchange '{x}' in vhost '/'"
    assert conn.is_open
    assert_broker_still_works(amqp_url)


def test_passive_declare_of_a_missing_queue_fails_with_404(conn, unique, amqp_url):
    q = unique("missing")
    err = channel_error(lambda: conn.channel().queue_declare(q, passive=True))
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
    assert_broker_still_works(amqp_url)


def test_binding_a_missing_queue_fails_with_404(conn, unique, amqp_url):
    q = unique("missing")
    err = channel_error(lambda: conn.channel().queue_bind(q, "amq.direct", "k"))
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
    assert_broker_still_works(amqp_url)


def test_consuming_from_a_missing_queue_fails_with_404(conn, unique, amqp_url):
    q = unique("missing")
    err = channel_error(lambda: conn.channel().basic_consume(q, lambda *a: None))
    assert err.reply_code == 404
    assert err.reply_text == f"NOT_FOUND - no queue '{q}' in vhost '/'"
    assert_broker_still_works(amqp_url)


def test_empty_queue_name_without_a_previous_declare_fails_with_404(raw, amqp_url):
    args = struct.pack("!H", 0) + shortstr("") + shortstr("amq.direct") + shortstr("k") + b"\x00"
    raw.send(method_frame(1, 50, 20, args + table({})))  # queue.bind
    close = raw.read_until_close()
    assert (close.channel, close.reply_code) == (1, 404)
    assert close.reply_text == "NOT_FOUND - no previously declared queue"
    assert (close.class_id, close.method_id) == (50, 20)
    assert_broker_still_works(amqp_url)


# ================================================================ 405 RESOURCE_LOCKED


def test_using_another_connections_exclusive_queue_fails_with_405(conn, unique, amqp_url):
    q = unique("excl")
    conn.channel().queue_declare(q, exclusive=True)
    other = pika.BlockingConnection(_params(amqp_url))
    try:
        err = channel_error(lambda: other.channel().basic_get(q))
        assert err.reply_code == 405
        assert err.reply_text.startswith(
            f"RESOURCE_LOCKED - cannot obtain exclusive access to locked queue '{q}' in vhost '/'"
        ), err.reply_text
        assert other.is_open
    finally:
        other.close()
    assert_broker_still_works(amqp_url)


# ================================================================ 406 PRECONDITION_FAILED


def test_redeclaring_a_queue_with_other_arguments_fails_with_406(conn, unique, amqp_url):
    ch = conn.channel()
    q = unique("q")
    ch.queue_declare(q, exclusive=True, arguments={"x-max-length": 1})
    err = channel_error(
        lambda: conn.channel().queue_declare(q, exclusive=True, arguments={"x-max-length": 2})
    )
    assert err.reply_code == 406
    assert err.reply_text == (
        f"PRECONDITION_FAILED - inequivalent arg 'x-max-length' for queue '{q}' in vhost '/': "
        "received '2' but current is '1'"
    )
    assert_broker_still_works(amqp_url)


def test_redeclaring_a_server_named_queue_by_name_is_refused_with_403(conn, amqp_url):
    # the reserved-prefix check comes before the equivalence check
    q = conn.channel().queue_declare("", exclusive=True).method.queue
    err = channel_error(lambda: conn.channel().queue_declare(q, exclusive=True))
    assert err.reply_code == 403
    assert err.reply_text == f"ACCESS_REFUSED - queue name '{q}' contains reserved prefix 'amq.*'"
    assert conn.channel().queue_declare(q, passive=True).method.queue == q
    assert_broker_still_works(amqp_url)


def test_redeclaring_an_exchange_with_another_type_fails_with_406(conn, unique, amqp_url):
    x = unique("x")
    ch = conn.channel()
    ch.exchange_declare(x, "direct")
    try:
        err = channel_error(lambda: conn.channel().exchange_declare(x, "topic"))
        assert err.reply_code == 406
        assert err.reply_text == (
            f"PRECONDITION_FAILED - inequivalent arg 'type' for exchange '{x}' in vhost '/': "
            "received 'topic' but current is 'direct'"
        )
    finally:
        ch.exchange_delete(x)
    assert_broker_still_works(amqp_url)


def test_acking_an_unknown_delivery_tag_fails_with_406(conn, amqp_url):
    ch = conn.channel()
    ch.basic_ack(99)
    err = channel_error(lambda: ch.queue_declare("", exclusive=True))
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - unknown delivery tag 99"
    assert_broker_still_works(amqp_url)


def test_acking_the_same_delivery_twice_fails_with_406(conn, amqp_url):
    ch = conn.channel()
    ch.confirm_delivery()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"m")
    tag = ch.basic_get(q)[0].delivery_tag
    ch.basic_ack(tag)
    ch.basic_ack(tag)
    err = channel_error(lambda: ch.queue_declare(q, passive=True))
    assert err.reply_code == 406
    assert err.reply_text == f"PRECONDITION_FAILED - unknown delivery tag {tag}"
    assert conn.channel().queue_declare(q, passive=True).method.message_count == 0
    assert_broker_still_works(amqp_url)


def test_invalid_per_message_expiration_fails_with_406(conn, amqp_url):
    ch = conn.channel()
    q = ch.queue_declare("", exclusive=True).method.queue
    ch.basic_publish("", q, b"m", BasicProperties(expiration="soon"))
    err = channel_error(lambda: ch.queue_declare(q, passive=True))
    assert err.reply_code == 406
    # RabbitMQ 3.10: "PRECONDITION_FAILED - invalid expiration 'soon': no_integer"
    assert err.reply_text.startswith("PRECONDITION_FAILED - invalid expiration 'soon'")
    assert_broker_still_works(amqp_url)


def test_tx_commit_without_tx_select_fails_with_406(conn, amqp_url):
    err = channel_error(lambda: conn.channel().tx_commit())
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - channel is not transactional"
    assert_broker_still_works(amqp_url)


def test_tx_select_on_a_confirm_channel_fails_with_406(conn, amqp_url):
    ch = conn.channel()
    ch.confirm_delivery()
    err = channel_error(lambda: ch.tx_select())
    assert err.reply_code == 406
    assert err.reply_text == "PRECONDITION_FAILED - cannot switch from confirm to tx mode"
    assert_broker_still_works(amqp_url)


# ================================================================ 501 FRAME_ERROR


def test_frame_with_a_bad_frame_end_octet_is_a_501_frame_error(raw, amqp_url):
    payload = struct.pack("!HH", 50, 10) + b"\x00\x00" + shortstr("x") + b"\x04" + table({})
    raw.send(frame(1, 1, payload, end=0x00))
    close = expect_close(raw)
    assert close.reply_code == 501
    # RabbitMQ 3.10: "FRAME_ERROR - type 1, all octets = <<...>>: {invalid_frame_end_marker, 0}"
    assert close.reply_text.startswith("FRAME_ERROR - "), close.reply_text
    assert_broker_still_works(amqp_url)


def test_unknown_frame_type_is_a_501_frame_error(raw, amqp_url):
    raw.send(frame(9, 0, b"abc"))
    close = expect_close(raw)
    assert close.reply_code == 501
    # RabbitMQ 3.10: 'FRAME_ERROR - type 9, all octets = <<"abc">>: unknown_frame'
    assert close.reply_text.startswith("FRAME_ERROR - "), close.reply_text
    assert_broker_still_works(amqp_url)


def test_frame_larger_than_frame_max_is_a_501_frame_error(raw, amqp_url):
    raw.send(frame(1, 1, b"\x00" * (raw.frame_max + 10)))
    close = expect_close(raw)
    assert close.reply_code == 501
    # RabbitMQ 3.10: "FRAME_ERROR - type 1, all octets = <<>>: {frame_too_large,131082,131064}"
    assert close.reply_text.startswith("FRAME_ERROR - "), close.reply_text
    assert_broker_still_works(amqp_url)


def test_undecodable_method_arguments_are_a_501_frame_error(raw, amqp_url):
    raw.send(method_frame(1, 50, 10, b"\x00\x00\x05ab"))  # shortstr says 5 bytes, 2 follow
    close = expect_close(raw)
    assert close.reply_code == 501
    # RabbitMQ 3.10: "FRAME_ERROR - cannot decode <<0,0,5,97,98>>"
    assert close.reply_text.startswith("FRAME_ERROR - cannot decode"), close.reply_text
    assert (close.class_id, close.method_id) == (50, 10)
    assert_broker_still_works(amqp_url)


def test_unknown_field_table_type_tag_is_a_501_frame_error(raw, amqp_url):
    bad_table = struct.pack("!I", 5) + shortstr("a") + b"Z" + b"x"
    raw.send(method_frame(1, 50, 10, b"\x00\x00" + shortstr("q") + b"\x04" + bad_table))
    close = expect_close(raw)
    assert close.reply_code == 501
    assert close.reply_text.startswith("FRAME_ERROR - cannot decode ")
    assert_broker_still_works(amqp_url)


# ================================================================ 502 SYNTAX_ERROR


@pytest.mark.timeout(30)
def test_unparsable_plain_response_ends_the_connection_before_tune(host, amqp_port, amqp_url):
    # RabbitMQ 3.10: protocol_error(syntax_error, "response ~p invalid") is raised while
    # the connection is still "starting"; errors in that state are not sent on the wire:
    # the broker waits 3 s and drops the socket.  A broker that does send a close must
    # use 502 SYNTAX_ERROR.
    c = RawAMQP(host, amqp_port, timeout=10)
    try:
        c.send(rawamqp.PROTOCOL_HEADER)
        c.read_method((10, 10))
        start_ok = (
            table({"capabilities": {"authentication_failure_close": True}})
            + shortstr("PLAIN")
            + rawamqp.longstr(b"no-nul-separators")
            + shortstr("en_US")
        )
        c.send(method_frame(0, 10, 11, start_ok))
        try:
            f = c.read_method()
        except ConnectionDropped:
            pass
        else:
            assert f.method == (10, 50), f"connection went on after a bad response: {f}"
            code = struct.unpack("!H", f.payload[4:6])[0]
            assert code == 502
            assert f.payload[7:].startswith(b"SYNTAX_ERROR - ")
    finally:
        c.close()
    assert_broker_still_works(amqp_url)


# ================================================================ 503 COMMAND_INVALID


def test_connection_method_on_a_non_zero_channel_is_a_503_command_invalid(raw, amqp_url):
    raw.send(method_frame(1, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
    close = expect_close(raw)
    assert close.reply_code == 503
    # RabbitMQ 3.10: "COMMAND_INVALID - unimplemented method"
    assert close.reply_text.startswith("COMMAND_INVALID - "), close.reply_text
    assert (close.class_id, close.method_id) == (10, 40)
    assert_broker_still_works(amqp_url)


def test_unknown_method_id_ends_the_connection(raw, amqp_url):
    # RabbitMQ 3.10's reader crashes on {unknown_method_id, {50, 99}} and drops the TCP
    # connection without a connection.close; a close, if sent, must be a hard error.
    raw.send(method_frame(1, 50, 99))
    try:
        close = expect_close(raw)
    except ConnectionDropped:
        pass
    else:
        assert 500 <= close.reply_code < 600, close
    assert_broker_still_works(amqp_url)


# ================================================================ 504 CHANNEL_ERROR


def test_second_channel_open_on_an_open_channel_is_a_504_channel_error(raw, amqp_url):
    raw.send(channel_open(1))
    close = expect_close(raw)
    assert close.reply_code == 504
    assert close.reply_text == "CHANNEL_ERROR - second 'channel.open' seen"
    assert (close.class_id, close.method_id) == (20, 10)
    assert_broker_still_works(amqp_url)


def test_method_on_a_channel_that_was_never_opened_is_a_504_channel_error(raw, amqp_url):
    raw.send(queue_declare(5))
    close = expect_close(raw)
    assert close.reply_code == 504
    assert close.reply_text.startswith("CHANNEL_ERROR - expected 'channel.open'")
    assert (close.class_id, close.method_id) == (50, 10)
    assert_broker_still_works(amqp_url)


def test_channel_class_method_on_channel_zero_is_a_504_channel_error(raw, amqp_url):
    raw.send(method_frame(0, 60, 10, struct.pack("!IHB", 0, 1, 0)))  # basic.qos
    close = expect_close(raw)
    assert close.reply_code == 504
    # RabbitMQ 3.10: "CHANNEL_ERROR - unexpected method in connection state running"
    assert close.reply_text.startswith("CHANNEL_ERROR - "), close.reply_text
    assert (close.class_id, close.method_id) == (60, 10)
    assert_broker_still_works(amqp_url)


# ================================================================ 505 UNEXPECTED_FRAME


def test_body_frame_without_a_content_header_is_a_505_unexpected_frame(raw, amqp_url):
    raw.send(basic_publish(1, "", "nowhere"))
    raw.send(body_frame(1, b"abc"))
    close = expect_close(raw)
    assert close.reply_code == 505
    assert close.reply_text == (
        "UNEXPECTED_FRAME - expected content header for class 60, "
        "got non content header frame instead"
    )
    assert (close.class_id, close.method_id) == (60, 40)
    assert_broker_still_works(amqp_url)


def test_content_header_without_a_publish_is_a_505_unexpected_frame(raw, amqp_url):
    raw.send(header_frame(1, 3))
    close = expect_close(raw)
    assert close.reply_code == 505
    assert close.reply_text == (
        "UNEXPECTED_FRAME - expected method frame, got non method frame instead"
    )
    assert_broker_still_works(amqp_url)


def test_method_frame_where_content_header_is_due_is_a_505_unexpected_frame(raw, amqp_url):
    raw.send(basic_publish(1, "", "nowhere"))
    raw.send(queue_declare(1))
    close = expect_close(raw)
    assert close.reply_code == 505
    assert close.reply_text.startswith("UNEXPECTED_FRAME - expected content header for class 60")
    assert_broker_still_works(amqp_url)


def test_content_header_of_the_wrong_class_is_a_505_unexpected_frame(raw, amqp_url):
    raw.send(basic_publish(1, "", "nowhere"))
    raw.send(header_frame(1, 3, class_id=50))
    close = expect_close(raw)
    assert close.reply_code == 505
    assert close.reply_text == (
        "UNEXPECTED_FRAME - expected content header for class 60, got one for class 50 instead"
    )
    assert_broker_still_works(amqp_url)


def test_heartbeat_on_a_non_zero_channel_is_a_505_unexpected_frame(raw, amqp_url):
    raw.send(frame(8, 1, b""))
    close = expect_close(raw)
    assert close.reply_code == 505
    # RabbitMQ 3.10: "UNEXPECTED_FRAME - type 8, all octets = <<>>"
    assert close.reply_text.startswith("UNEXPECTED_FRAME - "), close.reply_text
    assert_broker_still_works(amqp_url)


# ================================================================ 530 NOT_ALLOWED


def test_opening_a_missing_vhost_is_a_530_not_allowed(host, amqp_port, amqp_url):
    c = RawAMQP(host, amqp_port)
    try:
        reply = c.handshake(vhost="no-such-vhost")
        assert reply.method == (10, 50)
        code = struct.unpack("!H", reply.payload[4:6])[0]
        tlen = reply.payload[6]
        text = reply.payload[7 : 7 + tlen].decode()
        assert code == 530
        assert text == "NOT_ALLOWED - vhost no-such-vhost not found"
        assert struct.unpack("!HH", reply.payload[7 + tlen : 11 + tlen]) == (10, 40)
    finally:
        c.close()
    assert_broker_still_works(amqp_url)


def test_pika_sees_missing_vhost_as_access_denied(amqp_url):
    u = urlparse(amqp_url)
    url = f"amqp://guest:guest@{u.hostname}:{u.port or 5672}/no-such-vhost"
    with pytest.raises(pika.exceptions.ProbableAccessDeniedError) as e:
        pika.BlockingConnection(_params(url))
    assert "530" in str(e.value)
    assert "NOT_ALLOWED - vhost no-such-vhost not found" in str(e.value)
    assert_broker_still_works(amqp_url)


def test_opening_more_channels_than_channel_max_is_a_530_not_allowed(host, amqp_port, amqp_url):
    c = rawamqp.connect(host, amqp_port, channel_max=2)
    try:
        c.open_channel(1)
        c.open_channel(2)
        c.send(channel_open(3))
        close = expect_close(c)
        assert close.reply_code == 530
        assert close.reply_text == (
            "NOT_ALLOWED - number of channels opened (2) has reached the negotiated channel_max (2)"
        )
    finally:
        c.close()
    assert_broker_still_works(amqp_url)


def test_channel_id_above_channel_max_is_accepted_while_the_count_is_below_it(
    host, amqp_port, amqp_url
):
    # RabbitMQ 3.10 only counts open channels against channel_max; it does not check
    # the channel number itself (the spec calls channel-max the highest number)
    c = rawamqp.connect(host, amqp_port, channel_max=2)
    try:
        c.open_channel(7)
        c.send(queue_declare(7))
        ok = c.read_method()
        assert (ok.channel, ok.method) == (7, (50, 11))
    finally:
        c.close()
    assert_broker_still_works(amqp_url)


def test_tune_ok_frame_max_above_the_offer_ends_the_connection(host, amqp_port, amqp_url):
    # RabbitMQ logs "negotiated frame_max = 10000000 is higher than the maximum allowed
    # value (131072)" and closes; the 530 close frame may be lost to the TCP reset.
    c = RawAMQP(host, amqp_port)
    try:
        c.handshake(frame_max=10_000_000, open_vhost=False)
        c.send(method_frame(0, 10, 40, shortstr("/") + shortstr("") + b"\x00"))
        try:
            f = c.read_method()
        except (ConnectionDropped, OSError):
            pass
        else:
            assert f.method == (10, 50), f"connection opened despite frame_max: {f}"
            assert struct.unpack("!H", f.payload[4:6])[0] == 530
    finally:
        c.close()
    assert_broker_still_works(amqp_url)


# ================================================================ 540 NOT_IMPLEMENTED


def test_publish_with_immediate_is_a_540_not_implemented(raw, amqp_url):
    raw.send(basic_publish(1, "", "nowhere", immediate=True))
    raw.send(header_frame(1, 1))
    raw.send(body_frame(1, b"a"))
    close = expect_close(raw)
    assert close.reply_code == 540
    assert close.reply_text == "NOT_IMPLEMENTED - immediate=true"
    assert (close.class_id, close.method_id) == (60, 40)
    assert_broker_still_works(amqp_url)


def test_recover_without_requeue_is_a_540_not_implemented(conn, amqp_url):
    with pytest.raises(ConnectionClosedByBroker) as e:
        conn.channel().basic_recover(requeue=False)
    assert e.value.reply_code == 540
    assert e.value.reply_text == "NOT_IMPLEMENTED - requeue=false"
    assert conn.is_closed
    assert_broker_still_works(amqp_url)


# ================================================================ Baedal-only (configurable)


def _non_loopback_ipv4() -> str | None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.connect(("192.0.2.1", 9))  # no packet is sent for a UDP connect
        ip = s.getsockname()[0]
    except OSError:
        return None
    finally:
        s.close()
    return None if ip.startswith("127.") else ip


def test_publish_larger_than_max_message_size_fails_with_406_on_that_channel_only(
    session_broker, tmp_path
):
    if session_broker is None:
        pytest.skip("needs a broker configured with a small max_message_size (Baedal only)")
    from baedal import Broker

    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path, max_message_size=1024) as b:
        c = pika.BlockingConnection(_params(b.amqp_url))
        try:
            other = c.channel()
            ch = c.channel()
            q = other.queue_declare("", exclusive=True).method.queue
            ch.basic_publish("", q, b"x" * 2048)
            err = channel_error(lambda: ch.queue_declare(q, passive=True))
            assert err.reply_code == 406
            assert err.reply_text == (
                "PRECONDITION_FAILED - message size 2048 is larger than configured max size 1024"
            )
            assert other.is_open and c.is_open
            other.basic_publish("", q, b"x" * 1024)  # at the limit is fine
            assert other.basic_get(q, auto_ack=True)[2] == b"x" * 1024
        finally:
            c.close()
        assert_broker_still_works(b.amqp_url)


def test_guest_from_a_non_loopback_address_is_refused(session_broker, tmp_path):
    if session_broker is None:
        pytest.skip("RabbitMQ here listens on loopback only; Baedal-only check")
    ip = _non_loopback_ipv4()
    if ip is None:
        pytest.skip("this machine has no non-loopback IPv4 address")
    from baedal import Broker

    with Broker(host="0.0.0.0", port=0, data_dir=tmp_path) as b:
        port = urlparse(b.amqp_url).port
        with pytest.raises(
            (pika.exceptions.ProbableAuthenticationError, pika.exceptions.ConnectionClosedByBroker)
        ) as e:
            pika.BlockingConnection(_params(f"amqp://guest:guest@{ip}:{port}/"))
        assert "403" in str(e.value)
        assert "ACCESS_REFUSED" in str(e.value)
        # loopback is still fine
        assert_broker_still_works(f"amqp://guest:guest@127.0.0.1:{port}/")


def test_suite_is_pointed_at_the_expected_broker(amqp_url):
    # guards the skips above: with BAEDAL_TEST_AMQP_URL set, these tests use that URL
    if os.environ.get("BAEDAL_TEST_AMQP_URL"):
        assert amqp_url == os.environ["BAEDAL_TEST_AMQP_URL"]
    assert urlparse(amqp_url).scheme == "amqp"
