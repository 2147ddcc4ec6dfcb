"""Smoke test of `python -m bench`: every scenario end to end against real servers and real peers.

Tiny sizes (``--tiny``): the figures mean nothing and no timing is asserted;
what is checked is that each scenario ran on both sides and produced numbers,
ratios and a verdict for each target, and that nothing in the repository was
rewritten (results go to a temporary directory, README is left alone).  One run
(the module's fixture, about a minute) is read by one test per scenario.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest

from tests.support import ROOT

# The first test to run also waits for the module's one bench run.
pytestmark = [pytest.mark.redis, pytest.mark.slow, pytest.mark.timeout(155)]

SCENARIOS = ["layer", "layer-rabbitmq", "http", "broadcast", "memory", "deploy", "dyno"]


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value >= 0


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    """One ``python -m bench --tiny`` run for every test here: (the run, latest.json, the output directory)."""
    out = tmp_path_factory.mktemp("bench")
    readme_before = (ROOT / "README.md").read_text()
    run = subprocess.run([sys.executable, "-m", "bench", "--tiny", "--out", str(out), "--no-readme"],
                         cwd=ROOT, capture_output=True, text=True, timeout=150)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert (ROOT / "README.md").read_text() == readme_before
    return run, json.loads((out / "latest.json").read_text()), out


def test_bench_tiny_runs_every_scenario_in_order_with_its_targets(bench):
    run, results, out = bench
    assert list(results["scenarios"]) == SCENARIOS
    scenarios_with_targets = {row["scenario"] for row in results["targets"]}
    assert scenarios_with_targets == set(SCENARIOS) - {"layer-rabbitmq"}  # its targets are in its own table
    assert all(row["met"] in (True, False) for row in results["targets"]), results["targets"]

    table = (out / "latest.md").read_text()
    assert "| target | measured | met |" in table and "Channels 4" in table
    try:
        import matplotlib  # noqa: F401  (a bench-only dependency)
    except ImportError:
        assert "plots skipped" in run.stdout
    else:
        assert (out / "broadcast.png").stat().st_size > 0


def test_layer_scenarios_measure_both_sides(bench):
    s = bench[1]["scenarios"]
    for key in ("send", "receive", "request_reply", "group"):
        for side in ("paas_sync", "paas_async", "channels_redis"):
            assert _number(s["layer"][side][key]) and s["layer"][side][key] > 0
        assert _number(s["layer"]["ratios"][f"sync_{key}"])

    rabbitmq = s["layer-rabbitmq"]["ratios"]  # vs channels_rabbitmq on the broker at 127.0.0.1:5672
    assert rabbitmq and all(_number(value) and value > 0 for value in rabbitmq.values()), rabbitmq


def test_http_scenario_measures_every_setup(bench):
    s = bench[1]["scenarios"]
    http = s["http"]["results"]
    assert {"combined", "split_1", "daphne_asgi", "gunicorn"} <= set(http)
    for name, result in http.items():
        assert result["throughput"]["requests_per_s"] > 0, name
        assert _number(result["fixed_rate"]["latency_ms"]["p99"]), name
    for ratio in ("combined_vs_daphne_asgi_rps", "split_1_vs_daphne_asgi_rps", "combined_vs_gunicorn_p99_at_rate"):
        assert _number(s["http"]["ratios"][ratio]), ratio


def test_websocket_scenarios_measure_both_sides(bench):
    s = bench[1]["scenarios"]
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


def test_deploy_scenario_replaces_every_worker(bench):
    deploy = bench[1]["scenarios"]["deploy"]
    assert len(deploy["steps"]) == deploy["workers"] == 2, deploy["deploy_errors"]
    assert all(step["old_exit_code"] == 0 for step in deploy["steps"])
    assert deploy["http_requests"] > 0
    assert isinstance(deploy["websockets_dropped"], int) and isinstance(deploy["http_failed"], int)
    full = deploy["full_deploy"]
    for side in ("ours", "ours_no_drain", "channels4"):
        assert full[side]["messages"] > 0 and full[side]["messages_before_deploy"] > 0, full[side]
        assert isinstance(full[side]["lost"], int), full[side]


def test_dyno_scenario_measures_every_process(bench):
    s = bench[1]["scenarios"]
    dyno = s["dyno"]["results"]
    assert set(dyno) == {"combined", "gunicorn"}  # tiny: the --http layer variant only in quick and full runs
    for name, result in dyno.items():
        assert result["throughput"]["requests_per_s"] > 0, name
        assert _number(result["fixed_rate"]["latency_ms"]["p99"]), name
        assert result["idle_memory"]["processes"] == 3, (name, result["idle_memory"])  # supervisor/master + 2
    for ratio in ("combined_vs_gunicorn_rps", "combined_vs_gunicorn_p99_at_rate", "combined_memory_of_dyno"):
        assert _number(s["dyno"]["ratios"][ratio]), ratio
