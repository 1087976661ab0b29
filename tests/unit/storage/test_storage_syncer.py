"""The syncer: group commit, callbacks only after the covering fsync, fatal fsync failures."""

from __future__ import annotations

import asyncio
import errno
import os
import threading
import time
from pathlib import Path

import pytest

from baedal.storage import segment as segment_module
from baedal.storage.segment import Segment, StorageError
from baedal.storage.syncer import Syncer


class CountingFsync:
    """Replaces os.fsync: counts calls and takes `delay` seconds, like a real disk."""

    def __init__(self, delay: float = 0.0, fail: OSError | None = None) -> None:
        self.calls = 0
        self.delay = delay
        self.fail = fail
        self.threads: set[str] = set()

    def __call__(self, fd: int) -> None:
        self.calls += 1
        self.threads.add(threading.current_thread().name)
        if self.delay:
            time.sleep(self.delay)
        if self.fail is not None:
            raise self.fail


async def test_many_after_sync_requests_are_covered_by_few_fsyncs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = CountingFsync(delay=0.02)
    monkeypatch.setattr(os, "fsync", fsync)
    syncer = Syncer()
    segment = Segment.create(tmp_path, 1)
    confirmed: list[int] = []
    for round_ in range(5):
        for i in range(200):
            segment.append(1, b"x" * 32)
            syncer.mark_dirty(segment)
            syncer.after_sync(lambda n=round_ * 200 + i: confirmed.append(n))
        await asyncio.sleep(0.005)
    while len(confirmed) < 1000:
        await asyncio.sleep(0.01)
    assert confirmed == list(range(1000))  # in request order
    assert syncer.fsync_jobs <= 6
    assert fsync.threads and threading.main_thread().name not in fsync.threads
    syncer.close()
    segment.close()


async def test_callbacks_wait_for_the_fsync_that_covers_their_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = CountingFsync(delay=0.05)
    monkeypatch.setattr(os, "fsync", fsync)
    syncer = Syncer()
    segment = Segment.create(tmp_path, 1)
    order: list[str] = []
    segment.append(1, b"first")
    syncer.mark_dirty(segment)
    syncer.after_sync(lambda: order.append("first"))
    await asyncio.sleep(0.01)  # the first job is now running
    segment.append(1, b"second")
    syncer.mark_dirty(segment)
    syncer.after_sync(lambda: order.append("second"))
    await asyncio.sleep(0.06)
    assert order == ["first"]  # the first fsync started before "second" was written
    await syncer.synced()
    assert order == ["first", "second"]
    assert syncer.fsync_jobs >= 2
    syncer.close()
    segment.close()


async def test_a_failed_fsync_is_fatal_and_never_confirms(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", CountingFsync(fail=OSError(errno.EIO, "Input/output error")))
    fatal: list[BaseException] = []
    syncer = Syncer(on_fatal=fatal.append)
    segment = Segment.create(tmp_path, 1)
    confirmed: list[str] = []
    segment.append(1, b"data")
    syncer.mark_dirty(segment)
    syncer.after_sync(lambda: confirmed.append("lie"))
    for _ in range(100):
        if fatal:
            break
        await asyncio.sleep(0.01)
    assert len(fatal) == 1 and getattr(fatal[0], "errno", None) == errno.EIO
    monkeypatch.undo()  # even if fsync "works" again, nothing is ever confirmed
    syncer.after_sync(lambda: confirmed.append("later"))
    await asyncio.sleep(0.05)
    assert confirmed == []
    syncer.close()
    segment.close()


def test_sync_now_works_without_an_event_loop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsync = CountingFsync()
    monkeypatch.setattr(os, "fsync", fsync)
    syncer = Syncer()
    segment = Segment.create(tmp_path, 1)
    segment.append(1, b"data")
    syncer.mark_dirty(segment)
    done: list[bool] = []
    syncer.after_sync(lambda: done.append(True))
    assert done == []
    syncer.sync_now()
    assert done == [True]
    assert fsync.calls == 1
    assert segment.written == segment.size  # the buffer was flushed before the fsync
    segment.close()


def test_sync_now_with_a_failing_fsync_calls_on_fatal_and_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(os, "fsync", CountingFsync(fail=OSError(errno.EIO, "Input/output error")))
    fatal: list[BaseException] = []
    syncer = Syncer(on_fatal=fatal.append)
    syncer.mark_dirty(os.open(tmp_path, os.O_RDONLY))
    done: list[bool] = []
    syncer.after_sync(lambda: done.append(True))
    with pytest.raises(StorageError):
        syncer.sync_now()
    assert fatal and done == []


def test_a_failed_flush_runs_on_error_instead_of_the_callback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    syncer = Syncer()
    segment = Segment.create(tmp_path, 1)
    segment.append(1, b"data")
    syncer.mark_dirty(segment)
    outcome: list[object] = []
    syncer.after_sync(lambda: outcome.append("confirmed"), outcome.append)

    def full_disk(fd: int, data: bytes) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(segment_module, "_write_fd", full_disk)
    syncer.sync_now()
    assert (
        len(outcome) == 1
        and isinstance(outcome[0], StorageError)
        and outcome[0].errno == errno.ENOSPC
    )
    assert syncer.failure is None  # not fatal: the segment is failed, not the syncer
    segment.truncate_to_last_good()
    segment.close()


def test_retire_defers_close_until_the_file_is_synced(tmp_path: Path) -> None:
    syncer = Syncer()
    segment = Segment.create(tmp_path, 1)
    segment.append(1, b"data")
    syncer.mark_dirty(segment)
    closed: list[bool] = []
    syncer.retire(segment, lambda: closed.append(True))
    assert closed == []
    syncer.sync_now()
    assert closed == [True]
    segment.close()


# --- before_flush: writers that hold a loop turn's records in memory -----------------------


async def test_a_before_flush_hook_writes_before_the_job_takes_its_dirty_set(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fsynced: list[int] = []
    monkeypatch.setattr(os, "fsync", fsynced.append)
    syncer = Syncer()
    segment = Segment.create(tmp_path, 1)
    events: list[str] = []

    def hook() -> None:  # the writer's pending records go to the file only now
        events.append("hook")
        segment.append(1, b"late")
        syncer.mark_dirty(segment)

    syncer.before_flush(hook)
    syncer.after_sync(lambda: events.append("confirmed"))
    await syncer.synced()
    assert events == ["hook", "confirmed"]
    assert fsynced == [segment.fileno()]  # the hook's write was in that very job
    assert syncer.fsync_jobs == 1  # and its mark_dirty did not start a second one
    await asyncio.sleep(0.01)
    assert syncer.fsync_jobs == 1 and not syncer.busy
    syncer.close()
    segment.close()


def test_a_before_flush_hook_that_fails_fails_the_jobs_callbacks(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(os, "fsync", lambda fd: None)
    syncer = Syncer()
    outcome: list[object] = []

    def hook() -> None:
        raise StorageError(errno.ENOSPC, "no space")

    syncer.before_flush(hook)
    syncer.after_sync(lambda: outcome.append("confirmed"), outcome.append)
    syncer.sync_now()  # no loop: the hook runs in the synchronous job too
    assert len(outcome) == 1 and isinstance(outcome[0], StorageError)
    syncer.after_sync(lambda: outcome.append("confirmed"), outcome.append)
    syncer.sync_now()  # the hook ran once; later jobs are unaffected
    assert outcome[1] == "confirmed"
