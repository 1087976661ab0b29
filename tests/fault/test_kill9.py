"""SIGKILL a busy broker 20 times: no confirmed message is lost, unacked ones come back
flagged redelivered, and the broker restarts and serves every time.

The round logic lives in ``bench/soak_kill9.py`` (its docstring states exactly what may
and may not happen to each message); ``python bench/soak_kill9.py --rounds 200`` runs
the long soak.  Rounds share one data directory, so each restart also recovers every
earlier crash's segments and ack files.  Seeds: round i uses ``BAEDAL_KILL9_SEED + i``
(random unless set; printed, and shown in any failure).
"""

from __future__ import annotations

import importlib.util
import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROUNDS = 20
BASE_SEED = int(os.environ.get("BAEDAL_KILL9_SEED", random.randrange(2**31)))


def _load_soak_module():
    path = Path(__file__).resolve().parents[2] / "bench" / "soak_kill9.py"
    spec = importlib.util.spec_from_file_location("soak_kill9", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


soak_kill9 = _load_soak_module()


@pytest.fixture(scope="module")
def soak(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    data_dir = tmp_path_factory.mktemp("kill9") / "data"
    data_dir.mkdir()
    soak = soak_kill9.Kill9Soak(data_dir)
    yield soak
    soak.close()


@pytest.mark.parametrize("round_index", range(ROUNDS))
def test_sigkill_loses_no_confirmed_message_and_broker_restarts(soak, round_index: int) -> None:
    seed = BASE_SEED + round_index
    print(f"kill -9 round {round_index}: seed {seed} (BAEDAL_KILL9_SEED={BASE_SEED})")
    report = soak.run_round(round_index, seed)
    print(report.summary())
    assert not report.problems, f"seed {seed} (BAEDAL_KILL9_SEED={BASE_SEED}): {report.problems}"
    assert report.confirmed, f"seed {seed}: nothing was confirmed before the kill"
