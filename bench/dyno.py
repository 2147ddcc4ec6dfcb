"""Dyno benchmark: every core of a dyno, paas-channels with ``WEB_CONCURRENCY=2`` against ``gunicorn -w 2``.

    python -m bench --only dyno

The same view as the HTTP scenario (``/hello/``, the example project's full
middleware stack), the same load generators (:mod:`bench.http`), one run:

* ``combined``: ``paas-channels run --combined`` with ``WEB_CONCURRENCY=2`` and
  no Redis: a supervisor and two processes on the IPC layer; with several
  processes plain views run in the process holding the connection (the
  default ``--http direct``), WebSockets and long-poll over the layer;
* ``combined_layer``: the same with ``--http layer`` (every request over the
  IPC layer to any process's worker threads, what one process does by default);
* ``gunicorn``: ``gunicorn -w 2`` serving the WSGI app (sync workers).

Measured for each: requests/s (closed loop), p50/p99 at a fixed rate (open
loop), and the idle resident memory of every process of the setup (supervisor
or master plus children), against a 512 MB Standard-1X dyno.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

from bench import http
from bench._procs import rss_kib
from paas_channels.testing import wait_until

#: What a Standard-1X (and Basic) dyno may use before Heroku reports R14 (memory quota exceeded).
DYNO_MIB = 512


def _setups(workdir: Path) -> list[http.Setup]:
    base = next(setup.env for setup in http.setups(workdir) if setup.name == "combined")
    two = {**base, "WEB_CONCURRENCY": "2"}
    cli = [sys.executable, "-m", "paas_channels.cli"]
    listen = ["--bind", "127.0.0.1", "--port", "{port}"]
    return [
        http.Setup("combined", "paas-channels combined, WEB_CONCURRENCY=2 (views in the process, IPC layer)",
                   [[*cli, "run", "--combined", *listen]], two),
        http.Setup("combined_layer", "paas-channels combined --http layer, WEB_CONCURRENCY=2 (views over IPC)",
                   [[*cli, "run", "--combined", "--http", "layer", *listen]], two),
        http.Setup("gunicorn", "gunicorn -w 2 (WSGI, sync workers)",
                   [[sys.executable, "-m", "gunicorn", "-w", "2", "-b", "127.0.0.1:{port}", "--log-level", "warning",
                     "example_project.wsgi:application"]], base),
    ]


def _tree(pid: int) -> list[int]:
    """``pid`` and its descendants, from /proc/<pid>/task/*/children."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                todo += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                pass
    return found


def _idle_rss(setup: http.Setup, children: int) -> dict:
    """Resident memory of every process of ``setup`` once its ``children`` workers run (KiB each, MiB in all)."""
    root = setup.processes[0].pid
    wait_until(lambda: len(_tree(root)) >= children + 1, 30, interval=0.2)
    time.sleep(1.0)  # idle: what the warm-up left behind has settled (not a synchronisation)
    per_process = {}
    for pid in _tree(root):
        try:
            per_process[pid] = rss_kib(pid)
        except (OSError, RuntimeError):
            pass
    return {"processes": len(per_process), "kib": sorted(per_process.values(), reverse=True),
            "total_mib": round(sum(per_process.values()) / 1024, 1)}


def run(duration: float = 10.0, rate: float = 300.0, rounds: int = 1, warmup: int = 300,
        only: list[str] | None = None, log=print) -> dict:
    """Each setup (those named in ``only``, else all) ``rounds`` times, interleaved; the best throughput and
    best p99 of each count."""
    workdir = Path(tempfile.mkdtemp(prefix="paas-bench-dyno-"))
    (workdir / "paas_bench_settings.py").write_text(http._SETTINGS)
    (workdir / "paas_bench_urls.py").write_text(http._URLS)
    chosen = [setup for setup in _setups(workdir) if not only or setup.name in only]
    try:
        results = http.run_rounds("dyno", chosen, workdir, duration, rate, rounds, warmup, log,
                                  idle=lambda setup: _idle_rss(setup, children=2))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {
        "duration_s": duration, "rate": rate, "rounds": rounds, "cpus": os.cpu_count(), "dyno_mib": DYNO_MIB,
        "generator": "wrk" if shutil.which("wrk") else "python (wrk not installed)",
        "results": results, "ratios": ratios(results),
    }


def ratios(results: dict) -> dict:
    """Throughput and p99 at the fixed rate of each paas-channels setup against gunicorn's; memory against the dyno."""
    out: dict = {}
    gunicorn = results.get("gunicorn")
    for name in ("combined", "combined_layer"):
        if name not in results:
            continue
        ours = results[name]
        out[f"{name}_memory_of_dyno"] = ours["idle_memory"]["total_mib"] / DYNO_MIB
        if gunicorn is None:
            continue
        out[f"{name}_vs_gunicorn_rps"] = (ours["throughput"]["requests_per_s"]
                                          / gunicorn["throughput"]["requests_per_s"])
        out[f"{name}_vs_gunicorn_p99_at_rate"] = (ours["fixed_rate"]["latency_ms"]["p99"]
                                                  / gunicorn["fixed_rate"]["latency_ms"]["p99"])
    return out
