"""Optional compiled speed-ups, each with a pure-Python twin that stays the reference.

``_records`` (``_records.c``): the record loop of ``storage.record_batch.decode_rows``,
which was about two thirds of the CPU of reading a stream over AMQP, and
``append_record``, the encoding step of ``storage.record_batch.RecordBuilder.add`` (the
stream publish path); and the read side of a durable queue's log: ``batch_header`` (the
header checks and CRC-32C of ``record_batch.check_batch``/``decode_header``; the CRC is
the ``crc32c`` package's, called from C), ``scan_queue_batches`` (recovery's walk over intact batches,
``queue_log.scan_batches``) and ``decode_common`` (``queue_log.decode_message``'s read
of the common record).  It is built by
``pip install`` when a C compiler and Python's headers are there (``setup.py`` marks it
optional: without them the install still succeeds, pure Python), or in a checkout with
``python setup.py build_ext --inplace``.

``_mqtt`` (``_mqtt.c``): the inline loop of the MQTT codec's ``Parser.feed``
(``protocols/mqtt/codec.py``), splitting a read into its plain PUBLISH and PUBACK
packets: a fifth of the broker's work per QoS 0 message in Python (issue 13).

Every user goes through ``load(name)``, which returns None when the module is not built
or when ``BAEDAL_NO_SPEEDUPS`` is set (to any non-empty value): the test suite runs the
stream tests both ways, and the C code only ever answers for inputs the Python code
would decode (it hands everything else back; see the C file's header).
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType


def load(name: str) -> ModuleType | None:
    """The compiled module ``baedal._speedups.<name>``, or None (not built, or disabled
    by ``BAEDAL_NO_SPEEDUPS``)."""
    if os.environ.get("BAEDAL_NO_SPEEDUPS"):
        return None
    try:
        return importlib.import_module(f"{__name__}.{name}")
    except ImportError:
        return None
