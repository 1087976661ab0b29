"""An uncommitted transaction is bounded: past MAX_TX_BYTES the channel gets 406."""

from __future__ import annotations

import pika
import pika.exceptions
import pytest

from baedal.protocols.amqp import channel as amqp_channel


def test_transaction_over_the_byte_bound_closes_the_channel_with_406(
    amqp_url, unique, monkeypatch
) -> None:
    if amqp_url.endswith(":5672/"):
        pytest.skip("Baedal-only bound")
    monkeypatch.setattr(amqp_channel, "MAX_TX_BYTES", 10_000)
    connection = pika.BlockingConnection(pika.URLParameters(amqp_url))
    channel = connection.channel()
    queue = channel.queue_declare(unique("tx"), exclusive=True).method.queue
    channel.tx_select()
    with pytest.raises(pika.exceptions.ChannelClosedByBroker) as info:
        for _ in range(20):
            channel.basic_publish("", queue, b"x" * 1000)
        channel.tx_commit()
    assert info.value.reply_code == 406
    # nothing of the refused transaction was routed, and the connection still works
    other = connection.channel()
    assert other.queue_declare(queue, exclusive=True, passive=True).method.message_count == 0
    connection.close()
