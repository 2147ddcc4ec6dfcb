"""Every benchmark against its peer, in one command: ``python -m bench`` (or ``bench/run``).

    python -m bench                   # the full run (about 10 minutes on 2 cores)
    python -m bench --quick           # every scenario, small sizes: under 2 minutes
    python -m bench --only broadcast,memory

Scenarios, each run against this project and its peer in the same run:

1. ``layer``: send, receive, request/reply, group deliveries (vs channels_redis);
   ``layer-rabbitmq``: send, receive, request/reply, group deliveries on RabbitMQ (vs channels_rabbitmq 4);
2. ``http``: a small Django view, requests/s and p50/p99 at full load and at a
   fixed rate: combined, split with 1 and 2 workers (vs Daphne + Django ASGI, gunicorn);
3. ``broadcast``: N WebSockets on one web process in one group, B broadcasts:
   deliveries and latency (vs Daphne + Channels 4 + channels_redis);
4. ``memory``: web-process RSS per open idle WebSocket (vs Daphne + Channels 4);
5. ``deploy``: every worker replaced while WebSockets are open and HTTP flows:
   dropped connections and failed requests (absolute target: zero and zero); then a
   full deploy (web and worker replaced): messages lost by resuming clients (target:
   zero; vs Channels 4 with a reconnecting client) and the reconnect peak on the new
   web with and without the slow drain;
6. ``dyno``: every core of a dyno: combined with ``WEB_CONCURRENCY=2`` (a
   supervisor, two processes, IPC layer) vs ``gunicorn -w 2``: requests/s,
   p99 at a fixed rate, idle memory of every process.

Writes ``latest.json``, ``latest.md`` and PNG plots to ``bench/results/`` (or
``--out``), and, for a full run of every scenario, the tables between README's
``bench:all``, ``bench:layer`` and ``bench:http`` markers.  Installs nothing:
the peers come from the ``bench`` extra (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench import _report  # noqa: E402

SCENARIOS = ("layer", "layer-rabbitmq", "http", "broadcast", "memory", "deploy", "dyno")

#: Sizes per profile.  ``tiny`` is for the smoke test: every code path, seconds, numbers meaningless.
PROFILES: dict[str, dict] = {
    "full": {
        "layer": {"n": 3000, "repeat": 3},
        "layer-rabbitmq": {"n": 3000, "repeat": 3},
        "http": {"duration": 10.0, "rate": 300.0, "rounds": 2, "only": None, "warmup": 300},
        "broadcast": {"clients": 2000, "broadcasts": 20, "interval": 1.0, "client_processes": 2},
        "memory": {"connections": 1000, "client_processes": 1, "settle": 2.0},
        "deploy": {"connections": 1000, "rate": 100.0, "client_processes": 1,
                   "full_clients": 200, "full_rate": 20.0, "full_drain": 2.0},
        "dyno": {"duration": 10.0, "rate": 300.0, "rounds": 2, "warmup": 300, "only": None},
    },
    "quick": {
        "layer": {"n": 600, "repeat": 1},
        "layer-rabbitmq": {"n": 600, "repeat": 1},
        "http": {"duration": 2.0, "rate": 300.0, "rounds": 1, "only": ["combined", "split_1", "daphne_asgi", "gunicorn"],
                 "warmup": 50},
        "broadcast": {"clients": 300, "broadcasts": 10, "interval": 0.3, "client_processes": 1},
        "memory": {"connections": 300, "client_processes": 1, "settle": 1.0},
        "deploy": {"connections": 200, "rate": 100.0, "client_processes": 1,
                   "full_clients": 100, "full_rate": 20.0, "full_drain": 1.0},
        "dyno": {"duration": 3.0, "rate": 300.0, "rounds": 1, "warmup": 100, "only": None},
    },
    "tiny": {
        "layer": {"n": 100, "repeat": 1},
        "layer-rabbitmq": {"n": 100, "repeat": 1},
        "http": {"duration": 1.0, "rate": 50.0, "rounds": 1, "only": ["combined", "split_1", "daphne_asgi", "gunicorn"],
                 "warmup": 10},
        "broadcast": {"clients": 20, "broadcasts": 3, "interval": 0.2, "client_processes": 1},
        "memory": {"connections": 20, "client_processes": 1, "settle": 0.3},
        # The full deploy's messages: 0.5 s before it and after it (not 2 s), lost after 1 s of quiet (not 3 s).
        "deploy": {"connections": 20, "rate": 50.0, "client_processes": 1,
                   "full_clients": 10, "full_rate": 20.0, "full_drain": 0.5,
                   "full_lead": 0.5, "full_tail": 0.5, "full_quiet": 1.0},
        "dyno": {"duration": 1.0, "rate": 50.0, "rounds": 1, "warmup": 10, "only": ["combined", "gunicorn"],
                 "settle": 0.3},
    },
}


def log(text: str) -> None:
    print(text, flush=True)


### Machine ###


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _redis_version() -> str:
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=10).stdout
        return out.split("v=", 1)[1].split()[0]
    except (OSError, IndexError, subprocess.SubprocessError):
        return "unknown"


def machine() -> dict:
    return {"cpu": _cpu_model(), "cores": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "redis": _redis_version(),
            "load_generator": "wrk" if shutil.which("wrk") else "python (wrk not installed)"}


def _check_peers() -> None:
    missing = []
    for module, package in (("channels", "channels"), ("channels_redis", "channels-redis"),
                            ("gunicorn", "gunicorn"), ("websockets", "websockets")):
        try:
            __import__(module)
        except ImportError:
            missing.append(package)
    if shutil.which("redis-server") is None:
        raise SystemExit("redis-server is not installed: apt-get install -y redis-server "
                         "(every scenario starts private Redis servers)")
    if missing:
        raise SystemExit(f"the peers are not installed ({', '.join(missing)}): pip install -e '.[bench]'")


### Run ###


def run(profile: str, only: list[str], workdir: Path) -> dict:
    sizes = PROFILES[profile]
    results: dict = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "profile": profile,
        "machine": machine(), "load_before": list(os.getloadavg()),
        "sizes": {name: sizes[name] for name in only}, "scenarios": {},
    }
    started = time.monotonic()
    for name in only:
        begun = time.monotonic()
        try:
            outcome = _run_one(name, sizes[name], workdir)
        except Exception as exc:  # noqa: BLE001 - one failed scenario must not lose the others' figures
            log(f"!! {name} failed: {type(exc).__name__}: {exc}")
            outcome = {"error": f"{type(exc).__name__}: {exc}"}
        outcome["seconds"] = round(time.monotonic() - begun, 1)
        results["scenarios"][name] = outcome
    results["seconds"] = round(time.monotonic() - started, 1)
    results["load_after"] = list(os.getloadavg())
    results["targets"] = _report.targets(results)
    return results


def _run_one(name: str, size: dict, workdir: Path) -> dict:
    from bench import broadcast, deploy, dyno, http, layer, memory

    if name == "layer":
        outcome = layer.measure(size["n"], size["repeat"], log=log)
    elif name == "layer-rabbitmq":  # vs channels_rabbitmq 4, on the broker at 127.0.0.1:5672
        from bench import layer_rabbitmq

        outcome = layer_rabbitmq.measure(size["n"], size["repeat"], log=log)
    elif name == "http":
        outcome = http.measure(size["duration"], size["rate"], size["rounds"], size["only"], size["warmup"], log=log)
    elif name == "broadcast":
        outcome = broadcast.run(workdir, size["clients"], size["broadcasts"], size["interval"],
                                size["client_processes"], log=log)
    elif name == "memory":
        outcome = memory.run(workdir, size["connections"], size["client_processes"], size["settle"], log=log)
    elif name == "dyno":
        outcome = dyno.run(size["duration"], size["rate"], size["rounds"], size["warmup"], size["only"], log=log,
                           settle=size.get("settle", 1.0))
    else:
        outcome = deploy.run(workdir, size["connections"], size["rate"], size["client_processes"], log=log)
        pace = {key: size[f"full_{key}"] for key in ("lead", "tail", "quiet") if f"full_{key}" in size}
        outcome["full_deploy"] = deploy.run_full(workdir, size["full_clients"], size["full_rate"], size["full_drain"],
                                                 log=log, **pace)
    return outcome


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="small sizes, every scenario: under 2 minutes")
    size.add_argument("--tiny", action="store_true", help="smallest sizes (the smoke test): numbers are meaningless")
    parser.add_argument("--only", default="", help=f"comma-separated scenarios (default: all of {', '.join(SCENARIOS)})")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results",
                        help="where latest.json, latest.md and the plots go (default bench/results)")
    parser.add_argument("--no-readme", action="store_true", help="never rewrite README.md")
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    args = parser.parse_args(argv)

    only = [name.strip() for name in args.only.split(",") if name.strip()] or list(SCENARIOS)
    unknown = [name for name in only if name not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; choose from {', '.join(SCENARIOS)}")
    only = [name for name in SCENARIOS if name in only]  # always the documented order
    _check_peers()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:  # inherited by every server and client process started here
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    profile = "quick" if args.quick else "tiny" if args.tiny else "full"

    workdir = Path(tempfile.mkdtemp(prefix="paas-bench-"))
    try:
        results = run(profile, only, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    table = _report.markdown(results)
    print()
    print(table)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "latest.md").write_text("# Benchmarks against the peers\n\n" + table + "\n")
    if not args.no_plots:
        written = _report.plots(results, args.out)
        log(f"plots: {', '.join(str(path) for path in written)}" if written else
            "plots skipped: matplotlib is not installed (pip install -e '.[bench]')")
    failed = [name for name, outcome in results["scenarios"].items() if "error" in outcome]
    if failed:
        log(f"failed: {', '.join(failed)} (see the messages above); README not rewritten")
        return 1
    if profile == "full" and only == list(SCENARIOS):
        _report.write_details(results, args.out)
        if not args.no_readme:
            _report.write_readme(results, table)
            log("README.md benchmark tables rewritten")
    return 0


if __name__ == "__main__":
    sys.exit(main())
