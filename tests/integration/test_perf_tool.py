"""``baedal perf`` against a real broker: a short S1 must publish, deliver everything, and measure latency."""

from __future__ import annotations

import json

from baedal.perf import main


def test_short_s1_run_delivers_every_message_and_reports_latency(amqp_url, unique, capsys):
    queue = unique("perf-s1")
    status = main(
        [
            "--scenario",
            "S1",
            "--time",
            "2",
            "--uri",
            amqp_url,
            "--queue",
            queue,
            "--json",
            "--quiet",
        ]
    )
    out = capsys.readouterr().out
    result = json.loads(out.strip().splitlines()[-1])
    assert status == 0, result["errors"]
    assert result["ok"]
    assert result["published"] > 0
    assert result["received"] == result["published"]
    assert result["pub_rate"] > 0 and result["recv_rate"] > 0
    assert result["lat_us"]["count"] == result["received"]
    assert result["lat_us"]["p50"] <= result["lat_us"]["p99"] <= result["lat_us"]["max"]
