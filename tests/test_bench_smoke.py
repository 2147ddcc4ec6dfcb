"""Smoke test of `python -m bench`: every scenario end to end against real servers and real peers.

Tiny sizes (``--tiny``): the figures mean nothing and no timing is asserted;
what is checked is that each scenario ran on both sides and produced numbers,
ratios and a verdict for each target, and that nothing in the repository was
rewritten (results go to a temporary directory, README is left alone).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import ROOT

pytestmark = pytest.mark.redis

SCENARIOS = ["layer", "layer-rabbitmq", "http", "broadcast", "memory", "deploy", "dyno"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@pytest.mark.timeout(155)
def test_bench_tiny_runs_every_scenario_against_its_peer(tmp_path: Path) -> None:
    readme_before = (ROOT / "README.md").read_text()
    run = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(tmp_path), "--no-readme"],
                         cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((tmp_path / "latest.json").read_text())
    s = results["scenarios"]
    assert list(s) == SCENARIOS

    for key in ("send", "receive", "request_reply", "group"):
        for side in ("paas_sync", "paas_async", "channels_redis"):
            assert _number(s["layer"][side][key]) and s["layer"][side][key] > 0
        assert _number(s["layer"]["ratios"][f"sync_{key}"])

    rabbitmq = s["layer-rabbitmq"]["ratios"]  # vs channels_rabbitmq on the broker at 127.0.0.1:5672
    assert rabbitmq and all(_number(value) and value > 0 for value in rabbitmq.values()), rabbitmq

    http = s["http"]["results"]
    assert {"combined", "split_1", "daphne_asgi", "gunicorn"} <= set(http)
    for name, result in http.items():
        assert result["throughput"]["requests_per_s"] > 0, name
        assert _number(result["fixed_rate"]["latency_ms"]["p99"]), name
    for ratio in ("combined_vs_daphne_asgi_rps", "split_1_vs_daphne_asgi_rps", "combined_vs_gunicorn_p99_at_rate"):
        assert _number(s["http"]["ratios"][ratio]), ratio

    broadcast = s["broadcast"]
    # Ours must take every client; the peer's failures are its own figures, not this test's business.
    assert broadcast["ours"]["connected"] == broadcast["ours"]["clients"], broadcast["ours"]["connect_errors"]
    for side in ("ours", "channels4"):
        assert broadcast[side]["connected"] > 0, broadcast[side]["connect_errors"]
        assert broadcast[side]["delivered"] > 0
        assert _number(broadcast[side]["latency_ms"]["p99"])
    assert _number(broadcast["ratios"]["p99_latency"]) and _number(broadcast["ratios"]["delivered"])

    memory = s["memory"]
    assert memory["ours"]["connected"] == memory["ours"]["connections"]
    for side in ("ours", "channels4"):
        assert isinstance(memory[side]["kib_per_connection"], float)
    assert isinstance(memory["ratios"]["per_connection"], float)

    deploy = s["deploy"]
    assert len(deploy["steps"]) == deploy["workers"] == 2, deploy["deploy_errors"]
    assert all(step["old_exit_code"] == 0 for step in deploy["steps"])
    assert deploy["http_requests"] > 0
    assert isinstance(deploy["websockets_dropped"], int) and isinstance(deploy["http_failed"], int)

    dyno = s["dyno"]["results"]
    assert set(dyno) == {"combined", "gunicorn"}  # tiny: the --http layer variant only in quick and full runs
    for name, result in dyno.items():
        assert result["throughput"]["requests_per_s"] > 0, name
        assert _number(result["fixed_rate"]["latency_ms"]["p99"]), name
        assert result["idle_memory"]["processes"] == 3, (name, result["idle_memory"])  # supervisor/master + 2
    for ratio in ("combined_vs_gunicorn_rps", "combined_vs_gunicorn_p99_at_rate", "combined_memory_of_dyno"):
        assert _number(s["dyno"]["ratios"][ratio]), ratio

    scenarios_with_targets = {row["scenario"] for row in results["targets"]}
    assert scenarios_with_targets == set(SCENARIOS) - {"layer-rabbitmq"}  # its targets are in its own table
    assert all(row["met"] in (True, False) for row in results["targets"]), results["targets"]

    table = (tmp_path / "latest.md").read_text()
    assert "| target | measured | met |" in table and "Channels 4" in table
    try:
        import matplotlib  # noqa: F401  (a bench-only dependency)
    except ImportError:
        assert "plots skipped" in run.stdout
    else:
        assert (tmp_path / "broadcast.png").stat().st_size > 0
    assert (ROOT / "README.md").read_text() == readme_before
