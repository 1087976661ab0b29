"""Helpers shared by the test suites (import as ``from baedal_testing import ...``)."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    predicate: Callable[[], object], timeout: float = 5.0, what: str = "", interval: float = 0.01
) -> object:
    """Poll until predicate() is truthy; fail the test (saying ``what``) if it never is."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or predicate}")
        time.sleep(interval)
