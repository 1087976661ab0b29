"""A transient queue past its memory budget pages out to version-1 spill segments.

Since the queue log (issue 10), durable queues write the stream's RecordBatch v2 batches;
a transient queue's pages are a spill file (never fsynced, deleted at start-up), so
``StorageEngine.transient_store`` keeps them in the cheaper version-1 records.  This test
drives a real broker with pika past the ``PagedStore`` budget (20,000 messages) and checks
both halves: every message comes back in order with its properties, and the spill
segments on disk carry the version-1 header.
"""

from __future__ import annotations

import struct
from pathlib import Path

import pika
import pytest

from baedal import Broker
from baedal.storage.segment import SEGMENT_HEADER, SEGMENT_MAGIC, SEGMENT_VERSION

pytestmark = pytest.mark.timeout(120)

COUNT = 25_000  # above PagedStore's default memory_limit of 20,000 entries


def test_transient_queue_pages_to_version_1_segments_and_reads_back_in_order(tmp_path: Path) -> None:
    with Broker(host="127.0.0.1", port=0, data_dir=tmp_path) as broker:
        connection = pika.BlockingConnection(pika.URLParameters(broker.amqp_url))
        try:
            channel = connection.channel()
            channel.queue_declare("paging.v1", durable=False)
            for number in range(COUNT):
                channel.basic_publish(
                    "",
                    "paging.v1",
                    struct.pack(">I", number),
                    pika.BasicProperties(content_type="application/x-n", headers={"n": number}),
                )
            assert channel.queue_declare("paging.v1", passive=True).method.message_count == COUNT

            segments = sorted((tmp_path / "transient").rglob("*.seg"))
            assert segments, "the queue did not page out"
            for path in segments:
                magic, version, _ = SEGMENT_HEADER.unpack(path.read_bytes()[: SEGMENT_HEADER.size])
                assert magic == SEGMENT_MAGIC and version == SEGMENT_VERSION

            got = 0
            for method, properties, body in channel.consume("paging.v1", auto_ack=True, inactivity_timeout=5):
                if method is None:
                    break
                assert struct.unpack(">I", body)[0] == got
                assert properties.headers == {"n": got}
                assert properties.content_type == "application/x-n"
                got += 1
                if got == COUNT:
                    break
            assert got == COUNT
        finally:
            connection.close()
